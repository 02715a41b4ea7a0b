"""The console: the live view's states and drawing, typed turns, audio cues (fast, with fakes).

The real terminal (tmux) and the real sound server are in test_live_pulse.py; cues in a real file-mode
run with echo coupling are in test_e2e.py."""

from __future__ import annotations

import io
import os
import threading

import numpy as np
import pytest

from conftest import Harness, wait_until
from fake_llama_server import Reply
from voice_assistant.console import ConsoleView, Keyboard, meter, snapshot
from voice_assistant.cues import HEARD_HZ, THINKING_HZ, Cues, tone


def test_states_follow_the_turn(server):
    h = Harness(server.url, mic=True)
    try:
        assert snapshot(h.system).state == "listening"
        assert snapshot(h.system, typed="hel").state == "typing"
        t = h.speak(3, 100.0)
        assert snapshot(h.system).state == "hearing you"
        h.pause(20, t)  # the end of the utterance (no recogniser here: nothing is answered)
        gate = threading.Event()
        server.script(Reply(pieces=["First part.", " Second part."], gates={0: gate}))
        turn = h.system.submit_user_text("tell me")
        assert server.wait_until_blocked(gate)
        assert snapshot(h.system).state == "thinking"
        gate.set()
        wait_until(lambda: h.sink.pending_blocks() > 0)
        h.sink.play_next()
        assert snapshot(h.system).state == "speaking"
        wait_until(lambda: h.sink.play_next() is not None and snapshot(h.system).reply.startswith("First"))
        h.play_reply(turn)
        h.wait_idle()
        assert snapshot(h.system).state == "listening"
        assert snapshot(h.system, interrupted_until=float("inf")).state == "interrupted"
    finally:
        h.close()


def test_meter_spans_the_floor_to_full_scale():
    assert meter(-100.0) == "·" * 24 and meter(0.0) == "█" * 24 and meter(-30.0).count("█") == 12


def test_the_view_draws_the_state_and_prints_log_lines_above_it(server):
    import logging

    from rich.console import Console

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100, color_system=None)
    h = Harness(server.url, mic=True)
    view = ConsoleView(h.system, console=console, refresh_hz=20)
    try:
        view.start()
        logging.getLogger("test").warning("audio output device stopped (gone); retrying every 2 s")
        server.script(Reply(pieces=["Hello there."]))
        h.answer("hi")
        wait_until(lambda: view.last is not None and view.last.state == "listening")
    finally:
        view.stop()
        h.close()
    text = out.getvalue()
    assert "audio output device stopped" in text and "● listening" in text and "mic " in text
    assert logging.getLogger().handlers and not any(type(x).__name__ == "RichLogHandler"
                                                     for x in logging.getLogger().handlers)  # fmt: skip


def test_keys_edit_the_line_and_enter_sends_it():
    sent = []
    keyboard = Keyboard(sent.append, stdin=io.StringIO())
    for key in "helo\x7flo\x1b[Dx\x15what time is it\r":  # a typo fixed, an arrow key, Ctrl-U, Enter
        keyboard._key(key)
    assert sent == ["what time is it"] and keyboard.line == ""
    for key in "  \n":
        keyboard._key(key)
    assert sent == ["what time is it"]  # blank lines are not turns


def test_piped_lines_are_turns_and_the_end_is_noticed():
    read, write = os.pipe()
    sent = []
    with os.fdopen(read, "r") as stdin:
        keyboard = Keyboard(sent.append, stdin=stdin)
        assert not keyboard.interactive
        keyboard.start()
        os.write(write, "What is two plus two?\nAnd thr".encode())
        wait_until(lambda: sent == ["What is two plus two?"])
        os.write(write, "ee times ☃?\n".encode())
        os.close(write)
        assert keyboard.ended.wait(2.0)
        keyboard.stop()
    assert sent == ["What is two plus two?", "And three times ☃?"]


def test_typing_while_it_speaks_interrupts_the_reply(server):
    read, write = os.pipe()
    h = Harness(server.url)
    stdin = os.fdopen(read, "r")
    keyboard = Keyboard(h.system.submit_user_text, stdin=stdin)
    try:
        keyboard.start()
        gate = threading.Event()
        server.script(Reply(pieces=["A long answer.", " That goes on."], gates={1: gate}), Reply(pieces=["Four."]))
        os.write(write, b"tell me a story\n")
        assert server.wait_until_blocked(gate)
        wait_until(lambda: h.sink.pending_blocks() > 0)
        first = h.system.active_turn().turn_id
        h.sink.play_next()  # it is speaking
        os.write(write, b"what is two plus two\n")
        wait_until(lambda: h.system.active_turn() is not None and h.system.active_turn().turn_id != first)
        gate.set()
        h.play_reply(h.system.active_turn().turn_id)
        h.wait_idle()
        exchanges = h.system.history.exchanges()
        assert [e.user for e in exchanges] == ["tell me a story", "what is two plus two"]
        assert exchanges[0].interrupted and h.synth.spoken[-1] == "Four."
    finally:
        os.close(write)
        keyboard.stop()
        stdin.close()
        h.close()


def test_cues_mix_into_the_output_whatever_plays(server):
    h = Harness(server.url)
    try:
        h.sink.play_cue(np.full(50, 0.1, dtype=np.float32))  # 2.5 blocks of 20 at 1 kHz
        blocks = [h.sink._with_cue(h.sink._next_block(0.0)) for _ in range(4)]
        assert [float(b.sum()) if b is not None else None for b in blocks] == pytest.approx([2.0, 2.0, 1.0, None])
    finally:
        h.close()


def test_a_cue_is_quiet_short_faded_and_a_sweep():
    samples = tone(HEARD_HZ, 70, 16000)
    assert len(samples) == 1120 and 0.04 < float(np.abs(samples).max()) <= 0.051  # -26 dBFS
    assert abs(float(samples[0])) < 1e-3 and abs(float(samples[-1])) < 1e-3
    thinking = tone(THINKING_HZ, 90, 16000)
    first, last = (np.abs(np.fft.rfft(half, 16000)) for half in (thinking[:720], thinking[720:]))
    assert np.argmax(first) > np.argmax(last)  # falling: not a steady sine, which AEC3 mistakes (cues.py)
    assert THINKING_HZ[1] - 20 < np.argmax(last) < np.argmax(first) < THINKING_HZ[0] + 20


def test_cue_when_the_turn_is_heard_and_when_thinking_starts_but_not_for_its_own_voice(server):
    h = Harness(server.url, mic=True, cues=True, barge_in_min_speech_ms=200)
    try:
        cues: Cues = h.system.cues
        t = h.speak(8, 100.0)  # 256 ms of speech while idle: heard
        assert list(cues.played) == ["heard"]
        h.pause(20, t)
        server.script(Reply(pieces=["Fine."]))
        h.answer("how are you")
        assert list(cues.played) == ["heard", "thinking"]
    finally:
        h.close()


def test_the_thinking_cue_sounds_when_a_turn_held_open_for_its_answer_is_over_by_its_silence(server):
    """With the turn open until its answer is ready, "thinking" sounds when the silence has ended the turn
    and the answer is still being written (not later, when it is ready), once."""
    h = Harness(server.url, transcripts=("what time is it",), speculate_after_ms=96, cues=True)
    try:
        cues: Cues = h.system.cues
        gate = threading.Event()
        server.script(Reply(pieces=["It is noon."], gates={0: gate}))
        t = h.speak(15, 500.0)
        t = h.pause(4, t)
        assert server.wait_until_blocked(gate)
        turn = h.system.active_turn()
        assert list(cues.played) == ["heard"]
        t = h.pause(12, t)  # 512 ms of silence: past the 450 ms rule, the answer not written yet
        assert turn.tentative and list(cues.played) == ["heard", "thinking"]
        assert snapshot(h.system).state == "thinking"  # the view says so too, not "hearing you"
        t = h.pause(4, t)
        gate.set()
        wait_until(lambda: not turn.tentative)
        h.pause(1, t)
        h.play_reply(turn.turn_id)
        h.wait_idle()
        assert list(cues.played) == ["heard", "thinking"]
    finally:
        h.close()


def test_cues_are_unset_on_or_off_and_text_mode_has_no_input_file(tmp_path):
    from voice_assistant.cli import parse_command_line
    from voice_assistant.config import ConfigError, Config, load_toml, to_toml

    assert parse_command_line([])[0].console.cues is None  # the mode decides
    assert parse_command_line(["--cues"])[0].console.cues is True
    assert parse_command_line(["--no-cues"])[0].console.cues is False
    path = tmp_path / "c.toml"
    for value in (None, True, False):
        path.write_text(to_toml(Config().replace(cues=value)))
        assert Config.from_flat(load_toml(str(path))).console.cues is value
    with pytest.raises(ConfigError, match="--text replaces the microphone"):
        parse_command_line(["--text", "--input-wav", "a.wav", "--output-wav", "b.wav"])
