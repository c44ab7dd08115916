"""PDF headings from font size and weight: detection, sections with heading paths, and the
cases that must keep one section per page (one type, other engines, running headers).

Every fixture PDF is written here with fpdf2 into tmp_path, typeset like
`scripts/benchmark_knowledge.py`'s report: 16 pt bold title, 12 pt bold headings, 10.5 pt body.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from document_processing.parsers.pdf import (
    PdfInfo,
    PDFParser,
    assemble_pdf_document,
    build_metadata,
)
from document_processing.parsers.pdf.headings import body_size, find_headings
from document_processing.parsers.pdf.line_fonts import line_fonts
from document_processing.records import LineFont, PageText
from shared_utils.config import DocumentProcessingConfig, PdfConfig

TITLE = "Survey of the Ellisand Pearl Mussel"
SUMMARY = (
    "This report presents the results of a survey of the upper Ellisand River. "
    "Fourteen stations were searched between June and August."
)
METHODS = (
    "Each station was a 200-metre stretch of river. Surveyors waded upstream with glass-bottomed "
    "buckets and counted every live mussel they saw."
)
# Long enough to run from the bottom of page 1 onto page 2 of an A6 page.
DISCUSSION = " ".join(
    f"Finding {n} of the discussion says that the silt from the plantation clogs the gravel."
    for n in range(1, 13)
)
THANKS = "The survey was funded by a grant from the Harker Foundation."
REPORT = [
    ("title", TITLE),
    ("heading", "Summary"),
    ("body", SUMMARY),
    ("heading", "Methods"),
    ("body", METHODS),
    ("heading", "Discussion"),
    ("body", DISCUSSION),
    ("heading", "Acknowledgements"),
    ("body", THANKS),
]
HEADINGS = ("Summary", "Methods", "Discussion", "Acknowledgements")
STYLES = {"title": ("B", 16, 8), "heading": ("B", 12, 6), "body": ("", 10.5, 5.2)}


def write_report(path: Path, blocks: list[tuple[str, str]], header: str | None = None) -> Path:
    """A report PDF on A6 pages; `header` is a running header in 14 pt on every page."""
    from fpdf import FPDF

    class Report(FPDF):
        def header(self) -> None:
            if header:
                self.set_font("Helvetica", "B", 14)
                self.cell(0, 8, header, new_x="LMARGIN", new_y="NEXT")

    pdf = Report(format=(105, 148))  # A6 in millimetres
    pdf.set_title(TITLE)
    pdf.set_auto_page_break(True, margin=12)
    pdf.set_margins(10, 10, 10)
    pdf.add_page()
    for kind, text in blocks:
        style, size, height = STYLES[kind]
        pdf.set_font("Helvetica", style, size)
        pdf.multi_cell(0, height, text, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(2)
    pdf.output(str(path))
    return path


def settings(**pdf_options: object) -> DocumentProcessingConfig:
    return DocumentProcessingConfig(pdf=PdfConfig(**pdf_options))  # type: ignore[arg-type]


def words(text: str) -> list[str]:
    return text.split()


# --------------------------------------------------------------------------------------------------
# sections of a PDF with headings
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def report(tmp_path: Path) -> Path:
    return write_report(tmp_path / "report.pdf", REPORT)


def test_sections_follow_the_headings_and_are_cut_at_page_breaks(report: Path) -> None:
    document = PDFParser().parse(report, "report.pdf", settings())
    assert [(s.heading_path, s.pages) for s in document.sections] == [
        ([TITLE, "Summary"], [1]),
        ([TITLE, "Methods"], [1]),
        ([TITLE, "Discussion"], [1]),  # the paragraph runs over the page break
        ([TITLE, "Discussion"], [2]),
        ([TITLE, "Acknowledgements"], [2]),
    ]
    texts = [section.text for section in document.sections]
    assert texts[0] == SUMMARY and texts[1] == METHODS and texts[4] == THANKS
    assert words(texts[2]) + words(texts[3]) == words(DISCUSSION)
    assert all(s.engines == ["pdfplumber"] for s in document.sections)


def test_no_heading_or_title_is_left_in_the_text(report: Path) -> None:
    document = PDFParser().parse(report, "report.pdf", settings())
    for section in document.sections:
        assert not section.text.startswith(HEADINGS)
        assert TITLE not in section.text


def test_whole_document_sections_keep_a_paragraph_over_a_page_break_together(
    report: Path,
) -> None:
    document = PDFParser().parse(report, "report.pdf", settings(extract_by_page=False))
    assert [(s.heading_path, s.pages, s.text) for s in document.sections] == [
        ([TITLE, "Summary"], [1], SUMMARY),
        ([TITLE, "Methods"], [1], METHODS),
        ([TITLE, "Discussion"], [1, 2], DISCUSSION),
        ([TITLE, "Acknowledgements"], [2], THANKS),
    ]


def test_extract_writes_the_headings_as_section_paths(
    run_main, report: Path, tmp_path: Path
) -> None:
    docs = report.parent / "docs"
    docs.mkdir()
    report.rename(docs / "report.pdf")
    status, _, _ = run_main("extract", docs, tmp_path / "out", "--no-progress", "--workers", "1")
    assert status == 0
    lines = (tmp_path / "out" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    paths = [record["metadata"]["section_path"] for record in records]
    assert [TITLE, "Discussion"] in paths and [TITLE, "Acknowledgements"] in paths
    assert not any(record["text"].startswith(HEADINGS) for record in records)
    assert all(r["metadata"]["page_start"] == r["metadata"]["page_end"] for r in records)


# --------------------------------------------------------------------------------------------------
# documents that keep one section per page
# --------------------------------------------------------------------------------------------------


def test_a_pdf_in_one_type_keeps_one_section_per_page(tmp_path: Path) -> None:
    blocks = [("body", text) for _, text in REPORT]  # headings too, in the body type
    path = write_report(tmp_path / "plain.pdf", blocks)
    document = PDFParser().parse(path, "plain.pdf", settings())
    assert [(s.heading_path, s.pages) for s in document.sections] == [([], [1]), ([], [2])]
    joined = " ".join(section.text for section in document.sections)
    assert words(joined) == words(" ".join(text for _, text in REPORT))


@pytest.mark.parametrize("engine", ["pypdf", "pypdfium2"])
def test_engines_without_fonts_keep_one_section_per_page(report: Path, engine: str) -> None:
    document = PDFParser().parse(report, "report.pdf", settings(engine=engine))
    assert [(s.heading_path, s.pages) for s in document.sections] == [([], [1]), ([], [2])]


def test_a_running_header_in_a_large_font_is_not_a_heading(tmp_path: Path) -> None:
    header = "Ellisand Field Notes"
    path = write_report(tmp_path / "headed.pdf", REPORT + REPORT[1:], header=header)
    removed = PDFParser().parse(path, "headed.pdf", settings())
    assert len({page for s in removed.sections for page in s.pages}) >= 3
    assert all(header not in s.heading_path for s in removed.sections)
    assert all(header not in s.text for s in removed.sections)
    assert {tuple(s.heading_path) for s in removed.sections} == {(TITLE, h) for h in HEADINGS}
    # Kept in the text when running lines are not removed, and still not taken for a heading.
    options = DocumentProcessingConfig(remove_headers_footers=False)
    kept = PDFParser().parse(path, "headed.pdf", options)
    first, *others = kept.sections
    assert (first.heading_path, first.text) == ([], header)  # above the title on page 1
    assert {tuple(s.heading_path) for s in others} == {(TITLE, h) for h in HEADINGS}
    assert sum(s.text.count(header) for s in kept.sections) == 4


def test_a_page_without_fonts_gets_no_heading_path_rather_than_a_wrong_one() -> None:
    title, heading, body = font(16, True), font(12, True), LineFont(10.5, False, 40)
    pages = [
        PageText(1, "Report\nMethods\nWe counted mussels.", "pdfplumber"),
        PageText(2, "Chapter 2 is hidden here.\nIts text goes on.", "pypdf"),
        PageText(3, "More of chapter 2.\nResults\nWe found few.", "pdfplumber"),
    ]
    pages[0].line_fonts = [title, heading, body]
    pages[2].line_fonts = [body, heading, body]
    info = PdfInfo(page_count=3, metadata=build_metadata({}, "Report", 3), encrypted=False)
    document = assemble_pdf_document("a.pdf", info, pages, DocumentProcessingConfig())
    assert [(s.heading_path, s.pages, s.text) for s in document.sections] == [
        (["Report", "Methods"], [1], "We counted mussels."),
        ([], [2], "Chapter 2 is hidden here. Its text goes on."),
        ([], [3], "More of chapter 2."),
        (["Results"], [3], "We found few."),
    ]


# --------------------------------------------------------------------------------------------------
# heading detection from line fonts
# --------------------------------------------------------------------------------------------------

BODY = LineFont(size=10.5, bold=False, chars=60)


def font(size: float, bold: bool = False, chars: int = 10) -> LineFont:
    return LineFont(size=size, bold=bold, chars=chars)


def test_body_size_is_the_size_of_most_characters() -> None:
    fonts = [[font(16, True, 30), BODY], None, [BODY, font(9, chars=100)]]
    assert body_size(fonts) == 10.5
    assert body_size([None, []]) is None


def test_levels_follow_the_heading_sizes_and_the_title_heads_them_all() -> None:
    lines = ["Field Report", "Results", "Station 3", "Body text of the station.", "Appendix", "A."]
    fonts = [font(16, True), font(14), font(11, True), BODY, font(16, True), BODY]
    [headings] = find_headings([lines], [fonts], title="Field  report")
    assert [(h.start, h.stop, h.level, h.text) for h in headings] == [
        (0, 1, 0, "Field Report"),  # the metadata title, compared without case and spacing
        (1, 2, 2, "Results"),
        (2, 3, 3, "Station 3"),
        (4, 5, 1, "Appendix"),
    ]


def test_a_heading_with_no_text_under_it_stays_text() -> None:
    """A title page's author and date in large type head nothing before the next heading of
    their level: they stay text (in no heading path they would reach no record); a heading over a
    deeper one, or over text on the next page, stays a heading."""
    pages = [
        ["Field Report", "Ann Lee", "Methods", "Station", "Body.", "Results"],
        ["Body on the next page.", "Index"],
    ]
    fonts = [
        [font(16, True), font(13), font(14), font(12, True), BODY, font(14)],
        [BODY, font(14)],
    ]
    first, second = find_headings(pages, fonts, title="Field Report")
    assert [(h.text, h.level) for h in first] == [
        ("Field Report", 0),
        ("Methods", 2),  # over "Station", a deeper heading
        ("Station", 4),
        ("Results", 2),  # its text is on the next page
    ]
    assert second == []  # "Ann Lee" and "Index", the document's last line, are text


def test_bold_lines_at_body_size_are_headings_only_when_short_phrases() -> None:
    lines = [
        "Study Area",  # a heading
        "This bold sentence stands out.",  # ends like a sentence
        "a bold phrase, then a comma,",  # ends like a clause
        "Bold words that run on for more than a dozen words in a single line of type",
        "Normal body text.",
    ]
    fonts = [font(10.5, True), font(10.5, True), font(10.5, True), font(10.5, True), BODY]
    [headings] = find_headings([lines], [fonts], title="")
    assert [h.text for h in headings] == ["Study Area"]


def test_a_wrapped_heading_is_one_and_a_large_paragraph_is_none() -> None:
    lines = ["Survey of the Ellisand", "Pearl Mussel", "Body.", "A", "B", "C", "D", "Body."]
    fonts = [font(16, True), font(16, True), BODY, *[font(16)] * 4, BODY]
    [headings] = find_headings([lines], [fonts], title="")
    assert [(h.start, h.stop, h.text) for h in headings] == [
        (0, 2, "Survey of the Ellisand Pearl Mussel")
    ]


def test_a_heading_at_the_page_edge_on_most_pages_is_a_running_line() -> None:
    lines = ["Annual Report", "Chapter {}", "Body.", "Body.", "Summary", "Body.", "Body."]
    pages = [[line.format(n) for line in lines] for n in range(1, 5)]
    heading, body = font(12.5, True), font(10.5, chars=40)
    fonts = [[font(14), heading, body, body, heading, body, body] for _ in pages]
    headings = find_headings(pages, fonts, title="")
    # "Summary" on every page too, but inside the page: a heading each chapter has.
    assert [[h.text for h in page] for page in headings] == [
        [f"Chapter {n}", "Summary"] for n in range(1, 5)
    ]


def chars(text: str, size: float, fontname: str, x: float = 0.0) -> list[tuple[str, dict]]:
    """pdfplumber's (character, char) pairs for `text` set from `x` on, each half its size wide."""
    pairs = []
    for char in text:
        pairs.append(
            (char, {"text": char, "size": size, "fontname": fontname, "x0": x, "x1": x + size / 2})
        )
        x += size / 2
    return pairs


def test_line_fonts_take_the_type_of_nearly_all_characters() -> None:
    pairs = [
        *chars("Results", 12.0, "Helvetica-Bold"),
        *chars("1", 7.0, "Helvetica", x=42.0),  # a footnote mark
        ("\n", None),
        *chars("Body", 10.5, "ABCDEF+TimesNewRoman"),
        (" ", None),
        *chars("X", 10.5, "ABCDEF+TimesNewRoman-Bold", x=24.0),
        ("\n", None),
    ]
    assert line_fonts(pairs) == [
        LineFont(size=12.0, bold=True, chars=8),
        LineFont(size=10.5, bold=False, chars=5),
        LineFont(size=0.0, bold=False, chars=0),
    ]


def test_line_fonts_count_the_cells_wide_gaps_set_apart() -> None:
    bold = "Helvetica-Bold"
    row = [*chars("Station", 10, bold), *chars("Live", 10, bold, 80), *chars("Dead", 10, bold, 160)]
    numbered = [*chars("2.1", 12, bold), *chars("Methods", 12, bold, 15 + 1.6 * 12)]
    two_columns = [*chars("Body", 10, "Times"), *chars("Other", 10, "Times", 20 + 2 * 10)]
    spaced = [*chars("Body", 10, "Times"), (" ", None), *chars("text", 10, "Times", 22.5)]
    fonts = line_fonts([*row, ("\n", None), *numbered, ("\n", None), *two_columns,
                        ("\n", None), *spaced])  # fmt: skip
    assert [font.cells for font in fonts] == [3, 1, 2, 1]


def test_a_line_of_cells_is_never_a_heading() -> None:
    lines = ["Counts", "Station Live Dead", "Upper 14 2", "Body text."]
    header_row = LineFont(size=10.5, bold=True, chars=15, cells=3)
    fonts = [font(12, True), header_row, LineFont(10.5, False, 9, cells=3), BODY]
    [headings] = find_headings([lines], [fonts], title="")
    assert [h.text for h in headings] == ["Counts"]


def test_a_bold_table_header_row_stays_in_the_text(tmp_path: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF(format=(105, 148))
    pdf.set_margins(10, 10, 10)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 12)
    pdf.multi_cell(0, 6, "Counts", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 10.5)
    pdf.multi_cell(0, 5.2, METHODS, new_x="LMARGIN", new_y="NEXT")
    with pdf.table() as table:  # fpdf2 sets the first row, the header, in bold
        for cells in (("Station", "Live", "Dead"), ("Upper", "14", "2"), ("Lower", "3", "9")):
            table.row(cells)
    pdf.set_font("Helvetica", "B", 12)
    pdf.multi_cell(0, 6, "Discussion", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 10.5)
    pdf.multi_cell(0, 5.2, THANKS, new_x="LMARGIN", new_y="NEXT")
    pdf.output(str(tmp_path / "table.pdf"))

    document = PDFParser().parse(tmp_path / "table.pdf", "table.pdf", settings())
    assert [s.heading_path for s in document.sections] == [["Counts"], ["Discussion"]]
    assert words(document.sections[0].text)[-9:] == (
        "Station Live Dead Upper 14 2 Lower 3 9".split()
    )
