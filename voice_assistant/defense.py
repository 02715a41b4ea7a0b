"""What keeps the assistant from answering its own voice, or a voice that is not its user's.

`SelfSpeechDefense.rejects()` is the one judgement on a transcribed utterance: an echo of what
the assistant just said (transcript guard), the assistant's own voice (voiceprint of its Piper
voice), or, with `--speaker-lock`, not the enrolled user. The loop breaker stops conversations
with itself. Echo cancellation itself happens earlier, in the microphone chain (mic.py).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from .audio_io import INPUT_RATE_HZ
from .turns import heard_words


@dataclass
class SelfSpeechDefense:
    """The guards on transcripts. Every part is optional."""

    transcript_guard: object = None  # guards.EchoTranscriptGuard: transcripts of our own recent speech
    own_voice: object = None  # guards.OwnVoiceGuard: utterances in the assistant's voice (or not the user's)
    loop_breaker: object = None  # guards.LoopBreaker: repeated self-similar turns
    speaker_lock: bool = False  # answer only the enrolled user's voice
    own_voice_tail_s: float = 3.0  # check voices during playback and this long after it, in seconds
    scores: object = None  # asr.TranscriptScores: how sure the recogniser was of each recent transcript
    talk_over_min_logprob: float = -0.5  # --talk-over-min-logprob
    talked_over_t: float = 0.0  # onset of the latest barge-in (monotonic seconds)
    enrollment: threading.Thread | None = None  # the own-voice enrollment, running beside start-up
    closing: threading.Event = field(default_factory=threading.Event)

    def close(self, timeout_s: float) -> None:
        """Stop the own-voice enrollment between its steps and wait for it (native code must not run at exit)."""
        self.closing.set()
        if self.enrollment is not None:
            self.enrollment.join(timeout_s)

    def rejects(self, text: str, start_t: float, end_t: float, audio: np.ndarray | None, recently_played: bool) -> str:
        """Why an utterance must not be answered ('' if it may). `recently_played`: the assistant was
        speaking, or stopped less than `own_voice_tail_s` before `end_t`."""
        guard = self.transcript_guard
        if guard is not None:
            match = guard.match(text, start_t, end_t)
            if match.is_echo:
                return f"echo of the assistant ({match.coverage:.0%} of its words)"
        own = self.own_voice
        if self.speaker_lock:  # fails closed: what cannot be verified is not answered
            score = None if audio is None or own is None else own.user_score(audio, INPUT_RATE_HZ)
            if score is None:
                return "the speaker cannot be verified (too little speech)"
            if score < own.config.user_threshold:
                return f"not the enrolled speaker (score {score:.2f})"
        if own is not None and audio is not None and getattr(own, "assistant", None) is not None and recently_played:
            check = own.is_own_voice(audio, INPUT_RATE_HZ)
            if check.is_own:
                return f"the assistant's own voice (score {check.own_score:.2f})"
        return ""

    def unclear_talk_over(self, text: str, start_t: float, end_t: float) -> str:
        """Why an utterance that talked over the assistant is too unclear to answer ('' if it is not).

        While both speak, the echo canceller's suppressor takes 2 to 6 dB and whole bands off the
        user's first words (measured live through PulseAudio, scripts/bench_live_echo.py), and the
        recogniser turns "Why is the sky blue?" into "Right in the high blue." Its own mean
        log-probability tells: 0.53 to 0.77 nats per token below zero for such utterances, 0.1
        to 0.4 for the same questions asked in the clear. A person would ask again; so does this."""
        onset = self.talked_over_t
        if self.scores is None or not onset or not start_t - 0.5 <= onset <= end_t:
            return ""
        score = self.scores.score_of(text)
        if score is None or score >= self.talk_over_min_logprob:
            return ""
        return f"it talked over the assistant and is unclear (mean log-probability {score:.2f})"

    def note_block(self, turn, block, play_t: float, end_t: float) -> None:
        """Playback thread: `block` of `turn` (a turns.Turn) sounds from `play_t` to `end_t`; the
        transcript guard learns what the microphone may hear of us, sentence by sentence."""
        guard = self.transcript_guard
        if guard is None or block.sentence_index >= len(turn.sentences):
            return
        key = (turn.turn_id, block.sentence_index)
        if block.sentence_index != turn.heard_index:
            guard.note_playing(key, turn.sentences[block.sentence_index], play_t)
        if block.sentence_progress >= 0.999:
            guard.note_played(key, end_t)

    def note_cut(self, turn) -> None:
        """`turn` was interrupted: only the words of its current sentence that played can echo."""
        index = turn.heard_index
        if self.transcript_guard is not None and 0 <= index < len(turn.sentences):
            heard = heard_words(turn.sentences[index], turn.heard_progress)
            self.transcript_guard.note_played((turn.turn_id, index), turn.timings.last_block_end_t, heard_text=heard)
