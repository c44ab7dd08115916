"""Raw text of a PDF's pages `first..last`, from the primary engine or pypdf, OCR for pages
without text.

Engines. The primary engine is `pdf.engine` (pdfplumber keeps layout best, pypdfium2 is fastest); a
page whose text fails `page_quality_problem` is re-extracted with pypdf when
`pdf.fallback_to_pypdf` is on, and the better text is kept. Only failing pages pay for the second
engine: on LaTeX books with math fonts pdfplumber emits "(cid:NN)" for symbols it cannot map and
pypdf maps them (a 117-page LaTeX book: word-F1 0.76 -> 0.96). pdfplumber's layout analysis of
such a page would be thrown away, so `UnmappedGlyphScan` predicts those pages from the fonts and
the codes the content stream shows and sends them to pypdf first; pdfplumber still runs on one
when pypdf's text fails the check too.

OCR. Pages left without text (no text layer: a scan), or every page with `ocr: force`, are
rendered with pypdfium2 and read by the OCR engine of `ocr.py` when `document_processing.ocr` is
not off and an engine is installed; otherwise they are reported as needing OCR.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from document_processing.parsers.pdf.engines import (
    FALLBACK_ENGINE,
    KeptOpen,
    PageSource,
    PasswordRejected,
    caused_by,
    encrypted_error,
    error_line,
    is_pdfium_password_error,
    open_engine,
    open_with_passwords,
)
from document_processing.parsers.pdf.quality import (
    CID_PROBLEM,
    GLYPH_PROBLEM,
    LIGATURE_PROBLEM,
    damaged_word_share,
    page_quality_problem,
    remove_cid_tokens,
    remove_glyph_names,
)
from document_processing.records import LineFont, PageText
from shared_utils.config import DocumentProcessingConfig, PdfConfig
from shared_utils.errors import DocumentProcessingError

NO_ENGINE = "none"

# Used by `extract_pages(keep_open=True)`: the pipeline's worker processes.
_KEPT_OPEN = KeptOpen()


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
    with "\\n" line ends and otherwise as the engine gave it, pdfplumber's with the font of each
    line (`PageText.line_fonts`): cleaning and heading detection are done per document in
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
        primary: PageSource | None = open_engine(name, path, first, last, pdf, kept)
    except PasswordRejected:
        raise encrypted_error(path) from None
    except Exception as exc:
        if fallback is None:
            raise DocumentProcessingError(
                f"{path}: {name} cannot read the file ({error_line(exc)})"
            ) from None
        _open_fallback_or_fail(fallback, path, name, exc)
        primary = None
        range_warnings.append(
            f"pages {first}-{last}: {name} cannot read the file ({error_line(exc)}); "
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
        document = open_with_passwords(
            lambda password: pdfium.PdfDocument(path, password=password or None),
            pdf,
            is_pdfium_password_error,
        )
    except Exception as exc:
        wanted[0].warnings.append(
            f"pages {wanted[0].number}-{wanted[-1].number}: cannot be rendered for OCR "
            f"({error_line(exc)})"
        )
        return
    try:
        for page in wanted:
            try:
                result = engine.read(_render_page(document, page.number, RENDER_DPI))
            except Exception as exc:
                if caused_by(exc, MemoryError):
                    raise MemoryError(f"page {page.number}: OCR: {error_line(exc)}") from exc
                page.warnings.append(f"page {page.number}: OCR failed ({error_line(exc)})")
                continue
            if page.needs_ocr or result.text.strip():
                page.text, page.engine, page.needs_ocr = result.text, engine.name, False
                page.line_fonts = None  # the fonts were the text layer's
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
        self, name: str, path: Path, first: int, last: int, pdf: PdfConfig, kept: KeptOpen | None
    ) -> None:
        self.name = name
        self._args = (name, path, first, last, pdf, kept)
        self._engine: PageSource | None = None
        self._open_error: Exception | None = None

    def open(self) -> PageSource:
        """The open engine; a failed open is remembered, not retried on every page."""
        if self._open_error is not None:
            raise self._open_error
        if self._engine is None:
            try:
                self._engine = open_engine(*self._args)
            except Exception as exc:
                self._open_error = exc
                raise
        return self._engine

    def page_text(self, number: int) -> str:
        return self.open().page_text(number)

    def line_fonts(self, number: int) -> list[LineFont] | None:
        return self.open().line_fonts(number)

    def expected_problem(self, number: int) -> str | None:
        return None  # only the primary engine's problems are predicted

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()


def _read_page(engine: PageSource, number: int, limit: float) -> tuple[str, str | None]:
    """The page text and its quality problem (None when fine); an engine error is a problem."""
    try:
        text = engine.page_text(number)
    except Exception as exc:  # an engine bug on one page must not lose the other pages
        if caused_by(exc, MemoryError):  # the worker's memory limit: the file fails, with why
            raise MemoryError(f"page {number}: {engine.name}: {error_line(exc)}") from exc
        return "", f"{engine.name} failed: {error_line(exc)}"
    text = _normalise_newlines(text or "")
    return text, page_quality_problem(text, limit)


def _normalise_newlines(text: str) -> str:
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def _extract_page(
    number: int, primary: PageSource | None, fallback: _LazyEngine | None, limit: float
) -> PageText:
    """One page from the primary engine, or from pypdf when that text is better."""
    engine = primary if primary is not None else fallback
    assert engine is not None  # extract_pages opens at least one of them
    if primary is None or fallback is None:
        text, problem = _read_page(engine, number, limit)
        return _keep(number, text, engine.name, problem, fonts=engine.line_fonts(number))
    expected = primary.expected_problem(number)
    if expected is not None:
        # The primary's text would be thrown away: ask the fallback first, and run the primary
        # only when the fallback's text is damaged too (ligatures are not damage: cleaning's NFKC
        # expands them).
        other_text, other_problem = _read_page(fallback, number, limit)
        if other_problem in (None, LIGATURE_PROBLEM):
            return _fell_back(number, other_text, fallback.name, other_problem, expected)
    text, problem = _read_page(primary, number, limit)
    fonts = primary.line_fonts(number)
    if problem is None:
        return PageText(number=number, text=text, engine=primary.name, line_fonts=fonts)
    if expected is None:
        other_text, other_problem = _read_page(fallback, number, limit)
    if other_problem is None or (
        damaged_word_share(other_text, limit) < damaged_word_share(text, limit)
    ):
        return _fell_back(number, other_text, fallback.name, other_problem, problem)
    return _keep(
        number, text, primary.name, problem, note=f"{fallback.name} did no better", fonts=fonts
    )


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
    except PasswordRejected:
        raise encrypted_error(path) from None
    except Exception as exc:
        raise DocumentProcessingError(
            f"{path}: neither {primary_name} nor {fallback.name} can read the file "
            f"({error_line(primary_error)}; {error_line(exc)})"
        ) from None


def _keep(
    number: int,
    text: str,
    engine: str,
    problem: str | None,
    note: str = "",
    fonts: list[LineFont] | None = None,
) -> PageText:
    """The page with the text we keep; a page without any text needs OCR."""
    if problem == GLYPH_PROBLEM:
        # Names like "s101" would be learned as words: the characters they stand for are lost
        # either way, so the names go (and a page of nothing else is left for OCR).
        text, removed = remove_glyph_names(text)
        fonts = None  # no longer the lines the fonts were read from
        note = f"{removed} removed" + (f"; {note}" if note else "")
    elif problem == CID_PROBLEM:
        # The same for "(cid:12)": a token per glyph pdfminer could not map, never a word. The
        # lines stay, so the line fonts still match them.
        text, removed = remove_cid_tokens(text)
        note = f"{removed} removed" + (f"; {note}" if note else "")
    if not text.strip():
        # "no text" is what a scanned page looks like: pages_needing_ocr reports it, no warning.
        warnings = [] if problem in (None, "no text") else [f"page {number}: {problem}"]
        return PageText(number=number, text="", engine=NO_ENGINE, needs_ocr=True, warnings=warnings)
    warnings: list[str] = []
    # Ligatures left in are expanded by cleaning's NFKC: worth a retry, not a warning.
    if problem not in (None, LIGATURE_PROBLEM):
        warnings.append(f"page {number}: {problem}" + (f"; {note}" if note else ""))
    return PageText(number=number, text=text, engine=engine, warnings=warnings, line_fonts=fonts)
