#!/usr/bin/env python3
"""Barge-in benchmark: many interruptions through file mode with the real models, measured from the WAVs.

It builds an input WAV in which a user asks for long answers and cuts each answer off with the
next question a few seconds after asking, plus short noise bursts (coughs) that must NOT interrupt.
It runs `asr_llm_tts.py` in file mode with the bundled models and a real llama-server, then
measures from IN and OUT alone:

- onset-to-silence: onset of the interrupting speech in IN to the last non-silent sample of the
  old reply in OUT;
- decision-to-silence: the program's barge-in decision time (from --metrics-json) to that sample;
- missed barge-ins (old audio still playing 1 s after the onset), stale audio (old audio that
  starts again after having stopped), and coughs that interrupted.

Usage: .venv/bin/python scripts/bench_barge_in.py [--interruptions 22] [--out bench_out/barge_in]
Prints p50/p95 and the targets; writes a JSON result. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import soundfile

from benchlib import ROOT, report_targets  # noqa: E402  (also sets the import paths)

from speech import say  # noqa: E402  (tests/speech.py: espeak-ng utterances)

from voice_assistant.metrics import read_metrics  # noqa: E402

RATE_HZ = 16000
SILENCE_THRESHOLD = 0.01
TOPICS = [
    "dragons", "the ocean", "the moon", "trains", "volcanoes", "bees", "castles", "the desert",
    "rain forests", "pirates", "robots", "the arctic", "mountains", "rivers", "deserts at night",
    "old libraries", "lighthouses", "comets", "gardens", "submarines", "windmills", "glaciers",
    "owls", "bridges", "the stars", "islands",
]  # fmt: skip
SYSTEM_PROMPT = (
    "You are a storyteller. Whatever the user asks, answer with a long, detailed story of at least ten "
    "sentences. Never answer briefly."
)


def build_input(count: int, gap_s: float, work: Path):
    """IN with `count` interruptions and two coughs; returns (path, utterance spans, cough spans)."""
    pieces = [np.zeros(int(0.8 * RATE_HZ), dtype=np.float32)]
    cursor = len(pieces[0])
    spans, coughs = [], []
    rng = np.random.default_rng(7)
    for i in range(count + 1):
        text = f"Tell me a story about {TOPICS[i % len(TOPICS)]}." if i == 0 else (
            f"Stop. Tell me about {TOPICS[i % len(TOPICS)]} instead.")  # fmt: skip
        clip, rate = soundfile.read(str(say(text, work / "u.wav", RATE_HZ)), dtype="float32")
        voiced = np.nonzero(np.abs(clip) > SILENCE_THRESHOLD)[0]
        spans.append(((cursor + voiced[0]) / RATE_HZ, (cursor + voiced[-1]) / RATE_HZ))
        pieces.append(clip)
        cursor += len(clip)
        if i in (count // 2, count):  # a 120 ms cough while the answer plays: must not interrupt
            pre = np.zeros(int(2.6 * RATE_HZ), dtype=np.float32)
            burst = (rng.standard_normal(int(0.12 * RATE_HZ)) * 0.3).astype(np.float32)
            coughs.append(((cursor + len(pre)) / RATE_HZ, (cursor + len(pre) + len(burst)) / RATE_HZ))
            pieces += [pre, burst]
            cursor += len(pre) + len(burst)
            rest = np.zeros(int(max(gap_s - 2.72, 0.5) * RATE_HZ + 3 * RATE_HZ), dtype=np.float32)
        else:
            rest = np.zeros(int(gap_s * RATE_HZ), dtype=np.float32)
        pieces.append(rest)
        cursor += len(rest)
    path = work / "in.wav"
    soundfile.write(str(path), np.concatenate(pieces), RATE_HZ, subtype="PCM_16")
    return path, spans, coughs


def last_sound(out: np.ndarray, rate: int, start_s: float, end_s: float) -> float | None:
    window = out[int(start_s * rate) : int(end_s * rate)]
    loud = np.nonzero(np.abs(window) > SILENCE_THRESHOLD)[0]
    return None if len(loud) == 0 else start_s + loud[-1] / rate


def sounding(out: np.ndarray, rate: int, start_s: float, end_s: float) -> bool:
    window = out[int(start_s * rate) : int(end_s * rate)]
    return bool(len(window)) and bool(np.any(np.abs(window) > SILENCE_THRESHOLD))


def percentile(values, q):
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interruptions", type=int, default=30)
    parser.add_argument("--gap-s", type=float, default=3.0, help="question end to next question start")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_out" / "barge_in")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    in_wav, spans, coughs = build_input(args.interruptions, args.gap_s, args.out)
    out_wav, metrics_path = args.out / "out.wav", args.out / "metrics.json"
    command = [
        sys.executable, str(ROOT / "asr_llm_tts.py"), "--input-wav", str(in_wav), "--output-wav", str(out_wav),
        "--metrics-json", str(metrics_path), "--system-prompt", SYSTEM_PROMPT, "--max-reply-tokens", "160",
        "--server-log", str(args.out / "server.log"),
    ]  # fmt: skip
    print(f"input: {in_wav} ({spans[-1][1]:.0f} s, {args.interruptions} interruptions, {len(coughs)} coughs)")
    started = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True)
    (args.out / "program.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        print(f"the program failed (exit {result.returncode}); see {args.out / 'program.log'}")
        return 1
    print(f"ran in {time.monotonic() - started:.0f} s")

    out, rate = soundfile.read(str(out_wav), dtype="float32")
    metrics = read_metrics(metrics_path)
    decisions = [b["decision_t_s"] for b in metrics["barge_ins"]]

    rows, missed, stale, not_speaking = [], 0, 0, 0
    for index in range(1, len(spans)):
        onset, end = spans[index]
        window_end = end + 0.3  # the new answer cannot start before the user stops speaking
        stop = last_sound(out, rate, onset, window_end) or onset
        decision = next((d for d in decisions if onset <= d <= window_end), None)
        # An opportunity: an answer was sounding at the onset and had not simply finished by itself.
        previous = [t for t in metrics["turns"] if t["first_audio_s"] and t["first_audio_s"] < onset]
        finished_alone = bool(previous) and previous[-1]["end_reason"] == "finished" and decision is None
        if not sounding(out, rate, onset - 0.6, onset) or (finished_alone and stop - onset < 1.0):
            not_speaking += 1
            continue
        if decision is None or stop - onset > 1.0:
            missed += 1
        elif stop > decision + 0.1:
            stale += 1  # old audio more than 100 ms after the decision
        rows.append({
            "onset_s": round(onset, 3),
            "onset_to_silence_ms": round((stop - onset) * 1000, 1),
            "decision_to_silence_ms": round((stop - decision) * 1000, 1) if decision else None,
            "detect_ms": round((decision - onset) * 1000, 1) if decision else None,
        })  # fmt: skip

    cough_interrupts = 0
    for start, end in coughs:
        if any(start <= d <= end + 0.5 for d in decisions):
            cough_interrupts += 1

    onset_ms = [r["onset_to_silence_ms"] for r in rows]
    decision_ms = [max(0.0, r["decision_to_silence_ms"]) for r in rows if r["decision_to_silence_ms"] is not None]
    detect_ms = [r["detect_ms"] for r in rows if r["detect_ms"] is not None]
    internal_stop = [b["barge_in_stop_ms"] for b in metrics["barge_ins"]]
    summary = {
        "interruptions_while_speaking": len(rows),
        "interruptions_with_no_speech_playing": not_speaking,
        "missed": missed,
        "stale_audio_events": stale,
        "cough_interruptions": cough_interrupts,
        "onset_to_silence_ms": {"p50": percentile(onset_ms, 50), "p95": percentile(onset_ms, 95)},
        "decision_to_silence_ms_wav": {"p50": percentile(decision_ms, 50), "p95": percentile(decision_ms, 95)},
        "decision_to_silence_ms_internal": {"p50": percentile(internal_stop, 50), "p95": percentile(internal_stop, 95)},
        "detect_ms": {"p50": percentile(detect_ms, 50), "p95": percentile(detect_ms, 95)},
        "words_kept_mean": float(np.mean([b["words_kept"] for b in metrics["barge_ins"]] or [0])),
    }
    (args.out / "result.json").write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))

    targets = [
        ("p95 onset-to-silence <= 350 ms", summary["onset_to_silence_ms"]["p95"] <= 350),
        ("p95 decision-to-silence <= 40 ms", summary["decision_to_silence_ms_wav"]["p95"] <= 40),
        ("zero stale audio", stale == 0),
        ("zero missed barge-ins", summary["missed"] == 0),
        ("coughs do not interrupt", cough_interrupts == 0),
    ]
    print(f"barge-ins measured: {len(rows)} (skipped {not_speaking} where no answer was playing)")
    for name in ("onset_to_silence_ms", "decision_to_silence_ms_wav", "decision_to_silence_ms_internal", "detect_ms"):
        print(f"  {name:<32} p50 {summary[name]['p50']:7.1f}   p95 {summary[name]['p95']:7.1f}")
    print(f"  missed {summary['missed']}, stale audio {stale}, cough interruptions {cough_interrupts}, "
          f"words kept per interruption {summary['words_kept_mean']:.1f}")  # fmt: skip
    return report_targets(targets, f"{args.out / 'result.json'}")


if __name__ == "__main__":
    sys.exit(main())
