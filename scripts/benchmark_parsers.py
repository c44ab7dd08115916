#!/usr/bin/env python3
"""Benchmark the Markdown, Word, HTML, EPUB and PDF readers (OCR'd scans included), print tables.

    python scripts/benchmark_parsers.py [--spec commonmark.json] [--files 40] [--scans 12]
                                        [--workers 2] [--only spec|formats]

Markdown against the CommonMark spec: every example of the spec is parsed as a file, and its text
(sections joined) is compared with the visible text of the spec's HTML for it, as a browser shows
it: list items with their bullet or number, top-level headings left out (they go to
`section_path`, not to the text). Both sides are split on whitespace; bullets ("-", "*", "+",
"•") and table cell bars ("|") are dropped from both, and our code fence lines (markup, not text)
from ours. An example agrees when the two word sequences are equal. The examples come from the
`commonmark.json` of markdown-it-py's source distribution, which pip downloads when `--spec` is
not given.

Formats: `--files` generated documents per format (Word files written with python-docx, web
pages with a menu, a header, a sidebar and a footer around the article, EPUB books written with
ebooklib, Markdown files, PDFs with a text layer written with fpdf2) and `--scans` scanned PDFs
(the pages of such PDFs rendered with pypdfium2 at 300 dpi and saved as image-only PDFs, so every
page goes through OCR), each folder read by the `extract` command with `--workers` workers in a
fresh process: files/s and pages/s of the whole command (imports in the workers included), CPU
seconds of the run (the process and its workers, robust to other jobs on the machine), peak RSS
of its largest process, and word recall: the share of the words of the body (headings aside:
they go to `section_path`) found in the text, rebuilt from the chunk records. For web pages also
the share of menu, sidebar and footer words that leak into it (lower is better). Formats without
pages (Word, HTML, EPUB, Markdown) count 3,000 characters of extracted text as a page.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tarfile
import tempfile
import time
import unicodedata
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from shared_utils.sample_corpus import PROSE_WORDS  # noqa: E402
from shared_utils.worker_pool import default_worker_count  # noqa: E402

SPEC_MEMBER = "tests/test_cmark_spec/commonmark.json"

# --------------------------------------------------------------------------------------------------
# Markdown: the CommonMark spec
# --------------------------------------------------------------------------------------------------


def load_spec(path: Path | None) -> list[dict[str, object]]:
    """The spec's examples: from `path` (commonmark.json), or from markdown-it-py's sdist."""
    if path is not None:
        return json.loads(path.read_text(encoding="utf-8"))
    from importlib.metadata import version

    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"markdown-it-py=={version('markdown-it-py')}",
                "-d",
                folder,
            ],
            check=True,
        )
        (sdist,) = Path(folder).glob("*.tar.gz")
        with tarfile.open(sdist) as archive:
            member = next(m for m in archive.getmembers() if m.name.endswith(SPEC_MEMBER))
            handle = archive.extractfile(member)
            assert handle is not None
            return json.loads(handle.read().decode("utf-8"))


_MARKUP_TOKEN = re.compile(r"[-*+•|]+")
_FENCE_LINE = re.compile(r" {0,3}(?:`{3,}|~{3,}).*")


def _words(text: str) -> list[str]:
    text = unicodedata.normalize("NFKC", text)
    return [word for word in text.split() if not _MARKUP_TOKEN.fullmatch(word)]


def visible_text(html: str) -> str:
    """What a browser shows of the spec's HTML, top-level headings left out."""
    import lxml.html

    if not html.strip():
        return ""
    root = lxml.html.document_fromstring(f"<html><body>{html}</body></html>").body
    for heading in root.xpath("./h1|./h2|./h3|./h4|./h5|./h6"):
        heading.drop_tree()
    for hidden in list(root.iter("script", "style")):  # a browser never shows their content
        hidden.drop_tree()
    for image in root.iter("img"):  # its alt text, as a text browser or a screen reader gives it
        image.tail = (image.get("alt") or "") + (image.tail or "")
    for listing in root.iter("ol", "ul"):
        number = int(listing.get("start", "1") or 1)
        for item in listing.findall("li"):
            marker = f"{number}. " if listing.tag == "ol" else "- "
            item.text = marker + (item.text or "")
            number += 1
    for element in root.iter("p", "li", "pre", "blockquote", "tr", "td", "th", "br"):
        element.tail = "\n" + (element.tail or "")
    return root.text_content()


def our_text(markdown: str, folder: Path) -> str:
    from document_processing.parsers.markdown_parser import MarkdownParser
    from shared_utils.config import DocumentProcessingConfig
    from shared_utils.errors import LLMToolkitError

    path = folder / "example.md"
    path.write_text(markdown, encoding="utf-8")
    try:
        document = MarkdownParser().parse(path, path.name, DocumentProcessingConfig())
    except LLMToolkitError:
        return ""
    texts = []
    for section in document.sections:
        text = section.text
        for start, end in reversed(section.protected):  # a code block's fence lines are markup
            lines = text[start:end].split("\n")
            if len(lines) >= 2 and _FENCE_LINE.fullmatch(lines[0]) and _FENCE_LINE.match(lines[-1]):
                text = text[:start] + "\n".join(lines[1:-1]) + text[end:]
        texts.append(text)
    return "\n\n".join(texts)


def benchmark_spec(spec_path: Path | None, show: int) -> None:
    examples = load_spec(spec_path)
    agree = 0
    per_section: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    common = reference_words = ours_words = 0
    misses = []
    with tempfile.TemporaryDirectory() as folder:
        for example in examples:
            expected = _words(visible_text(str(example["html"])))
            got = _words(our_text(str(example["markdown"]), Path(folder)))
            section = str(example["section"])
            totals[section] += 1
            overlap = sum((Counter(expected) & Counter(got)).values())
            common, reference_words, ours_words = (
                common + overlap,
                reference_words + len(expected),
                ours_words + len(got),
            )
            if expected == got:
                agree += 1
                per_section[section] += 1
            else:
                misses.append((example["example"], section, expected, got))
    share = agree / len(examples)
    precision, recall = common / max(ours_words, 1), common / max(reference_words, 1)
    f1 = 2 * precision * recall / max(precision + recall, 1e-9)
    print(
        f"CommonMark spec: {agree}/{len(examples)} examples agree ({share:.1%}); word F1 {f1:.3f}"
    )
    print(f"{'section':<28} agree")
    for section, total in totals.items():
        if per_section[section] < total:
            print(f"{section:<28} {per_section[section]}/{total}")
    for number, section, expected, got in misses[:show]:
        print(f"  example {number} ({section}): expected {expected!r}, got {got!r}")


# --------------------------------------------------------------------------------------------------
# Formats: generated documents
# --------------------------------------------------------------------------------------------------

# Words only the page around the article uses: a leak of any of them is boilerplate in the text.
BOILERPLATE = (
    "homepage shopcart newsletter subscribe login signup sitemap careers pressroom copyright "
    "privacypolicy cookiesettings trending sponsored advert related followus"
).split()
FORMATS = ("docx", "html", "epub", "markdown", "pdf", "scanned")
_TOKEN = re.compile(r"\w+")


def _sentence(rng: random.Random) -> str:
    return " ".join(rng.choices(PROSE_WORDS, k=rng.randint(8, 16))).capitalize() + "."


def _document(rng: random.Random) -> list[dict[str, object]]:
    """Sections of a generated document: heading, paragraphs, list items, table rows."""
    sections = []
    for number in range(rng.randint(3, 6)):
        sections.append(
            {
                "heading": f"Part {number + 1} {rng.choice(PROSE_WORDS)}",
                "paragraphs": [
                    " ".join(_sentence(rng) for _ in range(rng.randint(3, 5)))
                    for _ in range(rng.randint(2, 4))
                ],
                "items": [_sentence(rng) for _ in range(3)],
                "rows": [
                    [rng.choice(PROSE_WORDS), str(rng.randint(1, 99)), rng.choice(PROSE_WORDS)]
                    for _ in range(4)
                ],
            }
        )
    return sections


def _body_words(sections: list[dict[str, object]]) -> list[str]:
    """The words a reader must find in the text (headings go to section_path)."""
    words: list[str] = []
    for section in sections:
        for paragraph in section["paragraphs"]:  # type: ignore[union-attr]
            words += _TOKEN.findall(paragraph.lower())
        for item in section["items"]:  # type: ignore[union-attr]
            words += _TOKEN.findall(item.lower())
        for row in section["rows"]:  # type: ignore[union-attr]
            words += [cell.lower() for cell in row]
    return words


def _html_body(sections: list[dict[str, object]], title: str) -> str:
    parts = [f"<h1>{title}</h1>"]
    for section in sections:
        parts.append(f"<h2>{section['heading']}</h2>")
        parts += [f"<p>{p}</p>" for p in section["paragraphs"]]  # type: ignore[union-attr]
        parts.append("<ul>" + "".join(f"<li>{i}</li>" for i in section["items"]) + "</ul>")  # type: ignore[union-attr]
        rows = "".join(
            "<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
            for row in section["rows"]  # type: ignore[union-attr]
        )
        parts.append(f"<table>{rows}</table>")
    return "\n".join(parts)


def _page(sections: list[dict[str, object]], title: str, rng: random.Random, semantic: bool) -> str:
    """A web page as a browser saves it: menus, a sidebar, a footer and scripts around it."""

    def links(count: int) -> str:
        return "".join(
            f'<li><a href="/{i}">{" ".join(rng.sample(BOILERPLATE, 2))}</a></li>'
            for i in range(count)
        )

    nav, aside, footer = ("nav", "aside", "footer") if semantic else ("div", "div", "div")
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title} | Site"
        "</title><script>var homepage = 'advert';</script><style>.x{color:red}</style></head>"
        f"<body><{nav} class='menu'><ul>{links(8)}</ul></{nav}>"
        f"<div class='cookie'>{' '.join(rng.sample(BOILERPLATE, 6))}</div>"
        f"<{aside} class='sidebar'><h3>Trending</h3><ul>{links(6)}</ul></{aside}>"
        f"<div class='content'><article>{_html_body(sections, title)}</article></div>"
        f"<{footer} class='footer'><p>{' '.join(rng.sample(BOILERPLATE, 8))}</p>"
        f"<ul>{links(5)}</ul></{footer}></body></html>"
    )


def _markdown(sections: list[dict[str, object]], title: str) -> str:
    lines = [f"---\ntitle: {title}\n---\n", f"# {title}\n"]
    for section in sections:
        lines.append(f"## {section['heading']}\n")
        lines += [f"{p}\n" for p in section["paragraphs"]]  # type: ignore[union-attr]
        lines += [f"- {i}" for i in section["items"]] + [""]  # type: ignore[union-attr]
        rows = section["rows"]  # type: ignore[assignment]
        lines.append("| " + " | ".join(rows[0]) + " |")  # type: ignore[index]
        lines.append("|---|---|---|")
        lines += ["| " + " | ".join(row) + " |" for row in rows[1:]]  # type: ignore[index]
        lines.append(f"\n[{section['heading']}]: https://example.com/{len(lines)}\n")
    return "\n".join(lines)


def _write_docx(path: Path, sections: list[dict[str, object]], title: str) -> None:
    import docx

    document = docx.Document()
    document.core_properties.title = title
    document.add_heading(title, level=1)
    for section in sections:
        document.add_heading(str(section["heading"]), level=2)
        for paragraph in section["paragraphs"]:  # type: ignore[union-attr]
            document.add_paragraph(paragraph)
        for item in section["items"]:  # type: ignore[union-attr]
            document.add_paragraph(item, style="List Bullet")
        rows = section["rows"]  # type: ignore[assignment]
        table = document.add_table(rows=len(rows), cols=3)  # type: ignore[arg-type]
        for row, cells in zip(table.rows, rows, strict=True):  # type: ignore[call-overload]
            for cell, text in zip(row.cells, cells, strict=True):
                cell.text = text
    document.save(str(path))


def _write_epub(path: Path, sections: list[dict[str, object]], title: str) -> None:
    from ebooklib import epub

    book = epub.EpubBook()
    book.set_identifier(path.stem)
    book.set_title(title)
    book.set_language("en")
    chapters = []
    for number, section in enumerate(sections):
        chapter = epub.EpubHtml(title=str(section["heading"]), file_name=f"c{number}.xhtml")
        chapter.content = (
            f"<html><body>{_html_body([section], str(section['heading']))}</body></html>"
        )
        book.add_item(chapter)
        chapters.append(chapter)
    book.toc = tuple(chapters)
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", *chapters]
    epub.write_epub(str(path), book)


def _write_pdf(path: Path, sections: list[dict[str, object]], title: str) -> None:
    """A text PDF: bold headings, paragraphs, "- " list items and a bordered table."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 18)
    pdf.multi_cell(0, 10, title, new_x="LMARGIN", new_y="NEXT")
    for section in sections:
        pdf.set_font("Helvetica", "B", 14)
        pdf.multi_cell(0, 9, str(section["heading"]), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", size=11)
        for paragraph in section["paragraphs"]:  # type: ignore[union-attr]
            pdf.multi_cell(0, 6, paragraph, new_x="LMARGIN", new_y="NEXT")
            pdf.ln(2)
        for item in section["items"]:  # type: ignore[union-attr]
            pdf.multi_cell(0, 6, f"- {item}", new_x="LMARGIN", new_y="NEXT")
        pdf.ln(2)
        with pdf.table() as table:
            for cells in section["rows"]:  # type: ignore[union-attr]
                row = table.row()
                for cell in cells:
                    row.cell(cell)
        pdf.ln(4)
    pdf.output(str(path))


def _scan(pdf: Path, path: Path, dpi: int = 300) -> int:
    """An image-only PDF of `pdf`'s pages rendered at `dpi` in grey (JPEG, as a scanner's); the
    number of pages."""
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(pdf)
    try:
        images = [page.render(scale=dpi / 72, grayscale=True).to_pil() for page in document]
    finally:
        document.close()
    images[0].save(path, save_all=True, append_images=images[1:], resolution=dpi)
    return len(images)


def make_fixtures(kind: str, folder: Path, count: int) -> dict[str, tuple[list[str], bool]]:
    """Write `count` documents of `kind`; file name -> (body words, semantic page markup)."""
    rng = random.Random(f"{kind}-fixtures")
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    for number in range(count):
        sections = _document(rng)
        title = f"Document {number} {rng.choice(PROSE_WORDS)}"
        semantic = number % 2 == 0
        suffix = {"markdown": "md", "scanned": "pdf"}.get(kind, kind)
        path = folder / f"doc{number:03d}.{suffix}"
        if kind == "docx":
            _write_docx(path, sections, title)
        elif kind == "epub":
            _write_epub(path, sections, title)
        elif kind == "html":
            path.write_text(_page(sections, title, rng, semantic), encoding="utf-8")
        elif kind == "pdf":
            _write_pdf(path, sections, title)
        elif kind == "scanned":
            with tempfile.TemporaryDirectory() as tmp:
                _write_pdf(Path(tmp) / "text.pdf", sections, title)
                _scan(Path(tmp) / "text.pdf", path)
        else:
            path.write_text(_markdown(sections, title), encoding="utf-8")
        expected[path.name] = (_body_words(sections), semantic)
    return expected


def _extract_folder(folder: Path, output: Path, workers: int) -> None:
    """In a fresh process: `extract` the folder into `output`, and write beside it the run's
    seconds, CPU seconds (this process and its workers) and peak RSS of its largest process."""
    import os
    import resource

    from main import main as toolkit
    from shared_utils.training_utils import peak_rss_mb

    started, cpu = time.perf_counter(), os.times()
    status = toolkit(
        ["--log-level", "ERROR", "extract", str(folder), str(output)]
        + ["--workers", str(workers), "--no-progress"]
    )
    seconds, done = time.perf_counter() - started, os.times()
    cpu_seconds = sum(done[:4]) - sum(cpu[:4])  # user and system, own and the workers'
    # The workers are forked, never exec'd: their ru_maxrss is their own peak.
    workers_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    stats = {
        "status": status,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_mb": max(peak_rss_mb(), workers_mb),
    }
    (output / "benchmark.json").write_text(json.dumps(stats), encoding="utf-8")


def _document_texts(output: Path) -> dict[str, str]:
    """Each document's text, its sections rebuilt from their chunks (exact slices of the
    section text, which may overlap), the sections joined by a blank line."""
    chunks: dict[str, dict[int, list[tuple[int, str]]]] = {}
    for name in ("train.jsonl", "valid.jsonl"):
        path = output / name
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        for line in lines:
            record = json.loads(line)
            meta = record["metadata"]
            sections = chunks.setdefault(record["source"], {})
            sections.setdefault(meta["section_index"], []).append(
                (meta["char_start"], record["text"])
            )
    texts = {}
    for source, sections in chunks.items():
        parts = []
        for _, pieces in sorted(sections.items()):
            text, end = "", 0
            for start, piece in sorted(pieces):
                text += (" " + piece) if start >= end else piece[end - start :]
                end = max(end, start + len(piece))
            parts.append(text)
        texts[source] = "\n\n".join(parts)
    return texts


def benchmark_formats(count: int, scans: int, kinds: list[str], workers: int) -> None:
    print(f"extract with {workers} workers; a page of a format without pages: 3,000 characters")
    print(
        f"{'format':<9} {'files':>5} {'pages':>5} {'files/s':>8} {'pages/s':>8} {'CPU s':>6} "
        f"{'peak RSS MB':>11} {'word recall':>11} {'boilerplate leak':>16}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            folder, output = Path(tmp) / kind, Path(tmp) / f"{kind}-out"
            files = scans if kind == "scanned" else count
            expected = make_fixtures(kind, folder, files)
            run = subprocess.run(
                [sys.executable, __file__, "--extract-folder", str(folder), str(output)]
                + [str(workers)],
                capture_output=True,
                text=True,
            )
            if run.returncode != 0:
                raise SystemExit(f"extract failed on {kind}: {run.stderr.strip()[-2000:]}")
            stats = json.loads((output / "benchmark.json").read_text(encoding="utf-8"))
            report = json.loads((output / "extract_report.json").read_text(encoding="utf-8"))
            if stats["status"] != 0:
                failed = [f for f in report["files"] if f["status"] != "ok"]
                raise SystemExit(f"extract failed on {kind}: {failed[:3]}")
            texts = _document_texts(output)
            found = total = leaked = boilerplate = 0
            for name, (words, _semantic) in expected.items():
                got = Counter(_TOKEN.findall(texts.get(name, "").lower()))
                found += sum((Counter(words) & got).values())
                total += len(words)
                if kind == "html":
                    leaked += sum(got[word] > 0 for word in BOILERPLATE)
                    boilerplate += len(BOILERPLATE)
            pages = report["totals"]["pages"] or round(
                sum(f["characters"] for f in report["files"]) / 3000
            )
            leak = f"{leaked / boilerplate:.3f}" if boilerplate else "-"
            seconds = stats["seconds"]
            print(
                f"{kind:<9} {files:>5} {pages:>5} {files / seconds:>8.1f} {pages / seconds:>8.1f} "
                f"{stats['cpu_seconds']:>6.1f} {stats['peak_mb']:>11.0f} {found / total:>11.3f} "
                f"{leak:>16}"
            )


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", type=Path, help="commonmark.json (default: from markdown-it-py)")
    parser.add_argument("--files", type=int, default=40, help="generated documents per format")
    parser.add_argument("--only", choices=("spec", "formats"), help="run one part only")
    parser.add_argument("--show", type=int, default=0, help="print this many disagreeing examples")
    parser.add_argument("--scans", type=int, default=12, help="generated scanned PDFs (OCR)")
    parser.add_argument(
        "--workers", type=int, default=default_worker_count(), help="extract's --workers"
    )
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    parser.add_argument("--extract-folder", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.extract_folder:
        folder, output, workers = args.extract_folder
        _extract_folder(Path(folder), Path(output), int(workers))
        return 0
    if args.only in (None, "spec"):
        benchmark_spec(args.spec, args.show)
    if args.only in (None, "formats"):
        benchmark_formats(args.files, args.scans, args.formats, args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
