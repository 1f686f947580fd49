"""The weights an ODE sampler reads, in the form its functional units take.

Shared by :mod:`deflow_trl.backends` (the eager / compiled units) and
:mod:`deflow_trl.kernels` (the Triton kernels): both import from here and
neither from the other, so data flows one way (nets → weights → backends /
kernels → sampler).

* :class:`FlowWeights`: the velocity field's and refiner's tensors, the first
  velocity layer split into its observation / action / time columns.
* :func:`flow_weights`: those tensors read *live* from the modules, hidden
  layers cast to a precision's dtype (the cast copy cached).
* :class:`WeightCache`: re-makes a derived copy only when a parameter changed
  (key: every parameter's ``(data_ptr, _version)``; ``optimizer.step()``,
  ``copy_`` and ``load_state_dict`` bump the version, writes through
  ``param.data`` do not).

Example:
    >>> import torch
    >>> from deflow_trl.nets import VelocityField, Refiner
    >>> from deflow_trl.flow_weights import flow_weights
    >>> v, r = VelocityField(4, 2, (16, 16)), Refiner(4, 2, (16, 16))
    >>> w = flow_weights(v, r, "bf16")
    >>> w.hidden_w[0].dtype, w.out_w.dtype
    (torch.bfloat16, torch.float32)
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import torch

#: The dtype of the hidden layers per precision name (tf32 is an fp32 dtype
#: with a different matmul mode).
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}


class FlowWeights(NamedTuple):
    """The tensors a sampler needs, in the form the functional units take.

    Velocity: ``w_obs, w_x, w_t, b0`` (split first layer, fp32), then the hidden
    layers ``hidden_w``/``hidden_b`` (compute dtype) and the head ``out_w``,
    ``out_b`` (fp32). Refiner: ``r_w0, r_b0`` (first layer on ``concat(s, a)``,
    fp32), ``r_hidden_w``/``r_hidden_b`` (compute dtype), ``r_out_w, r_out_b``.
    """

    w_obs: torch.Tensor
    w_x: torch.Tensor
    w_t: torch.Tensor
    b0: torch.Tensor
    hidden_w: tuple[torch.Tensor, ...]
    hidden_b: tuple[torch.Tensor, ...]
    out_w: torch.Tensor
    out_b: torch.Tensor
    r_w0: torch.Tensor
    r_b0: torch.Tensor
    r_hidden_w: tuple[torch.Tensor, ...]
    r_hidden_b: tuple[torch.Tensor, ...]
    r_out_w: torch.Tensor
    r_out_b: torch.Tensor


def live_parameters(velocity, refiner) -> list[torch.Tensor]:
    """Every parameter the sampler reads, in a fixed order."""
    return [p for m in (velocity.mlp.linears, refiner.mlp.linears) for lin in m for p in (lin.weight, lin.bias)]


def _split(velocity, refiner, cast: Callable[[torch.Tensor], torch.Tensor]) -> FlowWeights:
    v, r = velocity.mlp.linears, refiner.mlp.linears
    w_obs, w_x, w_t = velocity.first_layer_weights()
    return FlowWeights(
        w_obs, w_x, w_t, v[0].bias,
        tuple(cast(lin.weight) for lin in v[1:-1]), tuple(cast(lin.bias) for lin in v[1:-1]),
        v[-1].weight, v[-1].bias,
        r[0].weight, r[0].bias,
        tuple(cast(lin.weight) for lin in r[1:-1]), tuple(cast(lin.bias) for lin in r[1:-1]),
        r[-1].weight, r[-1].bias,
    )


class WeightCache:
    """Derived weights (a dtype cast, a stacking) re-made only when a parameter
    changed: the key is every parameter's ``(data_ptr, _version)``."""

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value = None

    def clear(self) -> None:
        self._key, self._value = None, None

    def get(self, params: list[torch.Tensor], make: Callable[[], object]):
        key = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in params)
        if key != self._key:
            self._value, self._key = make(), key
        return self._value


def flow_weights(velocity, refiner, precision: str, cache: WeightCache | None = None) -> FlowWeights:
    """The live weights, with hidden layers in the precision's dtype (cached)."""
    if precision not in DTYPES:
        raise ValueError(f"unknown precision {precision!r}; choose one of {tuple(DTYPES)}")
    dtype = DTYPES[precision]
    if dtype == velocity.mlp.linears[0].weight.dtype:
        return _split(velocity, refiner, lambda t: t)
    make = functools.partial(_split, velocity, refiner, lambda t: t.detach().to(dtype))
    if cache is None:
        return make()
    return cache.get(live_parameters(velocity, refiner), make)
