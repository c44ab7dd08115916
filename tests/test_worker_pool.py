"""The killable pool: results come back, a hung task is killed, a crashed worker is replaced."""

from __future__ import annotations

import os
import time

from shared_utils.worker_pool import KillableProcessPool


def _square(x: int) -> int:
    return x * x


def _hang(seconds: float) -> None:
    time.sleep(seconds)


def _crash() -> None:
    os._exit(7)


def _fail() -> None:
    raise ValueError("bad input\nsecond line")


def test_results_and_errors_come_back() -> None:
    with KillableProcessPool(workers=2, timeout=10) as pool:
        for x in range(5):
            pool.submit(_square, x, tag=x)
        pool.submit(_fail, tag="fail")
        results = {r.tag: r for r in pool.results()}
    assert {t: r.value for t, r in results.items() if r.ok} == {x: x * x for x in range(5)}
    assert not results["fail"].ok
    assert results["fail"].error == "bad input"
    assert results["fail"].error_type == "ValueError"


def test_hung_task_is_killed_and_the_rest_goes_on() -> None:
    started = time.monotonic()
    with KillableProcessPool(workers=1, timeout=0.5) as pool:
        pool.submit(_hang, 60, tag="hang")
        pool.submit(_square, 3, tag="after")
        results = {r.tag: r for r in pool.results()}
    assert time.monotonic() - started < 10
    assert results["hang"].error_type == "Timeout"
    assert results["after"].ok and results["after"].value == 9


def test_crashed_worker_is_reported_and_replaced() -> None:
    with KillableProcessPool(workers=1, timeout=10) as pool:
        pool.submit(_crash, tag="crash")
        pool.submit(_square, 4, tag="after")
        results = {r.tag: r for r in pool.results()}
    assert results["crash"].error_type == "WorkerDied"
    assert "exit code 7" in results["crash"].error
    assert results["after"].value == 16


def test_tasks_can_be_submitted_while_consuming() -> None:
    with KillableProcessPool(workers=2, timeout=10) as pool:
        pool.submit(_square, 2, tag="first")
        seen = []
        for result in pool.results():
            seen.append(result.value)
            if result.tag == "first":
                pool.submit(_square, result.value, tag="second")
    assert seen == [4, 16]
