"""scripts/benchmark_rl.py --same-settings: our config as Stable-Baselines3's keyword arguments."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.script_helpers import load_script

ROOT = Path(__file__).resolve().parent.parent


def test_the_zoo_file_translates_to_the_zoo_settings() -> None:
    """configs/rl/compare/CartPole-v1.zoo.yaml is the zoo's CartPole settings: translated for SB3
    they are what the zoo runs, except where the file's header says (the target sync)."""
    benchmark = load_script("benchmark_rl")
    config = benchmark.cartpole_config(
        ROOT / "configs" / "rl" / "compare" / "CartPole-v1.zoo.yaml", 50_000, 1000, 10
    )
    dqn = benchmark.sb3_settings(config, "dqn")
    zoo = {"n_envs": 1, **benchmark.SB3_DQN}
    assert dqn.pop("target_update_interval") == 256  # one sync per phase, as ours
    assert zoo.pop("target_update_interval") == 10  # also once per phase: see the header
    assert dqn.pop("n_steps") == 1
    assert dqn.pop("tau") == 1.0 and dqn.pop("exploration_initial_eps") == 1.0
    assert dqn.pop("max_grad_norm") == 10.0  # SB3's default
    assert dqn.pop("exploration_fraction") == pytest.approx(zoo.pop("exploration_fraction"))
    assert dqn == zoo

    ppo = benchmark.sb3_settings(config, "ppo")
    zoo_ppo = dict(benchmark.SB3_PPO)
    assert ppo["learning_rate"](0.25) == pytest.approx(0.25 * zoo_ppo.pop("learning_rate"))
    assert ppo["clip_range"] == zoo_ppo.pop("clip_range")  # the zoo anneals it; here it stays
    assert {key: ppo[key] for key in zoo_ppo} == zoo_ppo
    from torch import nn

    assert ppo["policy_kwargs"] == {  # SB3's defaults for PPO, spelled out
        "net_arch": [64, 64],
        "activation_fn": nn.Tanh,
        "ortho_init": True,
        "log_std_init": 0.0,
    }


def test_a_setting_sb3_cannot_express_is_refused() -> None:
    benchmark = load_script("benchmark_rl")
    config = benchmark.cartpole_config(
        ROOT / "configs" / "rl" / "CartPole-v1.yaml", 50_000, 1000, 10
    )
    with pytest.raises(SystemExit, match=r"dqn\.double_dqn"):
        benchmark.sb3_settings(config, "dqn")
    with pytest.raises(SystemExit, match=r"ppo\.normalize_observations"):
        benchmark.sb3_settings(config, "ppo")
    config.reinforcement_learning.dqn.double_dqn = False
    config.reinforcement_learning.dqn.use_dueling = False
    config.reinforcement_learning.dqn.normalize_observations = False
    config.reinforcement_learning.dqn.target_update = 128  # two phases: SB3 counts otherwise
    with pytest.raises(SystemExit, match="target_update"):
        benchmark.sb3_settings(config, "dqn")
    config.reinforcement_learning.dqn.target_update = 64
    assert benchmark.sb3_settings(config, "dqn")["target_update_interval"] == 256
    config.reinforcement_learning.training.env_id = "Acrobot-v1"  # SB3's side trains CartPole
    with pytest.raises(SystemExit, match="env_id"):
        benchmark.sb3_settings(config, "dqn")
