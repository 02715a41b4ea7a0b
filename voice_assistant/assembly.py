"""Building the real assistant from a `Config`: models, devices, llama-server, guards.

`build_components(config)` returns the collaborators `VoiceConversationSystem.__init__` takes
(so the class only stores them). Every problem is a `SetupError`, raised before anything plays;
whatever was started before the failure (a llama-server) is stopped again.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from pathlib import Path

from .config import Config
from .errors import SetupError
from .files import open_private, private_folder
from .history import History

log = logging.getLogger(__name__)


def state_dir() -> Path:
    """Where logs are kept: $XDG_STATE_HOME/voice-assistant (default ~/.local/state/voice-assistant)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "voice-assistant"


def divert_native_stderr(path: Path) -> None:
    """Send what C libraries write to file descriptor 2 into `path`; `sys.stderr` keeps the terminal.

    ALSA and PortAudio print a dozen lines (`ALSA lib pcm.c: ...`, `Expression '...' failed in
    pa_linux_alsa.c`) when they enumerate devices or a device vanishes. Our own one-line messages
    already say what happened; theirs go to the log for whoever wants the details.
    """
    try:
        private_folder(path.parent)
        target = open_private(path, truncate=True, follow_links=False)  # in our state folder: never a link
    except OSError as exc:
        log.debug("native library messages stay on the terminal: %s", exc)
        return
    sys.stderr.flush()
    terminal = os.dup(2)
    os.dup2(target, 2)
    os.close(target)
    sys.stderr = os.fdopen(terminal, "w", buffering=1, errors="backslashreplace")


def make_client(config: Config, url: str, server=None):
    """A client for the server at `url`, its API detected (or as --llm-api says), with its API key
    (`check_api_keys()` has checked where keys may go)."""
    from .backends import detect_api
    from .llm_client import LlamaClient, api_key_from_env

    llm = config.llm
    key = server.api_key if server is not None else api_key_from_env(llm.llm_api_key_env)
    requested = "llamacpp" if server is not None and llm.llm_api == "auto" else llm.llm_api
    api, base = detect_api(url, requested, api_key=key)
    return LlamaClient(base, use_raw_stream=llm.use_raw_stream, use_http2=llm.use_http2, api=api,
                       read_timeout_s=llm.llm_timeout_s, model_name=llm.llm_model_name, api_key=key)  # fmt: skip


def check_api_keys(config: Config) -> None:
    """Before anything loads: SetupError if an API key would travel in clear text, or a named one is unset."""
    from .backends import check_key_transport
    from .llm_client import api_key_from_env

    llm = config.llm
    key = api_key_from_env(llm.llm_api_key_env)
    if llm.llm_api_key_env and key is None:
        raise SetupError(f"--llm-api-key-env: environment variable {llm.llm_api_key_env} is not set")
    for url in ([llm.llm_url] if llm.llm_url else []) + list(llm.llm_fallback_url):
        check_key_transport(url, key, llm.allow_insecure_key)


def start_llm(config: Config, keep_listening: bool = False):
    """(backends, server or None, ready): a `BackendChain` of --llm-url (or the bundled/own llama-server
    we start) and the --llm-fallback-url servers, its first reachable backend active.

    When none answers after `--llm-wait-s`, it is a SetupError, except with `keep_listening` (live
    mode) and no server of our own, where the conversation starts anyway (`ready` False) and the
    supervisor polls until one answers: a user may start the assistant before their server.
    """
    from .backends import BackendChain
    from .errors import LLMError
    from .llama_server import LlamaServerProcess, ServerConfig
    from .models import default_llama_server, resolve_llm_model

    llm = config.llm
    server = None
    if llm.llm_url:
        url = llm.llm_url
    else:
        model = resolve_llm_model(llm.llm_model)  # a bundled name, or the user's file
        server = LlamaServerProcess(
            ServerConfig(
                binary=Path(llm.llama_server) if llm.llama_server else default_llama_server(),
                model=model,
                threads=llm.llm_threads,
                batch_threads=llm.llm_batch_threads,
                context_tokens=llm.llm_context,
                cache_ram_mib=llm.llm_cache_ram_mib,
                log_path=Path(config.logging.server_log or state_dir() / "llama-server.log"),
                log_path_named=bool(config.logging.server_log),
            )
        )
    try:
        if server is not None:
            url = server.start()
        chain = BackendChain([make_client(config, url, server)]
                             + [make_client(config, fallback) for fallback in llm.llm_fallback_url])  # fmt: skip
    except BaseException:
        if server is not None:
            server.close()
        raise
    primary = chain.clients[0]
    ready, detail = primary.health()
    deadline = time.monotonic() + (llm.llm_wait_s if server is None else 0)
    delay = 0.25
    while not ready:
        reachable = [i for i, client in enumerate(chain.clients[1:], 1) if client.health()[0]]
        if reachable:
            chain.switch(reachable[0], f"{primary.base_url} is not reachable: {detail}")
            ready = True
            break
        if time.monotonic() + delay >= deadline:
            break
        log.warning("waiting for llama-server at %s (%s); retrying in %.1f s", url, detail, delay)
        time.sleep(delay)  # backoff while a remote server starts: nothing to wait on but time
        delay = min(delay * 2, 4.0)
        ready, detail = primary.health()
    if not ready and keep_listening and server is None:
        log.warning("llama-server at %s is not reachable (%s); listening anyway: it is used as soon as it answers",
                    url, detail)  # fmt: skip
        return chain, server, False
    try:
        if not ready:
            raise SetupError(f"llama-server at {url} is not reachable ({detail}); start it or drop --llm-url")
        if chain.api == "openai":
            chain.active.discover_model()
    except (SetupError, LLMError) as exc:
        chain.close()
        if server is not None:
            server.close()
        if isinstance(exc, LLMError):
            raise SetupError(f"{chain.active.describe()}: {exc}") from None
        raise
    return chain, server, True


def load_speaker_lock(name: str):
    """The enrollment for --speaker-lock; SetupError naming the problem (checked before models load)."""
    import voiceprint

    try:
        return voiceprint.EnrollmentStore().load(name)
    except voiceprint.VoiceprintError as exc:
        raise SetupError(f"--speaker-lock: {exc}; enroll with: python -m voiceprint enroll {name} --mic") from None


def build_defense(config: Config, synthesizer, speaker=None, scores=None, voice_checks: bool = True):
    """The self-speech guards the flags ask for (echo cancellation is part of the microphone chain);
    `scores`: the recogniser's `asr.TranscriptScores`, for the talk-over check; `voice_checks`
    False: no own-voice enrollment (nothing is heard, or nothing is said)."""
    from .defense import SelfSpeechDefense
    from .guards import EchoTranscriptGuard, LoopBreaker, OwnVoiceGuard

    echo = config.echo
    defense = SelfSpeechDefense(scores=scores, talk_over_min_logprob=config.barge_in.talk_over_min_logprob)
    if echo.echo_guards:
        defense.transcript_guard = EchoTranscriptGuard()
        defense.loop_breaker = LoopBreaker()
    if (echo.echo_guards and voice_checks) or echo.speaker_lock:
        import torch

        torch.set_num_threads(1)  # the speaker encoder runs beside everything else
        guard = OwnVoiceGuard()

        def enroll_own_voice() -> None:
            """voice-enroll thread: about 2 s of synthesis and encoder loading, beside start-up.

            Until it is done the own-voice check is skipped (guard.assistant stays None). Stops
            between steps once `defense.close()` asks: torch must not be mid-call at exit."""
            rate = synthesizer.sample_rate_hz
            clips = []
            for text in guard.ASSISTANT_SENTENCES:
                if defense.closing.is_set():
                    return
                clips.append((synthesizer.synthesize_all(text), rate))
            if not defense.closing.is_set():
                guard.enroll_assistant(clips)
            mandarin = getattr(synthesizer, "mandarin", None)  # tts.BilingualSynthesizer's second voice
            if mandarin is None:
                return
            clips = []
            for text in guard.ASSISTANT_SENTENCES_ZH:
                if defense.closing.is_set():
                    return
                clips.append((mandarin.synthesize_all(text), mandarin.sample_rate_hz))
            if not defense.closing.is_set():
                guard.enroll_assistant(clips, second_voice=True)

        if voice_checks:
            defense.enrollment = threading.Thread(target=enroll_own_voice, name="voice-enroll", daemon=True)
            defense.enrollment.start()
        defense.own_voice = guard
    if speaker is not None:
        import voiceprint

        defense.own_voice.set_user(speaker)
        defense.speaker_lock = True
        try:
            defense.own_voice.load_for_speaker_lock()  # a lock that cannot work is a start-up error
        except (voiceprint.VoiceprintError, OSError) as exc:
            raise SetupError(f"--speaker-lock: {exc}") from None
    return defense


def build_tracker(config: Config, semantic: bool = False, read_words: bool = False):
    """Utterance tracking on the VAD: barge-in length, speculation pause, end of turn (`semantic`: ended
    by a turn model's verdicts; `read_words`: the words judged too; see endpointing.py)."""
    from .endpointing import UtteranceTracker

    return UtteranceTracker(
        min_speech_ms=config.barge_in.barge_in_min_speech_ms,
        speculate_after_ms=config.speech.speculate_after_ms,
        end_of_speech_ms=config.speech.end_of_speech_silence_ms,
        min_utterance_ms=config.speech.min_utterance_ms,
        semantic=semantic,
        complete_silence_ms=config.speech.turn_complete_silence_ms,
        max_silence_ms=config.speech.turn_max_silence_ms,
        read_words=read_words,
        open_until_answer=config.speech.turn_open_until_answer,
    )


def load_turn_model(config: Config):
    """The Smart Turn model for --turn-detector smart (SetupError if it is missing or not one)."""
    from .models import smart_turn_model
    from .turn_detector import SmartTurnModel

    path = smart_turn_model(config.speech.turn_model)
    try:
        return SmartTurnModel.load(path, threads=1)
    except Exception as exc:  # onnxruntime raises its own types for a corrupt or foreign file
        raise SetupError(f"{path}: cannot load the Smart Turn model: {' '.join(str(exc).split())[:200]}") from None


def build_mic_chain(config: Config, file_mode: bool, tracker, recognizer):
    """Room (file mode's --simulate-echo), echo canceller, recording, VAD and the utterance tracker."""
    from .echo import EchoCanceller
    from .mic import MicRecording, MicrophoneChain
    from .room import RoomConfig, SimulatedRoom
    from .vad import SileroVAD

    echo, speech = config.echo, config.speech
    room = None
    if echo.simulate_echo:
        room = SimulatedRoom(RoomConfig(delay_ms=echo.echo_delay_ms, gain_db=echo.echo_gain_db))
    return MicrophoneChain(
        SileroVAD.load(threads=1),
        tracker,
        speech.vad_threshold,
        room=room,
        canceller=EchoCanceller() if echo.aec and (not file_mode or room is not None) else None,
        recording=MicRecording(Path(config.audio.record_mic)) if config.audio.record_mic else None,
        recognizer=recognizer,
    )


def build_components(config: Config) -> dict:
    """Keyword arguments for `VoiceConversationSystem(config, **...)`, all real and warmed up.

    `--text` builds no microphone, recogniser or voice checks; `--no-speak` no voice and no speaker."""
    from .asr import (ASRConfig, CachingExecutor, HallucinationLimits, SpeechRecognizer, WhisperTranscriber,
                      resolve_asr_model)  # fmt: skip
    from .audio_io import MicrophoneSource, SpeakerSink, WavFileSink, WavFileSource, find_device
    from .cues import Cues
    from .devices import DeviceMonitor, monitored
    from .metrics import MetricsFile, TranscriptFile
    from .mandarin_tts import MandarinSynthesizer
    from .models import default_mandarin_voice, default_tts_model
    from .speculation import SpeculativeTranscriber, TranscriptCache
    from .supervisor import LLMSupervisor
    from .tts import BilingualSynthesizer, PiperSynthesizer, SilentSynthesizer

    audio, speech, console = config.audio, config.speech, config.console
    check_api_keys(config)
    speaker = load_speaker_lock(config.echo.speaker_lock) if config.echo.speaker_lock else None
    file_mode = audio.input_wav is not None
    hearing = not console.text  # a microphone (or file mode's input) and a recogniser
    source = WavFileSource(Path(audio.input_wav)) if file_mode else None
    if file_mode:
        out_dir = Path(audio.output_wav).resolve().parent
        if not out_dir.is_dir():
            raise SetupError(f"cannot write {audio.output_wav}: folder {out_dir} does not exist")
    undo: list = []  # what was started so far, stopped in reverse order if a later step fails
    try:
        if console.speak:
            synthesizer = PiperSynthesizer.load(Path(config.voice.tts_model) if config.voice.tts_model
                                                else default_tts_model(), config.voice.tts_threads)  # fmt: skip
            if speech.language != "en":  # Mandarin replies need the Mandarin voice
                mandarin = MandarinSynthesizer.load(Path(config.voice.tts_model_zh) if config.voice.tts_model_zh
                                                    else default_mandarin_voice(), config.voice.tts_threads)  # fmt: skip
                synthesizer = BilingualSynthesizer(synthesizer, mandarin)
        else:
            synthesizer = SilentSynthesizer()
        smart = speech.turn_detector == "smart"
        # the words are judged on the speculative transcript: without speculation `words` is silence alone
        words = speech.turn_detector == "words" and speech.speculate_after_ms > 0
        asr_config = ASRConfig(
            model=resolve_asr_model(speech.asr_model, speech.language),
            language=None if speech.language == "auto" else speech.language,
            threads=speech.asr_threads,
            # words, smart: RealtimeSTT's own end of turn must never come before the longest wait for more
            end_of_speech_silence_s=(speech.turn_max_silence_ms + 300 if smart or words
                                     else speech.end_of_speech_silence_ms) / 1000.0,
            early_transcription_ms=0,
            window_pad_s=speech.asr_window_pad_s,
        )
        transcriber = scores = None
        if hearing:
            limits = HallucinationLimits(speech.max_no_speech_prob, speech.min_avg_logprob,
                                         speech.max_compression_ratio)  # fmt: skip
            transcriber = WhisperTranscriber.load(asr_config.model, asr_config.threads, asr_config.beam_size,
                                                  asr_config.language, limits, asr_config.window_pad_s)  # fmt: skip
            scores = transcriber.scores
        transcript = TranscriptFile(Path(config.logging.transcript)) if config.logging.transcript else None
        undo += [transcript.close] if transcript else []
        metrics = MetricsFile(Path(config.logging.metrics_json)) if config.logging.metrics_json else None
        undo += [metrics.close] if metrics else []
        client, server, llm_ready = start_llm(config, keep_listening=not file_mode)
        undo += [client.close] + ([server.close] if server is not None else [])
        log.info("language model: %s", client.active.describe())
        if file_mode:
            sink = WavFileSink(Path(audio.output_wav), synthesizer.sample_rate_hz, audio.block_ms)
        elif not console.speak:
            sink = WavFileSink(None, synthesizer.sample_rate_hz, audio.block_ms)  # paced, heard by nobody
        else:
            sink = SpeakerSink(find_device(audio.output_device, "output"), synthesizer.sample_rate_hz, audio.block_ms)
        if hearing and not file_mode:
            source = MicrophoneSource(find_device(audio.input_device, "input"))
        # its own-voice enrollment runs beside the rest; with nothing heard or nothing said there is no echo to guard
        defense = build_defense(config, synthesizer, speaker, scores, voice_checks=hearing and console.speak)
        undo.append(lambda: defense.close(timeout_s=10.0))
        synthesizer.warm_up()
        if transcriber is not None:
            transcriber.warm_up()
        supervisor = LLMSupervisor(client, server)
        if llm_ready and client.api == "llamacpp":  # fill the prompt cache with the system prompt
            prompt = client.apply_template(History().messages(config.system_prompt()))
            list(client.stream({"prompt": prompt, "n_predict": 1, "cache_prompt": True, "id_slot": 0}))
        else:
            supervisor.mark_down()  # start_llm printed the status line
        speculation = recognizer = mic = turn_judge = None
        if hearing:
            read_words = (words or smart and speech.turn_read_words) and client.api == "llamacpp"
            if speech.turn_detector == "words" and not read_words:
                log.info("--turn-detector words needs speculation (--speculate-after-ms) and llama-server's token "
                         "probabilities: the turn ends on silence")
            tracker = build_tracker(config, semantic=smart, read_words=read_words)
            if smart or read_words:
                from .turn_detector import TurnJudge

                turn_model = load_turn_model(config) if smart else None
                if smart:
                    turn_model.warm_up()
                turn_judge = TurnJudge(turn_model, tracker, speech.turn_threshold)
            executor = transcriber
            if speech.speculate_after_ms > 0:
                cache = TranscriptCache(lambda: tracker.last_speech_end_t, lambda: tracker.last_utterance_end_t)
                speculation = SpeculativeTranscriber(transcriber, cache)
                executor = CachingExecutor(transcriber, cache.lookup)
            recognizer = SpeechRecognizer.create(asr_config, executor, lambda: tracker.last_speech_end_t)
            if isinstance(executor, CachingExecutor):
                executor.recording_start = recognizer.closed_recording_start_t
            undo.append(lambda: recognizer.shutdown(timeout_s=10.0))
            mic = build_mic_chain(config, file_mode, tracker, recognizer)
        devices = monitored(output=sink, input=source)
        cues_on = console.cues if console.cues is not None else not file_mode
        cues = Cues(sink) if cues_on and console.speak else None
    except BaseException:
        for step in reversed(undo):
            try:
                step()
            except Exception:  # stopping the rest matters more than one part's failure to stop
                log.debug("stopping a part after a failed start failed", exc_info=True)
        raise
    return dict(
        client=client, synthesizer=synthesizer, sink=sink, source=source, mic=mic, recognizer=recognizer,
        speculation=speculation, turn_judge=turn_judge, defense=defense, supervisor=supervisor,
        device_monitor=DeviceMonitor(devices), server=server,  # also watches the threads, in file mode too
        transcript=transcript, metrics=metrics, cues=cues,
    )  # fmt: skip
