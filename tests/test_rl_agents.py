"""PPO and DQN agents: the specified API for Discrete and Box spaces, and the learning rules."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from shared_utils.config import DQNConfig, PPOConfig
from tests.rl_helpers import register_test_envs
from training_methods.reinforcement_learning import ppo_agent
from training_methods.reinforcement_learning.agents import build_agent
from training_methods.reinforcement_learning.buffers import compute_gae
from training_methods.reinforcement_learning.dqn_agent import DQNAgent, DuelingDQNNetwork, QNetwork
from training_methods.reinforcement_learning.envs import env_spaces, make_vector_env
from training_methods.reinforcement_learning.ppo_agent import ActorCritic, PPOAgent
from training_methods.reinforcement_learning.trainer import collect_rollout

register_test_envs()
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fill(agent: PPOAgent, rng: np.random.Generator, steps: int) -> np.ndarray:
    """Store `steps` random vector steps; returns the last observation."""
    obs = rng.standard_normal((agent.num_envs, agent.state_dim)).astype(np.float32)
    for t in range(steps):
        action, log_prob, value = agent.select_action(obs)
        done = np.full(agent.num_envs, t % 7 == 6)
        agent.store_transition(
            obs, action, rng.standard_normal(agent.num_envs), done, log_prob, value
        )
        obs = rng.standard_normal((agent.num_envs, agent.state_dim)).astype(np.float32)
    return obs


# --------------------------------------------------------------------------------------------------
# PPO
# --------------------------------------------------------------------------------------------------


def test_actor_critic_has_feature_layers_and_two_heads() -> None:
    network = {"activation": "tanh", "orthogonal_init": True, "log_std_init": 0.0}
    separate = ActorCritic(4, 2, hidden_dim=8, shared_features=False, **network)
    shared = ActorCritic(4, 2, hidden_dim=8, shared_features=True, **network)
    assert separate.actor_features is not separate.critic_features
    assert shared.actor_features is shared.critic_features
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(shared) == count(separate) - (4 * 8 + 8 + 8 * 8 + 8)
    assert separate.actor_head.out_features == 2 and separate.critic_head.out_features == 1


def test_ppo_select_action_single_and_batched_discrete() -> None:
    agent = PPOAgent(4, 3, PPOConfig(num_envs=5), num_steps=4)
    action, log_prob, value = agent.select_action(np.zeros(4, dtype=np.float32))
    assert action.shape == () and 0 <= int(action) < 3
    assert np.isscalar(float(log_prob)) and log_prob <= 0 and np.shape(value) == ()
    actions, log_probs, values = agent.select_action(np.zeros((5, 4), dtype=np.float32))
    assert actions.shape == log_probs.shape == values.shape == (5,)
    assert actions.dtype == np.int64
    # The first policy is near uniform (actor head initialised with std 0.01).
    np.testing.assert_allclose(np.exp(log_probs), 1 / 3, atol=0.01)


def test_ppo_select_action_box_is_gaussian() -> None:
    agent = PPOAgent(3, 2, PPOConfig(num_envs=4), continuous=True, num_steps=8)
    action, log_prob, _ = agent.select_action(np.zeros(3, dtype=np.float32))
    assert action.shape == (2,) and action.dtype == np.float32
    actions, log_probs, values = agent.select_action(np.zeros((4, 3), dtype=np.float32))
    assert actions.shape == (4, 2) and log_probs.shape == values.shape == (4,)
    mean, _, _ = agent.select_action(np.zeros((4, 3), dtype=np.float32), deterministic=True)
    assert np.allclose(mean, mean[0])  # deterministic: the mean, the same for equal states
    stats = agent.update(next_state=_fill(agent, np.random.default_rng(0), 8))
    assert np.isfinite(stats["policy_loss"]) and agent.policy.log_std.shape == (2,)


def test_ppo_store_transition_and_update_api() -> None:
    agent = PPOAgent(
        4, 2, PPOConfig(learning_rate=1e-3, k_epochs=2, batch_size=16, num_envs=1), num_steps=32
    )
    rng = np.random.default_rng(0)
    state = rng.standard_normal(4).astype(np.float32)
    for t in range(32):
        action, log_prob, value = agent.select_action(state)
        agent.store_transition(state, action, 1.0, t % 10 == 9, log_prob, value)
        state = rng.standard_normal(4).astype(np.float32)
    assert agent.buffer.full
    before = [p.detach().clone() for p in agent.policy.parameters()]
    losses = agent.update()
    assert set(losses) >= {"policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"}
    assert losses["minibatches"] == 2 * 2  # 2 epochs of 32 / 16 minibatches
    assert agent.buffer.pos == 0 and agent.updates == 1
    assert any(
        not torch.equal(b, p) for b, p in zip(before, agent.policy.parameters(), strict=True)
    )


def test_ppo_truncation_with_final_state_bootstraps_from_it() -> None:
    """A caller that resets its environment itself passes the final observation of a truncated
    episode: the advantage is r + gamma V(final) - V(s), not a bootstrap from the next episode."""
    torch.manual_seed(0)
    agent = PPOAgent(3, 2, PPOConfig(gamma=0.9, gae_lambda=0.95, num_envs=1), num_steps=2)
    s0, final, s1 = (np.full(3, x, dtype=np.float32) for x in (0.1, 2.0, -3.0))
    _, log_prob, v0 = agent.select_action(s0)
    agent.store_transition(s0, 0, 1.0, True, log_prob, v0, truncated=True, final_state=final)
    _, log_prob, v1 = agent.select_action(s1)
    agent.store_transition(s1, 1, 0.0, False, log_prob, v1)
    rollout = agent.buffer
    advantages, _ = compute_gae(
        rollout.rewards, rollout.values, np.zeros(1, np.float32), rollout.terminations,
        rollout.truncations, agent.gamma, agent.gae_lambda,
    )  # fmt: skip
    expected = 1.0 + 0.9 * agent.value(final) - v0
    assert abs(agent.value(final) - v1) > 1e-3  # the two bootstraps really differ
    assert advantages[0, 0] == pytest.approx(expected, abs=1e-5)
    assert advantages[1, 0] == pytest.approx(-v1, abs=1e-5)  # last row: no bootstrap given


@pytest.mark.parametrize("path", ["numpy", "torch"])
def test_ppo_ratio_is_exactly_one_on_the_first_minibatch(
    monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """The log-probabilities stored while acting are those the update recomputes, on the NumPy
    path (the CPU's) and the torch one (CUDA's)."""
    ratios: list[np.ndarray] = []
    original_loss = ppo_agent.clipped_surrogate_loss
    original_numpy = PPOAgent._numpy_loss_and_gradients

    def spy(ratio: torch.Tensor, advantages: torch.Tensor, clip_coef: float) -> torch.Tensor:
        ratios.append(ratio.detach().numpy().copy())
        return original_loss(ratio, advantages, clip_coef)

    def numpy_spy(self: PPOAgent, *args: Any) -> Any:
        losses, log_ratio = original_numpy(self, *args)
        ratios.append(np.exp(log_ratio))
        return losses, log_ratio

    monkeypatch.setattr(ppo_agent, "clipped_surrogate_loss", spy)
    monkeypatch.setattr(PPOAgent, "_numpy_loss_and_gradients", numpy_spy)
    for continuous in (False, True):
        ratios.clear()
        agent = PPOAgent(
            4,
            2,
            PPOConfig(k_epochs=3, batch_size=32, num_envs=4),
            continuous=continuous,
            num_steps=16,
        )
        if path == "torch":
            agent.numpy_policy = None
        agent.update(next_state=_fill(agent, np.random.default_rng(1), 16))
        assert len(ratios) == 3 * 2
        np.testing.assert_allclose(ratios[0], 1.0, atol=1e-6, rtol=0)
        assert not np.allclose(ratios[-1], 1.0, atol=1e-6, rtol=0)


def test_ppo_target_kl_stops_the_update_early() -> None:
    def minibatches(target_kl: float | None) -> float:
        torch.manual_seed(0)
        agent = PPOAgent(
            4,
            2,
            PPOConfig(
                learning_rate=0.05, k_epochs=10, batch_size=16, target_kl=target_kl, num_envs=2
            ),
            num_steps=16,
        )
        return agent.update(next_state=_fill(agent, np.random.default_rng(2), 16))["minibatches"]

    assert minibatches(None) == 10 * 2
    assert minibatches(1e-6) < 10 * 2


def test_ppo_learning_rate_is_annealed_with_the_budget() -> None:
    agent = PPOAgent(4, 2, PPOConfig(learning_rate=1e-3, num_envs=1), num_steps=8)
    assert agent.update(_fill(agent, np.random.default_rng(0), 8), 0.25)[
        "learning_rate"
    ] == pytest.approx(2.5e-4)
    fixed = PPOAgent(4, 2, PPOConfig(learning_rate=1e-3, anneal_lr=False, num_envs=1), num_steps=8)
    assert fixed.update(_fill(fixed, np.random.default_rng(0), 8), 0.25)["learning_rate"] == 1e-3
    assert fixed.optimizer.defaults["eps"] == 1e-5


def test_ppo_nan_loss_is_a_training_error() -> None:
    from shared_utils.errors import TrainingError

    agent = PPOAgent(4, 2, PPOConfig(num_envs=1), num_steps=4)
    obs = np.zeros(4, dtype=np.float32)
    for _ in range(4):
        action, log_prob, value = agent.select_action(obs)
        agent.store_transition(obs, action, float("nan"), False, log_prob, value)
    with pytest.raises(TrainingError, match="PPO loss"):
        agent.update()


def test_the_autoreset_step_is_masked_and_never_learned_from() -> None:
    """Counter-v0 ends after 3 steps; the 4th step of each cycle only resets it."""
    envs = make_vector_env("Counter-v0", 2, 0)
    spaces = env_spaces(envs, "Counter-v0")
    agent = PPOAgent(2, 2, PPOConfig(k_epochs=2, batch_size=8, num_envs=2), num_steps=8)
    obs, _ = envs.reset()
    steps: list[int] = []
    obs, previous_done = collect_rollout(
        agent,
        envs,
        spaces,
        obs,
        np.zeros(2, dtype=bool),
        lambda valid, info: steps.append(int(valid.sum())),
    )
    buffer = agent.buffer
    assert buffer.valid[:, 0].tolist() == [True, True, True, False, True, True, True, False]
    # The masked row holds the episode's final observation (3) and the reset's reward 0.
    assert buffer.observations[:, 0, 0].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert buffer.rewards[3, 0] == 0 and buffer.terminations[2, 0] == 1
    assert sum(steps) == 2 * 6  # reset steps are not counted as environment steps
    assert previous_done.tolist() == [False, False]  # the last row was a reset

    def update_with_masked_rewards(reward: float) -> list[torch.Tensor]:
        clone = PPOAgent(2, 2, PPOConfig(k_epochs=2, batch_size=8, num_envs=2), num_steps=8)
        clone.policy.load_state_dict(agent.policy.state_dict())
        for name in (
            "observations",
            "actions",
            "log_probs",
            "values",
            "rewards",
            "terminations",
            "truncations",
            "valid",
        ):
            getattr(clone.buffer, name)[:] = getattr(buffer, name)
        clone.buffer.pos = buffer.pos
        clone.buffer.rewards[~buffer.valid] = reward
        torch.manual_seed(0)
        clone.update(next_state=obs)
        return [p.detach().clone() for p in clone.policy.parameters()]

    for a, b in zip(update_with_masked_rewards(0.0), update_with_masked_rewards(1e6), strict=True):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------------
# DQN
# --------------------------------------------------------------------------------------------------


def test_dueling_network_combines_value_and_mean_centred_advantages() -> None:
    net = DuelingDQNNetwork(4, 3, hidden_dim=8)
    obs = torch.randn(5, 4)
    q = net(obs)
    features = net.features(obs)
    advantages = net.advantage_stream(features)
    expected = net.value_stream(features) + advantages - advantages.mean(dim=1, keepdim=True)
    assert q.shape == (5, 3) and torch.allclose(q, expected)
    assert torch.allclose(q.mean(dim=1, keepdim=True), net.value_stream(features), atol=1e-6)


def test_dqn_select_action_api() -> None:
    agent = DQNAgent(
        4, 3, DQNConfig(buffer_size=100, batch_size=8, epsilon_start=0.0, epsilon_end=0.0), seed=0
    )
    state = np.ones(4, dtype=np.float32)
    action = agent.select_action(state)
    assert isinstance(action, int) and 0 <= action < 3
    greedy = int(agent.q_network(torch.ones(1, 4)).argmax())
    assert agent.select_action(state, training=False) == greedy
    actions = agent.select_action(np.ones((6, 4), dtype=np.float32))
    assert actions.shape == (6,) and (actions == greedy).all()
    exploring = DQNAgent(
        4, 3, DQNConfig(buffer_size=100, batch_size=8), seed=3
    )  # epsilon 1 at the start
    assert set(exploring.select_action(np.ones((200, 4), dtype=np.float32)).tolist()) == {0, 1, 2}
    greedy_exploring = int(exploring.q_network(torch.ones(1, 4)).argmax())
    assert (exploring.select_action(np.ones((20, 4)), training=False) == greedy_exploring).all()


def test_dqn_use_dueling_switches_the_network() -> None:
    assert isinstance(
        DQNAgent(4, 2, DQNConfig(use_dueling=True), seed=0).q_network, DuelingDQNNetwork
    )
    assert isinstance(DQNAgent(4, 2, DQNConfig(use_dueling=False), seed=0).q_network, QNetwork)


def test_dqn_epsilon_schedules() -> None:
    agent = DQNAgent(
        4,
        2,
        DQNConfig(epsilon_schedule="exponential", epsilon_decay=0.5, epsilon_end=0.1),
        seed=0,
    )
    agent.updates = 2
    assert agent.epsilon == 0.25
    linear = DQNAgent(
        4, 2, DQNConfig(epsilon_schedule="linear", epsilon_end=0.0, exploration_steps=10), seed=0
    )
    linear.store_transition(
        np.zeros((4, 4)), np.zeros(4), np.zeros(4), np.zeros((4, 4)), np.zeros(4)
    )
    assert linear.steps == 4 and linear.epsilon == pytest.approx(0.6)


def _filled_dqn(**settings: Any) -> DQNAgent:
    agent = DQNAgent(4, 2, DQNConfig(buffer_size=256, batch_size=32, **settings), seed=0)
    rng = np.random.default_rng(0)
    agent.store_transition(
        rng.standard_normal((256, 4)),
        rng.integers(0, 2, 256),
        rng.standard_normal(256),
        rng.standard_normal((256, 4)),
        rng.integers(0, 2, 256),
    )
    return agent


@pytest.mark.parametrize("double_dqn", [True, False])
def test_dqn_update_is_the_huber_td_loss(double_dqn: bool) -> None:
    agent = _filled_dqn(double_dqn=double_dqn, use_dueling=False, target_update=1000)
    agent.q_network.head.bias.data += torch.tensor([0.0, 0.3])  # online and target now differ
    rng_state = agent.rng.bit_generator.state
    batch = agent.buffer.sample(agent.batch_size, agent.rng)
    agent.rng.bit_generator.state = rng_state  # update() draws the same minibatch
    obs, next_obs = torch.from_numpy(batch.observations), torch.from_numpy(batch.next_observations)
    with torch.no_grad():
        target_q = agent.target_network(next_obs)
        if double_dqn:
            next_q = target_q.gather(1, agent.q_network(next_obs).argmax(1, keepdim=True)).squeeze(
                1
            )
        else:
            next_q = target_q.max(1).values
        td = (
            torch.from_numpy(batch.rewards)
            + 0.99 * (1 - torch.from_numpy(batch.terminations)) * next_q
        )
        q = agent.q_network(obs).gather(1, torch.from_numpy(batch.actions)[:, None]).squeeze(1)
        expected = F.smooth_l1_loss(q, td).item()
    assert agent.update()["loss"] == pytest.approx(expected, rel=1e-6)


def test_dqn_hard_target_sync_every_target_update_updates() -> None:
    agent = _filled_dqn(target_update=3)

    def synced() -> bool:
        return all(
            torch.equal(t, o)
            for t, o in zip(
                agent.target_network.parameters(), agent.q_network.parameters(), strict=True
            )
        )

    assert synced()
    agent.update()
    agent.update()
    assert not synced()
    agent.update()
    assert synced()


def test_dqn_soft_target_update_moves_tau_of_the_way() -> None:
    agent = _filled_dqn(target_update=1, tau=0.25)
    before = [p.detach().clone() for p in agent.target_network.parameters()]
    agent.update()
    for old, target, online in zip(
        before, agent.target_network.parameters(), agent.q_network.parameters(), strict=True
    ):
        assert torch.allclose(target, old + 0.25 * (online - old), atol=1e-7)


def test_dqn_state_dict_round_trip() -> None:
    agent = _filled_dqn()
    agent.update()
    clone = DQNAgent(4, 2, DQNConfig(buffer_size=256, batch_size=32), seed=99)
    clone.load_state_dict(agent.state_dict())
    assert clone.updates == 1 and clone.steps == 256
    obs = np.random.default_rng(5).standard_normal((10, 4)).astype(np.float32)
    assert np.array_equal(clone.select_action(obs), agent.select_action(obs))


@pytest.mark.parametrize("n_step", [1, 3])
def test_dqn_replay_holds_no_autoreset_transitions(tmp_path, n_step: int) -> None:
    """Counter-v0 ends after 3 steps: every stored transition starts at t in {0, 1, 2}; none
    goes from the final observation 3 to a reset. With 3-step returns every window ends with
    the episode, at 3, after 3 - t rewards."""
    from shared_utils.config import ToolkitConfig
    from training_methods.reinforcement_learning.checkpoints import load_checkpoint
    from training_methods.reinforcement_learning.trainer import train

    config = ToolkitConfig()
    config.common.device = "cpu"
    config.logging.use_tensorboard = False
    rl = config.reinforcement_learning
    rl.training.eval_episodes = 1
    rl.training.env_id = "Counter-v0"
    rl.training.total_timesteps = 30
    rl.dqn.num_envs = 2
    rl.dqn.learning_starts = 8
    rl.dqn.batch_size = 4
    rl.dqn.hidden_dim = 8
    rl.dqn.n_step = n_step
    rl.dqn.normalize_observations = False  # the counter's raw values, to read the windows
    summary = train(config, "dqn", tmp_path / "run", show_progress=False)
    replay = load_checkpoint(tmp_path / "run" / summary["files"]["last_checkpoint"])[
        "replay_buffer"
    ]
    obs, next_obs = replay["observations"][:, 0], replay["next_observations"][:, 0]
    assert len(obs) == summary["steps"] == 30
    assert set(obs.tolist()) == {0.0, 1.0, 2.0}
    if n_step == 1:
        assert (next_obs == obs + 1).all() and (replay["horizons"] == 1).all()
        assert (replay["terminations"] == (next_obs == 3)).all()
    else:
        assert (next_obs == 3).all() and (replay["terminations"] == 1).all()
        assert (replay["horizons"] == 3 - obs).all()
        expected = [sum(0.99**k for k in range(3 - int(t))) for t in obs]
        assert np.allclose(replay["rewards"].numpy(), expected)


def test_dqn_observation_statistics_freeze_when_learning_starts(tmp_path) -> None:
    """The replay buffer stores normalised observations, so the statistics stop moving once
    training begins; the checkpoint carries them to evaluation."""
    from shared_utils.config import ToolkitConfig
    from training_methods.reinforcement_learning.checkpoints import load_checkpoint
    from training_methods.reinforcement_learning.evaluation import evaluate_checkpoint
    from training_methods.reinforcement_learning.trainer import train

    config = ToolkitConfig()
    config.common.device = "cpu"
    config.logging.use_tensorboard = False
    rl = config.reinforcement_learning
    rl.training.eval_episodes = 2
    rl.training.total_timesteps = 200
    rl.training.max_steps_per_episode = 50
    rl.dqn.learning_starts = 40
    rl.dqn.batch_size = 8
    rl.dqn.hidden_dim = 8
    rl.dqn.normalize_observations = True
    train(config, "dqn", tmp_path / "run", show_progress=False)
    saved = load_checkpoint(tmp_path / "run" / "final_model.pt")["normalization"]["observations"]
    assert 40 <= float(saved["count"]) < 50  # 40 steps and the resets among them, then frozen
    assert evaluate_checkpoint(tmp_path / "run" / "final_model.pt", 2, 0, "cpu")["episodes"] == 2


def test_agents_take_their_defaults_from_the_config_sections() -> None:
    ppo, dqn = PPOAgent(4, 2, num_steps=4), DQNAgent(4, 2, seed=0)
    assert (ppo.num_envs, ppo.lr, ppo.batch_size) == (8, 3e-4, 64)  # PPOConfig's
    assert ppo.buffer.rewards.shape == (4, 8)
    assert (dqn.batch_size, dqn.buffer.capacity, dqn.target_update) == (128, 100_000, 128)


def test_build_agent_reads_the_settings_of_older_checkpoints() -> None:
    # Checkpoints written before the agents took their config section: "lr", and only the
    # settings the agent's constructor had.
    old_ppo = {"state_dim": 4, "action_dim": 2, "lr": 0.01, "gamma": 0.9, "hidden_dim": 16,
               "continuous": False, "num_envs": 1, "num_steps": 8}  # fmt: skip
    agent = build_agent("ppo", old_ppo, torch.device("cpu"))
    assert isinstance(agent, PPOAgent)
    assert (agent.lr, agent.gamma, agent.num_envs) == (0.01, 0.9, 1)
    assert agent.optimizer.param_groups[0]["lr"] == 0.01
    old_dqn = {"state_dim": 4, "action_dim": 2, "lr": 0.02, "buffer_size": 32, "batch_size": 8,
               "hidden_dim": 16, "seed": 5}  # fmt: skip
    agent = build_agent("dqn", old_dqn, torch.device("cpu"))
    assert isinstance(agent, DQNAgent) and agent.buffer.capacity == 32
    assert agent.optimizer.param_groups[0]["lr"] == 0.02
    with pytest.raises(TypeError):
        build_agent("dqn", {**old_dqn, "depth": 3}, torch.device("cpu"))
