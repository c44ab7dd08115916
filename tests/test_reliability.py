"""Hostile input and faults: memory and time stay bounded, nothing is orphaned or left half
written, and every failure is one line with the documented exit status.

Every fixture is generated here. Memory cases run in a subprocess under `RLIMIT_AS` (a budget on
top of what the process maps after its imports), so a regression fails the test instead of
taking the machine's memory; every case has a time bound.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def run_main_with_memory_budget(
    argv: list[str], budget_mb: int, cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`main(argv)` in a fresh Python that may map only `budget_mb` MB more than it maps once
    torch, transformers and datasets are imported."""
    code = textwrap.dedent(
        f"""
        import os, resource, sys
        sys.path.insert(0, {str(REPO)!r})
        import datasets, torch, transformers  # mapped before the budget starts
        from main import main
        with open("/proc/self/statm") as statm:
            mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = mapped + {budget_mb} * 10**6
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))
        sys.exit(main({[str(a) for a in argv]!r}))
        """
    )
    env = {
        **os.environ,
        "MALLOC_ARENA_MAX": "2",  # each glibc arena reserves 64 MB of address space
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_DATASETS_CACHE": str(cwd / "hf-datasets"),
        "CUDA_VISIBLE_DEVICES": "",
    }
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write_pdf(path: Path, objects: list[bytes]) -> None:
    """A PDF of the given objects (object 1 is the catalog), with a correct cross-reference
    table."""
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    path.write_bytes(bytes(out))


def page_objects(contents: bytes, parent: int = 2) -> list[bytes]:
    """A page (object 3) showing `contents` (object 4, already encoded) in Helvetica (object 5)."""
    return [
        b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>" % parent,
        contents,
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]


def inflating_pdf(path: Path, inflated_mb: int) -> None:
    """A one-page PDF whose content stream is a few hundred KB on disk and `inflated_mb` MB of
    blanks after its text once decompressed."""
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(b"BT /F1 12 Tf 72 720 Td (Hello bomb) Tj ET\n")]
    blanks = b" " * (1 << 20)
    parts += [compressor.compress(blanks) for _ in range(inflated_mb)]
    stream = b"".join([*parts, compressor.flush()])
    contents = b"<< /Length %d /Filter /FlateDecode >>\nstream\n%s\nendstream" % (
        len(stream),
        stream,
    )
    write_pdf(
        path,
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
            *page_objects(contents),
        ],
    )


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------
# Memory and time bounded
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_huge_jsonl_record_trains_within_a_memory_budget(
    tmp_path: Path, tiny_llama: Path
) -> None:
    """A 20 MB record: tokenised whole with offsets it needs ~2 GB; cut first, it fits in 1 GB
    over the imports (a 100 MB record behaves the same, just slower to write)."""
    data = tmp_path / "train.jsonl"
    with data.open("w", encoding="utf-8") as handle:
        handle.write(json.dumps({"text": "compost " * 2_500_000}) + "\n")
        for index in range(7):
            handle.write(json.dumps({"text": f"Short record {index} about compost."}) + "\n")
    started = time.monotonic()
    result = run_main_with_memory_budget(
        ["train-lora", "--model-name", tiny_llama, "--train-data", data,
         "--output-dir", tmp_path / "run", "--max-steps", "1", "--batch-size", "2"],
        budget_mb=1000,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 truncated" in result.stdout
    assert time.monotonic() - started < 300


def test_a_cut_record_tokenises_like_the_uncut_one(tiny_tokenizer: Path) -> None:
    """Cutting before tokenising keeps exactly the tokens truncation would keep, also when the
    guess of characters per token is far too low (the cut is then made again, longer)."""
    from transformers import AutoTokenizer

    from shared_utils import training_tokens
    from shared_utils.training_tokens import ExampleTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer)
    text = "The quick brown fox jumps over the lazy dog. " * 200
    rows = {"prompt": ["Q: ", ""], "completion": [text, text], "messages": [[], []]}
    chat = {
        "prompt": [""],
        "completion": [""],
        "messages": [
            [{"role": "user", "content": text}, {"role": "assistant", "content": "Answer."}]
        ],
    }

    def tokenise(batch: dict, guess: int) -> dict:
        original = training_tokens.CHARS_PER_TOKEN_GUESS
        training_tokens.CHARS_PER_TOKEN_GUESS = guess
        try:
            return ExampleTokenizer(tokenizer, max_length=64, train_on_prompt=False)(batch)
        finally:
            training_tokens.CHARS_PER_TOKEN_GUESS = original

    for batch in (rows, chat):
        uncut = tokenise(batch, 10**9)
        assert tokenise(batch, 16) == uncut
        assert tokenise(batch, 1) == uncut  # far too few characters: cut again, longer
    assert all(len(ids) == 64 for ids in tokenise(rows, 16)["input_ids"])


@pytest.mark.parametrize("engine", ["pdfplumber", "pypdfium2"])
def test_a_pdf_that_inflates_to_gigabytes_fails_within_the_worker_memory_limit(
    tmp_path: Path, engine: str
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    inflating_pdf(docs / "bomb.pdf", inflated_mb=300)
    (docs / "fine.md").write_text("# Fine\n\nThis file is read as usual.\n", encoding="utf-8")
    config = write_config(tmp_path, "document_processing:\n  worker_memory_mb: 150\n")
    out = tmp_path / "out"
    started = time.monotonic()
    # A fresh `python main.py`, as the user runs it: a forked worker may use what its parent
    # has mapped and freed, and the test process has freed gigabytes by the time this runs.
    command = [sys.executable, str(ROOT / "main.py"), "--config", str(config), "extract"]
    command += [str(docs), str(out), "--pdf-engine", engine, "--workers", "1", "--no-progress"]
    process = subprocess.run(command, capture_output=True, text=True, timeout=120)
    status, err = process.returncode, process.stderr
    assert time.monotonic() - started < 90
    assert status == 3, err  # some files failed, the rest was written
    files = {f["source"]: f for f in json.loads((out / "extract_report.json").read_text())["files"]}
    assert files["fine.md"]["status"] == "ok"
    assert files["bomb.pdf"]["status"] == "failed"
    assert "more than the 150 MB a worker may take" in files["bomb.pdf"]["reason"]
    assert "document_processing.worker_memory_mb" in files["bomb.pdf"]["reason"]


def test_a_yaml_alias_bomb_config_is_refused_at_once(run_main, tmp_path: Path) -> None:
    levels = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for index in range(1, 9):
        name, previous = chr(ord("a") + index), chr(ord("a") + index - 1)
        levels.append(f"{name}: &{name} [{','.join(['*' + previous] * 9)}]")
    config = tmp_path / "bomb.yaml"
    config.write_text("\n".join(levels) + "\n", encoding="utf-8")
    assert config.stat().st_size < 400  # expanded: 9**9 strings, gigabytes
    started = time.monotonic()
    status, _, err = run_main("--config", config, "create-samples", tmp_path / "samples")
    assert time.monotonic() - started < 5
    assert status == 2
    assert err.startswith(f"error: {config}:2: refused YAML alias (*a)") and err.count("\n") == 1
    assert not (tmp_path / "samples").exists()


def test_a_python_tag_in_a_config_is_a_config_error(run_main, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    config = write_config(tmp_path, f"common: !!python/object/apply:os.system ['touch {marker}']\n")
    status, _, err = run_main("--config", config, "create-samples", tmp_path / "samples")
    assert status == 2 and "refused YAML tag" in err and err.count("\n") == 1
    assert not marker.exists()


def _with_chat_template(model: Path, folder: Path, template: str) -> Path:
    """A copy of `model` whose tokenizer has `template` as its chat template."""
    copy = folder / "model"
    shutil.copytree(model, copy)
    config_file = copy / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["chat_template"] = template
    config_file.write_text(json.dumps(config), encoding="utf-8")
    (copy / "chat_template.jinja").unlink(missing_ok=True)
    return copy


def test_a_chat_template_that_loops_for_ever_is_stopped(
    run_main, tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared_utils import chat_templates

    monkeypatch.setattr(chat_templates, "CHAT_TEMPLATE_SECONDS", 1.0)
    loops = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"
    model = _with_chat_template(tiny_llama, tmp_path, loops)
    started = time.monotonic()
    status, _, err = run_main("chat", "--model", model, "--prompt", "Hello")
    assert time.monotonic() - started < 60  # the model loads, then 1 s of template
    assert status == 2
    assert "ran for more than 1 s" in err and "chat_template" in err and err.count("\n") == 1


def test_a_chat_template_the_sandbox_refuses_is_one_line(
    run_main, tmp_path: Path, tiny_llama: Path
) -> None:
    model = _with_chat_template(tiny_llama, tmp_path, "{{ messages.append(messages[0]) }}")
    status, _, err = run_main("chat", "--model", model, "--prompt", "Hello")
    assert status == 2
    assert "refused by the template sandbox" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("max_steps: 1e23", "too large to be an exact integer"),
        ("max_steps: 2000000000", "must be -1 (all epochs) or from 1 to 1,000,000,000"),
        ("num_epochs: .inf", "it must be a finite number"),
        ("learning_rate: .nan", "it must be a finite number"),
    ],
)
def test_absurd_training_lengths_are_config_errors(
    run_main, tmp_path: Path, tiny_llama: Path, setting: str, message: str
) -> None:
    config = write_config(
        tmp_path,
        f"""
        transfer_learning:
          lora:
            model_name: {tiny_llama}
            training: {{{setting}}}
        """,
    )
    status, _, err = run_main("--config", config, "train-lora", "--output-dir", tmp_path / "run")
    assert status == 2, err
    assert message in err and "transfer_learning.lora.training." in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["train-lora", "--epochs", "inf"],
        ["extract", "docs", "out", "--timeout", "inf"],
        ["extract", "docs", "out", "--max-file-size-mb", "inf"],
    ],
)
def test_infinite_flags_are_refused(
    run_main, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    (tmp_path / "docs").mkdir()
    monkeypatch.chdir(tmp_path)
    status, _, err = run_main(*argv)
    assert status == 2
    assert "it must be a finite number" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_render_chat_template_needs_no_signal_outside_the_main_thread(
    tiny_tokenizer: Path,
) -> None:
    """Signals reach only the main thread: elsewhere templates render without the limit."""
    import threading

    from transformers import AutoTokenizer

    from shared_utils.chat_templates import ensure_chat_template, render_chat_template

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer)
    ensure_chat_template(tokenizer)
    messages = [{"role": "user", "content": "Hi"}]
    results: list[str] = []
    thread = threading.Thread(
        target=lambda: results.append(render_chat_template(tokenizer, messages))
    )
    thread.start()
    thread.join(timeout=30)
    assert results == [render_chat_template(tokenizer, messages)]
    assert results[0].startswith("### Instruction:\nHi")


# --------------------------------------------------------------------------------------------------
# No orphans, no half states
# --------------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting to be reaped has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_workers_die_with_the_parent(tmp_path: Path, signal_name: str) -> None:
    import signal

    code = textwrap.dedent(
        f"""
        import os, sys, time
        sys.path.insert(0, {str(REPO)!r})
        from shared_utils.worker_pool import KillableProcessPool

        def report_and_sleep():
            os.write(1, b"%d\\n" % os.getpid())  # one write: the two workers' lines never mix
            time.sleep(600)

        pool = KillableProcessPool(workers=2, timeout=600)
        for _ in range(2):
            pool.submit(report_and_sleep)
        next(pool.results())
        """
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        # Each busy worker prints its pid (the parent's stdout, inherited).
        workers = [int(parent.stdout.readline()) for _ in range(2)]
        assert len(set(workers)) == 2 and all(_alive(pid) for pid in workers)
        parent.send_signal(getattr(signal, signal_name))
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in workers)
    finally:
        parent.kill()
        parent.wait()


def test_temporary_files_of_a_killed_run_are_removed_by_the_next(
    run_main, samples_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    leftovers = [
        out / ".train.jsonl.k3x9q0ab.tmp",
        out / "chat" / ".train.jsonl.zz81_kq2.tmp",
        out / ".extract_report.json.a1b2c3d4.tmp",
        out / ".extract_cache" / ".manifest.json.qwertyui.tmp",
    ]
    users = [out / ".notes.jsonl.abcdefgh.tmp", out / "train.jsonl.tmp", out / ".train.jsonl.tmp"]
    for path in [*leftovers, *users]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}\n", encoding="utf-8")
    status, _, err = run_main("extract", samples_dir / "documents", out, "--instruction-format")
    assert status == 0, err
    assert [path for path in leftovers if path.exists()] == []
    assert all(path.exists() for path in users)  # not named like ours: the user's
    assert sorted(out.rglob("*.tmp")) == sorted(users)


def test_an_input_deleted_during_the_run_keeps_report_and_manifest(
    run_main, samples_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest records the hash taken when the file was read; the file is not read again."""
    import hashlib

    from document_processing.pipeline import ExtractRun

    docs = samples_dir / "documents"
    victim = sorted(docs.rglob("*.md"))[0]
    digest = hashlib.sha256(victim.read_bytes()).hexdigest()
    finish = ExtractRun._finish_document

    def finish_then_delete(self, doc, seconds):
        if doc.source == victim.relative_to(docs).as_posix():
            victim.unlink()  # read and parsed; the user deletes it while the run goes on
        return finish(self, doc, seconds)

    monkeypatch.setattr(ExtractRun, "_finish_document", finish_then_delete)
    out = tmp_path / "out"
    status, _, err = run_main("extract", docs, out, "--workers", "1")
    assert status == 0, err
    assert not victim.exists()
    report = json.loads((out / "extract_report.json").read_text())
    assert all(f["status"] == "ok" for f in report["files"])
    manifest = json.loads((out / ".extract_cache" / "manifest.json").read_text())
    assert manifest["files"][victim.relative_to(docs).as_posix()]["sha256"] == digest


def _train_with_checkpoints(run_main, tmp_path: Path, tiny_llama: Path, samples_dir: Path, steps):
    """A finished train-lora run of `steps` steps, a checkpoint every 2: (run folder, the argv
    to run it again, its config file)."""
    out = tmp_path / "run"
    argv = ["train-lora", "--model-name", tiny_llama, "--output-dir", out,
            "--train-data", samples_dir / "datasets" / "chat.jsonl"]  # fmt: skip
    config = write_config(
        tmp_path, "transfer_learning: {lora: {training: {save_steps: 2}}}\ncommon: {device: cpu}\n"
    )
    status, _, err = run_main("--config", config, *argv, "--max-steps", str(steps))
    assert status == 0, err
    return out, argv, config


def test_resume_falls_back_to_the_newest_complete_checkpoint(
    run_main, tmp_path: Path, tiny_llama: Path, samples_dir: Path
) -> None:
    out, argv, config = _train_with_checkpoints(run_main, tmp_path, tiny_llama, samples_dir, 4)
    # Killed while checkpoint-4 was saved: the weights half written, no trainer state yet.
    partial = out / "checkpoint-4"
    (partial / "trainer_state.json").unlink()
    weights = partial / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    status, stdout, err = run_main("--config", config, *argv, "--max-steps", "6", "--resume")
    assert status == 0, err
    assert "checkpoint-4 is incomplete" in err and "resuming from checkpoint-2" in err
    assert "6 steps" in stdout
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6


def test_resume_with_no_complete_checkpoint_is_one_line(
    run_main, tmp_path: Path, tiny_llama: Path, samples_dir: Path
) -> None:
    out = tmp_path / "run"
    (out / "checkpoint-2").mkdir(parents=True)
    (out / "checkpoint-2" / "trainer_state.json").write_text('{"global_st', encoding="utf-8")
    status, _, err = run_main(
        "train-lora", "--model-name", tiny_llama, "--output-dir", out, "--resume",
        "--train-data", samples_dir / "datasets" / "chat.jsonl",
    )  # fmt: skip
    assert status == 2
    assert "no complete checkpoint" in err and "checkpoint-2" in err and err.count("\n") == 1


# --------------------------------------------------------------------------------------------------
# One line, never a traceback
# --------------------------------------------------------------------------------------------------


def test_a_file_name_that_is_not_utf8_fails_alone(run_main, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / os.fsdecode(b"caf\xe9.md")).write_text("# Cafe\n\nAbout coffee.\n", encoding="utf-8")
    (docs / "ok.md").write_text("# Fine\n\nThis file is read as usual.\n", encoding="utf-8")
    status, _, err = run_main("extract", docs, tmp_path / "out")
    assert status == 3, err  # that file failed, the other was written
    report = json.loads((tmp_path / "out" / "extract_report.json").read_text(encoding="utf-8"))
    files = {f["source"]: f for f in report["files"]}
    assert files["ok.md"]["status"] == "ok"
    assert files["caf\\xe9.md"]["status"] == "failed"
    assert "not valid UTF-8" in files["caf\\xe9.md"]["reason"]
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "entry",
    [
        "not an object",
        {"sha256": "SAME", "report": "not an object"},
        {"sha256": "SAME", "report": {"source": "guide.md", "unknown_key": 1}},
        {"sha256": "SAME", "report": {"source": "guide.md", "chunks": "many"}},
        {"sha256": "SAME", "report": {"source": "guide.md", "chunks": True}},
        {"sha256": "SAME", "report": {"source": 7}},
    ],
)
def test_a_crafted_manifest_means_files_are_processed_again(
    run_main, tmp_path: Path, entry: object
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "guide.md").write_text("# Guide\n\nThe guide says one thing.\n", encoding="utf-8")
    out = tmp_path / "out"
    assert run_main("extract", docs, out, "--incremental")[0] == 0
    manifest_file = out / ".extract_cache" / "manifest.json"
    manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    digest = manifest["files"]["guide.md"]["sha256"]
    if isinstance(entry, dict):
        entry = {**entry, "sha256": digest}
    manifest["files"]["guide.md"] = entry
    manifest_file.write_text(json.dumps(manifest), encoding="utf-8")
    status, _, err = run_main("extract", docs, out, "--incremental")
    assert status == 0, err
    [report] = json.loads((out / "extract_report.json").read_text(encoding="utf-8"))["files"]
    assert report["status"] == "ok" and report["cached"] is False and report["chunks"] == 1


def test_a_manifest_nested_too_deeply_is_ignored(run_main, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "guide.md").write_text("# Guide\n\nThe guide says one thing.\n", encoding="utf-8")
    out = tmp_path / "out"
    (out / ".extract_cache").mkdir(parents=True)
    (out / ".extract_cache" / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    status, _, err = run_main("extract", docs, out, "--incremental")
    assert status == 0, err
    assert "manifest.json cannot be read" in err


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "caf\u00e9"}\n'.encode("utf-16"), "train.jsonl:1: the file is UTF-16"),
        (b'{"text": "fine"}\n{"text": "caf\xe9"}\n', "train.jsonl:2: not UTF-8 (byte 0xe9"),
        (b"[" * 100_000 + b"]" * 100_000 + b"\n", "train.jsonl:1: JSON nested too deeply"),
    ],
)
def test_unreadable_training_data_is_one_line_naming_the_line(
    run_main, tmp_path: Path, tiny_llama: Path, content: bytes, message: str
) -> None:
    data = tmp_path / "train.jsonl"
    data.write_bytes(content)
    status, _, err = run_main(
        "train-lora", "--model-name", tiny_llama, "--train-data", data,
        "--output-dir", tmp_path / "run",
    )  # fmt: skip
    assert status == 1
    assert message in err and err.count("\n") == 1


def test_a_utf8_bom_is_read(tmp_path: Path) -> None:
    from shared_utils.training_records import iter_normalized_records

    data = tmp_path / "train.jsonl"
    data.write_bytes(b'\xef\xbb\xbf{"text": "caf\xc3\xa9"}\n')
    assert [row["completion"] for row in iter_normalized_records(data)] == ["caf\u00e9"]


def test_a_missing_eval_file_is_named_as_evaluation_data(
    run_main, tmp_path: Path, tiny_llama: Path, samples_dir: Path
) -> None:
    status, _, err = run_main(
        "train-lora", "--model-name", tiny_llama, "--output-dir", tmp_path / "run",
        "--train-data", samples_dir / "datasets" / "chat.jsonl",
        "--eval-data", tmp_path / "absent.jsonl",
    )  # fmt: skip
    assert status == 1
    assert "absent.jsonl: evaluation data not found" in err and "--eval-data" in err
    assert "--train-data" not in err


def test_bytes_that_are_not_utf8_in_a_chat_prompt_or_stdin_are_replaced(
    run_main, tmp_path: Path, tiny_llama: Path
) -> None:
    status, stdout, err = run_main(
        "chat", "--model", tiny_llama, "--prompt", os.fsdecode(b"caf\xe9?"),
        "--max-new-tokens", "4", "--temperature", "0",
    )  # fmt: skip
    assert status == 0, err
    piped = subprocess.run(
        [sys.executable, str(REPO / "main.py"), "chat", "--model", str(tiny_llama),
         "--max-new-tokens", "4", "--temperature", "0"],
        input=b"caf\xe9?\n\xff\xfe\n",
        capture_output=True,
        timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert piped.returncode == 0, piped.stderr.decode(errors="replace")[-2000:]
    assert b"Traceback" not in piped.stderr


@pytest.fixture(scope="module")
def rl_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`best_model.pt` of a 256-step CartPole PPO run."""
    from main import main
    from tests.rl_helpers import write_config as write_rl_config

    folder = tmp_path_factory.mktemp("rl")
    config = write_rl_config(folder)
    argv = ["train-rl", "--algorithm", "ppo", "--config", config, "--output-dir", folder / "run"]
    assert main([*map(str, argv), "--no-progress"]) == 0
    return folder / "run" / "best_model.pt"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda c: c.pop("spaces"), "'spaces' is missing or not a dict"),
        (lambda c: c.update(agent="weights"), "'agent' is missing or not a dict"),
        (lambda c: c["progress"].update(global_step="many"), "'progress.global_step' is missing"),
        (lambda c: c["agent"].pop("policy"), "the network's weights are missing"),
        (lambda c: c["agent_kwargs"].update(hidden_dim=200_000), "'agent_kwargs.hidden_dim' is"),
        (lambda c: c["agent_kwargs"].update(hidden_dim="64"), "'agent_kwargs.hidden_dim' is"),
        (lambda c: c["agent_kwargs"].update(depth=3), "its agent settings do not build an agent"),
    ],
)
def test_a_damaged_rl_checkpoint_is_one_line(
    run_main, rl_model: Path, tmp_path: Path, damage, message: str
) -> None:
    import torch

    checkpoint = torch.load(rl_model, weights_only=True)
    damage(checkpoint)
    damaged = tmp_path / "damaged.pt"
    torch.save(checkpoint, damaged)
    started = time.monotonic()
    status, _, err = run_main("evaluate-rl", "--checkpoint", damaged, "--episodes", "1")
    assert time.monotonic() - started < 30  # nothing as large as hidden_dim says is allocated
    assert status == 2
    assert message in err and str(damaged) in err and err.count("\n") == 1


def test_a_safetensors_file_with_a_bad_header_is_one_line(
    run_main, tmp_path: Path, tiny_llama: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_llama, model)
    weights = model / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:40] = b"{ not json at all, just bytes }!"  # the JSON header after its 8-byte length
    weights.write_bytes(bytes(data))
    status, _, err = run_main("chat", "--model", model, "--prompt", "Hello")
    assert status == 2
    assert "has a damaged .safetensors weights file" in err and str(model) in err
    assert err.count("\n") == 1


class _RunsCode:
    """Unpickling this runs a shell command: what a planted checkpoint file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_refused_pickle_in_a_checkpoint_is_one_line_on_resume(
    run_main, tmp_path: Path, tiny_llama: Path, samples_dir: Path
) -> None:
    import pickle

    out, argv, config = _train_with_checkpoints(run_main, tmp_path, tiny_llama, samples_dir, 2)
    marker = tmp_path / "ran"
    (out / "checkpoint-2" / "optimizer.pt").write_bytes(pickle.dumps(_RunsCode(marker)))
    status, _, err = run_main("--config", config, *argv, "--max-steps", "4", "--resume")
    assert status == 2
    last = err.splitlines()[-1]  # after the model's loading bar
    assert last.startswith("error: --resume:") and "Traceback" not in err
    assert "checkpoint-2 holds a file that torch's safe loader refuses" in last
    assert not marker.exists()


def deep_page_tree_pdf(path: Path, depth: int) -> None:
    """A one-page PDF whose page sits under `depth` nested /Pages nodes (objects 6 ...)."""
    text = b"BT /F1 12 Tf 72 720 Td (Deep page tree) Tj ET"
    contents = b"<< /Length %d >>\nstream\n%s\nendstream" % (len(text), text)
    first, last = 6, 6 + depth - 1
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%d 0 R] /Count 1 >>" % first,
        *page_objects(contents, parent=last),
    ]
    for number in range(first, last + 1):
        kid = number + 1 if number < last else 3
        parent = 2 if number == first else number - 1
        objects.append(b"<< /Type /Pages /Parent %d 0 R /Kids [%d 0 R] /Count 1 >>" % (parent, kid))
    write_pdf(path, objects)


@pytest.mark.parametrize("engine", ["pdfplumber", "pypdfium2"])
def test_a_pdf_no_engine_can_read_is_not_reported_as_needing_ocr(
    run_main, tmp_path: Path, engine: str
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    deep_page_tree_pdf(docs / "deep.pdf", depth=5000)
    deep_page_tree_pdf(docs / "shallow.pdf", depth=3)  # the same page, readable
    status, _, err = run_main("extract", docs, tmp_path / "out", "--pdf-engine", engine)
    assert status == 3, err
    report = json.loads((tmp_path / "out" / "extract_report.json").read_text(encoding="utf-8"))
    files = {f["source"]: f for f in report["files"]}
    assert files["shallow.pdf"]["status"] == "ok"
    reason = files["deep.pdf"]["reason"]
    assert files["deep.pdf"]["status"] == "failed" and "OCR" not in reason
    assert reason.startswith("no text could be extracted: page")
    assert "failed" in reason or "cannot read the file" in reason


@pytest.mark.parametrize("as_safetensors", [False, True])
def test_a_full_disk_during_merge_is_one_line_and_leaves_nothing(
    run_main, tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch, as_safetensors
) -> None:
    import errno

    import transformers.modeling_utils
    from peft import LoraConfig, get_peft_model
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    adapter = tmp_path / "adapter"
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    peft_model.save_pretrained(adapter)

    def disk_full(*args, **kwargs):
        if as_safetensors:  # how safetensors' Rust writer reports it
            raise SafetensorError("I/O error: No space left on device (os error 28)")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", disk_full)
    status, _, err = run_main("merge", "--adapter", adapter, "--output", tmp_path / "merged")
    assert status == 1
    last = err.splitlines()[-1]
    assert last.startswith(f"error: {tmp_path / 'merged'}: the disk filled up")
    assert "free about" in last and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no half-written folder


def test_ctrl_c_while_python_shuts_down_prints_no_traceback() -> None:
    """A Ctrl-C after the command has finished, while finalizers and atexit handlers run (torch's
    took 1 in 34 Ctrl-Cs at the end of an export), ends with the command's status, quietly."""
    script = textwrap.dedent(
        """
        import atexit, runpy, sys, time
        def slow_finalizer():
            print("finalizing", flush=True)
            time.sleep(2)
        atexit.register(slow_finalizer)
        sys.argv = ["main.py", "--help"]
        runpy.run_path("main.py", run_name="__main__")
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:  # the help text, then the finalizer's marker
            if line.strip() == "finalizing":
                break
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, stderr  # --help succeeded; the Ctrl-C came after it
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
