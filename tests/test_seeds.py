"""Several seeds in one process (issue 24): the losses' supplied noise and :class:`deflow_trl.seeds.SeedGroup`.

A group of seeds trained together must compute, per seed, what a lone run of that seed computes with the plain
eager :class:`~deflow_trl.update.Updater` on the same data and sampling rule. Measured on a 2-core CPU (hidden
(16, 16), K = 2, batch 32, 200 updates, seeds 0 and 1): the first step's losses equal bit for bit; over 200 steps
the per-step losses differ by at most 4.4e-5 relative (DeFlow; 3e-7 FQL) and the final weights by at most 4e-7
relative to each tensor's largest entry — vmap's matmuls over [G, B] re-associate float32 sums. The tolerances
below leave a margin of ~5x.
"""
import pytest
import torch
from tensordict import TensorDict
from torchrl.objectives import SoftUpdate

from deflow_trl import make_deflow, make_fql
from deflow_trl.loss import NOISE_KEY
from deflow_trl.seeds import SeedGroup
from deflow_trl.update import Updater

OBS, ACT, B = 4, 2, 32


def dataset(n=256, seed=123):
    g = torch.Generator().manual_seed(seed)
    return TensorDict({
        "observation": torch.randn(n, OBS, generator=g), "action": torch.rand(n, ACT, generator=g) * 2 - 1,
        "next": {"observation": torch.randn(n, OBS, generator=g), "reward": torch.randn(n, 1, generator=g),
                 "done": torch.zeros(n, 1, dtype=torch.bool), "terminated": torch.rand(n, 1, generator=g) < 0.1},
    }, batch_size=[n])


DATA = dataset()


def sample():
    """The sampling rule of a lone run and of every seed of a group: global RNG, with replacement."""
    return DATA[torch.randint(0, DATA.shape[0], (B,))]


MAKERS = {
    "deflow": lambda: make_deflow(OBS, ACT, hidden_sizes=(16, 16), num_flow_steps=2)[1],
    "flow_bc": lambda: make_deflow(OBS, ACT, hidden_sizes=(16, 16), num_flow_steps=2, refine=False)[1],
    "fql": lambda: make_fql(OBS, ACT, hidden_sizes=(16, 16), num_flow_steps=2, alpha=10.0)[1],
}


def scalars(out):
    return {k: out[k].detach().clone() for k in out.keys() if k.startswith("loss_")}


# -- noise supplied in the input --------------------------------------------------------------------------
@pytest.mark.parametrize("agent", sorted(MAKERS))
@pytest.mark.parametrize("batch_shape", [(B,), (4, 8)])
def test_a_forward_with_draw_noise_is_bit_identical_to_one_that_draws_itself(agent, batch_shape):
    torch.manual_seed(0)
    loss = MAKERS[agent]()
    batch = DATA[:B].reshape(*batch_shape)
    torch.manual_seed(7)
    drew_itself = scalars(loss(batch.clone()))
    torch.manual_seed(7)
    noise = loss.draw_noise(batch_shape)
    supplied = scalars(loss(batch.clone().set(NOISE_KEY, noise)))
    assert noise.batch_size == torch.Size(batch_shape)
    for key in drew_itself:
        assert torch.equal(drew_itself[key], supplied[key]), key


def _old_order_noise(agent, n):
    """The random draws of the forward as written before draw_noise (a copy of the old code's calls, in order)."""
    if agent == "fql":  # z' for the target, flow matching's x0 and t, then z
        nxt, x0, t, z = torch.randn(n, ACT), torch.randn(n, ACT), torch.rand(n, 1), torch.randn(n, ACT)
        return {"next": nxt, "x0": x0, "t": t, "z": z}
    ode, x0, t = torch.randn(2 * n, ACT), torch.randn(n, ACT), torch.rand(n, 1)  # ODE noise at s and s' first
    return {"ode": ode.reshape(2, n, ACT).transpose(0, 1), "x0": x0, "t": t}


@pytest.mark.parametrize("agent", sorted(MAKERS))
def test_draw_noise_draws_in_the_old_forwards_order(agent):
    torch.manual_seed(0)
    loss = MAKERS[agent]()
    torch.manual_seed(3)
    old = _old_order_noise(agent, B)
    torch.manual_seed(3)
    new = loss.draw_noise(B)
    assert sorted(new.keys()) == sorted(old)
    for key, value in old.items():
        assert torch.equal(new[key], value), key
    torch.manual_seed(3)
    drew_itself = scalars(loss(DATA[:B].clone()))
    supplied = scalars(loss(DATA[:B].clone().set(NOISE_KEY, TensorDict(old, batch_size=[B]))))
    assert all(torch.equal(drew_itself[k], supplied[k]) for k in drew_itself)


def test_a_noise_entry_of_the_wrong_size_is_one_clear_error():
    torch.manual_seed(0)
    loss = MAKERS["deflow"]()
    noise = loss.draw_noise(B).exclude("x0")
    with pytest.raises(ValueError, match="'x0'.*draw_noise"):
        loss(DATA[:B].clone().set(NOISE_KEY, noise))


# -- the group against lone runs -------------------------------------------------------------------------------
def lone_run(make, seed, steps):
    torch.manual_seed(seed)
    loss = make()
    update = Updater(loss, torch.optim.Adam(loss.parameters(), lr=3e-4), SoftUpdate(loss, tau=0.005))
    return loss, [scalars(update(sample())) for _ in range(steps)]


@pytest.mark.parametrize("agent,steps", [("deflow", 200), ("fql", 60)])
def test_a_group_of_seeds_computes_what_each_lone_run_computes(agent, steps):
    make = MAKERS[agent]
    seeds = [0, 1]
    outer = torch.get_rng_state()
    group = SeedGroup.build(seeds, make)
    history = [scalars(group.update(sample)) for _ in range(steps)]
    assert torch.equal(torch.get_rng_state(), outer)  # the group leaves the caller's RNG where it was
    for i, seed in enumerate(seeds):
        loss, lone = lone_run(make, seed, steps)
        for step, (together, alone) in enumerate(zip(history, lone)):
            for key in alone:
                torch.testing.assert_close(together[key][i], alone[key], rtol=2e-4, atol=1e-6,
                                           msg=lambda m, k=key, s=step, d=seed: f"seed {d}, step {s}, {k}: {m}")
        mine = dict([*group.losses[i].named_parameters(), *group.losses[i].named_buffers()])
        for name, want in [*loss.named_parameters(), *loss.named_buffers()]:
            got = mine[name]
            scale = want.abs().max().clamp_min(1e-6)
            assert ((got - want).abs().max() / scale).item() < 2e-6, (seed, name)
            assert torch.equal(got, group.params[name][i])  # the loss handed in sees its seed's slice


def test_one_seeds_loss_reaches_only_its_own_slice():
    group = SeedGroup.build([0, 1, 2], MAKERS["deflow"])
    out = group.forward(group.draw(sample))
    total = sum(out[k] for k in out.keys() if k.startswith("loss_"))  # [G]
    (total * torch.tensor([0.0, 1.0, 0.0])).sum().backward()
    reached = 0
    for name, p in group.params.items():
        if p.grad is None:
            continue
        assert torch.count_nonzero(p.grad[0]) == 0 and torch.count_nonzero(p.grad[2]) == 0, name
        reached += int(torch.count_nonzero(p.grad[1]) > 0)
    assert reached >= 10  # critic, flow, refiner and log α all got seed 1's gradient


def test_seeds_draw_different_batches_and_noise():
    group = SeedGroup.build([0, 1], MAKERS["deflow"])
    batch = group.draw(sample)
    assert batch.batch_size == torch.Size([2, B])
    group.step(batch)
    assert batch["td_error"].shape == (2, B) and (batch["td_error"] > 0).all()  # as a lone loss writes its input
    assert not torch.equal(batch["observation"][0], batch["observation"][1])
    assert not torch.equal(batch[NOISE_KEY, "ode"][0], batch[NOISE_KEY, "ode"][1])


# -- bad input: one clear error ------------------------------------------------------------------------------------
def test_an_empty_or_duplicate_seed_list_is_refused():
    with pytest.raises(ValueError, match="at least one seed"):
        SeedGroup.build([], MAKERS["deflow"])
    with pytest.raises(ValueError, match=r"duplicate seeds \[1\]"):
        SeedGroup.build([0, 1, 1], MAKERS["deflow"])
    loss = MAKERS["deflow"]()
    with pytest.raises(ValueError, match="same loss object"):
        SeedGroup([loss, loss], [0, 1])
    with pytest.raises(ValueError, match="at least one seed"):
        SeedGroup([], [])


def test_losses_of_different_architectures_or_settings_are_refused():
    small = make_deflow(OBS, ACT, hidden_sizes=(16, 16), num_flow_steps=2)[1]
    other = make_deflow(OBS, ACT, hidden_sizes=(16, 8), num_flow_steps=2)[1]
    with pytest.raises(ValueError, match="seed 5 differs from seed 4"):
        SeedGroup([small, other], [4, 5])
    min_agg = make_deflow(OBS, ACT, hidden_sizes=(16, 16), num_flow_steps=2, q_agg="min")[1]
    with pytest.raises(ValueError, match="q_agg"):
        SeedGroup([small, min_agg], [0, 1])
    with pytest.raises(ValueError, match="differs"):
        SeedGroup([small, MAKERS["fql"]()], [0, 1])


def test_a_batch_not_stacked_over_the_seeds_is_refused():
    group = SeedGroup.build([0, 1], MAKERS["deflow"])
    with pytest.raises(ValueError, match="stacked over the 2 seeds"):
        group.step(sample())
    with pytest.raises(KeyError, match="_noise"):
        group.step(torch.stack([sample(), sample()]))


def test_a_group_resumed_from_its_state_dict_continues_exactly():
    group = SeedGroup.build([0, 1], MAKERS["deflow"])
    for _ in range(3):
        group.update(sample)
    state = group.state_dict()
    torch.manual_seed(99)  # the caller's RNG does not matter: each seed has its own stream
    straight = [scalars(group.update(sample)) for _ in range(3)]
    resumed = SeedGroup.build([0, 1], MAKERS["deflow"])
    resumed.load_state_dict(state)
    again = [scalars(resumed.update(sample)) for _ in range(3)]
    for a, b in zip(straight, again):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(group.params[n], resumed.params[n]) for n in group.params)
    with pytest.raises(ValueError, match="seeds"):
        SeedGroup.build([0, 2], MAKERS["deflow"]).load_state_dict(state)


def test_per_seed_samplers_and_default_streams():
    """A list of samplers gives seed i its own sampler; without build's states each stream starts at manual_seed(seed)."""
    losses = []
    for seed in (3, 4):
        torch.manual_seed(seed)
        losses.append(MAKERS["deflow"]())
    group = SeedGroup(losses, [3, 4])
    firsts = [DATA[:B], DATA[B:2 * B]]
    batch = group.draw([lambda: firsts[0], lambda: firsts[1]])
    assert torch.equal(batch["observation"][1], firsts[1]["observation"])
    torch.manual_seed(4)
    expected = losses[1].draw_noise(B)
    assert torch.equal(batch[NOISE_KEY, "x0"][1], expected["x0"])
    with pytest.raises(ValueError, match="3 samplers for 2 seeds"):
        group.draw([sample] * 3)


def test_each_seeds_optimiser_state_in_a_lone_runs_layout_round_trips():
    """optimizer_state_dict(i) is what seed i's lone Adam holds (same indices, moments to float tolerance, same
    step); lone states stacked back with load_optimizer_state_dicts continue as the group would."""
    make = MAKERS["deflow"]
    group = SeedGroup.build([0, 1], make)
    for _ in range(5):
        group.update(sample)
    for i, seed in enumerate([0, 1]):
        torch.manual_seed(seed)
        loss = make()
        optim = torch.optim.Adam(loss.parameters(), lr=3e-4)
        update = Updater(loss, optim, SoftUpdate(loss, tau=0.005))
        for _ in range(5):
            update(sample())
        lone, mine = optim.state_dict(), group.optimizer_state_dict(i)
        assert sorted(lone["state"]) == sorted(mine["state"])
        for idx, entry in lone["state"].items():
            assert torch.equal(entry["step"], mine["state"][idx]["step"])
            for key in ("exp_avg", "exp_avg_sq"):
                got, want = mine["state"][idx][key], entry[key]
                assert ((got - want).abs().max() / want.abs().max().clamp_min(1e-12)).item() < 1e-4, (seed, idx, key)
        assert [g["lr"] for g in lone["param_groups"]] == [g["lr"] for g in mine["param_groups"]]
    # lone-layout states (and weights) into a fresh group: the next steps are the old group's, bit for bit
    states, rng = [group.optimizer_state_dict(i) for i in range(2)], group.state_dict()["rng"]
    weights = [{k: v.clone() for k, v in loss.state_dict().items()} for loss in group.losses]
    straight = [scalars(group.update(sample)) for _ in range(2)]
    other = SeedGroup.build([0, 1], make)
    for loss, w in zip(other.losses, weights):
        loss.load_state_dict(w)
    other.load_optimizer_state_dicts(states)
    other.rng.states = rng
    again = [scalars(other.update(sample)) for _ in range(2)]
    for a, b in zip(straight, again):
        assert all(torch.equal(a[k], b[k]) for k in a)
    behind = group.optimizer_state_dict(1)
    for entry in behind["state"].values():
        entry["step"] = entry["step"] - 1
    with pytest.raises(ValueError, match="different steps"):
        other.load_optimizer_state_dicts([group.optimizer_state_dict(0), behind])


@pytest.mark.parametrize("agent", ["flow_bc", "fql"])
def test_flow_loss_with_flow_only_noise_is_bit_identical_to_one_that_draws_itself(agent):
    """The flow-BC update (flow_loss alone) reads draw_noise(flow_only=True) under "_noise": a SeedGroup with
    flow_only=True draws exactly what a lone flow-BC step draws."""
    torch.manual_seed(0)
    loss = MAKERS[agent]()
    batch = DATA[:B]
    torch.manual_seed(7)
    drew_itself = loss.flow_loss(batch.clone())[0]
    torch.manual_seed(7)
    noise = loss.draw_noise(B, flow_only=True)
    assert sorted(noise.keys()) == ["t", "x0"]
    assert torch.equal(loss.flow_loss(batch.clone().set(NOISE_KEY, noise))[0], drew_itself)
