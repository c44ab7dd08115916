"""The words of a text in any language, for comparing answers and questions word by word.

`evaluate` scores answers by these words and generate-qa's filters compare questions, answers and
passages by them, so both count words the same way:

- `normalize_text`: Unicode NFKC, casefold, whitespace collapsed. Accents are kept: "café" is
  not "cafe".
- `answer_tokens`: the normalised text without punctuation (Unicode categories P*), split at
  whitespace; every character of a script written without spaces between words (Chinese,
  Japanese kana, Thai, Lao, Khmer, Myanmar) is a token of its own.
"""

from __future__ import annotations

import functools
import unicodedata

# Scripts written without spaces between words: each of their characters is a token. (Hangul is
# written with spaces.) Matched on the Unicode character name after NFKC.
UNSPACED_SCRIPTS = ("CJK ", "HIRAGANA", "KATAKANA", "THAI", "LAO", "KHMER", "MYANMAR")


@functools.lru_cache(maxsize=4096)
def is_unspaced(char: str) -> bool:
    """Whether `char` belongs to a script written without spaces between words."""
    return unicodedata.name(char, "").startswith(UNSPACED_SCRIPTS)


def normalize_text(text: str) -> str:
    """NFKC, casefolded (NFKC again: casefolding can undo it), whitespace collapsed."""
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return " ".join(folded.split())


def answer_tokens(text: str) -> list[str]:
    """The words of the normalised text, punctuation removed; each character of a script written
    without spaces is a word of its own."""
    pieces = []
    for char in normalize_text(text):
        if unicodedata.category(char).startswith("P"):
            continue  # removed, not replaced by a space: "U.S.A." is "usa", as in SQuAD
        pieces.append(f" {char} " if is_unspaced(char) else char)
    return "".join(pieces).split()
