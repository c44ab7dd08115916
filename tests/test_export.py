"""The `export` command end to end: what it writes, and how it refuses bad input."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

from tests.finetune_helpers import FineTuned

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tree(folder: Path) -> list[str]:
    """Every path under `folder`, hidden temporaries included."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def test_export_both_writes_merged_gguf_and_modelfile(
    tmp_path: Path, finetuned: FineTuned, run_main
) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "export"
    status, stdout, stderr = run_main(
        "export", "--adapter", finetuned.adapter, "--output", out, "--format", "both",
        "--gguf-type", "q8_0", "--no-progress",
    )  # fmt: skip
    assert status == 0, stderr
    gguf_path = out / "adapter-q8_0.gguf"
    assert f"wrote {gguf_path}" in stdout and "merged model in" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "adapter-q8_0.gguf", "merged"]
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    reference = AutoModelForCausalLM.from_pretrained(finetuned.merged).eval()
    ids = torch.tensor([[0, 5, 9, 13]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, reference(ids).logits)
    assert AutoTokenizer.from_pretrained(out / "merged").chat_template
    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./adapter-q8_0.gguf" in modelfile
    assert "<|im_start|>{{ .Role }}" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile


def test_export_gguf_only_leaves_no_merge_behind(
    tmp_path: Path, finetuned: FineTuned, run_main
) -> None:
    out = tmp_path / "export"
    status, _, stderr = run_main(
        "export", "--adapter", finetuned.adapter, "--output", out, "--no-progress"
    )
    assert status == 0, stderr
    assert _tree(out) == ["Modelfile", "adapter-f16.gguf"]  # the temporary merge is gone
    # A second type goes next to the first without --force; the Modelfile points at the newest.
    status, _, stderr = run_main(
        "export", "--adapter", finetuned.adapter, "--output", out, "--gguf-type", "q8_0",
        "--no-progress",
    )  # fmt: skip
    assert status == 0, stderr
    assert _tree(out) == ["Modelfile", "adapter-f16.gguf", "adapter-q8_0.gguf"]
    assert "FROM ./adapter-q8_0.gguf" in (out / "Modelfile").read_text()


def test_export_of_a_merged_gpt2_model(tmp_path: Path, tiny_gpt2: Path, run_main) -> None:
    status, stdout, stderr = run_main(
        "export", "--model", tiny_gpt2, "--output", tmp_path, "--gguf-type", "f32", "--no-progress"
    )
    assert status == 0, stderr
    assert "(gpt2, f32," in stdout
    modelfile = (tmp_path / "Modelfile").read_text()
    assert "### Instruction:" in modelfile and 'PARAMETER stop "<eos>"' in modelfile


# --------------------------------------------------------------------------------------------------
# Bad input: one line on stderr naming the path or key and the fix, exit 2 (usage) or 1 (failure)
# --------------------------------------------------------------------------------------------------


def test_adapter_folder_without_adapter_config(tmp_path: Path, run_main) -> None:
    (tmp_path / "not-an-adapter").mkdir()
    status, _, stderr = run_main(
        "export", "--adapter", tmp_path / "not-an-adapter", "--output", tmp_path / "out"
    )
    assert status == 2
    assert stderr.count("\n") == 1 and "adapter_config.json" in stderr
    assert "not-an-adapter" in stderr and "train-lora" in stderr
    assert not (tmp_path / "out").exists()


def test_base_model_that_cannot_be_found(tmp_path: Path, finetuned: FineTuned, run_main) -> None:
    adapter = tmp_path / "adapter"
    shutil.copytree(finetuned.adapter, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    status, _, stderr = run_main("export", "--adapter", adapter, "--output", tmp_path / "out")
    assert status == 2
    assert stderr.count("\n") == 1 and "gone" in stderr and "could not be loaded" in stderr
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def tiny_neox(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    """A random GPT-NeoX, an architecture the GGUF writer does not support."""
    import torch
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-neox")
    GPTNeoXForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_unsupported_architecture_is_refused_before_any_large_write(
    tmp_path: Path, tiny_neox: Path, run_main
) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    status, _, stderr = run_main("export", "--model", tiny_neox, "--output", tmp_path / "a")
    assert status == 2
    assert "GPTNeoXForCausalLM" in stderr and "LlamaForCausalLM" in stderr
    assert "GPT2LMHeadModel" in stderr and stderr.count("\n") == 1
    assert not (tmp_path / "a").exists()
    # With an adapter, the refusal comes before the merge writes a (large) merged model.
    base = AutoModelForCausalLM.from_pretrained(tiny_neox)
    peft_config = LoraConfig(r=2, target_modules=["query_key_value"], task_type="CAUSAL_LM")
    get_peft_model(base, peft_config).save_pretrained(tmp_path / "neox-adapter")
    status, _, stderr = run_main(
        "export", "--adapter", tmp_path / "neox-adapter", "--model", tiny_neox,
        "--output", tmp_path / "b", "--format", "both",
    )  # fmt: skip
    assert status == 2 and "GPTNeoXForCausalLM" in stderr
    assert not (tmp_path / "b").exists()


def test_existing_output_is_refused_unless_force(
    tmp_path: Path, finetuned: FineTuned, run_main
) -> None:
    out = tmp_path / "export"
    args = ["export", "--model", finetuned.merged, "--output", out, "--no-progress"]
    assert run_main(*args)[0] == 0
    target = out / "merged-f16.gguf"
    target.write_bytes(b"user data")
    status, _, stderr = run_main(*args)
    assert status == 2 and str(target) in stderr and "--force" in stderr
    assert target.read_bytes() == b"user data"
    assert run_main(*args, "--force")[0] == 0
    assert target.read_bytes()[:4] == b"GGUF"


@pytest.mark.parametrize(
    ("failure", "expected_status"),
    [(OSError(errno.ENOSPC, "No space left on device"), 1), (KeyboardInterrupt(), 130)],
)
def test_interrupted_write_leaves_nothing_under_the_final_name(
    tmp_path: Path,
    finetuned: FineTuned,
    run_main,
    monkeypatch: pytest.MonkeyPatch,
    failure: BaseException,
    expected_status: int,
) -> None:
    """Disk full or Ctrl-C in the middle of the tensors: the earlier file survives intact and
    no temporary file is left."""
    from training_methods.transfer_learning.serving.gguf import file as gguf_file

    out = tmp_path / "export"
    args = ["export", "--model", finetuned.merged, "--output", out, "--no-progress", "--force"]
    assert run_main(*args)[0] == 0
    target = out / "merged-f16.gguf"
    before = target.read_bytes()
    real_convert = gguf_file.convert_tensor
    calls = []

    def failing_convert(*a, **k):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        if len(calls) == 5:  # header, index and four tensors are already on disk
            raise failure
        return real_convert(*a, **k)

    monkeypatch.setattr(gguf_file, "convert_tensor", failing_convert)
    status, _, stderr = run_main(*args)
    assert status == expected_status
    assert len(calls) == 5
    assert target.read_bytes() == before
    assert _tree(out) == ["Modelfile", "merged-f16.gguf"]  # no .tmp left behind
    if expected_status == 1:
        assert "No space left on device" in stderr and str(target) in stderr
        assert "nothing was left under that name" in stderr and stderr.count("\n") == 1


def test_first_write_interrupted_leaves_no_file(
    tmp_path: Path, finetuned: FineTuned, run_main, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training_methods.transfer_learning.serving.gguf import file as gguf_file

    def full_disk(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf_file, "convert_tensor", full_disk)
    status, _, _ = run_main("export", "--model", finetuned.merged, "--output", tmp_path)
    assert status == 1
    assert not list(tmp_path.glob("*.gguf*")) and not list(tmp_path.glob(".*"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--output", "o"], "--adapter DIR"),
        (["--model", "m", "--output", "o", "--format", "merged"], "needs --adapter"),
    ],
)
def test_missing_or_contradicting_sources(
    tmp_path: Path, run_main, args: list[str], message: str
) -> None:
    status, _, stderr = run_main("export", *args)
    assert status == 2 and message in stderr


@pytest.mark.slow  # a fresh interpreter imports torch and transformers
def test_export_script_is_a_thin_wrapper(tmp_path: Path, tiny_gpt2: Path) -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parent.parent / "scripts" / "export_model.py"
    proc = subprocess.run(
        [sys.executable, script, "--model", tiny_gpt2, "--output", tmp_path, "--no-progress"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / f"{tiny_gpt2.name}-f16.gguf").is_file()
