"""The report entry of each file (`extract_report.json`) and the result of a run."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


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


def strip_path(message: str, path: Path) -> str:
    """Per-file reasons are stored next to the file name; drop a leading 'path: ' from messages."""
    for prefix in (f"{path}: ", f"{path.absolute()}: "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message
