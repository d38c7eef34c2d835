"""Reading the on-call engineer's reply to "can you intervene?".

Twilio hands the reply over as a speech transcript (`SpeechResult`, capitalised and
punctuated: "Yes." "Non, désolé.") or as the keys pressed (`Digits`). A wrong "yes"
is the expensive mistake: the farm would stop calling and nobody would come. So the
reading is deliberately conservative:

* keys are unambiguous and win over speech: 1 is yes, 2 is no, anything else is unclear;
* speech is read word by word, after folding case, accents and punctuation, so "yes"
  inside "yesterday" is not a yes;
* negations ("no I can't", "je ne peux pas", "can not") are recognised as phrases
  before single words, so "I can" inside "I can't" or "je peux" inside "je peux pas"
  does not count;
* a reply that says both yes and no, or neither, is unclear (None), which callers
  treat as "cannot intervene".

Pure functions, no I/O.
"""

from __future__ import annotations

import re
import unicodedata

YES_DIGIT = "1"
NO_DIGIT = "2"

# Phrases are matched before single words, longest first, so a negated phrase
# ("je peux pas") wins over the affirmative it contains ("je peux").
_PHRASES: dict[tuple[str, ...], bool] = {
    ("i", "can"): True,
    ("i", "will"): True,
    ("i", "am", "on", "it"): True,
    ("im", "on", "it"): True,
    ("on", "my", "way"): True,
    ("of", "course"): True,
    ("no", "problem"): True,
    ("go", "ahead"): True,
    ("je", "peux"): True,
    ("bien", "entendu"): True,
    ("bien", "sur"): True,
    ("pas", "de", "probleme"): True,
    ("sans", "probleme"): True,
    ("je", "men", "occupe"): True,
    ("jy", "vais"): True,
    ("je", "suis", "disponible"): True,
    ("je", "suis", "dispo"): True,
    ("can", "not"): False,
    ("i", "can", "not"): False,
    ("i", "will", "not"): False,
    ("je", "peux", "pas"): False,
    ("je", "ne", "peux", "pas"): False,
    ("pas", "possible"): False,
    ("not", "available"): False,
    ("pas", "disponible"): False,
}
_MAX_PHRASE = max(len(p) for p in _PHRASES)

_WORDS: dict[str, bool] = {
    **dict.fromkeys(
        (
            "yes", "yeah", "yep", "yup", "sure", "ok", "okay", "absolutely", "affirmative",
            "certainly", "definitely", "oui", "ouais", "daccord", "jarrive", "certainement",
            "absolument", "volontiers",
            YES_DIGIT,
        ),
        True,
    ),
    **dict.fromkeys(
        (
            "no", "nope", "nah", "negative", "not", "cannot", "cant", "wont", "unable",
            "never", "non", "pas", "impossible", "jamais", "negatif",
            NO_DIGIT,
        ),
        False,
    ),
}  # fmt: skip

_APOSTROPHES = re.compile(r"(?<=\w)['\u2019](?=\w)")
_WORD = re.compile(r"[a-z0-9]+")


def parse_answer(speech_result: str | None, digits: str | None) -> bool | None:
    """True (can intervene), False (cannot), or None (silence or unclear).

    Args:
        speech_result: Twilio's `SpeechResult`, if the person spoke.
        digits: Twilio's `Digits`, if keys were pressed; they win over speech.
    """
    if digits and digits.strip():
        return _digits_answer(digits.strip())
    if speech_result and speech_result.strip():
        return _speech_answer(speech_result)
    return None


def _digits_answer(digits: str) -> bool | None:
    if digits == YES_DIGIT:
        return True
    if digits == NO_DIGIT:
        return False
    return None


def _speech_answer(text: str) -> bool | None:
    polarities = set(_polarities(words(text)))
    if len(polarities) == 1:
        return polarities.pop()
    return None  # neither yes nor no, or both: unclear


def words(text: str) -> list[str]:
    """Lower-case ASCII words: accents folded, punctuation dropped, "can't" -> "cant"."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    ascii_text = "".join(c for c in decomposed if not unicodedata.combining(c))
    return _WORD.findall(_APOSTROPHES.sub("", ascii_text))


def _polarities(tokens: list[str]):
    """Yield the yes/no meaning of each recognised phrase or word, left to right."""
    i = 0
    while i < len(tokens):
        for size in range(min(_MAX_PHRASE, len(tokens) - i), 1, -1):
            meaning = _PHRASES.get(tuple(tokens[i : i + size]))
            if meaning is not None:
                yield meaning
                i += size
                break
        else:
            meaning = _WORDS.get(tokens[i])
            if meaning is not None:
                yield meaning
            i += 1
