"""Files that hold what the user said: created 0600, appended as they grow, never lost in silence.

- `open_private()`: a file only its owner can read, whatever the umask. A path the user named may be a
  symbolic link they made; a path we chose (in the state folder) is opened without following one, so
  another local user cannot plant a link that makes us write through it.
- `JsonLinesFile`: one JSON object per line, appended, flushed and fsynced per write (O(1) per
  record, however long the session). A disk that fails (full, read-only, folder or file removed)
  costs one log line and the file is not written any more; the conversation goes on.
- `StreamingWav`: a 16-bit WAV written as audio arrives, by its own thread (the audio thread only
  queues), its header kept valid so a crash leaves a readable file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import wave
from pathlib import Path

import numpy as np

from .errors import SetupError

log = logging.getLogger(__name__)


def open_private(path: Path, *, truncate: bool = False, follow_links: bool = True) -> int:
    """A file descriptor for appending to (or, with `truncate`, rewriting) `path`, created 0600.

    `follow_links=False` for paths the user did not name: a symbolic link there is refused (OSError
    ELOOP) rather than followed."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_TRUNC if truncate else os.O_APPEND)
    if not follow_links:
        flags |= os.O_NOFOLLOW
    return os.open(path, flags, 0o600)


def private_folder(path: Path) -> Path:
    """Create `path` (and its parents) readable by the user only; an existing folder is left as it is."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


class JsonLinesFile:
    """Records appended as JSON lines to `path` (None: nothing is written). `what` names it in messages."""

    def __init__(self, path: Path | None, what: str) -> None:
        self.path = Path(path) if path else None
        self.what = what
        self._lock = threading.Lock()
        self._failed = False
        self._file = None
        if self.path is not None:
            try:
                self._file = os.fdopen(open_private(self.path), "a", encoding="utf-8")
            except OSError as exc:
                raise SetupError(f"cannot write {what} {self.path}: {exc.strerror or exc}") from None

    @property
    def failed(self) -> bool:
        return self._failed

    def write(self, *records: dict) -> None:
        """Append `records` and make them durable (fsync). Never raises."""
        if self._file is None or not records:
            return
        with self._lock:
            if self._failed:
                return
            try:
                if os.fstat(self._file.fileno()).st_nlink == 0:
                    raise FileNotFoundError(2, "the file was removed")
                self._file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
                self._file.flush()
                os.fsync(self._file.fileno())
            except (OSError, ValueError) as exc:  # ValueError: a record that is not JSON
                self._failed = True
                reason = getattr(exc, "strerror", None) or exc
                log.error("cannot write %s %s (%s); not writing it any more", self.what, self.path, reason)

    def close(self) -> None:
        if self._file is not None:
            with self._lock:
                with contextlib.suppress(OSError):  # the last write already said why it failed
                    self._file.close()
                self._file = None


class StreamingWav:
    """A 16-bit PCM WAV at `rate_hz` with `channels`, created 0600, written by the `name` thread.

    `add(frames)` (any thread, never blocks): float32 frames, shape (n, channels). When the writer
    falls `max_queued` blocks behind, blocks are dropped and counted. A write that fails costs one
    log line and ends the recording; what was written stays readable."""

    def __init__(self, path: Path, rate_hz: int, channels: int, name: str = "wav-writer", max_queued: int = 500):
        self.path = Path(path)
        self.channels = channels
        self.dropped_blocks = 0
        self.frames_written = 0
        self._queue: queue.Queue = queue.Queue(maxsize=max_queued)
        self._failed = False
        try:
            self._file = os.fdopen(open_private(self.path, truncate=True), "wb")
            self._wav = wave.open(self._file, "wb")  # a file object it did not open: close() closes both
            self._wav.setnchannels(channels)
            self._wav.setsampwidth(2)
            self._wav.setframerate(rate_hz)
            self._wav.writeframes(b"")  # the header, so even an empty recording is a valid WAV
        except OSError as exc:
            raise SetupError(f"cannot write {self.path}: {exc.strerror or exc}") from None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def add(self, frames: np.ndarray) -> None:
        if self._failed:
            return
        try:
            self._queue.put_nowait(frames)
        except queue.Full:
            self.dropped_blocks += 1
            if self.dropped_blocks == 1:
                log.warning("%s: the disk is too slow; dropping audio from the recording", self.path)

    def _run(self) -> None:
        while True:
            frames = self._queue.get()
            if frames is None:
                return
            if self._failed:
                continue
            try:
                pcm = (np.clip(frames, -1.0, 1.0) * 32767.0).astype("<i2")
                self._wav.writeframes(pcm.tobytes())  # also rewrites the header's lengths
                self.frames_written += len(frames)
            except (OSError, ValueError) as exc:
                self._failed = True
                log.error("cannot write %s (%s); not recording any more", self.path, getattr(exc, "strerror", None) or exc)

    def close(self, timeout_s: float = 5.0) -> None:
        """Write what is queued, then close the file."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout_s)
        self._thread.join(timeout_s)
        with contextlib.suppress(OSError, ValueError):
            self._wav.close()
        with contextlib.suppress(OSError):
            self._file.close()
