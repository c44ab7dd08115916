"""The round trip every GGUF architecture test runs: a fine-tune exported from its adapter with
`main(["export", ...])`, then llama.cpp (llama-cpp-python) against transformers on greedy
tokens, first-step logits and the chat path. test_gguf_qwen, test_gguf_sentencepiece and the
other architecture tests call these; the tiny models and their tokenizers live in those files."""

from __future__ import annotations

from pathlib import Path

import pytest

from main import main
from tests.test_gguf import (
    CHATS,
    GREEDY_TOKENS,
    LOGIT_ATOL,
    PROMPT_COUNT,
    FineTuned,
    _llama,
    _prompt_ids,
    llama_cpp_greedy,
    transformers_greedy,
)

EXPORT_TYPES = ("f32", "f16")


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
    llm = _llama(path)
    largest = 0.0
    for question, _ in CHATS[:PROMPT_COUNT]:
        ids = _prompt_ids(tokenizer, question)
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
