"""Components of the local voice assistant: audio I/O, ASR, the llama-server client, Piper TTS.

`asr_llm_tts.py` at the top level holds the CLI and the orchestrator that ties them together.
Importing this package never touches hardware, loads a model or starts a thread.
"""
