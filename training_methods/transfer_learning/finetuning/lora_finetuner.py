"""LoRA fine-tuning of Hugging Face causal LMs with peft and the Hugging Face Trainer.

`LoRAFineTuner` holds the one LoRA implementation of the toolkit; `QLoRAFineTuner`
(`qlora_finetuner.py`) only swaps the base-model loader for a 4-bit one. A run is:

    tuner = LoRAFineTuner.from_config(config)            # tokenizer now, model on first use
    train = tuner.tokenize(tuner.load_jsonl("train.jsonl"), shuffle=True)
    result = tuner.train(train, eval_dataset, output_dir="outputs/lora")

This module holds the model (base, LoRA wrapping) and the data it is given; the Trainer, its
arguments and callbacks are in `trainer.py`, the checkpoints of the run folder in
`checkpoints.py`, and what a run writes besides them in `outputs.py`.

Why the Hugging Face Trainer and not TRL's SFTTrainer: the data side (chat templates, response-only
labels, packing without cross-example attention) lives in `shared_utils/` (`chat_templates.py`,
`training_tokens.py`, `data_loader.py`) where it is tested token by token, so the plain Trainer is
all that is left to need, and it is one dependency fewer with a stable checkpoint/resume format.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared_utils.config import (
    LoraConfig,
    ToolkitConfig,
    check_training_sections,
    config_to_dict,
    dump_config,
)
from shared_utils.data_loader import DataLoaderFactory
from training_methods.transfer_learning.finetuning.checkpoints import (
    BEST_ADAPTER_DIR,
    checkpoint_step,
    checkpoint_to_resume,
    early_stopping_state,
    restore_adapter,
    save_files_atomically,
)
from training_methods.transfer_learning.finetuning.outputs import (
    SAMPLE_MAX_NEW_TOKENS,
    TrainResult,
    greedy_generate,
    sample_prompts,
    train_result,
    write_samples,
    write_summary_files,
)
from training_methods.transfer_learning.finetuning.trainer import (
    NullLogger,
    build_trainer,
    metrics_and_stopping_callbacks,
    perplexity,
    run_trainer,
    training_arguments,
    world_size,
)
from training_methods.transfer_learning.lora_model import (
    autocast_dtype,
    resolve_target_modules,
    wrap_with_lora,
)
from training_methods.transfer_learning.model_loading import (
    load_causal_lm,
    load_tokenizer,
    recorded_name,
)

if TYPE_CHECKING:
    import datasets
    import torch
    from transformers import PreTrainedModel, Trainer, TrainingArguments

logger = logging.getLogger(__name__)


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
        return resolve_target_modules(
            self.target_modules,
            model,
            model_name=self.model_name,
            key=f"transfer_learning.{self.section}",
        )

    def _wrap_with_lora(self, model: PreTrainedModel) -> PreTrainedModel:
        return wrap_with_lora(
            model,
            r=self.lora_r,
            alpha=self.lora_alpha,
            dropout=self.lora_dropout,
            target_modules=self.resolved_target_modules(model),
            gradient_checkpointing=self.section_config.training.gradient_checkpointing,
            model_name=self.model_name,
        )

    # ---------------------------------------------------------------------------- data

    def load_jsonl(self, path: str | Path, *, flag: str = "--train-data") -> datasets.Dataset:
        """Normalised rows of a JSONL file (streamed into the Arrow cache), not yet tokenised;
        `flag` names the file in the message when it is missing."""
        return self.data.load_rows(path, flag=flag)

    def tokenize(self, rows: datasets.Dataset, *, shuffle: bool = False) -> datasets.Dataset:
        return self.data.build_dataset(rows, shuffle=shuffle)

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

    def optimizer_name(self) -> str:
        optim = self.section_config.training.optim
        if optim == "auto":
            return "adamw_torch"
        return optim

    def training_arguments(
        self, output_dir: Path, has_eval: bool, epochs: float | None = None
    ) -> TrainingArguments:
        return training_arguments(
            self.section_config.training,
            output_dir,
            device=self.device,
            optim=self.optimizer_name(),
            packing=self.data.packing,
            seed=self.config.common.seed,
            has_eval=has_eval,
            epochs=epochs,
        )

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
        from transformers.trainer_utils import set_seed

        output_dir = Path(output_dir or self.section_config.output_dir)
        resume_checkpoint = checkpoint_to_resume(output_dir, resume)
        set_seed(self.config.common.seed)
        epochs = self.epochs_for(len(train_dataset))
        has_eval = eval_dataset is not None
        args = self.training_arguments(output_dir, has_eval=has_eval, epochs=epochs[0])
        is_main = args.process_index == 0
        metrics_logger = self._metrics_logger(output_dir, resume_checkpoint, is_main)
        metrics_callback, stopping = self._callbacks(metrics_logger, output_dir, resume_checkpoint)
        trainer = build_trainer(
            self.model,
            args,
            train_dataset,
            eval_dataset,
            data_collator=self.data.collator,
            callbacks=[metrics_callback, stopping, *callbacks],
            loraplus_lr_ratio=self.section_config.training.loraplus_lr_ratio,
        )
        started = time.monotonic()
        output = self._fit(trainer, output_dir, resume_checkpoint, stopping, metrics_logger)
        runtime = time.monotonic() - started
        restored = self._restore_best_adapter(output_dir)
        metrics_callback.active = stopping.active = False
        final_eval = self._final_evaluation(trainer, has_eval, metrics_logger if is_main else None)
        result = train_result(
            output_dir,
            trainer.state.global_step,
            output.metrics,
            final_eval,
            stopping,
            self.data,
            restored=restored,
            resumed_from=resume_checkpoint,
            runtime=runtime,
            examples=(len(train_dataset), len(eval_dataset) if has_eval else 0),
            epochs=epochs,
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

    def _metrics_logger(
        self, output_dir: Path, resume_checkpoint: Path | None, is_main: bool
    ) -> Any:
        """The run's MetricsLogger; a NullLogger on the other processes of a distributed run."""
        from shared_utils.metrics_logger import MetricsLogger

        if not is_main:
            return NullLogger()
        return MetricsLogger(
            output_dir,
            self.config.logging,
            run_name=f"train-{self.section}",
            config=json.loads(json.dumps(config_to_dict(self.config), default=str)),
            resume_from_step=checkpoint_step(resume_checkpoint) if resume_checkpoint else None,
        )

    def _callbacks(
        self, metrics_logger: Any, output_dir: Path, resume_checkpoint: Path | None
    ) -> tuple[Any, Any]:
        """(metrics, early stopping) callbacks; early stopping continues from the state saved
        with the checkpoint the run resumes."""
        metrics_callback, stopping = metrics_and_stopping_callbacks(
            metrics_logger, self.section_config.early_stopping, self.model, output_dir
        )
        if (state := early_stopping_state(resume_checkpoint)) is not None:
            stopping.stopper.load_state_dict(state)
        return metrics_callback, stopping

    def _fit(
        self,
        trainer: Trainer,
        output_dir: Path,
        resume_checkpoint: Path | None,
        stopping: Any,
        metrics_logger: Any,
    ) -> Any:
        return run_trainer(
            trainer,
            resume_checkpoint,
            output_dir=output_dir,
            stopping=stopping,
            metrics_logger=metrics_logger,
            skip_input_dtype_casting=self._autocasts_like_its_base(),
            out_of_memory_message=(
                f"CUDA out of memory with batch_size={self.section_config.training.batch_size} "
                f"and max_length={self.max_length} — lower transfer_learning.{self.section}."
                "training.batch_size (raise gradient_accumulation_steps to keep the effective "
                "batch), set training.gradient_checkpointing: true, or use train-qlora"
            ),
        )

    def _final_evaluation(
        self, trainer: Trainer, has_eval: bool, metrics_logger: Any | None
    ) -> dict[str, Any]:
        """The eval-set metrics of the trained adapter ({} without an eval set), logged as
        `final_eval` when `metrics_logger` is given; the model leaves the Trainer here."""
        final_eval = trainer.evaluate() if has_eval else {}
        # accelerate wraps the model's forward in the training autocast (bf16 on some CPUs);
        # take the wrapper off so samples, merges and callers get the float32 model they saved.
        trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)
        if self._base_lowered_for_training:
            self._float32_base_again()
        if final_eval and metrics_logger is not None:
            loss = final_eval["eval_loss"]
            metrics_logger.log(
                {"loss": loss, "perplexity": perplexity(loss)},
                step=trainer.state.global_step,
                split="final_eval",
            )
        return final_eval

    def _restore_best_adapter(self, output_dir: Path) -> bool:
        """The best adapter early stopping kept, put back when `restore_best_weights` asks."""
        best_dir = output_dir / BEST_ADAPTER_DIR
        if self.section_config.early_stopping.restore_best_weights and best_dir.is_dir():
            return restore_adapter(self.model, best_dir)
        return False

    def _float32_base_again(self) -> None:
        """The trained adapter on a freshly loaded float32 base, in place of the bf16 base it was
        trained on: samples, merges and callers get the model the saved adapter gives."""
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        adapter = get_peft_model_state_dict(self.model)
        base = load_causal_lm(self.model_name, dtype=autocast_dtype(self.device))
        self._model = self._wrap_with_lora(base)
        set_peft_model_state_dict(self._model, adapter)
        self._base_lowered_for_training = False

    def _write_outputs(
        self,
        output_dir: Path,
        result: TrainResult,
        metrics_logger: Any,
        sample_source: datasets.Dataset | None,
    ) -> None:
        # adapter_model.safetensors + adapter_config.json, tokenizer and chat template
        save_files_atomically(
            output_dir, self.model.save_pretrained, self.tokenizer.save_pretrained
        )
        write_summary_files(
            output_dir,
            result,
            metrics_logger,
            dump_config(self.config),
            title=f"train-{self.section}: {self.model_name}",
        )
        pairs = self.sample_prompts(sample_source, self.section_config.num_samples)
        if pairs:
            write_samples(output_dir, pairs, self.generate([prompt for prompt, _ in pairs]))

    # ---------------------------------------------------------------------------- generation

    def sample_prompts(self, rows: datasets.Dataset | None, count: int) -> list[tuple[str, str]]:
        """Up to `count` (prompt, reference) pairs from normalised rows (`outputs`)."""
        return sample_prompts(self.tokenizer, rows, count, self.max_length)

    def generate(
        self, prompts: Sequence[str], max_new_tokens: int = SAMPLE_MAX_NEW_TOKENS
    ) -> list[str]:
        """Greedy continuations of `prompts`, without the prompt text."""
        return greedy_generate(self.model, self.tokenizer, prompts, self.max_length, max_new_tokens)
