"""Per-turn timings: recorded as plain dicts, printed as one line, written as JSON lines."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from .files import JsonLinesFile
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
        "end_of_turn": timing.end_of_turn or None,
        "words_ending_probability": (None if timing.words_probability is None
                                     else round(timing.words_probability, 4)),  # fmt: skip
        "first_audio_s": round(timing.first_audio_t - t0, 3) if timing.first_audio_t else None,
        "history_exchanges": history_exchanges,
        "timeline_ms": {  # each event relative to the end of the user's speech
            "transcript": ms(end, timing.text_t),
            "llm_request": ms(end, timing.llm_start_t),
            "words_judged": ms(end, timing.words_judged_t),
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
    """Every turn's and every barge-in's metrics as JSON lines (`--metrics-json`), read back with
    `read_metrics()`.

    Each line is one record with its `kind`: `turn`, `barge_in`, or at exit `summary`. `add()` and
    `add_barge_in()` only record in memory (any thread, never blocking on the disk); `flush()` (the
    control thread) appends what is new, so a session of any length costs O(1) per turn. A disk that
    fails costs one log line and the file is not written any more; the conversation goes on. In
    memory only the last `keep` turns and barge-ins are kept.
    """

    def __init__(self, path: Path | None, keep: int = 10_000) -> None:
        self.file = JsonLinesFile(path, "the metrics file")
        self.keep = keep
        self.turns: list[dict] = []
        self.barge_ins: list[dict] = []
        self.summary: dict = {}
        self._lock = threading.Lock()
        self._pending: list[dict] = []  # records not yet on disk

    def add(self, metrics: dict) -> None:
        self._record("turn", metrics, self.turns)

    def add_barge_in(self, record: dict) -> None:
        self._record("barge_in", record, self.barge_ins)

    def _record(self, kind: str, record: dict, kept: list[dict]) -> None:
        with self._lock:
            kept.append(record)
            del kept[: -self.keep]
            self._pending.append({"kind": kind, **record})
            del self._pending[: -self.keep]

    def set_summary(self, summary: dict) -> None:
        """Whole-session figures (echo cancellation and the like), written at exit."""
        with self._lock:
            self.summary = summary
            self._pending.append({"kind": "summary", **summary})
        self.flush()

    def flush(self) -> None:
        """Append what is new (control thread, and at exit)."""
        with self._lock:
            pending, self._pending = self._pending, []
        self.file.write(*pending)

    def close(self) -> None:
        self.flush()
        self.file.close()


def read_metrics(path: Path) -> dict:
    """A `--metrics-json` file as {"turns": [...], "barge_ins": [...], "summary": {...}}."""
    document: dict = {"turns": [], "barge_ins": [], "summary": {}}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        kind = record.pop("kind")
        if kind == "summary":
            document["summary"] = record
        else:
            document[{"turn": "turns", "barge_in": "barge_ins"}[kind]].append(record)
    return document


class TranscriptFile(JsonLinesFile):
    """JSON lines, one per finished turn, appended, flushed and fsynced at once; readable by the user only.

    Written on the control thread. A disk that fails costs one log line and the transcript is no
    longer written; the conversation goes on."""

    def __init__(self, path: Path | None) -> None:
        super().__init__(path, "the transcript")
