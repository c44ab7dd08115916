"""The `generate-qa` run: chunk records in, question/answer pairs out.

    read DATA_DIR's chunk records -> one request per window of sentences (pairs_per_chunk per
    chunk) -> teacher replies, cached as they finish -> parse -> filters -> (judge) -> splits by
    document -> OUT_DIR/qa/{train,valid,test}.jsonl (chat) and qa/alpaca/*.jsonl

Every reply is cached under a key of the chunk, the passage, the teacher and the prompt version
(`cache.ReplyCache`), so Ctrl-C, kill -9 or a teacher that dies loses nothing and a rerun asks
only what is missing; the filters run on the cached replies, so changing a threshold asks nothing
again. The report (`qa/qa_report.json`) counts what every step kept and dropped and names the
structured-output form the teacher took.

The steps live in modules named for them: chunk_records (reading DATA_DIR), teacher_requests
(what is asked, and its cache key), asker (asking: concurrency, retries, the cache),
pair_selection (filters and judge), outputs (the split files, the report).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from document_processing.qa_generation.asker import Asker
from document_processing.qa_generation.cache import ReplyCache
from document_processing.qa_generation.chunk_records import (
    Chunk,
    document_languages,
    read_chunks,
)
from document_processing.qa_generation.outputs import QA_DIR, QaResult, write_outputs
from document_processing.qa_generation.pair_selection import filter_pairs, judge_pairs
from document_processing.qa_generation.teacher_requests import pair_requests
from document_processing.qa_generation.teachers import Teacher, open_teacher
from shared_utils.config import ToolkitConfig
from shared_utils.errors import ConfigurationError
from shared_utils.file_utils import folder_lock

CACHE_DIR = ".qa_cache"
LOCK_FILE = ".generate_qa.lock"


def generate_qa(
    data_dir: Path,
    output_dir: Path,
    config: ToolkitConfig,
    *,
    progress: bool | None = None,
) -> QaResult:
    """Write question/answer pairs for the chunk records of `data_dir` (module docstring)."""
    settings = config.qa_generation
    settings.check()
    if not settings.teacher:
        raise ConfigurationError(
            "generate-qa needs a teacher: --teacher URL (an OpenAI-compatible server such as "
            "LM Studio http://localhost:1234/v1), --teacher FILE.gguf or --teacher MODEL (a "
            "transformers model folder or cached hub id)"
        )
    chunks = read_chunks(data_dir)
    languages = document_languages(chunks)
    api_key = os.environ.get(settings.api_key_env) or None
    teacher = open_teacher(
        settings.teacher,
        model=settings.teacher_model,
        api_key_env=settings.api_key_env,
        api_key=api_key,
        timeout=settings.request_timeout,
        max_retries=settings.max_retries,
        form=settings.structured_output,
        concurrency=settings.concurrency,
        context_size=settings.context_size,
        device=config.common.device,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    qa_dir = output_dir / QA_DIR
    started = time.perf_counter()
    try:
        with folder_lock(output_dir, LOCK_FILE, "generate-qa run"):
            cache = ReplyCache(output_dir / CACHE_DIR)
            try:
                return _generate(
                    chunks, languages, teacher, cache, config, qa_dir, progress, started
                )
            finally:
                cache.close()
    finally:
        teacher.close()


def _generate(
    chunks: list[Chunk],
    languages: dict[str, str | None],
    teacher: Teacher,
    cache: ReplyCache,
    config: ToolkitConfig,
    qa_dir: Path,
    progress: bool | None,
    started: float,
) -> QaResult:
    settings = config.qa_generation
    asker = Asker(teacher, cache, settings, progress=progress)
    # An HTTP teacher's model is known only once connected; the cache key needs it.
    connect = getattr(teacher, "connect", None)
    if connect is not None and settings.teacher_model is None:
        connect()
    requests = pair_requests(chunks, languages, settings, teacher.identity)
    asker.run(requests, "generate-qa")
    pairs, filter_report = filter_pairs(requests, cache, languages, settings)
    judge_report: dict[str, int] | None = None
    if settings.judge and pairs:
        pairs, judge_report = judge_pairs(pairs, asker, settings)
    return write_outputs(
        qa_dir,
        config,
        pairs=pairs,
        chunks=chunks,
        languages=languages,
        teacher=teacher,
        pairs_asked_for=len(requests),
        stats=asker.stats,
        filter_report=filter_report,
        judge_report=judge_report,
        started=started,
    )
