"""scripts/profile_rl.py: the parts it times are the training loop's calls, and they add up."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.script_helpers import load_script

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "profile_rl.py"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("algorithm", ["ppo", "dqn"])
def test_profile_times_every_part_of_a_short_run(algorithm: str) -> None:
    profile_rl = load_script("profile_rl")
    config = SCRIPT.parent.parent / "configs" / "rl" / "CartPole-v1.yaml"
    result = profile_rl.profile(algorithm, 3_000, config, seed=0)
    parts = result["parts"]
    assert set(parts) == {"step", "select_action", "store_transition", "update", "rest"}
    assert all(parts[name] > 0 for name in ("step", "select_action", "store_transition", "update"))
    timed = sum(seconds for name, seconds in parts.items() if name != "rest")
    assert timed <= result["train_seconds"]  # the clocks run inside the training time
    assert parts["rest"] == pytest.approx(result["train_seconds"] - timed)
    assert result["steps"] >= 3_000
    table = profile_rl.render(result)
    assert "learning (updates)" in table and f"{result['steps']:,} steps" in table
    # the patched methods are restored
    from training_methods.reinforcement_learning.ppo_agent import PPOAgent

    assert not hasattr(PPOAgent.update, "__wrapped__")
