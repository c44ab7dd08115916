"""Training records: JSONL files read, validated and normalised into rows the tokeniser takes.

- `read_records` streams a JSONL file line by line into a `datasets` Arrow table (memory-mapped
  on disk), so a multi-GB file never sits in a Python list. Every line is validated on the way and
  a bad one raises `DataValidationError` naming `file:line`.
- Every record becomes one normalised row `{"prompt", "completion", "messages"}`: plain `text`
  records are a completion with an empty prompt; `prompt`/`completion` records keep both; alpaca
  (`instruction`/`input`/`output`) and chat (`messages`) records become a conversation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from shared_utils.errors import DataValidationError

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

RecordFormat = Literal["text", "alpaca", "chat", "prompt_completion"]
ROLES = ("system", "user", "assistant", "tool")


def detect_format(record: Mapping[str, Any]) -> RecordFormat | None:
    """The record type a JSONL object holds, or None when it is none the trainer can use."""
    if "messages" in record:
        return "chat"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "prompt" in record and "completion" in record:
        return "prompt_completion"
    if "text" in record:
        return "text"
    return None


def _string(record: Mapping[str, Any], key: str, where: str) -> str:
    value = record.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataValidationError(
            f"{where}: `{key}` must be a string, got {type(value).__name__} — fix the record"
        )
    return value


def normalize_record(
    record: Mapping[str, Any], record_format: RecordFormat, where: str
) -> dict[str, Any] | None:
    """One normalised row `{"prompt", "completion", "messages"}`, or None for an empty record."""
    if record_format == "text":
        text = _string(record, "text", where)
        return {"prompt": "", "completion": text, "messages": []} if text.strip() else None
    if record_format == "prompt_completion":
        prompt = _string(record, "prompt", where)
        completion = _string(record, "completion", where)
        if not completion.strip():
            return None
        return {"prompt": prompt, "completion": completion, "messages": []}
    if record_format == "alpaca":
        instruction = _string(record, "instruction", where)
        extra = _string(record, "input", where)
        output = _string(record, "output", where)
        if not instruction.strip() or not output.strip():
            return None
        user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
        system = _string(record, "system", where)
        if system.strip():
            messages.insert(0, {"role": "system", "content": system})
        return {"prompt": "", "completion": "", "messages": messages}
    return _normalize_chat(record.get("messages"), where)


def _normalize_chat(messages: Any, where: str) -> dict[str, Any] | None:
    if not isinstance(messages, list):
        raise DataValidationError(
            f"{where}: `messages` must be a list of {{role, content}} objects — fix the record"
        )
    normalized = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise DataValidationError(
                f"{where}: messages[{index}] must be an object with `role` and `content`"
            )
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise DataValidationError(
                f"{where}: messages[{index}].role is {role!r}; use one of {', '.join(ROLES)}"
            )
        if not isinstance(content, str):
            raise DataValidationError(f"{where}: messages[{index}].content must be a string")
        normalized.append({"role": role, "content": content})
    has_response = any(m["role"] == "assistant" and m["content"].strip() for m in normalized)
    if not has_response:
        return None
    return {"prompt": "", "completion": "", "messages": normalized}


@dataclass
class ReadStats:
    """What reading one file found: usable records, skipped empty ones, the detected type."""

    path: str
    record_format: str
    records: int = 0
    skipped_empty: int = 0


def iter_normalized_records(path: Path, stats: ReadStats | None = None) -> Iterator[dict[str, Any]]:
    """Validate and normalise the records of one JSONL file, one line at a time."""
    record_format: RecordFormat | None = None
    with open(path, "rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            where = f"{path}:{line_number}"
            line = _decode_line(raw, where, first=line_number == 1)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataValidationError(
                    f"{where}: not valid JSON ({exc.msg}, column {exc.colno}) — fix or remove the "
                    "line"
                ) from None
            except RecursionError:
                raise DataValidationError(
                    f"{where}: JSON nested too deeply to read — a record is an object of "
                    "strings and lists, a few levels deep; fix or remove the line"
                ) from None
            if not isinstance(record, dict):
                raise DataValidationError(
                    f"{where}: each line must be a JSON object, got {type(record).__name__}"
                )
            found = detect_format(record)
            if found is None:
                keys = ", ".join(sorted(record)) or "none"
                raise DataValidationError(
                    f"{where}: a record the trainer cannot use (keys: {keys}); expected `text`, "
                    "`prompt`+`completion`, alpaca `instruction`+`output`, or chat `messages`"
                )
            if record_format is None:
                record_format = found
                if stats is not None:
                    stats.record_format = found
            elif found != record_format:
                raise DataValidationError(
                    f"{where}: a {found} record in a file of {record_format} records; keep one "
                    "record type per file"
                )
            row = normalize_record(record, found, where)
            if row is None:
                if stats is not None:
                    stats.skipped_empty += 1
                continue
            if stats is not None:
                stats.records += 1
            yield row


def _decode_line(raw: bytes, where: str, *, first: bool) -> str:
    """One line of a JSONL file as text; JSON Lines are UTF-8 (a leading BOM is allowed)."""
    if first and raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise DataValidationError(
            f"{where}: the file is UTF-16; JSON Lines must be UTF-8 — convert it (iconv -f UTF-16 "
            "-t UTF-8 IN > OUT)"
        )
    if first and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataValidationError(
            f"{where}: not UTF-8 (byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the "
            "line) — save the file as UTF-8"
        ) from None


def _rows_generator(path: str, fingerprint: str) -> Iterator[dict[str, Any]]:
    # `fingerprint` only keys the Arrow cache: a changed file gets a new cache entry.
    del fingerprint
    yield from iter_normalized_records(Path(path))


def _file_fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


def read_records(
    path: str | Path, *, flag: str = "--train-data"
) -> tuple[datasets.Dataset, ReadStats]:
    """Stream a JSONL file into a memory-mapped Arrow dataset of normalised rows.

    Raises `DataValidationError` naming `file:line` for the first bad line, and when the file has
    no usable record; `flag` is the command-line flag that names the file (for the message of a
    missing one).
    """
    import datasets

    path = Path(path)
    if not path.is_file():
        what = "evaluation data" if flag == "--eval-data" else "training data"
        raise DataValidationError(
            f"{path}: {what} not found — run `python main.py extract DOCS_DIR data/processed` "
            f"or pass {flag} with an existing file"
        )
    # A first streaming pass validates every line and counts (constant memory); the Arrow cache
    # below is then built from rows known to be good.
    stats = ReadStats(path=str(path), record_format="")
    for _ in iter_normalized_records(path, stats):
        pass
    if stats.records == 0:
        raise DataValidationError(
            f"{path}: no usable record ({stats.skipped_empty} empty skipped) — the file needs "
            "non-empty text, completion, output or assistant messages"
        )
    features = datasets.Features(
        {
            "prompt": datasets.Value("string"),
            "completion": datasets.Value("string"),
            "messages": datasets.List(
                {"role": datasets.Value("string"), "content": datasets.Value("string")}
            ),
        }
    )
    previous = datasets.utils.logging.get_verbosity()
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    try:
        dataset = datasets.Dataset.from_generator(
            _rows_generator,
            features=features,
            gen_kwargs={"path": str(path), "fingerprint": _file_fingerprint(path)},
        )
    finally:
        datasets.utils.logging.set_verbosity(previous)
    if stats.skipped_empty:
        logger.info("%s: skipped %d empty records", path, stats.skipped_empty)
    return dataset, stats
