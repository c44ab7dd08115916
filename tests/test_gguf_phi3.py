"""Phi-3 (`Phi3ForCausalLM`) through the GGUF export, end to end: fused q/k/v (`qkv_proj`) and
gate/up (`gate_up_proj`) projections written as llama.cpp's `attn_qkv`/`ffn_up` as they are, a
partial rotary embedding (Phi-4-mini turns 3/4 of each head), and Phi-3's tokenizer: a
SentencePiece BPE model with <|user|>, <|assistant|>, <|end|> added after its pieces. A tiny
random model fine-tuned with train-lora's LoRA on CHATS (its LoRA wraps the fused layers),
exported from the adapter and run by llama.cpp (llama-cpp-python) against transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.gguf_roundtrip import check_chat_answers, check_greedy_tokens_and_logits, export_adapter
from tests.test_gguf import (  # noqa: F401  (autouse fixtures imported)
    FineTuned,
    _fields,
    _llama,
    finetune_on_chats,
    llama_cpp_without_amx_repacking,
    one_torch_thread,
)
from tests.test_gguf_sentencepiece import SPM_SAMPLES, sentencepiece_tokenizer

PHI3_SPECIAL_TOKENS = ["<|endoftext|>", "<|assistant|>", "<|end|>", "<|user|>", "<|system|>"]
# Phi-3 mini instruct's template.
PHI3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|assistant|>\\n' }}{%- endif %}"
)


def build_tiny_phi3(folder: Path, **overrides: Any) -> Path:
    import torch
    from transformers import Phi3Config, Phi3ForCausalLM

    tokenizer = sentencepiece_tokenizer(folder, PHI3_CHAT_TEMPLATE, legacy=True)
    tokenizer.add_special_tokens({"additional_special_tokens": PHI3_SPECIAL_TOKENS})
    tokenizer.eos_token = "<|end|>"  # where a turn stops, as Phi-3's generation_config says
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.save_pretrained(folder)
    config = Phi3Config(
        vocab_size=-(-len(tokenizer) // 64) * 64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        original_max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "partial_rotary_factor": 0.75},
        initializer_range=0.1,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **overrides,
    )  # fmt: skip
    torch.manual_seed(0)
    model = Phi3ForCausalLM(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" in name:
                parameter.uniform_(0.5, 1.5)
    model.save_pretrained(folder)
    return folder


_EXPORTS: dict[Path, tuple[FineTuned, dict[str, Path]]] = {}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[FineTuned, dict[str, Path]]:
    key = tmp_path_factory.getbasetemp()
    if key not in _EXPORTS:
        base = build_tiny_phi3(tmp_path_factory.mktemp("tiny-phi3"))
        finetuned = finetune_on_chats(tmp_path_factory, base)
        _EXPORTS[key] = (finetuned, export_adapter(tmp_path_factory, finetuned, "phi3"))
    return _EXPORTS[key]


def test_fused_projections_and_partial_rotary_follow_llama_cpp(
    exported: tuple[FineTuned, dict],
) -> None:
    from transformers import AutoConfig

    finetuned, files = exported
    config = AutoConfig.from_pretrained(finetuned.merged)
    fields, tensors = _fields(files["f16"])
    assert fields["general.architecture"] == "phi3"
    assert fields["phi3.rope.dimension_count"] == 12  # 3/4 of head_dim 16
    assert fields["phi3.attention.sliding_window"] == 0
    assert fields["tokenizer.ggml.model"] == "llama"
    assert fields["tokenizer.ggml.eos_token_id"] == fields["tokenizer.ggml.tokens"].index("<|end|>")
    assert tensors["blk.0.attn_qkv.weight"] == tensors["blk.1.ffn_up.weight"] == "F16"
    assert not any(".attn_q." in name or "ffn_gate" in name for name in tensors)
    assert len(fields["tokenizer.ggml.tokens"]) == config.vocab_size
    modelfile = (files["f16"].parent / "Modelfile").read_text()
    assert "<|assistant|>" in modelfile and 'PARAMETER stop "<|end|>"' in modelfile


def test_llama_cpp_tokenizes_like_transformers(exported: tuple[FineTuned, dict]) -> None:
    from transformers import AutoTokenizer

    finetuned, files = exported
    tokenizer = AutoTokenizer.from_pretrained(finetuned.adapter)
    llm = _llama(files["f16"], vocab_only=True)
    for text in SPM_SAMPLES:
        assert llm.tokenize(text.encode(), add_bos=True) == tokenizer(text)["input_ids"], text
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    expected = tokenizer(chat, add_special_tokens=False)["input_ids"]
    assert llm.tokenize(chat.encode(), add_bos=False, special=True) == expected


@pytest.mark.parametrize("kind", ["f32", "f16"])
def test_llama_cpp_greedy_tokens_and_logits_match_transformers(
    kind: str, exported: tuple[FineTuned, dict], capsys: pytest.CaptureFixture[str]
) -> None:
    finetuned, files = exported
    check_greedy_tokens_and_logits("phi3", kind, finetuned, files[kind], capsys)


def test_llama_cpp_chat_uses_the_stored_template_and_stops_at_eos(
    exported: tuple[FineTuned, dict],
) -> None:
    check_chat_answers(exported[1]["f16"])
