"""PDF page-range scheduling: a large PDF is read as page ranges by several workers at once.

A PDF's first task probes it (page count, metadata) and extracts a short first range; when it
returns, the file's other ranges of `pdf.pages_per_task` pages are queued, and when the last of
them is in, the document is assembled from all its pages in the parent. A range that fails fails
the file, and the results of its other ranges are dropped.

The worker functions are top-level functions: the pool pickles them by name.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from document_processing.pipeline.progress import Progress
from document_processing.records import PageText, ParsedDocument
from shared_utils.config import DocumentProcessingConfig
from shared_utils.file_utils import sha256_file
from shared_utils.worker_pool import KillableProcessPool, TaskResult

FIRST_RANGE_PAGES = 8


def _pdf_first_range(
    path: Path, settings: DocumentProcessingConfig
) -> tuple[Any, list[PageText], int, str]:
    """Probe a PDF and extract its first page range; the parent queues the other ranges.

    Also returns the file's SHA-256, taken as it is read (see `run._parse_whole`).
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


@dataclass
class _PdfJob:
    path: Path
    source: str
    started: float
    info: Any = None
    pages: list[PageText] = field(default_factory=list)
    ranges_left: int = 0
    digest: str = ""  # the file's SHA-256, taken as the first task read it


class PdfRanges:
    """The PDFs of a run in flight: their page ranges queued on the pool, their pages collected."""

    def __init__(self, pool: KillableProcessPool, settings: DocumentProcessingConfig) -> None:
        self.pool = pool
        self.settings = settings
        self._jobs: dict[str, _PdfJob] = {}

    def start(self, path: Path, source: str) -> None:
        """Queue the PDF's first task: the probe and the first page range."""
        self._jobs[source] = _PdfJob(path, source, time.monotonic())
        self.pool.submit(_pdf_first_range, path, self.settings, tag=("pdf-first", source))

    def collect(
        self, result: TaskResult, progress: Progress
    ) -> tuple[ParsedDocument, float, str] | TaskResult | None:
        """Take in the result of one of a PDF's tasks.

        Returns (the document, the seconds it took, the file's SHA-256) when it was the PDF's last
        range; the failed result, its error prefixed with the pages of a failed range, when a task
        failed; None while ranges are left, and for the results of a PDF that already failed.
        """
        kind, source = result.tag[0], result.tag[1]
        job = self._jobs.get(source)
        if job is None:  # the file already failed on another page range
            return None
        if not result.ok:
            del self._jobs[source]
            if kind == "pdf-range":
                result.error = f"pages {result.tag[2]}-{result.tag[3]}: {result.error}"
            return result
        if kind == "pdf-first":
            info, pages, last, job.digest = result.value
            job.info = info
            job.pages.extend(pages)
            progress.add_pages(info.page_count, len(pages))
            self._queue_ranges(job, last)
        else:
            job.pages.extend(result.value)
            job.ranges_left -= 1
            progress.add_pages(0, len(result.value))
        if job.ranges_left:
            return None
        del self._jobs[source]
        from document_processing.parsers.pdf import assemble_pdf_document

        job.pages.sort(key=lambda page: page.number)
        doc = assemble_pdf_document(source, job.info, job.pages, self.settings)
        return doc, time.monotonic() - job.started, job.digest

    def _queue_ranges(self, job: _PdfJob, last: int) -> None:
        """Queue the ranges after page `last`, `pdf.pages_per_task` pages each."""
        step = max(1, self.settings.pdf.pages_per_task)
        for first in range(last + 1, job.info.page_count + 1, step):
            end = min(first + step - 1, job.info.page_count)
            self.pool.submit(
                _pdf_range,
                job.path,
                first,
                end,
                self.settings,
                tag=("pdf-range", job.source, first, end),
            )
            job.ranges_left += 1
