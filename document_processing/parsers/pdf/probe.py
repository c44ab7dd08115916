"""Probe a PDF: page count and metadata without extracting text (pypdfium2, pypdf if it fails).

`probe_pdf` runs before any text is extracted: the pipeline needs the page count to split a large
file into page ranges, and the metadata (title, author, dates) goes into every chunk record.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from document_processing.parsers.pdf.engines import (
    FALLBACK_ENGINE,
    PasswordRejected,
    PypdfDocument,
    encrypted_error,
    error_line,
    import_pypdf,
    is_pdfium_password_error,
    open_with_passwords,
)
from document_processing.records import DocumentMetadata
from shared_utils.config import DocumentProcessingConfig, PdfConfig
from shared_utils.errors import DocumentProcessingError

# Acrobat accepts the "%PDF-" header anywhere in the first 1024 bytes.
_HEADER_WINDOW = 1024

# D:YYYYMMDDHHmmSSOHH'mm' with every part after the year optional (PDF 1.7, section 7.9.4).
_PDF_DATE = re.compile(
    r"(?:D:)?(?P<year>\d{4})(?P<month>\d{2})?(?P<day>\d{2})?"
    r"(?:(?P<hour>\d{2})(?P<minute>\d{2})?(?P<second>\d{2})?)?"
    r"(?:(?P<utc>[Zz])|(?P<sign>[+-])(?P<tzh>\d{2})'?(?P<tzm>\d{2})?'?)?"
)
_STANDARD_INFO_KEYS = ("Title", "Author", "CreationDate", "ModDate")


@dataclass
class PdfInfo:
    """What `probe_pdf` learns without extracting text; plain data, pickled back from workers."""

    page_count: int
    metadata: DocumentMetadata
    encrypted: bool
    engine: str = "pypdfium2"  # the engine that read the page count and metadata
    warnings: list[str] = field(default_factory=list)  # go to the document's report entry


def probe_pdf(path: Path, settings: DocumentProcessingConfig) -> PdfInfo:
    """Page count and document metadata, read with pypdfium2 (milliseconds, even for big files).

    A file pypdfium2 cannot load is probed with pypdf, so the text engines still get their chance
    at it; `PdfInfo.engine` and a warning in the report say which engine probed. Raises
    `DocumentProcessingError` naming the file when it is empty, not a PDF, corrupt (neither
    engine reads it), or encrypted with a password that neither the empty one nor `pdf.password`
    matches.
    """
    _check_pdf_header(path)
    engine, warnings = "pypdfium2", []
    try:
        page_count, info, encrypted = _probe_with_pdfium(path, settings.pdf)
    except PasswordRejected:
        raise encrypted_error(path) from None
    except Exception as exc:  # pdfium reports every load failure as PdfiumError
        page_count, info, encrypted = _probe_with_pypdf(path, settings.pdf, exc)
        engine = FALLBACK_ENGINE
        warnings.append(
            f"pypdfium2 cannot open the file ({error_line(exc)}); page count and metadata "
            f"read with {FALLBACK_ENGINE}"
        )
    if page_count == 0:
        raise DocumentProcessingError(f"{path}: the PDF has no pages")
    metadata = build_metadata(info, fallback_title=path.stem, page_count=page_count)
    return PdfInfo(page_count, metadata, encrypted, engine=engine, warnings=warnings)


def _probe_with_pdfium(path: Path, pdf: PdfConfig) -> tuple[int, dict[str, str], bool]:
    """(page count, info dictionary, encrypted) read by pypdfium2."""
    import pypdfium2 as pdfium

    document = open_with_passwords(
        lambda password: pdfium.PdfDocument(path, password=password or None),
        pdf,
        is_pdfium_password_error,
    )
    try:
        return (
            len(document),
            document.get_metadata_dict(skip_empty=True),
            pdfium.raw.FPDF_GetSecurityHandlerRevision(document) != -1,
        )
    finally:
        document.close()


def _probe_with_pypdf(
    path: Path, pdf: PdfConfig, pdfium_error: Exception
) -> tuple[int, dict[str, str], bool]:
    """(page count, info dictionary, encrypted) read by pypdf once pypdfium2 failed."""
    document: PypdfDocument | None = None
    # pypdf logs what it repairs ("EOF marker not found") without naming the file; the one-line
    # error below says it all when it gives up.
    pypdf_logger = logging.getLogger(import_pypdf().__name__)
    level = pypdf_logger.level
    pypdf_logger.setLevel(logging.ERROR)
    try:
        document = PypdfDocument(path, pdf)
        reader = document.reader
        page_count = len(reader.pages)
        info = {str(k): str(v) for k, v in (reader.metadata or {}).items() if v is not None}
        encrypted = bool(reader.is_encrypted)
    except PasswordRejected:
        raise encrypted_error(path) from None
    except Exception as exc:
        raise DocumentProcessingError(
            f"{path}: corrupt or unreadable PDF (pypdfium2: {error_line(pdfium_error)}; "
            f"{FALLBACK_ENGINE}: {error_line(exc)})"
        ) from None
    finally:
        pypdf_logger.setLevel(level)
        if document is not None:
            document.close()
    if page_count == 0:  # pypdf opens almost anything: no pages means it found no PDF either
        raise DocumentProcessingError(
            f"{path}: corrupt or unreadable PDF ({error_line(pdfium_error)})"
        )
    return page_count, info, encrypted


def _check_pdf_header(path: Path) -> None:
    """Fail fast, with a clear reason, on missing, empty and non-PDF files."""
    try:
        with path.open("rb") as stream:
            head = stream.read(_HEADER_WINDOW)
    except FileNotFoundError:
        raise DocumentProcessingError(f"{path}: file not found") from None
    except OSError as exc:
        raise DocumentProcessingError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not head:
        raise DocumentProcessingError(f"{path}: empty file (0 bytes), not a PDF")
    if b"%PDF-" not in head:
        raise DocumentProcessingError(
            f"{path}: not a PDF (no %PDF- header in its first {_HEADER_WINDOW} bytes)"
        )


def build_metadata(
    info: dict[str, str], fallback_title: str, page_count: int | None
) -> DocumentMetadata:
    """`DocumentMetadata` from a PDF info dictionary (keys without the leading slash)."""
    info = {key.lstrip("/"): _clean_info_value(value) for key, value in info.items()}
    extra = {k: v for k, v in info.items() if k not in _STANDARD_INFO_KEYS and v}
    created, modified = info.get("CreationDate", ""), info.get("ModDate", "")
    # A date we cannot read is still worth keeping, verbatim, for the user to see.
    for key, raw in (("CreationDate", created), ("ModDate", modified)):
        if raw and parse_pdf_date(raw) is None:
            extra[key] = raw
    return DocumentMetadata(
        title=info.get("Title") or fallback_title,
        author=info.get("Author") or None,
        created=parse_pdf_date(created),
        modified=parse_pdf_date(modified),
        page_count=page_count,
        extra=extra,
    )


def _clean_info_value(value: Any) -> str:
    return str(value).replace("\x00", "").strip()


def parse_pdf_date(raw: str) -> str | None:
    """ISO 8601 from a PDF date ("D:20220403180542+02'00'" -> "2022-04-03T18:05:42+02:00").

    Dates without a time become "2022-04-03"; ISO strings (some producers write them) pass through
    normalised. Returns None for anything that is not a valid date.
    """
    raw = raw.strip()
    match = _PDF_DATE.fullmatch(raw)
    if match is None:
        try:
            return datetime.fromisoformat(raw).isoformat()
        except ValueError:
            return None
    part = match.groupdict()
    try:
        day = date(int(part["year"]), int(part["month"] or 1), int(part["day"] or 1))
        if part["hour"] is None:
            return day.isoformat()
        moment = datetime(
            day.year,
            day.month,
            day.day,
            int(part["hour"]),
            int(part["minute"] or 0),
            int(part["second"] or 0),
            tzinfo=_pdf_timezone(part),
        )
    except ValueError:
        return None
    return moment.isoformat()


def _pdf_timezone(part: dict[str, str | None]) -> timezone | None:
    if part["utc"]:
        return timezone.utc
    if part["sign"] is None:
        return None  # the PDF gives local time of unknown offset
    offset = timedelta(hours=int(part["tzh"] or 0), minutes=int(part["tzm"] or 0))
    return timezone(-offset if part["sign"] == "-" else offset)
