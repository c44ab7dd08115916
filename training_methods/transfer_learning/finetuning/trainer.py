"""The Hugging Face Trainer as the fine-tuner runs it: its arguments, a Trainer that stops on a
non-finite loss, the callbacks that log metrics and stop early, and the one place where the
failures of a run (Ctrl-C, an unsafe checkpoint, CUDA out of memory) become the toolkit's errors.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared_utils.errors import ConfigurationError, TrainingError
from shared_utils.file_utils import atomic_write_json
from training_methods.transfer_learning.finetuning.checkpoints import (
    BEST_ADAPTER_DIR,
    CHECKPOINT_PREFIX,
    EARLY_STOPPING_STATE,
    last_checkpoint,
    save_files_atomically,
)

if TYPE_CHECKING:
    import datasets
    import torch
    from transformers import Trainer, TrainingArguments

    from shared_utils.config import EarlyStoppingConfig, TrainingConfig

logger = logging.getLogger(__name__)

# Causal LMs whose output is exactly `lm_head(decoder(...))`: no logit scaling or soft-capping.
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "phi3", "smollm3"})


def world_size() -> int:
    """Processes training together under `accelerate launch`/torchrun (1 when not distributed)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def world_rank() -> int:
    """This process's rank under `accelerate launch`/torchrun (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def perplexity(loss: float) -> float:
    return math.exp(loss) if loss < 50 else float("inf")


# --------------------------------------------------------------------------------------------------
# Arguments and the loss
# --------------------------------------------------------------------------------------------------


def training_arguments(
    training: TrainingConfig,
    output_dir: Path,
    *,
    device: torch.device,
    optim: str,
    packing: bool,
    seed: int,
    has_eval: bool,
    epochs: float | None = None,
) -> TrainingArguments:
    """The Trainer's arguments for `training` (a `transfer_learning.<lora|qlora>.training`
    section); `epochs` replaces `training.num_epochs` when given."""
    import torch
    from transformers import TrainingArguments

    from shared_utils.training_utils import mixed_precision_dtype

    autocast = mixed_precision_dtype(training.mixed_precision, device)
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
        optim=optim,
        logging_steps=training.logging_steps,
        logging_first_step=True,
        activation_checkpointing=training.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        train_sampling_strategy=(
            "group_by_length" if training.group_by_length and not packing else "random"
        ),
        length_column_name="length",
        save_strategy="steps",
        save_steps=training.save_steps,
        save_total_limit=training.max_checkpoints,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=training.eval_steps,
        seed=seed,
        data_seed=seed,
        bf16=autocast == torch.bfloat16,
        fp16=autocast == torch.float16,
        # Only the loss: gathering logits (examples x length x vocabulary) for metrics nobody
        # computes would take gigabytes on a 50k-token vocabulary.
        prediction_loss_only=True,
        use_cpu=device.type == "cpu",
        report_to="none",  # MetricsLogger does TensorBoard and W&B itself
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


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
# The Trainer and its callbacks: NaN guard, LoRA+, metrics, early stopping
# --------------------------------------------------------------------------------------------------


def trainer_class() -> type[Trainer]:
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
                last = last_checkpoint(Path(self.args.output_dir))
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


def build_trainer(
    model: torch.nn.Module,
    args: TrainingArguments,
    train_dataset: datasets.Dataset,
    eval_dataset: datasets.Dataset | None,
    *,
    data_collator: Any,
    callbacks: list[Any],
    loraplus_lr_ratio: float,
) -> Trainer:
    """A `trainer_class()` Trainer; `loraplus_lr_ratio` 0 trains A and B at one learning rate."""
    trainer = trainer_class()(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=data_collator,
        callbacks=callbacks,
    )
    trainer.loraplus_lr_ratio = loraplus_lr_ratio
    return trainer


def metrics_and_stopping_callbacks(
    metrics_logger: Any,
    early_stopping_config: EarlyStoppingConfig,
    model: torch.nn.Module,
    output_dir: Path,
) -> tuple[Any, Any]:
    """(metrics callback, early-stopping callback); each has an `active` flag, cleared for the
    final evaluation, and the early-stopping one its `stopper` and `stopped_early`."""
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
                    evals["perplexity"] = perplexity(evals["loss"])
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


class NullLogger:
    """Stands in for MetricsLogger on the non-main processes of a distributed run."""

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass

    def plot(self, *args: Any, **kwargs: Any) -> None:
        return None

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------------------------------
# Running it: the failures of a run as the toolkit's errors
# --------------------------------------------------------------------------------------------------


def run_trainer(
    trainer: Trainer,
    resume_checkpoint: Path | None,
    *,
    output_dir: Path,
    stopping: Any,
    metrics_logger: Any,
    skip_input_dtype_casting: bool,
    out_of_memory_message: str,
) -> Any:
    """`trainer.train()`, resumed from `resume_checkpoint` when given; returns its output.

    `skip_input_dtype_casting`: peft need not cast LoRA inputs to float32 (the autocast casts to
    the base's dtype). Ctrl-C saves a resumable checkpoint first, with early stopping's state
    (`stopping`); `metrics_logger` is closed on every failure; CUDA out of memory becomes a
    TrainingError saying `out_of_memory_message`.
    """
    import torch
    from peft.helpers import disable_input_dtype_casting

    try:
        with disable_input_dtype_casting(trainer.model, active=skip_input_dtype_casting):
            return trainer.train(
                resume_from_checkpoint=str(resume_checkpoint) if resume_checkpoint else None
            )
    except KeyboardInterrupt:
        if trainer.state.global_step > 0:
            trainer._save_checkpoint(trainer.model, trial=None)  # resumable, like save_steps
            # _save_checkpoint does not fire on_save: keep early stopping's state with it.
            stopping.on_save(trainer.args, trainer.state, trainer.control)
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
        raise TrainingError(out_of_memory_message) from None
    except Exception:
        metrics_logger.close()
        raise
