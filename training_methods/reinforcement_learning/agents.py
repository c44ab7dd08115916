"""The agent a run or a checkpoint describes.

`agent_kwargs` is what a checkpoint stores of its agent (the algorithm's config section and the
environment's sizes) and `build_agent` builds the agent from it, so a training run and
`evaluate-rl` build their agents the same way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Literal

import torch
from threadpoolctl import threadpool_limits

from shared_utils.config import DQNConfig, PPOConfig, ReinforcementLearningConfig
from shared_utils.errors import ConfigurationError
from training_methods.reinforcement_learning import checkpoints as ckpt
from training_methods.reinforcement_learning.dqn_agent import DQNAgent
from training_methods.reinforcement_learning.envs import EnvSpaces
from training_methods.reinforcement_learning.ppo_agent import PPOAgent

Algorithm = Literal["ppo", "dqn"]
Agent = PPOAgent | DQNAgent


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
def one_thread(device: torch.device) -> Iterator[None]:
    """One thread for torch's and NumPy's (BLAS) arithmetic on the CPU while the block runs: these
    networks are tiny, and more threads only add synchronisation (on 2 busy cores, BLAS threads
    made a PPO run several times slower). The settings are process-wide: restored after."""
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(previous)


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
    load_agent_state(agent, saved, path, with_optimizer=False)
    return agent, saved


def load_agent_state(
    agent: Agent, saved: dict[str, Any], path: Path, *, with_optimizer: bool
) -> None:
    """The checkpoint's weights (and optimizer state) into `agent`; ConfigurationError when they
    do not fit it."""
    try:
        agent.load_state_dict(saved["agent"], with_optimizer=with_optimizer)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ConfigurationError(
            f"checkpoint '{path}' does not fit this agent ({str(exc).splitlines()[0]}); resume "
            "with the config it was trained with (resolved_config.yaml next to it)."
        ) from None
