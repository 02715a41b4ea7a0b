"""Spoken test input made at test time with espeak-ng, or the bundled Piper voice (nothing large is committed)."""

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


_PIPER_VOICE = None


def piper_voice():
    """The bundled Piper voice (the assistant's own), loaded once."""
    global _PIPER_VOICE
    if _PIPER_VOICE is None:
        from piper import PiperVoice

        from voice_assistant.models import default_tts_model

        _PIPER_VOICE = PiperVoice.load(str(default_tts_model()))
    return _PIPER_VOICE


def piper_sentence(text: str, length_scale: float = 1.0) -> np.ndarray:
    """`text` spoken by the Piper voice, 16 kHz float32, trimmed to its sound."""
    from piper import SynthesisConfig

    from voice_assistant.wavio import resample

    voice = piper_voice()
    settings = SynthesisConfig(length_scale=length_scale)
    audio = np.concatenate([chunk.audio_float_array for chunk in voice.synthesize(text, syn_config=settings)])
    audio = resample(audio.astype(np.float32), voice.config.sample_rate, 16000)
    loud = np.nonzero(np.abs(audio) > 0.01)[0]
    return audio[loud[0] : loud[-1] + 1]


def quiet_gaps(audio: np.ndarray, frame: int = 160, threshold: float = 0.01) -> list[tuple[int, int]]:
    """(start, end) samples of each run of at least 4 quiet 10 ms frames."""
    quiet = [float(np.sqrt(np.mean(audio[i : i + frame] ** 2))) < threshold for i in range(0, len(audio) - frame, frame)]
    gaps, start = [], None
    for index, is_quiet in enumerate(quiet + [False]):
        if is_quiet and start is None:
            start = index
        elif not is_quiet and start is not None:
            if index - start >= 4:
                gaps.append((start * frame, index * frame))
            start = None
    return gaps


def piper_split(first: str, second: str, length_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The sentence "first, second" spoken whole by Piper, cut at the comma's pause (the longest quiet gap
    near where `first` alone ends): the first half ends with the level pitch of a sentence that goes on,
    as a person's does when they pause to think (espeak, and Piper speaking the halves separately, end
    it like a finished sentence)."""
    whole = piper_sentence(f"{first}, {second}", length_scale)
    alone = len(piper_sentence(f"{first},", length_scale))
    near = [gap for gap in quiet_gaps(whole) if 0.7 * alone <= gap[0] <= 1.3 * alone]
    if not near:
        raise ValueError(f"no pause found in Piper's {first!r}, {second!r}")
    start, end = max(near, key=lambda gap: gap[1] - gap[0])
    return whole[:start], whole[end:]


def conversation(parts: list, path: Path, rate_hz: int = 16000) -> tuple[Path, list[tuple[float, float]]]:
    """A WAV of utterances (str: espeak; a float32 array: audio at `rate_hz`) and pauses (float seconds);
    returns it and each utterance's (start, end) s."""
    pieces, spans, cursor = [], [], 0
    for part in parts:
        if isinstance(part, (str, np.ndarray)):
            if isinstance(part, str):
                clip, _ = soundfile.read(str(say(part, path.with_name("utt.wav"), rate_hz)), dtype="float32")
            else:
                clip = part
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
