"""Keeping llama-server's prompt cache ahead of the conversation, so a turn reads only its own words.

Slot 0 of llama-server holds the conversation's prompt. A turn's request then costs only the
tokens that differ from what the slot holds, and on 2 cores each prompt token costs about 11 ms
(Qwen 0.5B, one thread). Two moments leave the slot behind the next turn's prompt:

- after every exchange: the slot holds the last prompt and the reply as generated, but the next
  prompt goes on with the chat template's end of that reply and the start of a user message
  (`<|im_end|>\\n<|im_start|>user\\n`), about 5 tokens a turn would read after the user stopped;
- after a summary (or a drop of old exchanges): the prompt's head changes, and the next turn would
  re-read all of it (measured: 270 to 330 tokens, the first token 0.9 to 1.2 s late).

`PromptWarmer.warm()` sends the next turn's prompt up to the start of the user's words (the
messages so far plus an empty user message: everything before its content is what the next turn
will share) with `n_predict` 1, so the slot holds it before the user speaks. A turn that starts
meanwhile waits for it on the server, which costs it no more than reading those tokens itself; a
turn that started before a warm-up was sent makes it moot, and it is skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from .history import History

log = logging.getLogger(__name__)


class PromptWarmer:
    """Reads the next turn's prompt head into slot 0. `warm()` on any thread but the LLM's; `warm_async()`
    starts it on a `prompt-cache` thread (one at a time); `turn_started()` from the turn's thread."""

    def __init__(self, client, history: History, system_prompt: Callable[[], str]) -> None:
        self.client = client
        self.history = history
        self.system_prompt = system_prompt
        self._turns_started = 0  # bumped by turn_started(); read without a lock (an int, one writer)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one warm-up at a time
        self.warm_ups: list[float] = []  # seconds each finished warm-up took (tests and the log)

    def turn_started(self) -> None:
        self._turns_started += 1

    @property
    def turns_started(self) -> int:
        return self._turns_started

    def warm_async(self) -> None:
        """Warm on a background thread, unless one is already warming."""
        if self._thread is not None and self._thread.is_alive():
            return
        turns = self._turns_started
        self._thread = threading.Thread(target=self.warm, args=(turns,), name="prompt-cache", daemon=True)
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def warm(self, turns: int) -> bool:
        """Read the next turn's prompt head into slot 0, unless a user turn started since `turns` was read
        from `turns_started` (its own request reads the new prompt). True if it was read."""
        with self._lock:
            if self._turns_started != turns:
                return False
            started = time.monotonic()
            try:
                messages = self.history.messages(self.system_prompt(), "")
                prompt = self.client.apply_template(messages)
                if not isinstance(prompt, str):
                    return False  # an OpenAI-style server: no slots to warm
                if self._turns_started != turns:
                    return False
                for _ in self.client.stream({"prompt": prompt, "n_predict": 1, "temperature": 0.0,
                                             "cache_prompt": True, "id_slot": 0}):  # fmt: skip
                    pass
            except Exception as exc:  # LLMError or a bug: the next turn just reads more of its prompt
                log.warning("could not read the next prompt into the cache (%s)", exc)
                return False
            elapsed = time.monotonic() - started
            self.warm_ups.append(elapsed)
            log.debug("next prompt read into the cache in %.0f ms", elapsed * 1000.0)
            return True
