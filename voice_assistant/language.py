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


REPLY_HINTS = {"en": "\n(Answer in English.)", "zh": "\n（请用中文回答。）"}
"""With --language auto, appended to the newest user message only: a small model follows the rule of
the system message less well than a hint beside the question, and the hint leaves the cached prefix
(system message and history) untouched. History keeps the user's words without it."""


def system_prompt(persona: str, mode: str) -> str:
    """The system message: the persona, then the rule for the language of the replies."""
    return f"{persona} {LANGUAGE_RULES[mode]}"


def with_reply_hint(text: str, mode: str, language: str) -> str:
    """The user's words as sent to the model for this turn: with the reply-language hint under auto."""
    return text + REPLY_HINTS[language] if mode == "auto" else text


def turn_language(mode: str, text: str, detected: str | None = None) -> str:
    """"en" or "zh": the language the user spoke `text` in, under `--language mode`."""
    if mode != "auto":
        return mode
    if detected in ("en", "zh"):
        return detected
    return "zh" if is_chinese(text) else "en"
