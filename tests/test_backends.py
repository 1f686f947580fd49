"""Sampler backends on CPU: every backend computes solve_flow's function.

Tolerances (against fp32 eager, random Xavier networks): fp32 backends ≤ 1e-5
relative (max |Δ| / max |a|); bf16 ≤ 5e-2 absolute. One small compile test
(hidden 32, K = 3) keeps torch.compile's cold start to a few seconds.
"""
import logging

import pytest
import torch

from deflow_trl import backends
from deflow_trl.backends import BACKENDS, UNITS, WeightCache, flow_weights, parse_backend, resolve_backend
from deflow_trl.nets import Refiner, VelocityField
from deflow_trl.sampler import FlowSampler, refine, solve_flow

FP32_RTOL = 1e-5
BF16_ATOL = 5e-2


def nets(obs_dim=7, act_dim=3, hidden=(32, 32, 32), seed=0):
    torch.manual_seed(seed)
    return VelocityField(obs_dim, act_dim, hidden), Refiner(obs_dim, act_dim, hidden)


def inputs(batch, obs_dim=7, act_dim=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, obs_dim, generator=g), torch.randn(batch, act_dim, generator=g)


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


def test_resolve_backend_cpu(monkeypatch, caplog):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(backends, "_logged", set())
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
    from deflow_trl import DeFlowActor, make_deflow
    from tensordict import TensorDict

    v, r = nets()
    actor = DeFlowActor(v, r, backend="eager-bf16")
    td = actor(TensorDict(observation=torch.randn(10, 7), batch_size=[10]))
    assert td["action"].shape == (10, 3) and td["action"].abs().max() <= 1
    policy, _ = make_deflow(7, 3, hidden_sizes=(16, 16), backend="eager-bf16")
    assert policy.sampler.resolved_backend("cpu") == "eager-bf16"


@pytest.mark.slow
def test_compile_matches_eager_and_reads_live_weights():
    """One compiled unit (K=3, hidden 32): equality, live weights, a new batch size."""
    v, r = nets()
    obs, noise = inputs(6)
    eager, comp = FlowSampler(v, r, 3), FlowSampler(v, r, 3, backend="compile")
    assert rel_err(comp(obs, noise), eager(obs, noise)) <= FP32_RTOL
    with torch.no_grad():
        for p in list(v.parameters()) + list(r.parameters()):
            p.add_(0.1 * torch.randn_like(p))
    assert rel_err(comp(obs, noise), eager(obs, noise)) <= FP32_RTOL  # no stale captured weights
    obs9, noise9 = inputs(9, seed=3)
    assert rel_err(comp(obs9, noise9), eager(obs9, noise9)) <= FP32_RTOL
