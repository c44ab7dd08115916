"""Zip packages (`.docx`, `.epub`): one line for a file that is not a zip, or a damaged one.

A file cut short (an interrupted download or copy) still starts with a zip member header but has
lost the directory at its end, so `zipfile` calls it no zip at all; a damaged byte in a member's
compressed data surfaces only when a library reads that member, as zlib's "Error -3 while
decompressing data", an early end of data or a CRC mismatch. Both are named here for what they
are, with the fix: a fresh copy of the file.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

from document_processing.parsers.sections import one_line
from shared_utils.errors import DocumentProcessingError

_ZIP_HEADER = b"PK\x03\x04"  # what every zip file starts with: its first member's header
# What reading a damaged member raises: zlib's error, an early end of data, a CRC mismatch.
_DAMAGE = (zlib.error, EOFError, zipfile.BadZipFile)
_CHUNK = 1 << 20


def zip_names(path: Path, not_zip: str, fix: str) -> set[str]:
    """The member names of the zip package at `path`; a file that is no zip fails with `not_zip`
    (the reason after the path), a truncated or damaged one with `damaged_zip`."""
    if not zipfile.is_zipfile(path):
        with path.open("rb") as stream:
            if stream.read(len(_ZIP_HEADER)) == _ZIP_HEADER:
                raise damaged_zip(path, fix)
        raise DocumentProcessingError(f"{path}: {not_zip}")
    try:
        with zipfile.ZipFile(path) as archive:
            return set(archive.namelist())
    except (*_DAMAGE, OSError, ValueError) as exc:
        raise damaged_zip(path, fix, exc) from None


def zip_member(path: Path, name: str, fix: str) -> bytes:
    """The bytes of member `name`; a member that fails to decompress fails with `damaged_zip`."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.read(name)
    except _DAMAGE as exc:
        raise damaged_zip(path, fix, exc) from None


def is_zip_damage(exc: BaseException) -> bool:
    """Whether a library's exception comes from a damaged zip member."""
    return any(isinstance(error, _DAMAGE) for error in (exc, exc.__cause__, exc.__context__))


def damaged_zip(path: Path, fix: str, exc: BaseException | None = None) -> DocumentProcessingError:
    """The one-line error of a damaged or truncated zip archive: what is wrong (cut short, or
    which member's data is corrupt: every member is read to find it) and `fix`."""
    if not zipfile.is_zipfile(path):
        detail = "the file was cut short: the zip directory at its end is missing"
    else:
        member = _damaged_member(path)
        if member is not None:
            detail = f"the compressed data of {member} is corrupt"
        else:
            detail = one_line(exc) if exc is not None else "it cannot be read"
    return DocumentProcessingError(f"{path}: a damaged or truncated zip archive ({detail}); {fix}")


def _damaged_member(path: Path) -> str | None:
    """The first member that fails to decompress or to match its checksum; None when none does
    or the archive cannot be opened at all."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                try:
                    with archive.open(info) as member:
                        while member.read(_CHUNK):
                            pass
                except _DAMAGE:
                    return info.filename
                except (NotImplementedError, RuntimeError):  # a compression or cipher zipfile
                    continue  # cannot read is not damage
    except (*_DAMAGE, OSError, ValueError):
        return None
    return None
