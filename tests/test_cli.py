"""The launcher: fast help, one error line, documented exit statuses."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_help_lists_the_commands(run_main) -> None:
    status, out, _ = run_main("--help")
    assert status == 0
    assert "extract" in out and "create-samples" in out


def test_help_imports_no_heavy_library() -> None:
    code = (
        "import sys, main\n"
        "main.build_parser().format_help()\n"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'pdfplumber', 'pypdf') "
        "if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_usage_errors_exit_2(run_main) -> None:
    status, _, err = run_main()
    assert status == 2 and "required" in err
    status, _, err = run_main("extract")
    assert status == 2 and "INPUT_DIR" in err
    status, _, err = run_main("extract", "a", "b", "--chunk-size", "-5")
    assert status == 2 and "positive" in err
    status, _, err = run_main("no-such-command")
    assert status == 2


def test_config_error_is_one_line_without_traceback(run_main, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("document_processing:\n  chunk_sise: 3\n")
    status, _, err = run_main("--config", config, "extract", tmp_path, tmp_path / "out")
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "document_processing.chunk_sise" in err and "Traceback" not in err


def test_global_options_work_after_the_command(run_main, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("common:\n  sed: 1\n")
    status, _, err = run_main("extract", tmp_path, tmp_path / "out", "--config", config)
    assert status == 2 and "Did you mean 'seed'" in err


def test_debug_shows_the_traceback(run_main, tmp_path: Path) -> None:
    status, _, err = run_main("--debug", "extract", tmp_path / "absent", tmp_path / "out")
    assert status == 2
    assert "Traceback" in err and "error: input folder" in err


def test_missing_input_folder_is_a_clear_error(run_main, tmp_path: Path) -> None:
    status, _, err = run_main("extract", tmp_path / "absent", tmp_path / "out")
    assert status == 2
    assert err.strip() == (
        f"error: input folder '{tmp_path / 'absent'}' does not exist or is not a folder; "
        "pass the folder that holds your documents (PDF, Markdown, text, Word, HTML, EPUB)."
    )


def test_ctrl_c_exits_130_without_traceback(
    run_main, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from document_processing import pipeline

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.ExtractRun, "run", interrupted)
    status, _, err = run_main("extract", tmp_path, tmp_path / "out")
    assert status == 130
    assert err.strip() == "interrupted"


def test_a_library_error_is_one_line_naming_command_type_and_module(
    run_main, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from document_processing import pipeline

    def broken(self):
        json.loads('{"a": 1,\n "b"}')  # raises json.decoder.JSONDecodeError inside json.decoder

    monkeypatch.setattr(pipeline.ExtractRun, "run", broken)
    status, _, err = run_main("extract", tmp_path, tmp_path / "out")
    assert status == 1  # EXIT_FAILURE
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(
        "error: extract failed with json.decoder.JSONDecodeError in json.decoder: "
    )
    assert "Expecting ':' delimiter" in err and "rerun with --debug" in err

    status, _, err = run_main("--debug", "extract", tmp_path, tmp_path / "out")
    assert status == 1
    assert "Traceback" in err and "in broken" in err
    assert err.rstrip().splitlines()[-1].startswith("error: extract failed with")


def test_builtin_error_names_the_raising_module_and_system_exit_passes(
    run_main, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from document_processing import pipeline

    def failing(self):
        raise AssertionError("N must be divisible by block_n\nsecond line")

    monkeypatch.setattr(pipeline.ExtractRun, "run", failing)
    status, _, err = run_main("extract", tmp_path, tmp_path / "out")
    assert status == 1
    assert err.strip() == (
        "error: extract failed with AssertionError in tests.test_cli: N must be divisible by "
        "block_n — rerun with --debug for the full traceback"
    )

    def exits(self):
        raise SystemExit(4)

    monkeypatch.setattr(pipeline.ExtractRun, "run", exits)
    with pytest.raises(SystemExit) as exited:  # passes through, as before
        run_main("extract", tmp_path, tmp_path / "out")
    assert exited.value.code == 4


TRAIN_ARGS = ["--train-data", "{tmp}/s/datasets/chat.jsonl", "--max-steps", "2"]


@pytest.mark.parametrize(
    ("script", "args"),
    [
        ("create_samples.py", ["{tmp}/s"]),
        ("extract_documents.py", ["{tmp}/s/documents", "{tmp}/o"]),
        ("train_lora.py", ["--model-name", "{model}", "--output-dir", "{tmp}/o", *TRAIN_ARGS]),
        ("train_qlora.py", ["--model-name", "{model}", "--output-dir", "{tmp}/o", *TRAIN_ARGS]),
    ],
)
def test_scripts_are_thin_wrappers(
    tmp_path: Path, script: str, args: list[str], tiny_llama: Path
) -> None:
    if script != "create_samples.py":
        from document_processing.samples import create_samples

        create_samples(tmp_path / "s")
    argv = [a.format(tmp=tmp_path, model=tiny_llama) for a in args]
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *argv, "--log-level", "WARNING"],
        cwd=tmp_path,  # the shipped config is found from the repo wherever the user stands
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    if script == "create_samples.py":
        assert (tmp_path / "s" / "documents" / "compost_handbook.pdf").exists()
        assert (tmp_path / "data" / "models" / "tiny-llama" / "model.safetensors").exists()
    elif script.startswith("train_"):
        assert (tmp_path / "o" / "adapter_model.safetensors").exists()
        assert "2 steps" in proc.stdout
    else:
        assert (tmp_path / "o" / "train.jsonl").stat().st_size > 0
        assert (tmp_path / "o" / "resolved_config.yaml").exists()


def test_every_command_has_its_script() -> None:
    """scripts/ holds one thin wrapper per command (the README says so): each calls main with it."""
    from main import build_parser

    subparsers = next(
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    wrapped = {
        match.group(1)
        for script in (REPO / "scripts").glob("*.py")
        if (match := re.search(r'main\(\["([a-z-]+)", \*sys\.argv', script.read_text()))
    }
    assert wrapped == set(subparsers.choices)


def _numeric_flags() -> list[tuple[str, str, bool]]:
    """(command, flag, shared) for every option of every command whose argparse type yields a
    number, found by asking each option's converter, so a flag added later is covered without
    listing it. `shared` says whether the converter is one of shared_utils.arg_types."""
    import argparse

    from main import build_parser

    subparsers = next(
        action
        for action in build_parser()._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    flags = []
    for command, parser in subparsers.choices.items():
        for action in parser._actions:
            if not action.option_strings or action.type is None:
                continue
            for probe in ("1", "0.5", "0"):
                try:
                    value = action.type(probe)
                except (argparse.ArgumentTypeError, ValueError, TypeError):
                    continue
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    shared = action.type.__module__ == "shared_utils.arg_types"
                    flags.append((command, action.option_strings[-1], shared))
                    break
    return flags


NUMERIC_FLAGS = _numeric_flags()


def test_numeric_flags_are_found() -> None:
    # The introspection must see flags of every command family, or the test below checks nothing.
    for expected in [
        ("extract", "--chunk-size"),
        ("extract", "--val-ratio"),
        ("extract", "--timeout"),
        ("generate-qa", "--pairs-per-chunk"),
        ("train-lora", "--learning-rate"),
        ("train-qlora", "--batch-size"),
        ("chat", "--max-new-tokens"),
        ("chat", "--temperature"),
        ("evaluate", "--limit"),
        ("train-rl", "--seed"),
        ("evaluate-rl", "--episodes"),
    ]:
        assert expected in [(command, flag) for command, flag, _ in NUMERIC_FLAGS]


def test_every_numeric_flag_uses_the_shared_argument_types() -> None:
    # One module of argument types (shared_utils.arg_types), so every flag words errors alike.
    assert [(command, flag) for command, flag, shared in NUMERIC_FLAGS if not shared] == []


@pytest.mark.parametrize(
    ("command", "flag", "shared"),
    [pytest.param(*case, id=f"{case[0]} {case[1]}") for case in NUMERIC_FLAGS],
)
@pytest.mark.parametrize("bad", ["abc", "1e999x", ""])
def test_every_numeric_flag_refuses_a_non_number_in_one_line(
    run_main, command: str, flag: str, shared: bool, bad: str
) -> None:
    status, out, err = run_main(command, flag, bad)
    assert status == 2 and out == ""
    assert "Traceback" not in err
    # argparse prints the usage, then the one error line naming the command, the flag and the value
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert error_lines == [err.splitlines()[-1]]
    assert error_lines[0].startswith(f"main.py {command}: error: argument {flag}: ")
    assert repr(bad) in error_lines[0]
    if shared:  # one wording: "must be <what>, got '<text>'"
        assert f"argument {flag}: must be " in error_lines[0]
        assert error_lines[0].endswith(f", got {bad!r}")
