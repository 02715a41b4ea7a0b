"""Client for llama.cpp's `llama-server`: health, chat templates and streamed `/completion`.

Two stream readers, chosen by `use_raw_stream`:
- raw (default): our own HTTP/1.1 over a socket, bytes -> `ChunkedDecoder` -> `SSEParser`.
  It measures the first byte exactly and `abort()` shuts the socket down, which wakes a blocked
  read at once and tells llama-server to stop generating.
- lines: httpx's `iter_lines()`; `use_http2` asks httpx for HTTP/2 (llama-server speaks only
  HTTP/1.1, so on `http://` this changes nothing; it is kept as the seed's toggle).
Both raise only `LLMError` subclasses. A stream cancelled by `abort()` ends quietly.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator
from urllib.parse import urlsplit

import httpx

from .errors import (LLMConnectionError, LLMContextOverflow, LLMProtocolError, LLMRateLimited, LLMReadTimeout,
                     LLMTooSlowError)  # fmt: skip
from .sse import ChunkedDecoder, SSEParser, decode_line, sse_data

log = logging.getLogger(__name__)

API_KEY_ENVS = ("LLAMA_API_KEY", "OPENAI_API_KEY")
"""Environment variables read, in order, for an API key when no other is named (never logged)."""
LLAMACPP, OPENAI = "llamacpp", "openai"
"""The two APIs: llama-server's native `/completion`, and OpenAI's `/v1/chat/completions`."""

MAX_ERROR_BODY_BYTES = 64 * 1024
MAX_HEADER_BYTES = 64 * 1024


@dataclass(frozen=True)
class StreamLimits:
    """Wall-clock and size limits of one stream, checked on every piece of data that arrives, so a
    server that keeps the connection busy (SSE comments, empty events, a trickle) cannot keep a
    turn alive for ever. 0 turns a limit off."""

    first_token_s: float = 0.0  # from sending the request to the first content piece, in seconds
    total_s: float = 0.0  # from sending the request to the end of the stream, in seconds
    max_bytes: int = 4 * 1024 * 1024  # response body bytes


@dataclass
class StreamStats:
    """Timestamps (time.monotonic seconds) and counts of one streamed completion."""

    open_t: float = 0.0  # request about to be sent (connection opened)
    sent_t: float = 0.0  # request fully written to the socket
    first_byte_t: float = 0.0  # first byte of the response arrived
    first_line_t: float = 0.0  # first complete SSE data line
    first_token_t: float = 0.0  # first non-empty content piece
    end_t: float = 0.0  # stream finished, failed or was aborted
    tokens: int = 0  # content events received
    server_timings: dict = field(default_factory=dict)  # llama-server's own `timings` object
    stop_type: str = ""  # why generation stopped, per the server ("eos", "limit", "word")
    cancelled: bool = False  # ended by abort()


def chatml(messages: list[dict]) -> str:
    """ChatML prompt, used only when the server cannot apply the model's own template."""
    parts = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    return "".join(parts) + "<|im_start|>assistant\n"


def is_loopback(url: str) -> bool:
    """The URL's host is this machine (localhost or a loopback address)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def api_key_from_env(name: str | None = None) -> str | None:
    """The API key in environment variable `name`, or in the first of API_KEY_ENVS that is set."""
    for env in (name,) if name else API_KEY_ENVS:
        if os.environ.get(env):
            return os.environ[env]
    return None


class LlamaClient:
    """Talks to one language-model server, in llama-server's API or OpenAI's (`api`). Thread-safe:
    each stream has its own connection.

    For `api == OPENAI`, `base_url` ends in `/v1`; a "prompt" is the list of chat messages itself
    (the server applies the template), and `stream()` turns llama-server's sampling fields into
    OpenAI's. Both stream the same way: `stream()` returns a `CompletionStream` of text pieces.
    """

    def __init__(
        self,
        base_url: str,
        use_raw_stream: bool = True,
        use_http2: bool = False,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 30.0,
        api: str = LLAMACPP,
        model_name: str | None = None,
        api_key: str | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise LLMConnectionError(f"not an http(s) URL: {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.api = api
        self.model_name = model_name  # OpenAI's `model` field; None until discovered
        self.use_raw_stream = use_raw_stream
        self.use_http2 = use_http2
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._api_key = api_key
        self._http = httpx.Client(
            http2=use_http2,
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
            headers=self._auth_headers(),
            trust_env=not is_loopback(self.base_url),  # HTTP(S)_PROXY must not take requests to this machine
        )
        self._template_supported = True

    def _auth_headers(self) -> dict:
        return {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    @property
    def stream_path(self) -> str:
        return "/chat/completions" if self.api == OPENAI else "/completion"

    def describe(self) -> str:
        """For status lines: the URL and its API (never the key)."""
        return f"{self.base_url} ({'OpenAI-compatible' if self.api == OPENAI else 'llama-server'})"

    def close(self) -> None:
        self._http.close()

    def health(self, timeout_s: float = 2.0) -> tuple[bool, str]:
        """(ready, detail): ready only on HTTP 200 from /health (OpenAI API: /models); never raises."""
        try:
            path = "/models" if self.api == OPENAI else "/health"
            response = self._http.get(self.base_url + path, timeout=timeout_s)
        except httpx.HTTPError as exc:
            return False, f"{type(exc).__name__}: {exc}"
        return response.status_code == 200, f"HTTP {response.status_code}"

    def discover_model(self, timeout_s: float = 5.0) -> str:
        """OpenAI API: the model to ask for: `model_name`, else the first of GET /models (LLMError if none)."""
        if self.model_name:
            return self.model_name
        try:
            response = self._http.get(self.base_url + "/models", timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise LLMConnectionError(f"{self.base_url}/models unreachable: {exc}") from None
        if response.status_code != 200:
            raise http_error(response.status_code, response.content, response.headers.get("retry-after"))
        try:
            models = response.json()["data"]
            self.model_name = str(models[0]["id"])
        except (ValueError, KeyError, IndexError, TypeError):
            raise LLMProtocolError(f"{self.base_url}/models lists no model: name one with --llm-model-name") from None
        return self.model_name

    def continue_prompt(self, prompt, said: str):
        """The prompt that makes the model go on after `said` (its own words so far), or None when the
        API cannot continue a reply (OpenAI chat: a new request starts a new message)."""
        if self.api == OPENAI or not isinstance(prompt, str):
            return None
        return prompt + said

    def apply_template(self, messages: list[dict]):
        """The prompt for `messages`: in the model's own chat template (server's /apply-template), or,
        for the OpenAI API, the messages themselves."""
        if self.api == OPENAI:
            return [dict(message) for message in messages]
        if self._template_supported:
            try:
                response = self._http.post(self.base_url + "/apply-template", json={"messages": messages})
            except httpx.HTTPError as exc:
                raise LLMConnectionError(f"llama-server at {self.base_url} unreachable: {exc}") from None
            if response.status_code == 200:
                try:
                    return response.json()["prompt"]
                except (ValueError, KeyError, TypeError):
                    raise LLMProtocolError("llama-server /apply-template answered without a prompt") from None
            if response.status_code != 404:
                raise LLMProtocolError(f"llama-server /apply-template: HTTP {response.status_code}")
            log.warning("llama-server has no /apply-template; falling back to the ChatML template")
            self._template_supported = False
        return chatml(messages)

    def next_tokens(self, prompt: str, count: int = 20, timeout_s: float = 2.0) -> list[tuple[str, float]]:
        """llama-server: the `count` likeliest next tokens after `prompt` and their probabilities, read
        in the conversation's slot so that the prompt stays cached for the reply that follows."""
        if self.api == OPENAI:
            raise LLMProtocolError("an OpenAI-compatible server gives no next-token probabilities for a prompt")
        payload = {"prompt": prompt, "n_predict": 1, "n_probs": count, "temperature": 0.0, "cache_prompt": True,
                   "id_slot": 0}  # fmt: skip
        try:
            response = self._http.post(self.base_url + "/completion", json=payload, timeout=timeout_s)
        except httpx.HTTPError as exc:
            raise LLMConnectionError(f"llama-server at {self.base_url} unreachable: {exc}") from None
        if response.status_code != 200:
            raise http_error(response.status_code, response.content, response.headers.get("retry-after"))
        try:
            entry = response.json()["completion_probabilities"][0]
            if "top_logprobs" in entry:
                return [(str(t["token"]), math.exp(float(t["logprob"]))) for t in entry["top_logprobs"]]
            return [(str(t["token"]), float(t["prob"])) for t in entry["top_probs"]]
        except (ValueError, KeyError, IndexError, TypeError):
            raise LLMProtocolError("llama-server /completion answered without token probabilities") from None

    def stream(self, payload: dict, limits: StreamLimits | None = None) -> "CompletionStream":
        """Start a streamed completion of `payload` (llama-server's /completion fields; `prompt` from
        `apply_template`); iterate it for text pieces. `limits`: see StreamLimits."""
        if self.api == OPENAI:
            body = json.dumps(openai_body(payload, self.discover_model())).encode()
        else:
            body = json.dumps({**payload, "stream": True}).encode()
        stream_class = RawCompletionStream if self.use_raw_stream else LinesCompletionStream
        return stream_class(self, body, limits or StreamLimits())

    def complete(self, payload: dict) -> str:
        """A whole completion as one string (used for background summaries)."""
        return "".join(self.stream(payload))


class CompletionStream:
    """One streamed /completion. Iterate for content pieces; `abort()` from any thread."""

    def __init__(self, client: LlamaClient, body: bytes, limits: StreamLimits | None = None) -> None:
        self.client = client
        self.body = body
        self.limits = limits or StreamLimits()
        self.stats = StreamStats()
        self._received = 0  # response bytes so far
        self._aborted = threading.Event()
        self._lock = threading.Lock()

    @property
    def aborted(self) -> bool:
        return self._aborted.is_set()

    def abort(self) -> None:
        """Stop the stream now: closes the connection so the server stops generating. Non-blocking."""
        self._aborted.set()
        self._hang_up()

    def _hang_up(self) -> None:
        raise NotImplementedError

    def _check_limits(self, nbytes: int) -> None:
        """Called as data arrives; raises when the stream outgrows its limits (the caller closes it)."""
        self._received += nbytes
        limits = self.limits
        if limits.max_bytes and self._received > limits.max_bytes:
            raise LLMProtocolError(f"the server sent more than {limits.max_bytes} bytes for one reply")
        elapsed = time.monotonic() - (self.stats.sent_t or self.stats.open_t)
        if limits.first_token_s and not self.stats.first_token_t and elapsed > limits.first_token_s:
            raise LLMTooSlowError(f"no reply text after {limits.first_token_s:.0f} s")
        if limits.total_s and elapsed > limits.total_s:
            raise LLMTooSlowError(f"the reply was still streaming after {limits.total_s:.0f} s")

    def _handle_payload(self, payload: str) -> tuple[str, bool]:
        """(content, stop) of one SSE data payload; raises LLMProtocolError for errors."""
        now = time.monotonic()
        if not self.stats.first_line_t:
            self.stats.first_line_t = now
        if self.client.api == OPENAI:
            if payload.strip() == "[DONE]":
                return "", True
            content, stop = self._openai_event(self._decode_event(payload, "the server"))
        else:
            content, stop = self._llama_event(self._decode_event(payload, "llama-server"))
        if not isinstance(content, str):
            raise LLMProtocolError("the server sent non-text content")
        if content:
            self.stats.tokens += 1
            self.stats.first_token_t = self.stats.first_token_t or now
        return content, stop

    @staticmethod
    def _decode_event(payload: str, who: str) -> dict:
        """One event's JSON object; LLMProtocolError for anything else, or for an error event."""
        try:
            event = json.loads(payload)
        except (ValueError, RecursionError):  # RecursionError: hostile, deeply nested JSON
            raise LLMProtocolError(f"{who} sent a non-JSON event: {payload[:80]!r}") from None
        if not isinstance(event, dict):
            raise LLMProtocolError(f"{who} sent an unexpected event: {payload[:80]!r}")
        if "error" in event:
            error = event["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            raise LLMProtocolError(f"{who} reported an error: {message}")
        return event

    def _llama_event(self, event: dict) -> tuple[str, bool]:
        """(content, stop) of one llama-server /completion event."""
        stop = bool(event.get("stop"))
        if stop:
            timings = event.get("timings")
            self.stats.server_timings = timings if isinstance(timings, dict) else {}
            self.stats.stop_type = str(event.get("stop_type", ""))
        return event.get("content") or "", stop

    def _openai_event(self, event: dict) -> tuple[str, bool]:
        """(content, stop) of one chat-completion chunk; reasoning (`reasoning_content`) is dropped."""
        usage, timings = event.get("usage"), event.get("timings")
        if isinstance(usage, dict):
            details = usage.get("prompt_tokens_details")
            self.stats.server_timings.setdefault("prompt_n", usage.get("prompt_tokens"))
            if isinstance(details, dict):
                self.stats.server_timings.setdefault("cache_n", details.get("cached_tokens"))
        if isinstance(timings, dict):  # llama-server's OpenAI endpoint adds its own timings
            self.stats.server_timings.update(timings)
        choices = event.get("choices") or []
        if not isinstance(choices, list) or (choices and not isinstance(choices[0], dict)):
            raise LLMProtocolError(f"the server sent malformed choices: {str(choices)[:80]!r}")
        if not choices:
            return "", False  # a usage-only chunk
        delta = choices[0].get("delta") or {}
        content = delta.get("content") or "" if isinstance(delta, dict) else None
        if choices[0].get("finish_reason"):
            self.stats.stop_type = str(choices[0]["finish_reason"])
        return content, False


def openai_body(payload: dict, model: str) -> dict:
    """An OpenAI chat-completion request for a llama-server-style `payload` (prompt = the messages)."""
    body = {"model": model, "messages": payload["prompt"], "stream": True, "stream_options": {"include_usage": True}}
    if "n_predict" in payload:
        body["max_tokens"] = payload["n_predict"]
    for name in ("temperature", "top_p"):
        if name in payload:
            body[name] = payload[name]
    return body


class RawCompletionStream(CompletionStream):
    """HTTP/1.1 over a plain socket, parsed from bytes."""

    def __init__(self, client: LlamaClient, body: bytes, limits: StreamLimits | None = None) -> None:
        super().__init__(client, body, limits)
        self._sock: socket.socket | None = None

    def _hang_up(self) -> None:
        with self._lock:
            sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _connect(self) -> socket.socket:
        parts = urlsplit(self.client.base_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            sock = socket.create_connection((parts.hostname, port), timeout=self.client.connect_timeout_s)
        except OSError as exc:
            raise LLMConnectionError(f"cannot connect to llama-server at {self.client.base_url}: {exc}") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if parts.scheme == "https":
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=parts.hostname)
            sock.settimeout(self.client.read_timeout_s)
        except OSError as exc:  # ssl.SSLError included: a bad certificate, a failed handshake
            sock.close()
            raise LLMConnectionError(f"cannot talk to {self.client.base_url} securely: {exc}") from None
        return sock

    def _request_bytes(self) -> bytes:
        parts = urlsplit(self.client.base_url)
        path = (parts.path.rstrip("/") or "") + self.client.stream_path
        headers = [
            f"POST {path} HTTP/1.1",
            f"Host: {parts.netloc}",
            "Content-Type: application/json",
            "Accept: text/event-stream",
            f"Content-Length: {len(self.body)}",
            "Connection: close",
        ]
        headers += [f"{k}: {v}" for k, v in self.client._auth_headers().items()]
        return ("\r\n".join(headers) + "\r\n\r\n").encode() + self.body

    def __iter__(self) -> Iterator[str]:
        self.stats.open_t = time.monotonic()
        if self.aborted:
            self.stats.cancelled = True
            return
        try:
            sock = self._connect()
        finally:
            self.stats.end_t = time.monotonic()
        with self._lock:
            self._sock = sock
        try:
            yield from self._read(sock)
        except (OSError, ssl.SSLError) as exc:
            if not self.aborted:
                if isinstance(exc, socket.timeout):
                    raise LLMReadTimeout("reading from llama-server timed out") from None
                raise LLMConnectionError(f"reading from llama-server failed: {exc}") from None
        finally:
            self.stats.end_t = time.monotonic()
            self.stats.cancelled = self.aborted
            with self._lock:
                self._sock = None
            sock.close()

    def _recv(self, sock: socket.socket) -> bytes:
        data = sock.recv(65536)
        if data and not self.stats.first_byte_t:
            self.stats.first_byte_t = time.monotonic()
        self._check_limits(len(data))
        return data

    def _read(self, sock: socket.socket) -> Iterator[str]:
        sock.sendall(self._request_bytes())
        self.stats.sent_t = time.monotonic()
        head = bytearray()
        while b"\r\n\r\n" not in head:
            if self.aborted:
                return
            data = self._recv(sock)
            if not data:
                if self.aborted:
                    return
                raise LLMConnectionError("llama-server closed the connection before answering")
            head += data
            if len(head) > MAX_HEADER_BYTES:
                raise LLMProtocolError("llama-server sent oversized HTTP headers")
        header_bytes, _, rest = bytes(head).partition(b"\r\n\r\n")
        lines = decode_line(header_bytes).split("\r\n")
        try:
            status = int(lines[0].split()[1])
        except (IndexError, ValueError):
            raise LLMProtocolError(f"llama-server sent a malformed status line: {lines[0][:80]!r}") from None
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        decoder = ChunkedDecoder() if chunked else None
        if status != 200:
            body = bytearray(rest)
            while len(body) < MAX_ERROR_BODY_BYTES:
                data = self._recv(sock)
                if not data:
                    break
                body += data
            text = decoder.feed(bytes(body)) if decoder else bytes(body)
            raise http_error(status, text, headers.get("retry-after"))
        parser = SSEParser()
        data, eof = rest, False
        while True:
            payload_bytes = decoder.feed(data) if decoder else data
            payloads = parser.feed(payload_bytes)
            ended = eof or (decoder is not None and decoder.done)
            if ended:
                payloads += parser.close()
            for payload in payloads:
                if self.aborted:
                    return
                content, stop = self._handle_payload(payload)
                if content:
                    yield content
                if stop:
                    return
            if self.aborted:
                return
            if ended:
                if self.stats.stop_type and self.client.api == OPENAI:
                    return  # a finish_reason came, then the end of the body without [DONE]: accept it
                if eof and not (decoder and decoder.done):
                    raise LLMConnectionError("llama-server closed the stream before it finished")
                raise LLMConnectionError("llama-server ended the stream without a final event")
            data = self._recv(sock)
            eof = not data


class LinesCompletionStream(CompletionStream):
    """httpx `iter_lines()`; the seed's line-iterator reader."""

    def __init__(self, client: LlamaClient, body: bytes, limits: StreamLimits | None = None) -> None:
        super().__init__(client, body, limits)
        self._network_stream = None

    def _trace(self, event: str, info: dict) -> None:
        """httpcore trace hook: keep the connection as soon as it exists, so abort() can reach it."""
        if event in ("connection.connect_tcp.complete", "connection.start_tls.complete"):
            with self._lock:
                self._network_stream = info.get("return_value")
            if self.aborted:
                self._hang_up()

    def _hang_up(self) -> None:
        with self._lock:
            stream = self._network_stream
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __iter__(self) -> Iterator[str]:
        self.stats.open_t = time.monotonic()
        if self.aborted:
            self.stats.cancelled = True
            return
        # A fresh connection per stream ("close"), so the trace hook always sees it being made.
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream", "Connection": "close"}
        try:
            with self.client._http.stream(
                "POST", self.client.base_url + self.client.stream_path, content=self.body, headers=headers,
                extensions={"trace": self._trace},
            ) as response:
                self.stats.sent_t = time.monotonic()
                if response.status_code != 200:
                    raise http_error(response.status_code, response.read(), response.headers.get("retry-after"))
                for line in response.iter_lines():
                    if not self.stats.first_byte_t:
                        self.stats.first_byte_t = time.monotonic()
                    self._check_limits(len(line) + 1)
                    if self.aborted:
                        return
                    payload = sse_data(line)
                    if payload is None:
                        continue
                    content, stop = self._handle_payload(payload)
                    if content:
                        yield content
                    if stop:
                        return
                if not self.aborted and not (self.stats.stop_type and self.client.api == OPENAI):
                    raise LLMConnectionError("llama-server ended the stream without a final event")
        except httpx.ReadTimeout:
            if not self.aborted:
                raise LLMReadTimeout("reading from llama-server timed out") from None
        except httpx.HTTPError as exc:
            if not self.aborted:
                raise LLMConnectionError(f"llama-server stream failed: {type(exc).__name__}: {exc}") from None
        finally:
            self.stats.end_t = time.monotonic()
            self.stats.cancelled = self.aborted
            with self._lock:
                self._network_stream = None


def http_error(status: int, body: bytes, retry_after: str | None = None) -> LLMProtocolError:
    """The typed error for an HTTP error answer (the one place that reads llama-server's wording)."""
    message = _error_message(body)
    if status == 429:
        try:
            delay_s = max(0.0, float(retry_after)) if retry_after else None
        except ValueError:
            delay_s = None
        return LLMRateLimited(f"the server is rate-limiting (HTTP 429): {message}", delay_s)
    if status == 400 and ("context" in message.lower() or "exceed_context" in body.decode("utf-8", "replace")):
        return LLMContextOverflow(f"llama-server answered HTTP {status}: {message}")
    return LLMProtocolError(f"llama-server answered HTTP {status}: {message}")


def _error_message(body: bytes) -> str:
    text = decode_line(body[:MAX_ERROR_BODY_BYTES]).strip()
    try:
        error = json.loads(text).get("error")
    except (ValueError, AttributeError):
        return text[:200] or "(empty body)"
    if isinstance(error, dict):
        return str(error.get("message", error))[:200]
    return str(error)[:200]
