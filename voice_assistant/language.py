"""Which language a turn is in, and what follows from it: the prompt's language rule.

`--language en` and `zh` fix the language of every turn. With `auto` each utterance's language is
the one the recogniser detected (English or Mandarin); typed text is Mandarin when it is mostly
Chinese characters. The synthesizer chooses its voice from the text itself (tts.BilingualSynthesizer),
so a reply is spoken in the language it was written in.
"""

from __future__ import annotations

from .text import is_chinese

LANGUAGE_RULES = {
    "en": "Always answer in English.",
    "zh": "Always answer in Mandarin Chinese, in simplified characters.",
    "auto": "Answer in the language of the user's last message: English, or Mandarin Chinese in simplified "
    "characters.",
}


def system_prompt(persona: str, mode: str) -> str:
    """The system message: the persona, then the rule for the language of the replies."""
    return f"{persona} {LANGUAGE_RULES[mode]}"


def turn_language(mode: str, text: str, detected: str | None = None) -> str:
    """"en" or "zh": the language the user spoke `text` in, under `--language mode`."""
    if mode != "auto":
        return mode
    if detected in ("en", "zh"):
        return detected
    return "zh" if is_chinese(text) else "en"
