"""Qwen2/Qwen2.5 and Qwen3 through the GGUF export, end to end: a tiny random model of each
architecture with a Qwen-style tokenizer (byte-level BPE, Qwen2's split regex, NFC, ChatML
special tokens appended after the BPE vocabulary, no BOS), fine-tuned with train-lora's LoRA on
CHATS, exported from the adapter with `main(["export", ...])`, and run by llama.cpp
(llama-cpp-python) against transformers."""

from __future__ import annotations

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
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, trainers
    from tokenizers import pre_tokenizers as pre
    from transformers import PreTrainedTokenizerFast

    from training_methods.transfer_learning.serving.gguf.tokenizer import QWEN2_SPLIT_REGEX
    from training_methods.transfer_learning.tiny_model import sample_corpus_texts

    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre.Sequence(
        [
            pre.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800, initial_alphabet=pre.ByteLevel.alphabet(), show_progress=False
    )
    texts = [*sample_corpus_texts(), *[answer for _, answer in CHATS], *QWEN_SAMPLES]
    backend.train_from_iterator(texts * 2, trainer)
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


ARCHITECTURES = ["qwen2", "qwen3"]
_EXPORTS: dict[tuple[Path, str], tuple[FineTuned, dict[str, Path]]] = {}


@pytest.fixture(scope="module", params=ARCHITECTURES)
def exported(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, FineTuned, dict[str, Path]]:
    """(architecture, the fine-tune, type → GGUF file exported from its adapter in one call)."""
    arch = request.param
    key = (tmp_path_factory.getbasetemp(), arch)
    if key not in _EXPORTS:
        base = build_tiny_qwen(tmp_path_factory.mktemp(f"tiny-{arch}"), arch)
        # Qwen2.5's template adds a default system turn: longer prompts than max_length 64.
        finetuned = finetune_on_chats(tmp_path_factory, base, max_length=128)
        _EXPORTS[key] = (finetuned, export_adapter(tmp_path_factory, finetuned, arch))
    finetuned, files = _EXPORTS[key]
    return arch, finetuned, files


def test_metadata_and_tensors_follow_llama_cpp(exported: tuple[str, FineTuned, dict]) -> None:
    from transformers import AutoConfig

    arch, finetuned, files = exported
    config = AutoConfig.from_pretrained(finetuned.merged)
    fields, tensors = _fields(files["f16"])
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
    llm = _llama(files["f16"], vocab_only=True)
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
