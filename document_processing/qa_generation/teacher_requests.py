"""What the teacher is asked: one pair request per chosen window of sentences of each chunk, and
one judge request per kept pair, each with the cache key of everything that shapes its reply."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from document_processing.qa_generation import prompts
from document_processing.qa_generation.cache import cache_key
from document_processing.qa_generation.chunk_records import Chunk
from shared_utils.config import QaGenerationConfig


@dataclass(frozen=True)
class Request:
    key: str
    chunk: Chunk
    passage: str
    messages: list[dict[str, str]]
    schema: dict[str, Any]
    parse: Callable[[str], Any]


def pair_requests(
    chunks: list[Chunk],
    languages: dict[str, str | None],
    settings: QaGenerationConfig,
    teacher_identity: str,
) -> list[Request]:
    requests = []
    for chunk in chunks:
        language = languages.get(chunk.source)
        windows = prompts.chunk_windows(chunk.text, settings.sentences_per_pair)
        for window in prompts.pick_windows(windows, settings.pairs_per_chunk):
            messages = prompts.pair_messages(window.text, language=language)
            key = cache_key(
                "pair",
                prompts.PROMPT_VERSION,
                teacher_identity,
                settings.temperature,
                settings.max_tokens,
                chunk.text,
                messages,
            )
            requests.append(
                Request(key, chunk, window.text, messages, prompts.PAIR_SCHEMA, prompts.parse_pair)
            )
    return requests


def judge_request(
    pair: dict[str, Any], chunk: Chunk, settings: QaGenerationConfig, teacher: str
) -> Request:
    messages = prompts.judge_messages(chunk.text, pair["question"], pair["answer"])
    key = cache_key(
        "judge", prompts.JUDGE_PROMPT_VERSION, teacher, settings.max_tokens, chunk.text, messages
    )
    return Request(key, chunk, chunk.text, messages, prompts.RATING_SCHEMA, prompts.parse_rating)
