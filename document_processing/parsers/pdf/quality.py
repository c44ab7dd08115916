"""Page quality: whether an engine's text of a page looks like real text, and which is better.

Glyph names. Where pdfminer reads a font's codes through its base encoding, pypdf writes the
glyph names of fonts without a Unicode map ("/s72/s101/s108": dvips bitmap fonts in arXiv
papers); such a page fails the quality check, so pypdf's text of it no longer beats pdfplumber's,
and names left in text that is kept anyway are removed (they would be learned as words), as are
the "(cid:NN)" tokens pdfminer writes for codes it cannot map.
"""

from __future__ import annotations

import re

_CID_TOKEN = re.compile(r"\(cid:\d+\)")
# pypdf writes the glyph name itself ("/s72/s101/s108") for a code whose font has no Unicode map
# and whose name is not in the Adobe glyph list: the bitmap (Type 3) fonts of dvips-made arXiv
# papers name their glyphs "s" + code. Such names are a letter prefix and a number, in runs; one
# after a letter or digit ("and/or", "api/v1") is a path, not a glyph.
_GLYPH_NAMES = re.compile(r"(?<![\w/])(?:/[A-Za-z]{1,8}\d{1,5})+(?![\w/])")
_GLYPH_NAME = re.compile(r"/[A-Za-z]{1,8}\d{1,5}")
# Fewer names than this on a page may be paths in the text ("see /s3"); more are a font.
_MIN_GLYPH_NAMES = 3
GLYPH_PROBLEM = "glyph names where a font has no Unicode map"
CID_PROBLEM = "cid tokens"
_LIGATURE = re.compile("[\ufb00-\ufb06]")
LIGATURE_PROBLEM = "ligature code points"


def page_quality_problem(text: str, max_mean_word_length: float) -> str | None:
    """A short reason why this page text looks broken, or None when it looks like real text.

    Broken means: no text; "(cid:NN)" tokens (glyphs the engine could not map to characters);
    glyph names in their place ("/s72/s101", pypdf's way of saying the same); U+FFFD replacement
    characters; ligature code points U+FB00-FB06 left in; or a mean word length above
    `max_mean_word_length`, which means the spaces between words were lost.
    """
    words = text.split()
    if not words:
        return "no text"
    if "(cid:" in text and _CID_TOKEN.search(text):
        return CID_PROBLEM
    if glyph_name_count(text) >= _MIN_GLYPH_NAMES:
        return GLYPH_PROBLEM
    if "\ufffd" in text:
        return "U+FFFD replacement characters"
    if _LIGATURE.search(text):
        return LIGATURE_PROBLEM
    mean_length = sum(map(len, words)) / len(words)
    if mean_length > max_mean_word_length:
        return f"mean word length {mean_length:.1f} > {max_mean_word_length:g}, spaces missing"
    return None


def glyph_name_count(text: str) -> int:
    """How many glyph names ("/s72") stand in the text where characters should be."""
    if "/" not in text:
        return 0
    return sum(len(_GLYPH_NAME.findall(run)) for run in _GLYPH_NAMES.findall(text))


def remove_glyph_names(text: str) -> tuple[str, int]:
    """The text without its runs of glyph names, and how many names went."""
    removed = 0

    def drop(match: re.Match[str]) -> str:
        nonlocal removed
        removed += len(_GLYPH_NAME.findall(match.group()))
        return ""

    return _GLYPH_NAMES.sub(drop, text), removed


def remove_cid_tokens(text: str) -> tuple[str, int]:
    """The text without its "(cid:NN)" tokens, and how many went."""
    return _CID_TOKEN.subn("", text)


def damaged_word_share(text: str, max_mean_word_length: float) -> float:
    """Share of the words that are damaged (lower is better; 1.0 when there is no text).

    Picks between two texts that both fail the quality check. Damaged means a cid token, a glyph
    name, U+FFFD or a run-together word longer than the limit; ligature code points do not count,
    since cleaning's NFKC expands them and nothing is lost. A share, not a count: an engine that
    splits math into one-letter words must not win by having more words.
    """
    words = text.split()
    if not words:
        return 1.0
    damaged = sum(
        1
        for word in words
        if len(word) > max_mean_word_length
        or "(cid:" in word
        or "\ufffd" in word
        or ("/" in word and _GLYPH_NAMES.search(word) is not None)
    )
    return damaged / len(words)
