"""The agents' networks, run in NumPy on the CPU: forward, backward and gradient clipping on the
torch parameters' own memory.

These networks are two hidden layers of 64 to 256 units, and eager torch spends most of an
update in per-operation overhead: building autograd's graph, module calls, and (in this torch
build) a float32 `tanh` that takes eight times as long as NumPy's. The same arithmetic written out
in NumPy makes a PPO or DQN update on CartPole several times faster (`scripts/benchmark_rl.py`,
README "Against Stable-Baselines3").

The torch modules stay the one home of the weights: checkpoints, `evaluate-rl` and the CUDA path
use them as before. The arrays here are views of the same memory (the parameters become views of
one flat buffer, their `.grad` of another), and FlatAdam takes torch Adam's step on those buffers,
with the optimiser's state as its record.
`tests/test_rl_numpy_nets.py` checks the gradients against autograd's.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from training_methods.reinforcement_learning.ppo_agent import ActorCritic


def uses_numpy(device: torch.device) -> bool:
    """Whether an agent on `device` runs its networks here: on the CPU, yes; on CUDA, torch."""
    return device.type == "cpu"


def _array(tensor: torch.Tensor) -> np.ndarray:
    """A NumPy view of a CPU tensor's memory (no copy: writes go to the tensor)."""
    return tensor.detach().numpy()


class FlatParameters:
    """The parameters of a module, and their `.grad`, as views of two flat float32 buffers (the
    values are kept): the global gradient norm, its clipping and the optimiser's step are then one
    NumPy operation each. The gradient buffer is overwritten by each backward pass."""

    def __init__(self, parameters: Iterable[nn.Parameter]) -> None:
        parameters = list(parameters)
        self.parameters = parameters
        total = sum(p.numel() for p in parameters)
        values = torch.empty(total, dtype=torch.float32)
        grads = torch.zeros(total, dtype=torch.float32)
        offset = 0
        for parameter in parameters:
            size = parameter.numel()
            values[offset : offset + size].copy_(parameter.detach().reshape(-1))
            parameter.data = values[offset : offset + size].view_as(parameter)
            parameter.grad = grads[offset : offset + size].view_as(parameter)
            offset += size
        self.values, self.grads = _array(values), _array(grads)

    def clip(self, max_norm: float | None) -> float:
        """Scale the gradients so their global L2 norm is at most `max_norm` (as torch's
        `clip_grad_norm_` does, with its 1e-6); returns the norm before clipping."""
        norm = float(np.sqrt(np.dot(self.grads, self.grads)))
        if max_norm is not None and norm > max_norm:
            self.grads *= max_norm / (norm + 1e-6)
        return norm


class FlatAdam:
    """`torch.optim.Adam`'s step (without amsgrad) on FlatParameters' buffers.

    The optimiser's own state stays the record: its `exp_avg` and `exp_avg_sq` tensors become
    views of two flat buffers and its `step` counts elements of a third, so
    `optimizer.state_dict()`, the checkpoints and their loading are torch's. Call `bind()` again
    after `optimizer.load_state_dict`, which replaces the state's tensors.
    """

    def __init__(self, optimizer: torch.optim.Adam, flat: FlatParameters) -> None:
        (group,) = optimizer.param_groups
        if group["amsgrad"] or list(group["params"]) != flat.parameters:
            raise ValueError("FlatAdam takes an Adam without amsgrad over the flat parameters")
        self.optimizer, self.flat = optimizer, flat
        self.bind()

    def bind(self) -> None:
        """Point the optimiser's state at the flat buffers, keeping what it holds."""
        state = self.optimizer.state
        total = len(self.flat.values)
        exp_avg, exp_avg_sq = torch.zeros(total), torch.zeros(total)
        steps = torch.zeros(len(self.flat.parameters))  # one count per parameter, as torch's
        offset = 0
        for index, parameter in enumerate(self.flat.parameters):
            size = parameter.numel()
            saved = state.get(parameter, {})
            if "exp_avg" in saved:
                exp_avg[offset : offset + size].copy_(saved["exp_avg"].reshape(-1))
                exp_avg_sq[offset : offset + size].copy_(saved["exp_avg_sq"].reshape(-1))
                steps[index] = float(saved["step"])
            state[parameter] = {
                "step": steps[index],
                "exp_avg": exp_avg[offset : offset + size].view_as(parameter),
                "exp_avg_sq": exp_avg_sq[offset : offset + size].view_as(parameter),
            }
            offset += size
        self.steps = _array(steps)
        self.exp_avg, self.exp_avg_sq = _array(exp_avg), _array(exp_avg_sq)
        # scratch buffers: no temporary arrays (a large one costs page faults on every step)
        self._scratch = np.empty_like(self.exp_avg), np.empty_like(self.exp_avg)

    def step(self) -> None:
        """One Adam step from the gradients in the flat buffer, with the settings the optimiser's
        param group holds now (its lr is annealed; `load_state_dict` replaces the group)."""
        (group,) = self.optimizer.param_groups
        beta1, beta2 = group["betas"]
        self.steps += 1
        t = float(self.steps[0])
        grads, scratch, denom = self.flat.grads, *self._scratch
        if group["weight_decay"]:
            grads = np.multiply(self.flat.values, group["weight_decay"], out=scratch)
            grads += self.flat.grads
        self.exp_avg *= beta1
        np.multiply(grads, 1.0 - beta1, out=denom)
        self.exp_avg += denom
        np.multiply(grads, grads, out=denom)
        denom *= 1.0 - beta2
        self.exp_avg_sq *= beta2
        self.exp_avg_sq += denom
        step_size = group["lr"] / (1.0 - beta1**t)
        np.sqrt(self.exp_avg_sq, out=denom)
        denom /= np.sqrt(1.0 - beta2**t)
        denom += group["eps"]
        np.divide(self.exp_avg, denom, out=denom)
        denom *= step_size
        self.flat.values -= denom


class _Linear:
    """Views of an nn.Linear's weight (out, in), bias, and their gradients when it has them."""

    def __init__(self, layer: nn.Linear) -> None:
        self.weight, self.bias = _array(layer.weight), _array(layer.bias)
        self.grad_weight = self.grad_bias = None
        if layer.weight.grad is not None and layer.bias.grad is not None:
            self.grad_weight, self.grad_bias = _array(layer.weight.grad), _array(layer.bias.grad)


@dataclass
class Cache:
    """What a forward pass keeps for its backward pass: each linear layer's input and each
    activation's output."""

    values: list[np.ndarray] = field(default_factory=list)


class Dense:
    """An `nn.Linear`, or an `nn.Sequential` of Linear layers each optionally followed by Tanh or
    ReLU, as NumPy. `backward` writes the layers' gradients (it does not add to them) into the
    `.grad` tensors the parameters had when this was built (FlatParameters' views)."""

    def __init__(self, module: nn.Module) -> None:
        modules = [module] if isinstance(module, nn.Linear) else list(module)
        self.steps: list[_Linear | str] = []
        for part in modules:
            if isinstance(part, nn.Linear):
                self.steps.append(_Linear(part))
            elif isinstance(part, nn.Tanh):
                self.steps.append("tanh")
            elif isinstance(part, nn.ReLU):
                self.steps.append("relu")
            else:
                raise TypeError(f"no NumPy version of {type(part).__name__}")

    def forward(self, x: np.ndarray, cache: Cache | None = None) -> np.ndarray:
        for step in self.steps:
            if isinstance(step, _Linear):
                if cache is not None:
                    cache.values.append(x)
                x = x @ step.weight.T
                x += step.bias
            else:
                x = np.tanh(x) if step == "tanh" else np.maximum(x, 0.0)
                if cache is not None:
                    cache.values.append(x)
        return x

    def backward(self, grad: np.ndarray, cache: Cache, *, input_grad: bool = False) -> np.ndarray:
        """Gradients of the layers from `grad` (the loss's gradient at the output); returns the
        gradient at the input when `input_grad` (else an empty array)."""
        values = cache.values
        for index in range(len(self.steps) - 1, -1, -1):
            step = self.steps[index]
            if isinstance(step, _Linear):
                assert step.grad_weight is not None, "build FlatParameters before Dense"
                np.matmul(grad.T, values[index], out=step.grad_weight)
                np.sum(grad, axis=0, out=step.grad_bias)
                if index == 0 and not input_grad:
                    return np.empty(0, dtype=np.float32)
                grad = grad @ step.weight
            elif step == "tanh":
                out = values[index]
                grad = grad * (1.0 - out * out)
            else:
                grad = grad * (values[index] > 0.0)
        return grad


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


@dataclass
class ActorCriticPass:
    """One forward pass of `NumpyActorCritic`, kept for its backward pass."""

    out: np.ndarray  # (batch, action_dim): logits, or the Gaussian mean
    value: np.ndarray  # (batch,)
    # actor features, actor head, critic features, critic head; None when not kept
    caches: tuple[Cache | None, Cache | None, Cache | None, Cache | None]


class NumpyActorCritic:
    """`ppo_agent.ActorCritic` in NumPy: the same layers (and the same memory)."""

    def __init__(self, policy: ActorCritic) -> None:
        self.flat = FlatParameters(policy.parameters())  # first: Dense keeps views of it
        self.shared = policy.critic_features is policy.actor_features
        self.actor_features = Dense(policy.actor_features)
        self.critic_features = self.actor_features if self.shared else Dense(policy.critic_features)
        self.actor_head = Dense(policy.actor_head)
        self.critic_head = Dense(policy.critic_head)
        self.log_std = None if policy.log_std is None else _array(policy.log_std)
        self._log_std = policy.log_std

    @property
    def log_std_grad(self) -> np.ndarray:
        assert self._log_std is not None and self._log_std.grad is not None
        return _array(self._log_std.grad)

    def forward(self, obs: np.ndarray, *, keep: bool = False) -> ActorCriticPass:
        """Actor output and value of `obs` (batch, state_dim); `keep` the caches for backward."""
        caches = (Cache(), Cache(), Cache(), Cache()) if keep else (None, None, None, None)
        actor_features = self.actor_features.forward(obs, caches[0])
        if self.shared:
            critic_features = actor_features
        else:
            critic_features = self.critic_features.forward(obs, caches[2])
        out = self.actor_head.forward(actor_features, caches[1])
        value = self.critic_head.forward(critic_features, caches[3])[:, 0]
        return ActorCriticPass(out, value, caches)

    def value(self, obs: np.ndarray) -> np.ndarray:
        """V(obs): (batch,)"""
        return self.critic_head.forward(self.critic_features.forward(obs))[:, 0]

    def backward(
        self, forward: ActorCriticPass, grad_out: np.ndarray, grad_value: np.ndarray
    ) -> None:
        """Write the gradients of every layer from the loss's gradients at the actor output
        (batch, action_dim) and at the value (batch,). The log-std's is the caller's to write."""
        actor_cache, actor_head_cache, critic_cache, critic_head_cache = forward.caches
        assert actor_cache is not None and actor_head_cache is not None, "forward(keep=True)"
        assert critic_head_cache is not None
        grad_actor = self.actor_head.backward(grad_out, actor_head_cache, input_grad=True)
        grad_critic = self.critic_head.backward(
            grad_value[:, None], critic_head_cache, input_grad=True
        )
        if self.shared:
            self.actor_features.backward(grad_actor + grad_critic, actor_cache)
        else:
            assert critic_cache is not None
            self.actor_features.backward(grad_actor, actor_cache)
            self.critic_features.backward(grad_critic, critic_cache)


class NumpyQNetwork:
    """`dqn_agent.QNetwork` or `DuelingDQNNetwork` in NumPy: the same layers (and memory)."""

    def __init__(self, network: nn.Module, *, trainable: bool) -> None:
        # first: Dense keeps views of it
        self.flat = FlatParameters(network.parameters()) if trainable else None
        self.features = Dense(network.features)
        self.dueling = hasattr(network, "value_stream")
        if self.dueling:
            self.value_stream = Dense(network.value_stream)
            self.advantage_stream = Dense(network.advantage_stream)
        else:
            self.head = Dense(network.head)

    def forward(
        self, obs: np.ndarray, caches: tuple[Cache, Cache, Cache] | None = None
    ) -> np.ndarray:
        """Q(obs, .): (batch, action_dim). `caches` (three empty ones) keep what backward needs."""
        features_cache, first_cache, second_cache = caches or (None, None, None)
        features = self.features.forward(obs, features_cache)
        if not self.dueling:
            return self.head.forward(features, first_cache)
        value = self.value_stream.forward(features, first_cache)
        advantages = self.advantage_stream.forward(features, second_cache)
        return value + advantages - advantages.mean(axis=-1, keepdims=True)

    def backward(self, grad_q: np.ndarray, caches: tuple[Cache, Cache, Cache]) -> None:
        """Write the gradients of every layer from the loss's gradient at Q (batch, action_dim)."""
        features_cache, first_cache, second_cache = caches
        if not self.dueling:
            grad_features = self.head.backward(grad_q, first_cache, input_grad=True)
        else:
            grad_value = grad_q.sum(axis=-1, keepdims=True)
            grad_advantages = grad_q - grad_q.mean(axis=-1, keepdims=True)
            grad_features = self.value_stream.backward(grad_value, first_cache, input_grad=True)
            grad_features += self.advantage_stream.backward(
                grad_advantages, second_cache, input_grad=True
            )
        self.features.backward(grad_features, features_cache)
