"""Images of pages (.png, .jpg, .tiff): text through OCR, one section per image (or TIFF frame).

A multi-page TIFF is read frame by frame, so a long scan never sits in memory whole. With
`document_processing.ocr: off`, or without an OCR engine installed, the file is reported as pages
needing OCR, as a scanned PDF is.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from document_processing.parsers.base import DocumentParser
from document_processing.records import DocumentMetadata, ParsedDocument, Section
from shared_utils.config import DocumentProcessingConfig
from shared_utils.errors import DocumentProcessingError


class ImageParser(DocumentParser):
    def parse(self, path: Path, source: str, settings: DocumentProcessingConfig) -> ParsedDocument:
        from document_processing.cleaning import clean_text
        from document_processing.parsers.ocr import ocr_engine

        engine = ocr_engine() if settings.ocr != "off" else None
        sections: list[Section] = []
        needing_ocr: list[int] = []
        engines: dict[int, str] = {}
        page_ocr: dict[int, dict[str, Any]] = {}
        count = 0
        for number, frame in _frames(path):
            count = number
            if engine is None:
                needing_ocr.append(number)
                engines[number] = "none"
                continue
            try:
                result = engine.read(frame)
            except MemoryError:
                raise
            except Exception as exc:
                raise DocumentProcessingError(
                    f"{path}: OCR failed on image {number} ({type(exc).__name__}: {exc})"[:300]
                ) from None
            engines[number] = engine.name
            page_ocr[number] = result.metadata(dpi=None)
            text = clean_text(result.text, pdf_layout=True)
            if text:
                sections.append(Section(text=text, pages=[number], engines=[engine.name]))
        return ParsedDocument(
            source=source,
            doc_type="image",
            metadata=DocumentMetadata(title=path.stem, page_count=count),
            sections=sections,
            pages_needing_ocr=needing_ocr,
            page_engines=engines,
            page_ocr=page_ocr,
        )


def _frames(path: Path) -> Iterator[tuple[int, Any]]:
    """(1-based number, image) of each frame, decoded one at a time; a file Pillow cannot
    decode (not an image, truncated, a decompression bomb) fails with one line naming it."""
    from PIL import Image, ImageSequence, UnidentifiedImageError

    try:
        image = Image.open(path)
    except UnidentifiedImageError:
        raise DocumentProcessingError(f"{path}: not an image Pillow can read") from None
    except Image.DecompressionBombError as exc:
        raise DocumentProcessingError(f"{path}: image too large to decode ({exc})") from None
    except OSError as exc:
        raise DocumentProcessingError(f"{path}: cannot be read ({exc})") from None
    with image:
        number = 0
        frames = ImageSequence.Iterator(image)
        while True:
            try:
                frame = next(frames)
                frame.load()
            except StopIteration:
                break
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
                raise DocumentProcessingError(
                    f"{path}: image {number + 1} cannot be decoded ({type(exc).__name__}: {exc})"
                ) from None
            number += 1
            yield number, frame
