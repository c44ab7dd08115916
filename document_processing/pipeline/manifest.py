"""The cache of an `extract` run: one file of records per document, and the manifest that says
which input (by content hash) and which settings made them, and which outputs the run wrote.

`--incremental` reuses the records of a file whose content and settings are unchanged; a later
run deletes only the outputs the manifest lists, and only while they are as that run left them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

from document_processing.pipeline.reports import FileReport
from shared_utils.config import DocumentProcessingConfig
from shared_utils.file_utils import atomic_write_json, sha256_file

logger = logging.getLogger(__name__)

CACHE_DIR = ".extract_cache"
MANIFEST = "manifest.json"
_CACHE_FILE = re.compile(r"[0-9a-f]{24}\.jsonl")  # what `cache_name` makes
# Bump when the cached record format or the processing changes, so old caches are not reused.
PIPELINE_VERSION = 7


def settings_key_of(settings: DocumentProcessingConfig) -> str:
    """Hash of everything that shapes a document's cached records."""
    data = asdict(settings)
    for key in ("workers", "file_timeout", "worker_memory_mb", "val_ratio", "deduplicate"):
        data.pop(key)
    data["pipeline_version"] = PIPELINE_VERSION
    if settings.tokenizer:
        tok = Path(settings.tokenizer)
        files = sorted(tok.glob("*.json")) if tok.is_dir() else []
        data["tokenizer_files"] = [sha256_file(f) for f in files]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def read_manifest(cache_dir: Path) -> dict[str, Any]:
    """What the last run into this folder recorded ({} if nothing readable)."""
    path = cache_dir / MANIFEST
    if path.is_symlink():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:  # the first run into this folder
        return {}
    except (OSError, ValueError, RecursionError):  # a damaged or hand-made manifest
        logger.warning("%s cannot be read: every file is processed again", path)
        return {}
    return data if isinstance(data, dict) else {}


def reusable_entries(previous: dict[str, Any], settings_key: str) -> dict[str, Any]:
    """The manifest's file entries, when the last run had the same settings; else {}."""
    if previous.get("settings") != settings_key:
        if previous:
            logger.info("settings changed since the last run: processing every file again")
        return {}
    files = previous.get("files")
    return files if isinstance(files, dict) else {}


def write_manifest(
    cache_dir: Path,
    output_dir: Path,
    settings_key: str,
    reports: list[FileReport],
    hashes: dict[str, str],
    outputs: list[str],
) -> None:
    """Record the files of this run that succeeded (hash and report) and the outputs it wrote;
    delete the cache files of the documents that are no longer in it."""
    files = {}
    for report in reports:
        if report.status != "ok":
            continue
        digest = hashes[report.source]  # taken when the file was read, never read again
        entry = asdict(report)
        entry.pop("cached")
        files[report.source] = {"sha256": digest, "report": entry}
    # The outputs this run wrote, as it left them: the only files a later run may delete.
    stamps = {}
    for name in outputs:
        info = (output_dir / name).lstat()
        stamps[name] = {"size": info.st_size, "mtime_ns": info.st_mtime_ns}
    atomic_write_json(
        cache_dir / MANIFEST, {"settings": settings_key, "files": files, "outputs": stamps}
    )
    live = {cache_name(source) for source in files}
    for cached in cache_dir.iterdir():
        if _CACHE_FILE.fullmatch(cached.name) and cached.name not in live:
            cached.unlink()  # a symlink is removed, never followed


def cached_report(entry: Any, digest: str | None) -> FileReport | None:
    """The report a manifest entry holds for a file whose content hash is still `digest`, or
    None when the entry is missing, stale or not what extract writes (a hand-edited manifest
    means the file is processed again, never a crash)."""
    if not isinstance(entry, dict) or digest is None or entry.get("sha256") != digest:
        return None
    fields = entry.get("report")
    if not isinstance(fields, dict):
        return None
    try:
        report = FileReport(**fields)
    except TypeError:  # unknown or missing keys
        return None
    blank = FileReport("")
    for name, value in asdict(report).items():
        expected = type(getattr(blank, name))
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            return None
    if report.status != "ok":
        return None
    report.cached = True
    return report


def cache_name(source: str) -> str:
    """The cache file of a document's records, named by a hash of its source path."""
    return hashlib.sha256(source.encode()).hexdigest()[:24] + ".jsonl"
