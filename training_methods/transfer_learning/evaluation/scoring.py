"""The `evaluate` command's scores: language-neutral small pure functions.

No English article or stop-word removal; `normalize_text` and `answer_tokens` come from
`shared_utils.word_tokens`, which generate-qa's filters use too:

- `normalize_text`: Unicode NFKC, casefold, whitespace collapsed. Accents are kept: "café" is
  not "cafe".
- `answer_tokens`: the normalised text without punctuation (Unicode categories P*), split at
  whitespace; every character of a script written without spaces between words (Chinese,
  Japanese kana, Thai, Lao, Khmer, Myanmar) is a token of its own, so Chinese and Japanese are
  scored by characters, also when mixed with spaced words.
- `contains_reference` (a hit): the normalised answer contains a normalised reference as a whole
  word sequence: a match glued to letters or digits of a spaced script does not count, so "4" is
  not found in "14" nor "no" in "not" (but neither is "cat" in "cats"); in Chinese or Japanese
  any occurrence counts.
- `token_f1`: SQuAD's token F1 over `answer_tokens`, the best over the references.
- `word_count`: the number of `answer_tokens` (a Chinese character counts as one word).
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterable

from shared_utils.word_tokens import answer_tokens, is_unspaced, normalize_text


def _is_word_char(char: str) -> bool:
    """A letter, digit or combining mark of a script written with spaces between words."""
    return (char.isalnum() or unicodedata.category(char).startswith("M")) and not is_unspaced(char)


def word_count(text: str) -> int:
    return len(answer_tokens(text))


def _occurs_as_words(text: str, needle: str) -> bool:
    """Whether `needle` occurs in `text` not glued to a letter or digit on either side."""
    start = text.find(needle)
    while start != -1:
        end = start + len(needle)
        glued_left = start > 0 and _is_word_char(text[start - 1]) and _is_word_char(needle[0])
        glued_right = end < len(text) and _is_word_char(text[end]) and _is_word_char(needle[-1])
        if not (glued_left or glued_right):
            return True
        start = text.find(needle, start + 1)
    return False


def contains_reference(answer: str, references: Iterable[str]) -> bool:
    """A hit: the normalised answer contains one of the normalised references as whole words."""
    text = normalize_text(answer)
    return any(
        _occurs_as_words(text, needle)
        for needle in (normalize_text(reference) for reference in references)
        if needle
    )


def _f1(predicted: list[str], reference: list[str]) -> float:
    if not predicted or not reference:
        return float(predicted == reference)  # SQuAD: two empty answers agree
    common = sum((Counter(predicted) & Counter(reference)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(reference)
    return 2 * precision * recall / (precision + recall)


def token_f1(answer: str, references: Iterable[str]) -> float:
    """SQuAD's token F1 between the answer and its closest reference."""
    predicted = answer_tokens(answer)
    return max((_f1(predicted, answer_tokens(reference)) for reference in references), default=0.0)
