"""Output assembly: the files of OUTPUT_DIR, written from the cached records of each document in
sorted source order, so the result does not depend on worker timing.

Documents go whole to train or valid (by a hash of their path); exact duplicate chunks are
dropped; every output is written to a temporary file that is renamed only on success; outputs of
an earlier run that this run did not write again are removed, when they are as that run left them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import stat
from pathlib import Path, PurePosixPath
from typing import Any

from document_processing.pipeline.manifest import cache_name
from document_processing.pipeline.reports import FileReport
from shared_utils.config import DocumentProcessingConfig
from shared_utils.file_utils import AtomicFile, atomic_write_text, iter_jsonl

logger = logging.getLogger(__name__)

_OUTPUT_SUFFIXES = (".jsonl", ".txt")  # the only kinds of file an earlier run's outputs can be
# The files a jsonl run may write besides the report: train/valid at the top, in alpaca/, chat/.
SPLIT_FILES = [
    f"{d}{split}.jsonl" for d in ("", "alpaca/", "chat/") for split in ("train", "valid")
]


class Outputs:
    """The output files of a run in OUTPUT_DIR, assembled from its cache folder's records."""

    def __init__(
        self, output_dir: Path, cache_dir: Path, settings: DocumentProcessingConfig
    ) -> None:
        self.output_dir = output_dir
        self.cache_dir = cache_dir
        self.settings = settings

    def assemble(self, reports: list[FileReport]) -> tuple[list[str], dict[str, Any]]:
        """Write the outputs of the documents that succeeded; (outputs written, the totals)."""
        ok = [r for r in reports if r.status == "ok"]
        valid_sources = _validation_sources([r.source for r in ok], self.settings.val_ratio)
        for report in ok:
            report.split = "valid" if report.source in valid_sources else "train"
        if self.settings.output_format == "text":
            outputs = self._write_texts(ok)
            duplicates = 0
            counts: dict[str, int] = {}
        else:
            outputs, counts, duplicates = self._write_jsonl(ok, valid_sources)
        totals = {
            "files": len(reports),
            "ok": len(ok),
            "failed": sum(r.status == "failed" for r in reports),
            "skipped": sum(r.status == "skipped" for r in reports),
            "reused_from_cache": sum(r.cached for r in ok),
            "pages": sum(r.pages for r in ok),
            "pages_needing_ocr": sum(len(r.pages_needing_ocr) for r in ok),
            "pages_read_by_ocr": sum(len(r.ocr) for r in ok),
            "chunks": sum(r.chunks for r in ok),
            "duplicates_dropped": duplicates,
            "characters": sum(r.characters for r in ok),
            "records": counts,
        }
        return outputs, totals

    def _write_jsonl(
        self, ok: list[FileReport], valid_sources: set[str]
    ) -> tuple[list[str], dict[str, int], int]:
        kinds = ["chunk"] + (["alpaca", "chat"] if self.settings.instruction_format else [])
        splits = ["train"] + (["valid"] if self.settings.val_ratio > 0 else [])
        names = {
            (kind, split): (Path(split) if kind == "chunk" else Path(kind) / split).with_suffix(
                ".jsonl"
            )
            for kind in kinds
            for split in splits
        }
        counts = dict.fromkeys((f"{n}" for n in names.values()), 0)
        seen: set[bytes] = set()
        duplicates = 0
        outputs = _OutputSet(self.output_dir, list(names.values()))
        try:
            for report in ok:
                split = "valid" if report.source in valid_sources else "train"
                # One document's records at a time: memory follows the largest document.
                records = [
                    next(iter(line.items()))
                    for line in iter_jsonl(self.cache_dir / cache_name(report.source))
                ]
                if self.settings.deduplicate:
                    records, dropped = _drop_duplicate_chunks(records, seen)
                    duplicates += dropped
                for kind, record in records:
                    if (kind, split) not in names:
                        continue
                    name = names[(kind, split)]
                    outputs.write(name, json.dumps(record, ensure_ascii=False) + "\n")
                    counts[str(name)] += 1
        except BaseException:
            outputs.discard()
            raise
        # An empty file is no data set (`load_dataset` refuses it): splits nothing went to are
        # not written, and do not replace a file of that name (an earlier run's is then stale).
        written = {name for name in names.values() if counts[str(name)]}
        outputs.commit(written)
        for name in set(names.values()) - written:
            del counts[str(name)]
        return [name.as_posix() for name in names.values() if name in written], counts, duplicates

    def _write_texts(self, ok: list[FileReport]) -> list[str]:
        outputs = []
        for report in ok:
            for line in iter_jsonl(self.cache_dir / cache_name(report.source)):
                if "document_text" in line:
                    name = text_name(report.source)
                    atomic_write_text(self.output_dir / name, line["document_text"] + "\n")
                    outputs.append(name)
        return outputs

    def remove_stale(self, previous: dict[str, Any], written: set[str]) -> None:
        """Delete the outputs an earlier run wrote that this run did not write again.

        Only files the manifest lists as that run's outputs are candidates, and only while they
        are as it left them (same size and modification time), regular files inside OUTPUT_DIR
        with no symlink on the way. Anything else is the user's and is left alone, with a warning
        when it has the name of an output this run did not write.
        """
        recorded = previous.get("outputs")
        recorded = recorded if isinstance(recorded, dict) else {}
        for name, stamp in sorted(recorded.items()):
            if name in written:
                continue
            path = self._unchanged_output(name, stamp)
            if path is not None:
                path.unlink()
                logger.info("removed %s: an earlier run wrote it, this run did not", path)
        for name in SPLIT_FILES:
            path = self.output_dir / name
            if name not in written and name not in recorded and os.path.lexists(path):
                logger.warning(
                    "%s was not written by an earlier extract run into this folder: left as is",
                    path,
                )

    def _unchanged_output(self, name: Any, stamp: Any) -> Path | None:
        """`OUTPUT_DIR/name` if it is an output an earlier run wrote, unchanged since; else None."""
        if not isinstance(name, str) or not isinstance(stamp, dict):
            return None
        relative = PurePosixPath(name)
        parts = relative.parts
        if (
            not parts
            or relative.is_absolute()
            or ".." in parts
            or relative.suffix not in _OUTPUT_SUFFIXES
        ):
            return None  # not something extract writes: a hand-edited manifest
        path = self.output_dir
        for part in parts[:-1]:
            path = path / part
            if path.is_symlink() or not path.is_dir():
                return None
        path = path / parts[-1]
        try:
            info = path.lstat()
        except OSError:
            return None
        if not stat.S_ISREG(info.st_mode):
            return None
        if (info.st_size, info.st_mtime_ns) != (stamp.get("size"), stamp.get("mtime_ns")):
            logger.warning(
                "%s changed since extract wrote it: left as is (delete it if it is stale)", path
            )
            return None
        return path


def _drop_duplicate_chunks(
    records: list[tuple[str, dict[str, Any]]], seen: set[bytes]
) -> tuple[list[tuple[str, dict[str, Any]]], int]:
    """One document's records without the chunks whose exact text an earlier chunk had.

    `seen` holds the digests of the chunks kept so far in the run. The kept chunks are numbered
    again (`chunk_index` 0..n-1, `total_chunks` n, `chunk_id` "source#index" as the converter
    makes it); instruction records follow their chunk's new id, or go with their chunk.
    Returns (records, chunks dropped).
    """
    chunks = [record for kind, record in records if kind == "chunk"]
    kept = []
    for record in chunks:
        digest = hashlib.blake2b(record["text"].encode(), digest_size=16).digest()
        if digest not in seen:
            seen.add(digest)
            kept.append(record)
    dropped = len(chunks) - len(kept)
    if not dropped:
        return records, 0
    renumbered = {
        record["chunk_id"]: (index, f"{record['source']}#{index}")
        for index, record in enumerate(kept)
    }
    result = []
    for kind, record in records:
        if kind not in ("chunk", "alpaca", "chat"):
            result.append((kind, record))
            continue
        if record["chunk_id"] not in renumbered:
            continue  # a dropped chunk, or an instruction record made from one
        index, chunk_id = renumbered[record["chunk_id"]]
        record = {**record, "chunk_id": chunk_id}
        if kind == "chunk":
            record["metadata"] = {
                **record["metadata"],
                "chunk_index": index,
                "total_chunks": len(kept),
            }
        result.append((kind, record))
    return result, dropped


def text_name(source: str) -> str:
    """The `--format text` output of a document: `<source>.txt`; a `.txt` file keeps its name."""
    return source if source.endswith(".txt") else source + ".txt"


def text_name_clashes(
    files: list[tuple[Path, str]],
) -> tuple[list[tuple[Path, str]], list[FileReport]]:
    """Files whose `--format text` output would be another input's output, split off as failed.

    `a.md` and `a.md.txt` would both write `a.md.txt`: the `.txt` file keeps its own name and the
    other fails with a reason, so neither is silently lost.
    """
    sources = {source for _, source in files}
    kept: list[tuple[Path, str]] = []
    clashes: list[FileReport] = []
    for path, source in files:
        name = text_name(source)
        if name != source and name in sources:
            clashes.append(
                FileReport(
                    source,
                    "failed",
                    f"--format text would write it to '{name}', which is the output of the input "
                    f"file '{name}' too; rename one of the two files",
                )
            )
        else:
            kept.append((path, source))
    return kept, clashes


def _validation_sources(sources: list[str], ratio: float) -> set[str]:
    """The documents of the validation split: whole documents, chosen by a hash of their path.

    The `round(ratio * n)` documents with the lowest hash go to validation (at least one when the
    ratio is positive and there are two or more documents), so no document is split across train
    and validation and the choice does not depend on file order or timing.
    """
    if ratio <= 0 or len(sources) < 2:
        return set()
    count = min(len(sources) - 1, max(1, math.floor(ratio * len(sources) + 0.5)))
    ranked = sorted(sources, key=lambda s: hashlib.sha256(s.encode()).hexdigest())
    return set(ranked[:count])


class _OutputSet:
    """Several output files written together to temporary files: `commit(keep)` renames those in
    `keep` into place and drops the others (no existing file is replaced by one this run did not
    fill); `discard()` drops them all, on error."""

    def __init__(self, root: Path, names: list[Path]) -> None:
        self.files: dict[Path, AtomicFile] = {}
        try:
            for name in names:
                self.files[name] = AtomicFile(root / name)
        except BaseException:
            self.discard()
            raise

    def write(self, name: Path, text: str) -> None:
        self.files[name].handle.write(text)

    def commit(self, keep: set[Path]) -> None:
        try:
            for name, target in self.files.items():
                if name in keep:
                    target.commit()
                else:
                    target.discard()
        except BaseException:
            self.discard()
            raise

    def discard(self) -> None:
        for target in self.files.values():
            target.discard()
