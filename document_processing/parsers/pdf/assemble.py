"""A PDF's document from its pages: running lines removed, text cleaned, sections built.

Sections follow the headings `find_headings` reads from the fonts of the lines that survive
running-line removal: each section's text starts after its heading and carries the heading path
(["Field Report", "Methods"]), and with `pdf.extract_by_page` a section is cut at every page
break, each piece with the path and its one page. A document without headings (an engine without
fonts, text in one type) has one section per page, or one in all.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from document_processing.cleaning import clean_text, remove_running_lines
from document_processing.parsers.pdf.headings import PdfHeading, find_headings
from document_processing.parsers.pdf.probe import PdfInfo
from document_processing.records import LineFont, PageText, ParsedDocument, Section
from shared_utils.config import DocumentProcessingConfig


def assemble_pdf_document(
    source: str, info: PdfInfo, pages: list[PageText], settings: DocumentProcessingConfig
) -> ParsedDocument:
    """Build the document: running lines removed, text cleaned, sections by heading or by page."""
    pages = sorted(pages, key=lambda page: page.number)
    with_text = [page for page in pages if page.text.strip()]
    texts = [page.text for page in with_text]
    # Only pages with text vote on running lines: blank pages would dilute the repetition count.
    if settings.remove_headers_footers:
        texts = remove_running_lines(texts)
    lines = [text.split("\n") for text in texts]
    fonts = [_kept_line_fonts(page, kept) for page, kept in zip(with_text, lines, strict=True)]
    headings = find_headings(lines, fonts, info.metadata.title)
    if any(headings):
        sections = _headed_sections(with_text, lines, fonts, headings, settings.pdf.extract_by_page)
    elif settings.pdf.extract_by_page:
        sections = [
            Section(text=cleaned, pages=[page.number], engines=[page.engine])
            for page, text in zip(with_text, texts, strict=True)
            if (cleaned := clean_text(text, pdf_layout=True))
        ]
    else:
        # Joined before cleaning so a paragraph or a hyphenated word running over a page break is
        # rejoined like any wrapped line.
        whole = clean_text("\n".join(texts), pdf_layout=True)
        sections = (
            [
                Section(
                    text=whole,
                    pages=[page.number for page in with_text],
                    engines=[page.engine for page in with_text],
                )
            ]
            if whole
            else []
        )
    warnings = [*info.warnings, *(warning for page in pages for warning in page.warnings)]
    sections = _cut_to_length(sections, settings.max_text_length, warnings)
    return ParsedDocument(
        source=source,
        doc_type="pdf",
        metadata=replace(info.metadata, page_count=info.page_count),
        sections=sections,
        pages_needing_ocr=[page.number for page in pages if page.needs_ocr],
        page_engines={page.number: page.engine for page in pages},
        page_ocr={page.number: page.ocr for page in pages if page.ocr is not None},
        warnings=warnings,
    )


def _kept_line_fonts(page: PageText, kept: list[str]) -> list[LineFont] | None:
    """The fonts of the lines running-line removal kept (it only deletes lines), in order."""
    fonts = page.line_fonts
    original = page.text.split("\n")
    if fonts is None or len(fonts) != len(original):
        return None  # not pdfplumber's text, or its lines changed since ("\r" became "\n")
    if len(kept) == len(original):
        return fonts
    aligned: list[LineFont] = []
    index = 0
    for line in kept:
        while index < len(original) and original[index] != line:
            index += 1
        if index == len(original):
            return None
        aligned.append(fonts[index])
        index += 1
    return aligned


@dataclass
class _Piece:
    """Lines under one heading path (on one page, when sections are cut at page breaks)."""

    path: list[str]
    lines: list[str] = field(default_factory=list)
    pages: list[int] = field(default_factory=list)
    engines: list[str] = field(default_factory=list)

    def add(self, line: str, page: PageText) -> None:
        self.lines.append(line)
        if line.strip() and page.number not in self.pages:
            self.pages.append(page.number)
            self.engines.append(page.engine)

    def section(self) -> Section | None:
        # Cleaned as one text, so a paragraph or a hyphenated word running over a page break
        # is rejoined like any wrapped line.
        text = clean_text("\n".join(self.lines), pdf_layout=True)
        if not text:
            return None  # a heading right above its subheading: it heads their sections
        return Section(text=text, heading_path=self.path, pages=self.pages, engines=self.engines)


def _headed_sections(
    pages: list[PageText],
    lines: list[list[str]],
    fonts: list[list[LineFont] | None],
    headings: list[list[PdfHeading]],
    by_page: bool,
) -> list[Section]:
    """Sections between headings, with their heading paths; cut at page breaks when `by_page`.

    A page without fonts (read by pypdf or OCR) may hold headings no one can see: its text, and
    the text after it up to the next heading, gets no heading path rather than a wrong one.
    """
    pieces: list[_Piece] = []
    stack: list[tuple[int, str]] = []  # (level, text) of the enclosing headings
    for page, page_lines, page_fonts, page_headings in zip(
        pages, lines, fonts, headings, strict=True
    ):
        if page_fonts is None:
            stack.clear()
        path = [text for _, text in stack]
        if by_page or not pieces or pieces[-1].path != path:
            pieces.append(_Piece(path=path))
        starts = {heading.start: heading for heading in page_headings}
        index = 0
        while index < len(page_lines):
            heading = starts.get(index)
            if heading is None:
                pieces[-1].add(page_lines[index], page)
                index += 1
                continue
            while stack and stack[-1][0] >= heading.level:
                stack.pop()
            stack.append((heading.level, heading.text))
            pieces.append(_Piece(path=[text for _, text in stack]))
            index = heading.stop
    return [section for piece in pieces if (section := piece.section()) is not None]


def _cut_to_length(sections: list[Section], limit: int, warnings: list[str]) -> list[Section]:
    """Sections holding at most `limit` characters in all; a warning says how much was cut."""
    total = sum(len(section.text) for section in sections)
    if total <= limit:
        return sections
    kept: list[Section] = []
    room = limit
    for section in sections:
        if room <= 0:
            break
        if len(section.text) > room:
            section = replace(section, text=section.text[:room])
        kept.append(section)
        room -= len(section.text)
    warnings.append(
        f"text cut at {limit:,} characters (document_processing.max_text_length); "
        f"{total - limit:,} characters dropped"
    )
    return kept
