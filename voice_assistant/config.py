"""Every option of the assistant, defined once: frozen dataclasses, one per group of options.

The command line (`voice_assistant.cli`) and the TOML config file are both generated from these
fields. An option's name is its field name, which is also its config-file key; its flag is the
name with dashes (`llm_threads` is `--llm-threads`). Names are unique across groups, so the file
and `Config.flat()` use plain keys without group tables.

Each field is declared with `option()`, whose `help` is one line stating the unit. Checks that
involve one value (type, range, choices) live in the field; checks across fields are in
`Config.validate()`. Every problem is a `ConfigError` whose message is one line naming the key
(or flag) and where the value came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .errors import SetupError

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful voice assistant. Your replies are spoken aloud, so give the answer first, in one "
    "short sentence, or two if needed, unless the user asks for more. Never use lists, markdown, emoji or code."
)


class ConfigError(SetupError):
    """An option has a bad value, a config file is missing or malformed, or options conflict."""


class InvalidValue(ValueError):
    """One value an option cannot take; the message is the problem, e.g. "must be above 0, got 0"."""

    def __init__(self, problem: str, *, bad_choice: bool = False) -> None:
        super().__init__(problem)
        self.bad_choice = bad_choice  # the value is not one of the option's choices


def option(
    default: Any,
    help: str,
    *,
    min: float | None = None,
    max: float | None = None,
    choices: tuple | None = None,
    metavar: str | None = None,
) -> Any:
    """A config field: its default, a one-line help stating the unit, and the checks on its value."""
    assert "\n" not in help, help
    metadata = {"help": help, "min": min, "max": max, "choices": choices, "metavar": metavar}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class AudioConfig:
    title: ClassVar[str] = "audio"

    input_device: str | None = option(None, "microphone: device index or part of its name (default: the system's)",
                                      metavar="DEVICE")
    output_device: str | None = option(None, "speaker: device index or part of its name (default: the system's)",
                                       metavar="DEVICE")
    input_wav: str | None = option(None, "file mode: play this WAV file as the microphone, in real time",
                                   metavar="WAV")
    output_wav: str | None = option(None, "file mode: write everything played to this WAV file, on the input's "
                                          "timeline", metavar="WAV")
    block_ms: int = option(20, "playback block length, in milliseconds", choices=(10, 20, 30, 40))
    record_mic: str | None = option(None, "write the microphone before and after echo cancellation to this "
                                          "stereo WAV file", metavar="WAV")


@dataclass(frozen=True)
class SpeechConfig:
    title: ClassVar[str] = "speech recognition and turn-taking"

    language: str = option("en", "the language spoken: en (English), zh (Mandarin), or auto: each utterance's "
                                 "language is detected and answered in it, with that language's voice",
                           choices=("en", "zh", "auto"))
    asr_model: str | None = option(None, "bundled recogniser (tiny.en, base) or a CTranslate2 Whisper folder "
                                         "(default: the multilingual base)",
                                   metavar="MODEL")
    asr_threads: int = option(2, "CTranslate2 threads for faster-whisper", min=1)
    asr_window_pad_s: float = option(10.0, "Whisper's encoder reads the utterance and this many seconds after it "
                                           "(30: Whisper's full 30-second window, 3 times slower)",
                                     min=6, max=30, metavar="S")
    end_of_speech_silence_ms: int = option(450, "silence after speech that ends the user's turn, in milliseconds",
                                           min=1, metavar="MS")
    turn_detector: str = option("words", "what ends the user's turn: words (silence, but words that cannot end a "
                                         "message wait for more; the language model judges them), smart (the Smart "
                                         "Turn model hears whether the sentence is finished, and the words are judged "
                                         "too) or silence (--end-of-speech-silence-ms of silence)",
                                choices=("words", "smart", "silence"))
    turn_complete_silence_ms: int = option(200, "smart, words: silence that ends a turn heard as finished, in "
                                                "milliseconds", min=1, metavar="MS")
    turn_max_silence_ms: int = option(2000, "smart, words: the longest silence that a turn heard as unfinished waits for "
                                            "more, in milliseconds", min=1, metavar="MS")
    turn_open_until_answer: bool = option(True, "a turn heard as over stays open until its speculative answer is "
                                                "ready to play (at most --turn-max-silence-ms of silence): speech "
                                                "before then goes on with the same turn, as after a thinking pause")
    turn_threshold: float = option(0.5, "smart: probability of a finished turn above which it is finished",
                                   min=0, max=1, metavar="P")
    turn_read_words: bool = option(True, "smart: also ask the language model whether the words so far can end a "
                                         "message (llama-server only; --turn-detector words always does)")
    turn_model: str | None = option(None, "smart: the Smart Turn v3 ONNX file (default: the one taken from the "
                                          "pipecat-ai wheel at set-up)", metavar="ONNX")
    speculate_after_ms: int = option(64, "transcribe and start answering after this much silence, before the turn "
                                         "ends, in milliseconds (0: off)", min=0, metavar="MS")
    min_utterance_ms: int = option(250, "less speech than this is not transcribed speculatively, in milliseconds",
                                   min=0, metavar="MS")
    max_no_speech_prob: float = option(0.6, "a transcript whose decoder says 'no speech' with at least this "
                                            "probability, and is unsure of its words, is dropped as a hallucination",
                                       min=0, max=1, metavar="P")
    min_avg_logprob: float = option(-1.2, "a transcript whose words average less than this log-probability per token "
                                          "is dropped as a hallucination (real recorded English: -1.0 at worst; "
                                          "Mandarin heard by tiny.en: -1.0 to -2.3)", max=0, metavar="LOGP")
    max_compression_ratio: float = option(2.4, "a transcript that compresses better than this (a repeated phrase) "
                                               "is dropped as a hallucination", min=1, max=10, metavar="RATIO")
    vad_threshold: float = option(0.5, "Silero speech probability that counts as speech, from 0 to 1",
                                  min=0, max=1, metavar="P")


@dataclass(frozen=True)
class LLMConfig:
    title: ClassVar[str] = "language model"

    llm_url: str | None = option(None, "use this running server (llama-server, or OpenAI-compatible) instead of "
                                 "starting one", metavar="URL")
    llm_api: str = option("auto", "the server's API: llamacpp (/completion), openai (/v1/chat/completions), or auto: "
                          "a URL ending in /v1 is openai, else probe /props", choices=("auto", "llamacpp", "openai"))
    llm_model_name: str | None = option(None, "the `model` field of OpenAI-style requests (default: the first of "
                                        "GET /v1/models)", metavar="NAME")
    llm_fallback_url: tuple[str, ...] = option(
        (), "a server to use when the ones before it are down (API detected like --llm-url); back to the first as "
        "soon as it answers", metavar="URL")
    llm_api_key_env: str | None = option(None, "environment variable holding the API key (default: LLAMA_API_KEY, "
                                         "then OPENAI_API_KEY); the key is never printed", metavar="NAME")
    allow_insecure_key: bool = option(False, "send the API key over plain http:// to a host that is not this machine")
    llm_model: str | None = option(None, "GGUF model for the auto-started llama-server: a bundled name "
                                         "(qwen-0.5b, qwen-1.5b, smollm2-135m; see --list-models) or a .gguf file "
                                         "(default: qwen-1.5b)", metavar="MODEL")
    llama_server: str | None = option(None, "llama-server binary to start (default: the bundled build)",
                                      metavar="PATH")
    llm_threads: int = option(2, "llama-server generation threads (-t); 2 writes the first sentence faster than 1 "
                                 "(measured), at the cost of sharing the cores with Piper on longer replies", min=1)
    llm_batch_threads: int = option(2, "llama-server prompt-processing threads (-tb); 2 reads a turn's words in half "
                                       "the time of 1 when the machine is quiet, and is slower than 1 while "
                                       "anything else keeps one of two cores busy (measured)", min=1)
    llm_wait_s: int = option(5, "seconds to wait at start for an --llm-url server that is not up yet; then live mode "
                                "keeps polling it, file mode and --test exit with an error", min=0, metavar="S")
    llm_timeout_s: int = option(20, "seconds to wait for a reply's first token, and that a stream may stay silent "
                                    "(a silent server that does not answer /health either is hung and restarted); "
                                    "once a reply has begun, seconds without a new sentence before it ends as too "
                                    "slow", min=1, metavar="S")
    llm_reply_limit_s: int = option(120, "the longest a reply may stream, in seconds, whatever the server sends "
                                    "meanwhile", min=1, metavar="S")
    llm_context: int = option(4096, "context size per server slot, in tokens", min=1, metavar="TOKENS")
    llm_cache_ram_mib: int = option(0, "host memory the llama-server we start may fill with cached prompts, in MiB "
                                       "(0: none; its own default of 8192 grew it by 2.9 GB in an hour)", min=-1,
                                    metavar="MIB")
    max_reply_tokens: int = option(96, "longest reply, in tokens", min=1, metavar="TOKENS")
    temperature: float = option(0.0, "sampling temperature, from 0 (always the likeliest token: the most right "
                                     "answers in bench_answers) to 2",
                                min=0, max=2, metavar="T")
    system_prompt: str = option(DEFAULT_SYSTEM_PROMPT, "the assistant's persona, sent as the system message (text)",
                                metavar="TEXT")
    use_http2: bool = option(False, "HTTP/2 for the line reader (llama-server speaks HTTP/1.1 only)")
    use_raw_stream: bool = option(True, "read the reply stream as raw bytes instead of httpx's line iterator")
    pause_asr_during_prefill: bool = option(True, "hold speech recognition while the model processes the prompt")
    low_latency_mode: bool = option(True, "strip mirostat and typical_p from the sampling parameters")
    enable_history_summarization: bool = option(True, "fold older exchanges into a summary written by the model")
    summarize_after_turns: int = option(10, "summarize once the history holds more exchanges than this",
                                        min=1, metavar="TURNS")
    history_trim_threshold: int = option(12, "most exchanges ever kept in the history: past it (summaries did "
                                        "not keep up) the oldest are dropped down to --keep-recent-turns at once",
                                        min=1, metavar="TURNS")
    keep_recent_turns: int = option(4, "exchanges left verbatim after a summary", min=0, metavar="TURNS")


@dataclass(frozen=True)
class VoiceConfig:
    title: ClassVar[str] = "voice"

    tts_model: str | None = option(None, "Piper voice .onnx file, with its .onnx.json beside it (default: bundled "
                                         "joe)", metavar="ONNX")
    tts_model_zh: str | None = option(None, "Mandarin voice for --language zh and auto: a folder with "
                                            "fastspeech2_quan.onnx, mb_melgan.onnx and baker_mapper.json "
                                            "(default: the one built at set-up)",
                                      metavar="PATH")
    tts_threads: int = option(1, "onnxruntime threads for Piper", min=1)
    first_clause_min_words: int = option(3, "the first spoken chunk may end at a comma after this many words "
                                            "(0: whole sentences only)", min=0, metavar="WORDS")
    first_chunk_max_words: int = option(8, "the first spoken chunk is cut after this many words if no punctuation "
                                           "comes first (0: off)", min=0, metavar="WORDS")


@dataclass(frozen=True)
class BargeInConfig:
    title: ClassVar[str] = "barge-in"

    barge_in: bool = option(True, "let the user's speech interrupt the assistant")
    barge_in_min_speech_ms: int = option(200, "speech needed to interrupt, in milliseconds (coughs and clicks are "
                                              "shorter)", min=1, metavar="MS")
    pause_on_speech_onset: bool = option(True, "hold the reply's audio the moment the user's voice starts (it goes "
                                               "on if the sound is over, by the end-of-turn silence, with less "
                                               "than --barge-in-min-speech-ms of speech)")
    resume_after_false_interruption: bool = option(True, "resume a reply interrupted by a sound without words")
    talk_over_min_logprob: float = option(-0.5, "an utterance that talked over the assistant, transcribed with a lower "
                                                "mean log-probability per token, is not answered: the assistant asks "
                                                "again (-10 turns this off)", min=-10.0, max=0.0, metavar="NATS")


@dataclass(frozen=True)
class EchoConfig:
    title: ClassVar[str] = "echo"

    aec: bool = option(True, "WebRTC echo cancellation on the microphone (live mode, or file mode with "
                             "--simulate-echo)")
    echo_guards: bool = option(True, "ignore transcripts of our own speech, our own voice, and conversation loops")
    speaker_lock: str | None = option(None, "answer only this enrolled voice (python -m voiceprint enroll)",
                                      metavar="NAME")
    simulate_echo: bool = option(False, "file mode: mix what is played back into the input through a simulated "
                                        "room")
    echo_delay_ms: int = option(60, "--simulate-echo: echo delay, in milliseconds", min=0, metavar="MS")
    echo_gain_db: float = option(0.0, "--simulate-echo: echo level, in dB (0: as loud as the user)", metavar="DB")


@dataclass(frozen=True)
class ConsoleConfig:
    title: ClassVar[str] = "console"

    plain: bool = option(False, "print log lines instead of the live terminal view (always so when stdout is not "
                                "a terminal)")
    text: bool = option(False, "no microphone: type your turns (a line each; read from stdin when it is not a "
                               "terminal)")
    speak: bool = option(True, "speak the replies (--no-speak prints them only)")
    cues: bool | None = option(None, "short quiet tones when your turn is heard and when the assistant starts "
                                     "thinking (default: on in live mode, off in file mode)")


@dataclass(frozen=True)
class LoggingConfig:
    title: ClassVar[str] = "logging and records"

    transcript: str | None = option(None, "append each turn as a JSON line to this file", metavar="PATH")
    metrics_json: str | None = option(None, "append per-turn timings to this file as JSON lines", metavar="PATH")
    server_log: str | None = option(None, "llama-server log file (default: "
                                          "~/.local/state/voice-assistant/llama-server.log)", metavar="PATH")
    log_level: str = option("INFO", "how much to log to the terminal", choices=("DEBUG", "INFO", "WARNING", "ERROR"))


@dataclass(frozen=True)
class OptionSpec:
    """One option as the command line and the config file see it (built from its dataclass field)."""

    name: str  # field name and config-file key, e.g. "llm_threads"
    group: str  # attribute of Config that holds it, e.g. "llm"
    title: str  # the group's heading in --help and in the TOML file
    kind: type  # str, int, float or bool
    optional: bool  # None is allowed and means "not set"
    repeated: bool  # a list of `kind` values (tuple[str, ...]): a flag given several times, a TOML array
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parse(self, text: str) -> Any:
        """The value a command-line string stands for (not yet range-checked); InvalidValue if none."""
        if self.kind is int:
            try:
                return int(text)
            except ValueError:
                raise InvalidValue(f"must be a whole number, got {text!r}") from None
        if self.kind is float:
            try:
                return float(text)
            except ValueError:
                raise InvalidValue(f"must be a number, got {text!r}") from None
        if self.kind is bool:
            words = {"true": True, "false": False}
            if text.lower() not in words:
                raise InvalidValue(f"must be true or false, got {text!r}")
            return words[text.lower()]
        return text

    def check(self, value: Any) -> Any:
        """`value` if this option can take it (an int becomes a float for a float option); else InvalidValue."""
        if self.repeated:
            if not isinstance(value, (list, tuple)):
                raise InvalidValue(f"must be a list, got {value!r}")
            return tuple(self._check_one(item) for item in value)
        return self._check_one(value)

    def _check_one(self, value: Any) -> Any:
        if value is None and self.optional:
            return None
        if self.kind is bool:
            if not isinstance(value, bool):
                raise InvalidValue(f"must be true or false, got {value!r}")
        elif self.kind is int:
            if not isinstance(value, int) or isinstance(value, bool):
                raise InvalidValue(f"must be a whole number, got {value!r}")
        elif self.kind is float:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise InvalidValue(f"must be a number, got {value!r}")
            value = float(value)
            if not math.isfinite(value):
                raise InvalidValue(f"must be a finite number, got {value!r}")
        elif not isinstance(value, str):
            raise InvalidValue(f"must be text, got {value!r}")
        if self.choices is not None and value not in self.choices:
            listed = ", ".join(str(choice) for choice in self.choices)
            raise InvalidValue(f"must be one of {listed}, got {value!r}", bad_choice=True)
        low, high = self.min, self.max
        if (low is not None and value < low) or (high is not None and value > high):
            raise InvalidValue(f"{self._range_text()}, got {value!r}")
        return value

    def _range_text(self) -> str:
        low, high = self.min, self.max
        if low is not None and high is not None:
            return f"must be from {low} to {high}"
        if high is not None:
            return f"must be at most {high}"
        if self.kind is int and low == 1:
            return "must be above 0"  # the wording of the old argparse flags, which scripts may grep
        if low == 0:
            return "must be 0 or more"
        return f"must be at least {low}"


def _spec_for(group: str, title: str, f: dataclasses.Field, hint: Any) -> OptionSpec:
    repeated = False
    if hint in (str, int, float, bool):
        kind, optional = hint, False
    elif set(typing.get_args(hint)) == {str, type(None)}:
        kind, optional = str, True
    elif set(typing.get_args(hint)) == {bool, type(None)}:
        kind, optional = bool, True  # not set (None): the program decides, e.g. by mode
    elif typing.get_origin(hint) is tuple and typing.get_args(hint) == (str, Ellipsis):
        kind, optional, repeated = str, False, True
    else:
        raise TypeError(f"option {f.name!r} has type {hint!r}: use str, int, float, bool, str | None, "
                        "bool | None or tuple[str, ...]")
    meta = f.metadata
    if "help" not in meta:
        raise TypeError(f"option {f.name!r} is not declared with option()")
    return OptionSpec(f.name, group, title, kind, optional, repeated, f.default, meta["help"], meta["min"],
                      meta["max"], meta["choices"], meta["metavar"])


@dataclass(frozen=True)
class Config:
    """The whole configuration. Build it with `Config.from_flat()`, `make_config()` or the CLI."""

    audio: AudioConfig = field(default_factory=AudioConfig)
    speech: SpeechConfig = field(default_factory=SpeechConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    voice: VoiceConfig = field(default_factory=VoiceConfig)
    barge_in: BargeInConfig = field(default_factory=BargeInConfig)
    echo: EchoConfig = field(default_factory=EchoConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    @classmethod
    def from_flat(cls, values: typing.Mapping[str, Any], source: str = "") -> Config:
        """The defaults with `values` (option name -> value) applied, each checked; `source` (a file name,
        say) starts every error message."""
        return cls()._updated(values, source)

    def flat(self) -> dict[str, Any]:
        """Every option name -> its value, in declaration order."""
        return {name: getattr(getattr(self, spec.group), name) for name, spec in OPTIONS.items()}

    def replace(self, **values: Any) -> Config:
        """A copy with these options (by flat name) changed, each checked."""
        return self._updated(values, "")

    def _updated(self, values: typing.Mapping[str, Any], source: str) -> Config:
        changes: dict[str, dict[str, Any]] = {}
        for name, value in values.items():
            spec = OPTIONS.get(name)
            if spec is None:
                raise ConfigError(_unknown_key(name, value, source))
            try:
                changes.setdefault(spec.group, {})[name] = spec.check(value)
            except InvalidValue as exc:
                raise ConfigError(f"{source}: {name!r} {exc}" if source else f"{name!r} {exc}") from None
        groups = {group: dataclasses.replace(getattr(self, group), **fields) for group, fields in changes.items()}
        return dataclasses.replace(self, **groups)

    def system_prompt(self) -> str:
        """The system message sent to the model: the persona and the rule for the replies' language."""
        from .language import system_prompt

        return system_prompt(self.llm.system_prompt, self.speech.language)

    def validate(self, *, conversation: bool = True) -> None:
        """Raise ConfigError if options contradict each other.

        `conversation`: a conversation is about to run. Only then does file mode need both WAV paths;
        --test, --list-devices and --print-config may name just one.
        """
        audio, llm = self.audio, self.llm
        if conversation and (audio.input_wav is None) != (audio.output_wav is None):
            raise ConfigError("file mode needs both --input-wav and --output-wav")
        if llm.llm_url and (llm.llm_model or llm.llama_server):
            raise ConfigError(
                "--llm-url uses a running server; --llm-model and --llama-server apply only to one we start"
            )
        if self.echo.simulate_echo and audio.input_wav is None:
            raise ConfigError("--simulate-echo needs file mode (--input-wav and --output-wav)")
        if self.console.text and audio.input_wav is not None:
            raise ConfigError("--text replaces the microphone; it cannot be used with --input-wav")
        speech = self.speech
        if speech.turn_detector == "smart" and speech.speculate_after_ms == 0:
            raise ConfigError("--turn-detector smart listens to the first pause (--speculate-after-ms); it cannot be 0 "
                              "(use --turn-detector silence)")
        if speech.turn_detector != "silence" and speech.turn_complete_silence_ms > speech.turn_max_silence_ms:
            raise ConfigError("--turn-complete-silence-ms must not be longer than --turn-max-silence-ms")
        if llm.history_trim_threshold < llm.summarize_after_turns:
            raise ConfigError("--history-trim-threshold must be at least --summarize-after-turns")


def _unknown_key(name: str, value: Any, source: str) -> str:
    message = f"unknown key {name!r}"
    close = difflib.get_close_matches(str(name).replace("-", "_"), OPTIONS, n=1)
    if isinstance(value, dict):
        message += " (options are plain keys, without [tables])"
    elif close:
        message += f" (did you mean {close[0]!r}?)"
    return f"{source}: {message}" if source else message


def _collect_options() -> dict[str, OptionSpec]:
    options: dict[str, OptionSpec] = {}
    group_types = typing.get_type_hints(Config)
    for group in dataclasses.fields(Config):
        group_type = group_types[group.name]
        hints = typing.get_type_hints(group_type)
        for f in dataclasses.fields(group_type):
            if f.name in options:
                raise TypeError(f"option {f.name!r} is in both {options[f.name].group!r} and {group.name!r}")
            options[f.name] = _spec_for(group.name, group_type.title, f, hints[f.name])
    return options


OPTIONS: dict[str, OptionSpec] = _collect_options()
"""Every option by name, in declaration order (group by group)."""


def make_config(**values: Any) -> Config:
    """The defaults with these options changed: `make_config(llm_threads=2)`."""
    return Config().replace(**values)


# ---------------------------------------------------------------------- TOML


def default_config_path() -> Path:
    """$XDG_CONFIG_HOME/voice-assistant/config.toml (default ~/.config/voice-assistant/config.toml)."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(base):  # the XDG spec says to ignore a relative path
        base = str(Path.home() / ".config")
    return Path(base) / "voice-assistant" / "config.toml"


def load_toml(path: str | os.PathLike) -> dict[str, Any]:
    """The key/value pairs of a TOML file, unchecked (pass them to `Config.from_flat`)."""
    try:
        with open(path, "rb") as file:
            return tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a TOML file (not UTF-8 text)") from None
    except tomllib.TOMLDecodeError as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(f"{path}: not valid TOML: {detail}") from None


def to_toml(config: Config) -> str:
    """The configuration as a TOML file that `load_toml` and `Config.from_flat` read back exactly.

    Options are grouped under a comment line per group, each after its help as a comment. An option
    that is not set (None) is written commented out, since TOML has no null.
    """
    lines = [
        "# Voice assistant configuration. Keys are the command-line flags with underscores:",
        "# --llm-threads is llm_threads. Flags given on the command line override this file.",
    ]
    title = None
    for name, value in config.flat().items():
        spec = OPTIONS[name]
        if spec.title != title:
            title = spec.title
            lines += ["", f"# ---------------------------------------------------------------- {title}"]
        lines.append(f"# {spec.help}")
        lines.append(f"# {name} =   (not set)" if value is None else f"{name} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


_TOML_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def toml_value(value: str | int | float | bool | tuple) -> str:
    """One value in TOML syntax: a basic string, an integer, a float, a boolean or an array of them."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML has no finite spelling for {value!r}")
        return repr(value)  # the shortest text that reads back as the same float: "0.6", "-3.5", "1e-07"
    if isinstance(value, str):
        out = []
        for ch in value:
            if ch in _TOML_ESCAPES:
                out.append(_TOML_ESCAPES[ch])
            elif ch < " " or ch == "\x7f":  # other control characters are not allowed raw
                out.append(f"\\u{ord(ch):04x}")
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'
    raise TypeError(f"no TOML spelling for {type(value).__name__}")
