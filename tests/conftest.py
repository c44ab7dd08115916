"""Shared fixtures: the sample corpus and a helper that runs the launcher in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from document_processing.samples import create_samples
from main import main


@pytest.fixture
def samples_dir(tmp_path: Path) -> Path:
    """A fresh copy of the sample corpus; its documents are under `documents/`."""
    root = tmp_path / "samples"
    create_samples(root)
    return root


@pytest.fixture
def run_main(capsys: pytest.CaptureFixture[str]):
    """Run `main(argv)` and return (exit status, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        status = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run
