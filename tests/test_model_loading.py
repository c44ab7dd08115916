"""A `.gguf` file wherever a model is taken: read by transformers once, cached by content hash,
recorded by the adapter, found again by merge and chat; one-line errors for files it cannot read.

The GGUF here is the tiny fine-tuned Llama exported by the toolkit's own writer (conftest's
`gguf_files`); tests/test_real_model.py does the same with SmolLM2.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.finetune_helpers import FineTuned

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def toolkit_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("LLM_TOOLKIT_CACHE", str(cache))
    return cache


def test_a_gguf_loads_like_its_model_and_is_read_only_once(
    gguf_files: dict[str, Path],
    finetuned: FineTuned,
    toolkit_cache: Path,
    monkeypatch,
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from training_methods.transfer_learning import model_loading

    gguf = gguf_files["f32"]
    model = model_loading.load_causal_lm(str(gguf), dtype=torch.float32).eval()
    tokenizer = model_loading.load_tokenizer(str(gguf))
    reference = AutoModelForCausalLM.from_pretrained(finetuned.merged).eval()
    ids = tokenizer("Documents are cut into chunks", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        got, want = model(ids).logits, reference(ids).logits
    # The cache holds float16 weights: the logits of the float32 model to float16 precision.
    assert torch.allclose(got, want, atol=5e-2, rtol=0)
    assert got.argmax(-1).tolist() == want.argmax(-1).tolist()

    (cached,) = (toolkit_cache / "gguf").iterdir()
    assert json.loads((cached / "gguf_source.json").read_text())["gguf_file"] == str(gguf)

    def no_second_read(*args, **kwargs):
        raise AssertionError("the GGUF was dequantised again")

    monkeypatch.setattr(model_loading, "_dequantise_gguf", no_second_read)
    assert model_loading.resolve_model_path(str(gguf)) == str(cached)


def test_the_cache_is_keyed_by_content(
    gguf_files: dict[str, Path],
    tmp_path: Path,
) -> None:
    from training_methods.transfer_learning.model_loading import gguf_cache_dir

    copy = tmp_path / "copy.gguf"
    copy.write_bytes(gguf_files["f32"].read_bytes())
    assert gguf_cache_dir(copy) == gguf_cache_dir(gguf_files["f32"])
    assert gguf_cache_dir(gguf_files["f16"]) != gguf_cache_dir(gguf_files["f32"])


def test_train_merge_and_chat_on_a_gguf_base(
    gguf_files: dict[str, Path],
    tmp_path: Path,
    run_main,
) -> None:
    gguf = gguf_files["f32"]
    data = tmp_path / "train.jsonl"
    records = [
        {
            "messages": [
                {"role": "user", "content": "ping"},
                {"role": "assistant", "content": "pong"},
            ]
        }
    ] * 8
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    run = tmp_path / "run"
    status, out, err = run_main(
        "train-lora",
        "--model-name",
        gguf,
        "--train-data",
        data,
        "--output-dir",
        run,
        "--max-steps",
        "2",
    )
    assert status == 0, err
    config = json.loads((run / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(gguf.resolve())  # not the cache folder

    status, out, err = run_main("merge", "--adapter", run, "--output", tmp_path / "merged")
    assert status == 0, err
    status, out, err = run_main(
        "chat", "--adapter", run, "--prompt", "ping", "--max-new-tokens", "4", "--temperature", "0"
    )
    assert status == 0, err


def test_missing_and_unreadable_gguf_files_are_one_line(tmp_path: Path, run_main) -> None:
    status, _, err = run_main("chat", "--model", tmp_path / "absent.gguf", "--prompt", "hi")
    assert status == 2 and err.count("\n") == 1 and "no such GGUF file" in err
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    status, _, err = run_main("chat", "--model", broken, "--prompt", "hi")
    (error,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert status == 2 and f"{broken}: transformers cannot read this GGUF" in error
    assert not (tmp_path / "cache" / "gguf").exists() or not any(
        p for p in (tmp_path / "cache" / "gguf").iterdir() if not p.name.startswith(".")
    )
