"""Acoustic echo cancellation: WebRTC AEC3 (livekit.rtc's AudioProcessingModule) on the microphone.

One `EchoCanceller` per session. The playback thread hands it exactly the samples that are
played, silence included (`feed_reverse`, from `AudioSink.played_listener`); the audio-in thread
passes each 512-sample microphone chunk through `process` before VAD and ASR see it.

How the engine is driven, and why:

- AEC3 takes 10 ms int16 frames. `feed_reverse` only resamples to 16 kHz (a stateful polyphase
  resampler, so block edges leave no clicks) and cuts frames into a bounded queue: it never calls
  the engine, so the PortAudio callback stays cheap and never waits on the engine's lock.
  `process` first hands the engine every queued far-end frame, then the microphone frames: the
  reference always reaches AEC3 before the echo it causes, and one thread owns the engine.
- `livekit.rtc.AudioFrame(data, sample_rate, num_channels, samples_per_channel)` keeps a
  `bytearray` as it is and `process_stream` writes the cleaned audio into it in place (checked in
  livekit 1.2.0's `apm.py` and in the test). Other buffers are copied first (a numpy memoryview
  is, because its `nbytes` differs from `len()` of the array), and frames of the wrong length are
  not rejected by the FFI, so frames are always built here as 320-byte bytearrays.
- 512 is not a multiple of 160: `process` returns its chunk with a fixed framing lag of
  160 - gcd(512, 160) = 128 samples (8 ms), the least that lets every call return a full chunk;
  AEC3 itself delays the capture path by one 64-sample block (measured). So the cleaned chunk
  is the microphone signal of `latency_samples` = 192 samples (12 ms) earlier; the first call
  starts with that much silence.
- The stream delay is sent to the engine at start and whenever `set_delay_ms` changes it:
  AEC3 keeps the last value (per-frame calls gave identical output, measured) and each call is
  an FFI round trip.

Echo reduction is measured, not assumed: for each 10 ms frame while the far end was recently
non-silent (and the caller does not flag near-end speech) the energies of the microphone frame and
the cleaned frame are summed into 100 ms blocks. `erle_db()` is the median block ERLE over the
last `erle_window_s` of such audio; the median ignores short double talk and speech pauses,
which a plain energy ratio would count as failure. `diverged()` says the canceller is not
working (ERLE under 6 dB after 3 s of far-end audio, or an engine error), so the caller can fall
back (half duplex, no barge-in while playing).

Measured (tests/test_echo.py: Piper joe far end through `SimulatedRoom` at 0 dB gain, 60 ms
delay; 2 busy cores): ERLE 26 to 28 dB over the first 3 s and 34 to 35 dB after, median block
estimate 44 to 50 dB; CPU about 6 ms per audio second in the engine calls, 10 ms in all; an
espeak near end in double talk loses 2 to 4 dB; with a wrong reference (the played audio
reversed) the ERLE is about 0 dB and `diverged()` is True.

Threads: `feed_reverse` from the playback thread; `process` from the audio-in thread;
`set_delay_ms` and the read-only queries from any thread.
Nothing here starts a thread; livekit's native library is loaded on construction, not on import.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass
from math import gcd

import numpy as np

log = logging.getLogger(__name__)

RATE_HZ = 16000
FRAME_SAMPLES = 160  # AEC3's 10 ms frame at 16 kHz
FRAME_S = FRAME_SAMPLES / RATE_HZ
ENGINE_DELAY_SAMPLES = 64  # AEC3 delays its output by one 4 ms block (measured with livekit 1.2.0)
_INT16_SCALE = 32767.0


@dataclass(frozen=True)
class EchoConfig:
    """Settings of the echo canceller and of its self-measurement."""

    stream_delay_ms: int = 0
    """Hint for AEC3: output plus input device latency in ms (AEC3 also estimates it itself)."""
    high_pass_filter: bool = True
    """WebRTC's 80 Hz high-pass on the microphone (removes rumble and DC before the canceller)."""
    max_pending_reverse_ms: int = 2000
    """Far-end audio kept waiting for `process` at most; older frames are dropped and counted."""
    far_end_active_dbfs: float = -50.0
    """A far-end frame louder than this (RMS, dB full scale) counts as the assistant talking."""
    far_end_hangover_ms: int = 300
    """The far end counts as active this long after its last loud frame (path delay + room tail)."""
    near_floor_dbfs: float = -65.0
    """A 100 ms microphone block quieter than this carries no echo worth measuring."""
    erle_block_ms: int = 100
    """Length of one ERLE measurement block (of far-end-active audio)."""
    erle_window_s: float = 4.0
    """ERLE is the median of the blocks in this much recent far-end-active audio."""
    min_erle_blocks: int = 5
    """Blocks needed before `erle_db()` reports a value."""
    diverged_after_far_end_s: float = 3.0
    """`diverged()` judges only after this much far-end-active audio."""
    diverged_below_db: float = 6.0
    """ERLE under this (dB) means the canceller is not cancelling."""


@dataclass(frozen=True)
class EchoStats:
    """A snapshot of the canceller's self-measurement."""

    erle_db: float | None
    """Median echo return loss enhancement in dB over the recent window; None until measured."""
    far_end_s: float
    """Seconds of microphone audio processed while the far end was active."""
    diverged: bool
    """True when the canceller is judged not to work (see `EchoCanceller.diverged`)."""
    cpu_ms_per_audio_s: float
    """CPU ms spent (both threads, engine calls and framing) per second of microphone audio."""
    audio_s: float
    """Seconds of microphone audio processed."""
    dropped_reverse_frames: int
    """Far-end frames dropped because `process` was not called for `max_pending_reverse_ms`."""
    delay_ms: int
    """The stream delay hint in use."""
    error: str
    """The engine's error, if it failed (audio then passes through unchanged)."""


class StreamResampler:
    """Polyphase resampling of a continuous stream delivered in pieces of any length.

    The filter is scipy's `resample_poly` default (Kaiser window, beta 5, half-length 10 taps
    per phase), applied with state carried across calls, so the output is the same as resampling
    the whole stream at once: output sample n sits at input time n / to_hz (zero phase). An
    output sample is returned once the input it needs has arrived, which holds back about 10
    input samples (0.6 ms at 22.05 kHz). One caller at a time (the owner serializes calls).
    """

    def __init__(self, from_hz: int, to_hz: int) -> None:
        from scipy.signal import firwin

        if from_hz <= 0 or to_hz <= 0:
            raise ValueError(f"sample rates must be positive, got {from_hz} and {to_hz}")
        divisor = gcd(int(from_hz), int(to_hz))
        self.from_hz, self.to_hz = int(from_hz), int(to_hz)
        self._up, self._down = self.to_hz // divisor, self.from_hz // divisor
        self._identity = self._up == 1 and self._down == 1
        if self._identity:
            return
        max_rate = max(self._up, self._down)
        half_len = 10 * max_rate
        taps = firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0)) * self._up
        self._taps_per_phase = -(-len(taps) // self._up)
        padded = np.zeros(self._taps_per_phase * self._up)
        padded[: len(taps)] = taps
        # bank[p, j] = taps[p + j * up]: the taps that meet input sample k_max - j in phase p
        self._bank = padded.reshape(self._taps_per_phase, self._up).T.copy()
        self._centre = half_len
        self._buffer = np.zeros(self._taps_per_phase - 1)  # zeros stand for the input before t=0
        self._buffer_start = -(self._taps_per_phase - 1)  # absolute input index of _buffer[0]
        self._inputs = 0  # input samples received
        self._outputs = 0  # output samples returned

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Resampled float32 output that the input so far determines (may be empty)."""
        samples = np.asarray(samples, dtype=np.float64).reshape(-1)
        if self._identity:
            return samples.astype(np.float32)
        self._buffer = np.concatenate([self._buffer, samples])
        self._inputs += len(samples)
        # output n needs input index (n * down + centre) // up, which must be < self._inputs
        last = (self._inputs * self._up - 1 - self._centre) // self._down
        if last < self._outputs:
            return np.zeros(0, dtype=np.float32)
        n = np.arange(self._outputs, last + 1, dtype=np.int64)
        position = n * self._down + self._centre
        newest, phase = position // self._up, position % self._up
        index = newest[:, None] - np.arange(self._taps_per_phase)[None, :] - self._buffer_start
        out = np.einsum("ij,ij->i", self._buffer[index], self._bank[phase])
        self._outputs = int(last) + 1
        keep_from = (self._outputs * self._down + self._centre) // self._up - (self._taps_per_phase - 1)
        drop = keep_from - self._buffer_start
        if drop > 0:
            self._buffer = self._buffer[drop:]
            self._buffer_start = keep_from
        return out.astype(np.float32)


def _to_int16(samples: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(samples, -1.0, 1.0) * _INT16_SCALE).astype(np.int16)


def _mean_square(frame: np.ndarray) -> float:
    """Mean square of int16 or float samples, in full-scale units (1.0 = 0 dBFS)."""
    values = frame.astype(np.float64)
    if frame.dtype == np.int16:
        values /= _INT16_SCALE
    return float(np.dot(values, values) / max(1, len(values)))


def _db_to_power(dbfs: float) -> float:
    return 10.0 ** (dbfs / 10.0)


class EchoCanceller:
    """WebRTC AEC3 on 16 kHz mono microphone audio, with the played audio as its reference."""

    def __init__(self, config: EchoConfig | None = None, apm=None) -> None:
        """`apm`: an AudioProcessingModule-like object (tests); by default livekit's AEC3."""
        self.config = config or EchoConfig()
        if apm is None:
            from livekit import rtc

            apm = rtc.AudioProcessingModule(
                echo_cancellation=True, noise_suppression=False, high_pass_filter=self.config.high_pass_filter
            )
        self._apm = apm
        from livekit.rtc import AudioFrame

        self._frame_type = AudioFrame
        self._delay_ms = self._clamp_delay(self.config.stream_delay_ms)
        self._sent_delay_ms: int | None = None  # the value the engine has; sent on the audio-in thread

        # playback thread -> audio-in thread
        self._reverse_lock = threading.Lock()
        self._resampler: StreamResampler | None = None
        self._reverse_rest = np.zeros(0, dtype=np.float32)
        self._pending: collections.deque[np.ndarray] = collections.deque()
        self._max_pending = max(1, self.config.max_pending_reverse_ms // 10)
        self._dropped_reverse = 0
        self._reverse_cpu_s = 0.0

        # audio-in thread only
        self._capture_rest = np.zeros(0, dtype=np.int16)
        self._cleaned = np.zeros(0, dtype=np.int16)
        self._framing_lag: int | None = None  # set by the first call: 128 for 512-sample chunks
        self.latency_samples: int | None = None
        """Lag of `process` output behind its input, framing plus engine; 192 for 512-sample chunks."""
        self._recent_far = collections.deque(maxlen=max(1, self.config.far_end_hangover_ms // 10))
        self._far_threshold = _db_to_power(self.config.far_end_active_dbfs)
        self._near_floor = _db_to_power(self.config.near_floor_dbfs)
        self._block_frames = max(1, self.config.erle_block_ms // 10)
        self._block_in = self._block_out = 0.0
        self._block_n = 0
        self._error = ""

        # written by the audio-in thread, read from any thread
        self._stats_lock = threading.Lock()
        blocks = max(1, int(round(self.config.erle_window_s * 1000 / self.config.erle_block_ms)))
        self._blocks: collections.deque[float] = collections.deque(maxlen=blocks)
        self._far_frames = 0
        self._capture_frames = 0
        self._capture_cpu_s = 0.0

    @staticmethod
    def _clamp_delay(ms: float) -> int:
        return int(min(500, max(0, round(ms))))

    # ------------------------------------------------------------------ playback thread

    def feed_reverse(self, samples: np.ndarray, rate_hz: int) -> None:
        """Playback thread: exactly the samples just handed to the speaker (silence included).

        Cheap and never blocks on the engine: resamples to 16 kHz and queues 10 ms frames.
        """
        started = time.thread_time()
        with self._reverse_lock:
            if self._resampler is None or self._resampler.from_hz != rate_hz:
                if self._resampler is not None:
                    log.debug("far-end rate changed from %d to %d Hz", self._resampler.from_hz, rate_hz)
                self._resampler = StreamResampler(int(rate_hz), RATE_HZ)
                self._reverse_rest = np.zeros(0, dtype=np.float32)
            audio = np.concatenate([self._reverse_rest, self._resampler.push(samples)])
            whole = len(audio) - len(audio) % FRAME_SAMPLES
            frames = _to_int16(audio[:whole]).reshape(-1, FRAME_SAMPLES)
            self._reverse_rest = audio[whole:]
            for frame in frames:
                if len(self._pending) >= self._max_pending:
                    self._pending.popleft()
                    self._dropped_reverse += 1
                    if self._dropped_reverse == 1:
                        log.warning("echo canceller: far-end audio piles up (is the microphone running?)")
                self._pending.append(frame)
            self._reverse_cpu_s += time.thread_time() - started

    # ------------------------------------------------------------------ audio-in thread

    def set_delay_ms(self, ms: float) -> None:
        """Any thread (applied by the audio-in thread at its next chunk): device latency hint in ms.

        Output plus input latency (`SpeakerSink.latency_s + MicrophoneSource.latency_s`), 0 to
        500; 0 in file mode. Only a hint: AEC3 estimates the echo delay itself.
        """
        self._delay_ms = self._clamp_delay(ms)

    def process(self, chunk: np.ndarray, near_end_active: bool = False) -> np.ndarray:
        """Audio-in thread: the microphone chunk with the echo removed, same length, float32.

        The output lags the input by `latency_samples` (12 ms for 512-sample chunks).
        `near_end_active`: True when something independent of this canceller knows the user is
        speaking in this chunk; such audio is left out of the ERLE measurement. If the engine
        fails, audio passes through unchanged and `diverged()` turns True.
        """
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        if self._framing_lag is None:
            self._framing_lag = FRAME_SAMPLES - gcd(len(chunk), FRAME_SAMPLES) if len(chunk) else 0
            self.latency_samples = self._framing_lag + ENGINE_DELAY_SAMPLES
            self._cleaned = np.zeros(self._framing_lag, dtype=np.int16)
        apm = self._apm
        if apm is None or self._error:
            return chunk.copy()
        started = time.thread_time()
        with self._reverse_lock:
            pending, self._pending = self._pending, collections.deque()
        try:
            cleaned = self._run_engine(apm, pending, chunk, near_end_active)
        except RuntimeError as exc:  # the FFI reports engine errors as RuntimeError
            self._error = str(exc) or type(exc).__name__
            log.error("echo canceller failed, passing the microphone through: %s", self._error)
            return chunk.copy()
        finally:
            with self._stats_lock:
                self._capture_cpu_s += time.thread_time() - started
        return cleaned

    def _run_engine(self, apm, pending, chunk: np.ndarray, near_end_active: bool) -> np.ndarray:
        frame_type = self._frame_type
        for far in pending:
            apm.process_reverse_stream(frame_type(bytearray(far.tobytes()), RATE_HZ, 1, FRAME_SAMPLES))
            self._recent_far.append(_mean_square(far))
        if self._sent_delay_ms != self._delay_ms:
            apm.set_stream_delay_ms(self._delay_ms)
            self._sent_delay_ms = self._delay_ms
        captured = np.concatenate([self._capture_rest, _to_int16(chunk)])
        whole = len(captured) - len(captured) % FRAME_SAMPLES
        outputs = []
        for start in range(0, whole, FRAME_SAMPLES):
            mic = captured[start : start + FRAME_SAMPLES]
            data = bytearray(mic.tobytes())
            apm.process_stream(frame_type(data, RATE_HZ, 1, FRAME_SAMPLES))
            out = np.frombuffer(data, dtype=np.int16)  # written in place by the engine
            outputs.append(out)
            self._measure(mic, out, near_end_active)
        self._capture_rest = captured[whole:]
        self._cleaned = np.concatenate([self._cleaned, *outputs])
        if len(self._cleaned) < len(chunk):  # a chunk longer than the first one: lag grows once
            missing = len(chunk) - len(self._cleaned)
            log.warning("echo canceller: chunk of %d samples after %d; adding %d samples of lag",
                        len(chunk), len(chunk) - missing, missing)  # fmt: skip
            self._cleaned = np.concatenate([np.zeros(missing, dtype=np.int16), self._cleaned])
            self._framing_lag += missing
            self.latency_samples = self._framing_lag + ENGINE_DELAY_SAMPLES
        result, self._cleaned = self._cleaned[: len(chunk)], self._cleaned[len(chunk) :]
        return result.astype(np.float32) / np.float32(_INT16_SCALE)

    def _measure(self, mic: np.ndarray, out: np.ndarray, near_end_active: bool) -> None:
        """Audio-in thread: add one frame to the ERLE blocks if the far end was active."""
        far_active = bool(self._recent_far) and max(self._recent_far) > self._far_threshold
        with self._stats_lock:
            self._capture_frames += 1
            if not far_active or near_end_active:
                return
            self._far_frames += 1
        self._block_in += _mean_square(mic)
        self._block_out += _mean_square(out)
        self._block_n += 1
        if self._block_n < self._block_frames:
            return
        if self._block_in / self._block_n > self._near_floor:
            erle = 10.0 * np.log10(self._block_in / max(self._block_out, 1e-12))
            with self._stats_lock:
                self._blocks.append(float(erle))
        self._block_in = self._block_out = 0.0
        self._block_n = 0

    # ------------------------------------------------------------------ any thread

    def erle_db(self) -> float | None:
        """Median ERLE (dB) over the last `erle_window_s` of far-end-active audio; None if too little."""
        with self._stats_lock:
            blocks = list(self._blocks)
        if len(blocks) < self.config.min_erle_blocks:
            return None
        return float(np.median(blocks))

    def far_end_s(self) -> float:
        """Seconds of microphone audio processed while the far end was active."""
        with self._stats_lock:
            return self._far_frames * FRAME_S

    def diverged(self) -> bool:
        """True if the canceller is not doing its job: fall back (e.g. half duplex while playing).

        That is: the engine failed, or after `diverged_after_far_end_s` of far-end audio the
        ERLE is under `diverged_below_db`. Not latched: it turns False again if AEC3 recovers.
        """
        if self._error:
            return True
        if self.far_end_s() < self.config.diverged_after_far_end_s:
            return False
        erle = self.erle_db()
        return erle is not None and erle < self.config.diverged_below_db

    def cpu_ms_per_audio_s(self) -> float:
        """CPU ms this canceller used (both threads) per second of microphone audio processed."""
        with self._stats_lock:
            capture_cpu_s, frames = self._capture_cpu_s, self._capture_frames
        with self._reverse_lock:
            reverse_cpu_s = self._reverse_cpu_s
        audio_s = frames * FRAME_S
        return 1000.0 * (capture_cpu_s + reverse_cpu_s) / audio_s if audio_s else 0.0

    def stats(self) -> EchoStats:
        """A snapshot for logs and metrics."""
        with self._stats_lock:
            audio_s = self._capture_frames * FRAME_S
        with self._reverse_lock:
            dropped = self._dropped_reverse
        return EchoStats(
            erle_db=self.erle_db(), far_end_s=self.far_end_s(), diverged=self.diverged(),
            cpu_ms_per_audio_s=self.cpu_ms_per_audio_s(), audio_s=audio_s,
            dropped_reverse_frames=dropped, delay_ms=self._delay_ms, error=self._error,
        )  # fmt: skip

    def close(self) -> None:
        """Release the engine; later `process` calls pass audio through. Idempotent."""
        self._apm = None  # process() takes its own reference first, so a running call finishes
        with self._reverse_lock:
            self._pending.clear()
