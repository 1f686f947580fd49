"""``make_deflow``: the policy and the loss for the common case, in one call."""
from __future__ import annotations

import operator
from typing import Callable, Sequence

import torch
from torch import nn

from deflow_trl.actor import DeFlowActor
from deflow_trl.encoders import make_encoder
from deflow_trl.hardware import resolve_bf16_solves, warn_if_bf16_not_native
from deflow_trl.loss import DeFlowLoss
from deflow_trl.nets import DEFAULT_HIDDEN, CriticEnsemble, Refiner, VelocityField


def make_deflow(
    observation_dim: int | tuple[int, int, int],
    action_dim: int,
    *,
    hidden_sizes: Sequence[int] = DEFAULT_HIDDEN,  # width of every MLP (velocity, refiner, critic); reference 4×512
    num_critics: int = 2,  # Q ensemble size
    num_flow_steps: int = 10,  # K Euler steps of the behaviour flow
    solver: str = "euler",  # "euler" (reference) or "midpoint" (2nd order, 2 evaluations/step)
    discount: float = 0.99,  # γ; 0.995 for long-horizon tasks (puzzle-4x4, humanoidmaze, ...)
    target_divergence: float = 1e-3,  # δ per action dim: 1e-3 cube/scene, 5e-3 puzzle, 1e-2 locomotion
    q_agg: str = "mean",  # aggregation of the target ensemble: "mean" or "min"
    normalize_q_loss: bool = True,  # scale the refiner's Q term by λ = 1/mean_b|mean_i Q_i|
    init_log_alpha: float = 1.0,  # initial log α of the trust-region multiplier
    freeze_flow: bool = False,  # keep the behaviour flow fixed (online fine-tuning)
    bf16_solves: bool | str = False,  # the loss's no-grad ODE solve under bf16 autocast (≈1.4× faster update on AVX512-BF16 CPUs); "auto": only where bf16 is native
    sampling: str = "plain",  # evaluation sampling: "plain", "best_of_n", "iterative"
    num_samples: int = 10,  # N for best-of-N sampling (reference 10)
    refine_iterations: int = 5,  # k for iterative refinement (reference 5)
    backend: str = "eager",  # ODE sampler backend: eager | compile | triton | auto, optional -bf16 suffix
    refine: bool = True,  # False: act with the flow's base samples (flow-BC baseline)
    reduction: str = "mean",  # loss reduction: "mean" | "sum" | "none" (per-sample losses)
    encoder: str | Callable[[], nn.Module] | None = None,  # None (flat obs), "impala_small" (pixels) or a factory; one encoder per network
    action_spec=None,  # the env's Bounded action spec: the policy maps [-1, 1] to its bounds (None: OGBench's [-1, 1])
    device: torch.device | str | None = None,  # build on this device (before the loss is made)
) -> tuple[DeFlowActor, DeFlowLoss]:
    """Builds DeFlow's networks, the policy and the loss with the reference defaults.

    ``observation_dim`` is the observation's width, or its ``(height, width,
    channels)`` shape with ``encoder="impala_small"`` (pixels: uint8 frames,
    channels-last, ``channels = 3 × frame stack``).

    Returns ``(policy, loss)``: ``policy`` is a :class:`DeFlowActor` (reads
    ``observation``, writes ``action``), usable in ``env.rollout`` and
    collectors; ``loss`` is a :class:`DeFlowLoss` whose ``parameters()`` hold
    everything to optimise (flow, refiner, critic, log α). The keyword names are
    the ones of the Hydra configs (``deflow_trl/configs/agent/deflow.yaml``).

    Examples:
        >>> policy, loss = make_deflow(28, 5)
        >>> sum(p.numel() for p in loss.parameters()) > 0
        True
    """
    bf16_solves = resolve_bf16_solves(bf16_solves, device)
    velocity, refiner, critic = build_networks(
        observation_dim, action_dim, hidden_sizes, num_critics, Refiner, encoder=encoder,
        bf16_solves=bf16_solves, device=device,
    )
    policy = DeFlowActor(
        velocity,
        refiner,
        critic,
        num_flow_steps=num_flow_steps,
        solver=solver,
        sampling=sampling,
        num_samples=num_samples,
        refine_iterations=refine_iterations,
        backend=backend,
        refine=refine,
        action_spec=action_spec,
    )
    loss = DeFlowLoss(
        policy,
        critic,
        discount=discount,
        target_divergence=target_divergence,
        q_agg=q_agg,
        normalize_q_loss=normalize_q_loss,
        init_log_alpha=init_log_alpha,
        freeze_flow=freeze_flow,
        bf16_solves=bf16_solves,
        reduction=reduction,
    )
    return policy, loss


def build_networks(observation_dim, action_dim, hidden_sizes, num_critics, head_cls, *, encoder=None,
                   bf16_solves=False, device=None) -> tuple[VelocityField, nn.Module, CriticEnsemble]:
    """The three networks every flow agent has: velocity field, an action head
    (DeFlow's refiner, FQL's one-step policy) and the critic ensemble, each
    with its own encoder when ``encoder`` is given, on ``device``."""
    observation_dim, action_dim, num_critics = _ints(observation_dim, action_dim, num_critics)
    if bf16_solves:
        warn_if_bf16_not_native(device or "cpu", what="bf16_solves")
    new_encoder = _encoder_factory(encoder, observation_dim)
    feature_dim = None if new_encoder is not None else observation_dim

    def enc():
        return None if new_encoder is None else new_encoder()

    velocity = VelocityField(feature_dim, action_dim, hidden_sizes, encoder=enc())
    head = head_cls(feature_dim, action_dim, hidden_sizes, encoder=enc())
    critic = CriticEnsemble(feature_dim, action_dim, hidden_sizes, num_critics, encoder=enc())
    if device is not None:
        velocity, head, critic = (m.to(device) for m in (velocity, head, critic))
    return velocity, head, critic


def _ints(*values) -> tuple[int, ...]:
    """Integral values (Python or NumPy ints) as ``int``; anything else is refused by the networks."""
    out = []
    for v in values:
        try:
            out.append(operator.index(v) if not isinstance(v, bool) else v)
        except TypeError:
            out.append(v)
    return tuple(out)


def _encoder_factory(encoder, observation_dim) -> Callable[[], nn.Module] | None:
    """A function that builds one fresh encoder per network, or None for flat observations."""
    if encoder is None:
        return None
    if callable(encoder) and not isinstance(encoder, nn.Module):
        return encoder
    if isinstance(encoder, str):
        shape = tuple(observation_dim) if isinstance(observation_dim, (tuple, list, torch.Size)) else None
        if shape is None or len(shape) != 3:
            raise ValueError(
                f"encoder={encoder!r} needs the observation shape (height, width, channels) as the first "
                f"argument, got {observation_dim!r}"
            )

        def build():
            enc = make_encoder(encoder, in_channels=shape[-1], image_size=shape[:2])
            enc.in_shape = shape  # the raw observation's shape, checked by the policy and the loss
            return enc

        return build
    raise TypeError(
        f"encoder must be None, an encoder name ('impala_small') or a factory returning a fresh module; got {encoder!r}"
        " (a module instance would be shared by every network)"
    )
