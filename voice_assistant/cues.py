"""Audio cues: a short rising chirp when the user's turn is heard, a lower falling one when the
assistant starts thinking. Quiet (-26 dBFS) and brief (70 and 90 ms, under the 200 ms of speech
that barge-in needs), faded in and out so they do not click. The sink mixes them into what it
plays (`AudioSink.play_cue`).

With echo cancellation they are kept out of its reference, and the system plays them only once
the canceller has had 1.5 s of the assistant's voice (`MicrophoneChain.echo_settled`). Pure tones as
reference made AEC3 learn a wrong echo path (a sine correlates with itself every period), and the
first words of the next reply leaked through and cut it off as a barge-in (file mode,
--simulate-echo, 2 runs of 2; none without cues). To the canceller an unreferenced cue is a short
near-end sound, which it lets through whole; the microphone chain knows when a cue is heard back
and takes it for our own sound (`MicrophoneChain._cue_echo_heard`). Sweeps rather than sines all
the same.
"""

from __future__ import annotations

import collections

import numpy as np

HEARD_HZ, HEARD_MS = (660.0, 990.0), 70  # rising: "I heard you"
THINKING_HZ, THINKING_MS = (620.0, 410.0), 90  # lower, falling: "thinking"
LEVEL_DBFS = -26.0
FADE_MS = 10


def tone(frequency_hz: float | tuple[float, float], duration_ms: int, rate_hz: int,
         level_dbfs: float = LEVEL_DBFS) -> np.ndarray:  # fmt: skip
    """A sine (or, for a (start, end) pair, a linear sweep) of `duration_ms` at `level_dbfs` peak, with
    `FADE_MS` raised-cosine fades, float32."""
    n = int(rate_hz * duration_ms / 1000)
    t = np.arange(n) / rate_hz
    start_hz, end_hz = frequency_hz if isinstance(frequency_hz, tuple) else (frequency_hz, frequency_hz)
    phase = 2 * np.pi * (start_hz * t + (end_hz - start_hz) * t**2 / (2 * t[-1] if n > 1 else 1.0))
    samples = np.sin(phase) * 10 ** (level_dbfs / 20)
    fade = min(n // 2, int(rate_hz * FADE_MS / 1000))
    ramp = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, fade))
    samples[:fade] *= ramp
    samples[n - fade :] *= ramp[::-1]
    return samples.astype(np.float32)


class Cues:
    """Plays the two cues through `sink` (anything with `play_cue(samples)` and `sample_rate_hz`)."""

    def __init__(self, sink) -> None:
        self.sink = sink
        self._heard = tone(HEARD_HZ, HEARD_MS, sink.sample_rate_hz)
        self._thinking = tone(THINKING_HZ, THINKING_MS, sink.sample_rate_hz)
        self.played: collections.deque[str] = collections.deque(maxlen=100)  # the last cues played, by name

    def heard(self) -> None:
        self.played.append("heard")
        self.sink.play_cue(self._heard)

    def thinking(self) -> None:
        self.played.append("thinking")
        self.sink.play_cue(self._thinking)
