"""LlamaClient against a fake llama-server over a real socket, for both stream readers."""

from __future__ import annotations

import socket
import threading
from typing import Iterator

import pytest

from fake_llama_server import FakeLlamaServer, Reply, chatml as fake_chatml, fake_llama_server  # noqa: F401
from voice_assistant.errors import LLMConnectionError, LLMError, LLMProtocolError
from voice_assistant.llm_client import CompletionStream, LlamaClient, chatml

JOIN_S = 5.0  # generous upper bound for things that should happen at once


@pytest.fixture
def server(fake_llama_server: FakeLlamaServer) -> Iterator[FakeLlamaServer]:  # noqa: F811
    yield fake_llama_server
    assert fake_llama_server.errors == [], "an exception escaped a fake server handler"


@pytest.fixture(params=[True, False], ids=["raw", "lines"])
def raw(request: pytest.FixtureRequest) -> bool:
    return request.param


@pytest.fixture
def client(server: FakeLlamaServer, raw: bool) -> Iterator[LlamaClient]:
    c = LlamaClient(server.url, use_raw_stream=raw, read_timeout_s=10.0)
    yield c
    c.close()


def closed_port_url() -> str:
    """A URL nothing listens on: bind a free port, then close it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class Consumer:
    """Iterates a stream in its own thread, recording pieces and how it ended."""

    def __init__(self, stream: CompletionStream, signal_after: int = 1) -> None:
        self.stream = stream
        self.pieces: list[str] = []
        self.error: BaseException | None = None
        self.got_pieces = threading.Event()  # set once `signal_after` pieces arrived
        self._signal_after = signal_after
        self.thread = threading.Thread(target=self._run, name="stream-consumer")

    def _run(self) -> None:
        try:
            for piece in self.stream:
                self.pieces.append(piece)
                if len(self.pieces) >= self._signal_after:
                    self.got_pieces.set()
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            self.error = exc

    def start(self) -> "Consumer":
        self.thread.start()
        return self

    def join(self, timeout: float = JOIN_S) -> bool:
        """True if the consumer finished within `timeout`."""
        self.thread.join(timeout)
        return not self.thread.is_alive()


# --- streaming ------------------------------------------------------------------------------


def test_streams_pieces_in_order_and_fills_stats(server: FakeLlamaServer, client: LlamaClient) -> None:
    pieces = ["Hel", "lo", ", ", "héllo 世界 🙂", "", "!"]
    server.script(Reply(pieces=pieces))
    stream = client.stream({"prompt": "hi", "n_predict": 8})

    got = list(stream)

    assert got == [p for p in pieces if p]
    stats = stream.stats
    assert stats.tokens == 5  # the empty piece is not a token
    assert 0 < stats.open_t <= stats.sent_t <= stats.first_byte_t <= stats.first_line_t
    assert stats.first_line_t <= stats.first_token_t <= stats.end_t
    assert stats.server_timings == {"prompt_ms": 1.0, "cache_n": 0, "prompt_n": 5, "predicted_n": 6}
    assert stats.stop_type == "eos"
    assert stats.cancelled is False
    assert server.completion_bodies == [{"prompt": "hi", "n_predict": 8, "stream": True}]
    assert server.hangups == 0


def test_multibyte_characters_split_across_http_chunks(server: FakeLlamaServer, client: LlamaClient) -> None:
    pieces = ["héllo", " 世界", " 🙂"]
    server.script(Reply(pieces=pieces, chunk_size=1, crlf=True))  # every byte its own HTTP chunk

    assert list(client.stream({"prompt": "x"})) == pieces


def test_complete_joins_the_pieces(server: FakeLlamaServer, client: LlamaClient) -> None:
    server.script(Reply(pieces=["a", "b", "c"]))
    assert client.complete({"prompt": "x"}) == "abc"


def test_stop_type_from_final_event(server: FakeLlamaServer, client: LlamaClient) -> None:
    server.script(Reply(pieces=["x"], stop_type="limit"))
    stream = client.stream({"prompt": "x"})
    assert list(stream) == ["x"]
    assert stream.stats.stop_type == "limit"


# --- errors ---------------------------------------------------------------------------------


def test_http_error_status_raises_protocol_error_with_message(server: FakeLlamaServer, client: LlamaClient) -> None:
    server.script(Reply(status=500, error_message="context size exceeded"))
    with pytest.raises(LLMProtocolError, match="500") as info:
        list(client.stream({"prompt": "x"}))
    assert "context size exceeded" in str(info.value)


def test_error_event_mid_stream_raises_protocol_error(server: FakeLlamaServer, client: LlamaClient) -> None:
    server.script(Reply(pieces=["a", "b"], error_event_at=1, error_message="slot failed"))
    got: list[str] = []
    with pytest.raises(LLMProtocolError, match="slot failed"):
        for piece in client.stream({"prompt": "x"}):
            got.append(piece)
    assert got == ["a"]


def test_non_json_event_raises_protocol_error(server: FakeLlamaServer, client: LlamaClient) -> None:
    server.script(Reply(pieces=["a", "b"], malformed_at=1))
    got: list[str] = []
    with pytest.raises(LLMProtocolError, match="non-JSON"):
        for piece in client.stream({"prompt": "x"}):
            got.append(piece)
    assert got == ["a"]


def test_disconnect_before_final_event_raises_connection_error(server: FakeLlamaServer, client: LlamaClient) -> None:
    server.script(Reply(pieces=["a", "b", "c"], disconnect_at=2))
    got: list[str] = []
    with pytest.raises(LLMConnectionError):
        for piece in client.stream({"prompt": "x"}):
            got.append(piece)
    assert got == ["a", "b"]


def test_clean_end_without_final_event_raises_connection_error(server: FakeLlamaServer, client: LlamaClient) -> None:
    server.script(Reply(pieces=["a", "b"], end_without_final_at=2))
    got: list[str] = []
    with pytest.raises(LLMConnectionError, match="final event"):
        for piece in client.stream({"prompt": "x"}):
            got.append(piece)
    assert got == ["a", "b"]


def test_invalid_utf8_in_content_becomes_replacement_character(server: FakeLlamaServer, client: LlamaClient) -> None:
    server.script(Reply(pieces=["ok", b" \xff\xfe bad", " end"]))
    assert list(client.stream({"prompt": "x"})) == ["ok", " \ufffd\ufffd bad", " end"]


def test_read_timeout_raises_connection_error(server: FakeLlamaServer, raw: bool) -> None:
    never = threading.Event()
    server.script(Reply(pieces=["a", "b"], gates={1: never}))  # stalls after the first piece
    client = LlamaClient(server.url, use_raw_stream=raw, read_timeout_s=0.3)
    got: list[str] = []
    try:
        with pytest.raises(LLMConnectionError):
            for piece in client.stream({"prompt": "x"}):
                got.append(piece)
    finally:
        client.close()
    assert got == ["a"]
    assert not never.is_set()
    # The client gave up and closed its connection: the stalled server sees it leave.
    assert server.wait_for_hangup(JOIN_S)


def test_unreachable_server_raises_connection_error(raw: bool) -> None:
    client = LlamaClient(closed_port_url(), use_raw_stream=raw, connect_timeout_s=2.0)
    try:
        with pytest.raises(LLMConnectionError):
            list(client.stream({"prompt": "x"}))
        with pytest.raises(LLMConnectionError):
            client.apply_template([{"role": "user", "content": "hi"}])
        ready, detail = client.health()
        assert ready is False
        assert detail
    finally:
        client.close()


def test_not_an_http_url_raises_connection_error() -> None:
    with pytest.raises(LLMConnectionError):
        LlamaClient("ftp://127.0.0.1:1")


def test_only_llm_errors_escape(server: FakeLlamaServer, client: LlamaClient) -> None:
    server.script(Reply(pieces=["a"], disconnect_at=0), Reply(status=503), Reply(malformed_at=0))
    for _ in range(3):
        with pytest.raises(LLMError):
            list(client.stream({"prompt": "x"}))
    assert len(server.completion_bodies) == 3


# --- abort ----------------------------------------------------------------------------------


def test_abort_while_blocked_on_gate_ends_quietly_and_hangs_up(server: FakeLlamaServer, client: LlamaClient) -> None:
    gate = threading.Event()
    server.script(Reply(pieces=["one", " two", " three"], gates={1: gate}))
    stream = client.stream({"prompt": "x"})
    consumer = Consumer(stream).start()
    try:
        assert consumer.got_pieces.wait(JOIN_S), "first piece never arrived"
        assert server.wait_until_blocked(gate), "server never reached the gate"

        aborter = threading.Thread(target=stream.abort, name="aborter")
        aborter.start()
        aborter.join(JOIN_S)
        assert not aborter.is_alive(), "abort() blocked"

        assert consumer.join(), "iteration did not end after abort()"
    finally:
        gate.set()  # never leave the consumer stuck, even when an assertion failed
        consumer.join()
    assert consumer.error is None
    assert consumer.pieces == ["one"]
    assert stream.aborted
    assert stream.stats.cancelled is True
    assert stream.stats.end_t > 0
    assert server.wait_for_hangup(JOIN_S), "server saw no hang-up"
    assert server.hangups == 1


def test_abort_during_endless_stream(server: FakeLlamaServer, client: LlamaClient) -> None:
    server.script(Reply(pieces=["go"], endless=True, endless_piece=" on"))
    stream = client.stream({"prompt": "x"})
    consumer = Consumer(stream, signal_after=3).start()
    assert consumer.got_pieces.wait(JOIN_S)
    stream.abort()
    assert consumer.join(), "iteration did not end after abort()"
    assert consumer.error is None
    assert consumer.pieces[:3] == ["go", " on", " on"]
    assert stream.stats.cancelled is True
    assert server.wait_for_hangup(JOIN_S)
    assert server.hangups == 1


def test_abort_before_iteration_sends_nothing(server: FakeLlamaServer, client: LlamaClient) -> None:
    stream = client.stream({"prompt": "x"})
    stream.abort()
    assert list(stream) == []
    assert stream.stats.cancelled is True
    assert server.completion_bodies == []


@pytest.mark.parametrize(
    "raw",
    [
        True,
        False,
    ],
    ids=["raw", "lines"],
)
def test_abort_before_response_headers_ends_quietly(server: FakeLlamaServer, raw: bool) -> None:
    headers_gate = threading.Event()
    server.script(Reply(pieces=["late"], headers_gate=headers_gate))  # e.g. a long prompt still processing
    client = LlamaClient(server.url, use_raw_stream=raw, read_timeout_s=10.0)
    stream = client.stream({"prompt": "x"})
    consumer = Consumer(stream).start()
    try:
        assert server.wait_until_blocked(headers_gate), "request never reached the server"
        stream.abort()
        finished = consumer.join(1.0)
    finally:
        headers_gate.set()
        consumer.join()
        client.close()
    assert finished, "iteration still blocked 1 s after abort()"
    assert consumer.error is None
    assert consumer.pieces == []
    assert stream.stats.cancelled is True
    assert server.wait_for_hangup(JOIN_S)


# --- health and templates -------------------------------------------------------------------


def test_health(server: FakeLlamaServer, client: LlamaClient) -> None:
    assert client.health() == (True, "HTTP 200")
    server.health_status = 503
    ready, detail = client.health()
    assert ready is False
    assert "503" in detail
    assert server.paths() == ["/health", "/health"]


def test_apply_template_uses_server_prompt(server: FakeLlamaServer, client: LlamaClient) -> None:
    server.template_prefix = "<BOS>"  # tells the server's prompt from the client's fallback
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "héllo 世界"}]

    prompt = client.apply_template(messages)

    assert prompt == "<BOS>" + chatml(messages)
    assert [r.body for r in server.requests if r.path == "/apply-template"] == [{"messages": messages}]


def test_apply_template_falls_back_to_chatml_on_404(server: FakeLlamaServer, client: LlamaClient) -> None:
    server.template_status = 404
    server.template_prefix = "<BOS>"
    messages = [{"role": "user", "content": "hi"}]

    assert client.apply_template(messages) == chatml(messages)
    assert client.apply_template(messages) == chatml(messages)
    assert server.paths() == ["/apply-template"]  # the fallback is remembered
    assert chatml(messages) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert fake_chatml(messages) == chatml(messages)


def test_apply_template_other_error_raises_protocol_error(server: FakeLlamaServer, client: LlamaClient) -> None:
    server.template_status = 500
    with pytest.raises(LLMProtocolError, match="500"):
        client.apply_template([{"role": "user", "content": "hi"}])
