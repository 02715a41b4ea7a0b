"""UtteranceTracker: onsets, barge-in length, speculative snapshots and end of turn, fed with arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from voice_assistant.endpointing import CHUNK_S, Endpoint, PauseSnapshot, SpeechLong, SpeechStart, UtteranceTracker

SPEECH = np.full(512, 0.5, dtype=np.float32)
SILENCE = np.zeros(512, dtype=np.float32)


def run(tracker: UtteranceTracker, pattern: str, t0: float = 100.0):
    """Feed 's' (speech) and '.' (silence) chunks; return [(chunk index, event)]."""
    events, t = [], t0
    for index, symbol in enumerate(pattern):
        t += CHUNK_S
        for event in tracker.push(SPEECH if symbol == "s" else SILENCE, symbol == "s", t):
            events.append((index, event))
    return events


def kinds(events):
    return [(index, type(event).__name__) for index, event in events]


def test_utterance_events_in_order():
    tracker = UtteranceTracker(min_speech_ms=200, speculate_after_ms=96, end_of_speech_ms=450)
    events = run(tracker, "." * 3 + "s" * 10 + "." * 15)
    assert kinds(events) == [(3, "SpeechStart"), (9, "SpeechLong"), (15, "PauseSnapshot"), (27, "Endpoint")]
    snapshot = events[2][1]
    assert snapshot.speech_s == pytest.approx(10 * CHUNK_S)
    assert len(snapshot.audio) == 512 * (3 + 10 + 3)  # 300 ms pre-roll (3 chunks here) + speech + pause
    assert events[3][1].speech_end_t == snapshot.speech_end_t == pytest.approx(100.0 + 13 * CHUNK_S)


def test_cough_is_not_long_and_not_transcribed():
    tracker = UtteranceTracker(min_speech_ms=200, min_utterance_ms=250)
    events = run(tracker, "sss" + "." * 16)  # 96 ms
    assert kinds(events) == [(0, "SpeechStart"), (17, "Endpoint")]


def test_a_sound_too_short_to_be_an_utterance_leaves_the_last_utterance_where_it_was():
    """`last_utterance_end_t` (what the transcript cache answers RealtimeSTT for) ends with speech long
    enough to be transcribed; a cue or a cough after the turn moves `last_speech_end_t` only."""
    tracker = UtteranceTracker(min_utterance_ms=250, end_of_speech_ms=450)
    run(tracker, "s" * 10 + "." * 16, t0=100.0)  # a question, and its end of turn
    question_end = tracker.last_speech_end_t
    assert tracker.last_utterance_end_t == pytest.approx(question_end) == pytest.approx(100.0 + 10 * CHUNK_S)
    run(tracker, "sss" + "." * 16, t0=tracker.last_speech_end_t + 16 * CHUNK_S)  # 96 ms of sound after it
    assert tracker.last_speech_end_t > question_end + 0.5
    assert tracker.last_utterance_end_t == pytest.approx(question_end)
    run(tracker, "s" * 9 + "." * 16, t0=tracker.last_speech_end_t + 16 * CHUNK_S)  # 288 ms: an utterance
    assert tracker.last_utterance_end_t == pytest.approx(tracker.last_speech_end_t)


def test_short_pause_resumes_the_same_utterance_with_a_new_snapshot():
    tracker = UtteranceTracker(speculate_after_ms=96, end_of_speech_ms=450)
    events = run(tracker, "s" * 10 + "." * 5 + "s" * 10 + "." * 15)
    snapshots = [e for _, e in events if isinstance(e, PauseSnapshot)]
    starts = [e for _, e in events if isinstance(e, SpeechStart)]
    assert len(snapshots) == 2 and len(starts) == 2
    assert len(snapshots[1].audio) > len(snapshots[0].audio)  # the second covers the whole utterance
    assert sum(isinstance(e, Endpoint) for _, e in events) == 1


def test_one_long_event_per_run_and_runs_split_by_100_ms_gaps():
    tracker = UtteranceTracker(min_speech_ms=200)
    events = run(tracker, "s" * 8 + ".." + "s" * 8 + "...." + "s" * 8)
    names = [(i, type(e).__name__) for i, e in events if isinstance(e, (SpeechStart, SpeechLong))]
    assert names == [(0, "SpeechStart"), (6, "SpeechLong"), (22, "SpeechStart"), (28, "SpeechLong")]
    # a 64 ms gap does not end the run (no second start); a 128 ms gap does
    starts = [i for i, e in events if isinstance(e, SpeechStart)]
    assert starts == [0, 22]


def test_short_runs_do_not_add_up_to_an_interruption_but_the_longest_run_is_known():
    """An echo canceller's residue comes as short runs close together: they must not interrupt."""
    tracker = UtteranceTracker(min_speech_ms=200, end_of_speech_ms=450)
    events = run(tracker, "ss" + "...." + "sss" + "...." + "ss" + "...." + "ssss" + "....")
    assert not [e for _, e in events if isinstance(e, SpeechLong)]
    assert tracker.in_utterance and tracker.longest_run_s == pytest.approx(4 * CHUNK_S)


def test_a_turn_stays_open_until_its_answer_is_ready_and_a_pause_inside_goes_on_with_it():
    """open_until_answer: past its silence the utterance waits for its answer (`due` says it could end);
    speech before the answer is ready goes on with the same utterance; the first chunk after the answer is
    ready ends it; without an answer the cap ends it."""
    tracker = UtteranceTracker(speculate_after_ms=96, end_of_speech_ms=450, max_silence_ms=2000,
                               open_until_answer=True)  # fmt: skip
    events = run(tracker, "s" * 10 + "...")  # the question, then the snapshot's pause
    question_end = tracker.last_speech_end_t
    tracker.set_answer(question_end, ready=False)  # a speculative answer is being prepared
    t = question_end + 3 * CHUNK_S
    events = []
    for _ in range(20):  # 640 ms of silence: past the 450 ms rule
        t += CHUNK_S
        events += tracker.push(SILENCE, False, t)
    assert not any(isinstance(e, Endpoint) for e in events) and tracker.in_utterance
    assert tracker.due is not None and tracker.due.speech_end_t == question_end
    for _ in range(8):  # the user goes on: the same utterance
        t += CHUNK_S
        events += tracker.push(SPEECH, True, t)
    assert tracker.due is None and tracker.in_utterance
    events = []
    for _ in range(4):
        t += CHUNK_S
        events += tracker.push(SILENCE, False, t)
    snapshot = [e for e in events if isinstance(e, PauseSnapshot)][0]
    assert snapshot.speech_s == pytest.approx(18 * CHUNK_S)  # both halves, one utterance
    tracker.set_answer(snapshot.speech_end_t, ready=False)
    for _ in range(14):  # 18 chunks of silence in all: the rule is met, the answer is not ready
        t += CHUNK_S
        assert tracker.push(SILENCE, False, t) == []
    tracker.set_answer(snapshot.speech_end_t, ready=True)
    t += CHUNK_S
    assert [type(e) for e in tracker.push(SILENCE, False, t)] == [Endpoint]
    assert not tracker.in_utterance and tracker.due is None

    events = run(tracker, "s" * 10 + "...", t0=t + 1.0)  # an answer that never comes: the cap ends the turn
    tracker.set_answer(tracker.last_speech_end_t, ready=False)
    ends = [i for i, e in run(tracker, "." * 70, t0=tracker.last_speech_end_t + 3 * CHUNK_S) if isinstance(e, Endpoint)]
    assert ends == [math.ceil(2.0 / CHUNK_S) - 4]  # 2 s after the voice stopped


def test_without_an_answer_in_preparation_the_silence_ends_the_turn_as_before():
    tracker = UtteranceTracker(end_of_speech_ms=450, open_until_answer=True)
    tracker.set_answer(50.0, ready=False)  # an older utterance's answer
    events = run(tracker, "s" * 10 + "." * 15)
    assert [i for i, e in events if isinstance(e, Endpoint)] == [24]


def test_speculation_off():
    tracker = UtteranceTracker(speculate_after_ms=0)
    assert not [e for _, e in run(tracker, "s" * 10 + "." * 20) if isinstance(e, PauseSnapshot)]


def test_snapshot_of_an_enormous_utterance_is_bounded():
    tracker = UtteranceTracker(speculate_after_ms=96, max_utterance_s=30.0)
    events = run(tracker, "s" * int(75 / CHUNK_S) + "...")  # 75 s without a pause
    snapshot = [e for _, e in events if isinstance(e, PauseSnapshot)][0]
    assert len(snapshot.audio) / 16000 <= 30.3  # the last 30 s (plus what fits of the pause)
    assert snapshot.speech_s == pytest.approx(75, abs=0.1)


def test_onset_starts_where_the_probability_began_to_rise():
    tracker = UtteranceTracker(min_speech_ms=200)
    t, events = 100.0, []
    for maybe, speech in [(False, False), (True, False), (True, True)] + [(True, True)] * 5:
        t += CHUNK_S
        events += tracker.push(SPEECH, speech, t, maybe)
    start = [e for e in events if isinstance(e, SpeechStart)][0]
    long = [e for e in events if isinstance(e, SpeechLong)][0]
    assert start.onset_t == pytest.approx(100.0 + CHUNK_S)  # the maybe-speech chunk, not the first sure one
    assert long.decision_t - long.onset_t >= 0.2 - 1e-9
    assert long.decision_t == pytest.approx(100.0 + 8 * CHUNK_S)  # one chunk sooner than without the ramp
