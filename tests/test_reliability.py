"""Faults injected into a running conversation: the LLM backend dies, hangs, misbehaves or goes away.

Fast tests use the fake llama-server; the `slow` ones kill and freeze a real llama-server child.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from asr_llm_tts import LLM_ERROR_REPLY, LLM_SLOW_REPLY, LLM_UNAVAILABLE_REPLY
from conftest import Harness, wait_until
from fake_llama_server import FakeLlamaServer, Reply
from voice_assistant.config import make_config
from voice_assistant.devices import DeviceMonitor


def test_remote_server_going_away_and_coming_back():
    server = FakeLlamaServer().start()
    h = Harness(server.url, supervisor={})
    try:
        supervisor = h.supervisor
        server.script(Reply(pieces=["First answer."]))
        assert h.answer("one") == "First answer."
        server.stop()
        assert h.answer("two") == LLM_ERROR_REPLY  # the request failed: a spoken apology
        assert not supervisor.wait_settled(5.0)  # the monitor thread found it down
        assert h.answer("three") == LLM_UNAVAILABLE_REPLY  # known down: no wait for a connect timeout
        server.start()  # same port
        server.script(Reply(pieces=["Back again."]))
        wait_until(lambda: supervisor.available)
        assert h.answer("four") == "Back again."
        assert supervisor.recoveries == 1
    finally:
        h.close()
        server.stop()


def test_remote_server_down_at_start_live_mode_keeps_listening_file_mode_exits(caplog):
    from voice_assistant.assembly import start_llm
    from voice_assistant.errors import SetupError
    from voice_assistant.llama_server import free_port

    url = f"http://127.0.0.1:{free_port()}"
    client, server, ready = start_llm(make_config(llm_url=url, llm_wait_s=0), keep_listening=True)
    try:
        assert (server, ready) == (None, False)
        assert client.base_url == url
        assert any("not reachable" in r.message and "listening anyway" in r.message for r in caplog.records)
    finally:
        client.close()
    with pytest.raises(SetupError, match="not reachable"):
        start_llm(make_config(llm_url=url, llm_wait_s=0), keep_listening=False)


@pytest.mark.parametrize(
    "reply",
    [
        Reply(pieces=["Fine so far. ", "more"], malformed_at=1),
        Reply(pieces=["Fine so far. ", "more"], disconnect_at=1),
        Reply(pieces=["Fine so far. ", "more"], error_event_at=1),
    ],
    ids=["malformed-event", "disconnect", "error-event"],
)
def test_broken_stream_mid_reply_apologizes_and_next_turn_works(reply):
    with FakeLlamaServer() as server:
        h = Harness(server.url)
        try:
            server.script(reply, Reply(pieces=["All good."]))
            turn = h.system.submit_user_text("hello")
            h.play_reply(turn)
            h.wait_idle()
            assert h.synth.spoken == ["Fine so far.", LLM_ERROR_REPLY]
            assert h.answer("again") == "All good."
            assert h.system.history.exchanges()[0].assistant.startswith("Fine so far.")
        finally:
            h.close()


def test_endless_stream_is_cut_off():
    with FakeLlamaServer() as server:
        h = Harness(server.url, max_reply_tokens=10)
        try:
            server.script(Reply(pieces=["Start."], endless=True, interval_s=0.001))
            turn = h.system.submit_user_text("talk forever")
            h.play_reply(turn)
            assert server.wait_for_hangup()
            assert h.synth.spoken[-1] == LLM_ERROR_REPLY
            h.wait_idle()
            assert h.system.metrics.turns[-1]["llm"]["generation_phase"]["tokens"] == 10 + 17
        finally:
            h.close()


def test_stream_that_trickles_without_a_sentence_ends_as_too_slow():
    """Tokens arrive often enough to beat the read timeout, but nothing speakable comes of them."""
    with FakeLlamaServer() as server:
        h = Harness(server.url, max_reply_tokens=10_000, llm_timeout_s=1, first_chunk_max_words=0)
        try:
            server.script(Reply(pieces=["Well."], endless=True, endless_piece=" hmm", interval_s=0.05),
                          Reply(pieces=["Quick answer."]))  # fmt: skip
            started = time.monotonic()
            turn = h.system.submit_user_text("think out loud")
            h.play_reply(turn)
            assert server.wait_for_hangup()
            assert h.synth.spoken == ["Well.", LLM_SLOW_REPLY]
            assert 1.0 <= time.monotonic() - started < 4.0
            h.wait_idle()
            tokens = h.system.metrics.turns[-1]["llm"]["generation_phase"]["tokens"]
            assert 15 <= tokens < 80  # cut at about 1 s of 20 tokens/s, far from the token cap
            assert h.answer("again") == "Quick answer."
        finally:
            h.close()


def test_http_error_then_recovery_without_restart():
    with FakeLlamaServer() as server:
        h = Harness(server.url, supervisor={})
        try:
            server.script(Reply(status=503, error_message="loading model"), Reply(pieces=["Ready now."]))
            assert h.answer("hi") == LLM_ERROR_REPLY
            assert h.supervisor.wait_settled(5.0)  # /health still answers: no reason to call it down
            assert h.answer("hi again") == "Ready now."
        finally:
            h.close()


# ---------------------------------------------------------------------- a real llama-server


@pytest.fixture()
def real_server(tmp_path):
    from voice_assistant.llama_server import LlamaServerProcess, ServerConfig
    from voice_assistant.models import default_llama_server, default_llm_gguf

    server = LlamaServerProcess(
        ServerConfig(default_llama_server(), default_llm_gguf(), log_path=tmp_path / "server.log")
    )
    server.start()
    yield server
    server.stop()


def real_harness(real_server, read_timeout_s: float = 2.0, **config):
    return Harness(real_server.url, read_timeout_s=read_timeout_s, api_key=real_server.api_key, **config)


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault",
    [signal.SIGKILL, signal.SIGSTOP],  # SIGSTOP: alive, but silent; the 2 s read timeout catches it
    ids=["killed", "hung"],
)
def test_server_dead_or_hung_mid_reply_is_restarted(real_server, fault):
    h = real_harness(real_server, max_reply_tokens=120, system_prompt="Tell long stories.", supervisor={"server": real_server})
    try:
        supervisor = h.supervisor
        turn = h.system.submit_user_text("Tell me a long story about a cat.")
        wait_until(lambda: len(h.synth.spoken) >= 1)
        os.kill(real_server.pid, fault)
        h.play_reply(turn)  # the turn ends with an apology
        assert h.synth.spoken[-1] == LLM_ERROR_REPLY
        wait_until(lambda: supervisor.restart_count == 1 and supervisor.available, timeout_s=30)
        assert h.answer("What is the capital of France?") not in (LLM_ERROR_REPLY, LLM_UNAVAILABLE_REPLY)
    finally:
        h.close()


@pytest.mark.slow
def test_crash_loop_stops_restarting(real_server):
    h = real_harness(real_server, supervisor={"server": real_server, "max_restarts": 2, "window_s": 60.0})
    try:
        supervisor = h.supervisor
        for expected in (1, 2):
            os.kill(real_server.pid, signal.SIGKILL)
            wait_until(lambda: supervisor.restart_count == expected and supervisor.available, timeout_s=30)
        os.kill(real_server.pid, signal.SIGKILL)
        wait_until(lambda: supervisor.gave_up, timeout_s=30)
        assert not real_server.alive()
        assert h.answer("anyone there?") == LLM_UNAVAILABLE_REPLY
        assert supervisor.restart_count == 2
    finally:
        h.close()


class FakePortAudio:
    """Stands in for sounddevice's stream classes: a device that can vanish and come back."""

    def __init__(self) -> None:
        self.present = True
        self.opened = 0
        self.streams: list = []

    def stream_class(self):
        fake = self

        class FakeStream:
            latency = 0.01

            def __init__(self, **kwargs) -> None:
                if not fake.present:
                    raise RuntimeError("Error opening OutputStream: Device unavailable [PaErrorCode -9985]")
                fake.opened += 1
                fake.streams.append(self)
                self.active = False
                self.finished_callback = kwargs.get("finished_callback")

            def start(self) -> None:
                self.active = True

            def die(self) -> None:
                self.active = False
                self.finished_callback()

            def abort(self) -> None:
                self.active = False

            def close(self) -> None:
                pass

        return FakeStream


def test_output_device_vanishing_is_reported_and_reopened(monkeypatch, caplog):
    import sounddevice

    from voice_assistant.audio_io import SpeakerSink

    portaudio = FakePortAudio()
    monkeypatch.setattr(sounddevice, "OutputStream", portaudio.stream_class())
    sink = SpeakerSink(None, 1000, 20)
    stopping = threading.Event()
    monitor = threading.Thread(target=DeviceMonitor({"output": sink}, poll_s=0.02, retry_s=0.05).run, args=(stopping,),
                               name="device-monitor", daemon=True)  # fmt: skip
    try:
        sink.start(0.0)
        monitor.start()
        assert sink.healthy()
        portaudio.present = False
        portaudio.streams[-1].die()
        wait_until(lambda: "audio output device stopped" in caplog.text)
        assert "the output stream ended" in caplog.text
        assert not sink.healthy()
        portaudio.present = True
        wait_until(lambda: "audio output device is back" in caplog.text)
        assert sink.healthy() and portaudio.opened == 2
        lines = [r for r in caplog.records if "audio output device stopped" in r.getMessage()]
        assert len(lines) == 1  # one clear line, not one per retry
    finally:
        stopping.set()
        monitor.join(timeout=2)
        sink.close()


def test_audio_lost_at_the_devices_is_counted_and_said_at_close(caplog):
    """Input overflows and our own full queue (the program fell behind the microphone), and output
    underflows, are counted in the PortAudio callbacks and said once at close."""
    import logging
    from types import SimpleNamespace

    import numpy as np

    from voice_assistant.audio_io import INPUT_CHUNK_SAMPLES, MicrophoneSource, SpeakerSink

    caplog.set_level(logging.INFO, logger="voice_assistant.audio_io")
    timing = SimpleNamespace(currentTime=1.0, inputBufferAdcTime=0.99, outputBufferDacTime=1.01)
    mic = MicrophoneSource(None)
    mic._queue.maxsize = 1  # the worker is not running: the second chunk finds the queue full
    chunk = np.zeros((INPUT_CHUNK_SAMPLES, 1), dtype=np.float32)
    mic._callback(chunk, INPUT_CHUNK_SAMPLES, timing, SimpleNamespace(input_overflow=True))
    mic._callback(chunk, INPUT_CHUNK_SAMPLES, timing, SimpleNamespace(input_overflow=False))
    assert (mic.overflows, mic.dropped_chunks) == (1, 1)
    mic.close()
    assert "microphone: 1 input overflows, 1 chunks dropped" in caplog.text

    sink = SpeakerSink(None, 1000, 20)
    sink._stream = SimpleNamespace(abort=lambda: None, close=lambda: None, stop=lambda: None)
    out = np.zeros((sink.block_frames, 1), dtype=np.float32)
    sink._callback(out, sink.block_frames, timing, SimpleNamespace(output_underflow=True))
    sink.close()
    assert "speaker: 1 output underflows" in caplog.text


class ThreadKiller(BaseException):
    """What a worker loop does not catch (as SystemExit or a library's own BaseException would be)."""


def test_a_consumer_thread_that_dies_is_restarted_by_the_device_monitor(tmp_path, caplog, monkeypatch):
    """The audio-in thread and a worker thread die of what their loops cannot catch; the monitor
    notices within a poll, says so in one line each, and the audio and the items go on."""
    import numpy as np
    import soundfile

    from voice_assistant.audio_io import WavFileSource
    from voice_assistant.workers import QueueWorker, log_thread_deaths

    monkeypatch.setattr(threading, "excepthook", threading.excepthook)  # restored after the test
    log_thread_deaths()  # as main() does: one line per death, no traceback on the terminal

    wav = tmp_path / "in.wav"
    soundfile.write(str(wav), np.zeros(16000 * 3, dtype=np.float32), 16000)
    source = WavFileSource(wav)
    delivered: list[float] = []

    def consume(chunk, end_t):
        delivered.append(end_t)
        if len(delivered) == 5:
            raise ThreadKiller()

    handled: list[str] = []

    def handle(item):
        if item == "poison":
            raise ThreadKiller()
        handled.append(item)

    worker = QueueWorker("llm", handle)
    monitor = DeviceMonitor({}, poll_s=0.05)
    stopping = threading.Event()
    thread = threading.Thread(target=monitor.run, args=(stopping,), name="device-monitor", daemon=True)
    try:
        worker.start()
        source.start(consume, time.monotonic())
        monitor.watch(source, worker, None)
        thread.start()
        worker.put("poison")
        worker.put("after")
        wait_until(lambda: handled == ["after"], timeout_s=3)
        wait_until(lambda: len(delivered) >= 20, timeout_s=5)  # the audio goes on after chunk 5 killed its thread
        assert monitor.restarts == {"wav-source": 1, "llm": 1}
    finally:
        stopping.set()
        thread.join(timeout=2)
        worker.stop()
        worker.join(2)
        source.close()
    steps = np.diff(delivered[:20])
    assert np.allclose(steps, 0.032), steps  # not a chunk lost or repeated
    errors = sorted(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert errors == ["the llm thread failed: ThreadKiller: ",
                      "the llm thread stopped unexpectedly (1 times); restarting it",
                      "the wav-source thread failed: ThreadKiller: ",
                      "the wav-source thread stopped unexpectedly (1 times); restarting it"]  # fmt: skip
    assert not worker.died() and not source.died()  # stopped on purpose: not restarted after close


@pytest.mark.slow
def test_enormous_utterance_keeps_its_last_words_and_the_conversation_goes_on(real_server):
    # prefilling about 1000 tokens takes a few seconds here
    h = real_harness(real_server, read_timeout_s=30.0, supervisor={"server": real_server})
    try:
        supervisor = h.supervisor
        enormous = " ".join(["and then I went to the market"] * 900)  # about 6000 tokens: past the context
        assert h.answer(enormous) not in (LLM_ERROR_REPLY, LLM_UNAVAILABLE_REPLY)  # its last words are answered
        assert h.system.history.exchanges()[-1].user.startswith("... ")
        assert len(h.system.history.exchanges()[-1].user) <= 4004
        assert supervisor.restart_count == 0 and supervisor.available
        assert h.answer("Say hello.") not in (LLM_ERROR_REPLY, LLM_UNAVAILABLE_REPLY)
    finally:
        h.close()


@pytest.mark.slow
def test_history_that_outgrows_the_context_is_shortened(real_server):
    from voice_assistant.history import Exchange

    h = real_harness(real_server, read_timeout_s=30.0)  # the first, too long prompt and the refill take seconds
    try:
        for _ in range(10):  # long earlier exchanges, about 5000 tokens in all
            h.system.history.add(Exchange("tell me everything", "and then the story went on " * 75, False))
        turn = h.system.submit_user_text("Say hello.")
        wait_until(lambda: h.sink.play_next() is not None and turn in h.sink.ends, h.sink.item_arrived, timeout_s=60)
        h.wait_idle()
        assert h.synth.spoken[-1] not in (LLM_ERROR_REPLY, LLM_UNAVAILABLE_REPLY)
        assert len(h.system.history.exchanges()) == 3  # the last two old ones, and this one
    finally:
        h.close()


# ---------------------------------------------------------------------- files, proxies, hostile streams


def test_a_full_disk_loses_no_answer(tmp_path, caplog):
    """The transcript on a full disk (/dev/full: every write fails with ENOSPC) and the metrics in a
    folder that disappears: each costs one line, every question is still answered."""
    from voice_assistant.metrics import MetricsFile, TranscriptFile

    folder = tmp_path / "gone"
    folder.mkdir()
    metrics = MetricsFile(folder / "metrics.json")
    with FakeLlamaServer() as server:
        h = Harness(server.url, transcript=TranscriptFile("/dev/full"), metrics=metrics)
        try:
            server.script(Reply(pieces=["One."]), Reply(pieces=["Two."]), Reply(pieces=["Three."]))
            assert h.answer("first") == "One."
            assert (folder / "metrics.json").exists()
            folder.joinpath("metrics.json").unlink()
            folder.rmdir()
            assert h.answer("second") == "Two."
            assert h.answer("third") == "Three."
        finally:
            h.close()
    assert [e.user for e in h.system.history.exchanges()] == ["first", "second", "third"]
    assert len(metrics.turns) == 3  # still recorded in memory
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len([e for e in errors if "cannot write the transcript /dev/full" in e]) == 1, errors
    assert len([e for e in errors if "cannot write the metrics file" in e]) == 1, errors
    assert "Traceback" not in caplog.text


def test_metrics_file_is_private_and_appended_one_record_per_line(tmp_path):
    import os

    from voice_assistant.metrics import MetricsFile, read_metrics

    os.umask(0o022)
    path = tmp_path / "m.json"
    metrics = MetricsFile(path, keep=3)
    metrics.add({"turn": 1, "user": "my secret question"})
    metrics.flush()
    assert (path.stat().st_mode & 0o777) == 0o600
    size = path.stat().st_size
    inode = path.stat().st_ino
    for turn in range(2, 6):
        metrics.add({"turn": turn, "user": "again"})
        metrics.add_barge_in({"turn": turn, "words_kept": 2})
        metrics.flush()
        assert path.stat().st_ino == inode  # appended to, never rewritten whole
    assert path.read_text().splitlines()[0] == '{"kind": "turn", "turn": 1, "user": "my secret question"}'
    assert path.stat().st_size > size
    metrics.set_summary({"echo": {"erle_db": 20.0}})
    metrics.close()
    document = read_metrics(path)
    assert [t["turn"] for t in document["turns"]] == [1, 2, 3, 4, 5]  # the file keeps all of them
    assert [t["turn"] for t in metrics.turns] == [3, 4, 5]  # memory keeps the last `keep`
    assert len(document["barge_ins"]) == 4 and document["summary"] == {"echo": {"erle_db": 20.0}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_a_file_removed_under_us_is_one_line_not_a_silent_loss(tmp_path, caplog):
    from voice_assistant.files import JsonLinesFile

    path = tmp_path / "t.jsonl"
    file = JsonLinesFile(path, "the transcript")
    file.write({"turn": 1})
    path.unlink()  # writes would go on into a file nobody can read
    file.write({"turn": 2})
    file.write({"turn": 3})
    file.close()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [f"cannot write the transcript {path} (the file was removed); not writing it any more"]


def test_files_we_name_do_not_follow_a_planted_link_but_files_the_user_names_may(tmp_path):
    import errno
    import os

    from voice_assistant.files import open_private

    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "llama-server.log"
    link.symlink_to(victim)
    with pytest.raises(OSError) as raised:
        open_private(link, follow_links=False)
    assert raised.value.errno == errno.ELOOP
    assert victim.read_text() == "precious"
    os.close(open_private(link))  # a link the user named is theirs to use
    assert victim.read_text() == "precious"  # appended to, not truncated


def test_the_recording_streams_to_disk_and_stays_readable(tmp_path):
    import os

    import numpy as np
    import soundfile

    from voice_assistant.files import StreamingWav

    path = tmp_path / "mic.wav"
    recording = StreamingWav(path, 16000, 2, max_queued=10_000)
    block = np.full((512, 2), 0.25, dtype=np.float32)
    for _ in range(100):
        recording.add(block)
    deadline = time.monotonic() + 5
    while recording.frames_written < 100 * 512 and time.monotonic() < deadline:
        time.sleep(0.01)
    # before close: already on disk with a valid header (a crash now leaves a readable file)
    samples, rate = soundfile.read(str(path), dtype="float32")
    assert rate == 16000 and samples.shape == (100 * 512, 2)
    assert (path.stat().st_mode & 0o777) == 0o600
    recording.close()
    samples, _ = soundfile.read(str(path), dtype="float32")
    assert samples.shape == (100 * 512, 2) and abs(float(samples.mean()) - 0.25) < 0.001
    assert recording.dropped_blocks == 0 and os.path.getsize(path) == 44 + 100 * 512 * 4


def test_a_recording_on_a_full_disk_is_one_line_and_the_audio_thread_never_blocks(tmp_path, caplog):
    import numpy as np

    from voice_assistant.files import StreamingWav

    recording = StreamingWav("/dev/full", 16000, 2)
    block = np.zeros((512, 2), dtype=np.float32)
    start = time.monotonic()
    for _ in range(2000):
        recording.add(block)
    assert time.monotonic() - start < 1.0
    recording.close()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith("cannot write /dev/full ("), errors


def test_loopback_requests_ignore_a_proxy(monkeypatch):
    from voice_assistant.llm_client import LlamaClient

    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # a proxy that does not exist
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    with FakeLlamaServer() as server:
        client = LlamaClient(server.url, use_raw_stream=False)
        try:
            assert client.health(timeout_s=2.0) == (True, "HTTP 200")
            assert "".join(client.stream({"prompt": "x"})) == "Hello world."
        finally:
            client.close()


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "lines"])
def test_hostile_events_become_protocol_errors(raw):
    from voice_assistant.errors import LLMProtocolError
    from voice_assistant.llm_client import LlamaClient

    nested = b"data: " + b"[" * 100_000 + b"]" * 100_000 + b"\n\n"
    with FakeLlamaServer() as server:
        client = LlamaClient(server.url, use_raw_stream=raw)
        try:
            server.script(Reply(pieces=["a", "b"], malformed_at=1, malformed_line=nested))
            with pytest.raises(LLMProtocolError):
                list(client.stream({"prompt": "x"}))
        finally:
            client.close()


def test_a_tls_server_with_a_bad_certificate_is_a_connection_error(tmp_path):
    import shutil
    import socket
    import ssl
    import subprocess

    from voice_assistant.errors import LLMConnectionError
    from voice_assistant.llm_client import LlamaClient

    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=evil",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        with conn:
            try:
                context.wrap_socket(conn, server_side=True).close()
            except (ssl.SSLError, OSError):
                pass  # the client refuses our certificate: exactly what is tested

    server = threading.Thread(target=serve, name="tls-server")
    server.start()
    client = LlamaClient(f"https://127.0.0.1:{port}")
    try:
        with pytest.raises(LLMConnectionError, match="securely"):
            list(client.stream({"prompt": "x"}))
    finally:
        client.close()
        server.join(5)
        listener.close()


def test_a_chunk_that_fails_does_not_leave_the_assistant_deaf(tmp_path, caplog):
    import numpy as np
    import soundfile

    from voice_assistant.audio_io import WavFileSource

    path = tmp_path / "in.wav"
    soundfile.write(str(path), np.zeros(512 * 10, dtype=np.float32), 16000)
    source = WavFileSource(path)
    delivered = []
    done = threading.Event()

    def consumer(chunk, end_t):
        delivered.append(end_t)
        if len(delivered) == 3:
            raise OSError(28, "No space left on device")  # e.g. a disk write met on the audio thread
        if len(delivered) == 12:
            done.set()

    source.start(consumer, time.monotonic() - 10.0)  # t0 in the past: no real-time pacing
    try:
        assert done.wait(5.0), f"only {len(delivered)} chunks delivered"
    finally:
        source.close()
    failures = [r for r in caplog.records if "handling an audio chunk failed" in r.getMessage()]
    assert len(failures) == 1 and "No space left" in caplog.text


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "lines"])
def test_events_without_text_do_not_keep_a_turn_alive(raw):
    """A server that keeps the connection busy with empty events (or SSE comments) but never sends a
    token: the first-token deadline ends the turn as too slow, and the server sees the hang-up."""
    from voice_assistant.errors import LLMProtocolError, LLMTooSlowError
    from voice_assistant.llm_client import LlamaClient, StreamLimits

    with FakeLlamaServer() as server:
        client = LlamaClient(server.url, use_raw_stream=raw, read_timeout_s=5.0)
        try:
            server.script(Reply(pieces=[], endless=True, endless_piece="", interval_s=0.05))
            started = time.monotonic()
            with pytest.raises(LLMTooSlowError, match="no reply text after 1 s"):
                list(client.stream({"prompt": "x"}, StreamLimits(first_token_s=1.0)))
            assert 1.0 <= time.monotonic() - started < 3.0
            assert server.wait_for_hangup()
            server.script(Reply(pieces=["a"], endless=True, interval_s=0.01))
            with pytest.raises(LLMTooSlowError, match="still streaming after 1 s"):
                list(client.stream({"prompt": "x"}, StreamLimits(total_s=1.0)))
            server.script(Reply(pieces=["x" * 1000], endless=True, endless_piece="y" * 1000, interval_s=0.001))
            with pytest.raises(LLMProtocolError, match="more than 100000 bytes"):
                list(client.stream({"prompt": "x"}, StreamLimits(max_bytes=100_000)))
        finally:
            client.close()


def test_a_turn_without_tokens_ends_with_the_too_slow_apology():
    with FakeLlamaServer() as server:
        h = Harness(server.url, llm_timeout_s=1)
        try:
            server.script(Reply(pieces=[], endless=True, endless_piece="", interval_s=0.05), Reply(pieces=["Fine."]))
            assert h.answer("hello?") == LLM_SLOW_REPLY
            assert h.answer("again") == "Fine."
        finally:
            h.close()


def test_a_stop_that_hangs_is_ended_by_the_exit_watchdog_with_the_thread_stacks(tmp_path):
    """A part that never stops (here: a non-daemon thread the interpreter waits for at exit) must not
    leave the program hanging after Ctrl-C: one line, the stacks in a file, exit status 1."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    stacks = tmp_path / "shutdown-hang.log"
    code = (
        "import threading, time, sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
        "from voice_assistant.workers import arm_exit_watchdog\n"
        "threading.Thread(target=lambda: time.sleep(60), name='stuck-part').start()\n"
        f"arm_exit_watchdog(0.5, __import__('pathlib').Path({str(stacks)!r}))\n"
    )
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert time.monotonic() - started < 10
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: stopping took over 0.5 s, quitting anyway; what each thread was doing is in {stacks}"
    ], result.stderr
    text = stacks.read_text()
    assert "stopping took over 0.5 s" in text and "<lambda>" in text  # the stuck thread's stack
