"""Starts and stops a llama-server child process bound to 127.0.0.1 on a free port."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from .errors import SetupError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServerConfig:
    """How to run the auto-started llama-server."""

    binary: Path  # llama-server executable
    model: Path  # GGUF file to load
    threads: int = 1  # generation threads (-t)
    batch_threads: int = 2  # prompt-processing threads (-tb)
    context_tokens: int = 4096  # context size per slot
    slots: int = 2  # slot 0 for the conversation, slot 1 for background summaries
    log_path: Path | None = None  # where the server's output goes (kept after exit)
    startup_timeout_s: float = 60.0  # give up waiting for /health after this long


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LlamaServerProcess:
    """One llama-server child. `start()` blocks until /health is 200; `stop()` is idempotent."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.port = 0
        self._process: subprocess.Popen | None = None
        self._log_file = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        c = self.config
        return [
            str(c.binary), "-m", str(c.model),
            "--host", "127.0.0.1", "--port", str(self.port),
            "-t", str(c.threads), "-tb", str(c.batch_threads),
            "-c", str(c.context_tokens * c.slots), "-np", str(c.slots),
            "--no-webui",
        ]  # fmt: skip

    def start(self) -> str:
        """Launch, wait for readiness, return the base URL. SetupError if it cannot start."""
        c = self.config
        if not os.access(c.binary, os.X_OK):
            raise SetupError(f"llama-server binary not found or not executable: {c.binary}")
        self.port = free_port()
        log_path = c.log_path or Path(os.devnull)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_file = open(log_path, "ab")
        log.info("starting llama-server: %s (log: %s)", " ".join(self.command()), log_path)
        self._process = subprocess.Popen(
            self.command(), stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + c.startup_timeout_s
        with httpx.Client(timeout=1.0) as client:
            while True:
                code = self._process.poll()
                if code is not None:
                    self.stop()
                    raise SetupError(
                        f"llama-server exited with code {code} while starting: {_last_line(log_path)!r}; "
                        f"full log: {log_path}"
                    )
                try:
                    if client.get(self.url + "/health").status_code == 200:
                        return self.url
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise SetupError(f"llama-server not ready after {c.startup_timeout_s:.0f} s; see {log_path}")
                time.sleep(0.02)  # polling a child we do not control: no event to wait on

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout_s: float = 2.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout_s)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


def _last_line(log_path: Path) -> str:
    """The last non-empty line of a log: usually the reason a child exited."""
    try:
        with open(log_path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 4096))
            lines = [line for line in handle.read().decode("utf-8", "replace").splitlines() if line.strip()]
    except OSError:
        return "(log unreadable)"
    return lines[-1].strip() if lines else "(log empty)"
