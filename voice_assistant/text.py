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
CLOSERS = "\"')]}»”’」』）"
WIDE_SENTENCE_END = "。！？"  # Chinese: a full-width mark ends a sentence with no space after it
WIDE_CLAUSE_END = "，；：、"
CJK = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_UNIT = re.compile(rf"[{CJK}]|[^\s{CJK}]+")  # a word, or one Chinese character (about a syllable)


def speech_units(text: str) -> list[re.Match]:
    """Words, and each Chinese character as one unit (Chinese has no spaces); punctuation alone is not one."""
    return [m for m in _UNIT.finditer(text) if any(ch.isalnum() for ch in m.group())]


def _weight(unit: str) -> float:
    return 0.5 if re.match(rf"[{CJK}]", unit) else 1.0  # two characters take about as long to say as a word


def word_count(text: str) -> float:
    """Words, counting a Chinese character as half a word (about the same speaking time)."""
    return sum(_weight(m.group()) for m in speech_units(text))


def _end_of_words(text: str, limit: int) -> int | None:
    """Where the first `limit` words of `text` end (with any punctuation stuck to them), if more words follow."""
    total, end = 0.0, None
    for unit in speech_units(text):
        if end is not None and total + _weight(unit.group()) > limit:
            while end < len(text) and not text[end].isspace() and not text[end].isalnum():
                end += 1
            return end
        total += _weight(unit.group())
        end = unit.end()
    return None


def is_chinese(text: str) -> bool:
    """Mostly Chinese characters, among the letters of `text`."""
    letters = [ch for ch in text if ch.isalpha()]
    han = sum(1 for ch in letters if re.match(rf"[{CJK}]", ch))
    return bool(letters) and han * 2 >= len(letters)


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

    A sentence ends at . ! ? or … followed by whitespace (so "3.14" and "e.g. this" do not split),
    at Chinese 。！？ (no space follows them), or at a newline. Word counts count a Chinese
    character as half a word. The first chunk may end at a clause mark (, ; : —) once it has
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
            word_limit = _end_of_words(text, self.first_chunk_max_words)
        for i, ch in enumerate(text):
            if word_limit is not None and i >= word_limit:
                return word_limit
            if i >= self.max_chars:
                break  # no boundary early enough: cut at a space below
            if ch == "\n":
                if text[:i].strip():
                    return i + 1
                continue
            if ch in WIDE_SENTENCE_END or (allow_clause and ch in WIDE_CLAUSE_END):
                j = i + 1
                while j < len(text) and text[j] in CLOSERS + WIDE_SENTENCE_END + SENTENCE_END:
                    j += 1
                if j >= len(text):
                    return None  # a closing quote or another mark may follow
                if ch in WIDE_CLAUSE_END and word_count(text[:i]) < self.first_clause_min_words:
                    continue
                return j
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
            if is_clause and word_count(text[:i]) < self.first_clause_min_words:
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
_MARKDOWN = re.compile(r"[*_#`~|>]+|\[(?P<label>[^\]]*)\]\([^)]*\)")
_BRACKETED = re.compile(r"\[[^\]]*\](?!\()")  # [a note], but not a markdown link
_SPACES = re.compile(r"\s+")


_NUMBER = r"(\d[\d,]*(?:\.\d+)?)"
_EN_SPOKEN = [  # (pattern, replacement): symbols, units and abbreviations as an English speaker says them
    (rf"{_NUMBER}\s*°\s*C\b", r"\1 degrees Celsius"), (rf"{_NUMBER}\s*°\s*F\b", r"\1 degrees Fahrenheit"),
    (rf"{_NUMBER}\s*°", r"\1 degrees"), (rf"{_NUMBER}\s*%", r"\1 percent"),
    (rf"\$\s*{_NUMBER}", r"\1 dollars"), (rf"€\s*{_NUMBER}", r"\1 euros"), (rf"£\s*{_NUMBER}", r"\1 pounds"),
    (rf"{_NUMBER}\s*km/h\b", r"\1 kilometres per hour"), (rf"{_NUMBER}\s*mph\b", r"\1 miles per hour"),
    (rf"{_NUMBER}\s*km\b", r"\1 kilometres"), (rf"{_NUMBER}\s*cm\b", r"\1 centimetres"),
    (rf"{_NUMBER}\s*mm\b", r"\1 millimetres"), (rf"{_NUMBER}\s*m\b", r"\1 metres"),
    (rf"{_NUMBER}\s*kg\b", r"\1 kilograms"), (rf"{_NUMBER}\s*lbs?\b", r"\1 pounds"),
    (rf"{_NUMBER}\s*ft\b", r"\1 feet"), (rf"{_NUMBER}\s*ml\b", r"\1 millilitres"),
    (rf"{_NUMBER}\s*min\b", r"\1 minutes"), (rf"{_NUMBER}\s*hrs?\b", r"\1 hours"),
    (rf"{_NUMBER}\s*[x×*]\s*{_NUMBER}", r"\1 times \2"), (rf"{_NUMBER}\s*[÷/]\s*{_NUMBER}", r"\1 divided by \2"),
    (rf"{_NUMBER}\s*\+\s*{_NUMBER}", r"\1 plus \2"), (rf"{_NUMBER}\s+[-−–]\s+{_NUMBER}", r"\1 minus \2"),
    (r"\s*=\s*", " equals "), (r"\s*&\s*", " and "),
    (r"\be\.g\.", "for example"), (r"\bi\.e\.", "that is"), (r"\betc\.", "and so on"),
    (r"\bvs\.?(?=\s)", "versus"), (r"\bapprox\.", "approximately"),
]  # fmt: skip
_ZH_SPOKEN = [  # the same for Chinese (numbers themselves are read by the Mandarin voice's front end)
    (rf"{_NUMBER}\s*%", r"百分之\1"), (rf"{_NUMBER}\s*°\s*C(?![A-Za-z])", r"\1摄氏度"), (rf"{_NUMBER}\s*°", r"\1度"),
    (rf"{_NUMBER}\s*km/h(?![A-Za-z])", r"每小时\1公里"), (rf"{_NUMBER}\s*km(?![A-Za-z])", r"\1公里"), (rf"{_NUMBER}\s*kg(?![A-Za-z])", r"\1公斤"),
    (rf"{_NUMBER}\s*cm(?![A-Za-z])", r"\1厘米"), (rf"{_NUMBER}\s*m(?![A-Za-z])", r"\1米"),
    (rf"{_NUMBER}\s*[x×*]\s*{_NUMBER}", r"\1乘以\2"), (rf"{_NUMBER}\s*[÷/]\s*{_NUMBER}", r"\1除以\2"),
    (rf"{_NUMBER}\s*\+\s*{_NUMBER}", r"\1加\2"), (rf"{_NUMBER}\s*[-−–]\s*{_NUMBER}", r"\1减\2"),
    (r"\s*=\s*", "等于"),
]  # fmt: skip
_EN_SPOKEN = [(re.compile(pattern), repl) for pattern, repl in _EN_SPOKEN]
_ZH_SPOKEN = [(re.compile(pattern), repl) for pattern, repl in _ZH_SPOKEN]


def spoken_forms(text: str) -> str:
    """Symbols, units and abbreviations written out as a speaker says them ("5 km" -> "5 kilometres")."""
    for pattern, replacement in _ZH_SPOKEN if is_chinese(text) else _EN_SPOKEN:
        text = pattern.sub(replacement, text)
    return text


def clean_for_speech(text: str) -> str:
    """Text the synthesizer should say: no markdown, emoji or symbols, units spelled out; '' if nothing is speakable."""
    text = spoken_forms(text)
    text = _BRACKETED.sub(" ", text)  # stage directions and notes ("[laughs]", "[1]") are not read aloud
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
