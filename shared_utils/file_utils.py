"""File handling shared by every command: atomic writes, hashing, safe paths.

Nothing the toolkit writes is ever left half-written: `atomic_write` writes to a temporary file in
the destination folder and renames it over the final name only when the block finished without an
exception (a rename within one file system is atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from shared_utils.errors import SecurityError


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file next to `path`; on success it replaces `path`, on error it vanishes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        binary = "b" in mode
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600; give the file the mode a plain open() would have.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_write(path) as handle:
        handle.write(text)


def atomic_write_json(path: str | Path, data: Any) -> None:
    with atomic_write(path) as handle:
        json.dump(data, handle, indent=2, ensure_ascii=False)
        handle.write("\n")


def atomic_write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Stream records to `path` as JSON Lines; returns how many were written."""
    count = 0
    with atomic_write(path) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False))
            handle.write("\n")
            count += 1
    return count


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Read JSON Lines lazily, one record per line."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def is_within(path: Path, root: Path) -> bool:
    """True when `path` (resolved) lies inside `root` (resolved)."""
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True


def validate_input_file(path: Path, root: Path, max_bytes: int | None) -> None:
    """Refuse a file that escapes `root` (symlink or `..`), is not a regular file, or is too large.

    Raises `SecurityError` with a message that names the file and says what to do.
    """
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError) as exc:  # broken link, symlink loop
        raise SecurityError(
            f"{path}: cannot be resolved ({exc}); fix or remove the link."
        ) from None
    if not is_within(resolved, root):
        raise SecurityError(
            f"{path}: resolves to '{resolved}', outside the input folder '{root}'; "
            "copy the file into the input folder instead of linking to it."
        )
    if not resolved.is_file():
        raise SecurityError(f"{path}: not a regular file.")
    if max_bytes is not None:
        size = path.stat().st_size
        if size > max_bytes:
            raise FileTooLargeError(
                f"{path}: {size / 1e6:.1f} MB is over the {max_bytes / 1e6:.0f} MB limit; raise "
                "document_processing.max_file_size_mb to include it."
            )


class FileTooLargeError(SecurityError):
    """A file over the configured size limit: skipped by configuration rather than failed."""
