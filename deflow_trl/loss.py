"""DeFlowLoss: critic, behaviour flow, trust-region refiner and its Lagrange multiplier."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import dispatch
from tensordict.utils import NestedKey
from torch import nn
from torchrl.objectives import LossModule
from torchrl.objectives.utils import _cache_values

from deflow_trl.actor import DeFlowActor
from deflow_trl.nets import CriticEnsemble
from deflow_trl.sampler import refine

Q_AGGREGATIONS = ("mean", "min")
_ACTION_RANGE_TOL = 1e-6


class DeFlowLoss(LossModule):
    r"""The DeFlow objective (arXiv 2601.10471), one loss module for one optimiser.

    With transitions ``(s, a, r, s', m)`` (``m = 1 - terminated``), noise drawn
    explicitly (never a zero latent), and ``a_base`` a no-grad K-step flow sample:

    * critic: ``L_Q = mean_i mean_b (Q_ψi(s, a) − y)²`` (the reference's mean over members) with
      ``y = r + γ m · agg_i Q_ψ̄i(s', π(s'))``, ``agg`` = mean or min,
      ``π(s') = clip(a'_base + r_φ(s', a'_base))``;
    * flow matching: ``L_flow = mean ‖v_θ(s, x_t, t) − (a − x_0)‖²`` (mean over
      batch and action dims, as the reference), ``x_t = (1 − t) x_0 + t a``;
    * refiner: ``L_r = −λ mean_i Q_ψi(s, a_π) + sg(α) · mean Δ²`` with
      ``Δ = r_φ(s, a_base)``, ``a_π = clip(a_base + Δ)``, and
      ``λ = 1 / sg(mean_b |mean_i Q_ψi(s, a_π)|)`` when ``normalize_q_loss`` (the
      absolute value of the ensemble mean, then the batch mean, as the reference);
    * dual ascent: ``L_α = −log α · (sg(mean Δ²) − δ)``.

    ``mean Δ²`` is the per-dimension divergence, so δ is per action dimension
    (δ ≈ 0.1·IAV for manipulation, ≈ IAV for locomotion; see
    :mod:`deflow_trl.iav`). Each loss reaches only its own parameters: the
    critic's params are detached inside ``L_r``, the ODE runs without grad, the
    target uses the target params.

    Args:
        actor: the :class:`~deflow_trl.actor.DeFlowActor` (its velocity field and
            refiner are trained by this loss).
        critic: the :class:`~deflow_trl.nets.CriticEnsemble`.

    Keyword Args:
        discount (float): γ (0.99; 0.995 for long-horizon tasks).
        target_divergence (float): δ, the trust-region size (> 0).
        q_agg (str): ``"mean"`` or ``"min"`` over the target ensemble.
        normalize_q_loss (bool): scale the Q term by ``λ = 1 / mean_b |mean_i Q_i|`` (default True).
        init_log_alpha (float): initial ``log α`` (1.0 as the reference).
        freeze_flow (bool): keep the behaviour flow fixed (``loss_flow`` is
            reported but carries no gradient); used for online fine-tuning.
        check_inputs (bool): validate keys, shapes, finiteness and the action
            range on every call (a few cheap reductions; skipped under
            ``torch.compile``).
        bf16_solves (bool): run the no-grad ODE solve under bf16 autocast
            (GEMMs in bf16, the ODE state ``x`` and the returned actions fp32).
            Off by default; it changes the sampled base actions slightly (see
            ``benchmarks/update_throughput.py`` for the measured effect and
            speed-up). Gradients never flow through the solve either way.

    The loss reads ``observation``, ``action``, ``("next", "observation")``,
    ``("next", "reward")``, ``("next", "done")`` and ``("next", "terminated")``
    (rename with :meth:`set_keys`) and returns ``loss_critic``, ``loss_flow``,
    ``loss_refine``, ``loss_alpha`` and detached metrics. Sum the ``loss_*``
    entries and step one optimiser over ``loss.parameters()``; update the
    target critic with ``torchrl.objectives.SoftUpdate(loss, tau=0.005)``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from deflow_trl import make_deflow
        >>> policy, loss = make_deflow(4, 2, hidden_sizes=(32, 32), target_divergence=1e-3)
        >>> B = 8
        >>> data = TensorDict({
        ...     "observation": torch.randn(B, 4), "action": torch.rand(B, 2) * 2 - 1,
        ...     "next": {"observation": torch.randn(B, 4), "reward": torch.randn(B, 1),
        ...              "done": torch.zeros(B, 1, dtype=torch.bool),
        ...              "terminated": torch.zeros(B, 1, dtype=torch.bool)},
        ... }, batch_size=[B])
        >>> out = loss(data)
        >>> sorted(k for k in out.keys() if k.startswith("loss_"))
        ['loss_alpha', 'loss_critic', 'loss_flow', 'loss_refine']
        >>> total = sum(out[k] for k in out.keys() if k.startswith("loss_"))
        >>> total.backward()
    """

    @dataclass
    class _AcceptedKeys:
        """Tensordict keys read by the loss (set them with :meth:`set_keys`).

        Attributes:
            observation (NestedKey): the observation, also read under ``"next"``.
                Defaults to ``"observation"``.
            action (NestedKey): the dataset action in [-1, 1]. Defaults to ``"action"``.
            reward (NestedKey): reward, read under ``"next"``. Defaults to ``"reward"``.
            done (NestedKey): episode end (termination or truncation), read under
                ``"next"``. Only checked for presence; bootstrapping uses ``terminated``.
                Defaults to ``"done"``.
            terminated (NestedKey): true termination, read under ``"next"``; a
                time-limit truncation is not a terminal. Defaults to ``"terminated"``.
        """

        observation: NestedKey = "observation"
        action: NestedKey = "action"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    out_keys = [
        "loss_critic",
        "loss_flow",
        "loss_refine",
        "loss_alpha",
        "alpha",
        "divergence",
        "q_mean",
        "q_min",
        "q_max",
        "target_mean",
        "flow_bc_mse",
    ]

    critic: CriticEnsemble
    critic_params: TensorDictParams
    target_critic_params: TensorDictParams

    def __init__(
        self,
        actor: DeFlowActor,
        critic: CriticEnsemble,
        *,
        discount: float = 0.99,
        target_divergence: float = 1e-3,
        q_agg: str = "mean",
        normalize_q_loss: bool = True,
        init_log_alpha: float = 1.0,
        freeze_flow: bool = False,
        check_inputs: bool = True,
        bf16_solves: bool = False,
    ) -> None:
        if not target_divergence > 0:
            raise ValueError(f"target_divergence (δ) must be > 0, got {target_divergence!r}")
        if not 0 <= discount <= 1:
            raise ValueError(f"discount must be in [0, 1], got {discount!r}")
        if q_agg not in Q_AGGREGATIONS:
            raise ValueError(f"q_agg must be one of {Q_AGGREGATIONS}, got {q_agg!r}")
        if (critic.observation_dim, critic.action_dim) != (actor.observation_dim, actor.action_dim):
            raise ValueError("critic and actor disagree on observation/action dims")
        super().__init__()
        self.actor = actor
        self.convert_to_functional(critic, "critic", create_target_params=True)
        self.log_alpha = nn.Parameter(torch.tensor(float(init_log_alpha)))
        self.register_buffer("discount", torch.tensor(float(discount)))
        self.register_buffer("target_divergence", torch.tensor(float(target_divergence)))
        self.q_agg = q_agg
        self.normalize_q_loss = normalize_q_loss
        self.freeze_flow = freeze_flow
        self.check_inputs = check_inputs
        self.bf16_solves = bf16_solves

    # -- keys ----------------------------------------------------------------
    def _forward_value_estimator_keys(self, **kwargs) -> None:
        self._set_in_keys()

    def _set_in_keys(self) -> None:
        k = self.tensor_keys
        self._in_keys = [
            k.observation,
            k.action,
            ("next", k.observation),
            ("next", k.reward),
            ("next", k.done),
            ("next", k.terminated),
        ]

    @property
    def in_keys(self):
        if getattr(self, "_in_keys", None) is None:
            self._set_in_keys()
        return self._in_keys

    @in_keys.setter
    def in_keys(self, values):
        self._in_keys = values

    # -- helpers -------------------------------------------------------------
    @property
    @_cache_values
    def _cached_detached_critic_params(self):
        return self.critic_params.detach()

    def _critic(self, params: TensorDictBase, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        # preserve_module_state=False: the (detached) params are swapped in as
        # they are, without wrapping them in new nn.Parameters, which
        # torch.compile cannot trace (same values, same math).
        with params.to_module(self.critic, preserve_module_state=False):
            return self.critic(obs, action)

    def _noise(self, *shape: int, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(*shape, device=like.device, dtype=like.dtype)

    def _read(self, tensordict: TensorDictBase):
        k = self.tensor_keys
        keys = {
            "observation": k.observation,
            "action": k.action,
            "next observation": ("next", k.observation),
            "reward": ("next", k.reward),
            "done": ("next", k.done),
            "terminated": ("next", k.terminated),
        }
        values = {}
        for name, key in keys.items():
            value = tensordict.get(key, None)
            if value is None:
                raise KeyError(
                    f"DeFlowLoss: the input tensordict has no {name} entry at key {key!r}"
                    f" (present: {sorted(map(str, tensordict.keys(True, True)))})"
                )
            values[name] = value
        if self.check_inputs and not torch.compiler.is_compiling():
            self._check(values, tensordict.batch_size)
        obs, action, next_obs = values["observation"], values["action"], values["next observation"]
        reward = values["reward"].reshape(obs.shape[:-1])
        not_terminal = 1.0 - values["terminated"].reshape(obs.shape[:-1]).to(obs.dtype)
        return obs, action, next_obs, reward, not_terminal

    def _check(self, v: dict, batch_size: torch.Size) -> None:
        ds, da = self.actor.observation_dim, self.actor.action_dim
        expected = {"observation": ds, "next observation": ds, "action": da}
        for name, dim in expected.items():
            t = v[name]
            if t.dim() != 2 or t.shape[-1] != dim:
                raise ValueError(f"DeFlowLoss: {name} must have shape [batch, {dim}], got {tuple(t.shape)}")
            if not t.is_floating_point():
                raise TypeError(f"DeFlowLoss: {name} must be floating point, got {t.dtype}")
        batch = v["observation"].shape[0]
        for name in ("reward", "done", "terminated"):
            if v[name].numel() != batch:
                raise ValueError(
                    f"DeFlowLoss: {name} must have one entry per transition ([{batch}, 1]), got {tuple(v[name].shape)}"
                )
        for name in ("observation", "next observation", "action", "reward"):
            if not torch.isfinite(v[name]).all():
                raise ValueError(f"DeFlowLoss: {name} contains NaN or inf")
        if v["action"].abs().max() > 1 + _ACTION_RANGE_TOL:
            raise ValueError(
                "DeFlowLoss: dataset actions must lie in [-1, 1] (max |a| = "
                f"{v['action'].abs().max().item():.4f}); rescale the action space first"
            )

    # -- the loss ------------------------------------------------------------
    def _flow_matching(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Flow matching on the linear path ``x_t = (1 − t) x_0 + t a``."""
        x0 = self._noise(*action.shape, like=action)
        t = torch.rand(action.shape[0], 1, device=action.device, dtype=action.dtype)
        x_t = (1 - t) * x0 + t * action
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_flow):
            loss = (self.actor.velocity(obs, x_t, t) - (action - x0)).pow(2).mean()
        return loss.detach() if self.freeze_flow else loss

    def flow_loss(self, tensordict: TensorDictBase) -> tuple[torch.Tensor, dict]:
        """The behaviour flow's loss alone (no critic, no ODE solve): for
        pre-training the flow or behaviour cloning. Reads only the observation
        and the action."""
        k = self.tensor_keys
        obs, action = tensordict.get(k.observation, None), tensordict.get(k.action, None)
        if obs is None or action is None:
            raise KeyError(f"DeFlowLoss.flow_loss needs {k.observation!r} and {k.action!r}")
        return self._flow_matching(obs, action), {}

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        obs, action, next_obs, reward, not_terminal = self._read(tensordict)
        batch = obs.shape[0]
        refiner = self.actor.refiner

        # One batched no-grad ODE solve gives the base actions at s (refiner
        # loss) and s' (critic target).
        both_obs = torch.cat([obs, next_obs], dim=0)
        noise = self._noise(2 * batch, action.shape[-1], like=obs)
        with torch.autocast(obs.device.type, dtype=torch.bfloat16, enabled=self.bf16_solves):
            base_both = self.actor.sampler.base_actions(both_obs, noise)
        base_both = base_both.to(obs.dtype)
        base, next_base = base_both[:batch], base_both[batch:]

        # Critic.
        with torch.no_grad():
            next_action = refine(refiner, next_obs, next_base)
            next_q = self._critic(self.target_critic_params, next_obs, next_action)
            next_q = next_q.mean(0) if self.q_agg == "mean" else next_q.min(0).values
            target = reward + self.discount * not_terminal * next_q
        q = self._critic(self.critic_params, obs, action)
        # Mean over members and batch, as the reference (a sum would double the logged loss).
        loss_critic = (q - target).pow(2).mean()

        loss_flow = self._flow_matching(obs, action)

        # Refiner inside the trust region.
        delta = refiner(obs, base)
        policy_action = (base + delta).clamp(-1.0, 1.0)
        q_pi = self._critic(self._cached_detached_critic_params, obs, policy_action)
        divergence = delta.pow(2).mean()
        alpha = self.log_alpha.exp().detach()
        q_pi_mean = q_pi.mean(0)  # ensemble mean per sample
        # λ = 1 / sg(mean_b |mean_i Q_i|): |.| of the ensemble mean, then the batch mean
        # (the reference's normalisation; not the mean of each member's |Q|).
        q_scale = 1.0 / q_pi_mean.abs().mean().detach() if self.normalize_q_loss else 1.0
        loss_refine = -q_scale * q_pi_mean.mean() + alpha * divergence

        # Dual ascent on log α: α grows while the divergence exceeds δ.
        loss_alpha = -self.log_alpha * (divergence.detach() - self.target_divergence)

        q_detached = q.detach()
        return TensorDict(
            {
                "loss_critic": loss_critic,
                "loss_flow": loss_flow,
                "loss_refine": loss_refine,
                "loss_alpha": loss_alpha,
                "alpha": alpha,
                "divergence": divergence.detach(),
                "q_mean": q_detached.mean(),
                "q_min": q_detached.min(),
                "q_max": q_detached.max(),
                "target_mean": target.mean(),
                # the reference's BC error metric, free here: the base samples
                # at s already exist, no extra ODE solve.
                "flow_bc_mse": (base - action).pow(2).mean(),
            },
            batch_size=[],
        )
