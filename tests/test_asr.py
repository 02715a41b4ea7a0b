"""Whisper's shortened window: the encoder reads the utterance and 10 s of padding, not 30 s."""

from __future__ import annotations

import types

import numpy as np
import pytest

from voice_assistant.asr import shorten_window, trim_padding


def features(audio_frames: int, window: int = 3000, batch: bool = False) -> np.ndarray:
    """faster-whisper's encoder input: log-mel frames of audio, then zero columns up to the window."""
    rng = np.random.default_rng(0)
    out = np.zeros((80, window), np.float32)
    out[:, :audio_frames] = rng.uniform(-1.0, 1.0, (80, audio_frames))
    out[:, audio_frames // 2] = 0.0  # a zero frame inside the audio is not its end
    return out[None] if batch else out


def test_the_window_ends_the_padding_after_the_last_frame_of_audio():
    assert trim_padding(features(250), 1000).shape == (80, 1250)
    assert trim_padding(features(250, batch=True), 1000).shape == (1, 80, 1250)
    cut = trim_padding(features(250), 1000)
    assert np.array_equal(cut, features(250)[:, :1250])  # the audio as it was, and faster-whisper's zeros


def test_a_long_utterance_keeps_the_full_window():
    assert trim_padding(features(2500), 1000).shape == (80, 3000)
    assert trim_padding(features(3000), 1000).shape == (80, 3000)


def test_a_window_without_audio_is_padding_alone():
    assert trim_padding(np.zeros((80, 3000), np.float32), 1000).shape == (80, 1000)


class FakeModel:
    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def encode(self, features: np.ndarray) -> str:
        self.shapes.append(features.shape)
        return "encoded"


def test_the_model_encodes_the_shortened_window_and_30_s_leaves_it_alone():
    model = FakeModel()
    shorten_window(model, 10.0)
    assert model.encode(features(400)) == "encoded" and model.shapes == [(80, 1400)]
    untouched = FakeModel()
    original = untouched.encode
    shorten_window(untouched, 30.0)
    assert untouched.encode == original


class FakeWhisper:
    """faster-whisper's transcribe(): records the audio it was given, hears nothing."""

    def __init__(self) -> None:
        self.lengths: list[int] = []

    def transcribe(self, audio, **options):
        self.lengths.append(len(audio))
        return [], types.SimpleNamespace(language="en", all_language_probs=None)


def test_with_the_short_window_each_utterance_is_followed_by_a_second_of_silence():
    from voice_assistant.asr import WhisperTranscriber

    model = FakeWhisper()
    WhisperTranscriber(model, silence_s=1.0).transcribe_full(np.ones(8000, np.float32))
    assert model.lengths == [8000 + 16000]
    unchanged = FakeWhisper()
    WhisperTranscriber(unchanged).transcribe_full(np.ones(8000, np.float32))
    assert unchanged.lengths == [8000]


@pytest.mark.slow
def test_faster_whisper_encodes_the_shortened_window_and_hears_the_words():
    """The real model: faster-whisper pads each window to 3000 frames and calls encode(), which cuts it."""
    from faster_whisper import WhisperModel
    from speech import piper_sentence

    from voice_assistant.models import default_asr_model_dir

    whisper = WhisperModel(str(default_asr_model_dir()), device="cpu", compute_type="int8", cpu_threads=1,
                           local_files_only=True)  # fmt: skip
    seen: list[tuple[int, ...]] = []
    encode = whisper.encode
    whisper.encode = lambda f: (seen.append(f.shape), encode(f))[1]
    shorten_window(whisper, 10.0)
    audio = np.concatenate([np.zeros(3200, np.float32), piper_sentence("What is the capital of Germany?"),
                            np.zeros(8000, np.float32)])
    segments, _ = whisper.transcribe(audio, language="en", beam_size=1, without_timestamps=True,
                                     condition_on_previous_text=False, temperature=0.0)  # fmt: skip
    text = " ".join(s.text for s in segments).lower()
    assert "capital of germany" in text
    # the encoder got the audio's frames and 10 s of padding, not faster-whisper's 3000 frames
    assert abs(seen[0][-1] - (len(audio) // 160 + 1000)) <= 2 and seen[0][-1] < 3000


@pytest.mark.slow
def test_a_short_mandarin_question_cut_64_ms_after_the_voice_is_heard_whole():
    """With 10 s of zero padding right after the voice, base (zh) stopped before the last characters of
    short questions ("中国首都" as "中国手", 4 of 81 clips); the second of silence before the padding keeps
    them whole. The utterance ends as the program's snapshot does, 64 ms after the voice."""
    from voice_assistant.asr import WhisperTranscriber
    from voice_assistant.mandarin_tts import MandarinSynthesizer
    from voice_assistant.models import default_mandarin_voice, resolve_asr_model
    from voice_assistant.wavio import resample

    voice = MandarinSynthesizer.load(default_mandarin_voice(), threads=1)
    audio = resample(voice.synthesize_all("中国首都？"), voice.sample_rate_hz, 16000)
    voiced = np.flatnonzero(np.abs(audio) > 0.01)
    transcriber = WhisperTranscriber.load(str(resolve_asr_model("base")), 1, language="zh", window_pad_s=10.0)
    question = audio[voiced[0] : voiced[-1] + 1]
    heard = [transcriber.transcribe_full(np.concatenate([np.zeros(round(lead * 16000), np.float32), question,
                                                         np.zeros(1024, np.float32)])).text
             for lead in (0.1, 0.3, 0.5)]  # fmt: skip
    assert all("首都" in text for text in heard), heard
