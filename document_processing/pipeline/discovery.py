"""Discovery: the files of the input folder an `extract` run reads, and those it refuses."""

from __future__ import annotations

import os
from pathlib import Path

from document_processing.parsers import SUPPORTED_SUFFIXES
from document_processing.pipeline.reports import FileReport, strip_path
from shared_utils.errors import SecurityError
from shared_utils.file_utils import FileTooLargeError, is_within, validate_input_file


def discover_files(
    input_dir: Path, output_dir: Path, max_bytes: int | None
) -> tuple[list[tuple[Path, str]], list[FileReport]]:
    """Supported files under `input_dir`, recursively, in sorted order, plus those refused.

    Hidden files and folders are skipped; so is `output_dir` when it lies inside `input_dir`, so a
    run never reads its own outputs. A symlink that resolves outside `input_dir` is refused.
    """
    accepted: list[tuple[Path, str]] = []
    refused: list[FileReport] = []
    root = input_dir.resolve()
    out = output_dir.resolve()
    for dirpath, dirnames, filenames in os.walk(input_dir, followlinks=False):
        current = Path(dirpath)
        keep_dirs = []
        for name in sorted(dirnames):
            sub = current / name
            if name.startswith(".") or sub.resolve() == out:
                continue
            if sub.is_symlink():
                source = sub.relative_to(input_dir).as_posix()
                if not is_within(sub, root):
                    refused.append(
                        FileReport(
                            source,
                            "failed",
                            f"folder symlink resolves to '{sub.resolve()}', outside the input "
                            "folder; copy its files into the input folder instead",
                        )
                    )
                continue  # symlinked folders inside the input would be read twice
            keep_dirs.append(name)
        dirnames[:] = keep_dirs
        for name in sorted(filenames):
            path = current / name
            if name.startswith(".") or path.suffix.lower() not in SUPPORTED_SUFFIXES:
                continue
            source = path.relative_to(input_dir).as_posix()
            if not _is_utf8(source):
                refused.append(
                    FileReport(
                        _printable(source),
                        "failed",
                        "the file name is not valid UTF-8 (records name their source in UTF-8); "
                        "rename the file (e.g. convmv -f latin1 -t utf8 --notest FILE)",
                    )
                )
                continue
            try:
                validate_input_file(path, root, max_bytes)
            except SecurityError as exc:
                status = "skipped" if isinstance(exc, FileTooLargeError) else "failed"
                refused.append(FileReport(source, status, strip_path(str(exc), path)))
                continue
            if not os.access(path, os.R_OK):
                refused.append(
                    FileReport(source, "failed", "permission denied; make it readable (chmod +r)")
                )
                continue
            accepted.append((path, source))
    accepted.sort(key=lambda item: item[1])
    refused.sort(key=lambda item: item.source)
    return accepted, refused


def _is_utf8(name: str) -> bool:
    """False for a name whose bytes are not UTF-8 (Python holds them as lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(name: str) -> str:
    """A file name with its non-UTF-8 bytes written as backslash escapes (`caf\\xe9.md`)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
