#!/usr/bin/env python3
"""Echo benchmark: a scripted conversation through a simulated room where the microphone hears the speaker.

File mode with `--simulate-echo` (default 60 ms delay, 0 dB: the echo is as loud as the user),
run twice on the same input: with echo cancellation and the self-speech guards (the defaults), and
with both off (`--no-aec --no-echo-guards`), which must show the assistant answering itself, so
the benchmark is known to bite. From the files it measures:

- self-triggered turns: turns whose speech does not end at one of the scripted questions;
- barge-ins honoured: questions asked while the assistant speaks that stopped it;
- echo reduction: microphone energy before and after cancellation (`--record-mic`) where only
  echo is present (the assistant sounding, the user silent), after the first 3 s of echo;
- CPU cost of the echo path per second of audio (the canceller's own account).

Usage: .venv/bin/python scripts/bench_echo.py [--questions 6] [--out bench_out/echo]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile

from benchlib import ROOT, report_targets  # noqa: E402  (also sets the import paths)

from speech import say  # noqa: E402

from voice_assistant.metrics import read_metrics  # noqa: E402

QUESTIONS = [
    "What is the capital of France?", "How many legs does a spider have?", "What colour is the sky?",
    "Where do penguins live?", "What do bees make?", "Which planet is the largest?", "Name a big animal.",
    "What is the opposite of hot?",
]  # fmt: skip
BARGE_INS = ["Stop. Tell me about the moon instead.", "Wait. What is two plus two?"]
RATE = 16000


def build_input(count: int, work: Path):
    """Questions with long gaps; after two of them a second question cuts into the answer."""
    pieces, cursor, spans = [np.zeros(RATE, dtype=np.float32)], RATE, []

    def add(text: str, kind: str, gap_s: float) -> None:
        nonlocal cursor
        clip = soundfile.read(str(say(text, work / "u.wav", RATE)), dtype="float32")[0]
        voiced = np.nonzero(np.abs(clip) > 0.01)[0]
        spans.append({"text": text, "kind": kind, "start": (cursor + voiced[0]) / RATE, "end": (cursor + voiced[-1]) / RATE})
        pieces.extend([clip, np.zeros(int(gap_s * RATE), dtype=np.float32)])
        cursor += len(clip) + int(gap_s * RATE)

    barge = iter(BARGE_INS)
    for i in range(count):
        if i in (1, 3):
            add(QUESTIONS[i % len(QUESTIONS)], "question", 2.6)
            add(next(barge), "barge-in", 9.0)
        else:
            add(QUESTIONS[i % len(QUESTIONS)], "question", 9.0)
    path = work / "in.wav"
    soundfile.write(str(path), np.concatenate(pieces), RATE, subtype="PCM_16")
    return path, spans


def run(name: str, in_wav: Path, work: Path, extra: list[str]) -> dict:
    metrics_path, mic_path = work / f"{name}_metrics.json", work / f"{name}_mic.wav"
    metrics_path.unlink(missing_ok=True)  # the program appends: a last run's turns would be counted too
    command = [
        sys.executable, str(ROOT / "asr_llm_tts.py"), "--input-wav", str(in_wav), "--output-wav",
        str(work / f"{name}_out.wav"), "--metrics-json", str(metrics_path), "--simulate-echo",
        "--record-mic", str(mic_path), "--max-reply-tokens", "60", "--server-log", str(work / "server.log"),
        "--system-prompt", "You are a friendly voice assistant. Answer in two or three full sentences.", *extra,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    (work / f"{name}.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"{name}: the program failed; see {work / (name + '.log')}")
    return {"metrics": read_metrics(metrics_path), "mic": mic_path, "out": work / f"{name}_out.wav"}


def analyse(run_result: dict, spans: list[dict], in_audio: np.ndarray) -> dict:
    metrics = run_result["metrics"]
    turns = metrics["turns"]
    scripted_ends = [s["end"] for s in spans]
    self_triggered = [
        t for t in turns if not any(-0.3 <= t["speech_end_s"] - end <= 1.5 for end in scripted_ends)
    ]
    decisions = [b["decision_t_s"] for b in metrics["barge_ins"]]
    out, out_rate = soundfile.read(str(run_result["out"]), dtype="float32")
    opportunities = honoured = 0
    for span in spans:
        if span["kind"] != "barge-in":
            continue
        window = out[int((span["start"] - 0.5) * out_rate) : int(span["start"] * out_rate)]
        if not np.any(np.abs(window) > 0.01):
            continue  # the answer was not playing: nothing to interrupt
        opportunities += 1
        honoured += any(span["start"] <= d <= span["end"] + 0.3 for d in decisions)
    mic, _ = soundfile.read(str(run_result["mic"]), dtype="float32")
    raw, clean = mic[:, 0], mic[:, 1]
    n = min(len(raw), len(in_audio))
    frame = 320  # 20 ms
    frames = n // frame
    user_rms = np.sqrt(np.mean(in_audio[: frames * frame].reshape(frames, frame) ** 2, axis=1))
    raw_rms = np.sqrt(np.mean(raw[: frames * frame].reshape(frames, frame) ** 2, axis=1))
    clean_f = clean[: frames * frame].reshape(frames, frame)
    user_quiet = np.convolve(user_rms > 0.003, np.ones(25), mode="same") == 0  # no user speech within 250 ms
    echo_frames = np.nonzero(user_quiet & (raw_rms > 10 ** (-45 / 20)))[0]
    after_3s = echo_frames[int(3.0 / 0.02) :] if len(echo_frames) > 150 else echo_frames[:0]
    erle = None
    if len(after_3s):
        raw_e = float(np.sum(raw_rms[after_3s] ** 2))
        clean_e = float(np.sum(np.mean(clean_f[after_3s] ** 2, axis=1))) + 1e-12
        erle = round(10 * np.log10(raw_e / clean_e), 1)
    echo = metrics.get("summary", {}).get("echo", {})
    return {
        "turns": len(turns),
        "self_triggered_turns": len(self_triggered),
        "self_triggered_texts": [t["user"] for t in self_triggered],
        "barge_in_opportunities": opportunities,
        "barge_ins_honoured": honoured,
        "echo_reduction_db_after_3s": erle,
        "echo_seconds_measured": round(len(after_3s) * 0.02, 1),
        "aec_cpu_ms_per_audio_s": echo.get("cpu_ms_per_audio_s"),
        "aec_self_reported_erle_db": echo.get("erle_db"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=6)
    parser.add_argument("--out", type=Path, default=ROOT / "bench_out" / "echo")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    in_wav, spans = build_input(args.questions, args.out)
    in_audio = soundfile.read(str(in_wav), dtype="float32")[0]
    print(f"input: {len(spans)} utterances ({sum(s['kind'] == 'barge-in' for s in spans)} barge-ins), echo at 0 dB, 60 ms")
    results = {}
    for name, extra in (("protected", []), ("unprotected", ["--no-aec", "--no-echo-guards"])):
        print(f"running {name} ({' '.join(extra) or 'defaults'})", flush=True)
        results[name] = analyse(run(name, in_wav, args.out, extra), spans, in_audio)
    (args.out / "result.json").write_text(json.dumps({"spans": spans, **results}, indent=1))
    for name, r in results.items():
        print(f"{name}:")
        for key, value in r.items():
            print(f"  {key:<30} {value}")
    p, u = results["protected"], results["unprotected"]
    checks = [
        ("protected: 0 self-triggered turns", p["self_triggered_turns"] == 0),
        ("protected: every barge-in honoured", p["barge_ins_honoured"] == p["barge_in_opportunities"] > 0),
        ("protected: echo reduction >= 25 dB after 3 s", (p["echo_reduction_db_after_3s"] or 0) >= 25),
        ("unprotected run shows the loop (the benchmark bites)", u["self_triggered_turns"] > 0),
    ]
    return report_targets(checks, f"{args.out / 'result.json'}")


if __name__ == "__main__":
    sys.exit(main())
