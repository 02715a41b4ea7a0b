"""A private PulseAudio for tests and benchmarks: its own socket in a temporary folder (a sound
server the machine already runs, a desktop's, is never touched), a speaker sink `spk` and a
microphone bus `micbus`. What is played into `micbus` is what the program hears (it records
`micbus.monitor`); what the program plays lands in `spk`. Programs reach it through `env`.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


def pulse_command(runtime: Path) -> list[str]:
    """A user-mode daemon whose state and socket live in `runtime` (not the machine's sound server)."""
    return [
        "pulseaudio", "--daemonize=no", "--use-pid-file=no", "--disallow-exit", "--exit-idle-time=-1",
        "--disable-shm=yes", "-n", "--load=module-null-sink sink_name=spk", "--load=module-null-sink sink_name=micbus",
        "--load=module-default-device-restore",  # a restarted daemon comes back with spk / micbus.monitor
        f"--load=module-native-protocol-unix auth-anonymous=1 socket={runtime}/native",  # last: clients find it ready
    ]  # fmt: skip


def pulse_env(runtime: Path) -> dict:
    """The environment that points programs and the pa* tools at the daemon in `runtime`."""
    return dict(os.environ, PULSE_SERVER=f"unix:{runtime}/native", PULSE_RUNTIME_PATH=str(runtime),
                PULSE_STATE_PATH=str(runtime), PULSE_CONFIG_PATH=str(runtime))  # fmt: skip


def start_pulse(env: dict) -> subprocess.Popen:
    runtime = Path(env["PULSE_RUNTIME_PATH"])
    daemon = subprocess.Popen(pulse_command(runtime), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            daemon.kill()
            raise RuntimeError("PulseAudio did not start")
        time.sleep(0.1)
    return daemon


def use_null_sinks(env: dict) -> None:
    sinks = subprocess.run(["pactl", "list", "short", "sinks"], env=env, capture_output=True, text=True).stdout
    for name in ("spk", "micbus"):
        if name not in sinks:
            subprocess.run(["pactl", "load-module", "module-null-sink", f"sink_name={name}"], env=env, check=True)
    subprocess.run(["pactl", "set-default-sink", "spk"], env=env, check=True)
    subprocess.run(["pactl", "set-default-source", "micbus.monitor"], env=env, check=True)


def couple_speaker_into_microphone(env: dict, latency_ms: int = 60) -> str:
    """A laptop without headphones: the speaker fed back into the microphone at 0 dB. Returns the module id."""
    return subprocess.run(
        ["pactl", "load-module", "module-loopback", "source=spk.monitor", "sink=micbus", f"latency_msec={latency_ms}"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
