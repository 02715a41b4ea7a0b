"""Shared test harness and fixtures. Every test fails if it leaks a thread.

`Harness` runs a real `VoiceConversationSystem` against a fake llama-server (over a real socket),
with `FakeSynthesizer` and `FakeAudioSink` for Piper and the speaker, and optionally a microphone
chain with `FakeVAD` (speech = loud chunks) and speculative transcription with `FakeTranscriber`.
It drives the system only through public seams: `submit_user_text`, `on_audio`, `on_final_text`,
`interrupt`, `active_turn`, the sink it plays by hand, and the metrics and history it records.

Test tiers (markers): `slow` (real models, a real llama-server), `live` (real audio devices through
PulseAudio), `soak`. `scripts/test.sh --fast` runs everything else.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from asr_llm_tts import VoiceConversationSystem  # noqa: E402
from fake_llama_server import FakeLlamaServer  # noqa: E402
from fakes import FakeAudioSink, FakeSynthesizer, FakeTranscriber, FakeVAD  # noqa: E402
from voice_assistant.assembly import build_tracker  # noqa: E402
from voice_assistant.audio_io import AudioBlock  # noqa: E402
from voice_assistant.backends import BackendChain, detect_api  # noqa: E402
from voice_assistant.cues import Cues  # noqa: E402
from voice_assistant.config import make_config  # noqa: E402
from voice_assistant.llm_client import LlamaClient  # noqa: E402
from voice_assistant.mic import MicrophoneChain  # noqa: E402
from voice_assistant.speculation import SpeculativeTranscriber, TranscriptCache  # noqa: E402
from voice_assistant.supervisor import LLMSupervisor  # noqa: E402

TIMEOUT_S = 10.0
CHUNK_S = 0.032
EXIT_STATUS = pytest.StashKey[int]()


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: runs the real bundled models and a real llama-server")
    config.addinivalue_line("markers", "live: real audio devices through PulseAudio null sinks")
    config.addinivalue_line("markers", "soak: the long soak run")


def pytest_sessionfinish(session, exitstatus):
    session.config.stash[EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """With livekit's native library loaded (the echo tests' AEC3), end the process here, after every
    report is written, with pytest's own exit status. livekit's atexit handler tears down its tokio
    runtime, and once in CI (2026-12-02, after "721 passed") a worker thread panicked there ("panic in a
    function that cannot unwind") and aborted the run with status 134. The program itself closes its
    canceller before it exits and has not shown it (every benchmark run logs its exit status)."""
    if "livekit.rtc" in sys.modules and EXIT_STATUS in config.stash:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(config.stash[EXIT_STATUS])


@pytest.fixture(autouse=True, scope="session")
def no_user_config(tmp_path_factory):
    """The program reads the user's config file when there is one: tests (and the programs they
    start) see an empty config folder instead, so a user's settings cannot change what they check."""
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("config-home"))
    yield


@pytest.fixture(autouse=True)
def no_thread_leak():
    before = set(threading.enumerate())
    yield
    deadline_threads = []
    for thread in set(threading.enumerate()) - before:
        thread.join(timeout=3.0)
        if thread.is_alive() and not thread.name.startswith(("RealtimeSTT", "asyncio", "ThreadPoolExecutor", "tqdm_monitor")):
            deadline_threads.append(thread.name)
    assert not deadline_threads, f"test leaked threads: {deadline_threads}"


def wait_until(predicate, event: threading.Event | None = None, timeout_s: float = TIMEOUT_S) -> None:
    """Wait for a condition that another thread makes true, waking on `event` when given."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        if event is not None:
            event.wait(0.01)
            event.clear()
        else:
            time.sleep(0.005)


class Harness:
    """A running system on fakes (see the module docstring). Config fields are keyword arguments.

    `transcripts`: speculative transcription on, returning these texts in turn (implies `mic`).
    `mic`: a microphone chain with FakeVAD, fed through `speak()`/`pause()`; `canceller`: its echo canceller.
    `supervisor`: keyword arguments of an LLMSupervisor (polling every 50 ms), or None for none.
    `api`: the server's API ("llamacpp" or "openai", whose URL ends in /v1); `fallbacks`: more server
    URLs after `llm_url` (their API detected), in a BackendChain. `cues`: audio cues into the fake sink.
    """

    def __init__(self, llm_url: str, *, transcripts: tuple[str, ...] | None = None, mic: bool = False,
                 defense=None, supervisor: dict | None = None, read_timeout_s: float = 5.0, api: str = "llamacpp",
                 api_key: str | None = None, fallbacks: tuple[str, ...] = (), transcript=None, metrics=None,
                 cues: bool = False, canceller=None, **config) -> None:  # fmt: skip
        config.setdefault("first_clause_min_words", 0)
        self.config = make_config(**config)
        self.sink = FakeAudioSink()
        self.synth = FakeSynthesizer()
        clients = [LlamaClient(llm_url, read_timeout_s=read_timeout_s, api=api, api_key=api_key)]
        clients += [LlamaClient(base, read_timeout_s=read_timeout_s, api=kind) for kind, base in map(detect_api, fallbacks)]
        self.client = BackendChain(clients) if fallbacks else clients[0]
        self.transcriber = None
        chain = speculation = None
        if mic or transcripts is not None:
            tracker = build_tracker(self.config)
            chain = MicrophoneChain(FakeVAD(), tracker, self.config.speech.vad_threshold, canceller=canceller)
            if transcripts is not None:
                self.transcriber = FakeTranscriber(*transcripts)
                cache = TranscriptCache(lambda: tracker.last_speech_end_t, lambda: tracker.last_utterance_end_t)
                speculation = SpeculativeTranscriber(self.transcriber, cache)
        self.supervisor = None
        if supervisor is not None:
            self.supervisor = LLMSupervisor(self.client, supervisor.pop("server", None), poll_s=0.05, **supervisor)
        self.system = VoiceConversationSystem(self.config, self.client, self.synth, self.sink, mic=chain,
                                              speculation=speculation, defense=defense, supervisor=self.supervisor,
                                              transcript=transcript, metrics=metrics,
                                              cues=Cues(self.sink) if cues else None)  # fmt: skip
        self.system.start()

    def blocks_of(self, turn_id: int) -> list[AudioBlock]:
        return [block for block in self.sink.played if block.turn_id == turn_id]

    def queued_blocks(self) -> int:
        return self.sink.pending_blocks()

    def play_reply(self, turn_id: int, timeout_s: float = TIMEOUT_S) -> None:
        """Play until the reply's end marker has been reached."""

        def done():
            self.sink.play_next()
            return turn_id in self.sink.ends

        wait_until(done, self.sink.item_arrived, timeout_s)

    def answer(self, text: str) -> str:
        """Ask, play the whole reply, return what was spoken last."""
        self.play_reply(self.system.submit_user_text(text))
        self.wait_idle()
        return self.synth.spoken[-1]

    def speak(self, chunks: int, t: float, level: float = 0.5) -> float:
        """Loud chunks (speech for FakeVAD) into the microphone; the time after the last one."""
        for _ in range(chunks):
            t += CHUNK_S
            self.system.on_audio(np.full(512, level, dtype=np.float32), t)
        return t

    def pause(self, chunks: int, t: float) -> float:
        for _ in range(chunks):
            t += CHUNK_S
            self.system.on_audio(np.zeros(512, dtype=np.float32), t)
        return t

    def wait_idle(self) -> None:
        wait_until(self.system.is_idle)

    def close(self) -> None:
        self.system.close()


@pytest.fixture()
def server():
    with FakeLlamaServer() as fake:
        yield fake


@pytest.fixture()
def harness(server):
    h = Harness(server.url)
    yield h
    h.close()
