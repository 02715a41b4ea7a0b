"""The WAV reader takes what users have (any rate, channels, sample format) and rejects the rest in one line."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import soundfile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from voice_assistant.audio_io import INPUT_RATE_HZ, WavFileSource
from voice_assistant.errors import WavFormatError
from voice_assistant.wavio import read_wav


def tone(rate: int, seconds: float, channels: int) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    mono = 0.5 * np.sin(2 * np.pi * 440 * t)
    return np.stack([mono] * channels, axis=1) if channels > 1 else mono


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
@pytest.mark.parametrize("rate, channels", [(8000, 1), (44100, 2), (96000, 6)])
def test_every_common_format_reads_as_mono_and_resamples(tmp_path, subtype, rate, channels):
    path = tmp_path / "in.wav"
    soundfile.write(str(path), tone(rate, 0.5, channels), rate, subtype=subtype)
    samples, got_rate = read_wav(path)
    assert got_rate == rate and samples.ndim == 1 and samples.dtype == np.float32
    assert len(samples) == int(rate * 0.5)
    assert 0.45 < float(np.abs(samples).max()) <= 0.51
    source = WavFileSource(path)
    assert abs(len(source.samples) - INPUT_RATE_HZ * 0.5) <= 2


def test_truncated_wav_reads_what_is_there(tmp_path):
    path = tmp_path / "cut.wav"
    soundfile.write(str(path), tone(16000, 1.0, 1), 16000, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the header still promises a whole second
    samples, rate = read_wav(path)
    assert rate == 16000 and 0 < len(samples) < 16000


def test_wav_without_samples_is_rejected(tmp_path):
    path = tmp_path / "silent.wav"
    soundfile.write(str(path), np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(WavFormatError, match="contains no audio"):
        read_wav(path)


def test_other_audio_formats_are_named(tmp_path):
    path = tmp_path / "song.wav"
    soundfile.write(str(path), tone(16000, 0.2, 1), 16000, format="FLAC")
    with pytest.raises(WavFormatError, match="not a WAV file"):
        read_wav(path)


def riff(payload: bytes) -> bytes:
    return b"RIFF" + struct.pack("<I", len(payload) + 4) + b"WAVE" + payload


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=400), keep_fmt=st.booleans())
def test_random_bytes_never_escape_as_other_errors(tmp_path, body, keep_fmt):
    fmt = b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16) if keep_fmt else b""
    path = tmp_path / "fuzz.wav"
    path.write_bytes(riff(fmt + body))
    try:
        samples, rate = read_wav(path)
    except WavFormatError as exc:
        assert str(exc)  # one readable line
        assert "\n" not in str(exc)
    else:
        assert samples.ndim == 1 and len(samples) > 0 and np.all(np.abs(samples) <= 1.0) and rate > 0
