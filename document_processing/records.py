"""The record types every parser produces and the converter consumes.

A parser turns one file into a `ParsedDocument`: document metadata plus a list of `Section`s. A
section is the unit chunking never crosses (a Markdown section under one heading path, a PDF
section under one heading path and, when `extract_by_page` is on, on one page; a whole text
file). Its text is already cleaned; `protected` lists the character spans (code blocks, tables)
that chunking keeps whole and cleaning left verbatim.

These objects cross process boundaries (workers pickle them back), so they hold plain data only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

DocType = Literal["pdf", "markdown", "text", "docx", "html", "epub", "image"]


@dataclass(frozen=True)
class LineFont:
    """The type of one line of a page's text, from the characters the engine placed on it."""

    size: float  # points (0.1 pt): the size at least 80% of its non-space characters reach
    bold: bool  # at least 80% of its non-space characters are in a bold font
    chars: int  # its non-space characters
    cells: int = 1  # runs of text set apart by wide gaps: table cells or columns side by side


@dataclass
class PageText:
    """Raw text of one PDF page as an engine returned it, before document-level cleaning."""

    number: int  # 1-based page number
    text: str
    engine: str  # "pdfplumber", "pypdf", "pypdfium2", "rapidocr", or "none" when nothing read it
    needs_ocr: bool = False  # no text layer and no OCR: the page is an image
    warnings: list[str] = field(default_factory=list)
    ocr: dict[str, Any] | None = None  # the OCR engine, its confidence and dpi, when OCR read it
    # One per line of `text` (pdfplumber only; None from other engines): headings are found by it.
    line_fonts: list[LineFont] | None = None


@dataclass
class Section:
    text: str
    heading_path: list[str] = field(default_factory=list)  # ["Guide", "Install"]
    pages: list[int] = field(default_factory=list)  # 1-based; empty for non-paged formats
    engines: list[str] = field(default_factory=list)  # PDF engine per page in `pages`
    protected: list[tuple[int, int]] = field(default_factory=list)  # [start, end) char spans


@dataclass
class DocumentMetadata:
    title: str
    author: str | None = None
    created: str | None = None  # ISO 8601 where the source gives a date
    modified: str | None = None
    page_count: int | None = None
    encoding: str | None = None  # detected encoding of text files
    extra: dict[str, str] = field(default_factory=dict)  # other frontmatter / info keys, as text


@dataclass
class ParsedDocument:
    source: str  # path relative to INPUT_DIR, with forward slashes
    doc_type: DocType
    metadata: DocumentMetadata
    sections: list[Section]
    pages_needing_ocr: list[int] = field(default_factory=list)
    page_engines: dict[int, str] = field(default_factory=dict)
    page_ocr: dict[int, dict[str, Any]] = field(default_factory=dict)  # pages OCR read
    warnings: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The cleaned text of the whole document, sections separated by a blank line."""
        return "\n\n".join(section.text for section in self.sections if section.text)
