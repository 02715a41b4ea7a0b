"""scripts/answer_set.py: the question lists are well formed, and is_correct judges sample replies."""

from __future__ import annotations

import pytest

from scripts.answer_set import ENGLISH, ENGLISH_VOICES, MANDARIN, MANDARIN_VOICES, Question, is_correct, normalise


def question(text: str) -> Question:
    return next(q for q in ENGLISH + MANDARIN if q.text == text)


def test_counts_meet_the_minimums():
    assert len(ENGLISH) >= 44
    assert len(MANDARIN) >= 22


def test_texts_are_unique():
    texts = [q.text for q in ENGLISH + MANDARIN]
    assert len(texts) == len(set(texts))


def test_every_question_has_an_accepted_answer_of_nonempty_keywords():
    for q in ENGLISH + MANDARIN:
        assert q.accepted, q.text
        for alternative in q.accepted:
            assert alternative and all(normalise(keyword) for keyword in alternative), q.text


def test_voices_are_spread_and_match_the_language():
    assert {q.voice for q in ENGLISH} == set(ENGLISH_VOICES)
    assert {q.voice for q in MANDARIN} == set(MANDARIN_VOICES)


def test_short_and_long_questions_are_mixed():
    lengths = [len(q.text.split()) for q in ENGLISH]
    assert min(lengths) <= 3 and max(lengths) >= 9


def test_no_question_is_answered_by_its_own_text():
    """Echoing the question back must not count as an answer."""
    for q in ENGLISH + MANDARIN:
        assert not is_correct(q.text, q), q.text


def test_normalise():
    assert normalise("The Capital is BERLIN!") == "the capital is berlin"
    assert normalise("德国的首都是 柏林 。") == "德国的首都是柏林"
    assert normalise("一年有５２个星期，") == "一年有52个星期"
    assert normalise("fifty-two\nweeks") == "fifty two weeks"
    assert normalise("H₂O") == "h2o"


@pytest.mark.parametrize(
    "text, reply, right",
    [
        ("What is the capital of Germany?", "The capital of Germany is Berlin.", True),
        ("What is the capital of Germany?", "The capital of Germany is Munich.", False),
        ("How many weeks are in a year?", "There are 52 weeks in a year.", True),
        ("How many weeks are in a year?", "A year has fifty-two weeks.", True),
        ("How many weeks are in a year?", "A year has Fifty Two weeks.", True),
        ("How many weeks are in a year?", "There are 152 weeks in a year.", False),
        ("How many weeks are in a year?", "There are 12 months in a year.", False),
        ("What is two plus two?", "Two plus two is four.", True),
        ("What is two plus two?", "Two plus two is fourteen.", False),
        ("How many legs does a spider have?", "A spider has 8 legs.", True),
        ("How many legs does a spider have?", "A spider has 18 legs.", False),
        ("What colour is an elephant?", "Elephants are gray.", True),
        ("Who painted the Mona Lisa?", "It was painted by Leonardo da Vinci.", True),
        ("Who painted the Mona Lisa?", "Michelangelo painted it.", False),
        ("What is the chemical formula of water?", "Water is H₂O.", True),
        ("What gas do plants take in from the air to make their food?", "Plants absorb CO2.", True),
        ("What gas do plants take in from the air to make their food?", "They take in oxygen.", False),
        ("How many grams are in a kilogram?", "There are 1,000 grams in a kilogram.", True),
        ("德国的首都是哪里？", "德国的首都是柏林。", True),
        ("德国的首都是哪里？", "德国的首都是慕尼黑。", False),
        ("一年有多少个星期？", "一年有52个星期。", True),
        ("一年有多少个星期？", "一年有五十二个星期", True),
        ("一年有多少个星期？", "一年有 ５２ 个星期！", True),
        ("一年有多少个星期？", "一年有十二个月。", False),
        ("三角形有几条边？", "三角形有三条边。", True),
        ("三角形有几条边？", "三角形有 3 条边。", True),
        ("三角形有几条边？", "三角形有四条边。", False),
        ("一个星期有几天？", "一个星期有七天。", True),
        ("一个星期有几天？", "一个星期有17天。", False),
        ("水的化学式是什么？", "水的化学式是H2O。", True),
        ("世界上最高的山峰是什么？", "是珠穆朗玛峰。", True),
        ("世界上最高的山峰是什么？", "是泰山。", False),
    ],
)
def test_is_correct(text: str, reply: str, right: bool):
    assert is_correct(reply, question(text)) is right
