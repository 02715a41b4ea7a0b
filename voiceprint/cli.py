"""Command line: `python -m voiceprint {enroll,verify,compare,list,delete}`.

Exit status: 0 success (verify: accepted), 1 verify rejected, 2 error (one line on stderr),
130 interrupted. Input is checked (names, enrollment files, WAVs, speech length) before the
model is loaded, so mistakes are reported at once.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

from voice_assistant.errors import VoiceAssistantError

from .audio import read_audio, record_microphone, synthesize_piper
from .encoder import SpeakerEncoder, load_encoder
from .enrollment import EnrollmentStore, validate_name
from .errors import EnrollmentExistsError, EnrollmentFormatError
from .verification import DEFAULT_THRESHOLD, check_speech, compare, enroll, verify

log = logging.getLogger(__name__)

EXIT_ACCEPT = 0
EXIT_REJECT = 1
EXIT_ERROR = 2
DEFAULT_PIPER_TEXT = (
    "The quick brown fox jumps over the lazy dog. I would like a cup of tea and a slice of toast, please."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m voiceprint",
        description="Speaker enrollment, verification and voice comparison (GE2E embeddings, offline).",
        epilog="Exit status: 0 ok/accepted, 1 rejected (verify), 2 error.",
    )
    parser.add_argument(
        "--store",
        type=Path,
        metavar="DIR",
        help="enrollment directory (default: $XDG_DATA_HOME/voice-assistant/voiceprints)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    enroll_cmd = commands.add_parser("enroll", help="make a voiceprint from WAV files or the microphone")
    enroll_cmd.add_argument("name", help="speaker name (letters, digits, '_', '-', '.')")
    source = enroll_cmd.add_mutually_exclusive_group(required=True)
    source.add_argument("--wav", type=Path, nargs="+", metavar="WAV", help="clips of the speaker (several help)")
    source.add_argument("--mic", action="store_true", help="record from the default microphone")
    enroll_cmd.add_argument("--seconds", type=float, default=10.0, help="microphone recording length (default 10)")
    enroll_cmd.add_argument("--device", help="microphone: index or part of its name (default: the system's)")
    enroll_cmd.add_argument("--force", action="store_true", help="replace an existing enrollment of that name")

    verify_cmd = commands.add_parser("verify", help="score an utterance against an enrollment")
    verify_cmd.add_argument("name")
    source = verify_cmd.add_mutually_exclusive_group(required=True)
    source.add_argument("--wav", type=Path, metavar="WAV")
    source.add_argument("--mic", action="store_true", help="record from the default microphone")
    verify_cmd.add_argument("--seconds", type=float, default=4.0, help="microphone recording length (default 4)")
    verify_cmd.add_argument("--device", help="microphone: index or part of its name (default: the system's)")
    verify_cmd.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"accept at or above this score (default {DEFAULT_THRESHOLD})",
    )

    compare_cmd = commands.add_parser("compare", help="similarity of two voices")
    compare_cmd.add_argument("a", type=Path, metavar="A.wav")
    compare_cmd.add_argument("b", type=Path, nargs="?", metavar="B.wav")
    compare_cmd.add_argument("--piper", type=Path, metavar="MODEL.onnx", help="synthesize B with this Piper voice")
    compare_cmd.add_argument("--text", default=DEFAULT_PIPER_TEXT, help="what the Piper voice says")
    compare_cmd.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_THRESHOLD,
        help=f"score at or above which the voices count as alike (default {DEFAULT_THRESHOLD})",
    )

    commands.add_parser("list", help="list enrolled speakers")
    delete_cmd = commands.add_parser("delete", help="remove an enrollment")
    delete_cmd.add_argument("name")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s", stream=sys.stderr
    )
    if args.command == "compare" and (args.b is None) == (args.piper is None):
        parser.error("compare needs either B.wav or --piper MODEL.onnx")
    store = EnrollmentStore(args.store)
    try:
        return COMMANDS[args.command](args, store)
    except VoiceAssistantError as exc:
        print(f"voiceprint: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("voiceprint: interrupted", file=sys.stderr)
        return 130


def _encoder() -> SpeakerEncoder:
    import torch

    torch.set_num_threads(1)  # small model; leave the other core to the rest of the machine
    return load_encoder()


def _record(seconds: float, device: str | None = None) -> tuple[np.ndarray, int]:
    def prompt() -> None:
        print(f"recording {seconds:g} s: speak now", file=sys.stderr, flush=True)

    return record_microphone(seconds, int(device) if device and device.isdigit() else device, on_start=prompt)


def _checked(audio: tuple[np.ndarray, int], label: str) -> tuple[np.ndarray, int]:
    """`audio` if it holds enough speech; the error names where it came from."""
    try:
        check_speech(*audio)
    except VoiceAssistantError as exc:
        raise type(exc)(f"{label}: {exc}") from None
    return audio


def cmd_enroll(args, store: EnrollmentStore) -> int:
    validate_name(args.name)
    if store.exists(args.name) and not args.force:
        raise EnrollmentExistsError(f"speaker {args.name!r} is already enrolled: add --force to replace it")
    if args.mic:
        clips = [_checked(_record(args.seconds, args.device), "microphone")]
    else:
        clips = [_checked(read_audio(path), str(path)) for path in args.wav]
    enrollment = enroll(args.name, clips, encoder=_encoder())
    path = store.save(enrollment, overwrite=args.force)
    print(f"enrolled {enrollment.name}: {enrollment.clip_count} clip(s), {enrollment.audio_s:.1f} s of audio -> {path}")
    return EXIT_ACCEPT


def cmd_verify(args, store: EnrollmentStore) -> int:
    enrollment = store.load(args.name)
    audio = _checked(_record(args.seconds, args.device), "microphone") if args.mic else _checked(read_audio(args.wav), str(args.wav))
    result = verify(enrollment, *audio, threshold=args.threshold, encoder=_encoder())
    verdict = "accept" if result.accepted else "reject"
    print(f"{enrollment.name}: score {result.score:.3f} threshold {result.threshold:.3f} {verdict}")
    return EXIT_ACCEPT if result.accepted else EXIT_REJECT


def cmd_compare(args, store: EnrollmentStore) -> int:
    audio_a = _checked(read_audio(args.a), str(args.a))
    if args.piper is not None:
        audio_b = _checked(synthesize_piper(args.piper, args.text), f"Piper voice {args.piper.name}")
    else:
        audio_b = _checked(read_audio(args.b), str(args.b))
    score = compare(*audio_a, *audio_b, encoder=_encoder())
    verdict = "alike (same speaker?)" if score >= args.threshold else "different voices"
    print(f"score {score:.3f} threshold {args.threshold:.3f} {verdict}")
    return EXIT_ACCEPT


def cmd_list(args, store: EnrollmentStore) -> int:
    names = store.names()
    if not names:
        print(f"no enrollments in {store.root}", file=sys.stderr)
    for name in names:
        try:
            item = store.load(name)
        except EnrollmentFormatError as exc:
            print(f"{name}\tunreadable: {exc}")
            continue
        created = item.created_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
        print(f"{name}\t{item.clip_count} clip(s)\t{item.audio_s:.1f} s\t{created}\t{item.model_id}")
    return EXIT_ACCEPT


def cmd_delete(args, store: EnrollmentStore) -> int:
    store.delete(args.name)
    print(f"deleted {args.name}")
    return EXIT_ACCEPT


COMMANDS = {"enroll": cmd_enroll, "verify": cmd_verify, "compare": cmd_compare, "list": cmd_list, "delete": cmd_delete}
