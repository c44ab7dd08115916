"""One `train-rl` run around its loop: step and episode counts, periodic deterministic
evaluation, best-model and periodic checkpoints, metrics (metrics.jsonl, TensorBoard, W&B), the
progress bar, and `summary.json`. The loops in `trainer.py` call `record_step`, `add_losses` and
`after_update`; everything else happens here.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from shared_utils.config import (
    ToolkitConfig,
    check_training_sections,
    config_to_dict,
    dump_config,
)
from shared_utils.errors import ConfigurationError, TrainingError
from shared_utils.file_utils import atomic_write_json, atomic_write_text
from shared_utils.metrics_logger import MetricsLogger
from shared_utils.training_utils import resolve_device, set_seed
from training_methods.reinforcement_learning import checkpoints as ckpt
from training_methods.reinforcement_learning.agents import (
    Algorithm,
    agent_kwargs,
    build_agent,
    check_algorithm_fits,
    load_agent_state,
)
from training_methods.reinforcement_learning.dqn_agent import DQNAgent
from training_methods.reinforcement_learning.envs import (
    EnvSpaces,
    add_normalization,
    check_env_id,
    env_spaces,
    load_normalization_state,
    make_vector_env,
    normalization_state,
)
from training_methods.reinforcement_learning.evaluation import Evaluator, greedy_policy
from training_methods.reinforcement_learning.ppo_agent import PPOAgent
from training_methods.reinforcement_learning.presets import display_path

logger = logging.getLogger(__name__)


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
        check_env_id(rl.training.env_id)
        self.config, self.rl, self.algorithm = config, rl, algorithm
        self.section = rl.ppo if algorithm == "ppo" else rl.dqn
        self.output_dir = output_dir
        self.checkpoint_dir = output_dir / "checkpoints"
        self.env_id = rl.training.env_id
        self.seed = config.common.seed
        self.preset = preset
        self.num_envs = self.section.num_envs
        resume_path = self._resume_path() if resume else None
        if not resume:
            self._refuse_existing_run()
        saved = ckpt.load_checkpoint(resume_path) if resume_path else None
        self.device = resolve_device(config.common.device)
        self.progress = Progress(**saved["progress"]) if saved else self._first_progress()

        # Environments are closed again if anything below fails (subprocesses with async).
        with contextlib.ExitStack() as resources:
            set_seed(self.seed)
            self.envs, self.spaces = self._training_envs(resources)
            self.agent_kwargs = agent_kwargs(algorithm, rl, self.spaces, self.seed)
            self.agent = build_agent(algorithm, self.agent_kwargs, self.device)
            if saved is not None:
                assert resume_path is not None
                self._restore(saved, resume_path)
            self.evaluator = Evaluator(
                self.env_id,
                rl.training.eval_episodes,
                self.seed,
                rl.training.max_steps_per_episode,
                self.section.normalize_observations,
            )
            resources.callback(self.evaluator.close)
            self.metrics = self._open_outputs(resumed=saved is not None)
            self._resources = resources.pop_all()
        self.last_checkpoint: Path | None = resume_path
        self.reached_stop_reward = False
        self.reward_threshold = gym.spec(self.env_id).reward_threshold
        self._start_clocks()
        self.bar = self._progress_bar(show_progress)

    # ---------------------------------------------------------------------------------------------
    # setting up
    # ---------------------------------------------------------------------------------------------

    def _first_progress(self) -> Progress:
        training = self.rl.training
        return Progress(
            next_eval_step=training.eval_every_steps,
            next_save_episode=training.save_frequency,
            next_log_step=training.log_every_steps,
        )

    def _training_envs(
        self, resources: contextlib.ExitStack
    ) -> tuple[gym.vector.VectorEnv, EnvSpaces]:
        """The vector environment the agent learns on, normalised as its section says. On resume
        the environments start fresh episodes, seeded by where the run stopped."""
        training = self.rl.training
        envs = make_vector_env(
            self.env_id,
            self.num_envs,
            self.seed + self.progress.global_step,
            max_episode_steps=training.max_steps_per_episode,
            backend=training.vector_env,
        )
        resources.callback(envs.close)
        spaces = env_spaces(envs, self.env_id)
        check_algorithm_fits(self.algorithm, self.rl, spaces)
        normalized = add_normalization(
            envs,
            observations=self.section.normalize_observations,
            rewards=self.algorithm == "ppo" and self.rl.ppo.normalize_rewards,
            gamma=self.section.gamma,
        )
        return normalized, spaces

    def _restore(self, saved: dict[str, Any], path: Path) -> None:
        """Agent, optimizer, observation statistics, replay buffer and random states of a
        resumable checkpoint."""
        ckpt.check_compatible(saved, path, self.algorithm, self.spaces)
        load_agent_state(self.agent, saved, path, with_optimizer=True)
        normalization = ckpt.numpy_tree(saved.get("normalization", {}))
        load_normalization_state(self.envs, normalization, freeze=False)
        if "replay_buffer" in saved and isinstance(self.agent, DQNAgent):
            self.agent.buffer.load_state_dict(ckpt.numpy_tree(saved["replay_buffer"]))
        # Last, so that building the agent before this does not draw from the restored state.
        ckpt.restore_rng(saved["rng"])
        logger.info("resuming from %s at step %d", path, self.progress.global_step)

    def _open_outputs(self, resumed: bool) -> MetricsLogger:
        """The output folder with resolved_config.yaml, and the metric sinks."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.output_dir / "resolved_config.yaml", self._resolved_config_text())
        return MetricsLogger(
            self.output_dir,
            self.config.logging,
            run_name=f"{self.algorithm}-{self.env_id}-seed{self.seed}",
            config=config_to_dict(self.config),
            resume_from_step=self.progress.global_step if resumed else None,
        )

    def _start_clocks(self) -> None:
        """Training time of this session, and the metrics gathered since the last record."""
        self._episode_returns: list[float] = []
        self._episode_lengths: list[int] = []
        self._loss_sums: dict[str, float] = {}
        self._loss_counts = 0
        self._session_start = time.perf_counter()
        self._session_eval = 0.0
        self._train_seconds_before = self.progress.train_seconds
        self._last_log_time = time.perf_counter()
        self._last_log_step = self.progress.global_step

    def _progress_bar(self, show_progress: bool | None) -> tqdm:
        budget = self.rl.training.total_timesteps
        self._bar_counts_steps = budget is not None
        return tqdm(
            total=budget if budget is not None else self.rl.training.max_episodes,
            initial=self.progress.global_step if budget is not None else self.progress.episodes,
            unit="step" if budget is not None else "episode",
            desc=f"{self.algorithm} {self.env_id}",
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
        steps = int(np.count_nonzero(valid))
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
        """Deterministic evaluation; saves best_model.pt when it is at least as good as every
        earlier one."""
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
        # A tie goes to the later model: it has trained longer (CartPole's evaluations often
        # reach the cap of 500 early, on a policy that holds less well over other episodes).
        if progress.best_eval is None or result["mean_return"] >= progress.best_eval:
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

    def last_checkpoint_hint(self) -> str:
        """The end of a failure message: where the last good checkpoint is, or that none was
        saved before the failure."""
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
            payload["rng"] = ckpt.rng_state()
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
