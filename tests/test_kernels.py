"""Triton kernels against eager, on CPU under TRITON_INTERPRET=1.

The interpreter must be enabled before the kernels are defined, so each check
runs in a fresh subprocess with the variable set (nothing leaks into the
pytest process). Sizes are small (hidden 32/64, batch ≤ 16): the interpreter
executes tl.dot in numpy. Tolerances against fp32 eager: fp32 and tf32 ≤ 1e-5
relative (the interpreter computes tf32 dots in fp32; on a GPU tf32 is
≈ 1e-3); bf16 ≤ 5e-2 absolute.
"""
import os
import subprocess
import sys
import textwrap

import pytest

from deflow_trl.kernels import TRITON_AVAILABLE

pytestmark = pytest.mark.skipif(not TRITON_AVAILABLE, reason="triton not installed")

PRELUDE = """
import torch
from torch.nn import functional as F
from deflow_trl.nets import VelocityField, Refiner
from deflow_trl.sampler import FlowSampler
torch.manual_seed(0)
def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()
"""


def run_interpreted(code: str) -> None:
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_fused_layer_and_euler_epilogue():
    run_interpreted("""
    from deflow_trl.kernels.flow_triton import fused_linear
    x, w, b = torch.randn(13, 40), torch.randn(48, 40), torch.randn(48)
    gelu = lambda h: F.gelu(h, approximate="tanh")
    assert rel(fused_linear(x, w, b, gelu=True), gelu(F.linear(x, w, b))) <= 1e-5
    # first layer: residual (hoisted obs projection) + t * w_t (a strided column)
    res, big = torch.randn(13, 48), torch.randn(48, 41)
    out = fused_linear(x, big[:, :40], big[:, 40], bias_scale=0.3, residual=res, gelu=True)
    assert rel(out, gelu(res + F.linear(x, big[:, :40]) + 0.3 * big[:, 40])) <= 1e-5
    # Euler update fused into the head: clip(x + dt * (h W^T + b))
    h, wo, bo, state = torch.randn(13, 48), torch.randn(5, 48), torch.randn(5), torch.randn(13, 5)
    y = fused_linear(h, wo, bo, state=state, step=0.1, clip=True)
    assert rel(y, (state + 0.1 * F.linear(h, wo, bo)).clamp(-1, 1)) <= 1e-5
    # bf16 weights and activations, fp32 accumulation, bf16 output
    yb = fused_linear(x.bfloat16(), w.bfloat16(), b.bfloat16(), gelu=True, out_dtype=torch.bfloat16)
    assert yb.dtype == torch.bfloat16
    assert (yb.float() - gelu(F.linear(x, w, b))).abs().max() <= 5e-2 * gelu(F.linear(x, w, b)).abs().max()
    """)


def test_sampler_paths_match_eager():
    run_interpreted("""
    from deflow_trl.kernels.flow_triton import whole_loop_eligible
    cases = [((32, 32, 32), "euler", True), ((64, 64), "euler", True), ((32, 48), "euler", False),
             ((32, 32), "midpoint", False)]
    for hidden, solver, whole in cases:
        v, r = VelocityField(7, 3, hidden), Refiner(7, 3, hidden)
        assert whole_loop_eligible(v, r, solver) == whole
        obs, noise = torch.randn(16, 7), torch.randn(16, 3)
        eager = FlowSampler(v, r, 4, solver)
        ref, ref_base = eager(obs, noise), eager.base_actions(obs, noise)
        for backend, tol in (("triton", 1e-5), ("triton-tf32", 1e-5)):
            s = FlowSampler(v, r, 4, solver, backend=backend)
            assert rel(s(obs, noise), ref) <= tol, (hidden, solver, backend)
            assert rel(s.base_actions(obs, noise), ref_base) <= tol, (hidden, solver, backend)
        s = FlowSampler(v, r, 4, solver, backend="triton-bf16")
        assert (s(obs, noise) - ref).abs().max() <= 5e-2, (hidden, solver)
    # live weights: an in-place update reaches the cached stacked weights
    v, r = VelocityField(7, 3, (32, 32)), Refiner(7, 3, (32, 32))
    s, eager = FlowSampler(v, r, 4, backend="triton"), FlowSampler(v, r, 4)
    obs, noise = torch.randn(5, 7), torch.randn(5, 3)
    s(obs, noise)
    with torch.no_grad():
        for p in v.parameters():
            p.mul_(-1.3)
    assert rel(s(obs, noise), eager(obs, noise)) <= 1e-5
    """)
