"""The interface every parser implements; `parsers/__init__.py` picks one by file suffix.

A parser reads one file and returns a `ParsedDocument` with cleaned sections. Parsers raise
`DocumentProcessingError` (or `SecurityError`) with a message that names the file; the pipeline
records it against that file and goes on with the others.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from document_processing.records import ParsedDocument
from shared_utils.config import DocumentProcessingConfig


class DocumentParser(ABC):
    """Turns one file into a `ParsedDocument` (`parsers/__init__.py` maps suffixes to parsers)."""

    @abstractmethod
    def parse(self, path: Path, source: str, settings: DocumentProcessingConfig) -> ParsedDocument:
        """Parse `path`; `source` is its path relative to the input folder (forward slashes)."""
