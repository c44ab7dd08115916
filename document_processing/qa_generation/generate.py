"""The `generate-qa` run: chunk records in, question/answer pairs out.

    read DATA_DIR's chunk records -> one request per window of sentences (pairs_per_chunk per
    chunk) -> teacher replies, cached as they finish -> parse -> filters -> (judge) -> splits by
    document -> OUT_DIR/qa/{train,valid,test}.jsonl (chat) and qa/alpaca/*.jsonl

Every reply is cached under a key of the chunk, the passage, the teacher and the prompt version
(`cache.ReplyCache`), so Ctrl-C, kill -9 or a teacher that dies loses nothing and a rerun asks
only what is missing; the filters run on the cached replies, so changing a threshold asks nothing
again. The report (`qa/qa_report.json`) counts what every step kept and dropped and names the
structured-output form the teacher took.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from document_processing.qa_generation import filters, prompts
from document_processing.qa_generation.cache import ReplyCache, cache_key
from document_processing.qa_generation.teachers import (
    RequestFailed,
    Teacher,
    TeacherError,
    open_teacher,
)
from shared_utils.config import QaGenerationConfig, ToolkitConfig, dump_config
from shared_utils.errors import ConfigurationError, DataValidationError

logger = logging.getLogger(__name__)

QA_DIR = "qa"
CACHE_DIR = ".qa_cache"
LOCK_FILE = ".generate_qa.lock"
REPORT = "qa_report.json"
RESOLVED_CONFIG = "resolved_config.yaml"
SPLITS = ("train", "valid", "test")
CHUNK_FILES = ("train.jsonl", "valid.jsonl")
RETRY_TEMPERATURE = 0.7  # a reply that did not parse is asked again with some sampling


# --------------------------------------------------------------------------------------------------
# Chunk records
# --------------------------------------------------------------------------------------------------


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


def split_documents(sources: list[str], valid_ratio: float, test_ratio: float) -> dict[str, str]:
    """Each document's split: whole documents, chosen by a hash of their path (the lowest hashes
    go to test, the next to valid), at least one document per split with a positive ratio while
    one is left for training."""
    ranked = sorted(set(sources), key=lambda s: hashlib.sha256(s.encode()).hexdigest())
    splits = dict.fromkeys(ranked, "train")
    start = 0
    for split, ratio in (("test", test_ratio), ("valid", valid_ratio)):
        if ratio <= 0:
            continue
        count = min(len(ranked) - start - 1, max(1, math.floor(ratio * len(ranked) + 0.5)))
        for source in ranked[start : start + max(count, 0)]:
            splits[source] = split
        start += max(count, 0)
    return splits


# --------------------------------------------------------------------------------------------------
# Requests
# --------------------------------------------------------------------------------------------------


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


@dataclass
class AskStats:
    asked: int = 0
    cached: int = 0
    failed: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    retried_unparseable: int = 0
    seconds: float = 0.0
    parsed_new: int = 0  # replies asked in this run that parsed


class Asker:
    """Runs requests against the teacher, `concurrency` at a time, caching every finished reply.

    A reply that does not parse is asked again (up to max_retries, with some sampling) and then
    cached as it is: it is counted, and never stops the run. A request that fails for good
    (errors, timeouts, empty replies after retries) is not cached, so a rerun asks it again; after
    `max_consecutive_failures` of them in a row, or as soon as the server cannot be reached, the
    run stops with TeacherError, the finished replies safe in the cache.
    """

    def __init__(
        self,
        teacher: Teacher,
        cache: ReplyCache,
        settings: QaGenerationConfig,
        *,
        progress: bool | None,
    ) -> None:
        self.teacher = teacher
        self.cache = cache
        self.settings = settings
        self.progress = progress
        self.concurrency = min(settings.concurrency, teacher.max_concurrency or 1_000_000)
        self.stats = AskStats()
        self._lock = threading.Lock()
        self._consecutive = 0
        self._stop: TeacherError | None = None
        self._form_known = teacher.form is not None

    def _ask_once(self, request: Request, first: bool, temperature: float) -> str:
        kwargs = {"temperature": temperature, "max_tokens": self.settings.max_tokens}
        if first and not self._form_known:
            parses = lambda text: request.parse(text) is not None  # noqa: E731
            reply = self.teacher.choose_form(request.messages, request.schema, parses, **kwargs)
            self._form_known = True
            return reply
        return self.teacher.complete(request.messages, request.schema, **kwargs)

    def _ask(self, request: Request, first: bool = False) -> None:
        """Ask one request (with its parse retries) and cache the reply; RequestFailed when it
        failed for good."""
        temperature = self.settings.temperature
        attempts = 0
        while True:
            attempts += 1
            reply = self._ask_once(request, first and attempts == 1, temperature)
            parsed = request.parse(reply) is not None
            if parsed or attempts > self.settings.max_retries:
                break
            with self._lock:
                self.stats.retried_unparseable += 1
            temperature = max(temperature, RETRY_TEMPERATURE)
        self.cache.put(
            request.key, {"text": reply, "form": self.teacher.form, "attempts": attempts}
        )
        with self._lock:
            self.stats.asked += 1
            self.stats.parsed_new += parsed
            self._consecutive = 0

    def _failed(self, exc: RequestFailed) -> None:
        with self._lock:
            self.stats.failed += 1
            self.stats.failures[exc.reason] += 1
            self._consecutive += 1
            done = self.stats.asked + self.stats.cached
            if self._stop is None and exc.unreachable:
                self._stop = TeacherError(
                    f"the teacher stopped answering ({exc.reason}) after {done} replies; they are "
                    f"cached in {self.cache.path} — start the server again and rerun: only what "
                    "is missing is asked"
                )
            elif self._stop is None and self._consecutive >= self.settings.max_consecutive_failures:
                self._stop = TeacherError(
                    f"{self._consecutive} requests in a row failed (last: {exc.reason}); stopped "
                    f"after {done} replies, cached in {self.cache.path} — fix the teacher and "
                    "rerun: only what is missing is asked"
                )

    def run(self, requests: list[Request], description: str) -> None:
        """Ask every request not yet cached; raises TeacherError when the run had to stop."""
        from tqdm import tqdm

        todo = [r for r in requests if self.cache.get(r.key) is None]
        self.stats.cached += len(requests) - len(todo)
        if not todo:
            return
        bar = tqdm(
            total=len(todo),
            unit="req",
            desc=description,
            disable=None if self.progress is None else not self.progress,
        )
        started = time.perf_counter()
        try:
            self._run(todo, bar, started)
        finally:
            self.stats.seconds += time.perf_counter() - started
            bar.close()
        if self._stop is not None:
            raise self._stop

    def _run(self, todo: list[Request], bar: Any, started: float) -> None:
        def step(request: Request, first: bool = False) -> None:
            try:
                if self._stop is None:
                    self._ask(request, first)
            except RequestFailed as exc:
                self._failed(exc)
            bar.update(1)
            minutes = max(time.perf_counter() - started, 1e-6) / 60
            bar.set_postfix_str(f"{self.stats.parsed_new / minutes:.1f} pairs/min", refresh=False)

        # The first request alone: it settles the structured-output form for the rest.
        step(todo[0], first=True)
        if self._stop is not None or len(todo) == 1:
            return
        rest: Iterator[Request] = iter(todo[1:])
        pool = ThreadPoolExecutor(max_workers=self.concurrency)
        pending: set[Future] = set()
        try:
            for request in rest:
                if len(pending) >= self.concurrency:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        future.result()
                if self._stop is not None:
                    break
                pending.add(pool.submit(step, request))
            for future in pending:
                future.result()
        except BaseException:
            # Ctrl-C: no new request starts, and the run does not wait for those in flight (the
            # teacher's connections close on the way out); every finished reply is cached.
            self._stop = self._stop or TeacherError("interrupted")
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


@dataclass
class QaResult:
    pairs: dict[str, list[dict[str, Any]]]
    report: dict[str, Any]
    qa_dir: Path
    outputs: list[str]

    @property
    def total(self) -> int:
        return sum(len(pairs) for pairs in self.pairs.values())


def _pair_record(pair: dict[str, Any], teacher: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A kept pair as a chat record and an alpaca record, with where it came from."""
    chunk: Chunk = pair["chunk"]
    common = {
        "source": chunk.source,
        "chunk_id": chunk.chunk_id,
        "page": chunk.page,
        "section": chunk.section,
        "kind": "qa",
        "teacher": teacher,
        "grounding": round(pair["grounding"], 3),
    }
    chat = {
        "messages": [
            {"role": "user", "content": pair["question"]},
            {"role": "assistant", "content": pair["answer"]},
        ],
        **common,
    }
    alpaca = {
        "instruction": pair["question"],
        "input": "",
        "output": pair["answer"],
        "prompt": pair["question"],
        "completion": pair["answer"],
        **common,
    }
    return chat, alpaca


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


def _judge(
    pairs: list[dict[str, Any]],
    asker: Asker,
    settings: QaGenerationConfig,
) -> tuple[list[dict[str, Any]], dict[str, int]]:
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


def generate_qa(
    data_dir: Path,
    output_dir: Path,
    config: ToolkitConfig,
    *,
    progress: bool | None = None,
) -> QaResult:
    """Write question/answer pairs for the chunk records of `data_dir` (module docstring)."""
    from shared_utils.file_utils import folder_lock

    settings = config.qa_generation
    settings.check()
    if not settings.teacher:
        raise ConfigurationError(
            "generate-qa needs a teacher: --teacher URL (an OpenAI-compatible server such as "
            "LM Studio http://localhost:1234/v1) or --teacher FILE.gguf"
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
    from shared_utils.file_utils import atomic_write_json, atomic_write_text

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
        pairs, judge_report = _judge(pairs, asker, settings)
    split_of = split_documents(
        [c.source for c in chunks], settings.valid_ratio, settings.test_ratio
    )
    by_split: dict[str, list[dict[str, Any]]] = {split: [] for split in SPLITS}
    for pair in pairs:
        by_split[split_of[pair["chunk"].source]].append(pair)
    outputs = _write_splits(qa_dir, by_split, teacher.description)
    stats = asker.stats
    minutes = stats.seconds / 60
    report = {
        "teacher": {
            "teacher": teacher.description,
            "structured_output": teacher.form or _cached_form(filter_report),
            "probe": getattr(teacher, "probe", {}),
        },
        "documents": len(split_of),
        "chunks": len(chunks),
        "languages": {source: language for source, language in sorted(languages.items())},
        "requests": {
            "pairs_asked_for": len(requests),
            "from_cache": stats.cached,
            "asked": stats.asked,
            "failed": stats.failed,
            "failures": dict(stats.failures.most_common(5)),
            "unparseable_retried": stats.retried_unparseable,
            "seconds": round(stats.seconds, 1),
            "replies_per_minute": round(stats.asked / minutes, 2) if minutes else None,
            "parsed_pairs_per_minute": round(stats.parsed_new / minutes, 2) if minutes else None,
        },
        "filters": filter_report,
        "judge": judge_report,
        "pairs": {split: len(items) for split, items in by_split.items()},
        "outputs": outputs,
        "seconds": round(time.perf_counter() - started, 1),
    }
    atomic_write_json(qa_dir / REPORT, report)
    atomic_write_text(qa_dir / RESOLVED_CONFIG, dump_config(config))
    return QaResult(pairs=by_split, report=report, qa_dir=qa_dir, outputs=outputs)


def _cached_form(filter_report: dict[str, Any]) -> str:
    """The form of the cached replies, for a run that asked nothing."""
    forms = Counter(filter_report["forms_of_cached_replies"])
    if not forms:
        return "none (nothing asked)"
    return f"{forms.most_common(1)[0][0]} (every reply from the cache)"


def _write_splits(
    qa_dir: Path, by_split: dict[str, list[dict[str, Any]]], teacher: str
) -> list[str]:
    """qa/{split}.jsonl (chat) and qa/alpaca/{split}.jsonl for every split that has pairs; a
    split file of an earlier run that this run has no pairs for is removed."""
    from shared_utils.file_utils import AtomicFile

    outputs = []
    for split, pairs in by_split.items():
        names = (Path(f"{split}.jsonl"), Path("alpaca") / f"{split}.jsonl")
        if not pairs:
            for name in names:
                (qa_dir / name).unlink(missing_ok=True)
            continue
        files = [AtomicFile(qa_dir / name) for name in names]
        try:
            for pair in pairs:
                for target, record in zip(files, _pair_record(pair, teacher), strict=True):
                    target.handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        except BaseException:
            for target in files:
                target.discard()
            raise
        for target in files:
            target.commit()
        outputs += [(Path(QA_DIR) / name).as_posix() for name in names]
    return outputs
