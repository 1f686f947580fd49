"""Core library: networks, actor, DeFlowLoss (docs/design.md §2)."""
import math

import pytest
import torch
from conftest import random_transitions
from tensordict import TensorDict
from torch import nn
from torchrl.objectives import SoftUpdate

from deflow_trl import CriticEnsemble, DeFlowActor, VelocityField, make_deflow, solve_flow

OBS, ACT, H = 4, 2, (32, 32)


def batch(n=16, obs_dim=OBS, act_dim=ACT, seed=0):
    return random_transitions(n, obs_dim, act_dim, seed)


@pytest.fixture
def deflow():
    torch.manual_seed(0)
    return make_deflow(OBS, ACT, hidden_sizes=H)


# --- networks -----------------------------------------------------------------
def test_network_defaults_match_reference():
    v = VelocityField(28, 5)
    assert [lin.out_features for lin in v.mlp.linears] == [512, 512, 512, 512, 5]
    assert v.mlp.linears[0].in_features == 28 + 5 + 1
    assert v.mlp.norms is None
    assert all(torch.count_nonzero(lin.bias) == 0 for lin in v.mlp.linears)
    # Xavier-uniform: bound sqrt(6 / (fan_in + fan_out))
    w = v.mlp.linears[1].weight
    bound = math.sqrt(6 / (512 + 512))
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound
    q = CriticEnsemble(28, 5)
    assert q.linears[0].weight.shape == (2, 33, 512)
    assert not torch.equal(q.linears[0].weight[0], q.linears[0].weight[1])  # independent members
    assert len(q.norms) == 4


def test_split_first_layer_is_exact():
    torch.manual_seed(0)
    v = VelocityField(OBS, ACT, H)
    obs, x = torch.randn(8, OBS), torch.randn(8, ACT)
    ref = v(obs, x, torch.full((8, 1), 0.3))
    torch.testing.assert_close(v.from_projection(v.project_observation(obs), x, 0.3), ref, rtol=1e-6, atol=1e-6)


def test_critic_ensemble_matches_per_member_mlp():
    torch.manual_seed(0)
    q = CriticEnsemble(OBS, ACT, H, num_critics=3)
    obs, act = torch.randn(5, OBS), torch.randn(5, ACT)
    out = q(obs, act)
    for e in range(3):
        h = torch.cat([obs, act], -1)
        for i, lin in enumerate(q.linears):
            h = h @ lin.weight[e] + lin.bias[e]
            if i < len(q.norms):
                h = nn.functional.gelu(h, approximate="tanh")
                h = nn.functional.layer_norm(h, h.shape[-1:], eps=1e-6) * q.norms[i].weight[e] + q.norms[i].bias[e]
        torch.testing.assert_close(out[e], h.squeeze(-1), rtol=1e-5, atol=1e-5)


def test_euler_solver_matches_the_reference_loop():
    torch.manual_seed(0)
    v = VelocityField(OBS, ACT, H)
    obs, noise = torch.randn(6, OBS), torch.randn(6, ACT)
    x = noise.clone()
    for k in range(10):  # reference: x <- x + v(s, x, k/K) / K, clip at the end
        x = x + v(obs, x, torch.full((6, 1), k / 10)) / 10
    torch.testing.assert_close(solve_flow(v, obs, noise, 10, "euler"), x.clamp(-1, 1), rtol=1e-5, atol=1e-6)


# --- actor ---------------------------------------------------------------------
def test_actor_keys_shapes_and_range(deflow):
    policy, _ = deflow
    td = policy(TensorDict(observation=torch.randn(3, 7, OBS), batch_size=[3, 7]))
    assert td["action"].shape == (3, 7, ACT)
    assert td["action"].abs().max() <= 1
    assert policy.in_keys == ["observation"] and policy.out_keys == ["action"]


def test_actor_noise_is_never_zero_under_deterministic_exploration(deflow):
    from torchrl.envs.utils import ExplorationType, set_exploration_type

    policy, _ = deflow
    obs = torch.zeros(64, OBS)  # identical states: different actions only if the noise differs
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        a = policy(TensorDict(observation=obs, batch_size=[64]))["action"]
    assert a.std(0).min() > 1e-3


def test_seeded_sampling_is_reproducible(deflow):
    policy, _ = deflow
    obs = torch.randn(5, OBS)
    torch.manual_seed(3)
    a1 = policy.act(obs)
    torch.manual_seed(3)
    a2 = policy.act(obs)
    a3 = policy.act(obs)
    assert torch.equal(a1, a2) and not torch.equal(a2, a3)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    p1 = DeFlowActor(policy.velocity, policy.refiner, generator=g1)
    p2 = DeFlowActor(policy.velocity, policy.refiner, generator=g2)
    assert torch.equal(p1.act(obs), p2.act(obs))


class _FirstCoordinateQ(nn.Module):
    """A 'critic' whose Q is the first action coordinate (one member)."""

    observation_dim, action_dim = OBS, ACT

    def forward(self, obs, action):
        return action[..., 0].unsqueeze(0)


def test_best_of_n_picks_the_highest_q_candidate(deflow):
    policy, _ = deflow
    obs = torch.randn(6, OBS)
    actor = DeFlowActor(
        policy.velocity, policy.refiner, _FirstCoordinateQ(), sampling="best_of_n", num_samples=16,
        generator=torch.Generator().manual_seed(1),
    )
    chosen = actor.act(obs)
    # Recompute the same 16 candidates per state from the same noise.
    noise = torch.randn(6 * 16, ACT, generator=torch.Generator().manual_seed(1))
    candidates = actor.sampler(obs.repeat_interleave(16, 0), noise).reshape(6, 16, ACT)
    best = candidates[..., 0].max(1).values
    torch.testing.assert_close(chosen[:, 0], best)
    assert (candidates[..., 0].max(1).values - candidates[..., 0].min(1).values).min() > 0  # not a tie


def test_iterative_refinement_keeps_the_highest_q_iterate(deflow):
    policy, _ = deflow
    obs = torch.randn(6, OBS)
    actor = DeFlowActor(
        policy.velocity, policy.refiner, _FirstCoordinateQ(), sampling="iterative", refine_iterations=4,
        generator=torch.Generator().manual_seed(2),
    )
    chosen = actor.act(obs)
    a = actor.sampler.base_actions(obs, torch.randn(6, ACT, generator=torch.Generator().manual_seed(2)))
    iterates = [a]  # the unrefined base sample is a candidate too (as the reference)
    for _ in range(4):
        a = (a + actor.refiner(obs, a)).clamp(-1, 1)
        iterates.append(a)
    iterates = torch.stack(iterates, 1)
    torch.testing.assert_close(chosen[:, 0], iterates[..., 0].max(1).values)


def test_actor_in_env_rollout_and_collector(deflow):
    from torchrl.collectors import Collector
    from torchrl.envs import GymEnv

    env = GymEnv("Pendulum-v1")
    policy, _ = make_deflow(3, 1, hidden_sizes=(16,))
    rollout = env.rollout(20, policy)
    assert rollout["action"].shape == (20, 1) and rollout["action"].abs().max() <= 1
    collector = Collector(env, policy, frames_per_batch=10, total_frames=20, auto_register_policy_transforms=False)
    frames = sum(b.numel() for b in collector)
    collector.shutdown()
    assert frames == 20


# --- loss ----------------------------------------------------------------------
def test_loss_outputs_keys_and_scalars(deflow):
    _, loss = deflow
    out = loss(batch())
    for key in ("loss_qvalue", "loss_flow", "loss_actor", "loss_alpha"):
        assert out[key].shape == () and out[key].requires_grad
    for key in ("alpha", "divergence", "q_mean", "q_min", "q_max", "flow_bc_mse"):
        assert out[key].shape == () and not out[key].requires_grad
    assert out["q_min"] <= out["q_mean"] <= out["q_max"]
    assert out["alpha"].item() == pytest.approx(math.e)  # log α starts at 1.0


def _grad_owners(loss, key, data):
    loss.zero_grad(set_to_none=True)
    loss(data)[key].backward()
    groups = {
        "flow": list(loss.actor.velocity.parameters()),
        "refiner": list(loss.actor.refiner.parameters()),
        "critic": list(loss.critic_params.values(True, True)),
        "log_alpha": [loss.log_alpha],
    }
    owners = set()
    for name, params in groups.items():
        norms = [0.0 if p.grad is None else p.grad.abs().sum().item() for p in params]
        if any(n > 0 for n in norms):
            owners.add(name)
    return owners


@pytest.mark.parametrize(
    "key,owner",
    [("loss_qvalue", "critic"), ("loss_flow", "flow"), ("loss_actor", "refiner"), ("loss_alpha", "log_alpha")],
)
def test_gradient_routing_is_exact(deflow, key, owner):
    _, loss = deflow
    assert _grad_owners(loss, key, batch()) == {owner}


def test_every_parameter_is_trained(deflow):
    _, loss = deflow
    out = loss(batch())
    sum(out[k] for k in out.keys() if k.startswith("loss_")).backward()
    for name, p in loss.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_freeze_flow_blocks_only_the_flow(deflow):
    _, loss = deflow
    loss.freeze_flow = True
    out = loss(batch())
    assert not out["loss_flow"].requires_grad and out["loss_flow"] > 0
    sum(out[k] for k in ("loss_qvalue", "loss_actor", "loss_alpha")).backward()
    assert all(p.grad is None for p in loss.actor.velocity.parameters())


def test_critic_target_uses_terminated_and_q_agg(deflow):
    _, loss = deflow
    data = batch(8)
    data["next", "terminated"][:4] = True
    data["next", "done"][:4] = True
    torch.manual_seed(0)
    out_mean = loss(data)
    # Recompute the target by hand from the same noise.
    torch.manual_seed(0)
    noise = torch.randn(16, ACT)
    base = loss.actor.sampler.base_actions(torch.cat([data["observation"], data["next", "observation"]]), noise)[8:]
    with torch.no_grad():
        next_a = (base + loss.actor.refiner(data["next", "observation"], base)).clamp(-1, 1)
        with loss.target_critic_params.to_module(loss.critic):
            next_q = loss.critic(data["next", "observation"], next_a)
    mask = torch.tensor([0.0] * 4 + [1.0] * 4)
    r = data["next", "reward"].squeeze(-1)
    assert out_mean["target_mean"].item() == pytest.approx((r + 0.99 * mask * next_q.mean(0)).mean().item(), abs=1e-5)
    loss.q_agg = "min"
    torch.manual_seed(0)
    out_min = loss(data)
    assert out_min["target_mean"].item() == pytest.approx((r + 0.99 * mask * next_q.min(0).values).mean().item(), abs=1e-5)


def test_normalized_refiner_gradient_is_invariant_to_q_scale(deflow):
    """λ = 1/mean|Q|: scaling the critic's output scales nothing in the refiner update."""
    _, loss = deflow
    data = batch()

    def refiner_grad():
        loss.zero_grad(set_to_none=True)
        torch.manual_seed(5)
        out = loss(data)
        (out["loss_actor"] - loss.log_alpha.exp().detach() * out["divergence"]).backward()
        return torch.cat([p.grad.flatten() for p in loss.actor.refiner.parameters()])

    g1 = refiner_grad()
    with torch.no_grad():  # scale the head of every member by 10: Q → 10 Q
        head = str(len(H))
        loss.critic_params["linears", head, "weight"].mul_(10)
        loss.critic_params["linears", head, "bias"].mul_(10)
    g2 = refiner_grad()
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-7)


def test_soft_update_moves_target_toward_online(deflow):
    _, loss = deflow
    updater = SoftUpdate(loss, tau=0.5)
    key = ("linears", "0", "weight")
    with torch.no_grad():
        loss.critic_params[key].add_(1.0)
    before = loss.target_critic_params[key].clone()
    updater.step()
    torch.testing.assert_close(loss.target_critic_params[key], 0.5 * before + 0.5 * loss.critic_params[key].detach())


def test_policy_shares_parameters_with_the_loss(deflow):
    policy, loss = deflow
    obs = torch.randn(4, OBS)
    torch.manual_seed(0)
    a_before = policy.act(obs)
    opt = torch.optim.SGD(loss.parameters(), lr=0.1)
    out = loss(batch())
    sum(out[k] for k in out.keys() if k.startswith("loss_")).backward()
    opt.step()
    torch.manual_seed(0)
    assert not torch.equal(policy.act(obs), a_before)
    assert policy.critic.linears[0].weight is loss.critic_params["linears", "0", "weight"]


def test_set_keys_renames_inputs(deflow):
    _, loss = deflow
    loss.set_keys(observation="obs", reward="rew", terminated="term")
    data = batch().rename_key_("observation", "obs")
    data["next"].rename_key_("observation", "obs")
    data["next"].rename_key_("reward", "rew")
    data["next"].rename_key_("terminated", "term")
    assert ("next", "rew") in loss.in_keys
    assert torch.isfinite(loss(data)["loss_qvalue"])


def test_state_dict_round_trip(deflow):
    _, loss = deflow
    with torch.no_grad():
        loss.log_alpha.fill_(0.3)
    _, other = make_deflow(OBS, ACT, hidden_sizes=H)
    other.load_state_dict(loss.state_dict())
    data = batch()
    torch.manual_seed(1)
    a = loss(data)
    torch.manual_seed(1)
    b = other(data)
    for k in ("loss_qvalue", "loss_flow", "loss_actor", "loss_alpha"):
        torch.testing.assert_close(a[k], b[k])


# --- bad input -----------------------------------------------------------------
def test_missing_key_raises(deflow):
    _, loss = deflow
    with pytest.raises(KeyError, match="reward"):
        loss(batch().exclude(("next", "reward")))


def test_wrong_action_dimension_raises(deflow):
    _, loss = deflow
    data = batch(act_dim=ACT + 1)
    with pytest.raises(ValueError, match=r"action must have shape \[\*batch, 2\]"):
        loss(data)


def test_nan_observation_raises(deflow):
    policy, loss = deflow
    data = batch()
    data["observation"][3, 1] = float("nan")
    with pytest.raises(ValueError, match="observation contains NaN"):
        loss(data)
    with pytest.raises(ValueError, match="NaN"):
        policy.act(torch.full((1, OBS), float("nan")))


def test_actions_outside_unit_box_raise(deflow):
    _, loss = deflow
    data = batch()
    data["action"][0, 0] = 1.5
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        loss(data)


def test_wrong_observation_dimension_for_policy_raises(deflow):
    policy, _ = deflow
    with pytest.raises(ValueError, match=r"expected \[\*batch, 4\]"):
        policy.act(torch.zeros(2, OBS + 3))


@pytest.mark.parametrize("delta", [0.0, -1e-3])
def test_nonpositive_delta_raises(delta):
    with pytest.raises(ValueError, match="target_divergence"):
        make_deflow(OBS, ACT, hidden_sizes=H, target_divergence=delta)


@pytest.mark.parametrize("steps", [0, -2])
def test_flow_steps_below_one_raise(steps):
    with pytest.raises(ValueError, match="num_flow_steps"):
        make_deflow(OBS, ACT, hidden_sizes=H, num_flow_steps=steps)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"q_agg": "max"}, "q_agg"), ({"solver": "rk9"}, "solver"), ({"sampling": "greedy"}, "sampling mode"), ({"discount": 1.5}, "discount")],
)
def test_invalid_hyperparameters_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_deflow(OBS, ACT, hidden_sizes=H, **kwargs)
