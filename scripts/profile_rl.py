"""Where a train-rl run spends its time: environment steps, acting, storing, learning, the rest.

    python scripts/profile_rl.py [--algorithms ppo dqn] [--ppo-steps N] [--dqn-steps N]
                                 [--config configs/rl/CartPole-v1.yaml] [--seed S] [--json F]

Trains with the given config (evaluation off) and times, with a clock around each call, the
calls the training loop makes: `envs.step` (the vector environment and its wrappers), the agent's
`select_action`, `store_transition` and `update`. "The rest" is the loop itself, counting,
logging and checkpoints. It times the code it imports, so pointing PYTHONPATH at another checkout
profiles that one (how the README's before/after table was made).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
if str(PROJECT) not in sys.path:
    sys.path.append(str(PROJECT))  # after PYTHONPATH: another checkout there wins

from shared_utils.config import load_config  # noqa: E402
from training_methods.reinforcement_learning import trainer, training_run  # noqa: E402
from training_methods.reinforcement_learning.dqn_agent import DQNAgent  # noqa: E402
from training_methods.reinforcement_learning.ppo_agent import PPOAgent  # noqa: E402

PARTS = {
    "step": "environment steps (vector env and wrappers)",
    "select_action": "acting (the policy's forward pass, sampling)",
    "store_transition": "storing transitions",
    "update": "learning (updates)",
}


def timed(function: Callable[..., Any], totals: dict[str, float], name: str) -> Callable[..., Any]:
    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - start

    return wrapper


def profile(algorithm: str, steps: int, config_path: Path, seed: int) -> dict[str, Any]:
    """Train once; returns the seconds spent in each part and the run's steps per second."""
    config = load_config(config_path)
    training = config.reinforcement_learning.training
    training.total_timesteps = steps
    training.eval_every_steps = 10 * steps  # no evaluation inside the measured run
    training.save_frequency = 10 * steps
    config.common.seed = seed
    totals: dict[str, float] = defaultdict(float)
    agent_type = PPOAgent if algorithm == "ppo" else DQNAgent
    originals = {name: getattr(agent_type, name) for name in PARTS if name != "step"}
    for name, method in originals.items():
        setattr(agent_type, name, timed(method, totals, name))
    build_envs = training_run.TrainingRun._training_envs

    def timed_envs(self: Any, resources: Any) -> Any:
        envs, spaces = build_envs(self, resources)
        envs.step = timed(envs.step, totals, "step")
        return envs, spaces

    training_run.TrainingRun._training_envs = timed_envs
    try:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            summary = trainer.train(config, algorithm, Path(tmp) / "run", show_progress=False)
            wall = time.perf_counter() - start
    finally:
        training_run.TrainingRun._training_envs = build_envs
        for name, method in originals.items():
            setattr(agent_type, name, method)
    train_seconds = float(summary.get("train_seconds") or wall)
    parts = {name: totals[name] for name in PARTS}
    parts["rest"] = max(train_seconds - sum(parts.values()), 0.0)
    return {
        "algorithm": algorithm,
        "steps": summary["steps"],
        "train_seconds": train_seconds,
        "steps_per_second": summary["steps"] / train_seconds,
        "parts": parts,
    }


def render(result: dict[str, Any]) -> str:
    total = result["train_seconds"]
    lines = [
        f"### {result['algorithm'].upper()}: {result['steps']:,} steps in {total:.1f} s "
        f"({result['steps_per_second']:,.0f} steps/s)",
        "",
        "| part | seconds | share | µs per env step |",
        "|---|---:|---:|---:|",
    ]
    labels = {**PARTS, "rest": "the rest (loop, counting, logging, checkpoints)"}
    for name, seconds in result["parts"].items():
        per_step = seconds / result["steps"] * 1e6
        lines.append(f"| {labels[name]} | {seconds:.2f} | {seconds / total:.0%} | {per_step:.1f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--algorithms", nargs="+", choices=["ppo", "dqn"], default=["ppo", "dqn"])
    parser.add_argument("--ppo-steps", type=int, default=100_000)
    parser.add_argument("--dqn-steps", type=int, default=50_000)
    parser.add_argument("--config", type=Path, default=PROJECT / "configs/rl/CartPole-v1.yaml")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = []
    for algorithm in args.algorithms:
        steps = args.ppo_steps if algorithm == "ppo" else args.dqn_steps
        results.append(profile(algorithm, steps, args.config, args.seed))
        print(render(results[-1]), end="\n\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
