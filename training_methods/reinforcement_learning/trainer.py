"""The training and evaluation loops behind `train-rl` and `evaluate-rl`.

`train()` parses nothing: it takes the resolved config, validates it against the environment,
builds the vector environment and the agent, and runs `ppo_loop` or `dqn_loop`. Both loops read
top to bottom and share one `TrainingRun` for the bookkeeping every run needs: step and episode
counts, periodic deterministic evaluation, best-model and periodic checkpoints, metrics
(metrics.jsonl, TensorBoard, W&B), the progress bar, and `summary.json`.

Vector environments run with next-step autoreset: after a step that ends an episode, the next
`step()` of that sub-environment only resets it. That step is not a transition: the loops mark it
invalid (`valid = ~previous_done`) and neither agent learns from it, nor is it counted as a step.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from shared_utils.config import (
    DQNConfig,
    PPOConfig,
    ReinforcementLearningConfig,
    ToolkitConfig,
    check_training_sections,
    config_to_dict,
    dump_config,
)
from shared_utils.errors import ConfigurationError, TrainingError
from shared_utils.file_utils import atomic_write_json, atomic_write_text
from shared_utils.training_utils import MetricsLogger, resolve_device, set_seed
from training_methods.reinforcement_learning import checkpoints as ckpt
from training_methods.reinforcement_learning.dqn_agent import DQNAgent
from training_methods.reinforcement_learning.envs import (
    EnvSpaces,
    add_normalization,
    check_env_id,
    env_spaces,
    freeze_normalization,
    load_normalization_state,
    make_vector_env,
    normalization_state,
)
from training_methods.reinforcement_learning.ppo_agent import PPOAgent
from training_methods.reinforcement_learning.presets import display_path

logger = logging.getLogger(__name__)

Algorithm = Literal["ppo", "dqn"]
Agent = PPOAgent | DQNAgent
Policy = Callable[[np.ndarray], np.ndarray]

EVAL_SEED_OFFSET = 1_000_000  # evaluation episodes never share seeds with training episodes
MAX_EVAL_ENVS = 16


# --------------------------------------------------------------------------------------------------
# Building and validating
# --------------------------------------------------------------------------------------------------


def check_algorithm_fits(
    algorithm: Algorithm, rl: ReinforcementLearningConfig, spaces: EnvSpaces
) -> None:
    """ConfigurationError when the algorithm cannot act in the environment, or when the config
    declares state_dim/action_dim values the environment does not have."""
    if algorithm == "dqn" and not spaces.discrete:
        raise ConfigurationError(
            f"DQN needs a Discrete action space but {spaces.env_id} has continuous (Box) actions; "
            "use --algorithm ppo, which handles both."
        )
    section = rl.ppo if algorithm == "ppo" else rl.dqn
    for key, actual in (("state_dim", spaces.state_dim), ("action_dim", spaces.action_dim)):
        declared = getattr(section, key)
        if declared is not None and declared != actual:
            raise ConfigurationError(
                f"config key 'reinforcement_learning.{algorithm}.{key}' is {declared} but "
                f"{spaces.env_id} has {actual}; set it to {actual} or to null (taken from the "
                "environment)."
            )


def rollout_steps(rl: ReinforcementLearningConfig) -> int:
    """PPO rollout length per environment: update_frequency shared by num_envs."""
    return max(1, rl.training.update_frequency // rl.ppo.num_envs)


def agent_kwargs(
    algorithm: Algorithm, rl: ReinforcementLearningConfig, spaces: EnvSpaces, seed: int
) -> dict[str, Any]:
    """What builds the agent, saved in checkpoints: the algorithm's config section (its fields, by
    their config names), the environment's sizes, and PPO's rollout length or DQN's seed."""
    section = rl.ppo if algorithm == "ppo" else rl.dqn
    kwargs = {**asdict(section), "state_dim": spaces.state_dim, "action_dim": spaces.action_dim}
    if algorithm == "ppo":
        kwargs.update(continuous=not spaces.discrete, num_steps=rollout_steps(rl))
    else:
        kwargs["seed"] = seed
    return kwargs


def build_agent(algorithm: Algorithm, kwargs: dict[str, Any], device: torch.device) -> Agent:
    """The agent `agent_kwargs` describes. Checkpoints written before the agents took their config
    section name the learning rate `lr`; an unknown name is a TypeError."""
    kwargs = dict(kwargs)
    if "lr" in kwargs:
        kwargs["learning_rate"] = kwargs.pop("lr")
    state_dim, action_dim = kwargs.pop("state_dim"), kwargs.pop("action_dim")
    section_type = PPOConfig if algorithm == "ppo" else DQNConfig
    names = {f.name for f in fields(section_type)} - {"state_dim", "action_dim"}
    section = section_type(**{name: kwargs.pop(name) for name in names if name in kwargs})
    agent_type = PPOAgent if algorithm == "ppo" else DQNAgent
    return agent_type(state_dim, action_dim, section, **kwargs, device=device)


@contextlib.contextmanager
def torch_threads(device: torch.device) -> Iterator[None]:
    """One intra-op thread on the CPU while the block runs: these networks are tiny, and more
    threads only add synchronisation (the setting is process-wide, so it is restored after)."""
    previous = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------


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
        return lambda obs: agent.select_action(_flat(obs), training=False)
    if spaces.discrete:
        return lambda obs: agent.select_action(_flat(obs), deterministic=True)[0]
    return lambda obs: np.clip(
        agent.select_action(_flat(obs), deterministic=True)[0],
        spaces.action_low,
        spaces.action_high,
    )


def _flat(obs: np.ndarray) -> np.ndarray:
    """(num_envs, *obs_shape) -> (num_envs, state_dim) float32"""
    return np.asarray(obs, dtype=np.float32).reshape(len(obs), -1)


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


# --------------------------------------------------------------------------------------------------
# The run: counts, evaluation, checkpoints, metrics
# --------------------------------------------------------------------------------------------------


@dataclass
class Progress:
    """Counters saved in every checkpoint, so --resume continues where the run stopped."""

    global_step: int = 0  # real transitions collected (autoreset steps are not counted)
    episodes: int = 0
    updates: int = 0
    train_seconds: float = 0.0  # collection and learning; evaluation excluded
    eval_seconds: float = 0.0
    next_eval_step: int = 0
    next_save_episode: int = 0
    next_log_step: int = 0
    best_eval: float | None = None
    best_eval_step: int | None = None
    evaluations: list[dict[str, float]] = field(default_factory=list)


class TrainingRun:
    """Everything around the loop of one `train-rl` run."""

    def __init__(
        self,
        config: ToolkitConfig,
        algorithm: Algorithm,
        output_dir: Path,
        *,
        resume: bool = False,
        show_progress: bool | None = None,
        preset: Path | None = None,
    ) -> None:
        rl = config.reinforcement_learning
        rl.check(algorithm)
        check_training_sections(config)
        self.config = config
        self.rl = rl
        self.algorithm: Algorithm = algorithm
        self.output_dir = output_dir
        self.checkpoint_dir = output_dir / "checkpoints"
        self.env_id = rl.training.env_id
        self.seed = config.common.seed
        self.preset = preset
        check_env_id(self.env_id)
        resume_path = self._resume_path() if resume else None
        if not resume:
            self._refuse_existing_run()
        saved = ckpt.load_checkpoint(resume_path) if resume_path else None
        self.device = resolve_device(config.common.device)

        # Environments are closed again if anything below fails (subprocesses with async).
        with contextlib.ExitStack() as resources:
            self.progress = Progress()
            if saved is not None:
                self.progress = Progress(**saved["progress"])
            set_seed(self.seed)
            self.num_envs = rl.ppo.num_envs if algorithm == "ppo" else rl.dqn.num_envs
            # On resume the environments start fresh episodes, seeded by where the run stopped.
            env_seed = self.seed + self.progress.global_step
            self.envs = make_vector_env(
                self.env_id,
                self.num_envs,
                env_seed,
                max_episode_steps=rl.training.max_steps_per_episode,
                backend=rl.training.vector_env,
            )
            resources.callback(lambda: self.envs.close())
            self.spaces = env_spaces(self.envs, self.env_id)
            check_algorithm_fits(algorithm, rl, self.spaces)
            section = rl.ppo if algorithm == "ppo" else rl.dqn
            self.envs = add_normalization(
                self.envs,
                observations=section.normalize_observations,
                rewards=algorithm == "ppo" and rl.ppo.normalize_rewards,
                gamma=section.gamma,
            )
            self.agent_kwargs = agent_kwargs(algorithm, rl, self.spaces, self.seed)
            self.agent = build_agent(algorithm, self.agent_kwargs, self.device)
            if saved is not None:
                assert resume_path is not None
                ckpt.check_compatible(saved, resume_path, algorithm, self.spaces)
                _load_agent(self.agent, saved, resume_path, with_optimizer=True)
                load_normalization_state(
                    self.envs, _numpy_tree(saved.get("normalization", {})), freeze=False
                )
                if "replay_buffer" in saved and isinstance(self.agent, DQNAgent):
                    self.agent.buffer.load_state_dict(_numpy_tree(saved["replay_buffer"]))
                # Last, so that building the agent above does not draw from the restored state.
                _restore_rng(saved["rng"])
                logger.info("resuming from %s at step %d", resume_path, self.progress.global_step)
            else:
                self.progress.next_eval_step = rl.training.eval_every_steps
                self.progress.next_save_episode = rl.training.save_frequency
                self.progress.next_log_step = rl.training.log_every_steps

            self.evaluator = Evaluator(
                self.env_id,
                rl.training.eval_episodes,
                self.seed,
                rl.training.max_steps_per_episode,
                section.normalize_observations,
            )
            resources.callback(self.evaluator.close)
            output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(output_dir / "resolved_config.yaml", self._resolved_config_text())
            self.metrics = MetricsLogger(
                output_dir,
                config.logging,
                run_name=f"{algorithm}-{self.env_id}-seed{self.seed}",
                config=config_to_dict(config),
                resume_from_step=self.progress.global_step if saved is not None else None,
            )
            self._resources = resources.pop_all()
        self.last_checkpoint: Path | None = resume_path
        self.reached_stop_reward = False
        self.reward_threshold = gym.spec(self.env_id).reward_threshold
        # Metrics gathered since the last record.
        self._episode_returns: list[float] = []
        self._episode_lengths: list[int] = []
        self._loss_sums: dict[str, float] = {}
        self._loss_counts = 0
        self._session_start = time.perf_counter()
        self._session_eval = 0.0
        self._train_seconds_before = self.progress.train_seconds
        self._last_log_time = time.perf_counter()
        self._last_log_step = self.progress.global_step
        budget = rl.training.total_timesteps
        self._bar_counts_steps = budget is not None
        self.bar = tqdm(
            total=budget if budget is not None else rl.training.max_episodes,
            initial=self.progress.global_step if budget is not None else self.progress.episodes,
            unit="step" if budget is not None else "episode",
            desc=f"{algorithm} {self.env_id}",
            disable=None if show_progress is None else not show_progress,
            dynamic_ncols=True,
        )

    # ---------------------------------------------------------------------------------------------
    # budget and counting
    # ---------------------------------------------------------------------------------------------

    @property
    def progress_remaining(self) -> float:
        """Share of the training budget still left: 1 at the start, 0 (or less) when done."""
        training = self.rl.training
        if training.total_timesteps is not None:
            return 1.0 - self.progress.global_step / training.total_timesteps
        return 1.0 - self.progress.episodes / training.max_episodes

    @property
    def finished(self) -> bool:
        return self.progress_remaining <= 0.0 or self.reached_stop_reward

    def record_step(self, valid: np.ndarray, info: dict[str, Any]) -> None:
        """Count the real transitions of one vector step and the episodes it finished."""
        steps = int(valid.sum())
        self.progress.global_step += steps
        episodes = 0
        finished = info.get("_episode")
        if finished is not None and finished.any():
            returns = info["episode"]["r"][finished]
            self._episode_returns.extend(returns.tolist())
            self._episode_lengths.extend(info["episode"]["l"][finished].tolist())
            episodes = len(returns)
            self.progress.episodes += episodes
        self.bar.update(steps if self._bar_counts_steps else episodes)

    def add_losses(self, losses: dict[str, float]) -> None:
        for key, value in losses.items():
            self._loss_sums[key] = self._loss_sums.get(key, 0.0) + value
        self._loss_counts += 1

    @property
    def train_seconds(self) -> float:
        elapsed = time.perf_counter() - self._session_start - self._session_eval
        return self._train_seconds_before + elapsed

    # ---------------------------------------------------------------------------------------------
    # at update boundaries: log, evaluate, checkpoint
    # ---------------------------------------------------------------------------------------------

    def after_update(self) -> None:
        """Log, evaluate and save when each is due. Called where the agent's state is whole."""
        progress, training = self.progress, self.rl.training
        if progress.global_step >= progress.next_log_step:
            self.log_train()
            every = training.log_every_steps
            progress.next_log_step = (progress.global_step // every + 1) * every
        if training.eval_every_steps and progress.global_step >= progress.next_eval_step:
            self.evaluate()
            every = training.eval_every_steps
            progress.next_eval_step = (progress.global_step // every + 1) * every
        if progress.episodes >= progress.next_save_episode:
            self.save_training_checkpoint()
            every = self.rl.training.save_frequency
            progress.next_save_episode = (progress.episodes // every + 1) * every

    def log_train(self) -> None:
        now = time.perf_counter()
        steps = self.progress.global_step - self._last_log_step
        seconds = max(now - self._last_log_time, 1e-9)
        metrics: dict[str, float] = {
            "episodes": self.progress.episodes,
            "steps_per_second": steps / seconds,
            **{key: value / max(self._loss_counts, 1) for key, value in self._loss_sums.items()},
        }
        if isinstance(self.agent, DQNAgent):
            metrics["epsilon"] = self.agent.epsilon
        if self._episode_returns:
            metrics["episode_return"] = float(np.mean(self._episode_returns))
            metrics["episode_length"] = float(np.mean(self._episode_lengths))
            postfix = {} if self._bar_counts_steps else {"steps": self.progress.global_step}
            self.bar.set_postfix(
                **postfix,
                ret=f"{metrics['episode_return']:.1f}",
                sps=f"{metrics['steps_per_second']:.0f}",
                refresh=False,
            )
        self.metrics.log(metrics, self.progress.global_step, split="train")
        self._episode_returns.clear()
        self._episode_lengths.clear()
        self._loss_sums.clear()
        self._loss_counts = 0
        # Evaluation time between two records is not training time.
        self._last_log_time, self._last_log_step = time.perf_counter(), self.progress.global_step

    def evaluate(self) -> dict[str, float]:
        """Deterministic evaluation; saves best_model.pt when it beats every earlier one."""
        start = time.perf_counter()
        returns = self.evaluator(
            greedy_policy(self.agent, self.spaces), normalization_state(self.envs)
        )
        progress = self.progress
        result = {
            "step": progress.global_step,
            "train_seconds": round(self.train_seconds, 3),
            "mean_return": float(returns.mean()),
            "std_return": float(returns.std()),
            "episodes": len(returns),
        }
        progress.evaluations.append(result)
        self.metrics.log(
            {"mean_return": result["mean_return"], "std_return": result["std_return"]},
            progress.global_step,
            split="eval",
        )
        stop_at = self.rl.training.stop_at_reward
        if stop_at is not None and result["mean_return"] >= stop_at:
            self.reached_stop_reward = True
        if progress.best_eval is None or result["mean_return"] > progress.best_eval:
            progress.best_eval = result["mean_return"]
            progress.best_eval_step = progress.global_step
            self.save_model(self.output_dir / "best_model.pt")
        seconds = time.perf_counter() - start
        self._session_eval += seconds
        progress.eval_seconds += seconds
        self._last_log_time += seconds
        return result

    # ---------------------------------------------------------------------------------------------
    # checkpoints
    # ---------------------------------------------------------------------------------------------

    def _check_weights_finite(self) -> None:
        network = self.agent.policy if isinstance(self.agent, PPOAgent) else self.agent.q_network
        if not all(bool(torch.isfinite(p).all()) for p in network.parameters()):
            raise TrainingError(  # train() adds where the last good checkpoint is
                f"the network's weights are no longer finite, so nothing was saved; lower "
                f"reinforcement_learning.{self.algorithm}.learning_rate"
            )

    def _last_good_hint(self) -> str:
        if self.last_checkpoint is None:
            return "; no checkpoint was saved before it."
        return f"; the last good checkpoint is {self.last_checkpoint}."

    def _payload(self, training_state: bool) -> dict[str, Any]:
        agent_state = self.agent.state_dict()
        if not training_state:  # a model to evaluate: no optimizer, no target network
            agent_state = {k: v for k, v in agent_state.items() if k in ("policy", "q_network")}
        payload: dict[str, Any] = {
            "algorithm": self.algorithm,
            "spaces": self.spaces.describe(),
            "max_episode_steps": self.rl.training.max_steps_per_episode,
            "agent_kwargs": self.agent_kwargs,
            "agent": agent_state,
            "normalization": normalization_state(self.envs),
            "progress": asdict(self.progress),
            "config": config_to_dict(self.config),
        }
        if training_state:
            payload["rng"] = _rng_state()
            if isinstance(self.agent, DQNAgent):
                payload["replay_buffer"] = self.agent.buffer.state_dict()
        return payload

    def save_model(self, path: Path) -> Path:
        self._check_weights_finite()
        return ckpt.save_checkpoint(path, self._payload(training_state=False))

    def save_training_checkpoint(self) -> Path:
        """A resumable checkpoint in checkpoints/; keeps training.max_checkpoints of them."""
        self._check_weights_finite()
        self.progress.train_seconds = self.train_seconds
        path = ckpt.periodic_checkpoint_path(self.checkpoint_dir, self.progress.global_step)
        ckpt.save_checkpoint(path, self._payload(training_state=True))
        ckpt.prune_checkpoints(
            self.checkpoint_dir, self.config.reinforcement_learning.training.max_checkpoints
        )
        self.last_checkpoint = path
        return path

    def _resume_path(self) -> Path:
        found = ckpt.periodic_checkpoints(self.checkpoint_dir)
        if not found:
            raise ConfigurationError(
                f"--resume: no checkpoint in '{self.checkpoint_dir}'; run without --resume to "
                "start a new run there."
            )
        return found[-1]

    def _refuse_existing_run(self) -> None:
        if (
            ckpt.periodic_checkpoints(self.checkpoint_dir)
            or (self.output_dir / "summary.json").exists()
        ):
            raise ConfigurationError(
                f"output folder '{self.output_dir}' already holds a train-rl run; pass --resume "
                "to continue it, or choose another --output-dir."
            )

    # ---------------------------------------------------------------------------------------------
    # the end
    # ---------------------------------------------------------------------------------------------

    def finish(self) -> dict[str, Any]:
        """Final evaluation, final model, last checkpoint, plot and summary.json."""
        progress = self.progress
        if self._loss_counts or self._episode_returns:
            self.log_train()
        if not progress.evaluations or progress.evaluations[-1]["step"] != progress.global_step:
            self.evaluate()
        self.save_model(self.output_dir / "final_model.pt")
        self.save_training_checkpoint()
        plot = self.metrics.plot(
            self.output_dir / "returns.png",
            series=[("train", "episode_return"), ("eval", "mean_return")],
            title=f"{self.algorithm.upper()} on {self.env_id}",
            ylabel="episode return",
        )
        summary = self.summary(plot)
        atomic_write_json(self.output_dir / "summary.json", summary)
        return summary

    def summary(self, plot: Path | None) -> dict[str, Any]:
        progress = self.progress
        final = progress.evaluations[-1]
        threshold = self.reward_threshold
        solved = None
        if threshold is not None:
            solved = next((e for e in progress.evaluations if e["mean_return"] >= threshold), None)
        train_seconds = self.train_seconds
        return {
            "algorithm": self.algorithm,
            "env_id": self.env_id,
            "preset": display_path(self.preset) if self.preset else None,
            "seed": self.seed,
            "device": str(self.device),
            "num_envs": self.num_envs,
            "steps": progress.global_step,
            "episodes": progress.episodes,
            "updates": progress.updates,
            "train_seconds": round(train_seconds, 3),
            "eval_seconds": round(progress.eval_seconds, 3),
            "steps_per_second": round(progress.global_step / max(train_seconds, 1e-9), 1),
            "final_eval": {"mean_return": final["mean_return"], "std_return": final["std_return"]},
            "best_eval": {"mean_return": progress.best_eval, "step": progress.best_eval_step},
            "reward_threshold": threshold,
            "first_eval_at_threshold": solved,
            "evaluations": progress.evaluations,
            "files": {
                "best_model": "best_model.pt",
                "final_model": "final_model.pt",
                "last_checkpoint": str(self.last_checkpoint.relative_to(self.output_dir))
                if self.last_checkpoint
                else None,
                "metrics": "metrics.jsonl",
                "plot": plot.name if plot else None,
                "config": "resolved_config.yaml",
            },
        }

    def _resolved_config_text(self) -> str:
        """The config the run trains with, headed by where its settings came from."""
        if self.preset is None:
            source = "the defaults, then --config and command-line flags; no preset"
        else:
            preset = display_path(self.preset)
            source = f"the defaults, then preset {preset}, then --config and flags"
        return f"# train-rl settings: {source}.\n{dump_config(self.config)}"

    def close(self, failed: bool = False) -> None:
        """Close the progress bar, the metric sinks (a failed run shows as failed in W&B) and
        the environments."""
        try:
            self.bar.close()
            self.metrics.__exit__(TrainingError if failed else None, None, None)
        finally:
            self._resources.close()


# --------------------------------------------------------------------------------------------------
# The loops
# --------------------------------------------------------------------------------------------------


def collect_rollout(
    agent: PPOAgent,
    envs: gym.vector.VectorEnv,
    spaces: EnvSpaces,
    obs: np.ndarray,
    previous_done: np.ndarray,
    record_step: Callable[[np.ndarray, dict[str, Any]], None],
) -> tuple[np.ndarray, np.ndarray]:
    """Fill the agent's rollout buffer from `envs`; returns the next (obs, previous_done).

    `previous_done` carries across rollouts: the first step of a rollout may be a reset step.
    """
    for _ in range(agent.buffer.num_steps):
        action, log_prob, value = agent.select_action(obs)
        env_action = (
            action if spaces.discrete else np.clip(action, spaces.action_low, spaces.action_high)
        )
        next_obs, reward, terminated, truncated, info = envs.step(env_action)
        valid = ~previous_done  # the step after an episode end only reset that sub-environment
        agent.store_transition(
            obs,
            action,
            reward,
            terminated | truncated,
            log_prob,
            value,
            truncated=truncated,
            valid=valid,
        )
        record_step(valid, info)
        previous_done = terminated | truncated
        obs = _flat(next_obs)
    return obs, previous_done


def ppo_loop(run: TrainingRun) -> None:
    """Collect `update_frequency` steps with the current policy, learn from them, repeat."""
    agent = run.agent
    assert isinstance(agent, PPOAgent)
    obs, _ = run.envs.reset()
    obs = _flat(obs)
    previous_done = np.zeros(run.num_envs, dtype=bool)
    while not run.finished:
        obs, previous_done = collect_rollout(
            agent, run.envs, run.spaces, obs, previous_done, run.record_step
        )
        losses = agent.update(next_state=obs, progress_remaining=run.progress_remaining)
        run.progress.updates = agent.updates
        run.add_losses(losses)
        run.after_update()


def dqn_loop(run: TrainingRun) -> None:
    """Act epsilon-greedily, store transitions, and every `train_freq` steps take
    `gradient_steps` gradient steps once `learning_starts` steps were played."""
    agent, envs, dqn = run.agent, run.envs, run.rl.dqn
    assert isinstance(agent, DQNAgent)
    obs, _ = envs.reset()
    obs = _flat(obs)
    previous_done = np.zeros(run.num_envs, dtype=bool)
    next_train_step = max(dqn.learning_starts, run.progress.global_step)
    while not run.finished:
        if agent.steps < dqn.learning_starts:  # uniform random play fills the buffer first
            actions = agent.rng.integers(0, agent.action_dim, size=run.num_envs)
        else:
            actions = agent.select_action(obs, training=True)
        next_obs, reward, terminated, truncated, info = envs.step(actions)
        next_obs = _flat(next_obs)
        valid = ~previous_done  # the step after an episode end only reset that sub-environment
        agent.store_transition(
            obs, actions, reward, next_obs, terminated, truncated=truncated, valid=valid
        )
        run.record_step(valid, info)
        previous_done = terminated | truncated
        obs = next_obs

        if run.progress.global_step >= next_train_step and len(agent.buffer) >= agent.batch_size:
            # Observation statistics stop moving when learning starts: the replay buffer keeps
            # observations normalised once, so they must stay comparable with new ones.
            freeze_normalization(envs)
            for _ in range(dqn.gradient_steps):
                run.add_losses(agent.update())
            run.progress.updates = agent.updates
            next_train_step = run.progress.global_step + dqn.train_freq
        run.after_update()


# --------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------


def train(
    config: ToolkitConfig,
    algorithm: Algorithm,
    output_dir: Path,
    *,
    resume: bool = False,
    show_progress: bool | None = None,
    preset: Path | None = None,
) -> dict[str, Any]:
    """Train `algorithm` on `reinforcement_learning.training.env_id`; returns the summary.

    `preset`: the environment preset the config was built with, recorded in summary.json and
    resolved_config.yaml.

    Ctrl-C saves a resumable checkpoint and re-raises KeyboardInterrupt. A non-finite loss stops
    with TrainingError and leaves the last good checkpoint as it was.
    """
    device = resolve_device(config.common.device)
    with torch_threads(device):
        run = TrainingRun(
            config, algorithm, output_dir, resume=resume, show_progress=show_progress, preset=preset
        )
        failed = True
        try:
            (ppo_loop if algorithm == "ppo" else dqn_loop)(run)
            summary = run.finish()
            failed = False
            return summary
        except KeyboardInterrupt:
            path = run.save_training_checkpoint()
            run.bar.write(f"interrupted: checkpoint saved to {path}; continue with --resume")
            raise
        except TrainingError as exc:
            raise TrainingError(f"{str(exc).rstrip('.')}{run._last_good_hint()}") from exc
        finally:
            run.close(failed=failed)


def load_agent_from_checkpoint(path: Path, device: torch.device) -> tuple[Agent, dict[str, Any]]:
    """The agent stored in a train-rl checkpoint, ready to act, and the checkpoint itself."""
    saved = ckpt.load_checkpoint(path)
    kwargs = dict(saved["agent_kwargs"])
    if saved["algorithm"] == "ppo":
        kwargs.update(num_envs=1, num_steps=1)  # no rollout buffer needed to act
    else:
        kwargs.update(buffer_size=kwargs["batch_size"])
    try:
        agent = build_agent(saved["algorithm"], kwargs, device)
    except (TypeError, ValueError) as exc:  # agent_kwargs edited by hand
        raise ConfigurationError(
            f"checkpoint '{path}' is damaged or was edited: its agent settings do not build an "
            f"agent ({exc}); use a .pt file as train-rl wrote it."
        ) from None
    _load_agent(agent, saved, path, with_optimizer=False)
    return agent, saved


def evaluate_checkpoint(
    path: Path, episodes: int, seed: int, device_name: str = "cpu"
) -> dict[str, Any]:
    """Play `episodes` deterministic episodes with a checkpoint's agent on its environment."""
    device = resolve_device(device_name)
    with torch_threads(device):
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
            returns = evaluator(greedy_policy(agent, spaces), _numpy_tree(saved["normalization"]))
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


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _load_agent(agent: Agent, saved: dict[str, Any], path: Path, *, with_optimizer: bool) -> None:
    try:
        agent.load_state_dict(saved["agent"], with_optimizer=with_optimizer)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ConfigurationError(
            f"checkpoint '{path}' does not fit this agent ({str(exc).splitlines()[0]}); resume "
            "with the config it was trained with (resolved_config.yaml next to it)."
        ) from None


def _rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(legacy=False),
        "torch": torch.get_rng_state(),
    }


def _restore_rng(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    np.random.set_state(_numpy_tree(state["numpy"]))
    torch.set_rng_state(state["torch"])


def _tuples(value: Any) -> Any:
    """Lists back to tuples (random.setstate wants the tuples getstate gave)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _numpy_tree(value: Any) -> Any:
    """Tensors (also inside dicts) back to numpy arrays."""
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, dict):
        return {key: _numpy_tree(item) for key, item in value.items()}
    return value
