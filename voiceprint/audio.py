"""Where audio comes from: WAV files, the microphone, a Piper voice. Each failure is a VoiceprintError."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from voice_assistant.errors import SetupError, WavFormatError
from voice_assistant.wavio import read_wav

from .errors import AudioFileError, MicrophoneError, SynthesisError

MIC_RATE_HZ = 16000


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """(mono float32 samples, sample rate in Hz) of a WAV file; AudioFileError if it is unusable."""
    try:
        return read_wav(Path(path))
    except WavFormatError as exc:
        raise AudioFileError(str(exc)) from None


def record_microphone(
    seconds: float,
    device: int | str | None = None,
    on_start: Callable[[], None] | None = None,
) -> tuple[np.ndarray, int]:
    """Record `seconds` of mono 16 kHz audio (blocking); MicrophoneError if no input device works.

    `on_start` is called once the device is open, just before recording starts (to prompt the user).
    """
    if not seconds > 0:
        raise MicrophoneError(f"recording length must be positive, got {seconds} s")
    try:
        import sounddevice
    except OSError as exc:  # libportaudio2 missing
        raise MicrophoneError(f"no audio input available: {exc}") from None
    try:
        with sounddevice.InputStream(samplerate=MIC_RATE_HZ, channels=1, dtype="float32", device=device) as stream:
            if on_start is not None:
                on_start()
            data, _overflowed = stream.read(int(round(seconds * MIC_RATE_HZ)))
    except (sounddevice.PortAudioError, ValueError) as exc:
        raise MicrophoneError(f"cannot record from the microphone: {exc}") from None
    return np.ascontiguousarray(data[:, 0], dtype=np.float32), MIC_RATE_HZ


def synthesize_piper(model_path: Path, text: str) -> tuple[np.ndarray, int]:
    """(float32 samples, sample rate in Hz) of `text` spoken by a Piper voice (`.onnx` + `.onnx.json`)."""
    from voice_assistant.tts import PiperSynthesizer

    if not text.strip():
        raise SynthesisError("--text is empty: give Piper something to say")
    try:
        synthesizer = PiperSynthesizer.load(Path(model_path), threads=1)
        audio = synthesizer.synthesize_all(text)
    except SetupError as exc:
        raise SynthesisError(str(exc)) from None
    if len(audio) == 0:
        raise SynthesisError(f"Piper voice {model_path} produced no audio for the text")
    return audio, synthesizer.sample_rate_hz
