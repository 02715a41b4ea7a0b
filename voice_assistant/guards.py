"""Guards that keep the assistant from answering its own voice.

Echo cancellation (`echo.py`) removes most of the assistant's voice from the microphone; these
guards catch what gets through, each from a different angle:

- `EchoTranscriptGuard`: is this transcript the assistant's own recent words? Text only, cheap.
- `LoopBreaker`: has the conversation become a loop (the assistant answering itself over and
  over, or the same text coming back)? Then stop and say so.
- `OwnVoiceGuard`: does this utterance sound like the assistant's TTS voice (or, with
  `--speaker-lock`, like the enrolled user)? Speaker embeddings from the `voiceprint` package.

Word matching (both text guards): text is lower-cased, apostrophes dropped ("world's" ->
"worlds"), other punctuation and hyphens become spaces, "%" becomes "percent" and whole numbers
0 to 99 become words ("10" -> "ten"), so the assistant's text and Whisper's spelling of the same
speech agree. `coverage(user, said)` is the share of the user's words that appear, in order, in
runs of at least two consecutive words of `said` (difflib's matching blocks); single shared words
("Paris", "the") never count, so a user echoing one word of the answer is not echo.

Threads: the text guards take a lock around their small state and are called from the playback
thread (`note_playing`/`note_played`, fast), the control thread (`assistant_replied`) and the
asr/spec-asr threads (`match`, `user_turn`). `OwnVoiceGuard` embeds audio (10 to 25 ms of CPU per
utterance, measured, plus about 1.6 s to load the encoder once): call it only from the spec-asr or
asr thread, or at start-up for enrollment, never from the audio-in or playback thread.
"""

from __future__ import annotations

import collections
import difflib
import logging
import re
import threading
from dataclasses import dataclass
from typing import Hashable, Iterable, NamedTuple

import numpy as np

import voiceprint

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------- text matching

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()  # fmt: skip
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_NON_WORD = re.compile(r"[^\w\s]|_")


def _number_words(token: str) -> list[str]:
    value = int(token)
    if value < 20:
        return [_ONES[value]]
    tens, ones = divmod(value, 10)
    return [_TENS[tens - 2]] + ([_ONES[ones]] if ones else [])


_CJK_CHAR = re.compile(r"([\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff])")


def normalize_words(text: str) -> list[str]:
    """Words of `text` for matching: lower case, no punctuation, small numbers spelled out, and each
    Chinese character a word of its own (Chinese has no spaces to split at)."""
    text = text.lower().replace("%", " percent ").replace("'", "").replace("\u2019", "")
    text = _CJK_CHAR.sub(r" \1 ", _NON_WORD.sub(" ", text))
    words = []
    for token in text.split():
        if token.isdigit() and len(token) <= 2:
            words.extend(_number_words(token))
        else:
            words.append(token)
    return words


def coverage(user: list[str], said: list[str], min_run: int = 2) -> tuple[float, int]:
    """(share of `user` words found in order in runs of >= `min_run` words of `said`, count of them)."""
    if not user or not said:
        return 0.0, 0
    matcher = difflib.SequenceMatcher(None, user, said, autojunk=False)
    matched = sum(block.size for block in matcher.get_matching_blocks() if block.size >= min_run)
    return matched / len(user), matched


# ---------------------------------------------------------------------- echo transcript guard


@dataclass(frozen=True)
class EchoGuardConfig:
    """When a transcript counts as the assistant hearing itself."""

    min_coverage: float = 0.8
    """Share of the transcript's words that must match recent assistant speech (0 to 1).

    0.8: an echo keeps the assistant's words in order, so one misheard word in eleven still
    scores 0.91, while a user who quotes part of the answer adds words of their own ("yes I
    want to know the capital of Spain" against "do you want to know the capital of Spain":
    0.78, not echo). Not yet calibrated on Whisper transcripts of real echo."""
    min_words: int = 4
    """Transcripts shorter than this are never called echo: "yes", "Paris" or "the world's fair"
    said back is more often the user answering or asking than an echo, and three words are too
    few to tell. Short echo fragments are left to echo cancellation and the loop breaker."""
    tail_s: float = 3.0
    """A sentence can come back as echo until this long after it finished playing (room tail,
    VAD and ASR delays)."""
    lead_s: float = 0.2
    """Slack for clock differences: an utterance may seem to start this long before the sentence."""
    memory_s: float = 60.0
    """Sentences are forgotten this long after they finished playing."""
    max_sentences: int = 200
    """Most sentences remembered (oldest dropped first)."""


@dataclass(frozen=True)
class EchoMatch:
    """The verdict on one transcript."""

    is_echo: bool
    """True: the transcript is the assistant's own recent speech; do not answer it."""
    coverage: float
    """Share of the transcript's words found in runs in the assistant speech it overlaps (0 to 1)."""
    matched_words: int
    """How many of the transcript's words matched."""
    words: int
    """How many words the transcript has after normalisation."""
    said: str
    """The assistant speech it was compared with (sentences overlapping it in time, in order)."""


@dataclass
class _Sentence:
    text: str
    words: list[str]
    start_t: float
    end_t: float | None  # None while it is still playing


class EchoTranscriptGuard:
    """Remembers what the assistant said and when; tells whether a transcript is its echo."""

    def __init__(self, config: EchoGuardConfig | None = None) -> None:
        self.config = config or EchoGuardConfig()
        self._lock = threading.Lock()
        self._sentences: collections.OrderedDict[Hashable, _Sentence] = collections.OrderedDict()

    def note_playing(self, key: Hashable, text: str, start_t: float) -> None:
        """Playback thread: sentence `key` (e.g. (turn id, sentence index)) began to sound at `start_t`."""
        with self._lock:
            if key in self._sentences:
                return
            self._sentences[key] = _Sentence(text, normalize_words(text), start_t, None)
            self._prune(start_t)

    def note_played(self, key: Hashable, end_t: float, heard_text: str | None = None) -> None:
        """Playback or control thread: sentence `key` stopped sounding at `end_t`.

        `heard_text`: the part actually played when it was cut short (default: all of it).
        """
        with self._lock:
            sentence = self._sentences.get(key)
            if sentence is None:
                return
            sentence.end_t = end_t
            if heard_text is not None:
                sentence.text, sentence.words = heard_text, normalize_words(heard_text)

    def add(self, text: str, start_t: float, end_t: float) -> None:
        """Any thread: a sentence that played from `start_t` to `end_t` (note_playing + note_played)."""
        key = ("added", start_t, text)
        self.note_playing(key, text, start_t)
        self.note_played(key, end_t)

    def clear(self) -> None:
        with self._lock:
            self._sentences.clear()

    def _prune(self, now_t: float) -> None:
        """Lock held: forget old sentences."""
        horizon = now_t - self.config.memory_s
        for key in [k for k, s in self._sentences.items() if s.end_t is not None and s.end_t < horizon]:
            del self._sentences[key]
        while len(self._sentences) > self.config.max_sentences:
            self._sentences.popitem(last=False)

    def match(self, transcript: str, speech_start_t: float, speech_end_t: float) -> EchoMatch:
        """asr/spec-asr thread: is `transcript` (heard from `speech_start_t` to `speech_end_t`) echo?

        Compared with the sentences that were playing during the utterance or had finished less
        than `tail_s` before it began; echo when it has at least `min_words` words and at least
        `min_coverage` of them match that speech in runs of two or more words.
        """
        config = self.config
        words = normalize_words(transcript)
        with self._lock:
            candidates = [
                s for s in self._sentences.values()
                if s.start_t - config.lead_s <= speech_end_t
                and (s.end_t is None or s.end_t + config.tail_s >= speech_start_t)
            ]  # fmt: skip
            candidates.sort(key=lambda s: s.start_t)
            said_words = [w for s in candidates for w in s.words]
            said = " ".join(s.text for s in candidates)
        share, matched = coverage(words, said_words)
        is_echo = len(words) >= config.min_words and share >= config.min_coverage
        if is_echo:
            log.info("ignoring echo of the assistant's speech: %r (%.0f%% of its words)", transcript, 100 * share)
        return EchoMatch(is_echo, share, matched, len(words), said)


# ---------------------------------------------------------------------- loop breaker


@dataclass(frozen=True)
class LoopConfig:
    """When the conversation counts as a loop."""

    echo_like_coverage: float = 0.6
    """A user turn whose words match the previous reply this much (see `coverage`) is echo-like.

    Lower than the echo guard's 0.8: it judges patterns over several turns, so it can afford to
    catch garbled echoes that slipped past the time-window check."""
    min_words: int = 3
    """User turns shorter than this are never echo-like ("yes", "thank you")."""
    echo_like_turns: int = 3
    """Stop after this many echo-like user turns in a row."""
    repeat_similarity: float = 0.9
    """Two user texts are "the same" at this difflib ratio of their normalised words."""
    repeat_count: int = 3
    """Stop when the same user text arrives this many times ..."""
    repeat_window_s: float = 30.0
    """... within this many seconds."""
    message: str = (
        "I seem to be hearing my own voice, so I will stop here. "
        "Please lower the volume or use headphones, then talk to me again."
    )
    """What the assistant says when it stops."""


@dataclass(frozen=True)
class LoopDecision:
    """What `LoopBreaker.user_turn` decided."""

    stop: bool
    """True: do not answer this turn; say `message` instead."""
    reason: str
    """Why ("echo-like turns" or "repeated user text"); empty when not stopping."""
    message: str
    """The sentence to speak when stopping; empty otherwise."""


_GO_ON = LoopDecision(False, "", "")


class LoopBreaker:
    """Detects a self-sustaining loop of turns. Counters restart after each stop decision."""

    def __init__(self, config: LoopConfig | None = None) -> None:
        self.config = config or LoopConfig()
        self._lock = threading.Lock()
        self._last_reply: list[str] = []
        self._echo_like_run = 0
        self._recent: collections.deque[tuple[float, list[str]]] = collections.deque()
        self.stops = 0
        """How many times it decided to stop."""

    def assistant_replied(self, text: str) -> None:
        """Control thread: the reply just committed (what the user heard of it)."""
        with self._lock:
            self._last_reply = normalize_words(text)

    def user_turn(self, text: str, now_t: float) -> LoopDecision:
        """asr/spec-asr thread, before answering `text` (arrived at monotonic `now_t`)."""
        config = self.config
        words = normalize_words(text)
        if not words:
            return _GO_ON
        with self._lock:
            share, _ = coverage(words, self._last_reply)
            echo_like = len(words) >= config.min_words and share >= config.echo_like_coverage
            self._echo_like_run = self._echo_like_run + 1 if echo_like else 0
            while self._recent and self._recent[0][0] < now_t - config.repeat_window_s:
                self._recent.popleft()
            self._recent.append((now_t, words))
            same = sum(
                1 for _, earlier in self._recent
                if difflib.SequenceMatcher(None, earlier, words, autojunk=False).ratio() >= config.repeat_similarity
            )  # fmt: skip
            if self._echo_like_run >= config.echo_like_turns:
                reason = "echo-like turns"
            elif same >= config.repeat_count and len(words) >= config.min_words:
                reason = "repeated user text"  # not "stop" three times: short commands repeat for real
            else:
                return _GO_ON
            self._echo_like_run = 0
            self._recent.clear()
            self.stops += 1
        log.warning("conversation loop (%s): stopping; last user text %r", reason, text)
        return LoopDecision(True, reason, config.message)

    def reset(self) -> None:
        with self._lock:
            self._echo_like_run = 0
            self._recent.clear()
            self._last_reply = []


# ---------------------------------------------------------------------- own voice guard


@dataclass(frozen=True)
class OwnVoiceConfig:
    """Thresholds for telling the assistant's voice from the user's (cosine scores, -1 to 1)."""

    own_threshold: float = 0.75
    """Without a user enrollment: an utterance scoring at least this against the assistant's
    voiceprint is the assistant's voice. Measured against the default enrollment (clean plus
    reverberant copies): Piper joe 0.88 to 0.91 clean, 0.79 to 0.86 through rooms of RT60 0.3
    and 0.6 s; espeak voices 0.53 to 0.67, clean or reverberant; docs/voiceprint.md: real
    impostors score at most 0.72 (p99) against an enrollment."""
    own_floor_with_user: float = 0.6
    """With a user enrollment, the assistant must also score at least this (a third voice,
    unlike both, is not taken for the assistant)."""
    margin: float = 0.0
    """With a user enrollment: own score must beat the user score by more than this."""
    user_threshold: float = voiceprint.DEFAULT_THRESHOLD
    """Speaker lock: the enrolled user is accepted at or above this score (0.72, equal error rate)."""
    min_audio_s: float = 1.0
    """Shorter clips are not judged (embeddings of under a second of speech are unreliable)."""


class VoiceCheck(NamedTuple):
    """`OwnVoiceGuard.is_own_voice`'s answer; unpacks as (is_own, own_score, user_score)."""

    is_own: bool | None
    """True: the assistant's own voice; False: not; None: undecided (too short)."""
    own_score: float | None
    """Cosine score against the assistant's voiceprint; None when not judged."""
    user_score: float | None
    """Cosine score against the enrolled user; None without a user enrollment or when not judged."""


_UNDECIDED = VoiceCheck(None, None, None)
_ENROLL_RT60_S = 0.4
_ENROLL_ROOM_SEED = 7  # not SimulatedRoom's default seed: the test room is not the enrolled one


def _reverberant(samples: np.ndarray, rate_hz: int) -> np.ndarray:
    """`samples` at 16 kHz as heard through a synthetic room (same length)."""
    from scipy.signal import fftconvolve

    from .room import room_impulse_response
    from .wavio import resample

    speech = resample(np.asarray(samples, dtype=np.float32), int(rate_hz), voiceprint.SAMPLE_RATE_HZ)
    response = room_impulse_response(_ENROLL_RT60_S, _ENROLL_ROOM_SEED, voiceprint.SAMPLE_RATE_HZ)
    return fftconvolve(speech, response)[: len(speech)].astype(np.float32)


class OwnVoiceGuard:
    """Recognizes the assistant's TTS voice (and optionally the enrolled user) in utterances.

    Enroll at start-up (`enroll_assistant`, or `from_synthesizer`), then call `is_own_voice`
    or `is_enrolled_user` on the spec-asr/asr thread. Thread-safe (the encoder is).
    """

    ASSISTANT_SENTENCES = (
        "Hello, I am your assistant and I am happy to help you today.",
        "The weather tomorrow will be sunny with a light breeze from the west.",
        "Here is a short story about a fox who lived near a quiet river.",
    )
    """What the assistant says to enroll its own voice (about 3 s each with Piper joe)."""
    ASSISTANT_SENTENCES_ZH = (
        "你好，我是你的助手，今天很高兴能帮你。",
        "明天的天气晴朗，西边会吹来一阵微风。",
        "这是一个关于住在安静小河边的狐狸的故事。",
    )
    """The same for the Mandarin voice, enrolled as a second voice of the assistant."""

    def __init__(self, config: OwnVoiceConfig | None = None, encoder=None) -> None:
        """`encoder`: a `voiceprint.SpeakerEncoder` (default: the process-wide one, loaded on first use)."""
        self.config = config or OwnVoiceConfig()
        self._encoder = encoder
        self.assistant: voiceprint.Enrollment | None = None
        self.second_voice: voiceprint.Enrollment | None = None  # the Mandarin voice, with --language zh or auto
        self.user: voiceprint.Enrollment | None = None

    @classmethod
    def from_synthesizer(cls, synthesizer, config: OwnVoiceConfig | None = None, encoder=None) -> "OwnVoiceGuard":
        """Start-up thread: enroll the voice of `synthesizer` (a PiperSynthesizer) from ASSISTANT_SENTENCES."""
        guard = cls(config, encoder)
        rate = synthesizer.sample_rate_hz
        guard.enroll_assistant([(synthesizer.synthesize_all(text), rate) for text in cls.ASSISTANT_SENTENCES])
        return guard

    def _get_encoder(self):
        if self._encoder is None:
            self._encoder = voiceprint.load_encoder()
        return self._encoder

    def enroll_assistant(self, clips: Iterable[tuple[np.ndarray, int]], add_reverb: bool = True,
                         second_voice: bool = False) -> None:  # fmt: skip
        """Start-up thread: the assistant's voiceprint from (float32 samples, rate Hz) clips, >= 1 s each.

        `add_reverb`: also enroll each clip as heard through a synthetic room (RT60 0.4 s): the
        microphone hears the assistant through a room, and reverberant echo then scores 0.79 to
        0.86 instead of 0.71 to 0.78 against a clean-only voiceprint (measured).
        """
        clips = list(clips)
        if add_reverb:
            clips += [(_reverberant(samples, rate_hz), voiceprint.SAMPLE_RATE_HZ) for samples, rate_hz in clips]
        enrollment = voiceprint.enroll("assistant", clips, self._get_encoder())
        if second_voice:
            self.second_voice = enrollment  # its own voiceprint: an average of two voices would match neither
        else:
            self.assistant = enrollment

    def enroll_user(self, clips: Iterable[tuple[np.ndarray, int]]) -> None:
        """Start-up thread: the user's voiceprint from clips of their speech."""
        self.user = voiceprint.enroll("user", clips, self._get_encoder())

    def set_user(self, enrollment: voiceprint.Enrollment) -> None:
        """Use a stored enrollment (`voiceprint.EnrollmentStore().load(name)`) as the user."""
        self.user = enrollment

    def _embed(self, audio: np.ndarray, rate_hz: int) -> np.ndarray | None:
        if len(audio) < self.config.min_audio_s * rate_hz:
            return None
        try:
            return self._get_encoder().embed(audio, rate_hz)
        except voiceprint.AudioTooShortError:
            return None  # under a second of speech once silences are cut

    def is_own_voice(self, audio: np.ndarray, rate_hz: int) -> VoiceCheck:
        """spec-asr/asr thread: does this utterance sound like the assistant rather than the user?

        With a user enrolled: own score above the user's (by `margin`) and at least
        `own_floor_with_user`. Without: own score at least `own_threshold`. Clips under
        `min_audio_s` (or with under 1 s of speech) are undecided: (None, None, None).
        """
        if self.assistant is None:
            raise RuntimeError("OwnVoiceGuard: enroll the assistant's voice first")
        vector = self._embed(audio, rate_hz)
        if vector is None:
            return _UNDECIDED
        own = self.assistant.score(vector)
        if self.second_voice is not None:
            own = max(own, self.second_voice.score(vector))
        if self.user is None:
            return VoiceCheck(own >= self.config.own_threshold, own, None)
        user = self.user.score(vector)
        is_own = own > user + self.config.margin and own >= self.config.own_floor_with_user
        return VoiceCheck(is_own, own, user)

    def user_score(self, audio: np.ndarray, rate_hz: int) -> float | None:
        """spec-asr/asr thread, for --speaker-lock: the utterance's score against the enrolled user
        alone (no assistant enrollment needed); None when it cannot be judged (under `min_audio_s`)."""
        if self.user is None:
            raise RuntimeError("OwnVoiceGuard: no user enrollment for the speaker lock")
        vector = self._embed(audio, rate_hz)
        return None if vector is None else self.user.score(vector)

    def load_for_speaker_lock(self) -> None:
        """Start-up: load the encoder now and check the user's enrollment was made by it; raises
        voiceprint.VoiceprintError (or OSError) when the lock could not work."""
        encoder = self._get_encoder()
        if self.user is not None and self.user.model_id != encoder.model_id:
            raise voiceprint.VoiceprintError(
                f"the enrollment was made with {self.user.model_id!r}, not this encoder ({encoder.model_id!r}): "
                "enroll again"
            )

    def is_enrolled_user(self, audio: np.ndarray, rate_hz: int) -> bool | None:
        """spec-asr/asr thread, for --speaker-lock: is this the enrolled user? None: undecided (short clip)."""
        if self.user is None:
            raise RuntimeError("OwnVoiceGuard: no user enrollment for the speaker lock")
        vector = self._embed(audio, rate_hz)
        if vector is None:
            return None
        return self.user.score(vector) >= self.config.user_threshold
