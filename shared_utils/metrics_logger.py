"""Metric logging shared by every trainer: `metrics.jsonl`, TensorBoard and Weights & Biases.

The fine-tuning trainer (Hugging Face Trainer) and the RL trainers (PPO, DQN) log through
`MetricsLogger`, so a run of either writes the same `metrics.jsonl`, the same TensorBoard tags and
the same W&B run layout, and can plot what it logged. tensorboard, wandb and matplotlib are
imported only when a sink or a plot needs them, so importing this module stays cheap.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Literal

from shared_utils.config import LoggingConfig
from shared_utils.errors import ConfigurationError, TrainingError
from shared_utils.file_utils import atomic_write

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

logger = logging.getLogger(__name__)

METRICS_FILENAME = "metrics.jsonl"
# Keys every metrics.jsonl record carries; a metric may not reuse them.
_RECORD_KEYS = ("step", "split", "time")


def _json_value(value: float | int) -> float | int | None:
    """A metric as JSON can hold it: ints stay ints, NaN and infinities become null."""
    if isinstance(value, numbers.Integral):
        return int(value)  # bool and numpy ints alike become plain ints
    number = float(value)  # numpy scalars and 0-d tensors too
    return number if math.isfinite(number) else None


# WANDB_MODE values and the wandb.init mode each means ("dryrun" and "run" are wandb's old names).
_WANDB_MODES: dict[str, Literal["online", "offline", "disabled", "shared"]] = {
    "online": "online",
    "run": "online",
    "offline": "offline",
    "dryrun": "offline",
    "disabled": "disabled",
    "shared": "shared",
}


def _wandb_mode() -> Literal["online", "offline", "disabled", "shared"]:
    """The W&B mode: the user's WANDB_MODE, else online with WANDB_API_KEY, else offline."""
    requested = os.environ.get("WANDB_MODE", "").strip().lower()
    if requested:
        if requested not in _WANDB_MODES:
            raise ConfigurationError(
                f"WANDB_MODE is {requested!r}; set it to online, offline or disabled, or unset it."
            )
        # Passed to wandb.init explicitly: wandb reads the environment only once per process.
        return _WANDB_MODES[requested]
    # Without an API key, online mode would stop at a login prompt (or fail without a terminal).
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class MetricsLogger:
    """Logs metrics to `metrics.jsonl`, TensorBoard and (optionally) Weights & Biases.

    `metrics.jsonl` in `output_dir` is always written, one JSON object per `log()` call:
    `{"step": ..., "split": ..., "time": ..., **metrics}`, with `time` the seconds of logging so
    far (continued from the last kept record on resume). Non-finite values are written as null.
    """

    def __init__(
        self,
        output_dir: str | Path,
        logging_config: LoggingConfig,
        *,
        run_name: str,
        config: dict[str, Any] | None = None,
        resume_from_step: int | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.output_dir / METRICS_FILENAME
        self.logging_config = logging_config
        self._history: dict[tuple[str, str], list[tuple[int, float]]] = {}
        self._closed = False
        self._writer: SummaryWriter | None = None
        self._wandb_run: Any = None  # wandb.Run; typed loosely so wandb stays an optional import

        time_offset = self._start_metrics_file(resume_from_step)
        self._start = time.monotonic() - time_offset
        self._file: IO[str] = open(self.metrics_path, "a", encoding="utf-8")
        try:
            if logging_config.use_tensorboard:
                self._writer = self._open_tensorboard(resume_from_step)
            if logging_config.use_wandb:
                self._wandb_run = self._open_wandb(run_name, config)
        except BaseException:
            self._close(exit_code=1)
            raise

    def _start_metrics_file(self, resume_from_step: int | None) -> float:
        """Start metrics.jsonl empty, or keep its records up to `resume_from_step`.

        Returns the `time` of the last kept record, so that time keeps counting up on resume.
        """
        if resume_from_step is None or not self.metrics_path.exists():
            with atomic_write(self.metrics_path):
                pass
            return 0.0
        kept: list[str] = []
        dropped = 0
        last_time = 0.0
        with open(self.metrics_path, encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                    step = int(record["step"])
                except (ValueError, KeyError, TypeError):
                    # A line cut short by the crash we are resuming from.
                    dropped += 1
                    continue
                if step > resume_from_step:
                    dropped += 1
                    continue
                kept.append(line if line.endswith("\n") else line + "\n")
                self._remember(record)
                if isinstance(record.get("time"), (int, float)):
                    last_time = max(last_time, float(record["time"]))
        with atomic_write(self.metrics_path) as handle:
            handle.writelines(kept)
        if dropped:
            logger.info(
                "%s: kept %d records up to step %d, dropped %d after it",
                self.metrics_path,
                len(kept),
                resume_from_step,
                dropped,
            )
        return last_time

    def _remember(self, record: Mapping[str, Any]) -> None:
        """Add one metrics.jsonl record to the in-memory history."""
        step, split = int(record["step"]), str(record.get("split", "train"))
        for key, value in record.items():
            if key in _RECORD_KEYS:
                continue
            if value is None:
                value = math.nan
            elif isinstance(value, bool) or not isinstance(value, (int, float)):
                continue  # not a number this logger wrote
            self._history.setdefault((split, key), []).append((step, float(value)))

    def _open_tensorboard(self, resume_from_step: int | None) -> SummaryWriter:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise ConfigurationError(
                f"logging.use_tensorboard is true but TensorBoard cannot be imported ({exc}); "
                "pip install tensorboard or set logging.use_tensorboard: false."
            ) from None
        log_dir = self.output_dir / self.logging_config.log_dir
        # purge_step hides events at or after it from TensorBoard: on resume the steps that are
        # about to be logged again, on a new run everything an earlier run left in this folder.
        purge_step = 0 if resume_from_step is None else resume_from_step + 1
        return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def _open_wandb(self, run_name: str, config: dict[str, Any] | None) -> Any:
        try:
            import wandb
        except ImportError as exc:
            raise ConfigurationError(
                f"logging.use_wandb is true but wandb cannot be imported ({exc}); "
                "pip install wandb or set logging.use_wandb: false."
            ) from None
        mode = _wandb_mode()
        # Online without WANDB_API_KEY: look for other credentials (~/.netrc) without prompting,
        # because wandb.init would otherwise stop at an interactive login prompt.
        if (
            mode in ("online", "shared")
            and not os.environ.get("WANDB_API_KEY")
            and not wandb.login(prompt=False, verify=False)
        ):
            raise ConfigurationError(
                f"logging.use_wandb is true and WANDB_MODE={os.environ.get('WANDB_MODE')} but no "
                "W&B API key is set; set WANDB_API_KEY, run `wandb login`, or unset WANDB_MODE "
                "to log offline."
            )
        settings = wandb.Settings(
            silent=True,  # no banners in our output; close() says where an offline run went
            console="off",  # never wrap stdout/stderr (tqdm bars, our one-line errors)
        )
        try:
            run = wandb.init(
                project=self.logging_config.wandb_project,
                name=run_name,
                config=config,
                dir=str(self.output_dir),
                mode=mode,
                reinit="create_new",  # several loggers may live in one process (tests, sweeps)
                settings=settings,
            )
        except Exception as exc:  # wandb raises its own CommError/UsageError types
            raise TrainingError(
                f"Weights & Biases could not start a run ({exc}); set WANDB_MODE=offline to log "
                "locally or logging.use_wandb: false."
            ) from exc
        # Our step is logged as the metric "step" and is every chart's x-axis (see log()).
        run.define_metric("step")
        run.define_metric("*", step_metric="step")
        return run

    def log(self, metrics: Mapping[str, float | int], step: int, split: str = "train") -> None:
        """Record `metrics` at `step` under `split` ("train", "eval", ...) in every sink."""
        if self._closed:
            raise RuntimeError("MetricsLogger.log() called after close()")
        clashes = [key for key in metrics if key in _RECORD_KEYS]
        if clashes:
            raise ValueError(f"metric names {clashes} are reserved in metrics.jsonl records")
        step = int(step)
        values = {key: _json_value(value) for key, value in metrics.items()}
        record: dict[str, Any] = {
            "step": step,
            "split": split,
            "time": round(time.monotonic() - self._start, 3),
            **values,
        }
        # allow_nan=False: a NaN that slipped through must fail here, not corrupt the JSON.
        self._file.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
        # Flushed per record so that a crash loses nothing that was logged.
        self._file.flush()

        floats = {key: math.nan if v is None else float(v) for key, v in values.items()}
        for key, value in floats.items():
            self._history.setdefault((split, key), []).append((step, value))
        if self._writer is not None:
            for key, value in floats.items():
                self._writer.add_scalar(f"{split}/{key}", value, global_step=step)
        if self._wandb_run is not None:
            payload: dict[str, Any] = {f"{split}/{key}": value for key, value in floats.items()}
            # Our step goes in as a metric, not as wandb's own `step=`, which drops any row whose
            # step is below one logged before (an eval logged after a later train step).
            payload["step"] = step
            self._wandb_run.log(payload)

    def plot(
        self,
        path: str | Path,
        series: Sequence[tuple[str, str]],
        *,
        title: str,
        ylabel: str,
        xlabel: str = "step",
    ) -> Path | None:
        """Write a PNG with one line per (split, key) that has a finite point; None if none has."""
        lines = []
        for split, key in series:
            points = self._history.get((split, key), [])
            if any(math.isfinite(value) for _, value in points):
                lines.append((f"{split}/{key}", points))
        if not lines:
            return None

        # The Agg canvas directly, not pyplot: no global figure state, no GUI backend lookup.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(8, 5), dpi=100)
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        for label, points in lines:
            steps, values = zip(*points, strict=True)
            marker = "o" if len(points) < 50 else None  # a lone point is invisible without one
            axes.plot(steps, values, label=label, marker=marker, markersize=3)
        axes.set_title(title)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.grid(True, alpha=0.3)
        axes.legend()
        figure.tight_layout()
        path = Path(path)
        with atomic_write(path, "wb") as handle:
            figure.savefig(handle, format="png")
        return path

    def close(self) -> None:
        """Flush and close every sink; calling it again does nothing."""
        self._close(exit_code=None)

    def _close(self, exit_code: int | None) -> None:
        if self._closed:
            return
        self._closed = True
        # Close each sink even when an earlier one fails, then re-raise the first failure.
        try:
            if hasattr(self, "_file"):
                self._file.close()
        finally:
            try:
                if self._writer is not None:
                    self._writer.close()
            finally:
                if self._wandb_run is not None:
                    self._finish_wandb(exit_code)

    def _finish_wandb(self, exit_code: int | None) -> None:
        run, self._wandb_run = self._wandb_run, None
        offline, sync_dir = run.offline, run.settings.sync_dir
        run.finish(exit_code=exit_code)
        if offline:
            logger.info(
                "W&B offline run saved in %s; upload it with: wandb sync %s", sync_dir, sync_dir
            )

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # A run that ended in an exception shows as failed in W&B rather than finished.
        self._close(exit_code=None if exc_type is None else 1)
