"""Guards against answering the assistant's own voice (voice_assistant.guards).

Text guards are fed times and strings directly. The own-voice guard uses the real speaker
encoder: the assistant is the bundled Piper voice, users are espeak-ng voices made at test time.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
from speech import have_espeak, say

from voice_assistant.guards import (
    EchoGuardConfig,
    EchoTranscriptGuard,
    LoopBreaker,
    LoopConfig,
    OwnVoiceConfig,
    OwnVoiceGuard,
    coverage,
    normalize_words,
)

# ---------------------------------------------------------------------- normalisation


def test_normalize_words_agrees_with_how_whisper_writes_the_same_speech():
    assert normalize_words("The world's 10 best-known sights, 99% sure!") == [
        "the", "worlds", "ten", "best", "known", "sights", "ninety", "nine", "percent", "sure",
    ]  # fmt: skip
    assert normalize_words("It's 1889.") == ["its", "1889"]
    assert normalize_words("  ...  ") == []


def test_coverage_counts_only_runs_of_two_or_more_words():
    said = normalize_words("The capital of France is Paris, a city known for its art.")
    assert coverage(normalize_words("Paris"), said) == (0.0, 0)
    assert coverage(normalize_words("France is Paris a city"), said) == (1.0, 5)
    share, matched = coverage(normalize_words("why Paris and not the city of Lyon"), said)
    assert matched == 0 and share == 0.0  # single shared words scattered in the text do not count


# ---------------------------------------------------------------------- echo transcript guard

SENTENCE_1 = "The Eiffel Tower was finished in 1889 for the World's Fair."
SENTENCE_2 = "It is about 330 metres tall and was the tallest structure in the world for 41 years."


@pytest.fixture
def guard() -> EchoTranscriptGuard:
    """Sentence 1 played 10.0-13.5 s, sentence 2 13.6-18.0 s."""
    guard = EchoTranscriptGuard(EchoGuardConfig(tail_s=3.0))
    guard.note_playing((1, 0), SENTENCE_1, 10.0)
    guard.note_played((1, 0), 13.5)
    guard.note_playing((1, 1), SENTENCE_2, 13.6)
    guard.note_played((1, 1), 18.0)
    return guard


def test_echo_of_the_sentence_being_played_is_recognized(guard):
    result = guard.match("the eiffel tower was finished in 1889 for the worlds fair", 10.3, 13.6)
    assert result.is_echo and result.coverage == 1.0 and result.words == 11
    assert "Eiffel" in result.said


def test_echo_of_part_of_a_sentence_and_across_two_sentences_is_recognized(guard):
    assert guard.match("finished in 1889 for the world's fair", 11.5, 13.5).is_echo
    assert guard.match("for the world's fair. It is about 330 metres tall", 12.5, 15.0).is_echo


def test_echo_with_a_few_asr_errors_is_still_recognized(guard):
    result = guard.match("the eiffel tower was finish in 1889 for the worlds fair", 10.3, 13.6)
    assert result.is_echo and 0.8 <= result.coverage < 1.0


def test_tail_window_after_playback_ends(guard):
    echo = "the tallest structure in the world for forty one years"
    assert guard.match(echo, 20.5, 21.0).is_echo  # 2.5 s after the sentence ended
    assert not guard.match(echo, 21.5, 22.0).is_echo  # 3.5 s after: the user may be quoting it
    assert not guard.match("the eiffel tower was finished in 1889", 2.0, 5.0).is_echo  # before it played


def test_sentence_still_playing_counts(guard):
    guard.note_playing((2, 0), "Would you like to hear about the Louvre next?", 30.0)
    assert guard.match("would you like to hear about the louvre", 30.2, 32.0).is_echo
    assert guard.match("would you like to hear about the louvre", 40.0, 41.0).is_echo  # no end yet


def test_user_repeating_a_word_or_a_phrase_is_not_echo(guard):
    near_misses = [
        "Eiffel?",  # one word of the answer
        "1889",  # the number it said
        "the world's fair",  # three words, and nothing else: too little to be sure
        "why was it finished in 1889 and not earlier",  # quotes 3 words, asks its own question
        "tell me more about the world's fair in Paris please",  # shares one 3-word phrase
        "how tall is the tower now",
    ]
    for text in near_misses:
        result = guard.match(text, 13.0, 14.0)
        assert not result.is_echo, (text, result)


def test_user_quoting_most_of_a_sentence_but_adding_words_is_not_echo():
    guard = EchoTranscriptGuard()
    guard.add("Do you want to know the capital of Spain?", 5.0, 7.0)
    result = guard.match("Yes, I want to know the capital of Spain", 7.5, 9.0)
    assert 0.7 < result.coverage < 0.8 and not result.is_echo
    assert guard.match("you want to know the capital of spain", 7.5, 9.0).is_echo  # the threshold's other side


def test_short_transcripts_are_never_called_echo_by_text():
    guard = EchoTranscriptGuard()
    guard.add("Yes please.", 5.0, 6.0)
    assert not guard.match("yes please", 5.2, 6.0).is_echo


def test_an_interrupted_sentence_only_counts_what_was_heard(guard):
    guard.note_playing((3, 0), "The Louvre is the most visited museum in the world, with nine million visitors.", 40.0)
    guard.note_played((3, 0), 41.2, heard_text="The Louvre is the most visited")
    assert guard.match("the louvre is the most visited", 40.1, 41.3).is_echo
    assert not guard.match("museum in the world with nine million visitors", 41.3, 43.0).is_echo


def test_old_sentences_are_forgotten():
    guard = EchoTranscriptGuard(EchoGuardConfig(memory_s=60.0, max_sentences=3))
    guard.add("The first sentence said long ago.", 0.0, 2.0)
    guard.note_playing("new", "A new sentence that is playing now.", 100.0)
    assert guard.match("the first sentence said long ago", 1.0, 2.0).coverage == 0.0
    for index in range(5):
        guard.add(f"Sentence number {index} of many.", 101.0 + index, 101.5 + index)
    assert len(guard._sentences) == 3


# ---------------------------------------------------------------------- loop breaker

REPLY = "I am a voice assistant running on your computer, and I can answer questions."


def test_three_echo_like_turns_in_a_row_stop_the_loop():
    breaker = LoopBreaker()
    echoes = [
        "voice assistant running on your computer and I can answer",
        "I am a voice assistant running on your computer",
        "running on your computer and I can answer questions",
    ]
    decisions = []
    for t, text in enumerate(echoes):
        breaker.assistant_replied(REPLY)
        decisions.append(breaker.user_turn(text, float(t)))
    assert [d.stop for d in decisions] == [False, False, True]
    assert decisions[-1].reason == "echo-like turns" and "hearing my own voice" in decisions[-1].message
    assert breaker.stops == 1
    breaker.assistant_replied(REPLY)
    assert not breaker.user_turn(echoes[0], 3.0).stop  # counters restart after a stop


def test_a_normal_turn_breaks_the_run_of_echo_like_turns():
    breaker = LoopBreaker()
    texts = ["I am a voice assistant running on your computer", "I am a voice assistant running on your computer",
             "what is the weather like", "voice assistant running on your computer and I can answer"]  # fmt: skip
    for t, text in enumerate(texts):
        breaker.assistant_replied(REPLY)
        assert not breaker.user_turn(text, float(t * 40)).stop, text


def test_the_same_user_text_three_times_quickly_stops():
    breaker = LoopBreaker(LoopConfig(repeat_count=3, repeat_window_s=30.0))
    breaker.assistant_replied("Sure.")
    assert not breaker.user_turn("Tell me a joke about cats.", 0.0).stop
    breaker.assistant_replied("Why did the cat sit on the computer? To keep an eye on the mouse.")
    assert not breaker.user_turn("tell me a joke about cats", 8.0).stop
    decision = breaker.user_turn("Tell me a joke about cats!", 16.0)
    assert decision.stop and decision.reason == "repeated user text"


def test_the_same_user_text_spread_over_minutes_does_not_stop():
    breaker = LoopBreaker(LoopConfig(repeat_count=3, repeat_window_s=30.0))
    for t in (0.0, 40.0, 80.0, 120.0):
        assert not breaker.user_turn("what time is it", t).stop
    assert not breaker.user_turn("", 121.0).stop


# ---------------------------------------------------------------------- own voice guard

pytest_espeak = pytest.mark.skipif(
    not have_espeak(), reason="espeak-ng is not installed (scripts/setup.sh installs it)"
)


@pytest.fixture(scope="module")
def voices(tmp_path_factory):
    """The Piper voice (enrolled as the assistant) and espeak-ng clips; the encoder on 1 thread."""
    import torch

    from voice_assistant.models import default_tts_model
    from voice_assistant.room import RoomConfig, SimulatedRoom
    from voice_assistant.tts import PiperSynthesizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("guards")
    piper = PiperSynthesizer.load(default_tts_model(), threads=1)
    rate = piper.sample_rate_hz
    clips = {"piper": (piper.synthesize_all("Paris is the capital of France and it is known for its museums."), rate)}
    clips["piper_short"] = (piper.synthesize_all("Yes."), rate)

    room = SimulatedRoom(RoomConfig(delay_ms=60.0))  # the assistant's voice as the microphone hears it
    played = np.concatenate([clips["piper"][0], np.zeros(rate // 2, np.float32)])
    block = rate // 50
    for start in range(0, len(played) - block + 1, block):
        room.feed_played(played[start : start + block], rate, 100.0 + start / rate)
    chunks = int(len(played) / rate * 16000) // 512
    clips["piper_room"] = (
        np.concatenate([room.mix(np.zeros(512, np.float32), 100.0 + (k + 1) * 512 / 16000) for k in range(chunks)]),
        16000,
    )

    def espeak(name: str, text: str, voice: str = "en-us"):
        audio, espeak_rate = soundfile.read(str(say(text, folder / f"{name}.wav", voice=voice)), dtype="float32")
        clips[name] = (audio, espeak_rate)

    espeak("user_1", "A large size in stockings is hard to sell at the market.")
    espeak("user_2", "The juice of lemons makes a fine punch on a summer day.")
    espeak("user_3", "It is easy to tell the depth of a well when you drop a stone.")
    espeak("other", "Four hours of steady work faced us before the sun went down.", voice="en-us+f4")
    guard = OwnVoiceGuard.from_synthesizer(piper)
    yield guard, clips
    torch.set_num_threads(threads)


@pytest_espeak
def test_piper_voice_is_own_voice_and_espeak_is_not(voices):
    guard, clips = voices
    guard.user = None
    scores = {}
    for name in ("piper", "piper_room", "user_3", "other"):
        is_own, own, user = guard.is_own_voice(*clips[name])
        scores[name] = own
        assert user is None
        assert is_own == name.startswith("piper"), (name, own)
    print("own-voice scores (no user enrolled):", {k: round(v, 3) for k, v in scores.items()})
    assert scores["piper"] >= 0.8 and scores["piper_room"] >= OwnVoiceConfig().own_threshold
    assert scores["user_3"] < 0.7 and scores["other"] < 0.7


@pytest_espeak
def test_with_a_user_enrolled_the_better_match_wins(voices):
    guard, clips = voices
    guard.enroll_user([clips["user_1"], clips["user_2"]])
    try:
        piper = guard.is_own_voice(*clips["piper_room"])
        user = guard.is_own_voice(*clips["user_3"])
        other = guard.is_own_voice(*clips["other"])
        checks = {"piper_room": piper, "user": user, "other": other}
        scores = {name: (round(c.own_score, 3), round(c.user_score, 3)) for name, c in checks.items()}
        print("with user enrolled (own, user):", scores)
        assert piper.is_own is True and piper.own_score > piper.user_score
        assert user.is_own is False and user.user_score > user.own_score
        assert other.is_own is False  # a third voice is not taken for the assistant
        assert guard.is_enrolled_user(*clips["user_3"]) is True
        assert guard.is_enrolled_user(*clips["piper"]) is False
    finally:
        guard.user = None


@pytest_espeak
def test_short_clips_are_not_judged(voices):
    guard, clips = voices
    audio, rate = clips["piper_short"]
    assert len(audio) / rate < 1.0
    assert guard.is_own_voice(audio, rate) == (None, None, None)
    assert guard.is_own_voice(np.zeros(16000 * 2, np.float32), 16000) == (None, None, None)  # no speech in it
    guard.user = guard.assistant
    try:
        assert guard.is_enrolled_user(audio, rate) is None
    finally:
        guard.user = None


def test_own_voice_guard_needs_an_enrollment():
    guard = OwnVoiceGuard()
    with pytest.raises(RuntimeError):
        guard.is_own_voice(np.zeros(32000, np.float32), 16000)
    with pytest.raises(RuntimeError):
        guard.is_enrolled_user(np.zeros(32000, np.float32), 16000)


# ---------------------------------------------------------------------- speaker lock fails closed


class DirectionEncoder:
    """A stand-in speaker encoder: the embedding is the clip's first 4 samples, normalized."""

    model_id = "test-encoder-1"

    def embed(self, audio, rate_hz):
        vector = np.asarray(audio[:4], dtype=np.float32)
        return vector / np.linalg.norm(vector)


def locked_defense(model_id: str = "test-encoder-1"):
    from datetime import datetime, timezone

    import voiceprint

    from voice_assistant.defense import SelfSpeechDefense

    guard = OwnVoiceGuard(encoder=DirectionEncoder())
    user = voiceprint.Enrollment("amy", np.array([1, 0, 0, 0], dtype=np.float32), 1, 3.0,
                                 datetime.now(timezone.utc), model_id)  # fmt: skip
    guard.set_user(user)  # no assistant enrollment yet: its thread has not finished (or failed)
    return SelfSpeechDefense(own_voice=guard, speaker_lock=True)


def clip(*direction: float, seconds: float = 2.0) -> np.ndarray:
    audio = np.zeros(int(16000 * seconds), dtype=np.float32)
    audio[:4] = direction
    return audio


def test_speaker_lock_refuses_what_it_cannot_verify():
    defense = locked_defense()
    assert defense.rejects("hello", 0.0, 1.0, clip(1, 0, 0, 0), recently_played=False) == ""  # the user
    assert "not the enrolled speaker" in defense.rejects("hello", 0.0, 1.0, clip(0, 1, 0, 0), recently_played=False)
    assert "cannot be verified" in defense.rejects("hi", 0.0, 1.0, clip(1, 0, 0, 0, seconds=0.5), recently_played=False)
    assert "cannot be verified" in defense.rejects("hi", 0.0, 1.0, None, recently_played=False)
    from voice_assistant.defense import SelfSpeechDefense

    assert "cannot be verified" in SelfSpeechDefense(speaker_lock=True).rejects("hi", 0.0, 1.0, clip(1, 0, 0, 0), False)


def test_speaker_lock_with_an_enrollment_from_another_encoder_is_refused_at_start():
    import voiceprint

    locked_defense().own_voice.load_for_speaker_lock()  # same encoder: fine
    with pytest.raises(voiceprint.VoiceprintError, match="enroll again"):
        locked_defense(model_id="some-other-encoder").own_voice.load_for_speaker_lock()
