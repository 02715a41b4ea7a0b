"""Speculative transcription: the user's words, transcribed while the end-of-turn silence runs.

When the user pauses (`PauseSnapshot`), the `spec-asr` thread transcribes the utterance so far;
the orchestrator may start answering at once and hold the audio until the turn is confirmed over.
`TranscriptCache` keeps the latest utterance's text so that RealtimeSTT's own final pass over the
same speech is answered from it (`CachingExecutor` in asr.py) and Whisper runs once per utterance.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from .endpointing import PauseSnapshot
from .workers import QueueWorker


class TranscriptCache:
    """The text of the latest utterance, identified by its `speech_end_t`. Thread-safe.

    RealtimeSTT's own voice detector closes its recordings later than the utterance tracker ends a turn
    (its silence runs on from the last sound it took for speech), so a recording can run on past an
    utterance we already transcribed and answered, over a sound too short to be an utterance: the
    "thinking" cue, a cough, the residue of our own echo as a reply begins. Measured live through
    PulseAudio (a speaker heard at 0 dB), such a recording's final transcript missed this cache (the
    short sound was newer) and was answered a second time: the reply cut after "Mars is a" and said
    again, 1 turn in 20 in each of two runs, and 1.5 to 3 s of Whisper on the two cores. So a recording
    that began before the transcribed utterance ended, with no utterance after it, is answered from
    here (`lookup(recording_start_t=...)`).
    """

    def __init__(self, latest: Callable[[], float], latest_utterance: Callable[[], float]) -> None:
        self.latest = latest  # speech_end_t of the newest speech (the utterance tracker's)
        self.latest_utterance = latest_utterance  # ... of the newest utterance long enough to transcribe
        self._cond = threading.Condition()
        self._text: tuple[float, str] | None = None  # guarded by _cond
        self._inflight_for = 0.0  # utterance being transcribed now; guarded by _cond
        self._served = False  # the last final transcript came from here; guarded by _cond
        self._closed = False  # guarded by _cond

    def begin(self, speech_end_t: float) -> None:
        """Audio-in thread: a transcription of this utterance is queued."""
        with self._cond:
            self._inflight_for = speech_end_t

    def end(self, speech_end_t: float) -> None:
        """spec-asr thread: that transcription is over (stored or not)."""
        with self._cond:
            if self._inflight_for == speech_end_t:
                self._inflight_for = 0.0
            self._cond.notify_all()

    def store(self, speech_end_t: float, text: str) -> bool:
        """Keep `text` for the utterance; False if the user has spoken since (a newer one will come)."""
        with self._cond:
            if speech_end_t != self.latest():
                return False
            self._text = (speech_end_t, text)
            return True

    def lookup(self, wait_s: float = 2.0, recording_start_t: float = 0.0) -> str | None:
        """RealtimeSTT thread: the latest utterance's text, waiting for a transcription still running.

        `recording_start_t`: when RealtimeSTT began the recording it closed (0: unknown). A recording
        that began before the cached utterance ended covers it; if nothing long enough to be an
        utterance was heard after it, the cached text stands for the recording (see the class)."""
        deadline = time.monotonic() + wait_s
        with self._cond:
            while self._inflight_for and self._inflight_for == self.latest() and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._text is None:
                return None
            end_t = self._text[0]
            covered = 0.0 < recording_start_t < end_t and end_t == self.latest_utterance()
            if end_t != self.latest() and not covered:
                return None
            self._served = True
            return self._text[1]

    def take_served(self) -> bool:
        """Whether the final transcript just delivered came from this cache (and reset that)."""
        with self._cond:
            served, self._served = self._served, False
            return served

    def busy(self) -> bool:
        with self._cond:
            return bool(self._inflight_for)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class SpeculativeTranscriber:
    """The `spec-asr` worker: transcribes each `PauseSnapshot` that is still the latest utterance."""

    def __init__(self, transcriber, cache: TranscriptCache) -> None:
        self.transcriber = transcriber  # .transcribe_text(float32 16 kHz audio) -> str
        self.cache = cache
        self.worker = QueueWorker("spec-asr", self._handle)
        self._on_text: Callable[[PauseSnapshot, str, float], None] = lambda job, text, t: None

    def start(self, on_text: Callable[[PauseSnapshot, str, float], None]) -> None:
        """`on_text(snapshot, text, monotonic time)` runs on the spec-asr thread for each transcript."""
        self._on_text = on_text
        self.worker.start()

    def submit(self, snapshot: PauseSnapshot) -> None:
        """Audio-in thread."""
        self.cache.begin(snapshot.speech_end_t)
        self.worker.put(snapshot)

    def idle(self) -> bool:
        return self.worker.idle()

    def stop(self) -> None:
        self.cache.close()
        self.worker.stop()

    def _handle(self, job: PauseSnapshot) -> None:
        try:
            if job.speech_end_t == self.cache.latest():
                text = self.transcriber.transcribe_text(job.audio)
                self._on_text(job, text.strip(), time.monotonic())
        finally:
            self.cache.end(job.speech_end_t)
