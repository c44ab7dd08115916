"""RL helpers the tests share: small gymnasium environments and a tiny train-rl config.

register_test_envs() registers `Counter-v0`, which counts its steps in its observation and ends
after 3 (so autoreset steps are easy to spot), and `NaNReward-v0`, which returns NaN rewards
after 60 steps. write_config writes TINY, a few hundred steps of tiny networks.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import yaml


class CounterEnv(gym.Env):
    """Observation [t, 0] at step t; reward 1 per step; terminates at t == episode_length."""

    def __init__(self, episode_length: int = 3) -> None:
        self.episode_length = episode_length
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.t = 0

    def _obs(self) -> np.ndarray:
        return np.array([self.t, 0.0], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple:
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action: Any) -> tuple:
        self.t += 1
        return self._obs(), 1.0, self.t >= self.episode_length, False, {}


class NaNRewardEnv(CounterEnv):
    """A counter whose rewards turn into NaN after `nan_after` steps in total."""

    def __init__(self, nan_after: int = 60, episode_length: int = 10) -> None:
        super().__init__(episode_length)
        self.nan_after = nan_after
        self.total_steps = 0

    def step(self, action: Any) -> tuple:
        obs, reward, terminated, truncated, info = super().step(action)
        self.total_steps += 1
        return (
            obs,
            float("nan") if self.total_steps > self.nan_after else reward,
            terminated,
            False,
            info,
        )


def register_test_envs() -> None:
    if "Counter-v0" not in gym.envs.registry:
        gym.register(id="Counter-v0", entry_point=CounterEnv)
        gym.register(id="NaNReward-v0", entry_point=NaNRewardEnv)


# A few hundred steps of tiny networks: enough to exercise every output in about a second.
TINY = {
    "reinforcement_learning": {
        "training": {
            "total_timesteps": 256,
            "update_frequency": 64,
            "eval_every_steps": 128,
            "save_frequency": 4,
            "log_every_steps": 64,
            "max_steps_per_episode": 50,
            "eval_episodes": 2,
            "max_checkpoints": 2,
        },
        "ppo": {"num_envs": 2, "k_epochs": 2, "batch_size": 32, "hidden_dim": 16},
        "dqn": {
            "hidden_dim": 16,
            "learning_starts": 64,
            "train_freq": 4,
            "gradient_steps": 1,
            "n_step": 1,  # every step is in the replay buffer at once (resume counts them)
            "batch_size": 16,
            "buffer_size": 1000,
        },
    },
    "common": {"device": "cpu"},
}


def write_config(folder: Path, **sections: dict) -> Path:
    """TINY with `sections` merged in (one level of nesting below the section)."""
    data = json.loads(json.dumps(TINY))
    for section, values in sections.items():
        target = data.setdefault(section, {})
        for key, value in values.items():
            if isinstance(value, dict):
                target.setdefault(key, {}).update(value)
            else:
                target[key] = value
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
