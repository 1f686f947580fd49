"""Triton kernels against eager: on CPU under TRITON_INTERPRET=1, on a GPU natively.

CPU (default): the interpreter must be enabled before the kernels are
defined, so each check runs in a fresh subprocess with the variable set
(nothing leaks into the pytest process). Sizes are small (hidden 32/64,
batch 13): the interpreter executes tl.dot in numpy.

GPU (``DEFLOW_TEST_DEVICE=cuda``, set by ``benchmarks/gpu_check.py``): the
same checks run compiled on the GPU (``DEFLOW_TRITON_AUTOTUNE=0``: one config
per kernel, correctness only) at batch 1, 256 and 4096, plus the reference
width 4×512 on the per-layer path.

Tolerances against fp32 eager: fp32 ≤ 1e-5 relative on CPU, ≤ 1e-4 on a GPU
(IEEE fp32 ``tl.dot`` vs cuBLAS, different summation order); tf32 ≤ 1e-5 under
the interpreter (it computes tf32 dots in fp32), ≤ 5e-3 on a GPU; bf16 ≤ 5e-2
absolute.
"""
import os
import subprocess
import sys
import textwrap

import pytest

from deflow_trl.kernels import TRITON_AVAILABLE

pytestmark = pytest.mark.skipif(not TRITON_AVAILABLE, reason="triton not installed")

DEVICE = os.environ.get("DEFLOW_TEST_DEVICE", "cpu")
ON_CUDA = DEVICE.startswith("cuda")
SETTINGS = dict(
    DEV=DEVICE,
    BATCHES=(1, 256, 4096) if ON_CUDA else (13,),  # 13: a partial row block (masking), one interpreter pass
    FP32_TOL=1e-4 if ON_CUDA else 1e-5,
    TF32_TOL=5e-3 if ON_CUDA else 1e-5,
    HIDDEN_CASES=[((32, 32, 32), "euler", True), ((64, 64), "euler", True), ((32, 48), "euler", False),
                  ((32, 32), "midpoint", False)] + ([((512, 512, 512, 512), "euler", False)] if ON_CUDA else []),
)

PRELUDE = "".join(f"{k} = {v!r}\n" for k, v in SETTINGS.items()) + """
import torch
from torch.nn import functional as F
from deflow_trl.nets import VelocityField, Refiner
from deflow_trl.sampler import FlowSampler
torch.manual_seed(0)
def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()
def randn(*shape):
    return torch.randn(*shape).to(DEV)
"""


def run_kernel_check(code: str) -> None:
    """Runs ``code`` in a fresh interpreter: under TRITON_INTERPRET=1 on CPU,
    compiled on the GPU otherwise."""
    env = dict(os.environ)
    if ON_CUDA:
        env.pop("TRITON_INTERPRET", None)
        env.setdefault("DEFLOW_TRITON_AUTOTUNE", "0")
    else:
        env["TRITON_INTERPRET"] = "1"
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_fused_layer_and_euler_epilogue():
    run_kernel_check("""
    from deflow_trl.kernels.flow_triton import fused_linear
    gelu = lambda h: F.gelu(h, approximate="tanh")
    for m in BATCHES:
        x, w, b = randn(m, 40), randn(48, 40), randn(48)
        assert rel(fused_linear(x, w, b, gelu=True), gelu(F.linear(x, w, b))) <= FP32_TOL, m
        # first layer: residual (hoisted obs projection) + t * w_t (a strided column)
        res, big = randn(m, 48), randn(48, 41)
        out = fused_linear(x, big[:, :40], big[:, 40], bias_scale=0.3, residual=res, gelu=True)
        assert rel(out, gelu(res + F.linear(x, big[:, :40]) + 0.3 * big[:, 40])) <= FP32_TOL, m
        # Euler update fused into the head: clip(x + dt * (h W^T + b))
        h, wo, bo, state = randn(m, 48), randn(5, 48), randn(5), randn(m, 5)
        y = fused_linear(h, wo, bo, state=state, step=0.1, clip=True)
        assert rel(y, (state + 0.1 * F.linear(h, wo, bo)).clamp(-1, 1)) <= FP32_TOL, m
        # tf32 dots
        assert rel(fused_linear(x, w, b, gelu=True, precision="tf32"), gelu(F.linear(x, w, b))) <= TF32_TOL, m
        # bf16 weights and activations, fp32 accumulation, bf16 output
        yb = fused_linear(x.bfloat16(), w.bfloat16(), b.bfloat16(), gelu=True, out_dtype=torch.bfloat16)
        assert yb.dtype == torch.bfloat16
        ref = gelu(F.linear(x, w, b))
        assert (yb.float() - ref).abs().max() <= 5e-2 * ref.abs().max(), m
    """)


def test_sampler_paths_match_eager():
    run_kernel_check("""
    from deflow_trl.kernels.flow_triton import whole_loop_eligible
    for hidden, solver, whole in HIDDEN_CASES:
        v, r = VelocityField(7, 3, hidden).to(DEV), Refiner(7, 3, hidden).to(DEV)
        assert whole_loop_eligible(v, r, solver) == whole
        eager = FlowSampler(v, r, 4, solver)
        samplers = {b: FlowSampler(v, r, 4, solver, backend=b) for b in ("triton", "triton-tf32", "triton-bf16")}
        for m in BATCHES:
            obs, noise = randn(m, 7), randn(m, 3)
            ref, ref_base = eager(obs, noise), eager.base_actions(obs, noise)
            for backend, tol in (("triton", FP32_TOL), ("triton-tf32", TF32_TOL)):
                s = samplers[backend]
                assert rel(s(obs, noise), ref) <= tol, (hidden, solver, backend, m)
                assert rel(s.base_actions(obs, noise), ref_base) <= tol, (hidden, solver, backend, m)
            s = samplers["triton-bf16"]
            assert (s(obs, noise) - ref).abs().max() <= 5e-2, (hidden, solver, m)
            assert (s.base_actions(obs, noise) - ref_base).abs().max() <= 5e-2, (hidden, solver, m)
    # live weights: an in-place update reaches the cached stacked weights
    v, r = VelocityField(7, 3, (32, 32)).to(DEV), Refiner(7, 3, (32, 32)).to(DEV)
    s, eager = FlowSampler(v, r, 4, backend="triton"), FlowSampler(v, r, 4)
    obs, noise = randn(5, 7), randn(5, 3)
    s(obs, noise)
    with torch.no_grad():
        for p in v.parameters():
            p.mul_(-1.3)
    assert rel(s(obs, noise), eager(obs, noise)) <= FP32_TOL
    """)
