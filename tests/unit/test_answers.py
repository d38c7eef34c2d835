"""Reading "can you intervene?" replies as Twilio transcribes them."""

from __future__ import annotations

import pytest

from aifixer.answers import parse_answer, words


@pytest.mark.parametrize(
    "speech",
    [
        "Yes.",
        "yes",
        "YES!",
        "Yeah.",
        "Yep, sure.",
        "Sure.",
        "I can.",
        "Yes, I can.",
        "OK, I'm on it.",
        "Of course.",
        "No problem, I can.",
        "Oui.",
        "Oui, je peux.",
        "Ouais.",
        "D'accord.",
        "D’accord, j’arrive.",
        "Bien sûr.",
        "Pas de problème.",
        "Je m'en occupe.",
        "J'y vais.",
        "Oui, je suis disponible.",
        "Volontiers.",
        "1",
        "1.",
    ],
)
def test_yes(speech: str) -> None:
    assert parse_answer(speech, None) is True


@pytest.mark.parametrize(
    "speech",
    [
        "No.",
        "no",
        "Nope.",
        "No, I can't.",
        "no I can't",
        "I can't.",
        "I cannot.",
        "I can not.",
        "I won't.",
        "Not now.",
        "Non.",
        "Non, désolé.",
        "NON, DÉSOLÉ",
        "Je ne peux pas.",
        "Je peux pas.",
        "Pas possible.",
        "Je ne suis pas disponible.",
        "Je ne m'en occupe pas.",
        "Négatif.",
        "2",
    ],
)
def test_no(speech: str) -> None:
    assert parse_answer(speech, None) is False


@pytest.mark.parametrize(
    "speech",
    [
        None,
        "",
        "   ",
        ".",
        "Yesterday.",  # "yes" inside a word is not a yes
        "Nobody told me.",  # nor is "no" inside a word
        "Hmm.",
        "What?",
        "Yes, no.",  # contradicts itself
        "Oui, non.",
        "Sure, but not now.",
        "Canned answer.",
        "12",
    ],
)
def test_unclear(speech: str | None) -> None:
    assert parse_answer(speech, None) is None


@pytest.mark.parametrize(
    ("digits", "expected"),
    [("1", True), ("2", False), ("3", None), ("#", None), ("12", None), (" 1 ", True)],
)
def test_digits(digits: str, expected: bool | None) -> None:
    assert parse_answer(None, digits) is expected


def test_digits_win_over_speech() -> None:
    assert parse_answer("Yes.", "2") is False
    assert parse_answer("No.", "1") is True
    assert parse_answer("Yes.", "9") is None


def test_empty_digits_fall_back_to_speech() -> None:
    assert parse_answer("Yes.", "") is True
    assert parse_answer("Non.", "  ") is False


def test_words_fold_case_accents_punctuation_and_apostrophes() -> None:
    assert words("Non, DÉSOLÉ… I can’t—really!") == ["non", "desole", "i", "cant", "really"]
