"""Reinforcement learning: PPO and DQN agents on gymnasium environments.

`ppo_agent` and `dqn_agent` hold the agents, `buffers` the rollout and replay storage and GAE,
`schedules` the exploration and learning-rate schedules, `envs` the one place environments are
built, `agents` how a config or checkpoint becomes an agent, `checkpoints` the checkpoint files
and random states, `evaluation` the deterministic evaluation (also `evaluate-rl`),
`training_run` the bookkeeping of one run, `trainer` the training loops that
`python main.py train-rl` runs, and `presets` the settings by environment (`configs/rl/`).
Importing this package imports nothing heavy; each module imports torch or gymnasium itself.
"""
