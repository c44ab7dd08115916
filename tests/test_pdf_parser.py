"""PDF parser: probing, engine choice, the quality check and fallback, OCR pages, assembly.

Every fixture PDF is written here with fpdf2 into tmp_path.
"""

from __future__ import annotations

import pickle
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from document_processing.parsers import parser_for
from document_processing.parsers.pdf import (
    PdfInfo,
    PDFParser,
    assemble_pdf_document,
    build_metadata,
    damaged_word_share,
    engines,
    extract,
    extract_pages,
    page_quality_problem,
    parse_pdf_date,
    probe_pdf,
)
from document_processing.records import PageText
from shared_utils.config import DocumentProcessingConfig, PdfConfig
from shared_utils.errors import DocumentProcessingError

IMAGE = "<image>"  # a page holding only a picture
BLANK = ""  # a page with nothing on it

PAGE_TEXTS = [
    "Alpha page talks about rivers and lakes.",
    "Beta page talks about mountains and valleys.",
    "Gamma page talks about deserts and dunes.",
]


def write_pdf(
    path: Path,
    pages: list[str],
    *,
    title: str | None = None,
    author: str | None = None,
    created: datetime | None = None,
    owner_password: str | None = None,
    user_password: str | None = None,
) -> Path:
    """A PDF with one page per entry: text lines ("\\n" separated), IMAGE, or BLANK."""
    from fpdf import FPDF
    from PIL import Image

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    if title:
        pdf.set_title(title)
    if author:
        pdf.set_author(author)
    if created:
        pdf.set_creation_date(created)
    if owner_password:
        pdf.set_encryption(owner_password=owner_password, user_password=user_password)
    for content in pages:
        pdf.add_page()
        if content == IMAGE:
            pdf.image(Image.new("RGB", (40, 40), "red"), x=20, y=20, w=80)
        elif content:
            pdf.multi_cell(0, 8, content)
    pdf.output(str(path))
    return path


def settings(**pdf_options: object) -> DocumentProcessingConfig:
    return DocumentProcessingConfig(pdf=PdfConfig(**pdf_options))  # type: ignore[arg-type]


@pytest.fixture
def three_pages(tmp_path: Path) -> Path:
    return write_pdf(
        tmp_path / "report.pdf",
        PAGE_TEXTS,
        title="Field Report",
        author="Ada Lovelace",
        created=datetime(2022, 4, 3, 18, 5, 42, tzinfo=timezone(timedelta(hours=2))),
    )


# --------------------------------------------------------------------------------------------------
# probe
# --------------------------------------------------------------------------------------------------


def test_probe_reads_page_count_and_metadata(three_pages: Path) -> None:
    info = probe_pdf(three_pages, settings())
    assert info.page_count == 3 and info.encrypted is False
    assert info.metadata.title == "Field Report"
    assert info.metadata.author == "Ada Lovelace"
    assert info.metadata.created == "2022-04-03T18:05:42+02:00"
    assert info.metadata.page_count == 3
    assert pickle.loads(pickle.dumps(info)) == info  # workers send it back to the parent


def test_title_falls_back_to_the_file_stem(tmp_path: Path) -> None:
    path = write_pdf(tmp_path / "untitled_notes.pdf", ["Some text here."])
    info = probe_pdf(path, settings())
    assert info.metadata.title == "untitled_notes" and info.metadata.author is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("D:20220403180542+02'00'", "2022-04-03T18:05:42+02:00"),
        ("D:20220403180542-05'30", "2022-04-03T18:05:42-05:30"),
        ("D:20230623063933Z", "2023-06-23T06:39:33+00:00"),
        ("D:20220403180542", "2022-04-03T18:05:42"),
        ("D:20220403", "2022-04-03"),
        ("D:2022", "2022-01-01"),
        ("2022-04-03T18:05:42+02:00", "2022-04-03T18:05:42+02:00"),
        ("D:20221340", None),  # month 13
        ("last tuesday", None),
        ("", None),
    ],
)
def test_parse_pdf_date(raw: str, expected: str | None) -> None:
    assert parse_pdf_date(raw) == expected


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"<html><body>not a pdf</body></html>", "not a PDF"),
        (b"%PDF-1.4\n" + bytes(range(256)) * 4, "corrupt"),
    ],
)
def test_unreadable_files_raise_one_line_naming_the_file(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    path = tmp_path / "broken.pdf"
    path.write_bytes(content)
    with pytest.raises(DocumentProcessingError) as error:
        probe_pdf(path, settings())
    message = str(error.value)
    assert "broken.pdf" in message and reason in message and "\n" not in message


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DocumentProcessingError, match="gone.pdf: file not found"):
        probe_pdf(tmp_path / "gone.pdf", settings())


def _pdfium_refuses_every_file(monkeypatch: pytest.MonkeyPatch) -> None:
    import pypdfium2

    def refuse(*args: object, **kwargs: object) -> None:
        raise pypdfium2.PdfiumError("Failed to load document (PDFium: Data format error).")

    monkeypatch.setattr(pypdfium2, "PdfDocument", refuse)


def test_probe_falls_back_to_pypdf_when_pdfium_cannot_open_the_file(
    three_pages: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = probe_pdf(three_pages, settings())
    _pdfium_refuses_every_file(monkeypatch)
    info = probe_pdf(three_pages, settings())
    assert (info.engine, expected.engine) == ("pypdf", "pypdfium2")
    assert (info.page_count, info.metadata, info.encrypted) == (
        expected.page_count,
        expected.metadata,
        expected.encrypted,
    )
    assert info.warnings == [
        "pypdfium2 cannot open the file (PdfiumError: Failed to load document (PDFium: Data "
        "format error).); page count and metadata read with pypdf"
    ]
    # The text engines still get their chance, and the report says how the file was probed.
    document = PDFParser().parse(three_pages, "report.pdf", settings())
    assert [section.text for section in document.sections] == PAGE_TEXTS
    assert document.warnings == info.warnings


def test_probe_fallback_keeps_password_and_corruption_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _pdfium_refuses_every_file(monkeypatch)
    locked = write_pdf(tmp_path / "locked.pdf", ["Secret."], owner_password="o", user_password="u")
    with pytest.raises(DocumentProcessingError, match="document_processing.pdf.password"):
        probe_pdf(locked, settings())
    assert probe_pdf(locked, settings(password="u")).encrypted is True
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4\n" + bytes(range(256)) * 4)
    with pytest.raises(DocumentProcessingError) as error:
        probe_pdf(broken, settings())
    assert "broken.pdf: corrupt or unreadable PDF (pypdfium2: PdfiumError" in str(error.value)
    assert "; pypdf: " in str(error.value)


# --------------------------------------------------------------------------------------------------
# encryption
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def locked(tmp_path: Path) -> Path:
    return write_pdf(
        tmp_path / "locked.pdf", ["Secret plans inside."], owner_password="boss", user_password="s3"
    )


def test_encrypted_pdf_without_the_password_is_refused(locked: Path) -> None:
    for attempt in (
        lambda: probe_pdf(locked, settings()),
        lambda: extract_pages(locked, 1, 1, settings()),
        lambda: probe_pdf(locked, settings(password="wrong")),
    ):
        with pytest.raises(DocumentProcessingError) as error:
            attempt()
        assert "locked.pdf" in str(error.value)
        assert "document_processing.pdf.password" in str(error.value)


@pytest.mark.parametrize("engine", ["pdfplumber", "pypdf", "pypdfium2"])
def test_configured_password_opens_it_with_every_engine(locked: Path, engine: str) -> None:
    options = settings(password="s3", engine=engine)
    info = probe_pdf(locked, options)
    assert info.encrypted is True and info.page_count == 1
    [page] = extract_pages(locked, 1, 1, options)
    assert "Secret plans inside." in page.text and page.engine == engine


def test_empty_user_password_opens_without_configuration(tmp_path: Path) -> None:
    path = write_pdf(tmp_path / "owner_only.pdf", ["Readable by all."], owner_password="boss")
    assert probe_pdf(path, settings()).encrypted is True
    [page] = extract_pages(path, 1, 1, settings())
    assert "Readable by all." in page.text


# --------------------------------------------------------------------------------------------------
# extraction and engines
# --------------------------------------------------------------------------------------------------


def test_extract_pages_returns_each_page_with_pdfplumber(three_pages: Path) -> None:
    pages = extract_pages(three_pages, 1, 3, settings())
    assert [page.number for page in pages] == [1, 2, 3]
    assert [page.text.strip() for page in pages] == PAGE_TEXTS
    assert {page.engine for page in pages} == {"pdfplumber"}
    assert not any(page.needs_ocr or page.warnings for page in pages)


def test_a_page_range_maps_to_the_right_pages(three_pages: Path) -> None:
    pages = extract_pages(three_pages, 2, 3, settings())
    assert [(page.number, page.text.strip()) for page in pages] == list(
        zip([2, 3], PAGE_TEXTS[1:], strict=True)
    )


def test_a_kept_open_document_serves_the_next_ranges(
    three_pages: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept = engines.KeptOpen()
    monkeypatch.setattr(extract, "_KEPT_OPEN", kept)
    opened: list[Path] = []
    original = engines._PdfplumberDocument.__init__

    def counting(self: object, path: Path, pdf: PdfConfig) -> None:
        opened.append(path)
        original(self, path, pdf)  # type: ignore[arg-type]

    monkeypatch.setattr(engines._PdfplumberDocument, "__init__", counting)
    try:
        ranges = [extract_pages(three_pages, n, n, settings(), keep_open=True) for n in (1, 2, 3)]
        assert len(opened) == 1  # pdfplumber opened the file once for the three ranges
        assert [page for pages in ranges for page in pages] == extract_pages(
            three_pages, 1, 3, settings()
        )
        # A file that changed is opened again.
        write_pdf(three_pages, ["A new first page."])
        [page] = extract_pages(three_pages, 1, 1, settings(), keep_open=True)
        assert page.text.strip() == "A new first page." and len(opened) == 3
    finally:
        kept.drop("pdfplumber")


@pytest.mark.parametrize(
    ("options", "engine"),
    [
        ({"engine": "pypdfium2"}, "pypdfium2"),
        ({"engine": "pypdf"}, "pypdf"),
        ({"engine": "pdfplumber"}, "pdfplumber"),
    ],
)
def test_engine_selection(three_pages: Path, options: dict[str, object], engine: str) -> None:
    pages = extract_pages(three_pages, 1, 3, settings(**options))
    assert {page.engine for page in pages} == {engine}
    assert [page.text.strip() for page in pages] == PAGE_TEXTS
    assert all("\r" not in page.text for page in pages)  # pdfium ends lines with "\r\n"


def test_pdfplumber_gets_the_configured_tolerances(
    three_pages: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pdfplumber.page import Page

    seen: list[dict[str, object]] = []
    original = Page.extract_text

    def spy(self: Page, **kwargs: object) -> str:
        seen.append(kwargs)
        return original(self, **kwargs)

    monkeypatch.setattr(Page, "extract_text", spy)
    extract_pages(
        three_pages, 1, 3, settings(x_tolerance=2.5, y_tolerance=4.0, use_text_flow=False)
    )
    assert seen == [{"x_tolerance": 2.5, "y_tolerance": 4.0, "use_text_flow": False}] * 3


def test_blank_and_image_pages_need_ocr(tmp_path: Path) -> None:
    path = write_pdf(tmp_path / "scan.pdf", ["Real words on page one.", BLANK, IMAGE])
    ocr_off = settings()
    ocr_off.ocr = "off"
    pages = extract_pages(path, 1, 3, ocr_off)
    assert [page.needs_ocr for page in pages] == [False, True, True]
    assert [page.engine for page in pages] == ["pdfplumber", "none", "none"]
    assert pages[1].text == pages[2].text == ""
    document = PDFParser().parse(path, "scan.pdf", ocr_off)
    assert document.pages_needing_ocr == [2, 3]
    assert document.page_engines == {1: "pdfplumber", 2: "none", 3: "none"}


def test_ocr_reads_the_pages_without_text_and_leaves_the_others(tmp_path: Path) -> None:
    """A picture without words and a blank page: OCR ran and found nothing, so neither is
    reported as needing OCR; the page with a text layer is not OCR'd."""
    path = write_pdf(tmp_path / "scan.pdf", ["Real words on page one.", BLANK, IMAGE])
    document = PDFParser().parse(path, "scan.pdf", settings())
    assert document.pages_needing_ocr == []
    assert document.page_engines == {1: "pdfplumber", 2: "tesseract", 3: "tesseract"}
    assert sorted(document.page_ocr) == [2, 3]
    assert "Real words on page one." in document.text


def test_invalid_range_is_a_programming_error(three_pages: Path) -> None:
    with pytest.raises(ValueError):
        extract_pages(three_pages, 0, 2, settings())
    with pytest.raises(ValueError):
        extract_pages(three_pages, 3, 2, settings())


# --------------------------------------------------------------------------------------------------
# quality check and fallback
# --------------------------------------------------------------------------------------------------

FINE = "The quick brown fox jumps over the lazy dog near the river bank."


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "no text"),
        (" \n\t ", "no text"),
        ("Word (cid:12)(cid:13) word", "cid tokens"),
        ("Caf\ufffd au lait", "U+FFFD"),
        ("The \ufb01rst \ufb02oor", "ligature"),
        ("Thequickbrownfoxjumpsover thelazydognearthe riverbank.", "spaces missing"),
    ],
)
def test_quality_problems(text: str, reason: str) -> None:
    problem = page_quality_problem(text, 12.0)
    assert problem is not None and reason in problem


def test_fine_text_has_no_problem() -> None:
    assert page_quality_problem(FINE, 12.0) is None
    # The limit is the config's: a strict one flags the same text.
    assert page_quality_problem(FINE, 3.0) is not None


def test_damaged_word_share_prefers_the_cleaner_text() -> None:
    assert damaged_word_share("", 12.0) == 1.0
    assert damaged_word_share(FINE, 12.0) == 0.0
    assert damaged_word_share("(cid:1) x (cid:2) y", 12.0) == 0.5
    # Ligatures are expanded by cleaning, so they do not count as damage.
    assert damaged_word_share("the \ufb01rst", 12.0) == 0.0


def _plumber_returns(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr(engines._PdfplumberPages, "page_text", lambda self, number: text)


def test_cid_page_falls_back_to_pypdf(three_pages: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _plumber_returns(monkeypatch, "(cid:12)(cid:13)")
    pages = extract_pages(three_pages, 1, 3, settings())
    assert [page.engine for page in pages] == ["pypdf"] * 3
    assert [page.text.strip() for page in pages] == PAGE_TEXTS
    assert pages[0].warnings == ["page 1: fell back to pypdf (cid tokens)"]


def test_without_fallback_a_page_of_cid_tokens_only_goes_to_ocr(
    three_pages: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pdfplumber could map none of the page's glyphs: no text is left once the tokens go, so the
    page is read like a scan."""
    _plumber_returns(monkeypatch, "(cid:12)(cid:13)")
    [page] = extract_pages(three_pages, 2, 2, settings(fallback_to_pypdf=False))
    assert page.engine == "tesseract" and "(cid:" not in page.text
    assert page.warnings[0] == "page 2: cid tokens"


def test_the_better_text_is_kept_when_both_engines_fail(
    three_pages: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # pdfplumber: a little damage; pypdf: no text at all -> pdfplumber's text is kept.
    _plumber_returns(monkeypatch, "Mostly fine words here (cid:3) and more")
    monkeypatch.setattr(engines._PypdfPages, "page_text", lambda self, number: "")
    [page] = extract_pages(three_pages, 1, 1, settings())
    assert page.engine == "pdfplumber" and "Mostly fine" in page.text and "(cid:" not in page.text
    assert page.warnings == ["page 1: cid tokens; 1 removed; pypdf did no better"]


def test_pages_passing_the_check_are_extracted_once(
    three_pages: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_pypdf(*args: object) -> None:
        raise AssertionError("pypdf must not run when every page passes")

    monkeypatch.setattr(engines._PypdfPages, "__init__", no_pypdf)
    assert len(extract_pages(three_pages, 1, 3, settings())) == 3


def test_engine_error_on_one_page_falls_back(
    three_pages: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = engines._PdfplumberPages.page_text

    def flaky(self: object, number: int) -> str:
        if number == 2:
            raise RecursionError("deeply nested content stream")
        return original(self, number)  # type: ignore[arg-type]

    monkeypatch.setattr(engines._PdfplumberPages, "page_text", flaky)
    pages = extract_pages(three_pages, 1, 3, settings())
    assert [page.engine for page in pages] == ["pdfplumber", "pypdf", "pdfplumber"]
    assert pages[1].text.strip() == PAGE_TEXTS[1]
    assert "pdfplumber failed: RecursionError" in pages[1].warnings[0]


def test_primary_failing_on_the_whole_file_uses_pypdf(
    three_pages: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("cannot parse xref")

    monkeypatch.setattr(engines._PdfplumberPages, "__init__", broken)
    pages = extract_pages(three_pages, 1, 3, settings())
    assert {page.engine for page in pages} == {"pypdf"}
    assert [page.text.strip() for page in pages] == PAGE_TEXTS
    assert "pdfplumber cannot read the file" in pages[0].warnings[0]
    with pytest.raises(DocumentProcessingError, match="report.pdf: pdfplumber cannot read"):
        extract_pages(three_pages, 1, 3, settings(fallback_to_pypdf=False))


# A page showing a code its font cannot map to Unicode (no /ToUnicode, a glyph name outside the
# glyph list) comes out of pdfplumber as "(cid:NN)". F1 maps code 1 (to a bullet); F2, the same
# Helvetica with an unknown glyph name at code 1, does not. Each page: (content stream, whether
# pdfplumber's text has cid tokens).
UNMAPPED_PAGES = [
    (b"BT /F1 12 Tf 10 150 Td (Plain words on a plain page.) Tj ET", False),
    (b"BT /F1 12 Tf 10 150 Td (Words and a symbol ) Tj /F2 12 Tf <01> Tj ET", True),
    # The font that cannot map code 1 is used, but not for code 1.
    (b"BT /F2 12 Tf 10 150 Td (Only mapped letters here.) Tj ET", False),
    # Q restores F1, which maps code 1.
    (b"BT /F1 12 Tf 10 150 Td q /F2 12 Tf Q (Restored font \\001 here.) Tj ET", False),
    (b"BT /F2 12 Tf 10 150 Td [(Kerned) -200 (\\001 letter)] TJ ET", True),
    # Text inside a form XObject, which uses F2.
    (b"BT /F1 12 Tf 10 150 Td (Text beside a form.) Tj ET q 1 0 0 1 10 10 cm /X1 Do Q", True),
    # A string that is an operand of another operator is not shown.
    (b"BT /F2 12 Tf 10 150 Td /Span <</ActualText (\\001)>> BDC (Shown words.) Tj EMC ET", False),
]


def write_raw_pdf(path: Path, contents: list[bytes]) -> Path:
    """A PDF with one page per content stream; fonts F1, F2 and form X1 as described above."""
    form = b"BT /F2 12 Tf 10 10 Td (Form \\001 text) Tj ET"
    objects = {
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding << /Type /Encoding "
        b"/BaseEncoding /WinAnsiEncoding /Differences [1 /bullet] >> >>",
        4: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Oblique /Encoding << /Type "
        b"/Encoding /BaseEncoding /WinAnsiEncoding /Differences [1 /g1] >> >>",
        5: b"<< /Type /XObject /Subtype /Form /BBox [0 0 200 50] /Resources << /Font << /F2 4 0 R "
        b">> >> /Length %d >>\nstream\n%s\nendstream" % (len(form), form),
    }
    kids = []
    for number, content in enumerate(contents):
        stream, page = 6 + 2 * number, 7 + 2 * number
        objects[stream] = b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content)
        objects[page] = (
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 200] /Contents %d 0 R /Resources "
            b"<< /Font << /F1 3 0 R /F2 4 0 R >> /XObject << /X1 5 0 R >> >> >>" % stream
        )
        kids.append(b"%d 0 R" % page)
    objects[1] = b"<< /Type /Catalog /Pages 2 0 R >>"
    objects[2] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), len(kids))
    data = bytearray(b"%PDF-1.4\n")
    offsets = {}
    for number in sorted(objects):
        offsets[number] = len(data)
        data += b"%d 0 obj\n%s\nendobj\n" % (number, objects[number])
    xref = len(data)
    data += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    data += b"".join(b"%010d 00000 n \n" % offsets[number] for number in sorted(objects))
    # "%%%%" formats to the "%%" of the end-of-file marker.
    data += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    path.write_bytes(bytes(data))
    return path


@pytest.fixture
def unmapped(tmp_path: Path) -> Path:
    return write_raw_pdf(tmp_path / "math.pdf", [content for content, _ in UNMAPPED_PAGES])


def test_cid_pages_are_predicted_exactly(unmapped: Path) -> None:
    import pdfplumber

    with pdfplumber.open(unmapped) as pdf:
        actual = ["(cid:1)" in page.extract_text() for page in pdf.pages]
    assert actual == [has_cid for _, has_cid in UNMAPPED_PAGES]  # the fixture is what it says
    engine = engines._PdfplumberPages(unmapped, 1, len(UNMAPPED_PAGES), PdfConfig())
    try:
        predicted = [engine.expected_problem(n) for n in range(1, len(UNMAPPED_PAGES) + 1)]
    finally:
        engine.close()
    assert [problem is not None for problem in predicted] == actual
    assert predicted[1] == "cid tokens expected: no Unicode map for codes of Helvetica-Oblique"


def test_predicted_cid_pages_skip_pdfplumber(
    unmapped: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pdfplumber.page import Page

    laid_out: list[int] = []
    original = Page.extract_text

    def spy(self: Page, **kwargs: object) -> str:
        laid_out.append(self.page_number)
        return original(self, **kwargs)

    monkeypatch.setattr(Page, "extract_text", spy)
    pages = extract_pages(unmapped, 1, len(UNMAPPED_PAGES), settings())
    garbled = [n for n, (_, has_cid) in enumerate(UNMAPPED_PAGES, start=1) if has_cid]
    assert laid_out == [n for n in range(1, len(UNMAPPED_PAGES) + 1) if n not in garbled]
    assert [page.number for page in pages if page.engine == "pypdf"] == garbled
    assert pages[1].warnings == [
        "page 2: fell back to pypdf (cid tokens expected: no Unicode map for codes of "
        "Helvetica-Oblique)"
    ]
    assert "(cid:" not in "".join(page.text for page in pages)
    # Without the fallback, pdfplumber reads every page, as before.
    laid_out.clear()
    pages = extract_pages(unmapped, 1, len(UNMAPPED_PAGES), settings(fallback_to_pypdf=False))
    assert laid_out == list(range(1, len(UNMAPPED_PAGES) + 1))
    # pdfplumber's text is kept, without the tokens (they would be learned as words).
    assert pages[1].text.strip() and "(cid:" not in pages[1].text
    assert pages[1].warnings == ["page 2: cid tokens; 1 removed"]


def test_pdfplumber_still_runs_when_the_fallback_text_is_damaged_too(
    unmapped: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engines._PypdfPages, "page_text", lambda self, number: "")
    [page] = extract_pages(unmapped, 2, 2, settings())
    # pdfplumber's text, one damaged word in four, beats pypdf's none.
    assert page.engine == "pdfplumber" and page.text.strip() and "(cid:" not in page.text
    assert page.warnings == ["page 2: cid tokens; 1 removed; pypdf did no better"]


def test_carriage_returns_become_newlines(
    three_pages: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _plumber_returns(monkeypatch, "first line\r\nsecond line\rthird line")
    [page] = extract_pages(three_pages, 1, 1, settings())
    assert page.text == "first line\nsecond line\nthird line"


# --------------------------------------------------------------------------------------------------
# assembly
# --------------------------------------------------------------------------------------------------


def test_parse_gives_one_cleaned_section_per_page(three_pages: Path) -> None:
    document = PDFParser().parse(three_pages, "docs/report.pdf", settings())
    assert document.source == "docs/report.pdf" and document.doc_type == "pdf"
    assert [(s.text, s.pages, s.engines) for s in document.sections] == [
        (text, [number], ["pdfplumber"]) for number, text in enumerate(PAGE_TEXTS, start=1)
    ]
    assert document.metadata.title == "Field Report" and document.warnings == []
    assert isinstance(parser_for(Path("A.PDF")), PDFParser)  # suffixes in any case


def _hyphenated_across_pages(tmp_path: Path) -> Path:
    return write_pdf(
        tmp_path / "flow.pdf",
        [
            "The first page starts a sentence that runs on and ends with an exam-",
            "ple that continues on the second page.",
        ],
    )


def test_whole_document_section_rejoins_across_the_page_break(tmp_path: Path) -> None:
    path = _hyphenated_across_pages(tmp_path)
    document = PDFParser().parse(path, "flow.pdf", settings(extract_by_page=False))
    [section] = document.sections
    assert "ends with an example that continues" in section.text
    assert section.pages == [1, 2] and section.engines == ["pdfplumber", "pdfplumber"]


def test_by_page_sections_keep_the_page_break(tmp_path: Path) -> None:
    document = PDFParser().parse(_hyphenated_across_pages(tmp_path), "flow.pdf", settings())
    assert [section.pages for section in document.sections] == [[1], [2]]
    assert document.sections[0].text.endswith("exam-")


def _page(number: int, text: str, engine: str = "pdfplumber") -> PageText:
    return PageText(number=number, text=text, engine=engine, needs_ocr=not text)


def _info(page_count: int) -> PdfInfo:
    return PdfInfo(
        page_count=page_count,
        metadata=build_metadata({}, "doc", page_count),
        encrypted=False,
    )


BODIES = [
    "Rivers carry water to the sea.",
    "Mountains rise above the clouds.",
    "Deserts hold very little rain.",
    "Forests shelter many animals.",
]


def test_running_headers_are_removed_only_when_configured() -> None:
    pages = [_page(n, f"ACME Annual Report\n{body}\n{n}") for n, body in enumerate(BODIES, 1)]
    cleaned = assemble_pdf_document(
        "a.pdf", _info(4), list(reversed(pages)), DocumentProcessingConfig()
    )
    assert [s.text for s in cleaned.sections] == BODIES  # also sorted by page number
    kept = assemble_pdf_document(
        "a.pdf", _info(4), pages, DocumentProcessingConfig(remove_headers_footers=False)
    )
    assert [s.text for s in kept.sections] == [
        f"ACME Annual Report {body} {n}" for n, body in enumerate(BODIES, 1)
    ]


def test_assembly_collects_warnings_engines_and_ocr_pages() -> None:
    pages = [
        PageText(1, "Text from the fallback.", "pypdf", warnings=["page 1: fell back to pypdf"]),
        _page(2, ""),
    ]
    pages[1].engine = "none"
    document = assemble_pdf_document("a.pdf", _info(2), pages, DocumentProcessingConfig())
    assert document.warnings == ["page 1: fell back to pypdf"]
    assert document.page_engines == {1: "pypdf", 2: "none"}
    assert document.pages_needing_ocr == [2]
    assert [s.pages for s in document.sections] == [[1]]


def test_overlong_documents_are_cut_with_a_warning() -> None:
    pages = [_page(n, body * 3) for n, body in enumerate(BODIES[:3], 1)]  # 90+ characters each
    options = DocumentProcessingConfig(max_text_length=150)
    document = assemble_pdf_document("a.pdf", _info(3), pages, options)
    assert sum(len(s.text) for s in document.sections) == 150
    assert [s.pages for s in document.sections] == [[1], [2]]
    assert document.sections[0].text == BODIES[0] * 3
    assert any("cut at 150 characters" in warning for warning in document.warnings)
