"""The GE2E speaker encoder with the weights shipped inside the resemblyzer package.

resemblyzer's own `__init__` imports librosa (not installed here), so the network is rebuilt in
torch with the same layout as `resemblyzer.VoiceEncoder` (LSTM 40->256 x3, Linear 256->256, ReLU,
L2 norm) and `pretrained.pt` is loaded with `weights_only=True` from the package directory, found
without importing the package. torch is imported only when a model is loaded.

`SpeakerEncoder.embed` may be called from any number of threads at once: the module is read-only
after loading and runs under `torch.inference_mode()`. It does not change torch's global thread
count; set `torch.set_num_threads` in the program's `main()`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import threading
import time
from pathlib import Path

import numpy as np

from . import features
from .errors import ModelError

log = logging.getLogger(__name__)

EMBEDDING_SIZE = 256
_HIDDEN_SIZE = 256
_LAYERS = 3


def default_weights_path() -> Path:
    """`pretrained.pt` inside the installed resemblyzer package (found without importing it)."""
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("package resemblyzer is not installed: run scripts/setup.sh (it installs it with --no-deps)")
    return Path(list(spec.submodule_search_locations)[0]) / "pretrained.pt"


class SpeakerEncoder:
    """Turns speech into a 256-d unit vector; same speaker -> high cosine similarity."""

    def __init__(self, network, model_id: str) -> None:
        self._network = network
        self.model_id: str = model_id
        """Names the weights (sha256 prefix of the file): enrollments remember it."""

    @classmethod
    def load(cls, weights_path: Path | None = None) -> "SpeakerEncoder":
        """Load GE2E weights (default: resemblyzer's); ModelError if they are missing or broken."""
        started = time.perf_counter()
        path = Path(weights_path) if weights_path is not None else default_weights_path()
        if not path.is_file():
            raise ModelError(f"speaker-encoder weights not found: {path} (reinstall resemblyzer with scripts/setup.sh)")
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise ModelError(f"cannot read speaker-encoder weights {path}: {exc.strerror}") from None
        import torch

        try:
            checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
            state = (
                checkpoint["model_state"]
                if isinstance(checkpoint, dict) and "model_state" in checkpoint
                else checkpoint
            )
            network = _build_network(torch)
            network.load_state_dict({k: v for k, v in state.items() if k.startswith(("lstm.", "linear."))}, strict=True)
        except Exception as exc:  # torch raises many unrelated types for a bad checkpoint
            raise ModelError(
                f"speaker-encoder weights {path} could not be loaded: {str(exc).splitlines()[0][:200]}"
            ) from None
        network.eval()
        for parameter in network.parameters():
            parameter.requires_grad_(False)
        log.info("speaker encoder loaded from %s in %.2f s", path, time.perf_counter() - started)
        return cls(network, f"ge2e-resemblyzer-{digest[:16]}")

    def embed(self, audio: np.ndarray, sample_rate_hz: int) -> np.ndarray:
        """(256,) float32 unit embedding of one utterance; AudioTooShortError under 1 s of speech.

        `audio`: mono float samples in [-1, 1] (or int16) at `sample_rate_hz`; 16 kHz float32
        is used as it is, other rates are resampled. Thread-safe.
        """
        return self.embed_prepared(features.prepare(audio, sample_rate_hz))

    def embed_prepared(self, speech: np.ndarray) -> np.ndarray:
        """Embedding of speech already passed through `features.prepare` (16 kHz, silences trimmed)."""
        import torch

        mels = features.partial_mels(speech)
        with torch.inference_mode():
            partials = self._network(torch.from_numpy(mels)).numpy()
        return _unit(partials.mean(axis=0))


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    if norm == 0.0 or not np.isfinite(norm):
        return np.zeros(EMBEDDING_SIZE, dtype=np.float32)
    return (vector / norm).astype(np.float32)


def _build_network(torch):
    nn = torch.nn

    class GE2E(nn.Module):
        """resemblyzer.VoiceEncoder's layers, with the same parameter names."""

        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(features.MEL_CHANNELS, _HIDDEN_SIZE, _LAYERS, batch_first=True)
            self.linear = nn.Linear(_HIDDEN_SIZE, EMBEDDING_SIZE)
            self.relu = nn.ReLU()

        def forward(self, mels):
            _, (hidden, _) = self.lstm(mels)
            raw = self.relu(self.linear(hidden[-1]))
            return raw / torch.clamp(torch.norm(raw, dim=1, keepdim=True), min=1e-12)

    return GE2E()


_default: SpeakerEncoder | None = None
_default_lock = threading.Lock()


def load_encoder() -> SpeakerEncoder:
    """The process-wide encoder with the bundled weights, loaded on first use (thread-safe)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = SpeakerEncoder.load()
        return _default


def embed(audio: np.ndarray, sample_rate_hz: int) -> np.ndarray:
    """(256,) unit embedding of `audio` with the process-wide encoder. Thread-safe."""
    return load_encoder().embed(audio, sample_rate_hz)
