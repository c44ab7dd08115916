"""Reinforcement learning: PPO and DQN agents on gymnasium environments.

`ppo_agent` and `dqn_agent` hold the agents, `buffers` the rollout and replay storage and GAE,
`schedules` the exploration and learning-rate schedules, `envs` the one place environments are
built, `checkpoints` the checkpoint files and `trainer` the training and evaluation loops that
`python main.py train-rl` and `evaluate-rl` run. Importing this package imports nothing heavy;
each module imports torch or gymnasium itself.
"""
