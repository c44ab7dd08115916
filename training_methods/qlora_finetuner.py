"""QLoRA: the toolkit's LoRA fine-tuner on a base model loaded in 4 bits by bitsandbytes.

Only the loader differs from `LoRAFineTuner`: the base is loaded with a `BitsAndBytesConfig`
(NF4 by default, double quantization, compute dtype from the config) and prepared with peft's
`prepare_model_for_kbit_training` (norms in fp32, input gradients on). The adapter, data, training
loop and outputs are the LoRA ones. bitsandbytes 0.50 runs 4-bit layers on CPU too, so this path is
tested without a GPU.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from shared_utils.config import QuantizationConfig, ToolkitConfig, check_training_sections
from shared_utils.errors import ConfigurationError
from training_methods.lora_finetuner import LoRAFineTuner, _model_not_found, autocast_dtype

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)


def require_bitsandbytes() -> None:
    """Import bitsandbytes, or explain in one line why QLoRA cannot run here."""
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # a broken native library raises more than ImportError
        raise ConfigurationError(
            f"train-qlora needs bitsandbytes, which cannot be loaded here ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'import failed'}) — "
            "`pip install bitsandbytes==0.50.2`, or use train-lora"
        ) from None


class QLoRAFineTuner(LoRAFineTuner):
    """LoRA adapters on a 4-bit quantized base model."""

    section = "qlora"

    def __init__(
        self,
        model_name: str,
        lora_r: int = 64,
        lora_alpha: int = 16,
        lora_dropout: float = 0.1,
        target_modules: str | Sequence[str] = "auto",
        *,
        load_in_4bit: bool = True,
        bnb_4bit_quant_type: str = "nf4",
        bnb_4bit_use_double_quant: bool = True,
        bnb_4bit_compute_dtype: str = "auto",
        max_length: int = 512,
        train_on_prompt: bool = False,
        packing: bool = False,
        config: ToolkitConfig | None = None,
    ) -> None:
        self.quantization = QuantizationConfig(
            load_in_4bit=load_in_4bit,
            bnb_4bit_quant_type=bnb_4bit_quant_type,  # type: ignore[arg-type]
            bnb_4bit_use_double_quant=bnb_4bit_use_double_quant,
            bnb_4bit_compute_dtype=bnb_4bit_compute_dtype,  # type: ignore[arg-type]
        )
        if load_in_4bit:
            require_bitsandbytes()
        super().__init__(
            model_name,
            lora_r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            target_modules=target_modules,
            max_length=max_length,
            train_on_prompt=train_on_prompt,
            packing=packing,
            config=config,
        )

    @property
    def quantized(self) -> bool:  # type: ignore[override]
        return self.quantization.load_in_4bit

    @classmethod
    def from_config(cls, config: ToolkitConfig) -> QLoRAFineTuner:
        section = config.transfer_learning.qlora
        section.check("transfer_learning.qlora")
        check_training_sections(config)
        quantization = section.quantization
        return cls(
            section.model_name,
            lora_r=section.lora_r,
            lora_alpha=section.lora_alpha,
            lora_dropout=section.lora_dropout,
            target_modules=section.target_modules,
            load_in_4bit=quantization.load_in_4bit,
            bnb_4bit_quant_type=quantization.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=quantization.bnb_4bit_use_double_quant,
            bnb_4bit_compute_dtype=quantization.bnb_4bit_compute_dtype,
            max_length=section.max_length,
            train_on_prompt=section.train_on_prompt,
            packing=section.packing,
            config=config,
        )

    def compute_dtype(self) -> torch.dtype:
        import torch

        name = self.quantization.bnb_4bit_compute_dtype
        if name == "auto":
            return autocast_dtype(self.device)
        return getattr(torch, name)

    def _load_base_model(self) -> PreTrainedModel:
        if not self.quantization.load_in_4bit:
            return super()._load_base_model()
        from peft import prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        compute_dtype = self.compute_dtype()
        quantization_config = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.quantization.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=self.quantization.bnb_4bit_use_double_quant,
            bnb_4bit_compute_dtype=compute_dtype,
        )
        if self.device.type == "cuda":
            # Under accelerate/torchrun each process loads its copy onto its own GPU.
            device_map: dict[str, int | str] = {
                "": int(os.environ.get("LOCAL_RANK", self.device.index or 0))
            }
        else:
            device_map = {"": "cpu"}
        try:
            model = AutoModelForCausalLM.from_pretrained(
                self.model_name,
                quantization_config=quantization_config,
                dtype=compute_dtype,
                device_map=device_map,
            )
        except (OSError, ValueError) as exc:
            raise _model_not_found(self.model_name, exc) from None
        if self.device.type == "cpu":
            _detach_from_checkpoint_file(model)
        gradient_checkpointing = self.section_config.training.gradient_checkpointing
        return prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )

    def optimizer_name(self) -> str:
        optim = self.section_config.training.optim
        if optim == "auto":
            # Paged 8-bit AdamW keeps optimizer state small and spills to CPU under pressure;
            # its kernels are CUDA-only.
            return "paged_adamw_8bit" if self.device.type == "cuda" else "adamw_torch"
        if "8bit" in optim and self.device.type != "cuda":
            raise ConfigurationError(
                f"transfer_learning.qlora.training.optim: {optim} needs CUDA — use auto or "
                "adamw_torch on this machine"
            )
        return optim


def _detach_from_checkpoint_file(model: torch.nn.Module) -> None:
    """Copy the tensors left unquantized (embeddings, norms, head) out of the checkpoint file.

    On CPU they are zero-copy views of the memory-mapped safetensors file, which keeps the whole
    full-precision file mapped and its pages counted in the process's memory, undoing most of
    what 4-bit loading saved.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        for tensor in tensors:
            if not isinstance(tensor, bnb.nn.Params4bit):
                tensor.data = tensor.data.clone()
