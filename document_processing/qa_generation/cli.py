"""The `generate-qa` command: flags, then `generate.generate_qa`, then one summary line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shared_utils.arg_types import positive_int
from shared_utils.config import ToolkitConfig, apply_overrides
from shared_utils.errors import EXIT_FAILURE, EXIT_OK, EXIT_PARTIAL


def add_generate_qa_command(
    subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser
) -> None:
    parser = subparsers.add_parser(
        "generate-qa",
        parents=[parent],
        help="write question/answer training data from extracted chunks with a teacher model",
        description="Ask a teacher model (an OpenAI-compatible server: LM Studio, Ollama, vLLM, "
        "llama.cpp; a local .gguf file; or a transformers model, batched on the GPU when there "
        "is one) for question/answer pairs about every chunk record "
        "`extract` wrote to DATA_DIR, keep those grounded in their chunk, and write "
        "OUT_DIR/qa/{train,valid,test}.jsonl (chat records, which train-lora reads and evaluate "
        "takes as questions) and qa/alpaca/. Every reply is cached in OUT_DIR/.qa_cache: an "
        "interrupted run loses nothing and a rerun asks only what is missing. Flags override the "
        "qa_generation section of the config.",
        epilog="Exit statuses: 0 every request answered; 3 some requests failed (rerun to ask "
        "them again); 1 no pair was kept, or the teacher failed; 2 usage or config error.",
    )
    parser.add_argument("data_dir", metavar="DATA_DIR", type=Path, help="what `extract` wrote")
    parser.add_argument("output_dir", metavar="OUT_DIR", type=Path, help="where to write qa/")
    parser.add_argument(
        "--teacher",
        metavar="URL|FILE.gguf|MODEL",
        help="server URL (LM Studio http://localhost:1234/v1, Ollama http://localhost:11434/v1, "
        "vLLM http://localhost:8000/v1, llama.cpp http://localhost:8080/v1), a .gguf file run "
        "in-process, or a transformers model folder or cached hub id run in-process on "
        "common.device (default: qa_generation.teacher)",
    )
    parser.add_argument(
        "--teacher-model", metavar="NAME", help="model name on the server (default: its only one)"
    )
    parser.add_argument(
        "--pairs-per-chunk", type=positive_int, metavar="N", help="pairs asked per chunk"
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        metavar="K",
        help="requests in flight (HTTP teachers); the batch size of a transformers teacher",
    )
    parser.add_argument(
        "--judge",
        action="store_true",
        default=None,
        help="also let the teacher rate each pair; low ratings are dropped",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar, even on a terminal"
    )
    parser.set_defaults(handler=run_generate_qa)


def run_generate_qa(args: argparse.Namespace, config: ToolkitConfig) -> int:
    from document_processing.qa_generation.generate import generate_qa

    apply_overrides(
        config,
        {
            "qa_generation.teacher": args.teacher,
            "qa_generation.teacher_model": args.teacher_model,
            "qa_generation.pairs_per_chunk": args.pairs_per_chunk,
            "qa_generation.concurrency": args.concurrency,
            "qa_generation.judge": args.judge,
        },
    )
    result = generate_qa(
        args.data_dir,
        args.output_dir,
        config,
        progress=False if args.no_progress else None,
    )
    report = result.report
    requests, survivors = report["requests"], report["filters"]["survivors"]
    splits = ", ".join(f"{split} {count}" for split, count in report["pairs"].items() if count)
    judged = ""
    if report["judge"] is not None:
        judged = f", {report['judge']['rated_low']} rated low by the judge"
    report_path = result.qa_dir / "qa_report.json"
    print(
        f"generate-qa: {result.total} pairs ({splits or 'none'}) from {report['chunks']} chunks "
        f"of {report['documents']} documents; {requests['asked']} replies asked, "
        f"{requests['from_cache']} from the cache, {requests['failed']} failed; "
        f"{survivors['parsed']} parsed, {survivors['grounded']} grounded, "
        f"{survivors['not_near_duplicate']} unique{judged}; structured output: "
        f"{report['teacher']['structured_output']}; written to {result.qa_dir}; "
        f"report: {report_path}"
    )
    if not result.total:
        print(
            f"error: no pair survived the filters — see {report_path} for what each step dropped",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_PARTIAL if requests["failed"] else EXIT_OK
