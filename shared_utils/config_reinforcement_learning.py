"""The config sections of reinforcement learning (`reinforcement_learning`: train-rl and
evaluate-rl): the PPO and DQN agents and the training run, one dataclass each, with their
defaults, help texts and range checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from shared_utils.config_sections import setting
from shared_utils.errors import ConfigurationError

# --------------------------------------------------------------------------------------------------
# reinforcement_learning
# --------------------------------------------------------------------------------------------------


@dataclass
class PPOConfig:
    state_dim: int | None = setting(
        "Observation size; null takes it from the environment, a number must match it.", None
    )
    action_dim: int | None = setting(
        "Number of actions (Discrete) or action dimensions (Box); null takes it from the "
        "environment, a number must match it.",
        None,
    )
    hidden_dim: int = setting("Width of the two hidden layers of actor and critic.", 64)
    activation: Literal["tanh", "relu"] = setting(
        "Activation after each hidden layer of actor and critic.", "tanh"
    )
    orthogonal_init: bool = setting(
        "Orthogonal initialisation of the layers (the PPO paper's); false keeps torch's own.", True
    )
    log_std_init: float = setting(
        "Starting log standard deviation of the Gaussian policy (Box actions).", 0.0
    )
    learning_rate: float = setting("Adam learning rate (annealed linearly with anneal_lr).", 3e-4)
    gamma: float = setting("Discount factor.", 0.99)
    gae_lambda: float = setting("GAE lambda.", 0.95)
    eps_clip: float = setting("PPO clip range of the probability ratio.", 0.2)
    k_epochs: int = setting("Optimisation epochs over each rollout.", 4)
    batch_size: int = setting("Minibatch size.", 64)
    entropy_coef: float = setting("Entropy bonus weight.", 0.0)
    value_coef: float = setting("Value loss weight.", 0.5)
    num_envs: int = setting(
        "Environments collected in parallel through the vector-env interface (--num-envs).", 8
    )
    max_grad_norm: float | None = setting(
        "Clip the global gradient norm to this; null disables clipping.", 0.5
    )
    clip_value_loss: bool = setting(
        "Clip each value update to eps_clip around the rollout's value estimate.", False
    )
    target_kl: float | None = setting(
        "Stop an update early when the approximate KL to the rollout policy exceeds 1.5x this; "
        "null never stops early.",
        None,
    )
    anneal_lr: bool = setting(
        "Anneal the learning rate linearly to 0 over the training budget.", True
    )
    normalize_observations: bool = setting(
        "Normalise observations with running mean and variance (saved with the checkpoint).", False
    )
    normalize_rewards: bool = setting(
        "Scale rewards by the running standard deviation of the discounted return.", False
    )
    shared_features: bool = setting(
        "Actor and critic share their feature layers (false: separate networks).", False
    )


@dataclass
class DQNConfig:
    """Defaults: close to rl-baselines3-zoo's CartPole-v1 DQN (long training phases every 256
    steps, linear exploration over 8,000) with 3-step returns and normalised observations; they
    solve CartPole-v1 within 50,000 steps (scripts/benchmark_rl.py --defaults)."""

    state_dim: int | None = setting(
        "Observation size; null takes it from the environment, a number must match it.", None
    )
    action_dim: int | None = setting(
        "Number of actions; null takes it from the environment, a number must match it.", None
    )
    hidden_dim: int = setting("Width of the two ReLU hidden layers.", 128)
    learning_rate: float = setting("Adam learning rate.", 2.3e-3)
    gamma: float = setting("Discount factor.", 0.99)
    epsilon_start: float = setting("Exploration rate at the start.", 1.0)
    epsilon_end: float = setting("Exploration rate floor.", 0.04)
    epsilon_decay: float = setting(
        "Multiplicative epsilon decay per update (exponential schedule).", 0.995
    )
    epsilon_schedule: Literal["exponential", "linear"] = setting(
        "exponential: epsilon *= epsilon_decay after each update; linear: from epsilon_start to "
        "epsilon_end over exploration_steps environment steps.",
        "linear",
    )
    exploration_steps: int = setting(
        "Environment steps over which the linear schedule lowers epsilon.", 8_000
    )
    buffer_size: int = setting("Replay buffer capacity.", 100_000)
    batch_size: int = setting("Replay minibatch size.", 128)
    target_update: int = setting(
        "Updates (gradient steps) between target-network syncs; the default equals "
        "gradient_steps, one sync after every training phase.",
        128,
    )
    tau: float = setting(
        "Target sync weight: 1 copies the online network (hard update), less moves the target "
        "that fraction of the way (soft update).",
        1.0,
    )
    use_dueling: bool = setting("Dueling value/advantage heads.", True)
    double_dqn: bool = setting(
        "Double DQN targets: the online network picks the next action, the target evaluates it.",
        True,
    )
    learning_starts: int = setting(
        "Environment steps of random play before the first update.", 1000
    )
    train_freq: int = setting(
        "Environment steps (all environments together) between training phases.", 256
    )
    gradient_steps: int = setting(
        "Updates (gradient steps) per training phase. 128 (the zoo's CartPole value): with 64, one "
        "of 5 CartPole seeds reached no evaluation of 475 within 50,000 steps.",
        128,
    )
    n_step: int = setting(
        "Multi-step returns: sum n rewards before bootstrapping (Rainbow); 1 is plain DQN.", 3
    )
    normalize_observations: bool = setting(
        "Normalise observations with running mean and variance (saved with the checkpoint); "
        "the statistics are frozen when learning starts, so the replay buffer stays valid.",
        True,
    )
    max_grad_norm: float | None = setting(
        "Clip the global gradient norm to this; null disables clipping.", 10.0
    )
    num_envs: int = setting(
        "Environments collected in parallel through the vector-env interface (--num-envs).", 1
    )


@dataclass
class RLTrainingConfig:
    env_id: str = setting("Gymnasium environment id (--env).", "CartPole-v1")
    total_timesteps: int | None = setting(
        "Environment steps to train for (--total-timesteps); null trains for max_episodes "
        "episodes instead.",
        None,
    )
    max_episodes: int = setting(
        "Episodes to train for (--episodes) when total_timesteps is null.", 1000
    )
    max_steps_per_episode: int | None = setting(
        "Cut an episode after this many steps (a time-limit truncation) when the environment's "
        "own limit is longer; null keeps the environment's limit.",
        500,
    )
    update_frequency: int = setting(
        "PPO: environment steps, all environments together, collected between updates (the "
        "rollout; rounded down to a multiple of ppo.num_envs). DQN uses dqn.train_freq.",
        2048,
    )
    save_frequency: int = setting(
        "Episodes between periodic checkpoints (at most max_checkpoints are kept).", 100
    )
    max_checkpoints: int = setting("Keep at most this many periodic checkpoints.", 3)
    eval_every_steps: int = setting(
        "Environment steps between deterministic evaluations of eval_episodes episodes; the best "
        "one is saved as best_model.pt. 0 evaluates only at the end.",
        10_000,
    )
    eval_episodes: int = setting("Episodes per evaluation (and evaluate-rl's default).", 10)
    output_dir: str = setting(
        "Folder of the runs when --output-dir is not given: "
        "<output_dir>/<algorithm>-<env>-seed<seed>.",
        "outputs/rl",
    )
    stop_at_reward: float | None = setting(
        "Stop early once an evaluation's mean return reaches this (CartPole-v1 counts as "
        "solved at 475); null trains for the whole budget.",
        None,
    )
    log_every_steps: int = setting(
        "Environment steps between training-metric records (losses and episode returns, "
        "averaged since the last record), taken at the next update.",
        1_000,
    )
    vector_env: Literal["auto", "sync", "async"] = setting(
        "Vector-env backend: sync steps the environments in this process one by one, async in "
        "one subprocess each (only worth it for slow environments), auto as one NumPy vector "
        "environment where gymnasium implements one (CartPole) and num_envs is 8 or more, "
        "else sync.",
        "auto",
    )


@dataclass
class ReinforcementLearningConfig:
    ppo: PPOConfig = field(default_factory=PPOConfig)
    dqn: DQNConfig = field(default_factory=DQNConfig)
    training: RLTrainingConfig = field(default_factory=RLTrainingConfig)

    def check(self, algorithm: str | None = None) -> None:
        """Range checks the types alone cannot express; raises ConfigurationError naming the key.

        `algorithm` ("ppo" or "dqn"): also the checks only that algorithm's run needs.
        """
        ppo, dqn, run = self.ppo, self.dqn, self.training

        def positive_or_null(value: float | None) -> bool:
            return value is None or value > 0

        rules = [
            ("ppo.hidden_dim", ppo.hidden_dim >= 1, "must be at least 1"),
            ("ppo.learning_rate", ppo.learning_rate > 0, "must be more than 0"),
            ("ppo.gamma", 0 <= ppo.gamma <= 1, "must be in [0, 1]"),
            ("ppo.gae_lambda", 0 <= ppo.gae_lambda <= 1, "must be in [0, 1]"),
            ("ppo.eps_clip", ppo.eps_clip > 0, "must be more than 0"),
            ("ppo.k_epochs", ppo.k_epochs >= 1, "must be at least 1"),
            ("ppo.batch_size", ppo.batch_size >= 1, "must be at least 1"),
            ("ppo.num_envs", ppo.num_envs >= 1, "must be at least 1"),
            ("ppo.max_grad_norm", positive_or_null(ppo.max_grad_norm), "must be > 0 or null"),
            ("ppo.target_kl", positive_or_null(ppo.target_kl), "must be > 0 or null"),
            ("dqn.hidden_dim", dqn.hidden_dim >= 1, "must be at least 1"),
            ("dqn.learning_rate", dqn.learning_rate > 0, "must be more than 0"),
            ("dqn.gamma", 0 <= dqn.gamma <= 1, "must be in [0, 1]"),
            ("dqn.epsilon_start", 0 <= dqn.epsilon_start <= 1, "must be in [0, 1]"),
            (
                "dqn.epsilon_end",
                0 <= dqn.epsilon_end <= dqn.epsilon_start,
                "must be in [0, epsilon_start]",
            ),
            ("dqn.epsilon_decay", 0 < dqn.epsilon_decay <= 1, "must be in (0, 1]"),
            ("dqn.exploration_steps", dqn.exploration_steps >= 0, "must be 0 or more"),
            ("dqn.batch_size", dqn.batch_size >= 1, "must be at least 1"),
            ("dqn.buffer_size", dqn.buffer_size >= dqn.batch_size, "must be >= dqn.batch_size"),
            ("dqn.target_update", dqn.target_update >= 1, "must be at least 1"),
            ("dqn.tau", 0 < dqn.tau <= 1, "must be in (0, 1]"),
            ("dqn.learning_starts", dqn.learning_starts >= 0, "must be 0 or more"),
            ("dqn.train_freq", dqn.train_freq >= 1, "must be at least 1"),
            ("dqn.gradient_steps", dqn.gradient_steps >= 1, "must be at least 1"),
            ("dqn.n_step", dqn.n_step >= 1, "must be at least 1"),
            ("dqn.max_grad_norm", positive_or_null(dqn.max_grad_norm), "must be > 0 or null"),
            ("dqn.num_envs", dqn.num_envs >= 1, "must be at least 1"),
            (
                "training.total_timesteps",
                positive_or_null(run.total_timesteps),
                "must be > 0 or null",
            ),
            ("training.max_episodes", run.max_episodes >= 1, "must be at least 1"),
            (
                "training.max_steps_per_episode",
                positive_or_null(run.max_steps_per_episode),
                "must be > 0 or null",
            ),
            (
                "training.update_frequency",
                algorithm == "dqn" or run.update_frequency >= ppo.num_envs,
                "must be at least ppo.num_envs (the rollout holds one step of every environment)",
            ),
            ("training.save_frequency", run.save_frequency >= 1, "must be at least 1"),
            ("training.max_checkpoints", run.max_checkpoints >= 1, "must be at least 1"),
            ("training.eval_every_steps", run.eval_every_steps >= 0, "must be 0 or more"),
            ("training.eval_episodes", run.eval_episodes >= 1, "must be at least 1"),
            ("training.log_every_steps", run.log_every_steps >= 1, "must be at least 1"),
        ]
        for key, ok, rule in rules:
            if not ok:
                section, name = key.split(".")
                value = getattr(getattr(self, section), name)
                raise ConfigurationError(
                    f"config key 'reinforcement_learning.{key}' is {value!r}; it {rule}."
                )
