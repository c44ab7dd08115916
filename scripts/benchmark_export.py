#!/usr/bin/env python3
"""Benchmark `export --format gguf`: export time and file size per type, and generation speed
through llama.cpp against transformers on CPU, for the same model and prompt, in one run.

    .venv/bin/python scripts/benchmark_export.py [--model DIR | --adapter DIR]
        [--hidden-size 512 --layers 8] [--new-tokens 64] [--repeats 3] [--threads 1]

The model is `--model` (a merged model folder), `--adapter` (merged first, in a temporary
folder), or a random Llama built here with `build_tiny_model` (`--hidden-size`, `--layers`; the
default is 512 and 8, 24M parameters: large enough that the matrix products, not the per-token
overhead, set the speed). Every GGUF type (`--types`, default all ten) is written with the
toolkit's writer in one call, the k-quants quantised by llama.cpp from the f16 file, then loaded by
llama-cpp-python; transformers runs the merged folder in float32. `export s` of a k-quant is its
quantisation from f16 (the f16 row says what writing that took).

With `--adapter`, one more row runs the adapter unmerged: `export --format lora-gguf` (f16) on
top of the base's GGUF, the base's own .gguf file when the adapter was trained on one (what a
user of LM Studio already has), else an f16 GGUF of the base folder (its `export s` is the LoRA
file's).

tokens/s is end to end: the chat-template prompt, then `--new-tokens` greedy tokens (EOS
ignored, so every engine generates exactly as many), over wall time, best of `--repeats` runs.

`same greedy prefix` is how many of those tokens equal transformers' before the first
difference (after one flipped near-tie the continuations differ for good); `next-token
agreement` feeds transformers' sequence to llama.cpp and counts the positions where both pick
the same next token, so a flip counts once. llama.cpp runs with an f32 KV cache here, so both
measure the file, not llama.cpp's default f16 cache. On random weights the logits are nearly
tied and the quantised types flip some; on a fine-tuned model (tests/test_gguf_quant.py) q8_0
agrees on every token.

On CPUs with AMX the files run without llama.cpp's weight repacking: its AMX kernels segfault on
quantised weights (`llama_cpp_runtime.avoid_llama_cpp_amx_crash`); the header line says so.

Both engines use `--threads` threads (default 1: on a shared 2-core machine a second OpenMP
thread in either engine waits on the other processes and makes tokens/s erratic). Timings on a
shared CPU are noisy: compare the ratios.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PROMPT = "How should a compost pile be turned, and how often?"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model", metavar="DIR", help="a merged (plain transformers) model")
    source.add_argument("--adapter", metavar="DIR", help="an adapter, merged into its base first")
    parser.add_argument("--hidden-size", type=int, default=512, help="random Llama width")
    parser.add_argument("--layers", type=int, default=8, help="random Llama depth")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens generated per run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per engine; best is kept")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of both engines")
    parser.add_argument(
        "--types",
        default="f32,f16,q8_0,q4_0,q4_1,q5_0,q5_1,q4_k_m,q5_k_m,q6_k",
        help="GGUF types, comma-separated",
    )
    parser.add_argument("--work-dir", metavar="DIR", help="keep the files here (default: temp)")
    return parser.parse_args(argv)


def prepare_model(args: argparse.Namespace, work: Path) -> Path:
    if args.model:
        return Path(args.model)
    if args.adapter:
        from training_methods.transfer_learning.merge import merge_adapter

        return merge_adapter(args.adapter, work / "merged", force=True)
    from training_methods.transfer_learning.tiny_model import build_tiny_model

    heads = max(1, args.hidden_size // 64)
    return build_tiny_model(
        work / "random-llama",
        hidden_size=args.hidden_size,
        num_hidden_layers=args.layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        intermediate_size=args.hidden_size * 8 // 3 // 32 * 32,
    )


def prompt_ids(tokenizer: Any) -> list[int]:
    from shared_utils.chat_templates import ensure_chat_template

    ensure_chat_template(tokenizer)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], tokenize=False, add_generation_prompt=True
    )
    bos = tokenizer.bos_token
    return tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"]


def transformers_run(model_dir: Path, ids: list[int], new_tokens: int, repeats: int):
    """(tokens/s, generated ids, parameter count) of transformers' greedy `generate` in float32
    on CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    # EOS ignored without suppressing it (min_new_tokens would forbid the EOS token, and then the
    # greedy tokens after it would differ from llama.cpp's, which does not forbid it).
    model.generation_config.eos_token_id = None
    inputs = torch.tensor([ids])
    best, tokens = float("inf"), []
    for _ in range(repeats):
        started = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                input_ids=inputs,
                attention_mask=torch.ones_like(inputs),
                max_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=model.config.pad_token_id or 0,
            )
        best = min(best, time.perf_counter() - started)
        tokens = out[0, len(ids) :].tolist()
    return new_tokens / best, tokens, sum(p.numel() for p in model.parameters())


def llama_cpp_run(
    path: Path,
    ids: list[int],
    new_tokens: int,
    repeats: int,
    threads: int,
    lora: Path | None = None,
):
    """(tokens/s, generated ids) of llama.cpp's greedy generation from the same token ids;
    `lora`: a GGUF LoRA file applied on top."""
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(path),
        lora_path=str(lora) if lora else None,
        n_ctx=len(ids) + new_tokens + 8,
        n_threads=threads,
        n_threads_batch=threads,
        type_k=llama_cpp.GGML_TYPE_F32,  # an f32 KV cache, so `greedy = HF` measures the file,
        type_v=llama_cpp.GGML_TYPE_F32,  # not llama.cpp's default f16 cache
        verbose=False,
    )
    best, tokens = float("inf"), []
    for _ in range(repeats):
        started = time.perf_counter()
        generated = []
        for token in llm.generate(ids, temp=0.0, reset=True):
            generated.append(token)  # EOS is not checked here, as for transformers
            if len(generated) == new_tokens:
                break
        best = min(best, time.perf_counter() - started)
        tokens = generated
    return new_tokens / best, tokens


def next_token_agreement(
    path: Path, ids: list[int], reference: list[int], threads: int, lora: Path | None = None
) -> float:
    """Share of positions where llama.cpp's most likely next token is transformers' greedy token,
    both reading transformers' sequence (teacher forcing): one flipped near-tie counts once."""
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(
        model_path=str(path),
        lora_path=str(lora) if lora else None,
        n_ctx=len(ids) + len(reference) + 8,
        n_threads=threads,
        logits_all=True,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
        verbose=False,
    )
    llm.eval(ids + reference[:-1])
    scores = np.asarray(llm.scores[len(ids) - 1 : len(ids) - 1 + len(reference)])
    return float((scores.argmax(axis=1) == np.asarray(reference)).mean())


def lora_files(adapter: Path, work: Path) -> tuple[Path, Path, float]:
    """(base GGUF, f16 LoRA GGUF, seconds to write the LoRA file) for the adapter's row."""
    from training_methods.transfer_learning.merge import read_adapter_config
    from training_methods.transfer_learning.model_loading import is_gguf, load_model_config
    from training_methods.transfer_learning.serving.export import local_model_dir
    from training_methods.transfer_learning.serving.gguf.lora import write_lora_gguf
    from training_methods.transfer_learning.serving.gguf.writer import write_gguf

    base = str(read_adapter_config(adapter)["base_model_name_or_path"])
    if is_gguf(base):
        base_gguf = Path(base)
    else:
        base_gguf = write_gguf(local_model_dir(base), work / "base-f16.gguf", progress=False).path
    lora = write_lora_gguf(
        adapter, load_model_config(base), work / "adapter-f16-lora.gguf", progress=False
    )
    return base_gguf, lora.path, lora.seconds


def agreeing_prefix(tokens: list[int], reference: list[int]) -> int:
    return next(
        (i for i, (a, b) in enumerate(zip(tokens, reference, strict=False)) if a != b),
        min(len(tokens), len(reference)),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("gguf").setLevel(logging.WARNING)
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from shared_utils.llama_cpp_runtime import avoid_llama_cpp_amx_crash
    from training_methods.transfer_learning.serving.export import parse_gguf_types
    from training_methods.transfer_learning.serving.gguf.writer import write_ggufs

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    kinds = parse_gguf_types(args.types)
    no_repacking = avoid_llama_cpp_amx_crash()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="benchmark-export-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        model_dir = prepare_model(args, work)
        ids = prompt_ids(AutoTokenizer.from_pretrained(model_dir))
        safetensors_mb = sum(p.stat().st_size for p in model_dir.glob("*.safetensors")) / 1e6
        hf_speed, reference, parameters = transformers_run(
            model_dir, ids, args.new_tokens, args.repeats
        )
        rows = [
            (
                "transformers (safetensors, float32)",
                "—",
                f"{safetensors_mb:.1f}",
                f"{hf_speed:.1f}",
                "1.00x",
                "(reference)",
                "(reference)",
            )
        ]
        summaries = write_ggufs(
            model_dir, {kind: work / f"model-{kind}.gguf" for kind in kinds}, progress=False
        )
        for kind, summary in zip(kinds, summaries, strict=True):
            speed, tokens = llama_cpp_run(
                summary.path, ids, args.new_tokens, args.repeats, args.threads
            )
            same = agreeing_prefix(tokens, reference)
            agreement = next_token_agreement(summary.path, ids, reference, args.threads)
            rows.append(
                (
                    f"llama.cpp GGUF {kind}",
                    f"{summary.seconds:.2f}",
                    f"{summary.size_bytes / 1e6:.1f}",
                    f"{speed:.1f}",
                    f"{speed / hf_speed:.2f}x",
                    f"{same}/{len(reference)}",
                    f"{agreement:.0%}",
                )
            )
        if args.adapter:
            base_gguf, lora, seconds = lora_files(Path(args.adapter), work)
            speed, tokens = llama_cpp_run(
                base_gguf, ids, args.new_tokens, args.repeats, args.threads, lora
            )
            agreement = next_token_agreement(base_gguf, ids, reference, args.threads, lora)
            rows.append(
                (
                    f"llama.cpp {base_gguf.name} + LoRA f16",
                    f"{seconds:.2f}",
                    f"{lora.stat().st_size / 1e6:.1f}",
                    f"{speed:.1f}",
                    f"{speed / hf_speed:.2f}x",
                    f"{agreeing_prefix(tokens, reference)}/{len(reference)}",
                    f"{agreement:.0%}",
                )
            )
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)

    print(
        f"\nmodel: {args.model or args.adapter or 'random Llama'} ({parameters / 1e6:.1f}M "
        f"parameters), prompt {len(ids)} tokens + {args.new_tokens} new, {args.threads} threads, "
        f"{os.cpu_count()} CPUs"
        f"{', llama.cpp without weight repacking (AMX CPU)' if no_repacking else ''}\n"
    )
    header = (
        "engine / file",
        "export s",
        "size MB",
        "tokens/s",
        "vs transformers",
        "same greedy prefix",
        "next-token agreement",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
