"""Text cleaning shared by every document format.

`clean_text` turns extracted text (a PDF page, a text file, a Markdown paragraph) into plain prose:
NFKC-normalised, ligatures expanded, soft hyphens and control characters gone, words hyphenated
across a line end rejoined, wrapped lines joined into paragraphs separated by exactly one blank
line, list items kept on their own lines. It works on the whole string with compiled regexes and
`str.replace` (no Python loop per character) so it keeps up with large inputs, and it is
idempotent.

PDF text has no blank lines between paragraphs; `clean_text(text, pdf_layout=True)` first runs
`mark_paragraphs`, which guesses the paragraph ends from short lines that end a sentence.

`remove_running_lines` drops running headers, footers and page numbers that repeat across pages.
"""

from __future__ import annotations

import re
import statistics
import unicodedata

from shared_utils.security import remove_control_characters

# Separators that mean a line or paragraph break but are not "\n": form feed (PDF page break),
# vertical tab, NEL and the Unicode line/paragraph separators. They would otherwise be dropped as
# control characters (gluing words together) or survive as odd whitespace.
_BREAK_CHARS = {"\f": "\n\n", "\v": "\n", "\x85": "\n", "\u2028": "\n", "\u2029": "\n\n"}

# A soft hyphen at a line end marks a hyphenation point: the word continues on the next line with
# no space. Elsewhere soft hyphens and zero-width characters are invisible noise for training.
_INVISIBLE_CHARS = ("\u00ad", "\u200b", "\u2060", "\ufeff")
_INVISIBLE = re.compile(r"\u00ad[^\S\n]*\n[^\S\n]*|[\u00ad\u200b\u2060\ufeff]")

# The horizontal whitespace NFKC leaves besides " ": it maps no-break, en/em, thin and ideographic
# spaces to " ", and the vertical and control ones are gone by then. Python's `re` is slow at
# substituting on every space, so these are replaced with `str.replace` and runs of spaces with a
# pattern that starts with a literal (which `re` searches for quickly).
_OTHER_HORIZONTAL_SPACES = ("\t", "\u1680")
_SPACE_RUN = re.compile(r"  +")

# A line that starts a list item: bullets, dashes, or "1." / "1)" numbering (at most 3 digits, so a
# wrapped line starting with a year such as "2024. " is less likely to be taken for one), followed
# by a space, or by the end of the text (an empty last item, whose space the final strip removed).
LIST_ITEM_PATTERN = r"(?:[-*+•◦▪‣–]|\d{1,3}[.)])(?: |\Z)"
_LIST_ITEM = re.compile(LIST_ITEM_PATTERN)
_LIST_ITEM_LINE = re.compile(r"\n(?=" + LIST_ITEM_PATTERN + ")")

# A hyphen at a line end before a word character (the next line not a list item); what becomes of
# it is decided in `_join_hyphenated`, which also checks the character before the hyphen.
_LINE_END_HYPHEN = re.compile(r"-\n(?=\w)(?!" + LIST_ITEM_PATTERN + ")")

_BLANK_LINE_RUN = re.compile(r"\n\n\n+")
# Placeholders while single newlines are turned into spaces; control characters are gone by then,
# so they cannot clash with the text.
_PARAGRAPH_MARK = "\x00"
_LIST_MARK = "\x01"

# mark_paragraphs: a sentence ends with . ! ? or : possibly followed by closing quotes/brackets.
_SENTENCE_END = re.compile(r"[.!?:][\"'”’»)\]]*$")
_SHORT_LINE_RATIO = 0.7
_MIN_LINES_FOR_LAYOUT = 4


def clean_text(text: str, pdf_layout: bool = False) -> str:
    """Clean extracted text into paragraphs separated by exactly one blank line.

    Rules, in order:
    - form feed, vertical tab, NEL, U+2028/U+2029 become line/paragraph breaks; "\\r\\n" and "\\r"
      become "\\n"; other control characters (C0/C1, except tab and newline) are dropped;
    - soft hyphens (U+00AD), zero-width spaces (U+200B), word joiners (U+2060) and stray byte
      order marks (U+FEFF) are removed; a soft hyphen at a line end joins the word across lines;
    - Unicode NFKC, which expands the ligatures U+FB00-U+FB06 (ﬀ ﬁ ﬂ ﬃ ﬄ ﬅ ﬆ), full-width forms and
      non-breaking spaces;
    - runs of spaces and tabs become one space; every line is stripped;
    - hyphenation: a line ending in "-" directly after a letter or digit is joined to the next
      line with no space when that line starts with a letter or digit. The hyphen is dropped when
      a lowercase letter stands on both sides ("exam-\\nple" -> "example") and kept otherwise
      ("Jean-\\nPaul" -> "Jean-Paul", "1990-\\n2000" -> "1990-2000"). A real compound broken at
      its own hyphen ("well-\\nknown") cannot be told apart without a dictionary and becomes
      "wellknown"; typesetters rarely break there. "word -" (a dash after a space) is not touched;
    - with `pdf_layout`, `mark_paragraphs` inserts the paragraph breaks PDF text lacks;
    - two or more line breaks become one blank line ("\\n\\n"); a single line break becomes a
      space, except before a list item ("- ", "* ", "+ ", "• ", "– ", "1. ", "1) "), which keeps
      its own line;
    - the result is stripped.
    """
    if "\n" not in text and "\r" not in text and text.isascii() and text.isprintable():
        # Fast path for one clean ASCII line (Markdown headings, table cells, short fields).
        return _SPACE_RUN.sub(" ", text).strip()
    for char, replacement in _BREAK_CHARS.items():
        if char in text:
            text = text.replace(char, replacement)
    text = remove_control_characters(text)
    if any(char in text for char in _INVISIBLE_CHARS):
        text = _INVISIBLE.sub("", text)
    if not unicodedata.is_normalized("NFKC", text):
        text = unicodedata.normalize("NFKC", text)
    text = _collapse_horizontal_space(text)
    # Strip every line: after the collapse at most one space stands on each side of a newline.
    text = text.replace(" \n", "\n").replace("\n ", "\n")
    if "-\n" in text:
        text = _LINE_END_HYPHEN.sub(_join_hyphenated, text)
    if pdf_layout:
        text = mark_paragraphs(text)
    return _join_wrapped_lines(text).strip()


def _collapse_horizontal_space(text: str) -> str:
    """Every run of horizontal whitespace becomes one space (on NFKC text without controls)."""
    for char in _OTHER_HORIZONTAL_SPACES:
        if char in text:
            text = text.replace(char, " ")
    return _SPACE_RUN.sub(" ", text)


def _join_hyphenated(match: re.Match[str]) -> str:
    """A word split by hyphenation loses the hyphen; a hyphenated name or range keeps it."""
    start = match.start()
    before = match.string[start - 1] if start else ""
    if not (before.isalnum() or before == "_"):
        return match.group()  # "word -" or "--": a dash, not hyphenation
    after = match.string[match.end()]
    return "" if before.islower() and after.islower() else "-"


def _join_wrapped_lines(text: str) -> str:
    """Paragraph breaks become "\n\n"; other newlines become spaces unless a list item follows."""
    text = _BLANK_LINE_RUN.sub("\n\n", text)
    text = text.replace("\n\n", _PARAGRAPH_MARK)
    text = _LIST_ITEM_LINE.sub(_LIST_MARK, text)
    text = text.replace("\n", " ")
    return text.replace(_LIST_MARK, "\n").replace(_PARAGRAPH_MARK, "\n\n")


def mark_paragraphs(text: str) -> str:
    """Insert a blank line after each line that looks like the end of a paragraph.

    PDF engines return one line per printed line and no blank lines, so paragraph ends must be
    guessed. A line ends a paragraph when it ends a sentence (. ! ? : possibly followed by closing
    quotes or brackets) and is clearly shorter than a full line: under 0.7 times the median length
    of the non-empty lines. A full-width line ending with a period is usually a sentence that
    happens to end at the margin, so it stays joined to the next one. No break is inserted before
    a list item (it keeps its own line anyway) or where a blank line already follows. Texts with
    fewer than four non-empty lines have no meaningful median and are returned unchanged.
    """
    lines = text.split("\n")
    lengths = [len(line.strip()) for line in lines if line.strip()]
    if len(lengths) < _MIN_LINES_FOR_LAYOUT:
        return text
    threshold = _SHORT_LINE_RATIO * statistics.median(lengths)
    marked: list[str] = []
    for index, line in enumerate(lines):
        marked.append(line)
        stripped = line.strip()
        if not stripped or len(stripped) >= threshold or index + 1 == len(lines):
            continue
        following = lines[index + 1].strip()
        if following and not _LIST_ITEM.match(following) and _SENTENCE_END.search(stripped):
            marked.append("")
    return "\n".join(marked)


# --------------------------------------------------------------------------------------------------
# running headers, footers and page numbers
# --------------------------------------------------------------------------------------------------

_EDGE_LINES = 2  # how many non-empty lines at the top and at the bottom of a page are compared
_DIGITS = re.compile(r"\d+")
_WHITESPACE = re.compile(r"\s+")
_ROMAN = r"(?=[ivxlcdm])m{0,4}(?:cm|cd|d?c{0,3})(?:xc|xl|l?x{0,3})(?:ix|iv|v?i{0,3})"
# "3", "- 3 -", "(3)", "[3]", "Page 3", "Page 3 of 10", "p. 3", "3 / 10", "iii" (after casefold).
_PAGE_NUMBER = re.compile(
    r"(?:(?:page|pg\.?|p\.)\s*)?[-–—(\[]?\s*(?:\d{1,5}|" + _ROMAN + r")\s*[-–—)\]]?"
    r"(?:\s*(?:of|/)\s*\d{1,5})?"
)


def remove_running_lines(pages: list[str]) -> list[str]:
    """Drop running headers, footers and page numbers that repeat across pages.

    The first two and last two non-empty lines of each page are compared after normalising them
    (each run of digits -> "#", whitespace collapsed, casefolded), so "Page 3 of 10" and
    "Page 4 of 10" are the same line. A line whose normalised form sits at the top (or the bottom)
    of at least half of the pages, and of at least three pages, is removed from every page where
    it sits at that edge; with exactly two pages it must be on both. A line that is only a page
    number ("3", "- 3 -", "Page 3 of 10", "iii") at a page edge is removed when at least two pages
    have one. Everything else, including body text that repeats on a page or two, is kept.
    Returns one text per page, in order; removed lines are deleted, other lines are untouched.
    """
    if len(pages) < 2:
        return list(pages)
    page_lines = [page.split("\n") for page in pages]
    edges = [_edge_indices(lines) for lines in page_lines]
    top_repeats = _repeated_forms(page_lines, [top for top, _ in edges])
    bottom_repeats = _repeated_forms(page_lines, [bottom for _, bottom in edges])
    number_pages = sum(
        any(_is_page_number(lines[i]) for i in top + bottom)
        for lines, (top, bottom) in zip(page_lines, edges, strict=True)
    )
    drop_page_numbers = number_pages >= 2

    cleaned: list[str] = []
    for lines, (top, bottom) in zip(page_lines, edges, strict=True):
        drop = {i for i in top if _normalise_line(lines[i]) in top_repeats}
        drop |= {i for i in bottom if _normalise_line(lines[i]) in bottom_repeats}
        if drop_page_numbers:
            drop |= {i for i in top + bottom if _is_page_number(lines[i])}
        cleaned.append("\n".join(line for i, line in enumerate(lines) if i not in drop))
    return cleaned


def _edge_indices(lines: list[str]) -> tuple[list[int], list[int]]:
    """Indices of the first and the last `_EDGE_LINES` non-empty lines of a page."""
    filled = [i for i, line in enumerate(lines) if line.strip()]
    return filled[:_EDGE_LINES], filled[-_EDGE_LINES:]


def _normalise_line(line: str) -> str:
    return _WHITESPACE.sub(" ", _DIGITS.sub("#", line)).strip().casefold()


def _is_page_number(line: str) -> bool:
    return _PAGE_NUMBER.fullmatch(line.strip().casefold()) is not None


def _repeated_forms(page_lines: list[list[str]], positions: list[list[int]]) -> set[str]:
    """Normalised lines found at these edge positions on enough pages to be running lines."""
    page_count = len(page_lines)
    needed = 2 if page_count == 2 else max(3, (page_count + 1) // 2)
    counts: dict[str, int] = {}
    for lines, indices in zip(page_lines, positions, strict=True):
        for form in {_normalise_line(lines[i]) for i in indices}:
            counts[form] = counts.get(form, 0) + 1
    return {form for form, count in counts.items() if count >= needed}
