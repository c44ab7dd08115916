"""The GGUF writer: pure pieces with exact values, metadata read back with gguf's reader, and the
file verified by llama.cpp (llama-cpp-python), the engine LM Studio runs, against transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared_utils.errors import ConfigurationError
from shared_utils.sample_corpus import sample_corpus_texts
from tests.finetune_helpers import CHATS, FineTuned
from tests.gguf_models import TOKENIZER_SAMPLES
from tests.gguf_roundtrip import (
    GREEDY_TOKENS,
    LOGIT_ATOL,
    gguf_fields,
    llama_cpp_greedy,
    next_token_agreement,
    open_llama,
    transformers_reference,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread", "llama_cpp_without_amx_repacking")


# --------------------------------------------------------------------------------------------------
# Pure pieces
# --------------------------------------------------------------------------------------------------


def test_rope_permutation_interleaves_the_two_halves_of_each_head() -> None:
    import torch

    from training_methods.transfer_learning.serving.gguf.tensors import permute_for_rope

    # 2 heads of head_dim 4: HF rotates rows (0, 2) and (1, 3) of a head; llama.cpp (0, 1), (2, 3)
    rows = torch.arange(8.0).reshape(8, 1)
    assert permute_for_rope(rows, 2).flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    bias = torch.arange(8.0)
    assert permute_for_rope(bias, 2).tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_rope_permutation_turns_hf_rotary_into_interleaved_rotary() -> None:
    """q·k with HF's rotate-half rotary on the original rows equals q·k with the interleaved
    (GPT-J style, llama.cpp's) rotary on the permuted rows: why the permutation is needed."""
    import torch

    from training_methods.transfer_learning.serving.gguf.tensors import permute_for_rope

    torch.manual_seed(0)
    n_head, head_dim, hidden = 2, 8, 16
    wq = torch.randn(n_head * head_dim, hidden)
    wk = torch.randn(n_head * head_dim, hidden)
    x = torch.randn(hidden)
    inv_freq = 10000.0 ** (-torch.arange(0, head_dim, 2) / head_dim)  # (head_dim/2,)

    def rotate_half(v: torch.Tensor, pos: int) -> torch.Tensor:  # v: (n_head, head_dim)
        cos, sin = (pos * inv_freq).cos(), (pos * inv_freq).sin()
        a, b = v[:, : head_dim // 2], v[:, head_dim // 2 :]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=1)

    def rotate_pairs(v: torch.Tensor, pos: int) -> torch.Tensor:
        cos, sin = (pos * inv_freq).cos(), (pos * inv_freq).sin()
        a, b = v[:, 0::2], v[:, 1::2]
        return torch.stack([a * cos - b * sin, b * cos + a * sin], dim=2).flatten(1)

    def scores(rotate, wq: torch.Tensor, wk: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        q, k = (wq @ x).view(n_head, head_dim), (wk @ x).view(n_head, head_dim)
        return (rotate(q, 7) * rotate(k, 2)).sum(1)  # query at position 7, key at position 2

    hf = scores(rotate_half, wq, wk)
    permuted = scores(rotate_pairs, permute_for_rope(wq, n_head), permute_for_rope(wk, n_head))
    torch.testing.assert_close(permuted, hf)
    assert not torch.allclose(scores(rotate_pairs, wq, wk), hf, atol=1e-2)


def _spec(pre_tokenizer: Any, *, ignore_merges: bool = False, **model: Any) -> dict[str, Any]:
    return {
        "normalizer": None,
        "pre_tokenizer": pre_tokenizer,
        "model": {"type": "BPE", "ignore_merges": ignore_merges, **model},
    }


def _byte_level(use_regex: bool = True, add_prefix_space: bool = False) -> dict[str, Any]:
    return {"type": "ByteLevel", "add_prefix_space": add_prefix_space, "use_regex": use_regex}


def _split(pattern: str) -> dict[str, Any]:
    return {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}


def test_pre_tokenizer_names_match_llama_cpp() -> None:
    from training_methods.transfer_learning.serving.gguf.tokenizer import (
        LLAMA3_SPLIT_REGEX,
        QWEN2_SPLIT_REGEX,
        tokenizer_pre_name,
    )

    assert tokenizer_pre_name(_spec(_byte_level()), "m") == "gpt-2"
    sequence = {"type": "Sequence", "pretokenizers": [_byte_level()]}
    assert tokenizer_pre_name(_spec(sequence), "m") == "gpt-2"
    llama3 = {"type": "Sequence", "pretokenizers": [_split(LLAMA3_SPLIT_REGEX), _byte_level(False)]}
    assert tokenizer_pre_name(_spec(llama3, ignore_merges=True), "m") == "llama-bpe"
    qwen2 = {"type": "Sequence", "pretokenizers": [_split(QWEN2_SPLIT_REGEX), _byte_level(False)]}
    assert tokenizer_pre_name(_spec(qwen2), "m") == "qwen2"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (_spec({"type": "Metaspace"}, byte_fallback=True), "SentencePiece-style BPE"),
        (_spec(_byte_level(add_prefix_space=True)), "adds a prefix space"),
        (_spec({"type": "Sequence", "pretokenizers": [_split("x"), _byte_level(False)]}), "Split"),
        (_spec(_byte_level(), ignore_merges=True), "ignore_merges=True"),
        ({"model": {"type": "WordPiece"}, "pre_tokenizer": None}, "WordPiece"),
        ({**_spec(_byte_level()), "normalizer": {"type": "Lowercase"}}, "Lowercase"),
    ],
)
def test_tokenizers_llama_cpp_would_split_differently_are_refused(
    spec: dict[str, Any], message: str
) -> None:
    from training_methods.transfer_learning.serving.gguf.tokenizer import tokenizer_pre_name

    with pytest.raises(ConfigurationError, match="convert_hf_to_gguf|llama.cpp") as info:
        tokenizer_pre_name(spec, "models/x")
    assert message in str(info.value) and "models/x" in str(info.value)


def test_merges_in_both_tokenizer_json_formats() -> None:
    from training_methods.transfer_learning.serving.gguf.tokenizer import bpe_merges

    assert bpe_merges({"model": {"merges": ["Ġ t", "h e"]}}) == ["Ġ t", "h e"]
    assert bpe_merges({"model": {"merges": [["Ġ", "t"], ["a b", "c"]]}}) == ["Ġ t", "aĠb c"]


def test_tensor_types_follow_llama_cpp_rules() -> None:
    from gguf import GGMLQuantizationType as Q

    from training_methods.transfer_learning.serving.gguf.tensors import choose_qtype

    assert choose_qtype("blk.0.attn_q.weight", (64, 64), "q8_0") == Q.Q8_0
    assert choose_qtype("blk.0.ffn_down.weight", (64, 688), "q8_0") == Q.F16  # 688 % 32 != 0
    assert choose_qtype("blk.0.attn_norm.weight", (64,), "f16") == Q.F32
    assert choose_qtype("blk.0.attn_qkv.bias", (96,), "q8_0") == Q.F32
    assert choose_qtype("position_embd.weight", (256, 32), "q8_0") == Q.F32
    assert choose_qtype("token_embd.weight", (100, 64), "f16") == Q.F16
    assert choose_qtype("output.weight", (100, 64), "f32") == Q.F32


def test_unsupported_architecture_names_it_and_the_supported_ones() -> None:
    from transformers import GPTNeoXConfig, LlamaConfig

    from training_methods.transfer_learning.serving.gguf.architectures import check_model_config

    with pytest.raises(ConfigurationError) as info:
        check_model_config(GPTNeoXConfig(architectures=["GPTNeoXForCausalLM"]), "models/neox")
    message = str(info.value)
    assert "GPTNeoXForCausalLM" in message and "LlamaForCausalLM" in message
    assert "GPT2LMHeadModel" in message and "--format merged" in message
    yarn = LlamaConfig(
        architectures=["LlamaForCausalLM"],
        rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0},
    )
    with pytest.raises(ConfigurationError, match="rope type 'yarn'"):
        check_model_config(yarn, "models/yarn")
    assert check_model_config(LlamaConfig(architectures=["LlamaForCausalLM"]), "m") == "llama"


def test_vocabulary_types_and_padding_rows(tiny_llama: Path) -> None:
    from gguf import TokenType
    from transformers import AutoTokenizer

    from training_methods.transfer_learning.serving.gguf.tokenizer import vocabulary

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    tokens, types = vocabulary(tokenizer, len(tokenizer) + 2)
    assert tokens[tokenizer.eos_token_id] == "<|im_end|>"
    assert types[tokenizer.eos_token_id] == TokenType.CONTROL
    assert types[tokenizer.bos_token_id] == TokenType.CONTROL
    assert types[tokenizer.convert_tokens_to_ids("Ġthe")] == TokenType.NORMAL
    assert tokens[-2:] == [f"[PAD{len(tokenizer)}]", f"[PAD{len(tokenizer) + 1}]"]
    assert types[-1] == TokenType.UNUSED
    with pytest.raises(ConfigurationError, match="embedding rows"):
        vocabulary(tokenizer, len(tokenizer) - 1)


# --------------------------------------------------------------------------------------------------
# Files written for the fine-tuned model
# --------------------------------------------------------------------------------------------------


def test_metadata_carries_chat_template_eos_and_hyperparameters(
    gguf_files: dict[str, Path], finetuned: FineTuned
) -> None:
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(finetuned.merged)
    config = AutoConfig.from_pretrained(finetuned.merged)
    fields, tensors = gguf_fields(gguf_files["q8_0"])
    assert fields["general.architecture"] == "llama"
    assert fields["tokenizer.chat_template"] == tokenizer.chat_template
    assert fields["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    assert fields["tokenizer.ggml.bos_token_id"] == tokenizer.bos_token_id
    assert fields["tokenizer.ggml.padding_token_id"] == tokenizer.pad_token_id
    assert fields["tokenizer.ggml.add_bos_token"] is True  # the post-processor prepends BOS
    assert fields["tokenizer.ggml.add_eos_token"] is False
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.pre"] == "gpt-2"
    assert len(fields["tokenizer.ggml.tokens"]) == config.vocab_size
    assert fields["llama.block_count"] == config.num_hidden_layers
    assert fields["llama.attention.head_count_kv"] == config.num_key_value_heads
    assert fields["general.file_type"] == 7  # MOSTLY_Q8_0
    assert tensors["blk.0.attn_q.weight"] == "Q8_0"
    assert tensors["blk.1.attn_norm.weight"] == "F32"
    assert tensors["output.weight"] == "Q8_0"
    sizes = {kind: path.stat().st_size for kind, path in gguf_files.items()}
    assert sizes["q8_0"] < sizes["f16"] < sizes["f32"]


def test_template_less_tokenizer_gets_the_default_template_gpt2(
    tmp_path: Path, tiny_gpt2: Path
) -> None:
    from shared_utils.chat_templates import DEFAULT_CHAT_TEMPLATE
    from training_methods.transfer_learning.serving.gguf.writer import write_gguf

    summary = write_gguf(tiny_gpt2, tmp_path / "gpt2.gguf", "f16", progress=False)
    fields, tensors = gguf_fields(summary.path)
    assert summary.architecture == "gpt2"
    assert fields["tokenizer.chat_template"] == DEFAULT_CHAT_TEMPLATE
    assert fields["tokenizer.ggml.eos_token_id"] == fields["tokenizer.ggml.bos_token_id"]
    assert {"token_embd.weight", "position_embd.weight", "blk.1.attn_qkv.weight"} <= set(tensors)
    assert tensors["position_embd.weight"] == "F32"


# --------------------------------------------------------------------------------------------------
# Verified by llama.cpp
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(finetuned: FineTuned) -> list[tuple[list[int], list[int], Any]]:
    return transformers_reference(finetuned.merged)


@pytest.mark.parametrize("kind", ["f32", "f16"])
def test_llama_cpp_greedy_tokens_and_logits_match_transformers(
    kind: str, gguf_files: dict[str, Path], reference: list, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    llm = open_llama(gguf_files[kind])
    for ids, expected, expected_logits in reference:
        assert len(set(expected)) > 3, expected  # a meaningful reference, not one token repeated
        tokens, logits = llama_cpp_greedy(llm, ids, GREEDY_TOKENS)
        assert tokens == expected
        difference = float(np.abs(logits - expected_logits).max())
        with capsys.disabled():
            print(f"\n{kind}: max |logit difference| {difference:.2e}", end="")
        assert difference < LOGIT_ATOL[kind]


def test_llama_cpp_q8_0_generates_mostly_the_same_tokens(
    gguf_files: dict[str, Path], reference: list, capsys: pytest.CaptureFixture[str]
) -> None:
    llm = open_llama(gguf_files["q8_0"])
    rates, prefixes = [], []
    for ids, expected, _ in reference:
        tokens, _ = llama_cpp_greedy(llm, ids, GREEDY_TOKENS)
        assert len(tokens) == GREEDY_TOKENS and tokens[0] == expected[0]  # loads and generates
        # Free-running greedy decoding diverges for good after the first differing token.
        prefixes.append(
            next(
                (i for i, (a, b) in enumerate(zip(tokens, expected, strict=True)) if a != b),
                GREEDY_TOKENS,
            )
        )
        rates.append(next_token_agreement(llm, ids, expected))
    rate = sum(rates) / len(rates)
    with capsys.disabled():
        print(
            f"\nq8_0: next-token agreement with transformers {rate:.0%}, identical greedy "
            f"prefixes {prefixes} of {GREEDY_TOKENS}",
            end="",
        )
    # q8_0 keeps ~8 bits per weight (and rounds activations to 8 bits in each product): on a
    # model this confident (top-2 logit gap ~3) nearly every next token survives.
    assert rate >= 0.9


def test_llama_cpp_chat_uses_the_stored_template_and_stops_at_eos(
    gguf_files: dict[str, Path],
) -> None:
    """What LM Studio does with the file: render the chat template stored in it, generate, stop
    at the EOS id stored in it. The fine-tuned answers come back word for word."""
    import llama_cpp  # a test dependency (requirements-dev.txt): missing it must fail

    llm = llama_cpp.Llama(
        model_path=str(gguf_files["q8_0"]), n_ctx=256, n_threads=1, verbose=False
    )  # llama.cpp's defaults otherwise, f16 KV cache included
    for question, answer in CHATS:
        reply = llm.create_chat_completion(
            messages=[{"role": "user", "content": question}], temperature=0.0, max_tokens=48
        )["choices"][0]
        assert reply["message"]["content"] == answer
        assert reply["finish_reason"] == "stop"  # EOS, not the 48-token limit


def test_llama_cpp_tokenizes_like_transformers(
    gguf_files: dict[str, Path], finetuned: FineTuned
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(finetuned.merged)
    llm = open_llama(gguf_files["q8_0"], vocab_only=True)
    for text in TOKENIZER_SAMPLES:
        expected = tokenizer(text)["input_ids"]  # BOS prepended, as the post-processor does
        assert llm.tokenize(text.encode(), add_bos=True) == expected, text
        assert llm.detokenize(expected[1:]).decode() == text
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    expected = tokenizer(chat, add_special_tokens=False)["input_ids"]
    assert llm.tokenize(chat.encode(), add_bos=False, special=True) == expected


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2"])
def test_llama_cpp_tokenizes_llama3_and_qwen2_style_tokenizers_alike(
    tmp_path: Path, pre: str
) -> None:
    """Byte-level BPE tokenizers with Llama 3's and Qwen2's split regexes (which differ from
    GPT-2's on digits, apostrophes and newlines) round-trip through llama.cpp too."""
    import llama_cpp  # noqa: F401  (a test dependency: missing it must fail)
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from training_methods.transfer_learning.serving.gguf.tokenizer import (
        LLAMA3_SPLIT_REGEX,
        QWEN2_SPLIT_REGEX,
    )
    from training_methods.transfer_learning.serving.gguf.writer import write_gguf
    from training_methods.transfer_learning.tiny_model import build_tiny_model

    pattern = LLAMA3_SPLIT_REGEX if pre == "llama-bpe" else QWEN2_SPLIT_REGEX
    backend = Tokenizer(models.BPE(ignore_merges=pre == "llama-bpe"))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|end|>"],
        show_progress=False,
    )
    backend.train_from_iterator([*sample_corpus_texts(), *TOKENIZER_SAMPLES] * 2, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|end|>")
    model_dir = build_tiny_model(
        tmp_path / "model", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=64,
    )  # fmt: skip
    # Replace the ChatML tokenizer; its 600 tokens fit the model's larger embedding.
    tokenizer.save_pretrained(model_dir)
    summary = write_gguf(model_dir, tmp_path / "m.gguf", "f32", progress=False)
    assert summary.tokenizer_pre == pre
    llm = open_llama(summary.path, vocab_only=True)
    for text in [*TOKENIZER_SAMPLES, "I'm 2024's 1234567 people\r\n\r\nyou'LL"]:
        assert llm.tokenize(text.encode(), add_bos=False) == tokenizer(text)["input_ids"], text


@pytest.mark.parametrize(
    "rope",
    [
        {"rope_type": "linear", "factor": 4.0},
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,  # small, so positions < 64 feel the scaling
        },
    ],
    ids=["linear", "llama3"],
)
def test_llama_cpp_applies_rope_scaling_like_transformers(
    tmp_path: Path, tiny_llama: Path, rope: dict[str, Any]
) -> None:
    """Scaled rotary embeddings (linear; Llama 3.1+'s per-frequency factors, written as the
    `rope_freqs.weight` tensor) give the logits transformers computes, at every position."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training_methods.transfer_learning.serving.gguf.writer import write_gguf

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    model.config.rope_parameters = {"rope_theta": 10000.0, **rope}
    scaled = AutoModelForCausalLM.from_config(model.config)
    scaled.load_state_dict(model.state_dict())
    scaled.save_pretrained(tmp_path / "scaled")
    AutoTokenizer.from_pretrained(tiny_llama).save_pretrained(tmp_path / "scaled")
    summary = write_gguf(tmp_path / "scaled", tmp_path / "scaled.gguf", "f32", progress=False)
    ids = list(range(4, 64))  # 60 positions
    with torch.no_grad():
        expected = scaled.eval()(input_ids=torch.tensor([ids])).logits[0].numpy()
        unscaled = model.eval()(input_ids=torch.tensor([ids])).logits[0].numpy()
    llm = open_llama(summary.path)
    llm.eval(ids)
    logits = np.asarray(llm.scores[: len(ids)])
    assert np.abs(logits - expected).max() < LOGIT_ATOL["f32"]
    assert np.abs(unscaled - expected).max() > 100 * LOGIT_ATOL["f32"]  # the scaling matters


def test_llama_cpp_runs_an_exported_gpt2_like_transformers(tmp_path: Path, tiny_gpt2: Path) -> None:
    """GPT-2: transposed Conv1D weights, fused qkv, learned positions, tied output head."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training_methods.transfer_learning.serving.gguf.writer import write_gguf

    summary = write_gguf(tiny_gpt2, tmp_path / "gpt2.gguf", "f32", progress=False)
    ids = list(range(1, 41))
    with torch.no_grad():
        model = AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval()
        expected = model(input_ids=torch.tensor([ids])).logits[0].numpy()
    llm = open_llama(summary.path)
    llm.eval(ids)
    difference = np.abs(np.asarray(llm.scores[: len(ids)]) - expected).max()
    print(f"\ngpt2 f32: max |logit difference| {difference:.2e}")
    # Looser than Llama's f32 bound: ggml's CPU GELU reads a table indexed by the input rounded
    # to f16 (GGML_GELU_FP16), an error of up to ~1e-3 relative per activation; measured 5e-5.
    assert difference < 1e-3
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    for text in TOKENIZER_SAMPLES:
        assert llm.tokenize(text.encode(), add_bos=False) == tokenizer(text)["input_ids"], text
