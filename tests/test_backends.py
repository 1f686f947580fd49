"""Sampler backends: every backend computes solve_flow's function; bf16 only where native.

Tolerances (against fp32 eager, random Xavier networks): fp32 backends ≤ 1e-5
relative (max |Δ| / max |a|) on CPU, ≤ 1e-4 on CUDA (cuBLAS / inductor
reassociate 512-long dot products); bf16 ≤ 5e-2 absolute. One small compile test
(hidden 32, K = 3) keeps torch.compile's cold start to a few seconds.

``DEFLOW_TEST_DEVICE=cuda`` (``benchmarks/gpu_check.py`` sets it) runs the
device tests on the GPU: every backend available there at batch 1, 256 and
4096 instead of CPU's eager backends at batch 1 and 16.
"""
import logging
import os
import warnings

import pytest
import torch

from deflow_trl import backends, hardware
from deflow_trl.backends import BACKENDS, UNITS, parse_backend, resolve_backend
from deflow_trl.flow_weights import WeightCache, flow_weights
from deflow_trl.nets import Refiner, VelocityField
from deflow_trl.sampler import FlowSampler, refine, solve_flow

DEVICE = torch.device(os.environ.get("DEFLOW_TEST_DEVICE", "cpu"))
ON_CUDA = DEVICE.type == "cuda"
if ON_CUDA and not torch.cuda.is_available():  # pragma: no cover - misconfigured run
    raise RuntimeError("DEFLOW_TEST_DEVICE=cuda but torch.cuda.is_available() is False")
FP32_RTOL = 1e-4 if ON_CUDA else 1e-5
BF16_ATOL = 5e-2
TF32_RTOL = 5e-3
# Fake /proc/cpuinfo texts (abridged real flag lists).
CPUINFO_ZEN3 = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse2 avx fma avx2 bmi2 sha_ni\n"
CPUINFO_SPR = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C\n"
               "flags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile\n")


def nets(obs_dim=7, act_dim=3, hidden=(32, 32, 32), seed=0, device="cpu"):
    torch.manual_seed(seed)
    return VelocityField(obs_dim, act_dim, hidden).to(device), Refiner(obs_dim, act_dim, hidden).to(device)


def inputs(batch, obs_dim=7, act_dim=3, seed=1, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, obs_dim, generator=g).to(device), torch.randn(batch, act_dim, generator=g).to(device)


@pytest.fixture
def fake_cpu(monkeypatch):
    """``fake_cpu(text)`` makes the hardware module read ``text`` as /proc/cpuinfo
    (and forget earlier warnings/log lines); CI machines differ, tests must not."""
    def use(text):
        monkeypatch.setattr(hardware, "_read_cpuinfo", lambda: text)
        monkeypatch.setattr(hardware, "_warned", set())
        monkeypatch.setattr(backends, "_logged", set())
    return use


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_backend_names():
    assert parse_backend("compile-bf16") == ("compile", "bf16")
    assert parse_backend("eager") == ("eager", "fp32")
    assert "triton-tf32" in BACKENDS and "compile-tf32" not in BACKENDS
    for bad in ("jit", "compile-fp16", "eager-tf32", None):
        with pytest.raises(ValueError, match="unknown sampler backend"):
            parse_backend(bad)
    v, r = nets()
    with pytest.raises(ValueError):
        FlowSampler(v, r, backend="fast")


def test_resolve_backend_cpu(monkeypatch, caplog, fake_cpu):
    fake_cpu(CPUINFO_SPR)  # native bf16: auto keeps it
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert resolve_backend("eager-bf16", "cpu") == "eager-bf16"
    with pytest.raises(RuntimeError, match="CUDA"):
        resolve_backend("triton", "cpu")
    with caplog.at_level(logging.INFO, logger="deflow_trl.backends"):
        monkeypatch.setattr(backends, "_compile_available", lambda device: True)
        assert resolve_backend("auto", "cpu") == "compile"
        assert resolve_backend("auto-bf16", "cpu") == "compile-bf16"
        resolve_backend("auto", torch.device("cpu"))
    assert sum("resolves to" in m for m in caplog.messages) == 2  # once per (name, device)
    monkeypatch.setattr(backends, "_compile_available", lambda device: False)
    assert resolve_backend("auto", "cpu") == "eager"
    assert resolve_backend("auto-bf16", "cpu") == "eager-bf16"


def test_native_bf16_from_cpuinfo():
    assert hardware.native_bf16("cpu", cpuinfo=CPUINFO_SPR)
    assert not hardware.native_bf16("cpu", cpuinfo=CPUINFO_ZEN3)
    assert hardware.native_bf16("cpu", cpuinfo="flags\t: avx2 avx512f avx512_bf16\n")  # Zen 4: avx512_bf16 only
    assert hardware.native_bf16("cpu", cpuinfo="flags\t: avx2 amx_bf16\n")  # AMX alone
    assert not hardware.native_bf16("cpu", cpuinfo="flags\t: avx2 avx512f avx512bw avx512_vnni\n")  # Skylake-SP
    assert hardware.native_bf16("cpu", cpuinfo="Features\t: fp asimd sve bf16 i8mm\n")  # aarch64 Neoverse V1
    assert not hardware.native_bf16("cpu", cpuinfo="Features\t: fp asimd crc32\n")
    assert not hardware.native_bf16("cpu", cpuinfo="")  # nothing to read: not native
    assert not hardware.native_bf16("mps")  # unknown device types: not native
    reason = hardware.bf16_not_native_reason("cpu", cpuinfo=CPUINFO_ZEN3)
    assert "AMD EPYC 7B13" in reason and "avx512_bf16" in reason
    line = hardware.cpu_description(CPUINFO_ZEN3)
    assert line.startswith("AMD EPYC 7B13 (") and "avx2 fma" in line and line.endswith("native bf16: no")
    assert hardware.cpu_description(CPUINFO_SPR).endswith("avx512_bf16 amx_bf16 amx_tile; native bf16: yes")


def test_cuda_bf16_needs_ampere(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    assert "capability 7.0" in hardware.bf16_not_native_reason("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert hardware.native_bf16("cuda:0")


def test_bf16_not_native_auto_avoids_explicit_warns_once(monkeypatch, caplog, fake_cpu):
    """On an AVX2-only CPU: auto never resolves to bf16; an explicit *-bf16
    backend runs (same numbers) and warns exactly once with the reason."""
    fake_cpu(CPUINFO_ZEN3)
    for compiler in (True, False):
        monkeypatch.setattr(backends, "_compile_available", lambda device, c=compiler: c)
        with caplog.at_level(logging.INFO, logger="deflow_trl.backends"):
            resolved = resolve_backend("auto-bf16", "cpu")
        assert resolved == ("compile" if compiler else "eager")
    assert any("no bf16" in m and "avx512_bf16" in m for m in caplog.messages)
    v, r = nets()
    obs, noise = inputs(16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = FlowSampler(v, r, 5, backend="eager-bf16")(obs, noise)
        FlowSampler(v, r, 5, backend="eager-bf16")(obs, noise)  # a second sampler: no second warning
        auto = FlowSampler(v, r, 5, backend="auto-bf16")
        assert "bf16" not in auto.resolved_backend("cpu")
        assert hardware.warn_if_bf16_not_native("cpu", what="bf16_solves") is False
        assert hardware.warn_if_bf16_not_native("cpu", what="bf16_solves") is False
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert sum("sampler backend 'eager-bf16'" in m for m in messages) == 1, messages
    assert sum(m.startswith("bf16_solves on cpu") for m in messages) == 1, messages
    assert all("AMD EPYC 7B13" in m for m in messages)
    assert (a - FlowSampler(v, r, 5)(obs, noise)).abs().max() <= BF16_ATOL  # it ran, in bf16
    fake_cpu(CPUINFO_SPR)  # native: silent
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        FlowSampler(v, r, 5, backend="eager-bf16")(obs, noise)
        assert hardware.warn_if_bf16_not_native("cpu", what="bf16_solves") is True
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]


DEVICE_BATCHES = (1, 256, 4096) if ON_CUDA else (1, 16)
# CPU: the eager kinds only (compile has its own slow test below; triton runs under the interpreter in
# test_kernels.py). CUDA: every backend, auto included.
DEVICE_BACKENDS = BACKENDS if ON_CUDA else ("eager", "eager-bf16")


def close_enough(precision, got, ref):
    """The module docstring's tolerance for ``precision``, as a bool and the error."""
    if precision == "bf16":
        err = (got.float() - ref).abs().max().item()
        return err <= BF16_ATOL, err
    err = rel_err(got, ref)
    return err <= (TF32_RTOL if precision == "tf32" else FP32_RTOL), err


@pytest.mark.parametrize("backend", DEVICE_BACKENDS)
def test_backend_matches_eager_on_device(backend):
    """Every backend on DEFLOW_TEST_DEVICE, policy and base actions, at each batch size."""
    v, r = nets(hidden=(64, 64, 64), device=DEVICE)
    eager, sampler = FlowSampler(v, r, 3), FlowSampler(v, r, 3, backend=backend)
    precision = parse_backend(sampler.resolved_backend(DEVICE))[1]
    for batch in DEVICE_BATCHES:
        obs, noise = inputs(batch, device=DEVICE)
        for got, ref in ((sampler(obs, noise), eager(obs, noise)),
                         (sampler.base_actions(obs, noise), eager.base_actions(obs, noise))):
            assert got.shape == (batch, 3) and got.device.type == DEVICE.type
            ok, err = close_enough(precision, got, ref)
            assert ok, f"{backend} ({precision}) batch {batch}: error {err:.2e}"


@pytest.mark.parametrize("solver", ["euler", "midpoint"])
def test_functional_units_match_solve_flow(solver):
    v, r = nets(hidden=(32, 48))
    obs, noise = inputs(11)
    w = flow_weights(v, r, "fp32")
    with torch.no_grad():
        base = solve_flow(v, obs, noise, 4, solver)
        assert rel_err(UNITS["base"](w, obs, noise, 4, solver), base) <= FP32_RTOL
        assert rel_err(UNITS["policy"](w, obs, noise, 4, solver), refine(r, obs, base)) <= FP32_RTOL


def test_bf16_close_and_follows_weight_updates():
    v, r = nets()
    obs, noise = inputs(16)
    eager, bf16 = FlowSampler(v, r, 5), FlowSampler(v, r, 5, backend="eager-bf16")
    assert (bf16(obs, noise) - eager(obs, noise)).abs().max() <= BF16_ATOL
    assert (bf16.base_actions(obs, noise) - eager.base_actions(obs, noise)).abs().max() <= BF16_ATOL
    assert bf16.velocity.mlp.linears[1].weight.dtype == torch.float32  # the module is untouched
    before = bf16(obs, noise)
    with torch.no_grad():  # an optimiser-style in-place update must reach the cached bf16 copy
        for p in v.parameters():
            p.mul_(-1.5)
    after = bf16(obs, noise)
    assert not torch.allclose(before, after)
    assert (after - eager(obs, noise)).abs().max() <= BF16_ATOL
    # batch below BF16_MIN_BATCH_CPU runs the fp32 unit
    assert rel_err(bf16(obs[:2], noise[:2]), eager(obs[:2], noise[:2])) <= FP32_RTOL


def test_weight_cache_keys_on_versions():
    cache, made = WeightCache(), []
    p = torch.nn.Parameter(torch.ones(3))
    make = lambda: made.append(1) or len(made)
    assert cache.get([p], make) == 1 and cache.get([p], make) == 1
    with torch.no_grad():
        p.add_(1)
    assert cache.get([p], make) == 2
    cache.clear()
    assert cache.get([p], make) == 3


def test_actor_and_make_deflow_take_backend():
    from tensordict import TensorDict

    from deflow_trl import DeFlowActor, make_deflow

    v, r = nets()
    actor = DeFlowActor(v, r, backend="eager-bf16")
    td = actor(TensorDict(observation=torch.randn(10, 7), batch_size=[10]))
    assert td["action"].shape == (10, 3) and td["action"].abs().max() <= 1
    policy, _ = make_deflow(7, 3, hidden_sizes=(16, 16), backend="eager-bf16")
    assert policy.sampler.resolved_backend("cpu") == "eager-bf16"


@pytest.mark.slow
def test_compile_matches_eager_and_reads_live_weights():
    """One compiled unit (K=3, hidden 32; on CPU with its C++ wrapper): equality, live weights, new batch sizes
    (on CPU both layer forms: the small-batch multiply-and-sum and the GEMM above CPU_GEMV_MAX_BATCH)."""
    v, r = nets(device=DEVICE)
    obs, noise = inputs(6, device=DEVICE)
    eager, comp = FlowSampler(v, r, 3), FlowSampler(v, r, 3, backend="compile")
    assert rel_err(comp(obs, noise), eager(obs, noise)) <= FP32_RTOL
    with torch.no_grad():
        for p in list(v.parameters()) + list(r.parameters()):
            p.add_(0.1 * torch.randn_like(p))
    assert rel_err(comp(obs, noise), eager(obs, noise)) <= FP32_RTOL  # no stale captured weights
    obs9, noise9 = inputs(9, seed=3, device=DEVICE)
    assert rel_err(comp(obs9, noise9), eager(obs9, noise9)) <= FP32_RTOL
    assert rel_err(comp(obs9[:1], noise9[:1]), eager(obs9[:1], noise9[:1])) <= FP32_RTOL  # batch 1: its own graph
    # batches up to backends.CPU_GEMV_MAX_BATCH run each layer as a multiply-and-sum on CPU, larger ones call the GEMM
    big_obs, big_noise = inputs(backends.CPU_GEMV_MAX_BATCH + 3, seed=4, device=DEVICE)
    assert rel_err(comp(big_obs, big_noise), eager(big_obs, big_noise)) <= FP32_RTOL


def test_bf16_solves_auto_follows_the_hardware(fake_cpu):
    """bf16_solves="auto" turns the loss's bf16 solves on only where bf16 is native, without a warning;
    a value other than true/false/auto is refused."""
    from deflow_trl import make_deflow
    from deflow_trl.fql import make_fql

    for cpuinfo, native in ((CPUINFO_ZEN3, False), (CPUINFO_SPR, True)):
        fake_cpu(cpuinfo)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # auto never warns
            _, loss = make_deflow(4, 2, hidden_sizes=(8,), bf16_solves="auto")
            _, fql_loss = make_fql(4, 2, hidden_sizes=(8,), bf16_solves="auto")
        assert loss.bf16_solves is native and fql_loss.bf16_solves is native
    with pytest.raises(ValueError, match="bf16_solves must be true, false or 'auto'"):
        make_deflow(4, 2, hidden_sizes=(8,), bf16_solves="yes")


def test_compiled_gelu_is_the_reference_gelu():
    """Compiled CPU code writes GELU(tanh) as x·σ(2u) (nets._gelu): the same values and gradients as eager
    ``F.gelu(approximate="tanh")`` to float32 round-off over the range that matters, including the tails where
    exp over/underflows (x = ±60), and NaN stays NaN."""
    from deflow_trl.nets import _gelu

    x = torch.cat([torch.linspace(-60, 60, 4001), torch.tensor([-1e30, 1e30, float("nan")])]).requires_grad_()
    ref = torch.nn.functional.gelu(x, approximate="tanh")
    (g_ref,) = torch.autograd.grad(ref.sum(), x)
    compiled = torch.compile(_gelu, fullgraph=True, backend="inductor")
    out = compiled(x)
    (g_out,) = torch.autograd.grad(out.sum(), x)
    finite = torch.isfinite(ref)
    assert torch.isnan(out[-1]) and torch.isnan(ref[-1])
    assert ((out - ref).abs()[finite] / (1 + ref.abs()[finite])).max() <= 1e-6
    ok = torch.isfinite(g_ref)
    assert ((g_out - g_ref).abs()[ok] / (1 + g_ref.abs()[ok])).max() <= 1e-5
