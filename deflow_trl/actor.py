"""The DeFlow policy as a TensorDict module (reads ``observation``, writes ``action``).

Noise is always drawn fresh from ``N(0, I)``, whatever TorchRL's exploration
type says: DeFlow is evaluated with stochastic flow samples (as the
reference), and TorchRL's ``LossModule`` forces ``DETERMINISTIC`` inside loss
methods, where mapping "deterministic" to a zero latent would give every state
the same base sample. Seed with ``torch.manual_seed`` or pass a
``torch.Generator`` for reproducible actions.
"""
from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from tensordict.utils import NestedKey

from deflow_trl.nets import CriticEnsemble, Refiner, VelocityField
from deflow_trl.sampler import FlowSampler, refine

SAMPLING_MODES = ("plain", "best_of_n", "iterative")


class DeFlowActor(TensorDictModuleBase):
    """DeFlow policy: K-step flow sample, then the trust-region refinement.

    Args:
        velocity: the behaviour flow's velocity field ``v_θ(s, x, t)``.
        refiner: the refinement network ``r_φ(s, a)``.
        critic: Q ensemble, needed by ``best_of_n`` and ``iterative`` sampling.

    Keyword Args:
        num_flow_steps (int): ODE steps K (default 10).
        solver (str): ``"euler"`` (reference) or ``"midpoint"``.
        sampling (str): ``"plain"`` — one base sample, one refinement;
            ``"best_of_n"`` — ``num_samples`` base samples, each refined, keep
            the refined action with the highest Q (ensemble mean). The public
            reference instead ranks the *unrefined* base samples, picks the
            argmin (contrary to its docstring) and refines the winner; ranking
            refined actions by argmax is this project's deliberate choice.
            ``"iterative"`` — apply the refiner ``refine_iterations`` times and
            keep the highest-Q candidate among the unrefined base sample and
            every iterate (as the reference).
        num_samples (int): N for best-of-N (default 10, as the reference).
        refine_iterations (int): k for iterative refinement (default 5, as the reference).
        backend (str): sampler backend (see :mod:`deflow_trl.sampler`).
        refine (bool): apply the refiner (default). ``False`` acts with the
            behaviour flow's base samples alone: the flow-BC baseline.
        action_spec (torchrl ``Bounded`` spec, optional): the env's action
            space. The policy works in [-1, 1] and maps its actions affinely to
            the spec's bounds; :class:`~deflow_trl.loss.DeFlowLoss` maps dataset
            actions back. Default: actions in [-1, 1] (OGBench's convention).
        low / high (float or tensor, optional): the same bounds without a spec.
        observation_key / action_key: TensorDict keys.
        noise_key (NestedKey, optional): when set and present in the input,
            the ODE's initial state ``x_0`` is read from it (``[*B, action_dim]``;
            ``[*B, N, action_dim]`` for best-of-N) instead of drawn: a fixed latent.
        generator (torch.Generator, optional): RNG for the flow's noise.

    The critic (when given) is a registered submodule: weight sync through
    ``TensorDict.from_module(policy)``, ``state_dict()`` and ``.to()`` include it.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from deflow_trl.nets import VelocityField, Refiner
        >>> actor = DeFlowActor(VelocityField(3, 2, (32, 32)), Refiner(3, 2, (32, 32)))
        >>> td = actor(TensorDict(observation=torch.randn(5, 3), batch_size=[5]))
        >>> td["action"].shape, bool(td["action"].abs().max() <= 1)
        (torch.Size([5, 2]), True)
    """

    def __init__(
        self,
        velocity: VelocityField,
        refiner: Refiner,
        critic: CriticEnsemble | None = None,
        *,
        num_flow_steps: int = 10,
        solver: str = "euler",
        sampling: str = "plain",
        num_samples: int = 10,
        refine_iterations: int = 5,
        backend: str = "eager",
        refine: bool = True,
        action_spec=None,
        low: float | torch.Tensor | None = None,
        high: float | torch.Tensor | None = None,
        observation_key: NestedKey = "observation",
        action_key: NestedKey = "action",
        noise_key: NestedKey | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"unknown sampling mode {sampling!r}; choose one of {SAMPLING_MODES}")
        if not refine and sampling != "plain":
            raise ValueError("refine=False (flow BC) only supports sampling='plain'")
        if num_samples < 1 or refine_iterations < 1:
            raise ValueError("num_samples and refine_iterations must be >= 1")
        if velocity.observation_dim != refiner.observation_dim or velocity.action_dim != refiner.action_dim:
            raise ValueError("velocity field and refiner disagree on observation/action dims")
        self.sampler = FlowSampler(velocity, refiner, num_flow_steps, solver, backend)
        # Registered (weight sync, state_dict, .to()); its parameters are the loss's own.
        self.critic = critic
        low, high = _action_bounds(action_spec, low, high, velocity.action_dim)
        self.register_buffer("action_low", low)
        self.register_buffer("action_high", high)
        self.noise_key = noise_key
        self.sampling = sampling
        self.refine = refine
        self.num_samples = num_samples
        self.refine_iterations = refine_iterations
        self.generator = generator
        self.observation_key = observation_key
        self.action_key = action_key
        self.in_keys = [observation_key]
        self.out_keys = [action_key]

    @property
    def velocity(self) -> VelocityField:
        return self.sampler.velocity

    @property
    def refiner(self) -> Refiner:
        return self.sampler.refiner

    @property
    def observation_dim(self) -> int:
        """Width of the (encoded) observation the MLPs read."""
        return self.velocity.observation_dim

    @property
    def observation_shape(self) -> tuple[int, ...]:
        """Shape of one raw observation (``(observation_dim,)`` without an encoder)."""
        return self.velocity.observation_shape

    @property
    def _weight(self) -> torch.Tensor:
        """A weight of the networks: their dtype and device."""
        return self.velocity.mlp.linears[0].weight

    @property
    def parameter_dtype(self) -> torch.dtype:
        return self._weight.dtype

    def normalize_action(self, action: torch.Tensor) -> torch.Tensor:
        """Env-space actions → the policy's [-1, 1] space (identity without bounds)."""
        if self.action_low is None:
            return action
        return 2 * (action - self.action_low) / (self.action_high - self.action_low) - 1

    def unnormalize_action(self, action: torch.Tensor) -> torch.Tensor:
        """The policy's [-1, 1] actions → the env's bounds (identity without bounds)."""
        if self.action_low is None:
            return action
        return self.action_low + (action + 1) * 0.5 * (self.action_high - self.action_low)

    @property
    def action_dim(self) -> int:
        return self.velocity.action_dim

    def draw_noise(self, *shape: int, like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise for the ODE's initial state."""
        return torch.randn(*shape, device=like.device, dtype=like.dtype, generator=self.generator)

    def check_observation(self, obs: torch.Tensor) -> None:
        shape = self.observation_shape
        if tuple(obs.shape[obs.dim() - len(shape):]) != shape or obs.dim() < len(shape):
            raise ValueError(f"observation has shape {tuple(obs.shape)}; expected [*batch, {', '.join(map(str, shape))}]")
        if len(shape) == 1:  # flat observations go straight into the MLPs
            if not obs.is_floating_point():
                raise TypeError(f"observation must be floating point, got {obs.dtype}")
            if obs.dtype != self.parameter_dtype:
                raise TypeError(
                    f"observation is {obs.dtype} but the policy's networks are {self.parameter_dtype}; "
                    "cast it (e.g. torchrl's DoubleToFloat transform on the env)"
                )
        if obs.is_floating_point() and not torch.compiler.is_compiling() and not torch.isfinite(obs).all():
            raise ValueError("observation contains NaN or inf")

    @torch.no_grad()
    def act(self, obs: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Actions for observations ``[*B, *obs_shape]`` → ``[*B, action_dim]``
        (in the action spec's bounds when one was given). ``noise``: an
        optional fixed initial state ``x_0`` (``[*B, action_dim]``, or
        ``[*B, N, action_dim]`` for best-of-N)."""
        self.check_observation(obs)
        batch_shape = obs.shape[: obs.dim() - len(self.observation_shape)]
        obs = obs.reshape(-1, *self.observation_shape)
        b = obs.shape[0]
        n = self.num_samples if (self.refine and self.sampling == "best_of_n") else 1
        if noise is None:
            noise = self.draw_noise(b * n, self.action_dim, like=self.action_head_like(obs))
        else:
            expected = (*batch_shape, n, self.action_dim) if n > 1 else (*batch_shape, self.action_dim)
            if tuple(noise.shape) != expected:
                raise ValueError(f"noise must have shape {list(expected)}, got {list(noise.shape)}")
            noise = noise.reshape(b * n, self.action_dim).to(self.parameter_dtype)
        if not self.refine:
            action = self.sampler.base_actions(obs, noise)
        elif self.sampling == "plain":
            action = self.policy_action(obs, noise)
        elif self.sampling == "best_of_n":
            action = self._best_of_n(obs, noise)
        else:
            action = self._iterative(obs, noise)
        return self.unnormalize_action(action.reshape(*batch_shape, self.action_dim))

    def policy_action(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """One action per state from the initial state ``noise`` (DeFlow: the
        K-step flow sample, then one refinement)."""
        return self.sampler(obs, noise)

    def action_head_like(self, obs: torch.Tensor) -> torch.Tensor:
        """A tensor with the device and float dtype of the actions (pixel observations are uint8)."""
        return obs if obs.is_floating_point() else self._weight

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs = tensordict.get(self.observation_key, None)
        if obs is None:
            raise KeyError(f"DeFlowActor needs {self.observation_key!r} in the input tensordict")
        noise = tensordict.get(self.noise_key, None) if self.noise_key is not None else None
        # An env on the CPU and a policy on the GPU (TorchRL rollouts, evaluation): compute on the
        # policy's device, hand the action back on the env's.
        device = self._weight.device
        action = self.act(obs.to(device), None if noise is None else noise.to(device))
        tensordict.set(self.action_key, action.to(obs.device))
        return tensordict

    def _q(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        if self.critic is None:
            raise ValueError(
                f"sampling={self.sampling!r} ranks actions by Q and needs a critic: pass critic=..., "
                "or build the DeFlowLoss, which attaches its own"
            )
        return self.critic(obs, action).mean(0)

    def _best_of_n(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        n, b = self.num_samples, obs.shape[0]
        obs_n = obs.repeat_interleave(n, dim=0)  # [B*N, *obs_shape], sample-major per state
        candidates = self.sampler(obs_n, noise)
        q = self._q(obs_n, candidates).reshape(b, n)
        best = q.argmax(dim=1)  # the documented intent: the highest Q (the reference used argmin)
        return candidates.reshape(b, n, -1)[torch.arange(b, device=obs.device), best]

    def _iterative(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        # Candidates: the unrefined base sample and every iterate (as the reference).
        action = self.sampler.base_actions(obs, noise)
        iterates, scores = [action], [self._q(obs, action)]
        for _ in range(self.refine_iterations):
            action = refine(self.refiner, obs, action)
            iterates.append(action)
            scores.append(self._q(obs, action))
        best = torch.stack(scores, dim=1).argmax(dim=1)
        return torch.stack(iterates, dim=1)[torch.arange(obs.shape[0], device=obs.device), best]


def _action_bounds(action_spec, low, high, action_dim: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(low, high)`` buffers from a Bounded spec or explicit bounds; ``(None, None)`` for [-1, 1]."""
    if action_spec is not None:
        if low is not None or high is not None:
            raise ValueError("give either action_spec or low/high, not both")
        from torchrl.data import Bounded

        space = getattr(action_spec, "space", None)
        if not isinstance(action_spec, Bounded) or space is None:
            raise ValueError(
                f"action_spec must be a bounded spec (torchrl.data.Bounded), got {type(action_spec).__name__}"
            )
        low, high = space.low, space.high
    if low is None and high is None:
        return None, None
    if low is None or high is None:
        raise ValueError("give both low and high")
    low = torch.as_tensor(low, dtype=torch.float32).expand(action_dim).clone()
    high = torch.as_tensor(high, dtype=torch.float32).expand(action_dim).clone()
    if not (torch.isfinite(low).all() and torch.isfinite(high).all()):
        raise ValueError("action bounds must be finite (DeFlow acts in a bounded box)")
    if not (high > low).all():
        raise ValueError(f"action bounds need high > low, got low={low.tolist()}, high={high.tolist()}")
    if torch.equal(low, -torch.ones_like(low)) and torch.equal(high, torch.ones_like(high)):
        return None, None  # already the policy's space
    return low, high
