"""RL maths with exact expected values: GAE, schedules, the replay and rollout buffers."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from training_methods.reinforcement_learning.buffers import (
    NStepReturns,
    ReplayBuffer,
    RolloutBuffer,
    compute_gae,
)
from training_methods.reinforcement_learning.ppo_agent import (
    clipped_surrogate_loss,
    explained_variance,
    gaussian_log_prob,
    value_loss,
)
from training_methods.reinforcement_learning.schedules import (
    exponential_epsilon,
    linear_annealing,
    linear_epsilon,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_gae_matches_a_hand_computation_with_termination_and_truncation() -> None:
    """Two environments, gamma 0.9, lambda 0.8 (gamma * lambda = 0.72), bootstrap value 5.

    env 0 terminates at t=1: no bootstrap, and the recursion stops there.
    env 1 is truncated at t=1: it bootstraps from V(final obs) = values[2] = 10 (next-step
    autoreset: row 2 holds the final observation), and the recursion stops there too.
    """
    rewards = np.array([[1, 1], [1, 1], [1, 0], [1, 1]], dtype=np.float32)
    values = np.array([[1, 1], [2, 2], [3, 10], [4, 4]], dtype=np.float32)
    terminations = np.array([[0, 0], [1, 0], [0, 0], [0, 0]], dtype=np.float32)
    truncations = np.array([[0, 0], [0, 1], [0, 0], [0, 0]], dtype=np.float32)
    last_values = np.array([5, 5], dtype=np.float32)

    advantages, returns = compute_gae(
        rewards, values, last_values, terminations, truncations, gamma=0.9, gae_lambda=0.8
    )

    expected_env0 = [
        1 + 0.9 * 2 - 1 + 0.72 * (1 + 0 - 2),  # t=0: delta 1.8, plus 0.72 * A1 = 1.08
        1 + 0 - 2,  # t=1: terminated, no bootstrap: -1
        1 + 0.9 * 4 - 3 + 0.72 * (1 + 0.9 * 5 - 4),  # t=2: 1.6 + 0.72 * 1.5 = 2.68
        1 + 0.9 * 5 - 4,  # t=3: bootstrap from last_values: 1.5
    ]
    expected_env1 = [
        1 + 0.9 * 2 - 1 + 0.72 * (1 + 0.9 * 10 - 2),  # t=0: 1.8 + 0.72 * 8 = 7.56
        1 + 0.9 * 10 - 2,  # t=1: truncated, bootstraps from V(final obs) = 10: 8
        0 + 0.9 * 4 - 10 + 0.72 * 1.5,  # t=2: the autoreset row (masked out of learning)
        1 + 0.9 * 5 - 4,  # t=3: 1.5
    ]
    np.testing.assert_allclose(advantages[:, 0], expected_env0, rtol=1e-6)
    np.testing.assert_allclose(advantages[:, 1], expected_env1, rtol=1e-6)
    np.testing.assert_allclose(advantages[:, 0], [1.08, -1.0, 2.68, 1.5], rtol=1e-6)
    np.testing.assert_allclose(returns, advantages + values, rtol=1e-6)


def test_gae_with_lambda_1_is_the_discounted_return_minus_the_value() -> None:
    rewards = np.ones((3, 1), dtype=np.float32)
    values = np.zeros((3, 1), dtype=np.float32)
    zeros = np.zeros((3, 1), dtype=np.float32)
    advantages, _ = compute_gae(rewards, values, np.array([0.0]), zeros, zeros, 0.5, 1.0)
    np.testing.assert_allclose(advantages[:, 0], [1 + 0.5 + 0.25, 1 + 0.5, 1])


def test_exponential_epsilon_is_the_specification_schedule() -> None:
    assert exponential_epsilon(1.0, 0.01, 0.5, 0) == 1.0
    assert exponential_epsilon(1.0, 0.01, 0.5, 3) == 0.125
    assert exponential_epsilon(1.0, 0.2, 0.5, 3) == 0.2  # floor
    assert exponential_epsilon(1.0, 0.01, 0.995, 100) == pytest.approx(0.995**100)


def test_linear_epsilon() -> None:
    assert linear_epsilon(1.0, 0.0, 100, 0) == 1.0
    assert linear_epsilon(1.0, 0.0, 100, 25) == 0.75
    assert linear_epsilon(1.0, 0.04, 100, 50) == pytest.approx(0.52)
    assert linear_epsilon(1.0, 0.04, 100, 100) == 0.04
    assert linear_epsilon(1.0, 0.04, 100, 10_000) == 0.04
    assert linear_epsilon(1.0, 0.04, 0, 0) == 0.04


def test_linear_annealing() -> None:
    assert linear_annealing(1e-3, 1.0) == 1e-3
    assert linear_annealing(1e-3, 0.25) == pytest.approx(2.5e-4)
    assert linear_annealing(1e-3, -0.5) == 0.0
    assert linear_annealing(1e-3, 3.0) == 1e-3


def _transitions(values: list[int]) -> tuple[np.ndarray, ...]:
    x = np.array(values, dtype=np.float32)
    return x[:, None], np.array(values), x, x[:, None] + 100, (x % 2 == 0).astype(np.float32)


def test_replay_buffer_wraps_around_and_overwrites_the_oldest() -> None:
    buffer = ReplayBuffer(4, (1,))
    buffer.add(*_transitions([0, 1, 2]))
    assert (buffer.pos, len(buffer)) == (3, 3)
    buffer.add(*_transitions([3, 4, 5]))  # rows 3, 0, 1
    assert (buffer.pos, len(buffer)) == (2, 4)
    assert buffer.observations[:, 0].tolist() == [4, 5, 2, 3]
    assert buffer.actions.tolist() == [4, 5, 2, 3]
    assert buffer.next_observations[:, 0].tolist() == [104, 105, 102, 103]
    assert buffer.terminations.tolist() == [1, 0, 1, 0]
    # A checkpoint keeps the transitions oldest first and restores the same contents.
    state = buffer.state_dict()
    assert state["actions"].tolist() == [2, 3, 4, 5]
    restored = ReplayBuffer(4, (1,))
    restored.load_state_dict(state)
    sample = restored.sample(50, np.random.default_rng(0))
    assert set(sample.actions.tolist()) == {2, 3, 4, 5}
    np.testing.assert_array_equal(sample.next_observations[:, 0], sample.actions + 100)
    # A smaller buffer keeps the newest.
    small = ReplayBuffer(2, (1,))
    small.load_state_dict(state)
    assert sorted(small.actions.tolist()) == [4, 5]


def test_replay_buffer_samples_only_filled_rows() -> None:
    buffer = ReplayBuffer(1000, (1,))
    buffer.add(*_transitions([7, 8]))
    sample = buffer.sample(64, np.random.default_rng(1))
    assert set(sample.actions.tolist()) <= {7, 8} and sample.observations.shape == (64, 1)


def test_rollout_buffer_refuses_to_overfill() -> None:
    buffer = RolloutBuffer(2, 3, (4,), (), np.int64)
    row = (np.zeros((3, 4)), np.zeros(3), np.ones(3), np.zeros(3), np.zeros(3))
    extra = (np.zeros(3), np.zeros(3), np.ones(3, dtype=bool))
    buffer.add(*row, *extra)
    buffer.add(*row, *extra)
    assert buffer.full
    with pytest.raises(IndexError):
        buffer.add(*row, *extra)


def test_clipped_surrogate_loss() -> None:
    ratio = torch.tensor([1.5, 0.5, 1.0])
    advantages = torch.tensor([1.0, 1.0, -2.0])
    # min(1.5*1, 1.2*1) = 1.2; min(0.5*1, 0.8*1) = 0.5; min(-2, -2) = -2 -> mean -0.1
    assert clipped_surrogate_loss(ratio, advantages, 0.2).item() == pytest.approx(0.1)


def test_value_loss_clipping_is_pessimistic() -> None:
    values, returns, old = torch.tensor([3.0]), torch.tensor([3.0]), torch.tensor([1.0])
    assert value_loss(values, returns, old, None).item() == 0.0
    # clipped value 1 + 0.5 = 1.5: max(0, (1.5 - 3)^2) = 2.25
    assert value_loss(values, returns, old, 0.5).item() == pytest.approx(2.25)


def test_gaussian_log_prob_matches_torch_normal() -> None:
    mean, log_std, action = (
        torch.tensor([[0.5, -1.0]]),
        torch.tensor([0.2, -0.3]),
        torch.tensor([[1.0, 0.0]]),
    )
    expected = torch.distributions.Normal(mean, log_std.exp()).log_prob(action).sum(-1)
    assert torch.allclose(gaussian_log_prob(mean, log_std, action), expected)


def test_explained_variance() -> None:
    target = np.array([1.0, 2.0, 3.0])
    assert explained_variance(target, target) == 1.0
    assert explained_variance(np.full(3, 2.0), target) == 0.0


def _step(nstep: NStepReturns, t: list[float], reward: list[float], **flags: list[bool]) -> list:
    """One vector step of 2 environments whose observation is the step index t."""
    obs = np.array([[x] for x in t], dtype=np.float32)
    ready = nstep.push(
        obs,
        np.array([0, 1]),
        np.array(reward, dtype=np.float32),
        obs + 1,
        np.array(flags.get("terminated", [False, False])),
        np.array(flags.get("truncated", [False, False])),
        np.array(flags.get("valid", [True, True])),
    )
    return [(float(o[0]), a, r, float(n[0]), term, h) for o, a, r, n, term, h in ready]


def test_n_step_returns_with_termination_truncation_and_autoreset() -> None:
    nstep = NStepReturns(n=3, gamma=0.5, num_envs=2)
    assert _step(nstep, [0, 0], [1, 10]) == []
    assert _step(nstep, [1, 1], [2, 20]) == []
    # Full windows: 1 + 0.5*2 + 0.25*4 = 3 from t=0 to t=3, horizon 3 (bootstrap with 0.5**3).
    assert _step(nstep, [2, 2], [4, 40]) == [
        (0.0, 0, 3.0, 3.0, 0.0, 3),
        (0.0, 1, 30.0, 3.0, 0.0, 3),
    ]
    # env 0 terminates at t=3: its three open windows are emitted, none bootstraps.
    # env 1 is truncated at t=3: the same windows, bootstrapping from the final observation 4.
    ready = _step(nstep, [3, 3], [8, 80], terminated=[True, False], truncated=[False, True])
    assert ready == [
        (1.0, 0, 2 + 0.5 * 4 + 0.25 * 8, 4.0, 1.0, 3),
        (2.0, 0, 4 + 0.5 * 8, 4.0, 1.0, 2),
        (3.0, 0, 8.0, 4.0, 1.0, 1),
        (1.0, 1, 20 + 0.5 * 40 + 0.25 * 80, 4.0, 0.0, 3),
        (2.0, 1, 40 + 0.5 * 80, 4.0, 0.0, 2),
        (3.0, 1, 80.0, 4.0, 0.0, 1),
    ]
    # The autoreset step that follows is not a transition and starts no window.
    assert _step(nstep, [4, 4], [0, 0], valid=[False, False]) == []
    assert nstep.windows[0] == deque() and nstep.windows[1] == deque()


def test_one_step_returns_are_plain_transitions() -> None:
    nstep = NStepReturns(n=1, gamma=0.9, num_envs=2)
    assert _step(nstep, [5, 6], [1, 2]) == [(5.0, 0, 1.0, 6.0, 0.0, 1), (6.0, 1, 2.0, 7.0, 0.0, 1)]


def test_checkpoint_arrays_keep_their_shapes() -> None:
    from training_methods.reinforcement_learning.checkpoints import to_storable

    stored = to_storable({"count": np.asarray(3.0), "strided": np.zeros((2, 4))[:, ::2], "n": [1]})
    assert stored["count"].shape == () and stored["strided"].shape == (2, 2)
    assert stored["n"] == [1]
