"""The architectures the GGUF export converts, as llama.cpp's `convert_hf_to_gguf.py` does them:
the checks that refuse a variant llama.cpp would compute differently, and each one's
hyperparameter metadata. What differs between them:

- Llama (`LlamaForCausalLM`): tensors take llama.cpp's names (`blk.0.attn_q.weight`, from
  `gguf`'s own name map) and the rows of q_proj/k_proj are permuted from Hugging Face's rotary
  layout (rotate the two halves of a head) into llama.cpp's (rotate adjacent pairs). Without the
  permutation llama.cpp loads the file and silently generates other tokens.
- Qwen2/Qwen2.5 (`Qwen2ForCausalLM`, with q/k/v biases) and Qwen3 (`Qwen3ForCausalLM`, with
  per-head RMS norms of q and k, `attn_q_norm`/`attn_k_norm`): the same names, but no permutation:
  llama.cpp runs these with the rotate-halves (NeoX) rotary Hugging Face uses.
- Mistral (`MistralForCausalLM`) is llama to llama.cpp; its sliding window (Mistral 7B v0.1's
  4096) becomes the file's context length, within which full attention computes the same.
- Phi-3 (`Phi3ForCausalLM`, Phi-4-mini): the fused `qkv_proj` and `gate_up_proj` are written as
  they are (`attn_qkv`, `ffn_up`; llama.cpp splits them), NeoX rotary on the first
  `partial_rotary_factor` of each head, the sliding window as `phi3.attention.sliding_window`.
  LongRoPE (Phi-3 128k, Phi-4-mini) divides each rotary frequency by a per-frequency factor, one
  list for short and one for long contexts: both are written as the tensors
  `rope_factors_short`/`rope_factors_long`, with `original_max_position_embeddings` as
  `rope.scaling.original_context_length` and the cos/sin scale transformers computes
  (`attention_factor`) as `rope.scaling.attn_factor`. The two choose between the lists
  differently: transformers takes the long factors whenever the sequence in a forward pass is
  longer than the original context, llama.cpp whenever the context it was opened with (`n_ctx`)
  is; they agree when both are shorter, or both longer.
- Gemma 2 (`Gemma2ForCausalLM`) and Gemma 3 text models (`Gemma3ForCausalLM`, with q/k norms):
  NeoX rotary, no permutation. Their RMS norms multiply by (1 + weight), llama.cpp's by weight, so
  every norm weight is written plus one. The embedding scale (sqrt(hidden_size)) and the
  alternation of sliding-window and global layers are built into llama.cpp's graphs (every
  second layer global for Gemma 2, every sixth for Gemma 3): the window, the soft-capping of
  attention scores (Gemma 2) and of the logits, and Gemma 3's separate rotary bases are written as
  metadata, and a layout llama.cpp would not reproduce is refused. llama.cpp scales queries by
  1/sqrt(head_dim), or 1/sqrt(hidden_size / heads) for the layer counts of the 27B models, where
  transformers uses 1/sqrt(query_pre_attn_scalar); a different scalar is folded into the query
  weights (Gemma 2) or the query norm (Gemma 3), so any fine-tune computes the same attention.
- GPT-2 (`GPT2LMHeadModel`): Conv1D weights, stored (in, out), are transposed to (out, in).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from shared_utils.errors import ConfigurationError

if TYPE_CHECKING:
    from gguf import GGUFWriter, LlamaFileType
    from transformers import PretrainedConfig

    from training_methods.transfer_learning.serving.gguf.tensors import GGUFType

# Hugging Face class → llama.cpp architecture name (`general.architecture`).
SUPPORTED_ARCHITECTURES: dict[str, str] = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",  # llama.cpp runs Mistral 7B as llama
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Phi3ForCausalLM": "phi3",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3",  # Gemma 3 1B, and the text part of the larger ones saved alone
    "GPT2LMHeadModel": "gpt2",
}
# Decoders configured like Llama (hidden_size, num_attention_heads, rms_norm_eps, rope_theta).
LLAMA_LIKE = ("llama", "qwen2", "qwen3", "phi3")
# Llama 3.1's per-frequency scaling is written as a `rope_freqs` tensor only llama's graph reads.
SUPPORTED_ROPE_TYPES: dict[str, tuple[str, ...]] = {
    "llama": ("default", "linear", "llama3"),
    "qwen2": ("default", "linear"),
    "qwen3": ("default", "linear"),
    "phi3": ("default", "longrope"),  # longrope: Phi-3 128k, Phi-4-mini
}
GEMMA = ("gemma2", "gemma3")
# llama.cpp fixes which Gemma layers use the sliding window: layer i does unless (i + 1) is a
# multiple of this, as in transformers' default `layer_types`.
GEMMA_SLIDING_PATTERN = {"gemma2": 2, "gemma3": 6}
# The layer count by which llama.cpp recognises the 27B models, whose queries it scales by
# 1/sqrt(hidden_size / heads) instead of 1/sqrt(head_dim).
GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}
GEMMA3_LOCAL_ROPE_THETA = 10000.0  # older llama.cpp builds fix the sliding layers' rotary base
GEMMA_ACTIVATIONS = ("gelu_pytorch_tanh", "gelu_new")  # llama.cpp's GELU is the tanh one


# --------------------------------------------------------------------------------------------------
# Checks that run before anything is written
# --------------------------------------------------------------------------------------------------


def supported_list() -> str:
    return ", ".join(f"{hf} ({name})" for hf, name in SUPPORTED_ARCHITECTURES.items())


def check_model_config(config: PretrainedConfig, where: str) -> str:
    """The llama.cpp architecture of `config`; a ConfigurationError naming what is unsupported."""
    architectures = list(getattr(config, "architectures", None) or [])
    hf_class = architectures[0] if architectures else f"model_type {config.model_type!r}"
    arch = SUPPORTED_ARCHITECTURES.get(hf_class)
    if arch is None:
        raise ConfigurationError(
            f"{where}: architecture {hf_class} is not supported by the GGUF export (supported: "
            f"{supported_list()}) — export with --format merged and convert that folder with "
            "llama.cpp's convert_hf_to_gguf.py"
        )
    if arch in GEMMA:
        check_gemma_config(config, arch, hf_class, where)
    elif arch in LLAMA_LIKE:
        act = getattr(config, "hidden_act", "silu")
        if act != "silu":
            raise ConfigurationError(
                f"{where}: {hf_class} with hidden_act {act!r}; llama.cpp's {arch} runs silu only"
            )
        rope_type = rope_parameters(config)["rope_type"]
        if rope_type not in SUPPORTED_ROPE_TYPES[arch]:
            raise ConfigurationError(
                f"{where}: rope type {rope_type!r} is not supported by the GGUF export of "
                f"{hf_class} (supported: {', '.join(SUPPORTED_ROPE_TYPES[arch])}) — convert the "
                "merged folder with llama.cpp's convert_hf_to_gguf.py"
            )
        if getattr(config, "use_sliding_window", False):
            raise ConfigurationError(
                f"{where}: {hf_class} with use_sliding_window=true; llama.cpp's {arch} attends to "
                "the whole context, so its answers would differ — export a model trained without "
                "the sliding window"
            )
        if rope_type == "longrope":
            check_longrope_config(config, hf_class, where)
        if arch == "qwen3" and getattr(config, "attention_bias", False):
            raise ConfigurationError(
                f"{where}: Qwen3ForCausalLM with attention_bias=true; llama.cpp's qwen3 has no "
                "attention biases"
            )
    else:
        act = getattr(config, "activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ConfigurationError(
                f"{where}: GPT-2 with activation_function {act!r}; llama.cpp's gpt2 runs the tanh "
                "GELU (gelu_new) only"
            )
    return arch


def check_longrope_config(config: PretrainedConfig, hf_class: str, where: str) -> None:
    """ConfigurationError for LongRoPE settings llama.cpp cannot be given: a factor list per
    rotary frequency, short and long, and the original context that chooses between them."""
    params = rope_parameters(config)
    frequencies = rotary_dimensions(config) // 2
    problem = None
    for key in ("short_factor", "long_factor"):
        factors = params.get(key)
        if not isinstance(factors, list) or len(factors) != frequencies:
            count = len(factors) if isinstance(factors, list) else "no"
            problem = f"{count} rope {key}s for {frequencies} rotary frequencies"
            break
    if problem is None and not isinstance(original_context_length(config), int):
        problem = "longrope without original_max_position_embeddings"
    if problem:
        raise ConfigurationError(
            f"{where}: {hf_class} with {problem} — fix rope_scaling in config.json, or convert "
            "the merged folder with llama.cpp's convert_hf_to_gguf.py"
        )


def check_gemma_config(config: PretrainedConfig, arch: str, hf_class: str, where: str) -> None:
    """ConfigurationError for a Gemma 2/3 variant llama.cpp's gemma2/gemma3 graph computes
    differently (module docstring)."""
    problem = None
    pattern = GEMMA_SLIDING_PATTERN[arch]
    expected_layers = [
        "sliding_attention" if (i + 1) % pattern else "full_attention"
        for i in range(config.num_hidden_layers)
    ]
    act = getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", None)
    window = getattr(config, "sliding_window", None)
    if act not in GEMMA_ACTIVATIONS:
        problem = f"hidden_activation {act!r}; llama.cpp's {arch} runs the tanh GELU only"
    elif getattr(config, "attention_bias", False):
        problem = f"attention_bias=true; llama.cpp's {arch} has no attention biases"
    elif not config.tie_word_embeddings and arch == "gemma2":
        problem = "tie_word_embeddings=false; llama.cpp's gemma2 has no separate output head"
    elif not isinstance(window, int) or window <= 0:
        problem = f"sliding_window {window!r}; llama.cpp's {arch} needs a window size"
    elif list(getattr(config, "layer_types", None) or expected_layers) != expected_layers:
        problem = (
            f"layer_types other than llama.cpp's fixed pattern (every {pattern}"
            f"{'nd' if pattern == 2 else 'th'} layer global, the others sliding)"
        )
    elif getattr(config, "use_bidirectional_attention", False):
        problem = "use_bidirectional_attention=true (an embedding model), not a causal LM"
    elif arch == "gemma2" and (
        config.attn_logit_softcapping is None or config.final_logit_softcapping is None
    ):
        problem = "soft-capping switched off; llama.cpp's gemma2 always soft-caps"
    elif arch == "gemma3" and (
        config.attn_logit_softcapping is not None or config.final_logit_softcapping is not None
    ):
        problem = "soft-capping switched on; llama.cpp's gemma3 does not soft-cap"
    else:
        for layer_type, allowed in gemma_rope_types(arch).items():
            params = gemma_rope_parameters(config, layer_type)
            if params["rope_type"] not in allowed:
                problem = f"rope type {params['rope_type']!r} in {layer_type} layers"
            elif (
                arch == "gemma3"
                and layer_type == "sliding_attention"
                and float(params["rope_theta"]) != GEMMA3_LOCAL_ROPE_THETA
            ):
                problem = (
                    f"a sliding-layer rope_theta of {params['rope_theta']}; llama.cpp fixes it "
                    f"at {GEMMA3_LOCAL_ROPE_THETA:g}"
                )
    if problem:
        raise ConfigurationError(
            f"{where}: {hf_class} with {problem} — export with --format merged and convert that "
            "folder with llama.cpp's convert_hf_to_gguf.py"
        )


def gemma_rope_types(arch: str) -> dict[str, tuple[str, ...]]:
    """Rotary types llama.cpp reproduces, per Gemma layer type: Gemma 3's global layers may be
    linearly scaled (4B and up: factor 8), its sliding layers never are."""
    if arch == "gemma2":
        return {"full_attention": ("default",)}
    return {"full_attention": ("default", "linear"), "sliding_attention": ("default",)}


def gemma_rope_parameters(config: PretrainedConfig, layer_type: str) -> dict[str, Any]:
    """Rotary settings of one Gemma layer type: Gemma 3 keeps one dict per layer type."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if layer_type in params:
        params = dict(params[layer_type])
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    return params


def gemma_query_scale(arch: str, config: PretrainedConfig) -> float:
    """The factor folded into the queries so that llama.cpp's fixed query scale (module
    docstring) equals transformers' 1/sqrt(query_pre_attn_scalar); 1.0 for the released models."""
    if config.num_hidden_layers == GEMMA_27B_LAYERS[arch]:
        llama_cpp_scalar = config.hidden_size // config.num_attention_heads
    else:
        llama_cpp_scalar = attention_head_dim(config)
    return math.sqrt(llama_cpp_scalar / float(config.query_pre_attn_scalar))


def rope_parameters(config: PretrainedConfig) -> dict[str, Any]:
    """Rotary settings of a Llama/Qwen config: transformers 5 `rope_parameters`, or the older
    `rope_theta` + `rope_scaling` attributes."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    scaling = getattr(config, "rope_scaling", None) or {}
    for key, value in scaling.items():
        params.setdefault(key, value)
    params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    return params


def attention_head_dim(config: PretrainedConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def rotary_dimensions(config: PretrainedConfig) -> int:
    """How many dimensions of each head the rotary embedding turns (`rope.dimension_count`)."""
    return int(attention_head_dim(config) * partial_rotary_factor(config))


def original_context_length(config: PretrainedConfig) -> int | None:
    """The context a LongRoPE model was pretrained with: beyond it the long factors apply.
    transformers 5 keeps it in `rope_parameters`, older configs beside them."""
    value = rope_parameters(config).get("original_max_position_embeddings")
    if value is None:
        value = getattr(config, "original_max_position_embeddings", None)
    return value


def longrope_attention_factor(config: PretrainedConfig) -> float:
    """The scale transformers' LongRoPE puts on cos and sin (`_compute_longrope_parameters`), in
    both regimes: `attention_factor` when the config sets it, else sqrt(1 + ln s / ln L) for the
    scaling s (`factor`, or max_position_embeddings / L) over the original context L, 1 when
    s <= 1. llama.cpp multiplies its rotary by `rope.scaling.attn_factor` the same way."""
    params = rope_parameters(config)
    if params.get("attention_factor") is not None:
        return float(params["attention_factor"])
    original = int(original_context_length(config) or config.max_position_embeddings)
    factor = params.get("factor")
    scaling = float(factor) if factor is not None else config.max_position_embeddings / original
    if scaling <= 1.0:
        return 1.0
    return math.sqrt(1 + math.log(scaling) / math.log(original))


def llama3_rope_factors(params: Mapping[str, Any], head_dim: int) -> list[float]:
    """Per-frequency divisors of Llama 3.1+'s rope scaling, the `rope_freqs.weight` tensor
    llama.cpp applies (transformers computes the same inside `_compute_llama3_parameters`)."""
    base = float(params["rope_theta"])
    factor = float(params.get("factor", 8.0))
    low_freq_factor = float(params.get("low_freq_factor", 1.0))
    high_freq_factor = float(params.get("high_freq_factor", 4.0))
    old_context = float(params.get("original_max_position_embeddings", 8192))
    low_freq_wavelen = old_context / low_freq_factor
    high_freq_wavelen = old_context / high_freq_factor
    factors = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * base ** (i / head_dim)
        if wavelen < high_freq_wavelen:
            factors.append(1.0)
        elif wavelen > low_freq_wavelen:
            factors.append(factor)
        else:
            ramp = (old_context / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            factors.append(1 / ((1 - ramp) / factor + ramp))
    return factors


def rope_factor_tensors(arch: str, config: PretrainedConfig) -> dict[str, list[float]]:
    """The rotary scaling llama.cpp reads from tensors rather than metadata, as llama.cpp's tensor
    name → values: Llama 3.1's `rope_freqs`, LongRoPE's `rope_factors_long` and
    `rope_factors_short` (one divisor per rotary frequency each)."""
    if arch not in ("llama", "phi3"):
        return {}
    import gguf

    def name(tensor: gguf.MODEL_TENSOR) -> str:
        return gguf.TENSOR_NAMES[tensor] + ".weight"

    params = rope_parameters(config)
    if params["rope_type"] == "llama3":
        factors = llama3_rope_factors(params, attention_head_dim(config))
        return {name(gguf.MODEL_TENSOR.ROPE_FREQS): factors}
    if params["rope_type"] == "longrope":
        return {
            name(gguf.MODEL_TENSOR.ROPE_FACTORS_LONG): [float(x) for x in params["long_factor"]],
            name(gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT): [float(x) for x in params["short_factor"]],
        }
    return {}


# --------------------------------------------------------------------------------------------------
# Hyperparameter metadata
# --------------------------------------------------------------------------------------------------


def file_type(gguf_type: GGUFType) -> LlamaFileType:
    """`general.file_type` of a file written here (a k-quant's f16 source says f16)."""
    from gguf import LlamaFileType

    return {
        "f32": LlamaFileType.ALL_F32,
        "q8_0": LlamaFileType.MOSTLY_Q8_0,
        "q4_0": LlamaFileType.MOSTLY_Q4_0,
        "q4_1": LlamaFileType.MOSTLY_Q4_1,
        "q5_0": LlamaFileType.MOSTLY_Q5_0,
        "q5_1": LlamaFileType.MOSTLY_Q5_1,
    }.get(gguf_type, LlamaFileType.MOSTLY_F16)


def add_hyperparameters(
    writer: GGUFWriter, arch: str, config: PretrainedConfig, gguf_type: GGUFType
) -> None:
    writer.add_type("model")
    writer.add_file_type(file_type(gguf_type))
    writer.add_quantization_version(quant_version())
    if arch in GEMMA:
        add_gemma_hyperparameters(writer, arch, config)
    elif arch in LLAMA_LIKE:
        params = rope_parameters(config)
        head_dim = attention_head_dim(config)
        writer.add_vocab_size(config.vocab_size)
        writer.add_context_length(context_length(config))
        writer.add_embedding_length(config.hidden_size)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
        writer.add_rope_freq_base(float(params["rope_theta"]))
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        writer.add_rope_dimension_count(rotary_dimensions(config))
        if arch == "phi3":
            # Phi-3 mini's window (2047); 0 tells llama.cpp there is none (Phi-4-mini).
            writer.add_sliding_window(getattr(config, "sliding_window", None) or 0)
            # With LongRoPE, llama.cpp takes the long factors when n_ctx exceeds this.
            writer.add_rope_scaling_orig_ctx_len(
                original_context_length(config) or config.max_position_embeddings
            )
            if params["rope_type"] == "longrope":
                writer.add_rope_scaling_attn_factors(longrope_attention_factor(config))
        if getattr(config, "head_dim", None):
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        if params["rope_type"] == "linear":
            from gguf import RopeScalingType

            writer.add_rope_scaling_type(RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(params["factor"]))
    else:
        writer.add_vocab_size(config.vocab_size)
        writer.add_context_length(config.n_positions)
        writer.add_embedding_length(config.n_embd)
        writer.add_feed_forward_length(config.n_inner or 4 * config.n_embd)
        writer.add_block_count(config.n_layer)
        writer.add_head_count(config.n_head)
        writer.add_layer_norm_eps(float(config.layer_norm_epsilon))


def add_gemma_hyperparameters(writer: GGUFWriter, arch: str, config: PretrainedConfig) -> None:
    head_dim = attention_head_dim(config)
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_key_length(head_dim)  # Gemma 2's 256 is not hidden_size / heads
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_sliding_window(int(config.sliding_window))
    global_rope = gemma_rope_parameters(config, "full_attention")
    writer.add_rope_freq_base(float(global_rope["rope_theta"]))
    if global_rope["rope_type"] == "linear":  # global layers only: llama.cpp's sliding ones are 1.0
        from gguf import RopeScalingType

        writer.add_rope_scaling_type(RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(global_rope["factor"]))
    if arch == "gemma2":
        writer.add_attn_logit_softcapping(float(config.attn_logit_softcapping))
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping))
    else:
        local_rope = gemma_rope_parameters(config, "sliding_attention")
        writer.add_rope_freq_base_swa(float(local_rope["rope_theta"]))


def partial_rotary_factor(config: PretrainedConfig) -> float:
    """The share of each head the rotary embedding turns (Phi-4-mini: 0.75; most models: all)."""
    factor = rope_parameters(config).get("partial_rotary_factor")
    if factor is None:
        factor = getattr(config, "partial_rotary_factor", None)
    return float(factor) if factor is not None else 1.0


def context_length(config: PretrainedConfig) -> int:
    """The context llama.cpp is told the model has. Mistral 7B v0.1 attends to the last
    `sliding_window` (4096) positions only; llama.cpp's llama attends to all of them, which is the
    same computation up to the window, so the file claims that much context and no more."""
    window = getattr(config, "sliding_window", None)
    if (
        isinstance(window, int)
        and config.model_type == "mistral"
        and window < config.max_position_embeddings
    ):
        return window
    return config.max_position_embeddings


def quant_version() -> int:
    from gguf import GGML_QUANT_VERSION

    return GGML_QUANT_VERSION
