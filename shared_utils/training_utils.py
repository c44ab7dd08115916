"""What every trainer needs around its loop: device, seed, memory readings, early stopping.

The fine-tuning trainer (Hugging Face Trainer) and the RL trainers (PPO, DQN) share these; their
metric logging is `shared_utils.metrics_logger`. torch is imported inside the functions that use
it, so importing this module stays cheap (`python main.py --help` never pays for it).
"""

from __future__ import annotations

import math
import random
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from shared_utils.errors import ConfigurationError

if TYPE_CHECKING:
    import torch

_MIB = 1024 * 1024


# --------------------------------------------------------------------------------------------------
# Device, seed, memory
# --------------------------------------------------------------------------------------------------


def resolve_device(requested: str) -> torch.device:
    """The torch device for `common.device`: auto picks cuda, then mps, then cpu.

    Raises ConfigurationError when the requested accelerator is not available here.
    """
    import torch

    cuda_ok = torch.cuda.is_available()
    mps_ok = torch.backends.mps.is_available()
    if requested == "auto":
        return torch.device("cuda" if cuda_ok else "mps" if mps_ok else "cpu")
    if requested == "cpu":
        return torch.device("cpu")
    if requested == "cuda":
        if not cuda_ok:
            # Say why: a CPU-only wheel needs a different install than a missing driver.
            why = (
                "this torch build has no CUDA support"
                if torch.version.cuda is None
                else "no CUDA GPU is visible"
            )
            raise ConfigurationError(
                f"common.device is 'cuda' but {why}; set common.device: cpu or auto."
            )
        return torch.device("cuda")
    if requested == "mps":
        if not mps_ok:
            raise ConfigurationError(
                "common.device is 'mps' but Apple MPS is not available on this machine; "
                "set common.device: cpu or auto."
            )
        return torch.device("mps")
    raise ConfigurationError(
        f"common.device is {requested!r}; valid values are auto, cuda, mps, cpu."
    )


def set_seed(seed: int) -> None:
    """Seed Python's `random`, NumPy and torch (every CUDA device too, when there is one)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX), where autocasting
    to bf16 runs a model two to three times faster than float32; elsewhere bf16 is emulated."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:  # not Linux: no cheap way to tell, so stay in float32
        pass
    return False


def mixed_precision_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `training.mixed_precision` on `device`; None for float32."""
    import torch

    if setting == "no" or device.type not in ("cuda", "cpu"):
        return None
    if setting == "bf16":
        return torch.bfloat16
    if setting == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB.

    On Linux it is VmHWM of /proc/self/status: ru_maxrss keeps the parent's high-water mark
    across fork and exec, so a child started by a large process would report the parent's peak.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text(encoding="ascii", errors="replace").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    try:
        import resource
    except ImportError:  # Windows has no `resource`; psutil reports the peak working set there.
        import psutil

        info = psutil.Process().memory_info()
        return float(getattr(info, "peak_wset", info.rss)) / _MIB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in bytes on macOS and in KiB on Linux and the BSDs.
    return peak / _MIB if sys.platform == "darwin" else peak / 1024


def current_rss_mb() -> float:
    """Resident set size of this process now, in MiB."""
    import psutil

    return psutil.Process().memory_info().rss / _MIB


def cuda_peak_allocated_mb() -> float | None:
    """Peak memory torch allocated on the current CUDA device, in MiB; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    # Before CUDA is initialised this reads 0 without creating a context.
    return torch.cuda.max_memory_allocated() / _MIB


# --------------------------------------------------------------------------------------------------
# Early stopping
# --------------------------------------------------------------------------------------------------


class EarlyStopping:
    """Stop after `patience` evaluations in a row that do not beat the best by more than min_delta.

    A non-finite value (a diverged loss) never counts as an improvement.
    """

    def __init__(
        self, patience: int, min_delta: float, mode: Literal["min", "max"] = "min"
    ) -> None:
        if patience < 1:
            raise ConfigurationError(
                f"early_stopping.patience is {patience!r}; it must be at least 1."
            )
        if not min_delta >= 0:  # also refuses NaN
            raise ConfigurationError(
                f"early_stopping.min_delta is {min_delta!r}; it must be 0 or more."
            )
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
        self.patience = patience
        self.min_delta = min_delta
        self.mode: Literal["min", "max"] = mode
        self.best: float | None = None
        self.best_step: int | None = None
        self.improved: bool = False
        self.bad_evaluations: int = 0

    def _is_improvement(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def step(self, value: float, step: int) -> bool:
        """Record the evaluation `value` at `step`; True when training should stop."""
        value = float(value)
        self.improved = self._is_improvement(value)
        if self.improved:
            self.best = value
            self.best_step = step
            self.bad_evaluations = 0
        else:
            self.bad_evaluations += 1
        return self.bad_evaluations >= self.patience

    @property
    def should_stop(self) -> bool:
        """Whether the last step() said to stop (patience used up)."""
        return self.bad_evaluations >= self.patience

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable progress, saved with a checkpoint for --resume."""
        return {
            "mode": self.mode,
            "best": self.best,
            "best_step": self.best_step,
            "improved": self.improved,
            "bad_evaluations": self.bad_evaluations,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore progress; patience and min_delta stay as this run configured them."""
        saved_mode = state.get("mode", self.mode)
        if saved_mode != self.mode:
            # A best value of the other direction would make every comparison wrong.
            raise ConfigurationError(
                f"the checkpoint's early stopping tracked mode {saved_mode!r} but this run uses "
                f"{self.mode!r}; resume with the same metric or start a new run."
            )
        best = state.get("best")
        self.best = None if best is None else float(best)
        best_step = state.get("best_step")
        self.best_step = None if best_step is None else int(best_step)
        self.improved = bool(state.get("improved", False))
        self.bad_evaluations = int(state.get("bad_evaluations", 0))
