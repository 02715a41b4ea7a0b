"""Spoken test input made at test time with espeak-ng and sox (nothing large is committed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def say(text: str, path: Path, rate_hz: int = 16000, voice: str = "en-us") -> Path:
    """Speak `text` into a mono 16-bit WAV at `rate_hz`."""
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", "160", "-w", str(raw), text], check=True)
    audio, rate = soundfile.read(str(raw), dtype="float32")
    raw.unlink()
    from voice_assistant.wavio import resample

    soundfile.write(str(path), resample(audio, rate, rate_hz), rate_hz, subtype="PCM_16")
    return path


def conversation(parts: list, path: Path, rate_hz: int = 16000) -> tuple[Path, list[tuple[float, float]]]:
    """A WAV of utterances (str) and pauses (float seconds); returns it and each utterance's (start, end) s."""
    pieces, spans, cursor = [], [], 0
    for part in parts:
        if isinstance(part, str):
            clip, _ = soundfile.read(str(say(part, path.with_name("utt.wav"), rate_hz)), dtype="float32")
            voiced = np.nonzero(np.abs(clip) > 0.01)[0]
            spans.append(((cursor + voiced[0]) / rate_hz, (cursor + voiced[-1]) / rate_hz))
        else:
            clip = np.zeros(int(part * rate_hz), dtype=np.float32)
        pieces.append(clip)
        cursor += len(clip)
    soundfile.write(str(path), np.concatenate(pieces), rate_hz, subtype="PCM_16")
    return path, spans


def voiced_spans(audio: np.ndarray, rate_hz: int, threshold: float = 0.01, gap_s: float = 0.6):
    """(start, end) seconds of sound in `audio`, merging gaps shorter than `gap_s`."""
    loud = np.nonzero(np.abs(audio) > threshold)[0]
    if len(loud) == 0:
        return []
    spans, start, prev = [], loud[0], loud[0]
    for index in loud[1:]:
        if index - prev > gap_s * rate_hz:
            spans.append((start / rate_hz, prev / rate_hz))
            start = index
        prev = index
    spans.append((start / rate_hz, prev / rate_hz))
    return spans
