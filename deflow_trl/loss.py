"""DeFlowLoss: critic, behaviour flow, trust-region refiner and its Lagrange multiplier."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from tensordict import TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModuleBase, dispatch
from tensordict.utils import NestedKey
from torch import nn
from torchrl.objectives import LossModule
from torchrl.objectives.utils import ValueEstimators, _cache_values, _vmap_func, dispatch_value_estimator

from deflow_trl.actor import DeFlowActor
from deflow_trl.sampler import refine

Q_AGGREGATIONS = ("mean", "min")
REDUCTIONS = ("mean", "sum", "none")
_ACTION_RANGE_TOL = 1e-6
NOISE_KEY = "_noise"  # reserved input key: a forward's noise supplied by the caller (FlowCriticLoss.draw_noise)


class FlowCriticLoss(LossModule):
    """What DeFlow and FQL share: a Q ensemble with a target copy (a
    :class:`~deflow_trl.nets.CriticEnsemble`, any ``(obs, action) → [E, B]``
    module, or TorchRL TensorDict critics vmapped over members), a behaviour
    flow trained by flow matching, TorchRL's value estimators, reductions,
    priority weights and ``td_error``, input checks, any leading batch shape.

    Subclasses add their policy's terms in ``forward``; see
    :class:`DeFlowLoss` for the arguments (the ones named there that are not
    DeFlow's own: ``num_qvalue_nets``, ``discount``, ``q_agg``,
    ``normalize_q_loss``, ``freeze_flow``, ``reduction``,
    ``use_prioritized_weights``, ``check_inputs``, ``bf16_solves``).
    """

    @dataclass
    class _AcceptedKeys:
        """Tensordict keys read and written by the loss (set them with :meth:`set_keys`).

        Attributes:
            observation (NestedKey): the observation, also read under ``"next"``.
                Defaults to ``"observation"``.
            action (NestedKey): the dataset action (in [-1, 1], or in the actor's
                action-spec bounds). Defaults to ``"action"``.
            reward (NestedKey): reward, read under ``"next"``. Defaults to ``"reward"``.
            done (NestedKey): episode end (termination or truncation), read under
                ``"next"``; used by multi-step value estimators. Defaults to ``"done"``.
            terminated (NestedKey): true termination, read under ``"next"``; a
                time-limit truncation is not a terminal. Defaults to ``"terminated"``.
            state_action_value (NestedKey): the output key of a TensorDict critic.
                Defaults to ``"state_action_value"``.
            priority (NestedKey): where the per-sample TD error is written.
                Defaults to ``"td_error"``.
            priority_weight (NestedKey): importance weights of a prioritized
                sampler, read when present. Defaults to ``"priority_weight"``.
        """

        observation: NestedKey = "observation"
        action: NestedKey = "action"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"
        state_action_value: NestedKey = "state_action_value"
        priority: NestedKey = "td_error"
        priority_weight: NestedKey = "priority_weight"

    tensor_keys: _AcceptedKeys
    default_keys = _AcceptedKeys
    default_value_estimator = ValueEstimators.TD0
    SUPPORTED_VALUE_ESTIMATORS = (ValueEstimators.TD0, ValueEstimators.TD1, ValueEstimators.TDLambda)

    critic: nn.Module
    critic_params: TensorDictParams
    target_critic_params: TensorDictParams

    def __init__(
        self,
        actor: DeFlowActor,
        critic: nn.Module | list[nn.Module],
        *,
        num_qvalue_nets: int | None = None,
        discount: float = 0.99,
        q_agg: str = "mean",
        normalize_q_loss: bool = True,
        freeze_flow: bool = False,
        reduction: str = "mean",
        use_prioritized_weights: str | bool = "auto",
        check_inputs: bool = True,
        bf16_solves: bool = False,
    ) -> None:
        if not 0 <= discount <= 1:
            raise ValueError(f"discount must be in [0, 1], got {discount!r}")
        if q_agg not in Q_AGGREGATIONS:
            raise ValueError(f"q_agg must be one of {Q_AGGREGATIONS}, got {q_agg!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        super().__init__()
        self._in_keys = None
        self.actor = actor
        self._init_critic(critic, num_qvalue_nets)
        self.gamma = float(discount)  # read by make_value_estimator (TorchRL's convention)
        self.q_agg = q_agg
        self.normalize_q_loss = normalize_q_loss
        self.freeze_flow = freeze_flow
        self.reduction = reduction
        self.use_prioritized_weights = use_prioritized_weights
        self.check_inputs = check_inputs
        self.bf16_solves = bf16_solves
        self.make_value_estimator(self.default_value_estimator)

    def _init_critic(self, critic, num_qvalue_nets: int | None) -> None:
        self._tensordict_critic = isinstance(critic, (list, tuple)) or isinstance(critic, TensorDictModuleBase)
        actor = self.actor
        if self._tensordict_critic:
            members = len(critic) if isinstance(critic, (list, tuple)) else (num_qvalue_nets or 2)
            if num_qvalue_nets is not None and num_qvalue_nets != members:
                raise ValueError(f"num_qvalue_nets={num_qvalue_nets} but {members} critics were given")
            if members < 1:
                raise ValueError(f"num_qvalue_nets must be >= 1, got {members}")
            self.num_qvalue_nets = members
            self.convert_to_functional(critic, "critic", members, create_target_params=True)
            self._vmap_critic = _vmap_func(self.critic, (None, 0), randomness="error")
        else:
            dims = (getattr(critic, "observation_dim", None), getattr(critic, "action_dim", None))
            if None not in dims and dims != (actor.observation_dim, actor.action_dim):
                raise ValueError(
                    f"critic (observation_dim, action_dim) = {dims} but the actor's are "
                    f"{(actor.observation_dim, actor.action_dim)}"
                )
            self.num_qvalue_nets = getattr(critic, "num_critics", num_qvalue_nets)
            self.convert_to_functional(critic, "critic", create_target_params=True)
        if actor.sampling != "plain" and (self._tensordict_critic or actor.critic is None):
            actor.critic = LossCritic(self)  # rank actions with the trained critic

    # -- value estimator and keys ---------------------------------------------
    def make_value_estimator(self, value_type: ValueEstimators | None = None, **hyperparams) -> None:
        """TorchRL's value-estimator dispatch: TD(0) (default), TD(1) or TD(λ).

        The next state's value is the target ensemble's aggregate at
        ``π(s')``, handed to the estimator; TD(1)/TD(λ) need batches of
        trajectories with time as the last batch dimension.
        """
        if value_type is None:
            value_type = self.default_value_estimator
        if "gamma" in hyperparams:
            gamma = hyperparams["gamma"]
            if not 0 <= float(gamma) <= 1:
                raise ValueError(f"gamma must be in [0, 1], got {gamma!r}")
            self.gamma = float(gamma)
        dispatch_value_estimator(
            self,
            value_type,
            supported=self.SUPPORTED_VALUE_ESTIMATORS,
            tensor_keys=self._value_estimator_keys(),
            value_network=None,
            **hyperparams,
        )

    def _value_estimator_keys(self) -> dict[str, NestedKey]:
        """The estimator's keys, from the loss's (kept in step by :meth:`set_keys`)."""
        k = self.tensor_keys
        return {"value": k.state_action_value, "reward": k.reward, "done": k.done, "terminated": k.terminated}

    @property
    def discount(self) -> torch.Tensor:
        """γ of the current value estimator."""
        return self.value_estimator.gamma

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        if self._value_estimator is not None:
            self._value_estimator.set_keys(**self._value_estimator_keys())
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
        if self._in_keys is None:
            self._set_in_keys()
        return self._in_keys

    @in_keys.setter
    def in_keys(self, values):
        self._in_keys = values

    # -- the critic ------------------------------------------------------------
    @property
    @_cache_values
    def _cached_detached_critic_params(self):
        return self.critic_params.detach()

    def q_values(self, params: TensorDictBase, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """``[E, B]`` Q-values of the ensemble with ``params`` (online, target
        or detached) for flat ``[B, ...]`` inputs."""
        if self._tensordict_critic:
            k = self.tensor_keys
            td = TensorDict({k.observation: obs, k.action: action}, batch_size=obs.shape[:1])
            q = self._vmap_critic(td, params).get(k.state_action_value)
            if q.dim() == 3 and q.shape[-1] == 1:
                q = q.squeeze(-1)
        else:
            # preserve_module_state=False: the (detached) params are swapped in as
            # they are, without wrapping them in new nn.Parameters, which
            # torch.compile cannot trace (same values, same math).
            with params.to_module(self.critic, preserve_module_state=False):
                q = self.critic(obs, action)
        if q.dim() != 2 or q.shape[1] != obs.shape[0]:
            raise ValueError(
                f"DeFlowLoss: the critic must return Q-values of shape [members, batch] (or [members, batch, 1] "
                f"from a TensorDict critic); got {tuple(q.shape)} for a batch of {obs.shape[0]}"
            )
        return q

    # -- inputs ----------------------------------------------------------------
    def _noise(self, *shape: int, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(*shape, device=like.device, dtype=like.dtype)

    # (name, distribution, copies per sample, width or None for the action dim), in the order forward draws them.
    NOISE_DRAWS: tuple[tuple[str, str, int, int | None], ...] = ()
    # The same for flow_loss (the flow-BC baseline's update): x_0 then t, as _flow_matching draws them.
    FLOW_NOISE_DRAWS: tuple[tuple[str, str, int, int | None], ...] = (("x0", "normal", 1, None), ("t", "uniform", 1, 1))

    def draw_noise(
        self,
        batch_size: int | Sequence[int] | torch.Size,
        action_dim: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        flow_only: bool = False,
    ) -> TensorDict:
        """Every random tensor of one :meth:`forward` (``flow_only``: of one :meth:`flow_loss`) on a batch of
        ``batch_size``,
        drawn from torch's global generator in the order ``forward`` draws them
        (so ``forward`` on the input with this noise under :data:`NOISE_KEY`
        computes, bit for bit, what it computes drawing the noise itself after
        the same ``torch.manual_seed``).

        Returns a TensorDict of ``batch_size`` with one entry per draw of
        :attr:`NOISE_DRAWS`, laid out per sample (``[*batch, width]``, or
        ``[*batch, copies, width]`` for a draw of several tensors per sample,
        e.g. DeFlow's ODE noise at ``s`` and ``s'``). Put it in the input under
        :data:`NOISE_KEY` (what :class:`~deflow_trl.seeds.SeedGroup` does, to
        draw each seed's noise from its own RNG stream outside ``vmap``).
        Defaults: the actor's action dim, the parameters' device and dtype.
        """
        batch_shape = torch.Size([batch_size] if isinstance(batch_size, int) else batch_size)
        n = batch_shape.numel()
        like = next(self.actor.parameters())
        action_dim = self.actor.action_dim if action_dim is None else action_dim
        kw = {"device": like.device if device is None else device, "dtype": like.dtype if dtype is None else dtype}
        out = {}
        for name, dist, copies, width in self.FLOW_NOISE_DRAWS if flow_only else self.NOISE_DRAWS:
            width = action_dim if width is None else width
            x = (torch.randn if dist == "normal" else torch.rand)(copies * n, width, **kw)
            if copies > 1:  # flat [copies * n, w] (the order forward uses) -> per sample [n, copies, w]
                x = x.reshape(copies, n, width).transpose(0, 1)
            out[name] = x.reshape(*batch_shape, *x.shape[1:])
        return TensorDict(out, batch_size=batch_shape, device=kw["device"])

    def draw_noise_for(self, tensordict: TensorDictBase, flow_only: bool = False) -> TensorDict:
        """:meth:`draw_noise` for the input ``tensordict``: its batch shape and its action's width, device and
        dtype (what a caller that hands the noise in under :data:`NOISE_KEY` draws: ``Updater``, ``SeedGroup``)."""
        action = tensordict.get(self.tensor_keys.action)
        return self.draw_noise(tensordict.batch_size, action.shape[-1], action.device, action.dtype,
                               flow_only=flow_only)

    def _forward_noise(
        self, tensordict: TensorDictBase, n: int, action: torch.Tensor, flow_only: bool = False
    ) -> dict[str, torch.Tensor]:
        """The flat noise tensors of one forward (``flow_only``: of one flow_loss): from
        ``tensordict[NOISE_KEY]`` when present (see :meth:`draw_noise`), else drawn now."""
        noise = tensordict.get(NOISE_KEY, None)
        if noise is None:
            noise = self.draw_noise(n, action.shape[-1], action.device, action.dtype, flow_only=flow_only)
        out = {}
        for name, _, copies, width in self.FLOW_NOISE_DRAWS if flow_only else self.NOISE_DRAWS:
            width = action.shape[-1] if width is None else width
            x = noise.get(name, None)
            if x is None or x.numel() != copies * n * width:
                got = None if x is None else list(x.shape)
                raise ValueError(
                    f"{type(self).__name__}: the input's {NOISE_KEY!r} entry needs {name!r} with "
                    f"{copies * n * width} values ([*batch{', ' + str(copies) if copies > 1 else ''}, {width}]), "
                    f"got {got}; build it with draw_noise"
                )
            x = x.reshape(n, copies, width).transpose(0, 1) if copies > 1 else x
            out[name] = x.reshape(copies * n, width)
        return out

    def read_batch(self, tensordict: TensorDictBase) -> dict[str, torch.Tensor]:
        """The batch's entries, flattened to one batch dimension, with the
        actions mapped to [-1, 1] and validated (when ``check_inputs``)."""
        if tensordict.batch_dims == 0:
            raise ValueError("DeFlowLoss: the input tensordict needs a batch dimension (got batch_size=[])")
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
        batch_shape = tensordict.batch_size
        n = batch_shape.numel()
        obs_shape = self.actor.observation_shape
        if self.check_inputs and not torch.compiler.is_compiling():
            self._check(values, batch_shape, obs_shape)
        # The reward and terminal flags reach the value estimator from the tensordict itself (_target).
        return {
            "observation": values["observation"].reshape(n, *obs_shape),
            "next observation": values["next observation"].reshape(n, *obs_shape),
            "action": self._policy_space_action(values["action"], n),
        }

    def _policy_space_action(self, action: torch.Tensor, n: int) -> torch.Tensor:
        """Dataset actions as ``[n, action_dim]`` in the policy's [-1, 1] space, range-checked
        (when ``check_inputs``)."""
        action = self.actor.normalize_action(action.reshape(n, self.actor.action_dim))
        if self.check_inputs and not torch.compiler.is_compiling():
            if action.abs().max() > 1 + _ACTION_RANGE_TOL:
                raise ValueError(
                    "DeFlowLoss: dataset actions must lie in [-1, 1] (or in the actor's action-spec bounds); "
                    f"max |a| = {action.abs().max().item():.4f} after mapping; rescale the action space first"
                )
        return action

    def _check(self, v: dict, batch_shape: torch.Size, obs_shape: tuple) -> None:
        """Shapes, dtypes and finiteness of the entries present in ``v`` (named as in :meth:`read_batch`)."""
        da = self.actor.action_dim
        expected = {"observation": obs_shape, "next observation": obs_shape, "action": (da,)}
        for name, shape in expected.items():
            t = v.get(name)
            if t is not None and tuple(t.shape) != (*batch_shape, *shape):
                raise ValueError(
                    f"DeFlowLoss: {name} must have shape [*batch, {', '.join(map(str, shape))}] "
                    f"= {[*batch_shape, *shape]}, got {list(t.shape)}"
                )
        for name in ("action", "reward"):
            if name in v and not v[name].is_floating_point():
                raise TypeError(f"DeFlowLoss: {name} must be floating point, got {v[name].dtype}")
        if len(obs_shape) == 1 and v["observation"].dtype != self.actor.parameter_dtype:
            raise TypeError(
                f"DeFlowLoss: observations are {v['observation'].dtype} but the networks are "
                f"{self.actor.parameter_dtype}; cast the data (e.g. with torchrl's DoubleToFloat transform)"
            )
        for name in ("reward", "done", "terminated"):
            if name in v and v[name].numel() != batch_shape.numel():
                raise ValueError(
                    f"DeFlowLoss: {name} must have one entry per transition ({[*batch_shape, 1]}), "
                    f"got {list(v[name].shape)}"
                )
        for name in ("observation", "next observation", "action", "reward"):
            if name in v and v[name].is_floating_point() and not torch.isfinite(v[name]).all():
                raise ValueError(f"DeFlowLoss: {name} contains NaN or inf")

    # -- the loss terms ----------------------------------------------------------
    def _flow_matching(
        self, obs: torch.Tensor, action: torch.Tensor, x0: torch.Tensor | None = None, t: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Per-sample flow matching on the linear path ``x_t = (1 − t) x_0 + t a``
        (``x0 ~ N(0, I)`` and ``t ~ U[0, 1]`` drawn here unless given)."""
        if x0 is None:
            x0 = self._noise(*action.shape, like=action)
            t = torch.rand(action.shape[0], 1, device=action.device, dtype=action.dtype)
        x_t = (1 - t) * x0 + t * action
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_flow):
            loss = (self.actor.velocity(obs, x_t, t) - (action - x0)).pow(2).mean(-1)
        return loss.detach() if self.freeze_flow else loss

    def _reduce(self, loss: torch.Tensor, weights: torch.Tensor | None, batch_shape: torch.Size) -> torch.Tensor:
        if self.reduction == "none":
            return (loss if weights is None else loss * weights).reshape(batch_shape)
        return self._reduce_loss(loss, weights=weights)

    def _weights(self, tensordict: TensorDictBase) -> torch.Tensor | None:
        weights = self._maybe_get_priority_weight(tensordict)
        return None if weights is None else weights.reshape(-1).to(torch.float32)

    def flow_loss(self, tensordict: TensorDictBase) -> tuple[torch.Tensor, dict]:
        """The behaviour flow's loss alone (no critic, no ODE solve): for
        pre-training the flow or behaviour cloning. Reads only the observation
        and the action (validated like :meth:`forward`'s), and its noise from the
        input's ``"_noise"`` entry when given (``draw_noise(..., flow_only=True)``)."""
        if tensordict.batch_dims == 0:
            raise ValueError("DeFlowLoss.flow_loss: the input tensordict needs a batch dimension")
        k = self.tensor_keys
        obs, action = tensordict.get(k.observation, None), tensordict.get(k.action, None)
        if obs is None or action is None:
            raise KeyError(f"DeFlowLoss.flow_loss needs {k.observation!r} and {k.action!r}")
        batch_shape = tensordict.batch_size
        obs_shape = self.actor.observation_shape
        if self.check_inputs and not torch.compiler.is_compiling():
            self._check({"observation": obs, "action": action}, batch_shape, obs_shape)
        n = batch_shape.numel()
        action = self._policy_space_action(action, n)
        noise = self._forward_noise(tensordict, n, action, flow_only=True)  # draws x_0, t (or reads "_noise")
        loss = self._flow_matching(obs.reshape(n, *obs_shape), action, noise["x0"], noise["t"])
        return self._reduce(loss, self._weights(tensordict), batch_shape), {}

    def qvalue_loss_terms(
        self, tensordict: TensorDictBase, batch: dict[str, torch.Tensor], next_action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(per-sample critic loss [B], Q [E, B], target y [B])`` given the
        policy's next actions; writes ``|TD error|`` (max over members) under
        the priority key of ``tensordict``."""
        with torch.no_grad():
            next_q = self.q_values(self.target_critic_params, batch["next observation"], next_action)
            next_q = next_q.mean(0) if self.q_agg == "mean" else next_q.min(0).values
            target = self._target(tensordict, next_q)
        q = self.q_values(self.critic_params, batch["observation"], batch["action"])
        td_error = q - target  # [E, B]
        priority = td_error.detach().abs().max(0).values
        tensordict.set(self.tensor_keys.priority, priority.reshape(tensordict.batch_size))
        return td_error.pow(2).mean(0), q, target  # mean over members (the reference's scale)

    def q_normalizer(self, q_pi: torch.Tensor) -> torch.Tensor | float:
        """λ = 1 / sg(mean_b |q_pi|) for the ensemble-mean Q of the policy's
        actions (the reference's normalisation), or 1 when it is off."""
        return 1.0 / q_pi.abs().mean().detach() if self.normalize_q_loss else 1.0

    def solve_flow_no_grad(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The behaviour flow's K-step sample (clipped), without grad, in bf16
        autocast when ``bf16_solves``."""
        with torch.autocast(noise.device.type, dtype=torch.bfloat16, enabled=self.bf16_solves):
            out = self.actor.sampler.base_actions(obs, noise)
        return out.to(noise.dtype)

    def _target(self, tensordict: TensorDictBase, next_q: torch.Tensor) -> torch.Tensor:
        """``y`` from the value estimator, given the next state's value ``[B]``."""
        k = self.tensor_keys
        batch_shape = tensordict.batch_size
        nxt = tensordict.get("next")
        fields = {key: nxt.get(key).reshape(*batch_shape, 1) for key in (k.reward, k.done, k.terminated)}
        steps = nxt.get("steps_to_next_obs", None)
        value_td = TensorDict({"next": fields}, batch_size=batch_shape)
        if steps is not None:
            value_td.set(("next", "steps_to_next_obs"), steps.reshape(*batch_shape, 1))
        target = self.value_estimator.value_estimate(value_td, next_value=next_q.reshape(*batch_shape, 1))
        return target.reshape(-1)


class DeFlowLoss(FlowCriticLoss):
    r"""The DeFlow objective (arXiv 2601.10471), one loss module for one optimiser.

    With transitions ``(s, a, r, s', m)`` (``m = 1 - terminated``), noise drawn
    explicitly (never a zero latent), and ``a_base`` a no-grad K-step flow sample:

    * critic (``loss_qvalue``): ``mean_i (Q_ψi(s, a) − y)²`` per sample, i.e.
      the reference's mean over members and batch, with
      ``y = r + γ m · agg_i Q_ψ̄i(s', π(s'))`` from TorchRL's value estimator
      (TD(0) by default), ``agg`` = mean or min,
      ``π(s') = clip(a'_base + r_φ(s', a'_base))``;
    * flow matching (``loss_flow``): ``mean_d (v_θ(s, x_t, t) − (a − x_0))²``
      per sample (mean over batch and action dims, as the reference),
      ``x_t = (1 − t) x_0 + t a``;
    * refiner (``loss_actor``): ``−λ mean_i Q_ψi(s, a_π) + sg(α) · mean_d Δ²``
      with ``Δ = r_φ(s, a_base)``, ``a_π = clip(a_base + Δ)``, and
      ``λ = 1 / sg(mean_b |mean_i Q_ψi(s, a_π)|)`` when ``normalize_q_loss`` (the
      absolute value of the ensemble mean, then the batch mean, as the reference);
    * dual ascent (``loss_alpha``): ``−log α · (sg(mean_d Δ²) − δ)``.

    ``mean Δ²`` is the per-dimension divergence, so δ is per action dimension
    (δ ≈ 0.1·IAV for manipulation, ≈ IAV for locomotion; see
    :mod:`deflow_trl.iav`). Each loss reaches only its own parameters: the
    critic's params are detached inside the refiner's loss, the ODE runs
    without grad, the target uses the target params.

    Args:
        actor: the :class:`~deflow_trl.actor.DeFlowActor` (its velocity field and
            refiner are trained by this loss). When it carries an action spec,
            dataset actions are read in the env's bounds and mapped to [-1, 1].
        critic: the Q ensemble, one of

            * a :class:`~deflow_trl.nets.CriticEnsemble` (the fast default), or
              any ``nn.Module`` called as ``critic(obs, action) → [E, *B]``;
            * a TensorDict module (e.g. ``torchrl.modules.ValueOperator``)
              reading the loss's observation and action keys and writing
              ``state_action_value`` (``[*B, 1]``): its parameters are expanded
              to ``num_qvalue_nets`` independently initialised members and
              called under ``vmap``, as TorchRL's SAC/TD3 losses do;
            * a list of such modules (one per member).

    Keyword Args:
        num_qvalue_nets (int, optional): members when ``critic`` is a single
            TensorDict module (default 2).
        discount (float): γ (0.99; 0.995 for long-horizon tasks). A shortcut for
            ``make_value_estimator(gamma=...)``, which overrides it.
        target_divergence (float): δ, the trust-region size (> 0).
        q_agg (str): ``"mean"`` or ``"min"`` over the target ensemble.
        normalize_q_loss (bool): scale the Q term by ``λ = 1 / mean_b |mean_i Q_i|`` (default True).
        init_log_alpha (float): initial ``log α`` (1.0 as the reference).
        freeze_flow (bool): keep the behaviour flow fixed (``loss_flow`` is
            reported but carries no gradient); used for online fine-tuning.
        reduction (str): ``"mean"`` (default), ``"sum"`` or ``"none"`` (each
            ``loss_*`` shaped like the input's batch; λ and the reported
            divergence are still batch statistics).
        use_prioritized_weights (bool or "auto"): weight the per-sample losses
            by the batch's ``priority_weight`` entry when present ("auto").
        check_inputs (bool): validate keys, shapes, finiteness and the action
            range on every call (a few cheap reductions; skipped under
            ``torch.compile``).
        bf16_solves (bool): run the no-grad ODE solve under bf16 autocast
            (GEMMs in bf16, the ODE state ``x`` and the returned actions fp32).
            Off by default; only worth it where bf16 is native (see
            :mod:`deflow_trl.hardware`). Gradients never flow through the solve.

    The loss reads ``observation``, ``action``, ``("next", "observation")``,
    ``("next", "reward")``, ``("next", "done")`` and ``("next", "terminated")``
    (rename with :meth:`set_keys`), with any leading batch shape, and, when
    present, the forward's noise under the reserved key ``"_noise"``
    (:data:`NOISE_KEY`, made by :meth:`draw_noise`; drawn from torch's global
    generator otherwise, with the same result for the same seed), and returns
    ``loss_qvalue``, ``loss_flow``, ``loss_actor``, ``loss_alpha`` and detached
    metrics; it writes the per-sample TD error under ``td_error`` in the input
    (for :class:`~torchrl.data.PrioritizedSampler`). Sum the ``loss_*``
    entries and step one optimiser over ``loss.parameters()``; update the
    target critic with ``torchrl.objectives.SoftUpdate(loss, tau=0.005)``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from deflow_trl import make_deflow
        >>> policy, loss = make_deflow(4, 2, hidden_sizes=(32, 32), target_divergence=1e-3)
        >>> loss.make_value_estimator(gamma=0.99)  # TorchRL's usual call (TD(0) by default)
        >>> B = 8
        >>> data = TensorDict({
        ...     "observation": torch.randn(B, 4), "action": torch.rand(B, 2) * 2 - 1,
        ...     "next": {"observation": torch.randn(B, 4), "reward": torch.randn(B, 1),
        ...              "done": torch.zeros(B, 1, dtype=torch.bool),
        ...              "terminated": torch.zeros(B, 1, dtype=torch.bool)},
        ... }, batch_size=[B])
        >>> out = loss(data)
        >>> sorted(k for k in out.keys() if k.startswith("loss_"))
        ['loss_actor', 'loss_alpha', 'loss_flow', 'loss_qvalue']
        >>> total = sum(out[k] for k in out.keys() if k.startswith("loss_"))
        >>> total.backward()
        >>> data["td_error"].shape  # priorities for a PrioritizedSampler
        torch.Size([8])

        A TorchRL ``ValueOperator`` as the critic, vmapped over two members:

        >>> from torchrl.modules import MLP, ValueOperator
        >>> from deflow_trl import DeFlowActor, DeFlowLoss, Refiner, VelocityField
        >>> q = ValueOperator(MLP(in_features=6, out_features=1, num_cells=[32]),
        ...                   in_keys=["observation", "action"])
        >>> actor = DeFlowActor(VelocityField(4, 2, (32,)), Refiner(4, 2, (32,)))
        >>> loss = DeFlowLoss(actor, q, num_qvalue_nets=2, reduction="none")
        >>> loss(data)["loss_qvalue"].shape
        torch.Size([8])
    """

    out_keys = [
        "loss_qvalue",
        "loss_flow",
        "loss_actor",
        "loss_alpha",
        "alpha",
        "divergence",
        "q_mean",
        "q_min",
        "q_max",
        "target_mean",
        "flow_bc_mse",
    ]
    # forward's random draws, in order: the ODE start noise at s and s' (one [2B, A] draw), then flow
    # matching's x_0 [B, A] and t [B, 1] (see draw_noise).
    NOISE_DRAWS = (("ode", "normal", 2, None), ("x0", "normal", 1, None), ("t", "uniform", 1, 1))

    def __init__(
        self,
        actor: DeFlowActor,
        critic: nn.Module | list[nn.Module],
        *,
        target_divergence: float = 1e-3,
        init_log_alpha: float = 1.0,
        **kwargs,
    ) -> None:
        if not target_divergence > 0:
            raise ValueError(f"target_divergence (δ) must be > 0, got {target_divergence!r}")
        super().__init__(actor, critic, **kwargs)
        self.log_alpha = nn.Parameter(torch.tensor(float(init_log_alpha)))
        self.register_buffer("target_divergence", torch.tensor(float(target_divergence)))

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        v = self.read_batch(tensordict)
        obs, action, next_obs = v["observation"], v["action"], v["next observation"]
        batch_shape, batch = tensordict.batch_size, obs.shape[0]
        weights = self._weights(tensordict)
        refiner = self.actor.refiner

        # One batched no-grad ODE solve gives the base actions at s (refiner
        # loss) and s' (critic target).
        noise = self._forward_noise(tensordict, batch, action)
        both_obs = torch.cat([obs, next_obs], dim=0)
        base_both = self.solve_flow_no_grad(both_obs, noise["ode"])
        base, next_base = base_both[:batch], base_both[batch:]

        # Critic: y from the target ensemble at π(s').
        with torch.no_grad():
            next_action = refine(refiner, next_obs, next_base)
        loss_qvalue, q, target = self.qvalue_loss_terms(tensordict, v, next_action)

        loss_flow = self._flow_matching(obs, action, noise["x0"], noise["t"])

        # Refiner inside the trust region.
        delta = refiner(obs, base)
        policy_action = (base + delta).clamp(-1.0, 1.0)
        q_pi = self.q_values(self._cached_detached_critic_params, obs, policy_action).mean(0)  # ensemble mean
        divergence_per_sample = delta.pow(2).mean(-1)
        divergence = divergence_per_sample.mean()
        alpha = self.log_alpha.exp().detach()
        # λ = 1 / sg(mean_b |mean_i Q_i|): |.| of the ensemble mean, then the batch mean.
        loss_actor = -self.q_normalizer(q_pi) * q_pi + alpha * divergence_per_sample

        # Dual ascent on log α: α grows while the divergence exceeds δ.
        loss_alpha = -self.log_alpha * (divergence_per_sample.detach() - self.target_divergence)

        q_detached = q.detach()
        return TensorDict(
            {
                "loss_qvalue": self._reduce(loss_qvalue, weights, batch_shape),
                "loss_flow": self._reduce(loss_flow, weights, batch_shape),
                "loss_actor": self._reduce(loss_actor, weights, batch_shape),
                "loss_alpha": self._reduce(loss_alpha, weights, batch_shape),
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


class LossCritic(nn.Module):
    """``(obs, action) → [E, *B]``: a loss's critic with its live parameters,
    for a policy that ranks actions by Q (best-of-N, iterative refinement).

    The parameters are the loss's own ``critic_params`` (registered here, so
    ``TensorDict.from_module(policy)``, ``state_dict()`` and ``.to()`` see
    them), never a stale copy.
    """

    def __init__(self, loss: FlowCriticLoss) -> None:
        super().__init__()
        self.params = loss.critic_params
        self.__dict__["_loss"] = loss  # not a submodule: no reference cycle in the module tree

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        batch_shape = obs.shape[: obs.dim() - len(self._loss.actor.observation_shape)]
        q = self._loss.q_values(self.params, obs.reshape(-1, *self._loss.actor.observation_shape),
                                action.reshape(-1, action.shape[-1]))
        return q.reshape(q.shape[0], *batch_shape)
