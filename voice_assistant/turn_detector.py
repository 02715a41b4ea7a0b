"""Semantic end of turn: has the user finished what they were saying, judged from the words and the sound?

Smart Turn v3.2 (pipecat, BSD-2-Clause) is a small Whisper-encoder classifier: it takes the last
8 s of the utterance as 80-bin Whisper log-mel features and says how likely the turn is complete,
from intonation and the words' rhythm ("How far away is ..." rising and hanging, against "... the
moon?" falling). The ONNX file is taken out of the pipecat-ai wheel at set-up (bundles.py); pipecat
itself is never imported.

`smart_turn_features()` is the feature extraction the model was trained with (Hugging Face's
WhisperFeatureExtractor with chunk_length=8 and do_normalize=True): the waveform is normalized to
zero mean and unit variance, then faster-whisper's own log-mel extractor (the same Slaney mel
filters and log compression as Whisper) turns it into (80, 800) features.

The words are judged too (`TurnJudge.judge_words`, as LiveKit's turn detector does with its own small
model): the conversation's language model, asked for its likeliest next tokens after the user's words
in the chat template, says how likely the message ends there (the end-of-message token, or a
sentence's final punctuation). "How far away is" never has an ending among its 20 likeliest tokens;
"How many legs does a spider have" has 0.97. The prompt is the reply's own, cut after the words, in
the conversation's slot: the reply that follows reads only the template's few closing tokens.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np

from .endpointing import WORDS_UNFINISHED_BELOW
from .errors import LLMError
from .workers import QueueWorker

log = logging.getLogger(__name__)

RATE_HZ = 16000
WINDOW_S = 8
WINDOW_SAMPLES = WINDOW_S * RATE_HZ
FRAMES = WINDOW_SAMPLES // 160  # 10 ms hops: 800 frames
MEL_BINS = 80

_extractor = None
_extractor_lock = threading.Lock()


def _whisper_extractor():
    global _extractor
    with _extractor_lock:
        if _extractor is None:
            from faster_whisper.feature_extractor import FeatureExtractor

            _extractor = FeatureExtractor(feature_size=MEL_BINS, chunk_length=WINDOW_S)
        return _extractor


def last_window(audio: np.ndarray) -> np.ndarray:
    """The last 8 s of float32 16 kHz audio; shorter audio is padded with silence in front."""
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    if len(audio) >= WINDOW_SAMPLES:
        return audio[-WINDOW_SAMPLES:]
    return np.concatenate([np.zeros(WINDOW_SAMPLES - len(audio), dtype=np.float32), audio])


def smart_turn_features(audio: np.ndarray) -> np.ndarray:
    """(80, 800) float32 log-mel features of the last 8 s of `audio` (float32, 16 kHz mono)."""
    window = last_window(audio)
    window = (window - window.mean()) / np.sqrt(window.var() + 1e-7)
    features = _whisper_extractor()(window.astype(np.float32), padding=0)
    return np.ascontiguousarray(features[:, :FRAMES], dtype=np.float32)


class SmartTurnModel:
    """The Smart Turn ONNX model on onnxruntime, with an explicit thread budget. Thread-safe."""

    def __init__(self, session) -> None:
        self.session = session
        self._lock = threading.Lock()

    @classmethod
    def load(cls, path: str | Path, threads: int = 1) -> SmartTurnModel:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        [model_input] = session.get_inputs()
        if model_input.name != "input_features" or list(model_input.shape[1:]) != [MEL_BINS, FRAMES]:
            raise ValueError(f"{path}: not a Smart Turn v3 model (input {model_input.name} {model_input.shape})")
        return cls(session)

    def probability(self, audio: np.ndarray) -> float:
        """How likely the turn that ends with `audio` (float32 16 kHz) is complete, from 0 to 1."""
        features = smart_turn_features(audio)[np.newaxis]
        with self._lock:
            [output] = self.session.run(None, {"input_features": features})
        return float(np.asarray(output).reshape(-1)[0])

    def warm_up(self) -> None:
        self.probability(np.zeros(RATE_HZ, dtype=np.float32))


ENDING_PIECES = frozenset({".", "?", "!", "…", "...", "。", "？", "！"})


def words_prefix(prompt: str, words: str) -> tuple[str, str] | None:
    """The reply's prompt cut right after the user's `words` (their last occurrence), and the template's
    end-of-message marker that follows them ("<|im_end|>"); None if the words are not in the prompt."""
    at = prompt.rfind(words)
    if not words or at < 0:
        return None
    end = at + len(words)
    return prompt[:end], prompt[end:].split("\n", 1)[0].strip()


def ending_probability(top: list[tuple[str, float]], end_marker: str) -> float:
    """How likely the message ends next, from the likeliest next tokens: the end-of-message marker (or a
    control token, whose text is empty) or a sentence's final punctuation."""
    return sum(p for token, p in top
               if token == "" or token.strip() in ENDING_PIECES or (end_marker and token.strip() == end_marker))


def strip_final_punctuation(text: str) -> str:
    """The recogniser's guess of a final mark ("How far away is?") says nothing about the words."""
    return text.rstrip().rstrip(".?!…。？！,，、 ")


class TurnJudge:
    """The `turn` worker: judges each pause snapshot that is still the newest utterance, and tells the
    utterance tracker (`set_verdict`), which ends the turn soon (finished) or waits (unfinished)."""

    def __init__(self, model, tracker, threshold: float = 0.5) -> None:
        self.model = model  # .probability(float32 16 kHz audio) -> float; None: the words alone
        self.tracker = tracker  # endpointing.UtteranceTracker
        self.threshold = threshold
        self.worker = QueueWorker("turn", self._handle)
        self.last: tuple[float, float, float] | None = None  # (speech_end_t, probability, ms) of the last judged

    def start(self) -> None:
        self.worker.start()

    def submit(self, snapshot) -> None:
        """Audio-in thread: a `PauseSnapshot` (ignored without a sound model: the words alone are judged)."""
        if self.model is not None:
            self.worker.put(snapshot)

    def idle(self) -> bool:
        return self.worker.idle()

    def stop(self) -> None:
        self.worker.stop()

    def _handle(self, snapshot) -> None:
        if snapshot.speech_end_t != self.tracker.last_speech_end_t:
            return  # the user spoke again: a newer snapshot is queued
        start = time.perf_counter()
        probability = self.model.probability(snapshot.audio)
        self.tracker.set_verdict(snapshot.speech_end_t, probability >= self.threshold)
        self.last = (snapshot.speech_end_t, probability, (time.perf_counter() - start) * 1000.0)
        log.debug("turn %s (probability %.2f, %.0f ms)", "finished" if probability >= self.threshold else "unfinished",
                  probability, self.last[2])

    def judge_words(self, client, speech_end_t: float, prompt: str, words: str) -> float | None:
        """Reply thread, before a speculative reply is requested: how likely the user's message ends
        after `words`, told to the tracker (None, the sound decides: no prompt text, or no server answer)."""
        if not self.tracker.read_words:
            return None
        probability = None
        cut = words_prefix(prompt, strip_final_punctuation(words)) if isinstance(prompt, str) else None
        if cut is not None:
            start = time.perf_counter()
            try:
                probability = ending_probability(client.next_tokens(cut[0]), cut[1])
            except LLMError as exc:  # the sound (or the fixed silence) decides; the reply reports real errors
                log.debug("words not judged: %s", exc)
            else:
                log.debug("words %s (ending probability %.4f, %.0f ms): %r",
                          "unfinished" if probability < WORDS_UNFINISHED_BELOW else "judged", probability,
                          (time.perf_counter() - start) * 1000.0, words)  # fmt: skip
        self.tracker.set_words_verdict(speech_end_t, probability)
        return probability

    def no_words(self, speech_end_t: float) -> None:
        """Nothing to judge for that utterance (no words, a stop command): the sound decides."""
        if self.tracker.read_words:
            self.tracker.set_words_verdict(speech_end_t, None)
