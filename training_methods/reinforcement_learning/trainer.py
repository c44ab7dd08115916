"""The training loops behind `train-rl`.

`train()` parses nothing: it takes the resolved config and builds a `TrainingRun`
(training_run.py), which validates the config against the environment and builds the vector
environment and the agent; then it runs `ppo_loop` or `dqn_loop`. Both loops read top to bottom
and leave the bookkeeping every run needs (counts, evaluation, checkpoints, metrics, summary) to
the run. Evaluation lives in evaluation.py, the agents' construction in agents.py.

Vector environments run with next-step autoreset: after a step that ends an episode, the next
`step()` of that sub-environment only resets it. That step is not a transition: the loops mark it
invalid (`valid = ~previous_done`) and neither agent learns from it, nor is it counted as a step.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from shared_utils.config import ToolkitConfig
from shared_utils.errors import TrainingError
from shared_utils.training_utils import resolve_device
from training_methods.reinforcement_learning.agents import Algorithm, one_thread
from training_methods.reinforcement_learning.dqn_agent import DQNAgent
from training_methods.reinforcement_learning.envs import (
    EnvSpaces,
    flat_observations,
    freeze_normalization,
)
from training_methods.reinforcement_learning.ppo_agent import PPOAgent
from training_methods.reinforcement_learning.training_run import TrainingRun

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
        obs = flat_observations(next_obs)
    return obs, previous_done


def ppo_loop(run: TrainingRun) -> None:
    """Collect `update_frequency` steps with the current policy, learn from them, repeat."""
    agent = run.agent
    assert isinstance(agent, PPOAgent)
    obs, _ = run.envs.reset()
    obs = flat_observations(obs)
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
    obs = flat_observations(obs)
    previous_done = np.zeros(run.num_envs, dtype=bool)
    next_train_step = max(dqn.learning_starts, run.progress.global_step)
    while not run.finished:
        if agent.steps < dqn.learning_starts:  # uniform random play fills the buffer first
            actions = agent.rng.integers(0, agent.action_dim, size=run.num_envs)
        else:
            actions = agent.select_action(obs, training=True)
        next_obs, reward, terminated, truncated, info = envs.step(actions)
        next_obs = flat_observations(next_obs)
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
# Entry point
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
    with one_thread(device):
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
            raise TrainingError(f"{str(exc).rstrip('.')}{run.last_checkpoint_hint()}") from exc
        finally:
            run.close(failed=failed)
