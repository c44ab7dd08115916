"""The font of each line of a pdfplumber page's text: size, weight and cells, for heading detection.

pdfplumber lays a page out into a `TextMap`: the page text as (character, char object) pairs, the
object None for the spaces and line breaks the layout inserted. Each char object holds the
character's `size` and `fontname`, so one pass over the pairs gives every text line its type
without a second layout analysis. Headings are decided per document (`headings.py`), which needs
the body size of all pages; a page only records what its lines look like.

A line's *cells* are the runs of its text that stand apart by a horizontal gap of more than
`CELL_GAP` times the type size, far wider than a word space: the cells of a table row, or two
columns side by side. A leading section number ("2.1", "IV.", "A") set off by a wide space, as
LaTeX and Word set numbered headings, is not a cell of its own.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from document_processing.records import LineFont

# "Helvetica-Bold", "ABCDEF+Arial-BoldMT", "SemiBold", "Black", "Heavy"; TeX's bold extended
# Computer Modern and cm-super fonts ("CMBX12", "SFBX1200").
_BOLD_FONT = re.compile(r"bold|black|heavy|cmbx|sfbx", re.IGNORECASE)

# "Nearly all" of a line's characters: a footnote mark or a symbol in another font is allowed.
NEARLY_ALL = 0.8

# A gap between two characters of a line wider than this many times their size separates cells;
# a word space is about a quarter of the size, LaTeX's space after a section number one.
CELL_GAP = 1.5
_SECTION_NUMBER = re.compile(r"(?:\d+(?:\.\d+)*|[IVXLC]+|[A-Z])\.?")


def line_fonts(pairs: Iterable[tuple[str, Any]]) -> list[LineFont]:
    """One `LineFont` per "\\n"-separated line of the text the (character, char) pairs spell."""
    fonts: list[LineFont] = []
    chars: list[dict[str, Any]] = []
    for char, obj in pairs:
        if char == "\n":
            fonts.append(_line_font(chars))
            chars = []
        elif obj is not None and not char.isspace():
            chars.append(obj)
    fonts.append(_line_font(chars))
    return fonts


def _line_font(chars: list[dict[str, Any]]) -> LineFont:
    if not chars:
        return LineFont(size=0.0, bold=False, chars=0)
    count = len(chars)
    needed = math.ceil(round(NEARLY_ALL * count, 6))  # characters that make "nearly all"
    sizes = sorted(obj["size"] for obj in chars)
    # The size nearly all characters reach: "Results¹" is set in the size of "Results".
    reached = sizes[count - needed]
    bold = sum(_is_bold(obj["fontname"]) for obj in chars)
    return LineFont(size=round(reached, 1), bold=bold >= needed, chars=count, cells=_cells(chars))


def _cells(chars: list[dict[str, Any]]) -> int:
    """The runs of the line's characters (in reading order) that wide gaps separate."""
    runs = [[chars[0]["text"]]]
    for before, after in zip(chars, chars[1:], strict=False):
        gap = after["x0"] - before["x1"]
        if gap > CELL_GAP * max(before["size"], after["size"]):
            runs.append([])
        runs[-1].append(after["text"])
    if len(runs) > 1 and _SECTION_NUMBER.fullmatch("".join(runs[0])):
        return len(runs) - 1
    return len(runs)


@lru_cache(maxsize=256)
def _is_bold(fontname: str) -> bool:
    return _BOLD_FONT.search(fontname) is not None
