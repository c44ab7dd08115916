"""The chunk records `extract` wrote to DATA_DIR, read and checked, and each document's language.

Only the chunk records themselves are read (train.jsonl, valid.jsonl): a record that is not one
(the chat/ or alpaca/ records, a broken line) is an error naming its file and line.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from document_processing.qa_generation import filters
from shared_utils.errors import ConfigurationError, DataValidationError

CHUNK_FILES = ("train.jsonl", "valid.jsonl")


@dataclass(frozen=True)
class Chunk:
    text: str
    source: str
    chunk_id: str
    section: str
    page: int | None


def read_chunks(data_dir: Path) -> list[Chunk]:
    """The chunk records `extract` wrote to DATA_DIR (train.jsonl, valid.jsonl), in file order."""
    if not data_dir.is_dir():
        raise ConfigurationError(
            f"DATA_DIR {data_dir}: no such folder — give the folder `extract` wrote "
            "(python main.py extract DOCS DATA_DIR)"
        )
    files = [data_dir / name for name in CHUNK_FILES if (data_dir / name).is_file()]
    if not files:
        raise DataValidationError(
            f"{data_dir}: no chunk records (train.jsonl or valid.jsonl) — run `python main.py "
            f"extract DOCS {data_dir}` first and give that folder"
        )
    chunks = []
    for path in files:
        with path.open("rb") as handle:
            for number, raw in enumerate(handle, start=1):
                if raw.strip():
                    chunks.append(_chunk(raw, f"{path}:{number}"))
    if not chunks:
        raise DataValidationError(
            f"{data_dir}: its chunk files are empty — extract found no text in the documents"
        )
    return chunks


def _chunk(raw: bytes, where: str) -> Chunk:
    try:
        record = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataValidationError(f"{where}: not a JSON line ({exc}) — fix or remove it") from None
    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
        keys = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
        raise DataValidationError(
            f"{where}: not a chunk record (keys: {keys}) — give the folder `extract` wrote, whose "
            "train.jsonl holds chunk records, not its chat/ or alpaca/ folder"
        )
    metadata = record.get("metadata") if isinstance(record.get("metadata"), dict) else {}
    source = str(record.get("source") or where.rsplit(":", 1)[0])
    section_path = metadata.get("section_path") or []
    page = metadata.get("page_start")
    return Chunk(
        text=record["text"],
        source=source,
        chunk_id=str(record.get("chunk_id") or where),
        section=" > ".join(str(part) for part in section_path),
        page=page if isinstance(page, int) and page > 0 else None,
    )


def document_languages(chunks: list[Chunk]) -> dict[str, str | None]:
    """Each document's language (instruction_records' detection over all its chunks)."""
    from document_processing.converters.languages import detect_language

    text_by_source: dict[str, list[str]] = defaultdict(list)
    for chunk in chunks:
        text_by_source[chunk.source].append(chunk.text)
    return {
        source: detect_language(filters.words(" ".join(texts)))
        for source, texts in text_by_source.items()
    }
