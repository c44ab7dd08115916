"""Glyph names in place of text: a font without a Unicode map must not put "/s72" into records.

The fixture is the shape of a dvips-made arXiv paper: body text in a standard font, a phrase in a
bitmap (Type 3) font whose glyphs are named "s" + code with no /ToUnicode (pdfminer maps them
through the standard encoding, pypdf writes the names), and a math glyph no engine can map (which
sends the page to pypdf first, because pdfplumber would write "(cid:1)" for it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from document_processing.parsers.pdf import (
    PDFParser,
    damaged_word_share,
    extract_pages,
    glyph_name_count,
    page_quality_problem,
    remove_glyph_names,
)
from shared_utils.config import ToolkitConfig

BODY = (
    "The river delta formed over many thousands of years as sediment settled where the water "
    "slowed near the coast and spread across a wide plain of marsh and channels"
)
BITMAP_PHRASE = "Hello bitmap"


def _pdf(objects: list[bytes]) -> bytes:
    """A PDF file of `objects` (object i+1 is objects[i]) with a correct cross-reference table."""
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return out


def _stream(data: bytes) -> bytes:
    return b"<< /Length %d >>\nstream\n" % len(data) + data + b"\nendstream"


def _type3_font(codes: list[int], first_proc: int) -> bytes:
    """A Type 3 font whose glyph for code c is named /s<c>, with no /ToUnicode."""
    procs = b" ".join(b"/s%d %d 0 R" % (code, first_proc + i) for i, code in enumerate(codes))
    differences = b" ".join(b"%d /s%d" % (code, code) for code in codes)
    widths = b" ".join(b"500" for _ in range(min(codes), max(codes) + 1))
    return (
        b"<< /Type /Font /Subtype /Type3 /FontBBox [0 0 500 700] "
        b"/FontMatrix [0.001 0 0 0.001 0 0] /CharProcs << %s >> "
        b"/Encoding << /Type /Encoding /Differences [%s] >> "
        b"/FirstChar %d /LastChar %d /Widths [%s] /Resources << >> >>"
        % (procs, differences, min(codes), max(codes), widths)
    )


def bitmap_font_pdf(path: Path, body_words: str = BODY, with_math: bool = True) -> Path:
    """One page: `body_words` in Helvetica, then BITMAP_PHRASE in a Type 3 font, then (with
    `with_math`) a math glyph whose code no engine can map."""
    codes = sorted({ord(c) for c in BITMAP_PHRASE} | {1})
    first_proc = 7
    glyph = b"500 0 0 0 400 700 d1 50 0 300 700 re f"
    lines = [body_words[i : i + 70] for i in range(0, len(body_words), 70)]
    content = b"BT /F1 11 Tf 14 TL 72 720 Td " + b" ".join(
        b"(" + line.encode() + b") '" for line in lines
    )
    # Each word of the bitmap phrase is placed on its own, as dvips places words.
    x = 72
    for word in BITMAP_PHRASE.split():
        content += b" ET BT /F2 11 Tf %d 600 Td (%s) Tj" % (x, word.encode())
        x += 8 * len(word) + 6
    if with_math:
        content += b" ET BT /F2 11 Tf 300 600 Td <01> Tj"
    content += b" ET"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
        b"/Resources << /Font << /F1 5 0 R /F2 6 0 R >> >> /Contents 4 0 R >>",
        _stream(content),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        _type3_font(codes, first_proc),
        *(_stream(glyph) for _ in codes),
    ]
    path.write_bytes(_pdf(objects))
    return path


@pytest.fixture
def settings():
    return ToolkitConfig().document_processing


# --------------------------------------------------------------------------------------------------
# unit: finding and removing glyph names
# --------------------------------------------------------------------------------------------------


def test_glyph_names_are_counted_in_runs_and_paths_are_not():
    assert glyph_name_count("/s72/s101/s108/s108/s111 world /s32") == 6
    assert glyph_name_count("and/or api/v1 /usr/bin /dev/sda1 http://example.org/a1") == 0


def test_a_page_of_glyph_names_fails_the_quality_check_and_a_stray_path_does_not():
    garbage = "The delta /s72/s101/s108/s108/s111 formed over years"
    assert page_quality_problem(garbage, 12.0) == "glyph names where a font has no Unicode map"
    assert page_quality_problem("see the file /s3 on the server", 12.0) is None


def test_glyph_names_count_as_damaged_words():
    assert damaged_word_share("one two /s72/s101 four", 12.0) == 0.25


def test_remove_glyph_names_keeps_the_words_around_them():
    assert remove_glyph_names("The /s72/s101 delta (/s49) formed") == ("The  delta () formed", 3)


# --------------------------------------------------------------------------------------------------
# component: the page from a bitmap-font PDF
# --------------------------------------------------------------------------------------------------


def test_fixture_reproduces_pypdf_glyph_names(tmp_path):
    """The fixture is what the fix is about: pypdf writes the names, pdfplumber the text."""
    import pdfplumber
    import pypdf

    path = bitmap_font_pdf(tmp_path / "paper.pdf")
    assert "/s72/s101/s108/s108/s111" in pypdf.PdfReader(path).pages[0].extract_text()
    with pdfplumber.open(path) as pdf:
        assert "Hello bitmap" in pdf.pages[0].extract_text()


def test_glyph_names_from_the_fallback_do_not_beat_the_first_engine(tmp_path, settings):
    path = bitmap_font_pdf(tmp_path / "paper.pdf")
    [page] = extract_pages(path, 1, 1, settings)
    assert page.engine == "pdfplumber"
    assert "Hello bitmap" in page.text
    assert "/s72" not in page.text and "(cid:" not in page.text
    assert page.warnings == ["page 1: cid tokens; 1 removed; pypdf did no better"]


def test_glyph_names_never_reach_the_document_text(tmp_path, settings):
    """With pypdf as the only engine the names are removed, and the page says so."""
    settings.pdf.engine = "pypdf"
    path = bitmap_font_pdf(tmp_path / "paper.pdf")
    doc = PDFParser().parse(path, "paper.pdf", settings)
    assert "river delta formed" in doc.text
    assert "/s" not in doc.text and "s101" not in doc.text
    assert doc.warnings == ["page 1: glyph names where a font has no Unicode map; 12 removed"]


def test_a_page_without_unmappable_glyphs_keeps_the_first_engine_without_warnings(
    tmp_path, settings
):
    path = bitmap_font_pdf(tmp_path / "paper.pdf", with_math=False)
    [page] = extract_pages(path, 1, 1, settings)
    assert page.engine == "pdfplumber"
    assert "Hello bitmap" in page.text
    assert page.warnings == []
