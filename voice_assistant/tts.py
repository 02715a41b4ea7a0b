"""Piper text-to-speech with an explicit onnxruntime thread budget."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import SetupError
from .models import check_piper_model

log = logging.getLogger(__name__)


class PiperSynthesizer:
    """Synthesizes text into float32 mono audio. Thread-safe: calls are serialized."""

    def __init__(self, voice) -> None:
        self._voice = voice
        self._lock = threading.Lock()
        self.sample_rate_hz: int = voice.config.sample_rate

    @classmethod
    def load(cls, model_path: Path, threads: int = 1) -> "PiperSynthesizer":
        """Load a Piper `.onnx` with its `.onnx.json`; SetupError if either is missing or broken."""
        import onnxruntime
        from piper.config import PiperConfig
        from piper.voice import PiperVoice

        model_path, config_path = check_piper_model(Path(model_path))
        try:
            with open(config_path, encoding="utf-8") as handle:
                config = PiperConfig.from_dict(json.load(handle))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SetupError(f"Piper voice config {config_path} is unreadable: {exc}") from None
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            session = onnxruntime.InferenceSession(
                str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise SetupError(f"Piper voice {model_path} could not be loaded: {str(exc)[:200]}") from None
        return cls(PiperVoice(session=session, config=config))

    def synthesize(self, text: str) -> Iterator[np.ndarray]:
        """Audio for `text`, one array per sentence Piper finds, as soon as each is ready."""
        for chunk in self._voice.synthesize(text):
            yield chunk.audio_float_array.astype(np.float32, copy=False)

    def synthesize_all(self, text: str) -> np.ndarray:
        with self._lock:
            parts = list(self.synthesize(text))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def warm_up(self) -> None:
        self.synthesize_all("Hello.")


class SilentSynthesizer:
    """--no-speak: every sentence is 10 ms of silence, so replies are printed and timed but not heard."""

    def __init__(self, sample_rate_hz: int = 22050) -> None:
        self.sample_rate_hz = sample_rate_hz

    def synthesize_all(self, text: str) -> np.ndarray:
        return np.zeros(self.sample_rate_hz // 100, dtype=np.float32)

    def warm_up(self) -> None:
        pass


class BilingualSynthesizer:
    """English text to the English voice, Chinese text to the Mandarin voice (--language zh and auto).

    The voice is chosen per sentence from its own characters (text.is_chinese), so a reply is
    spoken in the language it was written in whatever the user spoke. Both come out at the English
    voice's rate, the one the speaker was opened at (the Mandarin voice's 24 kHz is resampled)."""

    def __init__(self, english, mandarin) -> None:
        self.english = english
        self.mandarin = mandarin
        self.sample_rate_hz: int = english.sample_rate_hz

    def synthesize_all(self, text: str) -> np.ndarray:
        from .text import is_chinese
        from .wavio import resample

        if not is_chinese(text):
            return self.english.synthesize_all(text)
        return resample(self.mandarin.synthesize_all(text), self.mandarin.sample_rate_hz, self.sample_rate_hz)

    def warm_up(self) -> None:
        self.english.warm_up()
        self.mandarin.warm_up()
