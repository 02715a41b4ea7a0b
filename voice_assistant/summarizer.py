"""History summaries: fold the oldest exchanges into a short LLM-written summary, in the background.

Runs on its own `summarizer` thread with slot 1 of llama-server (slot 0 keeps the conversation's
prompt cache). A new user turn aborts a summary in progress (it competes for the CPU); it is tried
again after that turn. If the model cannot summarize, the oldest exchanges are dropped instead.

A summary (or a drop) changes the head of the conversation's prompt; right after it the same thread
has `PromptWarmer` read the new prompt into slot 0's cache (prompt_cache.py), so the next turn does
not pay for it.
"""

from __future__ import annotations

import logging
import threading

from .history import History, summary_prompt_messages
from .prompt_cache import PromptWarmer

log = logging.getLogger(__name__)


class HistorySummarizer:
    """Keeps `history` short. `maybe_summarize()` on the control thread, `abort()` from any thread."""

    def __init__(self, client, history: History, enabled: bool = True, summarize_after_turns: int = 10,
                 keep_recent_turns: int = 4, warmer: PromptWarmer | None = None) -> None:  # fmt: skip
        self.client = client
        self.history = history
        self.warmer = warmer  # reads the new prompt into the cache after a summary; None: nothing does
        self.enabled = enabled  # False: drop old exchanges instead of summarizing them
        self.summarize_after_turns = summarize_after_turns  # summarize once history holds more exchanges
        self.keep_recent_turns = keep_recent_turns  # exchanges left verbatim after a summary
        self._thread: threading.Thread | None = None  # control thread only
        self._stream = None  # the summary's open stream; set and cleared by the summarizer thread

    @classmethod
    def from_config(cls, client, history: History, llm, warmer: PromptWarmer | None = None) -> "HistorySummarizer":
        """`llm`: the configuration's LLMConfig."""
        return cls(client, history, llm.enable_history_summarization, llm.summarize_after_turns, llm.keep_recent_turns,
                   warmer)  # fmt: skip

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
        stream = self._stream
        if stream is not None:
            stream.abort()

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _drop(self, count: int) -> None:
        """Summarizer thread, summaries off: forget the oldest exchanges."""
        turns = self._turns()
        self.history.drop_oldest(count)
        self._warm(turns)

    def _summarize(self, count: int) -> None:
        """Summarizer thread: fold the oldest exchanges into the summary; truncate if that fails."""
        turns = self._turns()
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
            self._warm(turns)
            return
        finally:
            self._stream = None
        if stream.aborted:
            return  # a new turn started; try again after it
        if not summary or not self.history.apply_summary(exchanges, summary):
            self.history.drop_oldest(count)
        else:
            log.info("history: %d turns summarized", count)
        self._warm(turns)

    def _turns(self) -> int:
        return self.warmer.turns_started if self.warmer is not None else 0

    def _warm(self, turns: int) -> None:
        """The new prompt into the cache, unless a user turn started since `turns` (it read it itself)."""
        if self.warmer is not None:
            self.warmer.warm(turns)
