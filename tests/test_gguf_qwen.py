"""Qwen2/Qwen2.5 and Qwen3 through the GGUF export, end to end: a tiny random model of each
architecture with a Qwen-style tokenizer (byte-level BPE, Qwen2's split regex, NFC, ChatML
special tokens appended after the BPE vocabulary, no BOS), fine-tuned with train-lora's LoRA on
CHATS, exported from the adapter with `main(["export", ...])`, and run by llama.cpp
(llama-cpp-python) against transformers.

The tiny models and their tokenizers are built by tests/gguf_models.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.finetune_helpers import FineTuned, finetune_on_chats
from tests.gguf_models import QWEN_SAMPLES, build_tiny_qwen
from tests.gguf_roundtrip import (
    check_chat_answers,
    check_greedy_tokens_and_logits,
    exported_once,
    gguf_fields,
    open_llama,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread", "llama_cpp_without_amx_repacking")

ARCHITECTURES = ["qwen2", "qwen3"]


@pytest.fixture(scope="module", params=ARCHITECTURES)
def exported(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, FineTuned, dict[str, Path]]:
    """(architecture, the fine-tune, type → GGUF file exported from its adapter in one call)."""
    arch = request.param

    def finetune() -> FineTuned:
        base = build_tiny_qwen(tmp_path_factory.mktemp(f"tiny-{arch}"), arch)
        # Qwen2.5's template adds a default system turn: longer prompts than max_length 64.
        return finetune_on_chats(tmp_path_factory, base, max_length=128)

    return arch, *exported_once(tmp_path_factory, arch, finetune)


def test_metadata_and_tensors_follow_llama_cpp(exported: tuple[str, FineTuned, dict]) -> None:
    from transformers import AutoConfig

    arch, finetuned, files = exported
    config = AutoConfig.from_pretrained(finetuned.merged)
    fields, tensors = gguf_fields(files["f16"])
    assert fields["general.architecture"] == arch
    assert fields["tokenizer.ggml.pre"] == "qwen2"
    assert fields["tokenizer.ggml.add_bos_token"] is False  # Qwen prepends nothing
    assert fields[f"{arch}.attention.head_count_kv"] == config.num_key_value_heads
    assert fields[f"{arch}.rope.freq_base"] == pytest.approx(1e6)
    assert len(fields["tokenizer.ggml.tokens"]) == config.vocab_size  # padded rows included
    if arch == "qwen2":
        assert {"blk.0.attn_q.bias", "blk.0.attn_k.bias", "blk.1.attn_v.bias"} <= set(tensors)
        assert tensors["blk.0.attn_q.bias"] == "F32"
        assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    else:
        assert fields["qwen3.attention.key_length"] == 32 != config.hidden_size // 4
        assert tensors["blk.1.attn_q_norm.weight"] == tensors["blk.1.attn_k_norm.weight"] == "F32"
        assert tensors["output.weight"] == "F16"
        assert not any(name.endswith(".bias") for name in tensors)


def test_llama_cpp_tokenizes_like_transformers(exported: tuple[str, FineTuned, dict]) -> None:
    from transformers import AutoTokenizer

    arch, finetuned, files = exported
    tokenizer = AutoTokenizer.from_pretrained(finetuned.adapter)
    llm = open_llama(files["f16"], vocab_only=True)
    for text in QWEN_SAMPLES:
        expected = tokenizer(text)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=True) == expected, text  # no BOS either way
        assert llm.detokenize(expected).decode() == text
    if arch == "qwen3":  # <think> is one added token on both sides
        think = tokenizer.convert_tokens_to_ids("<think>")
        assert think in llm.tokenize(QWEN_SAMPLES[-1].encode(), add_bos=False)
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    expected = tokenizer(chat)["input_ids"]
    assert llm.tokenize(chat.encode(), add_bos=False, special=True) == expected


@pytest.mark.parametrize("kind", ["f32", "f16"])
def test_llama_cpp_greedy_tokens_and_logits_match_transformers(
    kind: str, exported: tuple[str, FineTuned, dict], capsys: pytest.CaptureFixture[str]
) -> None:
    arch, finetuned, files = exported
    check_greedy_tokens_and_logits(arch, kind, finetuned, files[kind], capsys)


def test_llama_cpp_chat_uses_the_stored_template_and_stops_at_eos(
    exported: tuple[str, FineTuned, dict],
) -> None:
    """LM Studio's path: the template stored in the file, generation stopped at the stored EOS
    (<|im_end|>); the fine-tuned answers come back word for word."""
    check_chat_answers(exported[2]["f16"])


@pytest.mark.parametrize(
    ("arch", "overrides", "message"),
    [
        ("qwen2", {"use_sliding_window": True, "sliding_window": 64}, "use_sliding_window"),
        ("qwen3", {"attention_bias": True}, "attention_bias"),
        (
            "qwen2",
            {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
                                 "original_max_position_embeddings": 128}},
            "rope type 'yarn'",
        ),
    ],
    ids=["sliding-window", "qwen3-attention-bias", "yarn"],
)  # fmt: skip
def test_qwen_variants_llama_cpp_would_run_differently_are_refused(
    tmp_path: Path,
    run_main,
    capsys: pytest.CaptureFixture[str],
    arch: str,
    overrides: dict[str, Any],
    message: str,
) -> None:
    model = build_tiny_qwen(tmp_path / "model", arch, **overrides)
    capsys.readouterr()  # save_pretrained's progress bar
    status, _, stderr = run_main("export", "--model", model, "--output", tmp_path / "out")
    assert status == 2 and stderr.count("\n") == 1
    assert message in stderr and "model" in stderr
    assert not (tmp_path / "out").exists()
