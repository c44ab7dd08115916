"""Device choice, seeding, memory readings and early stopping."""

from __future__ import annotations

import json
import math
import random

import pytest

from shared_utils.errors import ConfigurationError
from shared_utils.training_utils import (
    EarlyStopping,
    cuda_peak_allocated_mb,
    current_rss_mb,
    peak_rss_mb,
    resolve_device,
    set_seed,
)

torch = pytest.importorskip("torch")

requires_no_accelerator = pytest.mark.skipif(
    torch.cuda.is_available() or torch.backends.mps.is_available(),
    reason="checks the behaviour on a machine without CUDA or MPS",
)


# --------------------------------------------------------------------------------------------------
# Device, seed, memory
# --------------------------------------------------------------------------------------------------


@requires_no_accelerator
def test_auto_device_is_cpu_without_accelerator() -> None:
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_device_prefers_cuda_then_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda_names_the_key() -> None:
    with pytest.raises(ConfigurationError) as info:
        resolve_device("cuda")
    message = str(info.value)
    assert "common.device" in message
    assert "set common.device: cpu or auto" in message
    assert "\n" not in message


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="needs a machine without MPS")
def test_mps_requested_without_mps_names_the_key() -> None:
    with pytest.raises(ConfigurationError, match=r"common\.device is 'mps'.*cpu or auto"):
        resolve_device("mps")


def test_unknown_device_lists_valid_values() -> None:
    with pytest.raises(ConfigurationError, match="auto, cuda, mps, cpu"):
        resolve_device("tpu")


def test_set_seed_makes_every_generator_repeat() -> None:
    import numpy as np

    def draw() -> tuple[float, float, list[float]]:
        return random.random(), float(np.random.rand()), torch.rand(3).tolist()

    set_seed(1234)
    first = draw()
    set_seed(1234)
    assert draw() == first
    set_seed(4321)
    assert draw() != first


def test_memory_readings_are_in_mib() -> None:
    block = b"\x01" * (64 * 1024 * 1024)  # written, so its pages are resident
    current = current_rss_mb()
    peak = peak_rss_mb()
    assert current > 64
    # Same unit: a KiB/bytes mix-up would be off by a factor of 1024.
    assert current * 0.9 <= peak < current * 50
    del block


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_peak_is_none_without_cuda() -> None:
    assert cuda_peak_allocated_mb() is None


# --------------------------------------------------------------------------------------------------
# Early stopping
# --------------------------------------------------------------------------------------------------


def run_early_stopping(
    stopper: EarlyStopping, values: list[float]
) -> list[tuple[bool, bool, float | None, int | None, int]]:
    """(stop, improved, best, best_step, bad_evaluations) after each value, at steps 10, 20, ..."""
    trace = []
    for index, value in enumerate(values, start=1):
        stop = stopper.step(value, step=10 * index)
        trace.append(
            (stop, stopper.improved, stopper.best, stopper.best_step, stopper.bad_evaluations)
        )
    return trace


def test_early_stopping_min_mode_needs_more_than_min_delta() -> None:
    stopper = EarlyStopping(patience=2, min_delta=0.5, mode="min")
    trace = run_early_stopping(stopper, [4.0, 3.5, 3.0, 3.25, 2.0, 2.5, 2.25])
    assert trace == [
        (False, True, 4.0, 10, 0),
        (False, False, 4.0, 10, 1),  # exactly min_delta better is not an improvement
        (False, True, 3.0, 30, 0),
        (False, False, 3.0, 30, 1),
        (False, True, 2.0, 50, 0),
        (False, False, 2.0, 50, 1),
        (True, False, 2.0, 50, 2),
    ]


def test_early_stopping_max_mode() -> None:
    stopper = EarlyStopping(patience=3, min_delta=0.25, mode="max")
    trace = run_early_stopping(stopper, [0.5, 0.75, 0.875, 1.0, 1.0, 0.5])
    assert trace == [
        (False, True, 0.5, 10, 0),
        (False, False, 0.5, 10, 1),
        (False, True, 0.875, 30, 0),
        (False, False, 0.875, 30, 1),
        (False, False, 0.875, 30, 2),
        (True, False, 0.875, 30, 3),
    ]


def test_early_stopping_never_takes_nan_as_best() -> None:
    stopper = EarlyStopping(patience=2, min_delta=0.0)
    assert stopper.step(math.nan, step=1) is False
    assert stopper.best is None and stopper.bad_evaluations == 1
    assert stopper.step(1.0, step=2) is False
    assert stopper.step(math.nan, step=3) is False
    assert stopper.step(math.inf, step=4) is True
    assert (stopper.best, stopper.best_step) == (1.0, 2)


def test_early_stopping_rejects_zero_patience() -> None:
    with pytest.raises(ConfigurationError, match="early_stopping.patience"):
        EarlyStopping(patience=0, min_delta=0.0)


def test_early_stopping_state_round_trip() -> None:
    values = [3.0, 2.0, 2.5, 2.4, 1.0, 1.5, 1.6]
    reference = EarlyStopping(patience=2, min_delta=0.1)
    expected = run_early_stopping(reference, values)

    first = EarlyStopping(patience=2, min_delta=0.1)
    run_early_stopping(first, values[:3])
    state = json.loads(json.dumps(first.state_dict()))  # as a checkpoint stores it
    resumed = EarlyStopping(patience=2, min_delta=0.1)
    resumed.load_state_dict(state)
    assert (resumed.best, resumed.best_step, resumed.bad_evaluations) == (2.0, 20, 1)
    decisions = [resumed.step(value, step=10 * i) for i, value in enumerate(values[3:], start=4)]
    assert decisions == [stop for stop, *_ in expected[3:]]
    assert resumed.state_dict() == reference.state_dict()


def test_early_stopping_refuses_state_of_the_other_mode() -> None:
    state = EarlyStopping(patience=2, min_delta=0.0, mode="max").state_dict()
    with pytest.raises(ConfigurationError, match="mode"):
        EarlyStopping(patience=2, min_delta=0.0, mode="min").load_state_dict(state)
