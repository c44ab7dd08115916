"""The `evaluate` command's question files: each line a question and its reference answers.

Question files are JSON Lines, one question a line, in either form (they may be mixed):

    {"question": "How often should I turn the pile?", "answers": ["every one to two weeks"]}
    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}

In a `messages` record the last turn is the assistant's reference answer and the turns before it
are the prompt (an `answers` list, when present, adds further references). `--system` is added to
questions without a system turn of their own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from shared_utils.errors import ConfigurationError, DataValidationError
from training_methods.transfer_learning.prompting import Messages

QUESTION_FORMS = '{"question": ..., "answers": [...]} or {"messages": [...]} records'


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
    from shared_utils.training_records import normalize_record

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
