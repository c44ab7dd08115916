"""Deep Q-learning (Mnih et al. 2015) with double Q-learning and dueling heads (Discrete actions).

The agent acts epsilon-greedily with `select_action`, stores transitions in a preallocated replay
buffer with `store_transition`, and `update` takes one gradient step of the Huber TD loss on a
sampled minibatch. Improvements over the 2015 agent, each switchable: double DQN targets (van
Hasselt et al. 2016), dueling value/advantage streams (Wang et al. 2016), soft (Polyak) target
updates (Lillicrap et al. 2016), gradient clipping.

On the CPU both networks run in NumPy (numpy_nets.py) on the torch modules' weights: acting and
the TD gradient are the same arithmetic as the torch path, which runs on CUDA.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from shared_utils.config import DQNConfig
from training_methods.reinforcement_learning.buffers import (
    NStepReturns,
    ReplayBuffer,
    ReplaySample,
    per_env,
)
from training_methods.reinforcement_learning.numpy_nets import (
    Cache,
    FlatAdam,
    NumpyQNetwork,
    uses_numpy,
)
from training_methods.reinforcement_learning.ppo_agent import adam, check_finite
from training_methods.reinforcement_learning.schedules import exponential_epsilon, linear_epsilon


def _relu_mlp(in_dim: int, hidden_dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.ReLU(),
        nn.Linear(hidden_dim, hidden_dim),
        nn.ReLU(),
    )


class QNetwork(nn.Module):
    """Feature layers and one linear head: Q(s, .)."""

    def __init__(self, state_dim: int, action_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.features = _relu_mlp(state_dim, hidden_dim)
        self.head = nn.Linear(hidden_dim, action_dim)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """(batch, state_dim) -> (batch, action_dim)"""
        return self.head(self.features(obs))


class DuelingDQNNetwork(nn.Module):
    """Feature layers, a value stream V(s) and an advantage stream A(s, a) (Wang et al. 2016).

    Q(s, a) = V(s) + A(s, a) - mean_a' A(s, a'): subtracting the mean makes V and A identifiable.
    """

    def __init__(self, state_dim: int, action_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.features = _relu_mlp(state_dim, hidden_dim)
        self.value_stream = nn.Linear(hidden_dim, 1)
        self.advantage_stream = nn.Linear(hidden_dim, action_dim)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """(batch, state_dim) -> (batch, action_dim)"""
        features = self.features(obs)
        advantages = self.advantage_stream(features)
        return self.value_stream(features) + advantages - advantages.mean(dim=-1, keepdim=True)


class DQNAgent:
    """Epsilon-greedy acting, replay, and one TD gradient step per `update()`.

    Exploration: `epsilon_schedule="exponential"` multiplies epsilon by `epsilon_decay` after every
    update (the specification's schedule); `"linear"` lowers it from `epsilon_start` to
    `epsilon_end` over the first `exploration_steps` stored transitions.
    The target network follows the online one every `target_update` updates: a copy when
    `tau` is 1 (hard update), `target += tau * (online - target)` otherwise (soft update).
    """

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        config: DQNConfig | None = None,
        *,
        seed: int,
        device: torch.device | str = "cpu",
    ) -> None:
        """`config` holds the hyper-parameters (`DQNConfig`'s defaults when None: the config
        section is their one source); `seed` (the run's `common.seed`) seeds exploration and
        replay sampling."""
        config = config if config is not None else DQNConfig()
        self.state_dim = state_dim
        self.action_dim = action_dim
        self.gamma = config.gamma
        self.epsilon_start = config.epsilon_start
        self.epsilon_end = config.epsilon_end
        self.epsilon_decay = config.epsilon_decay
        self.epsilon_schedule = config.epsilon_schedule
        self.exploration_steps = config.exploration_steps
        self.batch_size = config.batch_size
        self.target_update = config.target_update
        self.double_dqn = config.double_dqn
        self.tau = config.tau
        self.max_grad_norm = config.max_grad_norm
        self.device = torch.device(device)
        network = DuelingDQNNetwork if config.use_dueling else QNetwork
        self.q_network = network(state_dim, action_dim, config.hidden_dim).to(self.device)
        self.target_network = network(state_dim, action_dim, config.hidden_dim).to(self.device)
        self.target_network.load_state_dict(self.q_network.state_dict())
        self.target_network.requires_grad_(False)
        self.optimizer = adam(
            self.q_network.parameters(), config.learning_rate, eps=1e-8, device=self.device
        )
        # On the CPU the networks run in NumPy, on the same weights (see numpy_nets.py).
        self.numpy_networks: tuple[NumpyQNetwork, NumpyQNetwork] | None = None
        self.numpy_adam: FlatAdam | None = None
        if uses_numpy(self.device):
            online = NumpyQNetwork(self.q_network, trainable=True)
            self.numpy_networks = (online, NumpyQNetwork(self.target_network, trainable=False))
            assert online.flat is not None
            self.numpy_adam = FlatAdam(self.optimizer, online.flat)
        self.buffer = ReplayBuffer(config.buffer_size, (state_dim,))
        self.n_step = config.n_step
        self.n_step_returns: NStepReturns | None = None  # built for the first batch size seen
        self.rng = np.random.default_rng(seed)
        self.steps = 0  # transitions stored
        self.updates = 0  # gradient steps taken

    @property
    def epsilon(self) -> float:
        if self.epsilon_schedule == "linear":
            return linear_epsilon(
                self.epsilon_start, self.epsilon_end, self.exploration_steps, self.steps
            )
        return exponential_epsilon(
            self.epsilon_start, self.epsilon_end, self.epsilon_decay, self.updates
        )

    # ---------------------------------------------------------------------------------------------
    # acting
    # ---------------------------------------------------------------------------------------------

    def select_action(self, state: np.ndarray, training: bool = True) -> np.ndarray | int:
        """Greedy action, or with probability epsilon (when `training`) a uniformly random one.

        `state` is one observation (returns an int) or a batch (returns (batch,) int64).
        """
        array = np.asarray(state, dtype=np.float32)
        batched = array.ndim == 2
        array = array if batched else array[None]
        if training and len(array) == 1:  # one environment: one draw (the same as the batch's)
            if self.rng.random() < self.epsilon:
                actions = self.rng.integers(0, self.action_dim, size=1)
            else:
                actions = self.q_values(array).argmax(axis=-1)
            return actions if batched else int(actions[0])
        explore = np.zeros(len(array), dtype=bool)
        if training:
            explore = self.rng.random(len(array)) < self.epsilon
        if explore.all():  # no need to ask the network
            actions = self.rng.integers(0, self.action_dim, size=len(array))
        else:
            actions = self.q_values(array).argmax(axis=-1)
            if explore.any():
                random_actions = self.rng.integers(0, self.action_dim, size=len(array))
                actions = np.where(explore, random_actions, actions)
        return actions if batched else int(actions[0])

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        """Q(obs, .) of the online network: (batch, action_dim)."""
        if self.numpy_networks is not None:
            return self.numpy_networks[0].forward(obs)
        with torch.no_grad():
            return self.q_network(torch.from_numpy(obs).to(self.device)).cpu().numpy()

    def store_transition(
        self,
        state: np.ndarray,
        action: np.ndarray | int,
        reward: np.ndarray | float,
        next_state: np.ndarray,
        done: np.ndarray | bool,
        *,
        truncated: np.ndarray | bool = False,
        valid: np.ndarray | bool = True,
    ) -> None:
        """Store one transition or a vector step (a leading (num_envs,) axis).

        `done` means terminal: no bootstrap from next_state. A time-limit truncation is not
        terminal: pass done=False and truncated=True (n-step windows end there).
        `valid=False` marks a vector environment's autoreset step, which is not stored.
        """
        actions = np.atleast_1d(np.asarray(action, dtype=np.int64))
        n = len(actions)
        states = np.reshape(state, (n, self.state_dim))
        rewards = per_env(reward, n, np.float32)
        next_states = np.reshape(next_state, (n, self.state_dim))
        terminated = per_env(done, n, bool)
        keep = per_env(valid, n, bool)
        self.steps += int(keep.sum())
        if self.n_step == 1:
            if not keep.all():
                states, actions, rewards = states[keep], actions[keep], rewards[keep]
                next_states, terminated = next_states[keep], terminated[keep]
            self.buffer.add(states, actions, rewards, next_states, terminated)
            return
        if self.n_step_returns is None:
            self.n_step_returns = NStepReturns(self.n_step, self.gamma, n)
        ready = self.n_step_returns.push(
            states,
            actions,
            rewards,
            next_states,
            terminated,
            per_env(truncated, n, bool),
            keep,
        )
        for transition in ready:
            self.buffer.add_one(*transition)

    # ---------------------------------------------------------------------------------------------
    # learning
    # ---------------------------------------------------------------------------------------------

    def update(self) -> dict[str, float]:
        """One gradient step of the Huber TD loss on a replay minibatch; syncs the target."""
        batch = self.buffer.sample(self.batch_size, self.rng)
        if self.numpy_networks is not None:
            losses = self._numpy_step(batch)
        else:
            losses = self._torch_step(batch)
        self.updates += 1
        if self.updates % self.target_update == 0:
            self.sync_target()
        return losses

    def _numpy_step(self, batch: ReplaySample) -> dict[str, float]:
        """`_torch_step` in NumPy: the same targets, loss and gradient, written out."""
        assert self.numpy_networks is not None
        online, target = self.numpy_networks
        next_q_target = target.forward(batch.next_observations)
        if self.double_dqn:  # the online network picks, the target network evaluates
            next_actions = online.forward(batch.next_observations).argmax(axis=-1)
            next_q = next_q_target[np.arange(len(next_actions)), next_actions]
        else:
            next_q = next_q_target.max(axis=1)
        discounts = self.gamma**batch.horizons
        td_target = batch.rewards + discounts * (1.0 - batch.terminations) * next_q
        caches = (Cache(), Cache(), Cache())
        q_all = online.forward(batch.observations, caches)
        rows = np.arange(len(batch.actions))
        q = q_all[rows, batch.actions]
        error = q - td_target
        # Huber (smooth L1, beta 1): e^2 / 2 inside |e| < 1, |e| - 1/2 outside; both are
        # c (e - c / 2) with c = clip(e, -1, 1), which is also the loss's gradient
        clipped = np.clip(error, -1.0, 1.0)
        loss = float(np.mean(clipped * (error - 0.5 * clipped)))
        check_finite(loss, "DQN loss")
        grad_q = np.zeros_like(q_all)
        grad_q[rows, batch.actions] = clipped / len(error)
        online.backward(grad_q, caches)
        assert online.flat is not None and self.numpy_adam is not None
        online.flat.clip(self.max_grad_norm)
        self.numpy_adam.step()
        return {"loss": loss, "q_mean": float(q.mean())}

    def _torch_step(self, batch: ReplaySample) -> dict[str, float]:
        """One gradient step with autograd (the CUDA path)."""
        obs = torch.from_numpy(batch.observations).to(self.device)
        next_obs = torch.from_numpy(batch.next_observations).to(self.device)
        actions = torch.from_numpy(batch.actions).to(self.device)
        rewards = torch.from_numpy(batch.rewards).to(self.device)
        terminations = torch.from_numpy(batch.terminations).to(self.device)
        discounts = self.gamma ** torch.from_numpy(batch.horizons).to(self.device)  # n-step

        with torch.no_grad():
            next_q_target = self.target_network(next_obs)  # (batch, action_dim)
            if self.double_dqn:  # the online network picks, the target network evaluates
                next_actions = self.q_network(next_obs).argmax(dim=-1, keepdim=True)
                next_q = next_q_target.gather(1, next_actions).squeeze(1)
            else:
                next_q = next_q_target.max(dim=1).values
            td_target = rewards + discounts * (1.0 - terminations) * next_q
        q = self.q_network(obs).gather(1, actions.unsqueeze(1)).squeeze(1)  # (batch,)
        loss = F.smooth_l1_loss(q, td_target)
        check_finite(loss, "DQN loss")

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.q_network.parameters(), self.max_grad_norm)
        self.optimizer.step()
        return {"loss": loss.item(), "q_mean": q.mean().item()}

    @torch.no_grad()
    def sync_target(self) -> None:
        """Hard copy (tau = 1) or Polyak average of the online weights into the target network."""
        for target, online in zip(
            self.target_network.parameters(), self.q_network.parameters(), strict=True
        ):
            if self.tau >= 1.0:
                target.copy_(online)
            else:
                target.lerp_(online, self.tau)

    # ---------------------------------------------------------------------------------------------
    # checkpoints
    # ---------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "q_network": self.q_network.state_dict(),
            "target_network": self.target_network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "steps": self.steps,
            "updates": self.updates,
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict, *, with_optimizer: bool = True) -> None:
        self.q_network.load_state_dict(state["q_network"])
        self.target_network.load_state_dict(state.get("target_network", state["q_network"]))
        if with_optimizer and "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
            if self.numpy_adam is not None:
                self.numpy_adam.bind()
        self.steps = int(state.get("steps", 0))
        self.updates = int(state.get("updates", 0))
        if "rng" in state:
            self.rng.bit_generator.state = state["rng"]
