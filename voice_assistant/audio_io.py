"""Audio sources (microphone, WAV file) and sinks (speaker, WAV file) behind small seams.

Sources deliver 32 ms chunks of float32 mono audio at 16 kHz to a consumer together with the
monotonic time at which the chunk's last sample was captured. Sinks play `AudioBlock`s of a
few tens of milliseconds; before each block they ask whether its turn is still current, so an
interrupted turn never reaches the speaker after `clear()`, and they report every block as it
starts to play so the orchestrator knows what the user heard.

Threads: a sounddevice callback thread (live) or one pacing thread per file source/sink.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import AudioDeviceError
from .files import StreamingWav
from .wavio import read_wav, resample

log = logging.getLogger(__name__)

INPUT_RATE_HZ = 16000
INPUT_CHUNK_SAMPLES = 512  # 32 ms: Silero VAD's window and RealtimeSTT's buffer size


@dataclass(frozen=True)
class AudioBlock:
    """A short piece of reply audio at the sink's rate."""

    turn_id: int  # the turn that produced it; stale turns are never played
    samples: np.ndarray  # float32 mono
    sentence_index: int  # which chunk of the reply this belongs to
    sentence_progress: float  # fraction of that chunk's audio played once this block has played


@dataclass(frozen=True)
class EndOfReply:
    """Marker queued after a reply's last block; reported when playback reaches it."""

    turn_id: int


PlayListener = Callable[[object, float], None]
"""Called with (AudioBlock or EndOfReply, monotonic time its first sample is heard)."""

AudioConsumer = Callable[[np.ndarray, float], None]
"""Called with (512 float32 samples at 16 kHz, monotonic capture time of the last sample)."""


def split_blocks(samples: np.ndarray, block_frames: int) -> list[np.ndarray]:
    """Cut audio into blocks of exactly `block_frames` (the last one zero-padded)."""
    blocks = []
    for start in range(0, len(samples), block_frames):
        block = samples[start : start + block_frames]
        if len(block) < block_frames:
            block = np.concatenate([block, np.zeros(block_frames - len(block), dtype=np.float32)])
        blocks.append(block)
    return blocks


class BlockQueue:
    """The queue both sinks play from. `take()` skips stale turns; `clear()` drops everything."""

    def __init__(self) -> None:
        self._items: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self.is_current: Callable[[int], bool] = lambda turn_id: True  # the orchestrator's judge
        self.idle = threading.Event()
        self.idle.set()

    def put(self, item) -> None:
        with self._lock:
            self._items.append(item)
            self.idle.clear()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.idle.set()

    def pending_blocks(self) -> int:
        with self._lock:
            return sum(isinstance(item, AudioBlock) for item in self._items)

    def take(self) -> list:
        """Items to report for this tick: any EndOfReply markers, then at most one AudioBlock."""
        taken = []
        with self._lock:
            while self._items:
                item = self._items.popleft()
                if not self.is_current(item.turn_id):
                    continue
                taken.append(item)
                if isinstance(item, AudioBlock):
                    break
            if not self._items:
                self.idle.set()
        return taken


class AudioSink:
    """Plays reply audio. `put` and `clear` are safe from any thread and never block."""

    sample_rate_hz: int
    block_frames: int

    def __init__(self, sample_rate_hz: int, block_ms: int) -> None:
        self.sample_rate_hz = sample_rate_hz
        self.block_frames = int(sample_rate_hz * block_ms / 1000)
        self.queue = BlockQueue()
        self.listener: PlayListener = lambda item, t: None
        # exact played samples: (what sounded, when, the reply alone: what sounded without any cue)
        self.played_listener: Callable[[np.ndarray, float, np.ndarray], None] | None = None
        self._cue: tuple[np.ndarray, int] | None = None  # a cue being played, and how far; guarded by _cue_lock
        self._cue_lock = threading.Lock()
        self._paused_until = 0.0  # monotonic time a pause ends by itself; 0: playing (one float: no lock)

    def connect(self, listener: PlayListener, is_current: Callable[[int], bool],
                played_listener: Callable[[np.ndarray, float, np.ndarray], None] | None = None) -> None:  # fmt: skip
        """Before `start()`: who hears what plays, and the judge of stale turns."""
        self.listener = listener
        self.queue.is_current = is_current
        self.played_listener = played_listener

    def put(self, item) -> None:
        self.queue.put(item)

    def clear(self) -> None:
        self.queue.clear()

    def pending_blocks(self) -> int:
        """Audio blocks queued and not yet played (any thread)."""
        return self.queue.pending_blocks()

    def pause(self, max_s: float = 1.0) -> None:
        """Any thread: hand the device silence instead of the reply, nothing dropped, until `resume()`
        or at most `max_s` (a pause can never leave the assistant mute)."""
        self._paused_until = time.monotonic() + max_s

    def resume(self) -> None:
        self._paused_until = 0.0

    @property
    def paused(self) -> bool:
        return time.monotonic() < self._paused_until

    def play_cue(self, samples: np.ndarray) -> None:
        """Any thread: mix `samples` (float32 at the sink's rate) into what plays next, whatever the turn.
        An interruption does not drop it; a new cue replaces one still playing. It is not part of the
        echo canceller's reference (`played_listener` gets the reply alone): see cues.py."""
        with self._cue_lock:
            self._cue = (samples, 0)

    def _next_block(self, play_t: float) -> np.ndarray | None:
        """The reply's next block (None: silence), its items reported to the listener."""
        if self._paused_until and self.paused:
            return None
        block = None
        for item in self.queue.take():
            self.listener(item, play_t)
            if isinstance(item, AudioBlock):
                block = item.samples
        return block

    def _with_cue(self, block: np.ndarray | None) -> np.ndarray | None:
        """`block` with the cue being played mixed in (a new array), or `block` itself when none plays."""
        with self._cue_lock:
            if self._cue is None:
                return block
            cue, position = self._cue
            end = position + self.block_frames
            self._cue = (cue, end) if end < len(cue) else None
        mixed = np.zeros(self.block_frames, dtype=np.float32) if block is None else block.copy()
        piece = cue[position:end]
        mixed[: len(piece)] += piece
        return mixed

    def start(self, t0: float) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class WavFileSink(AudioSink):
    """Writes what is played onto the input's timeline: sample k is played at t0 + k / rate."""

    def __init__(self, path: Path | None, sample_rate_hz: int, block_ms: int) -> None:
        super().__init__(sample_rate_hz, block_ms)
        self.path = Path(path) if path is not None else None
        self._wav: StreamingWav | None = None  # opened at start(): the file grows as it plays, not in memory
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._silence = np.zeros(self.block_frames, dtype=np.float32)

    def start(self, t0: float) -> None:
        self._t0 = t0
        if self.path is not None:  # None: paced like a speaker, heard by nobody (--no-speak)
            self._wav = StreamingWav(self.path, self.sample_rate_hz, channels=1, name="wav-sink-writer")
        self._thread = threading.Thread(target=self._run, name="wav-sink", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        cursor = 0
        while not self._stop.is_set():
            play_t = self._t0 + cursor / self.sample_rate_hz
            delay = play_t - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            block = self._next_block(play_t)
            samples = self._silence if block is None else block
            output = self._with_cue(samples)  # what the speaker sounds: the reply and any cue
            if self._wav is not None:
                self._wav.add(output[:, None])
            if self.played_listener is not None:
                self.played_listener(output, play_t, samples)
            cursor += self.block_frames

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        if self._wav is not None:
            self._wav.close()
            self._wav = None


def _close_stream(stream) -> None:
    """Abort and close a PortAudio stream, if any; the device may already be gone."""
    if stream is None:
        return
    try:
        stream.abort()
        stream.close()
    except Exception:  # PortAudio errors on a vanished device: nothing left to release
        pass


def find_device(spec: str | None, kind: str) -> int | None:
    """Device index for `--input-device`/`--output-device` (an index or part of a name)."""
    import sounddevice

    if spec is None:
        return None
    channels_key = "max_input_channels" if kind == "input" else "max_output_channels"
    try:
        devices = sounddevice.query_devices()
    except Exception as exc:  # PortAudio errors
        raise AudioDeviceError(f"cannot list audio devices: {exc}") from None
    if spec.isdigit():
        index = int(spec)
        if index < len(devices) and devices[index][channels_key] > 0:
            return index
        raise AudioDeviceError(f"no {kind} device with index {index}; see --list-devices")
    for index, device in enumerate(devices):
        if spec.lower() in device["name"].lower() and device[channels_key] > 0:
            return index
    raise AudioDeviceError(f"no {kind} device named like {spec!r}; see --list-devices")


class SpeakerSink(AudioSink):
    """PortAudio output in blocks of `block_ms`; an interruption silences it within one block."""

    def __init__(self, device: int | None, sample_rate_hz: int, block_ms: int) -> None:
        super().__init__(sample_rate_hz, block_ms)
        self.device = device
        self._stream = None
        self.latency_s = 0.0
        self.underflows = 0
        self.error = ""  # why the stream stopped, if it did

    def healthy(self) -> bool:
        """False once PortAudio stopped the stream (device unplugged, server gone)."""
        stream = self._stream
        return stream is not None and stream.active and not self.error

    def delivering(self) -> bool:
        """An open output stream takes audio at once: healthy is enough."""
        return True

    def reopen(self) -> None:
        """Open the device again (device-monitor thread); AudioDeviceError if it is still gone."""
        self.close()
        self.error = ""
        self.start(0.0)

    def _finished(self) -> None:
        if self._stream is not None and not self.error:
            self.error = "the output stream ended"

    def start(self, t0: float) -> None:
        import sounddevice

        try:
            self._stream = sounddevice.OutputStream(
                samplerate=self.sample_rate_hz, channels=1, dtype="float32", device=self.device,
                blocksize=self.block_frames, latency="low", callback=self._callback,
                finished_callback=self._finished,
            )  # fmt: skip
            self._stream.start()
        except Exception as exc:  # PortAudioError and friends
            self._stream = None
            raise AudioDeviceError(f"cannot open the output device: {exc}") from None
        self.latency_s = float(self._stream.latency)

    def _callback(self, outdata, frames, time_info, status) -> None:
        """PortAudio's thread: fill one block; never blocks."""
        if status.output_underflow:
            self.underflows += 1
        play_t = time.monotonic() + max(0.0, time_info.outputBufferDacTime - time_info.currentTime)
        block = self._next_block(play_t) if frames == self.block_frames else None
        output = self._with_cue(block) if frames == self.block_frames else None
        if output is None:
            outdata.fill(0)
        else:
            outdata[:, 0] = output
        if self.played_listener is not None:
            reference = block if block is not None else np.zeros(frames, dtype=np.float32)
            self.played_listener(outdata[:, 0].copy(), play_t, reference)

    def close(self) -> None:
        stream, self._stream = self._stream, None
        _close_stream(stream)
        if stream is not None and self.underflows:
            log.info("speaker: %d output underflows (blocks the sound server asked for before we had them)",
                     self.underflows)  # fmt: skip


class AudioSource:
    """Delivers microphone-like audio to a consumer on its own thread (`name`, running `_run`).

    Subclasses set `_stop` (an Event: closed) and `_thread`; `died()` and `restart()` are what the
    device monitor asks of them."""

    name = "audio-source"
    exhausted: threading.Event  # set when a file source has delivered its whole file
    _stop: threading.Event
    _thread: threading.Thread | None

    def start(self, consumer: AudioConsumer, t0: float) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        raise NotImplementedError

    def died(self) -> bool:
        """The delivery thread ended without being closed."""
        thread = self._thread
        return not self._stop.is_set() and thread is not None and not thread.is_alive()

    def restart(self) -> None:
        """(Re)start the delivery thread; it carries on where the last one stopped."""
        if not self._stop.is_set():
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def close(self) -> None:
        raise NotImplementedError


class ChunkDelivery:
    """Hands chunks to the consumer; a chunk that makes it raise is logged and the next one delivered,
    so one bad chunk (or a full disk met on the audio thread) never leaves the assistant deaf."""

    def __init__(self, consumer: AudioConsumer, name: str) -> None:
        self.consumer = consumer
        self.name = name
        self.failures = 0

    def __call__(self, chunk: np.ndarray, end_t: float) -> None:
        try:
            self.consumer(chunk, end_t)
        except Exception:  # a worker loop logs and takes the next chunk
            self.failures += 1
            if self.failures == 1 or self.failures % 100 == 0:
                log.exception("%s: handling an audio chunk failed (%d so far); listening on", self.name, self.failures)


class WavFileSource(AudioSource):
    """A WAV played as the microphone, in real time; then silence, as a quiet room would give."""

    name = "wav-source"

    def __init__(self, path: Path) -> None:
        samples, rate = read_wav(path)  # WavFormatError for bad input, before anything starts
        self.samples = resample(samples, rate, INPUT_RATE_HZ)
        self.duration_s = len(self.samples) / INPUT_RATE_HZ
        self.exhausted = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_chunk = 0
        self._consumer: ChunkDelivery | None = None
        self._t0 = 0.0

    def start(self, consumer: AudioConsumer, t0: float) -> None:
        self._consumer, self._t0 = ChunkDelivery(consumer, self.name), t0
        self.restart()

    def _run(self) -> None:
        silence = np.zeros(INPUT_CHUNK_SAMPLES, dtype=np.float32)
        while not self._stop.is_set():
            start = self._next_chunk * INPUT_CHUNK_SAMPLES
            chunk = self.samples[start : start + INPUT_CHUNK_SAMPLES]
            if len(chunk) < INPUT_CHUNK_SAMPLES:
                if not self.exhausted.is_set() and start >= len(self.samples):
                    self.exhausted.set()
                chunk = np.concatenate([chunk, silence[: INPUT_CHUNK_SAMPLES - len(chunk)]])
            end_t = self._t0 + (start + INPUT_CHUNK_SAMPLES) / INPUT_RATE_HZ
            delay = end_t - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            self._next_chunk += 1
            self._consumer(chunk, end_t)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None


class MicrophoneSource(AudioSource):
    """PortAudio input at 16 kHz; the callback only queues, a worker thread calls the consumer."""

    STALL_S = 2.0  # no audio for this long from an open stream means the device is gone
    name = "mic-source"

    def __init__(self, device: int | None) -> None:
        self.device = device
        self.exhausted = threading.Event()  # never set: a microphone does not run out
        self._queue: queue.Queue = queue.Queue(maxsize=200)
        self._stream = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.latency_s = 0.0
        self.dropped_chunks = 0  # our queue was full: the worker fell behind
        self.overflows = 0  # PortAudio's input overflows: the device had samples we did not take in time
        self.error = ""
        self._last_chunk_t = 0.0
        self._chunks_since_open = 0
        self._consumer: ChunkDelivery | None = None

    def healthy(self) -> bool:
        stream = self._stream
        if stream is None or not stream.active or self.error:
            return False
        if time.monotonic() - self._last_chunk_t > self.STALL_S:
            self.error = f"no audio for {self.STALL_S:.0f} s"
            return False
        return True

    def delivering(self) -> bool:
        """Audio has arrived since the stream was (re)opened."""
        return self._chunks_since_open > 0

    def reopen(self) -> None:
        """Open the device again (device-monitor thread); AudioDeviceError if it is still gone."""
        stream, self._stream = self._stream, None
        _close_stream(stream)
        self.error = ""
        self._open()

    def _finished(self) -> None:
        if self._stream is not None and not self.error:
            self.error = "the input stream ended"

    def _open(self) -> None:
        import sounddevice

        self._chunks_since_open = 0  # before the stream starts: its callbacks count from here
        try:
            stream = sounddevice.InputStream(
                samplerate=INPUT_RATE_HZ, channels=1, dtype="float32", device=self.device,
                blocksize=INPUT_CHUNK_SAMPLES, latency="low", callback=self._callback,
                finished_callback=self._finished,
            )  # fmt: skip
            stream.start()
        except Exception as exc:
            raise AudioDeviceError(f"cannot open the input device: {exc}") from None
        self._last_chunk_t = time.monotonic()
        self._stream = stream
        self.latency_s = float(stream.latency)

    def start(self, consumer: AudioConsumer, t0: float) -> None:
        self._open()
        self._consumer = ChunkDelivery(consumer, "audio-in")
        self.restart()

    def _callback(self, indata, frames, time_info, status) -> None:
        self._last_chunk_t = time.monotonic()
        self._chunks_since_open += 1
        if status.input_overflow:
            self.overflows += 1
        captured_t = time.monotonic() - max(0.0, time_info.currentTime - time_info.inputBufferAdcTime)
        try:
            self._queue.put_nowait((indata[:, 0].copy(), captured_t))
        except queue.Full:
            self.dropped_chunks += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                chunk, captured_t = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if len(chunk) == INPUT_CHUNK_SAMPLES:
                self._consumer(chunk, captured_t)

    def close(self) -> None:
        self._stop.set()
        stream, self._stream = self._stream, None
        _close_stream(stream)
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        if self.overflows or self.dropped_chunks:
            log.warning("microphone: %d input overflows, %d chunks dropped (the program fell behind the device)",
                        self.overflows, self.dropped_chunks)  # fmt: skip
