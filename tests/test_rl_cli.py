"""train-rl and evaluate-rl end to end through `main([...])`: outputs, resume, errors, Ctrl-C."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.rl_helpers import register_test_envs, write_config
from training_methods.reinforcement_learning import presets
from training_methods.reinforcement_learning.checkpoints import load_checkpoint

register_test_envs()
pytestmark = pytest.mark.usefixtures("one_torch_thread")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_config(tmp_path)


@pytest.fixture(autouse=True)
def no_presets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """These runs train on TINY alone: configs/rl/CartPole-v1.yaml would fill in every key TINY
    leaves out (test_rl_presets.py tests the presets)."""
    monkeypatch.setattr(presets, "PRESET_DIR", tmp_path / "no-presets")


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("algorithm", ["ppo", "dqn"])
def test_train_rl_writes_every_output(run_main, tmp_path: Path, tiny: Path, algorithm: str) -> None:
    out = tmp_path / "run"
    status, stdout, stderr = run_main(
        "train-rl", "--algorithm", algorithm, "--config", tiny, "--output-dir", out, "--no-progress"
    )
    assert status == 0, stderr
    assert stdout.startswith(f"train-rl: {algorithm} on CartPole-v1, ") and str(out) in stdout
    for name in ("best_model.pt", "final_model.pt", "metrics.jsonl", "returns.png", "summary.json"):
        assert (out / name).is_file(), name
    assert (out / "returns.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((out / "logs").glob("events.out.tfevents*"))
    periodic = sorted((out / "checkpoints").glob("step_*.pt"))
    assert 1 <= len(periodic) <= 2  # training.max_checkpoints
    resolved = yaml.safe_load((out / "resolved_config.yaml").read_text())
    assert resolved["reinforcement_learning"]["training"]["total_timesteps"] == 256

    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == algorithm and summary["steps"] >= 256
    eval_steps = [e["step"] for e in summary["evaluations"]]
    assert len(eval_steps) >= 2 and eval_steps[0] >= 128 and eval_steps[-1] == summary["steps"]
    assert all(e["episodes"] == 2 for e in summary["evaluations"])
    assert summary["reward_threshold"] == 475.0
    splits = {r["split"] for r in records(out / "metrics.jsonl")}
    assert splits == {"train", "eval"}
    train_records = [r for r in records(out / "metrics.jsonl") if r["split"] == "train"]
    loss_key = "policy_loss" if algorithm == "ppo" else "loss"
    assert any(loss_key in r for r in train_records) and any(
        "episode_return" in r for r in train_records
    )

    checkpoint = load_checkpoint(out / "best_model.pt")
    assert checkpoint["algorithm"] == algorithm and checkpoint["spaces"]["env_id"] == "CartPole-v1"
    assert "optimizer" not in checkpoint["agent"]  # a model, not a training state
    assert "optimizer" in load_checkpoint(periodic[-1])["agent"]

    status, stdout, stderr = run_main(
        "evaluate-rl", "--checkpoint", out / "final_model.pt", "--episodes", "3"
    )
    assert status == 0, stderr
    assert (
        stdout.startswith(f"evaluate-rl: {algorithm} on CartPole-v1 (")
        and "3 episodes: mean return" in stdout
    )


def test_ppo_on_a_box_action_space(run_main, tmp_path: Path, tiny: Path) -> None:
    out = tmp_path / "run"
    status, _, stderr = run_main(
        "train-rl",
        "--algorithm",
        "ppo",
        "--env",
        "Pendulum-v1",
        "--config",
        tiny,
        "--output-dir",
        out,
    )
    assert status == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_eval"]["mean_return"] < 0  # Pendulum's rewards are costs
    status, stdout, _ = run_main(
        "evaluate-rl", "--checkpoint", out / "best_model.pt", "--episodes", "2"
    )
    assert status == 0 and "ppo on Pendulum-v1" in stdout


def test_episodes_budget_replaces_the_step_budget(run_main, tmp_path: Path, tiny: Path) -> None:
    out = tmp_path / "run"
    status, _, stderr = run_main(
        "train-rl", "--algorithm", "dqn", "--config", tiny, "--episodes", "12", "--output-dir", out
    )
    assert status == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    assert 12 <= summary["episodes"] < 14  # stops at the step that finishes the 12th
    resolved = yaml.safe_load((out / "resolved_config.yaml").read_text())["reinforcement_learning"]
    assert (
        resolved["training"]["total_timesteps"] is None
        and resolved["training"]["max_episodes"] == 12
    )


@pytest.mark.parametrize("algorithm", ["ppo", "dqn"])
def test_seeded_runs_are_reproducible(run_main, tmp_path: Path, tiny: Path, algorithm: str) -> None:
    def run(name: str, seed: str) -> tuple[list, list]:
        out = tmp_path / name
        status, _, stderr = run_main(
            "train-rl", "--algorithm", algorithm, "--config", tiny, "--seed", seed,
            "--output-dir", out,
        )  # fmt: skip
        assert status == 0, stderr
        summary = json.loads((out / "summary.json").read_text())
        evals = [(e["step"], e["mean_return"]) for e in summary["evaluations"]]
        drop = {"time", "steps_per_second"}
        train = [
            {k: v for k, v in r.items() if k not in drop} for r in records(out / "metrics.jsonl")
        ]
        return evals, train

    first, again, other = run("a", "3"), run("b", "3"), run("c", "4")
    assert first == again
    assert first[1] != other[1]


def test_resume_continues_from_the_latest_checkpoint(run_main, tmp_path: Path, tiny: Path) -> None:
    out = tmp_path / "run"
    args = ("train-rl", "--algorithm", "dqn", "--config", tiny, "--output-dir", out)
    assert run_main(*args)[0] == 0
    status, _, err = run_main(*args)
    assert status == 2 and "already holds a train-rl run" in err and "--resume" in err

    status, _, err = run_main(*args, "--resume", "--total-timesteps", "512")
    assert status == 0, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] >= 512
    steps = [r["step"] for r in records(out / "metrics.jsonl") if r["split"] == "eval"]
    assert steps == sorted(steps) and steps[-1] >= 512
    latest = load_checkpoint(sorted((out / "checkpoints").glob("step_*.pt"))[-1])
    assert latest["progress"]["global_step"] == summary["steps"]
    assert len(latest["replay_buffer"]["actions"]) == summary["steps"]  # the buffer came along


def test_resume_without_a_checkpoint_is_a_clear_error(run_main, tmp_path: Path, tiny: Path) -> None:
    status, _, err = run_main(
        "train-rl",
        "--algorithm",
        "ppo",
        "--config",
        tiny,
        "--output-dir",
        tmp_path / "new",
        "--resume",
    )
    assert status == 2 and "no checkpoint in" in err


def test_resume_into_another_environment_or_algorithm_is_refused(
    run_main, tmp_path: Path, tiny: Path
) -> None:
    out = tmp_path / "run"
    assert run_main("train-rl", "--algorithm", "ppo", "--config", tiny, "--output-dir", out)[0] == 0
    status, _, err = run_main(
        "train-rl",
        "--algorithm",
        "ppo",
        "--env",
        "Acrobot-v1",
        "--config",
        tiny,
        "--output-dir",
        out,
        "--resume",
    )
    assert status == 2 and "trained on CartPole-v1, not Acrobot-v1" in err
    status, _, err = run_main(
        "train-rl", "--algorithm", "dqn", "--config", tiny, "--output-dir", out, "--resume"
    )
    assert status == 2 and "holds a ppo agent" in err


def test_checkpoint_from_another_observation_shape_is_refused(tmp_path: Path) -> None:
    from shared_utils.errors import ConfigurationError
    from training_methods.reinforcement_learning.checkpoints import check_compatible
    from training_methods.reinforcement_learning.envs import EnvSpaces

    saved = {"algorithm": "ppo", "spaces": EnvSpaces("CartPole-v1", (4,), True, 2).describe()}
    with pytest.raises(ConfigurationError, match=r"observations of shape \(4,\)"):
        check_compatible(saved, tmp_path / "x.pt", "ppo", EnvSpaces("CartPole-v1", (6,), True, 2))
    check_compatible(saved, tmp_path / "x.pt", "ppo", EnvSpaces("CartPole-v1", (4,), True, 2))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--env", "CartPol-v1"], "unknown environment id 'CartPol-v1'"),
        (["--algorithm", "dqn", "--env", "Pendulum-v1"], "DQN needs a Discrete action space"),
        (["--total-timesteps", "0"], "must be a positive integer"),
        (["--total-timesteps", "-5"], "must be a positive integer"),
        (["--episodes", "3", "--total-timesteps", "9"], "not allowed with argument"),
        (["--algorithm", "a2c"], "invalid choice"),
        (["--seed", "-1"], "must be an integer in [0, 2**32 - 1], got '-1'"),
    ],
)
def test_bad_input_is_a_usage_error(
    run_main, tmp_path: Path, tiny: Path, argv: list[str], message: str
) -> None:
    if "--algorithm" not in argv:
        argv = ["--algorithm", "ppo", *argv]
    status, _, err = run_main("train-rl", *argv, "--config", tiny, "--output-dir", tmp_path / "o")
    assert status == 2 and message in err
    assert "Traceback" not in err
    if "unknown environment" in message:
        assert "CartPole-v1" in err.split("Close matches:")[1]


def test_config_dims_that_do_not_match_the_environment(run_main, tmp_path: Path) -> None:
    config = write_config(
        tmp_path, reinforcement_learning={"ppo": {"state_dim": 8, "action_dim": 2}}
    )
    status, _, err = run_main(
        "train-rl", "--algorithm", "ppo", "--config", config, "--output-dir", tmp_path / "o"
    )
    assert status == 2
    assert "'reinforcement_learning.ppo.state_dim' is 8 but CartPole-v1 has 4" in err
    config = write_config(
        tmp_path, reinforcement_learning={"dqn": {"state_dim": 4, "action_dim": 2}}
    )
    assert (
        run_main(
            "train-rl", "--algorithm", "dqn", "--config", config, "--output-dir", tmp_path / "p"
        )[0]
        == 0
    )


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        (
            {"reinforcement_learning": {"ppo": {"gamma": 1.5}}},
            "reinforcement_learning.ppo.gamma' is 1.5; it must be in [0, 1]",
        ),
        (
            {"reinforcement_learning": {"training": {"eval_episodes": 0}}},
            "'reinforcement_learning.training.eval_episodes' is 0; it must be at",
        ),
        (
            {"reinforcement_learning": {"training": {"max_checkpoints": 0}}},
            "'reinforcement_learning.training.max_checkpoints' is 0; it must be",
        ),
        ({"common": {"seed": -3}}, "'common.seed' is -3; it must be in [0, 2**32 - 1]"),
    ],
)  # fmt: skip
def test_out_of_range_config_value_names_the_key(
    run_main, tmp_path: Path, sections: dict, message: str
) -> None:
    config = write_config(tmp_path, **sections)
    for algorithm in ("ppo", "dqn"):
        status, _, err = run_main(
            "train-rl", "--algorithm", algorithm, "--config", config, "--output-dir", tmp_path / "o"
        )
        assert status == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_evaluate_rl_refuses_zero_episodes_from_the_config(
    run_main, tmp_path: Path, tiny: Path
) -> None:
    out = tmp_path / "run"
    assert run_main("train-rl", "--algorithm", "ppo", "--config", tiny, "--output-dir", out)[0] == 0
    config = write_config(tmp_path, reinforcement_learning={"training": {"eval_episodes": 0}})
    status, _, err = run_main(
        "evaluate-rl", "--checkpoint", out / "best_model.pt", "--config", config
    )
    assert status == 2 and "'reinforcement_learning.training.eval_episodes' is 0" in err


def test_update_frequency_only_bounds_ppo_runs(run_main, tmp_path: Path) -> None:
    """training.update_frequency is PPO's rollout length; DQN runs ignore it."""
    config = write_config(tmp_path, reinforcement_learning={"training": {"update_frequency": 1}})
    status, _, err = run_main(
        "train-rl", "--algorithm", "ppo", "--config", config, "--output-dir", tmp_path / "o"
    )
    assert status == 2 and "'reinforcement_learning.training.update_frequency' is 1" in err
    status, _, err = run_main(
        "train-rl", "--algorithm", "dqn", "--config", config, "--output-dir", tmp_path / "p"
    )
    assert status == 0, err


def test_evaluate_rl_bad_checkpoints(run_main, tmp_path: Path) -> None:
    status, _, err = run_main("evaluate-rl", "--checkpoint", tmp_path / "absent.pt")
    assert status == 2 and "not found" in err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    status, _, err = run_main("evaluate-rl", "--checkpoint", junk)
    assert status == 2 and "not a readable train-rl checkpoint" in err
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    status, _, err = run_main("evaluate-rl", "--checkpoint", other)
    assert status == 2 and "is not a train-rl checkpoint" in err


def test_nan_loss_stops_with_the_last_good_checkpoint_intact(run_main, tmp_path: Path) -> None:
    # NaNReward-v0: 10-step episodes whose rewards turn NaN after 60 steps per environment.
    config = write_config(tmp_path, reinforcement_learning={"training": {"save_frequency": 1}})
    out = tmp_path / "run"
    status, _, err = run_main(
        "train-rl",
        "--algorithm",
        "ppo",
        "--env",
        "NaNReward-v0",
        "--config",
        config,
        "--output-dir",
        out,
    )
    assert status == 1
    assert "PPO loss became nan (not finite)" in err and "the last good checkpoint is" in err
    assert "reinforcement_learning.ppo.learning_rate" in err
    assert err.count("the last good checkpoint") == 1 and len(err.strip().splitlines()) == 1
    named = Path(err.split("the last good checkpoint is ")[1].strip().rstrip("."))
    assert named.is_file()
    weights = load_checkpoint(named)["agent"]["policy"]
    assert all(torch.isfinite(w).all() for w in weights.values())
    assert not (out / "summary.json").exists()


def test_ctrl_c_saves_a_checkpoint_and_exits_130(
    run_main, tmp_path: Path, tiny: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training_methods.reinforcement_learning.ppo_agent import PPOAgent

    original = PPOAgent.update
    calls = []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PPOAgent, "update", interrupted)
    out = tmp_path / "run"
    args = ("train-rl", "--algorithm", "ppo", "--config", tiny, "--output-dir", out)
    status, _, err = run_main(*args)
    assert status == 130 and "interrupted" in err
    saved = sorted((out / "checkpoints").glob("step_*.pt"))
    assert saved and load_checkpoint(saved[-1])["progress"]["updates"] == 1
    monkeypatch.setattr(PPOAgent, "update", original)
    status, _, err = run_main(*args, "--resume")
    assert status == 0, err
    assert json.loads((out / "summary.json").read_text())["steps"] >= 256


def test_train_rl_script_is_a_thin_wrapper(tmp_path: Path, tiny: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "train_rl.py"),
            "--algorithm",
            "ppo",
            "--config",
            str(tiny),
            "--total-timesteps",
            "64",
            "--output-dir",
            "run",
            "--log-level",
            "WARNING",
        ],
        cwd=tmp_path,  # --output-dir is relative to where the user stands
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "run" / "summary.json").is_file()


SHIPPED = sorted((REPO / "configs" / "rl").glob("*.yaml"))


@pytest.mark.parametrize("config", SHIPPED, ids=[path.stem for path in SHIPPED])
def test_shipped_settings_train(run_main, tmp_path: Path, config: Path) -> None:
    """Every configs/rl/<env>.yaml (or <env>.<algorithm>.yaml, that algorithm's alone) names its
    environment (installed: LunarLander-v3 needs gymnasium[box2d], Hopper-v5 gymnasium[mujoco])
    and trains with its own settings for a few thousand steps, for each algorithm it has
    settings for."""
    settings = yaml.safe_load(config.read_text())
    env_id = settings["reinforcement_learning"]["training"]["env_id"]
    algorithms = [name for name in ("ppo", "dqn") if name in settings["reinforcement_learning"]]
    own = config.stem.removeprefix(f"{env_id}.")
    assert config.stem == env_id or (own != config.stem and algorithms == [own])
    for algorithm in algorithms:
        out = tmp_path / algorithm
        status, stdout, stderr = run_main(
            "train-rl", "--algorithm", algorithm, "--config", config,
            "--total-timesteps", "3000", "--output-dir", out, "--no-progress",
        )  # fmt: skip
        assert status == 0, stderr
        assert f"{algorithm} on {env_id}" in stdout
        assert json.loads((out / "summary.json").read_text())["steps"] >= 3000


def test_best_model_is_the_latest_of_equal_evaluations(run_main, tmp_path: Path) -> None:
    """Every Counter-v0 episode returns 3, so every evaluation ties: best_model.pt is the last
    one, which has trained longest."""
    config = write_config(tmp_path, reinforcement_learning={"training": {"env_id": "Counter-v0"}})
    out = tmp_path / "run"
    status, _, stderr = run_main(
        "train-rl", "--algorithm", "ppo", "--config", config, "--output-dir", out, "--no-progress"
    )
    assert status == 0, stderr
    summary = json.loads((out / "summary.json").read_text())
    steps = [e["step"] for e in summary["evaluations"]]
    assert len(steps) >= 2 and {e["mean_return"] for e in summary["evaluations"]} == {3.0}
    assert summary["best_eval"]["step"] == steps[-1]
    assert load_checkpoint(out / "best_model.pt")["progress"]["global_step"] == steps[-1]
