"""Which pairs are kept: the cached replies parsed and passed through every filter (well formed,
in the document's language, grounded in the chunk, not a duplicate), then, when asked for, the
teacher's rating as judge. Each step counts what it kept for the report."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

from document_processing.qa_generation import filters, prompts
from document_processing.qa_generation.asker import Asker
from document_processing.qa_generation.cache import ReplyCache
from document_processing.qa_generation.teacher_requests import Request, judge_request
from shared_utils.config import QaGenerationConfig


def filter_pairs(
    requests: list[Request],
    cache: ReplyCache,
    languages: dict[str, str | None],
    settings: QaGenerationConfig,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The pairs of the cached replies that pass every filter, and what each step kept."""
    counts: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    forms: Counter[str] = Counter()
    kept: list[dict[str, Any]] = []
    seen: set[str] = set()
    kept_words: dict[str, list[set[str]]] = defaultdict(list)
    for request in requests:
        reply = cache.get(request.key)
        if reply is None:
            continue  # failed in this run: asked again next time
        counts["replies"] += 1
        forms[str(reply.get("form"))] += 1
        pair = prompts.parse_pair(str(reply.get("text", "")))
        if pair is None:
            continue
        counts["parsed"] += 1
        question, answer = pair
        chunk = request.chunk
        language = languages.get(chunk.source)
        reason = filters.check_pair(
            question, answer, passage=request.passage, chunk=chunk.text, language=language
        )
        if reason is not None:
            rejected[reason] += 1
            continue
        counts["well_formed"] += 1
        if filters.wrong_language(question, answer, language):
            continue
        counts["in_document_language"] += 1
        share = filters.grounding(answer, chunk.text, language)
        if share < settings.min_grounding:
            continue
        counts["grounded"] += 1
        key = filters.question_key(question)
        if key in seen:
            continue
        seen.add(key)
        counts["not_duplicate"] += 1
        if filters.near_duplicate(
            question, kept_words[chunk.source], settings.near_duplicate_threshold
        ):
            continue
        kept_words[chunk.source].append(set(filters.words(question)))
        counts["not_near_duplicate"] += 1
        kept.append({"question": question, "answer": answer, "chunk": chunk, "grounding": share})
    steps = [
        "replies",
        "parsed",
        "well_formed",
        "in_document_language",
        "grounded",
        "not_duplicate",
        "not_near_duplicate",
    ]
    report = {
        "survivors": {step: counts[step] for step in steps},
        "rejected_as_malformed": dict(sorted(rejected.items())),
        "forms_of_cached_replies": dict(forms),
    }
    return kept, report


def judge_pairs(
    pairs: list[dict[str, Any]],
    asker: Asker,
    settings: QaGenerationConfig,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The pairs the teacher, asked as judge, rates at least judge_min_rating (a pair it gave no
    rating is kept), and what it dropped."""
    requests = [
        judge_request(pair, pair["chunk"], settings, asker.teacher.identity) for pair in pairs
    ]
    asker.run(requests, "judge")
    kept, low, unparseable = [], 0, 0
    for pair, request in zip(pairs, requests, strict=True):
        reply = asker.cache.get(request.key)
        rating = prompts.parse_rating(str(reply.get("text", ""))) if reply else None
        if rating is None:
            unparseable += 1  # an unrated pair is kept: the judge failed, not the pair
        elif rating < settings.judge_min_rating:
            low += 1
            continue
        pair["rating"] = rating
        kept.append(pair)
    return kept, {"rated_low": low, "not_rated": unparseable, "kept": len(kept)}
