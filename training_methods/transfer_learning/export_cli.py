"""Command-line commands `export` (merged folder and/or GGUF file), `chat` and `evaluate`.

Heavy libraries are imported inside the handlers, so `python main.py --help` stays instant.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Iterator

from shared_utils.arg_types import non_negative_float, positive_int
from shared_utils.config import ToolkitConfig
from shared_utils.errors import EXIT_OK

logger = logging.getLogger(__name__)

# The same as gguf_tensors.GGUF_TYPES and export.EXPORT_FORMATS
# (training_methods.transfer_learning), repeated so that `--help` imports neither.
GGUF_TYPE_CHOICES = (
    "f32", "f16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k_m", "q5_k_m", "q6_k",
)  # fmt: skip
FORMAT_CHOICES = ("merged", "gguf", "both", "lora-gguf")


def register_commands(
    subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser
) -> None:
    add_export_command(subparsers, parent)
    add_chat_command(subparsers, parent)
    add_evaluate_command(subparsers, parent)


def _gguf_types(text: str) -> str:
    """A comma-separated list of GGUF types, each one of GGUF_TYPE_CHOICES."""
    kinds = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [kind for kind in kinds if kind not in GGUF_TYPE_CHOICES]
    if not kinds or unknown:
        raise argparse.ArgumentTypeError(
            f"{', '.join(unknown) or repr(text)}: use one or more of "
            f"{', '.join(GGUF_TYPE_CHOICES)}, comma-separated"
        )
    return ",".join(dict.fromkeys(kinds))


def add_export_command(
    subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser
) -> None:
    parser = subparsers.add_parser(
        "export",
        parents=[parent],
        help="export an adapter as a merged model and/or one GGUF file for LM Studio/llama.cpp",
        description="Merge an adapter into its base (16/32 bits, never 4) and/or write GGUF files "
        "(f32, f16, q8_0, q4_0/q4_1/q5_0/q5_1, or the k-quants q4_k_m/q5_k_m/q6_k through "
        "llama-cpp-python) with the tokenizer and chat template, which llama.cpp, LM Studio and "
        "Ollama run; an Ollama Modelfile is written next to them.",
    )
    parser.add_argument(
        "--adapter", metavar="DIR", help="adapter folder (the output of train-lora/train-qlora)"
    )
    parser.add_argument(
        "--model",
        metavar="DIR",
        help="an already merged model folder; with --adapter, the base model (default: the one "
        "named in adapter_config.json)",
    )
    parser.add_argument(
        "--output",
        required=True,
        metavar="DIR",
        help="output folder: merged/, NAME-TYPE.gguf and Modelfile go here",
    )
    parser.add_argument(
        "--format",
        choices=FORMAT_CHOICES,
        default="gguf",
        help="merged: a transformers folder; gguf: one .gguf file; both; lora-gguf: the adapter "
        "alone as a GGUF LoRA file (f32 or f16) for llama.cpp's --lora on the base model's GGUF "
        "(default: gguf)",
    )
    parser.add_argument(
        "--gguf-type",
        type=_gguf_types,
        default="f16",
        metavar="TYPE[,TYPE...]",
        help="weight types of the GGUF files, one file each from one merge: f32 exact, f16 half "
        "the size, q8_0 a quarter, q4_0 q4_1 q5_0 q5_1, and llama.cpp's k-quants q4_k_m (what LM "
        "Studio downloads by default) q5_k_m q6_k, which need llama-cpp-python (default: f16)",
    )
    parser.add_argument("--force", action="store_true", help="replace existing outputs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace, config: ToolkitConfig) -> int:
    from transformers.utils import logging as hf_logging

    from training_methods.transfer_learning.export import export_model

    hf_logging.set_verbosity_error()
    logging.getLogger("gguf").setLevel(logging.WARNING)  # its INFO lines repeat our summary
    with _no_loading_bars():  # the GGUF writer shows its own
        result = export_model(
            args.output,
            adapter=args.adapter,
            model=args.model,
            fmt=args.format,
            gguf_type=args.gguf_type,
            force=args.force,
            progress=not args.no_progress,
        )
    if result.merged_dir is not None:
        print(f"export: merged model in {result.merged_dir}")
    for summary in result.ggufs:
        if summary.kind == "lora":
            print(
                f"export: wrote {summary.path} (LoRA adapter for {summary.architecture}, "
                f"{summary.gguf_type}, {summary.size_bytes / 1e6:.1f} MB, {summary.tensor_count} "
                f"tensors, {summary.seconds:.1f} s); run it on a GGUF of the base model: "
                f"llama-cli -m BASE.gguf --lora {summary.path}"
            )
            continue
        types = ", ".join(f"{count} {name}" for name, count in sorted(summary.tensor_types.items()))
        print(
            f"export: wrote {summary.path} ({summary.architecture}, {summary.gguf_type}, "
            f"{summary.size_bytes / 1e6:.1f} MB, {summary.tensor_count} tensors: {types}, "
            f"{summary.seconds:.1f} s)"
        )
    if result.modelfile is not None:
        print(f"export: Ollama Modelfile {result.modelfile} (FROM {result.ggufs[-1].path.name})")
    return EXIT_OK


def add_chat_command(
    subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser
) -> None:
    parser = subparsers.add_parser(
        "chat",
        parents=[parent],
        help="chat with a model (and adapter) in the terminal, one-shot or interactively",
        description="Chat with a model using the chat template it was trained with; tokens are "
        "printed as they are generated. With --prompt, one answer; otherwise a conversation read "
        "from the terminal (/reset starts over, /exit or Ctrl-D leaves). Runs on CPU.",
    )
    parser.add_argument(
        "--model",
        metavar="DIR_OR_ID",
        help="model folder or hub id; with --adapter, its base (default: the base named in "
        "adapter_config.json)",
    )
    parser.add_argument(
        "--adapter", metavar="DIR", help="adapter folder, merged in before chatting"
    )
    parser.add_argument("--prompt", metavar="TEXT", help="answer this one message and exit")
    parser.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=256,
        metavar="N",
        help="longest answer in tokens (default: 256)",
    )
    parser.add_argument(
        "--temperature",
        type=non_negative_float,
        default=0.7,
        metavar="T",
        help="sampling temperature; 0 is greedy (default: 0.7, seeded by common.seed)",
    )
    parser.set_defaults(handler=run_chat)


def run_chat(args: argparse.Namespace, config: ToolkitConfig) -> int:
    from transformers.utils import logging as hf_logging

    from shared_utils.training_utils import resolve_device
    from training_methods.transfer_learning.chat import run_chat as chat

    hf_logging.set_verbosity_error()
    with _no_loading_bars():  # the answer only, no bars in the terminal
        chat(
            model=args.model,
            adapter=args.adapter,
            prompt=args.prompt,
            max_new_tokens=args.max_new_tokens,
            temperature=args.temperature,
            device=resolve_device(config.common.device),
            seed=config.common.seed,
        )
    return EXIT_OK


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
        default=96,
        metavar="N",
        help="longest answer in tokens (default: 96)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=8,
        metavar="N",
        help="questions answered at once by transformers (default: 8)",
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

    from training_methods.transfer_learning.evaluate import evaluate_questions

    hf_logging.set_verbosity_error()
    with _no_loading_bars():  # the progress of the answers only
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


@contextlib.contextmanager
def _no_loading_bars() -> Iterator[None]:
    """transformers' weight-loading progress bars off for the block (they are global state)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
