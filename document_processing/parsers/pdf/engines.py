"""The text engines behind one interface: pdfplumber, pypdfium2 and pypdf, each with one document
open for a page range, opened with the empty password or `pdf.password`.

pdfplumber keeps layout best and pypdfium2 is fastest; pypdf is the fallback for the pages the
primary engine's text fails on (`extract.py`). A pdfplumber document also predicts, from its
fonts and content streams, the pages it would fill with "(cid:NN)" (`glyph_scan.py`), so those
go to pypdf first. A worker process keeps the last document each engine opened (`KeptOpen`) for
the file's next page range.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

from document_processing.parsers.pdf.glyph_scan import UnmappedGlyphScan
from document_processing.parsers.pdf.line_fonts import line_fonts
from document_processing.records import LineFont
from shared_utils.config import PdfConfig
from shared_utils.errors import DocumentProcessingError

FALLBACK_ENGINE = "pypdf"

# pdfium joins a word hyphenated at a line end and marks the break with U+0002 (bounded text) or
# U+FFFE: a soft hyphen, which cleaning removes ("Übungsauf-/gaben" -> "Übungsaufgaben"). pdfium
# marks a real hyphen at a line end the same way, so "Schwarz-/Weiß" loses its hyphen.
_PDFIUM_SOFT_HYPHEN = str.maketrans({"\x02": "\u00ad", "\ufffe": "\u00ad"})


class PasswordRejected(Exception):
    """Neither the empty password nor `pdf.password` opens the file."""


class PageSource(Protocol):
    """One engine with one document open: the text of page `number` (1-based), then close()."""

    name: str

    def page_text(self, number: int) -> str: ...

    def line_fonts(self, number: int) -> list[LineFont] | None:
        """The font of each line of the text `page_text(number)` returned; None when unknown."""
        ...

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

        self.pdf = open_with_passwords(
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
        self, path: Path, first: int, last: int, pdf: PdfConfig, kept: KeptOpen | None = None
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
        self._fonts: dict[int, list[LineFont]] = {}  # pages read, until `line_fonts` takes them

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
            text = page.extract_text(**self._options)
            # The layout extract_text made, from the page's cache: its characters hold the fonts.
            textmap = page.get_textmap(**self._options)
            if textmap.as_string == text and textmap.line_dir_render == "ttb":
                self._fonts[number] = line_fonts(textmap.tuples)
            return text
        finally:
            # Drops the page's cached layout objects: 43 MB instead of 1 GB RSS on 200 pages.
            page.close()

    def line_fonts(self, number: int) -> list[LineFont] | None:
        return self._fonts.pop(number, None)

    def close(self) -> None:
        for page in self._pages.values():  # pages sent straight to the fallback engine
            page.close()
        self._pages.clear()
        self._fonts.clear()
        if self._owned:
            self._document.close()


class _PdfiumPages:
    name = "pypdfium2"

    def __init__(self, path: Path, pdf: PdfConfig) -> None:
        import pypdfium2 as pdfium

        self._document = open_with_passwords(
            lambda password: pdfium.PdfDocument(path, password=password or None),
            pdf,
            is_pdfium_password_error,
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

    def line_fonts(self, number: int) -> list[LineFont] | None:
        return None

    def expected_problem(self, number: int) -> str | None:
        return None

    def close(self) -> None:
        self._document.close()


class PypdfDocument:
    """A pypdf reader, decrypted with the empty password or `pdf.password` when encrypted."""

    def __init__(self, path: Path, pdf: PdfConfig) -> None:
        pypdf = import_pypdf()
        self.reader = pypdf.PdfReader(path)
        if self.reader.is_encrypted:
            open_with_passwords(self._decrypt, pdf, lambda exc: isinstance(exc, PasswordRejected))

    def _decrypt(self, password: str) -> None:
        # decrypt() returns PasswordType.NOT_DECRYPTED (0) when the password is wrong.
        if not self.reader.decrypt(password):
            raise PasswordRejected

    def close(self) -> None:
        close = getattr(self.reader, "close", None)  # PyPDF2 readers have no close()
        if close is not None:
            close()


class _PypdfPages:
    name = "pypdf"

    def __init__(self, path: Path, pdf: PdfConfig, kept: KeptOpen | None = None) -> None:
        self._document = _open_document(kept, "pypdf", path, pdf, PypdfDocument)
        self._owned = kept is None

    def page_text(self, number: int) -> str:
        return self._document.reader.pages[number - 1].extract_text()

    def line_fonts(self, number: int) -> list[LineFont] | None:
        return None

    def expected_problem(self, number: int) -> str | None:
        return None

    def close(self) -> None:
        if self._owned:
            self._document.close()


class _Closable(Protocol):
    def close(self) -> None: ...


_Document = TypeVar("_Document", bound=_Closable)


class KeptOpen:
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


def _open_document(
    kept: KeptOpen | None,
    engine: str,
    path: Path,
    pdf: PdfConfig,
    open_new: Callable[[Path, PdfConfig], _Document],
) -> _Document:
    return open_new(path, pdf) if kept is None else kept.get(engine, path, pdf, open_new)


def _discard(kept: KeptOpen | None, engine: str, document: _Closable) -> None:
    """Close a document that failed, whether it was kept open or not."""
    if kept is None:
        document.close()
    else:
        kept.drop(engine)


def import_pypdf() -> Any:
    """pypdf, or its old name PyPDF2 (same reader API) when only that is installed."""
    try:
        import pypdf
    except ImportError:
        import PyPDF2 as pypdf  # type: ignore[no-redef]
    return pypdf


def open_engine(
    name: str, path: Path, first: int, last: int, pdf: PdfConfig, kept: KeptOpen | None
) -> PageSource:
    if name == "pdfplumber":
        return _PdfplumberPages(path, first, last, pdf, kept)
    if name == "pypdfium2":
        return _PdfiumPages(path, pdf)  # opening is a C call of a millisecond: never kept
    if name == "pypdf":
        return _PypdfPages(path, pdf, kept)
    raise ValueError(f"unknown PDF engine {name!r}")


_Opened = TypeVar("_Opened")


def open_with_passwords(
    open_with: Callable[[str], _Opened],
    pdf: PdfConfig,
    is_password_error: Callable[[Exception], bool],
) -> _Opened:
    """Open with the empty password, then `pdf.password`; `PasswordRejected` if neither works."""
    for password in dict.fromkeys(["", pdf.password]):
        try:
            return open_with(password)
        except Exception as exc:
            if not is_password_error(exc):
                raise
    raise PasswordRejected


def is_pdfium_password_error(exc: Exception) -> bool:
    return "password" in str(exc).lower()


def _is_pdfminer_password_error(exc: Exception) -> bool:
    # pdfplumber wraps every pdfminer error in PdfminerException(original).
    from pdfminer.pdfdocument import PDFPasswordIncorrect

    return isinstance(exc, PDFPasswordIncorrect) or any(
        isinstance(arg, PDFPasswordIncorrect) for arg in exc.args
    )


def encrypted_error(path: Path) -> DocumentProcessingError:
    return DocumentProcessingError(
        f"{path}: encrypted PDF and the password does not open it; set "
        "document_processing.pdf.password to the document's password"
    )


def caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether `exc` is a `kind`, or wraps one (pdfplumber wraps pdfminer's errors in
    `PdfminerException(original)`)."""
    return (
        isinstance(exc, kind)
        or any(isinstance(arg, kind) for arg in exc.args)
        or isinstance(exc.__cause__, kind)
        or isinstance(exc.__context__, kind)
    )


def error_line(exc: BaseException) -> str:
    """An exception as one short line: "PdfStreamError: Stream has ended unexpectedly"."""
    message = " ".join(str(exc).split()) or "no details"
    if len(message) > 200:
        message = message[:197] + "..."
    return f"{type(exc).__name__}: {message}"
