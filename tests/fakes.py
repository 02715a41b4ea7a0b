"""Fakes with the real components' names and contracts: synthesizer, audio sink, VAD, transcriber."""

from __future__ import annotations

import threading

import numpy as np

from voice_assistant.audio_io import AudioBlock, AudioSink, EndOfReply


class FakeSynthesizer:
    """Deterministic 'speech': 100 samples per character at 1 kHz, value 0.5.

    `gates[text]` (an Event) holds synthesis of that text until set; `started[text]` is set
    when synthesis of it begins, so tests can interrupt exactly during synthesis.
    """

    sample_rate_hz = 1000

    def __init__(self) -> None:
        self.spoken: list[str] = []
        self.gates: dict[str, threading.Event] = {}
        self.started: dict[str, threading.Event] = {}

    def synthesize_all(self, text: str) -> np.ndarray:
        self.started.setdefault(text, threading.Event()).set()
        gate = self.gates.get(text)
        if gate is not None:
            assert gate.wait(10), f"gate for {text!r} never opened"
        self.spoken.append(text)
        return np.full(len(text) * 10, 0.5, dtype=np.float32)

    def warm_up(self) -> None:
        pass


class FakeAudioSink(AudioSink):
    """A speaker the test drives: `play_next()` plays one block, `play_all()` until empty.

    Uses the real BlockQueue, so staleness is judged exactly as in the real sinks.
    """

    def __init__(self, sample_rate_hz: int = 1000, block_ms: int = 20) -> None:
        super().__init__(sample_rate_hz, block_ms)
        self.played: list[AudioBlock] = []
        self.ends: list[int] = []
        self.clock = 100.0
        self.cleared = 0
        self.item_arrived = threading.Event()

    def put(self, item) -> None:
        super().put(item)
        self.item_arrived.set()

    def clear(self) -> None:
        self.cleared += 1
        super().clear()

    def start(self, t0: float) -> None:
        pass

    def close(self) -> None:
        pass

    def play_next(self) -> list:
        """Play one tick; return what was reported (nothing while paused: the speaker plays silence)."""
        if self.paused:
            return []
        items = self.queue.take()
        for item in items:
            self.listener(item, self.clock)
            if isinstance(item, AudioBlock):
                self.played.append(item)
                self.clock += len(item.samples) / self.sample_rate_hz
            elif isinstance(item, EndOfReply):
                self.ends.append(item.turn_id)
        return items

    def play_all(self) -> None:
        while self.play_next():
            pass


class FakeVAD:
    """Speech when the chunk is loud (over 0.1), perhaps speech (0.4: over the lower threshold only) when it
    is quieter (over 0.05): lets tests script speech with plain arrays."""

    def probability(self, chunk: np.ndarray) -> float:
        level = float(np.abs(chunk).mean())
        return 1.0 if level > 0.1 else 0.4 if level > 0.05 else 0.0


class FakeCanceller:
    """An echo canceller that has had `heard_s` of the assistant's voice (10 s: it knows the room) and takes
    `loss_db` off each chunk (tests change both)."""

    latency_samples = 0

    def __init__(self, loss_db: float = 0.0, heard_s: float = 10.0) -> None:
        from voice_assistant.echo import EchoConfig

        self.config = EchoConfig()
        self.loss_db = loss_db
        self.heard_s = heard_s

    def process(self, chunk: np.ndarray) -> np.ndarray:
        return (chunk * 10.0 ** (-self.loss_db / 20.0)).astype(np.float32)

    def feed_reverse(self, samples: np.ndarray, rate_hz: int) -> None:
        pass

    def set_delay_ms(self, ms: float) -> None:
        pass

    def far_end_s(self) -> float:
        return self.heard_s

    def diverged(self) -> bool:
        return False

    def stats(self):
        from voice_assistant.echo import EchoStats

        return EchoStats(None, 10.0, False, 0.0, 0.0, 0, 0, "")


class FakeTranscriber:
    """Scripted transcripts, one per call; records how much audio each call got."""

    def __init__(self, *texts: str) -> None:
        self.texts = list(texts)
        self.audio_seconds: list[float] = []

    def transcribe_text(self, audio: np.ndarray) -> str:
        self.audio_seconds.append(len(audio) / 16000)
        return self.texts.pop(0) if self.texts else ""
