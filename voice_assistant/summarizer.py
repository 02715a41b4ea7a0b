"""History summaries: fold the oldest exchanges into a short LLM-written summary, in the background.

Runs on its own `summarizer` thread with slot 1 of llama-server (slot 0 keeps the conversation's
prompt cache). A new user turn aborts a summary in progress (it competes for the CPU); it is tried
again after that turn. If the model cannot summarize, the oldest exchanges are dropped instead.

A summary (or a drop) changes the head of the conversation's prompt, so the next turn would re-read
all of it (measured: 270 to 330 tokens, first token 0.9 to 1.2 s later than usual). So, right after,
the same thread reads the new prompt into slot 0's cache (`n_predict` 1): the next turn then reads
only its own words. A turn that starts while this runs waits for it on the server, which costs no
more than reading the prompt itself; a turn that started before it makes it unnecessary.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from .history import History, summary_prompt_messages

log = logging.getLogger(__name__)


class HistorySummarizer:
    """Keeps `history` short. `maybe_summarize()` on the control thread, `abort()` from any thread."""

    def __init__(self, client, history: History, enabled: bool = True, summarize_after_turns: int = 10,
                 keep_recent_turns: int = 4, system_prompt: Callable[[], str] | None = None) -> None:  # fmt: skip
        self.client = client
        self.history = history
        self.system_prompt = system_prompt  # the conversation's system prompt; None: no cache warm-up
        self.enabled = enabled  # False: drop old exchanges instead of summarizing them
        self.summarize_after_turns = summarize_after_turns  # summarize once history holds more exchanges
        self.keep_recent_turns = keep_recent_turns  # exchanges left verbatim after a summary
        self._thread: threading.Thread | None = None  # control thread only
        self._stream = None  # the summary's open stream; set and cleared by the summarizer thread
        self._turns_started = 0  # user turns since start; bumped by abort()
        self.warm_ups: list[float] = []  # seconds each finished cache warm-up took (for tests and the log)

    @classmethod
    def from_config(cls, client, history: History, llm, system_prompt: Callable[[], str] | None = None) -> "HistorySummarizer":
        """`llm`: the configuration's LLMConfig."""
        return cls(client, history, llm.enable_history_summarization, llm.summarize_after_turns, llm.keep_recent_turns,
                   system_prompt)  # fmt: skip

    def maybe_summarize(self) -> None:
        """Control thread, after each finished turn."""
        if len(self.history) <= self.summarize_after_turns:
            return
        if self._thread is not None and self._thread.is_alive():
            return
        count = len(self.history) - self.keep_recent_turns
        target = self._summarize if self.enabled else self._drop
        self._thread = threading.Thread(target=target, args=(count,), name="summarizer", daemon=True)
        self._thread.start()

    def abort(self) -> None:
        """A user turn starts: stop a summary in progress (a cache warm-up in progress goes on)."""
        self._turns_started += 1
        stream = self._stream
        if stream is not None:
            stream.abort()

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _drop(self, count: int) -> None:
        """Summarizer thread, summaries off: forget the oldest exchanges."""
        turns = self._turns_started
        self.history.drop_oldest(count)
        self._warm_prompt_cache(turns)

    def _summarize(self, count: int) -> None:
        """Summarizer thread: fold the oldest exchanges into the summary; truncate if that fails."""
        turns = self._turns_started
        exchanges = self.history.oldest(count)
        try:
            prompt = self.client.apply_template(summary_prompt_messages(self.history.summary, exchanges))
            stream = self.client.stream(
                {"prompt": prompt, "n_predict": 120, "temperature": 0.2, "cache_prompt": False, "id_slot": 1}
            )
            self._stream = stream
            summary = "".join(stream).strip()
        except Exception as exc:  # LLMError, or anything unconverted: the thread must not die silently
            log.warning("history summary failed (%s); dropping the oldest turns instead", exc)
            self.history.drop_oldest(count)
            self._warm_prompt_cache(turns)
            return
        finally:
            self._stream = None
        if stream.aborted:
            return  # a new turn started; try again after it
        if not summary or not self.history.apply_summary(exchanges, summary):
            self.history.drop_oldest(count)
        else:
            log.info("history: %d turns summarized", count)
        self._warm_prompt_cache(turns)

    def _warm_prompt_cache(self, turns: int) -> None:
        """Summarizer thread: read the conversation's new prompt into slot 0's cache, unless a user turn
        started since `turns` (its own request has read the new prompt already)."""
        if self.system_prompt is None or self._turns_started != turns:
            return
        started = time.monotonic()
        try:
            prompt = self.client.apply_template(self.history.messages(self.system_prompt()))
            if not isinstance(prompt, str):
                return  # an OpenAI-style server: no slots to warm
            if self._turns_started != turns:
                return
            for _ in self.client.stream({"prompt": prompt, "n_predict": 1, "temperature": 0.0, "cache_prompt": True,
                                         "id_slot": 0}):  # fmt: skip
                pass
        except Exception as exc:  # LLMError or a bug: the next turn just reads the whole prompt
            log.warning("history: could not read the new prompt into the cache (%s)", exc)
            return
        elapsed = time.monotonic() - started
        self.warm_ups.append(elapsed)
        log.info("history: new prompt read into the cache in %.0f ms", elapsed * 1000.0)
