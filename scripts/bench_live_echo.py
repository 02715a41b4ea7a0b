#!/usr/bin/env python3
"""Live echo benchmark: a laptop without headphones, through the real audio path.

A private PulseAudio (tests/pulse.py) with the speaker fed back into the microphone at 0 dB with
60 ms delay (`module-loopback`). The program runs live with its default settings and a prompt
that asks for replies of two or three sentences. The script asks N spoken questions (espeak-ng)
into the microphone; every third one is asked while the assistant is speaking (a barge-in), the
others once it has been quiet for 2.5 s. It records the speaker from outside (`parec` on
`spk.monitor`) and knows from that recording whether, and when, the assistant spoke.

Reported:
- self-triggered turns: turns whose text is the assistant's own words (target 0);
- hallucinated turns: turns that match neither a question nor a reply ("Thank you.") (target 0);
- barge-ins honoured: talk-over questions after which the speaker went quiet within 1.5 s (target all),
  with onset-to-silence times measured on the speaker recording;
- questions answered: questions whose words are in a turn that got a reply.

Writes bench_out/live_echo/result.json (and the speaker recording, the transcript and the program's log).

Usage: .venv/bin/python scripts/bench_live_echo.py [--questions 20]
"""

from __future__ import annotations

import argparse
import json
import re
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


def run(count: int, work: Path, extra_flags: list[str]) -> dict:
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
        transcript.unlink(missing_ok=True)
        log_path = work / "program.log"
        with open(log_path, "w") as log_file:
            program = subprocess.Popen(
                [sys.executable, str(ROOT / "asr_llm_tts.py"), "--system-prompt", PROMPT, "--max-reply-tokens", "80",
                 "--transcript", str(transcript), "--server-log", str(work / "server.log"), *extra_flags],
                stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
            )  # fmt: skip
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
    return analyse(asked, transcript, meter, exit_code, log_path.read_text())


def analyse(asked: list[dict], transcript: Path, meter: SpeakerMeter, exit_code: int, log_text: str) -> dict:
    turns = [json.loads(line) for line in transcript.read_text().splitlines()] if transcript.exists() else []
    replies = " ".join(t.get("assistant", "") for t in turns)
    answered, kinds = set(), []
    for turn in turns:
        heard = words(turn.get("user", ""))
        match = max(range(len(asked)), key=lambda i: len(heard & words(asked[i]["question"])), default=None)
        question_words = words(asked[match]["question"]) if match is not None else set()
        if match is not None and len(heard & question_words) >= max(1, len(question_words) // 2):
            kinds.append("question")
            answered.add(match)
        elif heard and len(heard & words(replies)) >= 0.6 * len(heard):
            kinds.append("self-triggered")
        else:
            kinds.append("hallucinated")
    barge_ins = []
    for item in asked:
        if item["talk_over"] and item["assistant_speaking"]:
            silence = meter.silence_after(item["onset_s"])
            item["onset_to_silence_ms"] = round((silence - item["onset_s"]) * 1000) if silence is not None else None
            barge_ins.append(item["onset_to_silence_ms"])
    honoured = [ms for ms in barge_ins if ms is not None and ms <= 1500]
    return {
        "exit_code": exit_code,
        "questions": len(asked),
        "talked_over": len(barge_ins),
        "barge_ins_honoured": len(honoured),
        "onset_to_silence_ms": sorted(ms for ms in barge_ins if ms is not None),
        "questions_answered": len(answered),
        "turns": len(turns),
        "self_triggered_turns": kinds.count("self-triggered"),
        "hallucinated_turns": kinds.count("hallucinated"),
        "odd_turns": [t["user"] for t, k in zip(turns, kinds) if k != "question"],
        "missed_questions": [a["question"] for i, a in enumerate(asked) if i not in answered],
        "tracebacks": log_text.count("Traceback"),
        "asked": asked,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "bench_out" / "live_echo")
    parser.add_argument("flags", nargs="*", help="extra flags for the program (after --)")
    args = parser.parse_args()
    result = run(args.questions, args.out, args.flags)
    path = args.out / "result.json"
    path.write_text(json.dumps(result, indent=1))
    for key, value in result.items():
        if key != "asked":
            print(f"{key:<22} {value}")
    return report_targets([
        ("0 self-triggered turns", result["self_triggered_turns"] == 0),
        ("0 hallucinated turns", result["hallucinated_turns"] == 0),
        ("every talk-over honoured (speaker silent within 1.5 s)", result["barge_ins_honoured"] == result["talked_over"]),
        ("every question answered", result["questions_answered"] == result["questions"]),
    ], str(path))  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
