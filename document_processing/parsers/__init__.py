"""Parsers registered by file suffix: PDF, Markdown, plain text, Word, HTML, EPUB, images."""

from __future__ import annotations

from pathlib import Path

from document_processing.parsers.base import DocumentParser

# suffix -> (module, class); modules are imported lazily: pdfplumber, trafilatura and python-docx
# are slow to import, and a run needs only the parsers of the files it meets.
_PARSERS = {
    ".pdf": ("pdf", "PDFParser"),
    ".md": ("markdown_parser", "MarkdownParser"),
    ".markdown": ("markdown_parser", "MarkdownParser"),
    ".txt": ("text_parser", "TextParser"),
    ".docx": ("docx_parser", "DocxParser"),
    ".html": ("html_parser", "HTMLParser"),
    ".htm": ("html_parser", "HTMLParser"),
    ".xhtml": ("html_parser", "HTMLParser"),
    ".epub": ("epub_parser", "EpubParser"),
    ".png": ("image_parser", "ImageParser"),
    ".jpg": ("image_parser", "ImageParser"),
    ".jpeg": ("image_parser", "ImageParser"),
    ".tif": ("image_parser", "ImageParser"),
    ".tiff": ("image_parser", "ImageParser"),
}
SUPPORTED_SUFFIXES = tuple(_PARSERS)


def parser_for(path: Path) -> DocumentParser:
    """The parser for `path`'s suffix."""
    from importlib import import_module

    entry = _PARSERS.get(path.suffix.lower())
    if entry is None:
        raise ValueError(f"no parser for '{path.suffix}' files; supported: {SUPPORTED_SUFFIXES}")
    module, name = entry
    parser: DocumentParser = getattr(import_module(f"document_processing.parsers.{module}"), name)()
    return parser
