#!/usr/bin/env python3
"""Local real-time voice assistant: microphone -> RealtimeSTT/faster-whisper -> llama-server -> Piper -> speaker.

`VoiceConversationSystem` is the policy: when the user has finished a turn, when they interrupt,
what is answered, what is said instead, and what goes into history. The mechanics live in the
`voice_assistant` package (README, "How it works", has the map). Threads:

- audio-in (microphone or WAV pacer): `on_audio()` -> microphone chain -> speech events;
- asr (RealtimeSTT `text()`) and spec-asr (speculative transcription) deliver what was said;
- llm: streams a reply per turn and cuts it into sentences; tts: synthesizes them into blocks;
- playback (PortAudio callback or WAV pacer) reports what was heard; control: finishes turns.

The turn counter is the one judge of staleness: every queue item carries its turn id and every
consumer checks it when taking the item and at each inner step (SSE event, audio block).
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time

from voice_assistant.audio_io import INPUT_RATE_HZ, AudioBlock, AudioSink, AudioSource, EndOfReply
from voice_assistant.config import Config
from voice_assistant.defense import SelfSpeechDefense
from voice_assistant.endpointing import Endpoint, PauseSnapshot, SpeechLong, SpeechStart
from voice_assistant.errors import LLMContextOverflow, LLMError, LLMTooSlowError, VoiceAssistantError
from voice_assistant.history import Exchange, History
from voice_assistant.metrics import (MetricsFile, TranscriptFile, barge_in_record, format_turn, llm_breakdown,
                                     turn_record)  # fmt: skip
from voice_assistant.reply import ReplyOptions, ReplyStreamer
from voice_assistant.speech import SpeechWorker
from voice_assistant.prompt_cache import PromptWarmer
from voice_assistant.summarizer import HistorySummarizer
from voice_assistant.language import turn_language, with_reply_hint
from voice_assistant.text import clean_for_speech, words_in
from voice_assistant.turns import (EndOfText, ReplyPlayed, Respond, Resume, SentenceItem, Turn, TurnCounter,
                                   TurnTimings, WriteRecords)  # fmt: skip
from voice_assistant.workers import QueueWorker, arm_exit_watchdog, log_thread_deaths

log = logging.getLogger("voice_assistant.system")
chat_log = logging.getLogger("voice_assistant.chat")

LLM_ERROR_REPLY = "Sorry, I could not get an answer from the language model."
LLM_SLOW_REPLY = "Sorry, the language model is too slow right now."
LLM_UNAVAILABLE_REPLY = "Sorry, the language model is not available right now. I am still listening."
SAY_AGAIN_REPLY = "Sorry, we spoke at the same time. Could you say that again?"
MANDARIN_REPLIES = {
    LLM_ERROR_REPLY: "抱歉，我没能从语言模型得到回答。",
    LLM_SLOW_REPLY: "抱歉，语言模型现在太慢了。",
    LLM_UNAVAILABLE_REPLY: "抱歉，语言模型现在用不了。我还在听。",
    SAY_AGAIN_REPLY: "抱歉，我们同时说话了。请再说一遍好吗？",
}
STOP_COMMANDS = frozenset(
    ["stop", "wait", "hold on", "pause", "quiet", "be quiet", "shut up", "stop it", "stop stop", "okay stop",
     "ok stop", "enough", "thats enough", "never mind", "nevermind", "cancel", "stop talking",
     "停", "停下", "停一下", "停停", "等一下", "等等", "等一等", "别说了", "不要说了", "安静", "闭嘴", "够了", "好了好了",
     "算了", "取消"]
)  # fmt: skip
"""Utterances that only ask the assistant to be silent: it stops and listens, without answering."""
EXIT_LIMIT_S = 6.0  # longest the stop may take (close() itself keeps to 1.8 s) before the watchdog ends the process
ECHO_TAIL_S = 0.3  # the room still echoes the assistant's voice this long after its last block sounded
HOLD_GRACE_S = 0.4  # a reply held for a voice goes on this long after the end-of-turn silence that followed it
HOLD_MIN_RUN_S = 0.096  # without echo cancellation, a held sound shorter than this (a click) lets the reply go on at once
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


class VoiceConversationSystem:
    """One conversation. Build the real one with `from_config()`; tests pass fakes to `__init__`."""

    def __init__(
        self,
        config: Config,
        client,
        synthesizer,
        sink: AudioSink,
        *,
        source: AudioSource | None = None,
        mic=None,  # mic.MicrophoneChain: room, echo canceller, VAD, utterance tracker, ASR feed
        recognizer=None,  # asr.SpeechRecognizer: RealtimeSTT's final transcripts
        speculation=None,  # speculation.SpeculativeTranscriber: transcripts during the end-of-turn silence
        turn_judge=None,  # turn_detector.TurnJudge: does the pause end a finished sentence? (--turn-detector smart)
        defense: SelfSpeechDefense | None = None,
        supervisor=None,  # supervisor.LLMSupervisor: keeps the LLM backend reachable
        device_monitor=None,  # devices.DeviceMonitor
        server=None,  # llama_server.LlamaServerProcess we started, stopped at close
        transcript: TranscriptFile | None = None,
        metrics: MetricsFile | None = None,
        cues=None,  # cues.Cues: a tone when the user's turn is heard and when thinking starts
    ) -> None:
        self.config = config
        self.client = client
        self.sink = sink
        self.source = source
        self.mic = mic
        self.recognizer = recognizer
        self.speculation = speculation
        self.turn_judge = turn_judge
        self.defense = defense or SelfSpeechDefense()
        self.supervisor = supervisor
        self.device_monitor = device_monitor
        self.server = server
        self.transcript = transcript or TranscriptFile(None)
        self.metrics = metrics or MetricsFile(None)
        self.cues = cues
        self.turns = TurnCounter()
        self.history = History(config.llm.history_trim_threshold, config.llm.keep_recent_turns)
        self.prompt_warmer = PromptWarmer(client, self.history, config.system_prompt)
        self.summarizer = HistorySummarizer.from_config(client, self.history, config.llm, self.prompt_warmer)
        hold = mic.asr_hold if mic is not None and config.llm.pause_asr_during_prefill else None
        self.replies = ReplyStreamer(client, ReplyOptions.from_config(config), prefill_hold=hold)
        self.speech = SpeechWorker(synthesizer, sink, self.turns, self._on_audio_ready)
        self.llm_worker = QueueWorker("llm", self._on_llm_item)
        self.control_worker = QueueWorker("control", self._on_control_item)
        self.t0 = 0.0
        self._lock = threading.Lock()
        self._active: Turn | None = None  # the turn being answered; guarded by _lock
        self._resumable: Turn | None = None  # reply cut by a barge-in that may prove false; guarded by _lock
        self._endpoint_for = 0.0  # speech_end_t of the last utterance whose turn is over; guarded by _lock
        self._thinking_cued_for = 0.0  # the turn held open for its answer that had its "thinking" cue (audio-in thread)
        self._endpoint_how = ""  # how that turn ended (Endpoint.how); guarded by _lock
        self._onset_hold = 0.0  # when the reply's audio was held for a voice that started (0: not); audio-in thread only
        self._hold_voice_t = 0.0  # audio time of the held voice's last chunk (0: none yet); audio-in thread
        self._hold_voiced = False  # the canceller let part of the held sound through as a voice; audio-in thread
        self._no_words_for = 0.0  # utterance transcribed as empty, waiting for its endpoint; guarded by _lock
        self._last_play_end_t = 0.0  # when the last reply block stopped sounding; guarded by _lock
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._closed = False

    @classmethod
    def from_config(cls, config: Config) -> "VoiceConversationSystem":
        """The real components (models, devices, llama-server). SetupError on any problem."""
        from voice_assistant.assembly import build_components

        return cls(config, **build_components(config))

    def active_turn(self) -> Turn | None:
        """The turn being answered, if any (read it, do not change it)."""
        with self._lock:
            return self._active

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the worker threads, then playback and the audio source."""
        self.t0 = time.monotonic()
        hears_playback = self.mic is not None and self.mic.hears_playback
        self.sink.connect(self._on_play, self.turns.is_current, self._on_played_samples if hears_playback else None)
        for worker in (self.llm_worker, self.speech.worker, self.control_worker):
            worker.start()
        if self.speculation is not None:
            self.speculation.start(self._on_spec_text)
        if self.turn_judge is not None:
            self.turn_judge.start()
        if self.recognizer is not None:
            self.recognizer.start(self.on_final_text, self._stopping)
        self.sink.start(self.t0)
        if self.source is not None:
            self.source.start(self.on_audio, self.t0)
        if self.device_monitor is not None:
            self.device_monitor.watch(self.source, self.recognizer, self.llm_worker, self.speech.worker,
                                      self.control_worker, self.speculation and self.speculation.worker,
                                      self.turn_judge and self.turn_judge.worker)  # fmt: skip
        for name, loop in (("llm-monitor", self.supervisor), ("device-monitor", self.device_monitor)):
            if loop is not None:
                thread = threading.Thread(target=loop.run, args=(self._stopping,), name=name, daemon=True)
                thread.start()
                self._threads.append(thread)
        if self.mic is not None:
            self.mic.set_device_latency(getattr(self.sink, "latency_s", 0.0) + getattr(self.source, "latency_s", 0.0))

    def close(self, limit_s: float = 1.8) -> None:
        """Stop everything within `limit_s`; idempotent; the transcript keeps every finished turn."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + limit_s
        self._stopping.set()
        self.defense.closing.set()
        if self.source is not None:
            self.source.close()
        self.summarizer.abort()
        with self._lock:
            active, self._active = self._active, None
            self.turns.advance()
        if active is not None:
            self._stop_turn(active, reason="shutdown")
        workers = [self.llm_worker, self.speech.worker, self.control_worker]
        for stoppable in [*workers, self.speculation, self.turn_judge, self.supervisor]:
            if stoppable is not None:
                stoppable.stop()  # wakes the thread; never blocks
        if self.recognizer is not None:
            self.recognizer.shutdown(max(0.05, deadline - time.monotonic()))
        workers += [self.speculation.worker] if self.speculation is not None else []
        workers += [self.turn_judge.worker] if self.turn_judge is not None else []
        for joinable in [*workers, *self._threads, self.summarizer, self.prompt_warmer]:
            joinable.join(max(0.05, deadline - time.monotonic()) / 2)
        self.defense.close(timeout_s=max(1.0, deadline - time.monotonic()))  # torch must not be mid-call at exit
        self.sink.close()
        self.client.close()
        if self.mic is not None:
            self.mic.close(self.metrics)
        self.metrics.close()
        self.transcript.close()
        if self.server is not None:
            self.server.close(timeout_s=max(0.05, deadline - time.monotonic()))

    def is_idle(self) -> bool:
        """Nothing heard, recognized, generated, synthesized or played is pending."""
        with self._lock:
            active = self._active
        return (
            active is None
            and (self.mic is None or not self.mic.tracker.in_utterance)
            and (self.speculation is None or self.speculation.idle())
            and (self.turn_judge is None or self.turn_judge.idle())
            and (self.recognizer is None or not self.recognizer.busy())
            and self.llm_worker.idle()
            and self.speech.worker.idle()
            and self.control_worker.idle()
            and self.sink.queue.idle.is_set()
        )

    # ------------------------------------------------------------------ what was heard

    def on_audio(self, chunk, end_t: float) -> None:
        """Audio-in thread: 32 ms of 16 kHz float32 audio captured until `end_t`."""
        with self._lock:
            echoing = end_t < self._last_play_end_t + ECHO_TAIL_S
        # half duplex while echo cancellation cannot be trusted: hearing our own voice, the assistant
        # took its words for the user's and answered them (live, 1 session in 3 before this)
        self.mic.deaf = echoing and self.mic.echo_unsafe()
        for event in self.mic.process(chunk, end_t):
            if isinstance(event, SpeechStart):
                self._cancel_tentative()  # the user goes on talking: the speculative answer is moot
                self._hold_for_onset()
            elif isinstance(event, SpeechLong):
                speaking = self._assistant_speaking()
                interrupted = self._barge_in(event)
                self._release_onset_hold(interrupted)
                if interrupted or not speaking:
                    self._cue("heard")
            elif isinstance(event, PauseSnapshot):
                if self.turn_judge is not None:
                    self.turn_judge.submit(event)
                if self.speculation is not None:
                    self.speculation.submit(event)
            elif isinstance(event, Endpoint):
                self._on_endpoint(event)
        due = self.mic.tracker.due
        if due is not None and due.speech_end_t != self._thinking_cued_for:
            self._on_turn_due(due)
        if self.mic.maybe_voice and not self._onset_hold:
            self._hold_for_onset()  # the canceller let through what may be a voice: hold before Silero is sure
        if self._onset_hold:
            self._update_onset_hold(end_t)

    def _barge_in(self, event: SpeechLong) -> bool:
        """Audio-in thread: a run of speech long enough to interrupt; True if it interrupted the reply."""
        if not self.config.barge_in.barge_in or self.mic.echo_unsafe():
            return False
        if self.mic.voice_passed is False:
            if self._assistant_speaking():
                log.info("not interrupting: the echo canceller let none of that speech through (our own echo)")
            return False
        interrupted = self.interrupt(onset_t=event.onset_t, decision_t=event.decision_t)
        if not interrupted and self._onset_hold:
            with self._lock:
                turn = self._active
            log.info("speech did not interrupt: no reply to stop (%s)", "none active" if turn is None else
                     f"turn {turn.turn_id}, tentative {turn.tentative}, played {turn.playback_done}")  # fmt: skip
        return interrupted

    def _update_onset_hold(self, end_t: float) -> None:
        """Audio-in thread, each chunk while the reply is held: go on at once after a sound that is not a voice;
        after a voice, once nothing of it has been heard for the end-of-turn silence and HOLD_GRACE_S more,
        and its utterance (if it made one) is over (see _hold_for_onset)."""
        mic = self.mic
        tracker = mic.tracker
        if mic.maybe_voice:
            self._hold_voiced = True  # kept to the end of the hold: the utterance may end before the grace does
        # with echo cancellation, what it let through; without it, a run long enough to be a word
        voiced = self._hold_voiced if mic.passed is not None else tracker.longest_run_s >= HOLD_MIN_RUN_S - 1e-9
        if not voiced:
            if not tracker.in_speech_run:
                self._release_onset_hold()  # a click, or the residue of our own echo: the reply goes on at once
            return
        if mic.maybe_voice or tracker.last_speech_end_t == end_t or not self._hold_voice_t:
            self._hold_voice_t = end_t
        quiet_s = self.config.speech.end_of_speech_silence_ms / 1000.0 + HOLD_GRACE_S
        if not tracker.in_utterance and end_t - self._hold_voice_t >= quiet_s - 1e-9:
            self._release_onset_hold()  # a cough or a word too short to interrupt: the reply goes on

    def _hold_for_onset(self) -> None:
        """Audio-in thread: a voice starts while the assistant speaks, or before a reply that is ready has
        begun: hold the reply's audio at once (as a person stops to listen, and does not start over someone).
        SpeechLong then interrupts it for good.

        With echo cancellation, a chunk the canceller let through that Silero finds above its lower threshold
        holds too (`MicrophoneChain.maybe_voice`): live, "Stop." under the assistant's echo often reached
        only 0.4 to 0.5. A sound that is not a voice lets the reply go on as soon as its run ends: with echo
        cancellation, one of which the canceller let no such chunk through (the residue of our own echo: 25
        dB or more below the microphone); without it, a run shorter than HOLD_MIN_RUN_S (a click).

        A voice, however short, holds the reply until none of it has been heard for the end-of-turn silence
        and HOLD_GRACE_S more: "Stop." heard as 32 to 130 ms (the canceller takes its start for echo), then
        a breath, then "tell me" must not let the reply go on in between (measured live: it did, for 300 ms
        to 1.2 s), and a room's echo canceller can make that breath look longer than the end-of-turn
        silence. A cough pauses the reply for about a second."""
        barge_in = self.config.barge_in
        if self._onset_hold and self.sink.paused:
            return  # a new run in the same utterance: already held
        if barge_in.barge_in and barge_in.pause_on_speech_onset and self._reply_due() and not self.mic.echo_unsafe():
            end_of_turn_s = self.config.speech.end_of_speech_silence_ms / 1000.0
            # at most until the sound's utterance could have ended, with room for a breath inside it
            self.sink.pause(max_s=barge_in.barge_in_min_speech_ms / 1000.0 + end_of_turn_s + HOLD_GRACE_S + 1.0)
            self._onset_hold = time.monotonic()
            self._hold_voice_t = 0.0
            self._hold_voiced = False

    def _release_onset_hold(self, interrupted: bool = False) -> None:
        """Audio-in thread: end the hold (after an interruption the queue is empty: nothing more plays)."""
        if self._onset_hold:
            if not interrupted:
                log.info("reply held %.0f ms for a sound too short to interrupt", 1000.0 * (time.monotonic() - self._onset_hold))
            self._onset_hold = 0.0
            self.sink.resume()

    def _cue(self, name: str) -> None:
        """Play the cue `name` ("heard", "thinking"), once echo cancellation knows the room."""
        if self.cues is not None and (self.mic is None or self.mic.echo_settled()):
            getattr(self.cues, name)()

    def _reply_due(self) -> bool:
        """A confirmed reply is sounding or about to (a voice heard now holds it: it must not begin over one)."""
        with self._lock:
            turn = self._active
            return turn is not None and not turn.tentative and not turn.playback_done

    def _assistant_speaking(self) -> bool:
        with self._lock:
            turn = self._active
            return turn is not None and bool(turn.timings.first_audio_t) and not turn.playback_done

    def _rejects(self, text: str, start_t: float, end_t: float, audio) -> str:
        with self._lock:
            turn = self._active
            playing = turn is not None and bool(turn.timings.first_audio_t) and not turn.playback_done
            recent = playing or end_t - self._last_play_end_t < self.defense.own_voice_tail_s
        return self.defense.rejects(text, start_t, end_t, audio, recent)

    def _on_spec_text(self, job: PauseSnapshot, text: str, text_t: float) -> None:
        """spec-asr thread: the utterance so far, transcribed during its end-of-turn silence."""
        if text and clean_for_speech(text):
            reason = self._rejects(text, job.speech_end_t - len(job.audio) / INPUT_RATE_HZ, job.speech_end_t, job.audio)
            if reason:
                log.info("ignored %r: %s", text, reason)
                text = ""
        if not self.speculation.cache.store(job.speech_end_t, text):
            return  # the user spoke again: a newer snapshot will come
        with self._lock:
            ended = self._endpoint_for == job.speech_end_t
            if not clean_for_speech(text):
                self._no_words_for = job.speech_end_t
        if not clean_for_speech(text):
            self._no_words_to_judge(job.speech_end_t)
            if ended:
                self._on_no_words()
        elif is_stop_command(text):
            self._no_words_to_judge(job.speech_end_t)
            self._on_stop_command(text)
        else:
            start_t = job.speech_end_t - len(job.audio) / INPUT_RATE_HZ
            fixed_reply = self._fixed_reply(text, start_t, job.speech_end_t)
            if fixed_reply:
                self._no_words_to_judge(job.speech_end_t)
            self._start_turn(text, job.speech_end_t, text_t, True, fixed_reply)

    def _no_words_to_judge(self, speech_end_t: float) -> None:
        """No reply will ask the model about this utterance's words: the sound of it ends the turn."""
        if self.turn_judge is not None:
            self.turn_judge.no_words(speech_end_t)

    def _on_turn_due(self, due: Endpoint) -> None:
        """Audio-in thread: the silence has ended the turn, which stays open until its answer is ready
        (endpointing.py, `open_until_answer`): the "thinking" cue says so now, as it did at the end of turn."""
        self._thinking_cued_for = due.speech_end_t
        with self._lock:
            turn = self._active
            waiting = (turn is not None and turn.tentative and turn.timings.speech_end_t == due.speech_end_t
                       and not turn.timings.first_audio_ready_t)  # fmt: skip
        if waiting:
            self._cue("thinking")

    def _on_endpoint(self, event: Endpoint) -> None:
        """Audio-in thread (or the tts thread, when a turn held open for its answer ends as the answer is
        ready): the user's turn is over; play the speculative answer if it is ready. Idempotent."""
        with self._lock:
            self._endpoint_for, self._endpoint_how = event.speech_end_t, event.how
            turn = self._active
            no_words = self._no_words_for == event.speech_end_t
            promote = turn is not None and turn.tentative and turn.timings.speech_end_t == event.speech_end_t
            if promote:
                turn.tentative = False
                turn.timings.endpoint_t = time.monotonic()
                turn.timings.end_of_turn = event.how
                self.speech.release(turn.turn_id)
        if promote:
            chat_log.info("You: %s", turn.user_text)
            if not turn.timings.first_audio_ready_t and self._thinking_cued_for != event.speech_end_t:
                self._cue("thinking")  # the held answer is not ready yet: say that it is coming
            if self._check_loop(turn) and self._drop_active(turn):  # say the loop message instead
                self.sink.clear()
                self.submit_user_text(turn.user_text, turn.timings.speech_end_t, turn.timings.text_t)
        elif no_words:
            self._on_no_words()

    def on_final_text(self, text: str, speech_end_t: float, text_t: float, audio=None) -> None:
        """asr thread: RealtimeSTT's transcript of a finished utterance (`audio`: what it transcribed)."""
        if self.speculation is not None and self.speculation.cache.take_served():
            return  # RealtimeSTT confirmed the utterance we already answered speculatively
        if not clean_for_speech(text):
            self._on_no_words()
            return
        start_t = speech_end_t - (len(audio) / INPUT_RATE_HZ if audio is not None else 2.0)
        reason = self._rejects(text, start_t, speech_end_t, audio)
        if reason:
            log.info("ignored %r: %s", text, reason)
            self._on_no_words()
        elif is_stop_command(text):
            self._on_stop_command(text)
        else:
            self._start_turn(text.strip(), speech_end_t, text_t, False, self._fixed_reply(text, start_t, speech_end_t))

    def _fixed_reply(self, text: str, start_t: float, end_t: float) -> str:
        """What to say instead of asking the LLM about `text`, if anything."""
        unclear = self.defense.unclear_talk_over(text, start_t, end_t)
        if unclear:
            log.info("%r: %s; asking again", text, unclear)
            return SAY_AGAIN_REPLY
        return ""

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
            cut, self._resumable = self._resumable, None
            if cut is None or self._active is not None:
                return
            turn = Turn(self.turns.advance(), cut.user_text, TurnTimings(cut.timings.speech_end_t, cut.timings.text_t))
            done = max(cut.heard_index + (1 if cut.heard_progress >= 0.999 else 0), 0)
            turn.resumed_from, turn.sentences, turn.fixed_reply = cut.turn_id, cut.sentences[:done], cut.fixed_reply
            turn.prompt, turn.llm_done = cut.prompt, cut.llm_done
            self._active = turn
        log.info("no words in the interruption: resuming turn %d at sentence %d", cut.turn_id, done + 1)
        self.llm_worker.put(Resume(turn.turn_id, tuple(cut.sentences[done:]), cut.llm_done))

    # ------------------------------------------------------------------ turns

    def _language_of(self, text: str) -> str:
        """The language the user spoke `text` in: --language, or what the recogniser detected."""
        scores = self.defense.scores
        return turn_language(self.config.speech.language, text, scores.language_of(text) if scores else None)

    def submit_user_text(self, text: str, speech_end_t: float = 0.0, text_t: float = 0.0) -> int:
        """Answer `text` as a new turn (any thread); returns its turn id."""
        return self._start_turn(text, speech_end_t, text_t, speculative=False)

    def _start_turn(self, text: str, speech_end_t: float, text_t: float, speculative: bool,
                    fixed_reply: str = "") -> int:  # fmt: skip
        """A new turn; a speculative one stays tentative (held) until its utterance's endpoint.
        With `fixed_reply` that is said instead of asking the LLM."""
        now = time.monotonic()
        text = fit_user_text(text)
        self.prompt_warmer.turn_started()  # before the old turn's commit could send a warm-up this turn makes moot
        with self._lock:
            old = self._active
            turn = Turn(self.turns.advance(), text, TurnTimings(speech_end_t or now, text_t or now))
            turn.speculative = speculative
            turn.fixed_reply = fixed_reply
            turn.language = self._language_of(text)
            turn.tentative = speculative and self._endpoint_for != speech_end_t
            if speculative and not turn.tentative:
                turn.timings.end_of_turn = self._endpoint_how  # the turn ended before its words were transcribed
            if turn.tentative:
                self.speech.hold(turn.turn_id)
                if self.mic is not None:  # the turn stays open until this answer can play (endpointing.py)
                    self.mic.tracker.set_answer(turn.timings.speech_end_t, ready=False)
            else:
                self._resumable = None
            self._active = turn
        if old is not None and old.tentative:
            if old.stream is not None:
                old.stream.abort()
        elif old is not None:
            self._stop_turn(old, reason="new user turn")
        self.summarizer.abort()
        if not turn.tentative:
            chat_log.info("You: %s", text)
            self._cue("thinking")
            self._check_loop(turn)
        self.llm_worker.put(Respond(turn.turn_id))
        return turn.turn_id

    def _check_loop(self, turn: Turn) -> bool:
        """True if the loop breaker stops `turn` (its fixed reply is then the loop message)."""
        breaker = self.defense.loop_breaker
        if breaker is not None:
            decision = breaker.user_turn(turn.user_text, time.monotonic())
            if decision.stop:
                log.warning("conversation loop detected (%s): not answering", decision.reason)
                turn.fixed_reply = decision.message
                return True
        return False

    def _cancel_tentative(self) -> None:
        with self._lock:
            turn = self._active
        if turn is not None and self._drop_active(turn, only_if_tentative=True):
            log.debug("speculative turn %d dropped: the user went on speaking", turn.turn_id)

    def _drop_active(self, turn: Turn, only_if_tentative: bool = False) -> bool:
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
            self._resumable = turn if self.config.barge_in.resume_after_false_interruption else None
        self._stop_turn(turn, reason="barge-in")
        with self._lock:
            self.defense.note_cut(turn)
            self.defense.talked_over_t = onset_t or decision_t
            record = barge_in_record(turn.turn_id, onset_t, decision_t, turn.timings.last_block_end_t,
                                     len(words_in(turn.heard_text())), self.t0)  # fmt: skip
        self.metrics.add_barge_in(record)
        self.control_worker.put(WriteRecords(None))
        log.info("barge-in: turn %d stopped (detect %s ms, stop %s ms)", turn.turn_id,
                 record["barge_in_detect_ms"], record["barge_in_stop_ms"])  # fmt: skip
        return True

    def _stop_turn(self, turn: Turn, reason: str) -> None:
        """Silence and abandon `turn` (already made stale), then record what was heard."""
        self.sink.clear()
        with self._lock:
            stream = turn.stream
        if stream is not None:
            stream.abort()
        self._commit(turn, interrupted=not turn.playback_done, reason=reason)

    def _commit(self, turn: Turn, interrupted: bool, reason: str = "") -> None:
        """Record a finished or interrupted turn in history, transcript and metrics (once)."""
        with self._lock:
            if turn.committed or turn.tentative:
                return  # a tentative turn was never heard: it leaves no trace
            turn.committed = True
            heard = turn.heard_text() if interrupted else turn.full_text()
        if self.defense.loop_breaker is not None and heard:
            self.defense.loop_breaker.assistant_replied(heard)
        if turn.fixed_reply:
            pass  # "say that again", the loop breaker: not the model's words, and Qwen 0.5B copied them (live)
        elif turn.resumed_from:
            self.history.replace_last_assistant(heard, interrupted)
        else:
            self.history.add(Exchange(turn.user_text, heard, interrupted))
        record = turn_record(turn, heard, interrupted, reason, self.t0, len(self.history))
        self.metrics.add(record)
        self.control_worker.put(WriteRecords({"turn": turn.turn_id, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                              "user": turn.user_text, "assistant": heard, "interrupted": interrupted}))
        if heard or not interrupted:
            chat_log.info("Assistant: %s%s", heard, " [interrupted]" if interrupted else "")
        log.info(format_turn(record))
        if not self._stopping.is_set():
            self.prompt_warmer.warm_async()  # the next turn's prompt head, read before the user speaks again

    # ------------------------------------------------------------------ LLM thread

    def _turn_if_current(self, turn_id: int) -> Turn | None:
        with self._lock:
            turn = self._active
        return turn if turn is not None and turn.turn_id == turn_id and self.turns.is_current(turn_id) else None

    def _on_llm_item(self, item: Respond | Resume) -> None:
        turn = self._turn_if_current(item.turn_id)
        if turn is None:
            return
        try:
            self._answer(turn, item)
        except Exception:  # a bug or an unconverted error must still end the turn, audibly
            log.exception("turn %d: the reply failed", turn.turn_id)
            if not turn.llm_done:
                self._emit_error_reply(turn, LLM_ERROR_REPLY)

    def _answer(self, turn: Turn, item: Respond | Resume) -> None:
        if isinstance(item, Resume):  # speak what was never played, then let the model go on
            for text in item.pending:
                self._emit(turn, text)
            prompt = None if item.llm_done else self.client.continue_prompt(turn.prompt, " ".join(turn.sentences))
            if prompt is None:  # the model had finished, or its API cannot continue a reply
                self.speech.put(EndOfText(turn.turn_id))
            else:
                self._speak_reply(turn, prompt, continuation=True)
            return
        judge_words = self.turn_judge is not None and turn.speculative and turn.tentative
        if turn.fixed_reply:
            self._emit_error_reply(turn, turn.fixed_reply)
            return
        if self.supervisor is not None and not self.supervisor.wait_settled():
            if judge_words:
                self._no_words_to_judge(turn.timings.speech_end_t)
            self._emit_error_reply(turn, LLM_UNAVAILABLE_REPLY)
            return
        turn.timings.llm_start_t = time.monotonic()
        try:
            user_text = with_reply_hint(turn.user_text, self.config.speech.language, turn.language)
            messages = self.history.messages(self.config.system_prompt(), user_text)
            turn.prompt = self.client.apply_template(messages)
        except LLMError as exc:
            if judge_words:
                self._no_words_to_judge(turn.timings.speech_end_t)
            log.error("language model unavailable: %s", exc)
            self._fail(turn, exc, LLM_ERROR_REPLY)
            return
        if judge_words:  # before the reply: does the user's message end after these words?
            turn.timings.words_probability = self.turn_judge.judge_words(
                self.client, turn.timings.speech_end_t, turn.prompt, turn.user_text)
            turn.timings.words_judged_t = time.monotonic()
        self._speak_reply(turn, turn.prompt, continuation=False, build_end_t=time.monotonic())

    def _speak_reply(self, turn: Turn, prompt: str, continuation: bool, build_end_t: float = 0.0) -> None:
        """Stream the reply and hand each sentence to TTS; on failure, an apology after what was said."""
        start_index = len(turn.sentences)
        build_start_t = turn.timings.llm_start_t if not continuation else time.monotonic()
        try:
            reply = self.replies.open(prompt, first_chunk=not (continuation or start_index), continuation=continuation)
        except LLMError as exc:  # e.g. an OpenAI server that lists no model
            log.error("turn %d: %s", turn.turn_id, exc)
            self._fail(turn, exc, LLM_ERROR_REPLY)
            return
        with self._lock:
            if not self.turns.is_current(turn.turn_id):
                return
            turn.stream = reply
        error = None
        try:
            for sentence in reply.sentences(lambda: self.turns.is_current(turn.turn_id)):
                self._emit(turn, sentence)
        except LLMError as exc:
            error = exc
        turn.raw_text += reply.raw_text
        turn.llm = llm_breakdown(build_start_t, build_end_t or build_start_t, reply.stats)
        turn.timings.first_token_t = turn.timings.first_token_t or reply.stats.first_token_t
        nothing_said = len(turn.sentences) == start_index and not continuation
        if error is not None:
            log.error("turn %d: %s", turn.turn_id, error)
            if nothing_said and isinstance(error, LLMContextOverflow) and not turn.retried and len(self.history):
                turn.retried = True  # keep only the last two exchanges and ask again, once
                dropped = max(1, len(self.history) - 2)
                self.history.drop_oldest(dropped)
                log.warning("turn %d: the prompt did not fit the model's context; dropped %d old exchanges",
                            turn.turn_id, dropped)  # fmt: skip
                self._answer(turn, Respond(turn.turn_id))
            else:
                self._fail(turn, error, LLM_SLOW_REPLY if isinstance(error, LLMTooSlowError) else LLM_ERROR_REPLY)
        elif self.turns.is_current(turn.turn_id):
            turn.llm_done = True
            if nothing_said:
                log.warning("turn %d: the model returned no speakable text", turn.turn_id)
            self.speech.put(EndOfText(turn.turn_id))

    def _emit(self, turn: Turn, text: str) -> None:
        with self._lock:
            if not self.turns.is_current(turn.turn_id):
                return
            turn.sentences.append(text)
            index = len(turn.sentences) - 1
            turn.timings.first_sentence_t = turn.timings.first_sentence_t or time.monotonic()
        self.speech.put(SentenceItem(turn.turn_id, index, text))

    def _emit_error_reply(self, turn: Turn, text: str) -> None:
        """End the turn with a short spoken message (after whatever was already said), in the user's language."""
        self._emit(turn, MANDARIN_REPLIES.get(text, text) if turn.language == "zh" else text)
        turn.llm_done = True
        self.speech.put(EndOfText(turn.turn_id))

    def _fail(self, turn: Turn, exc: LLMError, reply: str) -> None:
        self._emit_error_reply(turn, reply)
        if self.supervisor is not None:
            self.supervisor.report_failure(exc)  # the monitor thread checks and restarts

    # ------------------------------------------------------------------ playback and control

    def _on_audio_ready(self, turn_id: int, ready_t: float) -> None:
        """tts thread: a chunk of `turn_id` is synthesized. The first of a turn held open for it
        (endpointing.py, `open_until_answer`) ends that turn now if its silence already has."""
        with self._lock:
            turn = self._active
            if turn is None or turn.turn_id != turn_id or turn.timings.first_audio_ready_t:
                return
            turn.timings.first_audio_ready_t = ready_t
            held_open = turn.tentative and self.mic is not None
        if held_open:
            tracker = self.mic.tracker
            tracker.set_answer(turn.timings.speech_end_t, ready=True)
            due = tracker.due
            if due is not None and due.speech_end_t == turn.timings.speech_end_t:
                self._on_endpoint(due)  # the audio-in thread sends the same Endpoint at its next chunk: a no-op then

    def _on_played_samples(self, samples, play_t: float, reference=None) -> None:
        """Playback thread: exactly what was played feeds the room; the reply alone, the echo canceller."""
        self.mic.on_played(samples, self.sink.sample_rate_hz, play_t, reference)

    def _on_play(self, item, play_t: float) -> None:
        """Playback thread: `item` starts sounding at `play_t`. Must stay fast."""
        with self._lock:
            turn = self._active
            if turn is None or turn.turn_id != item.turn_id:
                return
            if isinstance(item, EndOfReply):
                turn.playback_done = True
                self.control_worker.put(ReplyPlayed(turn.turn_id))
                return
            end_t = play_t + len(item.samples) / self.sink.sample_rate_hz
            self.defense.note_block(turn, item, play_t, end_t)
            turn.timings.first_audio_t = turn.timings.first_audio_t or play_t
            turn.heard_index, turn.heard_progress = item.sentence_index, item.sentence_progress
            turn.timings.last_block_end_t = self._last_play_end_t = end_t

    def _on_control_item(self, item: ReplyPlayed | WriteRecords) -> None:
        """control thread: write records to disk, or finish a reply that has played to its end."""
        if isinstance(item, WriteRecords):
            if item.transcript is not None:
                self.transcript.write(item.transcript)
            self.metrics.flush()
            return
        with self._lock:
            turn = self._active
            if turn is None or turn.turn_id != item.turn_id:
                return  # interrupted or replaced meanwhile: already committed
            self._active = None
            self._resumable = None
        self._commit(turn, interrupted=False)
        self.summarizer.maybe_summarize()


# ---------------------------------------------------------------------- command line


def wait_for_file_mode(system: VoiceConversationSystem, stop: threading.Event, settle_s: float = 1.5,
                       tail_limit_s: float = 120.0) -> None:  # fmt: skip
    """File mode: return once the input is exhausted and the assistant has stayed idle `settle_s`."""
    while not system.source.exhausted.wait(0.1):
        if stop.is_set():
            return
    deadline = time.monotonic() + tail_limit_s
    idle_since = 0.0
    while not stop.wait(0.05):
        now = time.monotonic()
        idle_since = (idle_since or now) if system.is_idle() else 0.0
        if idle_since and now - idle_since >= settle_s:
            return
        if now > deadline:
            log.warning("assistant still busy %.0f s after the input ended; stopping", tail_limit_s)
            return


def configure_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level), format="%(message)s", stream=sys.stdout)
    for noisy in ("RealtimeSTT", "realtimestt", "faster_whisper", "httpx", "httpcore", "piper"):
        logging.getLogger(noisy).setLevel(logging.WARNING if level != "DEBUG" else logging.DEBUG)


def main(argv=None) -> int:
    from voice_assistant.assembly import divert_native_stderr, state_dir
    from voice_assistant.cli import HelpShown, format_error, parse_command_line
    from voice_assistant.config import ConfigError, to_toml

    try:
        config, actions = parse_command_line(argv)
    except HelpShown:
        return 0
    except ConfigError as exc:
        print(format_error(str(exc)), file=sys.stderr)
        return 2
    if actions.print_config:
        print(to_toml(config), end="")
        return 0
    configure_logging(config.logging.log_level)
    log_thread_deaths()
    if actions.list_models or actions.list_voices:  # what is installed: no device, no model loaded
        from voice_assistant import console_tools as tools

        sections = [tools.format_models(tools.installed_models())] if actions.list_models else []
        sections += [tools.format_voices(tools.installed_voices())] if actions.list_voices else []
        print("\n\n".join(sections))
        return 0
    opens_devices = config.audio.input_wav is None or actions.test or actions.list_devices or actions.sound_check
    if opens_devices and config.logging.log_level != "DEBUG":
        divert_native_stderr(state_dir() / "native-stderr.log")  # audio devices are about to be opened
    if actions.list_devices or actions.sound_check:
        from voice_assistant.console_tools import device_list_text, run_sound_check

        try:
            if actions.list_devices:
                print(device_list_text())
                return 0
            return run_sound_check(config.audio.input_device, config.audio.output_device)
        except VoiceAssistantError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    if actions.test:
        from voice_assistant.selftest import run_self_test

        return run_self_test(config)
    return converse(config)


def converse(config) -> int:
    """The conversation, until Ctrl-C, SIGTERM, the end of file mode's input or of piped --text input.

    On a terminal (and without --plain) the live view shows it and typed lines are turns too; with
    --text typing is the only way in."""
    from voice_assistant.console import ConsoleView, Keyboard

    launch_t = time.monotonic()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    # Ctrl-C stops us even when we were started with SIGINT ignored (a background job of a shell without
    # job control, as `cmd &` in a script, passes that on, and Python then never raises KeyboardInterrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    system = keyboard = view = error = None
    live = config.audio.input_wav is None
    try:
        system = VoiceConversationSystem.from_config(config)
        system.start()
        use_view = live and sys.stdout.isatty() and not config.console.plain
        if live and (config.console.text or sys.stdin.isatty()):
            def answer_then_wait(text: str) -> None:  # a piped line waits for the answer to the one before
                system.submit_user_text(text)
                wait_until_idle(system, stop)

            keyboard = Keyboard(system.submit_user_text if sys.stdin.isatty() else answer_then_wait, keys=use_view)
            keyboard.start()
        if use_view:
            view = ConsoleView(system, keyboard=keyboard)
            view.start()
        how = "type a line and press Enter" if config.console.text else "speak"
        log.info("listening (ready %.1f s after launch)%s", time.monotonic() - launch_t,
                 f"; {how}; press Ctrl-C to quit" if live else "")  # fmt: skip
        if not live:
            wait_for_file_mode(system, stop)  # Ctrl-C (KeyboardInterrupt) or SIGTERM end it early
        elif keyboard is not None and not keyboard.interactive and config.console.text:
            wait_for_piped_text(system, keyboard, stop)
        else:
            # Not stop.wait(): a SIGTERM the kernel hands to one of the native threads (PortAudio,
            # onnxruntime) only sets CPython's flag, and a main thread asleep without a timeout never
            # runs the handler (measured: 1 stop in 4 hung in the live tests).
            while not stop.wait(0.2):
                pass
    except VoiceAssistantError as exc:
        error = str(exc)
    except KeyboardInterrupt:
        pass
    finally:
        for part in (view, keyboard):
            if part is not None:
                part.stop()  # the terminal as it was, before anything else is printed
        if system is not None:
            from voice_assistant.assembly import state_dir

            arm_exit_watchdog(EXIT_LIMIT_S, state_dir() / "shutdown-hang.log")
            system.close()  # every part stopped, in order, before the last line and the exit
    if error is not None:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def wait_for_piped_text(system, keyboard, stop: threading.Event) -> None:
    """--text from a pipe: until its lines are read and the last one is answered."""
    while not keyboard.ended.is_set() and not stop.wait(0.1):
        pass
    wait_until_idle(system, stop)


def wait_until_idle(system, stop: threading.Event, limit_s: float = 600.0) -> None:
    """Until `system` has been idle for half a second (the turn answered and spoken), `stop` or `limit_s`."""
    deadline = time.monotonic() + limit_s
    settled = 0
    while settled < 10 and time.monotonic() < deadline and not stop.wait(0.05):
        settled = settled + 1 if system.is_idle() else 0

if __name__ == "__main__":
    sys.exit(main())
