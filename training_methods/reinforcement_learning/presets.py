"""Settings by environment: `configs/rl/<env id>.yaml`, used whenever train-rl trains on that id.

Like rl-baselines3-zoo's hyperparameter tables, a preset holds the settings tuned for one
environment. It sits between the dataclass defaults and the user's `--config`:
defaults < preset < --config (key by key) < command-line flags. A preset is an ordinary config
file, so `--config configs/rl/CartPole-v1.yaml` still works and changes nothing.

One file holds the settings of every algorithm tuned for the environment, and its `training`
section (budget, evaluation cadence) is theirs together. Where the algorithms need different
budgets, an algorithm gets a file of its own, `<env id>.<algorithm>.yaml`
(`MountainCar-v0.ppo.yaml`: PPO needs 1,000,000 steps where DQN needs 120,000), which is used
for that algorithm in place of `<env id>.yaml`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared_utils.config import REPO_ROOT, ToolkitConfig, config_from_dict, read_yaml
from shared_utils.errors import ConfigurationError

PRESET_DIR = REPO_ROOT / "configs" / "rl"


def preset_path(
    env_id: str, preset_dir: Path | None = None, *, algorithm: str | None = None
) -> Path:
    """Where the preset of `env_id` would be (`ALE/Pong-v5` becomes `ALE_Pong-v5.yaml`), or with
    `algorithm` its algorithm's own file (`ALE_Pong-v5.ppo.yaml`)."""
    stem = env_id.replace("/", "_")
    return (preset_dir or PRESET_DIR) / (
        f"{stem}.{algorithm}.yaml" if algorithm else f"{stem}.yaml"
    )


def find_preset(
    env_id: str, preset_dir: Path | None = None, *, algorithm: str | None = None
) -> Path | None:
    """The preset file `algorithm` trains `env_id` with: its own file when there is one, else the
    environment's; None when the toolkit ships neither."""
    candidates = [preset_path(env_id, preset_dir)]
    if algorithm is not None:
        candidates.insert(0, preset_path(env_id, preset_dir, algorithm=algorithm))
    return next((path for path in candidates if path.is_file()), None)


def merge_settings(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` laid on `base` key by key: nested mappings are merged, anything else replaced."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_settings(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_settings(path: Path, what: str) -> dict[str, Any]:
    """A config file as a mapping, checked against the config sections; errors name the file."""
    data = read_yaml(path) or {}
    try:
        config_from_dict(data)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{what} '{display_path(path)}': {exc}") from None
    return data


def config_with_preset(
    env_id: str, preset: Path, user_config: Path | None, log_level: str
) -> ToolkitConfig:
    """The config of a run on `env_id`: the defaults, the preset, then the user's --config file
    key by key (flags are applied after this). `log_level` is the one already in effect."""
    data = read_settings(preset, f"preset for {env_id}")
    if user_config is not None:
        data = merge_settings(data, read_settings(user_config, "config file"))
    config = config_from_dict(data)
    config.reinforcement_learning.training.env_id = env_id
    config.common.log_level = log_level
    return config


def display_path(path: Path) -> str:
    """A shipped file relative to the repository (`configs/rl/CartPole-v1.yaml`), else as given."""
    try:
        return str(path.resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(path)
