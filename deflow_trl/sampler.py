"""The ODE sampler: the one place where the velocity field is integrated.

Everything that draws actions from the behaviour flow (the actor, the loss's
no-grad solves, benchmarks) goes through :func:`solve_flow` or a
:class:`FlowSampler`, so a compiled or fused backend replaces exactly this
loop and nothing else.

Exact savings built in (DESIGN.md §4): the observation's share of the first
layer (``W_obs s + b``) is computed once per sample, not once per step, and
the time input enters as a per-step bias ``t · w_t``.
"""
from __future__ import annotations

import torch
from torch import nn

from deflow_trl.nets import Refiner, VelocityField

SOLVERS = ("euler", "midpoint")


def check_solver(solver: str, num_steps: int) -> None:
    if solver not in SOLVERS:
        raise ValueError(f"unknown ODE solver {solver!r}; choose one of {SOLVERS}")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_flow_steps must be an integer >= 1, got {num_steps!r}")


def solve_flow(
    velocity: VelocityField,
    obs: torch.Tensor,
    noise: torch.Tensor,
    num_steps: int = 10,
    solver: str = "euler",
) -> torch.Tensor:
    """Integrates ``dx/dt = v(s, x, t)`` from ``x(0) = noise`` to ``t = 1``.

    ``euler`` is the reference sampler (``x ← x + v(s, x, k/K) / K``);
    ``midpoint`` is second order (two evaluations per step). The result is
    clipped to [-1, 1] once, at the end, as in the reference.

    Args:
        velocity: the velocity field.
        obs: observations ``[B, obs_dim]``.
        noise: the initial state ``x(0)``, ``[B, action_dim]`` (draw it with
            ``torch.randn``; it is an argument so that callers control the RNG).
        num_steps: number of steps K.
        solver: ``"euler"`` or ``"midpoint"``.
    """
    obs_proj = velocity.project_observation(obs)
    x = noise
    dt = 1.0 / num_steps
    for k in range(num_steps):
        t = k * dt
        if solver == "euler":
            x = x + dt * velocity.from_projection(obs_proj, x, t)
        else:
            x_mid = x + (0.5 * dt) * velocity.from_projection(obs_proj, x, t)
            x = x + dt * velocity.from_projection(obs_proj, x_mid, t + 0.5 * dt)
    return x.clamp(-1.0, 1.0)


def refine(refiner: Refiner, obs: torch.Tensor, base_action: torch.Tensor) -> torch.Tensor:
    """The policy's action ``clip(a_base + r_φ(s, a_base), -1, 1)``."""
    return (base_action + refiner(obs, base_action)).clamp(-1.0, 1.0)


class FlowSampler(nn.Module):
    """Base sampler plus refinement behind a swappable backend.

    ``base_actions(obs, noise)`` runs the ODE only; ``forward(obs, noise)``
    runs the ODE and one refinement, the unit the policy calls for every
    action. Both run without gradients: nothing backpropagates through the ODE
    solver in DeFlow.

    Args:
        velocity: velocity field.
        refiner: refinement network.
        num_flow_steps: K.
        solver: ``"euler"`` (reference) or ``"midpoint"``.
        backend: ``"eager"`` (default here; faster backends are added by
            :mod:`deflow_trl.backends`).
    """

    def __init__(
        self,
        velocity: VelocityField,
        refiner: Refiner,
        num_flow_steps: int = 10,
        solver: str = "euler",
        backend: str = "eager",
    ) -> None:
        super().__init__()
        check_solver(solver, num_flow_steps)
        self.velocity = velocity
        self.refiner = refiner
        self.num_flow_steps = num_flow_steps
        self.solver = solver
        self.backend = backend

    @torch.no_grad()
    def base_actions(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return solve_flow(self.velocity, obs, noise, self.num_flow_steps, self.solver)

    @torch.no_grad()
    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return refine(self.refiner, obs, self.base_actions(obs, noise))
