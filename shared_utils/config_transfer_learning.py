"""The config sections of fine-tuning: `transfer_learning.lora` (train-lora) and
`transfer_learning.qlora` (train-qlora), with their training, quantization and early-stopping
subsections: one dataclass per section, its defaults, help texts and range checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from shared_utils.config_sections import setting
from shared_utils.errors import ConfigurationError

# --------------------------------------------------------------------------------------------------
# transfer_learning
# --------------------------------------------------------------------------------------------------


# A billion optimiser updates is weeks even for a tiny model; a larger max_steps is a typo, and
# the warm-up (warmup_ratio of max_steps) would keep the learning rate near 0 for the whole run.
MAX_TRAINING_STEPS = 1_000_000_000


@dataclass
class TrainingConfig:
    num_epochs: float = setting("Passes over the training data.", 3.0)
    min_steps: int = setting(
        "A small data set is trained for more epochs (whole ones), until the run takes at least "
        "this many optimiser steps; the summary line says when. 0 keeps num_epochs as it is.",
        200,
    )
    batch_size: int = setting("Examples per device per step.", 8)
    gradient_accumulation_steps: int = setting("Steps whose gradients add up before an update.", 1)
    learning_rate: float = setting(
        "Peak learning rate. LoRA adapters learn facts from a small folder at 1e-3 on a "
        "135M-parameter model; lower it (2e-4) for long runs on large models.",
        1e-3,
    )
    loraplus_lr_ratio: float = setting(
        "LoRA+: the LoRA B matrices learn this many times faster than the A matrices (16 in the "
        "LoRA+ paper); 0 trains both at learning_rate. 16 by default: with the same records and "
        "steps, SmolLM2-135M answered 16 of the knowledge benchmark's 118 questions, 7 without.",
        16.0,
    )
    weight_decay: float = setting("AdamW weight decay.", 0.0)
    warmup_ratio: float = setting("Share of the steps with a linear warm-up.", 0.03)
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = setting(
        "Learning-rate schedule after warm-up.", "cosine"
    )
    max_grad_norm: float = setting("Gradient clipping norm.", 1.0)
    max_steps: int = setting("Stop after this many updates; -1 runs all epochs.", -1)
    logging_steps: int = setting("Log training loss every this many updates.", 10)
    eval_steps: int = setting(
        "Evaluate (loss, perplexity, early stopping) every this many updates.", 100
    )
    save_steps: int = setting("Save a checkpoint every this many updates.", 100)
    max_checkpoints: int = setting("Keep at most this many checkpoints.", 3)
    gradient_checkpointing: bool = setting(
        "Trade compute for memory by recomputing activations.", False
    )
    optim: str = setting(
        "Optimizer name as Hugging Face Trainer knows it; auto is adamw_torch, and "
        "paged_adamw_8bit for QLoRA on CUDA.",
        "auto",
    )
    group_by_length: bool = setting(
        "Batch examples of similar length together so dynamic padding adds few pad tokens "
        "(ignored with packing).",
        True,
    )
    mixed_precision: Literal["auto", "bf16", "fp16", "no"] = setting(
        "Autocast the forward pass: auto is bf16 on CUDA GPUs that support it (else fp16) and on "
        "CPUs with native bf16 instructions (AVX512-BF16, AMX), float32 elsewhere; the weights "
        "and the LoRA update stay float32 on CPU.",
        "auto",
    )


@dataclass
class QuantizationConfig:
    load_in_4bit: bool = setting("Load the base model in 4-bit (bitsandbytes).", True)
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = setting("4-bit data type.", "nf4")
    bnb_4bit_use_double_quant: bool = setting("Quantize the quantization constants too.", True)
    bnb_4bit_compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = setting(
        "Dtype of the 4-bit matmuls; auto picks bfloat16 where supported.", "auto"
    )


@dataclass
class EarlyStoppingConfig:
    enabled: bool = setting("Stop when the evaluation loss stops improving.", True)
    patience: int = setting("Evaluations without improvement before stopping.", 3)
    min_delta: float = setting("Smallest change that counts as an improvement.", 0.0)
    restore_best_weights: bool = setting("Load the best checkpoint at the end.", True)


@dataclass
class LoraConfig:
    model_name: str = setting(
        "Hugging Face hub id or local folder of the base causal LM.", "data/models/tiny-llama"
    )
    lora_r: int = setting("LoRA rank.", 16)
    lora_alpha: int = setting("LoRA scaling numerator (scale = alpha / r).", 32)
    lora_dropout: float = setting(
        "Dropout on the LoRA input. 0 by default: on CPU drawing the dropout masks took a fifth "
        "of the training time (measured on SmolLM2-135M), and a small folder is learned, not "
        "generalised from.",
        0.0,
    )
    target_modules: str | list[str] = setting(
        "Module names to adapt, or 'auto' for every linear layer of the architecture.", "auto"
    )
    max_length: int = setting(
        "Longest example in tokens; longer ones are truncated and counted.", 512
    )
    train_data: str = setting(
        "Training JSONL (what `extract` writes).", "data/processed/train.jsonl"
    )
    eval_data: str | None = setting("Evaluation JSONL; when absent, val_size is split off.", None)
    val_size: float = setting(
        "Share of the training data held out when eval_data is absent. 0 by default: every "
        "record of a document folder teaches a fact, and a held-out record is a fact the model "
        "never sees; set it (or eval_data) to watch an evaluation loss.",
        0.0,
    )
    output_dir: str = setting("Where the adapter, metrics and samples are written.", "outputs/lora")
    num_samples: int = setting("Generations written to samples.txt after training.", 3)
    train_on_prompt: bool = setting("Also compute the loss on prompt tokens.", False)
    packing: bool = setting("Concatenate examples up to max_length.", False)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)

    def check(self, prefix: str) -> None:
        """Range checks the types alone cannot express; raises ConfigurationError naming the key
        under `prefix` (transfer_learning.lora or transfer_learning.qlora)."""
        training = self.training
        rules = [
            ("lora_r", self.lora_r >= 1, "must be at least 1"),
            ("lora_alpha", self.lora_alpha > 0, "must be more than 0"),
            ("lora_dropout", 0 <= self.lora_dropout < 1, "must be in [0, 1)"),
            ("max_length", self.max_length >= 2, "must be at least 2"),
            ("val_size", 0 <= self.val_size < 1, "must be in [0, 1)"),
            ("num_samples", self.num_samples >= 0, "must be 0 or more"),
            ("training.num_epochs", training.num_epochs > 0, "must be more than 0"),
            ("training.min_steps", training.min_steps >= 0, "must be 0 or more"),
            ("training.batch_size", training.batch_size >= 1, "must be at least 1"),
            (
                "training.gradient_accumulation_steps",
                training.gradient_accumulation_steps >= 1,
                "must be at least 1",
            ),
            ("training.learning_rate", training.learning_rate > 0, "must be more than 0"),
            ("training.weight_decay", training.weight_decay >= 0, "must be 0 or more"),
            ("training.loraplus_lr_ratio", training.loraplus_lr_ratio >= 0, "must be 0 or more"),
            ("training.warmup_ratio", 0 <= training.warmup_ratio < 1, "must be in [0, 1)"),
            ("training.max_grad_norm", training.max_grad_norm > 0, "must be more than 0"),
            (
                "training.max_steps",
                training.max_steps == -1 or 1 <= training.max_steps <= MAX_TRAINING_STEPS,
                f"must be -1 (all epochs) or from 1 to {MAX_TRAINING_STEPS:,}",
            ),
            ("training.logging_steps", training.logging_steps >= 1, "must be at least 1"),
            ("training.eval_steps", training.eval_steps >= 1, "must be at least 1"),
            ("training.save_steps", training.save_steps >= 1, "must be at least 1"),
            ("training.max_checkpoints", training.max_checkpoints >= 1, "must be at least 1"),
            ("early_stopping.patience", self.early_stopping.patience >= 1, "must be at least 1"),
            ("early_stopping.min_delta", self.early_stopping.min_delta >= 0, "must be 0 or more"),
        ]
        for key, ok, rule in rules:
            if not ok:
                value = self
                for part in key.split("."):
                    value = getattr(value, part)
                raise ConfigurationError(f"config key '{prefix}.{key}' is {value!r}; it {rule}.")


@dataclass
class QLoraConfig(LoraConfig):
    lora_r: int = setting("LoRA rank.", 64)
    lora_alpha: int = setting("LoRA scaling numerator (scale = alpha / r).", 16)
    output_dir: str = setting(
        "Where the adapter, metrics and samples are written.", "outputs/qlora"
    )
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)


@dataclass
class TransferLearningConfig:
    lora: LoraConfig = field(default_factory=LoraConfig)
    qlora: QLoraConfig = field(default_factory=QLoraConfig)
