"""Whisper's shortened window: the encoder reads the utterance and 10 s of padding, not 30 s."""

from __future__ import annotations

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

