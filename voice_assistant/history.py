"""Conversation history: what was said and heard, summarized and trimmed to stay small.

Thread rules: every method takes the lock; the LLM thread reads messages while the control
thread, an interruption or the summarizer thread writes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

# An interrupted reply is, in the chat messages, only the words the user heard; an exchange of which
# no reply was heard is left out (roles must alternate for many chat templates, and the user asks
# anew). Marks were copied by Qwen 0.5B into its next replies and spoken: " [interrupted by the
# user]" ("Once upon a time, there was [interrupted by the user]"), and an ellipsis standing for a
# reply cut before its first word became every later reply ("…"). Summaries, never spoken, say it.
SUMMARY_INTERRUPTED_MARK = " [interrupted by the user]"


@dataclass(frozen=True)
class Exchange:
    """One finished turn."""

    user: str  # what the user said (final transcript)
    assistant: str  # what the user heard of the reply (all of it unless interrupted)
    interrupted: bool  # the user cut the reply off


class History:
    """Exchanges plus an optional running summary of older ones."""

    def __init__(self, trim_threshold: int = 12, keep_after_trim: int = 4) -> None:
        """Past `trim_threshold` exchanges (summaries did not keep up) the oldest are dropped down to
        `keep_after_trim` at once: every exchange dropped changes the prompt's cached prefix, and
        dropping one per turn made every turn re-read the whole history (3.2 s to the first token
        with Qwen 0.5B, measured); in one go the prompt is re-read once per several turns."""
        self.trim_threshold = trim_threshold
        self.keep_after_trim = min(keep_after_trim, trim_threshold)
        self._lock = threading.Lock()
        self._exchanges: list[Exchange] = []
        self._summary = ""
        self.trimmed = 0  # exchanges dropped without a summary (fallback)

    def add(self, exchange: Exchange) -> None:
        with self._lock:
            self._exchanges.append(exchange)
            if len(self._exchanges) > self.trim_threshold:
                drop = len(self._exchanges) - self.keep_after_trim
                del self._exchanges[:drop]
                self.trimmed += drop

    def replace_last_assistant(self, text: str, interrupted: bool) -> None:
        """Rewrite the last exchange's reply (a resumed reply grows what was heard)."""
        with self._lock:
            if self._exchanges:
                last = self._exchanges[-1]
                self._exchanges[-1] = Exchange(last.user, text, interrupted)

    def __len__(self) -> int:
        with self._lock:
            return len(self._exchanges)

    def exchanges(self) -> list[Exchange]:
        with self._lock:
            return list(self._exchanges)

    @property
    def summary(self) -> str:
        with self._lock:
            return self._summary

    def messages(self, system_prompt: str, user_text: str | None = None) -> list[dict]:
        """Chat messages: system (with summary), the exchanges, then the new user text."""
        with self._lock:
            system = system_prompt
            if self._summary:
                system += f"\n\nSummary of the earlier conversation: {self._summary}"
            messages = [{"role": "system", "content": system}]
            for exchange in self._exchanges:
                if exchange.assistant.strip():
                    messages.append({"role": "user", "content": exchange.user})
                    messages.append({"role": "assistant", "content": exchange.assistant.strip()})
        if user_text is not None:
            messages.append({"role": "user", "content": user_text})
        return messages

    def oldest(self, count: int) -> list[Exchange]:
        with self._lock:
            return list(self._exchanges[:count])

    def apply_summary(self, summarized: list[Exchange], summary: str) -> bool:
        """Replace `summarized` (still the oldest exchanges) by `summary`; False if history moved on."""
        with self._lock:
            if self._exchanges[: len(summarized)] != summarized:
                return False
            del self._exchanges[: len(summarized)]
            self._summary = summary.strip()
            return True

    def drop_oldest(self, count: int) -> None:
        """Fallback when summarizing fails: forget the oldest exchanges."""
        with self._lock:
            count = min(count, len(self._exchanges))
            del self._exchanges[:count]
            self.trimmed += count


def summary_prompt_messages(previous_summary: str, exchanges: list[Exchange]) -> list[dict]:
    """Messages asking the model to fold `exchanges` into a short summary."""
    lines = [f"Earlier summary: {previous_summary}"] if previous_summary else []
    for exchange in exchanges:
        lines.append(f"User: {exchange.user}")
        lines.append(f"Assistant: {exchange.assistant}{SUMMARY_INTERRUPTED_MARK if exchange.interrupted else ''}")
    return [
        {"role": "system", "content": "You summarize conversations briefly and factually."},
        {
            "role": "user",
            "content": "Summarize this conversation in at most three sentences, in its language, keeping names, facts "
            "and open questions:\n\n" + "\n".join(lines),
        },
    ]
