"""The `extract` command.

`add_extract_command` declares its flags and `run_extract` is its handler, which imports the
heavy libraries when called, so `python main.py --help` stays instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from shared_utils.arg_types import (
    choice_list,
    fraction,
    non_negative_int,
    positive_float,
    positive_int,
)
from shared_utils.config import RECORD_KIND_NAMES, ToolkitConfig, apply_overrides
from shared_utils.errors import EXIT_FAILURE, EXIT_OK, EXIT_PARTIAL

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# extract
# --------------------------------------------------------------------------------------------------


def add_extract_command(
    subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser
) -> None:
    parser = subparsers.add_parser(
        "extract",
        parents=[parent],
        help="turn a folder of documents (PDF, Markdown, text, Word, HTML, EPUB, images) into "
        "JSONL training data",
        description="Extract, clean and chunk every PDF, Markdown, text, Word, HTML, EPUB and "
        "image (.png, .jpg, .tiff: OCR) file under INPUT_DIR "
        "into OUTPUT_DIR (train.jsonl, valid.jsonl, extract_report.json). Flags override the "
        "document_processing section of the config.",
        epilog="Exit statuses: 0 every file succeeded; 3 some files failed and the rest was "
        "written; 1 nothing could be processed; 2 usage or config error.",
    )
    parser.add_argument("input_dir", metavar="INPUT_DIR", type=Path, help="folder of documents")
    parser.add_argument("output_dir", metavar="OUTPUT_DIR", type=Path, help="where to write")
    parser.add_argument(
        "--format",
        dest="output_format",
        choices=["jsonl", "text"],
        help="jsonl: chunk records; text: one cleaned .txt per document",
    )
    parser.add_argument(
        "--chunk-size", type=positive_int, help="largest chunk, in characters (or tokens)"
    )
    parser.add_argument(
        "--overlap",
        type=non_negative_int,
        help="overlap between chunks, in characters (or tokens)",
    )
    parser.add_argument(
        "--tokenizer",
        metavar="PATH",
        help="local Hugging Face tokenizer folder: sizes are counted in its tokens",
    )
    parser.add_argument(
        "--instruction-format",
        action="store_true",
        default=None,
        help="also write alpaca/ and chat/ instruction records that teach what the documents say",
    )
    parser.add_argument(
        "--record-kinds",
        type=choice_list(RECORD_KIND_NAMES),
        metavar="KINDS",
        help="comma-separated kinds of instruction records: section, continuation, topic, "
        "question, cloze (default: document_processing.record_kinds)",
    )
    parser.add_argument(
        "--workers", type=non_negative_int, help="worker processes (default: one per CPU core)"
    )
    parser.add_argument(
        "--val-ratio", type=fraction, help="share of documents written to valid.jsonl (by document)"
    )
    parser.add_argument(
        "--pdf-engine",
        choices=["pdfplumber", "pypdf", "pypdfium2"],
        help="primary PDF engine (pypdfium2 is the fastest; pdfplumber keeps layout best)",
    )
    parser.add_argument(
        "--ocr",
        choices=["auto", "off", "force"],
        help="OCR (offline, Tesseract): auto reads PDF pages without a text layer and .png/.jpg/"
        ".tiff files; off never; force reads every PDF page from its image",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        help="seconds one file (or PDF page range) may take before it is killed",
    )
    parser.add_argument(
        "--max-file-size-mb", type=positive_float, help="skip files larger than this (reported)"
    )
    parser.add_argument(
        "--incremental",
        action="store_true",
        help="skip files unchanged since the last run into OUTPUT_DIR (same output as a full run)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar, even on a terminal"
    )
    parser.set_defaults(handler=run_extract)


def run_extract(args: argparse.Namespace, config: ToolkitConfig) -> int:
    from document_processing.pipeline import ExtractRun

    apply_overrides(
        config,
        {
            "document_processing.output_format": args.output_format,
            "document_processing.chunk_size": args.chunk_size,
            "document_processing.overlap_size": args.overlap,
            "document_processing.tokenizer": args.tokenizer,
            "document_processing.instruction_format": args.instruction_format,
            "document_processing.record_kinds": args.record_kinds,
            "document_processing.workers": args.workers,
            "document_processing.val_ratio": args.val_ratio,
            "document_processing.pdf.engine": args.pdf_engine,
            "document_processing.ocr": args.ocr,
            "document_processing.file_timeout": args.timeout,
            "document_processing.max_file_size_mb": args.max_file_size_mb,
        },
    )
    run = ExtractRun(
        args.input_dir,
        args.output_dir,
        config,
        incremental=args.incremental,
        show_progress=False if args.no_progress else None,
    )
    result = run.run()
    totals = result.totals
    for report in result.failed:
        print(f"failed: {report.source}: {report.reason}", file=sys.stderr)
    print(
        f"extract: {totals['ok']} of {totals['files']} files ok, {totals['failed']} failed, "
        f"{totals['skipped']} skipped; {totals['chunks'] - totals['duplicates_dropped']} chunks "
        f"({totals['duplicates_dropped']} duplicates dropped) written to {args.output_dir} "
        f"in {result.seconds:.1f} s; report: {args.output_dir / 'extract_report.json'}"
    )
    settings = config.document_processing
    if result.succeeded and settings.instruction_format and settings.output_format == "jsonl":
        chat = sum(n for name, n in totals["records"].items() if name.startswith("chat/"))
        if chat:
            print(f"extract: {chat} instruction records in {args.output_dir / 'chat'} and alpaca/")
        else:
            print(
                f"warning: no instruction records were written: the documents hold no name, "
                f"number or repeated term for the record kinds {', '.join(settings.record_kinds)} "
                "to ask about — add section and continuation to --record-kinds, or train on "
                f"{args.output_dir / 'train.jsonl'}",
                file=sys.stderr,
            )
    if not result.succeeded:
        print(
            f"error: no file under '{args.input_dir}' could be processed; see "
            f"{args.output_dir / 'extract_report.json'}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_PARTIAL if result.failed else EXIT_OK
