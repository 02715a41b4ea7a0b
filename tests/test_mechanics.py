"""The small mechanical modules on their own: QueueWorker, heard_words, the speech worker's hold
buffer, and the supervisor doing its restarts on its own thread."""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import pytest

from conftest import wait_until
from fake_llama_server import FakeLlamaServer
from fakes import FakeAudioSink, FakeSynthesizer
from voice_assistant.errors import LLMReadTimeout
from voice_assistant.llm_client import LlamaClient
from voice_assistant.speech import SpeechWorker
from voice_assistant.supervisor import LLMSupervisor
from voice_assistant.turns import STOP, EndOfText, SentenceItem, TurnCounter, heard_words
from voice_assistant.workers import QueueWorker


def test_queue_worker_survives_a_failing_item_and_stops_on_the_sentinel(caplog):
    handled = []

    def handle(item):
        if item == "bad":
            raise ValueError("boom")
        handled.append(item)

    worker = QueueWorker("test-worker", handle)
    for item in ("a", "bad", "b", STOP, "never"):
        worker.put(item)
    assert not worker.idle()
    worker.run()  # on this thread: returns at STOP
    assert handled == ["a", "b"]
    assert "test-worker: handling 'bad' failed" in caplog.text and "boom" in caplog.text


def test_queue_worker_thread_is_named_and_joins():
    seen = []
    worker = QueueWorker("named", lambda item: seen.append(threading.current_thread().name))
    worker.start()
    worker.put(1)
    worker.stop()
    worker.join(2.0)
    assert not worker.is_alive() and seen == ["named"] and worker.idle()


@pytest.mark.parametrize(
    "sentence, progress, heard",
    [
        ("one two three four", 1.0, "one two three four"),
        ("one two three four", 0.5, "one two"),
        ("one two three four", 0.49, "one"),
        ("one two three four", 0.0, ""),
        ("Hello, world!", 0.999, "Hello, world!"),
        ("", 0.5, ""),
    ],
)
def test_heard_words(sentence, progress, heard):
    assert heard_words(sentence, progress) == heard


def test_speech_worker_holds_a_tentative_turn_and_releases_it_in_order():
    turns = TurnCounter()
    turn_id = turns.advance()
    sink = FakeAudioSink()
    speech = SpeechWorker(FakeSynthesizer(), sink, turns)
    speech.hold(turn_id)
    for index, text in enumerate(["First.", "Second one."]):
        speech.worker.put(SentenceItem(turn_id, index, text))
    speech.worker.put(EndOfText(turn_id))
    speech.worker.put(STOP)
    speech.worker.run()
    held = speech.held_blocks(turn_id)
    assert held == 3 + 6 and sink.pending_blocks() == 0  # 60 and 110 samples in 20-sample blocks
    speech.release(turn_id)
    assert speech.held_blocks(turn_id) == 0 and sink.pending_blocks() == held
    sink.play_all()
    assert [block.sentence_index for block in sink.played] == [0] * 3 + [1] * 6
    assert sink.ends == [turn_id]


def test_speech_worker_drops_stale_items():
    turns = TurnCounter()
    old = turns.advance()
    turns.advance()
    sink = FakeAudioSink()
    speech = SpeechWorker(FakeSynthesizer(), sink, turns)
    for item in (SentenceItem(old, 0, "Old."), EndOfText(old), STOP):
        speech.worker.put(item)
    speech.worker.run()
    assert sink.pending_blocks() == 0 and sink.queue.idle.is_set()  # not even its end marker
    assert speech.synthesizer.spoken == []


class FakeServerProcess:
    """Stands in for LlamaServerProcess: records on which thread it was restarted."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.running = True
        self.started_on: list[str] = []
        self.config = type("Config", (), {"log_path": "server.log"})()

    def alive(self) -> bool:
        return self.running

    def stop(self, timeout_s: float = 2.0) -> None:
        self.running = False

    def start(self) -> str:
        self.started_on.append(threading.current_thread().name)
        self.running = True
        return self.url


@contextlib.contextmanager
def monitored_server(process_running: bool = True):
    """(fake server, FakeServerProcess, supervisor) with the supervisor's monitor running on its
    own `llm-monitor` thread; stopped and joined at the end."""
    with FakeLlamaServer() as fake:
        client = LlamaClient(fake.url)
        process = FakeServerProcess(fake.url)
        process.running = process_running
        supervisor = LLMSupervisor(client, process, poll_s=0.05)
        stopping = threading.Event()
        monitor = threading.Thread(target=supervisor.run, args=(stopping,), name="llm-monitor")
        monitor.start()
        try:
            yield fake, process, supervisor
        finally:
            stopping.set()
            supervisor.stop()
            monitor.join(5.0)
            client.close()
        assert not monitor.is_alive()


def test_a_hang_is_restarted_on_the_monitor_thread_never_on_the_reporting_one(caplog):
    caplog.set_level(logging.WARNING)
    with monitored_server() as (fake, process, supervisor):
        fake.health_status = 503  # a hung server does not answer /health either
        started = time.monotonic()
        supervisor.report_failure(LLMReadTimeout("reading from llama-server timed out"))
        assert time.monotonic() - started < 0.05  # the reporting (LLM) thread does not wait
        assert supervisor.wait_settled(10.0)
        assert process.started_on == ["llm-monitor"] and supervisor.restart_count == 1
        assert "stopped answering" in caplog.text


def test_no_restart_after_the_supervisor_is_stopped(caplog):
    caplog.set_level(logging.WARNING)
    with monitored_server(process_running=False) as (fake, process, supervisor):  # it died
        wait_until(lambda: "restarting it in 0.5 s" in caplog.text)  # the monitor is in its backoff
    # leaving the block stopped the supervisor while the restart waited (as close() does)
    assert process.started_on == []  # never started after stop()


def test_a_slow_prompt_is_not_taken_for_a_hang(caplog):
    """A read timeout from a server that still answers /health (a big model reading a long prompt)
    costs the turn, not a restart that would throw the server's work away."""
    caplog.set_level(logging.WARNING)
    with monitored_server() as (fake, process, supervisor):
        supervisor.report_failure(LLMReadTimeout("reading from llama-server timed out"))
        assert supervisor.wait_settled(10.0)
        assert process.started_on == [] and supervisor.restart_count == 0
        assert "slow, not hung" in caplog.text


def test_transcript_scores_are_found_whatever_the_punctuation_and_kept_bounded():
    from voice_assistant.asr import TranscriptScores

    scores = TranscriptScores(keep=2)
    scores.record(" Right in the high blue.", -0.61)
    assert scores.score_of("right in the High blue") == -0.61  # RealtimeSTT may change case and punctuation
    scores.record("two", -0.1)
    scores.record("three", -0.2)
    assert scores.score_of("Right in the high blue.") is None and scores.score_of("three") == -0.2


def test_history_past_its_limit_drops_the_oldest_in_one_go_not_one_per_turn():
    """Each dropped exchange changes the cached prompt prefix: one per turn made every turn re-read the
    whole history when summaries could not keep up (3.2 s to the first token, measured)."""
    from voice_assistant.history import Exchange, History

    history = History(trim_threshold=6, keep_after_trim=2)
    for n in range(6):
        history.add(Exchange(f"q{n}", f"a{n}", False))
    assert len(history) == 6 and history.trimmed == 0
    history.add(Exchange("q6", "a6", False))
    assert [e.user for e in history.exchanges()] == ["q5", "q6"] and history.trimmed == 5
    for n in range(7, 11):
        history.add(Exchange(f"q{n}", f"a{n}", False))
    assert len(history) == 6 and history.trimmed == 5  # the prefix stayed put for four turns
