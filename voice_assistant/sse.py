"""Byte-level readers for llama-server's streaming responses.

`ChunkedDecoder` undoes HTTP/1.1 chunked transfer encoding and `SSEParser` splits server-sent
events into `data:` payloads. Both take bytes in pieces of any size, so a read may end anywhere,
even inside a multi-byte UTF-8 character: lines are decoded only once they are complete.
"""

from __future__ import annotations

import re

from .errors import LLMProtocolError

_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")

MAX_LINE_BYTES = 1 << 20
"""An SSE line longer than this (1 MiB) is a broken or hostile server; we stop rather than grow."""


def decode_line(raw: bytes) -> str:
    """Decode one complete line; invalid UTF-8 becomes U+FFFD instead of an exception."""
    return raw.decode("utf-8", errors="replace")


def sse_data(line: str) -> str | None:
    """The payload of a `data:` line, or None for comments, other fields and blank lines."""
    if line.endswith("\r"):
        line = line[:-1]
    if not line.startswith("data:"):
        return None
    payload = line[5:]
    return payload[1:] if payload.startswith(" ") else payload


class SSEParser:
    """Turns a byte stream into the payloads of its `data:` lines."""

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._buffer = bytearray()
        self._max_line_bytes = max_line_bytes
        self.lines_seen = 0

    def feed(self, data: bytes) -> list[str]:
        """Add bytes; return the payloads of every `data:` line completed by them."""
        self._buffer += data
        payloads = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                break
            if end > self._max_line_bytes:
                raise LLMProtocolError(f"server sent an SSE line longer than {self._max_line_bytes} bytes")
            raw = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            self.lines_seen += 1
            payload = sse_data(decode_line(raw))
            if payload is not None:
                payloads.append(payload)
        if len(self._buffer) > self._max_line_bytes:
            raise LLMProtocolError(f"server sent an SSE line longer than {self._max_line_bytes} bytes")
        return payloads

    def close(self) -> list[str]:
        """End of stream: a last line without its newline still counts."""
        if not self._buffer:
            return []
        payload = sse_data(decode_line(bytes(self._buffer)))
        self._buffer.clear()
        return [payload] if payload is not None else []


class ChunkedDecoder:
    """Incremental decoder of `Transfer-Encoding: chunked` bodies."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._remaining = 0  # bytes left in the current chunk's data
        self._need_crlf = False  # the CRLF after a chunk's data is still to come
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """Add raw body bytes; return the decoded payload bytes they complete."""
        self._buffer += data
        out = bytearray()
        while not self.done:
            if self._remaining:
                take = min(self._remaining, len(self._buffer))
                if take == 0:
                    break
                out += self._buffer[:take]
                del self._buffer[:take]
                self._remaining -= take
                if self._remaining == 0:
                    self._need_crlf = True
                continue
            if self._need_crlf:
                if len(self._buffer) < 2:
                    break
                if self._buffer[:2] != b"\r\n":
                    raise LLMProtocolError("malformed chunked encoding: missing CRLF after chunk")
                del self._buffer[:2]
                self._need_crlf = False
                continue
            end = self._buffer.find(b"\r\n")
            if end < 0:
                if len(self._buffer) > 1024:
                    raise LLMProtocolError("malformed chunked encoding: chunk size line too long")
                break
            size_text = bytes(self._buffer[:end]).split(b";", 1)[0].strip()
            del self._buffer[: end + 2]
            if not _HEX.fullmatch(size_text):
                raise LLMProtocolError(f"malformed chunked encoding: bad chunk size {size_text[:20]!r}")
            size = int(size_text, 16)
            if size == 0:
                self.done = True
            else:
                self._remaining = size
        return bytes(out)
