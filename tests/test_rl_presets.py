"""Settings by environment: train-rl uses configs/rl/<env>.yaml, under --config and flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.rl_helpers import register_test_envs
from training_methods.reinforcement_learning import presets
from training_methods.reinforcement_learning.presets import merge_settings, preset_path

register_test_envs()
pytestmark = pytest.mark.usefixtures("one_torch_thread")

# A preset small enough to train in a second, with keys the tests below override one by one.
PRESET = {
    "reinforcement_learning": {
        "training": {
            "env_id": "CartPole-v1",
            "total_timesteps": 256,
            "update_frequency": 64,
            "eval_every_steps": 0,
            "eval_episodes": 2,
            "max_steps_per_episode": 50,
        },
        "ppo": {"num_envs": 2, "hidden_dim": 8, "k_epochs": 3, "batch_size": 32},
    },
    "common": {"device": "cpu"},
    "logging": {"use_tensorboard": False},
}


@pytest.fixture
def preset_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A preset folder in place of configs/rl holding PRESET as CartPole-v1.yaml."""
    folder = tmp_path / "presets"
    folder.mkdir()
    (folder / "CartPole-v1.yaml").write_text(yaml.safe_dump(PRESET))
    monkeypatch.setattr(presets, "PRESET_DIR", folder)
    return folder


def resolved(out: Path) -> dict:
    return yaml.safe_load((out / "resolved_config.yaml").read_text())


def train_rl(run_main, out: Path, *args: object) -> tuple[int, str, str]:
    return run_main("train-rl", "--output-dir", out, "--no-progress", *args)


def test_merge_is_key_by_key() -> None:
    base = {"a": {"b": 1, "c": {"d": 2, "e": 3}}, "f": 4}
    over = {"a": {"c": {"e": 30}}, "f": [5]}
    assert merge_settings(base, over) == {"a": {"b": 1, "c": {"d": 2, "e": 30}}, "f": [5]}
    assert base["a"]["c"]["e"] == 3  # the inputs are left as they were


def test_namespaced_ids_name_a_file_in_the_preset_folder(tmp_path: Path) -> None:
    assert preset_path("ALE/Pong-v5", tmp_path) == tmp_path / "ALE_Pong-v5.yaml"


def test_an_algorithm_with_its_own_preset_file_uses_it(
    run_main, tmp_path: Path, preset_dir: Path
) -> None:
    """CartPole-v1.ppo.yaml is PPO's preset; DQN keeps CartPole-v1.yaml."""
    own = {"reinforcement_learning": {"training": {"total_timesteps": 256, "eval_episodes": 1}}}
    (preset_dir / "CartPole-v1.ppo.yaml").write_text(yaml.safe_dump(merge_settings(PRESET, own)))
    for algorithm, file in (("ppo", "CartPole-v1.ppo.yaml"), ("dqn", "CartPole-v1.yaml")):
        out = tmp_path / algorithm
        status, stdout, stderr = train_rl(
            run_main, out, "--algorithm", algorithm, "--env", "CartPole-v1",
            "--total-timesteps", "300",
        )  # fmt: skip
        assert status == 0, stderr
        assert stdout.rstrip().endswith(f"; preset {preset_dir / file}")
    assert resolved(tmp_path / "ppo")["reinforcement_learning"]["training"]["eval_episodes"] == 1
    assert resolved(tmp_path / "dqn")["reinforcement_learning"]["training"]["eval_episodes"] != 1


def test_the_shipped_preset_is_used_for_its_environment(run_main, tmp_path: Path) -> None:
    """No --config: `--env CartPole-v1` trains with configs/rl/CartPole-v1.yaml's DQN settings."""
    out = tmp_path / "run"
    quick = tmp_path / "quick.yaml"  # keys the preset does not set: no TensorBoard
    quick.write_text(yaml.safe_dump({"logging": {"use_tensorboard": False}}))
    status, stdout, stderr = train_rl(
        run_main, out, "--algorithm", "dqn", "--env", "CartPole-v1", "--config", quick,
        "--total-timesteps", "300",
    )  # fmt: skip
    assert status == 0, stderr
    assert stdout.rstrip().endswith("; preset configs/rl/CartPole-v1.yaml")
    shipped = yaml.safe_load((presets.PRESET_DIR / "CartPole-v1.yaml").read_text())
    dqn = resolved(out)["reinforcement_learning"]["dqn"]
    for key, value in shipped["reinforcement_learning"]["dqn"].items():
        assert dqn[key] == value, key
    assert (
        (out / "resolved_config.yaml")
        .read_text()
        .startswith("# train-rl settings: the defaults, then preset configs/rl/CartPole-v1.yaml,")
    )
    assert json.loads((out / "summary.json").read_text())["preset"] == "configs/rl/CartPole-v1.yaml"


def test_config_file_wins_over_the_preset_key_by_key_and_flags_over_both(
    run_main, tmp_path: Path, preset_dir: Path
) -> None:
    user = tmp_path / "mine.yaml"
    user.write_text(yaml.safe_dump({"reinforcement_learning": {"ppo": {"hidden_dim": 12}}}))
    out = tmp_path / "run"
    status, stdout, stderr = train_rl(
        run_main, out, "--algorithm", "ppo", "--config", user, "--num-envs", "4",
        "--total-timesteps", "128",
    )  # fmt: skip
    assert status == 0, stderr
    assert f"preset {preset_dir / 'CartPole-v1.yaml'}" in stdout
    settings = resolved(out)["reinforcement_learning"]
    assert settings["ppo"]["hidden_dim"] == 12  # --config over the preset
    assert settings["ppo"]["k_epochs"] == 3  # the preset's, where --config says nothing
    assert settings["ppo"]["num_envs"] == 4  # the flag over the preset
    assert settings["training"]["total_timesteps"] == 128  # the flag over the preset
    assert settings["training"]["eval_episodes"] == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_envs"] == 4 and summary["steps"] >= 128


def test_flag_wins_over_preset_and_config_file(run_main, tmp_path: Path, preset_dir: Path) -> None:
    user = tmp_path / "mine.yaml"
    user.write_text(yaml.safe_dump({"reinforcement_learning": {"ppo": {"num_envs": 3}}}))
    out = tmp_path / "run"
    status, _, stderr = train_rl(
        run_main, out, "--algorithm", "ppo", "--config", user, "--num-envs", "1"
    )
    assert status == 0, stderr
    assert resolved(out)["reinforcement_learning"]["ppo"]["num_envs"] == 1


def test_no_preset_trains_on_the_defaults(run_main, tmp_path: Path, preset_dir: Path) -> None:
    user = tmp_path / "mine.yaml"
    user.write_text(yaml.safe_dump({"common": {"device": "cpu"}, "logging": PRESET["logging"]}))
    out = tmp_path / "run"
    status, stdout, stderr = train_rl(
        run_main, out, "--algorithm", "ppo", "--config", user, "--no-preset",
        "--total-timesteps", "64", "--num-envs", "2",
    )  # fmt: skip
    assert status == 0, stderr
    assert stdout.rstrip().endswith("; no preset (--no-preset)")
    settings = resolved(out)["reinforcement_learning"]
    assert settings["ppo"]["hidden_dim"] == 64 and settings["ppo"]["k_epochs"] == 4  # defaults
    assert (
        (out / "resolved_config.yaml")
        .read_text()
        .startswith(
            "# train-rl settings: the defaults, then --config and command-line flags; no preset."
        )
    )
    assert json.loads((out / "summary.json").read_text())["preset"] is None


def test_environment_without_a_preset(run_main, tmp_path: Path, preset_dir: Path) -> None:
    out = tmp_path / "run"
    user = tmp_path / "mine.yaml"
    user.write_text(yaml.safe_dump(PRESET))  # the CartPole preset's settings, as --config
    status, stdout, stderr = train_rl(
        run_main, out, "--algorithm", "ppo", "--env", "Counter-v0", "--config", user
    )
    assert status == 0, stderr
    assert stdout.startswith("train-rl: ppo on Counter-v0, ")
    assert stdout.rstrip().endswith("; no preset for Counter-v0")
    assert resolved(out)["reinforcement_learning"]["training"]["env_id"] == "Counter-v0"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("reinforcement_learning: [1,\n", "CartPole-v1.yaml:2: invalid YAML"),
        ("reinforcement_learning:\n  ppo:\n    hidden_dims: 8\n", "unknown config key"),
        ("- a list\n", "must be a mapping"),
    ],
    ids=["syntax", "unknown-key", "not-a-mapping"],
)
def test_a_broken_preset_is_one_line_naming_the_file(
    run_main, tmp_path: Path, preset_dir: Path, text: str, message: str
) -> None:
    (preset_dir / "CartPole-v1.yaml").write_text(text)
    status, stdout, stderr = train_rl(run_main, tmp_path / "run", "--algorithm", "ppo")
    assert status == 2 and stdout == ""
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert str(preset_dir / "CartPole-v1.yaml") in stderr and message in stderr
    # --no-preset is the way around it.
    user = tmp_path / "mine.yaml"
    user.write_text(yaml.safe_dump(PRESET))
    status, _, stderr = train_rl(
        run_main, tmp_path / "run2", "--algorithm", "ppo", "--no-preset", "--config", user
    )
    assert status == 0, stderr


def test_evaluate_rl_plays_a_preset_run(run_main, tmp_path: Path, preset_dir: Path) -> None:
    """The checkpoint carries what the preset set (here observation normalisation)."""
    preset = json.loads(json.dumps(PRESET))
    preset["reinforcement_learning"]["ppo"]["normalize_observations"] = True
    (preset_dir / "CartPole-v1.yaml").write_text(yaml.safe_dump(preset))
    out = tmp_path / "run"
    status, _, stderr = train_rl(run_main, out, "--algorithm", "ppo")
    assert status == 0, stderr
    status, stdout, stderr = run_main(
        "evaluate-rl", "--checkpoint", out / "best_model.pt", "--episodes", "2"
    )
    assert status == 0, stderr
    assert stdout.startswith("evaluate-rl: ppo on CartPole-v1 (")
