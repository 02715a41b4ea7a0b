"""Utterance tracking on VAD decisions: speech onsets, long-enough speech, pauses and end of turn.

`UtteranceTracker.push()` takes each 32 ms chunk with the VAD's verdict and returns what
happened, as small events. It keeps a ring of recent audio so that, once the user has paused
for `speculate_after_ms`, the whole utterance (with a pre-roll) can be transcribed while the
end-of-turn silence is still running. Pure bookkeeping: one caller (the audio-in thread), no
threads, no clocks of its own (times come with the chunks), so it is tested by feeding arrays.

End of turn. With `semantic=False` a turn ends after `end_of_speech_ms` of silence. With
`semantic=True` the pause snapshot is also judged by a turn model (turn_detector.py, on its own
thread), which reports back with `set_verdict()`: a turn heard as finished ends after
`complete_silence_ms`, one heard as unfinished (or not judged yet) waits up to `max_silence_ms` for
more speech. An utterance too short to be snapshot ends after `end_of_speech_ms`, as before.

With `read_words=True` (smart, or words alone) the words are judged too, once the speculative transcript exists: the
language model's probability that the user's message ends after them (`set_words_verdict`). Words
that cannot end a message ("How far away is") keep the turn open up to `max_silence_ms` whatever the
sound says; words that very likely end one ("How many legs does a spider have") end it after
`complete_silence_ms` even when the sound seemed unfinished. Until the words are judged, a turn
heard as finished waits for them (they come about 0.4 s after the voice stops, before the answer is
ready to play). A verdict of None (no words, or no judgement possible) leaves the sound to decide.
Without a sound model (`semantic=False`, `--turn-detector words`) words judged neither way end the
turn after `end_of_speech_ms`, as with silence alone.

With `open_until_answer=True`, a turn whose speculative answer is being prepared (`set_answer`) stays
open after its silence rule is met until that answer is ready to play, and at most `max_silence_ms`:
the answer takes 0.8 to 1 s after the voice stops on this machine, the silence rule 0.2 to 0.45 s, so a
person who pauses to think and goes on within that time goes on with the same turn (the speculative
answer is dropped and the whole utterance transcribed again), where the turn used to be closed and the
rest answered as a turn of its own ("You are entering conference number ... five"). Nothing plays
earlier either way. `due` is the Endpoint the silence rule would have sent, for the orchestrator to act
on at once when the answer becomes ready between two chunks.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass

import numpy as np

CHUNK_S = 512 / 16000
RUN_GAP_S = 0.1  # a silence this long ends a speech run


@dataclass(frozen=True)
class SpeechStart:
    """A speech run began (after at least RUN_GAP_S of silence)."""

    onset_t: float  # monotonic time of the first speech sample


@dataclass(frozen=True)
class SpeechLong:
    """The current speech run has lasted `min_speech_ms`: long enough to interrupt. Once per run.

    Runs are not added up: through a room, an echo canceller's residue comes as short runs a few hundred
    ms apart, and adding them up made the assistant interrupt itself (measured live)."""

    onset_t: float
    decision_t: float


@dataclass(frozen=True)
class PauseSnapshot:
    """The user paused for `speculate_after_ms`: the utterance so far, to transcribe speculatively."""

    speech_end_t: float  # end of the last speech chunk; identifies the utterance version
    audio: np.ndarray  # float32 16 kHz, from the utterance onset minus the pre-roll until now
    speech_s: float  # seconds of speech in the utterance


@dataclass(frozen=True)
class Endpoint:
    """Silence reached `end_of_speech_ms`: the user's turn is over."""

    speech_end_t: float
    speech_s: float
    how: str = "silence"  # "silence" (fixed), "complete" (heard as finished), "words" (the words end a message
    # though the sound seemed unfinished), "cap" (waited the longest)


WORDS_UNFINISHED_BELOW = 0.0001  # no end of message or sentence among the model's likeliest next tokens
WORDS_FINISHED_FROM = 0.5  # the model expects the message to end here more often than not


class UtteranceTracker:
    """VAD verdicts in, utterance events out (see the module docstring)."""

    def __init__(
        self,
        min_speech_ms: int = 200,
        speculate_after_ms: int = 96,
        end_of_speech_ms: int = 450,
        min_utterance_ms: int = 250,
        preroll_ms: int = 300,
        max_utterance_s: float = 30.0,
        semantic: bool = False,
        complete_silence_ms: int = 200,
        max_silence_ms: int = 2000,
        read_words: bool = False,
        open_until_answer: bool = False,
    ) -> None:
        self.min_speech_s = min_speech_ms / 1000.0
        self.speculate_after_s = speculate_after_ms / 1000.0
        self.end_of_speech_s = end_of_speech_ms / 1000.0
        self.min_utterance_s = min_utterance_ms / 1000.0
        self.preroll_s = preroll_ms / 1000.0
        self._ring: collections.deque = collections.deque(maxlen=int((max_utterance_s + self.preroll_s) / CHUNK_S))
        self.last_speech_end_t = 0.0
        self.last_utterance_end_t = 0.0
        """The end of the newest speech in an utterance long enough to be transcribed (`min_utterance_ms`):
        speech after it that is shorter (a cough, a cue, the residue of our own echo) does not move it."""
        self._run_start_t = 0.0  # 0 when not in a speech run
        self._long_sent = False  # SpeechLong was sent for the current run
        self.longest_run_s = 0.0  # the longest speech run of the open (or last) utterance
        self._utterance_start_t = 0.0  # 0 when no utterance is open
        self._utterance_speech_s = 0.0
        self._snapshot_for = 0.0
        self._maybe_start_t = 0.0  # start of the run of chunks above the VAD's lower threshold
        self.semantic = semantic
        self.complete_silence_s = complete_silence_ms / 1000.0
        self.max_silence_s = max_silence_ms / 1000.0
        self._verdict: tuple[float, bool] | None = None  # (speech_end_t, finished); set by the turn thread
        self.read_words = read_words
        self._words: tuple[float, float | None] | None = None  # (speech_end_t, probability the message ends)
        self.open_until_answer = open_until_answer
        self._answer: tuple[float, bool] | None = None  # (speech_end_t, ready to play); set by the orchestrator
        self.due: Endpoint | None = None
        """The end of turn the silence rule has reached while the open utterance's answer is not ready yet
        (audio-in thread writes; other threads read it whole)."""
        self._verdict_lock = threading.Lock()

    def set_verdict(self, speech_end_t: float, finished: bool) -> None:
        """Turn thread: the snapshot of the utterance that ended at `speech_end_t` sounds finished or not."""
        with self._verdict_lock:
            self._verdict = (speech_end_t, finished)

    def set_words_verdict(self, speech_end_t: float, probability: float | None) -> None:
        """The words of the utterance that ended at `speech_end_t`: how likely the message ends after them
        (None: not judged, the sound decides). From the thread that asked the language model."""
        with self._verdict_lock:
            self._words = (speech_end_t, probability)

    def set_answer(self, speech_end_t: float, ready: bool) -> None:
        """Any thread: an answer to the utterance that ended at `speech_end_t` is being prepared (`ready`
        False) or is ready to play (True)."""
        with self._verdict_lock:
            self._answer = (speech_end_t, ready)

    def _answer_pending(self) -> bool:
        with self._verdict_lock:
            answer = self._answer
        return answer is not None and answer[0] == self.last_speech_end_t and not answer[1]

    def _end_of_turn(self) -> tuple[float, str]:
        """The silence that ends the open utterance now, and why that much."""
        if not (self.semantic or self.read_words) or self._utterance_speech_s < self.min_utterance_s - 1e-9:
            return self.end_of_speech_s, "silence"  # no snapshot, so no verdict, comes for too short a one
        with self._verdict_lock:
            verdict, words = self._verdict, self._words
        sounds_finished = verdict is not None and verdict[0] == self.last_speech_end_t and verdict[1]
        if self.read_words:
            if words is None or words[0] != self.last_speech_end_t:
                return self.max_silence_s, "cap"  # not judged yet: wait (the cap, should that never come)
            if words[1] is not None and words[1] < WORDS_UNFINISHED_BELOW:
                return self.max_silence_s, "cap"
            if words[1] is not None and words[1] >= WORDS_FINISHED_FROM and not sounds_finished:
                return self.complete_silence_s, "words"
        if not self.semantic:
            return self.end_of_speech_s, "silence"  # words judged, no sound model: the fixed silence
        if sounds_finished:
            return self.complete_silence_s, "complete"
        return self.max_silence_s, "cap"

    @property
    def in_utterance(self) -> bool:
        return bool(self._utterance_start_t)

    @property
    def in_speech_run(self) -> bool:
        """A speech run is open: it began and has not had RUN_GAP_S of silence since."""
        return bool(self._run_start_t)

    def push(self, chunk: np.ndarray, is_speech: bool, end_t: float, maybe_speech: bool | None = None) -> list:
        """`maybe_speech`: above the VAD's lower (onset) threshold; a run that becomes speech
        starts where the maybe-speech began, as Silero's probability ramps up over a chunk or two."""
        self._ring.append((end_t, chunk))
        events: list = []
        if maybe_speech or is_speech:
            self._maybe_start_t = self._maybe_start_t or end_t - CHUNK_S
        else:
            self._maybe_start_t = 0.0
        if is_speech:
            self.due = None
            if not self._run_start_t:
                self._run_start_t = min(self._maybe_start_t, end_t - CHUNK_S)
                self._long_sent = False
                events.append(SpeechStart(self._run_start_t))
                if not self._utterance_start_t:
                    self._utterance_start_t = self._run_start_t
                    self._utterance_speech_s = 0.0
                    self.longest_run_s = 0.0
            self._utterance_speech_s += CHUNK_S
            self.last_speech_end_t = end_t
            if self._utterance_speech_s >= self.min_utterance_s - 1e-9:
                self.last_utterance_end_t = end_t
            self.longest_run_s = max(self.longest_run_s, end_t - self._run_start_t)
            if not self._long_sent and end_t - self._run_start_t >= self.min_speech_s - 1e-9:
                self._long_sent = True
                events.append(SpeechLong(self._run_start_t, end_t))
            return events
        silence_s = end_t - self.last_speech_end_t
        if self._run_start_t and silence_s >= RUN_GAP_S - 1e-9:
            self._run_start_t = 0.0
        if not self._utterance_start_t:
            return events
        if (
            (self.speculate_after_s > 0 or self.semantic)
            and silence_s >= self.speculate_after_s - 1e-9
            and self._snapshot_for != self.last_speech_end_t
            and self._utterance_speech_s >= self.min_utterance_s - 1e-9
        ):
            self._snapshot_for = self.last_speech_end_t
            events.append(PauseSnapshot(self.last_speech_end_t, self._audio_since(self._utterance_start_t - self.preroll_s),
                                        self._utterance_speech_s))  # fmt: skip
        end_s, how = self._end_of_turn()
        if silence_s >= end_s - 1e-9:
            endpoint = Endpoint(self.last_speech_end_t, self._utterance_speech_s, how)
            if self.open_until_answer and silence_s < self.max_silence_s - 1e-9 and self._answer_pending():
                self.due = endpoint  # over by its silence; open until its answer can play
                return events
            self.due = None
            events.append(endpoint)
            self._utterance_start_t = 0.0
        return events

    def _audio_since(self, start_t: float) -> np.ndarray:
        chunks = [chunk for end_t, chunk in self._ring if end_t - CHUNK_S >= start_t - 1e-9]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)
