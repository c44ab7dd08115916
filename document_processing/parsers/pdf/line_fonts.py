"""The font of each line of a pdfplumber page's text: size and weight, for heading detection.

pdfplumber lays a page out into a `TextMap`: the page text as (character, char object) pairs, the
object None for the spaces and line breaks the layout inserted. Each char object holds the
character's `size` and `fontname`, so one pass over the pairs gives every text line its type
without a second layout analysis. Headings are decided per document (`headings.py`), which needs
the body size of all pages; a page only records what its lines look like.
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


def line_fonts(pairs: Iterable[tuple[str, Any]]) -> list[LineFont]:
    """One `LineFont` per "\\n"-separated line of the text the (character, char) pairs spell."""
    fonts: list[LineFont] = []
    sizes: list[float] = []
    bold = 0
    for char, obj in pairs:
        if char == "\n":
            fonts.append(_line_font(sizes, bold))
            sizes, bold = [], 0
        elif obj is not None and not char.isspace():
            sizes.append(obj["size"])
            bold += _is_bold(obj["fontname"])
    fonts.append(_line_font(sizes, bold))
    return fonts


def _line_font(sizes: list[float], bold: int) -> LineFont:
    if not sizes:
        return LineFont(size=0.0, bold=False, chars=0)
    count = len(sizes)
    needed = math.ceil(round(NEARLY_ALL * count, 6))  # characters that make "nearly all"
    sizes.sort()
    # The size nearly all characters reach: "Results¹" is set in the size of "Results".
    reached = sizes[count - needed]
    return LineFont(size=round(reached, 1), bold=bold >= needed, chars=count)


@lru_cache(maxsize=256)
def _is_bold(fontname: str) -> bool:
    return _BOLD_FONT.search(fontname) is not None
