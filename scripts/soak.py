#!/usr/bin/env python3
"""Soak test: one process, many turns with barge-ins, in file mode with the real models.

Builds an input WAV of N short questions, about a quarter of them asked while the previous answer
is still playing (barge-ins), runs `asr_llm_tts.py` on it (with --transcript, --metrics-json and
--record-mic), and samples the resident memory of the program and of its llama-server and the
program's thread count once a second. Prints turns, barge-ins, memory at start and end, threads
and file sizes, and checks that every finished turn is in the transcript and the metrics.
Writes bench_out/soak/result.json. 100 turns take about 8 minutes; 840 about an hour.

Usage: .venv/bin/python scripts/soak.py [--turns 100]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import psutil
import soundfile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from speech import say  # noqa: E402

from voice_assistant.metrics import read_metrics  # noqa: E402

# espeak says these well enough for tiny.en to hear them (average log-probability above -0.6); shorter
# ones ("Say a number.", "Name an animal.") are misheard and dropped as unsure words, which is not what this
# measures. Every fourth question cuts into the answer before it, so those before it ask for long answers.
PROMPTS = ["Please say yes.", "What colour is the sky?", "Can you say hello?", "Tell me a long story.",
           "Name a kind of fruit.", "What is two plus two?", "Please say goodbye.", "Describe the ocean for me."]  # fmt: skip


def build_input(turns: int, work: Path) -> Path:
    clips = {p: soundfile.read(str(say(p, work / "u.wav", 16000)), dtype="float32")[0] for p in PROMPTS}
    pieces = [np.zeros(16000, dtype=np.float32)]
    for i in range(turns):
        pieces.append(clips[PROMPTS[i % len(PROMPTS)]])
        gap_s = 1.6 if i % 4 == 3 else 3.6  # every fourth question cuts into the answer
        pieces.append(np.zeros(int(gap_s * 16000), dtype=np.float32))
    path = work / "in.wav"
    soundfile.write(str(path), np.concatenate(pieces), 16000, subtype="PCM_16")
    return path


def run_soak(turns: int, work: Path) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    in_wav = build_input(turns, work)
    transcript, metrics_path = work / "transcript.jsonl", work / "metrics.jsonl"
    for stale in (transcript, metrics_path):
        stale.unlink(missing_ok=True)
    command = [
        sys.executable, str(ROOT / "asr_llm_tts.py"), "--input-wav", str(in_wav), "--output-wav",
        str(work / "out.wav"), "--transcript", str(transcript), "--metrics-json", str(metrics_path),
        "--record-mic", str(work / "mic.wav"), "--max-reply-tokens", "12", "--server-log", str(work / "server.log"),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    samples: list[tuple[int, int, int]] = []  # program RSS, program threads, llama-server RSS
    done = threading.Event()

    def sample() -> None:
        proc = psutil.Process(process.pid)
        while not done.wait(1.0):
            try:
                servers = [c for c in proc.children() if "llama-server" in c.name()]
                server_rss = servers[0].memory_info().rss if servers else 0
                samples.append((proc.memory_info().rss, proc.num_threads(), server_rss))
            except psutil.Error:
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output = process.stdout.read()
    process.wait()
    done.set()
    sampler.join()
    (work / "program.log").write_text(output)
    metrics = read_metrics(metrics_path)
    lines = [json.loads(line) for line in transcript.read_text().splitlines()]
    # after warm-up (first quarter) to the end
    warm = samples[len(samples) // 4 : -3]  # from the end of the first quarter to just before shutdown
    rss_mb = [rss / 2**20 for rss, _, _ in warm]
    server_mb = [server / 2**20 for _, _, server in warm]
    threads = [n for _, n, _ in warm]
    tenth = max(1, len(rss_mb) // 10)
    return {
        "exit_code": process.returncode,
        "turns": len(metrics["turns"]),
        "barge_ins": len(metrics["barge_ins"]),
        "interrupted_turns": sum(t["interrupted"] for t in metrics["turns"]),
        "transcript_lines": len(lines),
        "transcript_matches_turns": [l["turn"] for l in lines] == [t["turn"] for t in metrics["turns"]],
        "program_rss_start_mb": round(samples[2][0] / 2**20, 1) if len(samples) > 2 else None,
        "max_history_exchanges": max(t["history_exchanges"] for t in metrics["turns"]),
        "rss_after_warmup_mb": round(float(np.median(rss_mb[:tenth])), 1),
        "rss_end_mb": round(float(np.median(rss_mb[-tenth:])), 1),
        "rss_growth_mb": round(float(np.median(rss_mb[-tenth:]) - np.median(rss_mb[:tenth])), 1),
        "rss_peak_mb": round(max(rss_mb), 1),
        "server_rss_after_warmup_mb": round(float(np.median(server_mb[:tenth])), 1),
        "server_rss_end_mb": round(float(np.median(server_mb[-tenth:])), 1),
        "threads_after_warmup": threads[0],
        "threads_max": max(threads),
        "threads_end": threads[-1],
        "tracebacks": output.count("Traceback"),
        "file_sizes_mb": {p.name: round(p.stat().st_size / 2**20, 2) for p in
                          (transcript, metrics_path, work / "mic.wav", work / "out.wav", work / "server.log")},
        "seconds": len(samples),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=100)
    parser.add_argument("--out", type=Path, default=ROOT / "bench_out" / "soak")
    args = parser.parse_args()
    result = run_soak(args.turns, args.out)
    (args.out / "result.json").write_text(json.dumps(result, indent=1))
    for key, value in result.items():
        print(f"{key:<26} {value}")
    return 0 if result["exit_code"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
