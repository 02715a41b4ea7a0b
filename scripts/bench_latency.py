#!/usr/bin/env python3
"""Latency benchmark: voice-to-voice and its parts, with the real bundled models, against a naive baseline.

For each of several multi-turn conversations (espeak-ng questions, so history and the prompt cache
are exercised) it runs `asr_llm_tts.py` in file mode and measures:

- voice-to-voice from the WAVs alone: end of each question's speech in IN to the first
  non-silent sample of the reply in OUT;
- from --metrics-json: end of speech to transcript, time to first token, TTS first chunk, tokens/s;
- cold start (launch to "listening", as the program reports it) and peak resident memory of the
  program and of the program plus its llama-server, sampled every 50 ms;
- Piper's real-time factor on the replies' text.

A conversation whose history is summarized every other turn (`--summarize-after-turns 2`) times
the turns that come right after a summary, with the prompt tokens the server had to read for them
(the summary changes the prompt's head; the new prompt is read into the cache in the background).

Then, in the same invocation and on the same question audio, the way most peers do it: the same
program with speculation off (`--speculate-after-ms 0`) and faster-whisper's own 30 s window
(`--asr-window-pad-s 30`), so RealtimeSTT's own end of turn and transcription start the reply,
which then streams through the LLM and TTS as usual. The ratio of its p50 to ours is printed
("speed-up over RealtimeSTT's end of turn").

Then a naive sequential pipeline with
the same models and thread budgets: wait for the same end-of-speech silence, transcribe the whole
utterance, generate the whole reply (no streaming), synthesize the whole reply, then play. The
ratio of the two p50s is printed, so a noisy machine still gives a fair comparison.

Writes bench_out/latency/result.json and latency.png: where the time goes (the median of each stage, for this
program and for RealtimeSTT's end of turn) and the voice-to-voice distributions.
Usage: .venv/bin/python scripts/bench_latency.py [--conversations 3] [--turns 5] [-- extra program flags]
Run it on a quiet machine: on 2 cores any other busy process changes the numbers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import soundfile

from benchlib import ROOT, report_targets  # noqa: E402  (also sets the import paths)

from speech import conversation  # noqa: E402

from voice_assistant.metrics import read_metrics  # noqa: E402

QUESTIONS = [
    "What is the capital of France?", "How many legs does a spider have?", "What colour is the sky?",
    "Name a big animal.", "What is two plus two?", "Where do penguins live?", "What do bees make?",
    "How many days are in a week?", "What is the opposite of hot?", "Which planet is the largest?",
    "What do you call a baby cat?", "What is water made of?", "Name a fruit that is yellow.",
    "How many hours are in a day?", "What is the tallest mountain?",
]  # fmt: skip
SILENCE = 0.01
GAP_S = 9.0
MAX_TOKENS = 32


def first_sound_after(out: np.ndarray, rate: int, t: float, limit_s: float) -> float | None:
    window = out[int(t * rate) : int((t + limit_s) * rate)]
    loud = np.nonzero(np.abs(window) > SILENCE)[0]
    return None if len(loud) == 0 else t + loud[0] / rate


class PeakMemory:
    """Samples the resident memory of a process and of its whole tree until stopped."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak_main = self.peak_tree = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                main = self.process.memory_info().rss
                tree = main + sum(c.memory_info().rss for c in self.process.children(recursive=True))
            except psutil.Error:
                continue
            self.peak_main, self.peak_tree = max(self.peak_main, main), max(self.peak_tree, tree)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_conversation(index: int, questions: list[str], work: Path, extra: list[str], gap_s: float = GAP_S) -> dict:
    parts: list = [1.0]
    for question in questions:
        parts += [question, gap_s]
    in_wav, spans = conversation(parts, work / f"conv{index}_in.wav")
    out_wav, metrics_path = work / f"conv{index}_out.wav", work / f"conv{index}_metrics.json"
    metrics_path.unlink(missing_ok=True)  # the program appends: a last run's turns would be counted too
    command = [
        sys.executable, str(ROOT / "asr_llm_tts.py"), "--input-wav", str(in_wav), "--output-wav", str(out_wav),
        "--metrics-json", str(metrics_path), "--max-reply-tokens", str(MAX_TOKENS),
        "--server-log", str(work / "server.log"), *extra,
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    memory = PeakMemory(process.pid)
    output = process.stdout.read()
    process.wait()
    memory.stop()
    (work / f"conv{index}.log").write_text(output)
    if process.returncode != 0:
        raise SystemExit(f"the program failed (exit {process.returncode}); see {work / f'conv{index}.log'}")
    cold = next(float(line.split("ready ")[1].split(" s")[0]) for line in output.splitlines() if "ready " in line)
    out, rate = soundfile.read(str(out_wav), dtype="float32")
    metrics = read_metrics(metrics_path)
    v2v = []
    for _, end in spans:
        start = first_sound_after(out, rate, end, gap_s)
        v2v.append(None if start is None else (start - end) * 1000.0)
    return {"spans": spans, "v2v_wav_ms": v2v, "metrics": metrics, "cold_start_s": cold,
            "peak_rss_mb": memory.peak_main / 2**20, "peak_rss_with_server_mb": memory.peak_tree / 2**20}  # fmt: skip


def after_summaries(run: dict) -> list[dict]:
    """The turns of `run` that came right after a summary (the history had shrunk since the turn
    before), with their voice-to-voice from the WAVs and the prompt tokens the server had to read."""
    turns, found = run["metrics"]["turns"], []
    for k in range(1, min(len(turns), len(run["v2v_wav_ms"]))):
        if turns[k]["history_exchanges"] <= turns[k - 1]["history_exchanges"]:
            llm = turns[k]["llm"] or {}
            found.append({"turn": k + 1, "v2v_wav_ms": run["v2v_wav_ms"][k],
                          "prompt_tokens_read": llm.get("server_prompt_tokens"),
                          "ttft_ms": llm.get("first_token_latency_total")})  # fmt: skip
    return found


def naive_baseline(all_questions: list[list[str]], work: Path, end_of_speech_s: float) -> tuple[list[float], list]:
    """Sequential pipeline on the same audio: transcript, whole reply, whole speech, then play."""
    from voice_assistant.config import DEFAULT_SYSTEM_PROMPT
    from speech import say
    from voice_assistant.asr import WhisperTranscriber, resolve_asr_model
    from voice_assistant.history import Exchange, History
    from voice_assistant.llama_server import LlamaServerProcess, ServerConfig
    from voice_assistant.llm_client import LlamaClient
    from voice_assistant.models import default_llama_server, default_llm_gguf, default_tts_model
    from voice_assistant.tts import PiperSynthesizer
    from voice_assistant.wavio import resample

    server = LlamaServerProcess(ServerConfig(default_llama_server(), default_llm_gguf(), log_path=work / "naive.log"))
    client = LlamaClient(server.start(), api_key=server.api_key)  # our child answers only its run's key
    transcriber = WhisperTranscriber.load(resolve_asr_model(None), threads=2)
    synth = PiperSynthesizer.load(default_tts_model(), threads=1)
    transcriber.warm_up()
    synth.warm_up()
    latencies, rtfs = [], []
    try:
        for questions in all_questions:
            history = History()
            for question in questions:
                audio, rate = soundfile.read(str(say(question, work / "naive_q.wav", 16000)), dtype="float32")
                start = time.monotonic()
                text = transcriber.transcribe_text(audio)
                prompt = client.apply_template(history.messages(DEFAULT_SYSTEM_PROMPT, text))
                reply = client.complete({"prompt": prompt, "n_predict": MAX_TOKENS, "cache_prompt": True})
                t_tts = time.monotonic()
                speech = synth.synthesize_all(reply.strip() or "Sorry.")
                done = time.monotonic()
                rtfs.append((done - t_tts) / max(len(speech) / synth.sample_rate_hz, 1e-3))
                history.add(Exchange(text, reply.strip(), False))
                latencies.append((end_of_speech_s + done - start) * 1000.0)
    finally:
        client.close()
        server.close()
    return latencies, rtfs


def pct(values, q):
    values = [v for v in values if v is not None]
    return round(float(np.percentile(values, q)), 1) if values else None


STAGES = [  # (label, timeline key where the stage ends, colour); each starts where the one before ended
    ("hearing the end + transcript", "transcript", "#7aa6d6"),
    ("prompt read, first token", "first_token", "#4a90d9"),
    ("first chunk of the reply", "first_sentence", "#2c6fb7"),
    ("Piper, first chunk", "first_audio_ready", "#f0ad4e"),
    ("held for the end of turn, playback", "first_audio_played", "#d9534f"),
]


def stage_medians(turns: list[dict]) -> list[float]:
    """Median length of each stage of STAGES over `turns`, in ms (stages that went backwards count 0)."""
    medians, previous = [], [0.0] * len(turns)
    for _, key, _ in STAGES:
        ends = [t["timeline_ms"].get(key) or prev for t, prev in zip(turns, previous)]
        medians.append(float(np.median([max(0.0, e - p) for e, p in zip(ends, previous)])) if turns else 0.0)
        previous = [max(e, p) for e, p in zip(ends, previous)]
    return medians


def charts(result: dict, turns: list[dict], peer_turns: list[dict], out_dir: Path) -> None:
    """latency.png: where the time goes (median stages, ours and the peers' way) and the distributions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    rows = [("this program", turns)] + ([("RealtimeSTT's end of turn", peer_turns)] if peer_turns else [])
    for y, (name, group) in enumerate(rows):
        left = 0.0
        for (label, _, colour), width in zip(STAGES, stage_medians(group)):
            ax1.barh(y, width, left=left, color=colour, label=label if y == 0 else None)
            if width >= 40:
                ax1.text(left + width / 2, y, f"{width:.0f}", ha="center", va="center", fontsize=8, color="white")
            left += width
        ax1.text(left + 10, y, f"{left:.0f} ms", va="center", fontsize=9)
    ax1.set_yticks(range(len(rows)), [name for name, _ in rows])
    ax1.invert_yaxis()
    ax1.set_xlabel("ms after the end of the user's speech (median of each stage, as the program timed it)")
    ax1.set_title("where the time goes")
    ax1.legend(loc="lower right", fontsize=7)
    series = [[v for v in result["streaming"]["v2v_wav_ms"] if v is not None]]
    labels = ["this program"]
    if "peer" in result:
        series.append([v for v in result["peer"]["v2v_ms"] if v is not None])
        labels.append("RealtimeSTT's end of turn")
    if "naive" in result:
        series.append(result["naive"]["v2v_ms"])
        labels.append("naive sequential")
    ax2.boxplot(series, tick_labels=labels)
    ax2.axhline(500, color="#d9534f", linestyle="--", linewidth=1, label="500 ms target (p50)")
    ax2.set_ylabel("voice-to-voice from the WAVs, ms")
    ax2.set_title("distribution")
    ax2.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(out_dir / "latency.png", dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, default=3)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench_out" / "latency")
    parser.add_argument("--skip-baseline", action="store_true", help="no naive sequential pipeline")
    parser.add_argument("--skip-peer", action="store_true", help="no run with RealtimeSTT's own end of turn")
    parser.add_argument("--summary-turns", type=int, default=9,
                        help="a conversation summarized every other turn, to time the turns after a summary (0: none)")
    parser.add_argument("program_flags", nargs="*", help="extra flags for asr_llm_tts.py (after --)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    sets = [[QUESTIONS[(c * args.turns + i) % len(QUESTIONS)] for i in range(args.turns)] for c in range(args.conversations)]

    runs = []
    for index, questions in enumerate(sets):
        print(f"conversation {index + 1}/{len(sets)}: {len(questions)} turns", flush=True)
        runs.append(run_conversation(index, questions, args.out, args.program_flags))
    turns = [t for run in runs for t in run["metrics"]["turns"]]
    v2v_wav = [v for run in runs for v in run["v2v_wav_ms"]]
    gen = [t["llm"]["generation_phase"]["tokens_per_s"] for t in turns if t["llm"]]
    streaming = {
        "turns": len(turns),
        "v2v_wav_ms": v2v_wav,
        "voice_to_voice_ms": {"p50": pct(v2v_wav, 50), "p95": pct(v2v_wav, 95)},
        "voice_to_voice_reported_ms": {"p50": pct([t["voice_to_voice_ms"] for t in turns], 50),
                                       "p95": pct([t["voice_to_voice_ms"] for t in turns], 95)},
        "asr_ms": {"p50": pct([t["asr_ms"] for t in turns], 50), "p95": pct([t["asr_ms"] for t in turns], 95)},
        "ttft_ms": {"p50": pct([t["llm"].get("first_token_latency_total") for t in turns], 50),
                    "p95": pct([t["llm"].get("first_token_latency_total") for t in turns], 95)},
        "tts_first_chunk_ms": {"p50": pct([t["tts_first_chunk_ms"] for t in turns], 50),
                               "p95": pct([t["tts_first_chunk_ms"] for t in turns], 95)},
        "tokens_per_s": {"p50": pct(gen, 50), "p95": pct(gen, 95)},
        "cold_start_s": max(run["cold_start_s"] for run in runs),
        "peak_rss_mb": round(max(run["peak_rss_mb"] for run in runs), 1),
        "peak_rss_with_server_mb": round(max(run["peak_rss_with_server_mb"] for run in runs), 1),
        "missing_replies": sum(v is None for v in v2v_wav),
    }  # fmt: skip
    result = {"streaming": streaming, "program_flags": args.program_flags}
    peer_turns: list[dict] = []
    if args.summary_turns:
        print(f"summaries: {args.summary_turns} turns, history summarized every other turn", flush=True)
        questions = [QUESTIONS[-1 - i % len(QUESTIONS)] for i in range(args.summary_turns)]
        summary_dir = args.out / "summary"
        summary_dir.mkdir(exist_ok=True)
        run = run_conversation(0, questions, summary_dir, [*args.program_flags, "--summarize-after-turns", "2",
                                                           "--keep-recent-turns", "1"], gap_s=12.0)  # fmt: skip
        found = after_summaries(run)
        slowest = max((t["v2v_wav_ms"] for t in found if t["v2v_wav_ms"] is not None), default=None)
        result["after_summary"] = {"turns": found, "slowest_v2v_ms": slowest}
    if not args.skip_peer:
        print("peers' way: RealtimeSTT's end of turn and transcription (30 s window), then streaming", flush=True)
        peer_dir = args.out / "peer"
        peer_dir.mkdir(exist_ok=True)
        peer_flags = [*args.program_flags, "--speculate-after-ms", "0", "--asr-window-pad-s", "30"]
        peer_runs = [run_conversation(i, q, peer_dir, peer_flags)
                     for i, q in enumerate(sets)]  # fmt: skip
        peer = [v for run in peer_runs for v in run["v2v_wav_ms"]]
        peer_turns = [t for run in peer_runs for t in run["metrics"]["turns"]]
        result["peer"] = {"v2v_ms": peer, "p50": pct(peer, 50), "p95": pct(peer, 95),
                          "missing_replies": sum(v is None for v in peer)}  # fmt: skip
        result["speedup_over_peer_p50"] = round(result["peer"]["p50"] / streaming["voice_to_voice_ms"]["p50"], 2)
    if not args.skip_baseline:
        print("naive sequential baseline on the same questions", flush=True)
        naive, rtfs = naive_baseline(sets, args.out, 0.45)
        result["naive"] = {"v2v_ms": naive, "p50": pct(naive, 50), "p95": pct(naive, 95)}
        result["piper_rtf"] = {"p50": round(float(np.percentile(rtfs, 50)), 3), "p95": round(float(np.percentile(rtfs, 95)), 3)}
        result["speedup_p50"] = round(result["naive"]["p50"] / streaming["voice_to_voice_ms"]["p50"], 2)
    (args.out / "result.json").write_text(json.dumps({**result, "turns": turns, "peer_turns": peer_turns}, indent=1))
    charts(result, turns, peer_turns, args.out)

    s = streaming
    print(f"turns: {s['turns']} in {len(runs)} conversations, replies missing: {s['missing_replies']}")
    for name in ("voice_to_voice_ms", "voice_to_voice_reported_ms", "asr_ms", "ttft_ms", "tts_first_chunk_ms", "tokens_per_s"):
        print(f"  {name:<28} p50 {s[name]['p50']!s:>8}   p95 {s[name]['p95']!s:>8}")
    print(f"  cold start to listening      {s['cold_start_s']:.1f} s")
    print(f"  peak RSS                     {s['peak_rss_mb']:.0f} MB (with llama-server {s['peak_rss_with_server_mb']:.0f} MB)")
    if "after_summary" in result:
        a = result["after_summary"]
        print(f"  turns right after a summary  {len(a['turns'])}, slowest v2v {a['slowest_v2v_ms']} ms, prompt tokens "
              f"read {[t['prompt_tokens_read'] for t in a['turns']]}")
    if "peer" in result:
        print(f"  RealtimeSTT end of turn v2v  p50 {result['peer']['p50']}   p95 {result['peer']['p95']}")
        print(f"  speed-up over RealtimeSTT's end of turn (its p50 / ours): {result['speedup_over_peer_p50']}x")
    if "naive" in result:
        print(f"  Piper real-time factor       p50 {result['piper_rtf']['p50']}   p95 {result['piper_rtf']['p95']}")
        print(f"  naive sequential v2v         p50 {result['naive']['p50']}   p95 {result['naive']['p95']}")
        print(f"  speed-up (naive p50 / streaming p50): {result['speedup_p50']}x")
    targets = [
        ("voice-to-voice p50 <= 500 ms", (s["voice_to_voice_ms"]["p50"] or 1e9) <= 500),
        ("voice-to-voice p95 <= 700 ms", (s["voice_to_voice_ms"]["p95"] or 1e9) <= 700),
        ("time to first token p50 <= 100 ms", (s["ttft_ms"]["p50"] or 1e9) <= 100),
        ("no turn slower than 900 ms right after a summary",
         "after_summary" not in result or bool(result["after_summary"]["turns"])
         and (result["after_summary"]["slowest_v2v_ms"] or 1e9) <= 900),
        ("cold start <= 6 s", s["cold_start_s"] <= 6.0),
        ("peak RSS <= 1.5 GB (program + llama-server)", s["peak_rss_with_server_mb"] <= 1536),
    ]
    return report_targets(targets, f"{args.out / 'result.json'}, chart: {args.out / 'latency.png'}")


if __name__ == "__main__":
    sys.exit(main())
