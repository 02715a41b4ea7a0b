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
import shlex
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
    assert not any(symbol in line for line in reader.seen for symbol in "●◐◉■")  # not a terminal: plain lines


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
    else:  # it took its own voice for the user: a new question, or it cut its own reply off as a barge-in
        assert len(questions) > 1 or any(line.startswith("barge-in: turn") for line in reader.seen), reader.seen


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


# ---------------------------------------------------------------------- the console in a real terminal


class Terminal:
    """The program in a tmux session (a real terminal, 120 x 30) on the test's PulseAudio."""

    def __init__(self, env: dict, tmp_path: Path, *flags: str) -> None:
        self.env = env
        self.name = f"va{os.getpid()}"
        variables = [f"{k}={env[k]}" for k in ("PULSE_SERVER", "PULSE_RUNTIME_PATH", "PULSE_STATE_PATH",
                                               "PULSE_CONFIG_PATH")]  # fmt: skip
        status = tmp_path / "status"
        program = " ".join(shlex.quote(part) for part in ["env", *variables, sys.executable,
                                                           str(ROOT / "asr_llm_tts.py"), *flags])  # fmt: skip
        command = f"{program}; echo $? > {shlex.quote(str(status))}; sleep 60"
        self.status = status
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", "120", "-y", "30", command], check=True,
                       cwd=ROOT)  # fmt: skip
        self.screens: list[str] = []

    def screen(self) -> str:
        text = subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True).stdout
        self.screens.append(text)
        return text

    def wait_for(self, text: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.05)
        raise AssertionError(f"{text!r} never appeared; the screen: {self.screens[-1] if self.screens else ''}")

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def exit_status(self, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while not self.status.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        return int(self.status.read_text())

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


@pytest.fixture()
def terminal_for(pulse_env, tmp_path):
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed: scripts/setup.sh installs it")
    opened = []

    def open_terminal(*flags: str) -> Terminal:
        terminal = Terminal(pulse_env, tmp_path, "--server-log", str(tmp_path / "server.log"), *flags)
        opened.append(terminal)
        return terminal

    yield open_terminal
    for terminal in opened:
        terminal.close()


def test_the_live_view_shows_the_state_what_was_heard_and_the_reply(pulse_env, tmp_path, terminal_for):
    question = say("What is the capital of France?", tmp_path / "q.wav", 16000)
    terminal = terminal_for("--max-reply-tokens", "40")
    terminal.wait_for("● listening", 90)
    assert "mic " in terminal.screen() and "dBFS" in terminal.screen()
    time.sleep(2.0)  # the own-voice enrollment finishes in the background
    player = subprocess.Popen(["paplay", "--device=micbus", str(question)], env=pulse_env)
    states: set[str] = set()
    deadline = time.monotonic() + 60
    while "turn 1:" not in terminal.screens[-1] and time.monotonic() < deadline:
        screen = terminal.screen()
        states |= {state for state in ("hearing you", "thinking", "speaking", "listening") if state in screen}
        time.sleep(0.03)
    player.wait(timeout=10)
    screen = terminal.wait_for("turn 1:", 5)
    assert {"hearing you", "speaking"} <= states, states  # thinking may pass between two looks
    heard = [line for line in screen.splitlines() if line.startswith("You: ")]
    assert heard and "capital" in heard[0], screen  # tiny.en may hear "capital on France", "capital and friends"
    assert "Assistant: " in screen, screen
    terminal.keys("C-c")
    assert terminal.exit_status(10) == 0
    assert "● listening" not in terminal.screen()  # the live region is gone: the terminal is left clean


def test_typing_is_answered_with_voice_and_typing_during_a_reply_interrupts_it(pulse_env, tmp_path, terminal_for):
    recorder = subprocess.Popen(["parecord", "--device=spk.monitor", "--file-format=wav", str(tmp_path / "spk.wav")],
                                env=pulse_env)  # fmt: skip
    terminal = terminal_for("--max-reply-tokens", "80", "--system-prompt",
                            "You are a storyteller. Answer with a long story of at least five sentences.")  # fmt: skip
    try:
        terminal.wait_for("listening", 90)
        terminal.keys("Tell me a story about a dragon.")
        terminal.wait_for("> Tell me a story about a dragon.", 5)
        terminal.keys("Enter")
        terminal.wait_for("speaking", 30)
        time.sleep(1.0)
        terminal.keys("What is two plus two?", "Enter")
        screen = terminal.wait_for("turn 2:", 60)
    finally:
        terminal.keys("C-c")
        status = terminal.exit_status(10)
        recorder.terminate()
        recorder.wait(timeout=5)
    assert status == 0
    lines = screen.splitlines()
    assert any(line.startswith("You: Tell me a story about a dragon.") for line in lines), screen
    assert any(line.startswith("Assistant:") and "[interrupted]" in line for line in lines), screen
    assert any(line.startswith("You: What is two plus two?") for line in lines), screen
    audio, rate = soundfile.read(str(tmp_path / "spk.wav"), dtype="float32")
    audio = audio.mean(axis=1) if audio.ndim > 1 else audio
    spans = voiced_spans(audio, rate)
    # a second of the story, then the short answer ("Two plus two is four.", about 1.5 s)
    assert sum(end - start for start, end in spans) > 1.8, "the typed questions were not answered with voice"


def test_sound_check_through_pulseaudio(pulse_env, tmp_path):
    question = say("Testing, one, two, three. Can you hear me?", tmp_path / "q.wav", 16000)
    recorder = subprocess.Popen(["parecord", "--device=spk.monitor", "--file-format=wav", str(tmp_path / "spk.wav")],
                                env=pulse_env)  # fmt: skip
    program = subprocess.Popen([sys.executable, str(ROOT / "asr_llm_tts.py"), "--sound-check"], env=pulse_env,
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    time.sleep(1.0)
    subprocess.run(["paplay", "--device=micbus", str(question)], env=pulse_env, check=True, timeout=30)
    output, _ = program.communicate(timeout=30)
    recorder.terminate()
    recorder.wait(timeout=5)
    assert program.returncode == 0, output
    assert "input:" in output and "output:" in output and "verdict: ok" in output, output
    audio, rate = soundfile.read(str(tmp_path / "spk.wav"), dtype="float32")
    audio = audio.mean(axis=1) if audio.ndim > 1 else audio
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(np.argmax(spectrum) * rate / len(audio) - 660) < 5, "the test tone did not reach the speaker"
