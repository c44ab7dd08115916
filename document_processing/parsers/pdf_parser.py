"""PDF text: probe a file, extract page ranges with a fallback engine, assemble the document.

The extract pipeline splits a large PDF into page ranges that run in parallel, so the work is three
functions: `probe_pdf` (page count and metadata, fast), `extract_pages` (raw text of pages
`first..last`) and `assemble_pdf_document` (running lines removed, text cleaned, sections built).
`PDFParser.parse` chains the three for callers that want one call.

Engines. The primary engine is `pdf.engine` (pdfplumber keeps layout best, pypdfium2 is fastest); a
page whose text fails `page_quality_problem` is re-extracted with pypdf when
`pdf.fallback_to_pypdf2` is on, and the better text is kept. Only failing pages pay for the second
engine: on LaTeX books with math fonts pdfplumber emits "(cid:NN)" for symbols it cannot map and
pypdf maps them (a 117-page LaTeX book: word-F1 0.76 -> 0.96). pdfplumber's layout analysis of
such a page would be thrown away, so `UnmappedGlyphScan` predicts those pages from the fonts and
the codes the content stream shows (well under a millisecond a page) and sends them to pypdf
first; pdfplumber still runs on one when pypdf's text fails the check too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol, TypeVar

from document_processing.parsers.base import DocumentParser
from document_processing.records import DocumentMetadata, PageText, ParsedDocument, Section
from shared_utils.config import DocumentProcessingConfig, PdfConfig
from shared_utils.errors import DocumentProcessingError

FALLBACK_ENGINE = "pypdf"
NO_ENGINE = "none"

# Acrobat accepts the "%PDF-" header anywhere in the first 1024 bytes.
_HEADER_WINDOW = 1024

_CID_TOKEN = re.compile(r"\(cid:\d+\)")
_LIGATURE = re.compile("[\ufb00-\ufb06]")
_LIGATURE_PROBLEM = "ligature code points"
# pdfium joins a word hyphenated at a line end and marks the break with U+0002 (bounded text) or
# U+FFFE: a soft hyphen, which cleaning removes ("Übungsauf-/gaben" -> "Übungsaufgaben"). pdfium
# marks a real hyphen at a line end the same way, so "Schwarz-/Weiß" loses its hyphen.
_PDFIUM_SOFT_HYPHEN = str.maketrans({"\x02": "\u00ad", "\ufffe": "\u00ad"})

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


class _PasswordRejected(Exception):
    """Neither the empty password nor `pdf.password` opens the file."""


# --------------------------------------------------------------------------------------------------
# probe
# --------------------------------------------------------------------------------------------------


def probe_pdf(path: Path, settings: DocumentProcessingConfig) -> PdfInfo:
    """Page count and document metadata, read with pypdfium2 (milliseconds, even for big files).

    Raises `DocumentProcessingError` naming the file when it is empty, not a PDF, corrupt, or
    encrypted with a password that neither the empty one nor `pdf.password` matches.
    """
    _check_pdf_header(path)
    import pypdfium2 as pdfium

    try:
        document = _open_with_passwords(
            lambda password: pdfium.PdfDocument(path, password=password or None),
            settings.pdf,
            _is_pdfium_password_error,
        )
    except _PasswordRejected:
        raise _encrypted_error(path) from None
    except Exception as exc:  # pdfium reports every load failure as PdfiumError
        raise DocumentProcessingError(
            f"{path}: corrupt or unreadable PDF ({_reason(exc)})"
        ) from None
    try:
        page_count = len(document)
        info = document.get_metadata_dict(skip_empty=True)
        encrypted = pdfium.raw.FPDF_GetSecurityHandlerRevision(document) != -1
    finally:
        document.close()
    if page_count == 0:
        raise DocumentProcessingError(f"{path}: the PDF has no pages")
    metadata = build_metadata(info, fallback_title=path.stem, page_count=page_count)
    return PdfInfo(page_count=page_count, metadata=metadata, encrypted=encrypted)


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


# --------------------------------------------------------------------------------------------------
# page quality
# --------------------------------------------------------------------------------------------------


def page_quality_problem(text: str, max_mean_word_length: float) -> str | None:
    """A short reason why this page text looks broken, or None when it looks like real text.

    Broken means: no text; "(cid:NN)" tokens (glyphs the engine could not map to characters);
    U+FFFD replacement characters; ligature code points U+FB00-FB06 left in; or a mean word
    length above `max_mean_word_length`, which means the spaces between words were lost.
    """
    words = text.split()
    if not words:
        return "no text"
    if "(cid:" in text and _CID_TOKEN.search(text):
        return "cid tokens"
    if "\ufffd" in text:
        return "U+FFFD replacement characters"
    if _LIGATURE.search(text):
        return _LIGATURE_PROBLEM
    mean_length = sum(map(len, words)) / len(words)
    if mean_length > max_mean_word_length:
        return f"mean word length {mean_length:.1f} > {max_mean_word_length:g}, spaces missing"
    return None


def damaged_word_share(text: str, max_mean_word_length: float) -> float:
    """Share of the words that are damaged (lower is better; 1.0 when there is no text).

    Picks between two texts that both fail the quality check. Damaged means a cid token, U+FFFD or
    a run-together word longer than the limit; ligature code points do not count, since cleaning's
    NFKC expands them and nothing is lost. A share, not a count: an engine that splits math into
    one-letter words must not win by having more words.
    """
    words = text.split()
    if not words:
        return 1.0
    damaged = sum(
        1
        for word in words
        if len(word) > max_mean_word_length or "(cid:" in word or "\ufffd" in word
    )
    return damaged / len(words)


# --------------------------------------------------------------------------------------------------
# engines
# --------------------------------------------------------------------------------------------------


class _PageSource(Protocol):
    """One engine with one document open: the text of page `number` (1-based), then close()."""

    name: str

    def page_text(self, number: int) -> str: ...

    def close(self) -> None: ...


class _PdfplumberPages:
    name = "pdfplumber"

    def __init__(self, path: Path, first: int, last: int, pdf: PdfConfig) -> None:
        import pdfplumber

        # `pages=` makes pdfplumber build Page objects for this range only.
        numbers = list(range(first, last + 1))
        self._pdf = _open_with_passwords(
            lambda password: pdfplumber.open(path, pages=numbers, password=password),
            pdf,
            _is_pdfminer_password_error,
        )
        try:
            self._pages = {page.page_number: page for page in self._pdf.pages}
        except BaseException:
            self._pdf.close()
            raise
        self._options: dict[str, Any] = {
            "x_tolerance": pdf.x_tolerance,
            "y_tolerance": pdf.y_tolerance,
            "use_text_flow": pdf.use_text_flow,
        }

    def page_text(self, number: int) -> str:
        page = self._pages.pop(number, None)
        if page is None:
            raise IndexError(f"pdfplumber has no page {number}")
        try:
            return page.extract_text(**self._options)
        finally:
            # Drops the page's cached layout objects: 43 MB instead of 1 GB RSS on 200 pages.
            page.close()

    def close(self) -> None:
        self._pages.clear()
        self._pdf.close()


class _PdfiumPages:
    name = "pypdfium2"

    def __init__(self, path: Path, pdf: PdfConfig) -> None:
        import pypdfium2 as pdfium

        self._document = _open_with_passwords(
            lambda password: pdfium.PdfDocument(path, password=password or None),
            pdf,
            _is_pdfium_password_error,
        )

    def page_text(self, number: int) -> str:
        if not 1 <= number <= len(self._document):
            raise IndexError(f"pypdfium2 has no page {number}")
        page = self._document[number - 1]
        try:
            textpage = page.get_textpage()
            try:
                return textpage.get_text_bounded().translate(_PDFIUM_SOFT_HYPHEN)
            finally:
                textpage.close()
        finally:
            page.close()

    def close(self) -> None:
        self._document.close()


class _PypdfPages:
    name = "pypdf"

    def __init__(self, path: Path, pdf: PdfConfig) -> None:
        pypdf = _import_pypdf()
        self._reader = pypdf.PdfReader(path)
        if self._reader.is_encrypted:
            _open_with_passwords(self._decrypt, pdf, lambda exc: isinstance(exc, _PasswordRejected))

    def _decrypt(self, password: str) -> None:
        # decrypt() returns PasswordType.NOT_DECRYPTED (0) when the password is wrong.
        if not self._reader.decrypt(password):
            raise _PasswordRejected

    def page_text(self, number: int) -> str:
        return self._reader.pages[number - 1].extract_text()

    def close(self) -> None:
        close = getattr(self._reader, "close", None)  # PyPDF2 readers have no close()
        if close is not None:
            close()


def _import_pypdf() -> Any:
    """pypdf, or its old name PyPDF2 (same reader API) when only that is installed."""
    try:
        import pypdf
    except ImportError:
        import PyPDF2 as pypdf  # type: ignore[no-redef]
    return pypdf


def _open_engine(name: str, path: Path, first: int, last: int, pdf: PdfConfig) -> _PageSource:
    if name == "pdfplumber":
        return _PdfplumberPages(path, first, last, pdf)
    if name == "pypdfium2":
        return _PdfiumPages(path, pdf)
    if name == "pypdf":
        return _PypdfPages(path, pdf)
    raise ValueError(f"unknown PDF engine {name!r}")


def primary_engine(pdf: PdfConfig) -> str:
    """`pdf.engine`, except that `use_pdfplumber_first: false` demotes pdfplumber to pypdf."""
    if pdf.engine == "pdfplumber" and not pdf.use_pdfplumber_first:
        return "pypdf"
    return pdf.engine


_Opened = TypeVar("_Opened")


def _open_with_passwords(
    open_with: Callable[[str], _Opened],
    pdf: PdfConfig,
    is_password_error: Callable[[Exception], bool],
) -> _Opened:
    """Open with the empty password, then `pdf.password`; `_PasswordRejected` if neither works."""
    for password in dict.fromkeys(["", pdf.password]):
        try:
            return open_with(password)
        except Exception as exc:
            if not is_password_error(exc):
                raise
    raise _PasswordRejected


def _is_pdfium_password_error(exc: Exception) -> bool:
    return "password" in str(exc).lower()


def _is_pdfminer_password_error(exc: Exception) -> bool:
    # pdfplumber wraps every pdfminer error in PdfminerException(original).
    from pdfminer.pdfdocument import PDFPasswordIncorrect

    return isinstance(exc, PDFPasswordIncorrect) or any(
        isinstance(arg, PDFPasswordIncorrect) for arg in exc.args
    )


def _encrypted_error(path: Path) -> DocumentProcessingError:
    return DocumentProcessingError(
        f"{path}: encrypted PDF and the password does not open it; set "
        "document_processing.pdf.password to the document's password"
    )


def _reason(exc: BaseException) -> str:
    """An exception as one short line: "PdfStreamError: Stream has ended unexpectedly"."""
    message = " ".join(str(exc).split()) or "no details"
    if len(message) > 200:
        message = message[:197] + "..."
    return f"{type(exc).__name__}: {message}"


# --------------------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------------------


def extract_pages(
    path: Path, first: int, last: int, settings: DocumentProcessingConfig
) -> list[PageText]:
    """Raw text of pages `first..last` (1-based, inclusive), one `PageText` per page.

    Each engine opens the file once for the whole range. Pages that pass the quality check are
    extracted once; the others are re-extracted with pypdf (when `pdf.fallback_to_pypdf2` is on and
    the primary engine is not pypdf already). Text is returned with "\\n" line ends and otherwise
    as the engine gave it: cleaning is done per document in `assemble_pdf_document`.
    """
    if first < 1 or last < first:
        raise ValueError(f"invalid page range {first}-{last} (1-based, first <= last)")
    pdf = settings.pdf
    name = primary_engine(pdf)
    can_fall_back = pdf.fallback_to_pypdf2 and name != FALLBACK_ENGINE
    fallback = _LazyEngine(FALLBACK_ENGINE, path, first, last, pdf) if can_fall_back else None
    range_warnings: list[str] = []
    try:
        primary: _PageSource | None = _open_engine(name, path, first, last, pdf)
    except _PasswordRejected:
        raise _encrypted_error(path) from None
    except Exception as exc:
        if fallback is None:
            raise DocumentProcessingError(
                f"{path}: {name} cannot read the file ({_reason(exc)})"
            ) from None
        _open_fallback_or_fail(fallback, path, name, exc)
        primary = None
        range_warnings.append(
            f"pages {first}-{last}: {name} cannot read the file ({_reason(exc)}); "
            f"used {fallback.name}"
        )
    try:
        pages = [
            _extract_page(number, primary, fallback, pdf.max_mean_word_length)
            for number in range(first, last + 1)
        ]
    finally:
        if primary is not None:
            primary.close()
        if fallback is not None:
            fallback.close()
    pages[0].warnings[:0] = range_warnings
    return pages


class _LazyEngine:
    """The fallback engine, opened on the first page that needs it (most files never do)."""

    def __init__(self, name: str, path: Path, first: int, last: int, pdf: PdfConfig) -> None:
        self.name = name
        self._args = (name, path, first, last, pdf)
        self._engine: _PageSource | None = None
        self._open_error: Exception | None = None

    def open(self) -> _PageSource:
        """The open engine; a failed open is remembered, not retried on every page."""
        if self._open_error is not None:
            raise self._open_error
        if self._engine is None:
            try:
                self._engine = _open_engine(*self._args)
            except Exception as exc:
                self._open_error = exc
                raise
        return self._engine

    def page_text(self, number: int) -> str:
        return self.open().page_text(number)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()


def _read_page(engine: _PageSource, number: int, limit: float) -> tuple[str, str | None]:
    """The page text and its quality problem (None when fine); an engine error is a problem."""
    try:
        text = engine.page_text(number)
    except Exception as exc:  # an engine bug on one page must not lose the other pages
        return "", f"{engine.name} failed: {_reason(exc)}"
    text = _normalise_newlines(text or "")
    return text, page_quality_problem(text, limit)


def _normalise_newlines(text: str) -> str:
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def _extract_page(
    number: int, primary: _PageSource | None, fallback: _LazyEngine | None, limit: float
) -> PageText:
    """One page from the primary engine, or from pypdf when that text is better."""
    engine = primary if primary is not None else fallback
    assert engine is not None  # extract_pages opens at least one of them
    text, problem = _read_page(engine, number, limit)
    if problem is None:
        return PageText(number=number, text=text, engine=engine.name)
    if primary is None or fallback is None:
        return _keep(number, text, engine.name, problem)
    other_text, other_problem = _read_page(fallback, number, limit)
    if other_problem is None or (
        damaged_word_share(other_text, limit) < damaged_word_share(text, limit)
    ):
        page = _keep(number, other_text, fallback.name, other_problem)
        page.warnings.insert(0, f"page {number}: fell back to {fallback.name} ({problem})")
        return page
    return _keep(number, text, primary.name, problem, note=f"{fallback.name} did no better")


def _open_fallback_or_fail(
    fallback: _LazyEngine, path: Path, primary_name: str, primary_error: Exception
) -> None:
    """Open the fallback now that the primary engine failed on the file; fail when it cannot."""
    try:
        fallback.open()
    except _PasswordRejected:
        raise _encrypted_error(path) from None
    except Exception as exc:
        raise DocumentProcessingError(
            f"{path}: neither {primary_name} nor {fallback.name} can read the file "
            f"({_reason(primary_error)}; {_reason(exc)})"
        ) from None


def _keep(number: int, text: str, engine: str, problem: str | None, note: str = "") -> PageText:
    """The page with the text we keep; a page without any text needs OCR."""
    if not text.strip():
        # "no text" is what a scanned page looks like: pages_needing_ocr reports it, no warning.
        warnings = [] if problem in (None, "no text") else [f"page {number}: {problem}"]
        return PageText(number=number, text="", engine=NO_ENGINE, needs_ocr=True, warnings=warnings)
    warnings: list[str] = []
    # Ligatures left in are expanded by cleaning's NFKC: worth a retry, not a warning.
    if problem not in (None, _LIGATURE_PROBLEM):
        warnings.append(f"page {number}: {problem}" + (f"; {note}" if note else ""))
    return PageText(number=number, text=text, engine=engine, warnings=warnings)


# --------------------------------------------------------------------------------------------------
# assembly
# --------------------------------------------------------------------------------------------------


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
    warnings = [warning for page in pages for warning in page.warnings]
    sections = _cut_to_length(sections, settings.max_text_length, warnings)
    return ParsedDocument(
        source=source,
        doc_type="pdf",
        metadata=replace(info.metadata, page_count=info.page_count),
        sections=sections,
        pages_needing_ocr=[page.number for page in pages if page.needs_ocr],
        page_engines={page.number: page.engine for page in pages},
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


# --------------------------------------------------------------------------------------------------
# parser
# --------------------------------------------------------------------------------------------------


class PDFParser(DocumentParser):
    """Whole-file parsing in one call: probe, extract every page, assemble."""

    suffixes = (".pdf",)

    def parse(self, path: Path, source: str, settings: DocumentProcessingConfig) -> ParsedDocument:
        info = probe_pdf(path, settings)
        pages = extract_pages(path, 1, info.page_count, settings)
        return assemble_pdf_document(source, info, pages, settings)
