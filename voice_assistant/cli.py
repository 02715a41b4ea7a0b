"""The command line, generated from `voice_assistant.config`: one flag per option, plus actions.

Precedence: built-in defaults < the config file < flags actually given on the command line. The
config file is `--config PATH`, or else `default_config_path()` when that file exists.

    try:
        config, actions = parse_command_line(argv)
    except HelpShown:
        return 0  # the help is already on stdout
    except ConfigError as exc:  # UsageError (a bad flag) included
        print(format_error(str(exc)), file=sys.stderr)
        return 2

Only `main()` calls this. Importing the module builds nothing and reads no file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import click
from click.core import ParameterSource

from .config import OPTIONS, Config, ConfigError, InvalidValue, OptionSpec, default_config_path, load_toml

PROG = "asr_llm_tts.py"
ACTIONS_TITLE = "actions"


class UsageError(ConfigError):
    """A flag is unknown, lacks its value, or has a value its option cannot take."""


class HelpShown(Exception):
    """`--help` printed the help to stdout; the caller exits with code 0. Not an error."""


@dataclass(frozen=True)
class Actions:
    """What to do instead of (or before) running a conversation."""

    test: bool = False  # --test: check every component and exit
    list_devices: bool = False  # --list-devices: list audio devices, defaults marked, and exit
    list_models: bool = False  # --list-models: list the installed LLM and ASR models and llama-server, and exit
    list_voices: bool = False  # --list-voices: list the installed Piper voices and exit
    sound_check: bool = False  # --sound-check: show the microphone level, play a test tone, judge the level
    print_config: bool = False  # --print-config: print the effective configuration as TOML (to_toml) and exit 0
    config_path: str | None = None  # the config file that was read, if any


def format_error(message: str) -> str:
    """The one line `main()` prints on stderr for a ConfigError."""
    return f"error: {message} (see --help)"


class OptionType(click.ParamType):
    """A command-line value checked by its option's own rules, so flags and config file agree."""

    def __init__(self, spec: OptionSpec, item: bool = False) -> None:
        self.spec = spec
        self.item = item  # one value of a repeated option (click collects them into a tuple)
        self.name = spec.kind.__name__

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            if self.item:
                return self.spec.check((self.spec.parse(value),))[0]
            return self.spec.check(self.spec.parse(value) if isinstance(value, str) else value)
        except InvalidValue as exc:
            self.fail(f"invalid choice, {exc}" if exc.bad_choice else str(exc), param, ctx)


class GroupedCommand(click.Command):
    """A command whose --help lists the options under one heading per config group, then the actions."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {spec.title: [] for spec in OPTIONS.values()}
        sections[ACTIONS_TITLE] = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                spec = OPTIONS.get(param.name or "")
                sections[spec.title if spec else ACTIONS_TITLE].append(record)
        for title, records in sections.items():
            if records:
                with formatter.section(title[0].upper() + title[1:]):
                    formatter.write_dl(records)


def _default_text(spec: OptionSpec) -> str:
    value = spec.default
    if value is None or value == ():
        return ""
    if isinstance(value, bool):
        return f"  [default: {'on' if value else 'off'}]"
    text = str(value)
    return f"  [default: {text if len(text) <= 40 else text[:37] + '...'}]"


def _option(spec: OptionSpec) -> click.Option:
    help_text = spec.help + _default_text(spec)
    if spec.repeated:
        return click.Option([spec.flag, spec.name], type=OptionType(spec, item=True), multiple=True,
                            default=spec.default, metavar=spec.metavar or "TEXT", help=help_text + "; repeatable")
    if spec.kind is bool:
        negative = "--no-" + spec.flag[2:]
        return click.Option([f"{spec.flag}/{negative}", spec.name], default=spec.default, help=help_text)
    if spec.choices is not None:
        metavar = "[" + "|".join(str(choice) for choice in spec.choices) + "]"
    else:
        metavar = spec.metavar or {int: "N", float: "X"}.get(spec.kind, "TEXT")
    return click.Option([spec.flag, spec.name], type=OptionType(spec), default=spec.default, metavar=metavar,
                        help=help_text)


def build_command() -> click.Command:
    """The click command: every option of `Config`, then the actions. Its callback returns (Config, Actions)."""
    params: list[click.Parameter] = [_option(spec) for spec in OPTIONS.values()]
    params += [
        click.Option(["--config", "config_path"], metavar="PATH",
                     help=f"read options from this TOML file (default: {default_config_path()}, if it exists)"),
        click.Option(["--print-config"], is_flag=True, help="print the effective configuration as TOML and exit"),
        click.Option(["--test"], is_flag=True, help="check every component and exit"),
        click.Option(["--list-devices"], is_flag=True, help="list audio devices (defaults marked) and exit"),
        click.Option(["--list-models"], is_flag=True, help="list the installed models and llama-server and exit"),
        click.Option(["--list-voices"], is_flag=True, help="list the installed Piper voices and exit"),
        click.Option(["--sound-check"], is_flag=True,
                     help="show the microphone level for a few seconds, play a test tone, say if the level is ok"),
    ]  # fmt: skip
    return GroupedCommand(
        name=PROG,
        params=params,
        callback=click.pass_context(_configure),
        help="Local real-time voice assistant (RealtimeSTT + llama-server + Piper).",
        epilog="Options can also be set in a TOML config file (keys are the flag names with underscores); "
        "flags given here override it. --print-config writes such a file.",
        context_settings={"help_option_names": ["-h", "--help"]},
    )


def _configure(ctx: click.Context, **values: Any) -> tuple[Config, Actions]:
    config_path = values["config_path"]
    if config_path is None and default_config_path().is_file():
        config_path = str(default_config_path())
    config = Config()
    if config_path is not None:
        config = Config.from_flat(load_toml(config_path), source=config_path)
    given = {
        name: values[name] for name in OPTIONS if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
    }
    config = config.replace(**given)
    actions = Actions(test=values["test"], list_devices=values["list_devices"], list_models=values["list_models"],
                      list_voices=values["list_voices"], sound_check=values["sound_check"],
                      print_config=values["print_config"], config_path=config_path)  # fmt: skip
    converses = not (actions.test or actions.list_devices or actions.list_models or actions.list_voices
                     or actions.sound_check or actions.print_config)  # fmt: skip
    config.validate(conversation=converses)
    return config, actions


def parse_command_line(argv: list[str] | None = None) -> tuple[Config, Actions]:
    """The configuration and the actions for `argv` (default: sys.argv[1:]).

    Raises UsageError for a bad flag, ConfigError for a bad config file or options that contradict
    each other, and HelpShown after printing --help.
    """
    try:
        result = build_command().main(args=argv, standalone_mode=False, prog_name=PROG)
    except click.NoSuchOption as exc:
        possibilities = list(getattr(exc, "possibilities", None) or [])  # closest first
        hint = f" (did you mean {possibilities[0]}?)" if possibilities else ""
        raise UsageError(f"unrecognized option {exc.option_name}{hint}") from None
    except click.BadParameter as exc:
        raise UsageError(_bad_parameter(exc)) from None
    except click.ClickException as exc:  # a missing value, an extra argument
        raise UsageError(_one_line(exc.format_message())) from None
    if not isinstance(result, tuple):  # click handled --help and returned its exit code
        raise HelpShown()
    return result


def _bad_parameter(exc: click.BadParameter) -> str:
    if exc.param is not None and exc.param.opts:
        where = exc.param.opts[0]
    else:
        where = exc.param_hint if isinstance(exc.param_hint, str) else "option"
    return f"{where}: {_one_line(exc.message)}"


def _one_line(message: str) -> str:
    message = " ".join(message.split()).rstrip(".")
    return message[:1].lower() + message[1:]
