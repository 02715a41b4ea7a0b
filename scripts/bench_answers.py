#!/usr/bin/env python3
"""Answer benchmark: are the spoken answers right, and how fast, for each candidate model and recogniser?

For each candidate (an LLM, a recogniser, a language) it speaks the questions of
scripts/answer_set.py (five espeak-ng voices, or with --english-voices piper the Piper joe voice at three
speeds; Mandarin: the Mandarin voice at three pitches), joins them into one conversation WAV with a pause
after each, runs `asr_llm_tts.py` on it in file mode (program flags after --), and reports:

- accuracy: replies (from --transcript) that contain an accepted answer (answer_set.is_correct);
  a question that got no turn counts as wrong;
- recogniser error: word error rate (English) or character error rate (Mandarin) of what the
  program heard (the turn's user text) against the question as written;
- voice-to-voice p50/p95 from the WAVs alone: end of each question's speech in IN to the first
  sound of the reply in OUT (file mode writes exact zeros between replies, cues are off);
- the per-stage breakdown (medians from --metrics-json) and peak memory of the program and of the
  program plus its llama-server.

Writes bench_out/answers/result.json and prints one table. Run it on a quiet machine.
Usage: .venv/bin/python scripts/bench_answers.py [--candidates qwen-0.5b/tiny.en/en,...] [--limit N]
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

from benchlib import ROOT  # noqa: E402  (also sets the import paths)

from answer_set import (ENGLISH, ENGLISH_PIPER, MANDARIN, MANDARIN_VARIANTS, PIPER_LENGTH_SCALES,  # noqa: E402
                        Question, is_correct, normalise, speech_rate)
from bench_latency import PeakMemory  # noqa: E402
from speech import piper_voice  # noqa: E402

from voice_assistant.metrics import read_metrics  # noqa: E402
from voice_assistant.wavio import resample  # noqa: E402

RATE_HZ = 16000
GAP_S = 7.0  # after each question: a short spoken answer fits (longer ones are cut by the next question)
MAX_TOKENS = 64
DEFAULT_CANDIDATES = (
    "smollm2-135m/tiny.en/en", "qwen-0.5b/tiny.en/en", "qwen-1.5b/tiny.en/en", "qwen-1.5b/base/en", "qwen-0.5b/base/en",
    "qwen-0.5b/base/zh", "qwen-1.5b/base/zh",
)  # fmt: skip


_MANDARIN_VOICE = None


def mandarin_voice(pitch: float, speed: float):
    global _MANDARIN_VOICE
    if _MANDARIN_VOICE is None:
        from voice_assistant.mandarin_tts import MandarinSynthesizer
        from voice_assistant.models import default_mandarin_voice

        _MANDARIN_VOICE = MandarinSynthesizer.load(default_mandarin_voice(), threads=1)
    _MANDARIN_VOICE.set_speed(speed)
    _MANDARIN_VOICE.set_pitch(pitch)
    return _MANDARIN_VOICE


def speak(question: Question, path: Path) -> np.ndarray:
    """The question as 16 kHz float32 audio, trimmed to its sound."""
    if question.voice in PIPER_LENGTH_SCALES:
        from piper import SynthesisConfig

        voice = piper_voice()
        settings = SynthesisConfig(length_scale=PIPER_LENGTH_SCALES[question.voice])
        chunks = [chunk.audio_float_array for chunk in voice.synthesize(question.text, syn_config=settings)]
        audio = resample(np.concatenate(chunks).astype(np.float32), voice.config.sample_rate, RATE_HZ)
    elif question.voice in MANDARIN_VARIANTS:
        voice = mandarin_voice(*MANDARIN_VARIANTS[question.voice])
        audio = resample(voice.synthesize_all(question.text), voice.sample_rate_hz, RATE_HZ)
    else:
        subprocess.run(["espeak-ng", "-v", question.voice, "-s", str(speech_rate(question.voice)), "-w", str(path),
                        question.text], check=True)  # fmt: skip
        audio, rate = soundfile.read(str(path), dtype="float32")
        audio = resample(audio, rate, RATE_HZ)
    loud = np.nonzero(np.abs(audio) > 0.01)[0]
    return audio[max(0, loud[0] - 800) : loud[-1] + 800]


def build_conversation(questions: list[Question], path: Path) -> list[tuple[float, float]]:
    """One WAV: 1 s of silence, then each question followed by GAP_S; each question's (start, end) s."""
    pieces, spans, cursor = [np.zeros(RATE_HZ, dtype=np.float32)], [], RATE_HZ
    for question in questions:
        clip = speak(question, path.with_name("question.wav"))
        loud = np.nonzero(np.abs(clip) > 0.01)[0]
        spans.append(((cursor + loud[0]) / RATE_HZ, (cursor + loud[-1]) / RATE_HZ))
        pieces += [clip, np.zeros(int(GAP_S * RATE_HZ), dtype=np.float32)]
        cursor += len(clip) + int(GAP_S * RATE_HZ)
    soundfile.write(str(path), np.concatenate(pieces), RATE_HZ, subtype="PCM_16")
    return spans


def edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    row = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        previous, row[0] = row[0], i
        for j, hyp in enumerate(hypothesis, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ref != hyp))
    return row[-1]


def tokens(text: str, language: str) -> list[str]:
    """Words (English) or characters (Mandarin) for the error rate, after answer_set.normalise."""
    text = normalise(text)
    return list(text.replace(" ", "")) if language == "zh" else text.split()


def first_sound(out: np.ndarray, rate: int, after_s: float, limit_s: float) -> float | None:
    window = out[int(after_s * rate) : int((after_s + limit_s) * rate)]
    loud = np.nonzero(np.abs(window) > 1e-3)[0]
    return None if len(loud) == 0 else after_s + loud[0] / rate


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def run_candidate(name: str, questions: list[Question], work: Path, extra: list[str], voices: str) -> dict:
    model, asr, language = name.split("/")
    piper = voices == "piper" and language != "zh"
    folder = work / (name.replace("/", "_") + ("_piper" if piper else ""))
    folder.mkdir(parents=True, exist_ok=True)
    for appended in ("metrics.jsonl", "transcript.jsonl"):  # the program appends: an earlier run would be read too
        (folder / appended).unlink(missing_ok=True)
    in_wav, out_wav = folder / "in.wav", folder / "out.wav"
    spans = build_conversation(questions, in_wav)
    command = [
        sys.executable, str(ROOT / "asr_llm_tts.py"), "--input-wav", str(in_wav), "--output-wav", str(out_wav),
        "--metrics-json", str(folder / "metrics.jsonl"), "--transcript", str(folder / "transcript.jsonl"),
        "--server-log", str(folder / "server.log"), "--max-reply-tokens", str(MAX_TOKENS), "--no-cues",
        "--llm-model", model, "--asr-model", asr, "--language", language, *extra,
    ]  # fmt: skip
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    memory = PeakMemory(process.pid)
    output = process.stdout.read()
    process.wait()
    memory.stop()
    (folder / "program.log").write_text(output)
    if process.returncode != 0:
        raise SystemExit(f"{name}: the program failed (exit {process.returncode}); see {folder / 'program.log'}")
    turns = read_metrics(folder / "metrics.jsonl")["turns"]
    replies = [json.loads(line) for line in (folder / "transcript.jsonl").read_text().splitlines()]
    out, rate = soundfile.read(str(out_wav), dtype="float32")

    rows, errors, reference_tokens, v2v = [], 0, 0, []
    for question, (start, end) in zip(questions, spans):
        mine = [i for i, turn in enumerate(turns) if start < turn["speech_end_s"] < end + GAP_S - 1.0]
        heard = " ".join(turns[i]["user"] for i in mine)
        reply = " ".join(replies[i]["assistant"] for i in mine if i < len(replies))
        reference = tokens(question.text, language)
        errors += edit_distance(reference, tokens(heard, language))
        reference_tokens += len(reference)
        onset = first_sound(out, rate, end, GAP_S)
        if mine and onset is not None:
            v2v.append((onset - end) * 1000.0)
        rows.append({"question": question.text, "heard": heard, "reply": reply, "turns": len(mine),
                     "correct": bool(reply) and is_correct(reply, question)})  # fmt: skip

    def median(key: str) -> float | None:
        values = [turn["timeline_ms"][key] for turn in turns if turn["timeline_ms"].get(key) is not None]
        return pct(values, 50)

    correct = sum(row["correct"] for row in rows)
    return {
        "candidate": " ".join([name, *(["(Piper voice)"] if piper else []), *extra]),
        "model": model, "asr": asr, "language": language, "questions": len(questions),
        "correct": correct, "accuracy": correct / len(questions),
        "asked_once": sum(row["turns"] == 1 for row in rows), "missed": sum(row["turns"] == 0 for row in rows),
        "asr_error_rate": errors / max(1, reference_tokens),
        "v2v_p50_ms": pct(v2v, 50), "v2v_p95_ms": pct(v2v, 95),
        "stages_p50_ms": {key: median(key) for key in ("transcript", "first_token", "first_sentence",
                                                       "first_audio_ready", "first_audio_played")},
        "peak_rss_mb": memory.peak_main / 2**20, "peak_rss_with_server_mb": memory.peak_tree / 2**20,
        "wall_s": time.monotonic() - started, "rows": rows,
    }  # fmt: skip


def run_typed(name: str, questions: list[Question], work: Path, extra: list[str]) -> dict:
    """The language model alone: the questions typed (--text --no-speak, one conversation), no recogniser."""
    model, _, language = name.split("/")
    folder = work / ("typed_" + name.replace("/", "_"))
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(ROOT / "asr_llm_tts.py"), "--text", "--no-speak", "--transcript",
               str(folder / "transcript.jsonl"), "--server-log", str(folder / "server.log"), "--max-reply-tokens",
               str(MAX_TOKENS), "--llm-model", model, "--language", language, *extra]  # fmt: skip
    (folder / "transcript.jsonl").unlink(missing_ok=True)
    typed = "".join(question.text + "\n" for question in questions)
    finished = subprocess.run(command, input=typed, capture_output=True, text=True)
    (folder / "program.log").write_text(finished.stdout + finished.stderr)
    if finished.returncode != 0:
        last = (finished.stderr.strip() or finished.stdout.strip() or "no output").splitlines()[-1]
        raise SystemExit(f"{name}: the program failed (exit {finished.returncode}): {last}")
    replies = {json.loads(line)["user"]: json.loads(line)["assistant"]
               for line in (folder / "transcript.jsonl").read_text().splitlines()}  # fmt: skip
    rows = [{"question": q.text, "reply": replies.get(q.text, ""), "correct": is_correct(replies.get(q.text, ""), q)}
            for q in questions]  # fmt: skip
    correct = sum(row["correct"] for row in rows)
    return {"candidate": f"typed {name} {' '.join(extra)}".strip(), "questions": len(questions), "correct": correct,
            "accuracy": correct / len(questions), "rows": rows}  # fmt: skip


def reply_intelligibility(folder: Path) -> dict:
    """Mandarin runs: the multilingual recogniser's character error on each spoken reply, against the
    reply's text as the Mandarin voice reads it (digits written out), and how soon its first audio was ready
    after its first clause (--metrics-json tts_first_chunk_ms)."""
    from voice_assistant.asr import WhisperTranscriber, resolve_asr_model
    from voice_assistant.mandarin_tts import normalize_text

    turns = read_metrics(folder / "metrics.jsonl")["turns"]
    out, rate = soundfile.read(str(folder / "out.wav"), dtype="float32")
    recogniser = WhisperTranscriber.load(resolve_asr_model("base"), threads=2, language="zh")
    errors = total = 0
    for index, turn in enumerate(turns):
        said = turn["assistant_heard"]
        if not turn["first_audio_s"] or not said or turn["interrupted"]:
            continue
        end = turns[index + 1]["speech_end_s"] - 1.0 if index + 1 < len(turns) else len(out) / rate
        reply = out[int(turn["first_audio_s"] * rate) : int(end * rate)]
        heard = recogniser.transcribe_full(resample(reply, rate, RATE_HZ)).text
        reference = tokens(normalize_text(said), "zh")
        errors += edit_distance(reference, tokens(heard, "zh"))
        total += len(reference)
    first_chunk = [turn["tts_first_chunk_ms"] for turn in turns if turn.get("tts_first_chunk_ms") is not None]
    return {"reply_cer": errors / max(1, total), "reply_characters": total,
            "tts_first_chunk_p50_ms": pct(first_chunk, 50), "tts_first_chunk_p95_ms": pct(first_chunk, 95)}  # fmt: skip


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", default=",".join(DEFAULT_CANDIDATES),
                        help="comma-separated MODEL/ASR/LANGUAGE (language en or zh picks the question set)")
    parser.add_argument("--limit", type=int, default=0, help="ask only the first N questions of each set")
    parser.add_argument("--out", default=str(ROOT / "bench_out" / "answers"))
    parser.add_argument("--typed", action="store_true", help="type the questions instead (the model alone, no audio)")
    parser.add_argument("--english-voices", choices=("espeak", "piper"), default="espeak",
                        help="speak the English questions with espeak-ng's five voices, or Piper joe at three speeds")
    parser.add_argument("extra", nargs="*", help="program flags after --")
    args = parser.parse_args()
    work = Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    if args.typed:
        for name in args.candidates.split(","):
            questions = MANDARIN if name.endswith("/zh") else ENGLISH
            result = run_typed(name, questions[: args.limit] if args.limit else questions, work, args.extra)
            print(f"{result['candidate']}: {result['correct']}/{result['questions']} ({result['accuracy']:.0%})")
            for row in result["rows"]:
                if not row["correct"]:
                    print(f"    wrong: {row['question']!r} -> {row['reply'][:90]!r}")
            with open(work / "typed.jsonl", "a", encoding="utf-8") as handle:
                handle.write(json.dumps(result, ensure_ascii=False) + "\n")
        return 0
    results = []
    for name in args.candidates.split(","):
        questions = MANDARIN if name.endswith("/zh") else ENGLISH_PIPER if args.english_voices == "piper" else ENGLISH
        questions = questions[: args.limit] if args.limit else questions
        print(f"{name}: {len(questions)} questions ...", flush=True)
        result = run_candidate(name, questions, work, args.extra, args.english_voices)
        if name.endswith("/zh"):
            result.update(reply_intelligibility(work / name.replace("/", "_")))
            print(f"    replies: character error {result['reply_cer']:.1%} over {result['reply_characters']} "
                  f"characters; first audio ready {fmt(result['tts_first_chunk_p50_ms'])} / "
                  f"{fmt(result['tts_first_chunk_p95_ms'])} ms after the first clause (p50 / p95)")
        results.append(result)
        (work / "result.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
        wrong = [row for row in result["rows"] if not row["correct"]]
        for row in wrong:
            print(f"    wrong: {row['question']!r} heard {row['heard']!r} -> {row['reply'][:90]!r}")
    print()
    print("| candidate (model/asr/lang) | correct | ASR error | missed | v2v p50 / p95 ms | first token p50 | "
          "peak MB (with server) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['candidate']} | {r['correct']}/{r['questions']} ({r['accuracy']:.0%}) | "
              f"{r['asr_error_rate']:.1%} | {r['missed']} | {fmt(r['v2v_p50_ms'])} / {fmt(r['v2v_p95_ms'])} | "
              f"{fmt(r['stages_p50_ms']['first_token'])} | {r['peak_rss_mb']:.0f} ({r['peak_rss_with_server_mb']:.0f}) |")
    print(f"result: {work / 'result.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
