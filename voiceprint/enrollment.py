"""Enrollments and where they are kept.

One JSON file per speaker, `<name>.json`, in `$XDG_DATA_HOME/voice-assistant/voiceprints`
(default `~/.local/share/voice-assistant/voiceprints`). The directory is made 0700 and each file
0600: a voiceprint is biometric data. Files are replaced atomically (temporary file + rename).

File format, version 1 (every key required, no others read):

    {
      "format": "voiceprint-enrollment",
      "version": 1,
      "name": "alice",                    same as the file name without ".json"
      "model_id": "ge2e-resemblyzer-…",   the encoder that made the embedding
      "embedding": [0.0123, …],           256 floats, unit length
      "clip_count": 3,                    clips averaged into the embedding
      "audio_s": 12.4,                    seconds of audio in those clips (before silence trimming)
      "created_utc": "2025-01-31T12:00:00Z"
    }
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .encoder import EMBEDDING_SIZE
from .errors import (
    EnrollmentError,
    EnrollmentExistsError,
    EnrollmentFormatError,
    EnrollmentNotFoundError,
    InvalidNameError,
)

FORMAT_NAME = "voiceprint-enrollment"
FORMAT_VERSION = 1
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SUFFIX = ".json"


@dataclass(frozen=True, eq=False)
class Enrollment:
    """A speaker's voiceprint: the mean of the embeddings of their enrollment clips."""

    name: str
    """Speaker name; also the file name (letters, digits, `_.-`, at most 64, starting alphanumeric)."""
    embedding: np.ndarray
    """(256,) float32 unit vector."""
    clip_count: int
    """How many clips were averaged."""
    audio_s: float
    """Seconds of audio in those clips, before silence trimming."""
    created_utc: datetime
    """When the enrollment was made (timezone-aware, UTC)."""
    model_id: str
    """`SpeakerEncoder.model_id` of the encoder that made `embedding`."""

    def score(self, embedding: np.ndarray) -> float:
        """Cosine similarity in [-1, 1] between this voiceprint and an utterance's embedding."""
        return cosine(self.embedding, embedding)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors (0.0 when either is all zeros)."""
    norms = float(np.linalg.norm(a)) * float(np.linalg.norm(b))
    return float(np.dot(a, b) / norms) if norms > 0 else 0.0


def validate_name(name: str) -> str:
    """`name` if it is a safe speaker name; InvalidNameError otherwise (no paths, no dot files)."""
    if not isinstance(name, str) or not _NAME_PATTERN.fullmatch(name):
        raise InvalidNameError(
            f"invalid speaker name {name!r}: use 1 to 64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


def default_store_dir() -> Path:
    """`$XDG_DATA_HOME/voice-assistant/voiceprints`, or `~/.local/share/...` when that is unset or relative."""
    data_home = os.environ.get("XDG_DATA_HOME", "")
    base = Path(data_home) if data_home and Path(data_home).is_absolute() else Path.home() / ".local" / "share"
    return base / "voice-assistant" / "voiceprints"


def to_json(enrollment: Enrollment) -> dict:
    """The version-1 file content of `enrollment`."""
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "name": enrollment.name,
        "model_id": enrollment.model_id,
        # str() of a float32 is its shortest decimal form that reads back to the same float32
        "embedding": [float(str(x)) for x in np.asarray(enrollment.embedding, dtype=np.float32)],
        "clip_count": int(enrollment.clip_count),
        "audio_s": round(float(enrollment.audio_s), 3),
        "created_utc": enrollment.created_utc.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def from_json(data: object, source: str) -> Enrollment:
    """Parse version-1 content; EnrollmentFormatError naming `source` and the problem otherwise."""

    def bad(reason: str) -> EnrollmentFormatError:
        return EnrollmentFormatError(f"corrupt enrollment file {source}: {reason}")

    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise bad(f"not a {FORMAT_NAME} file")
    version = data.get("version")
    if version != FORMAT_VERSION:
        raise EnrollmentFormatError(
            f"enrollment file {source} has format version {version!r}; this program reads version {FORMAT_VERSION}"
        )
    try:
        name = validate_name(data["name"])
        model_id = data["model_id"]
        embedding = np.asarray(data["embedding"], dtype=np.float32)
        clip_count = data["clip_count"]
        audio_s = float(data["audio_s"])
        created = datetime.strptime(data["created_utc"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except KeyError as exc:
        raise bad(f"missing key {exc}") from None
    except (TypeError, ValueError, InvalidNameError) as exc:
        raise bad(str(exc).splitlines()[0]) from None
    if not isinstance(model_id, str) or not model_id:
        raise bad("model_id must be a non-empty string")
    if not isinstance(clip_count, int) or isinstance(clip_count, bool) or clip_count < 1:
        raise bad("clip_count must be a positive integer")
    if embedding.shape != (EMBEDDING_SIZE,) or not np.all(np.isfinite(embedding)):
        raise bad(f"embedding must be {EMBEDDING_SIZE} finite numbers")
    if abs(float(np.linalg.norm(embedding)) - 1.0) > 1e-3:
        raise bad("embedding is not a unit vector")
    if not np.isfinite(audio_s) or audio_s < 0:
        raise bad("audio_s must be a non-negative number")
    return Enrollment(name, embedding, clip_count, audio_s, created, model_id)


class EnrollmentStore:
    """Enrollment files in one directory. Each call reads or writes the disk; no caching."""

    def __init__(self, root: Path | None = None) -> None:
        self.root: Path = Path(root) if root is not None else default_store_dir()
        """Directory holding `<name>.json` files."""

    def path_for(self, name: str) -> Path:
        """The file of speaker `name` (validated, so it is always inside `root`)."""
        return self.root / (validate_name(name) + _SUFFIX)

    def exists(self, name: str) -> bool:
        return self.path_for(name).is_file()

    def save(self, enrollment: Enrollment, overwrite: bool = False) -> Path:
        """Write `enrollment` (0600, directory 0700); EnrollmentExistsError if present and not `overwrite`."""
        path = self.path_for(enrollment.name)
        if path.exists() and not overwrite:
            raise EnrollmentExistsError(
                f"speaker {enrollment.name!r} is already enrolled: delete it or replace it (--force)"
            )
        text = json.dumps(to_json(enrollment), indent=1) + "\n"
        try:
            self._make_root()
            descriptor, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=_SUFFIX, dir=self.root)
        except OSError as exc:
            raise EnrollmentError(f"cannot create enrollment directory {self.root}: {exc.strerror or exc}") from None
        try:
            os.fchmod(descriptor, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
        except BaseException as exc:
            Path(temporary).unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise EnrollmentError(f"cannot write enrollment file {path}: {exc.strerror or exc}") from None
            raise
        return path

    def load(self, name: str) -> Enrollment:
        """The enrollment of `name`; EnrollmentNotFoundError or EnrollmentFormatError otherwise."""
        path = self.path_for(name)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise EnrollmentNotFoundError(f"no enrollment named {name!r} in {self.root}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise EnrollmentFormatError(f"cannot read enrollment file {path}: {exc}") from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise EnrollmentFormatError(f"corrupt enrollment file {path}: invalid JSON ({exc})") from None
        enrollment = from_json(data, str(path))
        if enrollment.name != name:
            raise EnrollmentFormatError(f"corrupt enrollment file {path}: it holds speaker {enrollment.name!r}")
        return enrollment

    def names(self) -> list[str]:
        """Sorted names of the stored enrollments (files whose names are valid speaker names)."""
        if not self.root.is_dir():
            return []
        try:
            stems = [path.name[: -len(_SUFFIX)] for path in self.root.glob("*" + _SUFFIX) if path.is_file()]
        except OSError as exc:
            raise EnrollmentError(f"cannot list enrollment directory {self.root}: {exc.strerror or exc}") from None
        return sorted(stem for stem in stems if _NAME_PATTERN.fullmatch(stem))

    def delete(self, name: str) -> None:
        """Remove the enrollment of `name`; EnrollmentNotFoundError if there is none."""
        path = self.path_for(name)
        try:
            path.unlink()
        except FileNotFoundError:
            raise EnrollmentNotFoundError(f"no enrollment named {name!r} in {self.root}") from None
        except OSError as exc:
            raise EnrollmentError(f"cannot delete enrollment file {path}: {exc.strerror or exc}") from None

    def _make_root(self) -> None:
        created = not self.root.exists()
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if created or (self.root.stat().st_mode & 0o077):
            os.chmod(self.root, 0o700)  # mkdir's mode is masked by umask; tighten a loose existing one too
