"""Streaming one reply from the language model and cutting it into speakable chunks.

`ReplyStreamer.open()` starts a completion; `ReplyStream.sentences()` yields the reply's chunks
(reasoning between `<think>` tags removed) as soon as each is complete, and guards the stream:
a reply that keeps streaming past its token cap raises `LLMProtocolError`, one that makes no
speakable progress for `stall_s` raises `LLMTooSlowError`. Every other failure arrives as the
client's typed `LLMError`. Cancellation is not an error: `abort()` (any thread) closes the socket
and `sentences()` simply ends. Called on the LLM thread.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterator

from .errors import LLMProtocolError, LLMTooSlowError
from .llm_client import StreamLimits
from .text import SentenceChunker, ThinkFilter


@dataclass(frozen=True)
class ReplyOptions:
    """How replies are sampled and cut."""

    max_reply_tokens: int = 96  # n_predict per reply, in tokens
    temperature: float = 0.6  # sampling temperature
    low_latency_mode: bool = True  # strip mirostat/typical_p from the sampling parameters
    stall_s: float = 20.0  # after the first token, this long without a new chunk to speak ends the reply
    first_clause_min_words: int = 3  # the first chunk may end at a comma after this many words (0: off)
    first_chunk_max_words: int = 8  # the first chunk is cut after this many words at most (0: off)
    first_token_s: float = 0.0  # wall-clock limit from the request to the first token (0: none)
    total_s: float = 0.0  # wall-clock limit on the whole reply (0: none)

    @classmethod
    def from_config(cls, config) -> "ReplyOptions":
        llm, voice = config.llm, config.voice
        return cls(llm.max_reply_tokens, llm.temperature, llm.low_latency_mode, float(llm.llm_timeout_s),
                   voice.first_clause_min_words, voice.first_chunk_max_words, float(llm.llm_timeout_s),
                   float(llm.llm_reply_limit_s))  # fmt: skip


def sampling_params(options: ReplyOptions) -> dict:
    """The `/completion` body fields besides the prompt (slot 0 holds the conversation's cache)."""
    params = {
        "n_predict": options.max_reply_tokens,
        "temperature": options.temperature,
        "top_k": 40,
        "top_p": 0.9,
        "min_p": 0.05,
        "repeat_penalty": 1.1,
        "mirostat": 0,
        "typical_p": 1.0,
        "cache_prompt": True,
        "id_slot": 0,
    }
    if options.low_latency_mode:
        del params["mirostat"], params["typical_p"]
    return params


class ReplyStream:
    """One reply being generated. `raw_text` is the visible text so far, exactly as generated."""

    def __init__(self, completion, options: ReplyOptions, first_chunk: bool, continuation: bool,
                 prefill_hold: threading.Event | None) -> None:  # fmt: skip
        self.completion = completion
        self.options = options
        self.raw_text = ""
        self._first_chunk = first_chunk
        self._continuation = continuation
        self._prefill_hold = prefill_hold

    @property
    def stats(self):
        return self.completion.stats

    def abort(self) -> None:
        """Any thread: stop generating now (closes the socket, so the server stops too)."""
        self.completion.abort()

    def sentences(self, is_current: Callable[[], bool]) -> Iterator[str]:
        """The reply's chunks, each as soon as it is complete; ends early once `is_current()` is False."""
        options = self.options
        think = ThinkFilter()
        chunker = SentenceChunker(
            options.first_clause_min_words if self._first_chunk else 0,
            first_chunk_max_words=options.first_chunk_max_words if self._first_chunk else 0,
        )
        if self._continuation:
            chunker.feed(" ")  # the prompt ended mid-reply; keep words apart
        if self._prefill_hold is not None:
            self._prefill_hold.set()  # the server is busy with the prompt: ASR waits
        progress_t = 0.0  # last speakable progress; the read timeout covers the wait for the first token
        try:
            for piece in self.completion:
                self._release_prefill_hold()
                now = time.monotonic()
                progress_t = progress_t or now
                if not is_current():
                    self.completion.abort()
                    return
                if self.stats.tokens > options.max_reply_tokens + 16:
                    self.completion.abort()  # the server ignores n_predict: do not stream for ever
                    raise LLMProtocolError(f"llama-server kept streaming past {options.max_reply_tokens} tokens")
                if now - progress_t > options.stall_s:
                    self.completion.abort()  # a trickle each read-timeout apart, or thinking that never ends
                    raise LLMTooSlowError(
                        f"nothing speakable for {options.stall_s:.0f} s ({self.stats.tokens} tokens so far); "
                        "ending the reply"
                    )
                visible = think.feed(piece)
                self.raw_text += visible
                for sentence in chunker.feed(visible):
                    progress_t = now
                    yield sentence
            if is_current():
                yield from chunker.feed(think.flush()) + chunker.flush()
        finally:
            self._release_prefill_hold()

    def _release_prefill_hold(self) -> None:
        if self._prefill_hold is not None:
            self._prefill_hold.clear()


class ReplyStreamer:
    """Opens reply streams on `client` with the conversation's sampling options."""

    def __init__(self, client, options: ReplyOptions, prefill_hold: threading.Event | None = None) -> None:
        self.client = client
        self.options = options
        self.prefill_hold = prefill_hold  # set while the server processes a prompt (pause ASR), or None

    def open(self, prompt: str, first_chunk: bool = True, continuation: bool = False) -> ReplyStream:
        limits = StreamLimits(first_token_s=self.options.first_token_s, total_s=self.options.total_s)
        completion = self.client.stream({"prompt": prompt, **sampling_params(self.options)}, limits)
        return ReplyStream(completion, self.options, first_chunk, continuation, self.prefill_hold)
