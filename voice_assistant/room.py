"""A synthetic room for file mode's `--simulate-echo`: the assistant hears what it plays.

`SimulatedRoom` takes exactly what the sink played, with each block's play time on the input
timeline (`feed_played`, from `AudioSink.played_listener` on the playback thread), resamples it
to 16 kHz, convolves it with a fixed room impulse response, delays it by `delay_ms`, scales it by
`gain_db` and keeps the result on the input timeline; `mix` (audio-in thread) adds the echo that
falls into a microphone chunk's 32 ms.

The impulse response is exponentially decaying Gaussian noise (amplitude down 60 dB after
`rt60_s`), from a fixed seed, normalised to unit energy: at `gain_db=0` the echo of a broadband
signal is as loud as the signal played. Everything is a pure function of what is fed, so a run
is reproducible sample for sample when the play times are (the WAV sink's are exact).

Timing: echo for time t needs the block played at t - delay_ms. The WAV sink reports a whole
block at its first sample's play time and the WAV source delivers a chunk at its last sample's
time, so with a delay above the resampler's lookahead (under 1 ms) every echo sample is ready
before its chunk, and the playback thread may run up to about `delay_ms` late before echo is
lost. Echo computed for times the microphone has already delivered is dropped and counted
(`late_samples`).

Memory is bounded: echo older than the last mixed chunk is discarded, and at most
`max_ahead_s` of future echo is kept (the oldest goes first, counted in `dropped_samples`).

Threads: `feed_played` from the playback thread, `mix` from the audio-in thread; one lock.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np
from scipy.signal import fftconvolve

from .echo import StreamResampler

log = logging.getLogger(__name__)

RATE_HZ = 16000
_DISCONTINUITY_S = 0.005  # a block this far from where the last one ended starts a new stream


@dataclass(frozen=True)
class RoomConfig:
    """The simulated path from the assistant's speaker to its microphone."""

    delay_ms: float = 60.0
    """Speaker-to-microphone delay before the impulse response starts, in ms (sound path + devices)."""
    gain_db: float = 0.0
    """Echo level relative to the played signal, in dB (0: as loud as it was played)."""
    rt60_s: float = 0.3
    """Reverberation time: the impulse response decays by 60 dB over this many seconds."""
    seed: int = 20240601
    """Seed of the impulse response's noise (fixed: runs are reproducible)."""
    max_ahead_s: float = 10.0
    """Most echo kept ahead of the microphone, in seconds of audio."""


def room_impulse_response(rt60_s: float, seed: int, rate_hz: int = RATE_HZ) -> np.ndarray:
    """Unit-energy float32 impulse response: Gaussian noise under a 60 dB / `rt60_s` decay."""
    length = max(1, int(round(rt60_s * rate_hz)))
    t = np.arange(length) / rate_hz
    envelope = 10.0 ** (-3.0 * t / rt60_s)  # amplitude: -60 dB at t = rt60_s
    response = np.random.default_rng(seed).standard_normal(length) * envelope
    return (response / np.sqrt(np.sum(response**2))).astype(np.float32)


class SimulatedRoom:
    """Adds the echo of what was played to microphone chunks. Thread-safe; starts no thread."""

    def __init__(self, config: RoomConfig | None = None) -> None:
        self.config = config or RoomConfig()
        gain = 10.0 ** (self.config.gain_db / 20.0)
        self.impulse_response = room_impulse_response(self.config.rt60_s, self.config.seed) * np.float32(gain)
        self._delay_samples = int(round(self.config.delay_ms * RATE_HZ / 1000.0))
        self._max_ahead = int(self.config.max_ahead_s * RATE_HZ)
        self._lock = threading.Lock()
        self._resampler: StreamResampler | None = None
        self._next_played_t = 0.0  # input-timeline time (s) at which the last played block ended
        self._next_index = 0  # input-timeline index of the next resampled played sample
        self._tail = np.zeros(len(self.impulse_response) - 1, dtype=np.float32)  # overlap-add carry
        self._echo = np.zeros(0, dtype=np.float32)
        self._echo_start = 0  # input-timeline index of _echo[0]
        self._mixed_until: int | None = None  # index after the last sample handed out by mix
        self.late_samples = 0
        """Echo samples that arrived after the microphone had delivered their time."""
        self.dropped_samples = 0
        """Echo samples discarded because more than `max_ahead_s` was waiting."""

    def feed_played(self, samples: np.ndarray, rate_hz: int, play_t: float) -> None:
        """Playback thread: exactly the samples played, the first at `play_t` (input timeline, s)."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        with self._lock:
            if (
                self._resampler is None
                or self._resampler.from_hz != rate_hz
                or abs(play_t - self._next_played_t) > _DISCONTINUITY_S
            ):
                self._restart(rate_hz, play_t)
            self._next_played_t = play_t + len(samples) / rate_hz
            played = self._resampler.push(samples)
            if len(played) == 0:
                return
            start = self._next_index
            self._next_index += len(played)
            echo = fftconvolve(played, self.impulse_response)
            echo[: len(self._tail)] += self._tail
            self._tail = echo[len(played) :].astype(np.float32)
            self._store(echo[: len(played)].astype(np.float32), start + self._delay_samples)

    def _restart(self, rate_hz: int, play_t: float) -> None:
        """A new played stream (first block, new rate, or a gap): flush the old room tail."""
        if self._resampler is not None:
            log.debug("simulated room: played stream restarts at %.3f s", play_t)
            self._store(self._tail.copy(), self._next_index + self._delay_samples)
        self._resampler = StreamResampler(int(rate_hz), RATE_HZ)
        self._next_index = int(round(play_t * RATE_HZ))
        self._tail = np.zeros(len(self.impulse_response) - 1, dtype=np.float32)

    def _store(self, echo: np.ndarray, start: int) -> None:
        """Add `echo` (first sample at input index `start`) into the pending echo. Lock held.

        The pending echo covers at most `max_ahead` samples ending at the newest one; anything
        older is dropped and counted, without ever allocating more than that.
        """
        if self._mixed_until is not None and start < self._mixed_until:
            late = min(len(echo), self._mixed_until - start)
            self.late_samples += late
            echo, start = echo[late:], start + late
        if len(echo) == 0:
            return
        end = start + len(echo)
        old_start = self._echo_start if len(self._echo) else start
        old_end = old_start + len(self._echo)
        hi = max(old_end, end)
        keep = max(min(old_start, start), hi - self._max_ahead)  # first index still kept
        if keep != old_start or hi != old_end:
            grown = np.zeros(hi - keep, dtype=np.float32)
            first = max(old_start, keep)
            if old_end > first:
                grown[first - keep : old_end - keep] = self._echo[first - old_start :]
            self.dropped_samples += max(0, min(old_end, keep) - old_start)
            self._echo, self._echo_start = grown, keep
        first = max(start, keep)
        if end > first:
            self._echo[first - keep : end - keep] += echo[first - start :]
        self.dropped_samples += max(0, min(end, keep) - start)

    def mix(self, chunk: np.ndarray, end_t: float) -> np.ndarray:
        """Audio-in thread: `chunk` (16 kHz, its last sample captured just before `end_t`) plus the echo.

        The sum is clipped to [-1, 1], as a microphone's converter would clip it.
        """
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        end = int(round(end_t * RATE_HZ))
        start = end - len(chunk)
        out = chunk.copy()
        with self._lock:
            lo = max(start, self._echo_start)
            hi = min(end, self._echo_start + len(self._echo))
            if hi > lo:
                out[lo - start : hi - start] += self._echo[lo - self._echo_start : hi - self._echo_start]
            consumed = end - self._echo_start
            if consumed > 0:  # this chunk's time is past: its echo can never be used again
                self._echo, self._echo_start = self._echo[consumed:], end
            self._mixed_until = end if self._mixed_until is None else max(self._mixed_until, end)
        return np.clip(out, -1.0, 1.0)  # as a microphone's converter would
