"""The ODE sampler: the one place where the velocity field is integrated.

Everything that draws actions from the behaviour flow (the actor, the loss's
no-grad solves, benchmarks) goes through :func:`solve_flow` or a
:class:`FlowSampler`, so a compiled or fused backend replaces exactly this
loop and nothing else (:class:`FlowSampler`'s ``backend``; the backends live
in :mod:`deflow_trl.backends` and :mod:`deflow_trl.kernels`).

Exact savings built in (docs/design.md §4): the observation's share of the first
layer (``W_obs s + b``) is computed once per sample, not once per step, and
the time input enters as a per-step bias ``t · w_t``.
"""
from __future__ import annotations

import torch
from torch import nn

from deflow_trl.backends import BF16_MIN_BATCH_CPU, UNITS, compiled_unit, parse_backend, resolve_backend
from deflow_trl.flow_weights import WeightCache, flow_weights
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
        backend: ``"eager"`` (default: no compile time), ``"compile"``,
            ``"triton"`` (CUDA), ``"auto"`` (best available), each optionally
            with a precision suffix (``"compile-bf16"``, ``"triton-tf32"``, ...);
            see :mod:`deflow_trl.backends`. Every backend computes the same
            function; the choice is resolved per device on first use. Training
            and evaluation apps pass ``"auto"``; ``"eager"`` stays the default
            because ``compile`` costs ≈ 20 s of cold compile on CPU.
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
        parse_backend(backend)  # fail early on a typo; resolved per device on first use
        self.velocity = velocity
        self.refiner = refiner
        self.num_flow_steps = num_flow_steps
        self.solver = solver
        self.backend = backend
        self._resolved: dict[torch.device, tuple[str, str]] = {}
        self._weight_cache = WeightCache()

    def resolved_backend(self, device: torch.device | str) -> str:
        """The concrete backend this sampler runs on ``device``."""
        kind, precision = self._resolve(torch.device(device))
        return kind if precision == "fp32" else f"{kind}-{precision}"

    def clear_cache(self) -> None:
        """Drops cached reduced-precision weights (needed only after writing
        parameters through ``.data``, which hides the change)."""
        self._weight_cache.clear()

    def _resolve(self, device: torch.device) -> tuple[str, str]:
        if device not in self._resolved:
            self._resolved[device] = parse_backend(resolve_backend(self.backend, device))
        return self._resolved[device]

    def _run(self, unit: str, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        kind, precision = self._resolve(obs.device)
        if kind == "triton":
            from deflow_trl.kernels import triton_sample  # lazy: Triton is optional

            return triton_sample(
                unit, self.velocity, self.refiner, obs, noise, self.num_flow_steps, self.solver,
                precision, self._weight_cache,
            )
        if precision == "bf16" and obs.device.type == "cpu" and obs.shape[0] < BF16_MIN_BATCH_CPU:
            precision = "fp32"
        weights = flow_weights(self.velocity, self.refiner, precision, self._weight_cache)
        if kind == "compile":
            return compiled_unit(unit, precision, self.num_flow_steps, self.solver,
                                 device_type=obs.device.type)(weights, obs, noise)
        return UNITS[unit](weights, obs, noise, self.num_flow_steps, self.solver)

    def _plain(self) -> bool:
        # Inside an enclosing torch.compile (e.g. a compiled update step) the
        # plain ops are traced into the caller's graph; a nested compiled or
        # Triton unit would only split it.
        # With an encoder (pixels) the fused backends, which read raw weights,
        # do not apply: the plain loop runs the encoder once per solve.
        return (self.backend == "eager" or torch.compiler.is_compiling()
                or self.velocity.encoder is not None or self.refiner.encoder is not None)

    @torch.no_grad()
    def base_actions(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if self._plain():
            return solve_flow(self.velocity, obs, noise, self.num_flow_steps, self.solver)
        return self._run("base", obs, noise)

    @torch.no_grad()
    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if self._plain():
            return refine(self.refiner, obs, self.base_actions(obs, noise))
        return self._run("policy", obs, noise)
