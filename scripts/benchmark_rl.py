#!/usr/bin/env python3
"""Benchmark train-rl: the shipped defaults, the environment presets, and Stable-Baselines3.

Three measurements, each a markdown table (median and range over seeds):

    python scripts/benchmark_rl.py                 # ours vs SB3 on CartPole-v1, same run, 5 seeds
    python scripts/benchmark_rl.py --defaults      # the defaults, no preset: PPO 100k, DQN 50k
    python scripts/benchmark_rl.py --presets Acrobot-v1 MountainCar-v0 --seeds 3   # the presets
    python scripts/benchmark_rl.py --seeds 1 --ppo-steps 30000 --dqn-steps 20000   # quick look
    python scripts/benchmark_rl.py --same-settings --config configs/rl/compare/CartPole-v1.zoo.yaml

Against SB3: SB3 uses the rl-baselines3-zoo CartPole-v1 settings; ours uses
configs/rl/CartPole-v1.yaml (or --config). With --same-settings SB3 runs --config's settings,
translated into its keyword arguments (a setting SB3 has no equivalent for is refused). Both
are evaluated by the same code: every --*-eval-every steps,
10 deterministic episodes on the same seeds, with evaluation time left out of the wall times.
Seeds alternate between the two libraries so that machine noise falls on both alike.

--defaults and --presets measure ours only, with the evaluation cadence of the settings
themselves (what a user's best_model.pt is chosen by), and re-evaluate best_model.pt on 20
episodes of other seeds. The threshold is the environment's registered reward_threshold.
Stable-Baselines3 is a benchmark-only dependency (requirements-dev.txt).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared_utils.config import (  # noqa: E402
    REPO_ROOT,
    ToolkitConfig,
    config_from_dict,
    load_config,
    read_yaml,
)

ENV_ID = "CartPole-v1"
THRESHOLD = 475.0
BEST_EPISODES = 20  # best_model.pt re-evaluated on this many episodes of other seeds

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


def run_ours(algorithm: str, seed: int, config: ToolkitConfig, best_episodes: int) -> dict:
    """One train-rl run of `config` (its env, budget and evaluation cadence) on `seed`."""
    from training_methods.reinforcement_learning.trainer import train

    config = copy.deepcopy(config)
    config.common.seed = seed
    config.common.device = "cpu"
    config.logging.use_tensorboard = False
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-rl-") as folder:
        summary = train(config, algorithm, Path(folder) / "run", show_progress=False)
        wall_seconds = time.perf_counter() - started
        best = _evaluate_file(Path(folder) / "run" / "best_model.pt", best_episodes, seed)
    return {
        "evaluations": summary["evaluations"],
        "steps": summary["steps"],
        "train_seconds": summary["train_seconds"],
        "wall_seconds": wall_seconds,
        "best_model_eval": best,
    }


def _evaluate_file(path: Path, episodes: int, seed: int) -> float:
    """The best checkpoint re-evaluated on fresh seeds (what a user of best_model.pt gets)."""
    from training_methods.reinforcement_learning.evaluation import evaluate_checkpoint

    return evaluate_checkpoint(path, episodes, seed + 7, "cpu")["mean_return"]


def cartpole_config(config_path: Path, steps: int, eval_every: int, episodes: int) -> ToolkitConfig:
    """Our settings for the comparison with SB3: the file's, with the comparison's budget and
    evaluation cadence."""
    config = load_config(config_path)
    training = config.reinforcement_learning.training
    training.eval_episodes = episodes
    training.total_timesteps = steps
    training.eval_every_steps = eval_every
    return config


def sb3_settings(config: ToolkitConfig, algorithm: str) -> dict[str, Any]:
    """`config`'s PPO or DQN settings as Stable-Baselines3's keyword arguments (plus `n_envs`),
    for a same-settings run; SystemExit naming the first setting SB3 cannot express."""
    from training_methods.reinforcement_learning.agents import rollout_steps
    from training_methods.reinforcement_learning.ppo_agent import ACTIVATIONS

    rl = config.reinforcement_learning
    training = rl.training
    if training.env_id != ENV_ID or training.max_steps_per_episode not in (None, 500):
        raise SystemExit(
            f"--same-settings: SB3 trains {ENV_ID} with its 500-step episodes; set env_id to "
            f"{ENV_ID} and max_steps_per_episode to 500 or null in the config"
        )

    def refuse(key: str) -> None:
        raise SystemExit(
            f"--same-settings: {algorithm}.{key} has no Stable-Baselines3 equivalent here; "
            f"set it to its plain value in {ENV_ID}'s config or compare without --same-settings"
        )

    if algorithm == "ppo":
        ppo = rl.ppo
        for key in ("normalize_observations", "normalize_rewards", "shared_features"):
            if getattr(ppo, key):
                refuse(key)
        if ppo.clip_value_loss:
            refuse("clip_value_loss")
        return {
            "n_envs": ppo.num_envs,
            "n_steps": rollout_steps(rl),
            "batch_size": ppo.batch_size,
            "n_epochs": ppo.k_epochs,
            "gamma": ppo.gamma,
            "gae_lambda": ppo.gae_lambda,
            "clip_range": ppo.eps_clip,
            "ent_coef": ppo.entropy_coef,
            "vf_coef": ppo.value_coef,
            "max_grad_norm": ppo.max_grad_norm or float("inf"),
            "target_kl": ppo.target_kl,
            # linearly decayed, as ours with anneal_lr
            "learning_rate": _linear(ppo.learning_rate) if ppo.anneal_lr else ppo.learning_rate,
            "policy_kwargs": {
                "net_arch": [ppo.hidden_dim, ppo.hidden_dim],
                "activation_fn": ACTIVATIONS[ppo.activation],
                "ortho_init": ppo.orthogonal_init,
                "log_std_init": ppo.log_std_init,
            },
        }
    dqn = rl.dqn
    for key in ("double_dqn", "use_dueling", "normalize_observations"):
        if getattr(dqn, key):
            refuse(key)
    if dqn.epsilon_schedule != "linear":
        refuse("epsilon_schedule")
    if dqn.num_envs != 1:
        refuse("num_envs")
    # Ours syncs the target after every `target_update` gradient steps, SB3 every so many
    # environment steps; the two agree when ours syncs once per training phase (SB3: every
    # train_freq steps, the last of which comes just before the phase).
    if dqn.target_update != dqn.gradient_steps:
        refuse("target_update (SB3 can express one sync per phase: target_update = gradient_steps)")
    assert training.total_timesteps is not None
    return {
        "n_envs": 1,
        "learning_rate": dqn.learning_rate,
        "batch_size": dqn.batch_size,
        "buffer_size": dqn.buffer_size,
        "learning_starts": dqn.learning_starts,
        "gamma": dqn.gamma,
        "n_steps": dqn.n_step,
        "train_freq": dqn.train_freq,
        "gradient_steps": dqn.gradient_steps,
        "target_update_interval": dqn.train_freq,
        "tau": dqn.tau,
        "exploration_fraction": dqn.exploration_steps / training.total_timesteps,
        "exploration_initial_eps": dqn.epsilon_start,
        "exploration_final_eps": dqn.epsilon_end,
        "max_grad_norm": dqn.max_grad_norm or float("inf"),
        "policy_kwargs": {"net_arch": [dqn.hidden_dim, dqn.hidden_dim]},
    }


def _linear(initial: float) -> Callable[[float], float]:
    """SB3's form of a linearly decayed setting: a function of the share of training left."""
    return lambda progress_remaining: progress_remaining * initial


def zoo_settings(algorithm: str) -> dict[str, Any]:
    """rl-baselines3-zoo's CartPole-v1 settings, as SB3 runs them (linearly decayed PPO
    learning rate and clip range)."""
    if algorithm == "dqn":
        return {"n_envs": 1, **SB3_DQN}
    settings = dict(SB3_PPO)
    settings["learning_rate"] = _linear(settings["learning_rate"])
    settings["clip_range"] = _linear(settings["clip_range"])
    return settings


def run_sb3(
    algorithm: str, seed: int, steps: int, eval_every: int, episodes: int, settings: dict[str, Any]
) -> dict:
    """One SB3 run of `settings` (`sb3_settings` or `zoo_settings`) on CartPole-v1."""
    from stable_baselines3 import DQN, PPO
    from stable_baselines3.common.env_util import make_vec_env

    from training_methods.reinforcement_learning.evaluation import Evaluator

    evaluator = Evaluator(ENV_ID, episodes, seed, None, normalize_observations=False)
    settings = dict(settings)
    env = make_vec_env(ENV_ID, n_envs=settings.pop("n_envs"), seed=seed)
    algorithm_class: Any = PPO if algorithm == "ppo" else DQN
    model = algorithm_class("MlpPolicy", env, seed=seed, device="cpu", verbose=0, **settings)
    timer = _eval_timer(model, evaluator, eval_every)
    import torch

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


def _eval_timer(model: Any, evaluator: Any, eval_every: int) -> Any:
    """An SB3 callback that evaluates `model` every `eval_every` steps with our Evaluator and
    keeps the evaluation time out of the training time."""
    from stable_baselines3.common.callbacks import BaseCallback

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

    return EvalTimer()


# --------------------------------------------------------------------------------------------------
# Measures and table
# --------------------------------------------------------------------------------------------------


def measures(run: dict[str, Any], threshold: float = THRESHOLD) -> dict[str, Any]:
    evals = run["evaluations"]
    first = next((i for i, e in enumerate(evals) if e["mean_return"] >= threshold), None)
    later = evals[first + 1 :] if first is not None else []
    return {
        "train_seconds": run["train_seconds"],
        "wall_seconds": run.get("wall_seconds"),
        "steps_per_second": run["steps"] / run["train_seconds"],
        "solved": first is not None,
        "steps_to_475": evals[first]["step"] if first is not None else None,
        "seconds_to_475": evals[first]["train_seconds"] if first is not None else None,
        "later_evals": len(later),
        "later_at_475": sum(e["mean_return"] >= threshold for e in later),
        "final_eval": evals[-1]["mean_return"],
        "mean_eval": statistics.fmean(e["mean_return"] for e in evals),
        "best_model_eval": run["best_model_eval"],
    }


def _median_range(values: list[float], fmt: str) -> str:
    if not values:
        return "n/a"
    text = format(statistics.median(values), fmt)
    if len(values) > 1:
        text += f" ({format(min(values), fmt)}–{format(max(values), fmt)})"
    return text


def column(
    results: list[dict[str, Any]], threshold: float = THRESHOLD, best_episodes: int = 10
) -> dict[str, str]:
    at = f"{threshold:g}"
    solved = [r for r in results if r["solved"]]
    later = sum(r["later_evals"] for r in results)
    later_ok = sum(r["later_at_475"] for r in results)
    finals = [r["final_eval"] for r in results]
    bests = [r["best_model_eval"] for r in results if r["best_model_eval"] is not None]
    walls = [r["wall_seconds"] for r in results if r.get("wall_seconds") is not None]
    rows = {
        "training wall time (s), median (range)": _median_range(
            [r["train_seconds"] for r in results], ".1f"
        ),
        "env steps per second, median (range)": _median_range(
            [r["steps_per_second"] for r in results], ",.0f"
        ),
        f"seeds reaching eval ≥ {at}": f"{len(solved)}/{len(results)}",
        f"steps to first eval ≥ {at}, median (range)": _median_range(
            [r["steps_to_475"] for r in solved], ",.0f"
        ),
        f"wall time to first eval ≥ {at} (s), median (range)": _median_range(
            [r["seconds_to_475"] for r in solved], ".1f"
        ),
        f"later evals still ≥ {at}": f"{100 * later_ok / later:.0f}%" if later else "n/a",
        "mean of all evaluations, median (range)": _median_range(
            [r["mean_eval"] for r in results if "mean_eval" in r], ".0f"
        ),
        f"final eval ≥ {at}": f"{sum(f >= threshold for f in finals)}/{len(finals)} "
        f"(values {', '.join(f'{f:.0f}' for f in finals)})",
        f"`best_model.pt` re-evaluated ({best_episodes} episodes) ≥ {at}": (
            f"{sum(b >= threshold for b in bests)}/{len(bests)} "
            f"(values {', '.join(f'{b:.0f}' for b in bests)})"
            if bests
            else "—"
        ),
    }
    if walls:
        rows["wall time with evaluations (s), median (range)"] = _median_range(walls, ".1f")
    return rows


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
    title: str,
    ours: list[dict],
    sb3: list[dict],
    threshold: float = THRESHOLD,
    best_episodes: int = 10,
    sb3_label: str = "SB3",
) -> str:
    ours_col = column(ours, threshold, best_episodes)
    lines = [f"### {title}, {len(ours)} seeds", ""]
    if sb3:
        sb3_col = column(sb3, threshold, best_episodes)
        lines += [f"| measure | ours | {sb3_label} |", "|---|---:|---:|"]
        lines += [
            f"| {key} | {value} | {sb3_col.get(key, '—')} |" for key, value in ours_col.items()
        ]
        lines += ["", *ratio_lines(ours, sb3)]
    else:
        lines += ["| measure | ours |", "|---|---:|"]
        lines += [f"| {key} | {value} |" for key, value in ours_col.items()]
    return "\n".join(lines)


def _report(label: str, seed: int, result: dict[str, Any], threshold: float) -> None:
    best = result["best_model_eval"]
    print(
        f"{label} seed {seed}: {result['train_seconds']:.1f} s, "
        f"{result['steps_per_second']:,.0f} steps/s, {threshold:g} at "
        f"{result['steps_to_475']} steps / {result['seconds_to_475']} s, "
        f"final {result['final_eval']:.0f}" + (f", best_model.pt {best:.0f}" if best else ""),
        file=sys.stderr,
        flush=True,
    )


# --------------------------------------------------------------------------------------------------
# The three measurements
# --------------------------------------------------------------------------------------------------


def against_sb3(args: argparse.Namespace, raw: dict[str, Any]) -> list[str]:
    tables = []
    for algorithm in args.algorithms:
        steps = args.ppo_steps if algorithm == "ppo" else args.dqn_steps
        every = args.ppo_eval_every if algorithm == "ppo" else args.dqn_eval_every
        config = cartpole_config(args.config, steps, every, args.eval_episodes)
        settings = (
            sb3_settings(config, algorithm) if args.same_settings else zoo_settings(algorithm)
        )
        ours: list[dict] = []
        sb3: list[dict] = []
        for seed in args.seed_list:
            # Alternate which library runs first so slow spells of a shared machine fall on both.
            order = ["ours", "sb3"] if seed % 2 == 0 else ["sb3", "ours"]
            for who in order:
                if who == "sb3" and args.no_sb3:
                    continue
                if who == "ours":
                    ours.append(measures(run_ours(algorithm, seed, config, args.eval_episodes)))
                else:
                    run = run_sb3(algorithm, seed, steps, every, args.eval_episodes, settings)
                    sb3.append(measures(run))
                _report(f"{algorithm} {who:4s}", seed, (ours if who == "ours" else sb3)[-1], 475)
        raw[algorithm] = {"ours": ours, "sb3": sb3}
        title = f"{algorithm.upper()} on {ENV_ID}, {steps:,} steps"
        label = "SB3 (same settings)" if args.same_settings else "SB3 (zoo settings)"
        tables.append(table(title, ours, sb3, best_episodes=args.eval_episodes, sb3_label=label))
    return tables


def shipped_defaults(args: argparse.Namespace, raw: dict[str, Any]) -> list[str]:
    """The dataclass defaults alone (train-rl --no-preset) on CartPole-v1."""
    tables = []
    for algorithm in args.algorithms:
        steps = args.ppo_steps if algorithm == "ppo" else args.dqn_steps
        config = ToolkitConfig()
        config.reinforcement_learning.training.env_id = ENV_ID
        config.reinforcement_learning.training.total_timesteps = steps
        results = []
        for seed in args.seed_list:
            results.append(measures(run_ours(algorithm, seed, config, BEST_EPISODES)))
            _report(f"defaults {algorithm}", seed, results[-1], THRESHOLD)
        raw[f"defaults-{algorithm}"] = results
        every = config.reinforcement_learning.training.eval_every_steps
        title = (
            f"{algorithm.upper()} on {ENV_ID} with the defaults (`--no-preset`), {steps:,} steps, "
            f"evaluated every {every:,}"
        )
        tables.append(table(title, results, [], THRESHOLD, BEST_EPISODES))
    return tables


def presets(args: argparse.Namespace, raw: dict[str, Any]) -> list[str]:
    """Each configs/rl/<env>.yaml with its own budget and cadence, for each algorithm it has."""
    import gymnasium as gym

    from training_methods.reinforcement_learning.presets import find_preset

    tables = []
    for env_id in args.presets:
        if find_preset(env_id) is None and not any(
            find_preset(env_id, algorithm=algorithm) for algorithm in args.algorithms
        ):
            raise SystemExit(f"no preset for {env_id} in configs/rl/")
        threshold = gym.spec(env_id).reward_threshold
        if threshold is None:
            raise SystemExit(f"{env_id} has no reward_threshold to measure against")
        for algorithm in args.algorithms:
            path = find_preset(env_id, algorithm=algorithm)
            if path is None:
                continue
            data = read_yaml(path)
            if algorithm not in data["reinforcement_learning"]:
                continue
            config = config_from_dict(data)
            training = config.reinforcement_learning.training
            training.total_timesteps = args.preset_steps or training.total_timesteps
            results = []
            for seed in args.seed_list:
                results.append(
                    measures(run_ours(algorithm, seed, config, BEST_EPISODES), threshold)
                )
                _report(f"{env_id} {algorithm}", seed, results[-1], threshold)
            raw[f"{env_id}-{algorithm}"] = results
            title = (
                f"{algorithm.upper()} on {env_id} (`configs/rl/{path.name}`), "
                f"{training.total_timesteps:,} steps, evaluated every {training.eval_every_steps:,}"
            )
            tables.append(table(title, results, [], threshold, BEST_EPISODES))
    return tables


def render(raw: dict[str, Any]) -> str:
    """The tables of an earlier run's --json file (the budgets are not in it)."""
    import gymnasium as gym

    tables = []
    for key, runs in raw.items():
        if isinstance(runs, dict):  # against SB3
            tables.append(table(f"{key.upper()} on {ENV_ID}", runs["ours"], runs["sb3"]))
            continue
        if key.startswith("defaults-"):
            env_id, algorithm, note = ENV_ID, key.removeprefix("defaults-"), " with the defaults"
        else:
            (env_id, algorithm), note = key.rsplit("-", 1), ""
        threshold = gym.spec(env_id).reward_threshold
        title = f"{algorithm.upper()} on {env_id}{note}"
        tables.append(table(title, runs, [], threshold, BEST_EPISODES))
    return "\n\n".join(tables)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument(
        "--algorithms",
        nargs="*",
        choices=["ppo", "dqn"],
        default=["ppo", "dqn"],
        help="algorithms to measure (default: both)",
    )
    what = parser.add_mutually_exclusive_group()
    what.add_argument(
        "--defaults",
        action="store_true",
        help="measure the shipped defaults (no preset) on CartPole-v1, ours only",
    )
    what.add_argument(
        "--presets",
        nargs="+",
        metavar="ENV",
        help="measure configs/rl/<ENV>.yaml with its own budget, for each algorithm it has",
    )
    parser.add_argument("--seeds", type=int, default=5, help="seeds first..first+N-1 (default 5)")
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
        help="our settings against SB3 (default: configs/rl/CartPole-v1.yaml)",
    )
    parser.add_argument(
        "--same-settings",
        action="store_true",
        help="SB3 runs --config's settings too (default: the zoo's CartPole settings)",
    )
    parser.add_argument("--no-sb3", action="store_true", help="measure ours only")
    parser.add_argument(
        "--preset-steps", type=int, help="--presets: train this many steps, not the preset's"
    )
    parser.add_argument("--json", type=Path, help="also write every run's measures here")
    parser.add_argument(
        "--render", type=Path, metavar="JSON", help="print the tables of an earlier run's --json"
    )
    args = parser.parse_args(argv)
    if args.render:
        print(render(json.loads(args.render.read_text(encoding="utf-8"))))
        return 0
    args.seed_list = range(args.first_seed, args.first_seed + args.seeds)

    import logging

    logging.disable(logging.INFO)  # no per-run log lines between the tables
    raw: dict[str, Any] = {}
    if args.defaults:
        tables = shipped_defaults(args, raw)
    elif args.presets:
        tables = presets(args, raw)
    else:
        tables = against_sb3(args, raw)
    print("\n\n".join(tables))
    if args.json:
        args.json.write_text(json.dumps(raw, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
