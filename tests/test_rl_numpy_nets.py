"""The agents' NumPy networks (numpy_nets.py) take the same steps as autograd and torch's modules.

Each test builds two agents with the same weights, one on the NumPy path (the CPU default) and one
forced onto the torch path (what CUDA runs), feeds both the same data and compares losses,
gradients and the weights after the optimiser's step.
"""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch

from shared_utils.config import DQNConfig, PPOConfig
from training_methods.reinforcement_learning.buffers import ReplaySample
from training_methods.reinforcement_learning.dqn_agent import DQNAgent
from training_methods.reinforcement_learning.numpy_nets import FlatParameters
from training_methods.reinforcement_learning.ppo_agent import PPOAgent

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _torch_twin(agent):
    """A deep copy of `agent` that runs its networks with torch (the CUDA path) on the CPU."""
    twin = copy.deepcopy(agent)
    if isinstance(twin, PPOAgent):
        twin.numpy_policy = None
    else:
        twin.numpy_networks = None
    return twin


def _weights(module: torch.nn.Module) -> list[np.ndarray]:
    return [p.detach().numpy().copy() for p in module.parameters()]


def _grads(module: torch.nn.Module) -> list[np.ndarray]:
    return [p.grad.detach().numpy().copy() for p in module.parameters()]


def _ppo_rollout(agent: PPOAgent, rng: np.random.Generator, n: int, continuous: bool):
    """Observations, actions and rollout values of `n` rows, old log-probs a little off the
    policy's own (so some ratios fall outside the clip range)."""
    obs = rng.standard_normal((n, agent.state_dim)).astype(np.float32) * 2
    actions, log_probs, values = agent.select_action(obs)
    old_log_probs = (log_probs + rng.normal(0, 0.3, n)).astype(np.float32)
    old_values = (values + rng.normal(0, 0.5, n)).astype(np.float32)
    advantages = rng.standard_normal(n).astype(np.float32)
    returns = (values + rng.standard_normal(n)).astype(np.float32)
    actions = actions.astype(np.float32 if continuous else np.int64)
    return obs, actions, old_log_probs, old_values, advantages, returns


@pytest.mark.parametrize(
    "continuous, shared, clip_value, activation",
    [
        (False, False, False, "tanh"),
        (False, True, True, "tanh"),
        (True, False, True, "tanh"),
        (True, True, False, "tanh"),
        (True, False, False, "relu"),
        (False, True, False, "relu"),
    ],
)
def test_ppo_numpy_update_matches_autograd(
    continuous: bool, shared: bool, clip_value: bool, activation: str
) -> None:
    torch.manual_seed(3)
    config = PPOConfig(
        activation=activation,
        hidden_dim=16,
        k_epochs=1,
        batch_size=64,
        num_envs=1,
        entropy_coef=0.05,
        clip_value_loss=clip_value,
        shared_features=shared,
        max_grad_norm=0.3,
        learning_rate=1e-2,
    )
    agent = PPOAgent(5, 3, config, continuous=continuous, num_steps=64)
    assert agent.numpy_policy is not None
    twin = _torch_twin(agent)
    assert twin.numpy_policy is None
    rollout = _ppo_rollout(agent, np.random.default_rng(0), 64, continuous)

    torch.manual_seed(5)  # the same minibatch order (one minibatch: order does not matter)
    ours = agent._optimise_numpy(*rollout)
    theirs = twin._optimise(*(torch.from_numpy(a) for a in rollout))

    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"):
        assert ours[key] == pytest.approx(theirs[key], rel=1e-4, abs=1e-6), key
    # the clipped gradients both wrote, and the weights Adam made of them
    for a, b in zip(_grads(agent.policy), _grads(twin.policy), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(_weights(agent.policy), _weights(twin.policy), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_ppo_numpy_acting_matches_torch() -> None:
    torch.manual_seed(0)
    for continuous in (False, True):
        agent = PPOAgent(4, 2, PPOConfig(hidden_dim=8), continuous=continuous, num_steps=4)
        twin = _torch_twin(agent)
        obs = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
        ours = agent.select_action(obs, deterministic=True)
        theirs = twin.select_action(obs, deterministic=True)
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(agent.value(obs), twin.value(obs), rtol=1e-5, atol=1e-6)
        # sampled actions: their log-probabilities are the policy's
        actions, log_probs, _ = agent.select_action(obs)
        with torch.no_grad():
            expected, _, _ = twin.policy.evaluate_actions(
                torch.from_numpy(obs), torch.from_numpy(actions)
            )
        np.testing.assert_allclose(log_probs, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_ppo_numpy_sampling_follows_the_policy() -> None:
    torch.manual_seed(0)
    agent = PPOAgent(3, 3, PPOConfig(hidden_dim=8), num_steps=4)
    with torch.no_grad():  # a policy far from uniform
        agent.policy.actor_head.bias.copy_(torch.tensor([0.0, 1.0, 2.0]))
    obs = np.zeros((20000, 3), dtype=np.float32)
    actions, _, _ = agent.select_action(obs)
    with torch.no_grad():
        probs = torch.softmax(agent.policy.actor(torch.from_numpy(obs[:1])), -1)[0].numpy()
    frequencies = np.bincount(actions, minlength=3) / len(actions)
    np.testing.assert_allclose(frequencies, probs, atol=0.015)


@pytest.mark.parametrize("dueling, double", [(True, True), (False, False), (True, False)])
def test_dqn_numpy_step_matches_autograd(dueling: bool, double: bool) -> None:
    torch.manual_seed(1)
    config = DQNConfig(
        hidden_dim=16, use_dueling=dueling, double_dqn=double, max_grad_norm=0.5, batch_size=32
    )
    agent = DQNAgent(4, 3, config, seed=0)
    assert agent.numpy_networks is not None
    with torch.no_grad():  # a target network that differs from the online one
        for p in agent.target_network.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    twin = _torch_twin(agent)
    rng = np.random.default_rng(2)
    batch = ReplaySample(
        observations=rng.standard_normal((32, 4)).astype(np.float32),
        actions=rng.integers(0, 3, 32),
        rewards=(rng.standard_normal(32) * 3).astype(np.float32),  # some |TD error| > 1
        next_observations=rng.standard_normal((32, 4)).astype(np.float32),
        terminations=(rng.random(32) < 0.2).astype(np.float32),
        horizons=rng.integers(1, 4, 32).astype(np.float32),
    )
    ours, theirs = agent._numpy_step(batch), twin._torch_step(batch)
    assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
    assert ours["q_mean"] == pytest.approx(theirs["q_mean"], rel=1e-5, abs=1e-6)
    for a, b in zip(_grads(agent.q_network), _grads(twin.q_network), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(_weights(agent.q_network), _weights(twin.q_network), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    obs = batch.observations
    np.testing.assert_array_equal(agent.select_action(obs, False), twin.select_action(obs, False))


def test_flat_gradients_clip_like_torch() -> None:
    layer = torch.nn.Linear(4, 3)
    flat = FlatParameters(layer.parameters())
    flat.grads[:] = np.arange(len(flat.grads), dtype=np.float32)
    twin = copy.deepcopy(layer)
    for p, q in zip(layer.parameters(), twin.parameters(), strict=True):
        q.grad = p.grad.clone()  # the same gradients, as separate tensors
    torch.nn.utils.clip_grad_norm_(twin.parameters(), 1.0)
    norm = flat.clip(1.0)
    assert norm == pytest.approx(float(np.linalg.norm(np.arange(15))))
    for p, q in zip(layer.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)


def test_a_restored_agent_takes_the_same_next_step() -> None:
    """The optimiser state FlatAdam keeps (torch's, as views) survives a checkpoint's round trip:
    after a few steps, a copy restored from the saved state takes the same next step."""
    torch.manual_seed(0)
    agent = PPOAgent(4, 2, PPOConfig(hidden_dim=8, k_epochs=2, batch_size=16), num_steps=4)
    rollout = _ppo_rollout(agent, np.random.default_rng(0), 32, False)
    for _ in range(3):
        agent._optimise_numpy(*rollout)
    buffer = io.BytesIO()
    torch.save(agent.state_dict(), buffer)
    buffer.seek(0)
    restored = PPOAgent(4, 2, PPOConfig(hidden_dim=8, k_epochs=2, batch_size=16), num_steps=4)
    restored.load_state_dict(torch.load(buffer, weights_only=False))
    for one in (agent, restored):
        torch.manual_seed(9)
        one._optimise_numpy(*rollout)
    for a, b in zip(_weights(agent.policy), _weights(restored.policy), strict=True):
        np.testing.assert_array_equal(a, b)
    saved = agent.optimizer.state_dict()["state"]
    assert [float(s["step"]) for s in saved.values()] == [16.0] * len(saved)  # 4 x 2 x 2


def test_a_restored_agent_anneals_its_learning_rate() -> None:
    """Loading the optimiser's state replaces its param group; FlatAdam must step with the new
    group's (annealed) learning rate: at the end of the budget, 0, so nothing moves."""
    config = PPOConfig(hidden_dim=8, num_envs=2, batch_size=4, k_epochs=2, anneal_lr=True)
    rng = np.random.default_rng(0)

    def fill(agent: PPOAgent) -> np.ndarray:
        for _ in range(4):
            obs = rng.standard_normal((2, 4)).astype(np.float32)
            action, log_prob, value = agent.select_action(obs)
            agent.store_transition(obs, action, rng.standard_normal(2), False, log_prob, value)
        return rng.standard_normal((2, 4)).astype(np.float32)

    torch.manual_seed(0)
    agent = PPOAgent(4, 2, config, num_steps=4)
    agent.update(next_state=fill(agent), progress_remaining=0.5)
    buffer = io.BytesIO()
    torch.save(agent.state_dict(), buffer)
    buffer.seek(0)
    restored = PPOAgent(4, 2, config, num_steps=4)
    restored.load_state_dict(torch.load(buffer, weights_only=False))
    before = _weights(restored.policy)
    stats = restored.update(next_state=fill(restored), progress_remaining=0.0)
    assert stats["learning_rate"] == 0.0
    for a, b in zip(before, _weights(restored.policy), strict=True):
        np.testing.assert_array_equal(a, b)


def test_ppo_network_options_shape_the_policy() -> None:
    """activation, orthogonal_init and log_std_init (the zoo's MuJoCo settings) build what they
    say, and a checkpoint's agent settings carry them."""
    from torch import nn

    torch.manual_seed(0)
    config = PPOConfig(hidden_dim=8, activation="relu", orthogonal_init=False, log_std_init=-2.0)
    agent = PPOAgent(3, 2, config, continuous=True, num_steps=4)
    assert [type(m) for m in agent.policy.actor_features] == [nn.Linear, nn.ReLU] * 2
    np.testing.assert_array_equal(agent.policy.log_std.detach().numpy(), [-2.0, -2.0])
    # torch's own initialisation: the head is not scaled to 0.01, the biases are not zero
    assert agent.policy.actor_head.bias.abs().sum() > 0
    assert float(agent.policy.actor_head.weight.std()) > 0.05
    # what a checkpoint stores of its agent builds the same network (evaluate-rl, --resume)
    from dataclasses import asdict

    from training_methods.reinforcement_learning.agents import build_agent

    kwargs = {**asdict(config), "state_dim": 3, "action_dim": 2, "continuous": True, "num_steps": 4}
    rebuilt = build_agent("ppo", kwargs, torch.device("cpu"))
    assert [type(m) for m in rebuilt.policy.critic_features] == [nn.Linear, nn.ReLU] * 2
    np.testing.assert_array_equal(rebuilt.policy.log_std.detach().numpy(), [-2.0, -2.0])
    default = PPOAgent(3, 2, PPOConfig(hidden_dim=8), continuous=True, num_steps=4)
    assert default.policy.actor_head.bias.abs().sum() == 0
    assert [type(m) for m in default.policy.actor_features] == [nn.Linear, nn.Tanh] * 2
