"""Command-line commands that take a trained adapter to a model people run: `merge`, `export`
(merged folder and/or GGUF file) and `chat`.

Heavy libraries are imported inside the handlers, so `python main.py --help` stays instant.
"""

from __future__ import annotations

import argparse
import logging

from shared_utils.arg_types import choice_list, non_negative_float, positive_int
from shared_utils.config import ToolkitConfig
from shared_utils.errors import EXIT_OK
from training_methods.transfer_learning.merge import DEFAULT_MERGE_DTYPE, MERGE_DTYPES
from training_methods.transfer_learning.serving.chat import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_TEMPERATURE,
)
from training_methods.transfer_learning.serving.export import (
    DEFAULT_FORMAT,
    DEFAULT_GGUF_TYPE,
    EXPORT_FORMATS,
)
from training_methods.transfer_learning.serving.gguf.tensors import GGUF_TYPES

logger = logging.getLogger(__name__)


def register_commands(
    subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser
) -> None:
    add_merge_command(subparsers, parent)
    add_export_command(subparsers, parent)
    add_chat_command(subparsers, parent)


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
        choices=EXPORT_FORMATS,
        default=DEFAULT_FORMAT,
        help="merged: a transformers folder; gguf: one .gguf file; both; lora-gguf: the adapter "
        "alone as a GGUF LoRA file (f32 or f16) for llama.cpp's --lora on the base model's GGUF "
        f"(default: {DEFAULT_FORMAT})",
    )
    parser.add_argument(
        "--gguf-type",
        type=choice_list(GGUF_TYPES),
        default=DEFAULT_GGUF_TYPE,
        metavar="TYPE[,TYPE...]",
        help="weight types of the GGUF files, one file each from one merge: f32 exact, f16 half "
        "the size, q8_0 a quarter, q4_0 q4_1 q5_0 q5_1, and llama.cpp's k-quants q4_k_m (what LM "
        "Studio downloads by default) q5_k_m q6_k, which need llama-cpp-python "
        f"(default: {DEFAULT_GGUF_TYPE})",
    )
    parser.add_argument("--force", action="store_true", help="replace existing outputs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace, config: ToolkitConfig) -> int:
    from transformers.utils import logging as hf_logging

    from training_methods.transfer_learning.model_loading import no_loading_bars
    from training_methods.transfer_learning.serving.export import export_model

    hf_logging.set_verbosity_error()
    logging.getLogger("gguf").setLevel(logging.WARNING)  # its INFO lines repeat our summary
    with no_loading_bars():  # the GGUF writer shows its own
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
        default=DEFAULT_MAX_NEW_TOKENS,
        metavar="N",
        help=f"longest answer in tokens (default: {DEFAULT_MAX_NEW_TOKENS})",
    )
    parser.add_argument(
        "--temperature",
        type=non_negative_float,
        default=DEFAULT_TEMPERATURE,
        metavar="T",
        help=f"sampling temperature; 0 is greedy (default: {DEFAULT_TEMPERATURE}, seeded by "
        "common.seed)",
    )
    parser.set_defaults(handler=run_chat)


def run_chat(args: argparse.Namespace, config: ToolkitConfig) -> int:
    from transformers.utils import logging as hf_logging

    from shared_utils.training_utils import resolve_device
    from training_methods.transfer_learning.model_loading import no_loading_bars
    from training_methods.transfer_learning.serving.chat import run_chat as chat

    hf_logging.set_verbosity_error()
    with no_loading_bars():  # the answer only, no bars in the terminal
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


def add_merge_command(
    subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser
) -> None:
    parser = subparsers.add_parser(
        "merge",
        parents=[parent],
        help="merge a LoRA/QLoRA adapter into its base model",
        description="Merge an adapter into its base (reloaded in 16/32 bits, never 4 bits) and "
        "save a model plain AutoModelForCausalLM.from_pretrained loads.",
    )
    parser.add_argument("--adapter", required=True, metavar="DIR", help="adapter folder")
    parser.add_argument("--output", required=True, metavar="DIR", help="merged model folder")
    parser.add_argument(
        "--base-model",
        metavar="ID_OR_PATH",
        help="base model (default: the one named in adapter_config.json)",
    )
    parser.add_argument(
        "--dtype",
        choices=MERGE_DTYPES,
        default=DEFAULT_MERGE_DTYPE,
        help=f"weight dtype of the merged model (default: {DEFAULT_MERGE_DTYPE})",
    )
    parser.add_argument("--force", action="store_true", help="replace an existing output folder")
    parser.set_defaults(handler=run_merge)


def run_merge(args: argparse.Namespace, config: ToolkitConfig) -> int:
    from training_methods.transfer_learning.merge import merge_adapter

    merged = merge_adapter(
        args.adapter, args.output, base_model=args.base_model, dtype=args.dtype, force=args.force
    )
    print(f"merge: wrote {merged}")
    return EXIT_OK
