"""Checkpoint files of `train-rl`: written atomically, read with torch's weights-only loader.

A checkpoint is a dict of plain Python values and tensors (numpy arrays are stored as tensors), so
`torch.load(..., weights_only=True)` can read it without unpickling arbitrary objects. It names
the algorithm, the environment and its spaces, so that loading it into another environment is a
clear error rather than a shape mismatch deep in torch.
"""

from __future__ import annotations

import pickle
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared_utils.errors import ConfigurationError
from shared_utils.file_utils import atomic_write
from training_methods.reinforcement_learning.envs import EnvSpaces

CHECKPOINT_FORMAT = "llm-toolkit-rl-checkpoint"
CHECKPOINT_VERSION = 1
_PERIODIC = re.compile(r"^step_(\d+)\.pt$")


def to_storable(value: Any) -> Any:
    """Numpy arrays (also inside dicts, lists, tuples) become tensors; everything else stays."""
    if isinstance(value, np.ndarray):
        # (np.ascontiguousarray would turn a 0-d array into a 1-d one)
        return torch.from_numpy(value if value.flags.c_contiguous else value.copy())
    if isinstance(value, dict):
        return {key: to_storable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_storable(item) for item in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


def save_checkpoint(path: Path, payload: dict[str, Any]) -> Path:
    """Write `payload` (with format and version added) to `path` atomically."""
    data = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **to_storable(payload)}
    with atomic_write(path, "wb") as handle:
        torch.save(data, handle)
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint on the CPU; ConfigurationError when it is missing or not ours."""
    if not path.is_file():
        raise ConfigurationError(
            f"checkpoint '{path}' not found; pass a .pt file written by train-rl (best_model.pt, "
            "final_model.pt or checkpoints/step_*.pt)."
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise ConfigurationError(
            f"'{path}' is not a readable train-rl checkpoint ({str(exc).splitlines()[0]})."
        ) from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ConfigurationError(f"'{path}' is not a train-rl checkpoint.")
    if data.get("version") != CHECKPOINT_VERSION:
        raise ConfigurationError(
            f"checkpoint '{path}' has version {data.get('version')}; this toolkit reads version "
            f"{CHECKPOINT_VERSION}."
        )
    _check_contents(data, path)
    return data


# The entries every checkpoint holds and their types (`save_checkpoint` payloads of the trainer).
_ENTRIES: dict[str, type] = {
    "algorithm": str,
    "spaces": dict,
    "agent_kwargs": dict,
    "agent": dict,
    "normalization": dict,
    "progress": dict,
}


def _check_contents(data: dict[str, Any], path: Path) -> None:
    """ConfigurationError when a checkpoint is not as train-rl writes it (damaged or edited by
    hand): an entry missing or of the wrong type, or an agent size its stored weights do not
    have (a `hidden_dim` of 10**6 would allocate terabytes before any shape check)."""

    def refuse(problem: str) -> ConfigurationError:
        return ConfigurationError(
            f"checkpoint '{path}' is damaged or was edited: {problem}; use a .pt file as "
            "train-rl wrote it."
        )

    for key, kind in _ENTRIES.items():
        if not isinstance(data.get(key), kind):
            raise refuse(f"'{key}' is missing or not a {kind.__name__}")
    if data["algorithm"] not in ("ppo", "dqn"):
        raise refuse(f"unknown algorithm {data['algorithm']!r}")
    if not isinstance(data["spaces"].get("env_id"), str):
        raise refuse("'spaces.env_id' is missing")
    if not isinstance(data["progress"].get("global_step"), int):
        raise refuse("'progress.global_step' is missing")
    network = data["agent"].get("policy" if data["algorithm"] == "ppo" else "q_network")
    if not isinstance(network, dict) or not all(
        isinstance(t, torch.Tensor) for t in network.values()
    ):
        raise refuse("the network's weights are missing")
    sizes = {size for tensor in network.values() for size in tensor.shape}
    for key in ("state_dim", "action_dim", "hidden_dim"):
        value = data["agent_kwargs"].get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value not in sizes:
            raise refuse(f"'agent_kwargs.{key}' is {value!r}, which the stored weights do not have")


def check_compatible(
    checkpoint: dict[str, Any], path: Path, algorithm: str, spaces: EnvSpaces
) -> None:
    """ConfigurationError when the checkpoint was trained by another algorithm or environment."""
    if checkpoint["algorithm"] != algorithm:
        raise ConfigurationError(
            f"checkpoint '{path}' holds a {checkpoint['algorithm']} agent, not {algorithm}; pass "
            f"--algorithm {checkpoint['algorithm']} or start a new run in another --output-dir."
        )
    saved = checkpoint["spaces"]
    if saved["env_id"] != spaces.env_id:
        raise ConfigurationError(
            f"checkpoint '{path}' was trained on {saved['env_id']}, not {spaces.env_id}; use "
            f"--env {saved['env_id']} or start a new run in another --output-dir."
        )
    if list(saved["obs_shape"]) != list(spaces.obs_shape) or saved != spaces.describe():
        raise ConfigurationError(
            f"checkpoint '{path}' expects observations of shape {tuple(saved['obs_shape'])} and "
            f"{saved['action_dim']} {saved['action_space']} actions, but {spaces.env_id} here has "
            f"{spaces.obs_shape} and {spaces.action_dim}; the environment's registration changed "
            "since training, so retrain on it."
        )


def periodic_checkpoints(folder: Path) -> list[Path]:
    """`step_*.pt` files in `folder`, oldest (lowest step) first."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _PERIODIC.match(p.name))]
    return [path for _, path in sorted(found)]


def periodic_checkpoint_path(folder: Path, step: int) -> Path:
    return folder / f"step_{step:09d}.pt"


def prune_checkpoints(folder: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` periodic checkpoints; returns the deleted paths."""
    old = periodic_checkpoints(folder)[: -max(1, keep)]
    for path in old:
        path.unlink(missing_ok=True)
    return old


# --------------------------------------------------------------------------------------------------
# Random states and stored arrays
# --------------------------------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """The random states of Python, numpy and torch, saved with resumable checkpoints."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(legacy=False),
        "torch": torch.get_rng_state(),
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the random states `rng_state` saved, so a resumed run draws what it would have."""
    random.setstate(_tuples(state["python"]))
    np.random.set_state(numpy_tree(state["numpy"]))
    torch.set_rng_state(state["torch"])


def _tuples(value: Any) -> Any:
    """Lists back to tuples (random.setstate wants the tuples getstate gave)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def numpy_tree(value: Any) -> Any:
    """Tensors (also inside dicts) back to numpy arrays."""
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        return {key: numpy_tree(item) for key, item in value.items()}
    return value
