"""A process pool whose tasks can be killed.

`concurrent.futures.ProcessPoolExecutor` cannot cancel a task that is already running, so one
pathological input (a PDF that sends the parser into an endless loop) would hang a whole run. Here
each worker is a plain `multiprocessing.Process` with its own pipe: the parent waits on all pipes
with a deadline per task, and kills and replaces a worker whose task runs past it or that dies
(a crash in a C library). The task is reported as failed and the run goes on.

Tasks may be submitted while results are being consumed (a large PDF's first page range tells how
many more ranges to queue).

Each worker may also get a memory limit (`RLIMIT_AS`): a PDF whose page inflates to gigabytes then
fails with `MemoryError` (or its worker dies) instead of taking the machine's memory. Workers die
with the parent: on Linux the kernel kills them when the parent ends (`PR_SET_PDEATHSIG`), and a
worker holds no pipe end but its own, so it also sees the parent's end close.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TaskResult:
    task_id: int
    tag: Any  # whatever the caller attached to the task, returned untouched
    ok: bool
    value: Any = None  # the function's return value when ok
    error: str = ""  # one-line reason when not ok
    error_type: str = ""  # exception class name, "Timeout" or "WorkerDied"
    seconds: float = 0.0


@dataclass
class _Worker:
    process: multiprocessing.process.BaseProcess
    conn: multiprocessing.connection.Connection
    task: tuple[int, Any, float] | None = None  # (task_id, tag, started)
    deadline: float = field(default=float("inf"))


def _die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when its parent ends; elsewhere, nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent ended before the request took effect
        os._exit(1)


def _limit_memory(megabytes: float) -> None:
    """Let this process map at most `megabytes` more than it maps now (`RLIMIT_AS`).

    Relative to the current size, because a forked worker starts with everything the parent had
    mapped (imported libraries), which it shares rather than uses.
    """
    import resource

    with open("/proc/self/statm") as statm:
        mapped = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = mapped + int(megabytes * 1e6)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _worker_main(
    conn: multiprocessing.connection.Connection,
    parent_conn: multiprocessing.connection.Connection,
    parent_pid: int,
    memory_limit_mb: float | None,
) -> None:
    _die_with_parent(parent_pid)
    # A forked child inherits the parent's end of its own pipe; holding it, it would never see
    # the parent go away.
    parent_conn.close()
    # Ctrl-C goes to the whole process group; the parent decides what happens, not the workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if memory_limit_mb is not None and sys.platform.startswith("linux"):
        _limit_memory(memory_limit_mb)
    while True:
        try:
            item = conn.recv()
        except (EOFError, OSError):
            return
        if item is None:
            return
        task_id, fn, args = item
        try:
            result = (task_id, True, fn(*args), "")
        except Exception as exc:  # noqa: BLE001 - every failure is reported to the parent
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            result = (task_id, False, message, type(exc).__name__)
        try:
            conn.send(result)
        except Exception as exc:  # noqa: BLE001 - e.g. an unpicklable return value
            conn.send((task_id, False, f"result could not be sent back: {exc}", type(exc).__name__))


def _context() -> multiprocessing.context.BaseContext:
    # fork starts workers in milliseconds and shares already imported libraries; elsewhere the
    # platform default (spawn) is the safe choice.
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context()


class KillableProcessPool:
    """Run picklable top-level functions in `workers` processes, each task within `timeout` s,
    each worker within `memory_limit_mb` MB more memory than it starts with (Linux; None: no
    limit)."""

    def __init__(self, workers: int, timeout: float, memory_limit_mb: float | None = None) -> None:
        self.max_workers = max(1, workers)
        self.timeout = timeout
        self.memory_limit_mb = memory_limit_mb
        self._ctx = _context()
        self._workers: list[_Worker] = []
        self._queue: deque[tuple[int, Any, Callable[..., Any], tuple[Any, ...]]] = deque()
        self._next_id = 0

    def __enter__(self) -> KillableProcessPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def submit(self, fn: Callable[..., Any], *args: Any, tag: Any = None) -> int:
        task_id = self._next_id
        self._next_id += 1
        self._queue.append((task_id, tag, fn, args))
        return task_id

    @property
    def pending(self) -> int:
        return len(self._queue) + sum(1 for w in self._workers if w.task is not None)

    def results(self) -> Iterator[TaskResult]:
        """Yield results as tasks complete, until no task is queued or running."""
        while self.pending:
            self._dispatch()
            busy = [w for w in self._workers if w.task is not None]
            wait_for = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            ready = multiprocessing.connection.wait([w.conn for w in busy], timeout=wait_for)
            for worker in busy:
                if worker.conn in ready:
                    yield self._receive(worker)
                elif time.monotonic() >= worker.deadline:
                    yield self._kill(worker, "Timeout", f"timed out after {self.timeout:g} s")

    def close(self) -> None:
        for worker in self._workers:
            if worker.task is None and worker.process.is_alive():
                try:
                    worker.conn.send(None)
                except OSError:
                    pass
        for worker in self._workers:
            worker.process.join(timeout=0.5 if worker.task is None else 0)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self._workers.clear()
        self._queue.clear()

    # ----------------------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        while self._queue:
            worker = next((w for w in self._workers if w.task is None), None)
            if worker is None:
                if len(self._workers) >= self.max_workers:
                    return
                worker = self._start_worker()
            task_id, tag, fn, args = self._queue.popleft()
            now = time.monotonic()
            worker.task = (task_id, tag, now)
            worker.deadline = now + self.timeout
            worker.conn.send((task_id, fn, args))

    def _start_worker(self) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_worker_main,
            args=(child_conn, parent_conn, os.getpid(), self.memory_limit_mb),
            daemon=True,
        )
        process.start()
        child_conn.close()
        worker = _Worker(process=process, conn=parent_conn)
        self._workers.append(worker)
        return worker

    def _receive(self, worker: _Worker) -> TaskResult:
        assert worker.task is not None
        task_id, tag, started = worker.task
        try:
            _, ok, payload, error_type = worker.conn.recv()
        except (EOFError, OSError):
            worker.process.join(timeout=1)
            code = worker.process.exitcode
            return self._kill(worker, "WorkerDied", f"worker process died (exit code {code})")
        worker.task = None
        worker.deadline = float("inf")
        seconds = time.monotonic() - started
        if ok:
            return TaskResult(task_id, tag, True, value=payload, seconds=seconds)
        return TaskResult(
            task_id, tag, False, error=payload, error_type=error_type, seconds=seconds
        )

    def _kill(self, worker: _Worker, error_type: str, message: str) -> TaskResult:
        assert worker.task is not None
        task_id, tag, started = worker.task
        if worker.process.is_alive():
            worker.process.kill()
        worker.process.join()
        worker.conn.close()
        self._workers.remove(worker)
        return TaskResult(
            task_id,
            tag,
            False,
            error=message,
            error_type=error_type,
            seconds=time.monotonic() - started,
        )


def default_worker_count() -> int:
    """One worker per CPU this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
