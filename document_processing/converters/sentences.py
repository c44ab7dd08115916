"""Sentence splitting: a section text cut into units, as character spans of the text.

A *sentence* here is a unit of cleaned text, not a linguistic sentence. One ends at `.`, `!`, `?`
or `…`, followed by any closing quotes or brackets and then whitespace; the end punctuation and
closing marks stay with it. Any whitespace run that holds a newline ends one too, so every line,
list item and paragraph is a unit of its own. There is no list of abbreviations: "e.g. this" is
two units, while "3.5" (no whitespace after the dot) is one.

*Protected spans* are `[start, end)` character offsets the parser marked (code blocks, tables)
that must not be split. They are clipped to the text, sorted and, where they overlap, merged; each
becomes a single unit, whatever punctuation or newlines it holds, and only the text between them
is split into sentences.

Every unit is a span `(start, end)` with `text[start:end]` its text: units are in order, do not
overlap, start and end on non-space characters, and together cover every non-space character.
Chunking packs these units into chunks; instruction records and question windows read them as
sentences. `document_sentences` reads a parsed document's sections that way for the instruction
records, each protected block as its lines, and joins a sentence a page break cut in two.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from document_processing.records import ParsedDocument

Span = tuple[int, int]  # [start, end) character offsets

# A sentence ends at [.!?…], then optional closing quotes/brackets, then whitespace (group 1 is
# the gap between sentences). Any whitespace run that holds a newline is a boundary too: lines,
# list items and paragraphs of cleaned text are separate units. Possessive quantifiers keep the
# scan linear on long runs of punctuation or spaces.
_SENTENCE_BREAK = re.compile(r"[.!?…][\"'”’»)\]]*+(\s++)|[^\S\n]*+\n\s*+")
_NON_SPACE = re.compile(r"\S")


def _trimmed(text: str, start: int, end: int) -> Span | None:
    """`[start, end)` without leading and trailing whitespace, or None when only space is left."""
    first = _NON_SPACE.search(text, start, end)
    if first is None:
        return None
    start = first.start()
    return start, start + len(text[start:end].rstrip())


def segments(text: str, start: int, end: int, pattern: re.Pattern[str]) -> list[Span]:
    """The trimmed, non-empty pieces of `text[start:end]` between matches of `pattern`.

    The whitespace a match separates on is its group 1 when that took part, else the whole match.
    """
    bounds = _trimmed(text, start, end)
    if bounds is None:
        return []
    pos, end = bounds
    spans: list[Span] = []
    for match in pattern.finditer(text, pos, end):
        gap_start = match.start(1) if match.lastindex else match.start()
        if gap_start > pos:
            spans.append((pos, gap_start))
        pos = match.end()
    if pos < end:
        spans.append((pos, end))  # `end` is trimmed, and every match ends before a non-space
    return spans


def normalise_spans(spans: Sequence[Sequence[int]], length: int) -> list[Span]:
    """Protected spans clipped to the text, sorted, with overlapping ones merged."""
    clipped = sorted(
        (max(0, int(s)), min(length, int(e))) for s, e in spans if min(length, e) > max(0, s)
    )
    merged: list[Span] = []
    for start, end in clipped:
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def sentence_spans(text: str, protected: Sequence[Sequence[int]] = ()) -> list[Span]:
    """The units of `text`: sentences, lines, and each protected span as one unit.

    Units are in order, do not overlap, start and end on non-space characters, and together cover
    every non-space character of `text`.
    """
    spans: list[Span] = []
    pos = 0
    for start, end in normalise_spans(protected, len(text)):
        spans.extend(segments(text, pos, start, _SENTENCE_BREAK))
        block = _trimmed(text, start, end)
        if block is not None:
            spans.append(block)
        pos = end
    spans.extend(segments(text, pos, len(text), _SENTENCE_BREAK))
    return spans


# --------------------------------------------------------------------------------------------------
# The sentences of a parsed document
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sentence:
    """One sentence (or line, or table row) of a section, with where it sits."""

    text: str
    section_index: int
    start: int  # character offset in the section text


def document_sentences(doc: ParsedDocument) -> list[Sentence]:
    """The sentences of every section; a protected block (table, code) contributes its lines.

    A sentence that a page break cut in two (a PDF section ends mid-sentence and the one on the
    next page goes on in lower case) is joined again: half a sentence teaches half a fact."""
    sentences: list[Sentence] = []
    for index, section in enumerate(doc.sections):
        protected = {tuple(span) for span in section.protected}
        first_of_section = True
        for start, end in sentence_spans(section.text, section.protected):
            pieces = [(start, end)]
            lines = (start, end) in protected or "\n" in section.text[start:end]
            if lines:
                pieces = _lines(section.text, start, end)
            for piece_start, piece_end in pieces:
                text = section.text[piece_start:piece_end].strip()
                if not any(ch.isalnum() for ch in text):
                    continue
                if first_of_section and not lines and _continues_over_page(doc, index, sentences):
                    before = sentences[-1]
                    sentences[-1] = Sentence(
                        f"{before.text} {text}", before.section_index, before.start
                    )
                else:
                    sentences.append(Sentence(text, index, piece_start))
                first_of_section = False
    return sentences


def _continues_over_page(doc: ParsedDocument, index: int, sentences: Sequence[Sentence]) -> bool:
    """Whether section `index` opens with the rest of the last sentence of the section before
    it, on the page before: that sentence has no closing punctuation and this one opens in lower
    case (scripts without case never join)."""
    if index == 0 or not sentences or sentences[-1].section_index != index - 1:
        return False
    previous, section = doc.sections[index - 1], doc.sections[index]
    if not previous.pages or not section.pages or section.pages[0] != previous.pages[-1] + 1:
        return False
    ending = len(previous.text.rstrip())
    if previous.text[:ending].endswith(tuple(_SENTENCE_END)):
        return False
    if any(end >= ending for _, end in previous.protected):  # a table or code block
        return False
    opening = section.text.lstrip()[:1]
    return opening.isalpha() and opening.islower()


# What closes a sentence (or a line that stands alone: a heading or list item ending in a colon).
_SENTENCE_END = ".!?:;…。！？\"'”’)"


def _lines(text: str, start: int, end: int) -> list[Span]:
    spans, pos = [], start
    for line in text[start:end].split("\n"):
        if line.strip():
            spans.append((pos, pos + len(line)))
        pos += len(line) + 1
    return spans


__all__ = [
    "Sentence",
    "Span",
    "document_sentences",
    "normalise_spans",
    "segments",
    "sentence_spans",
]
