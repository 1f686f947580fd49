"""Backends of the ODE sampler: ``eager``, ``compile``, ``triton`` and ``auto``.

A backend computes exactly the function of :func:`deflow_trl.sampler.solve_flow`
(and, for the policy, one refinement after it); only *how* differs. Names are
``"<kind>[-<precision>]"``:

=================  =====================================================  ==========
kind               what runs                                              devices
=================  =====================================================  ==========
``eager``          plain PyTorch ops (``solve_flow`` itself in fp32)      any
``compile``        ``torch.compile`` of the **whole** fixed-length loop   any with a
                   plus the refinement as one graph (the ODE alone for    C++/CUDA
                   ``base_actions``)                                      toolchain
``triton``         fused Triton kernels (:mod:`deflow_trl.kernels`)       CUDA (or
                                                                          CPU under
                                                                          ``TRITON_INTERPRET=1``)
``auto``           ``triton`` on CUDA when importable, else ``compile``
                   when a compiler toolchain is found, else ``eager``;
                   the choice is logged once per (name, device)
=================  =====================================================  ==========

precision: ``fp32`` (default, no suffix), ``bf16`` (``eager-bf16``,
``compile-bf16``, ``triton-bf16``, ``auto-bf16``): the 512×512 hidden layers
run with bf16 weights and activations and fp32 accumulation; the first layers,
the output layers and the ODE state ``x`` stay fp32. On CPU, batches smaller
than ``BF16_MIN_BATCH_CPU`` (8) run in fp32 (faster there, see below). ``tf32`` exists for
``triton`` only (``tl.dot`` in tf32); for ``compile`` on CUDA tf32 follows
torch's global ``torch.backends.cuda.matmul`` setting.

Tolerances against fp32 eager (what the tests assert): fp32 backends ≤ 1e-5
max relative error (CPU; inductor may re-associate); tf32 ≤ 5e-3 and bf16
≤ 5e-2 max absolute action error on random Xavier networks (the bf16 error
of a trained network is measured by ``benchmarks/sampler_throughput.py``).

Live weights: every call reads the modules' current parameters. Compiled
units take the parameters as *inputs* (nothing is captured or frozen, so an
optimiser step or ``load_state_dict`` is seen by the next call). Reduced
precision copies (bf16 / stacked Triton weights) are cached per sampler and
re-made when any parameter's ``data_ptr`` or autograd version counter
changes, which every in-place update through the parameter itself bumps
(``optimizer.step()``, ``copy_``, ``load_state_dict``). Writes through
``param.data`` do not bump the counter: call ``FlowSampler.clear_cache()``
after those.

Recompiles: the compiled unit is created lazily on first use and cached per
(unit, kind, precision, solver, K), one code object each so that dynamo's
recompile budget is per unit. Dynamo specialises on the batch size the first
time, then marks it dynamic on the second distinct size, and batch 1 always
gets its own graph: expect up to three compiles (≈ 20 s cold on a 2-core CPU,
≈ 2 s from a warm ``TORCHINDUCTOR_CACHE_DIR``), then none. This is why
``eager`` stays the library default; training and evaluation pass
``backend="auto"`` (or ``"compile"``).
"""
from __future__ import annotations

import functools
import logging
import os
import shutil
import types
from typing import Callable, NamedTuple

import torch
from torch.nn import functional as F

logger = logging.getLogger(__name__)

KINDS = ("eager", "compile", "triton", "auto")
PRECISIONS = ("fp32", "tf32", "bf16")
BACKENDS = tuple(
    k if p == "fp32" else f"{k}-{p}" for k in KINDS for p in PRECISIONS if p != "tf32" or k == "triton"
)
_DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16}
# Below this batch a CPU "bf16" backend runs its fp32 unit: a GEMV is memory
# bound and oneDNN's bf16 GEMV is slower than MKL's fp32 one (measured 25 µs vs
# 13 µs for 1×512×512 on the 2-core EPYC; bf16 wins from batch 8 on).
BF16_MIN_BATCH_CPU = 8


def parse_backend(name: str) -> tuple[str, str]:
    """``"compile-bf16"`` → ``("compile", "bf16")``; raises on unknown names."""
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"unknown sampler backend {name!r}; choose one of {BACKENDS}")
    kind, _, precision = name.partition("-")
    return kind, precision or "fp32"


def triton_interpreting() -> bool:
    """True when Triton runs in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _compile_available(device: torch.device) -> bool:
    if device.type == "cuda":
        return True
    return any(shutil.which(c) for c in ("g++", "c++", "clang++"))


_logged: set[tuple[str, str]] = set()


def resolve_backend(name: str, device: torch.device | str) -> str:
    """The concrete backend (``"<kind>[-<precision>]"``, kind ≠ auto) that
    ``name`` means on ``device``.

    Raises ``RuntimeError`` for ``triton`` when Triton cannot run there (no
    CUDA device, Triton not importable) unless ``TRITON_INTERPRET=1``.
    """
    kind, precision = parse_backend(name)
    device = torch.device(device)
    from deflow_trl.kernels import TRITON_AVAILABLE

    if kind == "triton":
        if not TRITON_AVAILABLE:
            raise RuntimeError("backend 'triton' needs the triton package (pip install deflow_trl[triton])")
        if device.type != "cuda" and not triton_interpreting():
            raise RuntimeError(
                f"backend 'triton' runs on CUDA devices only (got {device}); use 'compile' or 'auto', "
                "or set TRITON_INTERPRET=1 (slow CPU interpreter, for tests)"
            )
    if kind != "auto":
        return name
    if device.type == "cuda" and TRITON_AVAILABLE:
        kind = "triton"
    elif _compile_available(device):
        kind = "compile"
    else:
        kind = "eager"
    resolved = kind if precision == "fp32" else f"{kind}-{precision}"
    if (name, str(device)) not in _logged:
        _logged.add((name, str(device)))
        logger.info("FlowSampler backend %r on %s resolves to %r", name, device, resolved)
    return resolved


# -- the weights, read live ---------------------------------------------------
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
    dtype = _DTYPES[precision]
    if dtype == velocity.mlp.linears[0].weight.dtype:
        return _split(velocity, refiner, lambda t: t)
    make = functools.partial(_split, velocity, refiner, lambda t: t.detach().to(dtype))
    if cache is None:
        return make()
    return cache.get(live_parameters(velocity, refiner), make)


# -- the functional units (same op order as solve_flow / refine) -------------
def _gelu(h: torch.Tensor) -> torch.Tensor:
    return F.gelu(h, approximate="tanh")


def _tail(h, hidden_w, hidden_b, out_w, out_b):
    """Hidden layers then the head, from the first pre-activation ``h`` (fp32).
    Hidden layers run in their weights' dtype; the head and result are fp32."""
    for w, b in zip(hidden_w, hidden_b):
        h = F.linear(_gelu(h).to(w.dtype), w, b)
    return F.linear(_gelu(h).to(out_w.dtype), out_w, out_b)


def ode(w: FlowWeights, obs, noise, num_steps: int, solver: str):
    """``solve_flow`` on :class:`FlowWeights` (fp32 state, clipped at the end)."""
    obs_proj = F.linear(obs, w.w_obs, w.b0)
    vel = lambda x, t: _tail(obs_proj + F.linear(x, w.w_x) + t * w.w_t, w.hidden_w, w.hidden_b, w.out_w, w.out_b)
    x = noise
    dt = 1.0 / num_steps
    for k in range(num_steps):
        t = k * dt
        if solver == "euler":
            x = x + dt * vel(x, t)
        else:
            x_mid = x + (0.5 * dt) * vel(x, t)
            x = x + dt * vel(x_mid, t + 0.5 * dt)
    return x.clamp(-1.0, 1.0)


def policy(w: FlowWeights, obs, noise, num_steps: int, solver: str):
    """ODE then one refinement: ``clip(a + r(s, a), -1, 1)``."""
    a = ode(w, obs, noise, num_steps, solver)
    h = F.linear(torch.cat([obs, a], dim=-1), w.r_w0, w.r_b0)
    return (a + _tail(h, w.r_hidden_w, w.r_hidden_b, w.r_out_w, w.r_out_b)).clamp(-1.0, 1.0)


UNITS = {"base": ode, "policy": policy}
_compiled: dict[tuple, Callable] = {}


def _fresh_function(fn: Callable, name: str) -> Callable:
    """A copy of ``fn`` with its own code object. Dynamo caches graphs (and
    counts recompiles) per code object, so each compiled unit gets its own
    budget instead of sharing one across K, solver, precision and unit."""
    code = fn.__code__.replace(co_name=name, co_qualname=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


#: Inductor options of every compiled unit here (the update step's
#: ``compile_options["options"]`` override them). ``cpp.enable_tiling_heuristics=False``: the C++ backend's
#: heuristic leaves a pointwise kernel unvectorised when it has a strided load
#: and few ops. The ODE's first layer (``obs_proj + x W_x + t·w_t`` then GELU)
#: reads ``w_t``, a column of the first weight (stride = its input width), and
#: the scalar kernel (one ``std::tanh`` per element) cost ≈ 0.6 ms per Euler
#: step at width 64 (1 thread) -- more than the whole eager step's GEMMs.
#: Ignored by non-C++ backends (CUDA/Triton).
CPU_INDUCTOR_OPTIONS = {"cpp.enable_tiling_heuristics": False}


def compiled_unit(unit: str, precision: str, num_steps: int, solver: str, mode: str | None = None) -> Callable:
    """The ``torch.compile``-d ``unit`` (``"base"`` or ``"policy"``), created on
    first request and cached per (unit, precision, K, solver, mode).

    ``mode=None`` is inductor's default; on a 2-core CPU
    ``"max-autotune-no-cudagraphs"`` measured no faster (see the benchmark).
    CUDA graphs (``reduce-overhead``) are not used: outputs would be
    overwritten by the next call (pytorch#138949).
    """
    key = (unit, precision, num_steps, solver, mode)
    if key not in _compiled:
        inner = UNITS[unit]

        def run(w, obs, noise):
            return inner(w, obs, noise, num_steps, solver)

        fn = _fresh_function(run, f"deflow_{unit}_{precision}_{solver}{num_steps}")
        options = None if mode is not None else CPU_INDUCTOR_OPTIONS  # torch.compile takes mode or options
        _compiled[key] = torch.compile(fn, fullgraph=True, dynamic=None, mode=mode, options=options)
    return _compiled[key]
