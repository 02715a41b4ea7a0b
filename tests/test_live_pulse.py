"""The live path through real audio devices: PortAudio -> ALSA -> PulseAudio null sinks.

The fixture starts its own PulseAudio, on its own socket in a temporary folder (so a sound server
the machine already runs, a desktop's, is never touched), with a speaker sink `spk` and a
microphone bus `micbus`; what we play into `micbus` is what the program hears, and what the
program plays lands in `spk`. The program and the pa* tools reach it through PULSE_SERVER.
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import soundfile

from pulse import couple_speaker_into_microphone, start_pulse, use_null_sinks
from pulse import pulse_env as private_pulse_env
from speech import say, voiced_spans

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.live]
STARTED: dict[str, subprocess.Popen | None] = {"pulse": None}  # the daemon this module runs


@pytest.fixture(scope="module")
def pulse_env(tmp_path_factory):
    if shutil.which("pulseaudio") is None:
        pytest.fail("pulseaudio is not installed: scripts/setup.sh installs it")
    runtime = tmp_path_factory.mktemp("pulse")
    env = private_pulse_env(runtime)
    STARTED["pulse"] = start_pulse(env)
    use_null_sinks(env)
    yield env
    daemon = STARTED["pulse"]
    if daemon is not None:
        daemon.terminate()
        daemon.wait(timeout=5)
        STARTED["pulse"] = None


class LineReader:
    """Collects a process's stdout lines on a thread; `wait_for(text)` blocks until one contains it."""

    def __init__(self, stream) -> None:
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        self._thread = threading.Thread(target=self._run, args=(stream,), name="line-reader", daemon=True)
        self._thread.start()

    def _run(self, stream) -> None:
        for line in stream:
            self.lines.put(line)

    def wait_for(self, text: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line with {text!r} in {timeout_s} s; saw: {self.seen}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append(line.rstrip())
            if text in line:
                return line

    def join(self) -> None:
        """Wait for the stream to end, then move every line not yet read into `seen`."""
        self._thread.join(timeout=5)
        while not self.lines.empty():
            self.seen.append(self.lines.get().rstrip())


@contextlib.contextmanager
def assistant(env: dict, *flags: str):
    """The program running live on PulseAudio, with its output lines; killed at the end unless the
    test stopped it, and every line it printed is in `reader.seen` afterwards."""
    program = subprocess.Popen(
        [sys.executable, str(ROOT / "asr_llm_tts.py"), *flags],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    reader = LineReader(program.stdout)
    try:
        yield program, reader
    finally:
        if program.poll() is None:
            program.kill()
            program.wait()
        reader.join()


def stop(program: subprocess.Popen, timeout_s: float = 5.0) -> int:
    """SIGTERM, as a service manager or `kill` would send; the exit status."""
    program.send_signal(signal.SIGTERM)
    return program.wait(timeout=timeout_s)


def test_live_conversation_through_pulseaudio(pulse_env, tmp_path):
    question = say("What is the capital of France?", tmp_path / "q.wav", 16000)
    recorder = None
    with assistant(pulse_env, "--transcript", str(tmp_path / "t.jsonl"), "--max-reply-tokens", "40",
                   "--server-log", str(tmp_path / "server.log")) as (program, reader):  # fmt: skip
        try:
            reader.wait_for("listening", 90)
            children = psutil.Process(program.pid).children(recursive=True)
            assert any("llama-server" in child.name() for child in children)
            recorder = subprocess.Popen(
                ["parecord", "--device=spk.monitor", "--file-format=wav", str(tmp_path / "spk.wav")], env=pulse_env
            )
            subprocess.run(["paplay", "--device=micbus", str(question)], env=pulse_env, check=True, timeout=30)
            heard = reader.wait_for("You:", 30)
            assert "capital" in heard.lower()
            reader.wait_for("turn 1:", 60)
            stop_started = time.monotonic()
            assert stop(program) == 0
            assert time.monotonic() - stop_started < 3.0
        finally:
            if recorder is not None:
                recorder.terminate()
                recorder.wait(timeout=5)
    assert not [child for child in children if child.is_running() and child.status() != psutil.STATUS_ZOMBIE]
    audio, rate = soundfile.read(str(tmp_path / "spk.wav"), dtype="float32")
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    assert voiced_spans(audio, rate), "nothing reached the speaker sink"
    assert "capital" in (tmp_path / "t.jsonl").read_text().lower()


def test_remote_llm_down_at_start_keeps_listening_and_recovers(pulse_env, tmp_path):
    """`--llm-url` pointing at a server that is not up yet: the assistant listens anyway, apologizes
    for questions it cannot answer, and answers once the server comes up, without a restart."""
    from asr_llm_tts import LLM_UNAVAILABLE_REPLY
    from fake_llama_server import FakeLlamaServer, Reply
    from voice_assistant.llama_server import free_port

    question = say("What is the capital of France?", tmp_path / "q.wav", 16000)
    llm = FakeLlamaServer(port=free_port())
    try:
        with assistant(pulse_env, "--llm-url", f"http://127.0.0.1:{llm.port}", "--llm-wait-s", "0",
                       "--transcript", str(tmp_path / "t.jsonl")) as (program, reader):  # fmt: skip
            reader.wait_for("listening anyway", 90)
            reader.wait_for("listening", 90)
            subprocess.run(["paplay", "--device=micbus", str(question)], env=pulse_env, check=True, timeout=30)
            assert LLM_UNAVAILABLE_REPLY in reader.wait_for("Assistant:", 30)

            llm.script(Reply(pieces=["Paris is the capital of France."]))
            llm.start()
            reader.wait_for("reachable again", 30)
            subprocess.run(["paplay", "--device=micbus", str(question)], env=pulse_env, check=True, timeout=30)
            assert "Paris is the capital" in reader.wait_for("Assistant:", 30)
            assert stop(program) == 0
    finally:
        llm.stop()
    turns = (tmp_path / "t.jsonl").read_text().splitlines()
    assert len(turns) == 2
    assert "Paris" in turns[1] and "capital" in turns[1].lower()


@pytest.mark.parametrize("protected", [True, False], ids=["aec-and-guards", "unprotected"])
def test_speaker_coupled_into_microphone_does_not_make_it_answer_itself(pulse_env, tmp_path, protected):
    """A laptop without headphones: PulseAudio's loopback feeds the speaker back into the microphone.

    Unprotected (--no-aec --no-echo-guards) the same set-up must make it answer itself: the test bites.
    """
    module = couple_speaker_into_microphone(pulse_env, latency_ms=50)
    question = say("What is the capital of France?", tmp_path / "q.wav", 16000)
    try:
        with assistant(pulse_env, "--max-reply-tokens", "60", "--metrics-json", str(tmp_path / "m.json"),
                       "--server-log", str(tmp_path / "server.log"),
                       "--system-prompt", "You are a friendly assistant. Answer in two or three full sentences.",
                       *([] if protected else ["--no-aec", "--no-echo-guards"])) as (program, reader):  # fmt: skip
            reader.wait_for("listening", 90)
            time.sleep(3.0)  # the own-voice enrollment finishes in the background
            subprocess.run(["paplay", "--device=micbus", str(question)], env=pulse_env, check=True, timeout=30)
            reader.wait_for("turn ", 60)  # the answer has played, through the speaker and back into the mic
            time.sleep(12.0)  # listen on: it must not take its own voice for a question
            assert stop(program, timeout_s=10) == 0
    finally:
        subprocess.run(["pactl", "unload-module", module], env=pulse_env)
    questions = [line for line in reader.seen if line.startswith("You:")]
    assert "capital" in questions[0].lower(), reader.seen
    if protected:
        assert len(questions) == 1, reader.seen
        assert any("echo cancellation:" in line for line in reader.seen), reader.seen
    else:
        assert len(questions) > 1, reader.seen  # it took its own voice for the user


def test_sound_server_dying_and_returning_is_one_line_each_way_and_the_conversation_goes_on(pulse_env, tmp_path):
    """The realistic "device vanished": the sound server dies under open streams (a crash, a USB
    headset yanked), then comes back. One line each way, no native-library noise on the terminal,
    and the next question is answered through the reopened devices."""
    question = say("What is the capital of France?", tmp_path / "q.wav", 16000)
    with assistant(pulse_env, "--transcript", str(tmp_path / "t.jsonl"), "--max-reply-tokens", "40",
                   "--server-log", str(tmp_path / "server.log")) as (program, reader):  # fmt: skip
        reader.wait_for("listening", 90)
        STARTED["pulse"].kill()
        STARTED["pulse"].wait(timeout=5)
        killed_t = time.monotonic()
        reader.wait_for("audio output device stopped", 10)
        reader.wait_for("audio input device stopped", 10)
        assert time.monotonic() - killed_t < 5.0
        STARTED["pulse"] = start_pulse(pulse_env)
        use_null_sinks(pulse_env)
        back_t = time.monotonic()
        reader.wait_for("device is back", 15)
        reader.wait_for("device is back", 15)
        assert time.monotonic() - back_t < 10.0
        subprocess.run(["paplay", "--device=micbus", str(question)], env=pulse_env, check=True, timeout=30)
        assert "capital" in reader.wait_for("You:", 30).lower()
        reader.wait_for("Assistant:", 60)
        assert stop(program) == 0
    noise = [line for line in reader.seen if "pa_linux_alsa.c" in line or line.startswith("ALSA lib")]
    assert not noise, noise  # native messages go to the state dir's native-stderr.log
    stopped = [line for line in reader.seen if "device stopped" in line]
    assert len(stopped) == 2, stopped  # one line per device, not one per retry
    assert "capital" in (tmp_path / "t.jsonl").read_text().lower()
