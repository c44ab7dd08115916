"""RL environments: one builder, next-step autoreset, clear errors.

The small test environments (`Counter-v0`, `NaNReward-v0`) live in tests/rl_helpers.py.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from shared_utils.errors import ConfigurationError
from tests.rl_helpers import register_test_envs
from training_methods.reinforcement_learning.envs import (
    EpisodeStatistics,
    SingleSyncVectorEnv,
    add_normalization,
    check_env_id,
    env_spaces,
    freeze_normalization,
    load_normalization_state,
    make_env,
    make_vector_env,
    normalization_state,
)

register_test_envs()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
    native = make_vector_env("CartPole-v1", 8, 0, max_episode_steps=5)  # gymnasium's NumPy one
    assert type(native.unwrapped).__name__ == "CartPoleVectorEnv"
    native.reset()
    alternate = np.array([0, 1] * 4)  # keeps every pole up for 5 steps
    truncated = [native.step(alternate)[3].all() for _ in range(5)]
    assert truncated == [False, False, False, False, True]


def test_vector_env_backends() -> None:
    native = make_vector_env("CartPole-v1", 8, 0)  # auto: gymnasium's NumPy CartPole
    assert type(native.unwrapped).__name__ == "CartPoleVectorEnv"
    assert isinstance(make_vector_env("CartPole-v1", 1, 0).unwrapped, gym.vector.SyncVectorEnv)
    again = make_vector_env("CartPole-v1", 8, 0)
    actions = np.array([0, 1, 1, 0, 0, 1, 0, 1])
    for _ in range(30):  # seeded: the same episodes, resets included
        assert np.array_equal(native.step(actions)[0], again.step(actions)[0])
    assert isinstance(make_vector_env("Counter-v0", 2, 0).unwrapped, gym.vector.SyncVectorEnv)
    sync = make_vector_env("CartPole-v1", 2, 0, backend="sync")
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


class _InfoCounter(gym.Wrapper):
    """A counter whose step and reset infos carry values, to compare how infos are batched."""

    def reset(self, **kwargs: object) -> tuple:
        obs, _ = self.env.reset(**kwargs)
        return obs, {"phase": "reset"}

    def step(self, action: object) -> tuple:
        obs, reward, terminated, truncated, _ = self.env.step(action)
        return obs, reward, terminated, truncated, {"t": int(obs[0]), "half": float(obs[0]) / 2}


@pytest.mark.parametrize(
    "make",
    [
        make_env("CartPole-v1", 5, 0, max_episode_steps=12),
        make_env("Pendulum-v1", 5, 0, max_episode_steps=7),  # Box actions
        lambda: _InfoCounter(gym.make("Counter-v0")),
    ],
)
def test_single_env_vector_steps_as_sync_vector_env(make: object) -> None:
    """make_vector_env's one-environment fast path returns what SyncVectorEnv returns, step by
    step through next-step autoresets: values, dtypes, infos, and fresh arrays each step."""
    fast = SingleSyncVectorEnv([make], autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    slow = gym.vector.SyncVectorEnv([make], autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    assert isinstance(make_vector_env("CartPole-v1", 1, 0).unwrapped, SingleSyncVectorEnv)
    obs_fast, info_fast = fast.reset(seed=4)
    obs_slow, info_slow = slow.reset(seed=4)
    np.testing.assert_array_equal(obs_fast, obs_slow)
    fast.action_space.seed(1)
    ends = 0
    for _ in range(40):
        actions = fast.action_space.sample()
        got, want = fast.step(actions), slow.step(actions)
        for mine, theirs in zip(got[:4], want[:4], strict=True):
            assert mine.dtype == theirs.dtype and mine.shape == theirs.shape
            np.testing.assert_array_equal(mine, theirs)
        assert got[4].keys() == want[4].keys()
        for key in want[4]:
            np.testing.assert_array_equal(got[4][key], want[4][key])
        ends += int(got[2][0] or got[3][0])
        got[0][:] = 1e6  # the caller may keep or change the arrays: the next step is unaffected
        got[1][:] = 1e6
    assert ends >= 3
    fast.close()
    slow.close()


@pytest.mark.parametrize("backend, num_envs", [("sync", 1), ("sync", 3), ("auto", 8)])
def test_episode_statistics_report_what_gymnasium_reports(backend: str, num_envs: int) -> None:
    """EpisodeStatistics (make_vector_env's) gives each finished episode the return and length
    gymnasium's RecordEpisodeStatistics gives it, on the same seeded environments and actions;
    the reset step of next-step autoreset is not counted."""
    ours = make_vector_env("CartPole-v1", num_envs, 3, max_episode_steps=30, backend=backend)
    bare = make_vector_env(
        "CartPole-v1", num_envs, 3, max_episode_steps=30, backend=backend, record_statistics=False
    )
    theirs = gym.wrappers.vector.RecordEpisodeStatistics(bare)
    assert isinstance(ours, EpisodeStatistics)
    ours.reset(seed=3)
    theirs.reset(seed=3)
    rng = np.random.default_rng(0)
    finished = 0
    for _ in range(300):
        actions = rng.integers(0, 2, size=num_envs)
        *_, info_ours = ours.step(actions)
        *_, info_theirs = theirs.step(actions)
        assert ("_episode" in info_ours) == ("_episode" in info_theirs)
        if "_episode" in info_theirs:
            ended = info_theirs["_episode"]
            np.testing.assert_array_equal(info_ours["_episode"], ended)
            for key in ("r", "l"):
                np.testing.assert_allclose(
                    info_ours["episode"][key][ended], info_theirs["episode"][key][ended]
                )
            finished += int(ended.sum())
    assert finished >= 10 * num_envs  # episodes of 30 steps at most: many ended
    ours.close()
    theirs.close()
