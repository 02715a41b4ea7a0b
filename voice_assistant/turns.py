"""The turn counter that decides what is stale, the turn being answered, and the items queued
between worker threads (frozen, stamped with the turn id)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from .text import words_in


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


def heard_words(sentence: str, progress: float) -> str:
    """The words of `sentence` a listener heard once `progress` (0..1) of its audio had played."""
    words = words_in(sentence)
    if progress >= 0.999:
        return " ".join(words)
    return " ".join(words[: int(len(words) * progress)])


@dataclass
class TurnTimings:
    """When each step of a turn happened (monotonic seconds; 0.0 = not yet)."""

    speech_end_t: float  # the user stopped speaking
    text_t: float  # the final transcript was ready
    created_t: float = field(default_factory=time.monotonic)
    llm_start_t: float = 0.0  # prompt building began
    first_token_t: float = 0.0
    first_sentence_t: float = 0.0  # first chunk of reply text handed to TTS
    first_audio_ready_t: float = 0.0  # first chunk synthesized
    first_audio_t: float = 0.0  # first reply sample reached the speaker / output file
    last_block_end_t: float = 0.0  # when the last played block of this turn stops sounding
    endpoint_t: float = 0.0  # a speculative turn was released for playback
    end_of_turn: str = ""  # why the turn ended: "silence", "complete" (heard as finished), "cap" (waited longest)
    words_probability: float | None = None  # the words' ending probability (turn_detector.judge_words), if judged
    words_judged_t: float = 0.0  # when that judgement came back (the LLM thread writes both)


@dataclass
class Turn:
    """The turn being answered. Its fields are written under `VoiceConversationSystem._lock`, except:
    `raw_text`, `prompt`, `llm`, `llm_done`, `retried`, `timings.llm_start_t`, `timings.first_token_t`
    and `timings.words_*`, which only the LLM thread writes, and `fixed_reply`, written once by
    the thread that starts the turn or promotes a speculative one (which is then dropped and the
    text submitted again as a new turn, so the LLM thread never sees it change)."""

    turn_id: int
    user_text: str
    timings: TurnTimings
    sentences: list[str] = field(default_factory=list)  # reply chunks generated so far
    raw_text: str = ""  # visible reply text exactly as generated
    stream: object = None  # the reply's open stream (abort() silences the server)
    heard_index: int = -1  # sentence being played
    heard_progress: float = 0.0  # fraction of that sentence played
    llm_done: bool = False
    playback_done: bool = False
    committed: bool = False
    resumed_from: int = 0  # turn id this reply continues after a false interruption
    fixed_reply: str = ""  # say this instead of asking the LLM (a conversation loop, an unclear talk-over)
    language: str = "en"  # the language the user spoke, "en" or "zh" (fixed replies are said in it)
    retried: bool = False  # asked again with a shorter history after a context overflow
    speculative: bool = False  # transcribed and started during the end-of-turn silence
    tentative: bool = False  # started before the end of turn: its audio is held, not played
    prompt: str = ""
    llm: dict = field(default_factory=dict)  # metrics.llm_breakdown of the reply's stream

    def heard_text(self) -> str:
        """What the user heard: whole sentences, then the played share of the current one's words."""
        if self.heard_index < 0:
            return ""
        parts = self.sentences[: self.heard_index]
        if self.heard_index < len(self.sentences):
            parts.append(heard_words(self.sentences[self.heard_index], self.heard_progress))
        return " ".join(part for part in parts if part).strip()

    def full_text(self) -> str:
        """The whole reply, as generated when known (keeps llama-server's prompt cache matching)."""
        if self.resumed_from or not self.raw_text.strip():
            return " ".join(self.sentences).strip()
        return self.raw_text.strip()


@dataclass(frozen=True)
class Respond:
    """LLM-thread work: answer the active turn `turn_id`."""

    turn_id: int


@dataclass(frozen=True)
class Resume:
    """LLM-thread work: speak the unplayed sentences of a reply cut by a false interruption, then let
    the model continue after them unless it had already finished."""

    turn_id: int  # the new turn that carries the resumed reply
    pending: tuple[str, ...]  # sentences generated but never played
    llm_done: bool  # the model had finished the reply


@dataclass(frozen=True)
class ReplyPlayed:
    """Control-thread work: the last block of turn `turn_id` has played."""

    turn_id: int


@dataclass(frozen=True)
class WriteRecords:
    """Control-thread work: append `transcript` (one finished turn; None: nothing) and flush the
    metrics, off the audio thread that may have committed the turn."""

    transcript: dict | None


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


class _Stop:
    def __repr__(self) -> str:
        return "STOP"


STOP = _Stop()
"""Sentinel that ends a worker loop."""
