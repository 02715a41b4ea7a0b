"""Local by default, secrets stay secret, files are private, no shell strings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import psutil
import pytest
import soundfile

from fake_llama_server import FakeLlamaServer, Reply
from voice_assistant.metrics import TranscriptFile

ROOT = Path(__file__).resolve().parent.parent


def project_python_files() -> list[Path]:
    skip = {".venv", ".cache", "bench_out", ".git"}
    return [p for p in ROOT.rglob("*.py") if not skip & set(p.relative_to(ROOT).parts)]


def test_no_shell_strings():
    offenders = []
    for path in project_python_files():
        text = path.read_text()
        if path.name == "test_security.py":
            continue
        for pattern in (r"shell\s*=\s*True", r"os\.system\(", r"os\.popen\(", r"subprocess\.getoutput"):
            if re.search(pattern, text):
                offenders.append(f"{path.relative_to(ROOT)}: {pattern}")
    assert not offenders


def test_transcript_is_private_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        transcript = TranscriptFile(tmp_path / "t.jsonl")
        transcript.write({"turn": 1})
        transcript.close()
    finally:
        os.umask(old)
    assert (tmp_path / "t.jsonl").stat().st_mode & 0o777 == 0o600


@pytest.mark.slow
def test_auto_started_server_listens_on_loopback_only(tmp_path):
    from voice_assistant.llama_server import LlamaServerProcess, ServerConfig
    from voice_assistant.models import default_llama_server, default_llm_gguf

    server = LlamaServerProcess(ServerConfig(default_llama_server(), default_llm_gguf(), log_path=tmp_path / "s.log"))
    server.start()
    try:
        listening = [c.laddr for c in psutil.Process(server.pid).net_connections(kind="inet") if c.status == "LISTEN"]
        assert listening and all(addr.ip == "127.0.0.1" for addr in listening)
    finally:
        server.stop()


@pytest.mark.slow
def test_api_key_is_sent_but_never_printed(tmp_path):
    secret = "sk-test-5f3a9c1e77"
    wav = tmp_path / "in.wav"
    soundfile.write(str(wav), np.zeros(8000, dtype=np.float32), 16000)
    with FakeLlamaServer() as server:
        server.script(Reply(pieces=["Hello."]))
        result = subprocess.run(
            [sys.executable, str(ROOT / "asr_llm_tts.py"), "--test", "--input-wav", str(wav),
             "--llm-url", server.url, "--log-level", "DEBUG"],
            capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, "LLAMA_API_KEY": secret},
        )  # fmt: skip
        headers = [r.headers for r in server.requests if r.path == "/completion"]
    assert result.returncode == 0, result.stdout + result.stderr
    assert headers and all(h.get("Authorization") == f"Bearer {secret}" for h in headers)
    assert secret not in result.stdout + result.stderr


@pytest.mark.slow
def test_the_servers_we_start_answer_only_us_and_die_with_us(tmp_path):
    """SIGKILL of the program (no chance to clean up) still ends its llama-server, and that server
    refuses a request without this run's key (any local user could otherwise read the prompts)."""
    import signal
    import time

    import httpx

    wav = tmp_path / "in.wav"
    soundfile.write(str(wav), np.zeros(16000 * 60, dtype=np.float32), 16000)  # a minute of silence
    program = subprocess.Popen(
        [sys.executable, str(ROOT / "asr_llm_tts.py"), "--input-wav", str(wav), "--output-wav", str(tmp_path / "o.wav"),
         "--server-log", str(tmp_path / "server.log")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        for line in program.stdout:
            if "listening" in line:
                break
        servers = [p for p in psutil.Process(program.pid).children() if "llama-server" in p.name()]
        assert len(servers) == 1
        server = servers[0]
        port = server.cmdline()[server.cmdline().index("--port") + 1]
        assert "LLAMA_API_KEY" not in " ".join(server.cmdline())  # the key is not on the command line
        assert os.getpgid(server.pid) != os.getpgid(program.pid)  # a terminal's Ctrl-C reaches us first
        url = f"http://127.0.0.1:{port}"
        assert httpx.post(url + "/completion", json={"prompt": "hi", "n_predict": 1}, trust_env=False).status_code == 401
        assert httpx.get(url + "/props", trust_env=False).status_code == 401
        program.send_signal(signal.SIGKILL)
        program.wait(timeout=5)
        deadline = time.monotonic() + 5.0
        while server.is_running() and server.status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "llama-server outlived its SIGKILLed parent"
            time.sleep(0.05)  # polling another process's exit: nothing to wait on
    finally:
        if program.poll() is None:
            program.kill()
            program.wait()
        program.stdout.close()
