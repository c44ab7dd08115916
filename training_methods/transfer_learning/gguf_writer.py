"""A Hugging Face causal-LM folder → one GGUF file, the format llama.cpp, LM Studio and Ollama run.

Written with `gguf`, the llama.cpp project's own GGUF writer, doing what llama.cpp's
`convert_hf_to_gguf.py` does for the architectures the toolkit fine-tunes:

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
- A SentencePiece BPE tokenizer (Llama 2, Mistral, Phi-3, Gemma: `tokenizer.ggml.model = llama`)
  is read from its `tokenizer.model`, as llama.cpp's converter does: each piece with its score
  (the merge priority) and type (the `<0xXX>` byte-fallback pieces as BYTE; user-defined pieces
  transformers marks special, Gemma's turn markers, as CONTROL), `add_space_prefix` from the
  model's dummy prefix (Gemma has none), then the tokens transformers added. transformers 5 does
  not copy tokenizer.model into a fine-tune's folders, so it is also looked for in the base
  model's.
- A byte-level BPE tokenizer (`tokenizer.ggml.model = gpt2`): every token with its type,
  the merges, BOS/EOS/pad ids, whether BOS/EOS are added when encoding, and the name of the
  pre-tokenizer llama.cpp must use to split text before BPE, read from tokenizer.json (the GPT-2
  regex → `gpt-2`, Llama 3's → `llama-bpe`, Qwen2's → `qwen2`). A wrong name still loads but
  splits digits and spaces differently, so prompts become other token ids.
- The chat template (`tokenizer.chat_template`), so LM Studio shows the prompt format the model
  was trained with, and the EOS id, so generation stops where the model learned to stop.

Types written here, tensor by tensor with `gguf`'s numpy quantisers: `f32` (exact), `f16` (2-D
weights halved), `q8_0` (blocks of 32 int8 values sharing one f16 scale) and the 4/5-bit block
types `q4_0`, `q4_1`, `q5_0`, `q5_1` (32 values per block; `_1` adds a per-block minimum). As in
llama.cpp's converter, 1-D tensors (norms, biases) and GPT-2's position embeddings stay f32, and a
row whose length is not a multiple of 32 falls back to f16. For the 4/5-bit types the output head
(the embedding when it is tied) is q8_0: llama.cpp's quantiser keeps it at 6 bits or more too,
because every next-token choice goes through it.

The k-quants `q4_k_m`, `q5_k_m` and `q6_k` (256-value super-blocks with quantised per-block
scales; `_m` mixes in 6-bit tensors where they matter most) are made by llama.cpp's own quantiser
(`llama_model_quantize`, through llama-cpp-python) from an f16 file: the requested f16 when there
is one, else a temporary one removed afterwards. `write_ggufs` writes several types from one model
folder, so an export merges once.

The file is streamed: the header and tensor index are written from the shapes alone, then one
tensor at a time is read, converted and appended, so memory holds one tensor, not the model. It is
written under a temporary name and renamed into place only when complete, so an interrupted or
disk-full write never leaves a truncated `.gguf` under the final name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from shared_utils.errors import ConfigurationError, LLMToolkitError
from training_methods.transfer_learning.llama_cpp_runtime import import_llama_cpp, llama_cpp_log

if TYPE_CHECKING:
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

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
    "phi3": ("default",),  # Phi-3's longrope (128k variants) needs factor tensors not written here
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
QUANT_BLOCK = 32  # values per q8_0/q4_0/q4_1/q5_0/q5_1 block: a row must be a multiple of it

# Pre-tokenizer regexes of tokenizer.json `Split` steps → llama.cpp's `tokenizer.ggml.pre` name.
# The GPT-2 regex is built into the `ByteLevel` step (use_regex=true) and has no pattern here.
LLAMA3_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
    r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLIT_PRE_TOKENIZERS: dict[str, str] = {LLAMA3_SPLIT_REGEX: "llama-bpe", QWEN2_SPLIT_REGEX: "qwen2"}
# llama.cpp matches whole vocabulary words before merging for these (HF: `ignore_merges: true`).
PRE_TOKENIZERS_IGNORING_MERGES = {"llama-bpe"}

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


@dataclass
class GGUFSummary:
    """What `write_gguf` wrote; the export command prints it, the benchmark tabulates it."""

    path: Path
    gguf_type: str
    architecture: str
    tokenizer_pre: str
    tensor_count: int
    size_bytes: int
    seconds: float
    tensor_types: dict[str, int] = field(default_factory=dict)  # ggml type → number of tensors
    kind: Literal["model", "lora"] = "model"  # a whole model, or a LoRA adapter for one


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
        llama_cpp_scalar = _head_dim(config)
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


def tokenizer_spec(tokenizer: PreTrainedTokenizerBase, where: str) -> dict[str, Any]:
    """The tokenizer.json of a fast tokenizer, as a dict."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigurationError(
            f"{where}: the tokenizer is not a fast (tokenizer.json) tokenizer; the GGUF export "
            "reads its vocabulary, merges and pre-tokenizer from tokenizer.json"
        )
    return json.loads(backend.to_str())


def tokenizer_pre_name(spec: Mapping[str, Any], where: str) -> str:
    """llama.cpp's name (`tokenizer.ggml.pre`) for the pre-tokenizer of a byte-level BPE
    tokenizer.json; a ConfigurationError for any tokenizer llama.cpp would split differently."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        kind = "SentencePiece-style BPE" if model.get("byte_fallback") else model.get("type")
        raise ConfigurationError(
            f"{where}: a {kind} tokenizer; the GGUF export writes byte-level BPE tokenizers "
            "(GPT-2, Llama 3, Qwen2 style) and SentencePiece BPE ones read from tokenizer.model "
            "(Llama 2, Mistral) only — convert the merged folder with llama.cpp's "
            "convert_hf_to_gguf.py"
        )
    normalizer = spec.get("normalizer")
    if normalizer is not None and normalizer.get("type") != "NFC":
        raise ConfigurationError(
            f"{where}: tokenizer normalizer {normalizer.get('type')} is not reproduced by "
            "llama.cpp; the GGUF export supports none or NFC"
        )
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    if any(step.get("type") == "ByteLevel" and step.get("add_prefix_space") for step in steps):
        raise ConfigurationError(
            f"{where}: the ByteLevel pre-tokenizer adds a prefix space, which llama.cpp's BPE "
            "does not — save the tokenizer with add_prefix_space=False"
        )
    name: str | None = None
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        name = "gpt-2"
    elif kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        split = steps[0]
        pattern = (split.get("pattern") or {}).get("Regex")
        if split.get("behavior") == "Isolated" and not split.get("invert"):
            name = SPLIT_PRE_TOKENIZERS.get(pattern or "")
    if name is None:
        raise ConfigurationError(
            f"{where}: pre-tokenizer {' + '.join(map(str, kinds)) or 'none'} is not one llama.cpp "
            "reproduces here (supported: ByteLevel with the GPT-2 regex, or the Llama 3 / Qwen2 "
            "Split regex + ByteLevel) — convert the merged folder with llama.cpp's "
            "convert_hf_to_gguf.py"
        )
    if (name in PRE_TOKENIZERS_IGNORING_MERGES) != bool(model.get("ignore_merges")):
        raise ConfigurationError(
            f"{where}: pre-tokenizer {name} with ignore_merges={bool(model.get('ignore_merges'))}; "
            "llama.cpp would merge differently"
        )
    return name


def is_sentencepiece_bpe(spec: Mapping[str, Any]) -> bool:
    """A tokenizer.json converted from a SentencePiece BPE model (Llama 2, Mistral, Gemma):
    BPE over "▁"-joined text with byte fallback, rather than byte-level BPE."""
    model = spec.get("model") or {}
    return model.get("type") == "BPE" and bool(model.get("byte_fallback"))


def check_exportable(
    config: PretrainedConfig,
    tokenizer: PreTrainedTokenizerBase,
    where: str,
    tokenizer_dirs: Sequence[Path] = (),
) -> tuple[str, str, SentencePieceVocab | None]:
    """(llama.cpp architecture, pre-tokenizer name, the SentencePiece vocabulary or None for
    byte-level BPE) when the GGUF writer can convert this model; a ConfigurationError otherwise.
    Cheap: reads configs and the tokenizer only, so it runs before any large write.
    `tokenizer_dirs`: folders searched, in order, for the tokenizer.model of a SentencePiece
    tokenizer (save_pretrained of transformers 5 does not copy it into a fine-tune's folder)."""
    arch = check_model_config(config, where)
    spec = tokenizer_spec(tokenizer, where)
    sentencepiece: SentencePieceVocab | None = None
    if is_sentencepiece_bpe(spec):
        sentencepiece = read_sentencepiece(tokenizer, config.vocab_size, tokenizer_dirs, where)
        pre = "default"  # llama.cpp's SentencePiece tokenizer has no pre-tokenizer
    else:
        pre = tokenizer_pre_name(spec, where)
    if tokenizer.eos_token_id is None:
        raise ConfigurationError(
            f"{where}: the tokenizer has no EOS token; llama.cpp would never stop generating — "
            "set eos_token in tokenizer_config.json"
        )
    return arch, pre, sentencepiece


# --------------------------------------------------------------------------------------------------
# SentencePiece vocabularies (tokenizer.model)
# --------------------------------------------------------------------------------------------------

SENTENCEPIECE_MODEL = "tokenizer.model"
# Texts both tokenizers must split alike before a file is written: llama.cpp's SentencePiece
# tokenizer reproduces the sentencepiece library, so these compare transformers with that.
SENTENCEPIECE_PROBES = (
    "Hello world, this is 12345 and 3.14.",
    "Crème brûlée, naïve — 日本語 🌱",
    "def f(x):\n\treturn x  # done",
)
LEADING_SPACE_PROBE = "  two leading spaces"
SCORE_ADDED = -1000.0  # tokens added by transformers: never merged into, as in llama.cpp
SCORE_UNUSED = -10000.0  # embedding rows without a token


@dataclass(frozen=True)
class SentencePieceVocab:
    """What llama.cpp's `llama` tokenizer needs from tokenizer.model: every token id below the
    model's vocab_size with its piece, score (the merge priority of BPE) and gguf.TokenType
    (NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, or BYTE for the <0xXX> fallback pieces)."""

    path: Path
    tokens: list[str]
    scores: list[float]
    types: list[int]
    add_space_prefix: bool  # sentencepiece's add_dummy_prefix: "▁" before the text
    # Where transformers' Metaspace pre-tokenizer leaves that "▁" out and llama.cpp (like
    # sentencepiece) does not: text that opens with a space; text after a special token when
    # the tokenizer is not `legacy`. Reported, not refused: these are the families' own tokenizers.
    prefix_differences: tuple[str, ...] = ()


def find_sentencepiece_model(folders: Sequence[Path]) -> Path | None:
    for folder in folders:
        candidate = Path(folder) / SENTENCEPIECE_MODEL
        if candidate.is_file():
            return candidate
    return None


def _sentencepiece_proto(path: Path, where: str) -> Any:
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as exc:  # protobuf's DecodeError; anything else is the same damage
        raise ConfigurationError(
            f"{where}: {path} is not a SentencePiece model ({type(exc).__name__}) — copy the "
            "base model's tokenizer.model again"
        ) from None
    return proto


def check_sentencepiece_model(proto: Any, path: Path, where: str) -> None:
    """ConfigurationError for a SentencePiece model that llama.cpp's `llama` tokenizer splits
    differently: it runs BPE merges by score on the raw text with spaces as "▁" and nothing else."""
    from sentencepiece import sentencepiece_model_pb2

    trainer, normalizer = proto.trainer_spec, proto.normalizer_spec
    kind = sentencepiece_model_pb2.TrainerSpec.ModelType.Name(trainer.model_type)
    problem = None
    if kind != "BPE":
        problem = f"a {kind} model; llama.cpp's SentencePiece tokenizer merges like BPE only"
    elif normalizer.name not in ("identity", "") or normalizer.precompiled_charsmap:
        problem = f"normalization {normalizer.name!r}, which llama.cpp does not apply"
    elif normalizer.remove_extra_whitespaces:
        problem = "remove_extra_whitespaces=true, which llama.cpp does not do"
    elif not normalizer.escape_whitespaces or trainer.treat_whitespace_as_suffix:
        problem = "a whitespace treatment other than '▁' before words"
    if problem:
        raise ConfigurationError(
            f"{where}: {path} is {problem} — convert the merged folder with llama.cpp's "
            "convert_hf_to_gguf.py"
        )


def read_sentencepiece(
    tokenizer: PreTrainedTokenizerBase, vocab_size: int, folders: Sequence[Path], where: str
) -> SentencePieceVocab:
    """The SentencePiece vocabulary of `tokenizer`, from the first tokenizer.model in `folders`,
    checked against transformers: the same pieces at the same ids, and the same token ids for
    SENTENCEPIECE_PROBES. Tokens transformers added after the model's pieces (chat markers, a
    padding token) follow as CONTROL (special) or USER_DEFINED, then UNUSED `[PADn]` rows."""
    from gguf import TokenType
    from sentencepiece import SentencePieceProcessor

    path = find_sentencepiece_model(folders)
    if path is None:
        searched = ", ".join(str(folder) for folder in folders) or where
        raise ConfigurationError(
            f"{where}: a SentencePiece tokenizer without its {SENTENCEPIECE_MODEL} (searched "
            f"{searched}); the GGUF export reads the scores and token types from it — copy the "
            "base model's tokenizer.model into the model folder"
        )
    proto = _sentencepiece_proto(path, where)
    check_sentencepiece_model(proto, path, where)
    processor = SentencePieceProcessor(model_file=str(path))
    pieces = processor.get_piece_size()
    if pieces > vocab_size:
        raise ConfigurationError(
            f"{where}: {path} has {pieces} pieces but the model only {vocab_size} embedding rows "
            "— export the model and tokenizer that were trained together"
        )
    vocab = tokenizer.get_vocab()
    by_id = {index: token for token, index in vocab.items()}
    if max(vocab.values(), default=0) >= vocab_size:
        raise ConfigurationError(
            f"the tokenizer has token id {max(vocab.values())} but the model only {vocab_size} "
            "embedding rows — export the model and tokenizer that were trained together"
        )
    tokens: list[str] = []
    scores: list[float] = []
    types: list[int] = []
    for index in range(pieces):
        piece = processor.id_to_piece(index)
        if by_id.get(index) != piece:
            raise ConfigurationError(
                f"{where}: {path} has {piece!r} at id {index}, the tokenizer "
                f"{by_id.get(index)!r} — tokenizer.model is not the one tokenizer.json was made "
                "from; copy the matching one"
            )
        if processor.is_unknown(index):
            kind = TokenType.UNKNOWN
        elif processor.is_control(index):
            kind = TokenType.CONTROL
        elif processor.is_unused(index):
            kind = TokenType.UNUSED
        elif processor.is_byte(index):
            kind = TokenType.BYTE
        elif proto.pieces[index].type == proto.pieces[index].USER_DEFINED:
            # Gemma's <start_of_turn>/<end_of_turn> are user-defined pieces that transformers
            # marks special: llama.cpp's converter makes those control tokens.
            entry = tokenizer.added_tokens_decoder.get(index)
            special = entry is not None and entry.special
            kind = TokenType.CONTROL if special else TokenType.USER_DEFINED
        else:
            kind = TokenType.NORMAL
        tokens.append(piece)
        scores.append(processor.get_score(index))
        types.append(kind)
    added = tokenizer.added_tokens_decoder
    for index in range(pieces, vocab_size):
        token = by_id.get(index)
        entry = added.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            scores.append(SCORE_UNUSED)
            types.append(TokenType.UNUSED)
            continue
        if (entry is not None and entry.special) or looks_special(token):
            types.append(TokenType.CONTROL)
        else:
            types.append(TokenType.USER_DEFINED)
            token = token.replace("\u2581", " ")  # llama.cpp matches user tokens in raw text
        tokens.append(token)
        scores.append(SCORE_ADDED)
    for text in SENTENCEPIECE_PROBES:
        expected = processor.encode(text)
        got = tokenizer(text, add_special_tokens=False)["input_ids"]
        if got != expected:
            raise ConfigurationError(
                f"{where}: transformers splits {text!r} into other tokens than {path.name} "
                "(which llama.cpp follows) — the tokenizer's pre-tokenizer or normalizer differs "
                "from the SentencePiece model; convert with llama.cpp's convert_hf_to_gguf.py"
            )
    differences = []
    leading = tokenizer(LEADING_SPACE_PROBE, add_special_tokens=False)["input_ids"]
    if leading != processor.encode(LEADING_SPACE_PROBE):
        differences.append("text that starts with a space")
    eos = tokenizer.eos_token
    if eos is not None and tokenizer.eos_token_id is not None:
        after = tokenizer(f"{eos}x", add_special_tokens=False)["input_ids"]
        if after != [tokenizer.eos_token_id, *processor.encode("x")]:
            differences.append("text after a special token such as a chat template's")
    return SentencePieceVocab(
        path=path,
        tokens=tokens,
        scores=scores,
        types=[int(kind) for kind in types],
        add_space_prefix=bool(proto.normalizer_spec.add_dummy_prefix),
        prefix_differences=tuple(differences),
    )


# --------------------------------------------------------------------------------------------------
# Pure pieces: the rotary permutation, the vocabulary, the merges
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


def looks_special(token: str) -> bool:
    """Added tokens llama.cpp should treat as control tokens even when not marked special."""
    return (token.startswith("<|") and token.endswith("|>")) or token in ("<pad>", "<mask>")


def vocabulary(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> tuple[list[str], list[int]]:
    """Every token id below `vocab_size` as (token text, gguf.TokenType): normal tokens, added
    special tokens as CONTROL, other added tokens as USER_DEFINED, ids the tokenizer does not use
    (embedding rows padded to a round size) as UNUSED `[PADn]`."""
    from gguf import TokenType

    vocab = tokenizer.get_vocab()
    if vocab and max(vocab.values()) >= vocab_size:
        raise ConfigurationError(
            f"the tokenizer has token id {max(vocab.values())} but the model only {vocab_size} "
            "embedding rows — export the model and tokenizer that were trained together"
        )
    by_id = {index: token for token, index in vocab.items()}
    added = tokenizer.get_added_vocab()
    added_decoder = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for index in range(vocab_size):
        token = by_id.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(TokenType.UNUSED)
        elif token in added:
            entry = added_decoder.get(index)
            if (entry is not None and entry.special) or looks_special(token):
                types.append(TokenType.CONTROL)
            else:
                types.append(TokenType.USER_DEFINED)
            tokens.append(token)
        else:
            tokens.append(token)
            types.append(TokenType.NORMAL)
    return tokens, types


def bpe_merges(spec: Mapping[str, Any]) -> list[str]:
    """Merges of a tokenizer.json as llama.cpp reads them: "left right", one per rank, a space
    inside a part written as U+0120 (tokenizers >= 0.20 stores pairs, which may hold spaces)."""
    merges = (spec.get("model") or {}).get("merges") or []
    out = []
    for merge in merges:
        if isinstance(merge, str):
            out.append(merge)
        else:
            left, right = (part.replace(" ", chr(ord(" ") + 256)) for part in merge)
            out.append(f"{left} {right}")
    return out


def special_tokens_added(tokenizer: PreTrainedTokenizerBase) -> tuple[bool, bool]:
    """(BOS prepended, EOS appended) when the tokenizer encodes with special tokens, measured
    rather than parsed from the post-processor, so llama.cpp adds exactly what transformers does."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    add_bos = bos is not None and len(full) > len(plain) and full[0] == bos and plain[:1] != [bos]
    add_eos = eos is not None and len(full) > len(plain) and full[-1] == eos and plain[-1:] != [eos]
    return add_bos, add_eos


def chat_template_of(tokenizer: PreTrainedTokenizerBase) -> str | list[dict[str, str]]:
    """The tokenizer's chat template, else the toolkit's default, which training gave the model
    (shared_utils.data_loader.ensure_chat_template), so LM Studio prompts it the same way."""
    from shared_utils.data_loader import DEFAULT_CHAT_TEMPLATE

    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, Mapping):  # several named templates: "default" is the one LM Studio
        return [{"name": name, "template": text} for name, text in template.items()]
    return template or DEFAULT_CHAT_TEMPLATE


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
    if arch == "llama":
        params = rope_parameters(config)
        if params["rope_type"] == "llama3":
            factors = llama3_rope_factors(params, _head_dim(config))
            plans.append(
                TensorPlan(
                    "",
                    gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
                    (len(factors),),
                    gguf.GGMLQuantizationType.F32,
                    compute=lambda: _float32_array(factors),
                )
            )
    return plans


def _float32_array(values: Sequence[float]) -> np.ndarray:
    import numpy as np

    return np.asarray(values, dtype=np.float32)


def _head_dim(config: PretrainedConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


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


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def _file_type(gguf_type: GGUFType) -> LlamaFileType:
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
    writer.add_file_type(_file_type(gguf_type))
    writer.add_quantization_version(_quant_version())
    if arch in GEMMA:
        add_gemma_hyperparameters(writer, arch, config)
    elif arch in LLAMA_LIKE:
        params = rope_parameters(config)
        head_dim = _head_dim(config)
        writer.add_vocab_size(config.vocab_size)
        writer.add_context_length(context_length(config))
        writer.add_embedding_length(config.hidden_size)
        writer.add_feed_forward_length(config.intermediate_size)
        writer.add_block_count(config.num_hidden_layers)
        writer.add_head_count(config.num_attention_heads)
        writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
        writer.add_rope_freq_base(float(params["rope_theta"]))
        writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
        writer.add_rope_dimension_count(int(head_dim * _partial_rotary_factor(config)))
        if arch == "phi3":
            # Phi-3 mini's window (2047); 0 tells llama.cpp there is none (Phi-4-mini).
            writer.add_sliding_window(getattr(config, "sliding_window", None) or 0)
            writer.add_rope_scaling_orig_ctx_len(
                getattr(config, "original_max_position_embeddings", None)
                or config.max_position_embeddings
            )
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
    head_dim = _head_dim(config)
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


def _partial_rotary_factor(config: PretrainedConfig) -> float:
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


def _quant_version() -> int:
    from gguf import GGML_QUANT_VERSION

    return GGML_QUANT_VERSION


def add_tokenizer(
    writer: GGUFWriter,
    tokenizer: PreTrainedTokenizerBase,
    config: PretrainedConfig,
    pre: str,
    where: str,
    sentencepiece: SentencePieceVocab | None = None,
) -> None:
    vocab_size = config.vocab_size
    if sentencepiece is not None:
        writer.add_tokenizer_model("llama")  # llama.cpp's name for SentencePiece BPE
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(sentencepiece.tokens)
        writer.add_token_scores(sentencepiece.scores)
        writer.add_token_types(sentencepiece.types)
        writer.add_add_space_prefix(sentencepiece.add_space_prefix)
    else:
        tokens, types = vocabulary(tokenizer, vocab_size)
        writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        writer.add_token_merges(bpe_merges(tokenizer_spec(tokenizer, where)))
    for kind in ("bos", "eos", "unk", "pad"):
        # The tokenizer's ids, else the model config's (GPT-2 names BOS only there), as
        # llama.cpp's converter reads them.
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is None:
            token_id = getattr(config, f"{kind}_token_id", None)
        if isinstance(token_id, int) and 0 <= token_id < vocab_size:
            getattr(writer, f"add_{kind}_token_id")(token_id)
    add_bos, add_eos = special_tokens_added(tokenizer)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(add_eos)
    writer.add_chat_template(chat_template_of(tokenizer))


def check_gguf_types(gguf_types: Sequence[str]) -> None:
    """ConfigurationError for an unknown type, or for a k-quant where llama-cpp-python (whose
    quantiser makes them) cannot be imported. Cheap: runs before anything is written."""
    for gguf_type in gguf_types:
        if gguf_type not in GGUF_TYPES:
            raise ConfigurationError(f"--gguf-type {gguf_type}: use one of {', '.join(GGUF_TYPES)}")
    for gguf_type in gguf_types:
        if gguf_type in LLAMA_CPP_TYPES:
            _import_llama_cpp(gguf_type)
            return


def _import_llama_cpp(gguf_type: str) -> Any:
    return import_llama_cpp(
        f"--gguf-type {gguf_type}: the k-quants are made by llama.cpp's quantiser",
        f"or choose one of {', '.join(NUMPY_TYPES)}",
    )


@dataclass(frozen=True)
class ExportableModel:
    """A model folder whose configs passed `check_exportable`."""

    model_dir: Path
    config: PretrainedConfig
    tokenizer: PreTrainedTokenizerBase
    arch: str
    pre: str
    sentencepiece: SentencePieceVocab | None = None

    @classmethod
    def read(cls, model_dir: Path, tokenizer_dirs: Sequence[Path] = ()) -> ExportableModel:
        from transformers import AutoConfig, AutoTokenizer

        try:
            config = AutoConfig.from_pretrained(model_dir)
            tokenizer = AutoTokenizer.from_pretrained(model_dir)
        except (OSError, ValueError) as exc:
            from training_methods.transfer_learning.model_loading import model_not_found

            raise model_not_found(str(model_dir), exc) from None
        folders = [model_dir, *tokenizer_dirs, *_merge_base_dir(model_dir)]
        arch, pre, sentencepiece = check_exportable(config, tokenizer, str(model_dir), folders)
        if sentencepiece is not None and sentencepiece.prefix_differences:
            logger.warning(
                "%s: llama.cpp, like sentencepiece, puts a '▁' before %s, where this "
                "transformers tokenizer does not: there llama.cpp's prompts have one token more",
                model_dir,
                " and before ".join(sentencepiece.prefix_differences),
            )
        return cls(model_dir, config, tokenizer, arch, pre, sentencepiece)


def _merge_base_dir(model_dir: Path) -> list[Path]:
    """The base model folder a merge output records in merge_info.json (where the tokenizer.model
    that save_pretrained does not copy still is), when it is a local folder."""
    info = model_dir / "merge_info.json"
    try:
        base = json.loads(info.read_text(encoding="utf-8")).get("base_model")
    except (OSError, ValueError):
        return []
    return [Path(base)] if isinstance(base, str) and Path(base).is_dir() else []


def write_gguf(
    model_dir: str | Path,
    output_path: str | Path,
    gguf_type: GGUFType = "f16",
    *,
    name: str | None = None,
    progress: bool = True,
    tokenizer_dirs: Sequence[Path] = (),
) -> GGUFSummary:
    """Convert the model folder `model_dir` (config.json, *.safetensors, tokenizer.json) into the
    single file `output_path`, replacing it atomically. Raises ConfigurationError for a model the
    writer cannot convert, before anything is written. `tokenizer_dirs`: more folders to find a
    SentencePiece tokenizer.model in (the adapter's, the base model's)."""
    return write_ggufs(
        model_dir,
        {gguf_type: Path(output_path)},
        name=name,
        progress=progress,
        tokenizer_dirs=tokenizer_dirs,
    )[0]


def write_ggufs(
    model_dir: str | Path,
    outputs: Mapping[GGUFType, Path],
    *,
    name: str | None = None,
    progress: bool = True,
    tokenizer_dirs: Sequence[Path] = (),
) -> list[GGUFSummary]:
    """One GGUF file per type (`outputs`: type → path) from one model folder, in the order given.
    The k-quants are quantised by llama.cpp from the f16 file when one is requested, else from a
    temporary f16 file next to the first of them, removed afterwards."""
    check_gguf_types(list(outputs))
    model = ExportableModel.read(Path(model_dir), tokenizer_dirs)
    written: dict[str, GGUFSummary] = {}
    for gguf_type, path in outputs.items():
        if gguf_type in NUMPY_TYPES:
            written[gguf_type] = _write_numpy(model, Path(path), gguf_type, name, progress)
    kquants = [gguf_type for gguf_type in outputs if gguf_type in LLAMA_CPP_TYPES]
    if kquants:
        source = written.get("f16")
        temporary: Path | None = None
        if source is None:
            first = Path(outputs[kquants[0]])
            first.parent.mkdir(parents=True, exist_ok=True)
            fd, name_tmp = tempfile.mkstemp(
                prefix=f".{first.name}.", suffix=".f16.tmp", dir=first.parent
            )
            os.close(fd)
            temporary = Path(name_tmp)
        try:
            if temporary is not None:
                source = _write_numpy(model, temporary, "f16", name, progress, announce=False)
            assert source is not None
            for gguf_type in kquants:
                summary = quantize_gguf(source.path, Path(outputs[gguf_type]), gguf_type)
                if temporary is not None:  # the f16 made for it is part of its cost
                    summary.seconds = round(summary.seconds + source.seconds, 3)
                written[gguf_type] = summary
        finally:
            if temporary is not None:
                with contextlib.suppress(FileNotFoundError):
                    temporary.unlink()
    return [written[gguf_type] for gguf_type in outputs]


def _write_numpy(
    model: ExportableModel,
    output_path: Path,
    gguf_type: GGUFType,
    name: str | None,
    progress: bool,
    *,
    announce: bool = True,
) -> GGUFSummary:
    """Write one file of a NUMPY_TYPES type, streamed tensor by tensor; `announce`: log it (not
    the temporary f16 a k-quant is made from)."""
    where = str(model.model_dir)
    config = model.config
    started = time.monotonic()
    checkpoint = CheckpointTensors(model.model_dir)
    try:
        plans = plan_tensors(model.arch, config, checkpoint, gguf_type, where)
        writer = _prepared_writer(model, plans, gguf_type, name)
        data_bytes = sum(plan.nbytes for plan in plans)
        _check_free_space(output_path, data_bytes)
        with _atomic_path(output_path) as staging:
            try:
                _stream(writer, staging, plans, checkpoint, config, progress)
            except OSError as exc:
                raise LLMToolkitError(
                    f"{output_path}: writing the GGUF file failed ({exc.strerror or exc}); "
                    f"nothing was left under that name — free about {data_bytes / 1e6:.0f} MB "
                    "in its folder or choose another --output, then export again"
                ) from exc
            finally:
                writer.close()
    finally:
        checkpoint.close()
    if announce:
        logger.info("wrote %s (%s, %d tensors)", output_path, gguf_type, len(plans))
    return GGUFSummary(
        path=output_path,
        gguf_type=gguf_type,
        architecture=model.arch,
        tokenizer_pre=model.pre,
        tensor_count=len(plans),
        size_bytes=output_path.stat().st_size,
        seconds=round(time.monotonic() - started, 3),
        tensor_types=dict(Counter(plan.qtype.name for plan in plans)),
    )


def quantize_gguf(source: Path, output_path: Path, gguf_type: GGUFType) -> GGUFSummary:
    """Quantise the f16 GGUF `source` into `output_path` with llama.cpp's own quantiser (the
    `llama-quantize` tool's code, with its per-tensor choices), replacing it atomically."""
    import ctypes

    from gguf import GGUFReader

    llama_cpp = _import_llama_cpp(gguf_type)
    started = time.monotonic()
    # The k-quants need less than half of f16's bits; the check wants an upper bound.
    _check_free_space(output_path, source.stat().st_size // 2)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, LLAMA_CPP_TYPES[gguf_type])
    with _atomic_path(output_path) as staging:
        with llama_cpp_log() as log:
            status = llama_cpp.llama_model_quantize(
                os.fsencode(source), os.fsencode(staging), ctypes.byref(params)
            )
        if status != 0:
            failures = [line for line in log if "fail" in line] or log or [f"status {status}"]
            reason = failures[-1]
            raise LLMToolkitError(
                f"{output_path}: llama.cpp could not quantise {source.name} to {gguf_type} "
                f"({reason}); nothing was left under that name — if the disk is full, free about "
                f"{source.stat().st_size / 2e6:.0f} MB in its folder, then export again"
            )
        with open(staging, "rb") as handle:
            os.fsync(handle.fileno())
    reader = GGUFReader(output_path)
    types = Counter(tensor.tensor_type.name for tensor in reader.tensors)
    arch = str(reader.fields["general.architecture"].contents())
    pre = str(reader.fields["tokenizer.ggml.pre"].contents())
    count = len(reader.tensors)
    del reader  # its memory map
    logger.info("wrote %s (%s, %d tensors)", output_path, gguf_type, count)
    return GGUFSummary(
        path=output_path,
        gguf_type=gguf_type,
        architecture=arch,
        tokenizer_pre=pre,
        tensor_count=count,
        size_bytes=output_path.stat().st_size,
        seconds=round(time.monotonic() - started, 3),
        tensor_types=dict(types),
    )


def _prepared_writer(
    model: ExportableModel,
    plans: Sequence[TensorPlan],
    gguf_type: GGUFType,
    name: str | None,
) -> GGUFWriter:
    """A GGUFWriter holding every key and the index of every tensor, nothing written yet."""
    from gguf import GGUFWriter

    where = str(model.model_dir)
    writer = GGUFWriter(path=None, arch=model.arch)
    writer.add_name(name or model.model_dir.name)
    add_hyperparameters(writer, model.arch, model.config, gguf_type)
    add_tokenizer(writer, model.tokenizer, model.config, model.pre, where, model.sentencepiece)
    _declare_tensors(writer, plans)
    return writer


def _declare_tensors(writer: GGUFWriter, plans: Sequence[TensorPlan]) -> None:
    """The index entry of every tensor, in write order; the data follows in `_stream`."""
    import numpy as np
    from gguf import GGMLQuantizationType as Q

    for plan in plans:
        if plan.qtype not in (Q.F32, Q.F16):  # quantized tensors are declared by their byte shape
            byte_shape = (*plan.shape[:-1], plan.nbytes // math.prod(plan.shape[:-1]))
            writer.add_tensor_info(plan.name, byte_shape, np.uint8, plan.nbytes, plan.qtype)
        else:
            dtype = np.float32 if plan.qtype == Q.F32 else np.float16
            writer.add_tensor_info(plan.name, plan.shape, dtype, plan.nbytes, plan.qtype)


def _stream(
    writer: GGUFWriter,
    path: Path,
    plans: Sequence[TensorPlan],
    checkpoint: CheckpointTensors,
    config: PretrainedConfig,
    progress: bool,
) -> None:
    from tqdm import tqdm

    writer.write_header_to_file(path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    bar = tqdm(
        total=sum(plan.nbytes for plan in plans),
        unit="B",
        unit_scale=True,
        desc=f"writing {path.name.lstrip('.').split('.gguf')[0]}.gguf",
        disable=not progress,
        leave=False,
    )
    with bar:
        for plan in plans:
            data = convert_tensor(plan, checkpoint, config)
            writer.write_tensor_data(data)
            bar.update(plan.nbytes)
    writer.flush()
    assert writer.fout is not None
    for handle in writer.fout:
        os.fsync(handle.fileno())


def _check_free_space(output_path: Path, data_bytes: int) -> None:
    folder = output_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    needed = data_bytes + (16 << 20)  # the metadata (vocabulary, merges) is a few MB at most
    if free < needed:
        raise LLMToolkitError(
            f"{folder}: {free / 1e6:.0f} MB free, the GGUF file needs about {needed / 1e6:.0f} MB "
            "— free some space or choose another --output"
        )


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path next to `path`, renamed over it when the block succeeds and removed when
    it fails (a rename within one file system is atomic)."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give what a plain open() gives
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


# --------------------------------------------------------------------------------------------------
# LoRA adapters: the adapter alone as a GGUF file llama.cpp applies on top of the base's GGUF
# --------------------------------------------------------------------------------------------------

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
        _declare_tensors(writer, plans)
        data_bytes = sum(plan.nbytes for plan in plans)
        _check_free_space(output_path, data_bytes)
        with _atomic_path(output_path) as staging:
            try:
                _stream(writer, staging, plans, adapter, base_config, progress)
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
