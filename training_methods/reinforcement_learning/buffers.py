"""Experience storage: the PPO rollout buffer with GAE, and the DQN replay buffer.

Both are preallocated numpy arrays filled in place: no Python objects per transition, and one
conversion to torch per update (PPO) or per sampled minibatch (DQN).

Rows of the rollout buffer are consecutive steps of a gymnasium vector environment in its default
next-step autoreset mode: the step that ends an episode returns the episode's *final* observation,
and the following `step()` only resets that sub-environment (its action is ignored, its reward is
0). That reset row is not a transition; `valid` marks it False and nothing is learned from it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


def per_env(value: np.ndarray | float | bool, n: int, dtype: type | None = None) -> np.ndarray:
    """`value` as an (n,) array: one per sub-environment (a scalar is repeated). Arrays already
    of that shape pass through as they are (np.broadcast_to costs microseconds per call, and the
    loops store every step)."""
    array = np.asarray(value, dtype=dtype)
    return array if array.shape == (n,) else np.broadcast_to(array, (n,))


def compute_gae(
    rewards: np.ndarray,
    values: np.ndarray,
    last_values: np.ndarray,
    terminations: np.ndarray,
    truncations: np.ndarray,
    gamma: float,
    gae_lambda: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimation (Schulman et al. 2016) over a (steps, envs) rollout.

    `values[t]` is V(s_t); the value of s_{t+1} is `values[t + 1]` (or `last_values` after the last
    row). Under next-step autoreset this holds at episode ends too: the row after an end holds the
    final observation. A *terminated* step has no future (no bootstrap); a *truncated* one (time
    limit) does, so it bootstraps from V(final observation). Either way the advantage recursion
    stops at an episode end. Returns (advantages, returns), each (steps, envs).
    """
    num_steps = rewards.shape[0]
    advantages = np.zeros_like(rewards)
    last_gae = np.zeros_like(last_values)
    for t in reversed(range(num_steps)):
        next_values = last_values if t == num_steps - 1 else values[t + 1]
        not_terminal = 1.0 - terminations[t]
        not_done = 1.0 - np.maximum(terminations[t], truncations[t])
        delta = rewards[t] + gamma * next_values * not_terminal - values[t]
        last_gae = delta + gamma * gae_lambda * not_done * last_gae
        advantages[t] = last_gae
    return advantages, advantages + values


class RolloutBuffer:
    """One PPO rollout: `num_steps` rows of `num_envs` environments."""

    def __init__(
        self,
        num_steps: int,
        num_envs: int,
        obs_shape: tuple[int, ...],
        action_shape: tuple[int, ...],
        action_dtype: type | np.dtype,
    ) -> None:
        self.num_steps = num_steps
        self.num_envs = num_envs
        shape = (num_steps, num_envs)
        self.observations = np.zeros(shape + obs_shape, dtype=np.float32)
        self.actions = np.zeros(shape + action_shape, dtype=action_dtype)
        self.log_probs = np.zeros(shape, dtype=np.float32)
        self.values = np.zeros(shape, dtype=np.float32)
        self.rewards = np.zeros(shape, dtype=np.float32)
        self.terminations = np.zeros(shape, dtype=np.float32)
        self.truncations = np.zeros(shape, dtype=np.float32)
        self.valid = np.ones(shape, dtype=bool)
        self.pos = 0

    @property
    def full(self) -> bool:
        return self.pos == self.num_steps

    def reset(self) -> None:
        self.pos = 0

    def add(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        log_prob: np.ndarray,
        value: np.ndarray,
        valid: np.ndarray,
    ) -> None:
        """Store one vector step; every argument has a leading (num_envs,) axis."""
        if self.full:
            raise IndexError("rollout buffer is full; call reset() after the update")
        t = self.pos
        self.observations[t] = obs
        self.actions[t] = action
        self.rewards[t] = reward
        self.terminations[t] = terminated
        self.truncations[t] = truncated
        self.log_probs[t] = log_prob
        self.values[t] = value
        self.valid[t] = valid
        self.pos += 1


@dataclass
class ReplaySample:
    observations: np.ndarray  # (batch, *obs_shape)
    actions: np.ndarray  # (batch,)
    rewards: np.ndarray  # (batch,)
    next_observations: np.ndarray  # (batch, *obs_shape)
    terminations: np.ndarray  # (batch,) 1.0 where the episode really ended (no bootstrap)
    horizons: np.ndarray  # (batch,) rewards summed in `rewards`: bootstrap with gamma**horizon


class ReplayBuffer:
    """A circular buffer of transitions (Lin 1992; Mnih et al. 2015), preallocated in numpy.

    When full, new transitions overwrite the oldest ones. `next_observations` is stored on its own
    (not as the next row) because rows from several environments interleave.
    """

    def __init__(self, capacity: int, obs_shape: tuple[int, ...]) -> None:
        if capacity < 1:
            raise ValueError(f"replay buffer capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.observations = np.zeros((capacity, *obs_shape), dtype=np.float32)
        self.next_observations = np.zeros((capacity, *obs_shape), dtype=np.float32)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminations = np.zeros(capacity, dtype=np.float32)
        self.horizons = np.ones(capacity, dtype=np.float32)
        self.pos = 0  # next row to write
        self.size = 0  # rows holding a transition

    def __len__(self) -> int:
        return self.size

    def add(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_obs: np.ndarray,
        terminations: np.ndarray,
        horizons: np.ndarray | None = None,
    ) -> None:
        """Store a batch of transitions; every argument has a leading (n,) axis.

        `horizons`: how many rewards each `rewards` entry sums (n-step returns); 1 when None.
        """
        n = len(actions)
        if self.pos + n <= self.capacity:
            rows: slice | np.ndarray = slice(self.pos, self.pos + n)
        else:
            rows = (self.pos + np.arange(n)) % self.capacity
        self.observations[rows] = obs
        self.actions[rows] = actions
        self.rewards[rows] = rewards
        self.next_observations[rows] = next_obs
        self.terminations[rows] = terminations
        self.horizons[rows] = 1.0 if horizons is None else horizons
        self.pos = int((self.pos + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)

    def add_one(
        self,
        obs: np.ndarray,
        action: int,
        reward: float,
        next_obs: np.ndarray,
        terminated: float,
        horizon: int = 1,
    ) -> None:
        """Store one transition (no leading axis): the n-step path's, one row at a time without
        building arrays first."""
        pos = self.pos
        self.observations[pos] = obs
        self.actions[pos] = action
        self.rewards[pos] = reward
        self.next_observations[pos] = next_obs
        self.terminations[pos] = terminated
        self.horizons[pos] = horizon
        self.pos = (pos + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator) -> ReplaySample:
        """`batch_size` transitions drawn uniformly with replacement."""
        rows = rng.integers(0, self.size, size=batch_size)
        return ReplaySample(
            observations=self.observations[rows],
            actions=self.actions[rows],
            rewards=self.rewards[rows],
            next_observations=self.next_observations[rows],
            terminations=self.terminations[rows],
            horizons=self.horizons[rows],
        )

    def state_dict(self) -> dict[str, np.ndarray | int]:
        """The filled rows in insertion order (oldest first), for a resumable checkpoint."""
        order = np.arange(self.pos - self.size, self.pos) % self.capacity
        return {
            "observations": self.observations[order],
            "actions": self.actions[order],
            "rewards": self.rewards[order],
            "next_observations": self.next_observations[order],
            "terminations": self.terminations[order],
            "horizons": self.horizons[order],
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        self.pos, self.size = 0, 0
        keep = slice(max(0, len(state["actions"]) - self.capacity), None)
        self.add(
            state["observations"][keep],
            state["actions"][keep],
            state["rewards"][keep],
            state["next_observations"][keep],
            state["terminations"][keep],
            state["horizons"][keep],
        )


class NStepReturns:
    """Turns one-step transitions of several environments into n-step ones (Sutton 1988; used by
    Rainbow, Hessel et al. 2018): reward r_t + g r_t+1 + ... + g^(n-1) r_t+n-1, bootstrapped
    from s_t+n with g^n. At an episode end the remaining shorter windows are emitted too; a
    terminated window never bootstraps, a truncated one bootstraps from the final observation.
    """

    def __init__(self, n: int, gamma: float, num_envs: int) -> None:
        self.n = n
        self.gamma = gamma
        self.windows: list[deque[tuple[np.ndarray, int, float]]] = [
            deque() for _ in range(num_envs)
        ]

    def push(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        valid: np.ndarray,
    ) -> list[tuple[np.ndarray, int, float, np.ndarray, float, int]]:
        """Add one vector step (each argument (num_envs, ...)); returns the n-step transitions
        completed by it as (obs, action, return, next_obs, terminated, horizon)."""
        ready = []
        for i, window in enumerate(self.windows):
            if not valid[i]:  # an autoreset step: not a transition
                continue
            window.append((obs[i], int(actions[i]), float(rewards[i])))
            if terminated[i] or truncated[i]:
                while window:
                    ready.append(self._emit(window, next_obs[i], float(terminated[i])))
                    window.popleft()
            elif len(window) == self.n:
                ready.append(self._emit(window, next_obs[i], 0.0))
                window.popleft()
        return ready

    def _emit(
        self, window: deque, next_obs: np.ndarray, terminated: float
    ) -> tuple[np.ndarray, int, float, np.ndarray, float, int]:
        ret = sum(self.gamma**k * reward for k, (_, _, reward) in enumerate(window))
        first_obs, first_action, _ = window[0]
        return first_obs, first_action, ret, next_obs, terminated, len(window)
