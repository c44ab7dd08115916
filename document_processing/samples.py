"""`create-samples`: a small, realistic, deterministic corpus and data set to try every command.

The corpus exercises what real documents throw at `extract`: a multi-page PDF with a running
header and footer and words hyphenated across line ends, Markdown with frontmatter, nested
headings, a code block and a table, and a text file in cp1252 (not UTF-8). The data sets are
hand-written instruction and chat records about the corpus for the training commands. The texts
themselves are in `shared_utils.sample_corpus`; this module writes them as files.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from shared_utils.file_utils import atomic_write, atomic_write_text
from shared_utils.sample_corpus import (
    CHATS,
    INSTRUCTIONS,
    MARKDOWN_GUIDE,
    PDF_AUTHOR,
    PDF_PAGES,
    PDF_TITLE,
    QUESTIONS,
    TEXT_NOTES,
)


def create_samples(output_dir: Path) -> list[Path]:
    """Write the sample corpus and data sets under `output_dir`; returns the files written."""
    docs = output_dir / "documents"
    sets = output_dir / "datasets"
    written = [
        _write_pdf(docs / "compost_handbook.pdf"),
        _write(docs / "guides" / "worm_bin.md", MARKDOWN_GUIDE.encode("utf-8")),
        _write(docs / "workshop_notes.txt", TEXT_NOTES.encode("cp1252")),
        _write_jsonl(sets / "instructions.jsonl", INSTRUCTIONS),
        _write_jsonl(sets / "chat.jsonl", [{"messages": m} for m in CHATS]),
        _write_jsonl(sets / "questions.jsonl", QUESTIONS),
    ]
    return written


def _write(path: Path, data: bytes) -> Path:
    with atomic_write(path, "wb") as handle:
        handle.write(data)
    return path


def _write_jsonl(path: Path, records: list[dict]) -> Path:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def _write_pdf(path: Path) -> Path:
    """The handbook as a PDF typeset line by line, hyphenating long words at line ends."""
    from fpdf import FPDF

    class _Handbook(FPDF):
        def header(self) -> None:
            self.set_font("Helvetica", "I", 9)
            self.cell(0, 8, PDF_TITLE, align="C", new_x="LMARGIN", new_y="NEXT")
            self.ln(4)

        def footer(self) -> None:
            self.set_y(-15)
            self.set_font("Helvetica", "I", 9)
            self.cell(0, 8, f"Page {self.page_no()} of {len(PDF_PAGES)}", align="C")

    pdf = _Handbook(format=(148, 210))  # A5 in millimetres
    pdf.set_title(PDF_TITLE)
    pdf.set_author(PDF_AUTHOR)
    pdf.set_creation_date(dt.datetime(2024, 3, 1, 9, 0, tzinfo=dt.timezone.utc))
    pdf.set_auto_page_break(False)
    for paragraphs in PDF_PAGES:
        pdf.add_page()
        pdf.set_font("Helvetica", size=10)
        width = pdf.w - pdf.l_margin - pdf.r_margin
        for paragraph in paragraphs:
            for line in _hyphenated_lines(paragraph, width, pdf.get_string_width):
                pdf.cell(0, 5, line, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(3)
    with atomic_write(path, "wb") as handle:
        handle.write(bytes(pdf.output()))
    return path


def _hyphenated_lines(text: str, width: float, measure) -> list[str]:
    """Greedy line breaking; a long word that does not fit is split with a hyphen."""
    lines: list[str] = []
    current = ""
    for word in text.split():
        candidate = f"{current} {word}".strip()
        if measure(candidate) <= width:
            current = candidate
            continue
        if len(word) >= 8 and word.isalpha():
            # Put as much of the word as fits (at least 3 letters each side) before a hyphen.
            for cut in range(len(word) - 3, 2, -1):
                head = f"{current} {word[:cut]}-".strip()
                if measure(head) <= width:
                    lines.append(head)
                    current = word[cut:]
                    break
            else:
                lines.append(current)
                current = word
        else:
            lines.append(current)
            current = word
    if current:
        lines.append(current)
    return lines
