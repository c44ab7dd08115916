"""Parsers registered by file suffix: PDF, Markdown, plain text."""

from __future__ import annotations

from pathlib import Path

from document_processing.parsers.base import DocumentParser

SUPPORTED_SUFFIXES = (".pdf", ".md", ".markdown", ".txt")


def parser_for(path: Path) -> DocumentParser:
    """The parser for `path`'s suffix (imported lazily: pdfplumber is slow to import)."""
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        from document_processing.parsers.pdf_parser import PDFParser

        return PDFParser()
    if suffix in (".md", ".markdown"):
        from document_processing.parsers.markdown_parser import MarkdownParser

        return MarkdownParser()
    if suffix == ".txt":
        from document_processing.parsers.text_parser import TextParser

        return TextParser()
    raise ValueError(f"no parser for '{path.suffix}' files; supported: {SUPPORTED_SUFFIXES}")
