"""`export --format lora-gguf`: the adapter alone as a GGUF LoRA file, applied by llama.cpp
(llama-cpp-python's `lora_path`, llama.cpp's `--lora`) on top of the base model's GGUF, checked
against the merged model: a tiny Llama (rotary permutation of q/k, done to lora_b's rows), a
tiny Gemma 2 (its query scalar folded into lora_b of q_proj), a tiny GPT-2 (Conv1D weights,
whose transposed storage the LoRA pair does not share), a tiny Qwen2 (q/k/v biases, which stay in
the base's file) and a tiny Phi-4-mini shape (LoRA on the fused qkv_proj and gate_up_proj, which
llama.cpp applies before it splits them; LongRoPE and tied embeddings in the base), each
fine-tuned with train-lora's LoRA on CHATS."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from main import main
from tests.finetune_helpers import CHATS, FineTuned, finetune_on_chats, finetune_tiny_llama
from tests.gguf_models import GEMMA_LOGIT_ATOL, build_tiny_gemma, build_tiny_qwen, tiny_phi3
from tests.gguf_roundtrip import (
    GREEDY_TOKENS,
    LOGIT_ATOL,
    PROMPT_COUNT,
    chat_prompt_ids,
    gguf_fields,
    llama_cpp_greedy,
    open_llama,
    transformers_greedy,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread", "llama_cpp_without_amx_repacking")

ARCHITECTURES = ["llama", "gemma2", "gpt2", "qwen2", "phi3"]
# The adapter's module for the first layer's queries → its llama.cpp weight.
QUERY_MODULES = {
    "llama": ("model.layers.0.self_attn.q_proj", "blk.0.attn_q.weight"),
    "gemma2": ("model.layers.0.self_attn.q_proj", "blk.0.attn_q.weight"),
    "gpt2": ("transformer.h.0.attn.c_attn", "blk.0.attn_qkv.weight"),
    "qwen2": ("model.layers.0.self_attn.q_proj", "blk.0.attn_q.weight"),
    "phi3": ("model.layers.0.self_attn.qkv_proj", "blk.0.attn_qkv.weight"),
}
_FILES: dict[tuple[Path, str], tuple[FineTuned, dict[str, Path]]] = {}


def _export(*argv: str) -> None:
    assert main(["export", *argv, "--no-progress"]) == 0


@pytest.fixture(scope="module", params=ARCHITECTURES)
def lora_files(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, FineTuned, dict[str, Path]]:
    """(architecture, the fine-tune, name → file): the base as f16 and q8_0 GGUF, the adapter as
    f32 and f16 LoRA GGUF, and the merged fine-tune as f16 GGUF, each written by `export`."""
    arch = request.param
    key = (tmp_path_factory.getbasetemp(), arch)
    if key not in _FILES:
        overrides = {}
        if arch in ("llama", "gpt2"):
            base = request.getfixturevalue(f"tiny_{arch}")
        elif arch == "qwen2":
            base = build_tiny_qwen(tmp_path_factory.mktemp("tiny-qwen2-lora"), arch)
            overrides["max_length"] = 128  # Qwen2.5's template adds a default system turn
        elif arch == "phi3":
            base = tiny_phi3(tmp_path_factory, "phi4-mini")  # test_gguf_phi3's, fine-tuned once
        else:
            base = build_tiny_gemma(tmp_path_factory.mktemp("tiny-gemma2-lora"), arch)
        finetuned = finetune_on_chats(tmp_path_factory, base, **overrides)
        out = tmp_path_factory.mktemp(f"lora-{arch}")
        _export("--model", str(base), "--output", str(out / "base"), "--gguf-type", "f16,q8_0")
        _export(
            "--adapter", str(finetuned.adapter), "--output", str(out / "lora"),
            "--format", "lora-gguf", "--gguf-type", "f32,f16",
        )  # fmt: skip
        _export("--adapter", str(finetuned.adapter), "--output", str(out / "merged"))
        name = finetuned.adapter.name
        files = {
            "base-f16": out / "base" / f"{base.name}-f16.gguf",
            "base-q8_0": out / "base" / f"{base.name}-q8_0.gguf",
            "lora-f32": out / "lora" / f"{name}-f32-lora.gguf",
            "lora-f16": out / "lora" / f"{name}-f16-lora.gguf",
            "merged-f16": out / "merged" / f"{name}-f16.gguf",
        }
        _FILES[key] = (finetuned, files)
    finetuned, files = _FILES[key]
    return arch, finetuned, files


def test_lora_file_holds_the_adapter_in_llama_cpp_layout(
    lora_files: tuple[str, FineTuned, dict],
) -> None:
    import numpy as np
    from gguf import GGUFReader
    from safetensors import safe_open

    from training_methods.transfer_learning.serving.gguf.tensors import permute_for_rope

    arch, finetuned, files = lora_files
    adapter_config = json.loads((finetuned.adapter / "adapter_config.json").read_text())
    fields, tensors = gguf_fields(files["lora-f32"])
    assert fields["general.type"] == "adapter"
    assert fields["general.architecture"] == arch
    assert fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == pytest.approx(adapter_config["lora_alpha"])
    assert not any(key.startswith("tokenizer.") for key in fields)  # the base's GGUF has it
    _, base_tensors = gguf_fields(files["base-f16"])
    targets = {name.rsplit(".", 1)[0] for name in tensors}
    assert targets <= set(base_tensors) and "blk.1.ffn_down.weight" in targets
    assert set(tensors) == {f"{t}.{part}" for t in targets for part in ("lora_a", "lora_b")}
    assert set(gguf_fields(files["lora-f16"])[1].values()) == {"F16"}
    reader = GGUFReader(files["lora-f32"])
    written = {tensor.name: np.array(tensor.data) for tensor in reader.tensors}
    module, weight = QUERY_MODULES[arch]
    with safe_open(finetuned.adapter / "adapter_model.safetensors", framework="pt") as adapter:
        a = adapter.get_tensor(f"base_model.model.{module}.lora_A.weight")  # (rank, in)
        b = adapter.get_tensor(f"base_model.model.{module}.lora_B.weight")  # (out, rank)
    np.testing.assert_array_equal(written[f"{weight}.lora_a"], a.numpy())
    if arch == "llama":  # rows permuted like q_proj's
        expected_b = permute_for_rope(b, 4).numpy()
    elif arch == "gemma2":  # the query scalar folded in like q_proj's: sqrt(head_dim 32 / 24)
        expected_b = b.numpy() * (32 / 24) ** 0.5
    else:  # as peft stores it, (out, rank): Qwen2's and Phi-3's rows need no reordering, and
        # GPT-2's Conv1D weight is stored (in, out) but llama.cpp's lora_b is still (out, rank)
        expected_b = b.numpy()
    if arch == "phi3":  # one pair for the fused q/k/v rows: 4 query heads + 2 + 2 of 16
        assert expected_b.shape[0] == (4 + 2 + 2) * 16
        assert written["blk.1.ffn_up.weight.lora_b"].shape[0] == 2 * 128  # gate and up rows
    np.testing.assert_allclose(written[f"{weight}.lora_b"], expected_b, rtol=1e-6)


@pytest.mark.parametrize("lora", ["lora-f32", "lora-f16"])
def test_llama_cpp_base_plus_lora_gives_the_merged_models_tokens(
    lora: str, lora_files: tuple[str, FineTuned, dict], capsys: pytest.CaptureFixture[str]
) -> None:
    """The base's f16 GGUF with the LoRA file, against the merged fine-tune: the same greedy
    tokens as transformers and as llama.cpp on the merged f16 GGUF for 3 prompts, first-step
    logits within the f16 tolerance of transformers'. The base alone answers otherwise, so the
    adapter is what makes the difference."""
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    arch, finetuned, files = lora_files
    tokenizer = AutoTokenizer.from_pretrained(finetuned.adapter)
    model = AutoModelForCausalLM.from_pretrained(finetuned.merged).eval()
    with_lora = open_llama(files["base-f16"], lora_path=str(files[lora]))
    merged = open_llama(files["merged-f16"])
    base = open_llama(files["base-f16"])
    atol = GEMMA_LOGIT_ATOL["f16"] if arch == "gemma2" else LOGIT_ATOL["f16"]
    largest, base_differs = 0.0, False
    for question, _ in CHATS[:PROMPT_COUNT]:
        ids = chat_prompt_ids(tokenizer, question)
        expected, expected_logits = transformers_greedy(model, ids, GREEDY_TOKENS)
        tokens, logits = llama_cpp_greedy(with_lora, ids, GREEDY_TOKENS)
        assert tokens == expected == llama_cpp_greedy(merged, ids, GREEDY_TOKENS)[0]
        largest = max(largest, float(np.abs(logits - expected_logits).max()))
        base_differs |= llama_cpp_greedy(base, ids, GREEDY_TOKENS)[0] != expected
    with capsys.disabled():
        print(f"\n{arch} base f16 + {lora}: max |logit difference| {largest:.2e}", end="")
    assert largest < atol
    assert base_differs


def test_llama_cpp_chat_with_the_lora_answers_as_trained(
    lora_files: tuple[str, FineTuned, dict],
) -> None:
    """LM Studio's path with `--lora`: the base's template, the merged file's replies; for all but
    GPT-2 those are the trained answers word for word, stopped at EOS (the 32-wide GPT-2 does not
    learn them in 30 steps)."""
    import llama_cpp

    arch, _, files = lora_files

    def replies(model: Path, lora: Path | None) -> list[tuple[str, str]]:
        llm = llama_cpp.Llama(
            model_path=str(model),
            lora_path=str(lora) if lora else None,
            n_ctx=256,
            n_threads=1,
            verbose=False,
        )
        out = []
        for question, _ in CHATS:
            reply = llm.create_chat_completion(
                messages=[{"role": "user", "content": question}], temperature=0.0, max_tokens=48
            )["choices"][0]
            out.append((reply["message"]["content"], reply["finish_reason"]))
        return out

    with_lora = replies(files["base-f16"], files["lora-f16"])
    assert with_lora == replies(files["merged-f16"], None)
    if arch != "gpt2":
        assert with_lora == [(answer, "stop") for _, answer in CHATS]


@pytest.fixture(scope="module")
def llama_finetune(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> FineTuned:
    return finetune_tiny_llama(tmp_path_factory, tiny_llama)


def _adapter_copy(finetuned: FineTuned, folder: Path, **changes: Any) -> Path:
    shutil.copytree(finetuned.adapter, folder)
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config.update(changes)
    config_path.write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("argv", "changes", "message"),
    [
        (["--gguf-type", "q4_0"], {}, "--gguf-type q4_0"),
        ([], {"use_dora": True}, "DoRA"),
        ([], {"alpha_pattern": {"q_proj": 64}}, "alpha_pattern"),
        ([], {"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ],
    ids=["quantised-type", "dora", "alpha-pattern", "modules-to-save"],
)
def test_adapters_llama_cpp_cannot_apply_are_refused_before_writing(
    tmp_path: Path,
    run_main,
    llama_finetune: FineTuned,
    argv: list[str],
    changes: dict[str, Any],
    message: str,
) -> None:
    adapter = _adapter_copy(llama_finetune, tmp_path / "adapter", **changes)
    status, _, stderr = run_main(
        "export", "--adapter", adapter, "--output", tmp_path / "out", "--format", "lora-gguf",
        *argv,
    )  # fmt: skip
    assert status == 2 and stderr.count("\n") == 1
    assert message in stderr
    assert not (tmp_path / "out").exists()


def test_lora_gguf_without_an_adapter_is_refused(
    tmp_path: Path, run_main, tiny_llama: Path
) -> None:
    status, _, stderr = run_main(
        "export", "--model", tiny_llama, "--output", tmp_path / "out", "--format", "lora-gguf"
    )
    assert status == 2 and stderr.count("\n") == 1 and "--adapter" in stderr
    assert not (tmp_path / "out").exists()


def test_lora_alpha_gives_llama_cpp_peft_scale() -> None:
    """llama.cpp scales by alpha / rank; peft by lora_alpha / r, or lora_alpha / sqrt(r) with
    rsLoRA, which the written alpha must reproduce."""
    from training_methods.transfer_learning.serving.gguf.lora import lora_alpha_for_llama_cpp

    assert lora_alpha_for_llama_cpp({"lora_alpha": 32, "r": 16}, "a") == 32.0
    rslora = lora_alpha_for_llama_cpp({"lora_alpha": 16, "r": 4, "use_rslora": True}, "a")
    assert rslora / 4 == pytest.approx(16 / 4**0.5)
    assert lora_alpha_for_llama_cpp({"lora_alpha": 8, "r": 8, "rank_pattern": {"q": 4}}, "a") == 8
