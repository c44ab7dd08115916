"""Asking the teacher: every request not yet cached, `concurrency` at a time, with parse retries,
each finished reply cached as it arrives, and the run stopped when the teacher fails for good."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from document_processing.qa_generation.cache import ReplyCache
from document_processing.qa_generation.teacher_requests import Request
from document_processing.qa_generation.teachers import RequestFailed, Teacher, TeacherError
from shared_utils.config import QaGenerationConfig

RETRY_TEMPERATURE = 0.7  # a reply that did not parse is asked again with some sampling


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
