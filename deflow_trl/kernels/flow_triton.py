"""Fused Triton kernels for DeFlow's ODE sampler.

What it is for
    Sampling an action integrates ``dx/dt = v(s, x, t)`` with K = 10 Euler
    steps of a 4×512 MLP, then applies the refiner once. At small batch on
    CUDA that is launch-bound: eager PyTorch issues ~10 kernels per velocity
    evaluation (≈ 110 per action). These kernels cut it to 6 per evaluation
    (per-layer path) or to **one launch for the whole sample** (whole-loop
    path). They compute the function of :func:`deflow_trl.sampler.solve_flow`
    and :func:`deflow_trl.sampler.refine`, with the same exact savings: the
    observation's share of the first layer is computed once, and time enters
    as a per-step bias ``t · w_t``.

When each path is taken (:func:`triton_sample`)
    * **whole-loop** (:func:`flow_loop`): one program per ``BLOCK_M`` batch
      rows keeps the state ``x`` and the activations in registers across all
      K steps (and the refinement), streaming the weights from L2 every step.
      Taken for ``solver="euler"`` when every hidden layer of both networks
      has the same width ``H`` with ``next_pow2(H) <= WHOLE_LOOP_MAX_HIDDEN``
      (128), because a program holds one ``[H, H]`` weight tile and a
      ``[BLOCK_M, H]`` activation tile at once: at 128 (fp32) that is 64 KiB
      of shared memory, the most that still leaves room for two pipeline
      stages on an A100/H100.
    * **per-layer** (:func:`fused_linear`): otherwise (the reference 4×512,
      ``midpoint``). One kernel per layer: linear + bias + GELU(tanh) fused;
      the first layer adds the hoisted observation projection and ``t · w_t``
      in its epilogue; the output layer fuses the Euler update
      ``x + dt · v`` (and the final clip) into its epilogue, as does the
      refiner's head (``clip(a + Δ)``).

Precision
    ``fp32`` (``tl.dot`` in IEEE fp32), ``tf32`` (``tl.dot`` in tf32) and
    ``bf16`` (bf16 hidden weights and activations). Accumulation is fp32
    everywhere; the ODE state, the first layers and the heads stay fp32.

Block sizes
    :func:`fused_linear` is autotuned over a curated list of ten
    ``BLOCK_M × BLOCK_N × BLOCK_K``/warps/stages tiles (``LINEAR_TILES``:
    GEMV-like 16-row tiles for small batches, 64–128-row GEMM tiles for
    large ones), keyed on ``(next_pow2(M), N, K)`` so that a new batch size
    in the same power-of-two bucket does not re-tune. A full grid (72
    configs) would cost a minute of compiles per layer shape on a cold
    cache. Configs wider than the problem are pruned before benchmarking
    (``_prune_linear``): a batch of 1 never tries ``BLOCK_M = 128``, a head
    of 5 outputs never tries ``BLOCK_N = 128``. The whole-loop kernel tunes
    ``BLOCK_M`` (16–64; 16 is ``tl.dot``'s minimum) the same way. Under
    ``TRITON_INTERPRET=1``, or with ``DEFLOW_TRITON_AUTOTUNE=0`` (correctness
    tests on a GPU, where compile time matters and speed does not), one
    config per kernel is used and nothing is benchmarked. Both variables are
    read when this module is first imported.

Known limits
    CUDA only in production; runs on CPU tensors only under the interpreter
    (tests, small sizes). Inputs are 2-D ``[B, dim]`` fp32. The whole-loop
    path needs uniform hidden widths ≤ 128. Not timed on a GPU yet (no GPU
    was available when this was written): the speed claims above are about
    launches, not measured throughput. ``benchmarks/gpu_check.py`` is the
    one command that validates and times them on a CUDA machine.

Availability
    :data:`deflow_trl.kernels.TRITON_AVAILABLE`; the sampler's ``auto``
    backend picks ``triton`` only on CUDA devices when it is True.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from deflow_trl.flow_weights import FlowWeights, WeightCache, flow_weights, live_parameters

WHOLE_LOOP_MAX_HIDDEN = 128
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
#: Autotuning on (default) or off (``DEFLOW_TRITON_AUTOTUNE=0``: one config per kernel).
AUTOTUNE = not _INTERPRET and os.environ.get("DEFLOW_TRITON_AUTOTUNE", "1") != "0"
INTERPRET: tl.constexpr = tl.constexpr(_INTERPRET)  # read by _dot at compile time
_DOT_PRECISION = {"fp32": "ieee", "tf32": "tf32", "bf16": "ieee"}


def _next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


@triton.jit
def _gelu_tanh(x):
    # 0.5 x (1 + tanh(√(2/π)(x + 0.044715 x³))), tanh(u) = 1 - 2 / (exp(2u) + 1)
    # (saturates correctly at ±inf; no tl.tanh dependency across backends).
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    return 0.5 * x * (2.0 - 2.0 / (tl.exp(2.0 * u) + 1.0))


@triton.jit
def _dot(a, b, acc, DOT_PRECISION: tl.constexpr):
    """``acc + a @ b`` with ``a`` rounded to ``b``'s dtype, fp32 accumulation.
    The interpreter's ``tl.dot`` multiplies bf16 as raw uint16, so there both
    operands are widened to fp32 first (exact: bf16 products fit fp32)."""
    a = a.to(b.dtype)
    if INTERPRET:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


# -- per-layer path -----------------------------------------------------------
#: (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) tried by the autotuner:
#: 16-row tiles for GEMV-like small batches (the weights stream once per
#: 16 rows), 32-128-row tiles for GEMMs. Pruned per problem by _prune_linear.
LINEAR_TILES = (
    (16, 32, 64, 4, 3), (16, 64, 64, 4, 3), (16, 128, 64, 4, 3),
    (32, 64, 64, 4, 3), (32, 128, 32, 4, 3),
    (64, 64, 32, 4, 3), (64, 128, 32, 4, 4), (128, 64, 32, 4, 4), (128, 128, 32, 8, 3), (128, 128, 64, 8, 3),
)


def _linear_configs():
    if not AUTOTUNE:  # interpreter / DEFLOW_TRITON_AUTOTUNE=0: one small config, nothing benchmarked
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=4)]
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
            for bm, bn, bk, w, s in LINEAR_TILES]


def _prune_linear(configs, named_args, **kwargs):
    m, n, k = named_args["M_BUCKET"], named_args["N"], named_args["K"]
    keep = [
        c for c in configs
        if c.kwargs["BLOCK_M"] <= max(16, m)
        and c.kwargs["BLOCK_N"] <= max(32, _next_pow2(n))
        and c.kwargs["BLOCK_K"] <= max(32, _next_pow2(k))
    ]
    return keep or configs[:1]


@triton.autotune(
    configs=_linear_configs(),
    key=["M_BUCKET", "N", "K", "HAS_RES", "EULER", "GELU"],
    prune_configs_by={"early_config_prune": _prune_linear},
)
@triton.jit
def _fused_linear_kernel(
    X, W, B, R, S, Y,
    M, N, K, M_BUCKET,
    sxm, sxk, swn, swk, sb, srm, srn, ssm, ssn, sym, syn,
    bias_scale, step,
    HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, EULER: tl.constexpr,
    CLIP: tl.constexpr, GELU: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """``Y = epilogue(X @ W^T)``: ``+ bias_scale·B``, ``+ R``, then either
    ``S + step·(·)`` [clipped] (EULER) or GELU."""
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        x = tl.load(X + rm[:, None] * sxm + kk[None, :] * sxk, mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
        w = tl.load(W + kk[:, None] * swk + rn[None, :] * swn, mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)
        acc = _dot(x, w, acc, DOT_PRECISION)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    if HAS_BIAS:
        acc += bias_scale * tl.load(B + rn * sb, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    if HAS_RES:
        acc += tl.load(R + rm[:, None] * srm + rn[None, :] * srn, mask=mask, other=0.0).to(tl.float32)
    if EULER:
        acc = tl.load(S + rm[:, None] * ssm + rn[None, :] * ssn, mask=mask, other=0.0).to(tl.float32) + step * acc
        if CLIP:
            acc = tl.minimum(tl.maximum(acc, -1.0), 1.0)
    if GELU:
        acc = _gelu_tanh(acc)
    tl.store(Y + rm[:, None] * sym + rn[None, :] * syn, acc.to(Y.dtype.element_ty), mask=mask)


def fused_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    bias_scale: float = 1.0,
    residual: torch.Tensor | None = None,
    state: torch.Tensor | None = None,
    step: float = 1.0,
    clip: bool = False,
    gelu: bool = False,
    out_dtype: torch.dtype = torch.float32,
    precision: str = "fp32",
) -> torch.Tensor:
    """One fused layer, ``x [M, K]``, ``weight [N, K]`` (any strides):

    ``y = gelu(x Wᵀ + bias_scale·bias + residual)`` when ``gelu``, or the
    Euler epilogue ``y = clip(state + step·(x Wᵀ + bias))`` when ``state`` is
    given. Accumulates in fp32; ``x`` is cast to the weight's dtype.
    """
    m, k = x.shape
    n = weight.shape[0]
    y = torch.empty(m, n, device=x.device, dtype=out_dtype)
    dummy = y
    r = residual if residual is not None else dummy
    s = state if state is not None else dummy
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]))
    _fused_linear_kernel[grid](
        x, weight, bias if bias is not None else dummy, r, s, y,
        m, n, k, min(_next_pow2(m), 4096),
        x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), bias.stride(0) if bias is not None else 0,
        r.stride(0), r.stride(1), s.stride(0), s.stride(1), y.stride(0), y.stride(1),
        float(bias_scale), float(step),
        HAS_BIAS=bias is not None, HAS_RES=residual is not None, EULER=state is not None,
        CLIP=clip, GELU=gelu, DOT_PRECISION=_DOT_PRECISION[precision],
    )
    return y


def _mlp_tail(a, hidden_w, hidden_b, out_w, out_b, state, step, clip, precision):
    """Hidden layers (GELU fused) then the head with the Euler epilogue."""
    for w, b in zip(hidden_w, hidden_b):
        a = fused_linear(a, w, b, gelu=True, out_dtype=w.dtype, precision=precision)
    return fused_linear(a, out_w, out_b, state=state, step=step, clip=clip, precision=precision)


def per_layer(unit: str, w: FlowWeights, obs, noise, num_steps: int, solver: str, precision: str):
    """``solve_flow`` (and ``refine``) with one fused kernel per layer."""
    act_dtype = w.hidden_w[0].dtype if w.hidden_w else torch.float32
    proj = fused_linear(obs, w.w_obs, w.b0, precision=precision)

    def euler(x_in, t, x, step, clip):  # x + step · v(s, x_in, t)
        a = fused_linear(x_in, w.w_x, w.w_t, bias_scale=t, residual=proj, gelu=True, out_dtype=act_dtype,
                         precision=precision)
        return _mlp_tail(a, w.hidden_w, w.hidden_b, w.out_w, w.out_b, x, step, clip, precision)

    x, dt = noise.float(), 1.0 / num_steps
    for k in range(num_steps):
        t, last = k * dt, k == num_steps - 1
        if solver == "euler":
            x = euler(x, t, x, dt, last)
        else:
            x = euler(euler(x, t, x, 0.5 * dt, False), t + 0.5 * dt, x, dt, last)
    if unit == "base":
        return x
    r_act = w.r_hidden_w[0].dtype if w.r_hidden_w else torch.float32
    a = fused_linear(torch.cat([obs, x], dim=-1), w.r_w0, w.r_b0, gelu=True, out_dtype=r_act, precision=precision)
    return _mlp_tail(a, w.r_hidden_w, w.r_hidden_b, w.r_out_w, w.r_out_b, x, 1.0, True, precision)


# -- whole-loop path ----------------------------------------------------------
def _loop_configs():
    if not AUTOTUNE:
        return [triton.Config({"BLOCK_M": 16}, num_warps=4)]
    return [triton.Config({"BLOCK_M": bm}, num_warps=w, num_stages=2) for bm in (16, 32, 64) for w in (4, 8)]


def _prune_loop(configs, named_args, **kwargs):
    keep = [c for c in configs if c.kwargs["BLOCK_M"] <= max(16, named_args["M_BUCKET"])]
    return keep or configs[:1]


@triton.jit
def _load_t(W, sn, sk, N, K, N_PAD: tl.constexpr, K_PAD: tl.constexpr):
    """``W[N, K]`` (strides ``sn, sk``) loaded transposed as a ``[K_PAD, N_PAD]`` tile."""
    rk = tl.arange(0, K_PAD)
    rn = tl.arange(0, N_PAD)
    return tl.load(W + rk[:, None] * sk + rn[None, :] * sn, mask=(rk[:, None] < K) & (rn[None, :] < N), other=0.0)


@triton.jit
def _load_vec(B, N, N_PAD: tl.constexpr):
    rn = tl.arange(0, N_PAD)
    return tl.load(B + rn, mask=rn < N, other=0.0).to(tl.float32)


@triton.jit
def _hidden_and_head(a, WH, BH, WO, BO, H, D, NUM_HIDDEN: tl.constexpr, H_PAD: tl.constexpr,
                     D_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """From the first post-activation ``a [BM, H_PAD]`` to the head's output."""
    for layer in tl.static_range(NUM_HIDDEN):
        w = _load_t(WH + layer * H * H, H, 1, H, H, H_PAD, H_PAD)
        a = _gelu_tanh(_dot(a, w, None, DOT_PRECISION) + _load_vec(BH + layer * H, H, H_PAD)[None, :])
    wo = _load_t(WO, H, 1, D, H, D_PAD, H_PAD)
    return _dot(a, wo, None, DOT_PRECISION) + _load_vec(BO, D, D_PAD)[None, :]


@triton.autotune(configs=_loop_configs(), key=["M_BUCKET", "H", "S", "D"],
                 prune_configs_by={"early_config_prune": _prune_loop})
@triton.jit
def _flow_loop_kernel(
    OBS, NOISE, OUT,
    W0, B0, WH, BH, WO, BO,
    RW0, RB0, RWH, RBH, RWO, RBO,
    M, S, D, H, M_BUCKET,
    NUM_STEPS: tl.constexpr, NUM_HIDDEN: tl.constexpr, REFINE: tl.constexpr,
    S_PAD: tl.constexpr, D_PAD: tl.constexpr, H_PAD: tl.constexpr,
    DOT_PRECISION: tl.constexpr, BLOCK_M: tl.constexpr,
):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rs = tl.arange(0, S_PAD)
    rd = tl.arange(0, D_PAD)
    row = rm[:, None] < M
    obs = tl.load(OBS + rm[:, None] * S + rs[None, :], mask=row & (rs[None, :] < S), other=0.0)
    x = tl.load(NOISE + rm[:, None] * D + rd[None, :], mask=row & (rd[None, :] < D), other=0.0)
    # First layer W0 = [W_obs | W_x | w_t], row stride S + D + 1; the obs part is hoisted.
    in0 = S + D + 1
    proj = tl.dot(obs, _load_t(W0, in0, 1, H, S, H_PAD, S_PAD), input_precision=DOT_PRECISION)
    proj += _load_vec(B0, H, H_PAD)[None, :]
    w_t = _load_t(W0 + S + D, in0, 1, H, 1, H_PAD, 1)  # [1, H_PAD]
    dt = 1.0 / NUM_STEPS
    for k in range(NUM_STEPS):
        w_x = _load_t(W0 + S, in0, 1, H, D, H_PAD, D_PAD)
        h = proj + tl.dot(x, w_x, input_precision=DOT_PRECISION) + (k * dt) * w_t
        v = _hidden_and_head(_gelu_tanh(h), WH, BH, WO, BO, H, D, NUM_HIDDEN, H_PAD, D_PAD, DOT_PRECISION)
        x = x + dt * v
    x = tl.minimum(tl.maximum(x, -1.0), 1.0)
    if REFINE:  # clip(a + r(s, a)), first layer on concat(s, a) with row stride S + D
        h = tl.dot(obs, _load_t(RW0, S + D, 1, H, S, H_PAD, S_PAD), input_precision=DOT_PRECISION)
        h += tl.dot(x, _load_t(RW0 + S, S + D, 1, H, D, H_PAD, D_PAD), input_precision=DOT_PRECISION)
        h += _load_vec(RB0, H, H_PAD)[None, :]
        delta = _hidden_and_head(_gelu_tanh(h), RWH, RBH, RWO, RBO, H, D, NUM_HIDDEN, H_PAD, D_PAD, DOT_PRECISION)
        x = tl.minimum(tl.maximum(x + delta, -1.0), 1.0)
    tl.store(OUT + rm[:, None] * D + rd[None, :], x, mask=row & (rd[None, :] < D))


def whole_loop_eligible(velocity, refiner, solver: str) -> bool:
    """Whether :func:`flow_loop` can run these networks (see the module docstring)."""
    widths = {lin.out_features for m in (velocity, refiner) for lin in m.mlp.linears[:-1]}
    return solver == "euler" and len(widths) == 1 and _next_pow2(widths.pop()) <= WHOLE_LOOP_MAX_HIDDEN


def _stack(w: FlowWeights) -> tuple[torch.Tensor, ...]:
    """Hidden layers stacked ``[L, H, H]`` / ``[L, H]`` (one pointer each)."""
    def stk(ts, like):
        return torch.stack(ts).contiguous() if ts else like.new_zeros(1)
    return (stk(w.hidden_w, w.out_w), stk(w.hidden_b, w.out_b), stk(w.r_hidden_w, w.out_w), stk(w.r_hidden_b, w.out_b))


def flow_loop(unit: str, w: FlowWeights, stacks, obs, noise, num_steps: int, precision: str) -> torch.Tensor:
    """The whole sample (K Euler steps [+ refinement]) in one launch."""
    m, s = obs.shape
    d, h = w.w_x.shape[1], w.w_x.shape[0]
    wh, bh, rwh, rbh = stacks
    w0 = w.w_obs.as_strided((h, s + d + 1), (s + d + 1, 1))  # the full first layer, by its slice
    out = torch.empty(m, d, device=obs.device, dtype=torch.float32)
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]),)
    _flow_loop_kernel[grid](
        obs.contiguous(), noise.float().contiguous(), out,
        w0, w.b0, wh, bh, w.out_w.contiguous(), w.out_b,
        w.r_w0.contiguous(), w.r_b0, rwh, rbh, w.r_out_w.contiguous(), w.r_out_b,
        m, s, d, h, min(_next_pow2(m), 4096),
        NUM_STEPS=num_steps, NUM_HIDDEN=len(w.hidden_w), REFINE=unit == "policy",
        S_PAD=max(16, _next_pow2(s)), D_PAD=max(16, _next_pow2(d)), H_PAD=max(16, _next_pow2(h)),
        DOT_PRECISION=_DOT_PRECISION[precision],
    )
    return out


# -- dispatch -----------------------------------------------------------------
def triton_sample(unit, velocity, refiner, obs, noise, num_steps: int, solver: str, precision: str,
                  cache: WeightCache | None = None) -> torch.Tensor:
    """``FlowSampler``'s triton backend: ``unit`` is ``"base"`` (ODE only) or
    ``"policy"`` (ODE + refinement). Picks the whole-loop kernel when eligible."""
    if obs.device.type != "cuda" and not _INTERPRET:
        raise RuntimeError(f"triton kernels need CUDA tensors (got {obs.device}); set TRITON_INTERPRET=1 for CPU")
    if obs.dim() != 2 or obs.dtype != torch.float32:
        raise ValueError(f"triton backend takes 2-D fp32 observations, got {tuple(obs.shape)} {obs.dtype}")
    obs = obs.contiguous()
    if whole_loop_eligible(velocity, refiner, solver):
        def make():
            w = flow_weights(velocity, refiner, precision)
            return w, _stack(w)
        w, stacks = cache.get(live_parameters(velocity, refiner), make) if cache is not None else make()
        return flow_loop(unit, w, stacks, obs, noise, num_steps, precision)
    w = flow_weights(velocity, refiner, precision, cache)
    return per_layer(unit, w, obs, noise, num_steps, solver, precision)
