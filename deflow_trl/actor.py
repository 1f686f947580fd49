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
        observation_key / action_key: TensorDict keys.
        generator (torch.Generator, optional): RNG for the flow's noise.

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
        observation_key: NestedKey = "observation",
        action_key: NestedKey = "action",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if sampling not in SAMPLING_MODES:
            raise ValueError(f"unknown sampling mode {sampling!r}; choose one of {SAMPLING_MODES}")
        if not refine and sampling != "plain":
            raise ValueError("refine=False (flow BC) only supports sampling='plain'")
        if sampling != "plain" and critic is None:
            raise ValueError(f"sampling={sampling!r} ranks actions by Q and needs a critic")
        if num_samples < 1 or refine_iterations < 1:
            raise ValueError("num_samples and refine_iterations must be >= 1")
        if velocity.observation_dim != refiner.observation_dim or velocity.action_dim != refiner.action_dim:
            raise ValueError("velocity field and refiner disagree on observation/action dims")
        self.sampler = FlowSampler(velocity, refiner, num_flow_steps, solver, backend)
        # Not registered as a submodule: the critic is owned (and trained) by the loss.
        self.__dict__["critic"] = critic
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
        return self.velocity.observation_dim

    @property
    def action_dim(self) -> int:
        return self.velocity.action_dim

    def draw_noise(self, *shape: int, like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise for the ODE's initial state."""
        return torch.randn(*shape, device=like.device, dtype=like.dtype, generator=self.generator)

    def check_observation(self, obs: torch.Tensor) -> None:
        if obs.shape[-1:] != (self.observation_dim,):
            raise ValueError(
                f"observation has shape {tuple(obs.shape)}; expected last dim {self.observation_dim}"
            )
        if not obs.is_floating_point():
            raise TypeError(f"observation must be floating point, got {obs.dtype}")
        if not torch.compiler.is_compiling() and not torch.isfinite(obs).all():
            raise ValueError("observation contains NaN or inf")

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Actions for observations ``[*B, obs_dim]`` → ``[*B, action_dim]``."""
        self.check_observation(obs)
        batch_shape = obs.shape[:-1]
        obs = obs.reshape(-1, self.observation_dim)
        noise_shape = (obs.shape[0], self.action_dim)
        if not self.refine:
            action = self.sampler.base_actions(obs, self.draw_noise(*noise_shape, like=obs))
        elif self.sampling == "plain":
            action = self.sampler(obs, self.draw_noise(*noise_shape, like=obs))
        elif self.sampling == "best_of_n":
            action = self._best_of_n(obs)
        else:
            action = self._iterative(obs)
        return action.reshape(*batch_shape, self.action_dim)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs = tensordict.get(self.observation_key, None)
        if obs is None:
            raise KeyError(f"DeFlowActor needs {self.observation_key!r} in the input tensordict")
        tensordict.set(self.action_key, self.act(obs))
        return tensordict

    def _q(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.critic(obs, action).mean(0)

    def _best_of_n(self, obs: torch.Tensor) -> torch.Tensor:
        n, b = self.num_samples, obs.shape[0]
        obs_n = obs.repeat_interleave(n, dim=0)  # [B*N, obs_dim], sample-major per state
        candidates = self.sampler(obs_n, self.draw_noise(b * n, self.action_dim, like=obs))
        q = self._q(obs_n, candidates).reshape(b, n)
        best = q.argmax(dim=1)  # the documented intent: the highest Q (the reference used argmin)
        return candidates.reshape(b, n, -1)[torch.arange(b, device=obs.device), best]

    def _iterative(self, obs: torch.Tensor) -> torch.Tensor:
        # Candidates: the unrefined base sample and every iterate (as the reference).
        action = self.sampler.base_actions(obs, self.draw_noise(obs.shape[0], self.action_dim, like=obs))
        iterates, scores = [action], [self._q(obs, action)]
        for _ in range(self.refine_iterations):
            action = refine(self.refiner, obs, action)
            iterates.append(action)
            scores.append(self._q(obs, action))
        best = torch.stack(scores, dim=1).argmax(dim=1)
        return torch.stack(iterates, dim=1)[torch.arange(obs.shape[0], device=obs.device), best]
