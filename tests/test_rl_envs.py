"""RL environments: one builder, next-step autoreset, clear errors; and the test environments.

The small environments defined here are registered with gymnasium for the other RL tests:
`Counter-v0` counts its steps in its observation and ends after 3 (so autoreset steps are easy to
spot), `NaNReward-v0` returns NaN rewards after 60 steps.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from shared_utils.errors import ConfigurationError
from training_methods.reinforcement_learning.envs import (
    add_normalization,
    check_env_id,
    env_spaces,
    freeze_normalization,
    load_normalization_state,
    make_env,
    make_vector_env,
    normalization_state,
)


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


register_test_envs()


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny networks on a shared 2-core machine: intra-op threads only add contention (the
    trainer does the same while it runs). Import this fixture into each RL test module."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_make_env_returns_a_thunk_seeded_by_seed_and_index() -> None:
    first, again = make_env("CartPole-v1", 7, 2)(), make_env("CartPole-v1", 7, 2)()
    other = make_env("CartPole-v1", 7, 3)()
    assert np.array_equal(first.unwrapped.state, again.unwrapped.state)  # reset with seed 9
    assert not np.array_equal(first.unwrapped.state, other.unwrapped.state)  # seed 10
    assert first.action_space.sample() == again.action_space.sample()


def test_max_steps_per_episode_cuts_but_never_extends_the_registered_limit() -> None:
    assert make_env("CartPole-v1", 0, 0, max_episode_steps=20)().spec.max_episode_steps == 20
    assert make_env("CartPole-v1", 0, 0, max_episode_steps=900)().spec.max_episode_steps == 500
    assert make_env("CartPole-v1", 0, 0, max_episode_steps=None)().spec.max_episode_steps == 500
    envs = make_vector_env("CartPole-v1", 1, 0, max_episode_steps=5)
    envs.reset()
    truncated = [envs.step(np.array([0]))[3][0] for _ in range(5)]
    assert truncated == [False, False, False, False, True]


def test_vector_env_backends() -> None:
    sync = make_vector_env("CartPole-v1", 2, 0)
    assert isinstance(sync.unwrapped, gym.vector.SyncVectorEnv)
    async_envs = make_vector_env("CartPole-v1", 2, 0, backend="async")
    try:
        assert isinstance(async_envs.unwrapped, gym.vector.AsyncVectorEnv)
        # Same seeds, same episodes, whichever process steps them.
        assert np.array_equal(sync.reset()[0], async_envs.reset()[0])
    finally:
        async_envs.close()
        sync.close()


def test_next_step_autoreset_is_what_the_trainer_expects() -> None:
    """The step after a done returns the reset observation with reward 0 (not a transition)."""
    envs = make_vector_env("Counter-v0", 1, 0)
    obs, _ = envs.reset()
    rows = []
    for _ in range(5):
        obs, reward, terminated, truncated, _ = envs.step(np.array([0]))
        rows.append((obs[0][0], reward[0], bool(terminated[0])))
    assert rows == [(1, 1, False), (2, 1, False), (3, 1, True), (0, 0, False), (1, 1, False)]


def test_unknown_env_id_lists_close_matches() -> None:
    with pytest.raises(ConfigurationError, match="CartPole-v1") as info:
        check_env_id("CartPol-v1")
    assert "unknown environment id 'CartPol-v1'" in str(info.value)
    with pytest.raises(ConfigurationError, match="unknown environment id"):
        check_env_id("Zzzzzz-v9")


def test_env_spaces_for_discrete_and_box_actions() -> None:
    spaces = env_spaces(make_vector_env("CartPole-v1", 1, 0), "CartPole-v1")
    assert (spaces.state_dim, spaces.discrete, spaces.action_dim) == (4, True, 2)
    spaces = env_spaces(make_vector_env("Pendulum-v1", 1, 0), "Pendulum-v1")
    assert (spaces.state_dim, spaces.discrete, spaces.action_dim) == (3, False, 1)
    assert spaces.action_low.tolist() == [-2.0] and spaces.action_high.tolist() == [2.0]


def test_unsupported_observation_space_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="Box"):
        env_spaces(make_vector_env("FrozenLake-v1", 1, 0), "FrozenLake-v1")


def test_normalization_statistics_round_trip_and_freeze() -> None:
    envs = add_normalization(
        make_vector_env("CartPole-v1", 2, 0), observations=True, rewards=True, gamma=0.99
    )
    envs.reset()
    for _ in range(20):
        envs.step(np.array([0, 1]))
    state = normalization_state(envs)
    assert set(state) == {"observations", "rewards"} and state["observations"]["count"] > 20
    other = add_normalization(
        make_vector_env("CartPole-v1", 2, 1), observations=True, rewards=False, gamma=0.99
    )
    load_normalization_state(other, state, freeze=True)
    assert np.array_equal(
        normalization_state(other)["observations"]["mean"], state["observations"]["mean"]
    )
    other.reset()
    other.step(np.array([0, 0]))
    assert np.array_equal(
        normalization_state(other)["observations"]["mean"], state["observations"]["mean"]
    )


def test_freeze_normalization_stops_the_statistics() -> None:
    envs = add_normalization(
        make_vector_env("CartPole-v1", 2, 0), observations=True, rewards=False, gamma=0.99
    )
    envs.reset()
    envs.step(np.array([0, 1]))
    freeze_normalization(envs)
    before = normalization_state(envs)["observations"]["count"].copy()
    obs = [envs.step(np.array([0, 1]))[0] for _ in range(3)]
    assert normalization_state(envs)["observations"]["count"] == before
    assert np.abs(obs[-1]).max() < 50  # still normalised with the frozen statistics
