"""The agents learn: they solve CartPole-v1 with the shipped settings and with the plain
defaults, within a fixed budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared_utils.config import REPO_ROOT, load_config
from training_methods.reinforcement_learning.trainer import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CARTPOLE = REPO_ROOT / "configs" / "rl" / "CartPole-v1.yaml"


@pytest.mark.slow
def test_ppo_solves_cartpole_within_50k_steps(tmp_path: Path) -> None:
    """Seed 0 with configs/rl/CartPole-v1.yaml: a deterministic 10-episode evaluation reaches
    the solved threshold (475) within 50,000 steps; the run stops there (stop_at_reward)."""
    config = load_config(CARTPOLE)
    config.common.seed = 0
    config.common.device = "cpu"
    config.logging.use_tensorboard = False
    training = config.reinforcement_learning.training
    training.total_timesteps = 50_000
    training.stop_at_reward = 475.0
    summary = train(config, "ppo", tmp_path / "run", show_progress=False)
    solved = summary["first_eval_at_threshold"]
    assert solved is not None, summary["evaluations"]
    assert solved["step"] <= 50_000 and solved["mean_return"] >= 475
    assert summary["steps"] < 50_000  # stopped at the threshold
    # The saved best model plays as well when loaded again.
    from training_methods.reinforcement_learning.evaluation import evaluate_checkpoint

    result = evaluate_checkpoint(tmp_path / "run" / "best_model.pt", 10, seed=0, device_name="cpu")
    assert result["mean_return"] >= 400, json.dumps(result)


def test_ppo_learns_in_a_few_thousand_steps(tmp_path: Path) -> None:
    """Well above a random policy (about 22 on CartPole-v1) after 6,000 steps."""
    config = load_config(CARTPOLE)
    config.common.seed = 1
    config.common.device = "cpu"
    config.logging.use_tensorboard = False
    config.reinforcement_learning.training.total_timesteps = 6_000
    summary = train(config, "ppo", tmp_path / "run", show_progress=False)
    assert summary["final_eval"]["mean_return"] >= 100, summary["evaluations"]


@pytest.mark.slow
@pytest.mark.parametrize(("algorithm", "budget", "seed"), [("dqn", 50_000, 4), ("ppo", 100_000, 1)])
def test_the_defaults_solve_cartpole(
    tmp_path: Path, algorithm: str, budget: int, seed: int
) -> None:
    """No preset, no config file: the dataclass defaults (what `train-rl --no-preset` trains
    with) solve CartPole-v1 within 50,000 (DQN) or 100,000 (PPO) steps, and best_model.pt holds
    it over 20 episodes. One seed over the whole budget (a few seconds for PPO, half a minute for
    DQN); scripts/benchmark_rl.py --defaults measures 5 seeds."""
    from shared_utils.config import ToolkitConfig
    from training_methods.reinforcement_learning.evaluation import evaluate_checkpoint

    config = ToolkitConfig()
    config.common.seed = seed
    config.common.device = "cpu"
    config.logging.use_tensorboard = False
    training = config.reinforcement_learning.training
    assert training.env_id == "CartPole-v1"
    training.total_timesteps = budget
    summary = train(config, algorithm, tmp_path / "run", show_progress=False)
    assert summary["first_eval_at_threshold"] is not None, summary["evaluations"]
    result = evaluate_checkpoint(tmp_path / "run" / "best_model.pt", 20, seed, "cpu")
    assert result["mean_return"] >= 475, json.dumps(result)
