"""MetricsLogger: metrics.jsonl records, resume, TensorBoard event files, plots and W&B runs."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from shared_utils.config import LoggingConfig
from shared_utils.errors import ConfigurationError
from shared_utils.metrics_logger import MetricsLogger

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def plain_logging(**overrides: object) -> LoggingConfig:
    """metrics.jsonl only, unless a test turns a sink on."""
    values: dict[str, object] = {"use_tensorboard": False, "use_wandb": False}
    values.update(overrides)
    return LoggingConfig(**values)  # type: ignore[arg-type]


def read_records(path: Path) -> list[dict]:
    """metrics.jsonl records; a NaN or Infinity literal in the file fails the test."""

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} literal written to {path}")

    text = path.read_text(encoding="utf-8")
    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


def tensorboard_scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(log_dir))
    accumulator.Reload()
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def plotted_lines(
    metrics: MetricsLogger,
    series: list[tuple[str, str]],
    path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, list[tuple[int, float]]]:
    """The (step, value) points of each line `metrics.plot` draws for `series`, by label."""
    from matplotlib.axes import Axes

    lines: dict[str, list[tuple[int, float]]] = {}
    draw = Axes.plot

    def record(self: Axes, steps: Any, values: Any, *args: Any, label: str, **kwargs: Any) -> Any:
        lines[label] = list(zip(steps, values, strict=True))
        return draw(self, steps, values, *args, label=label, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(Axes, "plot", record)
        metrics.plot(path, series, title="Loss", ylabel="loss")
    return lines


def wait_for_next_second() -> None:
    """Event files are named by whole seconds: a later writer's file must sort last."""
    time.sleep(1.01 - time.time() % 1)


# --------------------------------------------------------------------------------------------------
# metrics.jsonl
# --------------------------------------------------------------------------------------------------


def test_metrics_jsonl_has_one_record_per_log_call(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"step": 99, "split": "train", "loss": 1}\n')
    with MetricsLogger(tmp_path, plain_logging(), run_name="t") as metrics:
        metrics.log({"loss": 2.5, "learning_rate": 1e-4}, step=1)
        metrics.log({"loss": 2.0, "tokens": 512}, step=2)
        metrics.log({"loss": 2.25}, step=2, split="eval")

    records = read_records(tmp_path / "metrics.jsonl")  # the old run's record is gone
    assert [{k: v for k, v in r.items() if k != "time"} for r in records] == [
        {"step": 1, "split": "train", "loss": 2.5, "learning_rate": 1e-4},
        {"step": 2, "split": "train", "loss": 2.0, "tokens": 512},
        {"step": 2, "split": "eval", "loss": 2.25},
    ]
    assert list(records[0]) == ["step", "split", "time", "loss", "learning_rate"]
    times = [r["time"] for r in records]
    assert all(isinstance(t, float) for t in times) and times == sorted(times) and times[0] >= 0


def test_non_finite_values_are_written_as_null(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path, plain_logging(), run_name="t") as metrics:
        metrics.log({"loss": math.nan, "grad_norm": math.inf, "reward": 1.5}, step=3)

    text = (tmp_path / "metrics.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    [record] = read_records(tmp_path / "metrics.jsonl")
    assert (record["loss"], record["grad_norm"], record["reward"]) == (None, None, 1.5)


def test_closed_logger_refuses_to_log(tmp_path: Path) -> None:
    metrics = MetricsLogger(tmp_path, plain_logging(), run_name="t")
    metrics.close()
    metrics.close()  # idempotent
    with pytest.raises(RuntimeError):
        metrics.log({"loss": 1.0}, step=1)


def test_reserved_metric_names_are_refused(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path, plain_logging(), run_name="t") as metrics:
        with pytest.raises(ValueError, match="step"):
            metrics.log({"step": 1.0}, step=1)


def test_resume_keeps_records_up_to_the_step_and_drops_later_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with MetricsLogger(tmp_path, plain_logging(), run_name="t") as metrics:
        for step in (1, 2, 3, 4):
            metrics.log({"loss": float(10 - step)}, step=step)
        metrics.log({"loss": 7.5}, step=2, split="eval")
        metrics.log({"loss": 5.5}, step=4, split="eval")
    # A crash mid-write leaves a cut-off last line.
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 5, "split": "tra')

    series = [("train", "loss"), ("eval", "loss")]
    with MetricsLogger(tmp_path, plain_logging(), run_name="t", resume_from_step=2) as metrics:
        # The plot of the resumed run starts with the kept records.
        assert plotted_lines(metrics, series, tmp_path / "loss.png", monkeypatch) == {
            "train/loss": [(1, 9.0), (2, 8.0)],
            "eval/loss": [(2, 7.5)],
        }
        metrics.log({"loss": 6.25}, step=3)
        lines = plotted_lines(metrics, series, tmp_path / "loss.png", monkeypatch)
        assert lines["train/loss"] == [(1, 9.0), (2, 8.0), (3, 6.25)]

    records = read_records(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["split"], r["loss"]) for r in records] == [
        (1, "train", 9.0),
        (2, "train", 8.0),
        (2, "eval", 7.5),
        (3, "train", 6.25),
    ]


def test_resume_continues_time_from_the_kept_records(tmp_path: Path) -> None:
    lines = [
        {"step": 1, "split": "train", "time": 100.0, "loss": 2.0},
        {"step": 2, "split": "train", "time": 200.0, "loss": 1.0},
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    with MetricsLogger(tmp_path, plain_logging(), run_name="t", resume_from_step=1) as metrics:
        metrics.log({"loss": 1.5}, step=2)
    records = read_records(tmp_path / "metrics.jsonl")
    assert records[0] == lines[0]
    assert 100.0 <= records[1]["time"] < 110.0


def test_resume_without_metrics_file_starts_empty(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path, plain_logging(), run_name="t", resume_from_step=5) as metrics:
        metrics.log({"loss": 1.0}, step=6)
    assert [r["step"] for r in read_records(tmp_path / "metrics.jsonl")] == [6]


# --------------------------------------------------------------------------------------------------
# TensorBoard
# --------------------------------------------------------------------------------------------------


def test_tensorboard_event_files_hold_the_scalars(tmp_path: Path) -> None:
    config = plain_logging(use_tensorboard=True, log_dir="tb")
    with MetricsLogger(tmp_path, config, run_name="t") as metrics:
        metrics.log({"loss": 2.5, "learning_rate": 0.125}, step=1)
        metrics.log({"loss": 1.75}, step=2)
        metrics.log({"loss": 2.0}, step=2, split="eval")

    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert tensorboard_scalars(tmp_path / "tb", "train/loss") == [(1, 2.5), (2, 1.75)]
    assert tensorboard_scalars(tmp_path / "tb", "train/learning_rate") == [(1, 0.125)]
    assert tensorboard_scalars(tmp_path / "tb", "eval/loss") == [(2, 2.0)]


def test_tensorboard_resume_hides_steps_after_the_resume_point(tmp_path: Path) -> None:
    config = plain_logging(use_tensorboard=True)
    with MetricsLogger(tmp_path, config, run_name="t") as metrics:
        for step in (1, 2, 3, 4):
            metrics.log({"loss": float(10 - step)}, step=step)
    wait_for_next_second()
    with MetricsLogger(tmp_path, config, run_name="t", resume_from_step=2) as metrics:
        metrics.log({"loss": 6.25}, step=3)

    log_dir = tmp_path / config.log_dir
    assert tensorboard_scalars(log_dir, "train/loss") == [(1, 9.0), (2, 8.0), (3, 6.25)]


def test_tensorboard_new_run_hides_an_earlier_run_in_the_same_folder(tmp_path: Path) -> None:
    config = plain_logging(use_tensorboard=True)
    with MetricsLogger(tmp_path, config, run_name="first") as metrics:
        for step in (1, 2, 3):
            metrics.log({"loss": 9.0}, step=step)
    wait_for_next_second()
    with MetricsLogger(tmp_path, config, run_name="second") as metrics:
        metrics.log({"loss": 1.0}, step=1)

    assert tensorboard_scalars(tmp_path / config.log_dir, "train/loss") == [(1, 1.0)]


# --------------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------------


def test_plot_writes_a_png_matplotlib_can_read(tmp_path: Path) -> None:
    import matplotlib.image

    with MetricsLogger(tmp_path, plain_logging(), run_name="t") as metrics:
        for step in range(1, 6):
            metrics.log({"loss": 1.0 / step}, step=step)
        metrics.log({"loss": 0.5}, step=5, split="eval")
        path = metrics.plot(
            tmp_path / "plots" / "loss.png",
            [("train", "loss"), ("eval", "loss"), ("eval", "accuracy")],
            title="Loss",
            ylabel="loss",
        )

    assert path == tmp_path / "plots" / "loss.png"
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert [p.name for p in path.parent.iterdir()] == ["loss.png"]  # no temporary file left


def test_plot_without_points_writes_nothing(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path, plain_logging(), run_name="t") as metrics:
        metrics.log({"loss": math.nan}, step=1)
        target = tmp_path / "loss.png"
        assert metrics.plot(target, [("train", "loss")], title="Loss", ylabel="loss") is None
        assert metrics.plot(target, [("eval", "loss")], title="Loss", ylabel="loss") is None
        assert metrics.plot(target, [], title="Loss", ylabel="loss") is None
    assert not target.exists()


# --------------------------------------------------------------------------------------------------
# Weights & Biases
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No API key, no WANDB_MODE, and W&B's own files kept inside tmp_path."""
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    output = tmp_path / "run"
    output.mkdir()
    return output


def test_wandb_without_api_key_logs_offline(wandb_env: Path) -> None:
    config = plain_logging(use_wandb=True, wandb_project="toolkit-tests")
    started = time.monotonic()
    with MetricsLogger(wandb_env, config, run_name="offline-test", config={"seed": 7}) as metrics:
        metrics.log({"loss": 0.75}, step=1)
        metrics.log({"loss": 0.5}, step=2, split="eval")
    assert time.monotonic() - started < 30  # never waits for a login prompt or the network

    [run_dir] = (wandb_env / "wandb").glob("offline-run-*")
    [run_file] = run_dir.glob("run-*.wandb")
    # wandb-core writes the run file when the run's stream closes, a moment after finish()
    # returns (at the latest when the process exits), so give it a few seconds.
    deadline = time.monotonic() + 10
    while b"eval/loss" not in run_file.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.05)
    content = run_file.read_bytes()
    assert b"train/loss" in content and b"eval/loss" in content
    assert b"toolkit-tests" in content  # logging.wandb_project
    assert len(read_records(wandb_env / "metrics.jsonl")) == 2


def test_wandb_mode_set_by_the_user_is_respected(
    wandb_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    config = plain_logging(use_wandb=True)
    with MetricsLogger(wandb_env, config, run_name="disabled-test") as metrics:
        metrics.log({"loss": 0.75}, step=1)
    assert not list(wandb_env.glob("wandb/offline-run-*"))
    assert len(read_records(wandb_env / "metrics.jsonl")) == 1


def test_wandb_online_without_credentials_fails_instead_of_prompting(
    wandb_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_MODE", "online")
    with pytest.raises(ConfigurationError, match="WANDB_API_KEY"):
        MetricsLogger(wandb_env, plain_logging(use_wandb=True), run_name="t")


def test_missing_wandb_names_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # makes `import wandb` raise ImportError
    with pytest.raises(ConfigurationError) as info:
        MetricsLogger(tmp_path, plain_logging(use_wandb=True), run_name="t")
    message = str(info.value)
    assert "logging.use_wandb" in message and "pip install wandb" in message
