"""File handling shared by every command: atomic writes, hashing, safe paths.

Nothing the toolkit writes is ever left half-written: `atomic_write` writes to a temporary file in
the destination folder and renames it over the final name only when the block finished without an
exception (a rename within one file system is atomic on POSIX and Windows).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import stat
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

from shared_utils.errors import LLMToolkitError, SecurityError


class AtomicFile:
    """A temporary file next to `path`: `commit()` renames it over `path`, `discard()` removes it.

    For several files that succeed or fail together, or a file that is kept only when something
    was written to it; `atomic_write` is the one-file form.
    """

    def __init__(self, path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
        )
        self.tmp = Path(tmp_name)
        try:
            self.handle: IO = os.fdopen(fd, mode, encoding=None if "b" in mode else encoding)
        except BaseException:
            os.close(fd)
            self.tmp.unlink()
            raise

    def commit(self) -> None:
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            # mkstemp creates 0600; give the file the mode a plain open() would have.
            os.chmod(self.tmp, 0o666 & ~current_umask())
            os.replace(self.tmp, self.path)
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.handle.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file next to `path`; on success it replaces `path`, on error it vanishes."""
    target = AtomicFile(path, mode, encoding)
    try:
        yield target.handle
    except BaseException:
        target.discard()
        raise
    target.commit()


# What `AtomicFile` names its temporary file for NAME: `.NAME.` + mkstemp's 8 random characters.
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp")


def remove_leftover_temp_files(root: Path, names: Iterable[str]) -> int:
    """Delete the temporary files a killed process left for the given outputs; returns how many.

    `names` are paths relative to `root` of files written with `AtomicFile`; only regular files
    named as its temporary files of those names are removed, and no symlink is followed. Call it
    while holding the folder's lock, so no running writer's file is taken.
    """
    by_folder: dict[PurePosixPath, set[str]] = {}
    for name in names:
        relative = PurePosixPath(name)
        if not relative.is_absolute() and ".." not in relative.parts:
            by_folder.setdefault(relative.parent, set()).add(relative.name)
    removed = 0
    for folder, finals in by_folder.items():
        path = _subfolder_without_links(root, folder)
        if path is None:
            continue
        for entry in os.scandir(path):
            match = _TEMP_NAME.fullmatch(entry.name)
            if match and match["name"] in finals and entry.is_file(follow_symlinks=False):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


def _subfolder_without_links(root: Path, relative: PurePosixPath) -> Path | None:
    """`root/relative` when it is a folder reached through no symlink below `root`, else None."""
    path = root
    for part in relative.parts:
        path = path / part
        if path.is_symlink():
            return None
    return path if path.is_dir() else None


def current_umask() -> int:
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


# --------------------------------------------------------------------------------------------------
# Folder locks: one run at a time per output folder
# --------------------------------------------------------------------------------------------------


class FolderInUseError(LLMToolkitError):
    """Another process holds the lock of a folder this run would write to."""


_HELD_LOCKS: set[int] = set()  # descriptors of the locks this process holds


def _close_locks_in_child() -> None:
    # A forked worker shares the parent's lock; if the parent died, an orphaned worker would keep
    # holding it. Closing the child's copies leaves the parent's lock in place (flock is released
    # only when the last descriptor of the open file closes).
    for fd in list(_HELD_LOCKS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_locks_in_child)


@contextlib.contextmanager
def folder_lock(folder: Path, name: str, what: str) -> Iterator[None]:
    """Hold an exclusive advisory lock (`fcntl.flock`) on `folder/name` for the block.

    The operating system releases the lock when the process ends in any way, so a lock file left
    behind never blocks a later run; the file is not deleted (deleting it would let two runs lock
    two different files). The holder writes its PID and command line into the file, so a refused
    run can say who holds the folder. `what` names the holder in the error ("extract run").
    Where `fcntl` does not exist (Windows) the block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = folder / name
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink: never write through it
            raise SecurityError(
                f"{path} is a symbolic link; remove it (rm '{path}') and run again."
            ) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SecurityError(f"{path} is not a regular file; remove it and run again.")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise FolderInUseError(
                f"'{folder}' is in use by another {what} ({_lock_holder(fd)}); wait for it to "
                "finish or choose another folder."
            ) from None
        holder = {
            "pid": os.getpid(),
            "command": " ".join([os.path.basename(sys.executable), *sys.argv])[:300],
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        _HELD_LOCKS.add(fd)
        try:
            yield
        finally:
            _HELD_LOCKS.discard(fd)
    finally:
        os.close(fd)  # releases the lock


def _lock_holder(fd: int) -> str:
    """'PID 123: python main.py extract ..., since ...' from a lock file, as far as it is known."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        command = " ".join(str(holder["command"]).split())
        return f"PID {int(holder['pid'])}: {command}, since {holder['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "PID unknown: it has just started"
