"""The progress bar of an `extract` run, over files and PDF pages."""

from __future__ import annotations

from document_processing.pipeline.reports import FileReport


class Progress:
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
