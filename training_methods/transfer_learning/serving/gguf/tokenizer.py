"""The tokenizer of a GGUF file: which tokenizers llama.cpp splits as transformers does, and the
vocabulary, merges, special tokens and chat template written as `tokenizer.*` metadata.

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
  regex → `gpt-2`, Llama 3's → `llama-bpe`, Qwen2's → `qwen2`, the o200k one of GPT-4o and
  Phi-4-mini → `gpt-4o`). A wrong name still loads but splits digits and spaces differently, so
  prompts become other token ids. llama.cpp's `gpt-4o` splitter tells capitals from lower case
  by ASCII only, so a run of capitals holding a non-ASCII one ("ÉCOLE", "ÜBER") is split
  (É + COLE) where transformers keeps it whole; every Phi-4-mini GGUF llama.cpp's own converter
  makes does the same, and the export warns (GPT4O_CAPITALS_WARNING).
- The chat template (`tokenizer.chat_template`), so LM Studio shows the prompt format the model
  was trained with, and the EOS id, so generation stops where the model learned to stop.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from shared_utils.errors import ConfigurationError

if TYPE_CHECKING:
    from gguf import GGUFWriter
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

    from training_methods.transfer_learning.serving.gguf.sentencepiece import SentencePieceVocab

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
GPT4O_SPLIT_REGEX = (  # tiktoken's o200k: case-aware letter runs with trailing contractions
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|"
    r"\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLIT_PRE_TOKENIZERS: dict[str, str] = {
    LLAMA3_SPLIT_REGEX: "llama-bpe",
    QWEN2_SPLIT_REGEX: "qwen2",
    GPT4O_SPLIT_REGEX: "gpt-4o",
}
GPT4O_CAPITALS_WARNING = (
    "%s: llama.cpp's gpt-4o pre-tokenizer splits a run of capitals holding a non-ASCII one "
    "(ÉCOLE → É + COLE) where transformers keeps it whole: there llama.cpp's prompts are other "
    "token ids (as in every Phi-4-mini GGUF)"
)
# llama.cpp matches whole vocabulary words before merging for these (HF: `ignore_merges: true`).
PRE_TOKENIZERS_IGNORING_MERGES = {"llama-bpe"}


# --------------------------------------------------------------------------------------------------
# Checks that run before anything is written
# --------------------------------------------------------------------------------------------------


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
            "(GPT-2, Llama 3, Qwen2, GPT-4o/Phi-4-mini style) and SentencePiece BPE ones read "
            "from tokenizer.model (Llama 2, Mistral, Phi-3, Gemma) only — convert the merged "
            "folder with llama.cpp's convert_hf_to_gguf.py"
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
            "reproduces here (supported: ByteLevel with the GPT-2 regex, or the Llama 3, Qwen2 "
            "or GPT-4o Split regex + ByteLevel) — convert the merged folder with llama.cpp's "
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


# --------------------------------------------------------------------------------------------------
# The vocabulary, the merges, the special tokens
# --------------------------------------------------------------------------------------------------


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
    (shared_utils.chat_templates.ensure_chat_template), so LM Studio prompts it the same way."""
    from shared_utils.chat_templates import DEFAULT_CHAT_TEMPLATE

    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, Mapping):  # several named templates: "default" is the one LM Studio
        return [{"name": name, "template": text} for name, text in template.items()]
    return template or DEFAULT_CHAT_TEMPLATE


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
