"""Networks of DeFlow: velocity field, refiner and the critic ensemble.

Defaults follow the public reference (docs/design.md §2): MLPs of 4 hidden layers of
512 units, GELU with the tanh approximation (JAX's default), Xavier-uniform
weights and zero biases. Only the critic uses LayerNorm (after the activation,
eps 1e-6 as in Flax).

The velocity field's first layer is split by input, ``W = [W_obs | W_x | W_t]``,
so an ODE solver can compute ``W_obs s + b`` once per sample and reuse it for
every step (:meth:`VelocityField.project_observation`); that is an exact
rewrite of ``Linear(concat(s, x, t))``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

DEFAULT_HIDDEN = (512, 512, 512, 512)
LAYER_NORM_EPS = 1e-6


#: GELU(tanh) as ``x·σ(2u)``, ``u = √(2/π)(x + 0.044715x³)``: the same function (``½(1 + tanh u) = σ(2u)``).
_GELU_A = 2.0 * math.sqrt(2.0 / math.pi)
_GELU_B = _GELU_A * 0.044715
#: Compiled CPU code uses the ``x·σ(2u)`` form when true; ``benchmarks/ab_compiled_cpu.py --switch gelu`` flips it to time both in one run
#: (dynamo guards on it, so each value gets its own graph).
FAST_COMPILED_GELU = True


def _gelu(x: torch.Tensor) -> torch.Tensor:
    """GELU with the tanh approximation (the reference's activation).

    Eager code calls ``F.gelu(x, approximate="tanh")``, the reference every other path is tested against.
    Compiled code on CPU computes the same function as ``x·σ(2u)``: inductor's C++ backend vectorises
    ``exp`` (the sigmoid) ≈ 5× faster than ``tanh``; measured on a 512×256 tensor, 2-core Zen 4, forward
    138 → 60 µs, forward + backward 415 → 234 µs (docs/results.md, "Fast GELU"). Values differ from eager by
    float32 round-off (≤ 4.3e-7 absolute vs a float64 reference, eager's own: 2.4e-7).
    """
    if torch.compiler.is_compiling() and x.device.type == "cpu" and FAST_COMPILED_GELU:
        return x * torch.sigmoid(x * (_GELU_A + _GELU_B * (x * x)))
    return F.gelu(x, approximate="tanh")


def _xavier_linear(in_features: int, out_features: int) -> nn.Linear:
    layer = nn.Linear(in_features, out_features)
    nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class MLP(nn.Module):
    """Linear → GELU(tanh) [→ LayerNorm] per hidden layer, then a linear head.

    Args:
        in_features: input width.
        out_features: output width.
        hidden_sizes: widths of the hidden layers (default 4×512).
        layer_norm: LayerNorm (eps 1e-6) after each hidden activation.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_sizes: Sequence[int] = DEFAULT_HIDDEN,
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        sizes = [in_features, *hidden_sizes, out_features]
        self.linears = nn.ModuleList(
            _xavier_linear(i, o) for i, o in zip(sizes[:-1], sizes[1:])
        )
        self.norms = (
            nn.ModuleList(nn.LayerNorm(h, eps=LAYER_NORM_EPS) for h in hidden_sizes)
            if layer_norm
            else None
        )

    def from_first_preactivation(self, h: torch.Tensor) -> torch.Tensor:
        """The network's output given the first layer's pre-activation ``h``
        (lets a caller compute the first layer its own way)."""
        for i in range(len(self.linears) - 1):
            if i > 0:
                h = self.linears[i](h)
            h = _gelu(h)
            if self.norms is not None:
                h = self.norms[i](h)
        return self.linears[-1](h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_first_preactivation(self.linears[0](x))


def _check_dims(**dims: int) -> None:
    for name, value in dims.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_hidden(hidden_sizes: Sequence[int]) -> tuple[int, ...]:
    sizes = tuple(hidden_sizes)
    if not sizes or any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in sizes):
        raise ValueError(f"hidden_sizes must be a non-empty list of positive integers, got {list(hidden_sizes)!r}")
    return sizes


def _encoder_dims(observation_dim: int, encoder: nn.Module | None) -> tuple[int, tuple[int, ...]]:
    """``(feature width, raw observation shape)`` of a network's input."""
    if encoder is None:
        return observation_dim, (observation_dim,)
    features = getattr(encoder, "out_features", None)
    if not isinstance(features, int) or features < 1:
        raise ValueError("an encoder must expose out_features (the width of its output features)")
    if observation_dim is not None and observation_dim != features:
        raise ValueError(f"observation_dim={observation_dim} but the encoder outputs {features} features")
    return features, tuple(getattr(encoder, "in_shape", (features,)))


class _ActionHead(nn.Module):
    """An MLP from ``concat(s, a-sized input, extra_inputs)`` to an action-sized output,
    with an optional encoder in front of ``s`` (e.g. a CNN for pixels)."""

    extra_inputs = 0

    def __init__(
        self,
        observation_dim: int | None,
        action_dim: int,
        hidden_sizes: Sequence[int] = DEFAULT_HIDDEN,
        encoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        observation_dim, self.observation_shape = _encoder_dims(observation_dim, encoder)
        _check_dims(observation_dim=observation_dim, action_dim=action_dim)
        self.observation_dim = observation_dim
        self.action_dim = action_dim
        self.encoder = encoder
        self.mlp = MLP(observation_dim + action_dim + self.extra_inputs, action_dim, _check_hidden(hidden_sizes))

    def features(self, obs: torch.Tensor) -> torch.Tensor:
        """The encoder's features of ``obs`` (``obs`` itself without an encoder)."""
        return obs if self.encoder is None else self.encoder(obs)


class VelocityField(_ActionHead):
    """Flow-matching velocity ``v_θ(s, x, t)``: an MLP on ``concat(s, x, t)``.

    ``t`` is a scalar per sample (shape ``[*B, 1]`` or broadcastable).

    Examples:
        >>> v = VelocityField(observation_dim=3, action_dim=2, hidden_sizes=(16, 16))
        >>> v(torch.zeros(4, 3), torch.zeros(4, 2), torch.zeros(4, 1)).shape
        torch.Size([4, 2])
    """

    extra_inputs = 1  # t

    def forward(self, obs: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.expand(*x.shape[:-1], 1)
        return self.mlp(torch.cat([self.features(obs), x, t], dim=-1))

    # -- the split first layer, used by the ODE solvers ---------------------
    def first_layer_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(W_obs, W_x, w_t)`` slices of the first layer's weight."""
        w = self.mlp.linears[0].weight
        ds, da = self.observation_dim, self.action_dim
        return w[:, :ds], w[:, ds : ds + da], w[:, ds + da]

    def project_observation(self, obs: torch.Tensor) -> torch.Tensor:
        """``W_obs s + b``: the part of the first layer that does not change
        along the ODE (the encoder, if any, runs here: once per solve)."""
        w_obs, _, _ = self.first_layer_weights()
        return F.linear(self.features(obs), w_obs, self.mlp.linears[0].bias)

    def from_projection(self, obs_proj: torch.Tensor, x: torch.Tensor, t: float) -> torch.Tensor:
        """``v(s, x, t)`` given ``obs_proj = project_observation(s)``."""
        _, w_x, w_t = self.first_layer_weights()
        return self.mlp.from_first_preactivation(obs_proj + F.linear(x, w_x) + t * w_t)


class Refiner(_ActionHead):
    """Refinement network ``r_φ(s, a) → Δ`` (an MLP on ``concat(s, a)``)."""

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.cat([self.features(obs), action], dim=-1))


class _EnsembleLinear(nn.Module):
    """``num_members`` independent linear layers applied in one ``baddbmm``."""

    def __init__(self, num_members: int, in_features: int, out_features: int) -> None:
        super().__init__()
        weight = torch.empty(num_members, in_features, out_features)
        for w in weight:  # independent Xavier-uniform init per member
            nn.init.xavier_uniform_(w.T)
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.zeros(num_members, 1, out_features))

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # [E, B, in] -> [E, B, out]
        return torch.baddbmm(self.bias, h, self.weight)


class _EnsembleLayerNorm(nn.Module):
    """LayerNorm with a separate affine transform per member."""

    def __init__(self, num_members: int, features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_members, 1, features))
        self.bias = nn.Parameter(torch.zeros(num_members, 1, features))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(h, h.shape[-1:], eps=LAYER_NORM_EPS) * self.weight + self.bias


class CriticEnsemble(nn.Module):
    """An ensemble of ``num_critics`` Q-networks evaluated in one batched call.

    Each member is ``Linear → GELU(tanh) → LayerNorm`` per hidden layer and a
    scalar head, on ``concat(s, a)``. Weights are stacked along a leading
    ensemble dimension (``[E, in, out]``) and every layer is one
    ``torch.baddbmm``: no Python loop over members, no ``vmap`` (so no random
    state issues inside it) and the same graph compiles cleanly.

    ``forward(obs, action)`` takes ``[*B, obs_dim]`` and ``[*B, action_dim]``
    and returns ``[E, *B]`` Q-values (every member sees the same input).

    Examples:
        >>> q = CriticEnsemble(3, 2, hidden_sizes=(16, 16), num_critics=2)
        >>> q(torch.zeros(5, 3), torch.zeros(5, 2)).shape
        torch.Size([2, 5])
    """

    def __init__(
        self,
        observation_dim: int | None,
        action_dim: int,
        hidden_sizes: Sequence[int] = DEFAULT_HIDDEN,
        num_critics: int = 2,
        encoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        observation_dim, self.observation_shape = _encoder_dims(observation_dim, encoder)
        _check_dims(
            observation_dim=observation_dim, action_dim=action_dim, num_critics=num_critics
        )
        self.observation_dim = observation_dim
        self.action_dim = action_dim
        self.num_critics = num_critics
        self.encoder = encoder  # shared by the members (as the reference's pixel critic)
        sizes = [observation_dim + action_dim, *_check_hidden(hidden_sizes), 1]
        self.linears = nn.ModuleList(
            _EnsembleLinear(num_critics, i, o) for i, o in zip(sizes[:-1], sizes[1:])
        )
        self.norms = nn.ModuleList(_EnsembleLayerNorm(num_critics, h) for h in hidden_sizes)

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        if self.encoder is not None:
            obs = self.encoder(obs)
        x = torch.cat([obs, action], dim=-1)
        batch_shape = x.shape[:-1]
        h = x.reshape(1, -1, x.shape[-1]).expand(self.num_critics, -1, -1)
        for linear, norm in zip(self.linears[:-1], self.norms):
            h = norm(_gelu(linear(h)))
        return self.linears[-1](h).reshape(self.num_critics, *batch_shape)
