"""Audio front end of the GE2E speaker encoder, in numpy: what resemblyzer 0.1.4 does with librosa.

- `prepare()`: mono float32 at 16 kHz, volume raised to -30 dBFS (never lowered), silences longer
  than about 0.2 s cut out with WebRTC VAD (resemblyzer's `preprocess_wav`).
- `mel_frames()`: 40-channel mel power spectrogram (not log), 25 ms Hann window, 10 ms hop,
  Slaney mel scale and area normalisation, centred frames with reflect padding (librosa's
  `melspectrogram` defaults when resemblyzer's weights were trained).
- `partial_slices()`: 160-frame (1.6 s) windows, 1.3 per second (about 50% overlap); the last one
  is kept if it is at least 75% covered (resemblyzer's `compute_partial_slices`).

Pure functions of their arguments: safe to call from any thread.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import binary_dilation

from voice_assistant.wavio import resample

from .errors import AudioError, AudioTooShortError

SAMPLE_RATE_HZ = 16000
WINDOW_SAMPLES = 400  # 25 ms
HOP_SAMPLES = 160  # 10 ms
MEL_CHANNELS = 40
PARTIAL_FRAMES = 160  # 1.6 s per partial utterance
PARTIALS_PER_S = 1.3
PARTIAL_MIN_COVERAGE = 0.75
TARGET_DBFS = -30.0
MIN_SPEECH_S = 1.0  # less speech than this gives unreliable embeddings

_VAD_WINDOW_SAMPLES = 480  # 30 ms
_VAD_SMOOTHING_WINDOWS = 8
_VAD_MAX_SILENCE_WINDOWS = 6
_INT16_MAX = 32767


def as_mono_float(audio: np.ndarray) -> np.ndarray:
    """1-D float32 samples in [-1, 1] from float or int16 input; (frames, channels) input is mixed down."""
    samples = np.asarray(audio)
    if samples.dtype == np.int16:
        samples = samples.astype(np.float32) / 32768.0
    elif not np.issubdtype(samples.dtype, np.floating):
        raise AudioError(f"audio must be float or int16 samples, got {samples.dtype}")
    samples = samples.astype(np.float32, copy=False)
    if samples.ndim == 2:
        samples = samples.mean(axis=1, dtype=np.float32)
    if samples.ndim != 1:
        raise AudioError(f"audio must be 1-D samples or (frames, channels), got shape {samples.shape}")
    if not np.all(np.isfinite(samples)):
        raise AudioError("audio contains NaN or infinite samples")
    return samples


def prepare(audio: np.ndarray, sample_rate_hz: int, min_speech_s: float = MIN_SPEECH_S) -> np.ndarray:
    """16 kHz float32 speech ready for `mel_frames`; AudioTooShortError if under `min_speech_s` is left."""
    if sample_rate_hz < 4000:
        raise AudioError(f"sample rate {sample_rate_hz} Hz is too low for speech")
    samples = resample(as_mono_float(audio), int(sample_rate_hz), SAMPLE_RATE_HZ)
    samples = normalize_volume(samples)
    speech = trim_long_silences(samples)
    speech_s = len(speech) / SAMPLE_RATE_HZ
    if speech_s < min_speech_s:
        total_s = len(samples) / SAMPLE_RATE_HZ
        raise AudioTooShortError(
            f"only {speech_s:.1f} s of speech in {total_s:.1f} s of audio; at least {min_speech_s:.1f} s is needed"
        )
    return speech


def normalize_volume(samples: np.ndarray, target_dbfs: float = TARGET_DBFS) -> np.ndarray:
    """Raise quiet audio to `target_dbfs` RMS; louder audio is left alone. Silence stays silence."""
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if len(samples) else 0.0
    if rms <= 1e-9:
        return samples
    change_db = target_dbfs - 20.0 * np.log10(rms)
    if change_db <= 0:
        return samples
    return (samples * np.float32(10.0 ** (change_db / 20.0))).astype(np.float32)


def trim_long_silences(samples: np.ndarray) -> np.ndarray:
    """`samples` without the non-speech stretches WebRTC VAD (mode 3) finds, as resemblyzer does."""
    import webrtcvad  # webrtcvad-wheels; imported here so that importing the package stays cheap

    usable = len(samples) - len(samples) % _VAD_WINDOW_SAMPLES
    samples = samples[:usable]
    if usable == 0:
        return samples
    pcm = np.round(np.clip(samples, -1.0, 1.0) * _INT16_MAX).astype("<i2").tobytes()
    vad = webrtcvad.Vad(3)  # one per call: a Vad object keeps state and is not shared
    window_bytes = _VAD_WINDOW_SAMPLES * 2
    flags = np.array(
        [
            vad.is_speech(pcm[start : start + window_bytes], SAMPLE_RATE_HZ)
            for start in range(0, len(pcm), window_bytes)
        ],
        dtype=np.float64,
    )
    width = _VAD_SMOOTHING_WINDOWS
    padded = np.concatenate((np.zeros((width - 1) // 2), flags, np.zeros(width // 2)))
    sums = np.cumsum(padded)
    sums[width:] = sums[width:] - sums[:-width]
    mask = np.round(sums[width - 1 :] / width).astype(bool)
    mask = binary_dilation(mask, np.ones(_VAD_MAX_SILENCE_WINDOWS + 1, dtype=bool))
    return samples[np.repeat(mask, _VAD_WINDOW_SAMPLES)]


def mel_filterbank() -> np.ndarray:
    """(40, 201) Slaney-style mel filters for a 400-point FFT at 16 kHz (librosa.filters.mel defaults)."""
    n_fft_bins = 1 + WINDOW_SAMPLES // 2
    fft_hz = np.linspace(0.0, SAMPLE_RATE_HZ / 2, n_fft_bins)
    mel_edges = np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE_HZ / 2), MEL_CHANNELS + 2)
    edges_hz = _mel_to_hz(mel_edges)
    widths = np.diff(edges_hz)
    ramps = edges_hz[:, None] - fft_hz[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges_hz[2:] - edges_hz[:-2]))[:, None]
    return weights.astype(np.float32)


def _hz_to_mel(hz):
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log_part, linear)


def _mel_to_hz(mel):
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * (200.0 / 3)
    log_part = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, log_part, linear)


_MEL_BASIS = mel_filterbank()
_WINDOW = (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(WINDOW_SAMPLES) / WINDOW_SAMPLES)).astype(np.float32)


def mel_frames(samples: np.ndarray) -> np.ndarray:
    """(frames, 40) float32 mel power spectrogram of 16 kHz audio; frame i is centred on sample 160*i."""
    half = WINDOW_SAMPLES // 2
    mode = "reflect" if len(samples) > half else "constant"
    padded = np.pad(samples.astype(np.float32, copy=False), half, mode=mode)
    frames = np.lib.stride_tricks.sliding_window_view(padded, WINDOW_SAMPLES)[::HOP_SAMPLES]
    spectrum = np.fft.rfft(frames * _WINDOW, axis=1)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    return (power @ _MEL_BASIS.T).astype(np.float32)


def partial_slices(n_samples: int) -> tuple[list[slice], list[slice]]:
    """(waveform slices, mel-frame slices) of the partial utterances covering `n_samples` samples."""
    n_frames = int(np.ceil((n_samples + 1) / HOP_SAMPLES))
    frame_step = max(1, int(np.round((SAMPLE_RATE_HZ / PARTIALS_PER_S) / HOP_SAMPLES)))
    steps = max(1, n_frames - PARTIAL_FRAMES + frame_step + 1)
    mel_slices = [slice(start, start + PARTIAL_FRAMES) for start in range(0, steps, frame_step)]
    wav_slices = [slice(s.start * HOP_SAMPLES, s.stop * HOP_SAMPLES) for s in mel_slices]
    last = wav_slices[-1]
    coverage = (n_samples - last.start) / (last.stop - last.start)
    if coverage < PARTIAL_MIN_COVERAGE and len(mel_slices) > 1:
        mel_slices, wav_slices = mel_slices[:-1], wav_slices[:-1]
    return wav_slices, mel_slices


def partial_mels(speech: np.ndarray) -> np.ndarray:
    """(partials, 160, 40) float32 mel windows of prepared speech, zero-padding the end as needed."""
    wav_slices, mel_slices = partial_slices(len(speech))
    needed = wav_slices[-1].stop
    if needed >= len(speech):
        speech = np.pad(speech, (0, needed - len(speech)))
    mel = mel_frames(speech)
    return np.stack([mel[s] for s in mel_slices])
