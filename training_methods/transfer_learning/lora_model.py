"""The base model as LoRA sees it: which linear layers get adapters, the peft wrapping, and the
dtype training autocasts to on a device."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from shared_utils.errors import ConfigurationError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)


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


def resolve_target_modules(
    target_modules: str | Sequence[str], model: torch.nn.Module, *, model_name: str, key: str
) -> list[str]:
    """The module names LoRA adapts: every linear layer for "auto", else the names given, each
    checked to be in `model`; `key` is the config section the names come from."""
    if target_modules == "auto":
        names = find_linear_module_names(model)
        if not names:
            raise ConfigurationError(
                f"target_modules: auto found no linear layer in {model_name!r} — list the "
                f"module names in {key}.target_modules"
            )
        return names
    wanted = [target_modules] if isinstance(target_modules, str) else target_modules
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [name for name in wanted if name not in present]
    if missing:
        raise ConfigurationError(
            f"{key}.target_modules: {', '.join(missing)} not in "
            f"{model_name!r}; its linear layers are "
            f"{', '.join(find_linear_module_names(model))} (or use auto)"
        )
    return list(wanted)


def wrap_with_lora(
    model: PreTrainedModel,
    *,
    r: int,
    alpha: int,
    dropout: float,
    target_modules: list[str],
    gradient_checkpointing: bool,
    model_name: str,
) -> PreTrainedModel:
    """`model` with LoRA adapters of rank `r` on `target_modules` (a peft model); `model_name` is
    recorded as its base in adapter_config.json."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_config = PeftLoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        fan_in_fan_out=uses_conv1d(model),  # GPT-2's Conv1D stores weights transposed
        bias="none",
        task_type="CAUSAL_LM",
    )
    # Training needs no KV cache, and packed rows need its absence: without a cache,
    # transformers derives a per-example causal mask from the restarting position ids.
    model.config.use_cache = False
    if gradient_checkpointing:
        model.enable_input_require_grads()  # gradients must reach the frozen embeddings' output
    peft_model = get_peft_model(model, peft_config)
    # The base as the user named it (a GGUF file rather than its cached dequantised folder).
    peft_model.peft_config["default"].base_model_name_or_path = model_name
    trainable, total = peft_model.get_nb_trainable_parameters()
    logger.info(
        "LoRA r=%d alpha=%d on %s: %d trainable of %d parameters (%.2f%%)",
        r,
        alpha,
        ", ".join(peft_config.target_modules),
        trainable,
        total,
        100.0 * trainable / max(total, 1),
    )
    return peft_model
