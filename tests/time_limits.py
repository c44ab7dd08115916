"""A wall-clock limit for tests that talk to servers and subprocesses: a hang fails the test that
hangs, with a TimeoutError, instead of stopping the whole suite."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def alarm_after(seconds: int) -> Iterator[None]:
    """Raise TimeoutError in the main thread when the block runs longer than `seconds`."""

    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"test ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
