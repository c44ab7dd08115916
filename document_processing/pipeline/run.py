"""The `extract` run: discover the files, parse them in workers, finish and cache each document,
assemble the outputs, write the manifest and the report."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from document_processing.converters.chunking import Chunker
from document_processing.converters.structure_records import document_instruction_records
from document_processing.parsers import parser_for
from document_processing.pipeline.discovery import discover_files
from document_processing.pipeline.manifest import (
    CACHE_DIR,
    MANIFEST,
    cache_name,
    cached_report,
    read_manifest,
    reusable_entries,
    settings_key_of,
    write_manifest,
)
from document_processing.pipeline.outputs import SPLIT_FILES, Outputs, text_name, text_name_clashes
from document_processing.pipeline.pdf_ranges import PdfRanges
from document_processing.pipeline.progress import Progress
from document_processing.pipeline.reports import ExtractResult, FileReport, strip_path
from document_processing.records import ParsedDocument
from shared_utils.config import DocumentProcessingConfig, ToolkitConfig, dump_config
from shared_utils.errors import ConfigurationError, LLMToolkitError, SecurityError
from shared_utils.file_utils import (
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    folder_lock,
    is_within,
    remove_leftover_temp_files,
    sha256_file,
)
from shared_utils.security import sanitize_text
from shared_utils.worker_pool import KillableProcessPool, TaskResult, default_worker_count

logger = logging.getLogger(__name__)

LOCK_FILE = ".extract.lock"
REPORT = "extract_report.json"
RESOLVED_CONFIG = "resolved_config.yaml"


def _parse_whole(
    path: Path, source: str, settings: DocumentProcessingConfig
) -> tuple[ParsedDocument, str]:
    """The parsed document and the file's SHA-256, taken as the file is read: the manifest
    records it, and a file deleted or changed later in the run is never read again."""
    digest = sha256_file(path)
    return parser_for(path).parse(path, source, settings), digest


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
        self._chunker: Any = None
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
            files, clashes = text_name_clashes(files)
            refused = sorted([*refused, *clashes], key=lambda report: report.source)
        self.cache_dir.mkdir(exist_ok=True)
        previous = read_manifest(self.cache_dir)
        settings_key = settings_key_of(self.settings)
        manifest = reusable_entries(previous, settings_key) if self.incremental else {}
        removed = remove_leftover_temp_files(
            self.output_dir,
            [
                *SPLIT_FILES,
                REPORT,
                RESOLVED_CONFIG,
                f"{CACHE_DIR}/{MANIFEST}",
                *(f"{CACHE_DIR}/{cache_name(source)}" for _, source in files),
                *(text_name(source) for _, source in files),
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
            report = cached_report(manifest.get(source), hashes.get(source))
            if report is not None and (self.cache_dir / cache_name(source)).exists():
                reports[source] = report
            else:
                todo.append((path, source))

        self._chunker = Chunker(self.settings)
        for report in self._process(todo):
            reports[report.source] = report

        ordered = [reports[source] for source in sorted(reports)]
        folder = Outputs(self.output_dir, self.cache_dir, self.settings)
        outputs, totals = folder.assemble(ordered)
        folder.remove_stale(previous, set(outputs))
        write_manifest(self.cache_dir, self.output_dir, settings_key, ordered, hashes, outputs)
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

    # -- parsing in workers ---------------------------------------------------------------------

    def _process(self, todo: list[tuple[Path, str]]) -> Iterator[FileReport]:
        if not todo:
            return
        workers = self.settings.workers or default_worker_count()
        progress = Progress(len(todo), self.show_progress)
        with KillableProcessPool(
            workers, self.settings.file_timeout, self.settings.worker_memory_mb
        ) as pool:
            pdfs = PdfRanges(pool, self.settings)
            for path, source in todo:
                if path.suffix.lower() == ".pdf":
                    pdfs.start(path, source)
                else:
                    pool.submit(_parse_whole, path, source, self.settings, tag=("file", source))
            for result in pool.results():
                kind, source = result.tag[0], result.tag[1]
                if kind == "file":
                    report = self._finish_file(result, source)
                else:
                    report = self._on_pdf_result(pdfs, result, progress)
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
        self, pdfs: PdfRanges, result: TaskResult, progress: Progress
    ) -> FileReport | None:
        """The PDF's report once its last page range is in or a range failed; else None."""
        source = result.tag[1]
        outcome = pdfs.collect(result, progress)
        if outcome is None:
            return None
        if isinstance(outcome, TaskResult):
            return self._failure(source, outcome)
        doc, seconds, self._hashes[source] = outcome
        return self._finish_document(doc, seconds)

    def _failure(self, source: str, result: TaskResult) -> FileReport:
        path = self.input_dir / source
        reason = strip_path(result.error, path)
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
            chunks = self._chunker.chunk_document(doc)
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
        with atomic_write(self.cache_dir / cache_name(doc.source)) as handle:
            for record in chunks:
                handle.write(json.dumps({"chunk": record}, ensure_ascii=False) + "\n")
            if self.settings.instruction_format:
                alpaca, chat = document_instruction_records(doc, chunks, self.settings)
                for record in alpaca:
                    handle.write(json.dumps({"alpaca": record}, ensure_ascii=False) + "\n")
                for record in chat:
                    handle.write(json.dumps({"chat": record}, ensure_ascii=False) + "\n")
            if self.settings.output_format == "text":
                handle.write(json.dumps({"document_text": doc.text}, ensure_ascii=False) + "\n")
        return report

    # -- report ---------------------------------------------------------------------------------

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


def _sanitize_metadata(doc: ParsedDocument) -> None:
    """Titles and authors come from untrusted files (PDF info, frontmatter): no markup in them."""
    meta = doc.metadata
    for name in ("title", "author", "created", "modified"):
        value = getattr(meta, name)
        if value:
            setattr(meta, name, " ".join(sanitize_text(value, 1000)[0].split()))
    meta.extra = {k: sanitize_text(v, 10_000)[0] for k, v in meta.extra.items()}
