"""A fake llama-server over a real socket, for testing `LlamaClient` without a model.

It speaks HTTP/1.1 on 127.0.0.1 (a free port) from a background thread and answers like
llama-server: `GET /health`, `POST /apply-template` and streamed `POST /completion`
(`Transfer-Encoding: chunked`, one `data: {json}\\n\\n` event per chunk, then a final event with
`stop: true`). Each /completion request takes the next scripted `Reply` (or `default_reply`), except
cache warm-ups (`n_predict` 1), which are answered "." and listed apart (`warm_up_bodies`).

It also speaks OpenAI's API, as llama-server, Ollama, vLLM and LM Studio do: `GET /v1/models` and
streamed `POST /v1/chat/completions` (a role-only first chunk, an empty delta, `reasoning_content`
deltas, the content deltas, a chunk with `finish_reason`, a usage chunk, then `data: [DONE]`),
scripted by the same `Reply`s. `FakeLlamaServer(openai_only=True)` answers 404 to llama-server's
own routes, like a server that is not llama-server.

Tests order concurrent steps with events, never sleeps:
- `Reply.gates[i]` makes the server wait on that event before sending piece `i`
  (`i == len(pieces)`: before the final event); `Reply.headers_gate` before the response headers.
  `wait_until_blocked(gate)` returns once a request handler is waiting on that gate.
- `hung_up` is set each time a client hangs up mid-stream (a write fails, the connection is
  reset, or the client closes while the server still had more to send); `hangups` counts them.
- `requests` records every request (method, path, parsed JSON body, headers).
- Prompt cache, as llama-server keeps one per slot: a /completion request with `cache_prompt` and
  `id_slot` reads only what its prompt does not share with that slot's last prompt and reply.
  `prompt_reads` records (slot, characters read, characters reused) per request; a character
  stands for a token.

Use it as a context manager (`with FakeLlamaServer() as server: ...`) or through the
`fake_llama_server` fixture; `stop()` ends every handler thread.
"""

from __future__ import annotations

import collections
import json
import os
import select
import socket
import socketserver
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest

POLL_S = 0.01
"""How often a handler waiting on a gate checks whether the client left or the server stops."""


@dataclass
class Reply:
    """The script for one /completion request."""

    pieces: list[str | bytes] = field(default_factory=lambda: ["Hello", " world", "."])
    """Content of each event. `bytes` go into the JSON string verbatim (e.g. invalid UTF-8);
    they must not contain `"` or `\\`."""
    gates: dict[int, threading.Event] = field(default_factory=dict)
    """Wait on gates[i] before sending piece i; gates[len(pieces)] holds back the final event."""
    headers_gate: threading.Event | None = None
    """Wait on this before sending the response headers (llama-server still processing the prompt)."""
    status: int = 200
    """Anything but 200 answers with this status and `{"error": {"message": error_message}}`."""
    error_message: str = "something went wrong"
    malformed_at: int | None = None
    """Send `malformed_line` before piece i (the stream then goes on as scripted)."""
    malformed_line: bytes = b"data: {this is not json\n\n"
    error_event_at: int | None = None
    """Before piece i, send an SSE error event `{"error": {...}}` and end the stream there."""
    disconnect_at: int | None = None
    """Before piece i, close the connection: no final event, no terminating chunk."""
    end_without_final_at: int | None = None
    """Before piece i, end the chunked body cleanly (`0\\r\\n\\r\\n`) but send no final event."""
    endless: bool = False
    """After the pieces, send `endless_piece` every `interval_s` until the client hangs up."""
    endless_piece: str = " more"
    interval_s: float = 0.01
    chunk_size: int | None = None
    """Split each event into HTTP chunks of this many bytes, each written on its own."""
    crlf: bool = False
    """End SSE lines with \\r\\n instead of \\n."""
    stop_type: str = "eos"
    reasoning: list[str] = field(default_factory=list)
    """OpenAI API: `reasoning_content` deltas sent before the content (never to be spoken)."""
    retry_after: str | None = None
    """With a non-200 `status`: the Retry-After header."""
    send_done: bool = True
    """OpenAI API: end with `data: [DONE]` (False: end the body after the finish_reason chunk)."""


@dataclass
class RecordedRequest:
    method: str
    path: str
    body: Any  # parsed JSON, raw bytes when it was not JSON, None when there was no body
    headers: dict[str, str]


def _is_warm_up(body: Any) -> bool:
    return isinstance(body, dict) and body.get("n_predict") == 1


class _HangUp(Exception):
    """The client went away mid-stream."""


class _Stopping(Exception):
    """The server is shutting down; drop the request."""


def chatml(messages: list[dict]) -> str:
    parts = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    return "".join(parts) + "<|im_start|>assistant\n"


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins every handler thread
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, fake: "FakeLlamaServer") -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", fake.port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host name (socket.getfqdn), which can be slow.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001
        self.fake.errors.append(sys.exc_info()[1])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "llama.cpp"
    sys_version = ""
    timeout = 10  # socket timeout: no handler can block for ever
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    # --- plumbing ---------------------------------------------------------------------------

    @property
    def fake(self) -> "FakeLlamaServer":
        return self.server.fake

    def _record(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw
        self.fake._record(RecordedRequest(self.command, self.path, body, dict(self.headers.items())))
        return body

    def _send_json(self, status: int, obj: Any, retry_after: str | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        if retry_after is not None:
            self.send_header("Retry-After", retry_after)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True

    def _client_gone(self) -> bool:
        """True once the client closed or reset its end (it never sends more after the request)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def _wait(self, gate: threading.Event) -> None:
        self.fake._note_blocked(gate)
        while not gate.wait(POLL_S):
            if self.fake._stopping.is_set():
                raise _Stopping
            if self._client_gone():
                raise _HangUp

    def _write(self, data: bytes) -> None:
        if self.fake._stopping.is_set():
            raise _Stopping
        if self._client_gone():
            raise _HangUp
        try:
            self.connection.sendall(data)
        except OSError:
            raise _HangUp from None

    def _chunk(self, data: bytes, reply: Reply) -> None:
        size = reply.chunk_size or len(data)
        for start in range(0, len(data), size):
            part = data[start : start + size]
            self._write(f"{len(part):x}\r\n".encode() + part + b"\r\n")

    # --- routes -----------------------------------------------------------------------------

    def _not_found(self) -> None:
        self._send_json(404, {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}})

    def do_GET(self) -> None:  # noqa: N802
        self._record()
        if self.path == "/v1/models":
            if self.fake.models_status != 200:
                self._send_json(self.fake.models_status, {"error": {"message": "no models"}})
            else:
                self._send_json(200, {"object": "list", "data": [{"id": self.fake.model_id, "object": "model"}]})
        elif self.fake.openai_only:
            self._not_found()
        elif self.path == "/props":
            self._send_json(200, {"default_generation_settings": {}, "total_slots": 2})
        elif self.path != "/health":
            self._send_json(404, {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}})
        elif self.fake.health_status == 200:
            self._send_json(200, {"status": "ok"})
        else:
            status = self.fake.health_status
            self._send_json(status, {"error": {"code": status, "message": "Loading model", "type": "unavailable_error"}})

    def do_POST(self) -> None:  # noqa: N802
        body = self._record()
        if self.path == "/v1/chat/completions":
            reply = self.fake._next_reply()
            self.close_connection = True
            try:
                self._stream_openai(reply)
            except _HangUp:
                self.fake._note_hangup()
            except _Stopping:
                pass
        elif self.fake.openai_only:
            self._not_found()
        elif self.path == "/apply-template":
            if self.fake.template_status != 200:
                status = self.fake.template_status
                self._send_json(status, {"error": {"code": status, "message": "File Not Found"}})
                return
            messages = body.get("messages", []) if isinstance(body, dict) else []
            self._send_json(200, {"prompt": self.fake.template_prefix + chatml(messages)})
        elif self.path == "/completion":
            reply = Reply(pieces=["."]) if _is_warm_up(body) else self.fake._next_reply()
            self.close_connection = True
            read, reused = self.fake._read_prompt(body, reply)
            try:
                self._stream(reply, read, reused)
            except _HangUp:
                self.fake._note_hangup()
            except _Stopping:
                pass
        else:
            self._send_json(404, {"error": {"code": 404, "message": "File Not Found", "type": "not_found_error"}})

    def _stream_headers(self, reply: Reply) -> None:
        """The 200 headers of an SSE stream (after `headers_gate`, when the reply has one)."""
        if reply.headers_gate is not None:
            self._wait(reply.headers_gate)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        try:
            self.end_headers()
        except OSError:
            raise _HangUp from None

    def _stream(self, reply: Reply, prompt_n: int = 5, cache_n: int = 0) -> None:
        if reply.status != 200:
            self._send_json(reply.status, {"error": {"code": reply.status, "message": reply.error_message, "type": "server_error"}})
            return
        self._stream_headers(reply)
        end = b"\r\n" if reply.crlf else b"\n"

        def event(obj: dict) -> bytes:
            return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + end + end

        n = len(reply.pieces)
        for i in range(n + 1):
            gate = reply.gates.get(i)
            if gate is not None:
                self._wait(gate)
            if reply.disconnect_at == i:
                return  # the connection closes with the body unfinished
            if reply.end_without_final_at == i:
                self._write(b"0\r\n\r\n")
                return
            if reply.error_event_at == i:
                error = {"error": {"code": 500, "message": reply.error_message, "type": "server_error"}}
                self._chunk(event(error), reply)
                self._write(b"0\r\n\r\n")
                return
            if reply.malformed_at == i:
                self._chunk(reply.malformed_line, reply)
            if i < n:
                piece = reply.pieces[i]
                if isinstance(piece, bytes):
                    data = b'data: {"content": "' + piece + b'", "stop": false}' + end + end
                else:
                    data = event({"content": piece, "stop": False})
                self._chunk(data, reply)
        while reply.endless:
            self._chunk(event({"content": reply.endless_piece, "stop": False}), reply)
            if self.fake._stopping.wait(reply.interval_s):
                raise _Stopping
        final = {
            "content": "",
            "stop": True,
            "stop_type": reply.stop_type,
            "timings": {"prompt_ms": 1.0, "cache_n": cache_n, "prompt_n": prompt_n, "predicted_n": n},
        }
        if reply.chunk_size:
            self._chunk(event(final), reply)
            self._write(b"0\r\n\r\n")
        else:  # one write, so a client closing right after the final event is no hang-up
            data = event(final)
            self._write(f"{len(data):x}\r\n".encode() + data + b"\r\n0\r\n\r\n")


    def _stream_openai(self, reply: Reply) -> None:
        if reply.status != 200:
            error = {"error": {"message": reply.error_message, "type": "server_error", "code": reply.status}}
            self._send_json(reply.status, error, reply.retry_after)
            return
        self._stream_headers(reply)

        def chunk(delta: dict | None, finish: str | None = None, **extra: Any) -> bytes:
            choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
            obj = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": self.fake.model_id,
                   "choices": choices, **extra}  # fmt: skip
            return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"

        self._chunk(chunk({"role": "assistant", "content": None}), reply)
        self._chunk(chunk({}), reply)  # an empty delta, as some servers send
        for thought in reply.reasoning:
            self._chunk(chunk({"reasoning_content": thought}), reply)
        n = len(reply.pieces)
        for i in range(n + 1):
            gate = reply.gates.get(i)
            if gate is not None:
                self._wait(gate)
            if reply.disconnect_at == i:
                return
            if reply.error_event_at == i:
                error = {"error": {"message": reply.error_message, "type": "server_error", "code": 500}}
                self._chunk(b"data: " + json.dumps(error).encode() + b"\n\n", reply)
                self._write(b"0\r\n\r\n")
                return
            if reply.malformed_at == i:
                self._chunk(reply.malformed_line, reply)
            if i < n:
                self._chunk(chunk({"content": reply.pieces[i]}), reply)
        while reply.endless:
            self._chunk(chunk({"content": reply.endless_piece}), reply)
            if self.fake._stopping.wait(reply.interval_s):
                raise _Stopping
        tail = chunk({}, finish="stop") + chunk(None, usage={"prompt_tokens": 5, "completion_tokens": n, "total_tokens": n + 5})
        if reply.send_done:
            tail += b"data: [DONE]\n\n"
        self._write(f"{len(tail):x}\r\n".encode() + tail + b"\r\n0\r\n\r\n")  # one write: no hang-up after it


class FakeLlamaServer:
    """See the module docstring. `url` is valid between `start()` and `stop()`."""

    def __init__(self, port: int = 0, openai_only: bool = False) -> None:
        self.port = port  # 0: a free port; set to come back on the same port after stop()
        self.openai_only = openai_only  # answer only the OpenAI routes (/v1/...), 404 to llama-server's
        self.model_id = "fake-model"
        self.models_status = 200
        self.health_status = 200
        self.template_status = 200
        self.template_prefix = ""
        self.default_reply = Reply()
        self.replies: collections.deque[Reply] = collections.deque()
        self.requests: list[RecordedRequest] = []
        self.slot_caches: dict[int, str] = {}  # what each slot's prompt cache holds
        self.prompt_reads: list[tuple[int | None, int, int]] = []  # (slot, characters read, reused) per /completion
        self.errors: list[BaseException] = []  # exceptions that escaped a handler
        self.hangups = 0
        self.hung_up = threading.Event()
        self._cond = threading.Condition()
        self._blocked: dict[int, threading.Event] = {}
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> "FakeLlamaServer":
        self._stopping.clear()
        self._httpd = _HTTPServer(self)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-llama-server"
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stopping.set()  # handlers waiting on gates or streaming for ever give up
        self._httpd.shutdown()
        assert self._thread is not None
        self._thread.join()
        self._httpd.server_close()  # joins the handler threads
        self._httpd = None

    def __enter__(self) -> "FakeLlamaServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # --- scripting and inspection -------------------------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next /completion requests, in order."""
        self.replies.extend(replies)

    @property
    def completion_bodies(self) -> list[Any]:
        """/completion requests that took a reply (not the cache warm-ups)."""
        return [r.body for r in self.requests if r.path == "/completion" and not _is_warm_up(r.body)]

    @property
    def warm_up_bodies(self) -> list[Any]:
        """/completion requests with `n_predict` 1: cache warm-ups, answered "." without taking a scripted reply."""
        return [r.body for r in self.requests if r.path == "/completion" and _is_warm_up(r.body)]

    @property
    def chat_bodies(self) -> list[Any]:
        return [r.body for r in self.requests if r.path == "/v1/chat/completions"]

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    def wait_until_blocked(self, gate: threading.Event, timeout: float = 5.0) -> bool:
        """Wait until a handler is waiting on `gate`; False on timeout."""
        with self._cond:
            event = self._blocked.setdefault(id(gate), threading.Event())
        return event.wait(timeout)

    def wait_for_hangup(self, timeout: float = 5.0) -> bool:
        return self.hung_up.wait(timeout)

    # --- called by handlers -------------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._cond:
            self.requests.append(request)
            self._cond.notify_all()

    def _read_prompt(self, body: Any, reply: Reply) -> tuple[int, int]:
        """Characters of the prompt read and reused from the slot's cache; the cache then holds the
        prompt and the scripted reply."""
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), str) or body.get("id_slot") is None:
            return 5, 0
        prompt, slot = body["prompt"], body.get("id_slot")
        with self._cond:
            cached = self.slot_caches.get(slot, "") if body.get("cache_prompt") and slot is not None else ""
            reused = len(os.path.commonprefix([cached, prompt]))
            if slot is not None:
                self.slot_caches[slot] = prompt + "".join(p for p in reply.pieces if isinstance(p, str))
            self.prompt_reads.append((slot, len(prompt) - reused, reused))
        return len(prompt) - reused, reused

    def _next_reply(self) -> Reply:
        with self._cond:
            return self.replies.popleft() if self.replies else self.default_reply

    def _note_blocked(self, gate: threading.Event) -> None:
        with self._cond:
            self._blocked.setdefault(id(gate), threading.Event()).set()

    def _note_hangup(self) -> None:
        with self._cond:
            self.hangups += 1
        self.hung_up.set()


@pytest.fixture
def fake_llama_server() -> Iterator[FakeLlamaServer]:
    with FakeLlamaServer() as server:
        yield server
