"""Fine-tuning helpers the tests share: a config for fast CPU runs on a tiny model (make_config,
MEMORISE), training data read the way train-lora reads it (training_data), and the tiny
fine-tune on CHATS that the export, chat, evaluate, model-loading and GGUF tests start from
(finetune_on_chats; conftest's `finetuned` fixture is tiny_llama's)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared_utils.config import ToolkitConfig, apply_overrides

MEMORISE = [
    "Browns are dry leaves, straw and cardboard.",
    "Greens are peelings, coffee grounds and grass.",
    "Turn the pile every one to two weeks.",
    "Finished compost smells of forest soil.",
]
MEMORISE_RECORDS = [{"text": text} for text in MEMORISE]


def make_config(tmp_path: Path, model: Path, section: str = "lora", **overrides: Any):
    """A config for fast CPU runs on a tiny model; `overrides` are dotted keys under the section
    (`training.max_steps`, `early_stopping.patience`) or absolute (`common.seed`)."""
    config = ToolkitConfig()
    key = f"transfer_learning.{section}"
    base = {
        "common.device": "cpu",
        f"{key}.model_name": str(model),
        f"{key}.output_dir": str(tmp_path / "run"),
        f"{key}.max_length": 64,
        f"{key}.val_size": 0.0,
        f"{key}.training.batch_size": 2,
        f"{key}.training.learning_rate": 5e-3,
        f"{key}.training.loraplus_lr_ratio": 0.0,  # the rates here are sized for plain LoRA
        f"{key}.training.warmup_ratio": 0.0,
        f"{key}.training.lr_scheduler_type": "constant",
        f"{key}.training.logging_steps": 1,
        f"{key}.num_samples": 0,
        "logging.use_tensorboard": False,
    }
    for name, value in overrides.items():
        dotted = name.replace("__", ".")
        base[dotted if dotted.split(".")[0] in _SECTIONS else f"{key}.{dotted}"] = value
    apply_overrides(config, base)
    return config


_SECTIONS = {"common", "logging", "transfer_learning"}


def training_data(tuner: Any, records: Sequence[Mapping[str, Any]], folder: Path) -> Any:
    """`records` as train-lora reads its --train-data: written to `folder`/train.jsonl, read
    into normalised rows (`load_jsonl`) and tokenised in shuffled order (`tokenize`)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return tuner.tokenize(tuner.load_jsonl(path), shuffle=True)


# --------------------------------------------------------------------------------------------------
# A tiny model fine-tuned on CHATS
# --------------------------------------------------------------------------------------------------

CHATS = [
    ("What goes in a compost pile?", "Browns are dry leaves, straw and cardboard."),
    ("How often should I turn it?", "Turn the pile every one to two weeks."),
    ("How does finished compost smell?", "Finished compost smells of forest soil."),
]


@dataclass(frozen=True)
class FineTuned:
    adapter: Path  # a train-lora output folder
    merged: Path  # the adapter merged into its base


_FINETUNED: dict[tuple[Path, Path], FineTuned] = {}


def chat_records() -> list[dict[str, Any]]:
    return [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in CHATS
    ]


def finetune_on_chats(
    tmp_path_factory: pytest.TempPathFactory, base: Path, steps: int = 30, **overrides: Any
) -> FineTuned:
    """`base` with a LoRA adapter that memorised CHATS (`steps` steps), and its merge; made once
    per session and base. Tests of every architecture the export supports start from this.
    `overrides`: more lora config keys (`max_length=128` for a template with a system turn)."""
    key = (tmp_path_factory.getbasetemp(), base)
    if key not in _FINETUNED:
        import torch

        from training_methods.transfer_learning.finetuning.lora_finetuner import LoRAFineTuner
        from training_methods.transfer_learning.merge import merge_adapter

        root = tmp_path_factory.mktemp(f"finetuned-{base.name}")
        config = make_config(
            root,
            base,
            **{
                "training.max_steps": steps,
                "training.batch_size": 3,
                "training.learning_rate": 1e-2,
                **overrides,
            },
        )
        tuner = LoRAFineTuner.from_config(config)
        previous = torch.get_num_threads()
        torch.set_num_threads(1)  # on a busy 2-core machine a second thread makes it 5x slower
        try:
            rows = training_data(tuner, chat_records(), root)
            tuner.train(rows, output_dir=root / "adapter")
        finally:
            torch.set_num_threads(previous)
        merged = merge_adapter(root / "adapter", root / "merged")
        _FINETUNED[key] = FineTuned(adapter=root / "adapter", merged=merged)
    return _FINETUNED[key]


def finetune_tiny_llama(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> FineTuned:
    """tiny_llama fine-tuned on CHATS (30 steps): conftest's `finetuned` fixture, and
    test_gguf_lora's module-scoped one."""
    return finetune_on_chats(tmp_path_factory, tiny_llama)
