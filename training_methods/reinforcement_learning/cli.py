"""Command-line commands of reinforcement learning: `train-rl` and `evaluate-rl`.

train-rl's settings: dataclass defaults < the environment's preset (`configs/rl/<env>.yaml`, or
`<env>.<algorithm>.yaml` where the algorithm has its own; unless --no-preset) < the --config
file, key by key < flags. torch and gymnasium are imported inside the handlers, so
`python main.py --help` stays instant.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shared_utils.arg_types import positive_int, seed
from shared_utils.config import ToolkitConfig, apply_overrides, check_training_sections
from shared_utils.errors import EXIT_OK, ConfigurationError
from training_methods.reinforcement_learning.presets import (
    config_with_preset,
    display_path,
    find_preset,
)


def register_commands(
    subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser
) -> None:
    add_train_rl_command(subparsers, parent)
    add_evaluate_rl_command(subparsers, parent)


# --------------------------------------------------------------------------------------------------
# train-rl
# --------------------------------------------------------------------------------------------------


def add_train_rl_command(
    subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser
) -> None:
    parser = subparsers.add_parser(
        "train-rl",
        parents=[parent],
        help="train a PPO or DQN agent on a gymnasium environment",
        description="Train PPO (Discrete or Box actions) or DQN (Discrete actions) on any "
        "registered gymnasium environment. Writes checkpoints, best_model.pt, final_model.pt, "
        "metrics.jsonl, TensorBoard events, returns.png, summary.json and resolved_config.yaml "
        "to the output folder. Settings: the defaults, then the environment's tuned preset "
        "(configs/rl/<env>.<algorithm>.yaml, else configs/rl/<env>.yaml) when the toolkit ships "
        "one, then --config key by key, then flags.",
        epilog="Example: python main.py train-rl --algorithm dqn --env CartPole-v1 "
        "(uses configs/rl/CartPole-v1.yaml). Exit statuses: 0 trained; 1 training failed "
        "(e.g. a non-finite loss); 2 usage or config error; 130 interrupted (a checkpoint was "
        "saved: continue with --resume).",
    )
    parser.add_argument(
        "--algorithm", required=True, choices=["ppo", "dqn"], help="the agent to train"
    )
    parser.add_argument(
        "--env",
        metavar="ID",
        help="gymnasium environment id (default: reinforcement_learning.training.env_id); its "
        "preset configs/rl/<ID>.<algorithm>.yaml or configs/rl/<ID>.yaml is used when it exists",
    )
    parser.add_argument(
        "--no-preset",
        action="store_true",
        help="ignore the presets in configs/rl/: train on the defaults, --config and flags only",
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        "--total-timesteps",
        metavar="N",
        type=positive_int,
        help="train for N environment steps",
    )
    budget.add_argument(
        "--episodes", metavar="N", type=positive_int, help="train for N episodes instead"
    )
    parser.add_argument("--seed", type=seed, help="random seed (default: common.seed)")
    parser.add_argument(
        "--num-envs", metavar="K", type=positive_int, help="environments run in parallel"
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        help="where to write (default: <reinforcement_learning.training.output_dir>/"
        "<algorithm>-<env>-seed<seed>)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --output-dir from its latest checkpoint",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bar, even on a terminal"
    )
    parser.set_defaults(handler=run_train_rl)


def run_train_rl(args: argparse.Namespace, config: ToolkitConfig) -> int:
    from training_methods.reinforcement_learning.trainer import train

    env_id = args.env or config.reinforcement_learning.training.env_id
    preset = None if args.no_preset else find_preset(env_id, algorithm=args.algorithm)
    if preset is not None:
        user_config = Path(args.config) if args.config else None
        config = config_with_preset(env_id, preset, user_config, config.common.log_level)
    training = "reinforcement_learning.training"
    apply_overrides(
        config,
        {
            f"{training}.env_id": args.env,
            f"{training}.total_timesteps": args.total_timesteps,
            f"{training}.max_episodes": args.episodes,
            "common.seed": args.seed,
            f"reinforcement_learning.{args.algorithm}.num_envs": args.num_envs,
        },
    )
    if args.episodes is not None:  # an episode budget replaces a step budget from the config
        config.reinforcement_learning.training.total_timesteps = None
    env_id = config.reinforcement_learning.training.env_id
    output_dir = args.output_dir or (
        Path(config.reinforcement_learning.training.output_dir)
        / f"{args.algorithm}-{env_id.replace('/', '_')}-seed{config.common.seed}"
    )
    summary = train(
        config,
        args.algorithm,
        output_dir,
        resume=args.resume,
        show_progress=False if args.no_progress else None,
        preset=preset,
    )
    final, best = summary["final_eval"], summary["best_eval"]
    print(
        f"train-rl: {args.algorithm} on {env_id}, {summary['steps']:,} steps "
        f"({summary['episodes']:,} episodes) in {summary['train_seconds']:.1f} s "
        f"({summary['steps_per_second']:,.0f} steps/s); final eval {final['mean_return']:.1f} "
        f"± {final['std_return']:.1f}, best {best['mean_return']:.1f} at step "
        f"{best['step']:,}; written to {output_dir} (best_model.pt, final_model.pt, "
        f"summary.json, returns.png); {preset_note(env_id, preset, args.no_preset)}"
    )
    return EXIT_OK


def preset_note(env_id: str, preset: Path | None, no_preset: bool) -> str:
    if preset is not None:
        return f"preset {display_path(preset)}"
    if no_preset:
        return "no preset (--no-preset)"
    return f"no preset for {env_id}"


# --------------------------------------------------------------------------------------------------
# evaluate-rl
# --------------------------------------------------------------------------------------------------


def add_evaluate_rl_command(
    subparsers: argparse._SubParsersAction, parent: argparse.ArgumentParser
) -> None:
    parser = subparsers.add_parser(
        "evaluate-rl",
        parents=[parent],
        help="play deterministic episodes with a train-rl checkpoint",
        description="Load a checkpoint written by train-rl and play deterministic episodes on "
        "the environment it was trained on; prints the mean return.",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        metavar="FILE",
        help="best_model.pt, final_model.pt or checkpoints/step_*.pt of a train-rl run",
    )
    parser.add_argument(
        "--episodes",
        type=positive_int,
        metavar="N",
        help="episodes to play (default: reinforcement_learning.training.eval_episodes)",
    )
    parser.add_argument("--seed", type=seed, help="seed of the episodes (default: common.seed)")
    parser.set_defaults(handler=run_evaluate_rl)


def run_evaluate_rl(args: argparse.Namespace, config: ToolkitConfig) -> int:
    from training_methods.reinforcement_learning.evaluation import evaluate_checkpoint

    check_training_sections(config)
    episodes = args.episodes or config.reinforcement_learning.training.eval_episodes
    if episodes < 1:
        raise ConfigurationError(
            f"config key 'reinforcement_learning.training.eval_episodes' is {episodes!r}; it "
            "must be at least 1."
        )
    result = evaluate_checkpoint(
        args.checkpoint,
        episodes,
        config.common.seed if args.seed is None else args.seed,
        config.common.device,
    )
    print(
        f"evaluate-rl: {result['algorithm']} on {result['env_id']} "
        f"({result['trained_steps']:,} training steps), {result['episodes']} episodes: "
        f"mean return {result['mean_return']:.1f} ± {result['std_return']:.1f} "
        f"(min {result['min_return']:.1f}, max {result['max_return']:.1f})"
    )
    return EXIT_OK
