"""QLoRA: the toolkit's LoRA fine-tuner on a base model loaded in 4 bits by bitsandbytes.

Only the loader differs from `LoRAFineTuner`: the base is loaded with a `BitsAndBytesConfig`
(NF4 by default, double quantization, compute dtype from the config) and prepared with peft's
`prepare_model_for_kbit_training` (norms in fp32, input gradients on). The adapter, data, training
loop and outputs are the LoRA ones. bitsandbytes 0.50 runs 4-bit layers on CPU too, so this path is
tested without a GPU.

On a CPU with AVX512-BF16, bitsandbytes 0.50 switches a `Linear4bit` in eval mode to a faster
kernel: its first eval-mode forward repacks the weight in place for `gemv_4bit`
(`bitsandbytes.functional._convert_weight_packed_for_cpu`). Two things go wrong with that in a
training run, and `prepare_cpu_4bit_layers` handles both:

- Only some shapes can be packed (`cpu_packed_kernel_supports`); any other layer failed the first
  evaluation with `AssertionError: N must be divisible by block_n` (the tiny model's 688-wide MLP).
  Those layers stay on bitsandbytes' generic 4-bit path, which takes every shape.
- A packed layer stays packed when training resumes, and `gemv_4bit` has no backward: the
  gradient through that base layer is silently dropped. bitsandbytes' own unpacking
  (`_convert_weight_packed_for_cpu_inverse`, run by `state_dict()`) does not restore the weight
  either: it re-quantizes the block scales (and misplaces them without double quantization). So
  each layer keeps its exact unpacked weight while packed and gets it back before any forward that
  needs gradients and before `state_dict()`.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from shared_utils.config import ToolkitConfig
from shared_utils.errors import ConfigurationError
from training_methods.transfer_learning.finetuning.lora_finetuner import LoRAFineTuner
from training_methods.transfer_learning.lora_model import autocast_dtype
from training_methods.transfer_learning.model_loading import load_causal_lm

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

    def __init__(self, config: ToolkitConfig) -> None:
        """Every setting comes from `transfer_learning.qlora` of `config`, its quantization
        included; `from_config` checks them first."""
        self.quantization = config.transfer_learning.qlora.quantization
        if self.quantization.load_in_4bit:
            require_bitsandbytes()
        super().__init__(config)

    @property
    def quantized(self) -> bool:  # type: ignore[override]
        return self.quantization.load_in_4bit

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
        from transformers import BitsAndBytesConfig

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
        model = load_causal_lm(
            self.model_name,
            quantization_config=quantization_config,
            dtype=compute_dtype,
            device_map=device_map,
        )
        if self.device.type == "cpu":
            _detach_from_checkpoint_file(model)
            prepare_cpu_4bit_layers(model)
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


# --------------------------------------------------------------------------------------------------
# bitsandbytes' packed AVX512-BF16 CPU kernel
# --------------------------------------------------------------------------------------------------

# Output rows per tile of the packed layout (`block_n` of
# `bitsandbytes.functional._convert_weight_packed_for_cpu`, `block_size_n()` of its C++ kernel).
PACKED_BLOCK_N = 32
# bitsandbytes releases whose CPU packing was read and tested against `_PackedWeightKeeper`.
_CHECKED_BITSANDBYTES = ((0, 50),)


def cpu_packed_kernel_supports(out_features: int, in_features: int, blocksize: int = 64) -> bool:
    """Whether bitsandbytes' packed CPU kernel can run a 4-bit linear layer of this shape.

    `_convert_weight_packed_for_cpu` cuts the [out_features, in_features] weight into tiles of 32
    output rows (it asserts `N % block_n == 0`, and its C++ kernel `gemv_4bit_inference` works in
    such tiles) and reshapes the block scales to `in_features / blocksize` per output row, which
    fails unless every quantization block lies inside one row. Any other shape runs on the generic
    4-bit path (dequantize, then matmul), which takes every shape.
    """
    return out_features % PACKED_BLOCK_N == 0 and in_features % blocksize == 0


def _is_packed(layer: torch.nn.Module) -> bool:
    return bool(getattr(layer.weight.quant_state, "packing_format_for_cpu", False))


class _PackedWeightKeeper:
    """Keeps one `Linear4bit`'s exact unpacked weight while bitsandbytes holds it packed.

    Packing replaces `weight.data` and rewrites the fields of the layer's `QuantState` in place
    (block scales dequantized to bf16, double quantization dropped); the originals are kept here
    and put back, unchanged, before a forward that needs gradients (training mode, or an input
    that requires grad) and before `state_dict()`. The next evaluation packs again. While packed,
    the layer holds both layouts: twice its 4-bit weight.
    """

    def __init__(self) -> None:
        self.saved: tuple[torch.Tensor, Any, dict[str, Any]] | None = None

    def before_forward(self, layer: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs.get("x")
        if x is None:
            return
        needs_unpacked = layer.training or x.requires_grad
        if self.saved is not None and (needs_unpacked or not _is_packed(layer)):
            self.restore(layer)
        # Linear4bit.forward packs under exactly these conditions (bitsandbytes 0.50).
        if (
            self.saved is None
            and not needs_unpacked
            and x.device.type == "cpu"
            and layer.support_avx512bf16_for_cpu
            and not _is_packed(layer)
        ):
            state = layer.weight.quant_state
            self.saved = (layer.weight.data, state, dict(vars(state)))

    def before_state_dict(self, layer: torch.nn.Module, prefix: str, keep_vars: bool) -> None:
        if self.saved is not None:
            self.restore(layer)

    def restore(self, layer: torch.nn.Module) -> None:
        data, state, fields = self.saved  # type: ignore[misc]
        self.saved = None
        if layer.weight.quant_state is not state:  # re-quantized meanwhile: nothing to put back
            return
        state.__dict__.clear()
        state.__dict__.update(fields)
        layer.weight.data = data


def prepare_cpu_4bit_layers(model: torch.nn.Module) -> tuple[int, int]:
    """Make every 4-bit layer of `model` correct on bitsandbytes' CPU inference path.

    Layers whose shape the packed kernel takes keep it (per layer three times faster than the
    generic path on an evaluation batch, five times on one generated token) behind a
    `_PackedWeightKeeper`; the others are switched to the generic 4-bit
    path through `Linear4bit.support_avx512bf16_for_cpu`, the flag its forward consults. With an
    unchecked bitsandbytes release every layer takes the generic path. Returns (layers on the
    packed kernel, layers on the generic path); both 0 on a CPU without AVX512-BF16.
    """
    import bitsandbytes as bnb
    from packaging.version import Version

    layers = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, bnb.nn.Linear4bit)
        and getattr(module, "support_avx512bf16_for_cpu", 0)
    ]
    if not layers:
        return 0, 0
    checked = Version(bnb.__version__).release[:2] in _CHECKED_BITSANDBYTES
    generic: dict[tuple[int, int], list[str]] = defaultdict(list)
    packed = 0
    for name, layer in layers:
        blocksize = layer.weight.quant_state.blocksize
        if checked and cpu_packed_kernel_supports(layer.out_features, layer.in_features, blocksize):
            keeper = _PackedWeightKeeper()
            layer.register_forward_pre_hook(keeper.before_forward, with_kwargs=True)
            layer.register_state_dict_pre_hook(keeper.before_state_dict)
            packed += 1
        else:
            layer.support_avx512bf16_for_cpu = False
            generic[(layer.out_features, layer.in_features)].append(name.rsplit(".", 1)[-1])
    if not checked:
        logger.info(
            "bitsandbytes %s: its packed AVX512-BF16 CPU kernel is untested here; all %d 4-bit "
            "layers use the generic 4-bit path",
            bnb.__version__,
            len(layers),
        )
    elif generic:
        shapes = "; ".join(
            f"{', '.join(sorted(set(names)))} (out {out}, in {inp})"
            for (out, inp), names in sorted(generic.items())
        )
        logger.info(
            "bitsandbytes' packed AVX512-BF16 CPU kernel needs out_features divisible by %d and "
            "in_features by the quantization block size (%d): %d of %d 4-bit layers use its "
            "generic 4-bit path in evaluation instead: %s",
            PACKED_BLOCK_N,
            layers[0][1].weight.quant_state.blocksize,
            len(layers) - packed,
            len(layers),
            shapes,
        )
    return packed, len(layers) - packed
