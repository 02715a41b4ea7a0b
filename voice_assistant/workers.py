"""`QueueWorker`: a named thread that hands each item of its queue to a function.

The one loop every worker thread of the assistant runs (llm, tts, control, spec-asr): take an
item, stop on the `STOP` sentinel, log a failure and take the next item, so no single bad item
kills a thread. Tests can call `run()` on their own thread after queueing items and `STOP`.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from .turns import STOP

log = logging.getLogger(__name__)


class QueueWorker:
    """`handle(item)` for every queued item, on a thread called `name`."""

    def __init__(self, name: str, handle: Callable[[object], None]) -> None:
        self.name = name
        self._handle = handle
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopped = False

    def put(self, item) -> None:
        """Any thread: queue `item` for the worker."""
        self._queue.put(item)

    def idle(self) -> bool:
        """Nothing queued and nothing being handled."""
        return self._queue.unfinished_tasks == 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the loop to end after the items already queued (non-blocking)."""
        self._stopped = True
        self._queue.put(STOP)

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def died(self) -> bool:
        """The thread ended without being asked to (what the device monitor asks)."""
        return not self._stopped and self._thread is not None and not self._thread.is_alive()

    def restart(self) -> None:
        """The thread died of something its loop could not catch: a new one takes the same queue."""
        if not self._stopped:
            self.start()

    def run(self) -> None:
        """The loop: until STOP, hand each item to `handle`, logging and surviving its failures."""
        while True:
            item = self._queue.get()
            if item is STOP:
                self._queue.task_done()
                return
            try:
                self._handle(item)
            except Exception:  # a worker loop logs and takes the next item
                log.exception("%s: handling %r failed", self.name, item)
            finally:
                self._queue.task_done()


def log_thread_deaths() -> None:
    """An exception that ends a thread is one log line naming the thread (the traceback at DEBUG),
    not a traceback on the terminal; the device monitor restarts the threads it watches."""

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        name = args.thread.name if args.thread is not None else "a"
        log.error("the %s thread failed: %s: %s", name, args.exc_type.__name__, args.exc_value)
        log.debug("the %s thread failed", name, exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

    threading.excepthook = hook


def arm_exit_watchdog(limit_s: float, stacks_path: Path) -> None:
    """Stopping must never hang: if the process is still alive `limit_s` after this call (a part that
    will not stop, a thread the interpreter waits for at exit), append every thread's stack to
    `stacks_path`, print one line and end the process with status 1."""

    def watch() -> None:
        time.sleep(limit_s)
        where = ""
        try:
            stacks_path.parent.mkdir(parents=True, exist_ok=True)
            with open(stacks_path, "a", encoding="utf-8") as file:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                file.write(f"--- stopping took over {limit_s:g} s ({stamp}), pid {os.getpid()}\n")
                file.flush()
                faulthandler.dump_traceback(file=file, all_threads=True)
            where = f"; what each thread was doing is in {stacks_path}"
        except OSError:
            pass
        sys.stderr.write(f"error: stopping took over {limit_s:g} s, quitting anyway{where}\n")
        sys.stderr.flush()
        os._exit(1)

    threading.Thread(target=watch, name="exit-watchdog", daemon=True).start()
