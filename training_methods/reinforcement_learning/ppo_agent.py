"""Proximal Policy Optimization (Schulman et al. 2017) with GAE, for Discrete and Box actions.

Reads top to bottom like CleanRL's `ppo.py`: the network, the distribution maths, the agent that
collects with `select_action`/`store_transition` and learns with `update`. The implementation
details are those of "The 37 Implementation Details of PPO" (Huang et al. 2022): orthogonal init,
Adam eps 1e-5, linear learning-rate annealing, GAE, shuffled minibatches over several epochs,
per-minibatch advantage normalisation, clipped surrogate, optional value clipping, entropy bonus,
global gradient clipping and an optional approximate-KL early stop.

On the CPU the agent runs its network in NumPy (numpy_nets.py): `select_action` samples from the
same distributions and `_optimise_numpy` takes the same gradient steps as `_optimise`, whose torch
version runs on CUDA.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from shared_utils.config import PPOConfig
from shared_utils.errors import TrainingError
from training_methods.reinforcement_learning.buffers import RolloutBuffer, compute_gae, per_env
from training_methods.reinforcement_learning.numpy_nets import (
    ActorCriticPass,
    FlatAdam,
    NumpyActorCritic,
    log_softmax,
    uses_numpy,
)
from training_methods.reinforcement_learning.schedules import linear_annealing

LOG_2PI = math.log(2 * math.pi)


ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}


def layer_init(
    layer: nn.Linear, std: float = math.sqrt(2), bias: float = 0.0, *, orthogonal: bool = True
) -> nn.Linear:
    """Orthogonal weights scaled by `std`, constant bias (Engstrom et al. 2020, detail 2);
    with `orthogonal=False`, torch's own initialisation is kept."""
    if orthogonal:
        nn.init.orthogonal_(layer.weight, std)
        nn.init.constant_(layer.bias, bias)
    return layer


def _mlp(in_dim: int, hidden_dim: int, activation: str, orthogonal: bool) -> nn.Sequential:
    return nn.Sequential(
        layer_init(nn.Linear(in_dim, hidden_dim), orthogonal=orthogonal),
        ACTIVATIONS[activation](),
        layer_init(nn.Linear(hidden_dim, hidden_dim), orthogonal=orthogonal),
        ACTIVATIONS[activation](),
    )


class ActorCritic(nn.Module):
    """Feature layers, an actor head (logits, or a Gaussian mean) and a critic head (V(s)).

    With `shared_features` the actor and critic read one feature trunk; without it (PPOConfig's
    default, as in CleanRL and Stable-Baselines3) each has its own, so the value loss cannot
    disturb the policy's features. A Box action space gets a state-independent log standard
    deviation, starting at `log_std_init`. `activation` ("tanh" or "relu") follows each hidden
    layer; `orthogonal_init=False` keeps torch's initialisation (as the zoo's MuJoCo settings).
    """

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        hidden_dim: int,
        continuous: bool = False,
        *,
        shared_features: bool,
        activation: str,
        orthogonal_init: bool,
        log_std_init: float,
    ) -> None:
        super().__init__()
        self.continuous = continuous
        self.actor_features = _mlp(state_dim, hidden_dim, activation, orthogonal_init)
        self.critic_features = (
            self.actor_features
            if shared_features
            else _mlp(state_dim, hidden_dim, activation, orthogonal_init)
        )
        # Small actor init: near-uniform first policy; unit critic init (detail 2).
        self.actor_head = layer_init(
            nn.Linear(hidden_dim, action_dim), std=0.01, orthogonal=orthogonal_init
        )
        self.critic_head = layer_init(nn.Linear(hidden_dim, 1), std=1.0, orthogonal=orthogonal_init)
        self.log_std = (
            nn.Parameter(torch.full((action_dim,), float(log_std_init))) if continuous else None
        )

    def value(self, obs: torch.Tensor) -> torch.Tensor:
        """(batch, state_dim) -> (batch,)"""
        return self.critic_head(self.critic_features(obs)).squeeze(-1)

    def actor(self, obs: torch.Tensor) -> torch.Tensor:
        """(batch, state_dim) -> (batch, action_dim): logits, or the Gaussian mean."""
        return self.actor_head(self.actor_features(obs))

    def act(
        self, obs: torch.Tensor, deterministic: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample (or take the mode of) the policy: (action, log_prob, value), batch first."""
        out = self.actor(obs)
        if self.continuous:
            assert self.log_std is not None
            action = out if deterministic else out + self.log_std.exp() * torch.randn_like(out)
            log_prob = gaussian_log_prob(out, self.log_std, action)
        else:
            log_probs = torch.log_softmax(out, dim=-1)
            if deterministic:
                action = out.argmax(dim=-1)
            else:
                action = torch.multinomial(log_probs.exp(), 1).squeeze(-1)
            log_prob = log_probs.gather(-1, action.unsqueeze(-1)).squeeze(-1)
        return action, log_prob, self.value(obs)

    def evaluate_actions(
        self, obs: torch.Tensor, actions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(log_prob, entropy, value) of given actions, each (batch,), with gradients."""
        out = self.actor(obs)
        if self.continuous:
            assert self.log_std is not None
            log_prob = gaussian_log_prob(out, self.log_std, actions)
            entropy = (0.5 + 0.5 * LOG_2PI + self.log_std).sum().expand(len(obs))
        else:
            log_probs = torch.log_softmax(out, dim=-1)
            log_prob = log_probs.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
            entropy = -(log_probs.exp() * log_probs).sum(-1)
        return log_prob, entropy, self.value(obs)


def gaussian_log_prob(
    mean: torch.Tensor, log_std: torch.Tensor, action: torch.Tensor
) -> torch.Tensor:
    """log N(action; mean, diag(exp(log_std))^2), summed over action dimensions: (batch,)."""
    z = (action - mean) * torch.exp(-log_std)
    return (-0.5 * z.pow(2) - log_std - 0.5 * LOG_2PI).sum(-1)


def clipped_surrogate_loss(
    ratio: torch.Tensor, advantages: torch.Tensor, clip_coef: float
) -> torch.Tensor:
    """PPO's L^CLIP, negated to a loss: -E[min(r A, clip(r, 1-e, 1+e) A)]."""
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_coef, 1.0 + clip_coef) * advantages
    return -torch.min(unclipped, clipped).mean()


def value_loss(
    values: torch.Tensor,
    returns: torch.Tensor,
    old_values: torch.Tensor,
    clip_coef: float | None,
) -> torch.Tensor:
    """Mean squared error to the GAE returns; with `clip_coef`, the pessimistic clipped version."""
    unclipped = (values - returns).pow(2)
    if clip_coef is None:
        return unclipped.mean()
    clipped_values = old_values + torch.clamp(values - old_values, -clip_coef, clip_coef)
    return torch.max(unclipped, (clipped_values - returns).pow(2)).mean()


def approx_kl(log_ratio: torch.Tensor | np.ndarray) -> float:
    """KL(old || new) estimated from log(new/old) at old's samples: E[(r - 1) - log r] (the
    unbiased, always positive "k3" estimator of Schulman's "Approximating KL Divergence")."""
    if isinstance(log_ratio, np.ndarray):
        return float(np.mean(np.expm1(log_ratio) - log_ratio))
    with torch.no_grad():
        return ((log_ratio.exp() - 1) - log_ratio).mean().item()


def check_finite(loss: torch.Tensor | float, what: str) -> None:
    """Raise TrainingError before a non-finite loss reaches the optimizer. `what`: "PPO loss" or
    "DQN loss"; the message names that algorithm's config keys."""
    value = float(loss.detach() if isinstance(loss, torch.Tensor) else loss)
    if not math.isfinite(value):
        section = f"reinforcement_learning.{what.split()[0].lower()}"
        raise TrainingError(
            f"the {what} became {value} (not finite); lower {section}.learning_rate or "
            f"{section}.max_grad_norm, and check the environment's rewards and observations for "
            "NaN or inf"
        )


class PPOAgent:
    """Collects a rollout with `select_action`/`store_transition`, then learns from it in `update`.

    States, actions and the other per-step values may be single (one environment) or batched with
    a leading (num_envs,) axis (a vector environment); the rollout buffer holds `num_steps` rows.
    """

    def __init__(
        self,
        state_dim: int,
        action_dim: int,
        config: PPOConfig | None = None,
        *,
        continuous: bool = False,
        num_steps: int,
        device: torch.device | str = "cpu",
    ) -> None:
        """`config` holds the hyper-parameters (`PPOConfig`'s defaults when None: the config
        section is their one source); `num_steps` is the rollout length per environment, which
        the trainer derives from `training.update_frequency`."""
        config = config if config is not None else PPOConfig()
        self.state_dim = state_dim
        self.action_dim = action_dim
        self.lr = config.learning_rate
        self.gamma = config.gamma
        self.gae_lambda = config.gae_lambda
        self.eps_clip = config.eps_clip
        self.k_epochs = config.k_epochs
        self.batch_size = config.batch_size
        self.entropy_coef = config.entropy_coef
        self.value_coef = config.value_coef
        self.continuous = continuous
        self.max_grad_norm = config.max_grad_norm
        self.clip_value_loss = config.clip_value_loss
        self.target_kl = config.target_kl
        self.anneal_lr = config.anneal_lr
        self.num_envs = config.num_envs
        self.device = torch.device(device)
        self.policy = ActorCritic(
            state_dim,
            action_dim,
            config.hidden_dim,
            continuous,
            shared_features=config.shared_features,
            activation=config.activation,
            orthogonal_init=config.orthogonal_init,
            log_std_init=config.log_std_init,
        )
        self.policy.to(self.device)
        self.optimizer = adam(self.policy.parameters(), self.lr, eps=1e-5, device=self.device)
        # On the CPU the network runs in NumPy, on the same weights (see numpy_nets.py).
        self.numpy_policy: NumpyActorCritic | None = None
        self.numpy_adam: FlatAdam | None = None
        if uses_numpy(self.device):
            self.numpy_policy = NumpyActorCritic(self.policy)
            self.numpy_adam = FlatAdam(self.optimizer, self.numpy_policy.flat)
        self.buffer = RolloutBuffer(
            num_steps,
            self.num_envs,
            (state_dim,),
            (action_dim,) if continuous else (),
            np.float32 if continuous else np.int64,
        )
        self.updates = 0

    # ---------------------------------------------------------------------------------------------
    # acting
    # ---------------------------------------------------------------------------------------------

    def _batch(self, state: np.ndarray) -> tuple[torch.Tensor, bool]:
        """A (batch, state_dim) float tensor, and whether the input was already batched."""
        array = np.asarray(state, dtype=np.float32)
        batched = array.ndim == 2
        tensor = torch.from_numpy(array if batched else array[None])
        return tensor.to(self.device), batched

    def select_action(
        self, state: np.ndarray, deterministic: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(action, log_prob, value) for one state, or for a batch (num_envs, state_dim).

        Continuous actions are returned unclipped (the log-probability is of this action); clip
        them to the action space's bounds before stepping the environment.
        """
        if self.numpy_policy is not None:
            array = np.asarray(state, dtype=np.float32)
            batched = array.ndim == 2
            forward = self.numpy_policy.forward(array if batched else array[None])
            action, log_prob = self._sample(forward.out, deterministic)
            value = forward.value
        else:
            obs, batched = self._batch(state)
            with torch.no_grad():
                action, log_prob, value = self.policy.act(obs, deterministic)
            action, log_prob, value = (x.cpu().numpy() for x in (action, log_prob, value))
        if batched:
            return action, log_prob, value
        return action[0], log_prob[0], value[0]

    def _sample(self, out: np.ndarray, deterministic: bool) -> tuple[np.ndarray, np.ndarray]:
        """`ActorCritic.act` in NumPy: (action, log_prob) from the actor's output. The noise comes
        from torch's generator, so `common.seed` seeds it on either path."""
        if self.continuous:
            assert self.numpy_policy is not None and self.numpy_policy.log_std is not None
            log_std = self.numpy_policy.log_std
            action = out
            if not deterministic:
                action = out + np.exp(log_std) * torch.randn(out.shape).numpy()
            return action, numpy_gaussian(out, log_std, action)[0]
        shifted = out - out.max(axis=-1, keepdims=True)
        probs = np.exp(shifted)
        total = probs.sum(axis=-1, keepdims=True)
        if deterministic:
            action = out.argmax(axis=-1)
        else:  # inverse transform sampling of the categorical distribution
            uniform = torch.rand(len(out), 1).numpy() * total
            below = (np.cumsum(probs, axis=-1) < uniform).sum(axis=-1)
            action = np.minimum(below, self.action_dim - 1)
        rows = np.arange(len(out))
        return action, shifted[rows, action] - np.log(total[:, 0])

    def value(self, state: np.ndarray) -> np.ndarray:
        if self.numpy_policy is not None:
            array = np.asarray(state, dtype=np.float32)
            value = self.numpy_policy.value(array if array.ndim == 2 else array[None])
            return value if array.ndim == 2 else value[0]
        obs, batched = self._batch(state)
        with torch.no_grad():
            value = self.policy.value(obs).cpu().numpy()
        return value if batched else value[0]

    def store_transition(
        self,
        state: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray | float,
        done: np.ndarray | bool,
        log_prob: np.ndarray | float,
        value: np.ndarray | float,
        *,
        truncated: np.ndarray | bool = False,
        valid: np.ndarray | bool = True,
        final_state: np.ndarray | None = None,
    ) -> None:
        """Store one step (or one vector step).

        `done`: the episode ended at this step. `truncated`: it ended by a time limit, so its
        return is bootstrapped from V(final observation). That observation comes either from
        `final_state` (an environment the caller resets itself: the bootstrap is folded into the
        reward here) or, when `final_state` is None, from the next stored row, which is how
        gymnasium 1.x vector environments deliver it: the step after an episode end returns only
        the reset, and is stored with `valid=False`, a row that is never learned from.
        """
        n = self.num_envs
        done = per_env(done, n, bool)
        truncated = per_env(truncated, n, bool)
        reward = per_env(reward, n, np.float32)
        terminated = done & ~truncated
        if final_state is not None and truncated.any():
            final_values = np.reshape(self.value(final_state), (n,))
            reward = reward + np.where(truncated, self.gamma * final_values, 0.0)
            terminated = done  # bootstrapped already: nothing more to add from the next row
        self.buffer.add(
            obs=np.reshape(state, (n, self.state_dim)),
            action=np.reshape(action, (n, *self.buffer.actions.shape[2:])),
            reward=reward,
            terminated=terminated,
            truncated=truncated,
            log_prob=per_env(log_prob, n),
            value=per_env(value, n),
            valid=per_env(valid, n),
        )

    # ---------------------------------------------------------------------------------------------
    # learning
    # ---------------------------------------------------------------------------------------------

    def update(
        self, next_state: np.ndarray | None = None, progress_remaining: float = 1.0
    ) -> dict[str, float]:
        """Learn from the stored rollout, then empty it. Returns the mean losses and diagnostics.

        `next_state`: the observation after the last stored step, whose value bootstraps the
        returns of unfinished episodes (None: the rollout ended with its episodes).
        `progress_remaining`: share of the training budget left, for learning-rate annealing.
        """
        rollout = self.buffer
        steps = rollout.pos
        if steps == 0:
            raise TrainingError("PPO update called with an empty rollout; store transitions first")
        if next_state is None:
            last_values = np.zeros(self.num_envs, dtype=np.float32)
        else:
            last_values = np.reshape(self.value(next_state), (self.num_envs,))
        advantages, returns = compute_gae(
            rollout.rewards[:steps],
            rollout.values[:steps],
            last_values,
            rollout.terminations[:steps],
            rollout.truncations[:steps],
            self.gamma,
            self.gae_lambda,
        )
        # Flatten (steps, envs) and keep real transitions only: no autoreset steps.
        keep = rollout.valid[:steps].reshape(-1)

        def flat(array: np.ndarray) -> np.ndarray:
            rows = array[:steps].reshape(steps * self.num_envs, *array.shape[2:])[keep]
            return np.ascontiguousarray(rows)

        # obs, actions, old log-probs, old values, advantages, returns: each (n, ...)
        arrays = [
            flat(array)
            for array in (
                rollout.observations,
                rollout.actions,
                rollout.log_probs,
                rollout.values,
                advantages,
                returns,
            )
        ]
        rollout.reset()

        lr = linear_annealing(self.lr, progress_remaining) if self.anneal_lr else self.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.numpy_policy is not None:
            stats = self._optimise_numpy(*arrays)
        else:
            stats = self._optimise(*(torch.from_numpy(a).to(self.device) for a in arrays))
        self.updates += 1
        stats["learning_rate"] = lr
        stats["explained_variance"] = explained_variance(arrays[3], arrays[5])
        return stats

    def _optimise(
        self,
        obs: torch.Tensor,
        actions: torch.Tensor,
        old_log_probs: torch.Tensor,
        old_values: torch.Tensor,
        advantages: torch.Tensor,
        returns: torch.Tensor,
    ) -> dict[str, float]:
        """`k_epochs` passes of shuffled minibatches over the rollout (each tensor (n, ...))."""
        n = len(obs)
        value_clip = self.eps_clip if self.clip_value_loss else None
        sums = {"policy_loss": 0.0, "value_loss": 0.0, "entropy": 0.0}
        minibatches = 0
        stopped_early = False
        for _epoch in range(self.k_epochs):
            order = torch.randperm(n, device=self.device)
            for start in range(0, n, self.batch_size):
                mb = order[start : start + self.batch_size]
                log_prob, entropy, values = self.policy.evaluate_actions(obs[mb], actions[mb])
                log_ratio = log_prob - old_log_probs[mb]
                ratio = log_ratio.exp()
                if self.target_kl is not None and approx_kl(log_ratio) > 1.5 * self.target_kl:
                    stopped_early = True  # the policy moved too far from the rollout's
                    break
                mb_advantages = advantages[mb]
                if len(mb) > 1:
                    mb_advantages = (mb_advantages - mb_advantages.mean()) / (
                        mb_advantages.std() + 1e-8
                    )
                policy_loss = clipped_surrogate_loss(ratio, mb_advantages, self.eps_clip)
                v_loss = value_loss(values, returns[mb], old_values[mb], value_clip)
                entropy_mean = entropy.mean()
                loss = policy_loss - self.entropy_coef * entropy_mean + self.value_coef * v_loss
                check_finite(loss, "PPO loss")

                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.max_grad_norm is not None:
                    nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.optimizer.step()

                minibatches += 1
                sums["policy_loss"] += policy_loss.item()
                sums["value_loss"] += v_loss.item()
                sums["entropy"] += entropy_mean.item()
            if stopped_early:
                break

        stats = {key: value / max(minibatches, 1) for key, value in sums.items()}
        with torch.no_grad():  # how far this update moved the policy, over the whole rollout
            log_ratio = self.policy.evaluate_actions(obs, actions)[0] - old_log_probs
            stats["approx_kl"] = approx_kl(log_ratio)
            stats["clip_fraction"] = (
                ((log_ratio.exp() - 1).abs() > self.eps_clip).float().mean().item()
            )
        stats["minibatches"] = float(minibatches)
        stats["stopped_early"] = float(stopped_early)
        return stats

    def _optimise_numpy(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        old_log_probs: np.ndarray,
        old_values: np.ndarray,
        advantages: np.ndarray,
        returns: np.ndarray,
    ) -> dict[str, float]:
        """`_optimise` in NumPy: the same minibatches, losses and gradients, written out."""
        net = self.numpy_policy
        assert net is not None
        n = len(obs)
        sums = {"policy_loss": 0.0, "value_loss": 0.0, "entropy": 0.0}
        minibatches = 0
        stopped_early = False
        for _epoch in range(self.k_epochs):
            order = torch.randperm(n).numpy()
            for start in range(0, n, self.batch_size):
                mb = order[start : start + self.batch_size]
                forward = net.forward(obs[mb], keep=True)
                losses, log_ratio = self._numpy_loss_and_gradients(
                    forward,
                    actions[mb],
                    old_log_probs[mb],
                    old_values[mb],
                    advantages[mb],
                    returns[mb],
                )
                if losses is None:
                    stopped_early = True  # the policy moved too far from the rollout's
                    break
                net.flat.clip(self.max_grad_norm)
                assert self.numpy_adam is not None
                self.numpy_adam.step()
                minibatches += 1
                for key in sums:
                    sums[key] += losses[key]
            if stopped_early:
                break

        stats = {key: value / max(minibatches, 1) for key, value in sums.items()}
        # how far this update moved the policy, over the whole rollout
        log_ratio = self._numpy_log_prob(net.forward(obs).out, actions) - old_log_probs
        stats["approx_kl"] = approx_kl(log_ratio)
        stats["clip_fraction"] = float(np.mean(np.abs(np.expm1(log_ratio)) > self.eps_clip))
        stats["minibatches"] = float(minibatches)
        stats["stopped_early"] = float(stopped_early)
        return stats

    def _numpy_log_prob(self, out: np.ndarray, actions: np.ndarray) -> np.ndarray:
        if self.continuous:
            assert self.numpy_policy is not None and self.numpy_policy.log_std is not None
            return numpy_gaussian(out, self.numpy_policy.log_std, actions)[0]
        return log_softmax(out)[np.arange(len(actions)), actions]

    def _numpy_loss_and_gradients(
        self,
        forward: ActorCriticPass,
        actions: np.ndarray,
        old_log_probs: np.ndarray,
        old_values: np.ndarray,
        advantages: np.ndarray,
        returns: np.ndarray,
    ) -> tuple[dict[str, float] | None, np.ndarray]:
        """The minibatch loss of `_optimise` and its gradient, written into the parameters'
        `.grad`; returns the loss terms (None when `target_kl` stops the update first, as in
        `_optimise`: no loss, no gradient) and log(new/old) of each action.

        Where torch.min/max meet a tie (the clipped and unclipped terms equal), the gradient
        follows the unclipped term; torch splits it, which differs only where the two agree.
        """
        net = self.numpy_policy
        assert net is not None
        batch = len(actions)
        if self.continuous:
            assert net.log_std is not None
            log_prob, z = numpy_gaussian(forward.out, net.log_std, actions)
            entropy = np.full(batch, np.sum(0.5 + 0.5 * LOG_2PI + net.log_std), np.float32)
        else:
            log_probs = log_softmax(forward.out)
            probs = np.exp(log_probs)
            log_prob = log_probs[np.arange(batch), actions]
            entropy = -(probs * log_probs).sum(axis=-1)
        log_ratio = log_prob - old_log_probs
        if self.target_kl is not None and approx_kl(log_ratio) > 1.5 * self.target_kl:
            return None, log_ratio
        ratio = np.exp(log_ratio)
        if batch > 1:  # per-minibatch normalisation, unbiased std as torch's
            advantages = (advantages - advantages.mean()) / (advantages.std(ddof=1) + 1e-8)

        # clipped surrogate: gradient through the smaller term, none where the clip is active
        unclipped = ratio * advantages
        clipped = np.clip(ratio, 1.0 - self.eps_clip, 1.0 + self.eps_clip) * advantages
        policy_loss = -float(np.minimum(unclipped, clipped).mean())
        inside = np.abs(ratio - 1.0) <= self.eps_clip
        grad_log_prob = -(advantages * ((unclipped <= clipped) | inside)) * ratio / batch

        # value loss, optionally clipped around the rollout's values
        error = forward.value - returns
        squared = error * error
        if self.clip_value_loss:
            delta = forward.value - old_values
            clipped_error = old_values + np.clip(delta, -self.eps_clip, self.eps_clip) - returns
            clipped_squared = clipped_error * clipped_error
            v_loss = float(np.maximum(squared, clipped_squared).mean())
            grad_value = np.where(
                squared >= clipped_squared,
                2.0 * error,
                2.0 * clipped_error * (np.abs(delta) <= self.eps_clip),
            )
        else:
            v_loss = float(squared.mean())
            grad_value = 2.0 * error
        grad_value *= self.value_coef / batch

        entropy_mean = float(entropy.mean())
        check_finite(
            policy_loss - self.entropy_coef * entropy_mean + self.value_coef * v_loss, "PPO loss"
        )
        grad_entropy = -self.entropy_coef / batch
        if self.continuous:
            grad_out = (grad_log_prob[:, None] * z) * np.exp(-net.log_std)
            net.backward(forward, grad_out.astype(np.float32), grad_value.astype(np.float32))
            grad_log_std = (grad_log_prob[:, None] * (z * z - 1.0)).sum(axis=0)
            net.log_std_grad[:] = grad_log_std + grad_entropy * batch
        else:
            # d log p(a) / d logits = onehot(a) - p;  d H / d logits = -p (log p + H)
            grad_out = -probs * grad_log_prob[:, None]
            grad_out[np.arange(batch), actions] += grad_log_prob  # one action per row
            grad_out -= grad_entropy * probs * (log_probs + entropy[:, None])
            net.backward(forward, grad_out.astype(np.float32), grad_value.astype(np.float32))
        losses = {"policy_loss": policy_loss, "value_loss": v_loss, "entropy": entropy_mean}
        return losses, log_ratio

    # ---------------------------------------------------------------------------------------------
    # checkpoints
    # ---------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "updates": self.updates,
        }

    def load_state_dict(self, state: dict, *, with_optimizer: bool = True) -> None:
        self.policy.load_state_dict(state["policy"])
        if with_optimizer and "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
            if self.numpy_adam is not None:
                self.numpy_adam.bind()
        self.updates = int(state.get("updates", 0))


def adam(
    params: Iterable[nn.Parameter], lr: float, eps: float, device: torch.device
) -> torch.optim.Adam:
    """Adam, fused into one kernel where torch has one (4x faster steps on these tiny nets)."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.Adam(params, lr=lr, eps=eps, fused=fused or None)


def numpy_gaussian(
    mean: np.ndarray, log_std: np.ndarray, action: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`gaussian_log_prob` in NumPy: (log-probability (batch,), z = (action - mean) / std)."""
    z = (action - mean) * np.exp(-log_std)
    return (-0.5 * z * z - log_std - 0.5 * LOG_2PI).sum(axis=-1), z


def explained_variance(predicted: np.ndarray, target: np.ndarray) -> float:
    """1 - Var[target - predicted] / Var[target]: 1 is a perfect critic, 0 no better than a mean."""
    variance = float(np.var(target))
    return float("nan") if variance == 0 else 1.0 - float(np.var(target - predicted)) / variance
