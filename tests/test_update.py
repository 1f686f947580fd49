"""The update step (deflow_trl/update.py): eager = plain TorchRL, compiled = eager,
FLOPs = the minimal work, bf16 solves close to fp32, input checks before compile."""
from __future__ import annotations

import importlib.util
import pathlib

import pytest
import torch
from conftest import random_transitions
from tensordict import TensorDict
from torchrl.objectives import HardUpdate, SoftUpdate

from deflow_trl import make_deflow
from deflow_trl.update import Updater, make_update

OBS, ACT, B = 6, 3, 32
TINY = (16, 16)
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _batch(seed: int = 0, batch: int = B) -> TensorDict:
    return random_transitions(batch, OBS, ACT, seed, terminal_prob=0.1)


def _setup(hidden=TINY, seed: int = 0, compile: bool = False, num_flow_steps: int = 4, **kwargs):
    torch.manual_seed(seed)
    _, loss = make_deflow(OBS, ACT, hidden_sizes=hidden, num_flow_steps=num_flow_steps, target_divergence=1e-2)
    optim = torch.optim.Adam(loss.parameters(), lr=3e-4)
    return Updater(loss, optim, SoftUpdate(loss, tau=0.005), compile=compile, **kwargs)


def _state(updater: Updater) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in updater.loss.state_dict().items()}


def _run(updater: Updater, steps: int = 3, seed: int = 1) -> list[TensorDict]:
    torch.manual_seed(seed)
    return [updater(_batch(i)) for i in range(steps)]


def test_eager_step_is_the_plain_torchrl_sequence():
    upd = _setup()
    ref = _setup()  # same init; stepped by hand below
    torch.manual_seed(1)
    ours = [upd(_batch(i)) for i in range(3)]
    torch.manual_seed(1)
    theirs = []
    for i in range(3):
        ref.optimizer.zero_grad()
        out = ref.loss(_batch(i))
        sum(out[k] for k in out.keys() if k.startswith("loss_")).backward()
        ref.optimizer.step()
        ref.target_updater.step()
        theirs.append(out.detach())
    for a, b in zip(ours, theirs):
        for k in a.keys():
            assert torch.equal(a[k], b[k]), k
    sa, sb = _state(upd), _state(ref)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # outputs are detached, target critic moved by Polyak averaging only
    assert not any(v.requires_grad for v in ours[0].values())


def test_fused_polyak_update_matches_softupdate_math():
    upd = _setup()
    loss = upd.loss
    upd(_batch())  # eager step: SoftUpdate.step()
    before = loss.target_critic_params.detach().clone()
    upd._step(_batch(1))  # the compiled path's function, run eagerly: fused _foreach_lerp_
    upd.optimizer.zero_grad()
    src = loss.critic_params.detach()
    expected = before.apply(lambda t, s: (1 - 0.005) * t + 0.005 * s, src)
    torch.testing.assert_close(loss.target_critic_params.detach(), expected, rtol=0, atol=1e-6)
    assert upd._tau == pytest.approx(0.005)
    assert len(upd._targets) == len(list(loss.critic_params.values(True, True)))


@pytest.mark.slow
def test_compiled_matches_eager(tmp_path, monkeypatch):
    """Same state, same RNG: the compiled step gives the eager losses and parameters.

    RNG: the compiled step draws the loss's noise eagerly (``draw_noise``, handed in under ``"_noise"``), so it
    consumes exactly eager's random numbers with no inductor option: the generator ends in the same state, and the
    caller's batches get no ``"_noise"`` entry left behind.
    Tolerance: 1e-4 relative on losses and metrics, 1e-5 absolute on every
    parameter (incl. target critic, log α and Adam's effect) after 3 steps;
    the differences come from inductor's fused/reassociated float32 math.
    """
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    tiny = dict(hidden=(8,), num_flow_steps=2)  # compile time is what matters here
    eager = _setup(compile=False, **tiny)
    compiled = _setup(compile=True, **tiny)
    out_e = _run(eager)
    rng_e = torch.get_rng_state()
    torch.manual_seed(1)
    batches = [_batch(i) for i in range(3)]
    out_c = [compiled(b) for b in batches]
    assert torch.equal(torch.get_rng_state(), rng_e)  # the same random numbers, consumed in the same order
    assert all("_noise" not in b.keys() for b in batches)
    for a, b in zip(out_e, out_c):
        for k in a.keys():
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=k)
    se, sc = _state(eager), _state(compiled)
    for k in se:
        torch.testing.assert_close(sc[k], se[k], rtol=0, atol=1e-5, msg=k)
    # the target critic was updated inside the compiled step
    assert not torch.equal(sc["target_critic_params.linears.0.weight"], _state(_setup(**tiny))["target_critic_params.linears.0.weight"])
    # switch back to eager: same object keeps training, no compile involved
    compiled.compile = False
    compiled(_batch(7))


def test_compiled_step_is_not_recompiled_when_tensordict_meets_a_new_class():
    """tensordict 0.14 memoises "is this class a tensorclass" in a dict that dynamo guarded by its length, so
    the first evaluation after the first compiled update (new env classes) recompiled the whole step
    (measured ≈ 15 s on the README's quick run; deflow_trl/compile_compat.py). Traced with dynamo's eager
    backend: the guards are dynamo's, no inductor time."""
    import tensordict.utils as tdu
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    updater = _setup(compile=True, compile_options={"backend": counter})
    batch = _batch()
    updater(batch)
    updater(batch)
    frames = counter.frame_count
    assert frames >= 1

    class MetByAnEvaluation:  # what eager tensordict code does with every class it has not seen yet
        pass

    tdu.is_tensorclass(MetByAnEvaluation)
    updater(batch)
    assert counter.frame_count == frames  # no graph traced again
    assert tdu._is_tensorclass(MetByAnEvaluation) is False and tdu._TENSORCLASS_MEMO[MetByAnEvaluation] is False


def test_compiled_updater_checks_the_first_batch_eagerly():
    upd = _setup(compile=True)
    bad = _batch()
    bad["action"] = bad["action"] * 3  # out of [-1, 1]
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        upd(bad)
    assert upd._compiled is None  # failed before any compile


def test_other_target_updaters_run_eagerly():
    torch.manual_seed(0)
    _, loss = make_deflow(OBS, ACT, hidden_sizes=TINY, num_flow_steps=2)
    hard = HardUpdate(loss, value_network_update_interval=1)
    upd = make_update(loss, torch.optim.Adam(loss.parameters()), hard)
    upd(_batch())
    assert hard.counter == 1  # HardUpdate copies on its interval-th call
    upd(_batch(1))
    torch.testing.assert_close(loss.target_critic_params.detach(), loss.critic_params.detach(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="another loss"):
        _, other = make_deflow(OBS, ACT, hidden_sizes=TINY)
        Updater(other, torch.optim.Adam(other.parameters()), hard)


def test_one_batched_solve_and_minimal_flops(monkeypatch):
    """No wasted work: one no-grad ODE solve on 2B states per update, and the
    GEMM FLOPs of an update equal the benchmark's count of the minimal work."""
    spec = importlib.util.spec_from_file_location("update_throughput", ROOT / "benchmarks" / "update_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    upd = _setup(hidden=(24, 16))
    sampler = upd.loss.actor.sampler
    calls = []
    original = sampler.base_actions
    monkeypatch.setattr(sampler, "base_actions", lambda obs, noise: calls.append(obs.shape[0]) or original(obs, noise))
    batch = _batch()
    counted = bench.counted_flops(upd, batch)
    assert calls == [2 * B]
    expected = bench.update_flops(OBS, ACT, (24, 16), B, num_steps=4)["total"]
    assert counted == expected


def test_bf16_solves_close_to_fp32():
    """bf16 autocast of the solve only: base actions differ by < 5e-2, losses by
    < 1e-2 relative, gradients still flow everywhere else."""
    upd = _setup(hidden=(64, 64))
    loss, batch = upd.loss, _batch()
    outs = {}
    for flag in (False, True):
        loss.bf16_solves = flag
        torch.manual_seed(3)
        outs[flag] = loss(batch)
    for k in ("loss_qvalue", "loss_actor", "flow_bc_mse", "target_mean"):
        torch.testing.assert_close(outs[True][k], outs[False][k], rtol=1e-2, atol=1e-4, msg=k)
    assert torch.equal(outs[True]["loss_flow"], outs[False]["loss_flow"])  # no solve involved
    sum(outs[True][k] for k in outs[True].keys() if k.startswith("loss_")).backward()
    assert all(p.grad is not None for p in upd.loss.actor.refiner.parameters())
