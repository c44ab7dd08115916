"""Gemma 2 (`Gemma2ForCausalLM`) and Gemma 3 text models (`Gemma3ForCausalLM`) through the GGUF
export, end to end: Gemma's tokenizer (SentencePiece BPE without a dummy prefix, byte fallback,
<pad> <eos> <bos> <unk> at ids 0-3, the turn markers as user-defined pieces transformers marks
special; trained here with the sentencepiece package and loaded by transformers'
GemmaTokenizer), a tiny random model of each architecture that uses everything llama.cpp must
reproduce (norms stored as weight - 1, the embedding scale, a sliding window shorter than the
prompts, soft-capping, a query_pre_attn_scalar other than head_dim, Gemma 3's q/k norms and its
two rotary bases with linear scaling of the global one), fine-tuned with train-lora's LoRA on
CHATS, exported from the adapter and run by llama.cpp (llama-cpp-python) against transformers.

The tiny models and their tokenizers are built by tests/gguf_models.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.finetune_helpers import FineTuned, finetune_on_chats
from tests.gguf_models import (
    GEMMA_LOGIT_ATOL,
    GEMMA_SAMPLES,
    SLIDING_WINDOW,
    TURN_MARKERS,
    build_tiny_gemma,
)
from tests.gguf_roundtrip import (
    check_chat_answers,
    check_greedy_tokens_and_logits,
    exported_once,
    gguf_fields,
    open_llama,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread", "llama_cpp_without_amx_repacking")

ARCHITECTURES = ["gemma2", "gemma3"]


@pytest.fixture(scope="module", params=ARCHITECTURES)
def exported(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, FineTuned, dict[str, Path]]:
    """(architecture, the fine-tune, type → GGUF file exported from its adapter in one call)."""
    arch = request.param

    def finetune() -> FineTuned:
        base = build_tiny_gemma(tmp_path_factory.mktemp(f"tiny-{arch}"), arch)
        return finetune_on_chats(tmp_path_factory, base)

    return arch, *exported_once(tmp_path_factory, arch, finetune)


def test_metadata_and_tensors_follow_llama_cpp(exported: tuple[str, FineTuned, dict]) -> None:
    import numpy as np
    from gguf import GGUFReader, TokenType
    from safetensors import safe_open
    from transformers import AutoConfig

    arch, finetuned, files = exported
    config = AutoConfig.from_pretrained(finetuned.merged)
    fields, tensors = gguf_fields(files["f32"])
    assert fields["general.architecture"] == arch
    assert fields["tokenizer.ggml.model"] == "llama"
    assert fields["tokenizer.ggml.add_space_prefix"] is False  # Gemma has no dummy prefix
    assert fields["tokenizer.ggml.add_bos_token"] is True
    start, end = (fields["tokenizer.ggml.tokens"].index(marker) for marker in TURN_MARKERS)
    assert fields["tokenizer.ggml.token_type"][start] == TokenType.CONTROL  # special in HF
    assert fields["tokenizer.ggml.eos_token_id"] == end
    assert fields[f"{arch}.attention.sliding_window"] == SLIDING_WINDOW
    assert fields[f"{arch}.attention.key_length"] == 32 != config.hidden_size // 4
    assert "output.weight" not in tensors  # tied
    if arch == "gemma2":
        assert fields["gemma2.attn_logit_softcapping"] == pytest.approx(3.0)
        assert fields["gemma2.final_logit_softcapping"] == pytest.approx(12.0)
    else:
        assert fields["gemma3.rope.freq_base"] == pytest.approx(1e6)
        assert fields["gemma3.rope.freq_base_swa"] == pytest.approx(10000.0)
        assert fields["gemma3.rope.scaling.factor"] == pytest.approx(2.0)
        assert tensors["blk.5.attn_q_norm.weight"] == "F32"
    # Norms are written as 1 + weight, and the query scalar folded into the queries.
    reader = GGUFReader(files["f32"])
    written = {tensor.name: np.array(tensor.data) for tensor in reader.tensors}
    with safe_open(finetuned.merged / "model.safetensors", framework="np") as weights:
        norm = weights.get_tensor("model.layers.1.post_feedforward_layernorm.weight")
        np.testing.assert_allclose(written["blk.1.post_ffw_norm.weight"], norm + 1, rtol=1e-6)
        fold = (32 / 24) ** 0.5  # llama.cpp: 1/sqrt(head_dim); transformers: 1/sqrt(24)
        if arch == "gemma2":
            query = weights.get_tensor("model.layers.0.self_attn.q_proj.weight")
            got = written["blk.0.attn_q.weight"]
        else:
            query = weights.get_tensor("model.layers.0.self_attn.q_norm.weight") + 1
            got = written["blk.0.attn_q_norm.weight"]
        np.testing.assert_allclose(got, query * fold, rtol=1e-5)
    modelfile = (files["f16"].parent / "Modelfile").read_text()
    assert "<start_of_turn>model" in modelfile and 'PARAMETER stop "<end_of_turn>"' in modelfile


def test_llama_cpp_tokenizes_like_transformers(exported: tuple[str, FineTuned, dict]) -> None:
    from transformers import AutoTokenizer

    _, finetuned, files = exported
    tokenizer = AutoTokenizer.from_pretrained(finetuned.adapter)
    llm = open_llama(files["f16"], vocab_only=True)
    for text in GEMMA_SAMPLES:
        expected = tokenizer(text)["input_ids"]  # <bos>, then the text as written
        assert llm.tokenize(text.encode(), add_bos=True) == expected, text
        # Without the BOS: llama-cpp-python drops the first space of a text decoded after one
        # (for Llama 1's dummy prefix), which Gemma does not have.
        assert expected[0] == tokenizer.bos_token_id
        assert llm.detokenize(expected[1:]).decode() == text
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    expected = tokenizer(chat, add_special_tokens=False)["input_ids"]
    assert llm.tokenize(chat.encode(), add_bos=False, special=True) == expected


@pytest.mark.parametrize("kind", ["f32", "f16"])
def test_llama_cpp_greedy_tokens_and_logits_match_transformers(
    kind: str, exported: tuple[str, FineTuned, dict], capsys: pytest.CaptureFixture[str]
) -> None:
    """Prompts of ~20 tokens and 16 generated tokens: past the sliding window of 8."""
    arch, finetuned, files = exported
    check_greedy_tokens_and_logits(
        arch, kind, finetuned, files[kind], capsys, atol=GEMMA_LOGIT_ATOL[kind]
    )


def test_llama_cpp_chat_uses_the_stored_template_and_stops_at_eos(
    exported: tuple[str, FineTuned, dict],
) -> None:
    """<start_of_turn>user ... <start_of_turn>model rendered from the stored template, stopped at
    <end_of_turn>."""
    check_chat_answers(exported[2]["f16"])


@pytest.mark.parametrize(
    ("arch", "overrides", "message"),
    [
        ("gemma2", {"tie_word_embeddings": False}, "tie_word_embeddings"),
        ("gemma2", {"final_logit_softcapping": None}, "soft-capping switched off"),
        ("gemma3", {"final_logit_softcapping": 30.0}, "soft-capping switched on"),
        ("gemma3", {"layer_types": ["full_attention"] * 6}, "layer_types"),
        (
            "gemma3",
            {"rope_parameters": {
                "full_attention": {"rope_type": "default", "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 50000.0},
            }},
            "sliding-layer rope_theta",
        ),
        ("gemma3", {"hidden_activation": "silu"}, "hidden_activation 'silu'"),
    ],
    ids=["untied", "no-final-softcap", "gemma3-softcap", "layer-types", "local-theta", "silu"],
)  # fmt: skip
def test_gemma_variants_llama_cpp_would_run_differently_are_refused(
    tmp_path: Path,
    run_main,
    capsys: pytest.CaptureFixture[str],
    arch: str,
    overrides: dict[str, Any],
    message: str,
) -> None:
    model = build_tiny_gemma(tmp_path / "model", arch, **overrides)
    capsys.readouterr()  # save_pretrained's progress bar
    status, _, stderr = run_main("export", "--model", model, "--output", tmp_path / "out")
    assert status == 2 and stderr.count("\n") == 1
    assert message in stderr and "model" in stderr
    assert not (tmp_path / "out").exists()


def test_query_scale_folded_in_follows_llama_cpps_rule() -> None:
    """llama.cpp scales queries by 1/sqrt(head_dim), or 1/sqrt(hidden/heads) at the 27B layer
    counts; the factor folded into the queries makes that 1/sqrt(query_pre_attn_scalar)."""
    from transformers import Gemma2Config, Gemma3TextConfig

    from training_methods.transfer_learning.serving.gguf.architectures import gemma_query_scale

    shape = dict(hidden_size=4608, num_attention_heads=32, head_dim=128, query_pre_attn_scalar=144)
    assert gemma_query_scale("gemma2", Gemma2Config(num_hidden_layers=46, **shape)) == 1.0
    assert gemma_query_scale("gemma2", Gemma2Config(num_hidden_layers=42, **shape)) == (
        pytest.approx((128 / 144) ** 0.5)
    )
    gemma3_1b = Gemma3TextConfig(num_hidden_layers=26, head_dim=256, query_pre_attn_scalar=256)
    assert gemma_query_scale("gemma3", gemma3_1b) == 1.0
