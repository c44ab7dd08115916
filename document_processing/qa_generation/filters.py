"""The quality filters every generated pair passes, as small pure functions.

Words are `shared_utils.word_tokens.answer_tokens`, as `evaluate` scores answers (NFKC,
casefolded, punctuation removed; a Chinese or Japanese character is a word of its own), so the
checks work in any language. Content words are the words that are not function words of the
document's language (instruction_records' short lists); in a language without a list every word
counts.

- `check_pair`: a pair whose question or answer is empty or huge, whose question is no question
  (no question mark of any script), copies the passage or is about nothing in the chunk, or whose
  answer is given away by the question, is rejected with the reason.
- `grounding`: the share of the answer's content words found in the chunk (a word also counts
  when a chunk word shares most of it, "hive"/"hives"; a number glued to its unit, "61cm", counts
  as the number); below `min_grounding` the answer is not supported by its chunk.
- `question_key` and `near_duplicate`: exact duplicates (the same words) and near duplicates (word
  sets whose Jaccard overlap reaches the threshold) of a question already kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from shared_utils.word_tokens import answer_tokens

MAX_QUESTION_CHARS = 400
MAX_ANSWER_CHARS = 1500
COPY_OVERLAP = 0.8  # a question sharing this much of its words with the passage copies it
PREFIX_SHARE = 0.8  # of the shorter word, for "hive"/"hives" to match
QUESTION_MARKS = ("?", "？", "؟", ";", "⸮", "՞", "፧")  # Latin, CJK, Arabic, Greek, ...


def words(text: str) -> list[str]:
    return answer_tokens(text)


def function_words(language: str | None) -> frozenset[str]:
    from document_processing.converters.languages import FUNCTION_WORDS

    return FUNCTION_WORDS.get(language or "", frozenset())


_DIGITS_AND_LETTERS = re.compile(r"\d+|\D+")


def content_words(text: str, language: str | None) -> list[str]:
    """The words that carry meaning: not function words, a number glued to its unit split from
    it ("61cm": "61", "cm"), and short Latin-letter words (units, "cm", "kg") left out."""
    skip = function_words(language)
    found = []
    for word in words(text):
        if word in skip:
            continue
        for piece in _DIGITS_AND_LETTERS.findall(word) if _has_digit(word) else [word]:
            if not (len(piece) <= 2 and piece.isascii() and piece.isalpha()):
                found.append(piece)
    return found


def _has_digit(word: str) -> bool:
    return any(ch.isdigit() for ch in word)


def _shares_most(word: str, vocabulary: set[str]) -> bool:
    if word in vocabulary:
        return True
    if len(word) < 4 or word.isdigit():
        return False
    for known in vocabulary:
        shorter = min(len(word), len(known))
        if shorter < 4 or word[0] != known[0]:
            continue
        common = 0
        for a, b in zip(word, known, strict=False):
            if a != b:
                break
            common += 1
        if common >= PREFIX_SHARE * shorter and common >= 4:
            return True
    return False


def _vocabulary(chunk: str) -> set[str]:
    """The chunk's words, and the pieces of those that glue a number to letters."""
    found = set(words(chunk))
    for word in list(found):
        if _has_digit(word):
            found.update(_DIGITS_AND_LETTERS.findall(word))
    return found


def grounding(answer: str, chunk: str, language: str | None) -> float:
    """Share of the answer's content words that occur in the chunk (0 for an answer without any)."""
    answer_words = content_words(answer, language)
    if not answer_words:
        return 0.0
    vocabulary = _vocabulary(chunk)
    return sum(_shares_most(word, vocabulary) for word in answer_words) / len(answer_words)


def jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    first, second = set(a), set(b)
    if not first and not second:
        return 1.0
    return len(first & second) / len(first | second)


def check_pair(
    question: str, answer: str, *, passage: str, chunk: str, language: str | None
) -> str | None:
    """Why the pair is unusable (a short reason that the report counts), or None."""
    if not question.strip() or not answer.strip():
        return "empty"
    if len(question) > MAX_QUESTION_CHARS or len(answer) > MAX_ANSWER_CHARS:
        return "too_long"
    if not any(mark in question for mark in QUESTION_MARKS):
        return "not_a_question"  # a statement: SmolLM2 restates the passage and "answers" it
    question_words = content_words(question, language)
    if not question_words:
        return "question_about_nothing"
    passage_words = words(passage)
    if jaccard(words(question), passage_words) >= COPY_OVERLAP:
        return "question_copies_passage"
    chunk_vocabulary = _vocabulary(chunk)
    if not any(_shares_most(word, chunk_vocabulary) for word in question_words):
        return "question_about_nothing"
    answer_words = content_words(answer, language)
    if answer_words and set(answer_words) <= set(question_words):
        return "answer_in_question"
    return None


def wrong_language(question: str, answer: str, language: str | None) -> bool:
    """Whether the pair is confidently in another language than the document's."""
    if language is None:
        return False
    from document_processing.converters.languages import detect_language

    found = detect_language(words(f"{question} {answer}"))
    return found is not None and found != language


def question_key(question: str) -> str:
    return " ".join(words(question))


def near_duplicate(question: str, kept: Iterable[set[str]], threshold: float) -> bool:
    """Whether the question's word set overlaps one of `kept` by `threshold` or more (Jaccard)."""
    mine = set(words(question))
    return any(jaccard(mine, other) >= threshold for other in kept)
