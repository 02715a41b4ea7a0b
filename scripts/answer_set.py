"""Spoken questions with known answers, for measuring whether the assistant answers correctly.

Simple factual questions of the kind a new user asks a voice assistant, in English and in Mandarin
(simplified Chinese), each with one well-known answer that a small (0.5B-1.5B) instruct model can
plausibly know. A benchmark speaks `Question.text` with espeak-ng (`voice`, at `speech_rate`),
feeds it to the assistant and checks the reply's text with `is_correct`.

An answer is accepted when every keyword of at least one alternative appears in the reply, after
`normalise` on both sides. Numbers are not parsed: the digit and word forms are listed as
alternatives. A keyword made of Latin letters or digits must stand alone ("four" is not found in
"fourteen", "8" not in "18"); Chinese keywords are found anywhere, so a Chinese number keyword
carries its measure word ("三条", not "三", which "三角形" contains).

Voices: English is spoken with espeak-ng. Its Mandarin is not usable: espeak-ng 1.51 (Debian 12)
reads Chinese characters with the plain `cmn` voice as pinyin with its tone digits spoken in
English ("ni three hao three"), and even `cmn-latn-pinyin` is mostly misheard by Whisper, so
Mandarin is spoken by the assistant's Mandarin voice at three pitches and speeds. A variant on
`en-gb` (`en-gb+f2`) is silently ignored; `en+f2` applies it.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

ENGLISH_VOICES = ("en-us", "en-us+f4", "en+f2", "en-us+m3", "en-gb-x-rp")
"""espeak-ng voices the English questions are spread over, in turn."""
MANDARIN_VOICES = ("zh-baker", "zh-baker-high", "zh-baker-low")
"""Voices the Mandarin questions are spread over, in turn: the Mandarin voice (mandarin_tts) at its own
pitch and speed, higher and faster, lower and slower. espeak-ng's Mandarin is not used: the
multilingual Whisper base hears 84 % of its characters wrong (measured), so it would measure espeak."""
MANDARIN_VARIANTS = {"zh-baker": (1.0, 0.9), "zh-baker-high": (1.15, 1.0), "zh-baker-low": (0.85, 0.85)}
"""voice -> (pitch ratio, speed ratio) of the Mandarin voice."""
PIPER_LENGTH_SCALES = {"piper-joe": 1.0, "piper-joe-fast": 0.85, "piper-joe-slow": 1.2}
"""voice -> Piper length scale (above 1: slower)."""
PIPER_VOICES = tuple(PIPER_LENGTH_SCALES)
"""The neural English voice (Piper joe, the only one in the package lists) at its own speed, faster and
slower: Whisper hears espeak-ng's formant voices far worse than people (31 % word error on these
questions, against 5 % on real recorded speech), so the English set is also spoken by a natural voice."""
SPEECH_RATE_WPM = 160
"""espeak-ng speed (`-s`) for every voice, in words per minute."""


@dataclass(frozen=True)
class Question:
    """One spoken question and the replies that answer it."""

    text: str
    """What is spoken, as written."""
    accepted: tuple[tuple[str, ...], ...]
    """Alternatives; a reply is right when it contains every keyword of any one of them."""
    voice: str
    """espeak-ng voice name to speak `text` with."""


def speech_rate(voice: str) -> int:
    """espeak-ng speed (`-s`, words per minute) for `voice`: the same for all of them."""
    return SPEECH_RATE_WPM


_CJK = r"\u3400-\u9fff\uf900-\ufaff"
_SPACE_BY_CJK = re.compile(rf"\s+(?=[{_CJK}])|(?<=[{_CJK}])\s+")
_ASCII_WORD = re.compile(r"[a-z0-9]")


def normalise(text: str) -> str:
    """Lower case, full-width forms folded (NFKC), punctuation and symbols as spaces, no spaces by Chinese."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(ch)[0] in "PSZC" else ch for ch in text)
    text = " ".join(text.split())
    return _SPACE_BY_CJK.sub("", text)


def _contains(text: str, keyword: str) -> bool:
    """Whether normalised `keyword` occurs in normalised `text`, not inside a longer Latin word or number."""
    start = text.find(keyword)
    while start >= 0:
        end = start + len(keyword)
        before_ok = start == 0 or not (_ASCII_WORD.match(keyword[0]) and _ASCII_WORD.match(text[start - 1]))
        after_ok = end == len(text) or not (_ASCII_WORD.match(keyword[-1]) and _ASCII_WORD.match(text[end]))
        if before_ok and after_ok:
            return True
        start = text.find(keyword, start + 1)
    return False


def is_correct(reply: str, question: Question) -> bool:
    """Whether `reply` contains all the keywords of at least one of `question.accepted`."""
    text = normalise(reply)
    return any(all(_contains(text, normalise(k)) for k in alternative) for alternative in question.accepted)


def _number(digits: str, *words: str) -> tuple[tuple[str, ...], ...]:
    """Alternatives for a number: its digits and each way of saying it, one keyword each."""
    return tuple((form,) for form in (digits, *words))


def _words(*alternatives: str) -> tuple[tuple[str, ...], ...]:
    """Alternatives of one keyword each."""
    return tuple((word,) for word in alternatives)


_ENGLISH: list[tuple[str, tuple[tuple[str, ...], ...]]] = [
    ("What is the capital of Germany?", _words("berlin")),
    ("How many weeks are in a year?", _number("52", "fifty-two", "fifty two")),
    ("Capital of Spain?", _words("madrid")),
    ("What is two plus two?", _number("4", "four")),
    ("What is the capital of France?", _words("paris")),
    ("How many days are in a week?", _number("7", "seven")),
    ("Largest planet?", _words("jupiter")),
    ("What is the capital of Japan?", _words("tokyo")),
    ("How many hours are in a day?", _number("24", "twenty-four", "twenty four")),
    ("Who wrote Hamlet?", _words("shakespeare")),
    ("What is the capital city of Italy?", _words("rome", "roma")),
    ("How many minutes are in an hour?", _number("60", "sixty")),
    ("What is six times seven?", _number("42", "forty-two", "forty two")),
    ("What is the capital of Canada?", _words("ottawa")),
    ("How many months are in a year?", _number("12", "twelve")),
    ("Which planet is known as the Red Planet?", _words("mars")),
    ("How many legs does a spider have?", _number("8", "eight")),
    ("What is ten minus three?", _number("7", "seven")),
    ("What is the chemical symbol for gold?", _words("au")),
    ("What is the chemical formula of water?", _words("h2o")),
    ("How many continents are there on Earth?", _number("7", "seven")),
    ("What is one hundred divided by four?", _number("25", "twenty-five", "twenty five")),
    ("What is the largest ocean on Earth?", _words("pacific")),
    ("What is the tallest mountain in the world?", _words("everest")),
    ("Who painted the Mona Lisa?", _words("leonardo", "da vinci")),
    ("How many centimetres are in a metre?", _number("100", "one hundred", "a hundred")),
    ("How many grams are in a kilogram?", _number("1000", "1,000", "one thousand", "a thousand")),
    ("At what temperature in Celsius does water boil?", _number("100", "one hundred", "a hundred")),
    ("At what temperature in Celsius does water freeze?", _number("0", "zero")),
    ("What gas do plants take in from the air to make their food?", _words("carbon dioxide", "co2")),
    ("What do bees make?", _words("honey")),
    ("What colour is the sky on a clear sunny day?", _words("blue")),
    ("What colour is an elephant?", _words("grey", "gray")),
    ("What is the opposite of hot?", _words("cold")),
    ("Which animal is called the king of the jungle?", _words("lion")),
    ("Who was the first person to walk on the moon?", _words("armstrong")),
    ("What language do people speak in Brazil?", _words("portuguese")),
    ("What is the currency of Japan?", _words("yen")),
    ("How many sides does a triangle have?", _number("3", "three")),
    ("How many sides does a hexagon have?", _number("6", "six")),
    ("How many players does a soccer team have on the field?", _number("11", "eleven")),
    ("What is the hardest natural substance?", _words("diamond")),
    ("Which organ pumps blood around the body?", _words("heart")),
    ("How many days are in a leap year?", _number("366", "three hundred sixty-six", "three hundred and sixty-six")),
    ("What is twelve times twelve?", _number("144", "one hundred forty-four", "one hundred and forty-four")),
    ("How many inches are in a foot?", _number("12", "twelve")),
    ("How many metres are in a kilometre?", _number("1000", "1,000", "one thousand", "a thousand")),
    ("What is seven squared?", _number("49", "forty-nine", "forty nine")),
    ("What is frozen water called?", _words("ice")),
    ("How many bones are in the adult human body?",
     _number("206", "two hundred six", "two hundred and six")),
]  # fmt: skip

_MANDARIN: list[tuple[str, tuple[tuple[str, ...], ...]]] = [
    ("德国的首都是哪里？", _words("柏林")),
    ("一年有多少个星期？", _number("52", "五十二")),
    ("中国首都？", _words("北京")),
    ("法国的首都是哪里？", _words("巴黎")),
    ("一个星期有几天？", _number("7天", "七天")),
    ("日本的首都是哪个城市？", _words("东京")),
    ("一天有多少个小时？", _number("24", "二十四")),
    ("二加三等于几？", _number("5", "五")),
    ("一小时有多少分钟？", _number("60", "六十")),
    ("六乘以七等于多少？", _number("42", "四十二")),
    ("一年有几个月？", _number("12", "十二")),
    ("十减四等于几？", _number("6", "六")),
    ("一公斤等于多少克？", _number("1000", "1,000", "一千")),
    ("一米等于多少厘米？", _number("100", "一百")),
    ("太阳系中最大的行星是哪一颗？", _words("木星")),
    ("水的化学式是什么？", _words("h2o")),
    ("水在多少摄氏度沸腾？", _number("100", "一百")),
    ("世界上最高的山峰是什么？", _words("珠穆朗玛", "珠峰", "everest")),
    ("大熊猫主要吃什么？", _words("竹")),
    ("蜜蜂酿造什么？", _words("蜂蜜")),
    ("三角形有几条边？", _number("3条", "三条")),
    ("蜘蛛有几条腿？", _number("8条", "八条")),
    ("人体中负责泵血的器官是什么？", _words("心脏")),
    ("晴天的天空是什么颜色？", _words("蓝")),
    ("世界上最大的海洋是什么？", _words("太平洋")),
    ("《静夜思》的作者是谁？", _words("李白")),
    ("长城在哪个国家？", _words("中国")),
]  # fmt: skip

ENGLISH: list[Question] = [
    Question(text, accepted, ENGLISH_VOICES[i % len(ENGLISH_VOICES)]) for i, (text, accepted) in enumerate(_ENGLISH)
]
ENGLISH_PIPER: list[Question] = [
    Question(text, accepted, PIPER_VOICES[i % len(PIPER_VOICES)]) for i, (text, accepted) in enumerate(_ENGLISH)
]
MANDARIN: list[Question] = [
    Question(text, accepted, MANDARIN_VOICES[i % len(MANDARIN_VOICES)]) for i, (text, accepted) in enumerate(_MANDARIN)
]
