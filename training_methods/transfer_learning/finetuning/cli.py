"""Command-line commands of fine-tuning: `train-lora` and `train-qlora`, and
`create-samples`, which writes the sample corpus (`document_processing.samples`) and the tiny
model the default config fine-tunes (`tiny_model`); it is wired here because it needs both sides,
and the training side may import the document side but not the other way round.

Flags override `transfer_learning.<lora|qlora>` of the config (defaults < YAML < flags). Heavy
libraries are imported inside the handlers, so `python main.py --help` stays instant.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from shared_utils.arg_types import positive_float, positive_int
from shared_utils.config import ToolkitConfig, apply_overrides
from shared_utils.errors import EXIT_OK

logger = logging.getLogger(__name__)


def register_commands(
    subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser
) -> None:
    for section, name, summary in (
        ("lora", "train-lora", "fine-tune a causal LM with LoRA adapters"),
        ("qlora", "train-qlora", "fine-tune a causal LM with LoRA on a 4-bit base (QLoRA)"),
    ):
        add_train_command(subparsers, parent, section, name, summary)


def add_train_command(
    subparsers: argparse._SubParsersAction,
    parent: argparse.ArgumentParser,
    section: str,
    name: str,
    summary: str,
) -> None:
    key = f"transfer_learning.{section}"
    parser = subparsers.add_parser(
        name,
        parents=[parent],
        help=summary,
        description=f"{summary[0].upper()}{summary[1:]}. Reads what `extract` writes (text, "
        f"alpaca, chat or prompt/completion JSONL); settings come from `{key}` of the config, "
        "and these flags override them.",
    )
    parser.add_argument("--train-data", metavar="FILE", help=f"training JSONL ({key}.train_data)")
    parser.add_argument(
        "--eval-data",
        metavar="FILE",
        help=f"evaluation JSONL ({key}.eval_data; default: {key}.val_size of the training data)",
    )
    parser.add_argument(
        "--model-name", metavar="ID_OR_PATH", help=f"hub id or local folder ({key}.model_name)"
    )
    parser.add_argument("--output-dir", metavar="DIR", help=f"run folder ({key}.output_dir)")
    parser.add_argument(
        "--epochs", type=positive_float, metavar="N", help=f"{key}.training.num_epochs"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, metavar="N", help=f"{key}.training.batch_size"
    )
    parser.add_argument(
        "--learning-rate", type=positive_float, metavar="X", help=f"{key}.training.learning_rate"
    )
    parser.add_argument(
        "--max-steps",
        type=positive_int,
        metavar="N",
        help=f"stop after N updates ({key}.training.max_steps)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the latest checkpoint in the output folder",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="also write the adapter merged into its base to OUTPUT_DIR/merged",
    )
    parser.set_defaults(handler=run_train, section=section, command_name=name)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    key = f"transfer_learning.{args.section}"
    return {
        f"{key}.train_data": args.train_data,
        f"{key}.eval_data": args.eval_data,
        f"{key}.model_name": args.model_name,
        f"{key}.output_dir": args.output_dir,
        f"{key}.training.num_epochs": args.epochs,
        f"{key}.training.batch_size": args.batch_size,
        f"{key}.training.learning_rate": args.learning_rate,
        f"{key}.training.max_steps": args.max_steps,
    }


def run_train(args: argparse.Namespace, config: ToolkitConfig) -> int:
    apply_overrides(config, _overrides(args))
    from training_methods.transfer_learning.finetuning.trainer import world_rank

    result = train_from_config(config, args.section, resume=args.resume, merge=args.merge)
    if world_rank() != 0:  # under accelerate/torchrun only rank 0 reports
        return EXIT_OK
    data = result.data
    eval_part = (
        f", eval loss {result.eval_loss:.4f} (perplexity {result.eval_perplexity:.2f})"
        if result.eval_loss is not None
        else ""
    )
    stopped = " (stopped early)" if result.stopped_early else ""
    epochs = f"{result.epochs:g} epochs" + (
        f" ({result.epochs_reason})" if result.epochs_reason else ""
    )
    cuda = (
        f", CUDA peak {result.cuda_peak_allocated_mb:.0f} MB"
        if result.cuda_peak_allocated_mb is not None
        else ""
    )
    print(
        f"{args.command_name}: {result.global_step} steps{stopped}, {epochs}, train loss "
        f"{result.train_loss:.4f}{eval_part}; {data['examples']} examples tokenised, "
        f"{data['truncated']} truncated, {data['dropped_no_response']} dropped; peak RSS "
        f"{result.peak_rss_mb:.0f} MB{cuda}; adapter in {result.output_dir}"
    )
    return EXIT_OK


def train_from_config(
    config: ToolkitConfig, section: str, *, resume: bool = False, merge: bool = False
):
    """Read the data, train, and write the run folder; what train-lora/train-qlora do."""
    from accelerate import PartialState
    from transformers.utils import logging as hf_logging

    from training_methods.transfer_learning.finetuning.lora_finetuner import LoRAFineTuner
    from training_methods.transfer_learning.finetuning.qlora_finetuner import QLoRAFineTuner
    from training_methods.transfer_learning.merge import merge_adapter

    hf_logging.set_verbosity_error()
    tuner_class = QLoRAFineTuner if section == "qlora" else LoRAFineTuner
    settings = getattr(config.transfer_learning, section)
    tuner = tuner_class.from_config(config)
    state = PartialState()
    # Rank 0 builds the Arrow caches first; the other ranks then read them instead of racing.
    with state.main_process_first():
        train_rows = tuner.load_jsonl(settings.train_data)
        eval_rows = None
        if settings.eval_data:
            eval_rows = tuner.load_jsonl(settings.eval_data, flag="--eval-data")
        elif settings.val_size > 0 and len(train_rows) >= 2:
            held_out = max(1, round(settings.val_size * len(train_rows)))
            split = train_rows.train_test_split(
                test_size=min(held_out, len(train_rows) - 1), seed=config.common.seed
            )
            train_rows, eval_rows = split["train"], split["test"]
        train_dataset = tuner.tokenize(train_rows, shuffle=True)
        eval_dataset = tuner.tokenize(eval_rows) if eval_rows is not None else None
    output_dir = Path(settings.output_dir)
    result = tuner.train(
        train_dataset,
        eval_dataset,
        output_dir,
        resume=resume,
        samples_from=eval_rows if eval_rows is not None else train_rows,
    )
    if merge and state.is_main_process:
        merged = merge_adapter(output_dir, output_dir / "merged", force=True)
        print(f"merged model: {merged}")
    return result


# --------------------------------------------------------------------------------------------------
# create-samples
# --------------------------------------------------------------------------------------------------


def add_create_samples_command(
    subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser
) -> None:
    parser = subparsers.add_parser(
        "create-samples",
        parents=[parent],
        help="write a small sample corpus and data set to try every command",
        description="Write a deterministic sample corpus (PDF, Markdown, cp1252 text) and sample "
        "instruction and chat JSONL to OUTPUT_DIR.",
    )
    parser.add_argument(
        "output_dir",
        metavar="OUTPUT_DIR",
        type=Path,
        nargs="?",
        default=Path("data/samples"),
        help="where to write (default: data/samples)",
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=Path("data/models/tiny-llama"),
        metavar="DIR",
        help="where to write the tiny Llama model the default config trains "
        "(default: data/models/tiny-llama)",
    )
    parser.add_argument(
        "--no-model", action="store_true", help="write only the documents and data sets"
    )
    parser.set_defaults(handler=run_create_samples)


def run_create_samples(args: argparse.Namespace, config: ToolkitConfig) -> int:
    from document_processing.samples import create_samples

    written = create_samples(args.output_dir)
    print(f"create-samples: wrote {len(written)} files to {args.output_dir}")
    for path in written:
        print(f"  {path}")
    if not args.no_model:
        from transformers.utils import logging as hf_logging

        from training_methods.transfer_learning.tiny_model import build_tiny_model

        hf_logging.disable_progress_bar()
        model_dir = build_tiny_model(args.model_dir, seed=config.common.seed)
        print(f"create-samples: tiny Llama model (random weights) in {model_dir}")
    return EXIT_OK
