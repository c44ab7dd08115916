"""Phi-3 (`Phi3ForCausalLM`) through the GGUF export, end to end: fused q/k/v (`qkv_proj`) and
gate/up (`gate_up_proj`) projections written as llama.cpp's `attn_qkv`/`ffn_up` as they are, a
partial rotary embedding (Phi-4-mini turns 3/4 of each head), LongRoPE (Phi-3 128k, Phi-4-mini:
per-frequency rotary factors for short and long contexts, written as tensors), tied embeddings
(Phi-4-mini), Phi-3's tokenizer (a SentencePiece BPE model with <|user|>, <|assistant|>,
<|end|> added after its pieces) and Phi-4-mini's (byte-level BPE with the o200k split, llama.cpp's
`gpt-4o`). Tiny random models of three Phi-3 shapes, fine-tuned with
train-lora's LoRA on CHATS (its LoRA wraps the fused layers), exported from the adapter and run
by llama.cpp (llama-cpp-python) against transformers.

The tiny models and their tokenizers are built by tests/gguf_models.py."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.finetune_helpers import FineTuned, finetune_on_chats
from tests.gguf_models import (
    PHI3_VARIANTS,
    PHI4_MINI_SAMPLES,
    SPM_SAMPLES,
    build_tiny_phi3,
    longrope,
    tiny_phi3,
)
from tests.gguf_roundtrip import (
    LOGIT_ATOL,
    check_chat_answers,
    check_greedy_tokens_and_logits,
    exported_once,
    gguf_fields,
    open_llama,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread", "llama_cpp_without_amx_repacking")


Exported = tuple[str, FineTuned, dict[str, Path]]


@pytest.fixture(scope="module", params=list(PHI3_VARIANTS))
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """(variant, the fine-tune, type → GGUF file exported from its adapter in one call)."""
    variant = request.param

    def finetune() -> FineTuned:
        return finetune_on_chats(tmp_path_factory, tiny_phi3(tmp_path_factory, variant))

    return variant, *exported_once(tmp_path_factory, variant, finetune)


def test_fused_projections_rotary_and_factors_follow_llama_cpp(exported: Exported) -> None:
    import numpy as np
    from gguf import GGUFReader
    from transformers import AutoConfig

    variant, finetuned, files = exported
    config = AutoConfig.from_pretrained(finetuned.merged)
    rope = config.rope_parameters
    fields, tensors = gguf_fields(files["f16"])
    assert fields["general.architecture"] == "phi3"
    rotary = int(16 * rope["partial_rotary_factor"])  # head_dim 16
    assert fields["phi3.rope.dimension_count"] == rotary
    assert fields["phi3.attention.sliding_window"] == (config.sliding_window or 0)
    if variant == "phi4-mini":  # byte-level BPE with the o200k split
        assert (fields["tokenizer.ggml.model"], fields["tokenizer.ggml.pre"]) == ("gpt2", "gpt-4o")
        assert fields["tokenizer.ggml.add_bos_token"] is False
    else:
        assert fields["tokenizer.ggml.model"] == "llama"
    assert fields["tokenizer.ggml.eos_token_id"] == fields["tokenizer.ggml.tokens"].index("<|end|>")
    assert tensors["blk.0.attn_qkv.weight"] == tensors["blk.1.ffn_up.weight"] == "F16"
    assert not any(".attn_q." in name or "ffn_gate" in name for name in tensors)
    assert ("output.weight" in tensors) != config.tie_word_embeddings
    assert len(fields["tokenizer.ggml.tokens"]) == config.vocab_size
    original = config.original_max_position_embeddings
    assert fields["phi3.rope.scaling.original_context_length"] == original
    if rope["rope_type"] == "longrope":
        # transformers' attention_factor: sqrt(1 + ln(max / original) / ln(original))
        scaling = config.max_position_embeddings / original
        expected = (1 + np.log(scaling) / np.log(original)) ** 0.5
        assert fields["phi3.rope.scaling.attn_factor"] == pytest.approx(expected, rel=1e-6)
        written = {t.name: np.array(t.data) for t in GGUFReader(files["f16"]).tensors}
        for regime in ("short", "long"):
            factors = written[f"rope_factors_{regime}.weight"]
            assert tensors[f"rope_factors_{regime}.weight"] == "F32"
            np.testing.assert_allclose(factors, rope[f"{regime}_factor"], rtol=1e-7)
            assert factors.shape == (rotary // 2,)
    else:
        assert "phi3.rope.scaling.attn_factor" not in fields
        assert not any(name.startswith("rope_factors") for name in tensors)
    modelfile = (files["f16"].parent / "Modelfile").read_text()
    assert "<|assistant|>" in modelfile and 'PARAMETER stop "<|end|>"' in modelfile
    # Ollama's template renders as the tokenizer's does: Phi-3 puts a newline after each role
    # marker, Phi-4-mini none.
    assert ("<|{{ .Role }}|>\n{{ .Content }}" in modelfile) == (variant != "phi4-mini")


def test_llama_cpp_tokenizes_like_transformers(exported: Exported) -> None:
    from transformers import AutoTokenizer

    variant, finetuned, files = exported
    tokenizer = AutoTokenizer.from_pretrained(finetuned.adapter)
    llm = open_llama(files["f16"], vocab_only=True)
    for text in PHI4_MINI_SAMPLES if variant == "phi4-mini" else SPM_SAMPLES:
        assert llm.tokenize(text.encode(), add_bos=True) == tokenizer(text)["input_ids"], text
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True
    )
    expected = tokenizer(chat, add_special_tokens=False)["input_ids"]
    assert llm.tokenize(chat.encode(), add_bos=False, special=True) == expected


@pytest.mark.parametrize("kind", ["f32", "f16"])
def test_llama_cpp_greedy_tokens_and_logits_match_transformers(
    kind: str, exported: Exported, capsys: pytest.CaptureFixture[str]
) -> None:
    variant, finetuned, files = exported
    check_greedy_tokens_and_logits(variant, kind, finetuned, files[kind], capsys)


def test_llama_cpp_chat_uses_the_stored_template_and_stops_at_eos(exported: Exported) -> None:
    check_chat_answers(exported[2]["f16"])


def test_export_warns_where_llama_cpps_gpt4o_split_differs(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """llama.cpp's gpt-4o pre-tokenizer tells capitals by ASCII only: with a vocabulary that
    holds "ÉCOLE", transformers keeps the word whole and llama.cpp splits it into É + COLE. The
    export writes such a tokenizer as llama.cpp's converter does, and warns."""
    import shutil

    from tokenizers import Regex, Tokenizer, decoders, models, trainers
    from tokenizers import pre_tokenizers as pre
    from transformers import PreTrainedTokenizerFast

    from training_methods.transfer_learning.serving.gguf.tokenizer import GPT4O_SPLIT_REGEX
    from training_methods.transfer_learning.serving.gguf.writer import write_gguf

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre.Sequence(
        [
            pre.Split(Regex(GPT4O_SPLIT_REGEX), behavior="isolated"),
            pre.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre.ByteLevel.alphabet(), show_progress=False
    )
    backend.train_from_iterator(["ÉCOLE, ÉCOLE ou école"] * 20, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|end|>")
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_phi3(tmp_path_factory, "phi4-mini"), model_dir)
    for stale in model_dir.glob("tokenizer*"):
        stale.unlink()
    tokenizer.save_pretrained(model_dir)
    with caplog.at_level("WARNING"):
        summary = write_gguf(model_dir, tmp_path / "m.gguf", "f32", progress=False)
    assert summary.tokenizer_pre == "gpt-4o"
    assert "ÉCOLE → É + COLE" in caplog.text
    llm = open_llama(summary.path, vocab_only=True)

    def pieces(ids: list[int]) -> list[str]:
        return [tokenizer.decode([i]) for i in ids]

    assert pieces(tokenizer("ÉCOLE")["input_ids"]) == ["ÉCOLE"]
    assert pieces(llm.tokenize("ÉCOLE".encode(), add_bos=False)) == ["É", "COLE"]


# --------------------------------------------------------------------------------------------------
# LongRoPE's two regimes
# --------------------------------------------------------------------------------------------------


def _llama_opened_with(path: Path, n_ctx: int) -> Any:
    """open_llama with another context size: the size is what makes llama.cpp choose the factors."""
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=n_ctx,
        logits_all=True,
        verbose=False,
        n_threads=1,
        type_k=llama_cpp.GGML_TYPE_F32,
        type_v=llama_cpp.GGML_TYPE_F32,
    )


def _with_rope(model: Any, **rope: Any) -> Any:
    """`model` with other rotary settings, the same weights."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    config.rope_parameters = {**config.rope_parameters, **rope}
    changed = AutoModelForCausalLM.from_config(config)
    changed.load_state_dict(model.state_dict())
    return changed.eval()


def test_llama_cpp_chooses_the_factors_by_context_size_transformers_by_sequence_length(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A random Phi-4-mini shape (original context 256), f32, logits at every position.
    transformers takes the long factors when a forward pass holds more than 256 positions,
    llama.cpp when it was opened with n_ctx over 256. Where both agree (a 40-token prompt in a
    256 context: short; a 300-token prompt in a 512 context: long) the logits are transformers';
    a short prompt in a long context gets the long factors from llama.cpp, the short ones from
    transformers (the README says so)."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from training_methods.transfer_learning.serving.gguf.writer import write_gguf

    model_dir = build_tiny_phi3(tmp_path / "model", "phi4-mini")
    summary = write_gguf(model_dir, tmp_path / "phi4-mini.gguf", "f32", progress=False)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    rope = model.config.rope_parameters
    long_only = _with_rope(model, short_factor=rope["long_factor"])
    short_only = _with_rope(model, long_factor=rope["short_factor"])
    ids = np.random.default_rng(0).integers(3, model.config.vocab_size, 300).tolist()

    def logits(reference: Any, prompt: list[int]) -> Any:
        with torch.no_grad():
            return reference(input_ids=torch.tensor([prompt])).logits[0].numpy()

    def llama_cpp_logits(n_ctx: int, prompt: list[int]) -> Any:
        llm = _llama_opened_with(summary.path, n_ctx)
        llm.eval(prompt)
        return np.asarray(llm.scores[: len(prompt)])

    atol = LOGIT_ATOL["f32"]
    short_prompt = ids[:40]
    agree_short = np.abs(llama_cpp_logits(256, short_prompt) - logits(model, short_prompt)).max()
    agree_long = np.abs(llama_cpp_logits(512, ids) - logits(model, ids)).max()
    with capsys.disabled():
        print(f"\nphi4-mini longrope f32: short {agree_short:.2e}, long {agree_long:.2e}", end="")
    assert agree_short < atol and agree_long < atol
    assert np.abs(logits(short_only, ids) - logits(model, ids)).max() > 100 * atol  # it matters
    in_long_context = llama_cpp_logits(512, short_prompt)
    assert np.abs(in_long_context - logits(long_only, short_prompt)).max() < atol
    assert np.abs(in_long_context - logits(model, short_prompt)).max() > 100 * atol


@pytest.mark.parametrize(
    ("rope", "message"),
    [
        ({"long_factor": [1.0] * 5}, "5 rope long_factors for 6 rotary frequencies"),
        ({"short_factor": None}, "no rope short_factors for 6 rotary frequencies"),
        ({"partial_rotary_factor": 1.0}, "6 rope short_factors for 8 rotary frequencies"),
    ],
    ids=["long-count", "no-short", "rotary-share"],
)
def test_longrope_llama_cpp_cannot_be_given_is_refused_in_one_line(
    rope: dict[str, Any], message: str
) -> None:
    """What transformers would only warn about (or a config edited after loading)."""
    from transformers import Phi3Config

    from shared_utils.errors import ConfigurationError
    from training_methods.transfer_learning.serving.gguf.architectures import check_model_config

    config = Phi3Config(
        hidden_size=64, num_attention_heads=4, architectures=["Phi3ForCausalLM"],
        **{**PHI3_VARIANTS["phi4-mini"], "rope_parameters": {**longrope(6, 256),
                                                             "partial_rotary_factor": 0.75}},
    )  # fmt: skip
    assert check_model_config(config, "m") == "phi3"
    config.rope_parameters.update(rope)
    with pytest.raises(ConfigurationError) as error:
        check_model_config(config, "m")
    assert message in str(error.value) and "\n" not in str(error.value)
