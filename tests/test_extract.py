"""`extract` through the launcher: outputs, report, splits, incremental runs and every bad input."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from shared_utils.file_utils import iter_jsonl


def _records(path: Path) -> list[dict]:
    return list(iter_jsonl(path))


def _report(out: Path) -> dict:
    return json.loads((out / "extract_report.json").read_text(encoding="utf-8"))


def _by_source(out: Path) -> dict[str, dict]:
    return {f["source"]: f for f in _report(out)["files"]}


def _all_chunks(out: Path) -> list[dict]:
    records = _records(out / "train.jsonl")
    if (out / "valid.jsonl").exists():
        records += _records(out / "valid.jsonl")
    return records


# --------------------------------------------------------------------------------------------------
# The sample corpus end to end
# --------------------------------------------------------------------------------------------------


def test_samples_end_to_end_load_with_datasets(run_main, samples_dir: Path, tmp_path: Path) -> None:
    from datasets import load_dataset

    out = tmp_path / "out"
    status, stdout, err = run_main(
        "extract", samples_dir / "documents", out, "--val-ratio", "0.34", "--instruction-format"
    )
    assert status == 0, err
    assert "3 of 3 files ok" in stdout
    for name in ("train", "valid"):
        for folder in ("", "alpaca/", "chat/"):
            path = out / f"{folder}{name}.jsonl"
            dataset = load_dataset("json", data_files=str(path), split="train")
            assert len(dataset) > 0, path
    plain = load_dataset("json", data_files=str(out / "train.jsonl"), split="train")
    assert {"text", "source", "title", "type", "chunk_id", "metadata"} <= set(plain.column_names)
    # Both splits together, whichever comes first: column types never depend on which file leads.
    for order in (("train", "valid"), ("valid", "train")):
        both = load_dataset("json", data_files={o: str(out / f"{o}.jsonl") for o in order})
        assert len(both["train"]) + len(both["valid"]) == _report(out)["totals"]["chunks"]
    chat = load_dataset("json", data_files=str(out / "chat" / "train.jsonl"), split="train")
    assert chat[0]["messages"][0]["role"] == "user"
    assert (out / "resolved_config.yaml").read_text().startswith("common:")


def test_sample_pdf_is_cleaned(run_main, samples_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    status, _, err = run_main("extract", samples_dir / "documents", out, "--chunk-size", "400")
    assert status == 0, err
    pdf = [r for r in _all_chunks(out) if r["type"] == "pdf"]
    text = "\n".join(r["text"] for r in pdf)
    assert "Page 1 of 4" not in text and "Page 3 of 4" not in text  # running footer
    assert "Community Compost Handbook" not in text  # running header
    assert "material that feeds the soil" in text  # "mat-\nerial" rejoined
    assert "mat- erial" not in text and "mat-erial" not in text
    assert {(r["metadata"]["page_start"], r["metadata"]["page_end"]) for r in pdf} == {
        (1, 1),
        (2, 2),
        (3, 3),
        (4, 4),
    }
    first = pdf[0]
    assert first["title"] == "Community Compost Handbook"
    assert first["metadata"]["author"] == "Riverside Garden Cooperative"
    assert first["metadata"]["page_count"] == 4
    assert first["metadata"]["engine"] == "pdfplumber"
    entry = _by_source(out)["compost_handbook.pdf"]
    assert entry["pages"] == 4 and entry["engines"] == dict.fromkeys("1234", "pdfplumber")
    assert all(len(r["text"]) <= 400 for r in _all_chunks(out))


def test_sample_markdown_and_text(run_main, samples_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_main("extract", samples_dir / "documents", out)[0] == 0
    md = [r for r in _all_chunks(out) if r["type"] == "markdown"]
    assert md[0]["title"] == "Worm Bin Guide"
    paths = {tuple(r["metadata"]["section_path"]) for r in md}
    assert ("Worm Bin Guide", "Setting Up", "Choosing a Bin") in paths
    code = [r["text"] for r in md if "def check_reading" in r["text"]]
    assert len(code) >= 1 and 'problems.append("moisture outside 60-80 %")' in code[0]
    assert all("<span" not in r["text"] for r in md)
    assert any("Vegetable peelings | yes | chop them small" in r["text"] for r in md)
    txt = [r for r in _all_chunks(out) if r["type"] == "text"]
    assert "compost café" in txt[0]["text"] and "“lasagne”" in "".join(r["text"] for r in txt)
    assert txt[0]["metadata"]["encoding"] == "cp1252"


def test_validation_split_is_by_document(run_main, samples_dir: Path, tmp_path: Path) -> None:
    docs = samples_dir / "documents"
    for i in range(6):
        (docs / f"extra_{i}.txt").write_text(f"Document {i} is about topic {i}. " * 40)
    out = tmp_path / "out"
    assert run_main("extract", docs, out, "--val-ratio", "0.3")[0] == 0
    train = {r["source"] for r in _records(out / "train.jsonl")}
    valid = {r["source"] for r in _records(out / "valid.jsonl")}
    assert train and valid and not train & valid
    assert len(valid) == 3  # round(0.3 * 9)
    splits = {s: f["split"] for s, f in _by_source(out).items()}
    assert {s for s, split in splits.items() if split == "valid"} == valid
    out2 = tmp_path / "out2"
    assert run_main("extract", docs, out2, "--val-ratio", "0.3", "--workers", "1")[0] == 0
    assert (out / "valid.jsonl").read_bytes() == (out2 / "valid.jsonl").read_bytes()


def test_exact_duplicate_chunks_are_dropped_and_counted(run_main, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    body = "Compost needs air, water, browns and greens in balance. " * 5
    (docs / "a.txt").write_text(body)
    (docs / "b.txt").write_text(body)
    out = tmp_path / "out"
    assert run_main("extract", docs, out)[0] == 0
    report = _report(out)
    assert report["totals"]["duplicates_dropped"] == report["totals"]["chunks"] // 2 > 0
    texts = [r["text"] for r in _records(out / "train.jsonl")]
    assert len(texts) == len(set(texts))


def test_chunks_are_numbered_again_after_duplicates_are_dropped(run_main, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    # Two sentences fill a 100-character chunk; b.txt repeats both chunks of a.txt.
    shared = [
        "Dry leaves give the heap its carbon supply. Straw keeps the whole heap open to the air.",
        "Grass clippings bring nitrogen to microbes. Peelings feed the worms that come in later.",
    ]
    own = [
        "A sour smell means the heap lacks fresh air. Turn it over and add more dry matter.",
        "Worms arrive once the heap has cooled down. They leave castings rich in nutrients.",
        "Finished compost is dark, crumbly and sweet. It smells like the forest after rain.",
    ]
    (docs / "a.txt").write_text(" ".join(shared))
    (docs / "b.txt").write_text(" ".join([own[0], shared[0], own[1], shared[1], own[2]]))
    out = tmp_path / "out"
    args = ["--chunk-size", "100", "--overlap", "0", "--instruction-format"]
    args += ["--record-kinds", "section,continuation,topic,question"]  # every chunk gets records
    assert run_main("extract", docs, out, *args)[0] == 0
    assert _report(out)["totals"]["duplicates_dropped"] == 2
    chunks = _records(out / "train.jsonl")
    assert [r["text"] for r in chunks if r["source"] == "b.txt"] == own
    for source in ("a.txt", "b.txt"):
        mine = [r for r in chunks if r["source"] == source]
        assert [(r["chunk_id"], r["metadata"]["chunk_index"]) for r in mine] == [
            (f"{source}#{index}", index) for index in range(len(mine))
        ]
        assert {r["metadata"]["total_chunks"] for r in mine} == {len(mine)}
    # Instruction records follow their chunk's new id; those of dropped chunks are gone.
    text_of = {r["chunk_id"]: r["text"] for r in chunks}
    alpaca = _records(out / "alpaca" / "train.jsonl")
    assert {r["chunk_id"] for r in alpaca} == set(text_of)
    for record in alpaca:
        text = text_of[record["chunk_id"]]
        if record["kind"] == "continuation":
            assert text.startswith(record["input"]) and text.endswith(record["output"])
        elif record["kind"] == "topic":  # one sentence, or an overview starting with one
            assert record["output"].split(". ")[0].rstrip(".") in text
    chat = _records(out / "chat" / "train.jsonl")
    assert [r["chunk_id"] for r in chat] == [r["chunk_id"] for r in alpaca]


def test_text_format_writes_one_file_per_document(
    run_main, samples_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert run_main("extract", samples_dir / "documents", out, "--format", "text")[0] == 0
    assert (out / "compost_handbook.pdf.txt").read_text().count("Page 2 of 4") == 0
    assert "Worm composting" in (out / "guides" / "worm_bin.md.txt").read_text()
    assert "café" in (out / "workshop_notes.txt").read_text(encoding="utf-8")
    assert not (out / "train.jsonl").exists()


def test_engines_can_be_chosen(run_main, samples_dir: Path, tmp_path: Path) -> None:
    for engine in ("pypdf", "pypdfium2"):
        out = tmp_path / engine
        assert run_main("extract", samples_dir / "documents", out, "--pdf-engine", engine)[0] == 0
        pdf = [r for r in _all_chunks(out) if r["type"] == "pdf"]
        assert pdf[0]["metadata"]["engine"] == engine
        assert "material that feeds the soil" in " ".join(r["text"] for r in pdf)


# --------------------------------------------------------------------------------------------------
# Incremental runs
# --------------------------------------------------------------------------------------------------


def _outputs(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*.jsonl"))
        if ".extract_cache" not in p.parts
    }


def test_incremental_run_skips_unchanged_files_with_identical_output(
    run_main, samples_dir: Path, tmp_path: Path
) -> None:
    docs = samples_dir / "documents"
    args = ["--val-ratio", "0.34", "--instruction-format"]
    out = tmp_path / "out"
    assert run_main("extract", docs, out, *args, "--incremental")[0] == 0
    first = _outputs(out)
    assert run_main("extract", docs, out, *args, "--incremental")[0] == 0
    assert _outputs(out) == first
    assert _report(out)["totals"]["reused_from_cache"] == 3

    (docs / "workshop_notes.txt").write_text("A changed note about leaf mould and worms. " * 10)
    assert run_main("extract", docs, out, *args, "--incremental")[0] == 0
    cached = {s: f["cached"] for s, f in _by_source(out).items()}
    assert cached == {
        "compost_handbook.pdf": True,
        "guides/worm_bin.md": True,
        "workshop_notes.txt": False,
    }
    full = tmp_path / "full"
    assert run_main("extract", docs, full, *args)[0] == 0
    assert _outputs(out) == _outputs(full)


# --------------------------------------------------------------------------------------------------
# Bad input: a clear per-file error, every other file's output complete
# --------------------------------------------------------------------------------------------------


def _bad_corpus(root: Path, samples_dir: Path) -> Path:
    docs = root / "docs"
    shutil.copytree(samples_dir / "documents", docs)
    (docs / "corrupt.pdf").write_bytes(b"%PDF-1.4\n this is not really a pdf \x00\x01\x02")
    (docs / "empty.txt").write_bytes(b"")
    (docs / "binary.md").write_bytes(bytes(range(256)) * 8)
    (docs / "latin.txt").write_bytes(b"Caf\xe9 \xff\xfe invalid \xc3\x28 bytes in a sentence. " * 3)
    (docs / "evil.md").write_text(
        "---\ntitle: x\nrun: !!python/object/apply:os.system ['touch PWNED']\n---\n# Hi\nBody.\n"
    )
    outside = root / "outside_secret.txt"
    outside.write_text("This text lies outside the input folder and must not be read.")
    os.symlink(outside, docs / "escape.txt")
    _encrypted_pdf(docs / "locked.pdf")
    return docs


def _encrypted_pdf(path: Path) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_encryption(owner_password="owner", user_password="secret")
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    pdf.cell(0, 10, "Locked text.")
    pdf.output(str(path))


def test_bad_inputs_fail_one_by_one_and_the_rest_is_written(
    run_main, samples_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    docs = _bad_corpus(tmp_path, samples_dir)
    out = tmp_path / "out"
    status, stdout, err = run_main("extract", docs, out, "--workers", "2")
    assert status == 3, err  # some failed, the rest written
    files = _by_source(out)
    failed = {s: f["reason"] for s, f in files.items() if f["status"] == "failed"}
    assert set(failed) == {
        "binary.md",
        "corrupt.pdf",
        "empty.txt",
        "escape.txt",
        "evil.md",
        "locked.pdf",
    }
    assert "password" in failed["locked.pdf"]
    assert "outside the input folder" in failed["escape.txt"]
    assert "!!python/object" in failed["evil.md"]
    assert "empty" in failed["empty.txt"]
    assert "binary" in failed["binary.md"]
    assert not (tmp_path / "PWNED").exists() and not (docs / "PWNED").exists()
    for source, reason in failed.items():
        assert f"failed: {source}: {reason}" in err
        assert "\n" not in reason
    # The good files are complete: same chunks as a run on the good files alone.
    assert files["latin.txt"]["status"] == "ok"
    good = tmp_path / "good_out"
    assert run_main("extract", samples_dir / "documents", good)[0] == 0
    good_texts = [r["text"] for r in _records(good / "train.jsonl")]
    mixed_texts = [r["text"] for r in _all_chunks(out) if r["source"] != "latin.txt"]
    assert sorted(mixed_texts) == sorted(good_texts)
    assert "outside the input folder" not in (out / "train.jsonl").read_text()
    assert "must not be read" not in (out / "train.jsonl").read_text()


def test_encrypted_pdf_opens_with_configured_password(run_main, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    _encrypted_pdf(docs / "locked.pdf")
    config = tmp_path / "c.yaml"
    config.write_text("document_processing:\n  pdf:\n    password: secret\n")
    out = tmp_path / "out"
    status, _, err = run_main("--config", config, "extract", docs, out)
    assert status == 0, err
    assert "Locked text." in _records(out / "train.jsonl")[0]["text"]


def _slow_parse(path, source, settings):
    if "hang" in path.name:
        time.sleep(120)
    from document_processing.parsers import parser_for
    from shared_utils.file_utils import sha256_file

    return parser_for(path).parse(path, source, settings), sha256_file(path)


def test_a_hanging_file_is_killed_and_reported(
    run_main, samples_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from document_processing.pipeline import run

    docs = samples_dir / "documents"
    (docs / "hang.md").write_text("# Never finishes\n\nThe parser loops forever on this one.\n")
    monkeypatch.setattr(run, "_parse_whole", _slow_parse)
    out = tmp_path / "out"
    started = time.monotonic()
    status, _, err = run_main("extract", docs, out, "--timeout", "2", "--workers", "2")
    assert time.monotonic() - started < 60
    assert status == 3
    files = _by_source(out)
    assert files["hang.md"]["status"] == "failed"
    assert "timed out after 2 s" in files["hang.md"]["reason"]
    assert sum(f["status"] == "ok" for f in files.values()) == 3


def _range_hangs_from_page_3(path, first, last, settings):
    if path.name == "book.pdf" and first == 3:
        time.sleep(120)
    from document_processing.parsers.pdf import extract_pages

    return extract_pages(path, first, last, settings)


def test_a_hanging_page_range_fails_its_pdf_and_the_rest_is_written(
    run_main, samples_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fpdf import FPDF

    from document_processing.pipeline import pdf_ranges

    docs = samples_dir / "documents"
    book = FPDF()
    book.set_font("helvetica", size=12)
    for number in range(1, 7):
        book.add_page()
        book.multi_cell(0, 8, f"Chapter {number} of the book tells about soil layer {number}.")
    book.output(str(docs / "book.pdf"))
    config = tmp_path / "c.yaml"
    config.write_text("document_processing:\n  pdf:\n    pages_per_task: 2\n")
    # Pages 1-2 run with the probe; pages 3-4 hang in their worker; pages 5-6 finish.
    monkeypatch.setattr(pdf_ranges, "_pdf_range", _range_hangs_from_page_3)
    out = tmp_path / "out"
    started = time.monotonic()
    status, _, err = run_main(
        "--config", config, "extract", docs, out, "--timeout", "2", "--workers", "2"
    )
    assert time.monotonic() - started < 60
    assert status == 3
    files = _by_source(out)
    assert files["book.pdf"]["status"] == "failed"
    assert files["book.pdf"]["reason"].startswith("pages 3-4: timed out after 2 s; the parser hung")
    assert "failed: book.pdf: pages 3-4: timed out" in err
    assert {s for s, f in files.items() if f["status"] == "ok"} == {
        "compost_handbook.pdf",
        "guides/worm_bin.md",
        "workshop_notes.txt",
    }
    # Nothing of the failed book is written; every other file is, in full.
    assert "book.pdf" not in {r["source"] for r in _all_chunks(out)}
    alone = tmp_path / "alone"
    (docs / "book.pdf").unlink()
    assert run_main("extract", docs, alone)[0] == 0
    assert (out / "train.jsonl").read_bytes() == (alone / "train.jsonl").read_bytes()


def test_unreadable_file_is_reported(
    run_main, samples_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = samples_dir / "documents"
    secret = docs / "secret.txt"
    secret.write_text("Nobody may read this.")
    secret.chmod(0)
    if os.access(secret, os.R_OK):  # running as root: permissions do not stop root, so deny here
        from document_processing.pipeline import discovery

        real_access = os.access
        monkeypatch.setattr(
            discovery.os,
            "access",
            lambda p, mode: False if Path(p).name == "secret.txt" else real_access(p, mode),
        )
    out = tmp_path / "out"
    status, _, err = run_main("extract", docs, out)
    secret.chmod(0o644)
    assert status == 3
    assert _by_source(out)["secret.txt"]["reason"] == (
        "permission denied; make it readable (chmod +r)"
    )
    assert "failed: secret.txt: permission denied" in err


def test_output_dir_inside_input_dir_is_left_out(run_main, samples_dir: Path) -> None:
    docs = samples_dir / "documents"
    out = docs / "processed"
    status, _, err = run_main("extract", docs, out, "--format", "text")
    assert status == 0
    assert "inside the input folder: it is left out of the scan" in err
    # The second run must not read the first run's .txt outputs as new documents.
    assert run_main("extract", docs, out, "--format", "text")[0] == 0
    assert _report(out)["totals"]["files"] == 3


def test_output_dir_equal_to_input_dir_is_refused(run_main, samples_dir: Path) -> None:
    docs = samples_dir / "documents"
    status, _, err = run_main("extract", docs, docs)
    assert status == 2 and "is the input folder" in err


def test_nothing_processed_exits_1(run_main, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "empty.md").write_bytes(b"")
    status, _, err = run_main("extract", docs, tmp_path / "out")
    assert status == 1
    assert "no file under" in err


def test_oversized_and_hidden_files_are_skipped(
    run_main, samples_dir: Path, tmp_path: Path
) -> None:
    docs = samples_dir / "documents"
    (docs / "big.txt").write_text("word " * 300_000)
    (docs / ".hidden.md").write_text("# Hidden\n\nNot for training.\n")
    out = tmp_path / "out"
    status, _, _ = run_main("extract", docs, out, "--max-file-size-mb", "1")
    assert status == 0
    files = _by_source(out)
    assert (
        files["big.txt"]["status"] == "skipped" and "max_file_size_mb" in files["big.txt"]["reason"]
    )
    assert ".hidden.md" not in files


def test_interrupted_run_leaves_earlier_outputs_intact(
    run_main, samples_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from document_processing import pipeline

    docs = samples_dir / "documents"
    out = tmp_path / "out"
    assert run_main("extract", docs, out)[0] == 0
    before = _outputs(out)
    monkeypatch.setattr(pipeline.ExtractRun, "_finish_document", _interrupt)
    status, _, err = run_main("extract", docs, out, "--chunk-size", "100")
    assert status == 130
    assert _outputs(out) == before
    assert not list(out.rglob("*.tmp"))


def _interrupt(self, doc, seconds):
    raise KeyboardInterrupt


def test_token_chunking_through_the_command(
    run_main, samples_dir: Path, tmp_path: Path, tiny_tokenizer: Path
) -> None:
    from transformers import AutoTokenizer

    out = tmp_path / "out"
    status, _, err = run_main(
        "extract",
        samples_dir / "documents",
        out,
        "--tokenizer",
        tiny_tokenizer,
        "--chunk-size",
        "48",
        "--overlap",
        "8",
    )
    assert status == 0, err
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_tokenizer), local_files_only=True)
    counts = [
        len(tokenizer(r["text"], add_special_tokens=False)["input_ids"]) for r in _all_chunks(out)
    ]
    assert max(counts) <= 48
    assert max(counts) > 30  # the limit is in tokens, not characters
    assert f"tokenizer: {tiny_tokenizer}" in (out / "resolved_config.yaml").read_text()


def test_one_document_with_a_validation_ratio_writes_no_empty_split(
    run_main, tmp_path: Path
) -> None:
    from datasets import load_dataset

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "only.txt").write_text("The only document here. It has two sentences. " * 20)
    out = tmp_path / "out"
    assert run_main("extract", docs, out, "--val-ratio", "0.2", "--instruction-format")[0] == 0
    assert not (out / "valid.jsonl").exists() and not (out / "chat" / "valid.jsonl").exists()
    for path in (out / "train.jsonl", out / "alpaca" / "train.jsonl", out / "chat" / "train.jsonl"):
        assert len(load_dataset("json", data_files=str(path), split="train")) > 0
    assert (out / "train.jsonl").stat().st_mode & 0o044  # readable like any file the user writes


@pytest.mark.parametrize(
    ("yaml_text", "key"),
    [
        ("document_processing:\n  val_ratio: 5\n", "document_processing.val_ratio"),
        ("document_processing:\n  file_timeout: 0\n", "document_processing.file_timeout"),
        ("document_processing:\n  pdf:\n    pages_per_task: 0\n", "pages_per_task"),
        ("document_processing:\n  overlap_size: 600\n", "document_processing.overlap_size"),
    ],
)
def test_out_of_range_settings_are_config_errors(
    run_main, samples_dir: Path, tmp_path: Path, yaml_text: str, key: str
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml_text)
    status, _, err = run_main(
        "--config", config, "extract", samples_dir / "documents", tmp_path / "o"
    )
    assert status == 2
    assert key in err and err.count("\n") == 1


def test_symlink_loop_is_a_per_file_error(run_main, samples_dir: Path, tmp_path: Path) -> None:
    docs = samples_dir / "documents"
    os.symlink(docs / "loop_b.txt", docs / "loop_a.txt")
    os.symlink(docs / "loop_a.txt", docs / "loop_b.txt")
    out = tmp_path / "out"
    status, _, err = run_main("extract", docs, out)
    assert status == 3
    assert "cannot be resolved" in _by_source(out)["loop_a.txt"]["reason"]
    assert "Traceback" not in err


def test_output_dir_under_a_file_is_one_line(run_main, samples_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    status, _, err = run_main("extract", samples_dir / "documents", blocker / "out")
    assert status in (1, 2) and err.count("\n") == 1 and err.startswith("error: ")


def test_markup_in_metadata_is_removed(run_main, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text(
        '---\ntitle: "<b>Bold</b> <script>alert(1)</script>title"\n---\n\nBody text here.\n'
    )
    out = tmp_path / "out"
    assert run_main("extract", docs, out)[0] == 0
    assert _records(out / "train.jsonl")[0]["title"] == "Bold title"


def test_pdf_split_into_page_ranges_gives_the_same_output(
    run_main, samples_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("document_processing:\n  pdf:\n    pages_per_task: 1\n")
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert run_main("extract", samples_dir / "documents", whole)[0] == 0
    assert run_main("--config", config, "extract", samples_dir / "documents", split)[0] == 0
    assert _outputs(whole) == _outputs(split)


def test_instruction_records_are_counted_and_their_absence_is_reported(
    run_main, tmp_path: Path
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "note.txt").write_text("this is a plain note.\n\nthere are no names here at all.\n")
    code, out, err = run_main("extract", docs, tmp_path / "out", "--instruction-format")
    # The chunk is written; no question can be asked of it, and the user is told what to do.
    assert code == 0 and (tmp_path / "out" / "train.jsonl").is_file()
    assert not (tmp_path / "out" / "chat" / "train.jsonl").exists()
    (warning,) = [line for line in err.splitlines() if line.startswith("warning: no instruction")]
    assert "--record-kinds" in warning and str(tmp_path / "out" / "train.jsonl") in warning

    (docs / "ferry.txt").write_text(
        "The Wenna Lorne was built in 1978. The Wenna Lorne sails at 8:15 from Calder Quay.\n"
    )
    code, out, err = run_main("extract", docs, tmp_path / "out2", "--instruction-format")
    written = sum(1 for _ in (tmp_path / "out2" / "chat" / "train.jsonl").open())
    assert code == 0 and "warning: no instruction" not in err
    assert f"extract: {written} instruction records in" in out
