"""A PDF's document from its pages: running lines removed, text cleaned, sections built."""

from __future__ import annotations

from dataclasses import replace

from document_processing.parsers.pdf.probe import PdfInfo
from document_processing.records import PageText, ParsedDocument, Section
from shared_utils.config import DocumentProcessingConfig


def assemble_pdf_document(
    source: str, info: PdfInfo, pages: list[PageText], settings: DocumentProcessingConfig
) -> ParsedDocument:
    """Build the document: running lines removed, text cleaned, one section per page or in all."""
    from document_processing.cleaning import clean_text, remove_running_lines

    pages = sorted(pages, key=lambda page: page.number)
    with_text = [page for page in pages if page.text.strip()]
    texts = [page.text for page in with_text]
    # Only pages with text vote on running lines: blank pages would dilute the repetition count.
    if settings.remove_headers_footers:
        texts = remove_running_lines(texts)
    if settings.pdf.extract_by_page:
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
