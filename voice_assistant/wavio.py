"""Reading and writing WAV files, and resampling. Every read failure becomes one WavFormatError."""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import resample_poly

from .errors import WavFormatError


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """(mono float32 samples in [-1, 1], sample rate in Hz) of any PCM or float WAV."""
    path = Path(path)
    if not path.is_file():
        raise WavFormatError(f"input WAV not found: {path}")
    try:
        info = soundfile.info(str(path))
        if info.format != "WAV" and info.format != "WAVEX":
            raise WavFormatError(f"{path} is not a WAV file (found {info.format})")
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except WavFormatError:
        raise
    except (RuntimeError, soundfile.LibsndfileError, OSError, ValueError) as exc:
        raise WavFormatError(f"cannot read WAV {path}: {exc}") from None
    if data.shape[0] == 0:
        raise WavFormatError(f"WAV {path} contains no audio")
    if rate < 4000 or rate > 384000:
        raise WavFormatError(f"WAV {path} has an unsupported sample rate of {rate} Hz")
    mono = data.mean(axis=1).astype(np.float32)
    if not np.all(np.isfinite(mono)):
        raise WavFormatError(f"WAV {path} contains NaN or infinite samples")
    return np.clip(mono, -1.0, 1.0), int(rate)


def resample(samples: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """Polyphase resampling of float32 mono audio."""
    if from_hz == to_hz:
        return samples.astype(np.float32, copy=False)
    divisor = gcd(from_hz, to_hz)
    return resample_poly(samples, to_hz // divisor, from_hz // divisor).astype(np.float32)


def to_int16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).astype(np.int16)


def write_wav(path: Path, samples: np.ndarray, rate_hz: int) -> None:
    """Write 16-bit PCM, mono or (frames, channels) (float input is clipped to [-1, 1])."""
    if samples.dtype != np.int16:
        samples = to_int16(samples)
    soundfile.write(str(path), samples, rate_hz, subtype="PCM_16")
