"""The `extract` pipeline: a folder of documents becomes chunked JSONL training data.

    discover files -> parse in killable worker processes -> finish each document (running
    headers, cleaning, chunking) -> cache its records -> assemble the outputs in a fixed order

Workers only parse (the slow part: PDF text extraction). The parent finishes each document as
soon as its last piece arrives and streams its records to a per-document cache file, so memory
does not grow with the corpus. The outputs are assembled from those cache files in sorted source
order at the end, which makes the result independent of worker timing, lets `--incremental`
reuse the records of unchanged files, and lets every output be written to a temporary file that
is renamed only on success.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from document_processing.parsers import SUPPORTED_SUFFIXES, parser_for
from document_processing.records import PageText, ParsedDocument
from shared_utils.config import DocumentProcessingConfig, ToolkitConfig, dump_config
from shared_utils.errors import ConfigurationError, LLMToolkitError, SecurityError
from shared_utils.file_utils import (
    AtomicFile,
    FileTooLargeError,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    folder_lock,
    is_within,
    iter_jsonl,
    remove_leftover_temp_files,
    sha256_file,
    validate_input_file,
)
from shared_utils.security import sanitize_text
from shared_utils.worker_pool import KillableProcessPool, TaskResult, default_worker_count

logger = logging.getLogger(__name__)

CACHE_DIR = ".extract_cache"
MANIFEST = "manifest.json"
LOCK_FILE = ".extract.lock"
_CACHE_FILE = re.compile(r"[0-9a-f]{24}\.jsonl")  # what `_cache_name` makes
_OUTPUT_SUFFIXES = (".jsonl", ".txt")  # the only kinds of file an earlier run's outputs can be
# The files a jsonl run may write besides the report: train/valid at the top, in alpaca/, chat/.
_SPLIT_FILES = [
    f"{d}{split}.jsonl" for d in ("", "alpaca/", "chat/") for split in ("train", "valid")
]
REPORT = "extract_report.json"
RESOLVED_CONFIG = "resolved_config.yaml"
# Bump when the cached record format or the processing changes, so old caches are not reused.
PIPELINE_VERSION = 4
FIRST_RANGE_PAGES = 8


# --------------------------------------------------------------------------------------------------
# Report entries
# --------------------------------------------------------------------------------------------------


@dataclass
class FileReport:
    source: str
    status: str = "ok"  # ok | failed | skipped
    reason: str = ""
    type: str = ""
    pages: int = 0
    pages_needing_ocr: list[int] = field(default_factory=list)
    engines: dict[str, str] = field(default_factory=dict)  # page number -> engine
    # page number -> {"engine": ..., "confidence": ..., "dpi": ...} for the pages OCR read
    ocr: dict[str, dict[str, Any]] = field(default_factory=dict)
    chunks: int = 0
    characters: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    split: str = ""  # train | valid
    cached: bool = False  # reused from an earlier --incremental run


@dataclass
class ExtractResult:
    files: list[FileReport]
    outputs: list[str]
    totals: dict[str, Any]
    seconds: float

    @property
    def failed(self) -> list[FileReport]:
        return [f for f in self.files if f.status == "failed"]

    @property
    def succeeded(self) -> list[FileReport]:
        return [f for f in self.files if f.status == "ok"]


# --------------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------------


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
                refused.append(FileReport(source, status, _strip_path(str(exc), path)))
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


def _strip_path(message: str, path: Path) -> str:
    """Per-file reasons are stored next to the file name; drop a leading 'path: ' from messages."""
    for prefix in (f"{path}: ", f"{path.absolute()}: "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


# --------------------------------------------------------------------------------------------------
# Work done in the worker processes (top-level functions: they are pickled by name)
# --------------------------------------------------------------------------------------------------


def _pdf_first_range(
    path: Path, settings: DocumentProcessingConfig
) -> tuple[Any, list[PageText], int, str]:
    """Probe a PDF and extract its first page range; the parent queues the other ranges.

    Also returns the file's SHA-256, taken as it is read (see `_parse_whole`).
    """
    from document_processing.parsers.pdf import extract_pages, probe_pdf

    digest = sha256_file(path)
    info = probe_pdf(path, settings)
    # A short first range: the other ranges are queued only once it returns, and until then the
    # other workers may have nothing to do (a corpus of one book).
    last = min(info.page_count, settings.pdf.pages_per_task, FIRST_RANGE_PAGES)
    pages = extract_pages(path, 1, last, settings, keep_open=True) if last >= 1 else []
    return info, pages, last, digest


def _pdf_range(
    path: Path, first: int, last: int, settings: DocumentProcessingConfig
) -> list[PageText]:
    from document_processing.parsers.pdf import extract_pages

    # Kept open: this worker process is likely to get the file's next range too.
    return extract_pages(path, first, last, settings, keep_open=True)


def _parse_whole(
    path: Path, source: str, settings: DocumentProcessingConfig
) -> tuple[ParsedDocument, str]:
    """The parsed document and the file's SHA-256, taken as the file is read: the manifest
    records it, and a file deleted or changed later in the run is never read again."""
    digest = sha256_file(path)
    return parser_for(path).parse(path, source, settings), digest


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


@dataclass
class _PdfJob:
    path: Path
    source: str
    started: float
    info: Any = None
    pages: list[PageText] = field(default_factory=list)
    ranges_left: int = 0


class ExtractRun:
    """One `extract` run from INPUT_DIR to OUTPUT_DIR with a resolved config."""

    def __init__(
        self,
        input_dir: Path,
        output_dir: Path,
        config: ToolkitConfig,
        incremental: bool = False,
        show_progress: bool | None = None,
    ) -> None:
        self.input_dir = input_dir
        self.output_dir = output_dir
        self.config = config
        self.settings = config.document_processing
        self.incremental = incremental
        self.show_progress = show_progress
        self.cache_dir = output_dir / CACHE_DIR
        self._converter: Any = None
        self._hashes: dict[str, str] = {}  # source -> SHA-256 of the bytes that were read

    # -- entry point --------------------------------------------------------------------------

    def run(self) -> ExtractResult:
        started = time.monotonic()
        self._check_folders()
        # One run per output folder at a time: two runs would delete each other's cache files
        # and outputs. The lock goes with the process, so a killed run never blocks the next.
        with folder_lock(self.output_dir, LOCK_FILE, "extract run"):
            self._check_cache_dir()
            return self._run(started)

    def _run(self, started: float) -> ExtractResult:
        max_bytes = int(self.settings.max_file_size_mb * 1e6)
        files, refused = discover_files(self.input_dir, self.output_dir, max_bytes)
        if self.settings.output_format == "text":
            files, clashes = _text_name_clashes(files)
            refused = sorted([*refused, *clashes], key=lambda report: report.source)
        self.cache_dir.mkdir(exist_ok=True)
        previous = self._read_manifest()
        settings_key = self._settings_key()
        manifest = self._reusable_entries(previous, settings_key) if self.incremental else {}
        removed = remove_leftover_temp_files(
            self.output_dir,
            [
                *_SPLIT_FILES,
                REPORT,
                RESOLVED_CONFIG,
                f"{CACHE_DIR}/{MANIFEST}",
                *(f"{CACHE_DIR}/{_cache_name(source)}" for _, source in files),
                *(_text_name(source) for _, source in files),
            ],
        )
        if removed:
            logger.info("removed %d temporary files an interrupted run left behind", removed)
        # Content hashes of the inputs: up front with --incremental (to find what changed),
        # else filled in by the workers as they read each file.
        if self.incremental:
            files, vanished = self._hash_inputs(files)
            refused = sorted([*refused, *vanished], key=lambda report: report.source)
        hashes = self._hashes

        reports: dict[str, FileReport] = {r.source: r for r in refused}
        todo: list[tuple[Path, str]] = []
        for path, source in files:
            report = _cached_report(manifest.get(source), hashes.get(source))
            if report is not None and (self.cache_dir / _cache_name(source)).exists():
                reports[source] = report
            else:
                todo.append((path, source))

        self._converter = self._make_converter()
        for report in self._process(todo):
            reports[report.source] = report

        ordered = [reports[source] for source in sorted(reports)]
        outputs, totals = self._assemble(ordered)
        self._remove_stale(previous, set(outputs))
        self._write_manifest(settings_key, ordered, hashes, outputs)
        result = ExtractResult(ordered, outputs, totals, time.monotonic() - started)
        self._write_report(result)
        return result

    # -- set-up -------------------------------------------------------------------------------

    def _check_folders(self) -> None:
        self.settings.check()
        if not self.input_dir.is_dir():
            raise ConfigurationError(
                f"input folder '{self.input_dir}' does not exist or is not a folder; "
                "pass the folder that holds your documents (PDF, Markdown, text, Word, HTML, EPUB)."
            )
        if self.input_dir.resolve() == self.output_dir.resolve():
            raise ConfigurationError(
                f"OUTPUT_DIR '{self.output_dir}' is the input folder; choose another folder."
            )
        if is_within(self.output_dir, self.input_dir):
            logger.warning(
                "output folder '%s' is inside the input folder: it is left out of the scan",
                self.output_dir,
            )
        if self.output_dir.exists() and not self.output_dir.is_dir():
            raise ConfigurationError(f"OUTPUT_DIR '{self.output_dir}' exists and is not a folder.")
        self.output_dir.mkdir(parents=True, exist_ok=True)

    def _check_cache_dir(self) -> None:
        """The cache folder must be extract's own folder: it deletes files in it."""
        cache = self.cache_dir
        if cache.is_symlink():
            raise SecurityError(
                f"'{cache}' is a symbolic link (to '{os.readlink(cache)}'); extract deletes files "
                "in its cache folder, so it never follows a link there — remove the link (rm "
                f"'{cache}'; what it points to is left as is) and run again."
            )
        if cache.exists() and not cache.is_dir():
            raise ConfigurationError(
                f"'{cache}' is not a folder; extract keeps its cache there — move it away and "
                "run again."
            )

    def _hash_inputs(
        self, files: list[tuple[Path, str]]
    ) -> tuple[list[tuple[Path, str]], list[FileReport]]:
        """Hash every input into `self._hashes`; a file that cannot be read is reported failed."""
        kept, failed = [], []
        for path, source in files:
            try:
                self._hashes[source] = sha256_file(path)
            except OSError as exc:
                reason = f"cannot be read ({exc.strerror or exc}); it changed during the run"
                failed.append(FileReport(source, "failed", reason))
            else:
                kept.append((path, source))
        return kept, failed

    def _make_converter(self) -> Any:
        from document_processing.converters.lm_studio_converter import LMStudioConverter

        return LMStudioConverter.from_config(self.settings)

    def _settings_key(self) -> str:
        """Hash of everything that shapes a document's cached records."""
        data = asdict(self.settings)
        for key in ("workers", "file_timeout", "worker_memory_mb", "val_ratio", "deduplicate"):
            data.pop(key)
        data["pipeline_version"] = PIPELINE_VERSION
        if self.settings.tokenizer:
            tok = Path(self.settings.tokenizer)
            files = sorted(tok.glob("*.json")) if tok.is_dir() else []
            data["tokenizer_files"] = [sha256_file(f) for f in files]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    # -- parsing in workers ---------------------------------------------------------------------

    def _process(self, todo: list[tuple[Path, str]]) -> Iterator[FileReport]:
        if not todo:
            return
        workers = self.settings.workers or default_worker_count()
        progress = _Progress(len(todo), self.show_progress)
        jobs: dict[str, _PdfJob] = {}
        with KillableProcessPool(
            workers, self.settings.file_timeout, self.settings.worker_memory_mb
        ) as pool:
            for path, source in todo:
                if path.suffix.lower() == ".pdf":
                    jobs[source] = _PdfJob(path, source, time.monotonic())
                    pool.submit(_pdf_first_range, path, self.settings, tag=("pdf-first", source))
                else:
                    pool.submit(_parse_whole, path, source, self.settings, tag=("file", source))
            for result in pool.results():
                kind, source = result.tag[0], result.tag[1]
                if kind == "file":
                    report = self._finish_file(result, source)
                else:
                    report = self._on_pdf_result(pool, jobs, result, progress)
                    if report is None:
                        continue
                progress.file_done(report)
                yield report
        progress.close()

    def _finish_file(self, result: TaskResult, source: str) -> FileReport:
        if not result.ok:
            return self._failure(source, result)
        doc, self._hashes[source] = result.value
        return self._finish_document(doc, result.seconds)

    def _on_pdf_result(
        self,
        pool: KillableProcessPool,
        jobs: dict[str, _PdfJob],
        result: TaskResult,
        progress: _Progress,
    ) -> FileReport | None:
        kind, source = result.tag[0], result.tag[1]
        job = jobs.get(source)
        if job is None:  # the file already failed on another page range
            return None
        if not result.ok:
            del jobs[source]
            if kind == "pdf-range":
                result.error = f"pages {result.tag[2]}-{result.tag[3]}: {result.error}"
            return self._failure(source, result)
        if kind == "pdf-first":
            info, pages, last, self._hashes[source] = result.value
            job.info = info
            job.pages.extend(pages)
            progress.add_pages(info.page_count, len(pages))
            step = max(1, self.settings.pdf.pages_per_task)
            for first in range(last + 1, info.page_count + 1, step):
                end = min(first + step - 1, info.page_count)
                pool.submit(
                    _pdf_range,
                    job.path,
                    first,
                    end,
                    self.settings,
                    tag=("pdf-range", source, first, end),
                )
                job.ranges_left += 1
        else:
            job.pages.extend(result.value)
            job.ranges_left -= 1
            progress.add_pages(0, len(result.value))
        if job.ranges_left:
            return None
        del jobs[source]
        from document_processing.parsers.pdf import assemble_pdf_document

        job.pages.sort(key=lambda page: page.number)
        doc = assemble_pdf_document(source, job.info, job.pages, self.settings)
        return self._finish_document(doc, time.monotonic() - job.started)

    def _failure(self, source: str, result: TaskResult) -> FileReport:
        path = self.input_dir / source
        reason = _strip_path(result.error, path)
        if result.error_type == "Timeout":
            reason = (
                f"{reason}; the parser hung or the file is pathological "
                "(raise document_processing.file_timeout if it is just large)"
            )
        elif result.error_type == "PermissionError":
            reason = "permission denied; make it readable (chmod +r)"
        elif result.error_type in ("MemoryError", "WorkerDied"):
            limit = self.settings.worker_memory_mb
            verdict = "it needed" if result.error_type == "MemoryError" else "it may have needed"
            reason = (
                f"{reason.rstrip('.')}; {verdict} more than the {limit:g} MB a worker may take "
                "(a PDF page that inflates to gigabytes does); raise "
                "document_processing.worker_memory_mb if the file is just large"
            )
        elif result.error_type not in _TOOLKIT_ERRORS:
            reason = f"{result.error_type}: {reason}"
        logger.debug("failed: %s: %s", source, reason)  # the command lists failures at the end
        return FileReport(source, "failed", reason, seconds=round(result.seconds, 3))

    # -- finishing a document (parent process) --------------------------------------------------

    def _finish_document(self, doc: ParsedDocument, seconds: float) -> FileReport:
        _sanitize_metadata(doc)
        report = FileReport(doc.source, type=doc.doc_type, seconds=round(seconds, 3))
        report.warnings = list(doc.warnings)
        report.pages_needing_ocr = list(doc.pages_needing_ocr)
        report.engines = {str(page): engine for page, engine in sorted(doc.page_engines.items())}
        report.ocr = {str(page): entry for page, entry in sorted(doc.page_ocr.items())}
        report.pages = doc.metadata.page_count or 0
        try:
            chunks = self._converter.chunk_document(doc)
        except LLMToolkitError as exc:
            report.status, report.reason = "failed", str(exc)
            return report
        report.chunks = len(chunks)
        report.characters = sum(len(section.text) for section in doc.sections)
        if not chunks and not doc.text.strip():
            report.status = "failed"
            if doc.warnings:  # an engine could not read the pages: that is why, not a scan
                report.reason = f"no text could be extracted: {doc.warnings[0]}"
            else:
                report.reason = "no text could be extracted" + (
                    " (scanned pages need OCR first)" if doc.pages_needing_ocr else ""
                )
            return report
        with atomic_write(self.cache_dir / _cache_name(doc.source)) as handle:
            for record in chunks:
                handle.write(json.dumps({"chunk": record}, ensure_ascii=False) + "\n")
            if self.settings.instruction_format:
                alpaca, chat = self._converter.instruction_records(doc, chunks)
                for record in alpaca:
                    handle.write(json.dumps({"alpaca": record}, ensure_ascii=False) + "\n")
                for record in chat:
                    handle.write(json.dumps({"chat": record}, ensure_ascii=False) + "\n")
            if self.settings.output_format == "text":
                handle.write(json.dumps({"document_text": doc.text}, ensure_ascii=False) + "\n")
        return report

    # -- assembling the outputs -----------------------------------------------------------------

    def _assemble(self, reports: list[FileReport]) -> tuple[list[str], dict[str, Any]]:
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
                    for line in iter_jsonl(self.cache_dir / _cache_name(report.source))
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
            for line in iter_jsonl(self.cache_dir / _cache_name(report.source)):
                if "document_text" in line:
                    name = _text_name(report.source)
                    atomic_write_text(self.output_dir / name, line["document_text"] + "\n")
                    outputs.append(name)
        return outputs

    def _remove_stale(self, previous: dict[str, Any], written: set[str]) -> None:
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
        for name in _SPLIT_FILES:
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

    # -- manifest and report --------------------------------------------------------------------

    def _read_manifest(self) -> dict[str, Any]:
        """What the last run into this folder recorded ({} if nothing readable)."""
        path = self.cache_dir / MANIFEST
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

    def _reusable_entries(self, previous: dict[str, Any], settings_key: str) -> dict[str, Any]:
        if previous.get("settings") != settings_key:
            if previous:
                logger.info("settings changed since the last run: processing every file again")
            return {}
        files = previous.get("files")
        return files if isinstance(files, dict) else {}

    def _write_manifest(
        self,
        settings_key: str,
        reports: list[FileReport],
        hashes: dict[str, str],
        outputs: list[str],
    ) -> None:
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
            info = (self.output_dir / name).lstat()
            stamps[name] = {"size": info.st_size, "mtime_ns": info.st_mtime_ns}
        atomic_write_json(
            self.cache_dir / MANIFEST, {"settings": settings_key, "files": files, "outputs": stamps}
        )
        live = {_cache_name(source) for source in files}
        for cached in self.cache_dir.iterdir():
            if _CACHE_FILE.fullmatch(cached.name) and cached.name not in live:
                cached.unlink()  # a symlink is removed, never followed

    def _write_report(self, result: ExtractResult) -> None:
        report = {
            "input_dir": str(self.input_dir),
            "output_dir": str(self.output_dir),
            "seconds": round(result.seconds, 3),
            "totals": result.totals,
            "outputs": result.outputs,
            "files": [asdict(f) for f in result.files],
        }
        atomic_write_json(self.output_dir / REPORT, report)
        atomic_write_text(self.output_dir / RESOLVED_CONFIG, dump_config(self.config))


_TOOLKIT_ERRORS = {
    "LLMToolkitError",
    "DocumentProcessingError",
    "SecurityError",
    "DataValidationError",
    "ConfigurationError",
}


def _cached_report(entry: Any, digest: str | None) -> FileReport | None:
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


def _sanitize_metadata(doc: ParsedDocument) -> None:
    """Titles and authors come from untrusted files (PDF info, frontmatter): no markup in them."""
    meta = doc.metadata
    for name in ("title", "author", "created", "modified"):
        value = getattr(meta, name)
        if value:
            setattr(meta, name, " ".join(sanitize_text(value, 1000)[0].split()))
    meta.extra = {k: sanitize_text(v, 10_000)[0] for k, v in meta.extra.items()}


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


def _text_name(source: str) -> str:
    """The `--format text` output of a document: `<source>.txt`; a `.txt` file keeps its name."""
    return source if source.endswith(".txt") else source + ".txt"


def _text_name_clashes(
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
        name = _text_name(source)
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


def _cache_name(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:24] + ".jsonl"


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


class _Progress:
    """Progress bar over files and pages (tqdm; silent when stderr is not a terminal)."""

    def __init__(self, files: int, enabled: bool | None) -> None:
        from tqdm import tqdm

        self.files_total = files
        self.files_done = 0
        self.pages_done = 0
        self.pages_total = 0
        # Work units: one per non-PDF file, one per PDF page once its page count is known.
        self.bar = tqdm(
            total=files,
            unit="unit",
            desc="extract",
            disable=None if enabled is None else not enabled,
        )

    def add_pages(self, new_total: int, done: int) -> None:
        if new_total:
            self.pages_total += new_total
            self.bar.total += new_total - 1  # the PDF counted as one unit until now
        self.pages_done += done
        self.bar.update(done)
        self._postfix()

    def file_done(self, report: FileReport) -> None:
        self.files_done += 1
        if report.type != "pdf" or report.status != "ok":
            self.bar.update(1)
        self._postfix()

    def _postfix(self) -> None:
        self.bar.set_postfix_str(
            f"files {self.files_done}/{self.files_total}, "
            f"pages {self.pages_done}/{self.pages_total}",
            refresh=False,
        )

    def close(self) -> None:
        self.bar.close()
