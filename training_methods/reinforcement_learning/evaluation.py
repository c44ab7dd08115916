"""Deterministic evaluation: the greedy policy on its own vector environment, seeded the same
way every time; used during training (best_model.pt) and by `evaluate-rl`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from shared_utils.training_utils import resolve_device
from training_methods.reinforcement_learning import checkpoints as ckpt
from training_methods.reinforcement_learning.agents import (
    Agent,
    load_agent_from_checkpoint,
    one_thread,
)
from training_methods.reinforcement_learning.dqn_agent import DQNAgent
from training_methods.reinforcement_learning.envs import (
    EnvSpaces,
    add_normalization,
    check_env_id,
    env_spaces,
    flat_observations,
    load_normalization_state,
    make_vector_env,
)

Policy = Callable[[np.ndarray], np.ndarray]

EVAL_SEED_OFFSET = 1_000_000  # evaluation episodes never share seeds with training episodes
MAX_EVAL_ENVS = 16


def run_episodes(
    envs: gym.vector.VectorEnv, policy: Policy, episodes: int, seed: int
) -> np.ndarray:
    """Returns of `episodes` complete episodes played by `policy` on a vector environment.

    Each sub-environment plays a fixed quota of episodes (so short episodes are not
    over-represented), like Stable-Baselines3's `evaluate_policy`.
    """
    n = envs.num_envs
    quota = np.array([(episodes + n - 1 - i) // n for i in range(n)])
    counts = np.zeros(n, dtype=int)
    running = np.zeros(n, dtype=np.float64)
    returns: list[float] = []
    obs, _ = envs.reset(seed=seed)
    while (counts < quota).any():
        obs, reward, terminated, truncated, _ = envs.step(policy(obs))
        running += reward
        done = terminated | truncated
        for i in np.flatnonzero(done & (counts < quota)):
            returns.append(float(running[i]))
        counts += done
        running[done] = 0.0  # the next step of a done sub-environment is its reset (reward 0)
    return np.array(returns)


def greedy_policy(agent: Agent, spaces: EnvSpaces) -> Policy:
    """The agent's deterministic policy: argmax Q, the most likely action, or the Gaussian mean
    clipped to the action bounds."""
    if isinstance(agent, DQNAgent):
        return lambda obs: agent.select_action(flat_observations(obs), training=False)
    if spaces.discrete:
        return lambda obs: agent.select_action(flat_observations(obs), deterministic=True)[0]
    return lambda obs: np.clip(
        agent.select_action(flat_observations(obs), deterministic=True)[0],
        spaces.action_low,
        spaces.action_high,
    )


class Evaluator:
    """Deterministic evaluation on its own vector environment, seeded the same way every time."""

    def __init__(
        self,
        env_id: str,
        episodes: int,
        seed: int,
        max_episode_steps: int | None,
        normalize_observations: bool,
    ) -> None:
        self.episodes = episodes
        self.seed = seed + EVAL_SEED_OFFSET
        self.envs = add_normalization(
            make_vector_env(
                env_id,
                min(episodes, MAX_EVAL_ENVS),
                self.seed,
                max_episode_steps=max_episode_steps,
                record_statistics=False,
            ),
            observations=normalize_observations,
            rewards=False,
            gamma=1.0,
        )

    def __call__(self, policy: Policy, normalization: dict[str, Any] | None = None) -> np.ndarray:
        if normalization:
            load_normalization_state(self.envs, normalization, freeze=True)
        return run_episodes(self.envs, policy, self.episodes, self.seed)

    def close(self) -> None:
        self.envs.close()


def evaluate_checkpoint(path: Path, episodes: int, seed: int, device_name: str) -> dict[str, Any]:
    """Play `episodes` deterministic episodes with a checkpoint's agent on its environment."""
    device = resolve_device(device_name)
    with one_thread(device):
        agent, saved = load_agent_from_checkpoint(path, device)
        env_id = saved["spaces"]["env_id"]
        check_env_id(env_id)
        evaluator = Evaluator(
            env_id,
            episodes,
            seed,
            saved.get("max_episode_steps"),
            "observations" in saved.get("normalization", {}),
        )
        try:
            spaces = env_spaces(evaluator.envs, env_id)
            ckpt.check_compatible(saved, path, saved["algorithm"], spaces)
            returns = evaluator(
                greedy_policy(agent, spaces), ckpt.numpy_tree(saved["normalization"])
            )
        finally:
            evaluator.close()
    return {
        "checkpoint": str(path),
        "algorithm": saved["algorithm"],
        "env_id": env_id,
        "episodes": len(returns),
        "mean_return": float(returns.mean()),
        "std_return": float(returns.std()),
        "min_return": float(returns.min()),
        "max_return": float(returns.max()),
        "trained_steps": int(saved["progress"]["global_step"]),
    }
