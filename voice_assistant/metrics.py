"""Per-turn timings: recorded as plain dicts, printed as one line, written as JSON."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
from pathlib import Path

from .llm_client import StreamStats

log = logging.getLogger(__name__)


def ms(start: float, end: float) -> float | None:
    """Milliseconds from `start` to `end` (monotonic seconds), None if either is unknown."""
    if not start or not end:
        return None
    return round((end - start) * 1000.0, 1)


def llm_breakdown(build_start_t: float, build_end_t: float, stats: StreamStats) -> dict:
    """The seed's LLM timing breakdown for one streamed completion."""
    generation_s = (stats.end_t - stats.first_token_t) if stats.first_token_t and stats.end_t else 0.0
    tokens = stats.tokens
    return {
        "build_prompt": ms(build_start_t, build_end_t),
        "pre_request_gap": ms(build_end_t, stats.open_t),
        "network_server_first_byte": ms(stats.sent_t, stats.first_byte_t),
        "first_sse_line_after_send": ms(stats.sent_t, stats.first_line_t),
        "first_token_latency_total": ms(build_start_t, stats.first_token_t),
        "generation_phase": {
            "ms": round(generation_s * 1000.0, 1),
            "tokens": tokens,
            "tokens_per_s": round((tokens - 1) / generation_s, 1) if generation_s > 0 and tokens > 1 else None,
        },
        "end_to_end": ms(build_start_t, stats.end_t),
        "server_prompt_ms": stats.server_timings.get("prompt_ms"),
        "server_cached_tokens": stats.server_timings.get("cache_n"),
        "server_prompt_tokens": stats.server_timings.get("prompt_n"),
    }


def turn_record(turn, heard: str, interrupted: bool, reason: str, t0: float, history_exchanges: int) -> dict:
    """The metrics of a finished or interrupted `turns.Turn`, as written to --metrics-json."""
    timing = turn.timings
    end = timing.speech_end_t
    return {
        "turn": turn.turn_id,
        "user": turn.user_text,
        "assistant_heard": heard,
        "interrupted": interrupted,
        "end_reason": reason or "finished",
        "speech_end_s": round(end - t0, 3),
        "asr_ms": ms(end, timing.text_t),
        "llm": turn.llm,
        "tts_first_chunk_ms": ms(timing.first_sentence_t, timing.first_audio_ready_t),
        "voice_to_voice_ms": ms(end, timing.first_audio_t),
        "speculative": turn.speculative,
        "first_audio_s": round(timing.first_audio_t - t0, 3) if timing.first_audio_t else None,
        "history_exchanges": history_exchanges,
        "timeline_ms": {  # each event relative to the end of the user's speech
            "transcript": ms(end, timing.text_t),
            "llm_request": ms(end, timing.llm_start_t),
            "first_token": ms(end, timing.first_token_t),
            "first_sentence": ms(end, timing.first_sentence_t),
            "first_audio_ready": ms(end, timing.first_audio_ready_t),
            "end_of_turn": ms(end, timing.endpoint_t or timing.text_t),
            "first_audio_played": ms(end, timing.first_audio_t),
        },
    }


def barge_in_record(turn_id: int, onset_t: float, decision_t: float, last_block_end_t: float, words_kept: int,
                    t0: float) -> dict:  # fmt: skip
    """One barge-in: how long detection took, and how long the assistant's voice went on after it."""
    stop_ms = max(0.0, (last_block_end_t - decision_t) * 1000.0) if last_block_end_t else 0.0
    return {
        "turn": turn_id,
        "barge_in_detect_ms": ms(onset_t, decision_t) if onset_t else None,
        "barge_in_stop_ms": round(stop_ms, 1),
        "words_kept": words_kept,
        "decision_t_s": round(decision_t - t0, 3),
    }


def format_turn(metrics: dict) -> str:
    """One human line per turn."""
    llm = metrics.get("llm") or {}
    gen = llm.get("generation_phase") or {}

    def f(value, unit=" ms"):
        return "-" if value is None else f"{value:.0f}{unit}"

    return (
        f"turn {metrics['turn']}: asr {f(metrics.get('asr_ms'))} | prompt {f(llm.get('build_prompt'))}"
        f" | first byte {f(llm.get('network_server_first_byte'))}"
        f" | first token {f(llm.get('first_token_latency_total'))}"
        f" | {gen.get('tokens', 0)} tok @ {f(gen.get('tokens_per_s'), ' tok/s')}"
        f" | tts first chunk {f(metrics.get('tts_first_chunk_ms'))}"
        f" | voice-to-voice {f(metrics.get('voice_to_voice_ms'))}"
        + (" | interrupted" if metrics.get("interrupted") else "")
    )


class MetricsFile:
    """Every turn's and every barge-in's metrics as one JSON document (`--metrics-json`).

    `add()` and `add_barge_in()` only record in memory (any thread, never blocking on the disk);
    `flush()` (the control thread) rewrites the file atomically: a new 0600 file with a unique name
    beside it, fsynced, then renamed over it. A disk that fails (full, read-only, folder removed)
    costs one log line and the file is no longer written; the conversation goes on. In memory only
    the last `keep` turns and barge-ins are kept (the file then holds those).
    """

    def __init__(self, path: Path | None, keep: int = 10_000) -> None:
        self.path = Path(path) if path else None
        self.keep = keep
        self.turns: list[dict] = []
        self.barge_ins: list[dict] = []
        self.summary: dict = {}
        self._lock = threading.Lock()
        self._dirty = False
        self._failed = False

    def add(self, metrics: dict) -> None:
        with self._lock:
            self.turns.append(metrics)
            del self.turns[: -self.keep]
            self._dirty = True

    def add_barge_in(self, record: dict) -> None:
        with self._lock:
            self.barge_ins.append(record)
            del self.barge_ins[: -self.keep]
            self._dirty = True

    def set_summary(self, summary: dict) -> None:
        """Whole-session figures (echo cancellation and the like), written at exit."""
        with self._lock:
            self.summary = summary
            self._dirty = True
        self.flush()

    def flush(self) -> None:
        """Write what changed (control thread, and at exit)."""
        with self._lock:
            if self.path is None or self._failed or not self._dirty:
                return
            document = json.dumps({"turns": self.turns, "barge_ins": self.barge_ins, "summary": self.summary}, indent=1)
            self._dirty = False
            try:
                write_private_atomically(self.path, document)
            except OSError as exc:
                self._failed = True
                log.error("cannot write the metrics file %s (%s); not writing it any more", self.path, exc.strerror or exc)


def write_private_atomically(path: Path, text: str) -> None:
    """Replace `path` by `text`: a new 0600 file with a unique name in the same folder, fsynced, renamed."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class TranscriptFile:
    """JSON lines, one per finished turn, appended, flushed and fsynced at once; readable by the user only.

    Written on the control thread. A disk that fails costs one log line and the transcript is no
    longer written; the conversation goes on."""

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path else None
        self._lock = threading.Lock()
        self._failed = False
        if self.path is not None:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._file = os.fdopen(fd, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        if self.path is None:
            return
        with self._lock:
            if self._failed:
                return
            try:
                self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
                self._file.flush()
                os.fsync(self._file.fileno())
            except OSError as exc:
                self._failed = True
                log.error("cannot write the transcript %s (%s); not writing it any more", self.path, exc.strerror or exc)

    def close(self) -> None:
        if self.path is not None:
            with self._lock:
                with contextlib.suppress(OSError):  # the last write already said why it failed
                    self._file.close()
