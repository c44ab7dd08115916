"""Key terms of a sentence: what the topic, question and cloze records ask about.

A term is a token with a digit (and the word after it when that word is not a function word:
"12 euros"), a run of capitalised words, or a run of content words, found without language
models or English-only rules. Each pass takes its words, so a later pass never reuses them:
numbers first, then names, then runs of content words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from document_processing.converters.languages import WORD, fold

MAX_TERM_WORDS = 4  # longer runs of content words are not a "term"
MAX_TERMS_PER_SENTENCE = 4
MIN_TERM_CHARS = 3


@dataclass(frozen=True)
class Term:
    text: str
    start: int  # offsets within the sentence
    end: int


def is_capitalised(word: str) -> bool:
    return word[:1].isupper()


def has_digit(text: str) -> bool:
    return any(ch.isdigit() for ch in text)


@dataclass
class _Words:
    """The words of one sentence, and which of them a term has taken."""

    sentence: str
    function_words: frozenset[str]
    mid_sentence_capitals: frozenset[str]
    matches: list[re.Match[str]] = field(init=False)
    taken: list[bool] = field(init=False)

    def __post_init__(self) -> None:
        self.matches = list(WORD.finditer(self.sentence))
        self.taken = [False] * len(self.matches)

    def __len__(self) -> int:
        return len(self.matches)

    def text(self, k: int) -> str:
        return self.matches[k].group()

    def is_function(self, k: int) -> bool:
        return fold(self.text(k)) in self.function_words

    def is_name(self, k: int) -> bool:
        """Capitalised, and a first word only when the document capitalises it mid-sentence."""
        word = self.text(k)
        if not is_capitalised(word) or self.is_function(k) and k == 0:
            return False
        return k > 0 or fold(word) in self.mid_sentence_capitals

    def is_free_content(self, k: int) -> bool:
        """A content word no term has taken."""
        return not self.taken[k] and not self.is_function(k)

    def take(self, first: int, last: int) -> list[Term]:
        """Mark words `first`..`last` taken; their text as a term unless it is too short."""
        start, end = self.matches[first].start(), self.matches[last].end()
        for k in range(first, last + 1):
            self.taken[k] = True
        text = self.sentence[start:end]
        if len(text) >= MIN_TERM_CHARS or has_digit(text):
            return [Term(text, start, end)]
        return []


def _number_terms(words: _Words) -> list[Term]:
    """Numbers, with the word after them when it is a content word ("12 euros", "1893")."""
    terms = []
    for k in range(len(words)):
        if has_digit(words.text(k)):
            last = k
            if k + 1 < len(words) and not words.is_function(k + 1) and words.text(k + 1).isalpha():
                last = k + 1
            terms += words.take(k, last)
    return terms


def _name_end(words: _Words, first: int) -> int:
    """The last word of the name that starts at `first`: capitalised words, and across one
    function word between two single words ("Isle of Brannoch", not "Lowen Brackley by Hester
    Quayle" or "Saturday the Wenna Lorne")."""
    last = first
    while last + 1 < len(words) and not words.taken[last + 1]:
        if words.is_name(last + 1) or is_capitalised(words.text(last + 1)):
            last += 1
        elif (
            last == first
            and last + 2 < len(words)
            and words.is_function(last + 1)
            and not words.taken[last + 2]
            and is_capitalised(words.text(last + 2))
            and not (last + 3 < len(words) and is_capitalised(words.text(last + 3)))
        ):
            last += 2
        else:
            break
    return last


def _name_terms(words: _Words) -> list[Term]:
    """Names: runs of capitalised words (their first MAX_TERM_WORDS) no number took."""
    terms = []
    k = 0
    while k < len(words):
        if words.taken[k] or not words.is_name(k):
            k += 1
            continue
        last = _name_end(words, k)
        terms += words.take(k, min(last, k + MAX_TERM_WORDS - 1))
        k = last + 1
    return terms


def _content_terms(words: _Words, repeated: frozenset[str]) -> list[Term]:
    """Runs of content words (their last MAX_TERM_WORDS) that hold a word of `repeated`: a topic
    is a word the document comes back to; a one-off word is most often a verb."""
    terms = []
    k = 0
    while k < len(words):
        if not words.is_free_content(k):
            k += 1
            continue
        last = k
        while last + 1 < len(words) and words.is_free_content(last + 1):
            last += 1
        first = max(k, last - MAX_TERM_WORDS + 1)
        if any(fold(words.text(j)) in repeated for j in range(first, last + 1)):
            terms += words.take(first, last)
        k = last + 1
    return terms


def _best_terms(terms: list[Term]) -> list[Term]:
    """Numbers and names first, then the longest runs, up to MAX_TERMS_PER_SENTENCE; in
    sentence order."""
    terms = sorted(terms, key=lambda term: term.start)
    ranked = sorted(
        terms,
        key=lambda t: (not has_digit(t.text) and not is_capitalised(t.text), -len(t.text.split())),
    )
    keep = {id(term) for term in ranked[:MAX_TERMS_PER_SENTENCE]}
    return [term for term in terms if id(term) in keep]


def key_terms(
    sentence: str,
    function_words: frozenset[str],
    mid_sentence_capitals: frozenset[str],
    repeated: frozenset[str] = frozenset(),
) -> list[Term]:
    """Numbers (with their unit), capitalised names and runs of content words of one sentence.

    `mid_sentence_capitals` holds the folded words the document capitalises inside sentences: a
    capitalised first word counts as a name only when it is one of them. A run of content words
    is a term only when it holds a word of `repeated`.
    """
    words = _Words(sentence, function_words, mid_sentence_capitals)
    numbers = _number_terms(words)
    names = _name_terms(words)
    runs = _content_terms(words, repeated)
    return _best_terms([*numbers, *names, *runs])


__all__ = ["MIN_TERM_CHARS", "Term", "has_digit", "is_capitalised", "key_terms"]
