"""LoRA fine-tuning of Hugging Face causal LMs with peft and the Hugging Face Trainer.

`LoRAFineTuner` holds the one LoRA implementation of the toolkit; `QLoRAFineTuner`
(`qlora_finetuner.py`) only swaps the base-model loader for a 4-bit one. A run is:

    tuner = LoRAFineTuner.from_config(config)            # tokenizer now, model on first use
    train = tuner.prepare_dataset(texts)       # or prepare_instruction_dataset, load_jsonl
    result = tuner.train(train, eval_dataset, output_dir="outputs/lora")

Why the Hugging Face Trainer and not TRL's SFTTrainer: the data side (chat templates, response-only
labels, packing without cross-example attention) lives in `shared_utils/data_loader.py` where it is
tested token by token, so the plain Trainer is all that is left to need, and it is one dependency
fewer with a stable checkpoint/resume format.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared_utils.config import LoraConfig, ToolkitConfig, check_training_sections, dump_config
from shared_utils.data_loader import (
    CHARS_PER_TOKEN_GUESS,
    DataLoaderFactory,
    detect_format,
    normalize_record,
    render_chat_template,
)
from shared_utils.errors import ConfigurationError, DataValidationError, TrainingError
from shared_utils.file_utils import _umask, atomic_write_json, atomic_write_text
from training_methods.transfer_learning.model_loading import (
    load_causal_lm,
    load_tokenizer,
    recorded_name,
)

if TYPE_CHECKING:
    import datasets
    import torch
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint"
BEST_ADAPTER_DIR = "best_adapter"
EARLY_STOPPING_STATE = "early_stopping.json"
SAMPLE_MAX_NEW_TOKENS = 48


# --------------------------------------------------------------------------------------------------
# Loading models and tokenizers
# --------------------------------------------------------------------------------------------------


def find_linear_module_names(model: torch.nn.Module) -> list[str]:
    """Names (last path component) of every linear layer except the output head.

    Covers `torch.nn.Linear`, GPT-2's `Conv1D` (c_attn, c_proj, c_fc) and bitsandbytes'
    `Linear4bit`/`Linear8bitLt`, which subclass `torch.nn.Linear`.
    """
    import torch
    from transformers.pytorch_utils import Conv1D

    output_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = set()
    for name, module in model.named_modules():
        if module is output_head or not name:
            continue
        if isinstance(module, (torch.nn.Linear, Conv1D)):
            names.add(name.rsplit(".", 1)[-1])
    names.discard("lm_head")
    return sorted(names)


def uses_conv1d(model: torch.nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(module, Conv1D) for module in model.modules())


def autocast_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the GPU supports it, else fp16 on GPUs; fp32 on CPU and MPS."""
    import torch

    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


# Causal LMs whose output is exactly `lm_head(decoder(...))`: no logit scaling or soft-capping.
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "smollm3"})


def supports_labelled_positions_loss(model: torch.nn.Module) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base, "config", None)
    return getattr(config, "model_type", None) in PLAIN_HEAD_MODEL_TYPES and hasattr(
        base, "get_decoder"
    )


def labelled_positions_loss(
    model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
) -> torch.Tensor:
    """The causal-LM loss with the output layer applied only at positions whose next token is
    learned. Prompts, system turns and padding carry no label, and for a 50k-token vocabulary the
    output layer and its softmax are a fifth of the compute and most of the activation memory;
    the result equals the model's own loss (summed over labelled tokens, divided by their count,
    or by `num_items_in_batch` under gradient accumulation)."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    hidden = base.get_decoder()(**inputs, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    learned = targets != -100
    logits = base.get_output_embeddings()(hidden[:, :-1][learned]).float()
    loss = torch.nn.functional.cross_entropy(logits, targets[learned], reduction="sum")
    count = num_items_in_batch if num_items_in_batch is not None else learned.sum()
    if isinstance(count, torch.Tensor):
        count = count.to(loss.device)
    return loss / count


# --------------------------------------------------------------------------------------------------
# Trainer pieces: NaN guard, metrics, early stopping
# --------------------------------------------------------------------------------------------------


def _trainer_class():
    from transformers import Trainer

    class GuardedTrainer(Trainer):
        """A Trainer that stops on a non-finite loss before the optimizer applies it, and
        computes the output layer only where a label is learned (`labelled_positions_loss`)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
            if return_outputs or not supports_labelled_positions_loss(model):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # accelerate autocasts model.forward only; this loss calls the decoder directly.
            with self.accelerator.autocast():
                return labelled_positions_loss(model, inputs, num_items_in_batch)

        def training_step(self, model, inputs, num_items_in_batch=None):  # noqa: ANN001
            import torch

            loss = super().training_step(model, inputs, num_items_in_batch)
            if not torch.isfinite(loss).all():
                last = _last_checkpoint(Path(self.args.output_dir))
                kept = f"last good checkpoint: {last}" if last else "no checkpoint was saved yet"
                raise TrainingError(
                    f"loss became {loss.item()} at step {self.state.global_step + 1} ({kept}) — "
                    "lower training.learning_rate or check the data for broken records"
                )
            return loss

        def create_optimizer(self, model=None):  # noqa: ANN001
            ratio = getattr(self, "loraplus_lr_ratio", 0.0)
            if not ratio or self.optimizer is not None:
                return super().create_optimizer(model)
            from peft.optimizers import create_loraplus_optimizer

            # LoRA+: the B matrices learn `ratio` times faster than the A matrices.
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
            kwargs = {key: value for key, value in kwargs.items() if key != "lr"}
            self.optimizer = create_loraplus_optimizer(
                model=model or self.model,
                optimizer_cls=optimizer_cls,
                lr=self.args.learning_rate,
                loraplus_lr_ratio=ratio,
                weight_decay=self.args.weight_decay,
                **kwargs,
            )
            return self.optimizer

    return GuardedTrainer


def _callbacks(metrics_logger, early_stopping_config, model, output_dir: Path):
    from transformers import TrainerCallback

    from shared_utils.training_utils import EarlyStopping

    class MetricsCallback(TrainerCallback):
        """Trainer logs → MetricsLogger (metrics.jsonl, TensorBoard, W&B), perplexity added."""

        active = True  # off for the final evaluation, which is logged as `final_eval`

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if not self.active or not state.is_world_process_zero or not logs:
                return
            values = {k: v for k, v in logs.items() if isinstance(v, (int, float))}
            evals = {k.removeprefix("eval_"): v for k, v in values.items() if k.startswith("eval_")}
            if evals:
                if "loss" in evals:
                    evals["perplexity"] = _perplexity(evals["loss"])
                metrics_logger.log(evals, step=state.global_step, split="eval")
            trains = {k: v for k, v in values.items() if not k.startswith("eval_")}
            if trains:
                metrics_logger.log(trains, step=state.global_step, split="train")

    class EarlyStoppingCallback(TrainerCallback):
        """Stops after `patience` evaluations without improvement; keeps the best adapter."""

        def __init__(self) -> None:
            self.stopper = EarlyStopping(
                patience=early_stopping_config.patience,
                min_delta=early_stopping_config.min_delta,
                mode="min",
            )
            self.stopped_early = False

        active = True

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):  # noqa: ANN001
            if not self.active or not metrics or "eval_loss" not in metrics:
                return
            should_stop = self.stopper.step(float(metrics["eval_loss"]), state.global_step)
            if self.stopper.improved and state.is_world_process_zero:
                save_files_atomically(output_dir / BEST_ADAPTER_DIR, model.save_pretrained)
            if should_stop and early_stopping_config.enabled:
                self.stopped_early = True
                control.should_training_stop = True

        def on_save(self, args, state, control, **kwargs):  # noqa: ANN001
            if state.is_world_process_zero:
                folder = output_dir / f"{CHECKPOINT_PREFIX}-{state.global_step}"
                if folder.is_dir():
                    atomic_write_json(folder / EARLY_STOPPING_STATE, self.stopper.state_dict())

    return MetricsCallback(), EarlyStoppingCallback()


def save_files_atomically(folder: Path, *savers: Callable[[str], Any]) -> None:
    """Run `save_pretrained`-style savers into a temporary folder, then move each file into
    `folder` with an atomic rename: a crash never leaves a half-written adapter file."""
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=folder))
    try:
        for save in savers:
            save(str(staging))
        for path in staging.iterdir():
            if path.is_file():
                path.chmod(0o666 & ~_umask())
                os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 50 else float("inf")


def _checkpoint_folders(output_dir: Path) -> list[Path]:
    """The `checkpoint-N` folders of a run, newest (highest N) first."""
    if not output_dir.is_dir():
        return []
    folders = [
        path
        for path in output_dir.iterdir()
        if re.fullmatch(rf"{CHECKPOINT_PREFIX}-\d+", path.name) and path.is_dir()
    ]
    return sorted(folders, key=_checkpoint_step, reverse=True)


def _is_complete_checkpoint(folder: Path) -> bool:
    """The Trainer writes `trainer_state.json` after the weights, optimizer and scheduler, so a
    checkpoint without a readable one was cut short while it was being saved."""
    try:
        state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(state, dict)
        and "global_step" in state
        and (folder / "adapter_model.safetensors").is_file()
    )


def _last_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    return next((f for f in _checkpoint_folders(output_dir) if _is_complete_checkpoint(f)), None)


def _checkpoint_step(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[-1])


# --------------------------------------------------------------------------------------------------
# The fine-tuner
# --------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What a training run produced; also written as training_summary.json."""

    output_dir: str
    global_step: int
    train_loss: float | None
    eval_loss: float | None
    eval_perplexity: float | None
    best_eval_loss: float | None
    best_step: int | None
    stopped_early: bool
    restored_best: bool
    resumed_from: str | None
    train_runtime_s: float
    train_samples_per_second: float | None
    train_examples: int
    eval_examples: int
    epochs: float
    epochs_reason: str  # why epochs differ from training.num_epochs; empty when they do not
    peak_rss_mb: float
    cuda_peak_allocated_mb: float | None
    data: dict[str, Any] = field(default_factory=dict)


class LoRAFineTuner:
    """LoRA adapters on a causal LM, trained with the Hugging Face Trainer."""

    quantized = False
    section = "lora"

    def __init__(self, config: ToolkitConfig) -> None:
        """Every setting comes from `transfer_learning.<section>` of `config`, which owns their
        defaults; `from_config` checks them first."""
        from shared_utils.training_utils import resolve_device

        self.config = config
        section = self.section_config
        # A local folder or GGUF file is recorded absolute in adapter_config.json, so merge,
        # export and chat find the base from wherever they run.
        self.model_name = recorded_name(section.model_name)
        self.lora_r = section.lora_r
        self.lora_alpha = section.lora_alpha
        self.lora_dropout = section.lora_dropout
        self.target_modules = section.target_modules
        self.max_length = section.max_length
        self.device = resolve_device(config.common.device)
        self.tokenizer = load_tokenizer(section.model_name)
        self.data = DataLoaderFactory(
            self.tokenizer,
            section.max_length,
            train_on_prompt=section.train_on_prompt,
            packing=section.packing,
            seed=config.common.seed,
        )
        self._model: PreTrainedModel | None = None
        self._base_lowered_for_training = False  # set by _load_base_model

    @classmethod
    def from_config(cls, config: ToolkitConfig) -> LoRAFineTuner:
        """A fine-tuner with every setting from `transfer_learning.<lora|qlora>` of `config`."""
        section: LoraConfig = getattr(config.transfer_learning, cls.section)
        section.check(f"transfer_learning.{cls.section}")
        check_training_sections(config)
        return cls(config)

    @property
    def section_config(self) -> LoraConfig:
        return getattr(self.config.transfer_learning, self.section)

    # ---------------------------------------------------------------------------- model

    @property
    def model(self) -> PreTrainedModel:
        """The peft model; the base is loaded on first use."""
        if self._model is None:
            self._model = self._wrap_with_lora(self._load_base_model())
        return self._model

    def _load_base_model(self) -> PreTrainedModel:
        dtype = self.base_dtype()
        self._base_lowered_for_training = dtype != autocast_dtype(self.device)
        return load_causal_lm(self.model_name, dtype=dtype)

    def base_dtype(self) -> torch.dtype:
        """The dtype the frozen base is held in: the GPU's half precision, and bf16 on a CPU
        whose training autocasts to bf16 (AVX512-BF16, AMX), where a float32 base would be cast
        to bf16 again at every step (SmolLM2-135M: about 1.25x faster steps); float32
        elsewhere. The LoRA weights stay float32 (peft keeps adapters in float32), and after
        training the adapter is put on the float32 base again (`_float32_base_again`)."""
        import torch

        from shared_utils.training_utils import mixed_precision_dtype

        training = self.section_config.training
        if mixed_precision_dtype(training.mixed_precision, self.device) == torch.bfloat16:
            return torch.bfloat16
        return autocast_dtype(self.device)

    def _autocasts_like_its_base(self) -> bool:
        """Whether training autocasts to the dtype the base weights are held in. Then peft need
        not cast each LoRA input up to float32 (a copy of every activation, a fifth of a CPU
        step) only for the autocast to cast it back down."""
        from shared_utils.training_utils import mixed_precision_dtype

        training = self.section_config.training
        autocast = mixed_precision_dtype(training.mixed_precision, self.device)
        return autocast is not None and self.model.get_base_model().dtype == autocast

    def resolved_target_modules(self, model: torch.nn.Module) -> list[str]:
        if self.target_modules == "auto":
            names = find_linear_module_names(model)
            if not names:
                raise ConfigurationError(
                    f"target_modules: auto found no linear layer in {self.model_name!r} — list the "
                    f"module names in transfer_learning.{self.section}.target_modules"
                )
            return names
        wanted = (
            [self.target_modules] if isinstance(self.target_modules, str) else self.target_modules
        )
        present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
        missing = [name for name in wanted if name not in present]
        if missing:
            raise ConfigurationError(
                f"transfer_learning.{self.section}.target_modules: {', '.join(missing)} not in "
                f"{self.model_name!r}; its linear layers are "
                f"{', '.join(find_linear_module_names(model))} (or use auto)"
            )
        return list(wanted)

    def _wrap_with_lora(self, model: PreTrainedModel) -> PreTrainedModel:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        peft_config = PeftLoraConfig(
            r=self.lora_r,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
            target_modules=self.resolved_target_modules(model),
            fan_in_fan_out=uses_conv1d(model),  # GPT-2's Conv1D stores weights transposed
            bias="none",
            task_type="CAUSAL_LM",
        )
        # Training needs no KV cache, and packed rows need its absence: without a cache,
        # transformers derives a per-example causal mask from the restarting position ids.
        model.config.use_cache = False
        if self.section_config.training.gradient_checkpointing:
            model.enable_input_require_grads()  # gradients must reach the frozen embeddings' output
        peft_model = get_peft_model(model, peft_config)
        # The base as the user named it (a GGUF file rather than its cached dequantised folder).
        peft_model.peft_config["default"].base_model_name_or_path = self.model_name
        trainable, total = peft_model.get_nb_trainable_parameters()
        logger.info(
            "LoRA r=%d alpha=%d on %s: %d trainable of %d parameters (%.2f%%)",
            self.lora_r,
            self.lora_alpha,
            ", ".join(peft_config.target_modules),
            trainable,
            total,
            100.0 * trainable / max(total, 1),
        )
        return peft_model

    # ---------------------------------------------------------------------------- data

    def prepare_dataset(self, texts: Sequence[str], max_length: int | None = None):
        """Plain texts for causal-LM training: every token is learned, EOS appended."""
        rows = [
            {"prompt": "", "completion": text, "messages": []} for text in texts if text.strip()
        ]
        return self._dataset_from_rows(rows, max_length)

    def prepare_instruction_dataset(self, instructions: Sequence[Mapping[str, Any]]):
        """Alpaca, chat, prompt/completion or text records: loss on the responses only."""
        rows = []
        for index, record in enumerate(instructions):
            where = f"instructions[{index}]"
            record_format = detect_format(record)
            if record_format is None:
                raise DataValidationError(
                    f"{where}: a record the trainer cannot use (keys: {', '.join(sorted(record))})"
                )
            row = normalize_record(record, record_format, where)
            if row is not None:
                rows.append(row)
        return self._dataset_from_rows(rows)

    def load_jsonl(self, path: str | Path, *, flag: str = "--train-data") -> datasets.Dataset:
        """Normalised rows of a JSONL file (streamed into the Arrow cache), not yet tokenised;
        `flag` names the file in the message when it is missing."""
        return self.data.load_rows(path, flag=flag)

    def tokenize(self, rows: datasets.Dataset, *, shuffle: bool = False) -> datasets.Dataset:
        return self.data.build_dataset(rows, shuffle=shuffle)

    def _dataset_from_rows(self, rows: list[dict[str, Any]], max_length: int | None = None):
        import datasets

        if not rows:
            raise DataValidationError("no usable record: every text or response is empty")
        if max_length is not None and max_length != self.data.max_length:
            self.data.max_length = max_length
            self.data.example_tokenizer.max_length = max_length
        features = datasets.Features(
            {
                "prompt": datasets.Value("string"),
                "completion": datasets.Value("string"),
                "messages": datasets.List(
                    {"role": datasets.Value("string"), "content": datasets.Value("string")}
                ),
            }
        )
        table = datasets.Dataset.from_list(rows, features=features)
        return self.data.build_dataset(table, shuffle=True)

    # ---------------------------------------------------------------------------- training

    def epochs_for(self, train_examples: int) -> tuple[float, str]:
        """(epochs, why): `training.num_epochs`, raised to whole epochs on a small data set until
        the run takes `training.min_steps` optimiser steps."""
        import math

        training = self.section_config.training
        per_update = training.batch_size * training.gradient_accumulation_steps * world_size()
        steps_per_epoch = max(1, math.ceil(train_examples / per_update))
        wanted = math.ceil(training.min_steps / steps_per_epoch)
        if training.max_steps == -1 and wanted > training.num_epochs:
            return float(wanted), (
                f"raised from {training.num_epochs:g} so that {train_examples} examples get "
                f"training.min_steps={training.min_steps} steps"
            )
        return training.num_epochs, ""

    def training_arguments(self, output_dir: Path, has_eval: bool, epochs: float | None = None):
        from transformers import TrainingArguments

        from shared_utils.training_utils import mixed_precision_dtype

        training = self.section_config.training
        device_type = self.device.type
        autocast = mixed_precision_dtype(training.mixed_precision, self.device)
        import torch

        return TrainingArguments(
            output_dir=str(output_dir),
            num_train_epochs=training.num_epochs if epochs is None else epochs,
            max_steps=training.max_steps,
            per_device_train_batch_size=training.batch_size,
            per_device_eval_batch_size=training.batch_size,
            gradient_accumulation_steps=training.gradient_accumulation_steps,
            learning_rate=training.learning_rate,
            weight_decay=training.weight_decay,
            warmup_steps=training.warmup_ratio,  # a float below 1 is a share of the total steps
            lr_scheduler_type=training.lr_scheduler_type,
            max_grad_norm=training.max_grad_norm,
            optim=self.optimizer_name(),
            logging_steps=training.logging_steps,
            logging_first_step=True,
            activation_checkpointing=training.gradient_checkpointing,
            activation_checkpointing_kwargs={"use_reentrant": False},
            train_sampling_strategy=(
                "group_by_length"
                if training.group_by_length and not self.data.packing
                else "random"
            ),
            length_column_name="length",
            save_strategy="steps",
            save_steps=training.save_steps,
            save_total_limit=training.max_checkpoints,
            eval_strategy="steps" if has_eval else "no",
            eval_steps=training.eval_steps,
            seed=self.config.common.seed,
            data_seed=self.config.common.seed,
            bf16=autocast == torch.bfloat16,
            fp16=autocast == torch.float16,
            # Only the loss: gathering logits (examples x length x vocabulary) for metrics nobody
            # computes would take gigabytes on a 50k-token vocabulary.
            prediction_loss_only=True,
            use_cpu=device_type == "cpu",
            report_to="none",  # MetricsLogger does TensorBoard and W&B itself
            remove_unused_columns=False,
            dataloader_num_workers=0,
            disable_tqdm=False,
        )

    def optimizer_name(self) -> str:
        optim = self.section_config.training.optim
        if optim == "auto":
            return "adamw_torch"
        return optim

    def train(
        self,
        train_dataset: datasets.Dataset,
        eval_dataset: datasets.Dataset | None = None,
        output_dir: str | Path | None = None,
        *,
        resume: bool = False,
        samples_from: datasets.Dataset | None = None,
        callbacks: Sequence[Any] = (),
    ) -> TrainResult:
        """Train the adapter and write it with its metrics, plot and samples to `output_dir`.

        `samples_from` holds normalised rows whose prompts seed samples.txt; `callbacks` are extra
        `transformers.TrainerCallback`s.
        """
        import torch
        from peft.helpers import disable_input_dtype_casting
        from transformers.trainer_utils import set_seed

        from shared_utils.training_utils import (
            MetricsLogger,
            cuda_peak_allocated_mb,
            peak_rss_mb,
        )

        output_dir = Path(output_dir or self.section_config.output_dir)
        resume_checkpoint = self._checkpoint_to_resume(output_dir, resume)
        set_seed(self.config.common.seed)
        epochs, epochs_reason = self.epochs_for(len(train_dataset))
        args = self.training_arguments(output_dir, has_eval=eval_dataset is not None, epochs=epochs)
        is_main = args.process_index == 0
        metrics_logger = (
            MetricsLogger(
                output_dir,
                self.config.logging,
                run_name=f"train-{self.section}",
                config=json.loads(json.dumps(_config_dict(self.config), default=str)),
                resume_from_step=_checkpoint_step(resume_checkpoint) if resume_checkpoint else None,
            )
            if is_main
            else _NullLogger()
        )
        metrics_callback, stopping = _callbacks(
            metrics_logger, self.section_config.early_stopping, self.model, output_dir
        )
        if resume_checkpoint is not None:
            state_file = resume_checkpoint / EARLY_STOPPING_STATE
            if state_file.is_file():
                stopping.stopper.load_state_dict(json.loads(state_file.read_text()))
        trainer = _trainer_class()(
            model=self.model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            data_collator=self.data.collator,
            callbacks=[metrics_callback, stopping, *callbacks],
        )
        trainer.loraplus_lr_ratio = self.section_config.training.loraplus_lr_ratio
        started = time.monotonic()
        try:
            with disable_input_dtype_casting(self.model, active=self._autocasts_like_its_base()):
                output = trainer.train(
                    resume_from_checkpoint=str(resume_checkpoint) if resume_checkpoint else None
                )
        except KeyboardInterrupt:
            if trainer.state.global_step > 0:
                trainer._save_checkpoint(trainer.model, trial=None)  # resumable, like save_steps
                # _save_checkpoint does not fire on_save: keep early stopping's state with it.
                stopping.on_save(args, trainer.state, trainer.control)
                logger.warning(
                    "interrupted: checkpoint saved at step %d in %s; continue with --resume",
                    trainer.state.global_step,
                    output_dir,
                )
            metrics_logger.close()
            raise
        except pickle.UnpicklingError as exc:
            metrics_logger.close()
            if resume_checkpoint is None:
                raise
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "refused"
            raise ConfigurationError(
                f"--resume: {resume_checkpoint} holds a file that torch's safe loader refuses "
                f"to unpickle ({detail[:200]}); train-lora never writes one — delete that "
                "folder to resume from an earlier checkpoint"
            ) from None
        except torch.cuda.OutOfMemoryError:
            metrics_logger.close()
            raise TrainingError(
                f"CUDA out of memory with batch_size={self.section_config.training.batch_size} "
                f"and max_length={self.max_length} — lower transfer_learning.{self.section}."
                "training.batch_size (raise gradient_accumulation_steps to keep the effective "
                "batch), set training.gradient_checkpointing: true, or use train-qlora"
            ) from None
        except Exception:
            metrics_logger.close()
            raise
        runtime = time.monotonic() - started

        restored = False
        best_dir = output_dir / BEST_ADAPTER_DIR
        if self.section_config.early_stopping.restore_best_weights and best_dir.is_dir():
            restored = self._restore_adapter(best_dir)
        metrics_callback.active = stopping.active = False
        final_eval = trainer.evaluate() if eval_dataset is not None else {}
        # accelerate wraps the model's forward in the training autocast (bf16 on some CPUs);
        # take the wrapper off so samples, merges and callers get the float32 model they saved.
        trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
        if self._base_lowered_for_training:
            self._float32_base_again()
        if final_eval and is_main:
            metrics_logger.log(
                {
                    "loss": final_eval["eval_loss"],
                    "perplexity": _perplexity(final_eval["eval_loss"]),
                },
                step=trainer.state.global_step,
                split="final_eval",
            )
        result = TrainResult(
            output_dir=str(output_dir),
            global_step=trainer.state.global_step,
            train_loss=output.metrics.get("train_loss"),
            eval_loss=final_eval.get("eval_loss"),
            eval_perplexity=(
                _perplexity(final_eval["eval_loss"]) if "eval_loss" in final_eval else None
            ),
            best_eval_loss=stopping.stopper.best,
            best_step=stopping.stopper.best_step,
            stopped_early=stopping.stopped_early,
            restored_best=restored,
            resumed_from=str(resume_checkpoint) if resume_checkpoint else None,
            train_runtime_s=round(runtime, 3),
            train_samples_per_second=output.metrics.get("train_samples_per_second"),
            train_examples=len(train_dataset),
            eval_examples=len(eval_dataset) if eval_dataset is not None else 0,
            epochs=epochs,
            epochs_reason=epochs_reason,
            peak_rss_mb=round(peak_rss_mb(), 1),
            cuda_peak_allocated_mb=cuda_peak_allocated_mb(),
            data={
                "files": [asdict(stats) for stats in self.data.read_stats],
                **self.data.tokenize_stats.as_dict(),
            },
        )
        if is_main:
            self._write_outputs(output_dir, result, metrics_logger, samples_from)
        metrics_logger.close()
        if args.world_size > 1:
            logger.warning(
                "rank %d of %d: trained %d steps",
                args.process_index,
                args.world_size,
                trainer.state.global_step,
            )
        return result

    def _checkpoint_to_resume(self, output_dir: Path, resume: bool) -> Path | None:
        folders = _checkpoint_folders(output_dir)
        if not resume:
            if folders:
                raise ConfigurationError(
                    f"{output_dir} holds checkpoints of an earlier run ({folders[0].name}) — pass "
                    "--resume to continue it, or choose another --output-dir"
                )
            return None
        if not folders:
            raise ConfigurationError(
                f"--resume: no {CHECKPOINT_PREFIX}-* folder in {output_dir} — run without "
                "--resume to start training, or point --output-dir at the earlier run"
            )
        last = _last_checkpoint(output_dir)
        if last is None:
            raise ConfigurationError(
                f"--resume: no complete checkpoint in {output_dir} ({folders[0].name} has no "
                "readable trainer_state.json: the run was killed while saving it) — delete the "
                "run folder and start again"
            )
        if last != folders[0]:
            # A later save overwrites the incomplete folder; until then it is left as it is.
            logger.warning(
                "%s is incomplete (the run was killed while saving it): resuming from %s",
                folders[0],
                last.name,
            )
        return last

    def _float32_base_again(self) -> None:
        """The trained adapter on a freshly loaded float32 base, in place of the bf16 base it was
        trained on: samples, merges and callers get the model the saved adapter gives."""
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        adapter = get_peft_model_state_dict(self.model)
        base = load_causal_lm(self.model_name, dtype=autocast_dtype(self.device))
        self._model = self._wrap_with_lora(base)
        set_peft_model_state_dict(self._model, adapter)
        self._base_lowered_for_training = False

    def _restore_adapter(self, adapter_dir: Path) -> bool:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        weights = adapter_dir / "adapter_model.safetensors"
        if not weights.is_file():
            return False
        set_peft_model_state_dict(self.model, load_file(str(weights)))
        return True

    def _write_outputs(
        self,
        output_dir: Path,
        result: TrainResult,
        metrics_logger,
        sample_source: datasets.Dataset | None,
    ) -> None:
        # adapter_model.safetensors + adapter_config.json, tokenizer and chat template
        save_files_atomically(
            output_dir, self.model.save_pretrained, self.tokenizer.save_pretrained
        )
        atomic_write_text(output_dir / "resolved_config.yaml", dump_config(self.config))
        atomic_write_json(output_dir / "training_summary.json", asdict(result))
        metrics_logger.plot(
            output_dir / "loss.png",
            series=[("train", "loss"), ("eval", "loss")],
            title=f"train-{self.section}: {self.model_name}",
            ylabel="loss",
        )
        pairs = self.sample_prompts(sample_source, self.section_config.num_samples)
        if pairs:
            generations = self.generate([prompt for prompt, _ in pairs])
            blocks = [
                f"### Prompt {i}\n{prompt}\n### Reference\n{reference}\n### Generation\n{text}\n"
                for i, ((prompt, reference), text) in enumerate(
                    zip(pairs, generations, strict=True), 1
                )
            ]
            atomic_write_text(output_dir / "samples.txt", "\n".join(blocks))

    # ---------------------------------------------------------------------------- generation

    def sample_prompts(self, rows: datasets.Dataset | None, count: int) -> list[tuple[str, str]]:
        """Up to `count` (prompt, reference) pairs from normalised rows: a conversation up to its
        first response and that response, or the first words of a text and the words after."""
        if rows is None or count <= 0 or "messages" not in rows.column_names:
            return []
        # Training saw at most max_length tokens of a record; a huge one is cut alike here.
        limit = self.max_length * CHARS_PER_TOKEN_GUESS
        pairs = []
        for row in rows.select(range(min(count, len(rows)))):
            messages = [{**m, "content": m["content"][:limit]} for m in row["messages"]]
            if messages:
                first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
                prompt = render_chat_template(
                    self.tokenizer, messages[:first], add_generation_prompt=True
                )
                pairs.append((prompt, messages[first]["content"]))
            else:
                words = (row["prompt"][:limit] + row["completion"][:limit]).split()
                pairs.append((" ".join(words[:12]), " ".join(words[12:60])))
        return pairs

    def generate(
        self, prompts: Sequence[str], max_new_tokens: int = SAMPLE_MAX_NEW_TOKENS
    ) -> list[str]:
        """Greedy continuations of `prompts`, without the prompt text."""
        import torch

        model = self.model
        was_training = model.training
        model.eval()
        outputs = []
        bos = self.tokenizer.bos_token
        try:
            for prompt in prompts:
                # The end of an overlong prompt (where the answer starts), at most max_length
                # tokens of it, as in training.
                prompt = prompt[-self.max_length * CHARS_PER_TOKEN_GUESS :]
                encoded = self.tokenizer(
                    prompt,
                    return_tensors="pt",
                    add_special_tokens=not (bos and prompt.startswith(bos)),
                )
                encoded = {k: v[:, -self.max_length :].to(model.device) for k, v in encoded.items()}
                with torch.no_grad():
                    generated = model.generate(
                        **encoded,
                        max_new_tokens=max_new_tokens,
                        do_sample=False,
                        pad_token_id=self.tokenizer.pad_token_id,
                    )
                new_tokens = generated[0, encoded["input_ids"].shape[1] :]
                outputs.append(self.tokenizer.decode(new_tokens, skip_special_tokens=True))
        finally:
            model.train(was_training)
        return outputs


class _NullLogger:
    """Stands in for MetricsLogger on the non-main processes of a distributed run."""

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass

    def plot(self, *args: Any, **kwargs: Any) -> None:
        return None

    def close(self) -> None:
        pass


def _config_dict(config: ToolkitConfig) -> dict[str, Any]:
    from shared_utils.config import config_to_dict

    return config_to_dict(config)


def world_size() -> int:
    """Processes training together under `accelerate launch`/torchrun (1 when not distributed)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def world_rank() -> int:
    """This process's rank under `accelerate launch`/torchrun (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))
