"""ThinkFilter, SentenceChunker and clean_for_speech: incremental text, split at every offset."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from voice_assistant.text import (
    WIDE_CLAUSE_END,
    WIDE_SENTENCE_END,
    SentenceChunker,
    ThinkFilter,
    clean_for_speech,
    word_count,
    words_in,
)

# --- helpers ------------------------------------------------------------------------------


def think(pieces: list[str]) -> str:
    f = ThinkFilter()
    return "".join(f.feed(p) for p in pieces) + f.flush()


def chunk(pieces: list[str], **kwargs: int) -> list[str]:
    c = SentenceChunker(**kwargs)
    out: list[str] = []
    for piece in pieces:
        out += c.feed(piece)
    return out + c.flush()


def splits(text: str) -> list[list[str]]:
    """`text` split in two at every offset."""
    return [[text[:i], text[i:]] for i in range(len(text) + 1)]


def strip_think_reference(text: str) -> str:
    """What ThinkFilter should output: text outside <think>...</think>; an unclosed block hides the rest."""
    out, i = [], 0
    while True:
        j = text.find("<think>", i)
        if j < 0:
            out.append(text[i:])
            return "".join(out)
        out.append(text[i:j])
        k = text.find("</think>", j + len("<think>"))
        if k < 0:
            return "".join(out)
        i = k + len("</think>")


def split_at(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    bounds = [0, *points, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


# --- ThinkFilter --------------------------------------------------------------------------

THOUGHTFUL = "Sure! <think>the user wants\n<b>x</b> a </thin k> answer</think>Here it is. <think>more</think>Done."


def test_think_removes_blocks() -> None:
    assert think([THOUGHTFUL]) == "Sure! Here it is. Done."


def test_think_split_at_every_offset() -> None:
    for pieces in splits(THOUGHTFUL):
        assert think(pieces) == "Sure! Here it is. Done.", pieces


def test_think_split_at_every_pair_of_offsets() -> None:
    text = "a<think>b</think>c"
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1):
            assert think([text[:i], text[i:j], text[j:]]) == "ac", (i, j)


def test_think_character_by_character() -> None:
    assert think(list(THOUGHTFUL)) == "Sure! Here it is. Done."


def test_think_output_is_released_as_soon_as_certain() -> None:
    f = ThinkFilter()
    assert f.feed("Hello <th") == "Hello "  # "<th" might start a tag
    assert f.feed("e end") == "<the end"  # it did not
    assert f.feed(" <think>secret") == " "
    assert f.feed(" more</thi") == ""
    assert f.feed("nk> after") == " after"


def test_think_text_around_blocks_and_lookalike_tags_kept() -> None:
    text = "x < y <thinking> <Think> </think> <<think>z</think>>"
    assert think([text]) == "x < y <thinking> <Think> </think> <>"
    for pieces in splits(text):
        assert think(pieces) == "x < y <thinking> <Think> </think> <>"


def test_think_unfinished_tag_at_end_is_text() -> None:
    f = ThinkFilter()
    assert f.feed("Hello <thin") == "Hello "
    assert f.flush() == "<thin"
    assert f.flush() == ""


def test_think_unfinished_block_at_end_is_dropped() -> None:
    f = ThinkFilter()
    assert f.feed("Hi<think>still thinking </thi") == "Hi"
    assert f.flush() == ""


def test_think_only_reasoning_gives_nothing() -> None:
    assert think(["<think>", "all of it", "</think>"]) == ""


# --- SentenceChunker ----------------------------------------------------------------------


def test_chunker_splits_sentences() -> None:
    assert chunk(["Hello there. How are you? I'm fine! Wait… what"]) == [
        "Hello there.",
        "How are you?",
        "I'm fine!",
        "Wait…",
        "what",
    ]


def test_chunker_waits_until_whitespace_follows_the_mark() -> None:
    c = SentenceChunker()
    assert c.feed("It costs 3.") == []
    assert c.feed("14 dollars.") == []
    assert c.feed(" Next") == ["It costs 3.14 dollars."]
    assert c.flush() == ["Next"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Pi is 3.14 and e is 2.71. Nice.", ["Pi is 3.14 and e is 2.71.", "Nice."]),
        ("Use tools, e.g. a hammer. Then stop.", ["Use tools, e.g. a hammer.", "Then stop."]),
        ("Ask Dr. Smith and Mr. Jones. They know.", ["Ask Dr. Smith and Mr. Jones.", "They know."]),
        ("Call i.e. now at 5 p.m. today. Bye.", ["Call i.e. now at 5 p.m. today.", "Bye."]),
        ("J. R. R. Tolkien wrote it. Yes.", ["J. R. R. Tolkien wrote it.", "Yes."]),
        ("He said \"stop.\" Then left.", ["He said \"stop.\"", "Then left."]),
        ("Really?! Yes... I think so.", ["Really?!", "Yes...", "I think so."]),
        ("Visit example.com today. Ok.", ["Visit example.com today.", "Ok."]),
    ],
)
def test_chunker_sentence_boundaries(text: str, expected: list[str]) -> None:
    assert chunk([text]) == expected
    for pieces in splits(text):
        assert chunk(pieces) == expected, pieces


def test_chunker_splits_at_newlines() -> None:
    text = "Shopping list\n- eggs\n\n- milk\nthat's all"
    assert chunk([text]) == ["Shopping list", "- eggs", "- milk", "that's all"]


def test_chunker_first_clause() -> None:
    text = "Well, I think that, in short, it works. Later, yes, it does."
    # Without the option, clause marks never split.
    assert chunk([text]) == ["Well, I think that, in short, it works.", "Later, yes, it does."]
    # With it, only the first chunk may end at a clause mark, once it has enough words.
    assert chunk([text], first_clause_min_words=3) == [
        "Well, I think that,",
        "in short, it works.",
        "Later, yes, it does.",
    ]
    assert chunk([text], first_clause_min_words=1) == [
        "Well,",
        "I think that, in short, it works.",
        "Later, yes, it does.",
    ]
    # A sentence end before the clause mark counts as the first chunk.
    assert chunk(["Hi. So, what now, then?"], first_clause_min_words=1) == ["Hi.", "So, what now, then?"]


def test_chunker_first_clause_needs_whitespace_after_mark() -> None:
    assert chunk(["At 10:30 we meet; then go."], first_clause_min_words=2) == ["At 10:30 we meet;", "then go."]


def test_chunker_max_chars_cuts_at_a_space() -> None:
    text = "one two three four five six seven eight nine ten eleven twelve"
    chunks = chunk([text], max_chars=20)
    assert all(len(c) <= 20 for c in chunks), chunks
    assert " ".join(chunks) == text
    assert len(chunks) > 1


def test_chunker_max_chars_cuts_a_word_without_spaces() -> None:
    chunks = chunk(["x" * 45], max_chars=20)
    assert chunks == ["x" * 20, "x" * 20, "x" * 5]


@pytest.mark.parametrize("first", [0, 3])
def test_chunker_split_at_every_offset_same_as_one_feed(first: int) -> None:
    text = (
        "Well, Dr. Who said 3.14 is pi, e.g. in maths. Really? Yes!\n"
        "A list: one, two; three — four.\n\"Quoted.\" (Aside.) End… ok"
    )
    whole = chunk([text], first_clause_min_words=first)
    assert len(whole) >= 6
    for pieces in splits(text):
        assert chunk(pieces, first_clause_min_words=first) == whole, pieces
    assert chunk(list(text), first_clause_min_words=first) == whole


def test_chunker_long_sentence_same_however_fed() -> None:
    text = "one two three four five six seven. eight"
    assert chunk([text], max_chars=20) == chunk(list(text), max_chars=20)


def test_chunker_max_chars_never_cuts_words_separated_by_tabs() -> None:
    text = "\t".join(["word"] * 10)
    assert " ".join(chunk([text], max_chars=22)).split() == text.split()


def test_chunker_chunks_are_stripped_and_never_empty() -> None:
    chunks = chunk(["  \n\n  Hi.   \n  ", "   ", "\n"])
    assert chunks == ["Hi."]
    assert chunk(["", "   "]) == []


# --- clean_for_speech ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("**Bold** and _italic_ text", "Bold and italic text"),
        ("# Heading", "Heading"),
        ("> quoted line", "quoted line"),
        ("Use `pip install`", "Use pip install"),
        ("~~gone~~ | table | row |", "gone table row"),
        ("See [the docs](https://example.com/x_y) now", "See the docs now"),
        ("Hi 😀 there 🎉!", "Hi there !"),
        ("Cost: $5 + 10% = €6 & more", "Cost: 5 dollars + 10 percent equals 6 euros and more"),
        ("Water boils at 100°C (212 °F).", "Water boils at 100 degrees Celsius (212 degrees Fahrenheit)."),
        ("**Paris** is 5 km away, i.e. close.", "Paris is 5 kilometres away, that is close."),
        ("7 x 8 = 56", "7 times 8 equals 56"),
        ("12 / 4 = 3", "12 divided by 4 equals 3"),
        ("1990-2000 rock-and-roll", "1990-2000 rock-and-roll"),
        ("水在100°C沸腾，约71%。", "水在100摄氏度沸腾，约百分之71。"),
        ("3+5=8", "3 plus 5 equals 8"),
        ("  many   spaces\n\tand lines  ", "many spaces and lines"),
        ("héllo 世界", "héllo 世界"),
        ("Once upon a time, there was [interrupted by the user]", "Once upon a time, there was"),
        ("[laughs] Water [1] is wet.", "Water is wet."),
    ],
)
def test_clean_for_speech(text: str, expected: str) -> None:
    assert clean_for_speech(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "😀", "🎉🎉 👍🏽", "❤️", "...", "!?", "**", "— …", "[](x)", "→ ★"])
def test_clean_for_speech_nothing_speakable(text: str) -> None:
    assert clean_for_speech(text) == ""


def test_clean_for_speech_markdown_inside_link_label() -> None:
    assert clean_for_speech("[**bold** link](https://example.com)") == "bold link"


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=80))
def test_property_clean_for_speech_output_is_speakable_or_empty(text: str) -> None:
    out = clean_for_speech(text)
    if out:
        assert out == out.strip()
        assert "  " not in out
        assert any(unicodedata.category(ch)[0] in "LN" for ch in out)
        assert all(unicodedata.category(ch)[0] in "LNPZ" or ch in "%$€£&+=@" for ch in out)
        assert not any(ch.isspace() and ch != " " for ch in out)


# --- properties ---------------------------------------------------------------------------

think_text = st.lists(
    st.sampled_from(["<think>", "</think>", "<", ">", "/", "think", "thin", "k", "a", " ", "\n", "é", "🙂"]),
    max_size=30,
).map("".join)


@settings(max_examples=150, deadline=None)
@given(text=think_text, cuts=st.lists(st.integers(0, 1000), max_size=10))
def test_property_think_filter_any_split(text: str, cuts: list[int]) -> None:
    assert think(split_at(text, cuts)) == strip_think_reference(text)


@settings(max_examples=150, deadline=None)
def _words_and_wide_ends(text: str) -> list[str]:
    for mark in WIDE_SENTENCE_END + WIDE_CLAUSE_END:
        text = text.replace(mark, mark + " ")
    return text.split()


@given(
    text=st.text(max_size=200),
    cuts=st.lists(st.integers(0, 1000), max_size=15),
    first=st.integers(0, 4),
)
@example(text="。0", cuts=[], first=0)  # found by hypothesis: a cut after a full-width stop is a cut
def test_property_chunker_keeps_every_word(text: str, cuts: list[int], first: int) -> None:
    # max_chars out of reach: sentence, clause and newline cuts only, for any text. A Chinese full-width
    # mark ends a sentence or clause with no space after it ("。0" is two chunks), so the words compared are the
    # ones spaces and those marks delimit.
    chunks = chunk(split_at(text, cuts), first_clause_min_words=first, max_chars=10_000)
    assert _words_and_wide_ends(" ".join(chunks)) == _words_and_wide_ends(text)
    assert all(c and c == c.strip() for c in chunks)


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(max_size=200),
    cuts=st.lists(st.integers(0, 1000), max_size=15),
    first=st.integers(0, 4),
)
def test_property_chunker_split_invariant_below_max_chars(text: str, cuts: list[int], first: int) -> None:
    whole = chunk([text], first_clause_min_words=first, max_chars=10_000)
    assert chunk(split_at(text, cuts), first_clause_min_words=first, max_chars=10_000) == whole


prose = st.lists(
    st.tuples(
        st.text(st.characters(categories=("L", "N", "P")), min_size=1, max_size=12),
        st.sampled_from([" ", "  ", "\n", " \n ", ". ", "? ", ", "]),
    ),
    max_size=40,
).map(lambda parts: "".join(w + sep for w, sep in parts))


@settings(max_examples=150, deadline=None)
@given(text=prose, cuts=st.lists(st.integers(0, 2000), max_size=15), max_chars=st.integers(30, 120))
@example(text="。. ", cuts=[], max_chars=30)  # found by hypothesis: marks after a full-width stop stay with it
def test_property_chunker_keeps_every_word_with_max_chars(text: str, cuts: list[int], max_chars: int) -> None:
    # Words shorter than max_chars, separated by spaces and newlines: max_chars cuts never split one.
    chunks = chunk(split_at(text, cuts), max_chars=max_chars)
    assert " ".join(" ".join(chunks).split()) == " ".join(text.split())
    assert [w for c in chunks for w in words_in(c)] == text.split()


def test_first_chunk_is_cut_after_max_words_however_fed():
    text = "Bees make honey and they also build wax combs for their young ones. Then more."
    expected = ["Bees make honey and they also build", "wax combs for their young ones.", "Then more."]
    whole = SentenceChunker(first_chunk_max_words=7)
    assert whole.feed(text) + whole.flush() == expected
    pieces = SentenceChunker(first_chunk_max_words=7)
    chunks = []
    for ch in text:
        chunks += pieces.feed(ch)
    assert chunks + pieces.flush() == expected


def test_chinese_sentences_end_at_full_width_marks_without_a_space():
    text = "好的，我来帮你查一下。一年有五十二个星期！你还想知道什么？"
    for step in range(1, len(text) + 1):
        chunker, chunks = SentenceChunker(first_clause_min_words=3, first_chunk_max_words=8), []
        for i in range(0, len(text), step):
            chunks += chunker.feed(text[i : i + step])
        chunks += chunker.flush()
        assert chunks == ["好的，我来帮你查一下。", "一年有五十二个星期！", "你还想知道什么？"], step


def test_a_chinese_first_clause_counts_two_characters_as_a_word():
    chunker = SentenceChunker(first_clause_min_words=3, first_chunk_max_words=8)
    assert chunker.feed("德国的首都，是柏林") == []  # five characters are 2.5 words: too short for a clause
    chunker = SentenceChunker(first_clause_min_words=3, first_chunk_max_words=8)
    assert chunker.feed("德国的首都柏林，是") == ["德国的首都柏林，"]  # seven characters: 3.5 words
    assert SentenceChunker(first_clause_min_words=3).feed("好的，") == []  # one word's worth is too short
    chunker = SentenceChunker(first_chunk_max_words=4)
    assert chunker.feed("长城是中国最著名的古迹") == ["长城是中国最著名"]  # eight characters = four words
    assert word_count("Berlin 是德国的首都") == 4.0


def test_stop_commands_in_mandarin():
    from asr_llm_tts import is_stop_command

    assert all(is_stop_command(text) for text in ("等一下。", "停！", "别说了", "Stop."))
    assert not is_stop_command("等一下再告诉我德国的首都是哪里？")
