"""Semantic end of turn: Smart Turn features against a reference, the end-of-turn policy with a fake
model (finished, unfinished, the cap), the turn worker, and the real model on a finished and an
unfinished sentence (skipped when set-up has not taken the model out of the pipecat-ai wheel)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from voice_assistant.endpointing import CHUNK_S, Endpoint, PauseSnapshot, UtteranceTracker
from voice_assistant.errors import SetupError
from voice_assistant.turn_detector import (FRAMES, MEL_BINS, TurnJudge, ending_probability, last_window,
                                           smart_turn_features, strip_final_punctuation, words_prefix)

RATE = 16000
SPEECH = np.full(512, 0.5, dtype=np.float32)
SILENCE = np.zeros(512, dtype=np.float32)

# ---------------------------------------------------------------------- features


def reference_features(audio: np.ndarray) -> np.ndarray:
    """Hugging Face's WhisperFeatureExtractor(chunk_length=8, do_normalize=True), written out in numpy:
    normalize, centred STFT (reflect padding, periodic Hann, 400/160), power, Slaney mel, log10,
    8-decade floor, (x + 4) / 4, the last frame dropped."""
    x = last_window(audio).astype(np.float32)
    x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
    padded = np.pad(x.astype(np.float64), (200, 200), mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, 400)[::160]
    window = np.hanning(401)[:-1]
    power = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2  # (frames, 201)
    fft_hz = np.linspace(0, RATE / 2, 201)

    def hz_to_mel(hz):
        hz = np.atleast_1d(np.asarray(hz, dtype=np.float64))
        mel = 3.0 * hz / 200.0
        log = hz >= 1000.0
        mel[log] = 15.0 + np.log(hz[log] / 1000.0) * 27.0 / np.log(6.4)
        return mel

    def mel_to_hz(mel):
        hz = 200.0 * mel / 3.0
        log = mel >= 15.0
        hz[log] = 1000.0 * np.exp(np.log(6.4) / 27.0 * (mel[log] - 15.0))
        return hz

    edges = mel_to_hz(np.linspace(hz_to_mel(0.0)[0], hz_to_mel(RATE / 2)[0], MEL_BINS + 2))
    filters = np.zeros((MEL_BINS, 201))
    for m in range(MEL_BINS):
        lower = (fft_hz - edges[m]) / (edges[m + 1] - edges[m])
        upper = (edges[m + 2] - fft_hz) / (edges[m + 2] - edges[m + 1])
        filters[m] = np.maximum(0.0, np.minimum(lower, upper)) * 2.0 / (edges[m + 2] - edges[m])
    log_spec = np.log10(np.maximum(1e-10, filters @ power.T))[:, :-1]
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def tone(hz: float, seconds: float, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.mark.parametrize("audio", [
    tone(440.0, 1.5),
    np.random.default_rng(1).standard_normal(3 * RATE).astype(np.float32) * 0.1,
    np.concatenate([tone(300.0, 5.0), tone(2500.0, 5.0)]),  # longer than 8 s: the end is kept
])  # fmt: skip
def test_features_match_the_reference_extractor(audio):
    ours = smart_turn_features(audio)
    assert ours.shape == (MEL_BINS, FRAMES) and ours.dtype == np.float32
    assert np.abs(ours - reference_features(audio)).max() < 1e-3


def test_features_of_known_signals():
    silence = smart_turn_features(np.zeros(RATE, dtype=np.float32))
    assert np.allclose(silence, -1.5)  # log10 of the floor (1e-10) is -10: (-10 + 4) / 4
    features = smart_turn_features(tone(1000.0, 2.0))
    loudest = int(np.argmax(features[:, -50:].mean(axis=1)))
    assert 25 <= loudest <= 27  # 1 kHz is mel 15 of 45.2 (Slaney, up to 8 kHz): the filter centred there is bin 26
    assert np.allclose(features[:, :500], features[:, 0:1].mean(), atol=0.05)  # 2 s at the end: silence in front


def test_the_window_keeps_the_end_and_pads_in_front():
    audio = np.arange(9 * RATE, dtype=np.float32)
    assert np.array_equal(last_window(audio), audio[-8 * RATE :])
    short = last_window(np.ones(RATE, dtype=np.float32))
    assert len(short) == 8 * RATE and short[: 7 * RATE].max() == 0.0 and short[7 * RATE :].min() == 1.0


# ---------------------------------------------------------------------- the end-of-turn policy


def smart_tracker(**overrides) -> UtteranceTracker:
    options = dict(speculate_after_ms=64, end_of_speech_ms=450, min_utterance_ms=250, semantic=True,
                   complete_silence_ms=200, max_silence_ms=2000)  # fmt: skip
    options.update(overrides)
    return UtteranceTracker(**options)


def feed(tracker: UtteranceTracker, pattern: str, t: float, verdict: bool | None = None):
    """'s' speech, '.' silence; at each snapshot the fake model answers `verdict` (None: not yet)."""
    events = []
    for index, symbol in enumerate(pattern):
        t += CHUNK_S
        for event in tracker.push(SPEECH if symbol == "s" else SILENCE, symbol == "s", t):
            events.append((index, event))
            if isinstance(event, PauseSnapshot) and verdict is not None:
                tracker.set_verdict(event.speech_end_t, verdict)
    return events, t


def endpoints(events):
    return [(index, event.how) for index, event in events if isinstance(event, Endpoint)]


def test_a_finished_turn_ends_after_the_short_silence():
    events, _ = feed(smart_tracker(), "s" * 20 + "." * 80, 100.0, verdict=True)
    assert endpoints(events) == [(20 + 6, "complete")]  # 7 chunks of 32 ms: the first at or past 200 ms


def test_an_unfinished_turn_waits_for_more_speech_and_goes_on():
    tracker = smart_tracker()
    events, t = feed(tracker, "s" * 20 + "." * 28, 100.0, verdict=False)  # a 0.9 s pause
    assert endpoints(events) == [] and tracker.in_utterance
    events, _ = feed(tracker, "s" * 20 + "." * 20, t, verdict=True)
    assert endpoints(events) == [(20 + 6, "complete")]
    [snapshot] = [e for _, e in events if isinstance(e, PauseSnapshot)]
    assert snapshot.speech_s == pytest.approx(40 * CHUNK_S)  # one utterance: both halves


def test_an_unfinished_turn_ends_at_the_cap():
    events, _ = feed(smart_tracker(), "s" * 20 + "." * 80, 100.0, verdict=False)
    assert endpoints(events) == [(20 + 62, "cap")]  # 63 chunks: the first at or past 2000 ms


def test_no_verdict_yet_is_not_an_end():
    tracker = smart_tracker()
    events, t = feed(tracker, "s" * 20 + "." * 10, 100.0)  # 320 ms of silence, the model has not answered
    assert endpoints(events) == []
    tracker.set_verdict(tracker.last_speech_end_t, True)  # a slow verdict: the silence is long enough already
    events, _ = feed(tracker, ".", t)
    assert endpoints(events) == [(0, "complete")]


def test_a_stale_verdict_does_not_end_the_newer_utterance():
    tracker = smart_tracker()
    events, t = feed(tracker, "s" * 20 + "...", 100.0)
    stale = [e for _, e in events if isinstance(e, PauseSnapshot)][0]
    events, _ = feed(tracker, "s" * 10 + "." * 12, t)  # the user went on; the old snapshot's verdict arrives late
    tracker.set_verdict(stale.speech_end_t, True)
    events += feed(tracker, "." * 10, t + 22 * CHUNK_S)[0]
    assert endpoints(events) == []


def test_a_too_short_utterance_ends_after_the_fixed_silence():
    events, _ = feed(smart_tracker(), "sss" + "." * 20, 100.0)  # 96 ms: no snapshot, so no verdict
    assert endpoints(events) == [(3 + 14, "silence")]


def test_silence_mode_is_unchanged():
    events, _ = feed(smart_tracker(semantic=False), "s" * 20 + "." * 20, 100.0, verdict=False)
    assert endpoints(events) == [(20 + 14, "silence")]


def feed_judged(tracker: UtteranceTracker, pattern: str, t: float, sound: bool, words: float | None, words_at: int):
    """Like feed(), the sound judged at the snapshot and the words `words_at` chunks after it."""
    events, snapshot_at = [], None
    for index, symbol in enumerate(pattern):
        t += CHUNK_S
        for event in tracker.push(SPEECH if symbol == "s" else SILENCE, symbol == "s", t):
            events.append((index, event))
            if isinstance(event, PauseSnapshot):
                tracker.set_verdict(event.speech_end_t, sound)
                snapshot_at = index
        if snapshot_at is not None and index == snapshot_at + words_at:
            tracker.set_words_verdict(tracker.last_speech_end_t, words)
    return events, t


def test_words_that_cannot_end_a_message_keep_the_turn_open_though_it_sounds_finished():
    # "How far away is" said with a falling voice: the model has no ending among its likeliest next tokens
    events, _ = feed_judged(smart_tracker(read_words=True), "s" * 20 + "." * 80, 100.0, True, 0.0, words_at=8)
    assert endpoints(events) == [(20 + 62, "cap")]


def test_words_that_likely_end_a_message_end_a_turn_that_sounded_unfinished():
    # "How many legs does a spider have": 0.97 that the message ends, though the voice seemed to hang
    events, _ = feed_judged(smart_tracker(read_words=True), "s" * 20 + "." * 80, 100.0, False, 0.97, words_at=8)
    assert endpoints(events) == [(21 + 8 + 1, "words")]  # the chunk after the words' verdict (snapshot at 21)


def test_a_finished_sound_waits_for_the_words_then_ends():
    tracker = smart_tracker(read_words=True)
    events, _ = feed_judged(tracker, "s" * 20 + "." * 80, 100.0, True, 0.2, words_at=10)
    assert endpoints(events) == [(21 + 10 + 1, "complete")]  # not at 200 ms (26): after the words' verdict


@pytest.mark.parametrize("sound, expected", [(True, "complete"), (False, "cap")])
def test_words_not_judged_leave_the_sound_to_decide(sound, expected):
    events, _ = feed_judged(smart_tracker(read_words=True), "s" * 20 + "." * 80, 100.0, sound, None, words_at=0)
    assert endpoints(events)[0][1] == expected


def test_words_of_an_older_utterance_do_not_count():
    tracker = smart_tracker(read_words=True)
    events, t = feed(tracker, "s" * 20 + "...", 100.0, verdict=True)
    stale = tracker.last_speech_end_t
    events, t = feed(tracker, "s" * 10 + "...", t, verdict=True)
    tracker.set_words_verdict(stale, 0.9)  # late, for the utterance before the user went on
    events += feed(tracker, "." * 20, t)[0]
    assert endpoints(events) == []  # waits for its own words (up to the cap)


@pytest.mark.parametrize("words, expected", [
    (0.0, [(20 + 62, "cap")]),  # "How far away is": waits up to the cap for the rest
    (0.2, [(20 + 14, "silence")]),  # "What is the tallest mountain": the fixed 450 ms, as with silence alone
    (0.95, [(21 + 8 + 1, "words")]),  # "How many legs does a spider have": ends at the words' verdict
])  # fmt: skip
def test_words_alone_without_a_sound_model(words, expected):
    tracker = smart_tracker(semantic=False, read_words=True)
    events, _ = feed_judged(tracker, "s" * 20 + "." * 80, 100.0, False, words, words_at=8)
    assert endpoints(events) == expected


def test_words_alone_wait_for_the_words_past_the_fixed_silence():
    tracker = smart_tracker(semantic=False, read_words=True)
    events, _ = feed_judged(tracker, "s" * 20 + "." * 80, 100.0, False, 0.2, words_at=20)  # a slow judgement
    assert endpoints(events) == [(21 + 20 + 1, "silence")]


def test_the_prompt_is_cut_after_the_words_and_the_end_marker_found():
    prompt = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHow far away is<|im_end|>\n"
              "<|im_start|>assistant\n")
    assert words_prefix(prompt, "How far away is") == (prompt[: prompt.index("<|im_end|>\n<|im_start|>a")],
                                                       "<|im_end|>")
    assert words_prefix(prompt, "not there") is None and words_prefix(prompt, "") is None
    assert strip_final_punctuation("How far away is?") == "How far away is"
    assert strip_final_punctuation("中国的首都是哪里？") == "中国的首都是哪里"
    assert strip_final_punctuation("I want to know about the...") == "I want to know about the"


def test_the_ending_probability_adds_up_endings_only():
    top = [(" the", 0.6), ("?", 0.2), ("?\n", 0.05), ("<|im_end|>", 0.03), ("", 0.01), ("。", 0.02), (" in", 0.09)]
    assert ending_probability(top, "<|im_end|>") == pytest.approx(0.31)
    assert ending_probability([(" the", 0.9), (" a", 0.1)], "<|im_end|>") == 0.0


class FakeClient:
    def __init__(self, top=None, error: Exception | None = None) -> None:
        self.top, self.error, self.prompts = top or [], error, []

    def next_tokens(self, prompt: str):
        self.prompts.append(prompt)
        if self.error is not None:
            raise self.error
        return self.top


def test_the_judge_asks_the_model_about_the_words_and_tells_the_tracker():
    tracker = smart_tracker(read_words=True)
    judge = TurnJudge(FakeTurnModel(0.9), tracker)
    prompt = "<|im_start|>user\nHow many legs does a spider have?<|im_end|>\n<|im_start|>assistant\n"
    client = FakeClient([("?", 0.85), ("?\n", 0.11), (" in", 0.01)])
    assert judge.judge_words(client, 12.5, prompt, "How many legs does a spider have?") == pytest.approx(0.96)
    assert client.prompts == ["<|im_start|>user\nHow many legs does a spider have"]  # without the recogniser's "?"
    assert tracker._words == (12.5, pytest.approx(0.96))


def test_a_failed_question_to_the_model_leaves_the_sound_to_decide():
    from voice_assistant.errors import LLMConnectionError

    tracker = smart_tracker(read_words=True)
    judge = TurnJudge(FakeTurnModel(0.9), tracker)
    assert judge.judge_words(FakeClient(error=LLMConnectionError("down")), 3.0, "user\nhi there", "hi there") is None
    assert tracker._words == (3.0, None)


# ---------------------------------------------------------------------- the turn worker


class FakeTurnModel:
    def __init__(self, probability: float) -> None:
        self.value = probability
        self.calls: list[int] = []
        self.called = threading.Event()

    def probability(self, audio):
        self.calls.append(len(audio))
        self.called.set()
        return self.value


@pytest.mark.parametrize("probability, finished", [(0.9, True), (0.2, False), (0.5, True)])
def test_the_judge_tells_the_tracker(probability, finished):
    tracker = smart_tracker()
    events, _ = feed(tracker, "s" * 20 + "...", 100.0)
    [snapshot] = [e for _, e in events if isinstance(e, PauseSnapshot)]
    judge = TurnJudge(FakeTurnModel(probability), tracker, threshold=0.5)
    judge.submit(snapshot)
    judge.stop()
    judge.worker.run()  # on this thread: the queued snapshot, then STOP
    assert tracker._verdict == (snapshot.speech_end_t, finished)
    assert judge.last[:2] == (snapshot.speech_end_t, probability)


def test_the_judge_skips_a_snapshot_the_user_has_spoken_past():
    tracker = smart_tracker()
    events, t = feed(tracker, "s" * 20 + "...", 100.0)
    [old] = [e for _, e in events if isinstance(e, PauseSnapshot)]
    feed(tracker, "s" * 5, t)
    model = FakeTurnModel(0.9)
    judge = TurnJudge(model, tracker)
    judge.submit(old)
    judge.stop()
    judge.worker.run()
    assert model.calls == [] and tracker._verdict is None


# ---------------------------------------------------------------------- the real model


@pytest.fixture(scope="module")
def real_model():
    from voice_assistant.models import smart_turn_model
    from voice_assistant.turn_detector import SmartTurnModel

    try:
        path = smart_turn_model()
    except SetupError as exc:
        pytest.skip(str(exc))
    return SmartTurnModel.load(path, threads=1)


def spoken(text: str, tmp_path) -> np.ndarray:
    import soundfile
    from speech import say

    audio, _ = soundfile.read(str(say(text, tmp_path / "u.wav", RATE)), dtype="float32")
    voiced = np.nonzero(np.abs(audio) > 0.01)[0]
    return audio[voiced[0] : voiced[-1] + 1]


def test_the_real_model_hears_a_finished_and_an_unfinished_sentence(real_model, tmp_path):
    pause = np.zeros(int(0.064 * RATE), dtype=np.float32)  # what the snapshot holds after the voice stops
    preroll = np.zeros(int(0.3 * RATE), dtype=np.float32)
    finished = real_model.probability(np.concatenate([preroll, spoken("Please say yes.", tmp_path), pause]))
    unfinished = real_model.probability(np.concatenate([preroll, spoken("I want to know about the", tmp_path), pause]))
    assert finished > 0.5 > unfinished, (finished, unfinished)
    assert 0.0 <= unfinished and finished <= 1.0


def test_a_file_that_is_not_a_smart_turn_model_is_one_clear_error(tmp_path):
    from voice_assistant.assembly import load_turn_model
    from voice_assistant.config import make_config

    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07not a model at all")
    with pytest.raises(SetupError, match="cannot load the Smart Turn model"):
        load_turn_model(make_config(turn_model=str(corrupt)))
    with pytest.raises(SetupError, match="no such file"):
        load_turn_model(make_config(turn_model=str(tmp_path / "missing.onnx")))
