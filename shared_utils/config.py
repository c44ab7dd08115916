"""Typed configuration: dataclass defaults < YAML file < command-line flags.

Every section of `configs/default.yaml` is one dataclass here, and the defaults live only in these
dataclasses. `load_config` reads YAML with safe loading, coerces scalars to the declared field types
(PyYAML reads `2e-4` as a string), and rejects unknown keys and wrong types with a
`ConfigurationError` that names the dotted key, the valid keys and a did-you-mean.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from shared_utils.errors import ConfigurationError
from shared_utils.security import first_yaml_alias

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_PATH = REPO_ROOT / "configs" / "default.yaml"


def _help(text: str, default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A dataclass field with help text in its metadata."""
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: type(value)(value), metadata={"help": text}, **kwargs)
    return field(default=default, metadata={"help": text}, **kwargs)


# --------------------------------------------------------------------------------------------------
# common
# --------------------------------------------------------------------------------------------------


@dataclass
class CommonConfig:
    seed: int = _help("Random seed for every command that draws random numbers.", 42)
    device: Literal["auto", "cuda", "mps", "cpu"] = _help(
        "Where models run: auto picks cuda, then mps, then cpu.", "auto"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = _help("Logging verbosity.", "INFO")


# --------------------------------------------------------------------------------------------------
# document_processing
# --------------------------------------------------------------------------------------------------


@dataclass
class PdfConfig:
    engine: Literal["pdfplumber", "pypdf", "pypdfium2"] = _help(
        "Primary PDF text engine. pdfplumber keeps layout best; pypdfium2 is fastest.", "pdfplumber"
    )
    fallback_to_pypdf: bool = _help(
        "When the primary engine fails on a file or a page fails the quality check, retry "
        "with pypdf.",
        True,
    )
    extract_by_page: bool = _help(
        "Keep each page its own unit (chunks never span pages); false lets text flow across pages.",
        True,
    )
    x_tolerance: float = _help(
        "pdfplumber horizontal gap (points) that still joins letters into one word; 3 merges words "
        "on LaTeX PDFs, 1.5 keeps the spaces.",
        1.5,
    )
    y_tolerance: float = _help("pdfplumber vertical tolerance (points) for one text line.", 3.0)
    use_text_flow: bool = _help(
        "Follow the PDF's content-stream order, which keeps two-column text in reading order.", True
    )
    password: str = _help("Password tried on encrypted PDFs after the empty one.", "")
    pages_per_task: int = _help(
        "A PDF with more pages is split into page ranges of this size that run in parallel.", 20
    )
    max_mean_word_length: float = _help(
        "Quality check: a page whose mean word length exceeds this lost its spaces and is retried "
        "with the fallback engine.",
        12.0,
    )


RECORD_KIND_NAMES = (
    "section",
    "continuation",
    "topic",
    "question",
    "cloze",
)  # see instruction_records.py


@dataclass
class DocumentProcessingConfig:
    chunk_size: int = _help("Largest chunk, in characters (or tokens with --tokenizer).", 512)
    overlap_size: int = _help(
        "Whole trailing sentences of up to this many characters (or tokens) repeated at the start "
        "of the next chunk.",
        50,
    )
    min_chunk_size: int = _help(
        "Chunks shorter than this (characters) are merged into their neighbour in the same "
        "section.",
        20,
    )
    tokenizer: str | None = _help(
        "Path of a local Hugging Face tokenizer: chunk sizes are then counted in its tokens.", None
    )
    output_format: Literal["jsonl", "text"] = _help(
        "jsonl: chunk records; text: one cleaned .txt per document.", "jsonl"
    )
    instruction_format: bool = _help(
        "Also write instruction records (alpaca and chat) that teach what the documents say.",
        False,
    )
    record_kinds: list[str] = _help(
        "Kinds of instruction records: section (recite a section), continuation (continue a "
        "passage), topic (questions about each sentence's names and key terms, answered by the "
        "sentence), question (a sentence or its clause with a name or number replaced by a "
        "question word, answered by the sentence), cloze (a sentence with a name or number "
        "blanked, answered by it). Topic and question by default: on a small model they teach "
        "the most facts per training minute (scripts/benchmark_knowledge.py).",
        ["topic", "question"],
    )
    question_phrasings: int = _help(
        "Topic records per sentence, each about another of its key terms in another wording.", 3
    )
    val_ratio: float = _help(
        "Share of documents (by hash of their path) written to valid.jsonl instead of train.jsonl.",
        0.0,
    )
    workers: int = _help("Worker processes; 0 means one per CPU core.", 0)
    file_timeout: float = _help(
        "Seconds one file (or one page range of a large PDF) may take before its worker is killed.",
        300.0,
    )
    worker_memory_mb: float = _help(
        "Memory (MB) one worker may take beyond what it starts with (Linux); a file that needs "
        "more, such as a PDF page that inflates to gigabytes, fails with the reason.",
        2000.0,
    )
    max_file_size_mb: float = _help("Files larger than this are skipped and reported.", 200.0)
    max_text_length: int = _help(
        "Sanitisation limit: a document's text is cut at this many characters (reported).",
        50_000_000,
    )
    remove_headers_footers: bool = _help(
        "Drop running headers, footers and page numbers that repeat across pages.", True
    )
    deduplicate: bool = _help("Drop exact duplicate chunks (counted in the report).", True)
    ocr: Literal["auto", "off", "force"] = _help(
        "OCR (Tesseract, offline) for image files and PDF pages: auto reads pages without a text "
        "layer and .png/.jpg/.tiff files; off never runs it (such pages are reported as needing "
        "OCR); force reads every PDF page from its image, text layer or not.",
        "auto",
    )
    pdf: PdfConfig = field(default_factory=PdfConfig)

    def check(self) -> None:
        """Range checks the types alone cannot express; raises ConfigurationError naming the key."""
        limits = [
            ("chunk_size", self.chunk_size > 0, "must be at least 1"),
            (
                "overlap_size",
                0 <= self.overlap_size < self.chunk_size,
                "must be in [0, chunk_size)",
            ),
            ("min_chunk_size", self.min_chunk_size >= 0, "must be 0 or more"),
            ("val_ratio", 0.0 <= self.val_ratio < 1.0, "must be in [0, 1)"),
            ("workers", self.workers >= 0, "must be 0 (one per core) or more"),
            ("file_timeout", self.file_timeout > 0, "must be more than 0 seconds"),
            ("worker_memory_mb", self.worker_memory_mb >= 100, "must be at least 100"),
            ("max_file_size_mb", self.max_file_size_mb > 0, "must be more than 0"),
            ("max_text_length", self.max_text_length > 0, "must be at least 1"),
            ("pdf.pages_per_task", self.pdf.pages_per_task >= 1, "must be at least 1"),
            ("pdf.x_tolerance", self.pdf.x_tolerance >= 0, "must be 0 or more"),
            (
                "record_kinds",
                bool(self.record_kinds) and set(self.record_kinds) <= set(RECORD_KIND_NAMES),
                f"must list one or more of {', '.join(RECORD_KIND_NAMES)}",
            ),
            ("question_phrasings", self.question_phrasings >= 1, "must be at least 1"),
            ("ocr", self.ocr in ("auto", "off", "force"), "must be auto, off or force"),
        ]
        for key, ok, rule in limits:
            if not ok:
                value = getattr(self.pdf, key[4:]) if key.startswith("pdf.") else getattr(self, key)
                raise ConfigurationError(
                    f"config key 'document_processing.{key}' is {value!r}; it {rule}."
                )


# --------------------------------------------------------------------------------------------------
# transfer_learning
# --------------------------------------------------------------------------------------------------


# A billion optimiser updates is weeks even for a tiny model; a larger max_steps is a typo, and
# the warm-up (warmup_ratio of max_steps) would keep the learning rate near 0 for the whole run.
MAX_TRAINING_STEPS = 1_000_000_000


@dataclass
class TrainingConfig:
    num_epochs: float = _help("Passes over the training data.", 3.0)
    min_steps: int = _help(
        "A small data set is trained for more epochs (whole ones), until the run takes at least "
        "this many optimiser steps; the summary line says when. 0 keeps num_epochs as it is.",
        200,
    )
    batch_size: int = _help("Examples per device per step.", 8)
    gradient_accumulation_steps: int = _help("Steps whose gradients add up before an update.", 1)
    learning_rate: float = _help(
        "Peak learning rate. LoRA adapters learn facts from a small folder at 1e-3 on a "
        "135M-parameter model; lower it (2e-4) for long runs on large models.",
        1e-3,
    )
    loraplus_lr_ratio: float = _help(
        "LoRA+: the LoRA B matrices learn this many times faster than the A matrices (16 in the "
        "LoRA+ paper); 0 trains both at learning_rate. 16 by default: with the same records and "
        "steps, SmolLM2-135M answered 16 of the knowledge benchmark's 118 questions, 7 without.",
        16.0,
    )
    weight_decay: float = _help("AdamW weight decay.", 0.0)
    warmup_ratio: float = _help("Share of the steps with a linear warm-up.", 0.03)
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = _help(
        "Learning-rate schedule after warm-up.", "cosine"
    )
    max_grad_norm: float = _help("Gradient clipping norm.", 1.0)
    max_steps: int = _help("Stop after this many updates; -1 runs all epochs.", -1)
    logging_steps: int = _help("Log training loss every this many updates.", 10)
    eval_steps: int = _help(
        "Evaluate (loss, perplexity, early stopping) every this many updates.", 100
    )
    save_steps: int = _help("Save a checkpoint every this many updates.", 100)
    max_checkpoints: int = _help("Keep at most this many checkpoints.", 3)
    gradient_checkpointing: bool = _help(
        "Trade compute for memory by recomputing activations.", False
    )
    optim: str = _help(
        "Optimizer name as Hugging Face Trainer knows it; auto is adamw_torch, and "
        "paged_adamw_8bit for QLoRA on CUDA.",
        "auto",
    )
    group_by_length: bool = _help(
        "Batch examples of similar length together so dynamic padding adds few pad tokens "
        "(ignored with packing).",
        True,
    )
    mixed_precision: Literal["auto", "bf16", "fp16", "no"] = _help(
        "Autocast the forward pass: auto is bf16 on CUDA GPUs that support it (else fp16) and on "
        "CPUs with native bf16 instructions (AVX512-BF16, AMX), float32 elsewhere; the weights "
        "and the LoRA update stay float32 on CPU.",
        "auto",
    )


@dataclass
class QuantizationConfig:
    load_in_4bit: bool = _help("Load the base model in 4-bit (bitsandbytes).", True)
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = _help("4-bit data type.", "nf4")
    bnb_4bit_use_double_quant: bool = _help("Quantize the quantization constants too.", True)
    bnb_4bit_compute_dtype: Literal["auto", "bfloat16", "float16", "float32"] = _help(
        "Dtype of the 4-bit matmuls; auto picks bfloat16 where supported.", "auto"
    )


@dataclass
class EarlyStoppingConfig:
    enabled: bool = _help("Stop when the evaluation loss stops improving.", True)
    patience: int = _help("Evaluations without improvement before stopping.", 3)
    min_delta: float = _help("Smallest change that counts as an improvement.", 0.0)
    restore_best_weights: bool = _help("Load the best checkpoint at the end.", True)


@dataclass
class LoraConfig:
    model_name: str = _help(
        "Hugging Face hub id or local folder of the base causal LM.", "data/models/tiny-llama"
    )
    lora_r: int = _help("LoRA rank.", 16)
    lora_alpha: int = _help("LoRA scaling numerator (scale = alpha / r).", 32)
    lora_dropout: float = _help(
        "Dropout on the LoRA input. 0 by default: on CPU drawing the dropout masks took a fifth "
        "of the training time (measured on SmolLM2-135M), and a small folder is learned, not "
        "generalised from.",
        0.0,
    )
    target_modules: str | list[str] = _help(
        "Module names to adapt, or 'auto' for every linear layer of the architecture.", "auto"
    )
    max_length: int = _help(
        "Longest example in tokens; longer ones are truncated and counted.", 512
    )
    train_data: str = _help("Training JSONL (what `extract` writes).", "data/processed/train.jsonl")
    eval_data: str | None = _help("Evaluation JSONL; when absent, val_size is split off.", None)
    val_size: float = _help(
        "Share of the training data held out when eval_data is absent. 0 by default: every "
        "record of a document folder teaches a fact, and a held-out record is a fact the model "
        "never sees; set it (or eval_data) to watch an evaluation loss.",
        0.0,
    )
    output_dir: str = _help("Where the adapter, metrics and samples are written.", "outputs/lora")
    num_samples: int = _help("Generations written to samples.txt after training.", 3)
    train_on_prompt: bool = _help("Also compute the loss on prompt tokens.", False)
    packing: bool = _help("Concatenate examples up to max_length.", False)
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
    lora_r: int = _help("LoRA rank.", 64)
    lora_alpha: int = _help("LoRA scaling numerator (scale = alpha / r).", 16)
    output_dir: str = _help("Where the adapter, metrics and samples are written.", "outputs/qlora")
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)


@dataclass
class TransferLearningConfig:
    lora: LoraConfig = field(default_factory=LoraConfig)
    qlora: QLoraConfig = field(default_factory=QLoraConfig)


# --------------------------------------------------------------------------------------------------
# reinforcement_learning
# --------------------------------------------------------------------------------------------------


@dataclass
class PPOConfig:
    state_dim: int | None = _help(
        "Observation size; null takes it from the environment, a number must match it.", None
    )
    action_dim: int | None = _help(
        "Number of actions (Discrete) or action dimensions (Box); null takes it from the "
        "environment, a number must match it.",
        None,
    )
    hidden_dim: int = _help("Width of the two tanh hidden layers of actor and critic.", 64)
    learning_rate: float = _help("Adam learning rate (annealed linearly with anneal_lr).", 3e-4)
    gamma: float = _help("Discount factor.", 0.99)
    gae_lambda: float = _help("GAE lambda.", 0.95)
    eps_clip: float = _help("PPO clip range of the probability ratio.", 0.2)
    k_epochs: int = _help("Optimisation epochs over each rollout.", 4)
    batch_size: int = _help("Minibatch size.", 64)
    entropy_coef: float = _help("Entropy bonus weight.", 0.0)
    value_coef: float = _help("Value loss weight.", 0.5)
    num_envs: int = _help(
        "Environments collected in parallel through the vector-env interface (--num-envs).", 8
    )
    max_grad_norm: float | None = _help(
        "Clip the global gradient norm to this; null disables clipping.", 0.5
    )
    clip_value_loss: bool = _help(
        "Clip each value update to eps_clip around the rollout's value estimate.", False
    )
    target_kl: float | None = _help(
        "Stop an update early when the approximate KL to the rollout policy exceeds 1.5x this; "
        "null never stops early.",
        None,
    )
    anneal_lr: bool = _help(
        "Anneal the learning rate linearly to 0 over the training budget.", True
    )
    normalize_observations: bool = _help(
        "Normalise observations with running mean and variance (saved with the checkpoint).", False
    )
    normalize_rewards: bool = _help(
        "Scale rewards by the running standard deviation of the discounted return.", False
    )
    shared_features: bool = _help(
        "Actor and critic share their feature layers (false: separate networks).", False
    )


@dataclass
class DQNConfig:
    """Defaults: close to rl-baselines3-zoo's CartPole-v1 DQN (long training phases every 256
    steps, linear exploration over 8,000) with 3-step returns and normalised observations; they
    solve CartPole-v1 within 50,000 steps (scripts/benchmark_rl.py --defaults)."""

    state_dim: int | None = _help(
        "Observation size; null takes it from the environment, a number must match it.", None
    )
    action_dim: int | None = _help(
        "Number of actions; null takes it from the environment, a number must match it.", None
    )
    hidden_dim: int = _help("Width of the two ReLU hidden layers.", 128)
    learning_rate: float = _help("Adam learning rate.", 2.3e-3)
    gamma: float = _help("Discount factor.", 0.99)
    epsilon_start: float = _help("Exploration rate at the start.", 1.0)
    epsilon_end: float = _help("Exploration rate floor.", 0.04)
    epsilon_decay: float = _help(
        "Multiplicative epsilon decay per update (exponential schedule).", 0.995
    )
    epsilon_schedule: Literal["exponential", "linear"] = _help(
        "exponential: epsilon *= epsilon_decay after each update; linear: from epsilon_start to "
        "epsilon_end over exploration_steps environment steps.",
        "linear",
    )
    exploration_steps: int = _help(
        "Environment steps over which the linear schedule lowers epsilon.", 8_000
    )
    buffer_size: int = _help("Replay buffer capacity.", 100_000)
    batch_size: int = _help("Replay minibatch size.", 128)
    target_update: int = _help(
        "Updates (gradient steps) between target-network syncs; the default equals "
        "gradient_steps, one sync after every training phase.",
        64,
    )
    tau: float = _help(
        "Target sync weight: 1 copies the online network (hard update), less moves the target "
        "that fraction of the way (soft update).",
        1.0,
    )
    use_dueling: bool = _help("Dueling value/advantage heads.", True)
    double_dqn: bool = _help(
        "Double DQN targets: the online network picks the next action, the target evaluates it.",
        True,
    )
    learning_starts: int = _help("Environment steps of random play before the first update.", 1000)
    train_freq: int = _help(
        "Environment steps (all environments together) between training phases.", 256
    )
    gradient_steps: int = _help("Updates (gradient steps) per training phase.", 64)
    n_step: int = _help(
        "Multi-step returns: sum n rewards before bootstrapping (Rainbow); 1 is plain DQN.", 3
    )
    normalize_observations: bool = _help(
        "Normalise observations with running mean and variance (saved with the checkpoint); "
        "the statistics are frozen when learning starts, so the replay buffer stays valid.",
        True,
    )
    max_grad_norm: float | None = _help(
        "Clip the global gradient norm to this; null disables clipping.", 10.0
    )
    num_envs: int = _help(
        "Environments collected in parallel through the vector-env interface (--num-envs).", 1
    )


@dataclass
class RLTrainingConfig:
    env_id: str = _help("Gymnasium environment id (--env).", "CartPole-v1")
    total_timesteps: int | None = _help(
        "Environment steps to train for (--total-timesteps); null trains for max_episodes "
        "episodes instead.",
        None,
    )
    max_episodes: int = _help(
        "Episodes to train for (--episodes) when total_timesteps is null.", 1000
    )
    max_steps_per_episode: int | None = _help(
        "Cut an episode after this many steps (a time-limit truncation) when the environment's "
        "own limit is longer; null keeps the environment's limit.",
        500,
    )
    update_frequency: int = _help(
        "PPO: environment steps, all environments together, collected between updates (the "
        "rollout; rounded down to a multiple of ppo.num_envs). DQN uses dqn.train_freq.",
        2048,
    )
    save_frequency: int = _help(
        "Episodes between periodic checkpoints (at most max_checkpoints are kept).", 100
    )
    max_checkpoints: int = _help("Keep at most this many periodic checkpoints.", 3)
    eval_every_steps: int = _help(
        "Environment steps between deterministic evaluations of eval_episodes episodes; the best "
        "one is saved as best_model.pt. 0 evaluates only at the end.",
        10_000,
    )
    eval_episodes: int = _help("Episodes per evaluation (and evaluate-rl's default).", 10)
    output_dir: str = _help(
        "Folder of the runs when --output-dir is not given: "
        "<output_dir>/<algorithm>-<env>-seed<seed>.",
        "outputs/rl",
    )
    stop_at_reward: float | None = _help(
        "Stop early once an evaluation's mean return reaches this (CartPole-v1 counts as "
        "solved at 475); null trains for the whole budget.",
        None,
    )
    log_every_steps: int = _help(
        "Environment steps between training-metric records (losses and episode returns, "
        "averaged since the last record), taken at the next update.",
        1_000,
    )
    vector_env: Literal["sync", "async"] = _help(
        "Vector-env backend: sync steps the environments in this process, async in one "
        "subprocess each (only worth it for slow environments).",
        "sync",
    )


@dataclass
class ReinforcementLearningConfig:
    ppo: PPOConfig = field(default_factory=PPOConfig)
    dqn: DQNConfig = field(default_factory=DQNConfig)
    training: RLTrainingConfig = field(default_factory=RLTrainingConfig)

    def check(self, algorithm: str | None = None) -> None:
        """Range checks the types alone cannot express; raises ConfigurationError naming the key.

        `algorithm` ("ppo" or "dqn"): also the checks only that algorithm's run needs.
        """
        ppo, dqn, run = self.ppo, self.dqn, self.training

        def positive_or_null(value: float | None) -> bool:
            return value is None or value > 0

        rules = [
            ("ppo.hidden_dim", ppo.hidden_dim >= 1, "must be at least 1"),
            ("ppo.learning_rate", ppo.learning_rate > 0, "must be more than 0"),
            ("ppo.gamma", 0 <= ppo.gamma <= 1, "must be in [0, 1]"),
            ("ppo.gae_lambda", 0 <= ppo.gae_lambda <= 1, "must be in [0, 1]"),
            ("ppo.eps_clip", ppo.eps_clip > 0, "must be more than 0"),
            ("ppo.k_epochs", ppo.k_epochs >= 1, "must be at least 1"),
            ("ppo.batch_size", ppo.batch_size >= 1, "must be at least 1"),
            ("ppo.num_envs", ppo.num_envs >= 1, "must be at least 1"),
            ("ppo.max_grad_norm", positive_or_null(ppo.max_grad_norm), "must be > 0 or null"),
            ("ppo.target_kl", positive_or_null(ppo.target_kl), "must be > 0 or null"),
            ("dqn.hidden_dim", dqn.hidden_dim >= 1, "must be at least 1"),
            ("dqn.learning_rate", dqn.learning_rate > 0, "must be more than 0"),
            ("dqn.gamma", 0 <= dqn.gamma <= 1, "must be in [0, 1]"),
            ("dqn.epsilon_start", 0 <= dqn.epsilon_start <= 1, "must be in [0, 1]"),
            (
                "dqn.epsilon_end",
                0 <= dqn.epsilon_end <= dqn.epsilon_start,
                "must be in [0, epsilon_start]",
            ),
            ("dqn.epsilon_decay", 0 < dqn.epsilon_decay <= 1, "must be in (0, 1]"),
            ("dqn.exploration_steps", dqn.exploration_steps >= 0, "must be 0 or more"),
            ("dqn.batch_size", dqn.batch_size >= 1, "must be at least 1"),
            ("dqn.buffer_size", dqn.buffer_size >= dqn.batch_size, "must be >= dqn.batch_size"),
            ("dqn.target_update", dqn.target_update >= 1, "must be at least 1"),
            ("dqn.tau", 0 < dqn.tau <= 1, "must be in (0, 1]"),
            ("dqn.learning_starts", dqn.learning_starts >= 0, "must be 0 or more"),
            ("dqn.train_freq", dqn.train_freq >= 1, "must be at least 1"),
            ("dqn.gradient_steps", dqn.gradient_steps >= 1, "must be at least 1"),
            ("dqn.n_step", dqn.n_step >= 1, "must be at least 1"),
            ("dqn.max_grad_norm", positive_or_null(dqn.max_grad_norm), "must be > 0 or null"),
            ("dqn.num_envs", dqn.num_envs >= 1, "must be at least 1"),
            (
                "training.total_timesteps",
                positive_or_null(run.total_timesteps),
                "must be > 0 or null",
            ),
            ("training.max_episodes", run.max_episodes >= 1, "must be at least 1"),
            (
                "training.max_steps_per_episode",
                positive_or_null(run.max_steps_per_episode),
                "must be > 0 or null",
            ),
            (
                "training.update_frequency",
                algorithm == "dqn" or run.update_frequency >= ppo.num_envs,
                "must be at least ppo.num_envs (the rollout holds one step of every environment)",
            ),
            ("training.save_frequency", run.save_frequency >= 1, "must be at least 1"),
            ("training.max_checkpoints", run.max_checkpoints >= 1, "must be at least 1"),
            ("training.eval_every_steps", run.eval_every_steps >= 0, "must be 0 or more"),
            ("training.eval_episodes", run.eval_episodes >= 1, "must be at least 1"),
            ("training.log_every_steps", run.log_every_steps >= 1, "must be at least 1"),
        ]
        for key, ok, rule in rules:
            if not ok:
                section, name = key.split(".")
                value = getattr(getattr(self, section), name)
                raise ConfigurationError(
                    f"config key 'reinforcement_learning.{key}' is {value!r}; it {rule}."
                )


# --------------------------------------------------------------------------------------------------
# logging (train-lora, train-qlora and train-rl)
# --------------------------------------------------------------------------------------------------


@dataclass
class LoggingConfig:
    log_dir: str = _help("TensorBoard folder inside each run's output directory.", "logs")
    use_tensorboard: bool = _help("Write TensorBoard event files.", True)
    use_wandb: bool = _help("Also log to Weights & Biases (offline when no API key is set).", False)
    wandb_project: str = _help("Weights & Biases project name.", "llm-complete-toolkit")


def check_training_sections(config: ToolkitConfig) -> None:
    """Range check of common.seed, shared by the training commands (each command's own keys are
    checked by its section's `check`)."""
    if not 0 <= config.common.seed < 2**32:
        raise ConfigurationError(
            f"config key 'common.seed' is {config.common.seed!r}; it must be in [0, 2**32 - 1] "
            "(numpy's seed range)."
        )


# --------------------------------------------------------------------------------------------------
# qa_generation (generate-qa)
# --------------------------------------------------------------------------------------------------


@dataclass
class QaGenerationConfig:
    teacher: str | None = _help(
        "The model that writes the pairs: the URL of an OpenAI-compatible chat-completions server "
        "(LM Studio http://localhost:1234/v1, Ollama http://localhost:11434/v1, vLLM "
        "http://localhost:8000/v1, llama.cpp's server http://localhost:8080/v1) or a .gguf file "
        "run in-process by llama.cpp. --teacher overrides it.",
        None,
    )
    teacher_model: str | None = _help(
        "Model name sent to a server; null takes the one model the server lists (an error names "
        "them when it lists several).",
        None,
    )
    api_key_env: str = _help(
        "Environment variable holding the server's API key, sent as a bearer token when set.",
        "OPENAI_API_KEY",
    )
    pairs_per_chunk: int = _help(
        "Question/answer pairs asked per chunk, each about another window of sentences of it.", 3
    )
    sentences_per_pair: int = _help(
        "Sentences a pair is asked about: small teachers write grounded pairs about one or two "
        "sentences, and invent when given a whole chunk.",
        2,
    )
    concurrency: int = _help(
        "Requests in flight at once to an HTTP teacher (a .gguf teacher runs one at a time).", 1
    )
    structured_output: Literal["auto", "json_schema", "json_object", "ollama", "prompt"] = _help(
        "How the reply is held to the pair's JSON schema: auto probes once per run, in this order, "
        "json_schema (OpenAI response_format; LM Studio, vLLM), json_object (response_format "
        "json_object with a schema; llama-cpp-python's server), ollama (Ollama's format), prompt "
        "(JSON asked for in the prompt only). A .gguf teacher always uses a grammar.",
        "auto",
    )
    temperature: float = _help("Sampling temperature of the teacher (0: greedy).", 0.0)
    max_tokens: int = _help("Longest reply, in tokens.", 256)
    request_timeout: float = _help("Seconds one request may take before it is retried.", 120.0)
    max_retries: int = _help(
        "Retries of a request that failed with a connection error, timeout, HTTP 429 or 5xx "
        "(exponential backoff with jitter), or whose reply did not parse.",
        2,
    )
    max_consecutive_failures: int = _help(
        "Stop the run after this many requests in a row failed (errors or empty replies); what "
        "was finished stays cached.",
        8,
    )
    min_grounding: float = _help(
        "Grounding check: share of the answer's content words that must occur in its chunk.", 0.75
    )
    near_duplicate_threshold: float = _help(
        "Questions of one document whose word sets overlap this much (Jaccard) are duplicates; "
        "the first is kept.",
        0.8,
    )
    judge: bool = _help(
        "Also ask the teacher to rate every pair that passed the filters (--judge).", False
    )
    judge_min_rating: int = _help("With judge: pairs rated below this (1 to 5) are dropped.", 4)
    valid_ratio: float = _help(
        "Share of documents whose pairs go to valid.jsonl (whole documents, by hash of the path).",
        0.0,
    )
    test_ratio: float = _help(
        "Share of documents whose pairs go to test.jsonl (whole documents, by hash of the path). "
        "0 by default, like the other splits: a document held out teaches nothing.",
        0.0,
    )
    context_size: int = _help("Context window (tokens) of a .gguf teacher.", 2048)

    def check(self) -> None:
        """Range checks the types alone cannot express; raises ConfigurationError naming the key."""
        rules = [
            ("pairs_per_chunk", 1 <= self.pairs_per_chunk <= 100, "must be in [1, 100]"),
            ("sentences_per_pair", 1 <= self.sentences_per_pair <= 20, "must be in [1, 20]"),
            ("concurrency", 1 <= self.concurrency <= 256, "must be in [1, 256]"),
            ("temperature", 0.0 <= self.temperature <= 2.0, "must be in [0, 2]"),
            ("max_tokens", 16 <= self.max_tokens <= 32768, "must be in [16, 32768]"),
            ("request_timeout", self.request_timeout > 0, "must be more than 0 seconds"),
            ("max_retries", 0 <= self.max_retries <= 20, "must be in [0, 20]"),
            ("max_consecutive_failures", self.max_consecutive_failures >= 1, "must be at least 1"),
            ("min_grounding", 0.0 <= self.min_grounding <= 1.0, "must be in [0, 1]"),
            (
                "near_duplicate_threshold",
                0.0 < self.near_duplicate_threshold <= 1.0,
                "must be in (0, 1]",
            ),
            ("judge_min_rating", 1 <= self.judge_min_rating <= 5, "must be in [1, 5]"),
            ("valid_ratio", 0.0 <= self.valid_ratio < 1.0, "must be in [0, 1)"),
            ("test_ratio", 0.0 <= self.test_ratio < 1.0, "must be in [0, 1)"),
            (
                "test_ratio",
                self.valid_ratio + self.test_ratio < 1.0,
                "must leave documents for training: valid_ratio + test_ratio must be below 1",
            ),
            ("context_size", 256 <= self.context_size <= 1_048_576, "must be in [256, 1048576]"),
        ]
        for key, ok, rule in rules:
            if not ok:
                raise ConfigurationError(
                    f"config key 'qa_generation.{key}' is {getattr(self, key)!r}; it {rule}."
                )


@dataclass
class ToolkitConfig:
    common: CommonConfig = field(default_factory=CommonConfig)
    document_processing: DocumentProcessingConfig = field(default_factory=DocumentProcessingConfig)
    transfer_learning: TransferLearningConfig = field(default_factory=TransferLearningConfig)
    reinforcement_learning: ReinforcementLearningConfig = field(
        default_factory=ReinforcementLearningConfig
    )
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    qa_generation: QaGenerationConfig = field(default_factory=QaGenerationConfig)


# --------------------------------------------------------------------------------------------------
# Keys that moved: each command's keys are in its own section now
# --------------------------------------------------------------------------------------------------


def _fine_tuning(path: str) -> str:
    return (
        f"'transfer_learning.lora.{path}' (train-lora) and 'transfer_learning.qlora.{path}' "
        "(train-qlora)"
    )


# An old key in a user's YAML (or a dotted override) gets "moved to" instead of "unknown key".
MOVED_KEYS: dict[str, str] = {
    "common.output_dir": (
        "moved to 'reinforcement_learning.training.output_dir' (train-rl was its only reader); "
        "runs now go to <output_dir>/<algorithm>-<env>-seed<seed>, so append /rl to your value "
        "to keep the same folders"
    ),
    "evaluation.eval_frequency": f"moved to {_fine_tuning('training.eval_steps')}",
    "evaluation.num_samples": f"moved to {_fine_tuning('num_samples')}",
    "evaluation.eval_episodes": "moved to 'reinforcement_learning.training.eval_episodes'",
    "checkpoint.save_steps": f"moved to {_fine_tuning('training.save_steps')}",
    "checkpoint.max_checkpoints": (
        f"moved to {_fine_tuning('training.max_checkpoints')} and "
        "'reinforcement_learning.training.max_checkpoints' (train-rl)"
    ),
    **{
        f"early_stopping.{f.name}": f"moved to {_fine_tuning(f'early_stopping.{f.name}')}"
        for f in dataclasses.fields(EarlyStoppingConfig)
    },
    "document_processing.pdf.use_pdfplumber_first": (
        "was removed: it only restated the engine — set 'document_processing.pdf.engine' "
        "(pdfplumber, pypdf or pypdfium2)"
    ),
    "document_processing.pdf.fallback_to_pypdf2": (
        "moved to 'document_processing.pdf.fallback_to_pypdf' (the fallback engine is pypdf)"
    ),
}
MOVED_SECTIONS = ("evaluation", "checkpoint", "early_stopping")


def _moved_error(key: str, value: Any) -> ConfigurationError | None:
    """The "moved to" error of an old key or section, or None when `key` never existed."""
    if key in MOVED_KEYS:
        return ConfigurationError(f"config key '{key}' {MOVED_KEYS[key]}.")
    if key not in MOVED_SECTIONS:
        return None
    for name in value if isinstance(value, dict) else ():
        if f"{key}.{name}" in MOVED_KEYS:
            return _moved_error(f"{key}.{name}", None)
    where = "; ".join(f"{old} {new}" for old, new in MOVED_KEYS.items() if old.startswith(key))
    return ConfigurationError(f"config section '{key}' was split by command: {where}.")


# --------------------------------------------------------------------------------------------------
# Loading, coercion and overrides
# --------------------------------------------------------------------------------------------------


def _did_you_mean(name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(v) for v in typing.get_args(tp))
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " | ".join(_type_name(arg) for arg in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _shown(value: Any, limit: int = 80) -> str:
    """`repr(value)` cut to `limit` characters: an error message never prints a huge value."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` as type `tp`, or raise ConfigurationError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigurationError:
                continue
    elif origin is Literal:
        choices = typing.get_args(tp)
        if value in choices:
            return value
        hint = _did_you_mean(str(value), [str(c) for c in choices])
        raise ConfigurationError(
            f"config key '{key}' is {_shown(value)}; choose one of "
            f"{', '.join(map(repr, choices))}.{hint}"
        )
    elif origin is list:
        if isinstance(value, list):
            (item_tp,) = typing.get_args(tp)
            return [_coerce(item, item_tp, f"{key}[{i}]") for i, item in enumerate(value)]
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        number = _finite_float(value, key)
        if number is not None and number.is_integer():
            if abs(number) > _EXACT_FLOAT_INTEGERS:
                raise ConfigurationError(
                    f"config key '{key}' is {_shown(value)}, too large to be an exact integer; "
                    "write the whole number out, or a sensible one."
                )
            return int(number)
    elif tp is float:
        number = _finite_float(value, key)
        if number is not None:
            return number
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ConfigurationError(
        f"config key '{key}' must be {_type_name(tp)}, got {_shown(value)} "
        f"({type(value).__name__})."
    )


# Integers above 2**53 written as floats (1e23) are not what they look like: 1e23 is
# 99999999999999991611392. No setting needs that many of anything.
_EXACT_FLOAT_INTEGERS = 2**53


def _finite_float(value: Any, key: str) -> float | None:
    """`value` as a float when it is a number or numeric text (`2e-4`, `1_000`), else None.

    Infinity and NaN are refused: no setting means "forever" by them, and they turn into
    overflows or endless loops further on.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        number = float(value.replace("_", "")) if isinstance(value, str) else float(value)
    except (ValueError, OverflowError):
        return None
    if not math.isfinite(number):
        raise ConfigurationError(
            f"config key '{key}' is {_shown(value)}; it must be a finite number."
        )
    return number


def _build(cls: type, data: Any, prefix: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys."""
    where = prefix or "the top level"
    if not isinstance(data, dict):
        raise ConfigurationError(f"config section '{where}' must be a mapping, got {_shown(data)}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            moved = _moved_error(key, value)
            if moved is not None:
                raise moved
            valid = sorted(fields)
            raise ConfigurationError(
                f"unknown config key '{key}'.{_did_you_mean(str(name), valid)} "
                f"Valid keys in {where}: {', '.join(valid)}."
            )
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value if value is not None else {}, key)
        else:
            kwargs[name] = _coerce(value, tp, key)
    return cls(**kwargs)


class _SafeLoader(yaml.SafeLoader):
    """Safe loader that also reads floats without a dot (`2e-4`); YAML 1.1 leaves them strings."""


_SafeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?(?:[eE][-+]?[0-9]+)?
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def read_yaml(path: Path) -> Any:
    """Read a YAML file with safe loading; errors name the file and line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigurationError(
            f"config file '{path}' not found; pass an existing file with --config."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"config file '{path}' cannot be read: {exc}.") from None
    # Config errors exit 2, also the refusals below (an alias or a python tag is never run).
    try:
        alias = first_yaml_alias(text)
        if alias is not None:
            raise ConfigurationError(
                f"{path}:{alias.start_mark.line + 1}: refused YAML alias (*{alias.anchor}); "
                "aliases can expand to gigabytes, so write the value out instead."
            )
        return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigurationError(
            f"{path}{line}: refused YAML tag ({exc.problem}); only plain YAML is allowed."
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigurationError(f"{path}{line}: invalid YAML ({problem}).") from None


def config_from_dict(data: dict[str, Any]) -> ToolkitConfig:
    """Build a `ToolkitConfig` from a (possibly partial) nested mapping."""
    return _build(ToolkitConfig, data or {}, "")


def load_config(path: str | Path | None = None) -> ToolkitConfig:
    """Load a config file over the dataclass defaults.

    `path` is relative to the current directory; `None` loads the shipped `configs/default.yaml`,
    found relative to the repository wherever the user stands.
    """
    config_path = Path(path) if path is not None else DEFAULT_CONFIG_PATH
    data = read_yaml(config_path)
    if data is None:
        data = {}
    try:
        return config_from_dict(data)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{config_path}: {exc}") from None


def apply_overrides(config: Any, overrides: dict[str, Any]) -> None:
    """Set dotted keys (`document_processing.chunk_size`) from command-line flags, in place.

    `None` values are flags the user did not give and leave the config as it is.
    """
    for dotted, value in overrides.items():
        if value is None:
            continue
        if isinstance(config, ToolkitConfig) and dotted in MOVED_KEYS:
            raise ConfigurationError(f"config key '{dotted}' {MOVED_KEYS[dotted]}.")
        *parents, leaf = dotted.split(".")
        target = config
        for part in parents:
            target = getattr(target, part)
        hints = typing.get_type_hints(type(target))
        if leaf not in hints:
            raise ConfigurationError(f"unknown config key '{dotted}'.")
        setattr(target, leaf, _coerce(value, hints[leaf], dotted))


def render_default_yaml() -> str:
    """`configs/default.yaml` as generated from the dataclasses: every key, its default, its help.

    The shipped file is this text (a test checks it), so the defaults live only in the dataclasses.
    """
    lines = [
        "# LLM Complete Toolkit configuration: every key, with its default.",
        "# Generated from shared_utils/config.py by `python scripts/write_default_config.py`.",
        "# Copy this file, change what you need and pass it with --config; command-line flags",
        "# override the file, and the file overrides these defaults.",
    ]
    _render_section(ToolkitConfig(), 0, lines)
    return "\n".join(lines) + "\n"


def _render_section(section: Any, depth: int, lines: list[str]) -> None:
    indent = "  " * depth
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            if depth == 0:
                lines.append("")
            lines.append(f"{indent}{f.name}:")
            _render_section(value, depth + 1, lines)
            continue
        rendered = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
        rendered = rendered.removesuffix("\n...").removesuffix("...").strip()
        help_text = f.metadata.get("help", "")
        lines.append(f"{indent}{f.name}: {rendered}" + (f"  # {help_text}" if help_text else ""))


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def dump_config(config: Any) -> str:
    """The resolved config as YAML, in declaration order."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, allow_unicode=True)
