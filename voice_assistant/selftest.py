"""`--test`: check each component with the real models and devices, one PASS/FAIL line each."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .assembly import check_api_keys, start_llm
from .config import Config
from .metrics import ms


def run_self_test(config: Config) -> int:
    """--test: check each component, print pass/fail with timings; 0 only if all needed parts pass."""
    from .asr import WhisperTranscriber, resolve_asr_model
    from .models import default_tts_model
    from .tts import PiperSynthesizer
    from .wavio import resample

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
        synth = PiperSynthesizer.load(Path(config.voice.tts_model) if config.voice.tts_model else default_tts_model(),
                                      config.voice.tts_threads)  # fmt: skip
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
        language = None if config.speech.language == "auto" else config.speech.language
        transcriber = WhisperTranscriber.load(resolve_asr_model(config.speech.asr_model, config.speech.language),
                                              config.speech.asr_threads, language=language,
                                              window_pad_s=config.speech.asr_window_pad_s)
        transcriber.warm_up()
        start = time.monotonic()
        text = transcriber.transcribe_text(state["speech"])
        took = (time.monotonic() - start) * 1000.0
        if "weather" not in text.lower():
            raise RuntimeError(f"transcribed {text!r}, expected the test sentence")
        return f"transcribed {text!r} in {took:.0f} ms"

    def tts_zh():
        from .mandarin_tts import MandarinSynthesizer
        from .models import default_mandarin_voice

        path = Path(config.voice.tts_model_zh) if config.voice.tts_model_zh else default_mandarin_voice()
        voice = MandarinSynthesizer.load(path, config.voice.tts_threads)
        voice.warm_up()
        start = time.monotonic()
        audio = voice.synthesize_all("德国的首都是柏林。")
        took = time.monotonic() - start
        if len(audio) == 0 or float(np.abs(audio).max()) < 0.01:
            raise RuntimeError("the Mandarin voice produced silence")
        seconds = len(audio) / voice.sample_rate_hz
        return f"synthesized {seconds:.1f} s of Mandarin in {took * 1000:.0f} ms"

    def turn():
        from .assembly import load_turn_model

        if "speech" not in state:
            raise RuntimeError("no test clip (TTS failed)")
        model = load_turn_model(config)
        model.warm_up()
        start = time.monotonic()
        finished = model.probability(np.concatenate([state["speech"], np.zeros(3200, dtype=np.float32)]))
        took = (time.monotonic() - start) * 1000.0
        return f"the test sentence sounds finished with probability {finished:.2f}, judged in {took:.0f} ms"

    def llm():
        check_api_keys(config)
        client, server, _ = start_llm(config)
        try:
            stream = client.stream({"prompt": client.apply_template([{"role": "user", "content": "Say hello."}]),
                                    "n_predict": 16})  # fmt: skip
            text = "".join(stream)
            backend = client.active.describe()
            if stream.stats.tokens == 0:
                raise RuntimeError(f"{backend} streamed no tokens")
            first = ms(stream.stats.sent_t, stream.stats.first_token_t)
            return f"{backend} answered: {stream.stats.tokens} tokens, first after {first} ms: {text.strip()[:40]!r}"
        finally:
            client.close()
            if server is not None:
                server.close()

    def devices(kind):
        def probe():
            import sounddevice

            from .audio_io import find_device

            device = find_device(config.audio.input_device if kind == "input" else config.audio.output_device, kind)
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
    if config.speech.language != "en":
        check("tts-zh", True, tts_zh)
    check("asr", True, asr)
    if config.speech.turn_detector == "smart":
        check("turn", True, turn)
    check("llm", True, llm)
    devices_needed = config.audio.input_wav is None
    check("mic", devices_needed, devices("input"))
    check("speaker", devices_needed, devices("output"))
    failed = [ok for ok, needed in results if needed and not ok]
    print("all needed components work" if not failed else f"{len(failed)} needed component(s) failed")
    return 0 if not failed else 1
