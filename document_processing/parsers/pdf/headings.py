"""Headings of a PDF from the fonts of its lines, the way pymupdf4llm and marker find them.

A PDF has no heading markup (tagged PDFs aside), so headings are read from the type: the body size
is the size most of the document's characters are set in, and a line is a heading when nearly all
its characters are

- clearly larger than the body (at least `LARGER` times its size), or
- bold, at least the body size, and the line is short: a few words (`MAX_BOLD_WORDS`) not ending
  like a sentence or a clause (".", ",", ";"), so a bold phrase or a bold paragraph is not one.

A line of several cells (`line_fonts`: a table row, columns side by side) is never a heading: a
bold table header would look like one. Consecutive heading lines in the same type are one heading
that wrapped; a run of more than
`MAX_HEADING_LINES` is a paragraph set in large or bold type, not a heading. A heading text at a
page edge (its first or last `EDGE_LINES` lines) on half the pages or more is a running header,
the rule of `remove_running_lines` (compared with its digits: "Chapter 1" and "Chapter 2" are
headings); it matters when running lines are kept, or stand further in than that removal looks.
Levels follow the distinct heading sizes, largest first (level 1); a level-1 heading that is the
document's title heads all the others (level 0), as a Markdown H1 does. A heading with no text under
it before the next heading of its level or above (a title page's author and date lines in large
type) stays text: as a heading it would be in no section's path and reach no record.

Only pages whose engine reports line fonts (pdfplumber) take part: the other engines give plain
text, and a document in one type has no headings, so both are assembled as before.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from document_processing.cleaning import clean_text
from document_processing.records import LineFont

LARGER = 1.15  # a heading's size over the body size, when it is not bold
MAX_BOLD_WORDS = 12
MAX_HEADING_LINES = 3
MAX_HEADING_CHARS = 200
EDGE_LINES = 2  # the lines at the top and at the bottom `remove_running_lines` compares
_BODY_SIZE_SLACK = 0.95  # a bold heading at the body size may be a rounding below it

_NOT_A_HEADING_END = (".", ",", ";")


@dataclass(frozen=True)
class PdfHeading:
    start: int  # its first line in the page text
    stop: int  # one past its last line
    level: int  # 0: the document's title; 1: the largest heading size; 2: the next; ...
    text: str  # its lines joined and cleaned


@dataclass
class _Run:
    """Consecutive lines of one page in the same heading type."""

    page: int  # index in the document's pages
    start: int
    stop: int
    size: float  # the heading size, to 0.5 pt
    text: str
    at_edge: bool  # starts among the page's first or last EDGE_LINES non-empty lines


def find_headings(
    pages: list[list[str]], fonts: list[list[LineFont] | None], title: str
) -> list[list[PdfHeading]]:
    """Each page's headings, in line order; `fonts[i]` has one entry per line of `pages[i]`."""
    headings: list[list[PdfHeading]] = [[] for _ in pages]
    body = body_size(fonts)
    if body is None:
        return headings
    runs = [
        run
        for index, (lines, page_fonts) in enumerate(zip(pages, fonts, strict=True))
        if page_fonts is not None
        for run in _heading_runs(index, lines, page_fonts, body)
    ]
    runs = _without_running_lines(runs, len(pages))
    levels = {
        size: level for level, size in enumerate(sorted({r.size for r in runs}, reverse=True), 1)
    }
    wanted_title = _comparable(title)
    ranked = []
    for run in runs:
        level = levels[run.size]
        if level == 1 and _comparable(run.text) == wanted_title:
            level = 0
        ranked.append((run, level))
    for index, (run, level) in enumerate(ranked):
        following = ranked[index + 1] if index + 1 < len(ranked) else None
        if level == 0 or not _heads_nothing(run, level, following, pages):
            headings[run.page].append(PdfHeading(run.start, run.stop, level, run.text))
    return headings


def _heads_nothing(
    run: _Run, level: int, following: tuple[_Run, int] | None, pages: list[list[str]]
) -> bool:
    """Whether `run` has no text under it before the next heading of its level or above (or the
    document's end): a title page's author and date lines set in large type. Such a line stays
    text; as a heading it would reach no record, being in no section's heading path."""
    if following is not None and following[1] > level:
        return False  # it heads a deeper heading
    end = (following[0].page, following[0].start) if following else (len(pages), 0)
    for page in range(run.page, end[0] + 1 if end[0] < len(pages) else len(pages)):
        first = run.stop if page == run.page else 0
        last = end[1] if page == end[0] else len(pages[page])
        if any(line.strip() for line in pages[page][first:last]):
            return False
    return True


def body_size(fonts: list[list[LineFont] | None]) -> float | None:
    """The size most characters are set in (by their lines' sizes); None without fonts."""
    counts: Counter[float] = Counter()
    for page_fonts in fonts:
        for font in page_fonts or ():
            if font.chars:
                counts[font.size] += font.chars
    return counts.most_common(1)[0][0] if counts else None


def _heading_type(line: str, font: LineFont, body: float) -> tuple[float, bool] | None:
    """(size, bold) when the line looks like a heading line on its own, else None."""
    if not font.chars or not line.strip() or font.cells > 1:
        return None
    if font.size >= LARGER * body:
        return font.size, font.bold
    if (
        font.bold
        and font.size >= _BODY_SIZE_SLACK * body
        and len(line.split()) <= MAX_BOLD_WORDS
        and not line.rstrip().endswith(_NOT_A_HEADING_END)
    ):
        return font.size, True
    return None


def _heading_runs(page: int, lines: list[str], fonts: list[LineFont], body: float) -> list[_Run]:
    """Runs of heading lines on one page that make a heading (a wrapped one in two or three)."""
    runs: list[_Run] = []
    filled = [i for i, line in enumerate(lines) if line.strip()]
    edges = set(filled[:EDGE_LINES] + filled[-EDGE_LINES:])
    index = 0
    while index < len(lines):
        kind = _heading_type(lines[index], fonts[index], body)
        if kind is None:
            index += 1
            continue
        stop = index + 1
        while stop < len(lines) and _heading_type(lines[stop], fonts[stop], body) == kind:
            stop += 1
        text = " ".join(clean_text("\n".join(lines[index:stop])).split())
        if (
            stop - index <= MAX_HEADING_LINES
            and len(text) <= MAX_HEADING_CHARS
            and any(char.isalpha() for char in text)
            and (kind[0] >= LARGER * body or _is_short_phrase(text))
        ):
            runs.append(_Run(page, index, stop, round(kind[0] * 2) / 2, text, index in edges))
        index = stop
    return runs


def _is_short_phrase(text: str) -> bool:
    """A bold line at the body size is a heading only when all of it is a few words."""
    return len(text.split()) <= MAX_BOLD_WORDS and not text.endswith(_NOT_A_HEADING_END)


def _without_running_lines(runs: list[_Run], page_count: int) -> list[_Run]:
    """Runs whose text stands at a page edge on at least half the pages (both of two) are
    running headers."""
    if page_count < 2:
        return runs
    needed = 2 if page_count == 2 else max(3, math.ceil(page_count / 2))
    pages_with = Counter(
        text for text, _ in {(r.text.casefold(), r.page) for r in runs if r.at_edge}
    )
    return [run for run in runs if not (run.at_edge and pages_with[run.text.casefold()] >= needed)]


def _comparable(text: str) -> str:
    return " ".join(clean_text(text).split()).casefold()
