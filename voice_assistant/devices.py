"""The device monitor: one line when an audio device stops, reopened until it delivers again; and
the threads that consume audio and text watched, restarted if one dies.

Runs on the `device-monitor` thread for devices that report health (`SpeakerSink`,
`MicrophoneSource`: `healthy()`, `delivering()`, `reopen()`, `error`); WAV files have none. Every
worker loop logs and survives an `Exception`; a thread can still end of what its loop does not
catch (a `BaseException` from a library, a bug outside the loop's `try`). A PortAudio callback
would keep the device "healthy" while nothing hears: so the threads given to `watch()` (`name`,
`died()`, `restart()`) are checked on every poll, and one that died is restarted with one line.
"""

from __future__ import annotations

import logging
import threading
import time

from .errors import SetupError

log = logging.getLogger(__name__)


def monitored(**devices) -> dict:
    """The devices (by name: 'output', 'input') that can report their health."""
    return {name: device for name, device in devices.items() if device is not None and hasattr(device, "healthy")}


class DeviceMonitor:
    """Polls `devices` every `poll_s`; reopens a broken one every `retry_s`."""

    def __init__(self, devices: dict, poll_s: float = 1.0, retry_s: float = 2.0) -> None:
        self.devices = devices  # name -> device
        self.poll_s = poll_s
        self.retry_s = retry_s
        self.watched: list = []  # objects with `name`, `died()`, `restart()`
        self.restarts: dict[str, int] = {}  # thread name -> how often it was restarted

    def watch(self, *workers) -> None:
        """Also check that these threads are alive (the ones that can be restarted; None is skipped)."""
        self.watched += [w for w in workers if w is not None and hasattr(w, "restart")]

    def run(self, stopping: threading.Event) -> None:
        """A device is back only once it delivers: a reopened microphone that stays silent is reopened
        again, still within the same outage and without another line."""
        broken: dict[str, float] = {}  # device -> when to try reopening it next
        while not stopping.wait(self.poll_s):
            for name, device in self.devices.items():
                try:
                    self._check(name, device, broken)
                except Exception:  # the monitor must outlive any single failure
                    log.exception("checking the audio %s device failed", name)
            for worker in self.watched:
                if not stopping.is_set():
                    self._check_thread(worker)

    def _check_thread(self, worker) -> None:
        if not worker.died():
            return
        count = self.restarts[worker.name] = self.restarts.get(worker.name, 0) + 1
        if count <= 3 or count % 100 == 0:
            log.error("the %s thread stopped unexpectedly (%d times); restarting it", worker.name, count)
        try:
            worker.restart()
        except Exception:  # the monitor must outlive any single failure
            log.exception("restarting the %s thread failed", worker.name)

    def _check(self, name: str, device, broken: dict[str, float]) -> None:
        if device.healthy():
            if name in broken and device.delivering():
                del broken[name]
                log.warning("audio %s device is back", name)
            return
        now = time.monotonic()
        if name not in broken:
            log.error("audio %s device stopped (%s); retrying every %.0f s", name, device.error, self.retry_s)
            broken[name] = 0.0
        if now < broken[name]:
            return
        broken[name] = now + self.retry_s
        try:
            device.reopen()  # the next poll says it is back, once it delivers
        except SetupError as exc:
            log.debug("audio %s device still unavailable: %s", name, exc)
