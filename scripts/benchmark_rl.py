#!/usr/bin/env python3
"""Benchmark: our PPO and DQN against Stable-Baselines3 on CartPole-v1, measured in the same run.

SB3 uses the rl-baselines3-zoo CartPole-v1 settings (see ../shared/BASELINES.md); ours uses
configs/rl/CartPole-v1.yaml. Both are evaluated by the same code: every --*-eval-every steps,
10 deterministic episodes on the same seeds, with evaluation time left out of the wall times.
Seeds alternate between the two libraries so that machine noise falls on both alike.

    python scripts/benchmark_rl.py                      # 5 seeds, PPO 100k and DQN 50k steps
    python scripts/benchmark_rl.py --seeds 1 --ppo-steps 30000 --dqn-steps 20000   # quick look
    python scripts/benchmark_rl.py --algorithms ppo --lunar-lander   # also PPO on LunarLander-v3

Prints a markdown table per algorithm (median and range over seeds) and the targets of the issue.
Stable-Baselines3 is a benchmark-only dependency (requirements-dev.txt).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared_utils.config import REPO_ROOT, load_config  # noqa: E402

ENV_ID = "CartPole-v1"
THRESHOLD = 475.0
LUNAR_ID = "LunarLander-v3"
LUNAR_THRESHOLD = 200.0

# rl-baselines3-zoo hyperparams/ppo.yml and dqn.yml, "CartPole-v1".
SB3_PPO = {
    "n_envs": 8,
    "n_steps": 32,
    "batch_size": 256,
    "gae_lambda": 0.8,
    "gamma": 0.98,
    "n_epochs": 20,
    "ent_coef": 0.0,
    "learning_rate": 1e-3,  # linearly decayed
    "clip_range": 0.2,  # linearly decayed
}
SB3_DQN = {
    "learning_rate": 2.3e-3,
    "batch_size": 64,
    "buffer_size": 100_000,
    "learning_starts": 1000,
    "gamma": 0.99,
    "target_update_interval": 10,
    "train_freq": 256,
    "gradient_steps": 128,
    "exploration_fraction": 0.16,
    "exploration_final_eps": 0.04,
    "policy_kwargs": {"net_arch": [256, 256]},
}


# --------------------------------------------------------------------------------------------------
# One run of each library -> {"evaluations": [{step, train_seconds, mean_return}], ...}
# --------------------------------------------------------------------------------------------------


def run_ours(
    algorithm: str, seed: int, steps: int, eval_every: int, episodes: int, config_path: Path
) -> dict[str, Any]:
    from training_methods.reinforcement_learning.trainer import train

    config = load_config(config_path)
    config.common.seed = seed
    config.common.device = "cpu"
    training = config.reinforcement_learning.training
    training.eval_episodes = episodes
    training.total_timesteps = steps
    training.eval_every_steps = eval_every
    with tempfile.TemporaryDirectory(prefix="bench-rl-") as folder:
        summary = train(config, algorithm, Path(folder) / "run", show_progress=False)
        best = _evaluate_file(Path(folder) / "run" / "best_model.pt", episodes, seed)
    return {
        "evaluations": summary["evaluations"],
        "steps": summary["steps"],
        "train_seconds": summary["train_seconds"],
        "best_model_eval": best,
    }


def _evaluate_file(path: Path, episodes: int, seed: int) -> float:
    """The best checkpoint re-evaluated on fresh seeds (what a user of best_model.pt gets)."""
    from training_methods.reinforcement_learning.evaluation import evaluate_checkpoint

    return evaluate_checkpoint(path, episodes, seed + 7, "cpu")["mean_return"]


def run_sb3(algorithm: str, seed: int, steps: int, eval_every: int, episodes: int) -> dict:
    import torch
    from stable_baselines3 import DQN, PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    from training_methods.reinforcement_learning.evaluation import Evaluator

    evaluator = Evaluator(ENV_ID, episodes, seed, None, normalize_observations=False)

    def linear(initial: float) -> Callable[[float], float]:
        return lambda progress_remaining: progress_remaining * initial

    if algorithm == "ppo":
        settings = dict(SB3_PPO)
        env = make_vec_env(ENV_ID, n_envs=settings.pop("n_envs"), seed=seed)
        settings["learning_rate"] = linear(settings["learning_rate"])
        settings["clip_range"] = linear(settings["clip_range"])
        model: Any = PPO("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **settings)
    else:
        env = make_vec_env(ENV_ID, n_envs=1, seed=seed)
        model = DQN("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **SB3_DQN)

    class EvalTimer(BaseCallback):
        """Evaluates every `eval_every` steps; the time it takes is not training time."""

        def __init__(self) -> None:
            super().__init__()
            self.evaluations: list[dict[str, float]] = []
            self.eval_seconds = 0.0
            self.next_eval = eval_every
            self.start = 0.0

        def _on_training_start(self) -> None:
            self.start = time.perf_counter()

        def evaluate(self) -> None:
            started = time.perf_counter()
            returns = evaluator(lambda obs: model.predict(obs, deterministic=True)[0])
            self.evaluations.append(
                {
                    "step": self.num_timesteps,
                    "train_seconds": started - self.start - self.eval_seconds,
                    "mean_return": float(returns.mean()),
                }
            )
            self.eval_seconds += time.perf_counter() - started

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next_eval:
                self.evaluate()
                self.next_eval = (self.num_timesteps // eval_every + 1) * eval_every
            return True

    timer = EvalTimer()
    torch.set_num_threads(1)
    model.learn(total_timesteps=steps, callback=timer)
    train_seconds = time.perf_counter() - timer.start - timer.eval_seconds
    if not timer.evaluations or timer.evaluations[-1]["step"] != model.num_timesteps:
        timer.evaluate()
    evaluator.close()
    env.close()
    return {
        "evaluations": timer.evaluations,
        "steps": model.num_timesteps,
        "train_seconds": train_seconds,
        "best_model_eval": None,
    }


# --------------------------------------------------------------------------------------------------
# Measures and table
# --------------------------------------------------------------------------------------------------


def measures(run: dict[str, Any], threshold: float = THRESHOLD) -> dict[str, Any]:
    evals = run["evaluations"]
    first = next((i for i, e in enumerate(evals) if e["mean_return"] >= threshold), None)
    later = evals[first + 1 :] if first is not None else []
    return {
        "train_seconds": run["train_seconds"],
        "steps_per_second": run["steps"] / run["train_seconds"],
        "solved": first is not None,
        "steps_to_475": evals[first]["step"] if first is not None else None,
        "seconds_to_475": evals[first]["train_seconds"] if first is not None else None,
        "later_evals": len(later),
        "later_at_475": sum(e["mean_return"] >= threshold for e in later),
        "final_eval": evals[-1]["mean_return"],
        "best_model_eval": run["best_model_eval"],
    }


def _median_range(values: list[float], fmt: str) -> str:
    if not values:
        return "n/a"
    text = format(statistics.median(values), fmt)
    if len(values) > 1:
        text += f" ({format(min(values), fmt)}–{format(max(values), fmt)})"
    return text


def _mean_std(values: list[float], fmt: str) -> str:
    if len(values) < 2:
        return format(values[0], fmt) if values else "n/a"
    return f"{format(statistics.mean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def column(results: list[dict[str, Any]], threshold: float = THRESHOLD) -> dict[str, str]:
    at = f"{threshold:g}"
    solved = [r for r in results if r["solved"]]
    later = sum(r["later_evals"] for r in results)
    later_ok = sum(r["later_at_475"] for r in results)
    finals = [r["final_eval"] for r in results]
    bests = [r["best_model_eval"] for r in results if r["best_model_eval"] is not None]
    return {
        "training wall time (s)": _mean_std([r["train_seconds"] for r in results], ".1f"),
        "env steps per second": _mean_std([r["steps_per_second"] for r in results], ",.0f"),
        f"seeds reaching eval ≥ {at}": f"{len(solved)}/{len(results)}",
        f"steps to first eval ≥ {at}, median (range)": _median_range(
            [r["steps_to_475"] for r in solved], ",.0f"
        ),
        f"wall time to first eval ≥ {at} (s), median (range)": _median_range(
            [r["seconds_to_475"] for r in solved], ".1f"
        ),
        f"later evals still ≥ {at}": f"{100 * later_ok / later:.0f}%" if later else "n/a",
        f"final eval ≥ {at}": f"{sum(f >= threshold for f in finals)}/{len(finals)} "
        f"(values {', '.join(f'{f:.0f}' for f in finals)})",
        f"best_model.pt re-evaluated ≥ {at}": (
            f"{sum(b >= threshold for b in bests)}/{len(bests)}" if bests else "n/a"
        ),
    }


def ratio_lines(ours: list[dict[str, Any]], sb3: list[dict[str, Any]]) -> list[str]:
    def median(results: list[dict[str, Any]], key: str) -> float | None:
        values = [r[key] for r in results if r[key] is not None]
        return statistics.median(values) if values else None

    lines = []
    for key, label in (
        ("steps_per_second", "steps/s, ours / SB3"),
        ("steps_to_475", "steps to 475 (median), ours / SB3"),
        ("seconds_to_475", "wall time to 475 (median), ours / SB3"),
    ):
        a, b = median(ours, key), median(sb3, key)
        if a is not None and b:
            lines.append(f"- {label}: {a / b:.2f}x")
    return lines


def table(
    algorithm: str,
    steps: int,
    ours: list[dict],
    sb3: list[dict],
    env_id: str = ENV_ID,
    threshold: float = THRESHOLD,
) -> str:
    ours_col = column(ours, threshold)
    sb3_col = column(sb3, threshold) if sb3 else {}
    lines = [
        f"### {algorithm.upper()} on {env_id}, {steps:,} steps, {len(ours)} seeds",
        "",
        "| measure | ours | SB3 (zoo settings) |",
        "|---|---:|---:|",
    ]
    for key, value in ours_col.items():
        lines.append(f"| {key} | {value} | {sb3_col.get(key, 'not run')} |")
    if sb3:
        lines += ["", *ratio_lines(ours, sb3)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--algorithms",
        nargs="*",
        choices=["ppo", "dqn"],
        default=["ppo", "dqn"],
        help="CartPole-v1 algorithms to measure (none: only --lunar-lander)",
    )
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--ppo-steps", type=int, default=100_000)
    parser.add_argument("--dqn-steps", type=int, default=50_000)
    parser.add_argument("--ppo-eval-every", type=int, default=2048)
    parser.add_argument("--dqn-eval-every", type=int, default=1000)
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument(
        "--config",
        type=Path,
        default=REPO_ROOT / "configs" / "rl" / f"{ENV_ID}.yaml",
        help="our settings (default: configs/rl/CartPole-v1.yaml)",
    )
    parser.add_argument("--no-sb3", action="store_true", help="measure ours only")
    parser.add_argument(
        "--lunar-lander",
        action="store_true",
        help="also PPO on LunarLander-v3 with configs/rl/LunarLander-v3.yaml (ours only, "
        "solved at a mean return of 200; needs gymnasium[box2d])",
    )
    parser.add_argument("--lunar-steps", type=int, default=1_000_000)
    parser.add_argument(
        "--lunar-config",
        type=Path,
        default=REPO_ROOT / "configs" / "rl" / f"{LUNAR_ID}.yaml",
        help="our LunarLander settings (default: configs/rl/LunarLander-v3.yaml)",
    )
    parser.add_argument("--lunar-seeds", type=int, default=1, help="seeds 0..N-1 (default 1)")
    parser.add_argument("--json", type=Path, help="also write every run's measures here")
    args = parser.parse_args(argv)

    import logging

    logging.disable(logging.INFO)  # no per-run log lines between the tables
    raw: dict[str, Any] = {}
    tables = []
    for algorithm in args.algorithms:
        steps = args.ppo_steps if algorithm == "ppo" else args.dqn_steps
        every = args.ppo_eval_every if algorithm == "ppo" else args.dqn_eval_every
        ours: list[dict] = []
        sb3: list[dict] = []
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            # Alternate which library runs first so slow spells of a shared machine fall on both.
            order = ["ours", "sb3"] if seed % 2 == 0 else ["sb3", "ours"]
            for who in order:
                if who == "sb3" and args.no_sb3:
                    continue
                if who == "ours":
                    run = run_ours(algorithm, seed, steps, every, args.eval_episodes, args.config)
                    ours.append(measures(run))
                else:
                    run = run_sb3(algorithm, seed, steps, every, args.eval_episodes)
                    sb3.append(measures(run))
                result = (ours if who == "ours" else sb3)[-1]
                print(
                    f"{algorithm} {who:4s} seed {seed}: {result['train_seconds']:.1f} s, "
                    f"{result['steps_per_second']:,.0f} steps/s, 475 at "
                    f"{result['steps_to_475']} steps / {result['seconds_to_475']} s, "
                    f"final {result['final_eval']:.0f}",
                    file=sys.stderr,
                    flush=True,
                )
        raw[algorithm] = {"ours": ours, "sb3": sb3}
        tables.append(table(algorithm, steps, ours, sb3))
    if args.lunar_lander:
        lunar = args.lunar_config
        ours = []
        for seed in range(args.lunar_seeds):
            run = run_ours("ppo", seed, args.lunar_steps, 32_768, args.eval_episodes, lunar)
            ours.append(measures(run, LUNAR_THRESHOLD))
            result = ours[-1]
            print(
                f"lunar ppo seed {seed}: {result['train_seconds']:.1f} s, "
                f"{result['steps_per_second']:,.0f} steps/s, 200 at {result['steps_to_475']} "
                f"steps, final {result['final_eval']:.0f}, best_model.pt "
                f"{result['best_model_eval']:.0f}",
                file=sys.stderr,
                flush=True,
            )
        raw["ppo-lunar-lander"] = {"ours": ours}
        tables.append(table("ppo", args.lunar_steps, ours, [], LUNAR_ID, LUNAR_THRESHOLD))
    print("\n\n".join(tables))
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
