"""Every reinforcement-learning config key changes what a run does.

Each case trains a tiny run with one key changed from the base settings and compares a
fingerprint of the outcome (final weights, steps, episodes, evaluations, records, checkpoint
files) with the base run's. A key that nothing reads would leave the fingerprint unchanged.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from shared_utils.config import ToolkitConfig, config_from_dict
from shared_utils.errors import ConfigurationError
from training_methods.reinforcement_learning import training_run
from training_methods.reinforcement_learning.checkpoints import load_checkpoint
from training_methods.reinforcement_learning.trainer import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = {
    "common": {"device": "cpu", "seed": 0},
    "logging": {"use_tensorboard": False},
    "reinforcement_learning": {
        "training": {
            "total_timesteps": 192,
            "update_frequency": 64,
            "eval_every_steps": 0,
            "log_every_steps": 64,
            "eval_episodes": 2,
            "max_checkpoints": 10,
            "save_frequency": 1000,
            "max_steps_per_episode": 30,
        },
        "ppo": {"num_envs": 2, "k_epochs": 2, "batch_size": 32, "hidden_dim": 16},
        "dqn": {
            "hidden_dim": 16,
            "learning_starts": 48,
            "train_freq": 4,
            "batch_size": 16,
            "buffer_size": 1000,
            "target_update": 10,
            # Not the defaults: the cases below change each of these.
            "gradient_steps": 1,
            "n_step": 1,
            "normalize_observations": False,
            "epsilon_schedule": "exponential",
        },
    },
}

RL = "reinforcement_learning"
# (algorithm, dotted key, new value, other overrides that make the key matter)
CASES: list[tuple[str, str, Any, dict[str, Any]]] = [
    ("ppo", f"{RL}.ppo.hidden_dim", 8, {}),
    ("ppo", f"{RL}.ppo.learning_rate", 1e-2, {}),
    ("ppo", f"{RL}.ppo.gamma", 0.5, {}),
    ("ppo", f"{RL}.ppo.gae_lambda", 0.5, {}),
    ("ppo", f"{RL}.ppo.eps_clip", 1e-6, {}),
    ("ppo", f"{RL}.ppo.k_epochs", 3, {}),
    ("ppo", f"{RL}.ppo.batch_size", 16, {}),
    ("ppo", f"{RL}.ppo.entropy_coef", 0.5, {}),
    ("ppo", f"{RL}.ppo.value_coef", 5.0, {}),
    ("ppo", f"{RL}.ppo.num_envs", 4, {}),
    ("ppo", f"{RL}.ppo.max_grad_norm", None, {}),
    ("ppo", f"{RL}.ppo.clip_value_loss", True, {f"{RL}.ppo.eps_clip": 1e-6}),
    ("ppo", f"{RL}.ppo.target_kl", 1e-6, {f"{RL}.ppo.learning_rate": 0.05}),
    ("ppo", f"{RL}.ppo.anneal_lr", False, {}),
    ("ppo", f"{RL}.ppo.normalize_observations", True, {}),
    ("ppo", f"{RL}.ppo.normalize_rewards", True, {}),
    ("ppo", f"{RL}.ppo.shared_features", True, {}),
    ("ppo", f"{RL}.ppo.activation", "relu", {}),
    ("ppo", f"{RL}.ppo.orthogonal_init", False, {}),
    ("ppo", f"{RL}.ppo.log_std_init", -1.0, {f"{RL}.training.env_id": "Pendulum-v1"}),
    ("ppo", f"{RL}.training.update_frequency", 128, {}),
    ("ppo", f"{RL}.training.env_id", "Acrobot-v1", {}),
    ("ppo", f"{RL}.training.total_timesteps", 320, {}),
    (
        "ppo",
        f"{RL}.training.max_episodes",
        4,
        {f"{RL}.training.total_timesteps": None, f"{RL}.training.max_episodes": 8},
    ),
    ("ppo", f"{RL}.training.max_steps_per_episode", 10, {}),
    ("ppo", f"{RL}.training.eval_every_steps", 64, {}),
    ("ppo", f"{RL}.training.log_every_steps", 1000, {}),
    ("dqn", f"{RL}.training.stop_at_reward", 0.0, {f"{RL}.training.eval_every_steps": 64}),
    ("ppo", f"{RL}.training.save_frequency", 2, {}),
    ("ppo", f"{RL}.training.max_checkpoints", 1, {f"{RL}.training.save_frequency": 2}),
    ("ppo", f"{RL}.training.eval_episodes", 3, {}),
    ("ppo", "common.seed", 1, {}),
    ("dqn", f"{RL}.dqn.hidden_dim", 8, {}),
    ("dqn", f"{RL}.dqn.learning_rate", 1e-2, {}),
    ("dqn", f"{RL}.dqn.gamma", 0.5, {}),
    ("dqn", f"{RL}.dqn.epsilon_start", 0.5, {}),
    ("dqn", f"{RL}.dqn.epsilon_end", 0.9, {}),
    ("dqn", f"{RL}.dqn.epsilon_decay", 0.9, {}),
    ("dqn", f"{RL}.dqn.epsilon_schedule", "linear", {}),
    ("dqn", f"{RL}.dqn.exploration_steps", 10, {f"{RL}.dqn.epsilon_schedule": "linear"}),
    ("dqn", f"{RL}.dqn.buffer_size", 40, {}),
    ("dqn", f"{RL}.dqn.batch_size", 8, {}),
    ("dqn", f"{RL}.dqn.target_update", 1, {}),
    ("dqn", f"{RL}.dqn.tau", 0.5, {}),
    ("dqn", f"{RL}.dqn.use_dueling", False, {}),
    ("dqn", f"{RL}.dqn.double_dqn", False, {}),
    ("dqn", f"{RL}.dqn.learning_starts", 100, {}),
    ("dqn", f"{RL}.dqn.train_freq", 8, {}),
    ("dqn", f"{RL}.dqn.gradient_steps", 2, {}),
    ("dqn", f"{RL}.dqn.n_step", 3, {}),
    ("dqn", f"{RL}.dqn.normalize_observations", True, {}),
    ("dqn", f"{RL}.dqn.max_grad_norm", 0.01, {}),
    ("dqn", f"{RL}.dqn.num_envs", 2, {}),
]


def base_config() -> ToolkitConfig:
    return config_from_dict(json.loads(json.dumps(BASE)))


def fingerprint(config: ToolkitConfig, algorithm: str, out: Path) -> dict[str, Any]:
    summary = train(config, algorithm, out, show_progress=False)
    weights = load_checkpoint(out / "final_model.pt")["agent"]
    network = weights.get("policy") or weights["q_network"]
    digest = hashlib.sha256()
    for name, tensor in sorted(network.items()):
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes())
    return {
        "weights": digest.hexdigest(),
        "steps": summary["steps"],
        "episodes": summary["episodes"],
        "evaluations": [
            (e["step"], e["mean_return"], e["episodes"]) for e in summary["evaluations"]
        ],
        "records": len((out / "metrics.jsonl").read_text().splitlines()),
        "checkpoints": sorted(p.name for p in (out / "checkpoints").iterdir()),
    }


@pytest.fixture(scope="module")
def base_fingerprints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {
            algorithm: fingerprint(
                base_config(), algorithm, tmp_path_factory.mktemp(algorithm) / "run"
            )
            for algorithm in ("ppo", "dqn")
        }
    finally:
        torch.set_num_threads(previous)


def test_the_cases_cover_every_reinforcement_learning_key() -> None:
    import dataclasses

    covered = {key for _, key, _, _ in CASES}
    # Checked by their own tests: dims (test_rl_cli), the vector-env backend and the command's
    # output_dir (below).
    covered |= {f"{RL}.{a}.{d}" for a in ("ppo", "dqn") for d in ("state_dim", "action_dim")}
    covered |= {f"{RL}.training.vector_env", f"{RL}.training.output_dir"}
    rl = base_config().reinforcement_learning
    every = {
        f"{RL}.{section}.{f.name}"
        for section in ("ppo", "dqn", "training")
        for f in dataclasses.fields(getattr(rl, section))
    }
    assert every - covered == set()


def test_base_runs_are_reproducible(base_fingerprints: dict, tmp_path: Path) -> None:
    assert fingerprint(base_config(), "ppo", tmp_path / "again") == base_fingerprints["ppo"]


def with_keys(values: dict[str, Any]) -> ToolkitConfig:
    """The base config with dotted keys set (None included, which apply_overrides skips)."""
    config = base_config()
    for dotted, value in values.items():
        *parents, leaf = dotted.split(".")
        section = config
        for part in parents:
            section = getattr(section, part)
        setattr(section, leaf, value)
    return config


@pytest.mark.parametrize(
    ("algorithm", "key", "value", "extra"),
    CASES,
    ids=[f"{c[1].split('.', 1)[-1]}={c[2]}" for c in CASES],
)
def test_key_changes_the_run(
    base_fingerprints: dict, tmp_path: Path, algorithm: str, key: str, value: Any, extra: dict
) -> None:
    changed = fingerprint(with_keys({**extra, key: value}), algorithm, tmp_path / "changed")
    if extra:  # compare with a base run under the same extra settings
        reference = fingerprint(with_keys(extra), algorithm, tmp_path / "reference")
    else:
        reference = base_fingerprints[algorithm]
    assert changed != reference


def test_async_vector_env_runs_the_same_episodes_in_subprocesses(
    base_fingerprints: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gymnasium as gym

    built: list[str] = []
    original = training_run.make_vector_env

    def spy(*args: Any, **kwargs: Any) -> gym.vector.VectorEnv:
        envs = original(*args, **kwargs)
        built.append(type(envs.unwrapped).__name__)
        return envs

    monkeypatch.setattr(training_run, "make_vector_env", spy)
    config = base_config()
    config.reinforcement_learning.training.vector_env = "sync"
    in_process = fingerprint(config, "ppo", tmp_path / "sync")
    config.reinforcement_learning.training.vector_env = "async"
    assert fingerprint(config, "ppo", tmp_path / "async") == in_process
    assert built == ["SyncVectorEnv", "AsyncVectorEnv"]


def test_device_cuda_without_cuda_is_a_configuration_error(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    config = base_config()
    config.common.device = "cuda"
    with pytest.raises(ConfigurationError, match="common.device"):
        train(config, "ppo", tmp_path / "run")


def test_default_output_dir_comes_from_the_training_section(run_main, tmp_path: Path) -> None:
    import yaml

    data = json.loads(json.dumps(BASE))
    data["reinforcement_learning"]["training"]["output_dir"] = str(tmp_path / "outputs" / "rl")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump(data))
    status, _, err = run_main(
        "train-rl", "--algorithm", "dqn", "--config", config, "--seed", "5", "--no-preset"
    )
    assert status == 0, err
    assert (tmp_path / "outputs" / "rl" / "dqn-CartPole-v1-seed5" / "summary.json").is_file()
