"""The tensors of a GGUF file: the types it is written as, the plan of every tensor (llama.cpp's
name, shape, type and the transform that takes it there) made from the checkpoint's shapes alone,
and the conversion of one tensor as it is written.

Types written here, tensor by tensor with `gguf`'s numpy quantisers: `f32` (exact), `f16` (2-D
weights halved), `q8_0` (blocks of 32 int8 values sharing one f16 scale) and the 4/5-bit block
types `q4_0`, `q4_1`, `q5_0`, `q5_1` (32 values per block; `_1` adds a per-block minimum). As in
llama.cpp's converter, 1-D tensors (norms, biases) and GPT-2's position embeddings stay f32, and a
row whose length is not a multiple of 32 falls back to f16. For the 4/5-bit types the output head
(the embedding when it is tied) is q8_0: llama.cpp's quantiser keeps it at 6 bits or more too,
because every next-token choice goes through it.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from shared_utils.errors import ConfigurationError
from training_methods.transfer_learning.serving.gguf.architectures import (
    GEMMA,
    gemma_query_scale,
    rope_factor_tensors,
)

if TYPE_CHECKING:
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType
    from transformers import PretrainedConfig

GGUFType = Literal["f32", "f16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k_m", "q5_k_m", "q6_k"]
# Written tensor by tensor here (gguf's numpy quantisers) → the ggml type of their 2-D weights.
NUMPY_TYPES: dict[str, str] = {
    "f32": "F32",
    "f16": "F16",
    "q8_0": "Q8_0",
    "q4_0": "Q4_0",
    "q4_1": "Q4_1",
    "q5_0": "Q5_0",
    "q5_1": "Q5_1",
}
# Made by llama.cpp's quantiser from an f16 file → its `llama_ftype` constant in llama_cpp.
LLAMA_CPP_TYPES: dict[str, str] = {
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
}
GGUF_TYPES: tuple[GGUFType, ...] = (*NUMPY_TYPES, *LLAMA_CPP_TYPES)  # type: ignore[assignment]
QUANT_BLOCK = 32  # values per q8_0/q4_0/q4_1/q5_0/q5_1 block: a row must be a multiple of it

Transform = Literal["none", "transpose", "permute_q", "permute_k", "add_one"]


@dataclass(frozen=True)
class TensorPlan:
    """One tensor of the GGUF file: where it comes from and what it becomes."""

    source: str  # name in the safetensors files, or "" for a tensor computed here
    name: str  # llama.cpp's name
    shape: tuple[int, ...]  # numpy shape after `transform`, (rows, row length) for matrices
    qtype: GGMLQuantizationType
    transform: Transform = "none"
    compute: Callable[[], np.ndarray] | None = None  # for tensors that are not in the checkpoint
    scale: float = 1.0  # multiplies the tensor after `transform` (Gemma's query scalar)

    @property
    def nbytes(self) -> int:
        from gguf import GGML_QUANT_SIZES

        block_size, type_size = GGML_QUANT_SIZES[self.qtype]
        return math.prod(self.shape) // block_size * type_size


# --------------------------------------------------------------------------------------------------
# Planning the tensors
# --------------------------------------------------------------------------------------------------


class CheckpointTensors:
    """Lazy access to the tensors of a model folder's safetensors files (sharded or not)."""

    def __init__(self, model_dir: Path) -> None:
        from safetensors import safe_open

        index = model_dir / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in model_dir.glob("*.safetensors"))
        if not files:
            raise ConfigurationError(
                f"{model_dir}: no *.safetensors weights — save the model with save_pretrained "
                "(safetensors is its default), or export the adapter with --adapter"
            )
        self._stack = contextlib.ExitStack()
        self._files = {
            name: self._stack.enter_context(safe_open(model_dir / name, framework="pt"))
            for name in files
        }
        self.location = {key: name for name, f in self._files.items() for key in f.keys()}

    def names(self) -> list[str]:
        return list(self.location)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._files[self.location[name]].get_slice(name).get_shape())

    def load(self, name: str) -> torch.Tensor:
        return self._files[self.location[name]].get_tensor(name)

    def close(self) -> None:
        self._stack.close()


def choose_qtype(
    name: str, shape: Sequence[int], gguf_type: GGUFType, *, output_head: bool = False
) -> GGMLQuantizationType:
    """The ggml type of one tensor, by llama.cpp's converter rules (module docstring).
    `output_head`: the tensor computes the logits (output.weight, or token_embd when tied).
    A k-quant type is planned as f16: llama.cpp's quantiser makes it from that file."""
    from gguf import GGMLQuantizationType as Q

    if len(shape) <= 1 or name.endswith("_norm.weight") or not name.endswith(".weight"):
        return Q.F32
    if name.startswith("position_embd."):
        return Q.F32
    target = Q[NUMPY_TYPES.get(gguf_type, "F16")]
    if target in (Q.F32, Q.F16):
        return target
    if shape[-1] % QUANT_BLOCK != 0:
        return Q.F16
    if output_head and target != Q.Q8_0:
        return Q.Q8_0
    return target


def plan_tensors(
    arch: str,
    config: PretrainedConfig,
    checkpoint: CheckpointTensors,
    gguf_type: GGUFType,
    where: str,
) -> list[TensorPlan]:
    """Every tensor of the GGUF file, in write order, without reading any weight."""
    import gguf

    model_arch = gguf.MODEL_ARCH[arch.upper()]
    n_layers = config.n_layer if arch == "gpt2" else config.num_hidden_layers
    query_scale = gemma_query_scale(arch, config) if arch in GEMMA else 1.0
    name_map = gguf.get_tensor_name_map(model_arch, n_layers)
    output_name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.OUTPUT] + ".weight"
    embedding_name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.TOKEN_EMBD] + ".weight"
    names = {
        source: name_map.get_name(source, try_suffixes=(".weight", ".bias"))
        for source in checkpoint.names()
    }
    # Tied embeddings: no output.weight, and llama.cpp computes the logits with token_embd.
    output_head = output_name if output_name in names.values() else embedding_name
    plans: list[TensorPlan] = []
    for source in checkpoint.names():
        if source.endswith((".rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")):
            continue  # buffers computed at load time, not weights
        name = names[source]
        if name is None:
            raise ConfigurationError(
                f"{where}: tensor {source} has no llama.cpp {arch} counterpart — a variant of "
                "the architecture the GGUF export does not know; convert with llama.cpp's "
                "convert_hf_to_gguf.py"
            )
        shape = checkpoint.shape(source)
        transform: Transform = "none"
        if arch == "llama" and source.endswith(("q_proj.weight", "q_proj.bias")):
            transform = "permute_q"
        elif arch == "llama" and source.endswith(("k_proj.weight", "k_proj.bias")):
            transform = "permute_k"
        elif arch == "gpt2" and len(shape) == 2 and source.endswith(".weight") and ".h." in source:
            transform = "transpose"  # Conv1D stores (in, out)
            shape = (shape[1], shape[0])
        elif arch in GEMMA and source.endswith("norm.weight"):
            transform = "add_one"  # Gemma's RMSNorm multiplies by (1 + weight)
        scale = 1.0
        if arch == "gemma2" and source.endswith("q_proj.weight"):
            scale = query_scale
        elif arch == "gemma3" and source.endswith("q_norm.weight"):
            scale = query_scale  # the norm's output is the query, before rotary
        qtype = choose_qtype(name, shape, gguf_type, output_head=name == output_head)
        plans.append(TensorPlan(source, name, shape, qtype, transform, scale=scale))
    for name, factors in rope_factor_tensors(arch, config).items():
        plans.append(
            TensorPlan(
                "",
                name,
                (len(factors),),
                gguf.GGMLQuantizationType.F32,
                compute=functools.partial(_float32_array, factors),
            )
        )
    return plans


def _float32_array(values: Sequence[float]) -> np.ndarray:
    import numpy as np

    return np.asarray(values, dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# Converting one tensor
# --------------------------------------------------------------------------------------------------


def permute_for_rope(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder the rows of a q_proj/k_proj weight (or bias) from Hugging Face's rotary layout to
    llama.cpp's, as `convert_hf_to_gguf.py` does.

    Within each head of `head_dim` rows, Hugging Face rotates row i with row i + head_dim/2;
    llama.cpp rotates rows 2i and 2i+1. Row j of half h of a head moves to row 2j + h.
    `weight`: (n_head * head_dim, ...) → the same shape.
    """
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def convert_tensor(
    plan: TensorPlan, checkpoint: CheckpointTensors, config: PretrainedConfig
) -> np.ndarray:
    """Read one tensor, apply its transform and encode it as `plan.qtype`."""
    from gguf import quantize

    if plan.compute is not None:
        data = plan.compute()
    else:
        tensor = checkpoint.load(plan.source).float()  # bf16/f16 checkpoints: numpy has no bf16
        if plan.transform == "permute_q":
            tensor = permute_for_rope(tensor, config.num_attention_heads)
        elif plan.transform == "permute_k":
            tensor = permute_for_rope(tensor, config.num_key_value_heads)
        elif plan.transform == "transpose":
            tensor = tensor.T
        elif plan.transform == "add_one":
            tensor = tensor + 1.0
        if plan.scale != 1.0:
            tensor = tensor * plan.scale
        data = tensor.contiguous().numpy()
    return quantize(data, plan.qtype)  # f32 and f16 are casts; the q types pack blocks as uint8
