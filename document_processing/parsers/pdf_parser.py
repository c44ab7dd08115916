"""PDF text: probe a file, extract page ranges with a fallback engine, assemble the document.

The extract pipeline splits a large PDF into page ranges that run in parallel, so the work is three
functions: `probe_pdf` (page count and metadata, fast), `extract_pages` (raw text of pages
`first..last`) and `assemble_pdf_document` (running lines removed, text cleaned, sections built).
`PDFParser.parse` chains the three for callers that want one call.

Engines. The primary engine is `pdf.engine` (pdfplumber keeps layout best, pypdfium2 is fastest); a
page whose text fails `page_quality_problem` is re-extracted with pypdf when
`pdf.fallback_to_pypdf` is on, and the better text is kept. Only failing pages pay for the second
engine: on LaTeX books with math fonts pdfplumber emits "(cid:NN)" for symbols it cannot map and
pypdf maps them (a 117-page LaTeX book: word-F1 0.76 -> 0.96). pdfplumber's layout analysis of
such a page would be thrown away, so `UnmappedGlyphScan` predicts those pages from the fonts and
the codes the content stream shows (well under a millisecond a page) and sends them to pypdf
first; pdfplumber still runs on one when pypdf's text fails the check too.

Glyph names. Where pdfminer reads a font's codes through its base encoding, pypdf writes the
glyph names of fonts without a Unicode map ("/s72/s101/s108": dvips bitmap fonts in arXiv
papers); such a page fails the quality check, so pypdf's text of it no longer beats pdfplumber's,
and names left in text that is kept anyway are removed (they would be learned as words).

OCR. Pages left without text (no text layer: a scan), or every page with `ocr: force`, are
rendered with pypdfium2 and read by the OCR engine of `ocr.py` when `document_processing.ocr` is
not off and an engine is installed; otherwise they are reported as needing OCR.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
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
# pypdf writes the glyph name itself ("/s72/s101/s108") for a code whose font has no Unicode map
# and whose name is not in the Adobe glyph list: the bitmap (Type 3) fonts of dvips-made arXiv
# papers name their glyphs "s" + code. Such names are a letter prefix and a number, in runs; one
# after a letter or digit ("and/or", "api/v1") is a path, not a glyph.
_GLYPH_NAMES = re.compile(r"(?<![\w/])(?:/[A-Za-z]{1,8}\d{1,5})+(?![\w/])")
_GLYPH_NAME = re.compile(r"/[A-Za-z]{1,8}\d{1,5}")
# Fewer names than this on a page may be paths in the text ("see /s3"); more are a font.
_MIN_GLYPH_NAMES = 3
_GLYPH_PROBLEM = "glyph names where a font has no Unicode map"
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
    engine: str = "pypdfium2"  # the engine that read the page count and metadata
    warnings: list[str] = field(default_factory=list)  # go to the document's report entry


class _PasswordRejected(Exception):
    """Neither the empty password nor `pdf.password` opens the file."""


# --------------------------------------------------------------------------------------------------
# probe
# --------------------------------------------------------------------------------------------------


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
    except _PasswordRejected:
        raise _encrypted_error(path) from None
    except Exception as exc:  # pdfium reports every load failure as PdfiumError
        page_count, info, encrypted = _probe_with_pypdf(path, settings.pdf, exc)
        engine = FALLBACK_ENGINE
        warnings.append(
            f"pypdfium2 cannot open the file ({_reason(exc)}); page count and metadata "
            f"read with {FALLBACK_ENGINE}"
        )
    if page_count == 0:
        raise DocumentProcessingError(f"{path}: the PDF has no pages")
    metadata = build_metadata(info, fallback_title=path.stem, page_count=page_count)
    return PdfInfo(page_count, metadata, encrypted, engine=engine, warnings=warnings)


def _probe_with_pdfium(path: Path, pdf: PdfConfig) -> tuple[int, dict[str, str], bool]:
    """(page count, info dictionary, encrypted) read by pypdfium2."""
    import pypdfium2 as pdfium

    document = _open_with_passwords(
        lambda password: pdfium.PdfDocument(path, password=password or None),
        pdf,
        _is_pdfium_password_error,
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
    document: _PypdfDocument | None = None
    # pypdf logs what it repairs ("EOF marker not found") without naming the file; the one-line
    # error below says it all when it gives up.
    pypdf_logger = logging.getLogger(_import_pypdf().__name__)
    level = pypdf_logger.level
    pypdf_logger.setLevel(logging.ERROR)
    try:
        document = _PypdfDocument(path, pdf)
        reader = document.reader
        page_count = len(reader.pages)
        info = {str(k): str(v) for k, v in (reader.metadata or {}).items() if v is not None}
        encrypted = bool(reader.is_encrypted)
    except _PasswordRejected:
        raise _encrypted_error(path) from None
    except Exception as exc:
        raise DocumentProcessingError(
            f"{path}: corrupt or unreadable PDF (pypdfium2: {_reason(pdfium_error)}; "
            f"{FALLBACK_ENGINE}: {_reason(exc)})"
        ) from None
    finally:
        pypdf_logger.setLevel(level)
        if document is not None:
            document.close()
    if page_count == 0:  # pypdf opens almost anything: no pages means it found no PDF either
        raise DocumentProcessingError(
            f"{path}: corrupt or unreadable PDF ({_reason(pdfium_error)})"
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


# --------------------------------------------------------------------------------------------------
# page quality
# --------------------------------------------------------------------------------------------------


def page_quality_problem(text: str, max_mean_word_length: float) -> str | None:
    """A short reason why this page text looks broken, or None when it looks like real text.

    Broken means: no text; "(cid:NN)" tokens (glyphs the engine could not map to characters);
    glyph names in their place ("/s72/s101", pypdf's way of saying the same); U+FFFD replacement
    characters; ligature code points U+FB00-FB06 left in; or a mean word length above
    `max_mean_word_length`, which means the spaces between words were lost.
    """
    words = text.split()
    if not words:
        return "no text"
    if "(cid:" in text and _CID_TOKEN.search(text):
        return "cid tokens"
    if glyph_name_count(text) >= _MIN_GLYPH_NAMES:
        return _GLYPH_PROBLEM
    if "\ufffd" in text:
        return "U+FFFD replacement characters"
    if _LIGATURE.search(text):
        return _LIGATURE_PROBLEM
    mean_length = sum(map(len, words)) / len(words)
    if mean_length > max_mean_word_length:
        return f"mean word length {mean_length:.1f} > {max_mean_word_length:g}, spaces missing"
    return None


def glyph_name_count(text: str) -> int:
    """How many glyph names ("/s72") stand in the text where characters should be."""
    if "/" not in text:
        return 0
    return sum(len(_GLYPH_NAME.findall(run)) for run in _GLYPH_NAMES.findall(text))


def remove_glyph_names(text: str) -> tuple[str, int]:
    """The text without its runs of glyph names, and how many names went."""
    removed = 0

    def drop(match: re.Match[str]) -> str:
        nonlocal removed
        removed += len(_GLYPH_NAME.findall(match.group()))
        return ""

    return _GLYPH_NAMES.sub(drop, text), removed


def damaged_word_share(text: str, max_mean_word_length: float) -> float:
    """Share of the words that are damaged (lower is better; 1.0 when there is no text).

    Picks between two texts that both fail the quality check. Damaged means a cid token, a glyph
    name, U+FFFD or a run-together word longer than the limit; ligature code points do not count,
    since cleaning's NFKC expands them and nothing is lost. A share, not a count: an engine that
    splits math into one-letter words must not win by having more words.
    """
    words = text.split()
    if not words:
        return 1.0
    damaged = sum(
        1
        for word in words
        if len(word) > max_mean_word_length
        or "(cid:" in word
        or "\ufffd" in word
        or ("/" in word and _GLYPH_NAMES.search(word) is not None)
    )
    return damaged / len(words)


# --------------------------------------------------------------------------------------------------
# engines
# --------------------------------------------------------------------------------------------------


class _PageSource(Protocol):
    """One engine with one document open: the text of page `number` (1-based), then close()."""

    name: str

    def page_text(self, number: int) -> str: ...

    def expected_problem(self, number: int) -> str | None:
        """Why this engine's text of the page will fail the quality check, when known early."""
        ...

    def close(self) -> None: ...


class _PdfplumberDocument:
    """An open pdfplumber PDF whose page tree is walked lazily, only as far as a range needs.

    pdfplumber's `open(pages=...)` walks the whole tree (and reads every page's objects) to pick
    the pages of a range; here the walk stops at the range's last page and, when the document is
    kept open for the next range, goes on from there.
    """

    def __init__(self, path: Path, pdf: PdfConfig) -> None:
        import pdfplumber
        from pdfminer.pdfpage import PDFPage

        self.pdf = _open_with_passwords(
            lambda password: pdfplumber.open(path, password=password),
            pdf,
            _is_pdfminer_password_error,
        )
        self._page_objects: list[Any] = []
        self._walk: Iterator[Any] | None = PDFPage.create_pages(self.pdf.doc)
        self.glyphs = UnmappedGlyphScan(self.pdf.rsrcmgr)

    def pages(self, first: int, last: int) -> dict[int, Any]:
        """pdfplumber pages `first..last` (fewer when the document ends sooner)."""
        from pdfplumber.page import Page

        while self._walk is not None and len(self._page_objects) < last:
            try:
                self._page_objects.append(next(self._walk))
            except StopIteration:
                self._walk = None
        pages = {}
        doctop = 0  # as pdfplumber's open(pages=...): offsets count the selected pages only
        for number in range(first, min(last, len(self._page_objects)) + 1):
            page = Page(self.pdf, self._page_objects[number - 1], number, initial_doctop=doctop)
            pages[number] = page
            doctop += page.height
        return pages

    def close(self) -> None:
        self.pdf.close()


class _PdfplumberPages:
    name = "pdfplumber"

    def __init__(
        self, path: Path, first: int, last: int, pdf: PdfConfig, kept: _KeptOpen | None = None
    ) -> None:
        self._document = _open_document(kept, "pdfplumber", path, pdf, _PdfplumberDocument)
        self._owned = kept is None
        try:
            self._pages = self._document.pages(first, last)
        except BaseException:
            _discard(kept, "pdfplumber", self._document)
            raise
        self._options: dict[str, Any] = {
            "x_tolerance": pdf.x_tolerance,
            "y_tolerance": pdf.y_tolerance,
            "use_text_flow": pdf.use_text_flow,
        }

    def expected_problem(self, number: int) -> str | None:
        """Predicts "cid tokens" when the page shows codes its fonts cannot map to Unicode."""
        page = self._pages.get(number)
        if page is None:
            return None
        try:
            fonts = self._document.glyphs.page_fonts(page.page_obj)
        except Exception:  # a malformed page: the layout analysis will find out for itself
            return None
        if not fonts:
            return None
        named = ", ".join(fonts[:3]) + (f" and {len(fonts) - 3} more" if len(fonts) > 3 else "")
        return f"cid tokens expected: no Unicode map for codes of {named}"

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
        for page in self._pages.values():  # pages sent straight to the fallback engine
            page.close()
        self._pages.clear()
        if self._owned:
            self._document.close()


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

    def expected_problem(self, number: int) -> str | None:
        return None

    def close(self) -> None:
        self._document.close()


class _PypdfDocument:
    """A pypdf reader, decrypted with the empty password or `pdf.password` when encrypted."""

    def __init__(self, path: Path, pdf: PdfConfig) -> None:
        pypdf = _import_pypdf()
        self.reader = pypdf.PdfReader(path)
        if self.reader.is_encrypted:
            _open_with_passwords(self._decrypt, pdf, lambda exc: isinstance(exc, _PasswordRejected))

    def _decrypt(self, password: str) -> None:
        # decrypt() returns PasswordType.NOT_DECRYPTED (0) when the password is wrong.
        if not self.reader.decrypt(password):
            raise _PasswordRejected

    def close(self) -> None:
        close = getattr(self.reader, "close", None)  # PyPDF2 readers have no close()
        if close is not None:
            close()


class _PypdfPages:
    name = "pypdf"

    def __init__(self, path: Path, pdf: PdfConfig, kept: _KeptOpen | None = None) -> None:
        self._document = _open_document(kept, "pypdf", path, pdf, _PypdfDocument)
        self._owned = kept is None

    def page_text(self, number: int) -> str:
        return self._document.reader.pages[number - 1].extract_text()

    def expected_problem(self, number: int) -> str | None:
        return None

    def close(self) -> None:
        if self._owned:
            self._document.close()


class _Closable(Protocol):
    def close(self) -> None: ...


_Document = TypeVar("_Document", bound=_Closable)


class _KeptOpen:
    """The last document each engine opened in this process, kept for the file's next range.

    The pipeline runs a large PDF as page ranges in a few long-lived worker processes; opening
    the file again for every range would walk its page tree and parse its fonts again (about a
    tenth of pdfplumber's time on a 500-page book). One document per engine stays open until
    the process moves on to another file, or the file changes.
    """

    def __init__(self) -> None:
        self._documents: dict[str, tuple[tuple[object, ...], Any]] = {}

    def get(
        self,
        engine: str,
        path: Path,
        pdf: PdfConfig,
        open_new: Callable[[Path, PdfConfig], _Document],
    ) -> _Document:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size, pdf.password)
        kept = self._documents.get(engine)
        if kept is not None and kept[0] == key:
            return kept[1]
        self.drop(engine)
        document = open_new(path, pdf)
        self._documents[engine] = (key, document)
        return document

    def drop(self, engine: str) -> None:
        kept = self._documents.pop(engine, None)
        if kept is not None:
            kept[1].close()


# Used by `extract_pages(keep_open=True)`: the pipeline's worker processes.
_KEPT_OPEN = _KeptOpen()


def _open_document(
    kept: _KeptOpen | None,
    engine: str,
    path: Path,
    pdf: PdfConfig,
    open_new: Callable[[Path, PdfConfig], _Document],
) -> _Document:
    return open_new(path, pdf) if kept is None else kept.get(engine, path, pdf, open_new)


def _discard(kept: _KeptOpen | None, engine: str, document: _Closable) -> None:
    """Close a document that failed, whether it was kept open or not."""
    if kept is None:
        document.close()
    else:
        kept.drop(engine)


def _import_pypdf() -> Any:
    """pypdf, or its old name PyPDF2 (same reader API) when only that is installed."""
    try:
        import pypdf
    except ImportError:
        import PyPDF2 as pypdf  # type: ignore[no-redef]
    return pypdf


def _open_engine(
    name: str, path: Path, first: int, last: int, pdf: PdfConfig, kept: _KeptOpen | None
) -> _PageSource:
    if name == "pdfplumber":
        return _PdfplumberPages(path, first, last, pdf, kept)
    if name == "pypdfium2":
        return _PdfiumPages(path, pdf)  # opening is a C call of a millisecond: never kept
    if name == "pypdf":
        return _PypdfPages(path, pdf, kept)
    raise ValueError(f"unknown PDF engine {name!r}")


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


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether `exc` is a `kind`, or wraps one (pdfplumber wraps pdfminer's errors in
    `PdfminerException(original)`)."""
    return (
        isinstance(exc, kind)
        or any(isinstance(arg, kind) for arg in exc.args)
        or isinstance(exc.__cause__, kind)
        or isinstance(exc.__context__, kind)
    )


def _reason(exc: BaseException) -> str:
    """An exception as one short line: "PdfStreamError: Stream has ended unexpectedly"."""
    message = " ".join(str(exc).split()) or "no details"
    if len(message) > 200:
        message = message[:197] + "..."
    return f"{type(exc).__name__}: {message}"


# --------------------------------------------------------------------------------------------------
# predicting the pages pdfplumber would fill with "(cid:NN)"
# --------------------------------------------------------------------------------------------------

# pdfminer (under pdfplumber) writes "(cid:NN)" for every shown code its font object cannot map to
# Unicode: no /ToUnicode entry and a glyph name outside its glyph list (TeX math fonts), or a CID
# font without a map. Which codes a page shows is in its content stream, which one regex pass
# reads at C speed: font selections (Tf), the strings of the text-showing operators (Tj ' " TJ),
# q/Q (which restore the font), Form XObjects (Do). Everything else is matched only to be skipped,
# so a string or name elsewhere (a marked-content property, inline image data) is never read as
# text: a code wrongly found would send a good page to pypdf, while one missed only costs time
# (the quality check still reads the page's real text).
_NUMBER = rb"[-+]?(?:\d+\.?\d*|\.\d+)"
_LITERAL = rb"\((?:[^\\()]|\\.|\((?:[^\\()]|\\.)*\))*\)"  # one level of balanced parentheses
_HEX = rb"<[0-9A-Fa-f\s]*>"
_NAME_CHARS = rb"[^\s/\[\]()<>{}%]"
_OPERATOR_END = rb"(?![^\s\[\]()<>{}/%])"
_CONTENT_TOKEN = re.compile(
    b"|".join(
        [
            rb"%[^\r\n]*",  # comment
            rb"\bBI\b.*?\bID\b.*?\bEI\b",  # inline image: binary data
            rb"\[(?P<array>(?:%s|%s|%s|\s+)*+)\]\s*TJ%s" % (_LITERAL, _HEX, _NUMBER, _OPERATOR_END),
            rb"(?P<string>%s|%s)\s*(?:Tj|'|\")%s" % (_LITERAL, _HEX, _OPERATOR_END),
            rb"/(?P<font>%s+)\s+%s\s+Tf%s" % (_NAME_CHARS, _NUMBER, _OPERATOR_END),
            rb"/(?P<xobject>%s+)\s+Do%s" % (_NAME_CHARS, _OPERATOR_END),
            rb"/%s*|%s|%s" % (_NAME_CHARS, _LITERAL, _HEX),  # other operands: skipped whole
            rb"(?<![^\s\[\]()<>{}/%%])(?:(?P<save>q)|(?P<restore>Q)|(?P<odd_font>Tf))%s"
            % _OPERATOR_END,
        ]
    ),
    re.S,
)
_STRING = re.compile(_LITERAL + rb"|" + _HEX)
_ESCAPE = re.compile(rb"\\([0-7]{1,3}|\r\n|.)", re.S)
_ESCAPED = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f"}
_NON_HEX = re.compile(rb"[^0-9A-Fa-f]")
_SUBSET_TAG = re.compile(r"^[A-Z]{6}\+")
_MAX_FORM_DEPTH = 8


def _string_bytes(token: bytes) -> bytes:
    """The bytes a literal "(...)" or hex "<...>" string token stands for."""
    if token.startswith(b"<"):
        digits = _NON_HEX.sub(b"", token[1:-1])
        return bytes.fromhex((digits + b"0" * (len(digits) % 2)).decode("ascii"))
    body = token[1:-1]
    return _ESCAPE.sub(_unescape, body) if b"\\" in body else body


def _unescape(match: re.Match[bytes]) -> bytes:
    escaped = match.group(1)
    if escaped[:1].isdigit():
        return bytes([int(escaped, 8) & 0xFF])
    if escaped in (b"\r\n", b"\r", b"\n"):
        return b""  # a backslash before a line end continues the string
    return _ESCAPED.get(escaped, escaped)


class _FontCodes:
    """Which codes of one pdfminer font have no Unicode mapping (pdfminer's `to_unichr`)."""

    def __init__(self, font: Any, resource_name: str) -> None:
        from pdfminer.pdffont import PDFSimpleFont

        self.font = font  # held, so the id() cache key in UnmappedGlyphScan is never reused
        self.name = _SUBSET_TAG.sub("", str(getattr(font, "basefont", "") or resource_name))
        self._mapped: bytes | None = None  # simple fonts: every mapped one-byte code
        self._cid_mapped: dict[int, bool] = {}
        if isinstance(font, PDFSimpleFont):
            self._mapped = bytes(code for code in range(256) if self._maps(code))

    def _maps(self, cid: int) -> bool:
        from pdfminer.pdffont import PDFUnicodeNotDefined

        try:
            self.font.to_unichr(cid)
        except PDFUnicodeNotDefined:
            return False
        return True

    def has_unmapped(self, shown: bytes) -> bool:
        if self._mapped is not None:
            return bool(shown.translate(None, self._mapped))  # what is left has no mapping
        for cid in self.font.decode(shown):
            mapped = self._cid_mapped.get(cid)
            if mapped is None:
                mapped = self._cid_mapped[cid] = self._maps(cid)
            if not mapped:
                return True
        return False


class UnmappedGlyphScan:
    """Fonts of a pdfplumber page that would show codes as "(cid:NN)", without layout analysis.

    Uses the document's pdfminer resource manager, so the font objects it builds are the ones the
    layout analysis reuses for the pages that do get it.
    """

    def __init__(self, rsrcmgr: Any) -> None:
        self._rsrcmgr = rsrcmgr
        self._fonts: dict[int, _FontCodes] = {}

    def page_fonts(self, page_obj: Any) -> list[str]:
        """Names of the fonts (subset tag dropped) that show at least one unmappable code."""
        from pdfminer.pdftypes import list_value

        found: dict[str, None] = {}
        self._scan(page_obj.resources, list_value(page_obj.contents), found, (), 0)
        return list(found)

    def _scan(
        self,
        resources: Any,
        streams: list[Any],
        found: dict[str, None],
        forms: tuple[int, ...],
        depth: int,
    ) -> None:
        from pdfminer.pdftypes import PDFStream, dict_value, resolve1, stream_value

        resources = dict_value(resources)
        fonts = self._fonts_of(resources)
        xobjects = dict_value(resources.get("XObject"))
        data = b"\n".join(stream_value(stream).get_data() for stream in streams)
        current: _FontCodes | None = None  # pdfminer starts each page and form without a font
        saved: list[_FontCodes | None] = []
        for match in _CONTENT_TOKEN.finditer(data):
            kind = match.lastgroup
            if kind is None:
                continue
            if kind == "font":
                current = fonts.get(_pdf_name(match.group("font")))
            elif kind == "odd_font":
                current = None  # a Tf we cannot read: attribute nothing until the next one
            elif kind == "save":
                saved.append(current)
            elif kind == "restore":
                if saved:
                    current = saved.pop()
            elif kind in ("string", "array"):
                if current is None or current.name in found:
                    continue
                tokens = [match.group(kind)] if kind == "string" else _STRING.findall(match[kind])
                if any(current.has_unmapped(_string_bytes(token)) for token in tokens):
                    found[current.name] = None
            elif kind == "xobject" and depth < _MAX_FORM_DEPTH:
                form = resolve1(xobjects.get(_pdf_name(match.group("xobject"))))
                if (
                    isinstance(form, PDFStream)
                    and _pdf_name_of(form.get("Subtype")) == "Form"
                    and "BBox" in form
                    and form.objid not in forms
                ):
                    # A form without resources uses the page's (PDF 1.7, section 8.10.1).
                    own = form.get("Resources")
                    self._scan(
                        own if own else resources,
                        [form],
                        found,
                        (*forms, form.objid),
                        depth + 1,
                    )

    def _fonts_of(self, resources: dict[str, Any]) -> dict[str, _FontCodes]:
        from pdfminer.pdftypes import PDFObjRef, dict_value

        fonts = {}
        for name, spec in dict_value(resources.get("Font")).items():
            objid = spec.objid if isinstance(spec, PDFObjRef) else None
            font = self._rsrcmgr.get_font(objid, dict_value(spec))  # cached by pdfminer per objid
            codes = self._fonts.get(id(font))
            if codes is None:
                codes = self._fonts[id(font)] = _FontCodes(font, name)
            fonts[name] = codes
        return fonts


def _pdf_name(raw: bytes) -> str:
    """A name token's text, "#xx" escapes decoded, as pdfminer keys resource dictionaries."""
    if b"#" in raw:
        raw = re.sub(rb"#([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), raw)
    try:
        return raw.decode("utf-8")  # as pdfminer decodes names
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _pdf_name_of(value: Any) -> str:
    from pdfminer.psparser import literal_name

    return literal_name(value) if value is not None else ""


# --------------------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------------------


def extract_pages(
    path: Path,
    first: int,
    last: int,
    settings: DocumentProcessingConfig,
    keep_open: bool = False,
) -> list[PageText]:
    """Raw text of pages `first..last` (1-based, inclusive), one `PageText` per page.

    Each engine opens the file once for the whole range; with `keep_open` (worker processes that
    get the file's next range too) pdfplumber and pypdf keep it open for the next call. Pages that
    pass the quality check are extracted once; the others are re-extracted with pypdf (when
    `pdf.fallback_to_pypdf` is on and the primary engine is not pypdf already). Text is returned
    with "\\n" line ends and otherwise as the engine gave it: cleaning is done per document in
    `assemble_pdf_document`.
    """
    if first < 1 or last < first:
        raise ValueError(f"invalid page range {first}-{last} (1-based, first <= last)")
    pdf = settings.pdf
    name = pdf.engine
    can_fall_back = pdf.fallback_to_pypdf and name != FALLBACK_ENGINE
    kept = _KEPT_OPEN if keep_open else None
    fallback = _LazyEngine(FALLBACK_ENGINE, path, first, last, pdf, kept) if can_fall_back else None
    range_warnings: list[str] = []
    try:
        primary: _PageSource | None = _open_engine(name, path, first, last, pdf, kept)
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
    if settings.ocr != "off":
        read_pages_by_ocr(path, pages, pdf, force=settings.ocr == "force")
    return pages


def read_pages_by_ocr(path: Path, pages: list[PageText], pdf: PdfConfig, force: bool) -> None:
    """OCR the pages without text (every page with `force`), in place, from pypdfium2 renderings.

    Without an OCR engine the pages stay as they are: needing OCR, reported as such. A page that
    OCR finds blank is blank (no longer "needs OCR"); one OCR fails on keeps its text and says why.
    """
    wanted = [page for page in pages if force or page.needs_ocr]
    if not wanted:
        return
    from document_processing.parsers.ocr import RENDER_DPI, ocr_engine

    engine = ocr_engine()
    if engine is None:
        return
    import pypdfium2 as pdfium

    try:
        document = _open_with_passwords(
            lambda password: pdfium.PdfDocument(path, password=password or None),
            pdf,
            _is_pdfium_password_error,
        )
    except Exception as exc:
        wanted[0].warnings.append(
            f"pages {wanted[0].number}-{wanted[-1].number}: cannot be rendered for OCR "
            f"({_reason(exc)})"
        )
        return
    try:
        for page in wanted:
            try:
                result = engine.read(_render_page(document, page.number, RENDER_DPI))
            except Exception as exc:
                if _caused_by(exc, MemoryError):
                    raise MemoryError(f"page {page.number}: OCR: {_reason(exc)}") from exc
                page.warnings.append(f"page {page.number}: OCR failed ({_reason(exc)})")
                continue
            if page.needs_ocr or result.text.strip():
                page.text, page.engine, page.needs_ocr = result.text, engine.name, False
                page.ocr = result.metadata(RENDER_DPI)
    finally:
        document.close()


def _render_page(document: Any, number: int, dpi: int) -> Any:
    """Page `number` (1-based) as a greyscale PIL image at `dpi`."""
    page = document[number - 1]
    try:
        return page.render(scale=dpi / 72, grayscale=True).to_pil()
    finally:
        page.close()


class _LazyEngine:
    """The fallback engine, opened on the first page that needs it (most files never do)."""

    def __init__(
        self, name: str, path: Path, first: int, last: int, pdf: PdfConfig, kept: _KeptOpen | None
    ) -> None:
        self.name = name
        self._args = (name, path, first, last, pdf, kept)
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

    def expected_problem(self, number: int) -> str | None:
        return None  # only the primary engine's problems are predicted

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()


def _read_page(engine: _PageSource, number: int, limit: float) -> tuple[str, str | None]:
    """The page text and its quality problem (None when fine); an engine error is a problem."""
    try:
        text = engine.page_text(number)
    except Exception as exc:  # an engine bug on one page must not lose the other pages
        if _caused_by(exc, MemoryError):  # the worker's memory limit: the file fails, with why
            raise MemoryError(f"page {number}: {engine.name}: {_reason(exc)}") from exc
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
    if primary is None or fallback is None:
        text, problem = _read_page(engine, number, limit)
        return _keep(number, text, engine.name, problem)
    expected = primary.expected_problem(number)
    if expected is not None:
        # The primary's text would be thrown away: ask the fallback first, and run the primary
        # only when the fallback's text is damaged too (ligatures are not damage: cleaning's NFKC
        # expands them).
        other_text, other_problem = _read_page(fallback, number, limit)
        if other_problem in (None, _LIGATURE_PROBLEM):
            return _fell_back(number, other_text, fallback.name, other_problem, expected)
    text, problem = _read_page(primary, number, limit)
    if problem is None:
        return PageText(number=number, text=text, engine=primary.name)
    if expected is None:
        other_text, other_problem = _read_page(fallback, number, limit)
    if other_problem is None or (
        damaged_word_share(other_text, limit) < damaged_word_share(text, limit)
    ):
        return _fell_back(number, other_text, fallback.name, other_problem, problem)
    return _keep(number, text, primary.name, problem, note=f"{fallback.name} did no better")


def _fell_back(
    number: int, text: str, engine: str, problem: str | None, primary_problem: str
) -> PageText:
    page = _keep(number, text, engine, problem)
    page.warnings.insert(0, f"page {number}: fell back to {engine} ({primary_problem})")
    return page


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
    if problem == _GLYPH_PROBLEM:
        # Names like "s101" would be learned as words: the characters they stand for are lost
        # either way, so the names go (and a page of nothing else is left for OCR).
        text, removed = remove_glyph_names(text)
        note = f"{removed} removed" + (f"; {note}" if note else "")
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
