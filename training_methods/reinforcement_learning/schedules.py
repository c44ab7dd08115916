"""Schedules as pure functions of a counter: exploration rate and learning-rate annealing."""

from __future__ import annotations


def exponential_epsilon(start: float, end: float, decay: float, updates: int) -> float:
    """The specification's schedule: epsilon is multiplied by `decay` after every update.

    `start * decay**updates`, never below `end`.
    """
    return max(end, start * decay**updates)


def linear_epsilon(start: float, end: float, duration: int, step: int) -> float:
    """Epsilon falls linearly from `start` to `end` over `duration` environment steps, then stays.

    The schedule of the DQN paper (Mnih et al. 2015) and of Stable-Baselines3.
    """
    if duration <= 0 or step >= duration:
        return end
    return start + (end - start) * step / duration


def linear_annealing(initial: float, progress_remaining: float) -> float:
    """`initial` scaled by the share of the training budget left (1 at the start, 0 at the end).

    PPO anneals its learning rate this way (Schulman et al. 2017, Mujoco and Atari settings).
    """
    return initial * min(1.0, max(0.0, progress_remaining))
