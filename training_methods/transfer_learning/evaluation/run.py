"""The `evaluate` command: did the fine-tuning teach anything? Base and fine-tuned side by side.

    evaluate_questions(
        "questions.jsonl", adapter="outputs/run", gguf="outputs/export/run-f16.gguf", device="auto"
    )

asks every question of each row, greedily, and scores the answers against reference answers:

- Rows: `base` (the base model alone), `fine-tuned` (the adapter merged into the base in memory,
  as `chat` and `export` do) and `gguf` (an exported file run in-process by llama.cpp, the engine
  LM Studio uses, through the chat template stored in the file). One model is in memory at a time.
- Prompts: the chat template the adapter was trained with (the tokenizer saved in the adapter
  folder, else the model's, else the toolkit's default), for the base row too, so both rows are
  asked the very same token sequence. Prompts are rendered, tokenised and stopped (EOS and the
  generation config's end-of-turn ids) by `transfer_learning.prompting`, as `chat` does it, so an
  answer here is the answer `chat --temperature 0` gives.
- Decoding: greedy, in batches with left padding (prompts sorted by length, so little padding is
  needed), which gives the answers one-by-one greedy decoding gives. No repetition penalty and no
  sampling settings of the model's generation config: plain argmax, like llama.cpp at
  temperature 0.

Question files are JSON Lines of `{"question", "answers"}` or `{"messages"}` records
(`question_files`); the answers come from `generation` and are scored by
`scoring` (whether an answer holds a reference, token F1, answer length).

Outputs, in `output_dir`: `answers.jsonl` (one line per question per row) and `evaluation.json`
(per row: questions, hits, hit_rate, mean_f1, mean_words, seconds, load_seconds; and the inputs),
both rewritten atomically after every row, so an interrupted run keeps the rows it finished.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared_utils.errors import ConfigurationError
from shared_utils.llama_cpp_runtime import import_llama_cpp
from training_methods.transfer_learning.evaluation.generation import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_NEW_TOKENS,
    gguf_answers,
    gguf_context,
    greedy_answers,
    load_gguf,
    prompt_token_ids,
)
from training_methods.transfer_learning.evaluation.question_files import (
    Question,
    prompt_messages,
    question_text,
    read_questions,
)
from training_methods.transfer_learning.evaluation.scoring import (
    contains_reference,
    token_f1,
    word_count,
)
from training_methods.transfer_learning.model_source import (
    ModelSource,
    load_for_inference,
    resolve_source,
    tokenizer_source,
)
from training_methods.transfer_learning.prompting import Messages

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

ANSWERS_FILE = "answers.jsonl"
SUMMARY_FILE = "evaluation.json"
DEFAULT_OUTPUT_DIR = Path("outputs/evaluation")
ADAPTER_OUTPUT_SUBDIR = "evaluation"
ROW_BASE, ROW_FINE_TUNED, ROW_GGUF = "base", "fine-tuned", "gguf"


@dataclass
class RowResult:
    """The scores of one row: how many answers contain a reference, token F1, answer length."""

    row: str
    questions: int
    hits: int
    mean_f1: float
    mean_words: float
    seconds: float  # answering all questions
    load_seconds: float  # loading (and merging) the model

    @property
    def hit_rate(self) -> float:
        return self.hits / self.questions if self.questions else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "questions": self.questions,
            "hits": self.hits,
            "hit_rate": round(self.hit_rate, 4),
            "mean_f1": round(self.mean_f1, 4),
            "mean_words": round(self.mean_words, 2),
            "seconds": round(self.seconds, 2),
            "load_seconds": round(self.load_seconds, 2),
        }


@dataclass
class EvaluationReport:
    """What `evaluate_questions` measured and wrote."""

    rows: list[RowResult]
    answers_path: Path
    summary_path: Path
    inputs: dict[str, Any]
    answers: list[dict[str, Any]] = field(default_factory=list)  # the answers.jsonl records

    def row(self, name: str) -> RowResult:
        return next(r for r in self.rows if r.row == name)

    def table(self) -> str:
        return format_table(self.rows)

    def side_by_side(self, count: int) -> str:
        """Each row's answer to the first `count` questions, a hit marked with a tick."""
        blocks = []
        for index in range(min(count, self.inputs["question_count"])):
            found = [a for a in self.answers if a["index"] == index]
            if not found:
                continue
            lines = [
                f"Q{index + 1}: {found[0]['question']}  (reference: {found[0]['references'][0]})"
            ]
            width = max(len(a["row"]) for a in found)
            for answer in found:
                mark = "✓" if answer["hit"] else "✗"
                text = " ".join(answer["answer"].split())
                lines.append(f"  {answer['row'].ljust(width)} {mark} {text}")
            blocks.append("\n".join(lines))
        return "\n\n".join(blocks) + "\n"

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "rows": {r.row: r.to_dict() for r in self.rows}}


def format_table(rows: Sequence[RowResult]) -> str:
    """A markdown table: row | answered (hits/n, %) | token F1 | mean words | seconds."""
    header = ["row", "answered", "token F1", "mean words", "seconds"]
    body = [
        [
            r.row,
            f"{r.hits}/{r.questions} ({r.hit_rate:.0%})",
            f"{r.mean_f1:.3f}",
            f"{r.mean_words:.1f}",
            f"{r.seconds:.1f}",
        ]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def render(cells: list[str]) -> str:
        padded = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 1) + (":" if i else "-") for i, w in enumerate(widths)) + "|"
    return "\n".join([render(header), rule, *(render(line) for line in body)])


def score_row(
    row: str,
    questions: Sequence[Question],
    answers: Sequence[str],
    *,
    seconds: float,
    load_seconds: float,
) -> tuple[RowResult, list[dict[str, Any]]]:
    """The row's scores and its answers.jsonl records."""
    records, f1s = [], []
    for index, (question, answer) in enumerate(zip(questions, answers, strict=True)):
        f1s.append(token_f1(answer, question.references))
        records.append(
            {
                "row": row,
                "index": index,
                "question": question_text(question),
                "references": question.references,
                "answer": answer,
                "hit": contains_reference(answer, question.references),
                "f1": round(f1s[-1], 4),
                "words": word_count(answer),
            }
        )
    count = len(records)
    result = RowResult(
        row=row,
        questions=count,
        hits=sum(r["hit"] for r in records),
        mean_f1=sum(f1s) / count if count else 0.0,
        mean_words=sum(r["words"] for r in records) / count if count else 0.0,
        seconds=seconds,
        load_seconds=load_seconds,
    )
    return result, records


def default_output_dir(adapter: str | Path | None) -> Path:
    return Path(adapter) / ADAPTER_OUTPUT_SUBDIR if adapter is not None else DEFAULT_OUTPUT_DIR


def release_memory() -> None:
    """Return the memory of models no longer referenced, before the next one loads."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def evaluate_questions(
    questions_path: str | Path,
    *,
    model: str | None = None,
    adapter: str | Path | None = None,
    gguf: str | Path | None = None,
    output_dir: str | Path | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    system: str | None = None,
    limit: int | None = None,
    device: str | torch.device,
    progress: bool = False,
) -> EvaluationReport:
    """Ask the questions of each row (base, fine-tuned with `adapter`, `gguf`), score the answers
    and write answers.jsonl and evaluation.json to `output_dir` (default: `<adapter>/evaluation`
    with an adapter, else outputs/evaluation). See the module docstring."""
    from shared_utils.training_utils import resolve_device

    # Every check that can fail runs before the first model loads.
    for name, value in (("--max-new-tokens", max_new_tokens), ("--batch-size", batch_size)):
        if value < 1:
            raise ConfigurationError(f"{name} {value}: must be a positive integer")
    if limit is not None and limit < 1:
        raise ConfigurationError(f"--limit {limit}: must be a positive integer")
    if model is None and adapter is None:
        raise ConfigurationError(
            "evaluate needs --model BASE (a folder, hub id or .gguf file) or --adapter DIR (a "
            "train-lora/train-qlora output, whose base is named in its adapter_config.json)"
        )
    questions = read_questions(questions_path)[:limit]
    source = resolve_source(model, adapter)
    if gguf is not None:
        if not Path(gguf).is_file():
            raise ConfigurationError(
                f"--gguf {gguf}: no such file — give a .gguf file written by `export`"
            )
        import_llama_cpp("--gguf runs the file in llama.cpp")
    torch_device = resolve_device(device) if isinstance(device, str) else device
    output_dir = Path(output_dir) if output_dir is not None else default_output_dir(adapter)
    created = not output_dir.exists()
    output_dir.mkdir(parents=True, exist_ok=True)  # unwritable: fail now, not after a row
    try:
        return _evaluate_rows(
            questions,
            source,
            gguf=gguf,
            output_dir=output_dir,
            inputs={
                "questions": str(questions_path),
                "question_count": len(questions),
                "model": source.model,
                "adapter": str(source.adapter) if source.adapter is not None else None,
                "gguf": str(gguf) if gguf is not None else None,
                "tokenizer": tokenizer_source(source),
                "max_new_tokens": max_new_tokens,
                "batch_size": batch_size,
                "system": system,
                "limit": limit,
                "device": str(torch_device),
            },
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            system=system,
            device=torch_device,
            progress=progress,
        )
    except BaseException:
        if created and output_dir.is_dir() and not any(output_dir.iterdir()):
            output_dir.rmdir()  # a run that failed before its first row leaves no empty folder
        raise


def _evaluate_rows(
    questions: list[Question],
    source: ModelSource,
    *,
    gguf: str | Path | None,
    output_dir: Path,
    inputs: dict[str, Any],
    max_new_tokens: int,
    batch_size: int,
    system: str | None,
    device: torch.device,
    progress: bool,
) -> EvaluationReport:
    """The rows of `evaluate_questions`, once its inputs are checked; each row is written as soon
    as it is scored."""
    from shared_utils.chat_templates import ensure_chat_template
    from shared_utils.file_utils import atomic_write_json, atomic_write_jsonl
    from training_methods.transfer_learning.model_loading import load_tokenizer

    tokenizer_from = tokenizer_source(source)
    tokenizer = load_tokenizer(tokenizer_from)
    if ensure_chat_template(tokenizer):
        logger.info("%s has no chat template: using the toolkit's default", tokenizer_from)
    prompts = [prompt_messages(question, system) for question in questions]

    report = EvaluationReport(
        rows=[],
        answers_path=output_dir / ANSWERS_FILE,
        summary_path=output_dir / SUMMARY_FILE,
        inputs=inputs,
    )

    def record(result: RowResult, records: list[dict[str, Any]]) -> None:
        report.rows.append(result)
        report.answers.extend(records)
        atomic_write_jsonl(report.answers_path, report.answers)
        atomic_write_json(report.summary_path, report.to_dict())

    hf_rows = [(ROW_BASE, None)]
    if source.adapter is not None:
        hf_rows.append((ROW_FINE_TUNED, source.adapter))
    ids: list[list[int]] = []
    for row, row_adapter in hf_rows:
        ids, result, records = _transformers_row(
            row,
            questions,
            prompts,
            ids,
            model=source.model,
            adapter=row_adapter,
            tokenizer=tokenizer,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            device=device,
            progress=progress,
        )
        record(result, records)
    if gguf is not None:
        record(
            *_gguf_row(
                gguf,
                questions,
                prompts,
                ids,
                max_new_tokens=max_new_tokens,
                device=device,
                progress=progress,
            )
        )
    return report


def _transformers_row(
    row: str,
    questions: Sequence[Question],
    prompts: Sequence[Messages],
    ids: list[list[int]],
    *,
    model: str,
    adapter: Path | None,
    tokenizer: PreTrainedTokenizerBase,
    max_new_tokens: int,
    batch_size: int,
    device: torch.device,
    progress: bool,
) -> tuple[list[list[int]], RowResult, list[dict[str, Any]]]:
    """One transformers row: the model loaded (the adapter merged in), the questions answered in
    batches and scored, the model released. The prompts are tokenised with the first row's model
    when `ids` is empty and returned: every row has the same base config and tokenizer."""
    started = time.perf_counter()
    loaded, _ = load_for_inference(model, adapter, device)
    load_seconds = time.perf_counter() - started
    if not ids:
        ids = prompt_token_ids(loaded, tokenizer, prompts, max_new_tokens)
    started = time.perf_counter()
    answers = greedy_answers(
        loaded,
        tokenizer,
        ids,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
        description=row,
    )
    seconds = time.perf_counter() - started
    del loaded  # before the next model loads
    release_memory()
    return ids, *score_row(row, questions, answers, seconds=seconds, load_seconds=load_seconds)


def _gguf_row(
    gguf: str | Path,
    questions: Sequence[Question],
    prompts: Sequence[Messages],
    ids: Sequence[list[int]],
    *,
    max_new_tokens: int,
    device: torch.device,
    progress: bool,
) -> tuple[RowResult, list[dict[str, Any]]]:
    """The GGUF row: the file run in-process by llama.cpp, with a context that fits the longest
    prompt (`ids`, as the toolkit's tokenizer counts it) and its answer."""
    import torch

    started = time.perf_counter()
    llm = load_gguf(
        gguf,
        n_ctx=gguf_context(ids, max_new_tokens),
        n_threads=torch.get_num_threads(),  # the thread count torch was given
        gpu=device.type == "cuda",
    )
    load_seconds = time.perf_counter() - started
    try:
        started = time.perf_counter()
        answers = gguf_answers(
            llm, prompts, max_new_tokens=max_new_tokens, progress=progress, description=ROW_GGUF
        )
        seconds = time.perf_counter() - started
    finally:
        llm.close()
    return score_row(ROW_GGUF, questions, answers, seconds=seconds, load_seconds=load_seconds)
