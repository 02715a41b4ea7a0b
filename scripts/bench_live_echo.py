#!/usr/bin/env python3
"""Live echo benchmark: a laptop without headphones, through the real audio path.

A private PulseAudio (tests/pulse.py) with the speaker fed back into the microphone at 0 dB with
60 ms delay (`module-loopback`). The program runs live with its default settings and a prompt
that asks for replies of two or three sentences. The script asks N spoken questions (espeak-ng)
into the microphone; every third one is asked while the assistant is speaking (a barge-in), the
others once it has been quiet for 2.5 s. It records the speaker from outside (`parec` on
`spk.monitor`) and knows from that recording whether, and when, the assistant spoke.

Each turn is placed on the microphone's timeline (its end of speech from --metrics-json; the
questions located in the --record-mic recording by cross-correlation). Reported:
- self-triggered turns: turns whose speech ended while no question was being asked: the assistant
  heard itself (target 0);
- hallucinated turns: a second turn within one question with none of its words (target 0);
- barge-ins honoured: talk-over questions after which the speaker went quiet within 1.5 s (target
  all), with onset-to-silence times measured on the speaker recording;
- per question: answered (half its words or more heard), asked again (an unclear talk-over), or
  misheard and answered anyway (the recogniser's error: issue 10).

Writes bench_out/live_echo/result.json (and the speaker recording, the transcript and the program's log).

Usage: .venv/bin/python scripts/bench_live_echo.py [--questions 20]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import soundfile

from benchlib import ROOT, report_targets  # noqa: E402  (also sets the import paths)

from pulse import couple_speaker_into_microphone, pulse_env, start_pulse, use_null_sinks  # noqa: E402
from speech import say  # noqa: E402

QUESTIONS = [
    "What is the capital of France?", "Tell me about the moon.", "Why is the sky blue?",
    "How do airplanes fly?", "What is the tallest mountain in the world?", "Tell me about elephants.",
    "What is the largest ocean?", "How does a rainbow form?", "Who wrote Romeo and Juliet?",
    "Tell me about the planet Mars.", "What do bees make?", "How do plants grow?",
    "What is the capital of Japan?", "Tell me about volcanoes.", "Why do cats purr?",
    "How far away is the sun?", "What is the speed of light?", "Tell me about the Roman Empire.",
    "What is the biggest animal?", "How do fish breathe?", "What is the capital of Italy?",
    "Tell me about the ocean.", "What is a black hole?", "How many legs does a spider have?",
]  # fmt: skip
PROMPT = "You are a friendly voice assistant. Answer every question in two or three full sentences."
RATE = 16000
BLOCK = 512  # 32 ms


def words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z']+", text.lower()) if len(w) > 2}


class SpeakerMeter:
    """`parec` on spk.monitor: the whole recording, and whether the assistant is speaking right now."""

    def __init__(self, env: dict, path: Path) -> None:
        self.path = path
        self.blocks: list[np.ndarray] = []
        self.t0 = time.monotonic()
        self._process = subprocess.Popen(
            ["parec", "--device=spk.monitor", "--format=s16le", f"--rate={RATE}", "--channels=1", "--latency-msec=20"],
            stdout=subprocess.PIPE, env=env,
        )  # fmt: skip
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            data = self._process.stdout.read(BLOCK * 2)
            if len(data) < BLOCK * 2:
                return
            self.blocks.append(np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0)

    def now_s(self) -> float:
        """The recording's clock: seconds of audio captured so far."""
        return len(self.blocks) * BLOCK / RATE

    def loud_since(self, seconds: float) -> float:
        """How many of the last `seconds` held the assistant's voice (fraction)."""
        n = max(1, int(seconds * RATE / BLOCK))
        recent = self.blocks[-n:]
        return sum(float(np.sqrt(np.mean(b * b))) > 0.01 for b in recent) / n if recent else 0.0

    def spoke_since(self, start_s: float) -> bool:
        """The assistant's voice was heard after `start_s` (recording clock)."""
        first = int(start_s * RATE / BLOCK)
        return any(float(np.sqrt(np.mean(b * b))) > 0.01 for b in self.blocks[first:])

    def quiet_for(self) -> float:
        """Seconds since the assistant's voice was last heard."""
        for k, block in enumerate(reversed(self.blocks)):
            if float(np.sqrt(np.mean(block * block))) > 0.01:
                return k * BLOCK / RATE
        return len(self.blocks) * BLOCK / RATE

    def silence_after(self, start_s: float, hold_s: float = 0.3) -> float | None:
        """The first moment after `start_s` from which the speaker stays silent for `hold_s`."""
        audio = np.concatenate(self.blocks) if self.blocks else np.zeros(0, dtype=np.float32)
        rms = np.sqrt(np.mean(audio[: len(audio) // BLOCK * BLOCK].reshape(-1, BLOCK) ** 2, axis=1))
        loud = rms > 0.01
        first, need = int(start_s * RATE / BLOCK), max(1, int(hold_s * RATE / BLOCK))
        for k in range(first, len(loud) - need):
            if not loud[k : k + need].any():
                return k * BLOCK / RATE
        return None

    def close(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=5)
        self._thread.join(timeout=5)
        if self.blocks:
            soundfile.write(str(self.path), np.concatenate(self.blocks), RATE, subtype="PCM_16")


def wait(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


class Terminal:
    """The program in a tmux session (a real 120 x 30 terminal, so the live view is on); its screen
    output is also appended to program.log. `send_signal()` and `wait()` like a Popen."""

    def __init__(self, command: list[str], env: dict, work: Path) -> None:
        self.name = f"bench{os.getpid()}"
        self.pid_file, self.status_file = work / "program.pid", work / "program.status"
        for stale in (self.pid_file, self.status_file):
            stale.unlink(missing_ok=True)
        variables = [f"{k}={env[k]}" for k in env if k.startswith("PULSE_")]
        shell = (f"echo $$ > {self.pid_file}; exec env {' '.join(variables)} {' '.join(map(shlex.quote, command))}")
        wrapper = f"sh -c {shlex.quote(shell)}; echo $? > {self.status_file}; sleep 30"
        subprocess.run(["tmux", "new-session", "-d", "-s", self.name, "-x", "120", "-y", "30", wrapper], check=True,
                       cwd=ROOT)  # fmt: skip
        subprocess.run(["tmux", "pipe-pane", "-o", "-t", self.name, f"cat >> {work / 'program.log'}"], check=True)
        wait(self.pid_file.exists, 10)
        self.pid = int(self.pid_file.read_text())

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait(self, timeout: float) -> int:
        if not wait(self.status_file.exists, timeout):
            raise subprocess.TimeoutExpired("tmux", timeout)
        status = int(self.status_file.read_text())
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)
        return status


def run(count: int, work: Path, extra_flags: list[str], terminal: bool = False) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(count)]
    clips = [say(q, work / f"q{i}.wav", RATE) for i, q in enumerate(questions)]
    runtime = Path(tempfile.mkdtemp(prefix="pulse-"))
    env = pulse_env(runtime)
    daemon = start_pulse(env)
    try:
        use_null_sinks(env)
        couple_speaker_into_microphone(env, latency_ms=60)
        transcript = work / "transcript.jsonl"
        for stale in (transcript, work / "metrics.jsonl"):
            stale.unlink(missing_ok=True)
        log_path = work / "program.log"
        command = [sys.executable, str(ROOT / "asr_llm_tts.py"), "--system-prompt", PROMPT, "--max-reply-tokens", "80",
                   "--transcript", str(transcript), "--server-log", str(work / "server.log"),
                   "--metrics-json", str(work / "metrics.jsonl"), "--record-mic", str(work / "mic.wav"), *extra_flags]
        with open(log_path, "w") as log_file:
            program = Terminal(command, env, work) if terminal else subprocess.Popen(
                command, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=ROOT)  # fmt: skip
            if not wait(lambda: "listening" in log_path.read_text(), 120):
                raise RuntimeError(f"the program did not start: {log_path.read_text()[-2000:]}")
            time.sleep(3.0)  # the own-voice enrollment finishes in the background
            meter = SpeakerMeter(env, work / "speaker.wav")
            asked: list[dict] = []
            for i, clip in enumerate(clips):
                talk_over = i % 3 == 2
                if talk_over:  # well into a reply: it has spoken for the last 1.5 s
                    speaking = wait(lambda: meter.loud_since(1.5) > 0.6, 25)
                else:  # the previous question's reply has begun and ended
                    speaking = False
                    if asked:
                        wait(lambda: meter.spoke_since(asked_end_s), 20)
                    wait(lambda: meter.quiet_for() > 2.5, 30)
                onset_s = meter.now_s()
                subprocess.run(["paplay", "--device=micbus", str(clip)], env=env, check=True, timeout=30)
                asked_end_s = meter.now_s()
                asked.append({"question": questions[i], "talk_over": talk_over, "assistant_speaking": speaking,
                              "onset_s": round(onset_s, 2)})  # fmt: skip
            wait(lambda: meter.spoke_since(asked_end_s), 20)  # the last reply begins
            wait(lambda: meter.quiet_for() > 4.0, 40)
            program.send_signal(signal.SIGTERM)
            exit_code = program.wait(timeout=30)
            meter.close()
    finally:
        daemon.terminate()
        daemon.wait(timeout=5)
    return analyse(asked, work, meter, exit_code, log_path.read_text())


def percentiles(values: list[float]) -> list[float] | None:
    return [round(float(np.percentile(values, q))) for q in (50, 95)] if values else None


def locate(raw: np.ndarray, clip: np.ndarray) -> tuple[float, float]:
    """Where `clip` (a question) starts and ends in the microphone recording, in seconds (FFT cross-correlation)."""
    n = len(raw) + len(clip)
    nfft = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(raw, nfft) * np.conj(np.fft.rfft(clip, nfft)), nfft)[: len(raw)]
    start = int(np.argmax(corr))
    voiced = np.nonzero(np.abs(clip) > 0.01)[0]
    return (start + voiced[0]) / RATE, (start + voiced[-1]) / RATE


def analyse(asked: list[dict], work: Path, meter: SpeakerMeter, exit_code: int, log_text: str) -> dict:
    """Each turn is put on the microphone's timeline (`speech_end_s` from --metrics-json, the
    questions located in --record-mic's raw channel): a turn whose speech ended while no question
    was being asked heard the assistant itself."""
    from asr_llm_tts import SAY_AGAIN_REPLY
    from voice_assistant.metrics import read_metrics

    raw = soundfile.read(str(work / "mic.wav"), dtype="float32")[0][:, 0]
    for i, item in enumerate(asked):
        clip = soundfile.read(str(work / f"q{i}.wav"), dtype="float32")[0]
        item["mic_start_s"], item["mic_end_s"] = (round(t, 2) for t in locate(raw, clip))
    metrics = read_metrics(work / "metrics.jsonl")
    turns = metrics["turns"]
    kinds: list[str] = []
    first_turn_of: dict[int, int] = {}
    for turn in turns:
        end = turn["speech_end_s"]
        window = [i for i, a in enumerate(asked) if a["mic_start_s"] - 0.3 <= end <= a["mic_end_s"] + 1.5]
        if not window:
            kinds.append("self-triggered")
            continue
        i = window[0]
        heard, question = words(turn["user"]), words(asked[i]["question"])
        if i in first_turn_of and not heard & question:
            kinds.append("hallucinated")  # a second turn in one question, with none of its words
            continue
        first_turn_of.setdefault(i, len(kinds))
        if turn["assistant_heard"].startswith(SAY_AGAIN_REPLY[:20]):
            kinds.append("asked again")
        elif len(heard & question) >= max(1, len(question) // 2):
            kinds.append("answered")
        else:
            kinds.append("misheard")
        asked[i].setdefault("turns", []).append(turn["user"])
    onset_to_silence = []
    for item in asked:
        if item["talk_over"] and item["assistant_speaking"]:
            silence = meter.silence_after(item["onset_s"])
            item["onset_to_silence_ms"] = round((silence - item["onset_s"]) * 1000) if silence is not None else None
            onset_to_silence.append(item["onset_to_silence_ms"])
    honoured = [ms for ms in onset_to_silence if ms is not None and ms <= 1500]
    talk_over_kinds = [kinds[first_turn_of[i]] for i, a in enumerate(asked) if a["talk_over"] and i in first_turn_of]
    return {
        "exit_code": exit_code,
        "questions": len(asked),
        "talked_over": len(onset_to_silence),
        "barge_ins_honoured": len(honoured),
        "onset_to_silence_ms": sorted(ms for ms in onset_to_silence if ms is not None),
        "turns": len(turns),
        "self_triggered_turns": kinds.count("self-triggered"),
        "hallucinated_turns": kinds.count("hallucinated"),
        "questions_with_a_turn": len(first_turn_of),
        "answered": kinds.count("answered"),
        "asked_again": kinds.count("asked again"),
        "misheard_answered": kinds.count("misheard"),
        "talked_over_outcomes": {k: talk_over_kinds.count(k) for k in sorted(set(talk_over_kinds))},
        "voice_to_voice_ms_p50_p95": percentiles([t["voice_to_voice_ms"] for t, k in zip(turns, kinds)
                                                  if k == "answered" and t["voice_to_voice_ms"] is not None]),
        "barge_in_decision_to_silence_ms_p50_p95": percentiles([b["barge_in_stop_ms"] for b in metrics["barge_ins"]]),
        "odd_turns": [f"{k}: {t['user']}" for t, k in zip(turns, kinds) if k not in ("answered",)],
        "tracebacks": log_text.count("Traceback"),
        "asked": asked,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--terminal", action="store_true", help="run the program in a real terminal (tmux): the live view on")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_out" / "live_echo")
    parser.add_argument("flags", nargs="*", help="extra flags for the program (after --)")
    args = parser.parse_args()
    result = run(args.questions, args.out, args.flags, args.terminal)
    path = args.out / "result.json"
    path.write_text(json.dumps(result, indent=1))
    for key, value in result.items():
        if key != "asked":
            print(f"{key:<22} {value}")
    return report_targets([
        ("0 self-triggered turns", result["self_triggered_turns"] == 0),
        ("0 hallucinated turns", result["hallucinated_turns"] == 0),
        ("every talk-over honoured (speaker silent within 1.5 s)", result["barge_ins_honoured"] == result["talked_over"]),
        ("every question heard (a turn for each)", result["questions_with_a_turn"] == result["questions"]),
    ], str(path))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
