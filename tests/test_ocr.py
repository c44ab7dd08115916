"""OCR: image files and PDF pages without a text layer get their text, `--ocr auto|off|force`.

Fixtures are drawn here: sentences rendered with Pillow's own scalable font, saved as PNG, as a
two-frame TIFF, and as an image-only PDF (Pillow writes the picture and no text layer).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from document_processing.converters.chunking import Chunker
from document_processing.parsers import ocr
from document_processing.parsers.pdf import PDFParser
from document_processing.records import DocumentMetadata, ParsedDocument, Section
from main import main
from shared_utils.config import ToolkitConfig

HARBOUR = ["The harbour bridge opened in 1932", "after eight years of building work"]
WORMS = ["Worms need shredded paper", "and moist soil to stay healthy"]
FERRY = ["The ferry crossed the strait", "twice a day in summer"]
ORCHARD = ["Apple trees in the orchard", "were pruned every February"]


def page_image(lines: list[str], size: tuple[int, int] = (1240, 900)):
    """A white page with `lines` in black, 40 px type (a 12 pt line at about 240 dpi)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=40)
    image = Image.new("L", size, 255)
    draw = ImageDraw.Draw(image)
    for index, line in enumerate(lines):
        draw.text((80, 100 + 70 * index), line, font=font, fill=0)
    return image


def words(text: str) -> set[str]:
    return {word.casefold() for word in re.findall(r"\w+", text)}


def recall(expected: list[str], text: str) -> float:
    wanted = words(" ".join(expected))
    return len(wanted & words(text)) / len(wanted)


@pytest.fixture
def settings():
    return ToolkitConfig().document_processing


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A PNG, a two-frame TIFF, an image-only PDF and a PDF with a text layer, all different."""
    from fpdf import FPDF

    docs = tmp_path / "docs"
    docs.mkdir()
    page_image(HARBOUR).save(docs / "harbour.png")
    first, second = page_image(FERRY), page_image(ORCHARD)
    first.save(docs / "scan.tiff", save_all=True, append_images=[second])
    page_image(WORMS).save(docs / "scanned.pdf", resolution=150)
    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=14)
    pdf.multi_cell(0, 8, "The lighthouse keeper logged every passing ship in a leather book.")
    pdf.output(str(docs / "typed.pdf"))
    return docs


def run_extract(folder: Path, out: Path, *flags: str) -> tuple[int, dict, list[dict]]:
    code = main(["extract", str(folder), str(out), "--workers", "1", "--no-progress", *flags])
    report = json.loads((out / "extract_report.json").read_text())
    records = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    return code, {entry["source"]: entry for entry in report["files"]}, records


def text_of(records: list[dict], source: str) -> str:
    return " ".join(record["text"] for record in records if record["source"] == source)


# --------------------------------------------------------------------------------------------------
# unit: the report entry
# --------------------------------------------------------------------------------------------------


def test_report_entry_has_engine_confidence_and_dpi():
    result = ocr.OcrText("text", 0.91234, "tesseract 5.5.4 (tesserocr 2.13.0, eng)")
    assert result.metadata(300) == {
        "engine": "tesseract 5.5.4 (tesserocr 2.13.0, eng)",
        "confidence": 0.912,
        "dpi": 300,
    }
    assert ocr.OcrText("", None, "tesseract").metadata(None) == {"engine": "tesseract"}


def test_chunk_records_carry_the_lowest_ocr_confidence_of_their_pages():
    page_ocr = {1: {"engine": "t", "confidence": 0.93}, 2: {"engine": "t", "confidence": 0.41}}
    sections = [
        Section("Read by OCR across two pages.", pages=[1, 2], engines=["tesseract"] * 2),
        Section("Read by OCR on one page.", pages=[2], engines=["tesseract"]),
        Section("A text layer.", pages=[3], engines=["pdfplumber"]),
    ]
    doc = ParsedDocument("scan.pdf", "pdf", DocumentMetadata("scan"), sections, page_ocr=page_ocr)
    records = Chunker().chunk_document(doc)
    assert [record["metadata"]["ocr_confidence"] for record in records] == [0.41, 0.41, -1.0]


# --------------------------------------------------------------------------------------------------
# component: the engine and the parsers
# --------------------------------------------------------------------------------------------------


def test_engine_reads_a_rendered_page_with_a_confidence():
    engine = ocr.ocr_engine()
    assert engine is not None, "OCR unavailable: see the debug log of ocr.ocr_engine"
    result = engine.read(page_image(HARBOUR))
    assert recall(HARBOUR, result.text) >= 0.9
    assert 0.5 < result.confidence <= 1.0
    assert result.engine.startswith(ocr.ENGINE_PACKAGE)


def test_image_only_pdf_page_is_read_by_ocr(folder, settings):
    doc = PDFParser().parse(folder / "scanned.pdf", "scanned.pdf", settings)
    assert recall(WORMS, doc.text) >= 0.9
    assert doc.pages_needing_ocr == []
    assert doc.page_engines == {1: "tesseract"}
    assert doc.page_ocr[1]["dpi"] == ocr.RENDER_DPI
    assert doc.page_ocr[1]["confidence"] > 0.5


def test_without_an_engine_the_page_is_reported_as_before(folder, settings, monkeypatch):
    monkeypatch.setattr(ocr, "ocr_engine", lambda: None)
    doc = PDFParser().parse(folder / "scanned.pdf", "scanned.pdf", settings)
    assert doc.text == ""
    assert doc.pages_needing_ocr == [1]
    assert doc.page_engines == {1: "none"}
    assert doc.page_ocr == {}


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------


def test_extract_reads_images_and_scanned_pdfs(folder, tmp_path):
    code, report, records = run_extract(folder, tmp_path / "out")
    assert code == 0
    assert recall(HARBOUR, text_of(records, "harbour.png")) >= 0.9
    assert recall(WORMS, text_of(records, "scanned.pdf")) >= 0.9
    tiff = [record for record in records if record["source"] == "scan.tiff"]
    assert recall(FERRY + ORCHARD, " ".join(r["text"] for r in tiff)) >= 0.9
    assert {record["metadata"]["page_start"] for record in tiff} == {1, 2}
    assert report["harbour.png"]["type"] == "image"
    # Each record carries its page's OCR confidence, the one the report gives for that page.
    for record in records:
        meta = record["metadata"]
        entry = report[record["source"]]["ocr"].get(str(meta["page_start"]))
        assert meta["ocr_confidence"] == (entry["confidence"] if entry else -1.0)
    images = [record["metadata"] for record in records if record["type"] == "image"]
    assert images and all(meta["ocr_confidence"] > 0.5 for meta in images)
    typed = [record["metadata"] for record in records if record["source"] == "typed.pdf"]
    assert [meta["ocr_confidence"] for meta in typed] == [-1.0]
    assert report["scanned.pdf"]["engines"] == {"1": "tesseract"}
    assert report["scanned.pdf"]["pages_needing_ocr"] == []
    entry = report["scanned.pdf"]["ocr"]["1"]
    assert entry["engine"].startswith(ocr.ENGINE_PACKAGE) and entry["confidence"] > 0.5
    # A page with a text layer is not OCR'd under auto.
    assert report["typed.pdf"]["ocr"] == {}
    assert report["typed.pdf"]["engines"] == {"1": "pdfplumber"}


def test_ocr_off_reports_images_and_scans_as_needing_ocr(folder, tmp_path, capsys):
    code, report, records = run_extract(folder, tmp_path / "out", "--ocr", "off")
    assert code == 3  # some files failed, the rest was written
    assert {record["source"] for record in records} == {"typed.pdf"}
    for source in ("harbour.png", "scan.tiff", "scanned.pdf"):
        assert report[source]["status"] == "failed"
        assert report[source]["reason"] == (
            "no text could be extracted (scanned pages need OCR first)"
        )
    assert report["scan.tiff"]["pages_needing_ocr"] == [1, 2]


def test_ocr_force_reads_pages_that_have_a_text_layer(folder, tmp_path):
    (folder / "harbour.png").unlink()
    (folder / "scan.tiff").unlink()
    code, report, records = run_extract(folder, tmp_path / "out", "--ocr", "force")
    assert code == 0
    assert report["typed.pdf"]["engines"] == {"1": "tesseract"}
    assert "lighthouse keeper" in text_of(records, "typed.pdf").casefold()


def test_a_broken_image_is_one_line_and_the_run_goes_on(folder, tmp_path, capsys):
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (folder / "cut.jpg").write_bytes(b"\xff\xd8\xff")
    (folder / "scan.tiff").unlink()
    code, report, records = run_extract(folder, tmp_path / "out")
    assert code == 3
    assert report["broken.png"]["status"] == "failed"
    assert report["broken.png"]["reason"].startswith("cannot be read (")
    assert report["cut.jpg"]["reason"] == "not an image Pillow can read"
    assert report["harbour.png"]["status"] == "ok"
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(r"^failed: broken\.png: cannot be read \(.+\)$", err, re.M)


def test_ocr_flag_is_validated(capsys):
    assert main(["extract", "in", "out", "--ocr", "sometimes"]) == 2
    assert "argument --ocr: invalid choice: 'sometimes'" in capsys.readouterr().err
