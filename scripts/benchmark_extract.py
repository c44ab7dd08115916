#!/usr/bin/env python3
"""Benchmark `extract` against a plain pdfplumber loop, in one run, and print a table.

    python scripts/benchmark_extract.py [--pages 500] [--corpus ../shared/corpora/pdf-samples]
                                        [--repeat 3]

Measures, on the same PDFs in the same run:
- pages/s of a plain pdfplumber loop with our settings (x_tolerance, use_text_flow, page.close())
  that only extracts text, in a fresh process like the pipeline: the baseline;
- pages/s of our whole pipeline (extract, clean, chunk, write) with 1 worker and with all cores,
  and with the pypdf and pypdfium2 engines (the baseline and the pdfplumber pipelines run
  `--repeat` times, alternating, and keep their best, so the ratios hold on a shared machine);
- peak RSS of the pipeline on the generated book;
- character chunking throughput in MB/s;
- word-level recall per engine against the reference texts of the real sample PDFs, when the
  corpus folder is there (it is not part of a fresh clone).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from shared_utils.config import ToolkitConfig  # noqa: E402
from shared_utils.sample_corpus import PROSE_WORDS  # noqa: E402
from shared_utils.worker_pool import default_worker_count  # noqa: E402

DEFAULT_CORPUS = REPO.parent / "shared" / "corpora" / "pdf-samples"


def make_book(path: Path, pages: int) -> None:
    """A deterministic book of `pages` pages of prose with a running header and page numbers."""
    import random

    from fpdf import FPDF

    rng = random.Random(0)

    class Book(FPDF):
        def header(self) -> None:
            self.set_font("Helvetica", "I", 8)
            self.cell(0, 6, "Benchmark Book", align="C", new_x="LMARGIN", new_y="NEXT")

        def footer(self) -> None:
            self.set_y(-12)
            self.set_font("Helvetica", "I", 8)
            self.cell(0, 6, str(self.page_no()), align="C")

    pdf = Book()
    pdf.set_auto_page_break(False)
    for _ in range(pages):
        pdf.add_page()
        pdf.set_font("Helvetica", size=10)
        for _ in range(6):
            sentences = []
            for _ in range(4):
                words = rng.choices(PROSE_WORDS, k=rng.randint(8, 16))
                sentences.append(" ".join(words).capitalize() + ".")
            pdf.multi_cell(0, 5, " ".join(sentences))
            pdf.ln(2)
    pdf.output(str(path))


# Run in a fresh process like the pipeline, pdfplumber's import included: measured inside this
# script's own process, after it generated the book, the same loop ran about a tenth slower.
PLAIN_LOOP = """
import json, sys, time
started = time.perf_counter()
import pdfplumber
x_tolerance, y_tolerance, use_text_flow = json.loads(sys.argv[1])
pages = 0
for path in sys.argv[2:]:
    with pdfplumber.open(path) as pdf:
        for page in pdf.pages:
            page.extract_text(
                x_tolerance=x_tolerance, y_tolerance=y_tolerance, use_text_flow=use_text_flow
            )
            page.close()
            pages += 1
print(json.dumps({"pages": pages, "seconds": time.perf_counter() - started}))
"""


def plain_pdfplumber(pdfs: list[Path], config: ToolkitConfig) -> tuple[int, float]:
    """The baseline: pdfplumber with the same settings, text only, each page closed."""
    pdf_cfg = config.document_processing.pdf
    settings = json.dumps([pdf_cfg.x_tolerance, pdf_cfg.y_tolerance, pdf_cfg.use_text_flow])
    proc = subprocess.run(
        [sys.executable, "-c", PLAIN_LOOP, settings, *map(str, pdfs)],
        capture_output=True,
        text=True,
        check=True,
    )
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    return stats["pages"], stats["seconds"]


def run_pipeline(
    input_dir: Path, workers: int, engine: str, config: Path | None = None
) -> tuple[int, float, float]:
    """Our whole `extract` in a child process: (pages, seconds, peak RSS MB of any process)."""
    out = Path(tempfile.mkdtemp(prefix="bench-out-"))
    cmd = [
        sys.executable,
        "-c",
        "import json, resource, sys, time; sys.path.insert(0, sys.argv[1]);"
        "from main import main; t = time.perf_counter();"
        "status = main(sys.argv[2:]); dt = time.perf_counter() - t;"
        "own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
        "kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss;"
        "print(json.dumps({'status': status, 'seconds': dt, 'rss_kb': max(own, kids)}))",
        str(REPO),
        "--log-level",
        "ERROR",
        *(["--config", str(config)] if config else []),
        "extract",
        str(input_dir),
        str(out),
        "--workers",
        str(workers),
        "--pdf-engine",
        engine,
        "--no-progress",
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        line = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
        stats = json.loads(line)
        if stats.get("status") not in (0, 3):
            raise SystemExit(f"pipeline failed: {proc.stderr.strip()}")
        report = json.loads((out / "extract_report.json").read_text())
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return report["totals"]["pages"], stats["seconds"], stats["rss_kb"] / 1024


def chunking_speed() -> float:
    import random

    from document_processing.converters.chunking import Chunker
    from shared_utils.config import DocumentProcessingConfig

    rng = random.Random(1)
    sentences = []
    size = 0
    while size < 5_000_000:
        sentence = " ".join(rng.choices(PROSE_WORDS, k=rng.randint(6, 20))).capitalize() + ". "
        sentences.append(sentence)
        size += len(sentence)
        if rng.random() < 0.1:
            sentences.append("\n\n")
    text = "".join(sentences)
    chunker = Chunker(DocumentProcessingConfig(chunk_size=512, overlap_size=50))
    started = time.perf_counter()
    chunker.chunk_text(text)
    return len(text.encode()) / 1e6 / (time.perf_counter() - started)


# --------------------------------------------------------------------------------------------------
# Word recall against reference texts
# --------------------------------------------------------------------------------------------------

_TEX_COMMAND = re.compile(r"\\[A-Za-z]+\*?(\[[^\]]*\])?")
_WORD = re.compile(r"[^\W\d_]{2,}", re.UNICODE)


def tex_words(tex: str) -> list[str]:
    body = tex.split("\\begin{document}", 1)[-1].split("\\end{document}", 1)[0]
    body = re.sub(r"(?<!\\)%.*", "", body)
    body = re.sub(r"\\(begin|end|label|ref|cite|includegraphics|usepackage)\{[^}]*\}", " ", body)
    body = _TEX_COMMAND.sub(" ", body)
    return [w.casefold() for w in _WORD.findall(body)]


def text_words(text: str) -> list[str]:
    return [w.casefold() for w in _WORD.findall(text)]


def recall(reference: list[str], extracted: list[str]) -> float:
    ref, got = Counter(reference), Counter(extracted)
    return sum(min(n, got[w]) for w, n in ref.items()) / max(1, sum(ref.values()))


def reference_pairs(corpus: Path) -> list[tuple[Path, list[str]]]:
    pairs = []
    for tex in sorted(corpus.glob("*/*.tex")):
        pdf = tex.with_suffix(".pdf")
        if pdf.exists():
            pairs.append((pdf, tex_words(tex.read_text(encoding="utf-8", errors="replace"))))
    truth = corpus / "009-pdflatex-geotopo" / "GeoTopo-book.ground-truth.txt"
    if truth.exists():
        pdf = corpus / "009-pdflatex-geotopo" / "GeoTopo-komprimiert.pdf"
        pairs.append((pdf, text_words(truth.read_text(encoding="utf-8", errors="replace"))))
    return pairs


def engine_recall(pairs: list[tuple[Path, list[str]]], engine: str) -> float:
    """Micro-averaged word recall of our cleaned document text over all reference PDFs."""
    from document_processing.parsers.pdf import PDFParser

    config = ToolkitConfig()
    config.document_processing.pdf.engine = engine  # type: ignore[assignment]
    hit = total = 0
    for pdf, ref in pairs:
        doc = PDFParser().parse(pdf, pdf.name, config.document_processing)
        got = Counter(text_words(doc.text))
        counts = Counter(ref)
        hit += sum(min(n, got[w]) for w, n in counts.items())
        total += sum(counts.values())
    return hit / max(1, total)


def best_of(runs: list[tuple[int, float]]) -> float:
    """Pages per second of the fastest of several runs over the same pages."""
    pages, seconds = min(runs, key=lambda run: run[1])
    return pages / seconds


def measure(args: argparse.Namespace, work: Path) -> None:
    config = ToolkitConfig()
    book_dir = work / "book"
    book_dir.mkdir()
    print(f"generating a {args.pages}-page PDF ...", file=sys.stderr)
    make_book(book_dir / "book.pdf", args.pages)
    pdfs = [book_dir / "book.pdf"]
    geotopo = args.corpus / "009-pdflatex-geotopo" / "GeoTopo-komprimiert.pdf"
    if geotopo.exists():  # a real 117-page LaTeX book, when the corpus is there
        shutil.copy(geotopo, book_dir / geotopo.name)
        pdfs.append(book_dir / geotopo.name)

    cores = default_worker_count()
    rows: list[tuple[str, str, str]] = []
    print(f"measuring on {cores} cores ...", file=sys.stderr)
    # With the pypdf fallback off, pdfplumber reads every page, GeoTopo's (cid:NN) pages too: the
    # ratio is then the cost of our own probing, cleaning, chunking and writing alone.
    no_fallback = work / "no_fallback.yaml"
    no_fallback.write_text("document_processing:\n  pdf:\n    fallback_to_pypdf: false\n")
    baseline_runs, one_runs, no_fallback_runs, all_runs = [], [], [], []
    for _ in range(max(1, args.repeat)):
        baseline_runs.append(plain_pdfplumber(pdfs, config))
        one_runs.append(run_pipeline(book_dir, 1, "pdfplumber")[:2])
        no_fallback_runs.append(run_pipeline(book_dir, 1, "pdfplumber", no_fallback)[:2])
        all_runs.append(run_pipeline(book_dir, cores, "pdfplumber")[:2])
    pages = baseline_runs[0][0]
    base, one, nf = best_of(baseline_runs), best_of(one_runs), best_of(no_fallback_runs)
    rows.append(("plain pdfplumber loop (baseline)", f"{base:.1f} pages/s", "1.00x"))
    rows.append(
        ("extract, pdfplumber, 1 worker", f"{one:.1f} pages/s", f"{one / base:.2f}x baseline")
    )
    rows.append(
        (
            "extract, pdfplumber, 1 worker, fallback off",
            f"{nf:.1f} pages/s",
            f"{nf / base:.2f}x baseline",
        )
    )
    every = best_of(all_runs)
    rows.append(
        (
            f"extract, pdfplumber, {cores} workers",
            f"{every:.1f} pages/s",
            f"{every / one:.2f}x 1 worker",
        )
    )
    for engine in ("pypdf", "pypdfium2"):
        p, s, _ = run_pipeline(book_dir, cores, engine)
        rows.append(
            (
                f"extract, {engine}, {cores} workers",
                f"{p / s:.1f} pages/s",
                f"{p / s / base:.2f}x baseline",
            )
        )

    book_only = work / "book_only"
    book_only.mkdir()
    shutil.copy(book_dir / "book.pdf", book_only / "book.pdf")
    _, _, rss = run_pipeline(book_only, cores, "pdfplumber")
    rows.append(
        (f"peak RSS, {args.pages}-page PDF, {cores} workers", f"{rss:.0f} MB", "target < 500 MB")
    )
    rows.append(("character chunking", f"{chunking_speed():.1f} MB/s", "target >= 10 MB/s"))

    if args.corpus.is_dir():
        pairs = reference_pairs(args.corpus)
        for engine in ("pdfplumber", "pypdf", "pypdfium2"):
            rows.append(
                (
                    f"word recall vs references, {engine}",
                    f"{engine_recall(pairs, engine):.3f}",
                    f"{len(pairs)} PDFs",
                )
            )

    runs = f"; best of {args.repeat} runs" if args.repeat > 1 else ""
    print(f"\ncorpus: {', '.join(p.name for p in pdfs)} ({pages} pages); {cores} cores{runs}\n")
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure':<{width}} | {'value':>14} | {'ratio / note':<22} |")
    print(f"|{'-' * (width + 2)}|{'-' * 16}:|{'-' * 24}|")
    for name, value, note in rows:
        print(f"| {name:<{width}} | {value:>14} | {note:<22} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pages", type=int, default=500, help="pages of the generated book")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="real sample PDFs")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="run the baseline and the pdfplumber pipelines this many times, alternating, and keep "
        "each one's best: the ratios stay meaningful on a shared machine where other jobs come "
        "and go",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    try:
        measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
