"""Starts and stops a llama-server child process bound to 127.0.0.1 on a free port.

The child is ours alone and dies with us:
- it gets a random API key per run, through its environment (`LLAMA_API_KEY`, which llama-server
  reads like `--api-key`; argv would show it in `ps`), and every request carries it; once /health
  answers, an unauthenticated `/props` must get 401 and an authenticated one 200, so a process that
  took the port between `free_port()` and the bind is never mistaken for our server;
- it runs in its own process group (a terminal's Ctrl-C reaches the program, which stops it), with
  a parent-death signal (`setpriv --pdeathsig SIGTERM`), so a SIGKILLed or OOM-killed program does
  not leave the model in memory.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from .errors import SetupError
from .files import open_private, private_folder

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
    cache_ram_mib: int = 0  # --cache-ram: host RAM for cached prompt states (each slot keeps its own KV anyway)
    log_path: Path | None = None  # where the server's output goes (kept after exit, 0600)
    log_path_named: bool = True  # False: a path we chose, where a symbolic link is refused, not followed
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
        self.api_key = secrets.token_urlsafe(24)  # this run's key; never logged
        self._process: subprocess.Popen | None = None
        self._log_file = None
        self._closed = threading.Event()  # close(): no start() may launch a child any more

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
            "--cache-ram", str(c.cache_ram_mib), "--no-webui",
        ]  # fmt: skip

    def launcher(self) -> list[str]:
        """What runs the command: `setpriv` gives the child a parent-death signal where it exists."""
        setpriv = shutil.which("setpriv")
        return [setpriv, "--pdeathsig", "SIGTERM", "--"] if setpriv else []

    def start(self) -> str:
        """Launch, wait for readiness, return the base URL. SetupError if it cannot start."""
        c = self.config
        if self._closed.is_set():
            raise SetupError("llama-server is shutting down; not starting it again")
        if not os.access(c.binary, os.X_OK):
            raise SetupError(f"llama-server binary not found or not executable: {c.binary}")
        self.port = free_port()
        log_path = c.log_path or Path(os.devnull)
        try:
            private_folder(log_path.parent)
            self._log_file = os.fdopen(open_private(log_path, follow_links=c.log_path_named), "ab")
        except OSError as exc:
            raise SetupError(f"cannot write the llama-server log {log_path}: {exc.strerror or exc}") from None
        log.info("starting llama-server: %s (log: %s)", " ".join(self.command()), log_path)
        env = {**os.environ, "LLAMA_API_KEY": self.api_key}
        self._process = subprocess.Popen(
            self.launcher() + self.command(), stdout=self._log_file, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env, process_group=0,
        )  # fmt: skip
        deadline = time.monotonic() + c.startup_timeout_s
        with httpx.Client(timeout=1.0, trust_env=False) as client:
            while True:
                if self._closed.is_set():
                    self.stop()
                    raise SetupError("llama-server is shutting down; not starting it again")
                code = self._process.poll()
                if code is not None:
                    self.stop()
                    raise SetupError(
                        f"llama-server exited with code {code} while starting: {_last_line(log_path)!r}; "
                        f"full log: {log_path}"
                    )
                try:
                    if client.get(self.url + "/health").status_code == 200:
                        self._check_it_is_ours(client)
                        return self.url
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise SetupError(f"llama-server not ready after {c.startup_timeout_s:.0f} s; see {log_path}")
                time.sleep(0.02)  # polling a child we do not control: no event to wait on

    def _check_it_is_ours(self, client: httpx.Client) -> None:
        """What answers on our port must be our child: it refuses requests without this run's key."""
        anonymous = client.get(self.url + "/props").status_code
        keyed = client.get(self.url + "/props", headers={"Authorization": f"Bearer {self.api_key}"}).status_code
        if anonymous != 401 or keyed != 200:
            self.stop()
            raise SetupError(
                f"the server on 127.0.0.1:{self.port} is not the llama-server we started (without our key it "
                f"answered HTTP {anonymous}, with it HTTP {keyed}); try again"
            )

    def close(self, timeout_s: float = 2.0) -> None:
        """Stop the child for good: a restart in progress or later does not start another."""
        self._closed.set()
        self.stop(timeout_s)

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
