"""What the teacher is asked, and how its reply is read: small pure functions.

A small teacher writes a grounded pair about one or two sentences and invents when given a whole
chunk (SmolLM2-135M repeats one question or makes up facts), so each request is about a window of
`sentences_per_pair` sentences of a chunk, in the document's language. Replies are JSON objects
`{"question": ..., "answer": ...}`; `parse_pair` also reads one wrapped in a code fence or in prose,
which is what a model that ignores the schema writes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from document_processing.converters.sentences import sentence_spans

# Bump when a prompt, the schema or the window rule changes: cached replies of another version are
# not reused.
PROMPT_VERSION = 2
JUDGE_PROMPT_VERSION = 2

# The lengths bound what a grammar lets a rambling small model write, so that a reply closes its
# JSON within max_tokens (about 150 tokens) instead of being cut off unparseable.
PAIR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "question": {"type": "string", "minLength": 8, "maxLength": 200},
        "answer": {"type": "string", "minLength": 1, "maxLength": 300},
    },
    "required": ["question", "answer"],
}
RATING_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"rating": {"type": "integer", "minimum": 1, "maximum": 5}},
    "required": ["rating"],
}

# The languages instruction_records has function words for (detect_language's codes).
LANGUAGE_NAMES = {
    "en": "English",
    "de": "German",
    "fr": "French",
    "es": "Spanish",
    "it": "Italian",
    "pt": "Portuguese",
    "nl": "Dutch",
}

PAIR_SYSTEM = (
    "You write reading-test questions. Read the passage and write one question that the passage "
    "answers, and its short answer taken from the passage. The question names what it is about. "
    "Write both in {language}. Reply with JSON only: "
    '{{"question": "...", "answer": "..."}}'
)
PAIR_USER = "Passage: {passage}"
JUDGE_SYSTEM = (
    "You check reading-test questions. Rate from 1 to 5 how well the answer answers the question "
    "using only the passage: 5 correct and supported by the passage, 1 wrong or not in the "
    'passage. Reply with JSON only: {"rating": N}'
)
JUDGE_USER = "Passage: {passage}\n\nQuestion: {question}\nAnswer: {answer}"

Messages = list[dict[str, str]]


@dataclass(frozen=True)
class Window:
    """The sentences of a chunk one pair is asked about."""

    index: int  # position among the chunk's windows
    text: str


def chunk_windows(text: str, sentences_per_window: int) -> list[Window]:
    """The chunk's sentences in consecutive groups of `sentences_per_window`; a last group shorter
    than half a window joins the one before, so no window is a stray fragment."""
    sentences = [
        " ".join(text[start:end].split())
        for start, end in sentence_spans(text)
        if any(ch.isalnum() for ch in text[start:end])
    ]
    groups = [
        sentences[i : i + sentences_per_window]
        for i in range(0, len(sentences), sentences_per_window)
    ]
    if len(groups) > 1 and 2 * len(groups[-1]) < sentences_per_window:
        last = groups.pop()
        groups[-1] = groups[-1] + last
    return [Window(index, " ".join(group)) for index, group in enumerate(groups)]


def pick_windows(windows: Sequence[Window], count: int) -> list[Window]:
    """`count` windows spread evenly over the chunk (all of them when there are no more)."""
    if len(windows) <= count:
        return list(windows)
    step = len(windows) / count
    return [windows[int(i * step)] for i in range(count)]


def language_name(code: str | None) -> str:
    return LANGUAGE_NAMES.get(code or "", "the language of the passage")


def pair_messages(passage: str, *, language: str | None) -> Messages:
    """The request for one pair about `passage`. The passage alone: given the document's title
    and section as well, SmolLM2 asked about the title ("Who We Are") instead of the passage."""
    return [
        {"role": "system", "content": PAIR_SYSTEM.format(language=language_name(language))},
        {"role": "user", "content": PAIR_USER.format(passage=passage)},
    ]


def judge_messages(passage: str, question: str, answer: str) -> Messages:
    return [
        {"role": "system", "content": JUDGE_SYSTEM},
        {
            "role": "user",
            "content": JUDGE_USER.format(passage=passage, question=question, answer=answer),
        },
    ]


_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S | re.I)


def _json_objects(text: str) -> list[Any]:
    """Every JSON value that parses from a `{` of `text`, in order (the whole text first)."""
    found = []
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for candidate in candidates:
        candidate = candidate.strip()
        for match in re.finditer(r"\{", candidate):
            try:
                value, _ = decoder.raw_decode(candidate, match.start())
            except json.JSONDecodeError:
                continue
            found.append(value)
            break
    return found


def _field(record: dict[str, Any], name: str) -> Any:
    for key, value in record.items():
        if isinstance(key, str) and key.strip().casefold() == name:
            return value
    return None


def parse_pair(text: str) -> tuple[str, str] | None:
    """(question, answer) from a reply, or None when it holds no object with both as text."""
    for value in _json_objects(text):
        if isinstance(value, list) and value and isinstance(value[0], dict):
            value = value[0]
        if not isinstance(value, dict):
            continue
        question, answer = _field(value, "question"), _field(value, "answer")
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        if isinstance(question, str) and isinstance(answer, str):
            question, answer = " ".join(question.split()), " ".join(answer.split())
            if question and answer:
                return question, answer
    return None


def parse_rating(text: str) -> int | None:
    """The 1-5 rating of a judge reply, or None."""
    for value in _json_objects(text):
        if isinstance(value, dict):
            rating = _field(value, "rating")
            if isinstance(rating, str) and rating.strip().isdigit():
                rating = int(rating.strip())
            if isinstance(rating, (int, float)) and not isinstance(rating, bool):
                if 1 <= rating <= 5:
                    return round(rating)
    return None
