"""Text between the LLM and the synthesizer: reasoning filter, sentence chunker, TTS clean-up.

All three are incremental and pure: they take text pieces of any size (LLM tokens) and keep
whatever they cannot decide yet, so they are tested by splitting input at every offset.
"""

from __future__ import annotations

import re
import unicodedata

ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e a.m p.m fig approx dept est inc ltd co".split()
)
SENTENCE_END = ".!?…"
CLAUSE_END = ",;:—"
CLOSERS = "\"')]}»”’"


class ThinkFilter:
    """Drops text between <think> and </think> (reasoning models), even when tags are split."""

    OPEN = "<think>"
    CLOSE = "</think>"

    def __init__(self) -> None:
        self._pending = ""
        self._inside = False

    def feed(self, piece: str) -> str:
        """Add a piece; return the visible text that is now certain."""
        text = self._pending + piece
        self._pending = ""
        out = []
        while text:
            tag = self.CLOSE if self._inside else self.OPEN
            index = text.find(tag)
            if index >= 0:
                if not self._inside:
                    out.append(text[:index])
                text = text[index + len(tag) :]
                self._inside = not self._inside
                continue
            keep = _partial_suffix(text, tag)
            if not self._inside:
                out.append(text[: len(text) - keep])
            self._pending = text[len(text) - keep :]
            break
        return "".join(out)

    def flush(self) -> str:
        """End of stream: an unfinished tag prefix outside reasoning is ordinary text."""
        text, self._pending = self._pending, ""
        return "" if self._inside else text


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for length in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:length]):
            return length
    return 0


class SentenceChunker:
    """Cuts a token stream into speakable chunks: whole sentences, and optionally a short first clause.

    A sentence ends at . ! ? or … followed by whitespace (so "3.14" and "e.g. this" do not split)
    or at a newline. The first chunk may end at a clause mark (, ; : —) once it has
    `first_clause_min_words` words, and is cut after `first_chunk_max_words` words when no mark
    comes sooner, so speech can start sooner. A chunk with no boundary is cut at a space after
    `max_chars`.
    """

    def __init__(self, first_clause_min_words: int = 0, max_chars: int = 250, first_chunk_max_words: int = 0) -> None:
        self.first_clause_min_words = first_clause_min_words
        self.first_chunk_max_words = first_chunk_max_words
        self.max_chars = max_chars
        self._buffer = ""
        self._emitted = 0

    def feed(self, piece: str) -> list[str]:
        """Add a piece; return the chunks it completes (stripped, never empty)."""
        self._buffer += piece
        chunks = []
        while True:
            cut = self._find_cut()
            if cut is None:
                break
            chunk, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:]
            if chunk:
                chunks.append(chunk)
                self._emitted += 1
        return chunks

    def flush(self) -> list[str]:
        """End of stream: whatever is left is the last chunk."""
        chunk, self._buffer = self._buffer.strip(), ""
        if chunk:
            self._emitted += 1
            return [chunk]
        return []

    def _find_cut(self) -> int | None:
        text = self._buffer
        allow_clause = self._emitted == 0 and self.first_clause_min_words > 0
        word_limit = None  # end of the first chunk's last allowed word, once the next word has begun
        if self._emitted == 0 and self.first_chunk_max_words > 0:
            words = list(_WORD.finditer(text))
            if len(words) > self.first_chunk_max_words:
                word_limit = words[self.first_chunk_max_words - 1].end()
        for i, ch in enumerate(text):
            if word_limit is not None and i >= word_limit:
                return word_limit
            if i >= self.max_chars:
                break  # no boundary early enough: cut at a space below
            if ch == "\n":
                if text[:i].strip():
                    return i + 1
                continue
            is_end = ch in SENTENCE_END
            is_clause = allow_clause and ch in CLAUSE_END
            if not (is_end or is_clause):
                continue
            j = i + 1
            while j < len(text) and text[j] in CLOSERS + SENTENCE_END:
                j += 1
            if j >= len(text):
                return None  # cannot tell yet whether whitespace follows
            if not text[j].isspace():
                continue
            if is_end and ch == "." and _is_abbreviation(text[: i + 1]):
                continue
            if is_clause and len(text[:i].split()) < self.first_clause_min_words:
                continue
            return j
        if word_limit is not None:
            return word_limit
        if len(text) > self.max_chars:
            spaces = [m.end() for m in _WHITESPACE.finditer(text, 0, self.max_chars) if m.start() > 0]
            return spaces[-1] if spaces else self.max_chars
        return None


def _is_abbreviation(text_with_dot: str) -> bool:
    words = text_with_dot.split()
    if not words:
        return False
    word = words[-1].lower().rstrip(".").lstrip("(\"'")
    return word in ABBREVIATIONS or (len(word) == 1 and word.isalpha())


_WHITESPACE = re.compile(r"\s+")
_WORD = re.compile(r"\S+")
_MARKDOWN = re.compile(r"[*_#`~|>]+|\[(?P<label>[^\]]*)\]\([^)]*\)")
_SPACES = re.compile(r"\s+")


def clean_for_speech(text: str) -> str:
    """Text the synthesizer should say: no markdown, emoji or symbols; '' if nothing is speakable."""
    text = _MARKDOWN.sub(lambda m: m.group("label") or " ", text)
    text = _MARKDOWN.sub(lambda m: m.group("label") or " ", text)  # markdown inside link labels
    kept = []
    for ch in text:
        category = unicodedata.category(ch)
        if category[0] in "LNPZ" or ch in "%$€£&+=@":
            kept.append(ch)
        else:
            kept.append(" ")
    text = _SPACES.sub(" ", "".join(kept)).strip()
    if not any(unicodedata.category(ch)[0] in "LN" for ch in text):
        return ""
    return text


def words_in(text: str) -> list[str]:
    """Words as spoken, for counting what was heard."""
    return text.split()
