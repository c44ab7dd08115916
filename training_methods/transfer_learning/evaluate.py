"""The `evaluate` command: did the fine-tuning teach anything? Base and fine-tuned side by side.

    evaluate_questions("questions.jsonl", adapter="outputs/run", gguf="outputs/export/run-f16.gguf")

asks every question of each row, greedily, and scores the answers against reference answers:

- Rows: `base` (the base model alone), `fine-tuned` (the adapter merged into the base in memory,
  as `chat` and `export` do) and `gguf` (an exported file run in-process by llama.cpp, the engine
  LM Studio uses, through the chat template stored in the file). One model is in memory at a time.
- Prompts: the chat template the adapter was trained with (the tokenizer saved in the adapter
  folder, else the model's, else the toolkit's default), for the base row too, so both rows are
  asked the very same token sequence. Prompts are rendered, tokenised and stopped (EOS and the
  generation config's end-of-turn ids) by `chat.ChatSession`, so an answer here is the answer
  `chat --temperature 0` gives.
- Decoding: greedy, in batches with left padding (prompts sorted by length, so little padding is
  needed), which gives the answers one-by-one greedy decoding gives. No repetition penalty and no
  sampling settings of the model's generation config: plain argmax, like llama.cpp at
  temperature 0.

Question files are JSON Lines, one question a line, in either form (they may be mixed):

    {"question": "How often should I turn the pile?", "answers": ["every one to two weeks"]}
    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}

In a `messages` record the last turn is the assistant's reference answer and the turns before it
are the prompt (an `answers` list, when present, adds further references). `--system` is added to
questions without a system turn of their own.

Scores are language-neutral small pure functions (no English article or stop-word removal); the
first two come from `shared_utils.word_tokens`, which generate-qa's filters use too:

- `normalize_text`: Unicode NFKC, casefold, whitespace collapsed. Accents are kept: "café" is
  not "cafe".
- `answer_tokens`: the normalised text without punctuation (Unicode categories P*), split at
  whitespace; every character of a script written without spaces between words (Chinese,
  Japanese kana, Thai, Lao, Khmer, Myanmar) is a token of its own, so Chinese and Japanese are
  scored by characters, also when mixed with spaced words.
- `contains_reference` (a hit): the normalised answer contains a normalised reference as a whole
  word sequence: a match glued to letters or digits of a spaced script does not count, so "4" is
  not found in "14" nor "no" in "not" (but neither is "cat" in "cats"); in Chinese or Japanese
  any occurrence counts.
- `token_f1`: SQuAD's token F1 over `answer_tokens`, the best over the references.
- `word_count`: the number of `answer_tokens` (a Chinese character counts as one word).

Outputs, in `output_dir`: `answers.jsonl` (one line per question per row) and `evaluation.json`
(per row: questions, hits, hit_rate, mean_f1, mean_words, seconds, load_seconds; and the inputs),
both rewritten atomically after every row, so an interrupted run keeps the rows it finished.
"""

from __future__ import annotations

import gc
import json
import logging
import time
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from shared_utils.errors import ConfigurationError, DataValidationError
from shared_utils.llama_cpp_runtime import import_llama_cpp
from shared_utils.word_tokens import answer_tokens, is_unspaced, normalize_text

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from training_methods.transfer_learning.export import ExportSource

logger = logging.getLogger(__name__)

ANSWERS_FILE = "answers.jsonl"
SUMMARY_FILE = "evaluation.json"
DEFAULT_OUTPUT_DIR = Path("outputs/evaluation")
ADAPTER_OUTPUT_SUBDIR = "evaluation"
ROW_BASE, ROW_FINE_TUNED, ROW_GGUF = "base", "fine-tuned", "gguf"
QUESTION_FORMS = '{"question": ..., "answers": [...]} or {"messages": [...]} records'

Messages = list[dict[str, str]]

# --------------------------------------------------------------------------------------------------
# Scoring: small pure functions
# --------------------------------------------------------------------------------------------------


def _is_word_char(char: str) -> bool:
    """A letter, digit or combining mark of a script written with spaces between words."""
    return (char.isalnum() or unicodedata.category(char).startswith("M")) and not is_unspaced(char)


def word_count(text: str) -> int:
    return len(answer_tokens(text))


def _occurs_as_words(text: str, needle: str) -> bool:
    """Whether `needle` occurs in `text` not glued to a letter or digit on either side."""
    start = text.find(needle)
    while start != -1:
        end = start + len(needle)
        glued_left = start > 0 and _is_word_char(text[start - 1]) and _is_word_char(needle[0])
        glued_right = end < len(text) and _is_word_char(text[end]) and _is_word_char(needle[-1])
        if not (glued_left or glued_right):
            return True
        start = text.find(needle, start + 1)
    return False


def contains_reference(answer: str, references: Iterable[str]) -> bool:
    """A hit: the normalised answer contains one of the normalised references as whole words."""
    text = normalize_text(answer)
    return any(
        _occurs_as_words(text, needle)
        for needle in (normalize_text(reference) for reference in references)
        if needle
    )


def _f1(predicted: list[str], reference: list[str]) -> float:
    if not predicted or not reference:
        return float(predicted == reference)  # SQuAD: two empty answers agree
    common = sum((Counter(predicted) & Counter(reference)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(reference)
    return 2 * precision * recall / (precision + recall)


def token_f1(answer: str, references: Iterable[str]) -> float:
    """SQuAD's token F1 between the answer and its closest reference."""
    predicted = answer_tokens(answer)
    return max((_f1(predicted, answer_tokens(reference)) for reference in references), default=0.0)


# --------------------------------------------------------------------------------------------------
# Question files
# --------------------------------------------------------------------------------------------------


class Question(NamedTuple):
    """A question (its text, or a conversation ending with a user turn) and its references."""

    prompt: str | Messages
    references: list[str]


def question_text(question: Question) -> str:
    """The text asked: the question, or the last user turn of a conversation."""
    if isinstance(question.prompt, str):
        return question.prompt
    return next(m["content"] for m in reversed(question.prompt) if m["role"] == "user")


def prompt_messages(question: Question, system: str | None = None) -> Messages:
    """The conversation to answer: `system` first unless the question has its own system turn."""
    if isinstance(question.prompt, str):
        messages = [{"role": "user", "content": question.prompt}]
    else:
        messages = [dict(m) for m in question.prompt]
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    return messages


def read_questions(path: str | Path) -> list[Question]:
    """Every question of a JSONL file (see the module docstring); a bad line raises
    DataValidationError naming `FILE:LINE`, a missing file ConfigurationError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigurationError(
            f"--questions {path}: no such file — give a JSONL file of {QUESTION_FORMS}"
        )
    questions = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                raise DataValidationError(
                    f"{where}: not UTF-8 text — save the file as UTF-8"
                ) from None
            if line.strip():
                questions.append(parse_question(line, where))
    if not questions:
        raise DataValidationError(f"{path}: no questions — write one of {QUESTION_FORMS} a line")
    return questions


def parse_question(line: str, where: str) -> Question:
    """One line of a question file; `where` (FILE:LINE) starts every error message."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataValidationError(
            f"{where}: not valid JSON ({exc.msg}, column {exc.colno}) — fix or remove the line"
        ) from None
    if not isinstance(record, dict):
        raise DataValidationError(
            f"{where}: each line must be a JSON object, got {type(record).__name__}"
        )
    if "messages" in record:
        return _conversation_question(record, where)
    if "question" in record:
        question = record["question"]
        if not isinstance(question, str) or not question.strip():
            raise DataValidationError(f"{where}: `question` must be a non-empty string")
        return Question(question, _references(record, where, required=True))
    keys = ", ".join(sorted(record)) or "none"
    raise DataValidationError(
        f"{where}: no `question` or `messages` (keys: {keys}) — write {QUESTION_FORMS}"
    )


def _references(record: dict[str, Any], where: str, *, required: bool) -> list[str]:
    if "answers" not in record:
        if required:
            raise DataValidationError(
                f'{where}: no `answers` — give the reference answers, e.g. "answers": ["Paris"]'
            )
        return []
    answers = record["answers"]
    if not isinstance(answers, list) or not answers:
        raise DataValidationError(
            f"{where}: `answers` must be a non-empty list of strings, got "
            f"{json.dumps(answers, ensure_ascii=False)[:40]}"
        )
    for index, answer in enumerate(answers):
        if not isinstance(answer, str) or not answer.strip():
            raise DataValidationError(
                f"{where}: answers[{index}] must be a non-empty string, got "
                f"{json.dumps(answer, ensure_ascii=False)[:40]}"
            )
    return list(answers)


def _conversation_question(record: dict[str, Any], where: str) -> Question:
    from shared_utils.data_loader import normalize_record

    row = normalize_record(record, "chat", where)  # validates roles and contents
    if row is None:
        raise DataValidationError(
            f"{where}: `messages` has no assistant answer — end the conversation with the "
            "assistant's reference answer"
        )
    messages = row["messages"]
    last = messages[-1]
    if last["role"] != "assistant":
        raise DataValidationError(
            f"{where}: the last turn of `messages` is the {last['role']}'s, not the assistant's — "
            "end the conversation with the reference answer"
        )
    if not last["content"].strip():
        raise DataValidationError(f"{where}: the last assistant turn (the reference) is empty")
    prompt = messages[:-1]
    if not any(m["role"] == "user" for m in prompt):
        raise DataValidationError(f"{where}: `messages` has no user turn before the answer")
    return Question(prompt, [last["content"], *_references(record, where, required=False)])


# --------------------------------------------------------------------------------------------------
# Answering
# --------------------------------------------------------------------------------------------------


def prompt_token_ids(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Messages],
    max_new_tokens: int,
) -> list[list[int]]:
    """Each conversation rendered with the chat template and tokenised as `chat` does it."""
    from training_methods.transfer_learning.chat import ChatSession

    session = ChatSession(model, tokenizer, max_new_tokens=max_new_tokens, temperature=0.0)
    ids = []
    for index, messages in enumerate(prompts):
        session.messages = list(messages)
        ids.append(session.prompt_ids())
        if len(session.messages) != len(messages):  # ChatSession dropped turns to make it fit
            raise DataValidationError(
                f"question {index}: the conversation and --max-new-tokens {max_new_tokens} do not "
                "fit the model's context — shorten the conversation or lower --max-new-tokens"
            )
    return ids


def greedy_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Sequence[list[int]],
    *,
    max_new_tokens: int = 96,
    batch_size: int = 8,
    progress: bool = False,
    description: str = "answering",
) -> list[str]:
    """Greedy answers to tokenised prompts, `batch_size` at a time with left padding, cut at the
    first stop id (EOS, end of turn) and decoded without special tokens, as `chat` shows them."""
    import torch
    from tqdm.auto import tqdm

    from training_methods.transfer_learning.chat import ChatSession

    stops = ChatSession(model, tokenizer).stop_ids()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    # Similar lengths batched together: less padding, the same answers.
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    answers: list[str] = [""] * len(prompt_ids)
    with tqdm(total=len(order), desc=description, unit="q", disable=not progress) as bar:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(prompt_ids[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (batch, width)
            attention_mask = torch.zeros_like(input_ids)
            for row, index in enumerate(batch):
                ids = prompt_ids[index]
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                attention_mask[row, width - len(ids) :] = 1
            with torch.inference_mode():
                output = model.generate(
                    input_ids=input_ids.to(model.device),
                    attention_mask=attention_mask.to(model.device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    repetition_penalty=1.0,  # plain argmax, whatever the model's config says
                    eos_token_id=stops,
                    pad_token_id=pad_id,
                )  # (batch, width + generated)
            for row, index in enumerate(batch):
                new_tokens = output[row, width:].tolist()
                end = next((i for i, t in enumerate(new_tokens) if t in stops), len(new_tokens))
                answers[index] = tokenizer.decode(
                    new_tokens[:end], skip_special_tokens=True
                ).strip()
            bar.update(len(batch))
    return answers


def load_gguf(
    gguf: str | Path, *, n_ctx: int = 2048, n_threads: int | None = None, gpu: bool = False
) -> Any:
    """A `llama_cpp.Llama` for the file; one-line ConfigurationError when llama.cpp refuses it."""
    llama_cpp = import_llama_cpp("--gguf runs the file in llama.cpp")
    try:
        return llama_cpp.Llama(
            model_path=str(gguf),
            n_ctx=n_ctx,
            n_threads=n_threads,
            n_gpu_layers=-1 if gpu and llama_cpp.llama_supports_gpu_offload() else 0,
            verbose=False,
        )
    except (ValueError, RuntimeError) as exc:
        raise ConfigurationError(
            f"--gguf {gguf}: llama.cpp cannot load it ({exc}) — give a GGUF file written by "
            "`export` or another llama.cpp-compatible tool"
        ) from None


def gguf_answers(
    llm: Any,
    prompts: Sequence[Messages],
    *,
    max_new_tokens: int = 96,
    progress: bool = False,
) -> list[str]:
    """Greedy answers of a llama.cpp model (`load_gguf`), through the chat template stored in
    its file, stopped at the EOS stored there."""
    from tqdm.auto import tqdm

    answers = []
    for index, messages in enumerate(tqdm(prompts, desc=ROW_GGUF, unit="q", disable=not progress)):
        try:
            reply = llm.create_chat_completion(
                messages=messages, temperature=0.0, max_tokens=max_new_tokens
            )
        except ValueError as exc:  # e.g. the prompt does not fit the context
            raise DataValidationError(f"question {index}: llama.cpp refused it ({exc})") from None
        answers.append((reply["choices"][0]["message"]["content"] or "").strip())
    return answers


# --------------------------------------------------------------------------------------------------
# The evaluation
# --------------------------------------------------------------------------------------------------


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


def gguf_context(prompt_ids: Sequence[list[int]], max_new_tokens: int) -> int:
    """llama.cpp's context: the longest prompt (as the toolkit's tokenizer counts it; an export's
    own tokenizer counts alike, another file's may differ, hence the margin) plus the answer."""
    longest = max(len(ids) for ids in prompt_ids)
    needed = 2 * longest + max_new_tokens + 64
    return max(512, -(-needed // 256) * 256)


def evaluate_questions(
    questions_path: str | Path,
    *,
    model: str | None = None,
    adapter: str | Path | None = None,
    gguf: str | Path | None = None,
    output_dir: str | Path | None = None,
    max_new_tokens: int = 96,
    batch_size: int = 8,
    system: str | None = None,
    limit: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = False,
) -> EvaluationReport:
    """Ask the questions of each row (base, fine-tuned with `adapter`, `gguf`), score the answers
    and write answers.jsonl and evaluation.json to `output_dir` (default: `<adapter>/evaluation`
    with an adapter, else outputs/evaluation). See the module docstring."""
    from shared_utils.training_utils import resolve_device
    from training_methods.transfer_learning.export import resolve_source, tokenizer_source

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
    source: ExportSource,
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
    """The rows of `evaluate_questions`, once its inputs are checked."""
    from shared_utils.data_loader import ensure_chat_template
    from shared_utils.file_utils import atomic_write_json, atomic_write_jsonl
    from training_methods.transfer_learning.chat import load_chat_model
    from training_methods.transfer_learning.export import tokenizer_source
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
        started = time.perf_counter()
        loaded, _ = load_chat_model(source.model, row_adapter, device)
        load_seconds = time.perf_counter() - started
        if not ids:  # the same base config and tokenizer for both rows: tokenised once
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
        record(*score_row(row, questions, answers, seconds=seconds, load_seconds=load_seconds))

    if gguf is not None:
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
            answers = gguf_answers(llm, prompts, max_new_tokens=max_new_tokens, progress=progress)
            seconds = time.perf_counter() - started
        finally:
            llm.close()
        record(*score_row(ROW_GGUF, questions, answers, seconds=seconds, load_seconds=load_seconds))
    return report
