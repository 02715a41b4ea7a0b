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

FRAMES_PER_S = 100  # Whisper's log-mel frames: a 10 ms hop
FULL_WINDOW_S = 30.0  # the window Whisper was trained on; faster-whisper pads every utterance to it
WINDOW_PAD_S = 10.0  # our window: the utterance and this much padding (measured: README, recognisers)
WINDOW_SILENCE_S = 1.0  # with our window, this much silence follows the utterance before the padding (trim_padding)


def resolve_asr_model(name_or_dir: str | None, language: str = "en") -> str:
    """A CTranslate2 model directory (or a locally cached name) for `--asr-model` and the language."""
    from .models import resolve_asr_model as resolve

    return str(resolve(name_or_dir, language))


@dataclass(frozen=True)
class ASRConfig:
    """Speech recognition settings."""

    model: str  # CTranslate2 directory or a locally cached model name
    threads: int = 2  # CTranslate2 intra-op threads
    beam_size: int = 1  # 1 = greedy decoding, fastest
    language: str | None = "en"  # spoken language code; None: detected per utterance (en or zh)
    end_of_speech_silence_s: float = 0.45  # silence that ends an utterance
    min_utterance_s: float = 0.3  # shorter recordings are dropped
    early_transcription_ms: int = 0  # >0: transcribe this long into the end-of-speech silence
    window_pad_s: float = WINDOW_PAD_S  # Whisper's window: the utterance and this much padding (30: full)


@dataclass(frozen=True)
class HallucinationLimits:
    """When a transcript is the decoder's invention rather than what was said (Whisper's own signals)."""

    max_no_speech_prob: float = 0.6  # "no speech" this likely, with words it is unsure of (avg_logprob < -0.5)
    min_avg_logprob: float = -1.2  # words this unlikely on average are a guess (real speech: -1.0 at worst)
    max_compression_ratio: float = 2.4  # text this repetitive ("3. 3. 3. 3.") is a decoding loop


# Whole utterances that Whisper invents on noise and foreign speech: the endings of subtitled videos
# it was trained on. Nobody asks an assistant these; "thank you" alone is real and is kept.
VIDEO_OUTROS = re.compile(
    r"^(thank you|thanks) (so much )?for watching\b|^please (like and )?subscribe\b|^subtitles by\b"
    r"|see you (in the )?next (time|video)$|字幕|请不吝点赞|订阅|謝謝觀看|谢谢观看|感谢观看"
)


@dataclass(frozen=True)
class Transcript:
    """A transcription with the decoder's confidence in it."""

    text: str
    language: str  # the language decoded ("en", "zh")
    avg_logprob: float = 0.0  # the lowest segment's mean log-probability per token
    no_speech_prob: float = 0.0  # the first segment's probability that there was no speech
    compression_ratio: float = 1.0  # the highest segment's zlib ratio (repetition)

    def hallucination(self, limits: HallucinationLimits) -> str:
        """Why this transcript is not something a person said ("" if it looks real)."""
        if self.compression_ratio > limits.max_compression_ratio:
            return f"repetitive (compression ratio {self.compression_ratio:.1f})"
        if self.avg_logprob < limits.min_avg_logprob:
            return f"unsure words (log-probability {self.avg_logprob:.2f})"
        if self.no_speech_prob >= limits.max_no_speech_prob and self.avg_logprob < -0.5:
            return f"no speech (probability {self.no_speech_prob:.2f})"
        if VIDEO_OUTROS.search(" ".join(re.findall(r"\w+", self.text.lower()))):
            return "a video's closing words"
        return ""


class TranscriptScores:
    """What the recogniser knew about each recent transcript, by text (the last `keep`): its lowest
    segment mean log-probability per token and its language. Written by the transcriber, read by the policy."""

    def __init__(self, keep: int = 32) -> None:
        self.keep = keep
        self._scores: collections.OrderedDict[str, tuple[float, str]] = collections.OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(text: str) -> str:
        """Words only: RealtimeSTT may change case, spaces and the final punctuation."""
        return " ".join(re.findall(r"\w+", text.lower()))

    def record(self, text: str, score: float, language: str = "en") -> None:
        with self._lock:
            self._scores[self.key(text)] = (score, language)
            self._scores.move_to_end(self.key(text))
            while len(self._scores) > self.keep:
                self._scores.popitem(last=False)

    def score_of(self, text: str) -> float | None:
        with self._lock:
            entry = self._scores.get(self.key(text))
        return None if entry is None else entry[0]

    def language_of(self, text: str) -> str | None:
        with self._lock:
            entry = self._scores.get(self.key(text))
        return None if entry is None else entry[1]


LANGUAGES = ("en", "zh")  # what --language auto chooses between
_TO_SIMPLIFIED = None


def simplified(text: str) -> str:
    """Chinese text in simplified characters (OpenCC's table, offline)."""
    global _TO_SIMPLIFIED
    if _TO_SIMPLIFIED is None:
        import opencc

        _TO_SIMPLIFIED = opencc.OpenCC("t2s")
    return _TO_SIMPLIFIED.convert(text)


def trim_padding(features: np.ndarray, pad_frames: int) -> np.ndarray:
    """Whisper features cut `pad_frames` after their last frame of audio.

    faster-whisper pads each utterance's log-mel features with zero columns up to 30 s (3000 frames)
    before the encoder, whose cost grows with the window, not with the speech. A real frame is never
    zero in all 80 bins, so the last non-zero column is the end of the audio. With 10 s of padding
    the encoder takes about a third of the time and the words are as good (measured on real speech:
    README); with less than about 6 s the decoder starts to loop. Zeros right after the voice made
    base (zh) stop before the last characters of a few short questions ("中国首都" heard as "中国手",
    4 of 81 clips cut 64 ms after the voice, against 0 with the full window): the transcriber puts
    a second of silence (the log-mel of zero audio, as Whisper was trained) between the utterance
    and the zeros (WhisperTranscriber, WINDOW_SILENCE_S), which kept all 81 whole. Padding the
    whole window with that silence instead of zeros made tiny.en loop (35 % word error).
    """
    audio_frames = np.flatnonzero(np.any(features != 0, axis=tuple(range(features.ndim - 1))))
    end = (int(audio_frames[-1]) + 1 if audio_frames.size else 0) + pad_frames
    return features if end >= features.shape[-1] else features[..., :end]


def shorten_window(whisper, pad_s: float) -> None:
    """Make a faster-whisper `WhisperModel` encode each window only `pad_s` past its audio (see trim_padding).

    faster-whisper calls `encode()` for every window it decodes and for language detection; the
    model (CTranslate2) takes windows shorter than 30 s. `pad_s` >= 30: the full window, unchanged.
    """
    if pad_s >= FULL_WINDOW_S:
        return
    encode, pad_frames = whisper.encode, round(pad_s * FRAMES_PER_S)
    whisper.encode = lambda features: encode(trim_padding(features, pad_frames))


class WhisperTranscriber:
    """faster-whisper model; the RealtimeSTT `transcription_executor` interface.

    `language` is "en", "zh", or None: detect each utterance's language and choose between English
    and Mandarin. Transcripts that look invented (HallucinationLimits) come back as "" and are logged.
    `silence_s`: silence appended to each utterance (with the short window: see trim_padding).
    """

    def __init__(self, model, beam_size: int = 1, scores: TranscriptScores | None = None,
                 language: str | None = "en", limits: HallucinationLimits | None = None,
                 silence_s: float = 0.0) -> None:  # fmt: skip
        self._model = model
        self._silence = np.zeros(round(silence_s * 16000), dtype=np.float32)  # appended to each utterance
        self._beam_size = beam_size
        self.language = language
        self.limits = limits or HallucinationLimits()
        self.scores = scores or TranscriptScores()
        self._lock = threading.Lock()

    @classmethod
    def load(cls, model: str, threads: int = 2, beam_size: int = 1, language: str | None = "en",
             limits: HallucinationLimits | None = None, window_pad_s: float = WINDOW_PAD_S) -> "WhisperTranscriber":  # fmt: skip
        """`window_pad_s`: how far past the utterance Whisper's encoder looks (see shorten_window)."""
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
        if language != "en" and not whisper.model.is_multilingual:
            raise SetupError(f"ASR model {model!r} understands only English: use --asr-model base for --language "
                             f"{language or 'auto'}")  # fmt: skip
        shorten_window(whisper, window_pad_s)
        silence_s = WINDOW_SILENCE_S if window_pad_s < FULL_WINDOW_S else 0.0
        return cls(whisper, beam_size, language=language, limits=limits, silence_s=silence_s)

    def _decode(self, audio: np.ndarray, language: str | None) -> tuple[Transcript, dict[str, float]]:
        """The transcript, and when `language` is None the detected language probabilities."""
        if self._silence.size:
            audio = np.concatenate([np.asarray(audio, dtype=np.float32), self._silence])
        segments, info = self._model.transcribe(
            audio, language=language, beam_size=self._beam_size, vad_filter=False,
            condition_on_previous_text=False, without_timestamps=True,
            temperature=0.0,  # no temperature fallback: it re-decodes up to 5 times (0.2 s -> 0.7 s+)
        )  # fmt: skip
        segments = list(segments)
        text = " ".join(segment.text.strip() for segment in segments).strip()
        if info.language == "zh":
            text = simplified(text)  # Whisper writes Mandarin in traditional characters as often as not
        probabilities = dict(info.all_language_probs or [])
        if not segments:
            return Transcript("", info.language), probabilities
        return Transcript(text, info.language, min(s.avg_logprob for s in segments), segments[0].no_speech_prob,
                          max(s.compression_ratio for s in segments)), probabilities  # fmt: skip

    def transcribe_full(self, audio: np.ndarray) -> Transcript:
        """The transcript of float32 16 kHz mono audio, hallucinations included (see transcribe_text)."""
        with self._lock:
            start = time.monotonic()
            transcript, probabilities = self._decode(audio, self.language)
            log.debug("transcribed %.2f s of audio in %.0f ms", len(audio) / 16000, (time.monotonic() - start) * 1000)
            if self.language is None and transcript.language not in LANGUAGES:
                # detected as neither: decode again as the likelier of the two (rare: noise, a third language)
                likelier = max(LANGUAGES, key=lambda code: probabilities.get(code, 0.0))
                transcript, _ = self._decode(audio, likelier)
        return transcript

    def transcribe_text(self, audio: np.ndarray, language: str | None = None) -> str:
        """Text of float32 16 kHz mono audio; "" when nothing was said or the decoder invented it."""
        transcript = self.transcribe_full(audio)
        if not transcript.text:
            return ""
        why = transcript.hallucination(self.limits)
        if why:
            log.info("dropped a transcript as a hallucination (%s): %r", why, transcript.text[:80])
            return ""
        self.scores.record(transcript.text, transcript.avg_logprob, transcript.language)
        return transcript.text

    def transcribe(self, audio, language=None, use_prompt=True, **options):
        """RealtimeSTT executor entry point (called on a RealtimeSTT worker thread); our language setting wins."""
        from RealtimeSTT.transcription_engines.base import TranscriptionResult

        return TranscriptionResult(text=self.transcribe_text(np.asarray(audio, dtype=np.float32)))

    def warm_up(self) -> None:
        self.transcribe_full(np.zeros(16000, dtype=np.float32))


class CachingExecutor:
    """RealtimeSTT's final transcription, answered from the speculative one when it covers the same speech.

    `lookup(recording_start_t=)` returns the text already transcribed for the utterance RealtimeSTT has
    just closed, or None; only then does the model run again. `recording_start`, once the recognizer
    exists: when that recording began (see `TranscriptCache`).
    """

    def __init__(self, transcriber: WhisperTranscriber, lookup: Callable[..., str | None]) -> None:
        self._transcriber = transcriber
        self._lookup = lookup
        self.recording_start: Callable[[], float] = lambda: 0.0

    def transcribe(self, audio, language=None, use_prompt=True, **options):
        from RealtimeSTT.transcription_engines.base import TranscriptionResult

        cached = self._lookup(recording_start_t=self.recording_start())
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
        self._recording_start_t = 0.0  # when the open (or last) recording began; guarded by _lock
        self._closed_start_t = 0.0  # ... the recording being transcribed; guarded by _lock
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
            language=config.language or "",
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
            self._recording_start_t = time.monotonic()

    def _on_recording_stop(self) -> None:
        with self._lock:
            self._recording = False
            self._closed_start_t = self._recording_start_t
            self._transcribing_since = time.monotonic()
            self._utterance_end_t = self.utterance_end() or time.monotonic()

    def _on_transcription_start(self, audio=None, *args) -> bool:
        """RealtimeSTT passes the utterance (16 kHz float32) it is about to transcribe."""
        with self._lock:
            self._audio = None if audio is None else np.asarray(audio, dtype=np.float32)
        return False  # False: RealtimeSTT goes on to transcribe

    def closed_recording_start_t(self) -> float:
        """When the recording RealtimeSTT closed last (the one it transcribes) began; 0 before any."""
        with self._lock:
            return self._closed_start_t

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
