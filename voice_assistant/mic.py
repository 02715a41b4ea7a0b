"""The microphone chain, on the audio-in thread: what the assistant hears, cleaned, and what it means.

    source chunk -> simulated room (file mode's --simulate-echo) -> echo canceller (AEC3) and its
                    verdict (`passed`: let through as the room's own sound, or taken for our echo)
                 -> --record-mic -> (silence while `deaf`) -> Silero VAD -> UtteranceTracker events
                 -> RealtimeSTT feed, held back while the language model processes a prompt

`process()` returns the tracker's events for the orchestrator to act on. The playback thread
calls `on_played()` with exactly the samples played, which feed the room and the canceller.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from .audio_io import INPUT_CHUNK_SAMPLES, INPUT_RATE_HZ
from .endpointing import UtteranceTracker
from .files import StreamingWav

log = logging.getLogger(__name__)

PASSED_MAX_LOSS_DB = 20.0
"""A chunk the echo canceller left within this many dB of the microphone was let through as the room's
own sound (a voice, a cough), not taken for the assistant's echo. Measured live through PulseAudio at 0 dB:
the first speech chunks of 29 interruptions lost 0 to 15 dB; the assistant's echo loses 25 to 70 dB."""
CUE_ECHO_TAIL_S = 0.25
"""A cue is heard back from its first block's play time (the devices' clock) until this long after its last
block: the room's path and tail, and what the devices' reported latencies leave out."""
PASSED_FLOOR_DBFS = -55.0
"""Quieter than this after cancellation, a chunk is no voice to stop for, whatever it lost (the quiet
parts of the echo lose only 15 dB or so; live, the user's first words came through at -35 to -22 dBFS)."""


def mean_power_dbfs(samples: np.ndarray) -> float:
    """Mean power of float samples in dB full scale (-100 for digital silence)."""
    return 10.0 * float(np.log10(float(np.mean(samples * samples)) + 1e-10))


class MicRecording:
    """--record-mic: the microphone before (left) and after (right) echo cancellation, a stereo WAV
    streamed to disk as it is heard (0600), by the `record-mic` thread."""

    def __init__(self, path: Path) -> None:
        self.wav = StreamingWav(path, INPUT_RATE_HZ, channels=2, name="record-mic")  # SetupError if unwritable

    def add(self, raw: np.ndarray, cleaned: np.ndarray) -> None:
        self.wav.add(np.stack([raw, cleaned], axis=1))

    def write(self) -> None:
        """At exit: what is still queued, then the file closed."""
        self.wav.close()


class MicrophoneChain:
    """Room, echo canceller, recording, VAD and utterance tracking for each 32 ms input chunk."""

    def __init__(
        self,
        vad,
        tracker: UtteranceTracker,
        vad_threshold: float = 0.5,
        room=None,
        canceller=None,
        recording: MicRecording | None = None,
        recognizer=None,
    ) -> None:
        self.vad = vad  # .probability(chunk) -> 0..1
        self.tracker = tracker
        self.vad_threshold = vad_threshold
        self.room = room  # voice_assistant.room.SimulatedRoom or None
        self.canceller = canceller  # voice_assistant.echo.EchoCanceller or None
        self.recording = recording
        self.recognizer = recognizer  # asr.SpeechRecognizer (RealtimeSTT) fed with int16 audio, or None
        self.asr_hold = threading.Event()  # set: keep audio back from ASR (the LLM is prefilling)
        self._held: list[np.ndarray] = []  # audio-in thread only
        self.level_dbfs = -100.0  # the last chunk's level after echo cancellation (written by the audio-in thread)
        self.passed: bool | None = None
        """Audio-in thread: the echo canceller let the last chunk through (see PASSED_MAX_LOSS_DB); None without one."""
        self.maybe_voice = False
        """Audio-in thread: the last chunk was above the VAD's lower (onset) threshold and the canceller let it
        through: perhaps the start of a voice, before Silero is sure. Always False without a canceller."""
        self.voice_passed: bool | None = None if canceller is None else False
        """Audio-in thread: the echo canceller let a speech chunk of the open (or last) utterance through (see
        PASSED_MAX_LOSS_DB): a voice in the room, not the residue of the assistant's own. None without one."""
        self.deaf = False
        """Set by the orchestrator (audio-in thread) while what is heard cannot be told from the assistant's
        echo: VAD, utterances and ASR then get silence; the canceller still learns, the recording keeps all."""
        self._raw_tail: np.ndarray | None = None  # the microphone samples the canceller's output still lags
        self._cue_echo: tuple[float, float] = (0.0, 0.0)  # when the last cue is heard back; set by the playback thread
        self._barge_in_paused = False  # audio-in thread only

    def process(self, chunk: np.ndarray, end_t: float) -> list:
        """Audio-in thread: 512 float32 samples at 16 kHz captured until `end_t`; the tracker's events."""
        if self.room is not None:
            chunk = self.room.mix(chunk, end_t)
        raw = chunk
        if self.canceller is not None:
            chunk = self.canceller.process(chunk)
        self.level_dbfs = mean_power_dbfs(chunk)  # for the console's meter, and the canceller's verdict
        cue = self._cue_echo_heard(end_t)
        if self.canceller is not None:
            self.passed = self._passed(raw, len(chunk), self.level_dbfs) and not cue
        if self.recording is not None:
            self.recording.add(raw, chunk)
        if self.deaf:
            chunk = np.zeros_like(chunk)
        events = []
        if self.vad is not None:
            probability = self.vad.probability(chunk)
            is_speech = probability >= self.vad_threshold
            maybe = probability >= self.vad_threshold - 0.15  # Silero's usual onset hysteresis
            if cue and (not self.tracker.in_utterance or self.tracker.due is not None):
                # our own cue, not a voice starting: outside an utterance, or in one that its silence has
                # ended and that waits for its answer (the "thinking" cue); within the user's speech it goes on
                is_speech = maybe = False
            if self.passed is not None and not self.tracker.in_utterance:
                self.voice_passed = False  # a new utterance may begin
            events = self.tracker.push(chunk, is_speech, end_t, maybe)
            if self.passed and is_speech:
                self.voice_passed = True
            self.maybe_voice = bool(self.passed) and maybe
        if self.recognizer is not None:
            self._feed_asr((np.clip(chunk, -1.0, 1.0) * 32767.0).astype(np.int16))
        return events

    def _passed(self, raw: np.ndarray, cleaned_samples: int, after_dbfs: float) -> bool:
        """Compare the cleaned chunk (`after_dbfs`) with the microphone samples it came from (the canceller's
        output lags its input by `latency_samples`, 12 ms for 512-sample chunks)."""
        if self._raw_tail is None:  # set by the first call
            self._raw_tail = np.zeros(self.canceller.latency_samples or 0, dtype=np.float32)
        heard = np.concatenate([self._raw_tail, raw])
        before, self._raw_tail = heard[:cleaned_samples], heard[cleaned_samples:]
        return after_dbfs >= PASSED_FLOOR_DBFS and after_dbfs >= mean_power_dbfs(before) - PASSED_MAX_LOSS_DB

    def _feed_asr(self, pcm: np.ndarray) -> None:
        if self.asr_hold.is_set():
            self._held.append(pcm)
            return
        if self._held:
            held, self._held = self._held, []
            for piece in held:
                self.recognizer.feed(piece)
        self.recognizer.feed(pcm)

    def _cue_echo_heard(self, end_t: float) -> bool:
        """Audio-in thread: the chunk captured until `end_t` may hold the echo of a cue.

        Cues are not in the canceller's reference (see cues.py), so their echo comes through it whole (live
        through PulseAudio, -29 dBFS with 0 dB lost). Taken for a voice, the "thinking" cue held the reply
        that followed it for about 0.9 s (4 turns in 20, in each of two runs) and kept RealtimeSTT's
        recording open (see speculation.TranscriptCache). It is our own sound: not let through (`passed`),
        and no speech unless the user is speaking (in a turn held open for its answer, the user is silent:
        the "thinking" cue plays there, and its echo must not go on with the turn)."""
        start_t, end_of_echo_t = self._cue_echo
        return start_t < end_t and end_t - INPUT_CHUNK_SAMPLES / INPUT_RATE_HZ < end_of_echo_t

    def on_played(self, samples: np.ndarray, rate_hz: int, play_t: float, reference: np.ndarray | None = None) -> None:
        """Playback thread: exactly what was played (silence too) is what the room echoes; the echo
        canceller's reference is `reference` when given (the reply without the cues: see cues.py).
        A block that differs from its reference holds a cue: when its echo is heard is noted."""
        if reference is not None and reference is not samples and not np.array_equal(samples, reference):
            start_t, end_of_echo_t = self._cue_echo
            if play_t > end_of_echo_t:
                start_t = play_t  # a new cue
            self._cue_echo = (start_t, play_t + len(samples) / rate_hz + CUE_ECHO_TAIL_S)
        if self.room is not None:
            self.room.feed_played(samples, rate_hz, play_t)
        if self.canceller is not None:
            self.canceller.feed_reverse(samples if reference is None else reference, rate_hz)

    @property
    def hears_playback(self) -> bool:
        """Something needs the played samples (room or canceller)."""
        return self.room is not None or self.canceller is not None

    def set_device_latency(self, latency_s: float) -> None:
        """From a block handed to the speaker to its echo reaching us, as the devices report it."""
        if self.canceller is not None:
            self.canceller.set_delay_ms(1000.0 * latency_s)

    def echo_unsafe(self) -> bool:
        """Audio-in thread: True while echo cancellation is not working, or has not yet had the assistant's
        voice long enough to be judged (the canceller's `diverged_after_far_end_s`, 3 s), so barge-in could
        hear us. (Measured live through PulseAudio, a speaker heard at 0 dB: in 3 of 7 sessions the first
        reply was cut by its own echo within 2 s of its first sound, and its words taken for the user's.)"""
        canceller = self.canceller
        if canceller is not None and canceller.far_end_s() < canceller.config.diverged_after_far_end_s:
            return True  # learning the room: half duplex, without a warning
        unsafe = canceller is not None and canceller.diverged()
        if unsafe != self._barge_in_paused:
            self._barge_in_paused = unsafe
            if unsafe:
                log.warning("echo cancellation is not converging (%s dB): barge-in paused", canceller.erle_db())
            else:
                log.warning("echo cancellation works again: barge-in resumed")
        return unsafe

    def echo_settled(self) -> bool:
        """Echo cancellation (if any) has had 1.5 s of the assistant's voice to learn the room and works:
        until then a cue could be heard back before the canceller knows the echo path (see cues.py)."""
        canceller = self.canceller
        return canceller is None or (canceller.far_end_s() >= 1.5 and not canceller.diverged())

    def close(self, metrics=None) -> None:
        """At exit: the echo canceller's figures into `metrics` and the log; the recording to disk."""
        if self.canceller is not None:
            stats = self.canceller.stats()
            if metrics is not None:
                metrics.set_summary({"echo": {k: getattr(stats, k) for k in stats.__dataclass_fields__}})
            if stats.audio_s > 0:  # nothing to say about a session that heard nothing
                log.info("echo cancellation: %s dB echo reduction, %.1f ms CPU per audio second",
                         stats.erle_db if stats.erle_db is None else round(stats.erle_db, 1), stats.cpu_ms_per_audio_s)  # fmt: skip
        if self.recording is not None:
            self.recording.write()
