"""Silero VAD (ONNX from the `silero-vad` package) for speech onsets, offsets and barge-in."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from .errors import SetupError

SAMPLE_RATE_HZ = 16000
CHUNK_SAMPLES = 512  # the model's window at 16 kHz: 32 ms
CONTEXT_SAMPLES = 64  # samples of the previous window the model sees


def silero_model_path() -> Path:
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise SetupError("package silero-vad is not installed: run scripts/setup.sh")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "silero_vad.onnx"
    if not path.is_file():
        raise SetupError(f"{path} is missing from package silero-vad")
    return path


class SileroVAD:
    """Speech probability per 32 ms window. Not thread-safe: one caller (the audio-in thread)."""

    def __init__(self, session) -> None:
        self._session = session
        self.reset()

    @classmethod
    def load(cls, threads: int = 1) -> "SileroVAD":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(
            str(silero_model_path()), sess_options=options, providers=["CPUExecutionProvider"]
        )
        return cls(session)

    def reset(self) -> None:
        self._state = np.zeros((2, 1, 128), dtype=np.float32)
        self._context = np.zeros((1, CONTEXT_SAMPLES), dtype=np.float32)

    def probability(self, chunk: np.ndarray) -> float:
        """Speech probability of exactly CHUNK_SAMPLES float32 samples at 16 kHz."""
        x = np.concatenate([self._context, chunk.reshape(1, -1).astype(np.float32)], axis=1)
        out, self._state = self._session.run(
            None, {"input": x, "state": self._state, "sr": np.array(SAMPLE_RATE_HZ, dtype=np.int64)}
        )
        self._context = x[:, -CONTEXT_SAMPLES:]
        return float(out[0, 0])
