"""Flow Q-learning (FQL; Park, Li & Levine 2025), DeFlow's main baseline, on DeFlow's parts.

FQL keeps DeFlow's critic and behaviour flow and replaces the refiner with a
*one-step policy* ``μ(s, z)`` (noise in, action out) trained to stay close to
the flow's K-step sample from the same noise (distillation, weight ``α``)
while maximising Q:

* critic (``loss_qvalue``): as DeFlow's, with ``y = r + γ m agg_i Q̄_i(s', clip(μ(s', z')))``;
* flow (``loss_flow``): the same flow matching as DeFlow's;
* actor (``loss_actor``): ``α · mean_d (μ(s, z) − sg(flow(s, z)))² − λ mean_i Q_i(s, clip(μ(s, z)))``,
  ``λ = 1`` (``normalize_q_loss=False``, FQL's setting) or DeFlow's λ;

the policy acts with ``clip(μ(s, z))``, ``z ~ N(0, I)``: one network call per
action instead of K + 1. α is tuned per suite (the ``fql_alpha`` field of
``deflow_trl/configs/env/*.yaml``: 10 antmaze/antsoccer, 30 humanoidmaze, 300
cube/scene, 1000 puzzle) — the per-task tuning DeFlow's trust region avoids.

Everything but the actor term and the one-step policy is shared code
(:class:`~deflow_trl.loss.FlowCriticLoss`, :class:`~deflow_trl.actor.DeFlowActor`).
"""
from __future__ import annotations

from typing import Sequence

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import dispatch

from deflow_trl.actor import DeFlowActor
from deflow_trl.hardware import resolve_bf16_solves
from deflow_trl.loss import FlowCriticLoss
from deflow_trl.make import build_networks
from deflow_trl.nets import DEFAULT_HIDDEN, Refiner, VelocityField


class OneStepPolicy(Refiner):
    """FQL's one-step policy ``μ(s, z) → a``: an MLP on ``concat(s, z)`` (the
    velocity field's shape without ``t``). Unclipped: the actor clips."""


class FQLActor(DeFlowActor):
    """The FQL policy: ``clip(μ(s, z))`` with ``z ~ N(0, I)`` (reads
    ``observation``, writes ``action``). Holds the behaviour flow too (its
    K-step sample is the distillation target) as ``velocity``.

    Args:
        velocity: the behaviour flow's velocity field.
        onestep: the one-step policy.

    Keyword arguments as :class:`~deflow_trl.actor.DeFlowActor`'s (``sampling``
    is ``"plain"`` only).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> actor = FQLActor(VelocityField(3, 2, (16,)), OneStepPolicy(3, 2, (16,)))
        >>> actor(TensorDict(observation=torch.randn(4, 3), batch_size=[4]))["action"].shape
        torch.Size([4, 2])
    """

    def __init__(self, velocity: VelocityField, onestep: OneStepPolicy, critic=None, **kwargs) -> None:
        if kwargs.get("sampling", "plain") != "plain":
            raise ValueError("FQLActor acts with its one-step policy: sampling must be 'plain'")
        super().__init__(velocity, onestep, critic, **kwargs)

    @property
    def onestep(self) -> OneStepPolicy:
        return self.sampler.refiner

    def policy_action(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.onestep(obs, noise).clamp(-1.0, 1.0)


class FQLLoss(FlowCriticLoss):
    r"""The FQL objective as a TorchRL ``LossModule`` (one optimiser).

    Reads and writes the same keys as :class:`~deflow_trl.loss.DeFlowLoss`
    (``set_keys`` renames) and returns ``loss_qvalue``, ``loss_flow``,
    ``loss_actor`` and metrics (``distill``: the mean squared distance to the
    flow's sample; ``q_pi``: Q of the policy's actions).

    Args:
        actor: an :class:`FQLActor`.
        critic: as :class:`~deflow_trl.loss.DeFlowLoss`'s.

    Keyword Args:
        alpha (float): the distillation weight α (> 0; FQL tunes it per suite).
        normalize_q_loss (bool): scale the Q term by λ = 1 / mean_b |mean_i Q_i|
            (default False, FQL's setting in the published runs).
        **kwargs: the shared options of :class:`~deflow_trl.loss.FlowCriticLoss`
            (``discount``, ``q_agg``, ``reduction``, ``freeze_flow``, ...).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> policy, loss = make_fql(4, 2, hidden_sizes=(32, 32), alpha=300.0)
        >>> B = 8
        >>> data = TensorDict({
        ...     "observation": torch.randn(B, 4), "action": torch.rand(B, 2) * 2 - 1,
        ...     "next": {"observation": torch.randn(B, 4), "reward": torch.randn(B, 1),
        ...              "done": torch.zeros(B, 1, dtype=torch.bool),
        ...              "terminated": torch.zeros(B, 1, dtype=torch.bool)},
        ... }, batch_size=[B])
        >>> out = loss(data)
        >>> sorted(k for k in out.keys() if k.startswith("loss_"))
        ['loss_actor', 'loss_flow', 'loss_qvalue']
    """

    out_keys = ["loss_qvalue", "loss_flow", "loss_actor", "distill", "q_pi", "q_mean", "q_min", "q_max",
                "target_mean", "flow_bc_mse"]
    # forward's random draws, in order: z' for the target's next actions, flow matching's x_0 and t, then z
    # (see FlowCriticLoss.draw_noise).
    NOISE_DRAWS = (("next", "normal", 1, None), ("x0", "normal", 1, None), ("t", "uniform", 1, 1),
                   ("z", "normal", 1, None))

    def __init__(self, actor: FQLActor, critic, *, alpha: float = 10.0, normalize_q_loss: bool = False, **kwargs):
        if not isinstance(actor, FQLActor):
            raise TypeError(f"FQLLoss needs an FQLActor (a one-step policy), got {type(actor).__name__}")
        if not (isinstance(alpha, (int, float)) and alpha > 0):
            raise ValueError(f"FQL's alpha (distillation weight) must be > 0, got {alpha!r}")
        super().__init__(actor, critic, normalize_q_loss=normalize_q_loss, **kwargs)
        self.alpha = float(alpha)

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        v = self.read_batch(tensordict)
        obs, action, next_obs = v["observation"], v["action"], v["next observation"]
        batch_shape, batch = tensordict.batch_size, obs.shape[0]
        weights = self._weights(tensordict)
        onestep = self.actor.onestep

        noise = self._forward_noise(tensordict, batch, action)

        # Critic: the target at the one-step policy's next actions.
        with torch.no_grad():
            next_action = onestep(next_obs, noise["next"]).clamp(-1.0, 1.0)
        loss_qvalue, q, target = self.qvalue_loss_terms(tensordict, v, next_action)

        loss_flow = self._flow_matching(obs, action, noise["x0"], noise["t"])

        # One-step policy: distil the flow's K-step sample from the same noise, maximise Q.
        z = noise["z"]
        flow_action = self.solve_flow_no_grad(obs, z)
        mu = onestep(obs, z)
        distill = (mu - flow_action).pow(2).mean(-1)
        q_pi = self.q_values(self._cached_detached_critic_params, obs, mu.clamp(-1.0, 1.0)).mean(0)
        loss_actor = self.alpha * distill - self.q_normalizer(q_pi) * q_pi

        q_detached = q.detach()
        return TensorDict(
            {
                "loss_qvalue": self._reduce(loss_qvalue, weights, batch_shape),
                "loss_flow": self._reduce(loss_flow, weights, batch_shape),
                "loss_actor": self._reduce(loss_actor, weights, batch_shape),
                "distill": distill.detach().mean(),
                "q_pi": q_pi.detach().mean(),
                "q_mean": q_detached.mean(),
                "q_min": q_detached.min(),
                "q_max": q_detached.max(),
                "target_mean": target.mean(),
                "flow_bc_mse": (flow_action - action).pow(2).mean(),
            },
            batch_size=[],
        )


def make_fql(
    observation_dim: int,
    action_dim: int,
    *,
    hidden_sizes: Sequence[int] = DEFAULT_HIDDEN,  # every MLP (velocity, one-step policy, critic); FQL 4×512
    num_critics: int = 2,  # Q ensemble size (FQL: 2)
    num_flow_steps: int = 10,  # K Euler steps of the distillation target (FQL: 10)
    solver: str = "euler",  # ODE solver of the distillation target
    discount: float = 0.99,  # γ, per suite
    q_agg: str = "mean",  # target aggregation: "min" for antmaze (FQL's flags), else "mean"
    alpha: float = 10.0,  # distillation weight α: per suite (deflow_trl/configs/env/*.yaml fql_alpha)
    normalize_q_loss: bool = False,  # FQL's published runs: off
    freeze_flow: bool = False,  # keep the behaviour flow fixed (online fine-tuning)
    bf16_solves: bool | str = False,  # the distillation target's solve under bf16 autocast; "auto": only where bf16 is native
    backend: str = "eager",  # sampler backend of the flow (the policy itself is one MLP call)
    reduction: str = "mean",  # loss reduction: "mean" | "sum" | "none"
    encoder=None,  # None (flat obs), "impala_small" (pixels) or a factory; one encoder per network
    action_spec=None,  # the env's Bounded action spec (None: OGBench's [-1, 1])
    device: torch.device | str | None = None,  # build on this device
) -> tuple[FQLActor, FQLLoss]:
    """FQL's networks, policy and loss with the reference defaults; keyword
    names as the Hydra agent config (``deflow_trl/configs/agent/fql.yaml``)."""
    bf16_solves = resolve_bf16_solves(bf16_solves, device)
    velocity, onestep, critic = build_networks(
        observation_dim, action_dim, hidden_sizes, num_critics, OneStepPolicy, encoder=encoder,
        bf16_solves=bf16_solves, device=device,
    )
    policy = FQLActor(velocity, onestep, num_flow_steps=num_flow_steps, solver=solver, backend=backend,
                      action_spec=action_spec)
    loss = FQLLoss(policy, critic, alpha=alpha, discount=discount, q_agg=q_agg, normalize_q_loss=normalize_q_loss,
                   freeze_flow=freeze_flow, bf16_solves=bf16_solves, reduction=reduction)
    return policy, loss
