"""Command-line command `evaluate`: the base model, the fine-tuned one and its GGUF asked the same
questions, side by side.

Heavy libraries are imported inside the handler, so `python main.py --help` stays instant.
"""

from __future__ import annotations

import argparse

from shared_utils.arg_types import positive_int
from shared_utils.config import ToolkitConfig
from shared_utils.errors import EXIT_OK
from training_methods.transfer_learning.evaluation.generation import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_NEW_TOKENS,
)


def register_commands(
    subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser
) -> None:
    add_evaluate_command(subparsers, parent)


def add_evaluate_command(
    subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser
) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        parents=[parent],
        help="did it learn: base, fine-tuned (and GGUF) answers to your questions side by side",
        description="Ask each question of the base model, the base with the adapter merged in, "
        "and a GGUF file run by llama.cpp (--gguf), greedily, in the chat template the adapter "
        "was trained with; report per model the answers that contain a reference answer, token "
        "F1 and mean answer length. Writes answers.jsonl and evaluation.json, prints a table.",
        epilog='Question file: JSON Lines, {"question": "...", "answers": ["...", ...]} or '
        '{"messages": [...]} whose last (assistant) turn is the reference. A hit: the answer '
        "contains a reference as whole words, after Unicode NFKC, casefolding and whitespace "
        "collapsing. Exit status 2 for a bad option or missing file, 1 for a bad question line.",
    )
    parser.add_argument(
        "--questions",
        required=True,
        metavar="FILE",
        help='JSONL questions: {"question", "answers"} or {"messages"} records',
    )
    parser.add_argument(
        "--model",
        metavar="DIR_OR_ID",
        help="base model folder, hub id or .gguf file (default with --adapter: the base named "
        "in adapter_config.json)",
    )
    parser.add_argument("--adapter", metavar="DIR", help="adapter folder: adds the fine-tuned row")
    parser.add_argument(
        "--gguf", metavar="FILE", help="a GGUF file (e.g. from export): adds a llama.cpp row"
    )
    parser.add_argument(
        "--output-dir",
        metavar="DIR",
        help="where answers.jsonl and evaluation.json go (default: ADAPTER/evaluation with "
        "--adapter, else outputs/evaluation)",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=DEFAULT_MAX_NEW_TOKENS,
        metavar="N",
        help=f"longest answer in tokens (default: {DEFAULT_MAX_NEW_TOKENS})",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=DEFAULT_BATCH_SIZE,
        metavar="N",
        help=f"questions answered at once by transformers (default: {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument("--system", metavar="PROMPT", help="a system prompt for every question")
    parser.add_argument(
        "--limit", type=positive_int, metavar="N", help="only the first N questions"
    )
    parser.add_argument(
        "--show",
        type=positive_int,
        metavar="N",
        help="also print the answers of every row to the first N questions, side by side",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run_evaluate)


def run_evaluate(args: argparse.Namespace, config: ToolkitConfig) -> int:
    from transformers.utils import logging as hf_logging

    from training_methods.transfer_learning.evaluation.run import evaluate_questions
    from training_methods.transfer_learning.model_loading import no_loading_bars

    hf_logging.set_verbosity_error()
    with no_loading_bars():  # the progress of the answers only
        report = evaluate_questions(
            args.questions,
            model=args.model,
            adapter=args.adapter,
            gguf=args.gguf,
            output_dir=args.output_dir,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            system=args.system,
            limit=args.limit,
            device=config.common.device,
            progress=not args.no_progress,
        )
    if args.show:
        print(report.side_by_side(args.show))
    print(report.table())
    print(
        f"evaluate: {report.inputs['question_count']} questions, {len(report.rows)} rows; "
        f"answers in {report.answers_path}, summary in {report.summary_path}"
    )
    return EXIT_OK
