"""SSEParser and ChunkedDecoder: the stream may be split anywhere, even inside a UTF-8 character."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from voice_assistant.errors import LLMProtocolError
from voice_assistant.sse import ChunkedDecoder, SSEParser, sse_data

CONTENTS = ["héllo", " 世界", " 🙂", "", " ok"]
EVENTS = [json.dumps({"content": c, "stop": False}, ensure_ascii=False) for c in CONTENTS]
FINAL = json.dumps({"content": "", "stop": True, "timings": {"predicted_n": 4}})

# A realistic llama-server stream with CRLF line endings, comments, other fields and blank lines.
STREAM = (
    b": keep-alive comment\r\n"
    b"\r\n"
    + b"".join(b"data: " + e.encode() + b"\r\n\r\n" for e in EVENTS[:2])
    + b"event: message\r\n"
    + b"id: 7\r\n"
    + b"data:" + EVENTS[2].encode() + b"\r\n"  # no space after the colon
    + b"\r\n"
    + b"retry: 100\n"  # a bare LF line among CRLF ones
    + b"".join(b"data: " + e.encode() + b"\n\n" for e in EVENTS[3:])
    + b":\r\n"
    + b"data: " + FINAL.encode() + b"\r\n\r\n"
)
PAYLOADS = EVENTS + [FINAL]


def chunked(data: bytes, size: int, extension: bool = False) -> bytes:
    """`data` in chunked transfer encoding, chunks of `size` bytes, then the last chunk."""
    out = bytearray()
    for start in range(0, len(data), size):
        part = data[start : start + size]
        ext = b";name=value" if extension else b""
        out += f"{len(part):X}".encode() + ext + b"\r\n" + part + b"\r\n"
    return bytes(out + b"0\r\n\r\n")


def parse(pieces: list[bytes]) -> list[str]:
    parser = SSEParser()
    payloads = []
    for piece in pieces:
        payloads += parser.feed(piece)
    return payloads + parser.close()


def decode(pieces: list[bytes]) -> tuple[bytes, bool]:
    decoder = ChunkedDecoder()
    out = b"".join(decoder.feed(piece) for piece in pieces)
    return out, decoder.done


def test_stream_is_realistic() -> None:
    assert "🙂" in STREAM.decode()
    assert b"\r\n" in STREAM
    assert len(STREAM) > 200


# --- SSEParser ------------------------------------------------------------------------------


def test_whole_stream() -> None:
    assert parse([STREAM]) == PAYLOADS
    assert [json.loads(p)["content"] for p in PAYLOADS[:-1]] == CONTENTS


def test_split_at_every_offset() -> None:
    for i in range(len(STREAM) + 1):
        assert parse([STREAM[:i], STREAM[i:]]) == PAYLOADS, f"split at {i}"


def test_byte_by_byte() -> None:
    assert parse([STREAM[i : i + 1] for i in range(len(STREAM))]) == PAYLOADS


def test_payloads_are_returned_as_soon_as_their_line_ends() -> None:
    parser = SSEParser()
    line = b"data: " + EVENTS[0].encode()
    assert parser.feed(line) == []
    assert parser.feed(b"\r") == []
    assert parser.feed(b"\n") == [EVENTS[0]]
    assert parser.feed(b"\r\n") == []
    assert parser.lines_seen == 2


def test_sse_data_fields() -> None:
    assert sse_data("data: x") == "x"
    assert sse_data("data:x") == "x"
    assert sse_data("data:  two spaces") == " two spaces"
    assert sse_data("data: x\r") == "x"
    assert sse_data("data:") == ""
    assert sse_data(": comment") is None
    assert sse_data("event: message") is None
    assert sse_data("") is None
    assert sse_data("\r") is None


def test_invalid_utf8_becomes_replacement_character() -> None:
    parser = SSEParser()
    assert parser.feed(b'data: {"content": "a\xffb\xc3"}\n') == ['{"content": "a\ufffdb\ufffd"}']
    assert parser.feed(b"data: \xe4\xb8\n") == ["\ufffd"]  # a truncated 3-byte character


def test_close_returns_last_unterminated_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: first\n\ndata: last") == ["first"]
    assert parser.close() == ["last"]
    assert parser.close() == []  # nothing left


def test_close_ignores_unterminated_non_data_line_and_empty_buffer() -> None:
    parser = SSEParser()
    assert parser.close() == []
    assert parser.feed(b"data: a\n: trailing comment") == ["a"]
    assert parser.close() == []


def test_close_with_partial_multibyte_character() -> None:
    parser = SSEParser()
    assert parser.feed("data: 世".encode()[:-1]) == []
    assert parser.close() == ["\ufffd"]


def test_oversized_line_raises() -> None:
    parser = SSEParser(max_line_bytes=64)
    assert parser.feed(b"data: " + b"x" * 50) == []
    with pytest.raises(LLMProtocolError, match="longer than 64"):
        parser.feed(b"x" * 50)


def test_oversized_line_raises_in_one_feed_without_newline() -> None:
    with pytest.raises(LLMProtocolError):
        SSEParser(max_line_bytes=64).feed(b"data: " + b"x" * 100)


def test_line_at_the_limit_is_accepted() -> None:
    parser = SSEParser(max_line_bytes=64)
    line = b"data: " + b"x" * 58
    assert len(line) == 64
    assert parser.feed(line) == []
    assert parser.feed(b"\n") == ["x" * 58]


def test_many_short_lines_do_not_count_as_one_long_line() -> None:
    parser = SSEParser(max_line_bytes=64)
    data = b"data: 0123456789\n" * 100
    assert parser.feed(data) == ["0123456789"] * 100


def test_oversized_line_raises_however_it_is_split() -> None:
    with pytest.raises(LLMProtocolError):
        SSEParser(max_line_bytes=64).feed(b"data: " + b"x" * 100 + b"\n")


# --- ChunkedDecoder -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 3, 7, 64, 10_000])
def test_chunked_split_at_every_offset(size: int) -> None:
    body = chunked(STREAM, size, extension=size == 7)
    for i in range(len(body) + 1):
        assert decode([body[:i], body[i:]]) == (STREAM, True), f"split at {i}"


def test_chunked_byte_by_byte() -> None:
    body = chunked(STREAM, 5)
    assert decode([body[i : i + 1] for i in range(len(body))]) == (STREAM, True)


def test_chunked_then_sse_split_at_every_offset() -> None:
    body = chunked(STREAM, 11)
    for i in range(len(body) + 1):
        decoder, parser = ChunkedDecoder(), SSEParser()
        payloads = parser.feed(decoder.feed(body[:i])) + parser.feed(decoder.feed(body[i:]))
        assert payloads + parser.close() == PAYLOADS, f"split at {i}"
        assert decoder.done


def test_chunked_not_done_until_last_chunk() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(b"3\r\nabc\r\n") == b"abc"
    assert not decoder.done
    assert decoder.feed(b"0\r\n") == b""
    assert decoder.done
    assert decoder.feed(b"\r\ntrailing junk") == b""  # nothing after the last chunk is payload


def test_chunked_hex_sizes() -> None:
    data = bytes(range(256)) * 2
    body = b"1fF\r\n" + data[:0x1FF] + b"\r\n" + b"1\r\n" + data[0x1FF:] + b"\r\n0\r\n\r\n"
    assert decode([body]) == (data, True)


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\nabc\r\n",
        b"\r\nabc\r\n",
        b"3 4\r\nabc\r\n",
        b"g\r\n",
        b"3\r\nabcXY",  # no CRLF after the chunk data
        b"3\r\nabc\n0\r\n",
        b"1" * 2000,  # a size line that never ends
    ],
    ids=["not-hex", "empty", "space", "g", "no-crlf", "lf-only", "endless-size-line"],
)
def test_malformed_chunked_raises(body: bytes) -> None:
    with pytest.raises(LLMProtocolError, match="malformed chunked"):
        decode([body])
    with pytest.raises(LLMProtocolError, match="malformed chunked"):
        decode([body[i : i + 1] for i in range(len(body))])


@pytest.mark.parametrize(
    "body",
    [
        b"-2\r\nab\r\n\r\n0\r\n\r\n",  # decodes to b"ab\r\n\r\n0\r\n", framing bytes included
        b"+3\r\nabc\r\n0\r\n\r\n",
        b"0x3\r\nabc\r\n0\r\n\r\n",
        b"1_0\r\nabcdefghijklmnop\r\n0\r\n\r\n",
    ],
    ids=["negative", "plus-sign", "0x-prefix", "underscore"],
)
def test_chunk_size_must_be_hex_digits(body: bytes) -> None:
    with pytest.raises(LLMProtocolError, match="malformed chunked"):
        decode([body])


# --- properties ---------------------------------------------------------------------------

payload_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\r\n"), max_size=40)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


@settings(max_examples=200, deadline=None)
@given(
    payloads=st.lists(payload_text, max_size=12),
    sizes=st.lists(st.integers(1, 50), min_size=1, max_size=8),
    cuts=st.lists(st.integers(0, 10_000), max_size=20),
    crlf=st.booleans(),
)
def test_property_chunked_sse_round_trip(payloads: list[str], sizes: list[int], cuts: list[int], crlf: bool) -> None:
    end = b"\r\n" if crlf else b"\n"
    sse = b"".join(b"data: " + p.encode() + end + end for p in payloads)
    body = bytearray()
    pos = 0
    for k in range(len(sse)):  # chunks of the given sizes, in turn
        if pos >= len(sse):
            break
        part = sse[pos : pos + sizes[k % len(sizes)]]
        body += f"{len(part):x}\r\n".encode() + part + b"\r\n"
        pos += len(part)
    body += b"0\r\n\r\n"

    decoder, parser = ChunkedDecoder(), SSEParser()
    got = []
    for piece in split_at(bytes(body), cuts):
        got += parser.feed(decoder.feed(piece))
    got += parser.close()

    assert got == payloads
    assert decoder.done


@settings(max_examples=200, deadline=None)
@given(payloads=st.lists(payload_text, max_size=12), cuts=st.lists(st.integers(0, 10_000), max_size=20))
def test_property_sse_split_anywhere(payloads: list[str], cuts: list[int]) -> None:
    sse = b"".join(b"data: " + p.encode() + b"\n\n" for p in payloads)
    assert parse(split_at(sse, cuts)) == payloads
