"""Keeps the language model reachable: restarts our own llama-server, waits out a remote one, and
switches between the backends of a `BackendChain` (a primary and its fallbacks).

`LLMSupervisor.run()` is the `llm-monitor` thread: once a second it checks that the child
llama-server is alive, and while the server is marked down it polls `/health` with backoff.
`report_failure()` is called by the LLM thread when a turn's request failed; it only wakes the
monitor, which decides on its own thread whether the server is down (dead child, failed health
check, or a read timeout, which means a hang) and restarts it. The LLM thread never restarts
anything: before a turn it waits (`wait_settled()`) for a pending check or restart to finish, so
the next turn neither races a restart nor waits for a connect timeout. Restarts are bounded: more than
`max_restarts` within `window_s` is a crash loop, and the supervisor stops restarting and says so
instead of spinning. With fallbacks, a failing backend hands over to the next reachable one, and
the primary is polled with backoff until it answers again, then used again.
"""

from __future__ import annotations

import logging
import threading
import time

from .backends import BackendChain
from .errors import LLMError, LLMReadTimeout, SetupError
from .llm_client import OPENAI

log = logging.getLogger(__name__)


class LLMSupervisor:
    """Health of the LLM backend. Thread-safe; `available` is cheap to read on every turn."""

    def __init__(
        self,
        client,
        server=None,
        max_restarts: int = 3,
        window_s: float = 60.0,
        poll_s: float = 1.0,
        max_backoff_s: float = 10.0,
    ) -> None:
        self.chain = client if isinstance(client, BackendChain) else BackendChain([client])
        self.client = self.chain.clients[0]  # the primary
        self.server = server  # LlamaServerProcess we own (the primary), or None for --llm-url
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.poll_s = poll_s
        self.max_backoff_s = max_backoff_s
        self._lock = threading.Lock()
        self._restart_lock = threading.Lock()  # one restart at a time
        self._wake = threading.Event()  # a failure was reported, or the supervisor is stopping
        self._stopped = threading.Event()  # stop(): never start a server again
        self._settled = threading.Event()  # no reported failure is waiting to be checked
        self._settled.set()
        self._reported: LLMError | None = None  # guarded by _lock
        self._down = False
        self._gave_up = False
        self._restarts: list[float] = []
        self._backoff_s = poll_s
        self._next_check_t = 0.0
        self.restart_count = 0
        self.recoveries = 0

    @property
    def available(self) -> bool:
        """Not known to be down and not given up (a reported failure may still be being checked:
        `wait_settled()` waits for that check)."""
        with self._lock:
            return not self._down and not (self._gave_up and self.chain.index == 0)

    def wait_settled(self, timeout_s: float = 30.0) -> bool:
        """LLM thread: wait until a reported failure has been checked (and a restart done); `available`."""
        self._settled.wait(timeout_s)
        return self.available

    @property
    def gave_up(self) -> bool:
        with self._lock:
            return self._gave_up

    def report_failure(self, error: LLMError) -> None:
        """LLM thread: a request failed. Only records it; the monitor thread checks and restarts."""
        with self._lock:
            self._reported = error
            self._settled.clear()
        self._wake.set()

    def _check_reported(self, error: LLMError) -> None:
        """Monitor thread: is the backend down after this failure? Restart ours, or fail over."""
        if self.server is not None and self.chain.index == 0:
            ready, _ = self.client.health(timeout_s=1.0)
            # A read timeout from a server that still answers /health is a slow prompt (a big model on a
            # CPU reading a long prompt), not a hang: restarting it would only lose its work.
            hung = isinstance(error, LLMReadTimeout) and not ready
            if isinstance(error, LLMReadTimeout) and ready:
                log.warning("llama-server is slow, not hung (it answers /health): not restarting it")
            if hung or not self.server.alive() or not ready:
                reason = "stopped answering" if hung and self.server.alive() else "is not running"
                if not self._fail_over(f"llama-server {reason}"):
                    self._restart(f"llama-server {reason} ({error})", force=hung)
            return
        active = self.chain.active
        ready, detail = active.health(timeout_s=1.0)
        if not ready and not self._fail_over(f"{active.base_url} failed: {error}"):
            self.mark_down(f"llama-server at {active.base_url} unreachable ({detail}); retrying")

    def _fail_over(self, reason: str, include_active: bool = False) -> bool:
        """Switch to the first other backend that answers; False if none does (or there are none)."""
        current = self.chain.index
        for index, client in enumerate(self.chain.clients):
            own_server_dead = index == 0 and self.server is not None and not self.server.alive()
            if (index == current and not include_active) or own_server_dead:
                continue
            if client.health(timeout_s=1.0)[0]:
                self.chain.switch(index, reason)
                with self._lock:
                    self._down = False
                return True
        return False

    def check(self) -> None:
        """One monitor step (the monitor thread calls it every `poll_s`)."""
        if self.server is not None and self.chain.index == 0:
            if not self.server.alive() and not self.gave_up and not self._fail_over("llama-server exited"):
                self._restart("llama-server exited")
            return
        if self.server is not None and not self.server.alive() and not self.gave_up:
            self._restart("llama-server exited")  # a fallback answers meanwhile; ours is used again once up
        with self._lock:
            due = time.monotonic() >= self._next_check_t
            down = self._down
        if not due or (not down and self.chain.index == 0):
            return
        if down:  # nothing answered: whichever answers first, in order of preference
            ready = self._fail_over("reachable again", include_active=True)
        else:  # on a fallback: is the primary back?
            primary_ok = self.server is None or self.server.alive()
            ready = primary_ok and self.client.health(timeout_s=1.0)[0]
            if ready:
                self.chain.switch(0, "the primary server is back")
        with self._lock:
            if ready:
                self._backoff_s = self.poll_s
                self.recoveries += down
            else:
                self._backoff_s = min(self._backoff_s * 2, self.max_backoff_s)
            self._next_check_t = time.monotonic() + self._backoff_s
        if ready and down:
            log.warning("llama-server at %s is reachable again", self.chain.base_url)

    def run(self, stopping: threading.Event) -> None:
        """The llm-monitor thread: checks every `poll_s`, and at once when a failure is reported."""
        while not stopping.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            if stopping.is_set():
                break
            with self._lock:
                reported = self._reported
            try:
                if reported is not None:
                    self._check_reported(reported)
                self.check()
            except Exception:  # the monitor must outlive any single failure
                log.exception("LLM monitor step failed")
            finally:
                if reported is not None:
                    with self._lock:
                        if self._reported is reported:
                            self._reported = None
                            self._settled.set()
        self._settled.set()  # nobody waits on a stopped monitor

    def stop(self) -> None:
        """No restart from now on; wake the monitor so that it sees `stopping` at once."""
        self._stopped.set()
        self._wake.set()

    def mark_down(self, message: str = "") -> None:
        """The remote server does not answer: poll `/health` with backoff until it does.

        `message`, the status line, is logged once when the server goes from up to down."""
        with self._lock:
            if self._down:
                return
            self._down = True
            self._backoff_s = self.poll_s
            self._next_check_t = time.monotonic() + self._backoff_s
        if message:
            log.warning(message)

    def _restart(self, reason: str, force: bool = False) -> None:
        with self._restart_lock:
            if not force and self.server.alive() and self.client.health(timeout_s=1.0)[0]:
                return  # restarted meanwhile
            self._restart_locked(reason)

    def _restart_locked(self, reason: str) -> None:
        now = time.monotonic()
        with self._lock:
            if self._gave_up:
                return
            self._restarts = [t for t in self._restarts if now - t < self.window_s]
            if len(self._restarts) >= self.max_restarts:
                self._gave_up = True
                give_up = True
            else:
                self._restarts.append(now)
                self._down = self._down or self.chain.index == 0  # unless a fallback answers meanwhile
                give_up = False
                attempt = len(self._restarts)
        if give_up:
            log.error(
                "llama-server crashed %d times in %.0f s; not restarting it again (see %s). "
                "The assistant keeps listening but cannot answer.",
                self.max_restarts, self.window_s, self.server.config.log_path,
            )  # fmt: skip
            self.server.stop()
            return
        delay = min(0.5 * 2 ** (attempt - 1), self.max_backoff_s)
        log.warning("%s; restarting it in %.1f s (attempt %d of %d)", reason, delay, attempt, self.max_restarts)
        if self._stopped.wait(delay):  # backoff before a restart, cut short by stop()
            return
        self.server.stop()
        try:
            url = self.server.start()
        except SetupError as exc:
            if not self._stopped.is_set():
                log.error("restarting llama-server failed: %s", exc)
            return
        self.client.base_url = url + ("/v1" if self.client.api == OPENAI else "")
        with self._lock:
            self._down = False
            self.restart_count += 1
        log.warning("llama-server restarted at %s", url)
