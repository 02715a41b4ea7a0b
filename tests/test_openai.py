"""OpenAI-compatible backends and the fallback chain.

The fake server speaks OpenAI's `/v1/chat/completions` over a real socket (FakeLlamaServer with
`openai_only=True` behaves like Ollama or vLLM: llama-server's own routes answer 404). The
`slow` tests use the bundled llama-server's own OpenAI endpoint and the real program.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from asr_llm_tts import LLM_ERROR_REPLY
from conftest import Harness, wait_until
from fake_llama_server import FakeLlamaServer, Reply
from voice_assistant.backends import check_key_transport, detect_api
from voice_assistant.errors import LLMConnectionError, LLMProtocolError, LLMRateLimited, SetupError
from voice_assistant.llm_client import LlamaClient, api_key_from_env

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def openai_server():
    with FakeLlamaServer(openai_only=True) as server:
        yield server
        assert server.errors == [], "an exception escaped a fake server handler"


@pytest.fixture(params=[True, False], ids=["raw", "lines"])
def client(request, openai_server):
    c = LlamaClient(openai_server.url + "/v1", use_raw_stream=request.param, read_timeout_s=5.0, api="openai")
    yield c
    c.close()


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


# --- the protocol ------------------------------------------------------------------------------


def test_chat_stream_yields_content_only_and_fills_stats(openai_server, client):
    openai_server.script(Reply(pieces=["Hel", "lo ", "世界 🙂", "."], reasoning=["let me think", " hard"]))
    messages = client.apply_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    stream = client.stream({"prompt": messages, "n_predict": 12, "temperature": 0.3, "top_k": 40,
                            "cache_prompt": True, "id_slot": 0})  # fmt: skip
    assert list(stream) == ["Hel", "lo ", "世界 🙂", "."]  # role-only, empty and reasoning deltas dropped
    assert stream.stats.tokens == 4 and stream.stats.stop_type == "stop"
    assert stream.stats.server_timings["prompt_n"] == 5  # from the usage chunk
    body = openai_server.chat_bodies[-1]
    assert body["model"] == "fake-model"  # the first of GET /v1/models
    assert body["messages"] == messages and body["stream"] is True
    assert body["max_tokens"] == 12 and body["temperature"] == 0.3
    assert not {"prompt", "n_predict", "top_k", "cache_prompt", "id_slot"} & set(body)  # llama-server's own fields


def test_a_stream_that_ends_after_its_finish_reason_without_done_is_complete(openai_server, client):
    openai_server.script(Reply(pieces=["Fine."], send_done=False))
    assert list(client.stream({"prompt": [{"role": "user", "content": "x"}]})) == ["Fine."]


def test_named_model_is_used_without_asking(openai_server):
    client = LlamaClient(openai_server.url + "/v1", api="openai", model_name="llama3.2:3b")
    try:
        list(client.stream({"prompt": [{"role": "user", "content": "x"}]}))
    finally:
        client.close()
    assert openai_server.chat_bodies[-1]["model"] == "llama3.2:3b"
    assert "/v1/models" not in openai_server.paths()


@pytest.mark.parametrize("status", [400, 401, 404, 500, 503])
def test_error_json_bodies_become_protocol_errors_with_their_message(openai_server, client, status):
    openai_server.script(Reply(status=status, error_message=f"broken {status}"))
    with pytest.raises(LLMProtocolError, match=f"broken {status}"):
        list(client.stream({"prompt": [{"role": "user", "content": "x"}]}))


def test_rate_limit_carries_retry_after(openai_server, client):
    openai_server.script(Reply(status=429, error_message="slow down", retry_after="7"))
    with pytest.raises(LLMRateLimited) as info:
        list(client.stream({"prompt": [{"role": "user", "content": "x"}]}))
    assert info.value.retry_after_s == 7.0 and "slow down" in str(info.value)


def test_malformed_chunk_and_disconnect_and_error_event(openai_server, client):
    prompt = {"prompt": [{"role": "user", "content": "x"}]}
    openai_server.script(Reply(pieces=["a", "b"], malformed_at=1))
    with pytest.raises(LLMProtocolError, match="non-JSON"):
        list(client.stream(prompt))
    openai_server.script(Reply(pieces=["a", "b"], disconnect_at=1))
    with pytest.raises(LLMConnectionError):
        list(client.stream(prompt))
    openai_server.script(Reply(pieces=["a", "b"], error_event_at=1, error_message="model fell over"))
    with pytest.raises(LLMProtocolError, match="model fell over"):
        list(client.stream(prompt))


def test_abort_closes_a_stream_that_never_ends(openai_server, client):
    openai_server.script(Reply(pieces=["Start."], endless=True, interval_s=0.005))
    stream = client.stream({"prompt": [{"role": "user", "content": "x"}]})
    pieces = []

    def consume():
        for piece in stream:
            pieces.append(piece)
            if len(pieces) == 20:
                stream.abort()

    consumer = threading.Thread(target=consume, name="consumer")
    consumer.start()
    consumer.join(5.0)
    assert not consumer.is_alive() and stream.stats.cancelled
    assert openai_server.wait_for_hangup()


def test_continuing_a_cut_reply_needs_llama_servers_raw_prompt(openai_server, client):
    assert client.continue_prompt([{"role": "user", "content": "x"}], "So far") is None
    llama = LlamaClient(openai_server.url)
    try:
        assert llama.continue_prompt("<prompt>", "So far") == "<prompt>So far"
    finally:
        llama.close()


# --- detection and keys --------------------------------------------------------------------------


def test_api_detection(openai_server):
    with FakeLlamaServer() as llama:
        assert detect_api(llama.url) == ("llamacpp", llama.url)  # it answers /props
    assert detect_api(openai_server.url) == ("openai", openai_server.url + "/v1")  # /v1/models answers
    assert detect_api("http://127.0.0.1:9/v1") == ("openai", "http://127.0.0.1:9/v1")  # by the path alone
    assert detect_api("http://127.0.0.1:9", "openai") == ("openai", "http://127.0.0.1:9/v1")
    assert detect_api(closed_port_url())[0] == "llamacpp"  # nothing answers yet: llama-server's API


def test_key_goes_over_plain_http_only_to_this_machine():
    check_key_transport("http://127.0.0.1:8080", "sk-secret", allow_insecure=False)
    check_key_transport("http://localhost:8080/v1", "sk-secret", allow_insecure=False)
    check_key_transport("https://api.example.com/v1", "sk-secret", allow_insecure=False)
    check_key_transport("http://gpu-box.lan:8080", None, allow_insecure=False)  # no key: nothing to leak
    check_key_transport("http://gpu-box.lan:8080", "sk-secret", allow_insecure=True)
    with pytest.raises(SetupError, match="plain http to gpu-box.lan") as info:
        check_key_transport("http://gpu-box.lan:8080", "sk-secret", allow_insecure=False)
    assert "sk-secret" not in str(info.value)


def test_api_key_environment_variables(monkeypatch):
    monkeypatch.delenv("LLAMA_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "from-openai")
    assert api_key_from_env() == "from-openai"
    monkeypatch.setenv("LLAMA_API_KEY", "from-llama")
    assert api_key_from_env() == "from-llama"  # LLAMA_API_KEY first
    monkeypatch.setenv("MY_KEY", "mine")
    assert api_key_from_env("MY_KEY") == "mine"
    assert api_key_from_env("NOT_SET_ANYWHERE") is None


def test_key_is_sent_as_bearer_and_never_in_messages(openai_server):
    client = LlamaClient(openai_server.url + "/v1", api="openai", api_key="sk-very-secret")
    try:
        list(client.stream({"prompt": [{"role": "user", "content": "x"}]}))
        assert client.describe().count("sk-") == 0
    finally:
        client.close()
    assert openai_server.requests[-1].headers.get("Authorization") == "Bearer sk-very-secret"


# --- the conversation on an OpenAI backend --------------------------------------------------------


def test_conversation_barge_in_and_summary_on_an_openai_server(openai_server):
    h = Harness(openai_server.url + "/v1", api="openai", summarize_after_turns=1, keep_recent_turns=1)
    try:
        openai_server.script(Reply(pieces=["Paris is the capital."], reasoning=["The user wants France."]))
        assert h.answer("What is the capital of France?") == "Paris is the capital."
        assert "France." not in " ".join(h.synth.spoken)  # reasoning is never spoken
        gate = threading.Event()
        openai_server.script(Reply(pieces=["A long story. ", "It goes on."], gates={1: gate}),
                             Reply(pieces=["They talked about Paris."]))  # the summary  # fmt: skip
        turn = h.system.submit_user_text("Tell me a story.")
        wait_until(lambda: h.queued_blocks() > 0, h.sink.item_arrived)
        h.sink.play_next()
        assert h.system.interrupt()
        assert openai_server.wait_for_hangup()  # closing the socket stops generation
        gate.set()
        h.wait_idle()
        assert h.system.history.exchanges()[-1].interrupted
        first = openai_server.chat_bodies[0]["messages"]
        assert first[0]["role"] == "system" and first[-1] == {"role": "user", "content": "What is the capital of France?"}
        assert turn not in h.sink.ends
    finally:
        h.close()


def test_fallback_answers_while_the_primary_is_down_and_the_primary_is_used_again(openai_server):
    primary = FakeLlamaServer().start()
    port = primary.port
    h = Harness(primary.url, supervisor={}, fallbacks=(openai_server.url + "/v1",))
    try:
        chain = h.client
        assert [client.api for client in chain.clients] == ["llamacpp", "openai"]
        primary.script(Reply(pieces=["From the primary."]))
        assert h.answer("one") == "From the primary."
        primary.stop()
        assert h.answer("two") == LLM_ERROR_REPLY  # the request failed mid-session
        openai_server.script(Reply(pieces=["From the fallback."]))
        assert h.supervisor.wait_settled(5.0) and chain.index == 1
        assert h.answer("three") == "From the fallback."
        primary.port = port
        primary.start()  # the primary comes back on its port
        primary.script(Reply(pieces=["Primary again."]))
        wait_until(lambda: chain.index == 0, timeout_s=10)
        assert h.answer("four") == "Primary again."
    finally:
        h.close()
        primary.stop()


# --- the real program ----------------------------------------------------------------------------


def run_program(*args: str, env: dict | None = None, timeout: float = 240.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "asr_llm_tts.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)  # fmt: skip


@pytest.mark.parametrize("flags, needle", [
    (["--llm-url", "http://gpu-box.invalid:8080/v1"], "plain http to gpu-box.invalid"),
    (["--llm-url", "http://127.0.0.1:9", "--llm-fallback-url", "http://gpu-box.invalid/v1"], "plain http to gpu-box"),
    (["--llm-url", "http://127.0.0.1:9", "--llm-api-key-env", "NO_SUCH_VARIABLE"], "NO_SUCH_VARIABLE is not set"),
])  # fmt: skip
def test_api_key_problems_are_one_error_line_before_anything_loads(tmp_path, flags, needle):
    wav = tmp_path / "in.wav"
    wav.write_bytes(b"")  # never read: the key is checked first
    env = dict(os.environ, OPENAI_API_KEY="sk-do-not-print")
    result = run_program("--input-wav", str(wav), "--output-wav", str(tmp_path / "o.wav"), *flags, env=env, timeout=60)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert needle in lines[0]
    assert "sk-do-not-print" not in result.stdout + result.stderr


@pytest.mark.slow
def test_file_mode_answers_through_the_fallback_when_the_primary_is_down(tmp_path):
    from speech import say

    question = say("What is the capital of France?", tmp_path / "q.wav", 16000)
    with FakeLlamaServer(openai_only=True) as fallback:
        fallback.default_reply = Reply(pieces=["The capital of France is Paris."])
        result = run_program("--input-wav", str(question), "--output-wav", str(tmp_path / "out.wav"),
                             "--transcript", str(tmp_path / "t.jsonl"), "--llm-url", closed_port_url(),
                             "--llm-fallback-url", fallback.url + "/v1", "--llm-wait-s", "0")  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "now using" in result.stdout and fallback.url in result.stdout
        assert fallback.chat_bodies, "the fallback was never asked"
    assert "Paris" in (tmp_path / "t.jsonl").read_text()


@pytest.mark.slow
def test_bundled_llama_server_through_its_openai_endpoint(tmp_path):
    """The real server's /v1/chat/completions: a spoken question gets a spoken answer, and --test says
    which backend answered."""
    from speech import say

    question = say("What is the capital of France?", tmp_path / "q.wav", 16000)
    result = run_program("--input-wav", str(question), "--output-wav", str(tmp_path / "out.wav"), "--llm-api", "openai",
                         "--transcript", str(tmp_path / "t.jsonl"), "--server-log", str(tmp_path / "server.log"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    turns = (tmp_path / "t.jsonl").read_text().splitlines()
    assert len(turns) == 1 and '"assistant": ""' not in turns[0]
    assert "language model: http://127.0.0.1:" in result.stdout and "/v1 (OpenAI-compatible)" in result.stdout
    result = run_program("--test", "--input-wav", str(question), "--llm-api", "openai", "--server-log",
                         str(tmp_path / "server2.log"))  # fmt: skip
    assert result.returncode == 0, result.stdout
    assert "OpenAI-compatible" in result.stdout


@pytest.mark.slow
def test_barge_in_on_the_real_servers_openai_endpoint_stops_generation(tmp_path):
    """llama-server's own /v1/chat/completions: interrupting the reply closes the stream, and the
    server stops generating at once (its slot is idle again long before the reply would have ended)."""
    import httpx

    from voice_assistant.llama_server import LlamaServerProcess, ServerConfig
    from voice_assistant.models import default_llama_server, default_llm_gguf

    server = LlamaServerProcess(ServerConfig(default_llama_server(), default_llm_gguf(), log_path=tmp_path / "s.log"))
    server.start()
    h = Harness(server.url + "/v1", api="openai", api_key=server.api_key, read_timeout_s=10.0, max_reply_tokens=600,
                system_prompt="You are a storyteller. Always answer with a very long story.")  # fmt: skip
    auth = {"Authorization": f"Bearer {server.api_key}"}

    def generating() -> bool:
        slots = httpx.get(server.url + "/slots", headers=auth, trust_env=False, timeout=5.0).json()
        return any(slot.get("is_processing") for slot in slots)

    try:
        turn = h.system.submit_user_text("Tell me a long story about a dragon and a knight.")
        wait_until(lambda: h.queued_blocks() > 0, h.sink.item_arrived, timeout_s=30)
        assert generating()  # 600 tokens take several seconds here
        h.sink.play_next()
        assert h.system.interrupt()
        stopped_t = time.monotonic()
        wait_until(lambda: not generating(), timeout_s=5)
        assert time.monotonic() - stopped_t < 2.0
        assert h.system.history.exchanges()[-1].interrupted
        assert turn not in h.sink.ends
    finally:
        h.close()
        server.close()
