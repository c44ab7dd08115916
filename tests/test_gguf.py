"""The GGUF writer: pure pieces with exact values, metadata read back with gguf's reader, and the
file verified by llama.cpp (llama-cpp-python), the engine LM Studio runs, against transformers."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared_utils.errors import ConfigurationError

# --------------------------------------------------------------------------------------------------
# A tiny fine-tuned model, shared by test_gguf, test_export and test_chat
# --------------------------------------------------------------------------------------------------

CHATS = [
    ("What goes in a compost pile?", "Browns are dry leaves, straw and cardboard."),
    ("How often should I turn it?", "Turn the pile every one to two weeks."),
    ("How does finished compost smell?", "Finished compost smells of forest soil."),
]


@dataclass(frozen=True)
class FineTuned:
    adapter: Path  # a train-lora output folder
    merged: Path  # the adapter merged into its base


_FINETUNED: dict[tuple[Path, Path], FineTuned] = {}


def chat_records() -> list[dict[str, Any]]:
    return [
        {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        for q, a in CHATS
    ]


def finetune_on_chats(
    tmp_path_factory: pytest.TempPathFactory, base: Path, steps: int = 30, **overrides: Any
) -> FineTuned:
    """`base` with a LoRA adapter that memorised CHATS (`steps` steps), and its merge; made once
    per session and base. Tests of every architecture the export supports start from this.
    `overrides`: more lora config keys (`max_length=128` for a template with a system turn)."""
    key = (tmp_path_factory.getbasetemp(), base)
    if key not in _FINETUNED:
        import torch

        from tests.test_finetune import make_config
        from training_methods.transfer_learning.finetuning.lora_finetuner import LoRAFineTuner
        from training_methods.transfer_learning.merge import merge_adapter

        root = tmp_path_factory.mktemp(f"finetuned-{base.name}")
        config = make_config(
            root,
            base,
            **{
                "training.max_steps": steps,
                "training.batch_size": 3,
                "training.learning_rate": 1e-2,
                **overrides,
            },
        )
        tuner = LoRAFineTuner.from_config(config)
        previous = torch.get_num_threads()
        torch.set_num_threads(1)  # on a busy 2-core machine a second thread makes it 5x slower
        try:
            rows = tuner.prepare_instruction_dataset(chat_records())
            tuner.train(rows, output_dir=root / "adapter")
        finally:
            torch.set_num_threads(previous)
        merged = merge_adapter(root / "adapter", root / "merged")
        _FINETUNED[key] = FineTuned(adapter=root / "adapter", merged=merged)
    return _FINETUNED[key]


def finetune_tiny_llama(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> FineTuned:
    """tiny_llama fine-tuned on CHATS (30 steps); test_export, test_chat, test_evaluate and
    test_model_loading define their `finetuned` fixture with this function."""
    return finetune_on_chats(tmp_path_factory, tiny_llama)


@pytest.fixture(scope="session")
def finetuned(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> FineTuned:
    return finetune_tiny_llama(tmp_path_factory, tiny_llama)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core machine: a second intra-op thread only adds contention.
    test_export and test_chat import this fixture too."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session", autouse=True)
def llama_cpp_without_amx_repacking() -> None:
    """llama.cpp's AMX kernels segfault on quantised weights (see
    llama_cpp_runtime.avoid_llama_cpp_amx_crash): on such CPUs the files are run without weight
    repacking. test_gguf_quant and test_gguf_qwen import this fixture too."""
    try:
        from shared_utils.llama_cpp_runtime import avoid_llama_cpp_amx_crash

        avoid_llama_cpp_amx_crash()
    except ImportError:  # the tests that need llama-cpp-python fail on their own import
        pass


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

_GGUF_FILES: dict[Path, dict[str, Path]] = {}


@pytest.fixture(scope="session")
def gguf_files(tmp_path_factory: pytest.TempPathFactory, finetuned: FineTuned) -> dict[str, Path]:
    """The merged fine-tuned model as f32, f16 and q8_0 GGUF files."""
    from training_methods.transfer_learning.serving.gguf.tensors import GGUF_TYPES
    from training_methods.transfer_learning.serving.gguf.writer import write_gguf

    key = tmp_path_factory.getbasetemp()
    if key not in _GGUF_FILES:
        folder = tmp_path_factory.mktemp("gguf")
        _GGUF_FILES[key] = {
            kind: write_gguf(
                finetuned.merged, folder / f"tiny-{kind}.gguf", kind, progress=False
            ).path
            for kind in GGUF_TYPES
        }
    return _GGUF_FILES[key]


def _fields(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """(metadata key → value, tensor name → ggml type) read back with gguf's reader."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()}, {
        tensor.name: tensor.tensor_type.name for tensor in reader.tensors
    }


def test_metadata_carries_chat_template_eos_and_hyperparameters(
    gguf_files: dict[str, Path], finetuned: FineTuned
) -> None:
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(finetuned.merged)
    config = AutoConfig.from_pretrained(finetuned.merged)
    fields, tensors = _fields(gguf_files["q8_0"])
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
    fields, tensors = _fields(summary.path)
    assert summary.architecture == "gpt2"
    assert fields["tokenizer.chat_template"] == DEFAULT_CHAT_TEMPLATE
    assert fields["tokenizer.ggml.eos_token_id"] == fields["tokenizer.ggml.bos_token_id"]
    assert {"token_embd.weight", "position_embd.weight", "blk.1.attn_qkv.weight"} <= set(tensors)
    assert tensors["position_embd.weight"] == "F32"


# --------------------------------------------------------------------------------------------------
# Verified by llama.cpp
# --------------------------------------------------------------------------------------------------

PROMPT_COUNT = 3
GREEDY_TOKENS = 16
# Tolerances for the first-step logits: max |llama.cpp - transformers| over the vocabulary. The
# fine-tuned model's logits span ~9 with a gap of ~3 between the top two. f32: the same float32
# weights; only the order of float32 additions in ggml's kernels differs (~1e-7 relative per dot
# product), measured <= 1.2e-6, so 1e-4 is tight yet leaves room for other thread counts and
# SIMD paths. f16: every 2-D weight is rounded to 11 significant bits (relative error up to
# 2^-11 ~ 5e-4) and ggml rounds the activations to f16 before each f16 matrix product; through 2
# layers and the output head that moved logits by <= 1.4e-3 (measured), so 2e-2: ~15x the
# measurement and ~150x below the top-2 gap greedy decoding depends on. The KV cache is kept in
# f32 (_llama) so the comparison is of the file's weights, not of llama.cpp's cache setting.
LOGIT_ATOL = {"f32": 1e-4, "f16": 2e-2}


def _prompt_ids(tokenizer: Any, question: str) -> list[int]:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]  # the template writes BOS


def _llama(path: Path, **kwargs: Any):
    import llama_cpp  # a test dependency (requirements-dev.txt): missing it must fail

    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=128,
        logits_all=True,
        verbose=False,
        n_threads=1,
        type_k=llama_cpp.GGML_TYPE_F32,  # an f32 KV cache: compare the weights, not the cache
        type_v=llama_cpp.GGML_TYPE_F32,
        **kwargs,
    )


def llama_cpp_greedy(llm: Any, ids: list[int], steps: int) -> tuple[list[int], Any]:
    """Greedy tokens from llama.cpp fed these exact ids (no BOS added), and first-step logits."""
    import numpy as np

    llm.reset()
    llm.eval(ids)
    first = np.array(llm.scores[llm.n_tokens - 1], copy=True)
    out = []
    for _ in range(steps):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        out.append(token)
        llm.eval([token])
    return out, first


def transformers_greedy(model: Any, ids: list[int], steps: int) -> tuple[list[int], Any]:
    import torch

    sequence = torch.tensor([ids])
    out, first = [], None
    with torch.no_grad():
        for _ in range(steps):
            logits = model(input_ids=sequence).logits[0, -1]
            if first is None:
                first = logits.numpy().copy()
            token = int(logits.argmax())
            out.append(token)
            sequence = torch.cat([sequence, torch.tensor([[token]])], dim=1)
    return out, first


def transformers_reference(merged: Path) -> list[tuple[list[int], list[int], Any]]:
    """(prompt ids, greedy tokens, first-step logits) of transformers on a merged fine-tune, for
    the first PROMPT_COUNT questions of CHATS."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForCausalLM.from_pretrained(merged).eval()
    rows = []
    for question, _ in CHATS[:PROMPT_COUNT]:
        ids = _prompt_ids(tokenizer, question)
        tokens, logits = transformers_greedy(model, ids, GREEDY_TOKENS)
        rows.append((ids, tokens, logits))
    return rows


@pytest.fixture(scope="module")
def reference(finetuned: FineTuned) -> list[tuple[list[int], list[int], Any]]:
    return transformers_reference(finetuned.merged)


@pytest.mark.parametrize("kind", ["f32", "f16"])
def test_llama_cpp_greedy_tokens_and_logits_match_transformers(
    kind: str, gguf_files: dict[str, Path], reference: list, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    llm = _llama(gguf_files[kind])
    for ids, expected, expected_logits in reference:
        assert len(set(expected)) > 3, expected  # a meaningful reference, not one token repeated
        tokens, logits = llama_cpp_greedy(llm, ids, GREEDY_TOKENS)
        assert tokens == expected
        difference = float(np.abs(logits - expected_logits).max())
        with capsys.disabled():
            print(f"\n{kind}: max |logit difference| {difference:.2e}", end="")
        assert difference < LOGIT_ATOL[kind]


def next_token_agreement(llm: Any, ids: list[int], expected: list[int]) -> float:
    """Share of positions where llama.cpp's argmax equals transformers' greedy token, both fed
    transformers' sequence (teacher forcing), so one flipped near-tie does not derail the rest."""
    import numpy as np

    llm.reset()
    llm.eval(ids + expected[:-1])
    scores = np.asarray(llm.scores[len(ids) - 1 : len(ids) - 1 + len(expected)])
    return float((scores.argmax(axis=1) == np.asarray(expected)).mean())


def test_llama_cpp_q8_0_generates_mostly_the_same_tokens(
    gguf_files: dict[str, Path], reference: list, capsys: pytest.CaptureFixture[str]
) -> None:
    llm = _llama(gguf_files["q8_0"])
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


TOKENIZER_SAMPLES = [
    "Turn the pile every one to two weeks.",
    "Crème brûlée, naïve façade, Ærøskøbing — déjà vu.",
    "def add(a, b):\n    return a + b  # 12345 + 678\n\tx = [1, 2, 3]",
    "Compost 🌱🐛 works! 😀👍🏽 ok?",
    "  leading spaces and trailing   \n\n",
]


def test_llama_cpp_tokenizes_like_transformers(
    gguf_files: dict[str, Path], finetuned: FineTuned
) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(finetuned.merged)
    llm = _llama(gguf_files["q8_0"], vocab_only=True)
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
    from training_methods.transfer_learning.tiny_model import build_tiny_model, sample_corpus_texts

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
    llm = _llama(summary.path, vocab_only=True)
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
    llm = _llama(summary.path)
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
    llm = _llama(summary.path)
    llm.eval(ids)
    difference = np.abs(np.asarray(llm.scores[: len(ids)]) - expected).max()
    print(f"\ngpt2 f32: max |logit difference| {difference:.2e}")
    # Looser than Llama's f32 bound: ggml's CPU GELU reads a table indexed by the input rounded
    # to f16 (GGML_GELU_FP16), an error of up to ~1e-3 relative per activation; measured 5e-5.
    assert difference < 1e-3
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    for text in TOKENIZER_SAMPLES:
        assert llm.tokenize(text.encode(), add_bos=False) == tokenizer(text)["input_ids"], text
