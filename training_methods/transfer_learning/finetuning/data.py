"""In-memory texts and instruction records → the tokenised data set the fine-tuner trains on.

JSONL files take the streamed path of `shared_utils.data_loader` (`DataLoaderFactory.load_rows`);
this is the path for data a caller already holds: both become the same normalised rows
(prompt, completion, messages) and go through the same tokenisation, labels and packing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from shared_utils.data_loader import DataLoaderFactory
from shared_utils.errors import DataValidationError
from shared_utils.training_records import detect_format, normalize_record

if TYPE_CHECKING:
    import datasets


def text_rows(texts: Sequence[str]) -> list[dict[str, Any]]:
    """Plain texts as normalised rows: every token is learned, EOS appended."""
    return [{"prompt": "", "completion": text, "messages": []} for text in texts if text.strip()]


def instruction_rows(instructions: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Alpaca, chat, prompt/completion or text records as normalised rows: loss on the
    responses only."""
    rows = []
    for index, record in enumerate(instructions):
        where = f"instructions[{index}]"
        record_format = detect_format(record)
        if record_format is None:
            raise DataValidationError(
                f"{where}: a record the trainer cannot use (keys: {', '.join(sorted(record))})"
            )
        row = normalize_record(record, record_format, where)
        if row is not None:
            rows.append(row)
    return rows


def dataset_from_rows(
    data: DataLoaderFactory, rows: list[dict[str, Any]], max_length: int | None = None
) -> datasets.Dataset:
    """Normalised rows tokenised (and shuffled) by `data`; `max_length` replaces its maximum
    length from now on when given."""
    import datasets

    if not rows:
        raise DataValidationError("no usable record: every text or response is empty")
    if max_length is not None and max_length != data.max_length:
        data.max_length = max_length
        data.example_tokenizer.max_length = max_length
    features = datasets.Features(
        {
            "prompt": datasets.Value("string"),
            "completion": datasets.Value("string"),
            "messages": datasets.List(
                {"role": datasets.Value("string"), "content": datasets.Value("string")}
            ),
        }
    )
    table = datasets.Dataset.from_list(rows, features=features)
    return data.build_dataset(table, shuffle=True)
