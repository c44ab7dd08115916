"""PDF text: probe a file, extract page ranges with a fallback engine, assemble the document.

The extract pipeline splits a large PDF into page ranges that run in parallel, so the work is three
functions: `probe_pdf` (page count and metadata, fast), `extract_pages` (raw text of pages
`first..last`) and `assemble_pdf_document` (running lines removed, text cleaned, sections built
under the headings found from the fonts).
`PDFParser.parse` chains the three for callers that want one call.

    probe.py       `probe_pdf`: page count and metadata (pypdfium2; pypdf when pypdfium2 cannot
                   open the file)
    extract.py     `extract_pages`: the primary engine, pypdf for the pages it fails, OCR for pages
                   without text
    quality.py     `page_quality_problem`: whether a page's text looks broken, and which is better
    engines.py     pdfplumber, pypdfium2 and pypdf behind one interface; passwords; documents kept
                   open for a file's next page range
    glyph_scan.py  `UnmappedGlyphScan`: the pages pdfplumber would fill with "(cid:NN)", from their
                   fonts and content streams
    line_fonts.py  `line_fonts`: the size and weight of each line of a pdfplumber page's text
    headings.py    `find_headings`: headings from the line fonts of the whole document
    assemble.py    `assemble_pdf_document`: the pages into one document, sections by heading
"""

from __future__ import annotations

from pathlib import Path

from document_processing.parsers.base import DocumentParser
from document_processing.parsers.pdf.assemble import assemble_pdf_document
from document_processing.parsers.pdf.extract import extract_pages, read_pages_by_ocr
from document_processing.parsers.pdf.probe import PdfInfo, build_metadata, parse_pdf_date, probe_pdf
from document_processing.parsers.pdf.quality import (
    damaged_word_share,
    glyph_name_count,
    page_quality_problem,
    remove_glyph_names,
)
from document_processing.records import ParsedDocument
from shared_utils.config import DocumentProcessingConfig


class PDFParser(DocumentParser):
    """Whole-file parsing in one call: probe, extract every page, assemble."""

    def parse(self, path: Path, source: str, settings: DocumentProcessingConfig) -> ParsedDocument:
        info = probe_pdf(path, settings)
        pages = extract_pages(path, 1, info.page_count, settings)
        return assemble_pdf_document(source, info, pages, settings)


__all__ = [
    "PDFParser",
    "PdfInfo",
    "assemble_pdf_document",
    "build_metadata",
    "damaged_word_share",
    "extract_pages",
    "glyph_name_count",
    "page_quality_problem",
    "parse_pdf_date",
    "probe_pdf",
    "read_pages_by_ocr",
    "remove_glyph_names",
]
