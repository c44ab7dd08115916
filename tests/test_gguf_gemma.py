"""Gemma 2 (`Gemma2ForCausalLM`) and Gemma 3 text models (`Gemma3ForCausalLM`) through the GGUF
export, end to end: Gemma's tokenizer (SentencePiece BPE without a dummy prefix, byte fallback,
<pad> <eos> <bos> <unk> at ids 0-3, the turn markers as user-defined pieces transformers marks
special; trained here with the sentencepiece package and loaded by transformers'
GemmaTokenizer), a tiny random model of each architecture that uses everything llama.cpp must
reproduce (norms stored as weight - 1, the embedding scale, a sliding window shorter than the
prompts, soft-capping, a query_pre_attn_scalar other than head_dim, Gemma 3's q/k norms and its
two rotary bases with linear scaling of the global one), fine-tuned with train-lora's LoRA on
CHATS, exported from the adapter and run by llama.cpp (llama-cpp-python) against transformers."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from tests.gguf_roundtrip import check_chat_answers, check_greedy_tokens_and_logits, export_adapter
from tests.test_gguf import (  # noqa: F401  (autouse fixtures imported)
    CHATS,
    TOKENIZER_SAMPLES,
    FineTuned,
    _fields,
    _llama,
    finetune_on_chats,
    llama_cpp_without_amx_repacking,
    one_torch_thread,
)

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
    """A SentencePiece BPE model trained the way Gemma's was: byte fallback, digits split,
    identity normalisation, whitespace kept, no dummy prefix, <pad> <eos> <bos> <unk> at ids
    0-3 and the turn markers as user-defined pieces."""
    import sentencepiece as spm

    from training_methods.transfer_learning.tiny_model import sample_corpus_texts

    texts = [*sample_corpus_texts(), *[q + " " + a for q, a in CHATS], *GEMMA_SAMPLES]
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
        add_dummy_prefix=False,
        character_coverage=1.0,
        hard_vocab_limit=False,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        pad_piece="<pad>",
        eos_piece="<eos>",
        bos_piece="<bos>",
        unk_piece="<unk>",
        user_defined_symbols=TURN_MARKERS,
        minloglevel=2,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.getvalue())
    return path


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


ARCHITECTURES = ["gemma2", "gemma3"]
_EXPORTS: dict[tuple[Path, str], tuple[FineTuned, dict[str, Path]]] = {}


@pytest.fixture(scope="module", params=ARCHITECTURES)
def exported(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, FineTuned, dict[str, Path]]:
    """(architecture, the fine-tune, type → GGUF file exported from its adapter in one call)."""
    arch = request.param
    key = (tmp_path_factory.getbasetemp(), arch)
    if key not in _EXPORTS:
        base = build_tiny_gemma(tmp_path_factory.mktemp(f"tiny-{arch}"), arch)
        finetuned = finetune_on_chats(tmp_path_factory, base)
        _EXPORTS[key] = (finetuned, export_adapter(tmp_path_factory, finetuned, arch))
    finetuned, files = _EXPORTS[key]
    return arch, finetuned, files


def test_metadata_and_tensors_follow_llama_cpp(exported: tuple[str, FineTuned, dict]) -> None:
    import numpy as np
    from gguf import GGUFReader, TokenType
    from safetensors import safe_open
    from transformers import AutoConfig

    arch, finetuned, files = exported
    config = AutoConfig.from_pretrained(finetuned.merged)
    fields, tensors = _fields(files["f32"])
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
    llm = _llama(files["f16"], vocab_only=True)
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
