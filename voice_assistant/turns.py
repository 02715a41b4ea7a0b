"""The turn counter that decides what is stale, and the items queued between worker threads."""

from __future__ import annotations

import threading
from dataclasses import dataclass


class TurnCounter:
    """Monotonic turn id. Advancing it makes every item stamped with an older id stale."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0

    def advance(self) -> int:
        with self._lock:
            self._value += 1
            return self._value

    def current(self) -> int:
        with self._lock:
            return self._value

    def is_current(self, turn_id: int) -> bool:
        with self._lock:
            return turn_id == self._value


@dataclass(frozen=True)
class SentenceItem:
    """A chunk of reply text for the TTS thread."""

    turn_id: int  # turn that produced it
    index: int  # position in the reply, from 0
    text: str  # text as generated (cleaned for speech by the TTS thread)


@dataclass(frozen=True)
class EndOfText:
    """The LLM thread has produced every sentence of this turn."""

    turn_id: int


STOP = object()
"""Sentinel that ends a worker loop."""
