"""Nothing of the user's is ever deleted or overwritten by `extract` and `merge` (issue 16).

Every fixture is made here under tmp_path: small documents, folders and files of "the user's", a
tiny base model and a LoRA adapter for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _docs(root: Path) -> Path:
    docs = root / "docs"
    (docs / "guides").mkdir(parents=True)
    (docs / "guides" / "worms.md").write_text(
        "# Worms\n\nRed wigglers eat kitchen scraps. They like it dark and damp.\n\n"
        "## Feeding\n\nFeed them a little every week. Do not add citrus peel.\n",
        encoding="utf-8",
    )
    (docs / "notes.txt").write_text(
        "Leaf mould takes two years. Keep the pile moist and turn it now and then.\n",
        encoding="utf-8",
    )
    (docs / "heap.md").write_text(
        "# Heap\n\nA compost heap needs air. Turn it every few weeks.\n", encoding="utf-8"
    )
    return docs


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# --------------------------------------------------------------------------------------------------
# extract: a symlinked cache folder
# --------------------------------------------------------------------------------------------------


def test_extract_refuses_a_symlinked_cache_folder_and_leaves_its_target_alone(
    run_main, tmp_path: Path
) -> None:
    docs = _docs(tmp_path)
    out, vault = tmp_path / "out", tmp_path / "vault"
    out.mkdir()
    vault.mkdir()
    (vault / "precious.jsonl").write_text("{}\n")
    (vault / "0123456789abcdef01234567.jsonl").write_text('{"mine": 1}\n')  # a cache-like name
    os.symlink(vault, out / ".extract_cache")
    before = _tree(vault)
    for extra in ([], ["--incremental"]):
        status, _, err = run_main("extract", docs, out, "--no-progress", *extra)
        assert status == 1, err
        assert err.count("\n") == 1 and err.startswith("error: ")
        assert f"'{out / '.extract_cache'}' is a symbolic link" in err and "rm " in err
        assert _tree(vault) == before  # nothing deleted, nothing written into the target
        assert (out / ".extract_cache").is_symlink()


# --------------------------------------------------------------------------------------------------
# extract: only the files it wrote may be removed
# --------------------------------------------------------------------------------------------------


def test_extract_removes_only_outputs_it_wrote_and_nobody_changed(run_main, tmp_path: Path) -> None:
    docs = _docs(tmp_path)
    out = tmp_path / "out"
    (out / "chat").mkdir(parents=True)
    mine = {"valid.jsonl": "{}\n", "chat/valid.jsonl": "{}\n", "notes.jsonl": '{"a": 1}\n'}
    for name, text in mine.items():
        (out / name).write_text(text)

    status, _, err = run_main(
        "extract", docs, out, "--val-ratio", "0", "--instruction-format", "--no-progress",
        "--record-kinds", "section,topic,question",
    )  # fmt: skip
    assert status == 0, err
    for name, text in mine.items():
        assert (out / name).read_text() == text, name  # the user's files, untouched
    assert f"{out / 'chat' / 'valid.jsonl'} was not written by an earlier extract run" in err
    for name in ("train.jsonl", "alpaca/train.jsonl", "chat/train.jsonl"):
        assert (out / name).is_file()

    # Without --instruction-format, the instruction files this toolkit wrote are stale: removed.
    status, _, err = run_main("extract", docs, out, "--val-ratio", "0", "--no-progress")
    assert status == 0, err
    assert not (out / "alpaca" / "train.jsonl").exists()
    assert not (out / "chat" / "train.jsonl").exists()
    for name, text in mine.items():
        assert (out / name).read_text() == text, name

    # An output the user changed since is theirs now: kept, with a warning.
    with (out / "train.jsonl").open("a") as handle:
        handle.write('{"text": "added by hand"}\n')
    changed = (out / "train.jsonl").read_bytes()
    # A hand-edited manifest cannot make extract delete anything outside OUTPUT_DIR.
    outside = tmp_path / "outside.jsonl"
    outside.write_text("{}\n")
    manifest_path = out / ".extract_cache" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    info = outside.stat()
    manifest["outputs"]["../outside.jsonl"] = {"size": info.st_size, "mtime_ns": info.st_mtime_ns}
    manifest_path.write_text(json.dumps(manifest))

    status, _, err = run_main("extract", docs, out, "--format", "text", "--no-progress")
    assert status == 0, err
    assert (out / "train.jsonl").read_bytes() == changed
    assert "train.jsonl changed since extract wrote it: left as is" in err
    assert outside.read_text() == "{}\n"
    for name, text in mine.items():
        assert (out / name).read_text() == text, name


# --------------------------------------------------------------------------------------------------
# extract: one run per output folder
# --------------------------------------------------------------------------------------------------


# What a running extract does to its output folder: an flock on OUTPUT_DIR/.extract.lock, with its
# PID and command line written into the file.
HOLD_LOCK = """
import fcntl, json, os, sys, time
fd = os.open(os.path.join(sys.argv[1], ".extract.lock"), os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
info = {"pid": os.getpid(), "command": "python main.py extract big/ out/", "started": "12:00"}
os.write(fd, json.dumps(info).encode())
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_extract_into_a_locked_folder_is_one_line_naming_the_first(
    run_main, tmp_path: Path
) -> None:
    docs = _docs(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"  # the holder runs, lock taken
        started = time.monotonic()
        status, _, err = run_main("extract", docs, out, "--no-progress")
        assert time.monotonic() - started < 30  # refused at once, not after a wait
        assert status == 1
        assert err.count("\n") == 1 and err.startswith("error: ")
        assert (
            f"'{out}' is in use by another extract run (PID {holder.pid}: python main.py "
            "extract big/ out/, since 12:00); wait for it to finish" in err
        )
        assert not (out / "train.jsonl").exists()
    finally:
        holder.kill()  # like a crash: the OS releases the lock, the lock file stays
        holder.wait(timeout=30)
    assert (out / ".extract.lock").exists()
    status, _, err = run_main("extract", docs, out, "--no-progress")
    assert status == 0, err  # a lock file left behind never blocks a later run
    assert json.loads((out / ".extract.lock").read_text())["pid"] == os.getpid()
    (out / ".extract.lock").write_text("garbage from some older run")
    assert run_main("extract", docs, out, "--no-progress")[0] == 0


def test_a_symlinked_lock_file_is_never_written_through(run_main, tmp_path: Path) -> None:
    docs = _docs(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "diary.txt"
    target.write_text("dear diary\n")
    os.symlink(target, out / ".extract.lock")
    status, _, err = run_main("extract", docs, out, "--no-progress")
    assert status == 1 and err.count("\n") == 1
    assert ".extract.lock is a symbolic link" in err
    assert target.read_text() == "dear diary\n"


# --------------------------------------------------------------------------------------------------
# extract --format text: two documents, one output name
# --------------------------------------------------------------------------------------------------


def test_text_format_never_writes_two_documents_to_one_file(run_main, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Alpha\n\nThe markdown file says alpha. It has two sentences.\n")
    (docs / "a.md.txt").write_text("The text file says beta. It has two sentences too.\n")
    out = tmp_path / "out"
    status, _, err = run_main("extract", docs, out, "--format", "text", "--no-progress")
    assert status == 3  # some files failed, the rest was written
    files = {f["source"]: f for f in json.loads((out / "extract_report.json").read_text())["files"]}
    assert files["a.md.txt"]["status"] == "ok"
    assert files["a.md"]["status"] == "failed"
    assert "'a.md.txt'" in files["a.md"]["reason"] and "rename" in files["a.md"]["reason"]
    assert "failed: a.md: --format text would write it to 'a.md.txt'" in err
    text = (out / "a.md.txt").read_text()
    assert "beta" in text and "alpha" not in text


# --------------------------------------------------------------------------------------------------
# merge --force
# --------------------------------------------------------------------------------------------------


def _base_and_adapter(
    tiny_llama: Path, base: Path, adapter: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A copy of the tiny base at `base` and a (random) LoRA adapter for it at `adapter`."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    shutil.copytree(tiny_llama, base)
    model = AutoModelForCausalLM.from_pretrained(base)
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    get_peft_model(model, lora).save_pretrained(adapter)
    config_path = adapter / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = str(base)
    config_path.write_text(json.dumps(config))
    capsys.readouterr()  # the loading progress bars: not part of what merge prints


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for name, data in _tree(folder).items():
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()


@pytest.mark.parametrize(
    ("where", "output"),
    [("is", "models/base"), ("contains", "models"), ("is inside", "models/base/merged")],
)
def test_merge_force_never_replaces_the_base_model(
    run_main, capsys, tmp_path: Path, tiny_llama: Path, where: str, output: str
) -> None:
    base, adapter = tmp_path / "models" / "base", tmp_path / "adapter"
    _base_and_adapter(tiny_llama, base, adapter, capsys)
    (base / "my_notes.txt").write_text("mine\n")
    before = _digest(tmp_path / "models")
    status, _, err = run_main(
        "merge", "--adapter", adapter, "--output", tmp_path / output, "--force"
    )
    assert status == 2
    assert err.count("\n") == 1
    assert f"--output {tmp_path / output} {where} the base model {base}" in err
    assert _digest(tmp_path / "models") == before


def test_merge_force_replaces_only_an_earlier_merge_output(
    run_main, capsys, tmp_path: Path, tiny_llama: Path
) -> None:
    from transformers import AutoModelForCausalLM

    base, adapter = tmp_path / "base", tmp_path / "adapter"
    _base_and_adapter(tiny_llama, base, adapter, capsys)

    # A folder of the user's: --force does not make merge delete it.
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "thesis.tex").write_text("\\documentclass{article}\n")
    status, _, err = run_main("merge", "--adapter", adapter, "--output", thesis, "--force")
    assert status == 2 and err.count("\n") == 1
    assert f"{thesis} was not written by merge (it has no merge_info.json)" in err
    assert _tree(thesis) == {"thesis.tex": b"\\documentclass{article}\n"}

    # An empty folder is fine; an earlier merge output is replaced with --force.
    merged = tmp_path / "merged"
    merged.mkdir()
    status, _, err = run_main("merge", "--adapter", adapter, "--output", merged)
    assert status == 0, err
    assert "model.safetensors" in json.loads((merged / "merge_info.json").read_text())["files"]
    status, _, err = run_main("merge", "--adapter", adapter, "--output", merged, "--force")
    assert status == 0, err
    AutoModelForCausalLM.from_pretrained(merged)
    capsys.readouterr()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".merged")]  # no leftovers

    # ... but not once it holds a file merge did not write.
    (merged / "eval_results.txt").write_text("my notes\n")
    status, _, err = run_main("merge", "--adapter", adapter, "--output", merged, "--force")
    assert status == 2 and err.count("\n") == 1
    assert "holds 'eval_results.txt', which merge did not write" in err
    assert (merged / "eval_results.txt").read_text() == "my notes\n"
