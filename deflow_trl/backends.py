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
than ``BF16_MIN_BATCH_CPU`` (8) run in fp32 (faster there, see below).

bf16 only where it pays (:mod:`deflow_trl.hardware`): ``auto-bf16`` keeps
bf16 only on hardware that multiplies it natively (CPUs with
``avx512_bf16``/``amx_bf16``, CUDA capability ≥ 8.0) and resolves to the
fp32 kind elsewhere; an explicit ``eager-bf16``/``compile-bf16``/
``triton-bf16`` there **runs as asked and warns once** (emulated bf16 is
correct but ≈ 4× slower than fp32 on an AVX2-only CPU; refusing would break
configs that are merely slow). ``tf32`` exists for
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

import logging
import os
import shutil
import types
from typing import Callable

import torch
from torch.nn import functional as F

from deflow_trl.compile_compat import unguard_tensorclass_memo

# The weight types live in deflow_trl.flow_weights, shared with kernels/ (no import circle).
from deflow_trl.flow_weights import FlowWeights
from deflow_trl.hardware import bf16_not_native_reason, warn_if_bf16_not_native
from deflow_trl.nets import _gelu

logger = logging.getLogger(__name__)

KINDS = ("eager", "compile", "triton", "auto")
PRECISIONS = ("fp32", "tf32", "bf16")
BACKENDS = tuple(
    k if p == "fp32" else f"{k}-{p}" for k in KINDS for p in PRECISIONS if p != "tf32" or k == "triton"
)
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


def available_backends(device: torch.device | str) -> list[str]:
    """The backend kinds that can run on ``device`` here (``auto`` always can: it picks among them).

    Examples:
        >>> "eager" in available_backends("cpu") and "auto" in available_backends("cpu")
        True
    """
    from deflow_trl.kernels import TRITON_AVAILABLE  # lazy: Triton is optional

    device = torch.device(device)
    kinds = ["eager"]
    if _compile_available(device):
        kinds.append("compile")
    if TRITON_AVAILABLE and (device.type == "cuda" or triton_interpreting()):
        kinds.append("triton")
    return kinds + ["auto"]


_logged: set[tuple[str, str]] = set()


def resolve_backend(name: str, device: torch.device | str) -> str:
    """The concrete backend (``"<kind>[-<precision>]"``, kind ≠ auto) that
    ``name`` means on ``device``.

    ``auto[-bf16]`` picks the kind (``triton`` on CUDA when importable, else
    ``compile`` when a compiler toolchain is found, else ``eager``) and keeps
    bf16 only where the device multiplies it natively
    (:func:`deflow_trl.hardware.native_bf16`); elsewhere ``auto-bf16`` resolves
    to the fp32 kind, with the reason in the once-per-(name, device) log line.
    An explicit ``<kind>-bf16`` on such hardware runs as asked and warns once
    (:func:`deflow_trl.hardware.warn_if_bf16_not_native`).

    Raises ``RuntimeError`` for ``triton`` when Triton cannot run there (no
    CUDA device, Triton not importable) unless ``TRITON_INTERPRET=1``.
    """
    kind, precision = parse_backend(name)
    device = torch.device(device)
    from deflow_trl.kernels import TRITON_AVAILABLE  # lazy: Triton is optional

    here = f"available on {device}: {', '.join(available_backends(device))}"
    if kind == "triton":
        if not TRITON_AVAILABLE:
            raise RuntimeError(f"backend {name!r} needs the triton package (pip install deflow_trl[triton]); {here}")
        if device.type != "cuda" and not triton_interpreting():
            raise RuntimeError(
                f"backend {name!r} runs on CUDA devices only (TRITON_INTERPRET=1: the slow CPU interpreter, for "
                f"tests); {here}"
            )
    if kind == "compile" and not _compile_available(device):
        raise RuntimeError(f"backend {name!r} needs a C++ compiler (g++, c++ or clang++) on PATH; {here}")
    if kind != "auto":
        if precision == "bf16":
            warn_if_bf16_not_native(device, what=f"sampler backend {name!r}")
        return name
    if device.type == "cuda" and TRITON_AVAILABLE:
        kind = "triton"
    elif _compile_available(device):
        kind = "compile"
    else:
        kind = "eager"
    why_not_bf16 = bf16_not_native_reason(device) if precision == "bf16" else None
    if why_not_bf16 is not None:
        precision = "fp32"
    resolved = kind if precision == "fp32" else f"{kind}-{precision}"
    if (name, str(device)) not in _logged:
        _logged.add((name, str(device)))
        note = f" (no bf16: {why_not_bf16})" if why_not_bf16 else ""
        logger.info("FlowSampler backend %r on %s resolves to %r%s", name, device, resolved, note)
    return resolved


# -- the functional units (same op order as solve_flow / refine) -------------
#: Batch sizes up to which a *compiled* CPU unit computes each fp32 layer as a multiply-and-sum that inductor
#: writes itself (one vectorised reduction loop per layer, the bias and the next GELU fused into it) instead of
#: calling the BLAS GEMM (≈ 21 µs per call at batch 1, ≈ 56 calls per action: the whole latency). Interleaved in
#: one process, 4×512 policy unit, K = 10, fp32, 2-core Zen 4 (docs/results.md, "Batch-1 sampler"): batch 1
#: 0.99 → 0.36 ms, 2: 2.22 → 0.62, 4: 2.25 → 1.04, 10: 3.35 → 2.90; batch 32: 7.3 → 11.3 (slower: not used).
CPU_GEMV_MAX_BATCH = 10


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, w, b)``; inside a compiled CPU unit at a small fp32 batch, the same sum written as
    ``(x[:, None, :] * w).sum(-1)`` (see :data:`CPU_GEMV_MAX_BATCH`; float32 re-association only)."""
    if (torch.compiler.is_compiling() and x.device.type == "cpu" and x.dtype == w.dtype == torch.float32
            and x.dim() == 2 and x.shape[0] <= CPU_GEMV_MAX_BATCH):
        y = (x.unsqueeze(-2) * w).sum(-1)
        return y if b is None else y + b
    return F.linear(x, w, b)


def _tail(h, hidden_w, hidden_b, out_w, out_b):
    """Hidden layers then the head, from the first pre-activation ``h`` (fp32).
    Hidden layers run in their weights' dtype; the head and result are fp32."""
    for w, b in zip(hidden_w, hidden_b):
        h = _linear(_gelu(h).to(w.dtype), w, b)
    return _linear(_gelu(h).to(out_w.dtype), out_w, out_b)


def ode(w: FlowWeights, obs, noise, num_steps: int, solver: str):
    """``solve_flow`` on :class:`FlowWeights` (fp32 state, clipped at the end)."""
    obs_proj = _linear(obs, w.w_obs, w.b0)
    vel = lambda x, t: _tail(obs_proj + _linear(x, w.w_x) + t * w.w_t, w.hidden_w, w.hidden_b, w.out_w, w.out_b)
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
    h = _linear(torch.cat([obs, a], dim=-1), w.r_w0, w.r_b0)
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

#: Added for the sampler's compiled units on CPU (not for the update step). ``cpp_wrapper``: inductor
#: writes the code that calls the unit's ≈ 100 kernels (K = 10 steps × 5 layers of GEMM + fused
#: epilogue) in C++ instead of Python. Interleaved A/B in one process, 4×512 policy unit, K = 10, fp32,
#: 2-core AMD EPYC Zen 4 (``docs/results.md``, "Sampler"): batch 1 1.34 → 1.25 ms (2 threads), 1.73 → 1.29 ms
#: (1 thread); batch 10 and 256 unchanged. The update step gained ≤ 4 % (within noise): not used there.
CPU_SAMPLER_OPTIONS = {"cpp_wrapper": True}


def compiled_unit(unit: str, precision: str, num_steps: int, solver: str, mode: str | None = None,
                  device_type: str = "cpu") -> Callable:
    """The ``torch.compile``-d ``unit`` (``"base"`` or ``"policy"``), created on
    first request and cached per (unit, precision, K, solver, mode, device type).

    ``mode=None`` is inductor's default; on a 2-core CPU
    ``"max-autotune-no-cudagraphs"`` measured no faster (see the benchmark).
    CUDA graphs (``reduce-overhead``) are not used: outputs would be
    overwritten by the next call (pytorch#138949). On CPU the unit also gets
    :data:`CPU_SAMPLER_OPTIONS` (a C++ wrapper: no Python between its kernels).
    """
    key = (unit, precision, num_steps, solver, mode, device_type)
    if key not in _compiled:
        inner = UNITS[unit]

        def run(w, obs, noise):
            return inner(w, obs, noise, num_steps, solver)

        fn = _fresh_function(run, f"deflow_{unit}_{precision}_{solver}{num_steps}_{device_type}")
        options = None
        if mode is None:  # torch.compile takes mode or options
            options = {**CPU_INDUCTOR_OPTIONS, **(CPU_SAMPLER_OPTIONS if device_type == "cpu" else {})}
        unguard_tensorclass_memo()  # tensordict's class memo must not become a guard (compile_compat)
        _compiled[key] = torch.compile(fn, fullgraph=True, dynamic=None, mode=mode, options=options)
    return _compiled[key]
