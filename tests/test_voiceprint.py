"""voiceprint: embeddings, enrollment store, verify/compare, and the CLI with its exit codes.

Speech is made here: espeak-ng voices (tests/speech.py) and the bundled Piper voice. Real recorded
speech is used by scripts/calibrate_voiceprint.py, not by these tests.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from speech import have_espeak, say

import voiceprint
from voice_assistant.wavio import write_wav
from voiceprint import (
    DEFAULT_THRESHOLD,
    AudioError,
    AudioFileError,
    AudioTooShortError,
    EnrollmentExistsError,
    EnrollmentFormatError,
    EnrollmentNotFoundError,
    EnrollmentStore,
    InvalidNameError,
)

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not have_espeak(), reason="espeak-ng is not installed (scripts/setup.sh installs it)")

SENTENCES = [
    "The birch canoe slid on the smooth planks near the old wooden pier.",
    "Glue the sheet to the dark blue background before the paint dries.",
    "It is easy to tell the depth of a well when you drop a small stone.",
    "Four hours of steady work faced us before the sun went down.",
]


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> dict[str, Path]:
    """WAVs: espeak en-us (16 kHz), espeak en-us+f4, Piper joe (22.05 kHz), and bad inputs."""
    from voice_assistant.models import default_tts_model
    from voice_assistant.tts import PiperSynthesizer

    folder = tmp_path_factory.mktemp("voiceprint-speech")
    files = {}
    for number, sentence in enumerate(SENTENCES):
        files[f"espeak{number}"] = say(sentence, folder / f"espeak{number}.wav")
    files["espeak_f4"] = say(SENTENCES[1], folder / "espeak_f4.wav", voice="en-us+f4")
    piper = PiperSynthesizer.load(default_tts_model(), threads=1)
    for number, sentence in enumerate(SENTENCES[:3]):
        files[f"piper{number}"] = folder / f"piper{number}.wav"
        write_wav(files[f"piper{number}"], piper.synthesize_all(sentence), piper.sample_rate_hz)
    files["short"] = say("Hi.", folder / "short.wav")
    files["silence"] = folder / "silence.wav"
    write_wav(files["silence"], np.zeros(3 * 16000, dtype=np.float32), 16000)
    files["corrupt"] = folder / "corrupt.wav"
    files["corrupt"].write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage that is not a wav file")
    return files


def load(path: Path) -> tuple[np.ndarray, int]:
    return voiceprint.read_audio(path)


@pytest.fixture(scope="module")
def encoder():
    return voiceprint.load_encoder()


def run_cli(*args: str, data_home: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, XDG_DATA_HOME=str(data_home))
    return subprocess.run([sys.executable, "-m", "voiceprint", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


# ---------------------------------------------------------------- encoder


def test_import_loads_no_model_and_touches_no_device():
    code = (
        "import sys, voiceprint; heavy = ('torch', 'sounddevice', 'piper', 'onnxruntime'); "
        "print(sorted(m for m in heavy if m in sys.modules)); print(voiceprint.encoder._default)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["[]", "None"]


def test_embedding_is_a_deterministic_unit_vector_for_any_input_rate(speech, encoder):
    audio, rate = load(speech["espeak0"])
    assert rate == 16000 and audio.dtype == np.float32
    vector = voiceprint.embed(audio, rate)
    assert vector.shape == (256,) and vector.dtype == np.float32
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
    assert np.array_equal(vector, encoder.embed(audio, rate))
    as_int16 = (audio * 32767).astype(np.int16)
    assert voiceprint.cosine(vector, encoder.embed(as_int16, rate)) > 0.999
    from voice_assistant.wavio import resample

    at_44k = resample(audio, 16000, 44100)
    assert voiceprint.cosine(vector, encoder.embed(at_44k, 44100)) > 0.98
    stereo = np.stack([audio, audio], axis=1)
    assert voiceprint.cosine(vector, encoder.embed(stereo, rate)) > 0.999


def golden_signal() -> np.ndarray:
    """3 s of a voiced-speech-like analytic signal: gliding 110-150 Hz harmonics under a syllable envelope."""
    t = np.arange(48000) / 16000.0
    f0 = 130.0 + 20.0 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / 16000.0
    formants = (700.0, 1200.0, 2600.0)
    voice = sum(
        np.sin(k * phase) / k * sum(np.exp(-(((k * f0 - f) / 300.0) ** 2)) for f in formants) for k in range(1, 40)
    )
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t) ** 2
    return (0.1 * voice * envelope).astype(np.float32)


# resemblyzer 0.1.4's own VoiceEncoder.embed_utterance(golden_signal()), with librosa 0.11's
# melspectrogram(pad_mode="reflect") computed separately: its 12 largest entries and its sum.
RESEMBLYZER_TOP = {
    42: 0.214890,
    51: 0.176055,
    78: 0.178080,
    120: 0.184443,
    126: 0.174765,
    132: 0.185117,
    135: 0.169348,
    150: 0.168824,
    169: 0.189682,
    177: 0.195586,
    193: 0.195612,
    221: 0.192086,
}
RESEMBLYZER_SUM = 7.822371


def test_embedding_matches_resemblyzer(encoder):
    vector = encoder.embed_prepared(golden_signal())
    assert sorted(np.argsort(-vector)[:12]) == sorted(RESEMBLYZER_TOP)
    for index, value in RESEMBLYZER_TOP.items():
        assert vector[index] == pytest.approx(value, abs=2e-5)
    assert float(vector.sum()) == pytest.approx(RESEMBLYZER_SUM, abs=1e-4)


def test_same_voice_scores_higher_than_different_voices(speech, encoder):
    espeak = [load(speech[f"espeak{i}"]) for i in range(3)]
    piper = [load(speech[f"piper{i}"]) for i in range(2)]
    other_espeak = load(speech["espeak_f4"])

    same_espeak = voiceprint.compare(*espeak[0], *espeak[2], encoder=encoder)
    espeak_variant = voiceprint.compare(*espeak[0], *other_espeak, encoder=encoder)
    espeak_vs_piper = voiceprint.compare(*espeak[0], *piper[0], encoder=encoder)
    same_piper = voiceprint.compare(*piper[0], *piper[1], encoder=encoder)
    piper_vs_espeak = voiceprint.compare(*piper[1], *espeak[1], encoder=encoder)

    assert same_espeak > espeak_variant + 0.1
    assert same_espeak > espeak_vs_piper + 0.2
    assert same_piper > piper_vs_espeak + 0.2
    assert same_piper >= DEFAULT_THRESHOLD > espeak_vs_piper


def test_embed_is_thread_safe(speech, encoder):
    clips = [load(speech[f"espeak{i}"]) for i in range(4)] + [load(speech[f"piper{i}"]) for i in range(2)]
    serial = [encoder.embed(*clip) for clip in clips]
    results: dict[int, np.ndarray] = {}
    start = threading.Barrier(len(clips))

    def work(index: int) -> None:
        start.wait()
        for _ in range(3):
            results[index] = encoder.embed(*clips[index])

    threads = [threading.Thread(target=work, args=(i,), name=f"embed-{i}") for i in range(len(clips))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(results) == len(clips)
    for index, vector in enumerate(serial):
        np.testing.assert_allclose(results[index], vector, atol=1e-5)


def test_bad_audio_raises_one_error_type(speech, encoder):
    with pytest.raises(AudioTooShortError, match="at least 1.0 s"):
        encoder.embed(*load(speech["short"]))
    with pytest.raises(AudioTooShortError):
        encoder.embed(*load(speech["silence"]))
    with pytest.raises(AudioError, match="NaN"):
        encoder.embed(np.full(32000, np.nan, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="1-D samples"):
        encoder.embed(np.zeros((2, 2, 2), dtype=np.float32), 16000)
    with pytest.raises(AudioFileError, match="not found"):
        voiceprint.read_audio(speech["short"].with_name("missing.wav"))
    with pytest.raises(AudioFileError):
        voiceprint.read_audio(speech["corrupt"])


class FakeInputStream:
    """sounddevice.InputStream stand-in: a context manager whose read() returns a ramp."""

    opened: list[dict] = []

    def __init__(self, **settings) -> None:
        if settings.get("device") == "missing":
            raise FakeSounddevice.PortAudioError("Error querying device -1")
        FakeInputStream.opened.append(settings)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def read(self, frames: int):
        return np.linspace(-0.5, 0.5, frames, dtype=np.float32)[:, None], False


class FakeSounddevice:
    PortAudioError = type("PortAudioError", (Exception,), {})
    InputStream = FakeInputStream


def test_record_microphone_reads_16k_mono_and_reports_no_device(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", FakeSounddevice)
    FakeInputStream.opened.clear()
    prompts = []
    samples, rate = voiceprint.record_microphone(1.5, on_start=lambda: prompts.append("now"))
    assert rate == 16000 and samples.shape == (24000,) and samples.dtype == np.float32
    assert prompts == ["now"] and FakeInputStream.opened[0]["samplerate"] == 16000
    assert FakeInputStream.opened[0]["channels"] == 1
    with pytest.raises(voiceprint.MicrophoneError, match="cannot record from the microphone"):
        voiceprint.record_microphone(1.0, device="missing", on_start=lambda: prompts.append("again"))
    assert prompts == ["now"]  # no prompt when the device did not open
    with pytest.raises(voiceprint.MicrophoneError, match="positive"):
        voiceprint.record_microphone(0)


# ---------------------------------------------------------------- enrollments


def test_enrollment_round_trip_with_private_permissions(speech, encoder, tmp_path):
    clips = [load(speech["piper0"]), load(speech["piper1"])]
    enrollment = voiceprint.enroll("assistant.joe", clips, encoder=encoder)
    assert enrollment.clip_count == 2
    assert enrollment.audio_s == pytest.approx(sum(len(a) / r for a, r in clips))
    store = EnrollmentStore(tmp_path / "data" / "voice-assistant" / "voiceprints")
    previous_umask = os.umask(0)  # permissions must not depend on the caller's umask
    try:
        path = store.save(enrollment)
    finally:
        os.umask(previous_umask)
    assert path == store.root / "assistant.joe.json"
    assert stat.S_IMODE(store.root.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in store.root.iterdir()] == ["assistant.joe.json"]  # no temporary file left

    data = json.loads(path.read_text())
    assert data["format"] == "voiceprint-enrollment" and data["version"] == 1
    assert set(data) == {"format", "version", "name", "model_id", "embedding", "clip_count", "audio_s", "created_utc"}
    loaded = store.load("assistant.joe")
    assert loaded.name == enrollment.name and loaded.model_id == encoder.model_id
    assert loaded.clip_count == 2 and loaded.created_utc == enrollment.created_utc
    np.testing.assert_array_equal(loaded.embedding, enrollment.embedding)
    assert store.names() == ["assistant.joe"]

    with pytest.raises(EnrollmentExistsError):
        store.save(enrollment)
    store.save(enrollment, overwrite=True)
    store.delete("assistant.joe")
    assert store.names() == []
    with pytest.raises(EnrollmentNotFoundError):
        store.load("assistant.joe")
    with pytest.raises(EnrollmentNotFoundError):
        store.delete("assistant.joe")


def test_store_errors_are_enrollment_errors(speech, encoder, tmp_path):
    (tmp_path / "a-file").write_text("")
    enrollment = voiceprint.enroll("amy", [load(speech["espeak0"])], encoder=encoder)
    with pytest.raises(voiceprint.EnrollmentError, match="cannot create enrollment directory"):
        EnrollmentStore(tmp_path / "a-file" / "voiceprints").save(enrollment)


def test_default_store_follows_xdg_data_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert voiceprint.default_store_dir() == tmp_path / "voice-assistant" / "voiceprints"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/dir")  # the spec says relative paths are ignored
    assert voiceprint.default_store_dir() == Path.home() / ".local/share/voice-assistant/voiceprints"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert EnrollmentStore().root == Path.home() / ".local/share/voice-assistant/voiceprints"


@pytest.mark.parametrize(
    "name",
    [
        "",
        ".",
        "..",
        "../evil",
        "a/b",
        "/etc/passwd",
        ".hidden",
        "-rf",
        "with space",
        "naïve",
        "x" * 65,
        "a\nb",
        "alice.json/..",
    ],
)
def test_bad_names_are_refused(name, tmp_path):
    with pytest.raises(InvalidNameError):
        voiceprint.validate_name(name)
    with pytest.raises(InvalidNameError):
        EnrollmentStore(tmp_path).path_for(name)


@pytest.mark.parametrize("name", ["alice", "Bob_2", "assistant.joe", "x" * 64, "7-of-9"])
def test_good_names_stay_inside_the_store(name, tmp_path):
    assert EnrollmentStore(tmp_path).path_for(name).parent == tmp_path


def write_enrollment(store: EnrollmentStore, speaker: str, changes: dict | None = None) -> Path:
    """A well-formed version-1 file for `speaker`, with `changes` applied to its keys."""
    vector = np.zeros(256)
    vector[0] = 1.0
    data = {
        "format": "voiceprint-enrollment",
        "version": 1,
        "name": speaker,
        "model_id": "m",
        "embedding": list(vector),
        "clip_count": 1,
        "audio_s": 3.0,
        "created_utc": "2025-01-01T00:00:00Z",
    }
    data.update(changes or {})
    store.root.mkdir(parents=True, exist_ok=True)
    path = store.path_for(speaker)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(("changes", "message"), [
    ({"version": 2}, "format version 2"),
    ({"embedding": [0.5] * 10}, "256 finite numbers"),
    ({"embedding": [0.0] * 256}, "unit vector"),
    ({"name": "mallory"}, "holds speaker 'mallory'"),
    ({"clip_count": 0}, "clip_count"),
    ({"created_utc": "yesterday"}, "corrupt"),
    ({"format": "something-else"}, "not a voiceprint-enrollment"),
])  # fmt: skip
def test_corrupt_enrollment_files_are_reported(changes, message, tmp_path):
    store = EnrollmentStore(tmp_path)
    write_enrollment(store, "alice", changes)
    with pytest.raises(EnrollmentFormatError, match=re.escape(message)):
        store.load("alice")


def test_enrollment_file_that_is_not_json(tmp_path):
    store = EnrollmentStore(tmp_path)
    write_enrollment(store, "alice").write_text("{not json")
    with pytest.raises(EnrollmentFormatError, match="invalid JSON"):
        store.load("alice")
    write_enrollment(store, "bob")
    assert store.load("bob").clip_count == 1  # the well-formed helper file does load


def test_verify_accepts_the_enrolled_voice_and_rejects_another(speech, encoder):
    joe = voiceprint.enroll("joe", [load(speech["piper0"]), load(speech["piper1"])], encoder=encoder)
    accepted = voiceprint.verify(joe, *load(speech["piper2"]), encoder=encoder)
    rejected = voiceprint.verify(joe, *load(speech["espeak3"]), encoder=encoder)
    assert accepted.accepted and accepted.score >= accepted.threshold == DEFAULT_THRESHOLD
    assert not rejected.accepted and rejected.score < DEFAULT_THRESHOLD
    assert voiceprint.verify(joe, *load(speech["piper2"]), threshold=0.999, encoder=encoder).accepted is False
    other_model = voiceprint.Enrollment("joe", joe.embedding, 2, 6.0, joe.created_utc, "another-model")
    with pytest.raises(EnrollmentFormatError, match="enroll the speaker again"):
        voiceprint.verify(other_model, *load(speech["piper2"]), encoder=encoder)


# ---------------------------------------------------------------- CLI


def test_cli_enroll_verify_list_delete(speech, tmp_path):
    done = run_cli("enroll", "joe", "--wav", str(speech["piper0"]), str(speech["piper1"]), data_home=tmp_path)
    assert done.returncode == 0, done.stderr
    stored = tmp_path / "voice-assistant" / "voiceprints" / "joe.json"
    assert stored.is_file() and stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert "2 clip(s)" in done.stdout

    accept = run_cli("verify", "joe", "--wav", str(speech["piper2"]), data_home=tmp_path)
    assert accept.returncode == 0, accept.stderr
    match = re.search(r"score (-?\d\.\d+) threshold (\d\.\d+) accept$", accept.stdout.strip())
    assert match and float(match[1]) >= float(match[2]) == pytest.approx(DEFAULT_THRESHOLD, abs=1e-3)

    reject = run_cli("verify", "joe", "--wav", str(speech["espeak3"]), data_home=tmp_path)
    assert reject.returncode == 1, reject.stderr
    match = re.search(r"score (-?\d\.\d+) threshold (\d\.\d+) reject$", reject.stdout.strip())
    assert match and float(match[1]) < float(match[2])

    again = run_cli("enroll", "joe", "--wav", str(speech["piper0"]), data_home=tmp_path)
    assert again.returncode == 2 and "--force" in again.stderr

    listed = run_cli("list", data_home=tmp_path)
    assert listed.returncode == 0 and listed.stdout.startswith("joe\t2 clip(s)")
    deleted = run_cli("delete", "joe", data_home=tmp_path)
    assert deleted.returncode == 0 and not stored.exists()


def test_cli_compare_prints_a_score(speech, tmp_path):
    from voice_assistant.models import default_tts_model

    done = run_cli("compare", str(speech["piper0"]), "--piper", str(default_tts_model()),
                   "--text", "The juice of lemons makes a fine punch on a summer day.", data_home=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    match = re.fullmatch(r"score (-?\d\.\d{3}) threshold \d\.\d{3} (.+)", done.stdout.strip())
    assert match and float(match[1]) >= DEFAULT_THRESHOLD and match[2].startswith("alike")

    done = run_cli("compare", str(speech["piper0"]), str(speech["espeak1"]), data_home=tmp_path)
    assert done.returncode == 0, done.stderr
    match = re.fullmatch(r"score (-?\d\.\d{3}) threshold \d\.\d{3} different voices", done.stdout.strip())
    assert match and float(match[1]) < DEFAULT_THRESHOLD


BAD_INPUTS = {
    "missing WAV": (["enroll", "amy", "--wav", "{missing}"], "not found"),
    "corrupt WAV": (["verify", "joe", "--wav", "{corrupt}"], "cannot read WAV"),
    "too short": (["enroll", "amy", "--wav", "{short}"], "at least 1.0 s"),
    "silence": (["compare", "{silence}", "{espeak0}"], "speech"),
    "unknown enrollment": (["verify", "nobody", "--wav", "{espeak0}"], "no enrollment named 'nobody'"),
    "corrupt enrollment": (["verify", "broken", "--wav", "{espeak0}"], "corrupt enrollment file"),
    "bad name": (["enroll", "../evil", "--wav", "{espeak0}"], "invalid speaker name"),
    "unknown delete": (["delete", "nobody"], "no enrollment named"),
    "missing Piper voice": (["compare", "{espeak0}", "--piper", "{missing}"], "TTS model not found"),
    "no microphone": (["enroll", "amy", "--mic", "--device", "no-such-microphone-here", "--seconds", "0.5"],
                      "cannot record from the microphone"),
}


IN_SUBPROCESS = {"corrupt WAV", "no microphone"}  # the rest run main() in-process: same code, less start-up time


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_cli_bad_input_gives_one_line_and_exit_2(case, speech, tmp_path, monkeypatch, capsys):
    from voiceprint.cli import main

    args, expected = BAD_INPUTS[case]
    paths = {key: str(path) for key, path in speech.items()} | {"missing": str(tmp_path / "missing.wav")}
    store = EnrollmentStore(tmp_path / "voice-assistant" / "voiceprints")
    write_enrollment(store, "joe")
    write_enrollment(store, "broken").write_text("{ truncated")
    argv = [arg.format(**paths) for arg in args]
    if case in IN_SUBPROCESS:
        done = run_cli(*argv, data_home=tmp_path)
        returncode, stdout, stderr = done.returncode, done.stdout, done.stderr
    else:
        monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
        returncode = main(argv)
        stdout, stderr = capsys.readouterr()
    lines = stderr.splitlines()
    assert returncode == 2, (stdout, stderr)
    assert len(lines) == 1 and lines[0].startswith("voiceprint: error: "), stderr
    assert expected in lines[0]
    assert stdout == ""


def test_cli_list_shows_unreadable_files_and_goes_on(tmp_path, monkeypatch, capsys):
    from voiceprint.cli import main

    store = EnrollmentStore(tmp_path / "voice-assistant" / "voiceprints")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert main(["list"]) == 0
    assert capsys.readouterr().err.startswith("no enrollments in ")
    write_enrollment(store, "alice")
    write_enrollment(store, "broken").write_text("[]")
    (store.root / "not a name.json").write_text("{}")  # ignored: not a valid speaker name
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["alice", "broken"]
    assert lines[0].split("\t")[1:3] == ["1 clip(s)", "3.0 s"] and "unreadable" in lines[1]
