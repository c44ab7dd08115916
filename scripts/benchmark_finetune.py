#!/usr/bin/env python3
"""Benchmark `train-lora` against a plain PEFT + Trainer loop, in one run, and print a table.

    .venv/bin/python scripts/benchmark_finetune.py [--examples 256] [--max-length 512] \
        [--batch-size 8] [--epochs 1] [--threads 1] [--skip-qlora] [--work-dir DIR] [--quick]

Measures, on the same tiny random Llama (built here with `build_tiny_model`) and the same
deterministic chat data set of mixed lengths (response lengths log-uniform from a few tokens to
near `--max-length`):
- real (non-pad) tokens/s and peak RSS of
  (a) a plain PEFT + Hugging Face Trainer loop as a tutorial writes it: the same model and LoRA
      settings, `apply_chat_template` + `tokenizer(..., padding="max_length")` and
      `DataCollatorForLanguageModeling(mlm=False)` (labels = input ids, -100 at padding);
  (b) our `train-lora` path (`LoRAFineTuner`: dynamic padding, `group_by_length`, the defaults);
  (c) the same with `packing: true`;
- the weight memory of a ~150M-parameter random Llama loaded as `LoRAFineTuner` (fp32 base) and as
  `QLoRAFineTuner` (NF4 base, double quantization, fp32 compute on CPU) would load it.

Every configuration runs in its own child process (this script with the hidden `--only NAME`
flag, which prints one JSON line back), so each peak RSS is its own. Real tokens are counted from
the batches the collator actually built; tokens/s is real tokens / `trainer.train()` wall time
(model loading and tokenisation excluded). Timings on a shared CPU are noisy: compare the ratios,
which come from one run. Every child uses `--threads` torch threads (default 1): on a busy
machine two OpenMP threads per process wait on each other and make step times erratic.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from shared_utils.config import ToolkitConfig, apply_overrides  # noqa: E402
from shared_utils.training_utils import current_rss_mb, peak_rss_mb  # noqa: E402

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

RESULT_MARKER = "BENCHMARK_RESULT "
MIB = 1024 * 1024
# What a tutorial lists for a Llama; it is also what our `target_modules: auto` resolves to.
LLAMA_LINEAR_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
THROUGHPUT_RUNS = ("baseline", "lora", "lora-packed")
WEIGHT_RUNS = ("weights-lora", "weights-qlora")
TARGET_LORA = 1.5  # (b) tokens/s >= 1.5x (a)
TARGET_PACKED = 2.0  # (c) tokens/s >= 2x (a)
TARGET_QLORA_WEIGHTS = 0.35  # QLoRA weight bytes <= 0.35x LoRA's


@dataclass(frozen=True)
class Sizes:
    """Sizes of one benchmark run; `--quick` shrinks every one of them."""

    examples: int
    max_length: int
    batch_size: int
    epochs: float
    tiny_dims: dict[str, int]
    large_dims: dict[str, int]


FULL = Sizes(
    examples=256,
    max_length=512,
    batch_size=8,
    epochs=1.0,
    tiny_dims={"hidden_size": 256, "num_hidden_layers": 4, "intermediate_size": 688},
    # 12 x (attention 3.1M + MLP 9.4M) + embeddings and head 2 x vocab x 1024: about 154M.
    large_dims={
        "hidden_size": 1024,
        "num_hidden_layers": 12,
        "intermediate_size": 3072,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
    },
)
QUICK = Sizes(
    examples=48,
    max_length=128,
    batch_size=4,
    epochs=1.0,
    tiny_dims={"hidden_size": 128, "num_hidden_layers": 2, "intermediate_size": 344},
    large_dims={"hidden_size": 256, "num_hidden_layers": 4, "intermediate_size": 688},
)


# --------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------


def file_backed_rss_mb() -> float:
    """The part of the RSS that is file pages (memory-mapped safetensors), Linux only."""
    import psutil

    return float(getattr(psutil.Process().memory_info(), "shared", 0)) / MIB


def mapped_file_ranges(suffix: str) -> list[tuple[int, int]]:
    """Address ranges of this process's memory maps of files ending in `suffix` (Linux)."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    ranges = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[-1].endswith(suffix):
            start, end = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((start, end))
    return ranges


# --------------------------------------------------------------------------------------------------
# Models and data (parent process)
# --------------------------------------------------------------------------------------------------


def build_models(work: Path, sizes: Sizes, with_large: bool) -> tuple[Path, Path | None]:
    """The tiny model for the throughput runs and, unless skipped, the ~150M one for weights."""
    from training_methods.transfer_learning.tiny_model import build_tiny_model

    tiny = work / "models" / "tiny"
    if not (tiny / "config.json").is_file():
        build_tiny_model(tiny, **sizes.tiny_dims)
    if not with_large:
        return tiny, None
    large = work / "models" / "large"
    if not (large / "config.json").is_file():
        build_tiny_model(large, **sizes.large_dims)
    return tiny, large


def corpus_words() -> list[str]:
    """Words of the sample corpus the tiny tokenizer was trained on, so they tokenise compactly."""
    from shared_utils.sample_corpus import sample_corpus_texts

    return sorted(set(re.findall(r"[a-z]{3,}", " ".join(sample_corpus_texts()).lower())))


def example_length(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> int:
    """Tokens of one conversation as rendered by the chat template (which writes BOS itself)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def make_chat_data(
    path: Path, tokenizer: PreTrainedTokenizerBase, examples: int, max_length: int, seed: int = 0
) -> list[int]:
    """Write `examples` chat records of mixed length to `path`; returns their token lengths.

    Prompts are 4 to 24 words; response lengths are log-uniform from 3 tokens to what still fits
    in `max_length`, so most examples are short and a few are long, as in real instruction data.
    No example is truncated, so every configuration trains on exactly the same tokens.
    """
    rng = random.Random(seed)
    words = corpus_words()
    cost = {w: len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) for w in words}
    lengths = []
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(examples):
            prompt = " ".join(rng.choices(words, k=rng.randint(4, 24))).capitalize() + "?"
            base = [{"role": "user", "content": prompt}, {"role": "assistant", "content": ""}]
            room = max_length - example_length(tokenizer, base) - 2
            target = round(math.exp(rng.uniform(math.log(3), math.log(max(room, 4)))))
            response: list[str] = []
            spent = 0
            while spent < target:
                word = rng.choice(words)
                response.append(word)
                spent += cost[word]
            messages = [base[0], {"role": "assistant", "content": " ".join(response) + "."}]
            while example_length(tokenizer, messages) > max_length and len(response) > 1:
                response.pop()
                messages[1]["content"] = " ".join(response) + "."
            lengths.append(example_length(tokenizer, messages))
            handle.write(json.dumps({"messages": messages}) + "\n")
    return lengths


# --------------------------------------------------------------------------------------------------
# Child processes: one configuration each
# --------------------------------------------------------------------------------------------------


class TokenCounter:
    """Wraps a collator and counts the tokens of the batches it builds: real and with padding."""

    def __init__(self, collator: Callable[[Any], dict[str, torch.Tensor]], pad_id: int) -> None:
        self.collator = collator
        self.pad_id = pad_id
        self.real = 0
        self.processed = 0
        self.batches = 0

    def __call__(self, features: Any) -> dict[str, torch.Tensor]:
        batch = self.collator(features)
        input_ids = batch["input_ids"]  # (batch, seq)
        # The pad token never occurs in the generated text, so "not pad" is "real".
        self.real += int((input_ids != self.pad_id).sum())
        self.processed += input_ids.numel()
        self.batches += 1
        return batch


def benchmark_config(args: argparse.Namespace, section: str, model: Path) -> ToolkitConfig:
    """The toolkit config of every child: CPU, one training pass, nothing but training timed."""
    key = f"transfer_learning.{section}"
    config = ToolkitConfig()
    apply_overrides(
        config,
        {
            "common.device": "cpu",
            "common.log_level": "WARNING",
            "logging.use_tensorboard": False,
            f"{key}.num_samples": 0,
            f"{key}.training.save_steps": 1_000_000,  # no checkpoint inside the timed loop
            f"{key}.early_stopping.enabled": False,
            f"{key}.model_name": str(model),
            f"{key}.max_length": args.max_length,
            f"{key}.val_size": 0.0,
            f"{key}.training.num_epochs": args.epochs,
            f"{key}.training.batch_size": args.batch_size,
        },
    )
    return config


def child_baseline(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """(a) The tutorial loop: pad every example to max_length, labels = inputs masked at pad."""
    import datasets
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForLanguageModeling,
        Trainer,
        TrainingArguments,
    )

    config = benchmark_config(args, "lora", work / "models" / "tiny")
    lora = config.transfer_learning.lora
    training = lora.training
    tokenizer = AutoTokenizer.from_pretrained(lora.model_name)
    raw = datasets.load_dataset("json", data_files=str(work / "train.jsonl"), split="train")

    def encode(batch: Mapping[str, list[Any]]) -> dict[str, list[list[int]]]:
        texts = [tokenizer.apply_chat_template(m, tokenize=False) for m in batch["messages"]]
        # The template writes BOS itself; add_special_tokens=False keeps one BOS, as ours does.
        return tokenizer(
            texts,
            padding="max_length",
            truncation=True,
            max_length=args.max_length,
            add_special_tokens=False,
        )

    dataset = raw.map(encode, batched=True, remove_columns=raw.column_names)
    model = AutoModelForCausalLM.from_pretrained(lora.model_name)
    model.config.use_cache = False  # as ours; training needs no KV cache
    model = get_peft_model(
        model,
        LoraConfig(
            r=lora.lora_r,
            lora_alpha=lora.lora_alpha,
            lora_dropout=lora.lora_dropout,
            target_modules=LLAMA_LINEAR_MODULES,
            bias="none",
            task_type="CAUSAL_LM",
        ),
    )
    counter = TokenCounter(
        DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=False),
        int(tokenizer.pad_token_id),
    )
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(work / "runs" / "baseline"),
            num_train_epochs=training.num_epochs,
            per_device_train_batch_size=training.batch_size,
            learning_rate=training.learning_rate,
            weight_decay=training.weight_decay,
            warmup_steps=training.warmup_ratio,
            lr_scheduler_type=training.lr_scheduler_type,
            max_grad_norm=training.max_grad_norm,
            optim="adamw_torch",
            logging_steps=training.logging_steps,
            save_strategy="no",
            seed=config.common.seed,
            data_seed=config.common.seed,
            use_cpu=True,
            report_to="none",
        ),
        train_dataset=dataset,
        data_collator=counter,
    )
    rss_before = current_rss_mb()
    started = time.monotonic()
    output = trainer.train()
    runtime = time.monotonic() - started
    return {
        "examples": len(dataset),
        "dataset_real_tokens": int(sum(sum(mask) for mask in dataset["attention_mask"])),
        "real_tokens": counter.real,
        "processed_tokens": counter.processed,
        "steps": trainer.state.global_step,
        "train_s": runtime,
        "train_loss": output.metrics.get("train_loss"),
        "rss_before_train_mb": rss_before,
        "peak_rss_mb": peak_rss_mb(),
        "torch_threads": torch.get_num_threads(),
    }


def child_lora(args: argparse.Namespace, work: Path, packing: bool) -> dict[str, Any]:
    """(b) and (c): our train-lora path, exactly as `train_from_config` drives it."""
    from shared_utils.data_loader import DataLoaderFactory
    from training_methods.transfer_learning.finetuning.lora_finetuner import LoRAFineTuner

    config = benchmark_config(args, "lora", work / "models" / "tiny")
    apply_overrides(config, {"transfer_learning.lora.packing": packing})
    tuner = LoRAFineTuner.from_config(config)
    dataset = tuner.tokenize(tuner.load_jsonl(work / "train.jsonl"), shuffle=True)
    pad_id = int(tuner.tokenizer.pad_token_id)
    counter = TokenCounter(tuner.data.collator, pad_id)

    # `LoRAFineTuner.train` takes its collator from `tuner.data.collator` (a property) and has no
    # hook for another; a subclass returning the counting wrapper is the least intrusive way in.
    class CountingFactory(DataLoaderFactory):
        @property
        def collator(self) -> TokenCounter:  # type: ignore[override]
            return counter

    tuner.data.__class__ = CountingFactory
    tuner.model  # noqa: B018  (load the base and wrap it now, outside the timed part)
    rss_before = current_rss_mb()
    result = tuner.train(dataset, None, work / "runs" / ("lora-packed" if packing else "lora"))
    return {
        "examples": result.data.get("examples", len(dataset)),
        "rows": len(dataset),
        "dataset_real_tokens": int(sum(dataset["length"])),
        "real_tokens": counter.real,
        "processed_tokens": counter.processed,
        "steps": result.global_step,
        "train_s": result.train_runtime_s,
        "train_loss": result.train_loss,
        "truncated": result.data.get("truncated"),
        "rss_before_train_mb": rss_before,
        "peak_rss_mb": result.peak_rss_mb,  # taken right after trainer.train(), as (a)'s
    }


def weight_bytes(model: torch.nn.Module) -> dict[str, int]:
    """Bytes of parameters and buffers (base and LoRA apart) and of bitsandbytes quant states.

    `get_memory_footprint()` counts parameters and buffers only; a 4-bit weight also keeps its
    block scales (absmax, and with double quantization their own scales) in a `quant_state`.
    """
    base = adapter = quant_state = 0
    seen: set[int] = set()
    for name, param in model.named_parameters():
        size = param.numel() * param.element_size()
        if "lora_" in name:
            adapter += size
        else:
            base += size
        state = getattr(param, "quant_state", None)
        if state is None:
            continue
        kept = [state.absmax, state.code]  # block scales; the 16-entry code book is shared
        if state.nested:
            kept += [state.state2.absmax, state.state2.code, state.offset]
        for tensor in kept:
            if tensor.data_ptr() not in seen:
                seen.add(tensor.data_ptr())
                quant_state += tensor.numel() * tensor.element_size()
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return {
        "base_param_bytes": base,
        "adapter_param_bytes": adapter,
        "buffer_bytes": buffers,
        "quant_state_bytes": quant_state,
        "total_bytes": base + adapter + buffers + quant_state,
    }


def logical_numel(param: torch.Tensor) -> int:
    """Parameters a tensor stands for: a packed 4-bit weight holds two per byte."""
    state = getattr(param, "quant_state", None)
    return math.prod(state.shape) if state is not None else param.numel()


def child_weights(args: argparse.Namespace, work: Path, quantized: bool) -> dict[str, Any]:
    """The ~150M model as LoRAFineTuner or QLoRAFineTuner loads it, with the same LoRA settings."""
    import bitsandbytes  # noqa: F401  (imported by both, so its RSS is in both baselines)
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401

    from training_methods.transfer_learning.finetuning.lora_finetuner import LoRAFineTuner
    from training_methods.transfer_learning.finetuning.qlora_finetuner import QLoRAFineTuner

    section = "qlora" if quantized else "lora"
    config = benchmark_config(args, section, work / "models" / "large")
    lora = config.transfer_learning.lora
    # Same rank for both so the ratio is the base's; QLoRA's own default is r=64.
    apply_overrides(
        config,
        {
            "transfer_learning.qlora.lora_r": lora.lora_r,
            "transfer_learning.qlora.lora_alpha": lora.lora_alpha,
            "transfer_learning.qlora.quantization.bnb_4bit_compute_dtype": "float32",
        },
    )
    tuner = (QLoRAFineTuner if quantized else LoRAFineTuner).from_config(config)
    gc.collect()
    rss_before, file_before = current_rss_mb(), file_backed_rss_mb()
    model = tuner.model
    peak_after_load = peak_rss_mb()
    # fp32 weights may stay zero-copy views of the memory-mapped safetensors file, resident only
    # once read; training reads them all, so read them all before measuring.
    with torch.no_grad():
        for param in model.parameters():
            param.sum()
    gc.collect()
    rss_after, file_after = current_rss_mb(), file_backed_rss_mb()
    mapped = mapped_file_ranges(".safetensors")
    file_views = [
        param
        for param in model.parameters()
        if any(start <= param.data_ptr() < end for start, end in mapped)
    ]
    linear4bit = sum(1 for m in model.modules() if type(m).__name__ == "Linear4bit")
    return {
        "parameters": sum(logical_numel(p) for p in model.parameters()),
        "linear4bit_layers": linear4bit,
        "footprint_bytes": int(model.get_memory_footprint()),
        **weight_bytes(model),
        "rss_load_delta_mb": rss_after - rss_before,
        "rss_load_file_mb": file_after - file_before,
        "peak_rss_delta_mb": peak_after_load - rss_before,
        "file_view_params": len(file_views),
        "file_view_mb": sum(p.numel() * p.element_size() for p in file_views) / MIB,
        "dtype": str(next(p for n, p in model.named_parameters() if "embed" in n).dtype),
        "torch_threads": torch.get_num_threads(),
    }


def run_only(args: argparse.Namespace) -> None:
    """The hidden `--only NAME` mode: run one configuration and print its JSON line."""
    import datasets
    import torch
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    hf_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    work = Path(args.work_dir)
    name = args.only
    if name == "baseline":
        result = child_baseline(args, work)
    elif name in ("lora", "lora-packed"):
        result = child_lora(args, work, packing=name == "lora-packed")
    elif name in WEIGHT_RUNS:
        result = child_weights(args, work, quantized=name == "weights-qlora")
    else:
        raise SystemExit(f"unknown --only {name!r}")
    print(RESULT_MARKER + json.dumps(result), flush=True)


def run_child(name: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Run one configuration in a fresh interpreter and read back its JSON line."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--only",
        name,
        "--work-dir",
        str(work),
        "--examples",
        str(args.examples),
        "--max-length",
        str(args.max_length),
        "--batch-size",
        str(args.batch_size),
        "--epochs",
        str(args.epochs),
        "--threads",
        str(args.threads),
    ]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(work / "hf-datasets-cache"),
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_MODE": "disabled",
        "OMP_NUM_THREADS": str(args.threads),
        "MKL_NUM_THREADS": str(args.threads),
    }
    print(f"  {name} ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join(proc.stderr.strip().splitlines()[-25:])
        raise SystemExit(f"benchmark run {name!r} failed (exit {proc.returncode}):\n{tail}")
    print(f"  {name} done in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return json.loads(lines[-1][len(RESULT_MARKER) :])


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(header[i]), *(len(r[i]) for r in rows)) for i in range(len(header))]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines)


def throughput_report(results: Mapping[str, Mapping[str, Any]]) -> str:
    labels = {
        "baseline": "(a) PEFT + Trainer, pad to max_length",
        "lora": "(b) train-lora (dynamic pad, group_by_length)",
        "lora-packed": "(c) train-lora, packing: true",
    }
    targets = {"lora": TARGET_LORA, "lora-packed": TARGET_PACKED}
    base_speed = results["baseline"]["real_tokens"] / results["baseline"]["train_s"]
    rows = []
    for name in THROUGHPUT_RUNS:
        r = results[name]
        speed = r["real_tokens"] / r["train_s"]
        ratio = speed / base_speed
        pad_share = 1 - r["real_tokens"] / max(r["processed_tokens"], 1)
        if name in targets:
            target = f">= {targets[name]:.1f}x: {verdict(ratio >= targets[name])}"
        else:
            target = "baseline"
        rows.append(
            (
                labels[name],
                f"{r['real_tokens']:,}",
                f"{r['processed_tokens']:,} ({pad_share:.0%} pad)",
                f"{r['steps']}",
                f"{r['train_s']:.1f}",
                f"{speed:,.0f}",
                f"{ratio:.2f}x",
                target,
                f"{r['peak_rss_mb']:.0f}",
                f"{max(0.0, r['peak_rss_mb'] - r['rss_before_train_mb']):.0f}",
            )
        )
    header = (
        "configuration",
        "real tokens",
        "tokens processed",
        "steps",
        "train s",
        "real tok/s",
        "vs (a)",
        "target",
        "peak RSS MB",
        "RSS growth in training MB",
    )
    return markdown_table(header, rows)


def weights_report(results: Mapping[str, Mapping[str, Any]]) -> str:
    lora, qlora = results["weights-lora"], results["weights-qlora"]
    ratio = qlora["total_bytes"] / lora["total_bytes"]
    base_ratio = (qlora["base_param_bytes"] + qlora["quant_state_bytes"]) / lora["base_param_bytes"]
    rows = []
    for label, r, note in (
        ("LoRAFineTuner (fp32 base)", lora, "1.00x"),
        (
            f"QLoRAFineTuner (nf4, {qlora['linear4bit_layers']} Linear4bit)",
            qlora,
            f"{ratio:.3f}x (<= {TARGET_QLORA_WEIGHTS}x: {verdict(ratio <= TARGET_QLORA_WEIGHTS)})",
        ),
    ):
        rows.append(
            (
                label,
                f"{r['parameters'] / 1e6:.1f}M",
                f"{r['total_bytes'] / MIB:.1f}",
                f"{(r['base_param_bytes'] + r['quant_state_bytes']) / MIB:.1f}",
                f"{r['adapter_param_bytes'] / MIB:.1f}",
                f"{r['footprint_bytes'] / MIB:.1f}",
                f"{r['rss_load_delta_mb']:.0f} ({r['rss_load_file_mb']:.0f} file)",
                f"{r['peak_rss_delta_mb']:.0f}",
                note,
            )
        )
    header = (
        "weights of the large model",
        "params",
        "weights MB",
        "base (+quant state) MB",
        "LoRA MB",
        "get_memory_footprint MB",
        "RSS growth, loaded MB",
        "peak RSS growth in load MB",
        "ratio / target",
    )
    table = markdown_table(header, rows)
    views = ", ".join(
        f"{name} {r['file_view_params']} tensors / {r['file_view_mb']:.0f} MB"
        for name, r in (("LoRA", lora), ("QLoRA", qlora))
    )
    return (
        f"{table}\n\nbase weights alone: QLoRA {base_ratio:.2f}x LoRA. Parameters still viewing "
        f"the memory-mapped model.safetensors after loading: {views}."
    )


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--examples", type=int, help="chat examples (default 256; quick 48)")
    parser.add_argument("--max-length", type=int, help="max_length (default 512; quick 128)")
    parser.add_argument("--batch-size", type=int, help="batch size (default 8; quick 4)")
    parser.add_argument("--epochs", type=float, help="epochs of every configuration (default 1)")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of every measured run (default 1)"
    )
    parser.add_argument("--skip-qlora", action="store_true", help="skip the LoRA/QLoRA weights")
    parser.add_argument("--work-dir", type=Path, help="models, data, runs (default: a temp dir)")
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    parser.add_argument("--only", help=argparse.SUPPRESS)  # child mode, see run_only
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    for key in ("examples", "max_length", "batch_size", "epochs"):
        if getattr(args, key) is None:
            setattr(args, key, getattr(sizes, key))
    args.sizes = sizes
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.only:
        run_only(args)
        return
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-finetune-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        run_benchmark(args, work)
    finally:
        if args.work_dir is None:  # the large model alone is ~600 MB
            shutil.rmtree(work, ignore_errors=True)


def run_benchmark(args: argparse.Namespace, work: Path) -> None:
    """Build the models and data in `work`, run every configuration, print the tables."""
    from transformers import AutoTokenizer

    started = time.monotonic()
    print(f"building models in {work} ...", file=sys.stderr, flush=True)
    tiny, large = build_models(work, args.sizes, with_large=not args.skip_qlora)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    lengths = make_chat_data(work / "train.jsonl", tokenizer, args.examples, args.max_length)
    print(f"  done in {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)

    print("measuring, one child process per configuration:", file=sys.stderr, flush=True)
    results = {name: run_child(name, args, work) for name in THROUGHPUT_RUNS}
    if large is not None:
        results.update({name: run_child(name, args, work) for name in WEIGHT_RUNS})

    real = {results[name]["real_tokens"] for name in THROUGHPUT_RUNS}
    real |= {round(results[name]["dataset_real_tokens"] * args.epochs) for name in THROUGHPUT_RUNS}
    ordered = sorted(lengths)
    print()
    mean = sum(lengths) / len(lengths)
    print(
        f"data: {len(lengths)} chat examples, {sum(lengths):,} tokens, length min {ordered[0]} / "
        f"median {ordered[len(ordered) // 2]} / mean {mean:.0f} / max {ordered[-1]} (max_length "
        f"{args.max_length}; {1 - mean / args.max_length:.0%} of a pad-to-max batch is pad)"
    )
    lora = ToolkitConfig().transfer_learning.lora
    print(
        f"tiny model: random Llama {args.sizes.tiny_dims}, vocab {len(tokenizer)}; "
        f"batch size {args.batch_size}, {args.epochs:g} epoch(s), LoRA r={lora.lora_r} "
        f"alpha={lora.lora_alpha} on all linear layers; CPU, "
        f"{results['baseline']['torch_threads']} torch thread(s) per run"
    )
    print()
    print(throughput_report(results))
    print()
    same = "identical" if len(real) == 1 else "DIFFER: " + ", ".join(map(str, sorted(real)))
    print(
        f"real tokens = non-pad tokens of the batches the collator built ({same} across a/b/c "
        "and equal to the data sets' tokens x epochs); tok/s = real tokens / trainer.train() "
        f"wall time. (c) packs examples into rows of up to {args.max_length} tokens, so its batch "
        "size counts packed rows, not examples. (a) learns prompt and response, (b)/(c) the "
        "response only; the compute per token is the same. Peak RSS is the whole child process "
        "(imports, model, data) up to the end of training."
    )
    if large is not None:
        print()
        print(weights_report(results))
        print(
            "\nweights = parameters + buffers + 4-bit quant states (absmax; get_memory_footprint "
            f"leaves those out); both with LoRA r={lora.lora_r} on all linear layers (QLoRA's "
            f"default r={ToolkitConfig().transfer_learning.qlora.lora_r} scales the LoRA MB "
            "with it). Embeddings, norms and lm_head stay fp32 in both. RSS growth, loaded = "
            "after every weight was read once, as training does; (file) = resident pages of the "
            "memory-mapped model.safetensors, which the kernel may drop but RSS counts. "
            f"Large model: random Llama {args.sizes.large_dims}."
        )
    if args.quick:
        print(
            "\n--quick: smoke-run sizes (tiny rows, a ~4M 'large' model); per-step overhead and "
            "fp32 embeddings dominate there, so the targets are for the default sizes."
        )
    kept = f"work dir {work}" if args.work_dir else "temporary work dir removed"
    print(f"\ntotal wall time {time.monotonic() - started:.0f} s; {kept}")


if __name__ == "__main__":
    main()
