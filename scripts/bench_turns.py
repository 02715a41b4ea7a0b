#!/usr/bin/env python3
"""Turn-taking benchmark: questions with a pause in the middle, and complete questions, in file mode.

One conversation WAV (espeak-ng) holds questions split in two with a pause of 0.5 to 1.2 s after an
unfinished half ("How far away is ... the moon?") and complete questions, each followed by a long
silence. It is run once per end-of-turn detector (`--turn-detector silence`, today's fixed 450 ms,
and `smart`, the Smart Turn model) and measured from the WAVs:

- cut at a pause: a split question whose answer began to sound (in OUT) before the question's
  second half had ended, i.e. the assistant spoke into the user's pause;
- false holds: complete questions whose turn ended only at --turn-max-silence-ms (the model heard
  them as unfinished; from --metrics-json `end_of_turn == "cap"`);
- voice-to-voice p50/p95 on complete questions: end of the question's speech in IN to the first
  sound of the reply in OUT;
- the turn model's own time per judgement is in the program's DEBUG log, not here.

With `--speech piper` each split question is spoken whole by the Piper joe voice (three speeds) with a
comma after its first half, and the comma's short pause is stretched to the benchmark's pause: the
first half keeps the level or rising pitch of a sentence that goes on, as a person's does when they
pause to think. espeak and Piper speaking the halves separately end each half like a
finished sentence, which no end-of-turn model can tell from one.

With `--speech real` the same layout is built from real recorded speech instead: Debian's
asterisk-core-sounds-en-wav (one professional speaker, telephone band, fetched by bench_asr.py into
bench_out/asr_data), whose prompts include fragments recorded to be continued ("You are entering
conference number ...", "The estimated hold time is currently ...") and whole sentences ("All
circuits are busy now."): the fragment, a pause, then its continuation (digits, "minutes").

Writes bench_out/turns/result.json (bench_out/turns_real/ for real speech). Run it on a quiet machine
(about 5 minutes per detector).
Usage: .venv/bin/python scripts/bench_turns.py [--detectors silence,smart] [--speech espeak|piper|real] [-- program flags]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile

from benchlib import ROOT  # noqa: E402  (also sets the import paths)

from bench_latency import first_sound_after  # noqa: E402
from speech import conversation, piper_sentence, piper_split  # noqa: E402

from voice_assistant.metrics import read_metrics  # noqa: E402

SPLIT = [
    ("I want to know about the", "capital of France."), ("How far away is", "the moon?"),
    ("Can you tell me", "what bees make?"), ("What is the name of", "the largest planet?"),
    ("How many legs", "does a spider have?"), ("Tell me the colour of", "the sky."),
    ("Which animal is", "the biggest in the world?"), ("What do you call", "a baby cat?"),
]  # fmt: skip
PAUSES_S = (0.5, 0.7, 0.9, 1.2)
COMPLETE = [
    "What is two plus two?", "How many days are in a week?", "What is the opposite of hot?",
    "Where do penguins live?", "Which planet is the largest?", "What colour is grass?",
    "How many hours are in a day?", "What is the tallest mountain?",
]  # fmt: skip
GAP_S = 8.0
ASTERISK = ROOT / "bench_out" / "asr_data" / "deb" / "usr" / "share" / "asterisk" / "sounds" / "en_US_f_Allison"
REAL_SPLIT = [  # (unfinished fragment, its continuation: prompts played one after the other)
    (["conf-enteringno"], ["digits/5"]), (["queue-holdtime"], ["digits/3", "minutes"]),
    (["queue-thereare"], ["digits/2"]), (["vm-theperson"], ["digits/4", "vm-isunavail"]),
    (["vm-duration"], ["digits/5", "seconds"]), (["num-was-successfully"], ["added"]),
    (["privacy-to-blacklist-last-caller"], ["digits/1"]), (["if-correct-press"], ["digits/1"]),
]  # fmt: skip
REAL_COMPLETE = [
    "conf-locked", "all-circuits-busy-now", "cannot-complete-as-dialed", "check-number-dial-again", "conf-full",
    "queue-thankyou", "vm-nobodyavail", "demo-echodone",
]  # fmt: skip


def recorded(names: list[str]) -> np.ndarray:
    """The prompts `names`, each trimmed of its leading and trailing silence, one after the other, at 16 kHz."""
    from voice_assistant.wavio import resample

    pieces = []
    for name in names:
        audio, rate = soundfile.read(str(ASTERISK / f"{name}.wav"), dtype="float32")
        audio = resample(audio, rate, 16000)
        voiced = np.nonzero(np.abs(audio) > 0.01)[0]
        pieces.append(audio[voiced[0] : voiced[-1] + 1])
    return np.concatenate(pieces)


def lay_out(work: Path, splits: list[tuple[np.ndarray, np.ndarray]],
            completes: list[np.ndarray]) -> tuple[Path, list[dict]]:  # fmt: skip
    """The conversation WAV of recorded or synthesized audio, in build()'s layout: each split question's
    halves with a pause between, each whole question, each followed by GAP_S; and each question's spans."""
    rate = 16000
    pieces, questions, cursor = [np.zeros(rate, dtype=np.float32)], [], rate

    def add(audio: np.ndarray) -> tuple[float, float]:
        nonlocal cursor
        pieces.append(audio)
        cursor += len(audio)
        return ((cursor - len(audio)) / rate, cursor / rate)

    def pause(seconds: float) -> None:
        add(np.zeros(int(seconds * rate), dtype=np.float32))

    for index in range(max(len(splits), len(completes))):
        if index < len(splits):
            spans = [add(splits[index][0])]
            pause(PAUSES_S[index % len(PAUSES_S)])
            spans.append(add(splits[index][1]))
            pause(GAP_S)
            questions.append({"kind": "split", "spans": spans})
        if index < len(completes):
            questions.append({"kind": "complete", "spans": [add(completes[index])]})
            pause(GAP_S)
    path = work / "in.wav"
    soundfile.write(str(path), np.concatenate(pieces), rate, subtype="PCM_16")
    return path, questions


def build_real(work: Path) -> tuple[Path, list[dict]]:
    """Like build(), from the asterisk recordings."""
    if not ASTERISK.is_dir():
        raise SystemExit(f"no recordings in {ASTERISK}: run scripts/bench_asr.py once (it fetches them)")
    splits = [(recorded(first), recorded(second)) for first, second in REAL_SPLIT]
    return lay_out(work, splits, [recorded([name]) for name in REAL_COMPLETE])


def build_piper(work: Path) -> tuple[Path, list[dict]]:
    """Like build(), spoken by Piper at its three speeds: each split question is one sentence, cut after
    its first half."""
    from answer_set import PIPER_LENGTH_SCALES

    scales = list(PIPER_LENGTH_SCALES.values())
    splits = [piper_split(first, second, scales[i % len(scales)]) for i, (first, second) in enumerate(SPLIT)]
    completes = [piper_sentence(text, scales[i % len(scales)]) for i, text in enumerate(COMPLETE)]
    return lay_out(work, splits, completes)


def build(work: Path) -> tuple[Path, list[dict]]:
    """The conversation WAV and, per question, its kind and the spans of its parts."""
    parts: list = [1.0]
    layout: list[tuple[str, int]] = []  # (kind, number of spoken parts)
    for index in range(max(len(SPLIT), len(COMPLETE))):
        if index < len(SPLIT):
            first, second = SPLIT[index]
            parts += [first, PAUSES_S[index % len(PAUSES_S)], second, GAP_S]
            layout.append(("split", 2))
        if index < len(COMPLETE):
            parts += [COMPLETE[index], GAP_S]
            layout.append(("complete", 1))
    path, spans = conversation(parts, work / "in.wav", 16000)
    questions, cursor = [], 0
    for kind, count in layout:
        questions.append({"kind": kind, "spans": spans[cursor : cursor + count]})
        cursor += count
    return path, questions


def run(detector: str, in_wav: Path, questions: list[dict], work: Path, extra: list[str]) -> dict:
    folder = work / detector
    folder.mkdir(parents=True, exist_ok=True)
    metrics_path = folder / "metrics.jsonl"
    metrics_path.unlink(missing_ok=True)
    command = [sys.executable, str(ROOT / "asr_llm_tts.py"), "--input-wav", str(in_wav), "--output-wav",
               str(folder / "out.wav"), "--metrics-json", str(metrics_path), "--no-cues", "--max-reply-tokens", "32",
               "--server-log", str(folder / "server.log"), "--turn-detector", detector, *extra]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    (folder / "program.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"{detector}: the program failed (exit {result.returncode}); see {folder / 'program.log'}")
    out, rate = soundfile.read(str(folder / "out.wav"), dtype="float32")
    turns = read_metrics(metrics_path)["turns"]
    cut, ended, v2v, rows = 0, 0, [], []
    for question in questions:
        end = question["spans"][-1][1]
        if question["kind"] == "split":
            pause_start = question["spans"][0][1]
            early = first_sound_after(out, rate, pause_start, end - pause_start)  # the assistant spoke into the pause
            cut += early is not None
            # the program ended the user's turn at the pause (answered or not, the question was split in two)
            split = any(abs(t["speech_end_s"] - pause_start) < 0.3 for t in turns)
            ended += split
            rows.append({"kind": "split", "pause_s": round(question["spans"][1][0] - question["spans"][0][1], 2),
                         "spoke_into_pause": early is not None, "turn_ended_at_pause": split})  # fmt: skip
        else:
            start = first_sound_after(out, rate, end, GAP_S)
            v2v.append(None if start is None else (start - end) * 1000.0)
            rows.append({"kind": "complete", "v2v_ms": v2v[-1]})
    # a turn belongs to the complete question whose speech ended closest before its speech_end_s
    complete_ends = [q["spans"][-1][1] for q in questions if q["kind"] == "complete"]
    held = sum(1 for t in turns if t.get("end_of_turn") == "cap"
               and any(abs(t["speech_end_s"] - end) < 0.3 for end in complete_ends))  # fmt: skip
    heard = [v for v in v2v if v is not None]
    return {
        "detector": detector, "split_questions": sum(q["kind"] == "split" for q in questions),
        "cut_at_pause": cut, "turn_ended_at_pause": ended, "complete_questions": len(complete_ends), "false_holds": held,
        "answered": len(heard), "turns": len(turns), "users": [t["user"] for t in turns],
        "v2v_p50_ms": float(np.percentile(heard, 50)) if heard else None,
        "v2v_p95_ms": float(np.percentile(heard, 95)) if heard else None, "rows": rows,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detectors", default="silence,smart")
    parser.add_argument("--speech", choices=("espeak", "piper", "real"), default="espeak")
    parser.add_argument("--out", type=Path, default=None, help="default: bench_out/turns, turns_piper, turns_real")
    parser.add_argument("extra", nargs="*", help="program flags after --")
    args = parser.parse_args()
    args.out = args.out or ROOT / "bench_out" / ("turns" if args.speech == "espeak" else f"turns_{args.speech}")
    args.out.mkdir(parents=True, exist_ok=True)
    builders = {"espeak": build, "piper": build_piper, "real": build_real}
    in_wav, questions = builders[args.speech](args.out)
    if args.speech == "piper":  # the questions are in the assistant's own voice, which the echo guards ignore
        args.extra = ["--no-echo-guards", *args.extra]
    results = []
    for detector in args.detectors.split(","):
        print(f"{detector}: {len(questions)} questions ...", flush=True)
        results.append(run(detector, in_wav, questions, args.out, args.extra))
        (args.out / "result.json").write_text(json.dumps(results, indent=1) + "\n")
    print("| end of turn | spoke into a mid-question pause | turn ended at the pause | false holds (complete "
          "questions) | voice-to-voice p50 / p95 (complete) | turns |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for r in results:
        p50 = "-" if r["v2v_p50_ms"] is None else f"{r['v2v_p50_ms']:.0f}"
        p95 = "-" if r["v2v_p95_ms"] is None else f"{r['v2v_p95_ms']:.0f}"
        print(f"| {r['detector']} | {r['cut_at_pause']}/{r['split_questions']} | "
              f"{r['turn_ended_at_pause']}/{r['split_questions']} | {r['false_holds']}/"
              f"{r['complete_questions']} | {p50} / {p95} ms | {r['turns']} |")
    print(f"result: {args.out / 'result.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
