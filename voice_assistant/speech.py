"""The speech worker: reply text -> Piper -> short audio blocks -> the sink.

Runs on the `tts` thread (a `QueueWorker`): while sentence n plays, sentence n+1 is synthesized.
Audio is cut into blocks of the sink's length so that a barge-in silences the speaker within one
block. The blocks of a tentative turn (answered speculatively before the user's turn is known to
be over) are held here and handed to the sink only on `release()`; a turn dropped before that
is never heard. Every item is checked against the turn counter when taken and at every block.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import numpy as np

from .audio_io import AudioBlock, AudioSink, EndOfReply, split_blocks
from .text import clean_for_speech
from .turns import EndOfText, SentenceItem, TurnCounter
from .workers import QueueWorker


def trim_leading_silence(audio: np.ndarray, rate_hz: int, threshold: float = 0.002, keep_ms: int = 5) -> np.ndarray:
    """Drop the inaudible lead-in of a reply's first chunk: it only delays the first sound."""
    loud = np.flatnonzero(np.abs(audio) > threshold)
    if len(loud) == 0:
        return audio
    return audio[max(0, loud[0] - rate_hz * keep_ms // 1000) :]


class SpeechWorker:
    """Synthesizes `SentenceItem`s and queues their blocks (and `EndOfReply`) for playback."""

    def __init__(
        self,
        synthesizer,
        sink: AudioSink,
        turns: TurnCounter,
        on_audio_ready: Callable[[int, float], None] = lambda turn_id, t: None,
    ) -> None:
        self.synthesizer = synthesizer
        self.sink = sink
        self.turns = turns
        self.on_audio_ready = on_audio_ready  # (turn id, monotonic time) of each synthesized chunk
        self.worker = QueueWorker("tts", self._handle)
        self._lock = threading.Lock()
        self._held_turn = 0  # turn whose audio is held (0: none); guarded by _lock
        self._held: list = []  # its items, in order; guarded by _lock

    def put(self, item: SentenceItem | EndOfText) -> None:
        """Any thread: synthesize and play this item after those already queued."""
        self.worker.put(item)

    def hold(self, turn_id: int) -> None:
        """Keep `turn_id`'s audio back until `release(turn_id)` (its turn is tentative)."""
        with self._lock:
            self._held_turn, self._held = turn_id, []

    def release(self, turn_id: int) -> None:
        """Play what was held for `turn_id`, and its audio from now on, in order."""
        with self._lock:
            if self._held_turn != turn_id:
                return
            for item in self._held:
                self.sink.put(item)
            self._held_turn, self._held = 0, []

    def held_blocks(self, turn_id: int) -> int:
        """How many audio blocks of `turn_id` are held (0 when its audio is not held)."""
        with self._lock:
            if self._held_turn != turn_id:
                return 0
            return sum(isinstance(item, AudioBlock) for item in self._held)

    def _handle(self, item: SentenceItem | EndOfText) -> None:
        if not self.turns.is_current(item.turn_id):
            return
        if isinstance(item, EndOfText):
            self._to_sink(EndOfReply(item.turn_id))
            return
        text = clean_for_speech(item.text)
        if not text:
            return
        audio = self.synthesizer.synthesize_all(text)
        if not self.turns.is_current(item.turn_id) or len(audio) == 0:
            return
        if item.index == 0:
            audio = trim_leading_silence(audio, self.synthesizer.sample_rate_hz)
        self.on_audio_ready(item.turn_id, time.monotonic())
        blocks = split_blocks(audio, self.sink.block_frames)
        for i, block in enumerate(blocks):
            if not self.turns.is_current(item.turn_id):
                return
            self._to_sink(AudioBlock(item.turn_id, block, item.index, (i + 1) / len(blocks)))

    def _to_sink(self, item) -> None:
        with self._lock:
            if item.turn_id == self._held_turn:
                self._held.append(item)
                return
        self.sink.put(item)
