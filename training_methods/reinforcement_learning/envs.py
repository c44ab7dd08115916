"""The one place environments are built: `make_env` for one, `make_vector_env` for a batch.

Agents never see a gymnasium environment directly: the trainer collects through the vector-env
interface, so the backend (in-process `sync`, subprocess `async`, later a distributed engine) can
change here without touching the agents. Vector environments use gymnasium's next-step autoreset
explicitly (the trainer masks the reset step; see `buffers.py`). An environment gymnasium also
implements as one NumPy vector environment (CartPole) is built that way by the `auto` backend
when there are enough copies: one array operation steps them all.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from shared_utils.errors import ConfigurationError

VectorBackend = Literal["auto", "sync", "async"]
# From this many copies `auto` takes gymnasium's NumPy vector implementation where one exists.
# Measured on CartPole (2 cores): 126k steps/s against sync's 92k at 8 copies, even at 4, and
# half sync's speed at 1 (each of its array operations costs as much as stepping one copy).
NATIVE_VECTOR_MIN_ENVS = 8


@dataclass(frozen=True)
class EnvSpaces:
    """What an agent needs to know about an environment's spaces."""

    env_id: str
    obs_shape: tuple[int, ...]
    discrete: bool
    action_dim: int  # number of actions (Discrete) or action dimensions (Box)
    action_low: np.ndarray | None = None  # Box bounds, for clipping
    action_high: np.ndarray | None = None

    @property
    def state_dim(self) -> int:
        return int(np.prod(self.obs_shape))

    def describe(self) -> dict[str, object]:
        return {
            "env_id": self.env_id,
            "obs_shape": list(self.obs_shape),
            "action_space": "discrete" if self.discrete else "box",
            "action_dim": self.action_dim,
        }


def check_env_id(env_id: str) -> None:
    """Raise ConfigurationError for an id gymnasium does not know, listing close matches."""
    registry = gym.envs.registry
    if env_id in registry:
        return
    close = difflib.get_close_matches(env_id, list(registry), n=5, cutoff=0.6)
    hint = f" Close matches: {', '.join(close)}." if close else ""
    raise ConfigurationError(
        f"unknown environment id '{env_id}' (--env, or reinforcement_learning.training.env_id)."
        f"{hint} Any id registered with gymnasium works, e.g. CartPole-v1 or Pendulum-v1."
    )


def _time_limit(env_id: str, max_episode_steps: int | None) -> int | None:
    """The shorter of the registered time limit and `max_episode_steps` (None: no extra cut)."""
    registered = gym.spec(env_id).max_episode_steps
    if max_episode_steps is None:
        return registered
    return max_episode_steps if registered is None else min(registered, max_episode_steps)


def make_env(
    env_id: str, seed: int, index: int, max_episode_steps: int | None = None
) -> Callable[[], gym.Env]:
    """A thunk that builds sub-environment `index`, seeded with `seed + index`.

    Episodes are cut after `max_episode_steps` (a truncation, so returns still bootstrap), or at
    the environment's own registered limit when that is shorter.
    """
    limit = _time_limit(env_id, max_episode_steps)

    def thunk() -> gym.Env:
        env = gym.make(env_id, max_episode_steps=limit)
        env.reset(seed=seed + index)
        env.action_space.seed(seed + index)
        return env

    return thunk


def flat_observations(obs: np.ndarray) -> np.ndarray:
    """What the agents take: (num_envs, *obs_shape) -> (num_envs, state_dim) float32."""
    return np.asarray(obs, dtype=np.float32).reshape(len(obs), -1)


def native_vector_env(
    env_id: str, num_envs: int, seed: int, max_episode_steps: int | None = None
) -> gym.vector.VectorEnv | None:
    """gymnasium's own NumPy implementation of `num_envs` copies of `env_id` (its registered
    `vector_entry_point`: CartPole has one), seeded with `seed`; None when the environment has
    none, it needs a package that is not installed (the JAX ones), or it does not reset on the
    next step."""
    spec = gym.spec(env_id)
    if spec.vector_entry_point is None or spec.additional_wrappers:
        return None
    try:
        envs = gym.make_vec(
            env_id,
            num_envs,
            vectorization_mode="vector_entry_point",
            max_episode_steps=_time_limit(env_id, max_episode_steps),
        )
    except (ImportError, gym.error.Error):
        return None
    if envs.metadata.get("autoreset_mode") != gym.vector.AutoresetMode.NEXT_STEP:
        envs.close()
        return None
    envs.reset(seed=seed)
    envs.action_space.seed(seed)
    return envs


def make_vector_env(
    env_id: str,
    num_envs: int,
    seed: int,
    *,
    max_episode_steps: int | None = None,
    backend: VectorBackend = "auto",
    record_statistics: bool = True,
) -> gym.vector.VectorEnv:
    """`num_envs` copies of `env_id` behind gymnasium's vector interface, with next-step autoreset.

    `sync` steps them in this process one by one (for cheap environments like CartPole it was ~8x
    faster than subprocesses on 2 cores); `async` runs each in its own process; `auto` is
    gymnasium's NumPy vector implementation where the environment has one (CartPole) and there
    are at least NATIVE_VECTOR_MIN_ENVS copies, else `sync` (`SingleSyncVectorEnv` for one
    copy). With `record_statistics`,
    `info["episode"]` carries each finished episode's raw return and length.
    """
    check_env_id(env_id)
    native = None
    if backend == "auto" and num_envs >= NATIVE_VECTOR_MIN_ENVS:
        native = native_vector_env(env_id, num_envs, seed, max_episode_steps)
    thunks = [make_env(env_id, seed, i, max_episode_steps) for i in range(num_envs)]
    autoreset = gym.vector.AutoresetMode.NEXT_STEP
    try:
        if native is not None:
            envs: gym.vector.VectorEnv = native
        elif backend == "async":
            envs = gym.vector.AsyncVectorEnv(thunks, autoreset_mode=autoreset)
        elif num_envs == 1:
            envs = SingleSyncVectorEnv(thunks, autoreset_mode=autoreset)
        else:
            envs = gym.vector.SyncVectorEnv(thunks, autoreset_mode=autoreset)
    except gym.error.DependencyNotInstalled as exc:
        raise ConfigurationError(f"environment '{env_id}' needs an extra package: {exc}") from None
    if record_statistics:
        envs = EpisodeStatistics(envs)
    return envs


class SingleSyncVectorEnv(gym.vector.SyncVectorEnv):
    """SyncVectorEnv of one environment (next-step autoreset) whose step skips the batching
    machinery: no space-dispatched iterate and concatenate, no deepcopy of the observation. One
    DQN run steps a single CartPole, where that machinery cost more than CartPole's own step.
    Results are those of SyncVectorEnv, fresh arrays each step (tests/test_rl_envs.py)."""

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env]], **kwargs: Any) -> None:
        super().__init__(env_fns, **kwargs)
        if self.num_envs != 1 or self.autoreset_mode != gym.vector.AutoresetMode.NEXT_STEP:
            raise ValueError("SingleSyncVectorEnv runs one environment with next-step autoreset")
        space = self.single_observation_space
        # Other observation spaces take SyncVectorEnv's own step (env_spaces refuses them later).
        self._obs_dtype = space.dtype if isinstance(space, gym.spaces.Box) else None

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._obs_dtype is None:
            return super().step(actions)
        env = self.envs[0]
        if self._autoreset_envs[0]:
            obs, env_info = env.reset()
            reward, terminated, truncated = 0.0, False, False
        else:
            obs, reward, terminated, truncated, env_info = env.step(actions[0])
        self._env_obs[0] = obs
        self._rewards[0] = reward
        self._terminations[0] = terminated
        self._truncations[0] = truncated
        self._autoreset_envs[0] = terminated or truncated
        infos = self._add_info({}, env_info, 0) if env_info else {}
        return (
            np.array([obs], dtype=self._obs_dtype),
            np.array([reward], dtype=np.float64),
            np.array([terminated], dtype=np.bool_),
            np.array([truncated], dtype=np.bool_),
            infos,
        )


class EpisodeStatistics(gym.vector.VectorWrapper):
    """Each finished episode's return and length, in the step's `info["episode"]` ("r", "l")
    with the mask `info["_episode"]`, as gymnasium's RecordEpisodeStatistics reports them for
    next-step autoreset (the reset step is not counted). That wrapper also times episodes and
    keeps queues, which cost more per step than stepping CartPole does; this one keeps two
    counters."""

    def __init__(self, env: gym.vector.VectorEnv) -> None:
        super().__init__(env)
        if env.metadata.get("autoreset_mode") != gym.vector.AutoresetMode.NEXT_STEP:
            raise ValueError("EpisodeStatistics counts episodes of next-step autoreset only")
        self.returns = np.zeros(self.num_envs, dtype=np.float64)
        self.lengths = np.zeros(self.num_envs, dtype=np.int64)
        self.ended = np.zeros(self.num_envs, dtype=bool)  # the next step only resets these
        self.any_ended = False

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        mask = (options or {}).get("reset_mask")  # a partial reset: those sub-environments
        reset = np.ones(self.num_envs, dtype=bool) if mask is None else np.asarray(mask)
        self.returns[reset] = 0.0
        self.lengths[reset] = 0
        self.ended = self.ended & ~reset  # a new array: the last info["_episode"] stays as it was
        self.any_ended = bool(self.ended.any())
        return self.env.reset(seed=seed, options=options)

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        obs, rewards, terminated, truncated, info = self.env.step(actions)
        if self.any_ended:
            self.returns[self.ended] = 0.0
            self.lengths[self.ended] = 0
            counted = ~self.ended
            self.returns[counted] += rewards[counted]
            self.lengths[counted] += 1
        else:
            self.returns += rewards
            self.lengths += 1
        self.ended = terminated | truncated
        self.any_ended = bool(self.ended.any())
        if self.any_ended:
            info = dict(info)
            info["episode"] = {
                "r": np.where(self.ended, self.returns, 0.0),
                "l": np.where(self.ended, self.lengths, 0),
            }
            info["_episode"] = self.ended
        return obs, rewards, terminated, truncated, info


def env_spaces(envs: gym.vector.VectorEnv, env_id: str) -> EnvSpaces:
    """The spaces of one sub-environment; ConfigurationError for spaces the agents do not handle."""
    obs_space, action_space = envs.single_observation_space, envs.single_action_space
    if not isinstance(obs_space, gym.spaces.Box):
        raise ConfigurationError(
            f"environment '{env_id}' has observation space {obs_space}; the RL agents need a Box "
            "(vector) observation space."
        )
    obs_shape = tuple(int(d) for d in obs_space.shape)
    if isinstance(action_space, gym.spaces.Discrete):
        return EnvSpaces(env_id, obs_shape, True, int(action_space.n))
    if isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
        return EnvSpaces(
            env_id,
            obs_shape,
            False,
            int(action_space.shape[0]),
            action_space.low.astype(np.float32),
            action_space.high.astype(np.float32),
        )
    raise ConfigurationError(
        f"environment '{env_id}' has action space {action_space}; the RL agents handle Discrete "
        "and one-dimensional Box action spaces."
    )


def add_normalization(
    envs: gym.vector.VectorEnv, *, observations: bool, rewards: bool, gamma: float
) -> gym.vector.VectorEnv:
    """Wrap `envs` with running observation and/or reward normalisation (gymnasium's wrappers).

    Apply after `make_vector_env`, so `info["episode"]` still reports raw returns.
    """
    if observations:
        envs = gym.wrappers.vector.NormalizeObservation(envs)
    if rewards:
        envs = gym.wrappers.vector.NormalizeReward(envs, gamma=gamma)
    return envs


def _find_wrapper(envs: gym.vector.VectorEnv, kind: type) -> gym.vector.VectorEnv | None:
    env: gym.vector.VectorEnv | None = envs
    while env is not None:
        if isinstance(env, kind):
            return env
        env = getattr(env, "env", None)
    return None


def normalization_state(envs: gym.vector.VectorEnv) -> dict[str, dict[str, np.ndarray]]:
    """The running statistics of the normalisation wrappers of `envs` (empty without any)."""
    state = {}
    for name, kind, attribute in _NORMALIZERS:
        wrapper = _find_wrapper(envs, kind)
        if wrapper is not None:
            rms = getattr(wrapper, attribute)
            state[name] = {
                "mean": np.asarray(rms.mean, dtype=np.float64),
                "var": np.asarray(rms.var, dtype=np.float64),
                "count": np.asarray(rms.count, dtype=np.float64),
            }
    return state


def load_normalization_state(
    envs: gym.vector.VectorEnv, state: dict[str, dict[str, np.ndarray]], *, freeze: bool
) -> None:
    """Copy saved statistics into the wrappers of `envs`; `freeze` stops further updates (eval)."""
    for name, kind, attribute in _NORMALIZERS:
        wrapper = _find_wrapper(envs, kind)
        if wrapper is None or name not in state:
            continue
        rms = getattr(wrapper, attribute)
        saved = state[name]
        rms.mean = np.array(saved["mean"], dtype=np.float64).reshape(np.shape(rms.mean))
        rms.var = np.array(saved["var"], dtype=np.float64).reshape(np.shape(rms.var))
        rms.count = float(np.asarray(saved["count"]))
        wrapper.update_running_mean = not freeze


def freeze_normalization(envs: gym.vector.VectorEnv) -> None:
    """Stop updating the running statistics of `envs` (they keep normalising with them)."""
    for _, kind, _ in _NORMALIZERS:
        wrapper = _find_wrapper(envs, kind)
        if wrapper is not None:
            wrapper.update_running_mean = False


_NORMALIZERS = (
    ("observations", gym.wrappers.vector.NormalizeObservation, "obs_rms"),
    ("rewards", gym.wrappers.vector.NormalizeReward, "return_rms"),
)
