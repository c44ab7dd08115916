"""Tiny random models of each architecture the GGUF export supports, with tokenizers built the
way their families' are, saved like hub folders: the SentencePiece Llama 2 / Mistral pair, Gemma 2
and 3, Qwen2 and Qwen3, the three Phi-3 shapes. test_gguf_sentencepiece, test_gguf_gemma,
test_gguf_qwen, test_gguf_phi3 and test_gguf_lora build their models here; TOKENIZER_SAMPLES are
the texts every tokenizer is checked on."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from shared_utils.sample_corpus import sample_corpus_texts
from tests.finetune_helpers import CHATS

TOKENIZER_SAMPLES = [
    "Turn the pile every one to two weeks.",
    "Crème brûlée, naïve façade, Ærøskøbing — déjà vu.",
    "def add(a, b):\n    return a + b  # 12345 + 678\n\tx = [1, 2, 3]",
    "Compost 🌱🐛 works! 😀👍🏽 ok?",
    "  leading spaces and trailing   \n\n",
]


# --------------------------------------------------------------------------------------------------
# Tokenizer training shared by the families
# --------------------------------------------------------------------------------------------------


def _training_texts(chat_texts: list[str], samples: list[str]) -> list[str]:
    """What a tokenizer here is trained on: the sample corpus, texts of CHATS, its samples."""
    return [*sample_corpus_texts(), *chat_texts, *samples]


def _sentencepiece_bpe(path: Path, texts: list[str], vocab_size: int, **family: Any) -> Path:
    """A SentencePiece BPE model of `texts` written to `path`, trained the way Llama 2's and
    Gemma's were: byte fallback, digits split, identity normalisation, whitespace kept as
    written; `family` holds the options that differ (dummy prefix, special pieces and ids)."""
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts * 2),
        model_writer=model,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
        **family,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.getvalue())
    return path


def _byte_level_bpe(texts: list[str], split_regex: str, normalizer: Any = None) -> Any:
    """A byte-level BPE tokenizer (tokenizers' `Tokenizer`) of 800 tokens trained on `texts` the
    way Qwen2's and Phi-4-mini's tokenizer.json are: `normalizer` when given, `split_regex`, then
    ByteLevel without its own regex."""
    from tokenizers import Regex, Tokenizer, decoders, models, trainers
    from tokenizers import pre_tokenizers as pre

    backend = Tokenizer(models.BPE())
    if normalizer is not None:
        backend.normalizer = normalizer
    backend.pre_tokenizer = pre.Sequence(
        [
            pre.Split(Regex(split_regex), behavior="isolated", invert=False),
            pre.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800, initial_alphabet=pre.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator(texts * 2, trainer)
    return backend


# --------------------------------------------------------------------------------------------------
# Llama 2 and Mistral 7B with a SentencePiece BPE tokenizer (test_gguf_sentencepiece; Phi-3's too)
# --------------------------------------------------------------------------------------------------

# Llama 2's chat format without the system turn: BOS before each [INST], a space before the
# answer, EOS after it.
LLAMA2_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}"
    "{{- bos_token + '[INST] ' + message['content'] + ' [/INST]' }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- ' ' + message['content'] + ' ' + eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
)
# Mistral 7B Instruct v0.1's: one BOS, the answer straight after [/INST].
MISTRAL_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}"
    "{{- '[INST] ' + message['content'] + ' [/INST]' }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- message['content'] + eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
)
SPM_SAMPLES = [
    *[text for text in TOKENIZER_SAMPLES if not text.startswith(" ")],
    "堆肥需要每周翻动一次。日本語のテキスト、한국어 문장.",
    "I'm 2024's 1234567 people\r\n\r\nyou'LL",
]


def train_sentencepiece(path: Path, vocab_size: int = 600) -> Path:
    """A SentencePiece BPE model trained the way Llama 2's was (`_sentencepiece_bpe`), with a dummy
    "▁" prefix; <unk> <s> </s> at ids 0, 1, 2."""
    texts = _training_texts([q + " " + a for q, a in CHATS], SPM_SAMPLES)
    return _sentencepiece_bpe(
        path, texts, vocab_size, add_dummy_prefix=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1
    )


def sentencepiece_tokenizer(folder: Path, chat_template: str, legacy: bool) -> Any:
    """The tokenizer transformers makes from `folder`'s tokenizer.model and a tokenizer_config.json
    like the hub's (LlamaTokenizer; `legacy`: Mistral's true, "▁" before text after a special
    token as in sentencepiece; Llama 2's false, none there), with `chat_template`, saved there."""
    from transformers import AutoTokenizer

    train_sentencepiece(folder / "tokenizer.model")
    config = {"tokenizer_class": "LlamaTokenizer", "legacy": legacy, "add_bos_token": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(folder)  # tokenizer.json; tokenizer.model stays
    return tokenizer


def build_tiny_sentencepiece_model(folder: Path, arch: str, **overrides: Any) -> Path:
    """A random Llama (untied) or Mistral (tied, a sliding window shorter than its context)
    with a SentencePiece tokenizer, saved like a hub folder. Norm weights are random: ones would
    hide a misplaced tensor."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    template = LLAMA2_CHAT_TEMPLATE if arch == "llama" else MISTRAL_CHAT_TEMPLATE
    tokenizer = sentencepiece_tokenizer(folder, template, legacy=arch == "mistral")
    common = dict(
        vocab_size=-(-len(tokenizer) // 64) * 64,  # rows padded to a round size
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        initializer_range=0.1,  # wide enough that LoRA can fit CHATS (tiny_model's docstring)
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    if arch == "llama":
        config: Any = LlamaConfig(**{**common, "tie_word_embeddings": False, **overrides})
        model: Any = LlamaForCausalLM
    else:
        mistral = {**common, "sliding_window": 256, "tie_word_embeddings": True, **overrides}
        config = MistralConfig(**mistral)
        model = MistralForCausalLM
    torch.manual_seed(0)
    model = model(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(0.5, 1.5)
    model.save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------------------------------
# Gemma 2 and Gemma 3 (test_gguf_gemma, test_gguf_lora)
# --------------------------------------------------------------------------------------------------

# Gemma 2's template (its role checks left out): BOS, then turns; "model" is the assistant.
GEMMA_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{- '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<start_of_turn>model\\n' }}{%- endif %}"
)
TURN_MARKERS = ["<start_of_turn>", "<end_of_turn>"]
# Gemma has no dummy prefix: text that opens with spaces splits alike on both sides.
GEMMA_SAMPLES = [
    *TOKENIZER_SAMPLES,
    "堆肥需要每周翻动一次。日本語のテキスト、한국어 문장.",
    "I'm 2024's 1234567 people\r\n\r\nyou'LL",
    "\n\nafter two newlines  and   runs of spaces",
]
SLIDING_WINDOW = 8  # shorter than every prompt: the window is exercised
# First-step logit tolerances. llama.cpp's CPU GELU (Gemma's activation; the other families run
# SiLU) is read from a table indexed by the input rounded to f16, so even the f32 file's
# activations carry f16 rounding (relative 2^-11): on the random models, 2 layers moved logits by
# <= 8e-4, 6 by <= 1.8e-3, and with that rounding reproduced in transformers the differences
# fell to <= 5e-4 (1e-6 for Gemma 2): the rest of the graph matches. f32: 1e-2; f16 adds the
# weight rounding LOGIT_ATOL["f16"] allows for. Both far below the top-2 gap greedy decoding
# depends on, which the token comparison checks anyway.
GEMMA_LOGIT_ATOL = {"f32": 1e-2, "f16": 3e-2}


def train_gemma_sentencepiece(path: Path, vocab_size: int = 600) -> Path:
    """A SentencePiece BPE model trained the way Gemma's was (`_sentencepiece_bpe`), with no dummy
    prefix, <pad> <eos> <bos> <unk> at ids 0-3 and the turn markers as user-defined pieces."""
    texts = _training_texts([q + " " + a for q, a in CHATS], GEMMA_SAMPLES)
    return _sentencepiece_bpe(
        path,
        texts,
        vocab_size,
        add_dummy_prefix=False,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        user_defined_symbols=TURN_MARKERS,
    )


def gemma_tokenizer(folder: Path) -> Any:
    """transformers' GemmaTokenizer made from `folder`'s tokenizer.model, the turn markers special
    as in Gemma's tokenizer.json, EOS <end_of_turn> (where Gemma's generation_config stops a
    turn), saved there."""
    from transformers import AutoTokenizer

    train_gemma_sentencepiece(folder / "tokenizer.model")
    config = {"tokenizer_class": "GemmaTokenizer", "add_bos_token": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_special_tokens({"additional_special_tokens": TURN_MARKERS})
    tokenizer.eos_token = "<end_of_turn>"
    tokenizer.chat_template = GEMMA_CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return tokenizer


def build_tiny_gemma(folder: Path, arch: str, **overrides: Any) -> Path:
    """A random Gemma 2 (2 layers: one sliding, one global; soft-capped) or Gemma 3 (6 layers:
    five sliding, one global; q/k norms; rotary bases 10000 and 1e6, the global one linearly
    scaled) with head_dim 32 (not hidden_size / heads) and query_pre_attn_scalar 24 (not
    head_dim), saved like a hub folder. Norm weights are random: zeros (Gemma's identity) would
    hide a missing +1."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig

    tokenizer = gemma_tokenizer(folder)
    common = dict(
        vocab_size=-(-len(tokenizer) // 64) * 64,  # rows padded to a round size
        hidden_size=64,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        query_pre_attn_scalar=24,
        sliding_window=SLIDING_WINDOW,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        initializer_range=0.1,  # wide enough that LoRA can fit CHATS (tiny_model's docstring)
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    if arch == "gemma2":
        gemma2 = {
            **common,
            "num_hidden_layers": 2,
            "attn_logit_softcapping": 3.0,  # low enough to change the scores of this tiny model
            "final_logit_softcapping": 12.0,
            **overrides,
        }
        config: Any = Gemma2Config(**gemma2)
        model_class: Any = Gemma2ForCausalLM
    else:
        gemma3 = {
            **common,
            "num_hidden_layers": 6,
            "rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            },
            **overrides,
        }
        config = Gemma3TextConfig(**gemma3)
        config.architectures = ["Gemma3ForCausalLM"]
        model_class = Gemma3ForCausalLM
    torch.manual_seed(0)
    model = model_class(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(-0.5, 0.5)  # Gemma's norm scales by 1 + weight
    model.save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------------------------------
# Qwen2 and Qwen3 (test_gguf_qwen, test_gguf_lora)
# --------------------------------------------------------------------------------------------------

QWEN_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN3_THINK_TOKENS = ["<think>", "</think>"]  # added but not special, as in Qwen3's tokenizer
# Qwen2.5's template without the tool-calling branches: a default system turn, then ChatML.
QWEN2_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
# Qwen3's ChatML without a default system turn (its thinking branches left out).
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
QWEN_SAMPLES = [
    *TOKENIZER_SAMPLES,
    "堆肥需要每周翻动一次。日本語のテキスト、한국어 문장.",
    "I'm 2024's 1234567 people\r\n\r\nyou'LL",
    "<think>\nturn it</think> then wait",
]


def qwen_tokenizer(think_tokens: bool):
    """A byte-level BPE tokenizer built the way Qwen2's tokenizer.json is: NFC, Qwen2's split
    regex, ByteLevel without its own regex, the special tokens appended after the BPE vocabulary,
    no BOS, EOS <|im_end|>, padding <|endoftext|>."""
    from tokenizers import AddedToken, normalizers
    from transformers import PreTrainedTokenizerFast

    from training_methods.transfer_learning.serving.gguf.tokenizer import QWEN2_SPLIT_REGEX

    texts = _training_texts([answer for _, answer in CHATS], QWEN_SAMPLES)
    backend = _byte_level_bpe(texts, QWEN2_SPLIT_REGEX, normalizers.NFC())
    backend.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in QWEN_SPECIAL_TOKENS]
    )
    if think_tokens:
        backend.add_tokens(
            [AddedToken(token, special=False, normalized=False) for token in QWEN3_THINK_TOKENS]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE if think_tokens else QWEN2_CHAT_TEMPLATE
    return tokenizer


def build_tiny_qwen(folder: Path, arch: str, **overrides: Any) -> Path:
    """A random Qwen2 (q/k/v biases, tied embeddings like Qwen2.5-0.5B) or Qwen3 (q/k norms, a
    head_dim that is not hidden_size / heads, untied) with its tokenizer, saved like a hub folder.
    Biases and norm weights are random: zeros and ones would hide a dropped or misplaced tensor."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

    tokenizer = qwen_tokenizer(think_tokens=arch == "qwen3")
    common = dict(
        vocab_size=-(-len(tokenizer) // 64) * 64,  # rows padded to a round size, as Qwen's are
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        rope_theta=1e6,
        initializer_range=0.1,  # wide enough that LoRA can fit CHATS (tiny_model's docstring)
        bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    if arch == "qwen2":
        config = Qwen2Config(**{**common, "tie_word_embeddings": True, **overrides})
        model_class: Any = Qwen2ForCausalLM
    else:
        qwen3 = {**common, "head_dim": 32, "tie_word_embeddings": False, **overrides}
        config = Qwen3Config(**qwen3)
        model_class = Qwen3ForCausalLM
    torch.manual_seed(0)
    model = model_class(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(".bias"):
                parameter.normal_(0.0, 0.5)
            elif "norm" in name:
                parameter.uniform_(0.5, 1.5)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------------------------------
# Phi-3 and Phi-4-mini (test_gguf_phi3, test_gguf_lora)
# --------------------------------------------------------------------------------------------------

PHI3_SPECIAL_TOKENS = ["<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>", "<|system|>"]
# Phi-3 mini instruct's template.
PHI3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- endif %}"
)
# Phi-4-mini's template (no newlines, unlike Phi-3's), its tool branches left out.
PHI4_MINI_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>' }}{%- endif %}"
)
PHI4_MINI_SAMPLES = [
    *TOKENIZER_SAMPLES,
    "堆肥需要每周翻动一次。日本語のテキスト、한국어 문장.",
    "I'm 2024's 1234567 people\r\n\r\nyou'LL",
    "HelloWorld iPhone USB-C's CamelCaseText HTTPServer ÆRØskøbing",
    "path/to\n/file and a\n/b",
]


def phi4_mini_tokenizer() -> Any:
    """A byte-level BPE tokenizer built the way Phi-4-mini's tokenizer.json is: tiktoken's o200k
    split regex (llama.cpp's `gpt-4o`), ByteLevel without its own regex, no normalizer, the chat
    tokens appended after the BPE vocabulary, no BOS added, EOS <|end|>."""
    from tokenizers import AddedToken
    from transformers import PreTrainedTokenizerFast

    from training_methods.transfer_learning.serving.gguf.tokenizer import GPT4O_SPLIT_REGEX

    texts = _training_texts([answer for _, answer in CHATS], PHI4_MINI_SAMPLES)
    backend = _byte_level_bpe(texts, GPT4O_SPLIT_REGEX)
    backend.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in PHI3_SPECIAL_TOKENS]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        eos_token="<|end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.chat_template = PHI4_MINI_CHAT_TEMPLATE
    return tokenizer


def longrope(frequencies: int, original_context: int) -> dict[str, Any]:
    """LongRoPE settings for `frequencies` rotary frequencies, shaped like Phi-3 128k's: short
    factors near 1, long factors growing to 16 towards the low frequencies (distinct values, so a
    factor written in the wrong place or regime shows in the logits)."""
    steps = [i / (frequencies - 1) for i in range(frequencies)]
    return {
        "rope_type": "longrope",
        "short_factor": [1.0 + 0.5 * x for x in steps],
        "long_factor": [1.0 + 15.0 * x * x for x in steps],
        "original_max_position_embeddings": original_context,
    }


# The three Phi-3 shapes, as Phi3Config settings (head_dim 16):
# - phi3: Phi-3 mini 4k's plain rotary, here on 3/4 of each head; untied.
# - phi3-128k: Phi-3 mini 128k's LongRoPE on whole heads, untied, its 262144-token window. Its
#   original context (16) is shorter than every prompt (17+ tokens), so transformers uses the long
#   factors, as llama.cpp does for any context it opens over 16 tokens.
# - phi4-mini: Phi-4-mini's LongRoPE on 3/4 of each head, tied embeddings, no window. Its original
#   context (256) is longer than every prompt, so transformers uses the short factors, as
#   llama.cpp does for a context of up to 256 tokens (it rounds n_ctx up to a multiple of 256, so
#   open_llama's 128 and check_chat_answers' 256 both open 256).
PHI3_VARIANTS: dict[str, dict[str, Any]] = {
    "phi3": {
        "max_position_embeddings": 512,
        "original_max_position_embeddings": 512,
        "rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.75},
    },
    "phi3-128k": {
        "max_position_embeddings": 512,
        "original_max_position_embeddings": 16,
        "rope_parameters": {**longrope(8, 16), "partial_rotary_factor": 1.0},
        "sliding_window": 262144,
    },
    "phi4-mini": {
        "max_position_embeddings": 4096,
        "original_max_position_embeddings": 256,
        "rope_parameters": {**longrope(6, 256), "partial_rotary_factor": 0.75},
        "tie_word_embeddings": True,
    },
}


def build_tiny_phi3(folder: Path, variant: str = "phi3", **overrides: Any) -> Path:
    """A random Phi-3 of one of PHI3_VARIANTS with Phi-3's tokenizer, saved like a hub folder.
    Norm weights are random: ones would hide a misplaced tensor."""
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    if variant == "phi4-mini":
        tokenizer = phi4_mini_tokenizer()
    else:
        tokenizer = sentencepiece_tokenizer(folder, PHI3_CHAT_TEMPLATE, legacy=True)
        tokenizer.add_special_tokens({"additional_special_tokens": PHI3_SPECIAL_TOKENS})
        tokenizer.eos_token = "<|end|>"  # where a turn stops, as Phi-3's generation_config says
        tokenizer.pad_token = "<|endoftext|>"
    tokenizer.save_pretrained(folder)
    settings: dict[str, Any] = {"tie_word_embeddings": False, **PHI3_VARIANTS[variant], **overrides}
    settings["rope_parameters"] = {"rope_theta": 10000.0, **settings["rope_parameters"]}
    config = Phi3Config(
        vocab_size=-(-len(tokenizer) // 64) * 64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.1,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **settings,
    )
    torch.manual_seed(0)
    model = Phi3ForCausalLM(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(0.5, 1.5)
    model.save_pretrained(folder)
    return folder


_BASES: dict[tuple[Path, str], Path] = {}


def tiny_phi3(tmp_path_factory: pytest.TempPathFactory, variant: str) -> Path:
    """build_tiny_phi3 of `variant`, made once per session (test_gguf_lora fine-tunes it too)."""
    key = (tmp_path_factory.getbasetemp(), variant)
    if key not in _BASES:
        _BASES[key] = build_tiny_phi3(tmp_path_factory.mktemp(f"tiny-{variant}"), variant)
    return _BASES[key]
