"""The console: a live terminal view of the conversation, and typed turns.

- `ConsoleView` (a terminal on stdout, without --plain): a `rich` live region at the bottom of the
  terminal with the state (listening, hearing you, thinking, speaking, interrupted), a microphone
  level meter, the reply as it is spoken (to the word, from the playback position) and the line
  being typed. Log lines scroll above it: what was heard (`You: ...`, as soon as the turn starts),
  the whole reply, one timing line per turn, errors and status lines (a device lost and back, the
  server restarting). No partial transcript while the user speaks: it would cost a Whisper pass
  every few hundred milliseconds on a 2-core machine, where the answer's latency lives. It redraws at `refresh_hz` from a snapshot
  (`snapshot()`), on rich's own refresh thread: the audio path never waits for it.
- `Keyboard`: typed turns. On a terminal it reads keys without echo (the view shows the line); a
  line sent with Enter is a user turn, exactly like speech (typing while the assistant speaks
  interrupts it). From a pipe (`--text` with stdin not a terminal) it reads lines, then ends.

Nothing here touches the audio; both only read the system's state and call `submit_user_text()`.
"""

from __future__ import annotations

import logging
import os
import select
import sys
import termios
import threading
import time
import tty
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger(__name__)

STATES = {  # state -> (symbol, style)
    "listening": ("●", "green"),
    "hearing you": ("●", "bold cyan"),
    "thinking": ("◐", "yellow"),
    "speaking": ("◉", "magenta"),
    "interrupted": ("■", "red"),
    "typing": ("✎", "cyan"),
}
METER_CELLS = 24
METER_FLOOR_DBFS = -60.0


@dataclass(frozen=True)
class Snapshot:
    """What the view shows at one instant."""

    state: str  # a key of STATES
    level_dbfs: float | None  # microphone level after echo cancellation; None without a microphone
    reply: str  # the reply as far as it has been spoken
    typed: str  # the line being typed


def snapshot(system, typed: str = "", interrupted_until: float = 0.0) -> Snapshot:
    """The state of `system` (a VoiceConversationSystem) for the view; never blocks for long."""
    turn = system.active_turn()
    mic = system.mic
    held_open = mic is not None and mic.tracker.due is not None  # over by its silence, open for its answer
    hearing = mic is not None and mic.tracker.in_utterance and not held_open
    if hearing:
        state = "hearing you"
    elif turn is not None and (not turn.tentative or held_open) and not turn.timings.first_audio_t:
        state = "thinking"
    elif turn is not None and turn.timings.first_audio_t and not turn.playback_done:
        state = "speaking"
    elif time.monotonic() < interrupted_until:
        state = "interrupted"
    elif typed:
        state = "typing"
    else:
        state = "listening"
    reply = turn.heard_text() if turn is not None else ""
    return Snapshot(state, mic.level_dbfs if mic is not None else None, reply, typed)


def meter(level_dbfs: float) -> str:
    """A bar of `METER_CELLS` from `METER_FLOOR_DBFS` to 0 dBFS."""
    filled = round((max(METER_FLOOR_DBFS, min(0.0, level_dbfs)) - METER_FLOOR_DBFS) / -METER_FLOOR_DBFS * METER_CELLS)
    return "█" * filled + "·" * (METER_CELLS - filled)


class ConsoleView:
    """The live region and the log lines above it, on the terminal `console` (a rich.Console)."""

    def __init__(self, system, console=None, refresh_hz: float = 8.0, keyboard: "Keyboard | None" = None) -> None:
        from rich.console import Console

        self.system = system
        self.console = console or Console()
        self.refresh_hz = refresh_hz
        self.keyboard = keyboard
        self._live = None
        self._handler: logging.Handler | None = None
        self._barge_ins = 0
        self._interrupted_until = 0.0
        self.last: Snapshot | None = None

    def start(self) -> None:
        """Take over the log output and start redrawing."""
        from rich.live import Live

        self._handler = RichLogHandler(self.console)
        root = logging.getLogger()
        self._saved_handlers = root.handlers[:]
        root.handlers = [self._handler]
        self._live = Live(get_renderable=self._render, console=self.console, refresh_per_second=self.refresh_hz,
                          transient=True, redirect_stdout=False, redirect_stderr=False)  # fmt: skip
        self._live.start()

    def stop(self) -> None:
        """Stop redrawing (the live region is removed) and give the log output back."""
        if self._live is not None:
            self._live.stop()
            self._live = None
        if self._handler is not None:
            logging.getLogger().handlers = self._saved_handlers
            self._handler = None

    def _render(self):
        from rich.console import Group
        from rich.text import Text

        barge_ins = len(self.system.metrics.barge_ins)
        if barge_ins != self._barge_ins:
            self._barge_ins = barge_ins
            self._interrupted_until = time.monotonic() + 1.5
        typed = self.keyboard.line if self.keyboard is not None else ""
        snap = snapshot(self.system, typed, self._interrupted_until)
        self.last = snap
        symbol, style = STATES[snap.state]
        status = Text.assemble((f"{symbol} {snap.state:<12}", style))
        if snap.level_dbfs is not None:
            status.append(f"  mic {meter(snap.level_dbfs)} {snap.level_dbfs:4.0f} dBFS", style="dim")
        lines = [status]
        if snap.reply:
            lines.append(Text.assemble(("Assistant: ", "bold green"), snap.reply))
        if self.keyboard is not None and self.keyboard.interactive:
            lines.append(Text.assemble(("> ", "bold"), snap.typed, ("▏", "blink")))
        return Group(*lines)


class RichLogHandler(logging.Handler):
    """Log records printed above the live region, styled by what they are."""

    def __init__(self, console) -> None:
        super().__init__()
        self.console = console
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        from rich.text import Text

        try:
            message = self.format(record)
            if record.levelno >= logging.ERROR:
                style = "bold red"
            elif record.levelno >= logging.WARNING:
                style = "yellow"
            elif message.startswith("You:"):
                style = "cyan"
            elif message.startswith("Assistant:"):
                style = "green"
            elif message.startswith("turn "):
                style = "dim"
            else:
                style = ""
            self.console.print(Text(message, style=style), soft_wrap=True)
        except Exception:  # a log line must never break the program
            self.handleError(record)


class Keyboard:
    """Typed turns, on the `keyboard` thread: each line sent with Enter goes to `on_line(text)`.

    `interactive` (stdin is a terminal and `keys` asked for: the live view shows the line): keys are
    read without echo, `line` is what is typed so far, Backspace and Ctrl-U edit it; Ctrl-C still
    reaches the program. Otherwise lines are read as the terminal (which echoes them) or the pipe
    gives them, until stdin ends; then `ended` is set."""

    def __init__(self, on_line: Callable[[str], None], stdin=None, keys: bool = True) -> None:
        self.on_line = on_line
        self.stdin = stdin or sys.stdin
        self.interactive = keys and self.stdin.isatty()
        self.line = ""
        self.ended = threading.Event()
        self._stop = threading.Event()
        self._saved_mode = None
        self._in_escape = False  # inside an escape sequence (an arrow key, say)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.interactive:
            fd = self.stdin.fileno()
            self._saved_mode = termios.tcgetattr(fd)
            tty.setcbreak(fd)  # keys one by one, no echo; signals (Ctrl-C) stay on
        self._thread = threading.Thread(target=self._run, name="keyboard", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            if self.interactive:
                self._read_keys()
            else:
                self._read_lines()
        finally:
            self.ended.set()

    def _chunks(self):
        """What arrives on stdin, as it arrives, until it ends or `stop()`."""
        fd = self.stdin.fileno()
        while not self._stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                continue
            data = os.read(fd, 4096)
            if not data:
                return
            yield data

    def _read_lines(self) -> None:
        pending = b""
        for data in self._chunks():
            *lines, pending = (pending + data).split(b"\n")
            for raw in lines:
                self._send(raw.decode("utf-8", errors="replace"))
        if pending:
            self._send(pending.decode("utf-8", errors="replace"))

    def _read_keys(self) -> None:
        pending = b""
        for data in self._chunks():
            pending += data
            try:
                text, pending = pending.decode("utf-8"), b""
            except UnicodeDecodeError:  # a multi-byte character split across reads: wait for the rest
                continue
            for key in text:
                self._key(key)

    def _key(self, key: str) -> None:
        if self._in_escape:  # ESC [ digits ; ... final letter
            self._in_escape = key in "[O;" or key.isdigit()
            return
        if key == "\x1b":
            self._in_escape = True
            return
        if key in ("\r", "\n"):
            line, self.line = self.line, ""
            self._send(line)
        elif key in ("\x7f", "\b"):
            self.line = self.line[:-1]
        elif key == "\x15":  # Ctrl-U
            self.line = ""
        elif not key.isprintable():
            return  # other control keys are ignored
        else:
            self.line += key

    def _send(self, line: str) -> None:
        line = line.strip()
        if line:
            try:
                self.on_line(line)
            except Exception:  # the keyboard must outlive one failed turn
                log.exception("handling a typed line failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        if self._saved_mode is not None:
            termios.tcsetattr(self.stdin.fileno(), termios.TCSADRAIN, self._saved_mode)
            self._saved_mode = None
