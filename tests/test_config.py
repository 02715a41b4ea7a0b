"""One source of configuration: dataclass defaults < TOML config file < command-line flags."""

from __future__ import annotations

import dataclasses
import tomllib

import pytest

from voice_assistant.cli import Actions, HelpShown, UsageError, format_error, parse_command_line
from voice_assistant.config import (
    DEFAULT_SYSTEM_PROMPT,
    OPTIONS,
    Config,
    ConfigError,
    default_config_path,
    load_toml,
    make_config,
    to_toml,
)
from voice_assistant.errors import SetupError

TITLES = ["audio", "speech recognition and turn-taking", "language model", "voice", "barge-in", "echo",
          "console", "logging and records"]  # fmt: skip


@pytest.fixture(autouse=True)
def isolated_config_home(tmp_path, monkeypatch):
    """No test reads the developer's own ~/.config/voice-assistant/config.toml."""
    home = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------- defaults and shape


def test_defaults_match_the_previous_argparse_defaults():
    expected = {
        "llm_url": None, "llm_model": None, "llama_server": None, "tts_model": None, "asr_model": None,
        "system_prompt": DEFAULT_SYSTEM_PROMPT, "input_device": None, "output_device": None, "input_wav": None,
        "output_wav": None, "transcript": None, "metrics_json": None, "server_log": None,
        "llm_threads": 2, "llm_batch_threads": 2, "llm_wait_s": 5, "llm_timeout_s": 20, "llm_context": 4096,
        "asr_threads": 2, "tts_threads": 1, "max_reply_tokens": 96, "end_of_speech_silence_ms": 450,
        "speculate_after_ms": 64, "block_ms": 20, "first_chunk_max_words": 8, "first_clause_min_words": 3,
        "use_http2": False, "use_raw_stream": True, "pause_asr_during_prefill": True, "low_latency_mode": True,
        "enable_history_summarization": True, "summarize_after_turns": 10, "history_trim_threshold": 12,
        "barge_in": True, "barge_in_min_speech_ms": 200, "pause_on_speech_onset": True,
        "resume_after_false_interruption": True,
        "aec": True, "echo_guards": True, "speaker_lock": None, "simulate_echo": False, "record_mic": None,
        "echo_delay_ms": 60, "echo_gain_db": 0.0, "log_level": "INFO",
        # in AssistantConfig only until now
        "temperature": 0.0, "keep_recent_turns": 4, "min_utterance_ms": 250, "vad_threshold": 0.5,
        # other servers (issue 12)
        "llm_api": "auto", "llm_model_name": None, "llm_fallback_url": (), "llm_api_key_env": None,
        "allow_insecure_key": False, "llm_reply_limit_s": 120,
        # reliability (issue 13)
        "talk_over_min_logprob": -0.5, "llm_cache_ram_mib": 0,
        # the console (issue 14)
        "plain": False, "text": False, "speak": True, "cues": None,
        # answers worth hearing (issue 10)
        "language": "en", "max_no_speech_prob": 0.6, "min_avg_logprob": -1.2, "max_compression_ratio": 2.4,
        "tts_model_zh": None,
        # turn-taking (issue 11)
        "turn_detector": "words", "turn_complete_silence_ms": 200, "turn_max_silence_ms": 2000,
        "turn_threshold": 0.5, "turn_read_words": True, "turn_model": None, "asr_window_pad_s": 10.0,
        "turn_open_until_answer": True,
    }  # fmt: skip
    assert Config().flat() == expected
    config, actions = parse_command_line([])
    assert config == Config()
    assert actions == Actions()


def test_groups_hold_their_options():
    config = Config()
    assert config.audio.block_ms == 20 and config.speech.vad_threshold == 0.5
    assert config.llm.system_prompt == DEFAULT_SYSTEM_PROMPT and config.voice.first_chunk_max_words == 8
    assert config.barge_in.barge_in is True and config.echo.echo_gain_db == 0.0
    assert config.logging.log_level == "INFO"
    assert [spec.title for spec in {spec.group: spec for spec in OPTIONS.values()}.values()] == TITLES


def test_option_names_are_unique_across_groups():
    names = [f.name for group in dataclasses.fields(Config) for f in dataclasses.fields(group.default_factory())]
    assert len(names) == len(set(names)) == len(OPTIONS)


def test_every_option_has_a_one_line_help_and_a_known_type():
    for spec in OPTIONS.values():
        assert spec.help.strip() and "\n" not in spec.help, spec.name
        assert spec.kind in (str, int, float, bool), spec.name
        assert not (spec.optional and spec.default is not None), spec.name
        assert spec.check(spec.default) == spec.default, spec.name


def other_value(spec):
    """A valid value for `spec` that differs from its default, as command-line words."""
    if spec.repeated:
        return [spec.flag, "http://a/v1", spec.flag, "http://b"], ("http://a/v1", "http://b")
    if spec.kind is bool:
        return [spec.flag if not spec.default else "--no-" + spec.flag[2:]], not spec.default
    if spec.choices:
        value = next(choice for choice in spec.choices if choice != spec.default)
    elif spec.kind is int:
        value = spec.default + 1
    elif spec.kind is float:
        value = spec.default / 2 if spec.max is not None else spec.default - 1.5
        if spec.min is not None and value < spec.min:
            value = (spec.default + spec.max) / 2
    else:
        value = "x"
    return [spec.flag, str(value)], value


@pytest.mark.parametrize("name", list(OPTIONS))
def test_every_option_is_reachable_as_a_flag(name):
    words, value = other_value(OPTIONS[name])
    if name == "simulate_echo":
        words += ["--input-wav", "in.wav"]
    config, actions = parse_command_line(["--test", *words])
    assert config.flat()[name] == value
    assert actions.test


def test_frozen():
    config = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.llm.llm_threads = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.llm = None  # type: ignore[misc]


def test_replace_and_make_config():
    base = Config()
    changed = base.replace(first_clause_min_words=0, barge_in_min_speech_ms=100, echo_gain_db=-3)
    assert changed.voice.first_clause_min_words == 0 and changed.barge_in.barge_in_min_speech_ms == 100
    assert changed.echo.echo_gain_db == -3.0 and isinstance(changed.echo.echo_gain_db, float)
    assert base == Config()  # unchanged
    assert changed.llm is base.llm  # untouched groups are shared
    assert make_config(llm_threads=3) == Config().replace(llm_threads=3)
    with pytest.raises(ConfigError, match="unknown key 'llm_thread'.*'llm_threads'"):
        base.replace(llm_thread=3)
    with pytest.raises(ConfigError, match="'vad_threshold' must be from 0 to 1, got 1.5"):
        make_config(vad_threshold=1.5)


def test_config_error_is_a_setup_error():
    assert issubclass(ConfigError, SetupError) and issubclass(UsageError, ConfigError)


# ---------------------------------------------------------------------- precedence


def test_precedence_defaults_then_file_then_flags(tmp_path):
    path = write(tmp_path / "my.toml", 'llm_threads = 3\ntemperature = 0.9\naec = false\nlog_level = "DEBUG"\n')
    config, actions = parse_command_line(["--config", str(path), "--llm-threads", "5", "--aec"])
    assert actions.config_path == str(path)
    assert config.llm.llm_threads == 5  # flag beats file
    assert config.echo.aec is True  # a bool flag beats the file too
    assert config.llm.temperature == 0.9 and config.logging.log_level == "DEBUG"  # file beats default
    assert config.llm.llm_batch_threads == 2  # default
    # A flag that repeats the built-in default still overrides the file.
    config, _ = parse_command_line(["--config", str(path), "--llm-threads", "2"])
    assert config.llm.llm_threads == 2


def test_default_config_file_is_read_when_it_exists(isolated_config_home, tmp_path):
    config, actions = parse_command_line([])
    assert actions.config_path is None and config == Config()
    path = default_config_path()
    assert path == isolated_config_home / "voice-assistant" / "config.toml"
    path.parent.mkdir(parents=True)
    write(path, "max_reply_tokens = 40\n")
    config, actions = parse_command_line([])
    assert config.llm.max_reply_tokens == 40 and actions.config_path == str(path)
    other = write(tmp_path / "other.toml", "llm_context = 2048\n")
    config, actions = parse_command_line(["--config", str(other)])  # --config replaces the default file
    assert (config.llm.max_reply_tokens, config.llm.llm_context) == (96, 2048)


def test_default_config_path_without_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_config_path() == tmp_path / ".config" / "voice-assistant" / "config.toml"


def test_bool_flags():
    config, _ = parse_command_line(["--no-aec", "--no-barge-in", "--use-http2"])
    assert (config.echo.aec, config.barge_in.barge_in, config.llm.use_http2) == (False, False, True)


# ---------------------------------------------------------------------- TOML round trip


def test_print_config_round_trips(tmp_path):
    prompt = 'Say "hi" \\ then\nstop.\tTabs, é, and \x01 too.'
    argv = ["--print-config", "--system-prompt", prompt, "--echo-gain-db", "-3.5", "--temperature", "0.6",
            "--llm-url", "http://127.0.0.1:8080", "--input-wav", "in.wav", "--output-wav", "out.wav",
            "--block-ms", "40", "--no-aec"]  # fmt: skip
    config, actions = parse_command_line(argv)
    assert actions.print_config and config.llm.system_prompt == prompt and config.echo.echo_gain_db == -3.5
    path = write(tmp_path / "printed.toml", to_toml(config))
    assert Config.from_flat(load_toml(path), source=str(path)) == config
    config, _ = parse_command_line(["--config", str(path)])
    assert config.llm.system_prompt == prompt


@pytest.mark.parametrize("gain", [0.6, -3.5, 0.1, 1e-07, -0.0, 123456789.125, 1e300])
def test_floats_round_trip_exactly(gain):
    config = make_config(echo_gain_db=gain, temperature=0.1 + 0.2)
    back = Config.from_flat(tomllib.loads(to_toml(config)))
    assert back.echo.echo_gain_db == gain and back.llm.temperature == 0.1 + 0.2


def test_printed_config_is_grouped_and_commented():
    text = to_toml(Config())
    for title in TITLES:
        assert any(line.startswith("#") and line.endswith(title) for line in text.splitlines()), title
    assert "instead of starting one\n# llm_url =" in text
    assert "(not set)" in text
    assert "\ntemperature = 0.0\n" in text and "\naec = true\n" in text
    assert set(tomllib.loads(text)) == {name for name, value in Config().flat().items() if value is not None}


# ---------------------------------------------------------------------- config file errors


@pytest.mark.parametrize(
    "text, needles",
    [
        ("llm_thread = 2\n", ["unknown key 'llm_thread'", "'llm_threads'"]),
        ("[audio]\nblock_ms = 20\n", ["unknown key 'audio'"]),
        ('llm_threads = "two"\n', ["'llm_threads' must be a whole number, got 'two'"]),
        ("llm_threads = 2.0\n", ["'llm_threads' must be a whole number"]),
        ("llm_threads = true\n", ["'llm_threads' must be a whole number"]),
        ('aec = "yes"\n', ["'aec' must be true or false"]),
        ("aec = 1\n", ["'aec' must be true or false"]),
        ("temperature = true\n", ["'temperature' must be a number"]),
        ("temperature = nan\n", ["'temperature' must be a finite number"]),
        ("llm_url = 8080\n", ["'llm_url' must be text"]),
        ("llm_threads = 0\n", ["'llm_threads' must be above 0, got 0"]),
        ("echo_delay_ms = -1\n", ["'echo_delay_ms' must be 0 or more, got -1"]),
        ("vad_threshold = 1.5\n", ["'vad_threshold' must be from 0 to 1, got 1.5"]),
        ("block_ms = 25\n", ["'block_ms' must be one of 10, 20, 30, 40, got 25"]),
        ('log_level = "debug"\n', ["'log_level' must be one of DEBUG, INFO, WARNING, ERROR, got 'debug'"]),
    ],
)
def test_bad_config_values_name_key_and_file(tmp_path, text, needles):
    path = write(tmp_path / "config.toml", text)
    with pytest.raises(ConfigError) as info:
        parse_command_line(["--config", str(path)])
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}: ")
    for needle in needles:
        assert needle in message


def test_bad_toml_names_the_file(tmp_path):
    path = write(tmp_path / "broken.toml", "llm_threads = = 2\n")
    with pytest.raises(ConfigError, match="broken.toml: not valid TOML") as info:
        parse_command_line(["--config", str(path)])
    assert "\n" not in str(info.value)
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"llm_url = \"\xff\"\n")
    with pytest.raises(ConfigError, match="binary.toml"):
        load_toml(binary)


def test_missing_or_unreadable_config_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.toml: config file not found"):
        parse_command_line(["--config", str(tmp_path / "nope.toml")])
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_toml(tmp_path)  # a folder


def test_conflicts_in_a_config_file_are_reported(tmp_path):
    path = write(tmp_path / "config.toml", "summarize_after_turns = 20\n")
    with pytest.raises(ConfigError, match="trim"):
        parse_command_line(["--config", str(path)])
    config, _ = parse_command_line(["--config", str(path), "--history-trim-threshold", "20"])
    assert config.llm.history_trim_threshold == 20


# ---------------------------------------------------------------------- command-line errors


@pytest.mark.parametrize(
    "flags, needles",
    [
        (["--llm-threads", "0"], ["--llm-threads", "above 0"]),
        (["--llm-threads", "two"], ["--llm-threads", "whole number"]),
        (["--echo-delay-ms", "-5"], ["--echo-delay-ms", "0 or more"]),
        (["--temperature", "hot"], ["--temperature", "must be a number"]),
        (["--vad-threshold", "2"], ["--vad-threshold", "from 0 to 1"]),
        (["--block-ms", "25"], ["--block-ms", "invalid choice"]),
        (["--log-level", "LOUD"], ["--log-level", "invalid choice"]),
        (["--no-such-flag"], ["unrecognized", "--no-such-flag"]),
        (["--llm-threads"], ["--llm-threads", "requires an argument"]),
        (["--aec=yes"], ["--aec"]),
        (["stray"], ["stray"]),
    ],
)
def test_bad_flags_are_usage_errors(flags, needles):
    with pytest.raises(UsageError) as info:
        parse_command_line(flags)
    line = format_error(str(info.value))
    assert "\n" not in line and line.startswith("error: ")
    for needle in needles:
        assert needle.lower() in line.lower(), line


@pytest.mark.parametrize(
    "flags, needle",
    [
        (["--input-wav", "in.wav"], "--output-wav"),
        (["--output-wav", "out.wav"], "--input-wav"),
        (["--llm-url", "http://127.0.0.1:1", "--llm-model", "x.gguf"], "--llm-url"),
        (["--llm-url", "http://127.0.0.1:1", "--llama-server", "./llama-server"], "--llm-url"),
        (["--summarize-after-turns", "20", "--history-trim-threshold", "12"], "trim"),
        (["--simulate-echo"], "file mode"),
    ],
)
def test_conflicting_flags(flags, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_command_line(flags)


def test_one_wav_is_fine_for_the_self_test_and_print_config():
    for action in ("--test", "--print-config", "--list-devices"):
        config, _ = parse_command_line([action, "--input-wav", "in.wav"])
        assert config.audio.input_wav == "in.wav"
    config.validate(conversation=False)
    with pytest.raises(ConfigError, match="file mode"):
        config.validate()


def test_help_lists_every_group_and_flag(capsys):
    with pytest.raises(HelpShown):
        parse_command_line(["--help"])
    out = capsys.readouterr().out
    headings = [line[:-1].lower() for line in out.splitlines() if line and not line[0].isspace() and line[-1] == ":"]
    assert headings == [*TITLES, "actions"]
    for spec in OPTIONS.values():
        assert spec.flag in out, spec.flag
    for action in ("--config", "--print-config", "--test", "--list-devices", "--no-aec"):
        assert action in out
    assert "[default: 4096]" in out
    with pytest.raises(HelpShown):
        parse_command_line(["-h"])


def test_a_repeated_option_round_trips_through_the_file(tmp_path):
    config = make_config(llm_fallback_url=("http://gpu-box:8080", "https://api.example.com/v1"))
    path = tmp_path / "c.toml"
    path.write_text(to_toml(config))
    assert 'llm_fallback_url = ["http://gpu-box:8080", "https://api.example.com/v1"]' in path.read_text()
    assert Config.from_flat(load_toml(path), source=str(path)) == config
    path.write_text('llm_fallback_url = "http://one"\n')
    with pytest.raises(ConfigError, match="'llm_fallback_url' must be a list"):
        Config.from_flat(load_toml(path), source=str(path))


def test_turning_speculation_off_leaves_the_default_words_detector_to_silence_and_refuses_smart():
    config, _ = parse_command_line(["--speculate-after-ms", "0"])  # the default `words` becomes silence alone
    assert config.speech.turn_detector == "words" and config.speech.speculate_after_ms == 0
    with pytest.raises(ConfigError, match="--turn-detector smart listens to the first pause"):
        parse_command_line(["--speculate-after-ms", "0", "--turn-detector", "smart"])
