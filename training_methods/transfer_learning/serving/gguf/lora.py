"""A LoRA adapter alone as a GGUF file, which llama.cpp applies on top of the base model's GGUF
(`--lora FILE`), quantised or not: the adapter's tensors under llama.cpp's weight names, with
what the model export does to a weight's rows done to lora_b's."""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared_utils.errors import ConfigurationError
from training_methods.transfer_learning.serving.gguf.architectures import (
    GEMMA,
    check_model_config,
    gemma_query_scale,
)
from training_methods.transfer_learning.serving.gguf.file import (
    GGUFSummary,
    atomic_path,
    check_free_space,
    declare_tensors,
    stream_tensors,
)
from training_methods.transfer_learning.serving.gguf.tensors import (
    CheckpointTensors,
    GGUFType,
    TensorPlan,
    Transform,
)

if TYPE_CHECKING:
    from transformers import PretrainedConfig

logger = logging.getLogger(__name__)

LORA_GGUF_TYPES: tuple[GGUFType, ...] = ("f32", "f16")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
LORA_SUFFIXES = {".lora_A.weight": "lora_a", ".lora_B.weight": "lora_b"}


def lora_alpha_for_llama_cpp(adapter_config: Mapping[str, Any], where: str) -> float:
    """The `adapter.lora.alpha` that makes llama.cpp's scale (alpha / rank of each tensor pair)
    equal peft's (lora_alpha / r, or lora_alpha / sqrt(r) with rsLoRA); a ConfigurationError for
    an adapter llama.cpp cannot apply as written (DoRA, trained biases or modules, per-module
    alphas)."""
    problem = None
    if adapter_config.get("peft_type", "LORA") != "LORA":
        problem = f"a {adapter_config.get('peft_type')} adapter; llama.cpp applies LoRA only"
    elif adapter_config.get("use_dora"):
        problem = "DoRA (use_dora=true); llama.cpp applies plain LoRA only"
    elif adapter_config.get("modules_to_save") or adapter_config.get("trainable_token_indices"):
        problem = "fully trained modules or token rows (modules_to_save), which a LoRA file lacks"
    elif adapter_config.get("bias", "none") != "none" or adapter_config.get("lora_bias"):
        problem = "trained biases, which a LoRA file lacks"
    elif adapter_config.get("alpha_pattern"):
        problem = "per-module alphas (alpha_pattern); llama.cpp has one alpha per adapter"
    elif adapter_config.get("use_rslora") and adapter_config.get("rank_pattern"):
        problem = "rsLoRA with per-module ranks; llama.cpp scales by alpha / rank"
    elif adapter_config.get("layers_to_transform") or adapter_config.get("layer_replication"):
        problem = "layers_to_transform or layer_replication"
    if problem:
        raise ConfigurationError(
            f"{where}: {problem} — export with --format gguf (the adapter merged) instead"
        )
    alpha = float(adapter_config.get("lora_alpha", 8))
    if adapter_config.get("use_rslora"):
        alpha *= math.sqrt(float(adapter_config.get("r", 8)))  # alpha/sqrt(r) == (alpha*sqrt(r))/r
    return alpha


def plan_lora_tensors(
    arch: str,
    config: PretrainedConfig,
    adapter: CheckpointTensors,
    gguf_type: GGUFType,
    where: str,
) -> list[TensorPlan]:
    """Every tensor of the LoRA file, `<llama.cpp weight name>.lora_a` (peft's lora_A: (rank,
    in)) and `.lora_b` (lora_B: (out, rank)), which is how llama.cpp's loader wants them. What
    the model export does to a weight's rows is done to lora_b's rows, since the delta
    lora_b @ lora_a has the weight's rows: the rotary permutation of Llama's q/k, Gemma 2's query
    scale."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    n_layers = config.n_layer if arch == "gpt2" else config.num_hidden_layers
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], n_layers)
    query_scale = gemma_query_scale(arch, config) if arch in GEMMA else 1.0
    tied = bool(getattr(config, "tie_word_embeddings", False))
    plans: list[TensorPlan] = []
    for source in adapter.names():
        if "lora_embedding_" in source:
            raise ConfigurationError(
                f"{where}: the adapter trains an embedding ({source}), which the GGUF LoRA "
                "export does not write — export with --format gguf (the adapter merged) instead"
            )
        suffix = next((s for s in LORA_SUFFIXES if source.endswith(s)), None)
        module = source.removeprefix(PEFT_PREFIX)[: -len(suffix)] if suffix else ""
        name = name_map.get_name(module + ".weight", try_suffixes=(".weight",)) if suffix else None
        if suffix is None or name is None or (tied and name == "output.weight"):
            raise ConfigurationError(
                f"{where}: adapter tensor {source} has no llama.cpp {arch} weight to apply to — "
                "export with --format gguf (the adapter merged) instead"
            )
        part = LORA_SUFFIXES[suffix]
        shape = adapter.shape(source)
        transform: Transform = "none"
        scale = 1.0
        if part == "lora_b" and arch == "llama" and module.endswith("q_proj"):
            transform = "permute_q"
        elif part == "lora_b" and arch == "llama" and module.endswith("k_proj"):
            transform = "permute_k"
        elif part == "lora_b" and arch == "gemma2" and module.endswith("q_proj"):
            scale = query_scale
        qtype = Q.F16 if gguf_type == "f16" else Q.F32
        plans.append(TensorPlan(source, f"{name}.{part}", shape, qtype, transform, scale=scale))
    if not plans:
        raise ConfigurationError(f"{where}: {ADAPTER_WEIGHTS} holds no LoRA tensors")
    return plans


def write_lora_gguf(
    adapter_dir: str | Path,
    base_config: PretrainedConfig,
    output_path: str | Path,
    gguf_type: GGUFType = "f16",
    *,
    name: str | None = None,
    progress: bool = True,
) -> GGUFSummary:
    """The LoRA adapter in `adapter_dir` (a peft folder) as one GGUF LoRA file for the base model
    whose config is `base_config`, replacing `output_path` atomically. llama.cpp loads it with
    `--lora FILE` (llama-cpp-python: `Llama(model_path=BASE_GGUF, lora_path=FILE)`) on top of any
    GGUF of that base, quantised or not. ConfigurationError before anything is written for an
    adapter or architecture it cannot express."""
    from gguf import GGUFType as FileKind
    from gguf import GGUFWriter, Keys

    from training_methods.transfer_learning.merge import read_adapter_config

    adapter_dir, output_path = Path(adapter_dir), Path(output_path)
    where = str(adapter_dir)
    if gguf_type not in LORA_GGUF_TYPES:
        raise ConfigurationError(
            f"--gguf-type {gguf_type}: a LoRA file is written as {' or '.join(LORA_GGUF_TYPES)} "
            "(it is small; the base's GGUF carries the quantisation)"
        )
    arch = check_model_config(base_config, where)
    alpha = lora_alpha_for_llama_cpp(read_adapter_config(adapter_dir), where)
    if not (adapter_dir / ADAPTER_WEIGHTS).is_file():
        raise ConfigurationError(
            f"{where}: no {ADAPTER_WEIGHTS} — point --adapter at a train-lora/train-qlora output"
        )
    started = time.monotonic()
    adapter = CheckpointTensors(adapter_dir)
    try:
        plans = plan_lora_tensors(arch, base_config, adapter, gguf_type, where)
        writer = GGUFWriter(path=None, arch=arch)
        writer.add_type(FileKind.ADAPTER)
        writer.add_name(name or adapter_dir.name)
        writer.add_string(Keys.Adapter.TYPE, "lora")
        writer.add_float32(Keys.Adapter.LORA_ALPHA, alpha)
        declare_tensors(writer, plans)
        data_bytes = sum(plan.nbytes for plan in plans)
        check_free_space(output_path, data_bytes)
        with atomic_path(output_path) as staging:
            try:
                stream_tensors(writer, staging, plans, adapter, base_config, progress)
            finally:
                writer.close()
    finally:
        adapter.close()
    logger.info("wrote %s (%s LoRA, %d tensors)", output_path, gguf_type, len(plans))
    return GGUFSummary(
        path=output_path,
        gguf_type=gguf_type,
        architecture=arch,
        tokenizer_pre="",
        tensor_count=len(plans),
        size_bytes=output_path.stat().st_size,
        seconds=round(time.monotonic() - started, 3),
        tensor_types=dict(Counter(plan.qtype.name for plan in plans)),
        kind="lora",
    )
