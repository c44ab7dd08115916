"""A GGUF file run by llama.cpp (llama-cpp-python), the engine LM Studio runs, against
transformers: metadata read back, greedy tokens and first-step logits compared, next-token
agreement. And the round trip every GGUF architecture test runs: a fine-tune exported from its
adapter with `main(["export", ...])`, then llama.cpp against transformers on greedy tokens,
first-step logits and the chat path. The tiny models and their tokenizers are built by
tests/gguf_models.py, the fine-tunes by tests/finetune_helpers.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from main import main
from tests.finetune_helpers import CHATS, FineTuned


def gguf_fields(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """(metadata key → value, tensor name → ggml type) read back with gguf's reader."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()}, {
        tensor.name: tensor.tensor_type.name for tensor in reader.tensors
    }


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
# f32 (open_llama) so the comparison is of the file's weights, not of llama.cpp's cache setting.
LOGIT_ATOL = {"f32": 1e-4, "f16": 2e-2}


def chat_prompt_ids(tokenizer: Any, question: str) -> list[int]:
    """The ids of `question` as one user turn in the tokenizer's chat template, ready to answer."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]  # the template writes BOS


def open_llama(path: Path, **kwargs: Any):
    """llama.cpp on `path` for comparisons: a 128-token context, logits at every position, one
    thread, an f32 KV cache; `kwargs` go to llama_cpp.Llama (`vocab_only`, `lora_path`)."""
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
        ids = chat_prompt_ids(tokenizer, question)
        tokens, logits = transformers_greedy(model, ids, GREEDY_TOKENS)
        rows.append((ids, tokens, logits))
    return rows


def next_token_agreement(llm: Any, ids: list[int], expected: list[int]) -> float:
    """Share of positions where llama.cpp's argmax equals transformers' greedy token, both fed
    transformers' sequence (teacher forcing), so one flipped near-tie does not derail the rest."""
    import numpy as np

    llm.reset()
    llm.eval(ids + expected[:-1])
    scores = np.asarray(llm.scores[len(ids) - 1 : len(ids) - 1 + len(expected)])
    return float((scores.argmax(axis=1) == np.asarray(expected)).mean())


EXPORT_TYPES = ("f32", "f16")


_EXPORTS: dict[tuple[Path, str], tuple[FineTuned, dict[str, Path]]] = {}


def exported_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, finetune: Callable[[], FineTuned]
) -> tuple[FineTuned, dict[str, Path]]:
    """The fine-tune `finetune()` makes and its GGUF files (`export_adapter`), made once per test
    session and `name` (an architecture or variant), however pytest orders the modules."""
    key = (tmp_path_factory.getbasetemp(), name)
    if key not in _EXPORTS:
        finetuned = finetune()
        _EXPORTS[key] = (finetuned, export_adapter(tmp_path_factory, finetuned, name))
    return _EXPORTS[key]


def export_adapter(
    tmp_path_factory: pytest.TempPathFactory, finetuned: FineTuned, label: str
) -> dict[str, Path]:
    """type → GGUF file, every EXPORT_TYPES type written from the adapter in one export call."""
    out = tmp_path_factory.mktemp(f"export-{label}")
    status = main(
        [
            "export", "--adapter", str(finetuned.adapter), "--output", str(out),
            "--gguf-type", ",".join(EXPORT_TYPES), "--no-progress",
        ]
    )  # fmt: skip
    assert status == 0
    return {kind: out / f"adapter-{kind}.gguf" for kind in EXPORT_TYPES}


def check_greedy_tokens_and_logits(
    label: str,
    kind: str,
    finetuned: FineTuned,
    path: Path,
    capsys: pytest.CaptureFixture[str],
    atol: float | None = None,
) -> float:
    """llama.cpp on `path` fed transformers' prompt ids for the first PROMPT_COUNT questions of
    CHATS: the same GREEDY_TOKENS greedy tokens, first-step logits within `atol` (default
    LOGIT_ATOL[kind]). Returns the largest logit difference (also printed)."""
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(finetuned.adapter)
    model = AutoModelForCausalLM.from_pretrained(finetuned.merged).eval()
    llm = open_llama(path)
    largest = 0.0
    for question, _ in CHATS[:PROMPT_COUNT]:
        ids = chat_prompt_ids(tokenizer, question)
        expected, expected_logits = transformers_greedy(model, ids, GREEDY_TOKENS)
        assert len(set(expected)) > 3, expected  # a meaningful reference
        tokens, logits = llama_cpp_greedy(llm, ids, GREEDY_TOKENS)
        assert tokens == expected
        largest = max(largest, float(np.abs(logits - expected_logits).max()))
    with capsys.disabled():
        print(f"\n{label} {kind}: max |logit difference| {largest:.2e}", end="")
    assert largest < (LOGIT_ATOL[kind] if atol is None else atol)
    return largest


def check_chat_answers(path: Path, *, strip: bool = False) -> None:
    """LM Studio's path: the template stored in the file renders each question, generation stops
    at the stored EOS, and the fine-tuned answers come back word for word (`strip`: for templates
    that put a space before the answer, which llama.cpp returns as part of it)."""
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=1, verbose=False)
    for question, answer in CHATS:
        reply = llm.create_chat_completion(
            messages=[{"role": "user", "content": question}], temperature=0.0, max_tokens=48
        )["choices"][0]
        content = reply["message"]["content"]
        assert (content.strip() if strip else content) == answer
        assert reply["finish_reason"] == "stop"  # EOS, not the 48-token limit
