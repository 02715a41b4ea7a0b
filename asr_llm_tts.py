#!/usr/bin/env python3
"""Local real-time voice assistant: microphone -> RealtimeSTT/faster-whisper -> llama-server -> Piper -> speaker.

`VoiceConversationSystem` owns the policy: the turn lifecycle, barge-in, and what goes into the
history. The mechanics live in the `voice_assistant` package. Threads:

- audio-in (microphone worker or WAV pacer): `on_audio()` runs VAD, decides barge-in, feeds ASR;
- asr: waits on RealtimeSTT's `text()` and submits user turns;
- llm: streams a reply per turn and cuts it into sentences;
- tts: synthesizes sentences into short audio blocks for the sink;
- playback (PortAudio callback or WAV pacer): plays blocks, reports what was heard;
- control: finishes turns whose reply has played (history, transcript, metrics, summaries).

The turn counter is the one judge of staleness: every queue item carries its turn id and every
consumer checks it when taking the item and at each inner step (SSE event, audio block).
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from voice_assistant.audio_io import (
    INPUT_CHUNK_SAMPLES,
    INPUT_RATE_HZ,
    AudioBlock,
    AudioSink,
    AudioSource,
    EndOfReply,
    split_blocks,
)
from voice_assistant.endpointing import Endpoint, PauseSnapshot, SpeechLong, SpeechStart, UtteranceTracker
from voice_assistant.errors import LLMError, LLMProtocolError, LLMTooSlowError, SetupError, VoiceAssistantError
from voice_assistant.history import Exchange, History, summary_prompt_messages
from voice_assistant.llm_client import CompletionStream, LlamaClient
from voice_assistant.metrics import MetricsFile, TranscriptFile, format_turn, llm_breakdown, ms
from voice_assistant.text import SentenceChunker, ThinkFilter, clean_for_speech, words_in
from voice_assistant.turns import STOP, EndOfText, SentenceItem, TurnCounter

log = logging.getLogger("voice_assistant.system")
chat_log = logging.getLogger("voice_assistant.chat")

DEFAULT_SYSTEM_PROMPT = (
    "You are a friendly voice assistant. Your words are spoken aloud, so answer in one or two "
    "short, plain sentences without lists, markdown or emoji."
)
LLM_ERROR_REPLY = "Sorry, I could not get an answer from the language model."
LLM_SLOW_REPLY = "Sorry, the language model is too slow right now."
LLM_UNAVAILABLE_REPLY = "Sorry, the language model is not available right now. I am still listening."
VAD_CHUNK_S = INPUT_CHUNK_SAMPLES / INPUT_RATE_HZ
STOP_COMMANDS = frozenset(
    ["stop", "wait", "hold on", "pause", "quiet", "be quiet", "shut up", "stop it", "stop stop", "okay stop",
     "ok stop", "enough", "thats enough", "never mind", "nevermind", "cancel", "stop talking"]
)  # fmt: skip
"""Utterances that only ask the assistant to be silent: it stops and listens, without answering."""
MAX_USER_CHARS = 4000  # an utterance longer than this (minutes of speech) keeps only its last words


def is_stop_command(text: str) -> bool:
    words = "".join(ch for ch in text.lower() if ch.isalnum() or ch.isspace()).split()
    return " ".join(words) in STOP_COMMANDS


def fit_user_text(text: str) -> str:
    """The user's words as sent to the model: an enormous utterance keeps its last MAX_USER_CHARS."""
    if len(text) <= MAX_USER_CHARS:
        return text
    tail = text[-MAX_USER_CHARS:]
    log.warning("very long utterance (%d characters): keeping its last %d", len(text), MAX_USER_CHARS)
    return "... " + tail[tail.find(" ") + 1 :]


@dataclass(frozen=True)
class AssistantConfig:
    """Conversation policy. The seed's toggles keep their names and defaults."""

    system_prompt: str = DEFAULT_SYSTEM_PROMPT  # persona
    max_reply_tokens: int = 96  # n_predict per reply
    reply_stall_s: float = 20.0  # after the first token, a reply with nothing new to say this long ends
    temperature: float = 0.6  # sampling temperature
    use_http2: bool = False  # httpx HTTP/2 for the line reader (llama-server speaks HTTP/1.1 only)
    use_raw_stream: bool = True  # raw-byte SSE reader instead of httpx's line iterator
    pause_asr_during_prefill: bool = True  # hold ASR input while the LLM processes the prompt
    low_latency_mode: bool = True  # strip mirostat/typical_p from the sampling parameters
    enable_history_summarization: bool = True  # fold older turns into an LLM-written summary
    summarize_after_turns: int = 10  # summarize once history holds more exchanges than this
    history_trim_threshold: int = 12  # never keep more exchanges than this
    keep_recent_turns: int = 4  # exchanges left verbatim after a summary
    barge_in_enabled: bool = True  # user speech interrupts the assistant
    barge_in_min_speech_ms: int = 200  # speech shorter than this (coughs, clicks) does not interrupt
    resume_after_false_interruption: bool = True  # resume a reply cut off by sound without words
    vad_threshold: float = 0.5  # Silero speech probability that counts as speech
    end_of_speech_silence_ms: int = 450  # silence after speech that ends the user's turn
    speculate_after_ms: int = 64  # transcribe and start answering after this much silence (0: off)
    min_utterance_ms: int = 250  # less speech than this is not transcribed speculatively
    first_clause_min_words: int = 3  # first TTS chunk may end at a comma after this many words (0: off)
    first_chunk_max_words: int = 8  # first TTS chunk is cut after this many words at most (0: off)
    block_ms: int = 20  # playback block length


@dataclass
class SelfSpeechDefense:
    """What keeps the assistant from answering its own voice. Every part is optional."""

    canceller: object = None  # voice_assistant.echo.EchoCanceller: cleans the microphone (AEC3)
    room: object = None  # voice_assistant.room.SimulatedRoom: file mode's --simulate-echo
    transcript_guard: object = None  # guards.EchoTranscriptGuard: transcripts of our own recent speech
    own_voice: object = None  # guards.OwnVoiceGuard: utterances in the assistant's voice (or not the user's)
    loop_breaker: object = None  # guards.LoopBreaker: repeated self-similar turns
    speaker_lock: bool = False  # answer only the enrolled user's voice
    mic_record: list | None = None  # (raw, cleaned) chunks for --record-mic
    mic_path: str | None = None  # --record-mic: a stereo WAV, microphone before and after echo cancellation
    own_voice_tail_s: float = 3.0  # check voices during playback and this long after it


@dataclass
class ActiveTurn:
    """Mutable state of the turn being answered; fields are guarded by the system lock."""

    turn_id: int
    user_text: str
    speech_end_t: float  # monotonic time the user stopped speaking
    text_t: float  # monotonic time the final transcript was ready
    created_t: float = field(default_factory=time.monotonic)
    sentences: list[str] = field(default_factory=list)  # reply chunks generated so far
    raw_text: str = ""  # visible reply text exactly as generated
    stream: CompletionStream | None = None
    first_sentence_t: float = 0.0
    first_audio_ready_t: float = 0.0
    first_audio_t: float = 0.0  # first reply sample reached the speaker / output file
    last_block_end_t: float = 0.0  # when the last played block of this turn stops sounding
    heard_index: int = -1  # sentence being played
    heard_progress: float = 0.0  # fraction of that sentence played
    llm_done: bool = False
    playback_done: bool = False
    committed: bool = False
    resumed_from: int = 0  # turn id this reply continues after a false interruption
    loop_message: str = ""  # the loop breaker stopped this turn: say this instead of asking the LLM
    retried: bool = False  # asked again with a shorter history after a context overflow
    speculative: bool = False  # transcribed and started during the end-of-turn silence
    tentative: bool = False  # started on a pause before the end of turn: audio is held, not played
    held: list = field(default_factory=list)  # audio items of a tentative turn, played on promotion
    prompt: str = ""
    llm: dict = field(default_factory=dict)
    llm_start_t: float = 0.0  # prompt building began
    first_token_t: float = 0.0
    endpoint_t: float = 0.0  # a speculative turn was released for playback

    def heard_text(self) -> str:
        """What the user heard: whole sentences, then the played share of the current one's words."""
        if self.heard_index < 0:
            return ""
        parts = self.sentences[: self.heard_index]
        if self.heard_index < len(self.sentences):
            words = words_in(self.sentences[self.heard_index])
            if self.heard_progress >= 0.999:
                parts.append(" ".join(words))
            else:
                kept = int(len(words) * self.heard_progress)
                if kept:
                    parts.append(" ".join(words[:kept]))
        return " ".join(parts).strip()

    def full_text(self) -> str:
        """The whole reply, as generated when known (keeps llama-server's prompt cache matching)."""
        if self.resumed_from or not self.raw_text.strip():
            return " ".join(self.sentences).strip()
        return self.raw_text.strip()


@dataclass(frozen=True)
class ResumeReply:
    """LLM-thread work item: speak the unplayed sentences of a reply cut by a false interruption,
    then let the model continue after them unless it had already finished."""

    turn: ActiveTurn
    pending: tuple[str, ...]
    llm_done: bool


def trim_leading_silence(audio: np.ndarray, rate_hz: int, threshold: float = 0.002, keep_ms: int = 5) -> np.ndarray:
    """Drop the inaudible lead-in of a reply's first chunk: it only delays the first sound."""
    loud = np.flatnonzero(np.abs(audio) > threshold)
    if len(loud) == 0:
        return audio
    return audio[max(0, loud[0] - rate_hz * keep_ms // 1000) :]


class VoiceConversationSystem:
    """Orchestrates ASR, LLM and TTS for one conversation. Build with `from_args()` or inject fakes."""

    def __init__(
        self,
        config: AssistantConfig,
        client: LlamaClient,
        synthesizer,
        sink: AudioSink,
        source: AudioSource | None = None,
        vad=None,
        recognizer=None,
        transcript: TranscriptFile | None = None,
        metrics: MetricsFile | None = None,
        server=None,
        transcriber=None,
        supervisor=None,
        defense: SelfSpeechDefense | None = None,
    ) -> None:
        self.config = config
        self.client = client
        self.synthesizer = synthesizer
        self.sink = sink
        self.source = source
        self.vad = vad
        self.recognizer = recognizer
        self.transcript = transcript or TranscriptFile(None)
        self.metrics = metrics or MetricsFile(None)
        self.server = server
        self.transcriber = transcriber  # for speculative transcription; None turns it off
        self.supervisor = supervisor  # LLMSupervisor: restarts/awaits the LLM backend; None in unit tests
        self.defense = defense or SelfSpeechDefense()
        if self.defense.room is not None or self.defense.canceller is not None:
            self.sink.played_listener = self._on_played_samples
        self._last_play_end_t = 0.0  # when the last reply block stopped sounding
        self._barge_in_paused = False  # echo cancellation diverged: half duplex until it recovers
        self.turns = TurnCounter()
        self.history = History(config.history_trim_threshold)
        self.sink.listener = self._on_play
        self.sink.queue.is_current = self.turns.is_current

        self._lock = threading.Lock()
        self._active: ActiveTurn | None = None
        self._resumable: ActiveTurn | None = None  # reply cut by a barge-in that may prove false
        self._llm_queue: queue.Queue = queue.Queue()
        self._tts_queue: queue.Queue = queue.Queue()
        self._control_queue: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._stopping = threading.Event()
        self.t0 = 0.0

        # audio-in thread state
        self._asr_paused = threading.Event()
        self._held_audio: list[np.ndarray] = []
        self.tracker = UtteranceTracker(
            min_speech_ms=config.barge_in_min_speech_ms,
            speculate_after_ms=config.speculate_after_ms if transcriber is not None else 0,
            end_of_speech_ms=config.end_of_speech_silence_ms,
            min_utterance_ms=config.min_utterance_ms,
        )

        # speculative transcription (spec-asr thread) and end of turn
        self._spec_queue: queue.Queue = queue.Queue()
        self._spec_cache: tuple[float, str] | None = None  # (speech_end_t, text) of the latest utterance
        self._spec_done = threading.Condition(self._lock)
        self._spec_inflight_for = 0.0
        self._endpoint_for = 0.0  # speech_end_t of the last utterance whose turn is over
        self._no_words_for = 0.0  # utterance transcribed as empty, waiting for its endpoint
        self._final_from_cache = False
        self._final_audio: np.ndarray | None = None  # the utterance RealtimeSTT is transcribing

        # asr state (RealtimeSTT callbacks)
        self._recording = False
        self._transcribing_since = 0.0
        self._utterance_end_t = 0.0

        self._summary_stream: CompletionStream | None = None
        self._summary_thread: threading.Thread | None = None
        self.barge_ins: list[dict] = []
        self.turn_metrics: list[dict] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the worker threads, then playback and the audio source."""
        self.t0 = time.monotonic()
        workers = [("llm", self._run_llm), ("tts", self._run_tts), ("control", self._run_control)]
        if self.recognizer is not None:
            workers.append(("asr", self._run_asr))
        if self.transcriber is not None:
            workers.append(("spec-asr", self._run_spec_asr))
        if self.supervisor is not None:
            workers.append(("llm-monitor", lambda: self.supervisor.run(self._stopping)))
        if hasattr(self.sink, "healthy") or hasattr(self.source, "healthy"):
            workers.append(("device-monitor", self._run_device_monitor))
        for name, target in workers:
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self.sink.start(self.t0)
        if self.source is not None:
            self.source.start(self.on_audio, self.t0)
        if self.defense.canceller is not None:
            # The devices' reported latencies: from a block handed to the speaker to its echo reaching us.
            latency_s = getattr(self.sink, "latency_s", 0.0) + getattr(self.source, "latency_s", 0.0)
            self.defense.canceller.set_delay_ms(1000.0 * latency_s)

    def close(self, limit_s: float = 1.8) -> None:
        """Stop everything within `limit_s`; idempotent; the transcript keeps every finished turn."""
        if self._closed:
            return
        deadline = time.monotonic() + limit_s

        def remaining() -> float:
            return max(0.05, deadline - time.monotonic())

        self._closed = True
        self._stopping.set()
        if self.source is not None:
            self.source.close()
        self._abort_summary()
        with self._lock:
            active, self._active = self._active, None
            self.turns.advance()
        if active is not None:
            self._stop_turn(active, reason="shutdown")
        for q in (self._llm_queue, self._tts_queue, self._control_queue, self._spec_queue):
            q.put(STOP)
        if self.recognizer is not None:
            stopper = threading.Thread(target=self.recognizer.shutdown, name="asr-shutdown", daemon=True)
            stopper.start()
            stopper.join(timeout=remaining() / 2)
        for thread in self._threads:
            thread.join(timeout=remaining() / 2)
        if self._summary_thread is not None:
            self._summary_thread.join(timeout=remaining() / 2)
        self.sink.close()
        self.client.close()
        self._write_echo_summary()
        self.transcript.close()
        if self.server is not None:
            self.server.stop(timeout_s=remaining())

    def _write_echo_summary(self) -> None:
        canceller = self.defense.canceller
        if canceller is not None:
            stats = canceller.stats()
            self.metrics.set_summary({"echo": {k: getattr(stats, k) for k in stats.__dataclass_fields__}})
            log.info("echo cancellation: %s dB echo reduction, %.1f ms CPU per audio second",
                     stats.erle_db if stats.erle_db is None else round(stats.erle_db, 1), stats.cpu_ms_per_audio_s)  # fmt: skip
        if self.defense.mic_record and self.defense.mic_path:
            from voice_assistant.wavio import write_wav

            raw = np.concatenate([r for r, _ in self.defense.mic_record])
            clean = np.concatenate([c for _, c in self.defense.mic_record])
            write_wav(self.defense.mic_path, np.stack([raw, clean], axis=1), INPUT_RATE_HZ)

    def is_idle(self) -> bool:
        """Nothing heard, recognized, generated, synthesized or played is pending."""
        transcribing = self._transcribing_since and time.monotonic() - self._transcribing_since < 10.0
        with self._lock:
            active = self._active
        return (
            active is None
            and not self.tracker.in_utterance
            and self._spec_queue.empty()
            and not self._recording
            and not transcribing
            and self._llm_queue.empty()
            and self._tts_queue.empty()
            and self.sink.queue.idle.is_set()
        )

    def run_until_input_done(self, settle_s: float = 1.5, tail_limit_s: float = 120.0) -> None:
        """File mode: return once the input is exhausted and the assistant has stayed idle `settle_s`."""
        exhausted = self.source.exhausted
        while not exhausted.wait(0.1):
            if self._stopping.is_set():
                return
        deadline = time.monotonic() + tail_limit_s
        idle_since = 0.0
        while not self._stopping.wait(0.05):
            now = time.monotonic()
            if self.is_idle():
                idle_since = idle_since or now
                if now - idle_since >= settle_s:
                    return
            else:
                idle_since = 0.0
            if now > deadline:
                log.warning("assistant still busy %.0f s after the input ended; stopping", tail_limit_s)
                return

    def _run_device_monitor(self, poll_s: float = 1.0, retry_s: float = 2.0) -> None:
        """device-monitor thread: report a vanished audio device in one line, reopen it when it returns.

        A device is back only once it delivers: a reopened microphone that stays silent is reopened
        again, still within the same outage and without another line."""
        broken: dict[str, float] = {}  # device -> when to try reopening it next
        while not self._stopping.wait(poll_s):
            for name, device in (("output", self.sink), ("input", self.source)):
                if device is None or not hasattr(device, "healthy"):
                    continue
                if device.healthy():
                    if name in broken and device.delivering():
                        del broken[name]
                        log.warning("audio %s device is back", name)
                    continue
                now = time.monotonic()
                if name not in broken:
                    log.error("audio %s device stopped (%s); retrying every %.0f s", name, device.error, retry_s)
                    broken[name] = 0.0
                if now < broken[name]:
                    continue
                broken[name] = now + retry_s
                try:
                    device.reopen()  # the next poll says it is back, once it delivers
                except SetupError as exc:
                    log.debug("audio %s device still unavailable: %s", name, exc)

    # ------------------------------------------------------------------ audio in

    def on_audio(self, chunk: np.ndarray, end_t: float) -> None:
        """Audio-in thread: 32 ms of 16 kHz float32 audio captured until `end_t`."""
        if self.defense.room is not None:
            chunk = self.defense.room.mix(chunk, end_t)
        raw = chunk
        if self.defense.canceller is not None:
            chunk = self.defense.canceller.process(chunk)
        if self.defense.mic_record is not None:
            self.defense.mic_record.append((raw, chunk))
        if self.vad is not None:
            probability = self.vad.probability(chunk)
            is_speech = probability >= self.config.vad_threshold
            maybe = probability >= self.config.vad_threshold - 0.15  # Silero's usual onset hysteresis
            for event in self.tracker.push(chunk, is_speech, end_t, maybe):
                self._on_speech_event(event)
        if self.recognizer is None:
            return
        pcm = (np.clip(chunk, -1.0, 1.0) * 32767.0).astype(np.int16)
        if self._asr_paused.is_set():
            self._held_audio.append(pcm)
            return
        if self._held_audio:
            held, self._held_audio = self._held_audio, []
            for piece in held:
                self.recognizer.feed(piece)
        self.recognizer.feed(pcm)

    def _on_speech_event(self, event) -> None:
        """Audio-in thread: act on what the utterance tracker saw."""
        if isinstance(event, SpeechStart):
            self._cancel_tentative()  # the user goes on talking: the speculative answer is moot
        elif isinstance(event, SpeechLong):
            if self.config.barge_in_enabled and not self._echo_unsafe():
                self.interrupt(onset_t=event.onset_t, decision_t=event.decision_t)
        elif isinstance(event, PauseSnapshot):
            with self._lock:
                self._spec_inflight_for = event.speech_end_t
            self._spec_queue.put(event)
        elif isinstance(event, Endpoint):
            self._on_endpoint(event)

    def _on_played_samples(self, samples: np.ndarray, play_t: float) -> None:
        """Playback thread: exactly what was played (silence too) feeds the room and the echo canceller."""
        rate = self.sink.sample_rate_hz
        if self.defense.room is not None:
            self.defense.room.feed_played(samples, rate, play_t)
        if self.defense.canceller is not None:
            self.defense.canceller.feed_reverse(samples, rate)

    def _echo_unsafe(self) -> bool:
        """Audio-in thread: True while echo cancellation is not working, so barge-in could hear us."""
        canceller = self.defense.canceller
        unsafe = canceller is not None and canceller.diverged()
        if unsafe != self._barge_in_paused:
            self._barge_in_paused = unsafe
            if unsafe:
                log.warning("echo cancellation is not converging (%s dB): barge-in paused", canceller.erle_db())
            else:
                log.warning("echo cancellation works again: barge-in resumed")
        return unsafe

    def _rejects(self, text: str, start_t: float, end_t: float, audio: np.ndarray | None = None) -> str:
        """Why an utterance must not be answered ('' if it may): our own echo, our voice, not the user."""
        guard = self.defense.transcript_guard
        if guard is not None:
            match = guard.match(text, start_t, end_t)
            if match.is_echo:
                return f"echo of the assistant ({match.coverage:.0%} of its words)"
        own = self.defense.own_voice
        if own is not None and audio is not None and getattr(own, "assistant", None) is not None:
            recent = self._active_playing() or end_t - self._last_play_end_t < self.defense.own_voice_tail_s
            if recent or self.defense.speaker_lock:
                check = own.is_own_voice(audio, INPUT_RATE_HZ)
                if check.is_own and recent:
                    return f"the assistant's own voice (score {check.own_score:.2f})"
                if self.defense.speaker_lock and own.user is not None and check.user_score is not None:
                    if check.user_score < own.config.user_threshold:
                        return f"not the enrolled speaker (score {check.user_score:.2f})"
        return ""

    def _active_playing(self) -> bool:
        with self._lock:
            return self._active is not None and bool(self._active.first_audio_t) and not self._active.playback_done

    # ------------------------------------------------------------------ speculative end of turn

    def _run_spec_asr(self) -> None:
        """spec-asr thread: transcribe an utterance while its end-of-turn silence is still running."""
        while True:
            job = self._spec_queue.get()
            if job is STOP:
                return
            try:
                if job.speech_end_t == self.tracker.last_speech_end_t:
                    text = self.transcriber.transcribe_text(job.audio)
                    self._on_spec_text(job, text.strip(), time.monotonic())
            except Exception:
                log.exception("speculative transcription failed")
            finally:
                with self._lock:
                    if self._spec_inflight_for == job.speech_end_t:
                        self._spec_inflight_for = 0.0
                    self._spec_done.notify_all()

    def _on_spec_text(self, job: PauseSnapshot, text: str, text_t: float) -> None:
        if text and clean_for_speech(text):
            start_t = job.speech_end_t - len(job.audio) / INPUT_RATE_HZ
            reason = self._rejects(text, start_t, job.speech_end_t, job.audio)
            if reason:
                log.info("ignored %r: %s", text, reason)
                text = ""
        with self._lock:
            if job.speech_end_t != self.tracker.last_speech_end_t:
                return  # the user spoke again: a newer snapshot will come
            self._spec_cache = (job.speech_end_t, text)
            ended = self._endpoint_for == job.speech_end_t
            if not clean_for_speech(text):
                self._no_words_for = job.speech_end_t
        if not clean_for_speech(text):
            if ended:
                self._on_no_words()
            return
        if is_stop_command(text):
            self._on_stop_command(text)
            return
        self._start_turn(text, job.speech_end_t, text_t, speculative=True)

    def _on_endpoint(self, event: Endpoint) -> None:
        """Audio-in thread: the user's turn is over; play the speculative answer if it is ready."""
        with self._lock:
            self._endpoint_for = event.speech_end_t
            turn = self._active
            no_words = self._no_words_for == event.speech_end_t
        if turn is not None and turn.tentative and turn.speech_end_t == event.speech_end_t:
            self._promote(turn)
        elif no_words:
            self._on_no_words()

    def _promote(self, turn: ActiveTurn) -> None:
        with self._lock:
            if self._active is not turn or not turn.tentative:
                return
            turn.tentative = False
            turn.endpoint_t = time.monotonic()
            held, turn.held = turn.held, []
            for item in held:
                self.sink.put(item)
        chat_log.info("You: %s", turn.user_text)
        self._check_loop(turn)
        if turn.loop_message:
            self._cancel_and_say(turn)

    def _cancel_and_say(self, turn: ActiveTurn) -> None:
        """A promoted turn the loop breaker stopped: drop its speculative answer, say the message."""
        if self._drop_active(turn):
            self.sink.clear()
            self.submit_user_text(turn.user_text, turn.speech_end_t, turn.text_t)

    def _cancel_tentative(self) -> None:
        with self._lock:
            turn = self._active
        if turn is not None and self._drop_active(turn, only_if_tentative=True):
            log.debug("speculative turn %d dropped: the user went on speaking", turn.turn_id)

    def _drop_active(self, turn: ActiveTurn, only_if_tentative: bool = False) -> bool:
        """Make `turn` stale and stop its generation; False if it is no longer the active turn
        (or, with `only_if_tentative`, was promoted meanwhile)."""
        with self._lock:
            if self._active is not turn or (only_if_tentative and not turn.tentative):
                return False
            self._active = None
            self.turns.advance()
            stream = turn.stream
        if stream is not None:
            stream.abort()
        return True

    def cached_transcript(self, wait_s: float = 2.0) -> str | None:
        """RealtimeSTT's final transcription of the utterance we already transcribed, if any.

        Called on a RealtimeSTT thread; waits for a speculative transcription still running.
        """
        with self._lock:
            deadline = time.monotonic() + wait_s
            while self._spec_inflight_for and self._spec_inflight_for == self.tracker.last_speech_end_t:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping.is_set():
                    break
                self._spec_done.wait(remaining)
            cache = self._spec_cache
            if cache is None or cache[0] != self.tracker.last_speech_end_t:
                log.debug("final transcription not cached: transcribing again")
                return None
            self._final_from_cache = True
            return cache[1]

    # ------------------------------------------------------------------ turns

    def submit_user_text(self, text: str, speech_end_t: float = 0.0, text_t: float = 0.0) -> int:
        """Answer `text` as a new turn (any thread); returns its turn id."""
        return self._start_turn(text, speech_end_t, text_t, speculative=False)

    def _start_turn(self, text: str, speech_end_t: float, text_t: float, speculative: bool) -> int:
        """A new turn; a speculative one stays tentative (held) until its utterance's endpoint."""
        now = time.monotonic()
        text = fit_user_text(text)
        with self._lock:
            old = self._active
            turn = ActiveTurn(self.turns.advance(), text, speech_end_t or now, text_t or now)
            turn.speculative = speculative
            turn.tentative = speculative and self._endpoint_for != speech_end_t
            self._active = turn
            self._resumable = None if not turn.tentative else self._resumable
        if old is not None:
            if old.tentative:
                with self._lock:
                    stream = old.stream
                if stream is not None:
                    stream.abort()
            else:
                self._stop_turn(old, reason="new user turn")
        self._abort_summary()
        if not turn.tentative:
            chat_log.info("You: %s", text)
            self._check_loop(turn)
        self._llm_queue.put(turn)
        return turn.turn_id

    def _check_loop(self, turn: ActiveTurn) -> None:
        breaker = self.defense.loop_breaker
        if breaker is None:
            return
        decision = breaker.user_turn(turn.user_text, time.monotonic())
        if decision.stop:
            log.warning("conversation loop detected (%s): not answering", decision.reason)
            turn.loop_message = decision.message

    def interrupt(self, onset_t: float = 0.0, decision_t: float = 0.0) -> bool:
        """Barge-in: silence the reply now and forget its pending work. Fast; safe from any thread.

        Returns False when there was nothing to interrupt.
        """
        decision_t = decision_t or time.monotonic()
        with self._lock:
            turn = self._active
            if turn is None or turn.playback_done or turn.tentative:
                return False
            self._active = None
            self.turns.advance()
            self._resumable = turn if self.config.resume_after_false_interruption else None
        self._stop_turn(turn, reason="barge-in")
        guard = self.defense.transcript_guard
        if guard is not None and 0 <= turn.heard_index < len(turn.sentences):
            partial = ActiveTurn(0, "", 0.0, 0.0, sentences=[turn.sentences[turn.heard_index]])
            partial.heard_index, partial.heard_progress = 0, turn.heard_progress
            guard.note_played((turn.turn_id, turn.heard_index), turn.last_block_end_t, heard_text=partial.heard_text())
        with self._lock:
            stop_ms = max(0.0, (turn.last_block_end_t - decision_t) * 1000.0) if turn.last_block_end_t else 0.0
        record = {
            "turn": turn.turn_id,
            "barge_in_detect_ms": ms(onset_t, decision_t) if onset_t else None,
            "barge_in_stop_ms": round(stop_ms, 1),
            "words_kept": len(words_in(turn.heard_text())),
            "decision_t_s": round(decision_t - self.t0, 3),
        }
        self.barge_ins.append(record)
        self.metrics.add_barge_in(record)
        log.info("barge-in: turn %d stopped (detect %s ms, stop %s ms)", turn.turn_id,
                 record["barge_in_detect_ms"], record["barge_in_stop_ms"])  # fmt: skip
        return True

    def _stop_turn(self, turn: ActiveTurn, reason: str) -> None:
        """Silence and abandon `turn` (already made stale), then record what was heard."""
        self.sink.clear()
        with self._lock:
            stream = turn.stream
        if stream is not None:
            stream.abort()
        self._commit(turn, interrupted=not turn.playback_done, reason=reason)

    def _commit(self, turn: ActiveTurn, interrupted: bool, reason: str = "") -> None:
        """Record a finished or interrupted turn in history, transcript and metrics (once)."""
        with self._lock:
            if turn.committed or turn.tentative:
                return  # a tentative turn was never heard: it leaves no trace
            turn.committed = True
            heard = turn.heard_text() if interrupted else turn.full_text()
        if self.defense.loop_breaker is not None and heard:
            self.defense.loop_breaker.assistant_replied(heard)
        if turn.resumed_from:
            self.history.replace_last_assistant(heard, interrupted)
        else:
            self.history.add(Exchange(turn.user_text, heard, interrupted))
        metrics = {
            "turn": turn.turn_id,
            "user": turn.user_text,
            "assistant_heard": heard,
            "interrupted": interrupted,
            "end_reason": reason or "finished",
            "speech_end_s": round(turn.speech_end_t - self.t0, 3),
            "asr_ms": ms(turn.speech_end_t, turn.text_t),
            "llm": turn.llm,
            "tts_first_chunk_ms": ms(turn.first_sentence_t, turn.first_audio_ready_t),
            "voice_to_voice_ms": ms(turn.speech_end_t, turn.first_audio_t),
            "speculative": turn.speculative,
            "first_audio_s": round(turn.first_audio_t - self.t0, 3) if turn.first_audio_t else None,
            "history_exchanges": len(self.history),
            "timeline_ms": {  # each event relative to the end of the user's speech
                "transcript": ms(turn.speech_end_t, turn.text_t),
                "llm_request": ms(turn.speech_end_t, turn.llm_start_t),
                "first_token": ms(turn.speech_end_t, turn.first_token_t),
                "first_sentence": ms(turn.speech_end_t, turn.first_sentence_t),
                "first_audio_ready": ms(turn.speech_end_t, turn.first_audio_ready_t),
                "end_of_turn": ms(turn.speech_end_t, turn.endpoint_t or turn.text_t),
                "first_audio_played": ms(turn.speech_end_t, turn.first_audio_t),
            },
        }
        self.turn_metrics.append(metrics)
        self.metrics.add(metrics)
        self.transcript.write(
            {
                "turn": turn.turn_id,
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "user": turn.user_text,
                "assistant": heard,
                "interrupted": interrupted,
            }
        )
        if heard or not interrupted:
            chat_log.info("Assistant: %s%s", heard, " [interrupted]" if interrupted else "")
        log.info(format_turn(metrics))

    # ------------------------------------------------------------------ ASR thread

    def recognizer_callbacks(self):
        from voice_assistant.asr import RecognizerCallbacks

        return RecognizerCallbacks(
            on_recording_start=self._on_recording_start,
            on_recording_stop=self._on_recording_stop,
            on_transcription_start=self._on_transcription_start,
            on_vad_start=lambda: None,
            on_vad_stop=lambda: None,
        )

    def _on_recording_start(self) -> None:
        self._recording = True

    def _on_recording_stop(self) -> None:
        self._recording = False
        self._transcribing_since = time.monotonic()
        self._utterance_end_t = self.tracker.last_speech_end_t or time.monotonic()

    def _on_transcription_start(self, audio=None, *args) -> bool:
        """RealtimeSTT passes the utterance (16 kHz float32) it is about to transcribe: keep it for
        the voice checks of `on_final_text`, which a transcript not served from cache must pass too."""
        with self._lock:
            self._final_audio = None if audio is None else np.asarray(audio, dtype=np.float32)
        return False  # False: RealtimeSTT goes on to transcribe

    def _run_asr(self) -> None:
        while not self._stopping.is_set():
            try:
                text = self.recognizer.next_text()
            except Exception:  # a worker loop logs and carries on
                if self._stopping.is_set():
                    return
                log.exception("speech recognition failed; listening again")
                continue
            self._transcribing_since = 0.0
            if self._stopping.is_set():
                return
            self.on_final_text(text, self._utterance_end_t, time.monotonic())

    def on_final_text(self, text: str, speech_end_t: float, text_t: float) -> None:
        """A finished utterance: answer it, or resume a falsely interrupted reply if it had no words."""
        with self._lock:
            from_cache, self._final_from_cache = self._final_from_cache, False
            audio, self._final_audio = self._final_audio, None
        if from_cache:
            return  # RealtimeSTT confirmed the utterance we already answered speculatively
        if clean_for_speech(text):
            start_t = speech_end_t - (len(audio) / INPUT_RATE_HZ if audio is not None else 2.0)
            reason = self._rejects(text, start_t, speech_end_t, audio)
            if reason:
                log.info("ignored %r: %s", text, reason)
                self._on_no_words()
                return
            if is_stop_command(text):
                self._on_stop_command(text)
                return
            self.submit_user_text(text.strip(), speech_end_t, text_t)
            return
        self._on_no_words()

    def _on_stop_command(self, text: str) -> None:
        """'Stop', 'wait'...: the barge-in already silenced the reply; stay silent, do not resume."""
        with self._lock:
            self._resumable = None
            turn = self._active
        if turn is not None and turn.tentative:
            self._cancel_tentative()
        elif turn is not None:
            self.interrupt()
        chat_log.info("You: %s", text)
        log.info("stopped on request; listening")

    def _on_no_words(self) -> None:
        """The utterance after a barge-in had no words: resume the cut reply (if enabled)."""
        with self._lock:
            resumable, self._resumable = self._resumable, None
            busy = self._active is not None
        if resumable is not None and not busy:
            self._resume(resumable)

    def _resume(self, cut: ActiveTurn) -> None:
        """Continue a reply from its next unplayed sentence (the interruption had no words)."""
        with self._lock:
            if self._active is not None:
                return
            turn = ActiveTurn(self.turns.advance(), cut.user_text, cut.speech_end_t, cut.text_t)
            turn.resumed_from = cut.turn_id
            done = max(cut.heard_index + (1 if cut.heard_progress >= 0.999 else 0), 0)
            heard_sentences = cut.sentences[:done]
            turn.sentences = list(heard_sentences)
            turn.prompt = cut.prompt
            pending = cut.sentences[done:]
            turn.llm_done = cut.llm_done
            self._active = turn
        log.info("no words in the interruption: resuming turn %d at sentence %d", cut.turn_id, done + 1)
        self._llm_queue.put(ResumeReply(turn, tuple(pending), cut.llm_done))

    # ------------------------------------------------------------------ LLM thread

    def sampling_params(self) -> dict:
        params = {
            "n_predict": self.config.max_reply_tokens,
            "temperature": self.config.temperature,
            "top_k": 40,
            "top_p": 0.9,
            "min_p": 0.05,
            "repeat_penalty": 1.1,
            "mirostat": 0,
            "typical_p": 1.0,
            "cache_prompt": True,
            "id_slot": 0,
        }
        if self.config.low_latency_mode:
            del params["mirostat"], params["typical_p"]
        return params

    def _run_llm(self) -> None:
        while True:
            item = self._llm_queue.get()
            if item is STOP:
                return
            try:
                if isinstance(item, ResumeReply):
                    self._continue_reply(item)
                else:
                    self._respond(item)
            except Exception:
                log.exception("reply generation failed")

    def _respond(self, turn: ActiveTurn) -> None:
        if not self.turns.is_current(turn.turn_id):
            return
        if turn.loop_message:
            self._emit_error_reply(turn, turn.loop_message)
            return
        if self.supervisor is not None and not self.supervisor.available:
            self._emit_error_reply(turn, LLM_UNAVAILABLE_REPLY)
            return
        build_start = time.monotonic()
        turn.llm_start_t = build_start
        try:
            turn.prompt = self.client.apply_template(self.history.messages(self.config.system_prompt, turn.user_text))
        except LLMError as exc:
            log.error("language model unavailable: %s", exc)
            self._emit_error_reply(turn)
            self._report_llm_failure(exc)
            return
        build_end = time.monotonic()
        self._stream_reply(turn, turn.prompt, build_start, build_end, start_index=0)

    def _retry_shorter(self, turn: ActiveTurn, exc: LLMError) -> bool:
        """The prompt did not fit the context: keep only the last two exchanges and ask again, once."""
        if turn.retried or "context" not in str(exc) or len(self.history) == 0:
            return False
        turn.retried = True
        dropped = max(1, len(self.history) - 2)
        self.history.drop_oldest(dropped)
        log.warning("turn %d: the prompt did not fit the model's context; dropped %d old exchanges", turn.turn_id, dropped)
        self._respond(turn)
        return True

    def _continue_reply(self, resume: ResumeReply) -> None:
        """Speak the pending sentences, then let the model continue after everything generated so far."""
        turn = resume.turn
        if not self.turns.is_current(turn.turn_id):
            return
        index = len(turn.sentences)
        for text in resume.pending:
            self._emit(turn, index, text)
            index += 1
        if resume.llm_done:
            self._tts_queue.put(EndOfText(turn.turn_id))
            return
        prompt = turn.prompt + " ".join(turn.sentences)
        now = time.monotonic()
        self._stream_reply(turn, prompt, now, now, start_index=index, continuation=True)

    def _stream_reply(self, turn, prompt, build_start, build_end, start_index, continuation=False) -> None:
        stream = self.client.stream({"prompt": prompt, **self.sampling_params()})
        with self._lock:
            if not self.turns.is_current(turn.turn_id):
                return
            turn.stream = stream
        think = ThinkFilter()
        first = not (continuation or start_index)
        chunker = SentenceChunker(
            self.config.first_clause_min_words if first else 0,
            first_chunk_max_words=self.config.first_chunk_max_words if first else 0,
        )
        index = start_index
        if continuation:
            chunker.feed(" ")  # the prompt ended mid-reply; keep words apart
        if self.config.pause_asr_during_prefill:
            self._asr_paused.set()
        progress_t = 0.0  # last speakable progress; the read timeout covers the wait for the first token
        try:
            for piece in stream:
                self._asr_paused.clear()
                now = time.monotonic()
                progress_t = progress_t or now
                if not self.turns.is_current(turn.turn_id):
                    stream.abort()
                    break
                if stream.stats.tokens > self.config.max_reply_tokens + 16:
                    stream.abort()  # the server ignores n_predict: do not stream for ever
                    raise LLMProtocolError(f"llama-server kept streaming past {self.config.max_reply_tokens} tokens")
                if now - progress_t > self.config.reply_stall_s:
                    stream.abort()  # a trickle each read-timeout apart, or thinking that never ends
                    raise LLMTooSlowError(
                        f"nothing speakable for {self.config.reply_stall_s:.0f} s "
                        f"({stream.stats.tokens} tokens so far); ending the reply"
                    )
                visible = think.feed(piece)
                turn.raw_text += visible
                for sentence in chunker.feed(visible):
                    self._emit(turn, index, sentence)
                    index += 1
                    progress_t = now
            else:
                if self.turns.is_current(turn.turn_id):
                    for sentence in chunker.feed(think.flush()) + chunker.flush():
                        self._emit(turn, index, sentence)
                        index += 1
        except LLMError as exc:
            log.error("turn %d: %s", turn.turn_id, exc)
            if index == start_index and not continuation and self._retry_shorter(turn, exc):
                return
            self._emit_error_reply(turn, LLM_SLOW_REPLY if isinstance(exc, LLMTooSlowError) else LLM_ERROR_REPLY)
            self._report_llm_failure(exc)
            return
        finally:
            self._asr_paused.clear()
            turn.llm = llm_breakdown(build_start, build_end, stream.stats)
            turn.first_token_t = turn.first_token_t or stream.stats.first_token_t
        if self.turns.is_current(turn.turn_id):
            turn.llm_done = True
            if index == start_index and not continuation:
                log.warning("turn %d: the model returned no speakable text", turn.turn_id)
            self._tts_queue.put(EndOfText(turn.turn_id))

    def _emit(self, turn: ActiveTurn, index: int, text: str) -> None:
        with self._lock:
            if not self.turns.is_current(turn.turn_id):
                return
            if index >= len(turn.sentences):
                turn.sentences.append(text)
            if not turn.first_sentence_t:
                turn.first_sentence_t = time.monotonic()
        self._tts_queue.put(SentenceItem(turn.turn_id, index, text))

    def _emit_error_reply(self, turn: ActiveTurn, text: str = LLM_ERROR_REPLY) -> None:
        """End the turn with a short spoken apology (after whatever was already said)."""
        self._emit(turn, len(turn.sentences), text)
        turn.llm_done = True
        self._tts_queue.put(EndOfText(turn.turn_id))

    def _report_llm_failure(self, exc: LLMError) -> None:
        if self.supervisor is not None:
            self.supervisor.report_failure(exc)

    # ------------------------------------------------------------------ TTS thread

    def _run_tts(self) -> None:
        while True:
            item = self._tts_queue.get()
            if item is STOP:
                return
            if not self.turns.is_current(item.turn_id):
                continue
            if isinstance(item, EndOfText):
                self._to_sink(EndOfReply(item.turn_id))
                continue
            try:
                self._speak(item)
            except Exception:
                log.exception("speech synthesis failed for %r", item.text[:60])

    def _speak(self, item: SentenceItem) -> None:
        text = clean_for_speech(item.text)
        if not text:
            return
        audio = self.synthesizer.synthesize_all(text)
        if not self.turns.is_current(item.turn_id) or len(audio) == 0:
            return
        if item.index == 0:
            audio = trim_leading_silence(audio, self.synthesizer.sample_rate_hz)
        with self._lock:
            turn = self._active
            if turn is not None and turn.turn_id == item.turn_id and not turn.first_audio_ready_t:
                turn.first_audio_ready_t = time.monotonic()
        blocks = split_blocks(audio, self.sink.block_frames)
        for i, block in enumerate(blocks):
            if not self.turns.is_current(item.turn_id):
                return
            self._to_sink(AudioBlock(item.turn_id, block, item.index, (i + 1) / len(blocks)))

    def _to_sink(self, item) -> None:
        """Queue for playback, or hold while the turn is tentative (TTS thread)."""
        with self._lock:
            turn = self._active
            if turn is not None and turn.turn_id == item.turn_id and turn.tentative:
                turn.held.append(item)
                return
        self.sink.put(item)

    # ------------------------------------------------------------------ playback and control

    def _on_play(self, item, play_t: float) -> None:
        """Playback thread: `item` starts sounding at `play_t`. Must stay fast."""
        with self._lock:
            turn = self._active
            if turn is None or turn.turn_id != item.turn_id:
                return
            if isinstance(item, AudioBlock):
                if not turn.first_audio_t:
                    turn.first_audio_t = play_t
                end_t = play_t + len(item.samples) / self.sink.sample_rate_hz
                guard = self.defense.transcript_guard
                if guard is not None and item.sentence_index < len(turn.sentences):
                    key = (turn.turn_id, item.sentence_index)
                    if item.sentence_index != turn.heard_index:
                        guard.note_playing(key, turn.sentences[item.sentence_index], play_t)
                    if item.sentence_progress >= 0.999:
                        guard.note_played(key, end_t)
                turn.heard_index = item.sentence_index
                turn.heard_progress = item.sentence_progress
                turn.last_block_end_t = end_t
                self._last_play_end_t = end_t
            elif isinstance(item, EndOfReply):
                turn.playback_done = True
                self._control_queue.put(turn)

    def _run_control(self) -> None:
        while True:
            turn = self._control_queue.get()
            if turn is STOP:
                return
            try:
                with self._lock:
                    if self._active is turn:
                        self._active = None
                        self._resumable = None
                self._commit(turn, interrupted=False)
                self._maybe_summarize()
            except Exception:
                log.exception("finishing turn %d failed", turn.turn_id)

    # ------------------------------------------------------------------ history summaries

    def _maybe_summarize(self) -> None:
        config = self.config
        if len(self.history) <= config.summarize_after_turns:
            return
        count = len(self.history) - config.keep_recent_turns
        if not config.enable_history_summarization:
            self.history.drop_oldest(count)
            return
        if self._summary_thread is not None and self._summary_thread.is_alive():
            return
        self._summary_thread = threading.Thread(target=self._summarize, args=(count,), name="summarizer", daemon=True)
        self._summary_thread.start()

    def _summarize(self, count: int) -> None:
        """Summarizer thread: fold the oldest exchanges into the summary; truncate if that fails."""
        exchanges = self.history.oldest(count)
        try:
            prompt = self.client.apply_template(summary_prompt_messages(self.history.summary, exchanges))
            stream = self.client.stream(
                {"prompt": prompt, "n_predict": 120, "temperature": 0.2, "cache_prompt": False, "id_slot": 1}
            )
            self._summary_stream = stream
            summary = "".join(stream).strip()
        except LLMError as exc:
            log.warning("history summary failed (%s); dropping the oldest turns instead", exc)
            self.history.drop_oldest(count)
            return
        finally:
            self._summary_stream = None
        if stream.aborted:
            return  # a new turn started; try again after it
        if not summary or not self.history.apply_summary(exchanges, summary):
            self.history.drop_oldest(count)
        else:
            log.info("history: %d turns summarized", count)

    def _abort_summary(self) -> None:
        stream = self._summary_stream
        if stream is not None:
            stream.abort()


# ---------------------------------------------------------------------- construction


def state_dir() -> Path:
    """Where logs are kept: $XDG_STATE_HOME/voice-assistant (default ~/.local/state/voice-assistant)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "voice-assistant"


def assistant_config_from_args(args) -> AssistantConfig:
    return AssistantConfig(
        system_prompt=args.system_prompt,
        max_reply_tokens=args.max_reply_tokens,
        reply_stall_s=float(args.llm_timeout_s),
        use_http2=args.use_http2,
        use_raw_stream=args.use_raw_stream,
        pause_asr_during_prefill=args.pause_asr_during_prefill,
        low_latency_mode=args.low_latency_mode,
        enable_history_summarization=args.enable_history_summarization,
        summarize_after_turns=args.summarize_after_turns,
        history_trim_threshold=args.history_trim_threshold,
        barge_in_enabled=args.barge_in,
        barge_in_min_speech_ms=args.barge_in_min_speech_ms,
        resume_after_false_interruption=args.resume_after_false_interruption,
        first_clause_min_words=args.first_clause_min_words,
        first_chunk_max_words=args.first_chunk_max_words,
        block_ms=args.block_ms,
        end_of_speech_silence_ms=args.end_of_speech_silence_ms,
        speculate_after_ms=args.speculate_after_ms,
    )


def start_llm(args, keep_listening: bool = False):
    """(client, server or None, ready): connect to --llm-url, or start the bundled/own llama-server.

    A remote server still down after `--llm-wait-s` is a SetupError, except with `keep_listening`
    (live mode), where the conversation starts anyway (`ready` False) and the supervisor polls the
    server until it answers: a user may start the assistant before their server.
    """
    from voice_assistant.llama_server import LlamaServerProcess, ServerConfig
    from voice_assistant.models import check_gguf, default_llama_server, default_llm_gguf

    server = None
    if args.llm_url:
        url = args.llm_url
    else:
        binary = Path(args.llama_server) if args.llama_server else default_llama_server()
        model = check_gguf(Path(args.llm_model)) if args.llm_model else default_llm_gguf()
        server = LlamaServerProcess(
            ServerConfig(
                binary=binary,
                model=model,
                threads=args.llm_threads,
                batch_threads=args.llm_batch_threads,
                context_tokens=args.llm_context,
                log_path=Path(args.server_log) if args.server_log else state_dir() / "llama-server.log",
            )
        )
        url = server.start()
    client = LlamaClient(url, use_raw_stream=args.use_raw_stream, use_http2=args.use_http2, read_timeout_s=args.llm_timeout_s)
    ready, detail = client.health()
    deadline = time.monotonic() + (args.llm_wait_s if server is None else 0)
    delay = 0.25
    while not ready and time.monotonic() + delay < deadline:
        log.warning("waiting for llama-server at %s (%s); retrying in %.1f s", url, detail, delay)
        time.sleep(delay)  # backoff while a remote server starts: nothing to wait on but time
        delay = min(delay * 2, 4.0)
        ready, detail = client.health()
    if not ready and keep_listening and server is None:
        log.warning(
            "llama-server at %s is not reachable (%s); listening anyway: it is used as soon as it answers",
            url, detail,
        )  # fmt: skip
        return client, server, False
    if not ready:
        client.close()
        if server is not None:
            server.stop()
        raise SetupError(f"llama-server at {url} is not reachable ({detail}); start it or drop --llm-url")
    return client, server, True


def build_system(args) -> VoiceConversationSystem:
    """Real components from the command line. SetupError on any problem, before anything plays."""
    from voice_assistant.asr import ASRConfig, CachingExecutor, SpeechRecognizer, WhisperTranscriber, resolve_asr_model
    from voice_assistant.audio_io import (
        MicrophoneSource,
        SpeakerSink,
        WavFileSink,
        WavFileSource,
        find_device,
    )
    from voice_assistant.models import default_tts_model
    from voice_assistant.supervisor import LLMSupervisor
    from voice_assistant.tts import PiperSynthesizer
    from voice_assistant.vad import SileroVAD

    config = assistant_config_from_args(args)
    speaker = load_speaker_lock(args.speaker_lock) if args.speaker_lock else None
    file_mode = args.input_wav is not None
    source = WavFileSource(Path(args.input_wav)) if file_mode else None
    if file_mode:
        out_dir = Path(args.output_wav).resolve().parent
        if not out_dir.is_dir():
            raise SetupError(f"cannot write {args.output_wav}: folder {out_dir} does not exist")
    synthesizer = PiperSynthesizer.load(Path(args.tts_model) if args.tts_model else default_tts_model(), args.tts_threads)
    asr_config = ASRConfig(
        model=resolve_asr_model(args.asr_model),
        threads=args.asr_threads,
        end_of_speech_silence_s=args.end_of_speech_silence_ms / 1000.0,
        early_transcription_ms=0,
    )
    transcriber = WhisperTranscriber.load(asr_config.model, asr_config.threads, asr_config.beam_size)
    vad = SileroVAD.load(threads=1)
    transcript = TranscriptFile(Path(args.transcript)) if args.transcript else None
    metrics = MetricsFile(Path(args.metrics_json)) if args.metrics_json else None
    client, server, llm_ready = start_llm(args, keep_listening=not file_mode)
    try:
        if file_mode:
            sink = WavFileSink(Path(args.output_wav), synthesizer.sample_rate_hz, config.block_ms)
        else:
            sink = SpeakerSink(find_device(args.output_device, "output"), synthesizer.sample_rate_hz, config.block_ms)
            source = MicrophoneSource(find_device(args.input_device, "input"))
        system = VoiceConversationSystem(
            config, client, synthesizer, sink, source, vad, None, transcript, metrics, server,
            transcriber=transcriber if config.speculate_after_ms > 0 else None,
            supervisor=LLMSupervisor(client, server),
            defense=build_defense(args, synthesizer, file_mode, speaker),
        )  # fmt: skip
        synthesizer.warm_up()
        transcriber.warm_up()
        if llm_ready:
            warm = client.stream({"prompt": client.apply_template(system.history.messages(config.system_prompt)),
                                  "n_predict": 1, "cache_prompt": True, "id_slot": 0})  # fmt: skip
            list(warm)  # fills the prompt cache with the system prompt
        else:
            system.supervisor.mark_down()  # start_llm printed the status line
        executor = CachingExecutor(transcriber, system.cached_transcript) if system.transcriber else transcriber
        system.recognizer = SpeechRecognizer.create(asr_config, executor, system.recognizer_callbacks())
    except BaseException:
        client.close()
        if server is not None:
            server.stop()
        raise
    return system


def build_defense(args, synthesizer, file_mode: bool, speaker=None) -> SelfSpeechDefense:
    """Echo cancellation, the simulated room and the self-speech guards the flags ask for."""
    from voice_assistant.echo import EchoCanceller
    from voice_assistant.guards import EchoTranscriptGuard, LoopBreaker, OwnVoiceGuard
    from voice_assistant.room import RoomConfig, SimulatedRoom

    room = None
    if args.simulate_echo:
        room = SimulatedRoom(RoomConfig(delay_ms=args.echo_delay_ms, gain_db=args.echo_gain_db))
    canceller = EchoCanceller() if args.aec and (not file_mode or room is not None) else None
    defense = SelfSpeechDefense(canceller=canceller, room=room)
    if args.record_mic:
        defense.mic_record, defense.mic_path = [], args.record_mic
    if args.echo_guards:
        defense.transcript_guard = EchoTranscriptGuard()
        defense.loop_breaker = LoopBreaker()
    if args.echo_guards or args.speaker_lock:
        import torch

        torch.set_num_threads(1)  # the speaker encoder runs beside everything else
        guard = OwnVoiceGuard()

        def enroll_own_voice() -> None:
            """voice-enroll thread: about 2 s of synthesis and encoder loading, beside start-up.

            Until it is done the own-voice check is skipped (guard.assistant stays None)."""
            clips = [(synthesizer.synthesize_all(text), synthesizer.sample_rate_hz) for text in guard.ASSISTANT_SENTENCES]
            guard.enroll_assistant(clips)

        threading.Thread(target=enroll_own_voice, name="voice-enroll", daemon=True).start()
        defense.own_voice = guard
    if speaker is not None:
        defense.own_voice.set_user(speaker)
        defense.speaker_lock = True
    return defense


def load_speaker_lock(name: str):
    """The enrollment for --speaker-lock; SetupError naming the problem (checked before models load)."""
    import voiceprint

    try:
        return voiceprint.EnrollmentStore().load(name)
    except voiceprint.VoiceprintError as exc:
        raise SetupError(f"--speaker-lock: {exc}; enroll with: python -m voiceprint enroll {name} --mic") from None


# ---------------------------------------------------------------------- self test


def run_self_test(args) -> int:
    """--test: check each component, print pass/fail with timings; 0 only if all needed parts pass."""
    from voice_assistant.asr import WhisperTranscriber, resolve_asr_model
    from voice_assistant.models import default_tts_model
    from voice_assistant.tts import PiperSynthesizer
    from voice_assistant.wavio import resample

    results = []

    def check(name, needed, func):
        start = time.monotonic()
        try:
            detail = func()
            ok = True
        except Exception as exc:  # the test reports every failure as a line
            detail, ok = (str(exc) or type(exc).__name__).splitlines()[0][:160], False
        elapsed = (time.monotonic() - start) * 1000.0
        results.append((ok, needed))
        status = "PASS" if ok else ("FAIL" if needed else "WARN")
        print(f"{status}  {name:<8} {elapsed:7.0f} ms  {detail}", flush=True)

    state = {}

    def tts():
        synth = PiperSynthesizer.load(Path(args.tts_model) if args.tts_model else default_tts_model(), args.tts_threads)
        synth.warm_up()
        start = time.monotonic()
        audio = synth.synthesize_all("Testing one two three. The weather is nice today.")
        took = time.monotonic() - start
        if len(audio) == 0 or float(np.abs(audio).max()) < 0.01:
            raise RuntimeError("Piper produced silence")
        state["speech"] = resample(audio, synth.sample_rate_hz, 16000)
        seconds = len(audio) / synth.sample_rate_hz
        return f"synthesized {seconds:.1f} s of speech, real-time factor {took / seconds:.2f}"

    def asr():
        if "speech" not in state:
            raise RuntimeError("no test clip (TTS failed)")
        transcriber = WhisperTranscriber.load(resolve_asr_model(args.asr_model), args.asr_threads)
        transcriber.warm_up()
        start = time.monotonic()
        text = transcriber.transcribe_text(state["speech"])
        took = (time.monotonic() - start) * 1000.0
        if "weather" not in text.lower():
            raise RuntimeError(f"transcribed {text!r}, expected the test sentence")
        return f"transcribed {text!r} in {took:.0f} ms"

    def llm():
        client, server, _ = start_llm(args)
        try:
            stream = client.stream({"prompt": client.apply_template([{"role": "user", "content": "Say hello."}]),
                                    "n_predict": 16})  # fmt: skip
            text = "".join(stream)
            if stream.stats.tokens == 0:
                raise RuntimeError("llama-server streamed no tokens")
            first = ms(stream.stats.sent_t, stream.stats.first_token_t)
            return f"{stream.stats.tokens} tokens streamed, first after {first} ms: {text.strip()[:40]!r}"
        finally:
            client.close()
            if server is not None:
                server.stop()

    def devices(kind):
        def probe():
            import sounddevice

            from voice_assistant.audio_io import find_device

            device = find_device(args.input_device if kind == "input" else args.output_device, kind)
            try:
                info = sounddevice.query_devices(device, kind)
                stream_type = sounddevice.InputStream if kind == "input" else sounddevice.OutputStream
                with stream_type(samplerate=16000 if kind == "input" else 22050, channels=1, device=device):
                    pass
            except Exception as exc:
                raise RuntimeError(f"no usable {kind} device: {str(exc).splitlines()[0]}") from None
            return f"{info['name']} opened"

        return probe

    check("tts", True, tts)
    check("asr", True, asr)
    check("llm", True, llm)
    devices_needed = args.input_wav is None
    check("mic", devices_needed, devices("input"))
    check("speaker", devices_needed, devices("output"))
    failed = [ok for ok, needed in results if needed and not ok]
    print("all needed components work" if not failed else f"{len(failed)} needed component(s) failed")
    return 0 if not failed else 1


# ---------------------------------------------------------------------- command line


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


class OneLineParser(argparse.ArgumentParser):
    """Bad flags end in one line on stderr (not the whole usage block) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")


def parse_args(argv=None):
    toggle = argparse.BooleanOptionalAction
    p = OneLineParser(description="Local real-time voice assistant (RealtimeSTT + llama-server + Piper).")
    p.add_argument("--llm-url", help="use this running llama-server instead of starting one")
    p.add_argument("--llm-model", help="GGUF model for the auto-started llama-server (default: bundled SmolLM2-135M)")
    p.add_argument("--llama-server", help="llama-server binary to start (default: the bundled build)")
    p.add_argument("--tts-model", help="Piper voice .onnx, with its .onnx.json beside it (default: bundled joe)")
    p.add_argument("--asr-model", help="faster-whisper model name or CTranslate2 folder (default: bundled tiny.en)")
    p.add_argument("--system-prompt", default=DEFAULT_SYSTEM_PROMPT, help="the assistant's persona")
    p.add_argument("--test", action="store_true", help="check every component and exit")
    p.add_argument("--list-devices", action="store_true", help="list audio devices and exit")
    p.add_argument("--input-device", help="microphone: index or part of its name")
    p.add_argument("--output-device", help="speaker: index or part of its name")
    p.add_argument("--input-wav", help="file mode: play this WAV as the microphone, in real time")
    p.add_argument("--output-wav", help="file mode: write everything played here, on the input's timeline")
    p.add_argument("--transcript", help="append each turn as a JSON line to this file")
    p.add_argument("--metrics-json", help="write per-turn timings to this JSON file")
    p.add_argument("--server-log", help="llama-server log file (default: ~/.local/state/voice-assistant/)")
    p.add_argument("--llm-threads", type=positive_int, default=1, help="llama-server generation threads (-t)")
    p.add_argument("--llm-batch-threads", type=positive_int, default=2, help="llama-server prompt threads (-tb)")
    p.add_argument("--llm-wait-s", type=non_negative_int, default=5,
                   help="how long to wait for an --llm-url server that is not up yet at start; then live "
                        "mode keeps listening and polls it, file mode and --test exit with an error")
    p.add_argument("--llm-timeout-s", type=positive_int, default=20,
                   help="a reply stream silent this long counts as a hung server; once the reply has "
                        "begun, this long without a new sentence to speak ends it as too slow")
    p.add_argument("--llm-context", type=positive_int, default=4096, help="context tokens per server slot")
    p.add_argument("--asr-threads", type=positive_int, default=2, help="CTranslate2 threads for faster-whisper")
    p.add_argument("--tts-threads", type=positive_int, default=1, help="onnxruntime threads for Piper")
    p.add_argument("--max-reply-tokens", type=positive_int, default=96, help="longest reply, in tokens")
    p.add_argument("--end-of-speech-silence-ms", type=positive_int, default=450, help="silence that ends an utterance")
    p.add_argument("--speculate-after-ms", type=non_negative_int, default=64,
                   help="transcribe and start answering after this much silence, before the turn ends (0: off)")
    p.add_argument("--block-ms", type=positive_int, default=20, choices=[10, 20, 30, 40], help="playback block")
    p.add_argument("--first-chunk-max-words", type=non_negative_int, default=8,
                   help="first spoken chunk is cut after this many words if no punctuation comes first (0: off)")
    p.add_argument("--first-clause-min-words", type=non_negative_int, default=3,
                   help="first spoken chunk may end at a comma after this many words (0: whole sentences)")
    p.add_argument("--use-http2", action=toggle, default=False, help="HTTP/2 for the line reader")
    p.add_argument("--use-raw-stream", action=toggle, default=True, help="raw-byte SSE reader")
    p.add_argument("--pause-asr-during-prefill", action=toggle, default=True, help="hold ASR during prefill")
    p.add_argument("--low-latency-mode", action=toggle, default=True, help="strip mirostat/typical_p")
    p.add_argument("--enable-history-summarization", action=toggle, default=True, help="summarize old turns")
    p.add_argument("--summarize-after-turns", type=positive_int, default=10, help="summarize beyond this many turns")
    p.add_argument("--history-trim-threshold", type=positive_int, default=12, help="most turns kept verbatim")
    p.add_argument("--barge-in", action=toggle, default=True, help="let user speech interrupt the assistant")
    p.add_argument("--barge-in-min-speech-ms", type=positive_int, default=200, help="speech needed to interrupt")
    p.add_argument("--resume-after-false-interruption", action=toggle, default=True,
                   help="resume a reply interrupted by a sound without words")
    p.add_argument("--aec", action=toggle, default=True,
                   help="WebRTC echo cancellation on the microphone (live mode, or file mode with --simulate-echo)")
    p.add_argument("--echo-guards", action=toggle, default=True,
                   help="ignore transcripts of our own speech, our own voice, and conversation loops")
    p.add_argument("--speaker-lock", metavar="NAME", help="answer only this enrolled voice (python -m voiceprint enroll)")
    p.add_argument("--simulate-echo", action="store_true",
                   help="file mode: mix what is played back into the input through a simulated room")
    p.add_argument("--record-mic", metavar="WAV", help="write the microphone before/after echo cancellation (stereo)")
    p.add_argument("--echo-delay-ms", type=non_negative_int, default=60, help="--simulate-echo: echo delay")
    p.add_argument("--echo-gain-db", type=float, default=0.0, help="--simulate-echo: echo level (0 dB: as loud as the user)")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = p.parse_args(argv)
    if (args.input_wav is None) != (args.output_wav is None) and not args.test:
        p.error("file mode needs both --input-wav and --output-wav")
    if args.llm_url and (args.llm_model or args.llama_server):
        p.error("--llm-url uses a running server; --llm-model and --llama-server apply only to one we start")
    if args.simulate_echo and args.input_wav is None:
        p.error("--simulate-echo needs file mode (--input-wav and --output-wav)")
    if args.history_trim_threshold < args.summarize_after_turns:
        p.error("--history-trim-threshold must be at least --summarize-after-turns")
    return args


def configure_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), format="%(message)s", stream=sys.stdout)
    for noisy in ("RealtimeSTT", "realtimestt", "faster_whisper", "httpx", "httpcore", "piper"):
        logging.getLogger(noisy).setLevel(logging.WARNING if level != "DEBUG" else logging.DEBUG)


def divert_native_stderr(path: Path) -> None:
    """Send what C libraries write to file descriptor 2 into `path`; `sys.stderr` keeps the terminal.

    ALSA and PortAudio print a dozen lines (`ALSA lib pcm.c: ...`, `Expression '...' failed in
    pa_linux_alsa.c`) when they enumerate devices or a device vanishes. Our own one-line messages
    already say what happened; theirs go to the log for whoever wants the details.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as exc:
        log.debug("native library messages stay on the terminal: %s", exc)
        return
    sys.stderr.flush()
    terminal = os.dup(2)
    os.dup2(target, 2)
    os.close(target)
    sys.stderr = os.fdopen(terminal, "w", buffering=1, errors="backslashreplace")


def main(argv=None) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level)
    if (args.input_wav is None or args.test or args.list_devices) and args.log_level != "DEBUG":
        divert_native_stderr(state_dir() / "native-stderr.log")  # audio devices are about to be opened
    if args.list_devices:
        from voice_assistant.audio_io import list_devices

        try:
            print(list_devices())
        except SetupError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    if args.test:
        return run_self_test(args)
    launch_t = time.monotonic()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    system = None
    try:
        system = build_system(args)
        system.start()
        log.info("listening (ready %.1f s after launch)%s", time.monotonic() - launch_t,
                 "" if args.input_wav else "; press Ctrl-C to quit")  # fmt: skip
        if args.input_wav:
            waiter = threading.Thread(target=system.run_until_input_done, name="file-mode", daemon=True)
            waiter.start()
            while waiter.is_alive() and not stop.wait(0.1):
                pass
        else:
            stop.wait()
    except VoiceAssistantError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        if system is not None:
            system.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
