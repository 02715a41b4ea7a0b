"""English and Mandarin: the language of each turn, the prompt's rule, the voice of each sentence,
Mandarin fixed replies, and the recogniser's hallucination filter (fakes; the real models in test_e2e)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import Harness, wait_until
from fake_llama_server import Reply
from fakes import FakeSynthesizer

from voice_assistant.asr import HallucinationLimits, Transcript, TranscriptScores
from voice_assistant.defense import SelfSpeechDefense
from voice_assistant.language import system_prompt, turn_language
from voice_assistant.mandarin_tts import int_to_zh, normalize_text
from voice_assistant.tts import BilingualSynthesizer


def test_turn_language_follows_the_setting_or_the_recogniser():
    assert turn_language("en", "德国的首都是哪里？", "zh") == "en"  # fixed by --language en
    assert turn_language("zh", "What is it?", "en") == "zh"
    assert turn_language("auto", "Berlin", "zh") == "zh"  # what the recogniser detected wins
    assert turn_language("auto", "德国的首都是哪里？") == "zh"  # typed: judged by its characters
    assert turn_language("auto", "What is the capital of Germany?") == "en"


def test_the_prompt_says_which_language_to_answer_in():
    assert system_prompt("Be brief.", "en").endswith("Always answer in English.")
    assert "Mandarin Chinese" in system_prompt("Be brief.", "zh") and system_prompt("Be brief.", "zh").startswith("Be")
    assert "language of the user's last message" in system_prompt("Be brief.", "auto")


class Voice(FakeSynthesizer):
    def __init__(self, rate: int) -> None:
        super().__init__()
        self.sample_rate_hz = rate


def test_each_sentence_is_spoken_by_the_voice_of_its_language_at_one_rate():
    english, mandarin = Voice(1000), Voice(2000)
    voice = BilingualSynthesizer(english, mandarin)
    assert len(voice.synthesize_all("Berlin is the capital.")) == 220 and english.spoken == ["Berlin is the capital."]
    audio = voice.synthesize_all("德国的首都是柏林。")  # 9 characters: 90 samples at 2 kHz -> 45 at 1 kHz
    assert mandarin.spoken == ["德国的首都是柏林。"] and len(audio) == 45 and voice.sample_rate_hz == 1000
    voice.synthesize_all("Python 是一种编程语言。")  # mostly Chinese: the Mandarin voice
    assert mandarin.spoken[-1] == "Python 是一种编程语言。"


@pytest.mark.parametrize("number, spoken", [(12, "十二"), (105, "一百零五"), (380000, "三十八万"), (2024, "二千零二十四"),
                                            (100000000, "一亿"), (0, "零")])  # fmt: skip
def test_mandarin_numbers(number, spoken):
    assert int_to_zh(number) == spoken


def test_the_mandarin_front_end_writes_numbers_and_units_out():
    assert normalize_text("一年有52个星期。") == "一年有五十二个星期。"
    assert normalize_text("水在100℃沸腾，约71%。") == "水在一百摄氏度沸腾，约百分之七十一。"
    assert normalize_text("3+5=8") == "三加五等于八"
    assert normalize_text("月亮离地球约384,400km。") == "月亮离地球约三十八万四千四百公里。"


def test_mandarin_turns_get_mandarin_fixed_replies_and_the_mandarin_rule(server):
    """--language auto: a turn the recogniser heard as Mandarin is asked for in the prompt's auto rule,
    and a fixed reply (here: the LLM fails) is said in Mandarin."""
    from asr_llm_tts import LLM_ERROR_REPLY, MANDARIN_REPLIES

    scores = TranscriptScores()
    h = Harness(server.url, mic=True, language="auto", defense=SelfSpeechDefense(scores=scores))
    try:
        scores.record("德国的首都是哪里？", -0.1, "zh")
        server.script(Reply(pieces=["德国的首都是柏林。"]))
        h.system.on_final_text("德国的首都是哪里？", 1.0, 1.1, np.zeros(16000, np.float32))
        wait_until(lambda: h.system.active_turn() is not None)
        turn = h.system.active_turn()
        assert turn.language == "zh"
        h.play_reply(turn.turn_id)
        h.wait_idle()
        assert h.synth.spoken[-1] == "德国的首都是柏林。"
        prompt = server.completion_bodies[-1]["prompt"]
        assert "language of the user's last message" in prompt and "德国的首都是哪里？" in prompt
        server.script(Reply(status=500))
        h.system.submit_user_text("法国的首都是哪里？")
        wait_until(lambda: h.system.active_turn() is not None and h.system.active_turn().llm_done)
        h.play_reply(h.system.active_turn().turn_id)
        h.wait_idle()
        assert h.synth.spoken[-1] == MANDARIN_REPLIES[LLM_ERROR_REPLY]
    finally:
        h.close()


# ---------------------------------------------------------------------- hallucination filter

LIMITS = HallucinationLimits()


@pytest.mark.parametrize("transcript", [
    Transcript("3. 3. 3. 3. 3. 3. 3. 3. 3. 3. 3. 3. 3. 3. 3. 3.", "en", -0.3, 0.1, 4.8),  # a decoding loop
    Transcript("Thank you for watching, and I will see you next time.", "en", -0.35, 0.2, 1.1),  # a video's end
    Transcript("That 2.2.5 show that one should have freely freed.", "en", -1.35, 0.09, 1.0),  # Mandarin to tiny.en
    Transcript("you", "en", -0.8, 0.85, 0.6),  # breath noise
    Transcript("字幕由Amara.org社区提供", "zh", -0.4, 0.3, 1.0),
])  # fmt: skip
def test_invented_transcripts_are_dropped(transcript):
    assert transcript.hallucination(LIMITS)


@pytest.mark.parametrize("transcript", [
    Transcript("How many weeks are in a year?", "en", -0.35, 0.07, 0.79),
    Transcript("Thank you.", "en", -0.3, 0.2, 0.7),  # people do say it
    Transcript("Stop.", "en", -0.6, 0.4, 0.6),  # short and unsure, but heard
    Transcript("And mister John Dashwood had then leisure to consider", "en", -1.0, 0.1, 1.2),  # real, the worst seen
    Transcript("一年有多少个星期", "zh", -0.3, 0.05, 0.9),
])  # fmt: skip
def test_real_short_questions_are_kept(transcript):
    assert transcript.hallucination(LIMITS) == ""


class FakeWhisper:
    """faster-whisper's transcribe() shape, returning prepared segments."""

    def __init__(self, language: str, segments: list[tuple[str, float, float, float]], probabilities=None) -> None:
        self.language, self.segments, self.probabilities = language, segments, probabilities or [(language, 0.9)]
        self.calls: list = []

    def transcribe(self, audio, language=None, **options):
        from types import SimpleNamespace

        self.calls.append(language)
        decoded = language or self.language
        segments = [SimpleNamespace(text=t, avg_logprob=lp, no_speech_prob=ns, compression_ratio=cr)
                    for t, lp, ns, cr in self.segments]  # fmt: skip
        info = SimpleNamespace(language=decoded, all_language_probs=None if language else self.probabilities)
        return iter(segments), info


def test_the_transcriber_drops_hallucinations_and_records_the_language():
    from voice_assistant.asr import WhisperTranscriber

    whisper = FakeWhisper("zh", [(" 一年有多少個星期", -0.2, 0.05, 0.9)])
    transcriber = WhisperTranscriber(whisper, language=None)
    assert transcriber.transcribe_text(np.zeros(16000, np.float32)) == "一年有多少个星期"  # in simplified characters
    assert transcriber.scores.language_of("一年有多少个星期") == "zh"
    looping = WhisperTranscriber(FakeWhisper("en", [(" 3. 3. 3. 3. 3. 3. 3. 3.", -0.2, 0.1, 5.0)]), language="en")
    assert looping.transcribe_text(np.zeros(16000, np.float32)) == ""


def test_auto_mode_decodes_a_third_language_again_as_the_likelier_of_english_and_mandarin():
    from voice_assistant.asr import WhisperTranscriber

    whisper = FakeWhisper("th", [(" hello", -0.2, 0.05, 0.9)], [("th", 0.6), ("en", 0.3), ("zh", 0.1)])
    transcript = WhisperTranscriber(whisper, language=None).transcribe_full(np.zeros(16000, np.float32))
    assert whisper.calls == [None, "en"] and transcript.language == "en"


def test_the_echo_guard_matches_mandarin_by_character():
    from voice_assistant.guards import EchoTranscriptGuard

    guard = EchoTranscriptGuard()
    guard.add("德国的首都是柏林，也是德国最大的城市。", 10.0, 13.0)
    assert guard.match("德国的首都是柏林也是德国最大的城市", 10.5, 13.5).is_echo  # heard back through the room
    assert not guard.match("德国的首都是哪里？", 12.0, 13.2).is_echo  # a question that reuses its words
