"""Shared fixtures: every test fails if it leaks a thread."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs the real bundled models and a real llama-server")
    config.addinivalue_line("markers", "live: real audio devices through PulseAudio null sinks")


@pytest.fixture(autouse=True)
def no_thread_leak():
    before = set(threading.enumerate())
    yield
    deadline_threads = []
    for thread in set(threading.enumerate()) - before:
        thread.join(timeout=3.0)
        if thread.is_alive() and not thread.name.startswith(("RealtimeSTT", "asyncio", "ThreadPoolExecutor", "tqdm_monitor")):
            deadline_threads.append(thread.name)
    assert not deadline_threads, f"test leaked threads: {deadline_threads}"
