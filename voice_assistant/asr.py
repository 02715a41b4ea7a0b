"""Speech recognition: faster-whisper in this process, driven by RealtimeSTT's VAD and turn logic.

`WhisperTranscriber` owns the CTranslate2 model with an explicit thread budget and is passed to
RealtimeSTT as its `transcription_executor`, so no model subprocess is started. `SpeechRecognizer`
wraps RealtimeSTT's `AudioToTextRecorder` fed with `feed_audio()` (we capture the microphone
ourselves, so live mode and file mode take the same path).
"""

from __future__ import annotations

import collections
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import SetupError

log = logging.getLogger(__name__)

BUNDLED_NAMES = ("tiny.en",)


def resolve_asr_model(name_or_dir: str | None) -> str:
    """A CTranslate2 model directory for `--asr-model` (None or 'tiny.en' means the bundled one)."""
    from .models import default_asr_model_dir

    if name_or_dir is None or name_or_dir in BUNDLED_NAMES:
        return str(default_asr_model_dir())
    path = Path(name_or_dir)
    if path.is_dir():
        if not (path / "model.bin").is_file():
            raise SetupError(f"{path} is not a CTranslate2 Whisper model directory (no model.bin)")
        return str(path)
    return name_or_dir  # a model name: faster-whisper looks in its local cache only (no download)


@dataclass(frozen=True)
class ASRConfig:
    """Speech recognition settings."""

    model: str  # CTranslate2 directory or a locally cached model name
    threads: int = 2  # CTranslate2 intra-op threads
    beam_size: int = 1  # 1 = greedy decoding, fastest
    language: str = "en"  # spoken language code
    end_of_speech_silence_s: float = 0.45  # silence that ends an utterance
    min_utterance_s: float = 0.3  # shorter recordings are dropped
    early_transcription_ms: int = 0  # >0: transcribe this long into the end-of-speech silence


class TranscriptScores:
    """How sure the recogniser was of each recent transcript: its lowest segment mean log-probability
    per token, by text (the last `keep`). Written by the transcriber, read by the policy."""

    def __init__(self, keep: int = 32) -> None:
        self.keep = keep
        self._scores: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(text: str) -> str:
        """Words only: RealtimeSTT may change case, spaces and the final punctuation."""
        return " ".join(re.findall(r"\w+", text.lower()))

    def record(self, text: str, score: float) -> None:
        with self._lock:
            self._scores[self.key(text)] = score
            self._scores.move_to_end(self.key(text))
            while len(self._scores) > self.keep:
                self._scores.popitem(last=False)

    def score_of(self, text: str) -> float | None:
        with self._lock:
            return self._scores.get(self.key(text))


class WhisperTranscriber:
    """faster-whisper model; the RealtimeSTT `transcription_executor` interface."""

    def __init__(self, model, beam_size: int = 1, scores: TranscriptScores | None = None) -> None:
        self._model = model
        self._beam_size = beam_size
        self.scores = scores or TranscriptScores()
        self._lock = threading.Lock()

    @classmethod
    def load(cls, model: str, threads: int = 2, beam_size: int = 1) -> "WhisperTranscriber":
        from faster_whisper import WhisperModel

        try:
            whisper = WhisperModel(
                model, device="cpu", compute_type="int8", cpu_threads=threads, num_workers=1,
                local_files_only=True,
            )  # fmt: skip
        except Exception as exc:  # faster-whisper/huggingface raise many unrelated types
            raise SetupError(
                f"ASR model {model!r} not available offline ({type(exc).__name__}); "
                "pass a CTranslate2 Whisper directory with --asr-model"
            ) from None
        return cls(whisper, beam_size)

    def transcribe_text(self, audio: np.ndarray, language: str | None = "en") -> str:
        """Text of float32 16 kHz mono audio."""
        with self._lock:
            segments, _info = self._model.transcribe(
                audio, language=language, beam_size=self._beam_size, vad_filter=False,
                condition_on_previous_text=False, without_timestamps=True,
                temperature=0.0,  # no temperature fallback: it re-decodes up to 5 times (0.2 s -> 0.7 s+)
            )  # fmt: skip
            segments = list(segments)
            text = " ".join(segment.text.strip() for segment in segments).strip()
            if text:
                self.scores.record(text, min(segment.avg_logprob for segment in segments))
            return text

    def transcribe(self, audio, language=None, use_prompt=True, **options):
        """RealtimeSTT executor entry point (called on a RealtimeSTT worker thread)."""
        from RealtimeSTT.transcription_engines.base import TranscriptionResult

        return TranscriptionResult(text=self.transcribe_text(np.asarray(audio, dtype=np.float32), language))

    def warm_up(self) -> None:
        self.transcribe_text(np.zeros(16000, dtype=np.float32))


class CachingExecutor:
    """RealtimeSTT's final transcription, answered from the speculative one when it covers the same speech.

    `lookup()` returns the text already transcribed for the utterance RealtimeSTT has just closed,
    or None; only then does the model run again.
    """

    def __init__(self, transcriber: WhisperTranscriber, lookup: Callable[[], str | None]) -> None:
        self._transcriber = transcriber
        self._lookup = lookup

    def transcribe(self, audio, language=None, use_prompt=True, **options):
        from RealtimeSTT.transcription_engines.base import TranscriptionResult

        cached = self._lookup()
        if cached is not None:
            return TranscriptionResult(text=cached)
        return self._transcriber.transcribe(audio, language=language, use_prompt=use_prompt, **options)


class SpeechRecognizer:
    """The RealtimeSTT adapter: its `AudioToTextRecorder` fed by us, its callbacks, and the `asr` thread.

    `feed()` is called on the audio-in thread. The `asr` thread (`start()`) waits on RealtimeSTT's
    `text()` and hands each final transcript to `on_final(text, speech_end_t, text_t, audio)`,
    where `audio` is the utterance RealtimeSTT transcribed (for the voice checks) or None.
    RealtimeSTT's callbacks run on its own threads and only record state.
    """

    name = "asr"

    def __init__(self, utterance_end: Callable[[], float]) -> None:
        self.utterance_end = utterance_end  # end of the latest speech (the utterance tracker's clock)
        self._recorder = None
        self._thread: threading.Thread | None = None
        self._on_final = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._recording = False  # RealtimeSTT is recording an utterance; guarded by _lock
        self._transcribing_since = 0.0  # it closed one and is transcribing it; guarded by _lock
        self._utterance_end_t = 0.0  # end of speech of the utterance being transcribed; guarded by _lock
        self._audio: np.ndarray | None = None  # that utterance's audio; guarded by _lock

    @classmethod
    def create(cls, config: ASRConfig, transcriber, utterance_end: Callable[[], float]) -> "SpeechRecognizer":
        """`transcriber`: anything with RealtimeSTT's executor `transcribe()` (WhisperTranscriber, CachingExecutor)."""
        from RealtimeSTT import AudioToTextRecorder
        from RealtimeSTT.core import shutdown

        shutdown.print = lambda *args, **kwargs: None  # its only print: a red "RealtimeSTT shutting down" at every exit
        recognizer = cls(utterance_end)
        recognizer._recorder = AudioToTextRecorder(
            model=config.model,
            transcription_executor=transcriber,
            language=config.language,
            device="cpu",
            compute_type="int8",
            use_microphone=False,
            spinner=False,
            no_log_file=True,
            level=logging.WARNING,
            post_speech_silence_duration=config.end_of_speech_silence_s,
            min_length_of_recording=config.min_utterance_s,
            min_gap_between_recordings=0.0,
            early_transcription_on_silence=config.early_transcription_ms,
            silero_backend="auto",
            silero_onnx_threads=1,
            silero_deactivity_detection=True,
            beam_size=config.beam_size,
            on_recording_start=recognizer._on_recording_start,
            on_recording_stop=recognizer._on_recording_stop,
            on_transcription_start=recognizer._on_transcription_start,
            ensure_sentence_ends_with_period=False,
        )
        return recognizer

    def _on_recording_start(self) -> None:
        with self._lock:
            self._recording = True

    def _on_recording_stop(self) -> None:
        with self._lock:
            self._recording = False
            self._transcribing_since = time.monotonic()
            self._utterance_end_t = self.utterance_end() or time.monotonic()

    def _on_transcription_start(self, audio=None, *args) -> bool:
        """RealtimeSTT passes the utterance (16 kHz float32) it is about to transcribe."""
        with self._lock:
            self._audio = None if audio is None else np.asarray(audio, dtype=np.float32)
        return False  # False: RealtimeSTT goes on to transcribe

    def busy(self) -> bool:
        """An utterance is being recorded or transcribed (a transcription stuck 10 s does not count)."""
        with self._lock:
            transcribing = self._transcribing_since and time.monotonic() - self._transcribing_since < 10.0
            return self._recording or bool(transcribing)

    def feed(self, chunk_int16: np.ndarray) -> None:
        """Audio at 16 kHz, int16 mono (called on the audio-in thread)."""
        self._recorder.feed_audio(chunk_int16.tobytes(), original_sample_rate=16000)

    def start(self, on_final: Callable[[str, float, float, np.ndarray | None], None],
              stopping: threading.Event) -> None:  # fmt: skip
        self._on_final, self._stopping = on_final, stopping
        self.restart()

    def died(self) -> bool:
        """The asr thread ended without being stopped (what the device monitor asks)."""
        thread = self._thread
        return not self._stopping.is_set() and thread is not None and not thread.is_alive()

    def restart(self) -> None:
        """(Re)start the asr thread."""
        if not self._stopping.is_set():
            self._thread = threading.Thread(target=self._run, args=(self._on_final, self._stopping), name=self.name,
                                            daemon=True)  # fmt: skip
            self._thread.start()

    def _run(self, on_final, stopping: threading.Event) -> None:
        """asr thread: each final transcript to `on_final`; a failure is logged and listening goes on."""
        while not stopping.is_set():
            try:
                text = self._recorder.text() or ""
                with self._lock:
                    self._transcribing_since = 0.0
                    end_t, self._utterance_end_t = self._utterance_end_t, 0.0
                    audio, self._audio = self._audio, None
                if stopping.is_set():
                    return
                on_final(text, end_t, time.monotonic(), audio)
            except Exception:  # a worker loop logs and carries on
                if stopping.is_set():
                    return
                log.exception("speech recognition failed; listening again")

    def shutdown(self, timeout_s: float) -> None:
        """Stop RealtimeSTT (on a helper thread: it can take long) and the asr thread, within `timeout_s`."""
        stopper = threading.Thread(target=self._recorder.shutdown, name="asr-shutdown", daemon=True)
        stopper.start()
        stopper.join(timeout=timeout_s / 2)
        if self._thread is not None:
            self._thread.join(timeout=timeout_s / 2)
