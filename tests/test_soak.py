"""A long session in one process: 100 turns with barge-ins, no leaks, nothing lost (about 8 minutes)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from soak import run_soak  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.soak]


def test_hundred_turns_with_barge_ins(tmp_path):
    result = run_soak(100, tmp_path)
    print(result)
    assert result["exit_code"] == 0 and result["tracebacks"] == 0
    assert result["turns"] >= 90  # espeak questions: a few may merge or be misheard
    assert result["barge_ins"] >= 15 and result["interrupted_turns"] >= 15
    assert result["transcript_matches_turns"] and result["transcript_lines"] == result["turns"]
    assert result["max_history_exchanges"] <= 12  # --history-trim-threshold
    # threads that come and go: the summarizer, the summary's cache warm-up, the device watcher and
    # RealtimeSTT's workers; at most +3 in every run until 2026-12-01, when one CI run peaked at +4 (22
    # after warm-up, 26 at most, 22 at the end). A leak shows in threads_end, held to +1 below.
    assert result["threads_max"] <= result["threads_after_warmup"] + 4
    assert result["threads_end"] <= result["threads_after_warmup"] + 1
    assert result["rss_growth_mb"] < 50, result  # median of the last tenth against the first, after warm-up
    assert result["rss_peak_mb"] < 1024, result
    assert result["server_rss_end_mb"] - result["server_rss_after_warmup_mb"] < 50, result
    # --record-mic streams to disk (stereo 16-bit at 16 kHz: 64 kB a second), not into memory
    assert result["file_sizes_mb"]["mic.wav"] > 0.9 * result["seconds"] * 64000 / 2**20, result
