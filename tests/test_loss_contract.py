"""DeFlowLoss / DeFlowActor against TorchRL's loss and actor contract (issue 10), tested the
way TorchRL tests its own objectives: value estimators, reductions, priorities, batch
shapes, target updaters, set_keys, key names, TensorDict critics, action specs."""
import pytest
import torch
from conftest import random_transitions
from tensordict import TensorDict
from torchrl.modules import MLP, ValueOperator
from torchrl.objectives import HardUpdate, SoftUpdate
from torchrl.objectives.utils import ValueEstimators
from torchrl.objectives.value import TD0Estimator

from deflow_trl import DeFlowActor, DeFlowLoss, Refiner, VelocityField, make_deflow

OBS, ACT, H = 4, 2, (16, 16)


def _make(**kw):
    torch.manual_seed(0)
    return make_deflow(OBS, ACT, hidden_sizes=H, **kw)


def _run(loss, data, seed=0):
    torch.manual_seed(seed)
    return loss(data)


# --- value estimators ------------------------------------------------------------
def test_default_estimator_is_td0_and_make_value_estimator_takes_gamma():
    _, loss = _make(discount=0.99)
    assert loss.value_type == ValueEstimators.TD0 and isinstance(loss.value_estimator, TD0Estimator)
    loss.make_value_estimator(gamma=0.9)  # what every TorchRL recipe calls
    assert float(loss.discount) == pytest.approx(0.9)
    loss.make_value_estimator(ValueEstimators.TD0, gamma=0.5)
    assert float(loss.discount) == pytest.approx(0.5)


def test_td0_target_equals_the_hand_written_bellman_target_and_depends_on_gamma():
    _, loss = _make()
    data = random_transitions(32, OBS, ACT, seed=1, terminal_prob=0.3)
    next_q = torch.randn(32)
    for gamma in (0.99, 0.5):
        loss.make_value_estimator(gamma=gamma)
        y = loss._target(data, next_q)
        hand = data["next", "reward"].squeeze(-1) + gamma * (1 - data["next", "terminated"].squeeze(-1).float()) * next_q
        torch.testing.assert_close(y, hand)
    loss.make_value_estimator(gamma=0.99)
    a = _run(loss, data)["target_mean"]
    loss.make_value_estimator(gamma=0.5)
    b = _run(loss, data)["target_mean"]
    assert not torch.isclose(a, b)  # same noise, another γ: another target


@pytest.mark.parametrize("value_type", [ValueEstimators.TD1, ValueEstimators.TDLambda])
def test_multistep_estimators_run_on_trajectory_batches(value_type):
    _, loss = _make(reduction="none")
    loss.make_value_estimator(value_type, gamma=0.9)
    data = random_transitions(12, OBS, ACT, seed=2).reshape(3, 4)  # [batch, time]
    out = _run(loss, data)
    assert out["loss_qvalue"].shape == (3, 4) and torch.isfinite(out["loss_qvalue"]).all()


def test_unsupported_estimator_is_one_clear_error():
    _, loss = _make()
    with pytest.raises(NotImplementedError, match="GAE.*DeFlowLoss|DeFlowLoss.*GAE|Generalized"):
        loss.make_value_estimator(ValueEstimators.GAE)
    with pytest.raises(ValueError, match="gamma"):
        loss.make_value_estimator(gamma=1.5)


# --- reductions, priorities, batch shapes -----------------------------------------
LOSS_KEYS = ("loss_qvalue", "loss_flow", "loss_actor", "loss_alpha")


def test_output_keys_are_torchrls():
    _, loss = _make()
    out = _run(loss, random_transitions(8, OBS, ACT))
    assert {k for k in out.keys() if k.startswith("loss_")} == set(LOSS_KEYS)
    assert set(loss.out_keys) >= set(out.keys())


def test_reductions_agree():
    data = random_transitions(16, OBS, ACT, seed=3)
    outs = {}
    for reduction in ("mean", "sum", "none"):
        _, loss = _make(reduction=reduction)
        outs[reduction] = _run(loss, data.clone())
    for k in LOSS_KEYS:
        per_sample = outs["none"][k]
        assert per_sample.shape == (16,)
        torch.testing.assert_close(per_sample.mean(), outs["mean"][k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(per_sample.sum(), outs["sum"][k], rtol=1e-5, atol=1e-5)


def test_any_leading_batch_shape_is_flattened_and_restored():
    data = random_transitions(8, OBS, ACT, seed=4)
    _, loss = _make(reduction="none")
    flat = _run(loss, data.clone())
    _, loss = _make(reduction="none")
    shaped = _run(loss, data.clone().reshape(2, 4))
    for k in LOSS_KEYS:
        assert shaped[k].shape == (2, 4)
        torch.testing.assert_close(shaped[k].reshape(-1), flat[k])
    _, loss = _make()
    d = data.clone().reshape(2, 4)
    _run(loss, d)
    assert d["td_error"].shape == (2, 4)


def test_td_error_is_written_and_priority_weights_are_honoured():
    data = random_transitions(16, OBS, ACT, seed=5)
    _, loss = _make(reduction="none")
    per_sample = _run(loss, data)
    assert data["td_error"].shape == (16,) and (data["td_error"] >= 0).all()
    # td_error = max over members of |Q_i - y|: at least the RMS over members
    assert (data["td_error"].pow(2) >= per_sample["loss_qvalue"].detach() - 1e-6).all()
    # weights 1 on the first half, 0 on the second: the weighted mean is the first half's mean
    weighted = data.clone()
    weighted["priority_weight"] = torch.cat([torch.ones(8), torch.zeros(8)])
    _, loss = _make()
    out = _run(loss, weighted)
    torch.testing.assert_close(out["loss_qvalue"], per_sample["loss_qvalue"][:8].mean(), rtol=1e-5, atol=1e-6)
    _, loss = _make()
    loss.use_prioritized_weights = False
    out = _run(loss, weighted)
    torch.testing.assert_close(out["loss_qvalue"], per_sample["loss_qvalue"].mean(), rtol=1e-5, atol=1e-6)


def test_prioritized_replay_end_to_end_or_a_clear_error():
    from torchrl.data import LazyTensorStorage, PrioritizedSampler, TensorDictReplayBuffer

    from deflow_trl.data import prioritized_replay_available

    if not prioritized_replay_available():
        # torchrl's C++ extension does not load against torch 2.13: the data layer says so.
        from deflow_trl.data import replay_buffer_from_transitions

        with pytest.raises(RuntimeError, match="(?i)prioritized"):
            replay_buffer_from_transitions(random_transitions(64, OBS, ACT), 16, sampler="prioritized")
        return
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(64), sampler=PrioritizedSampler(64, 0.7, 0.5),
                                batch_size=16, priority_key="td_error")
    rb.extend(random_transitions(64, OBS, ACT))
    _, loss = _make()
    batch = rb.sample()
    loss(batch)
    rb.update_tensordict_priority(batch)
    assert torch.isfinite(batch["td_error"]).all()


# --- targets, keys -----------------------------------------------------------------
@pytest.mark.parametrize("updater", [SoftUpdate, HardUpdate])
def test_target_updaters_move_only_the_target_critic(updater):
    _, loss = _make()
    kw = {"tau": 0.5} if updater is SoftUpdate else {"value_network_update_interval": 1}
    up = updater(loss, **kw)
    before = loss.target_critic_params.clone()
    with torch.no_grad():
        for p in loss.critic_params.values(True, True):
            p.add_(1.0)
    for _ in range(2):  # HardUpdate copies when its step counter reaches the interval
        up.step()
    after = loss.target_critic_params
    moved = [(a - b).abs().max().item() for a, b in zip(after.values(True, True), before.values(True, True))]
    assert min(moved) > 0.4  # SoftUpdate(τ=0.5) twice: 0.75; HardUpdate: 1.0


def test_set_keys_renames_every_input():
    data = random_transitions(8, OBS, ACT, seed=6)
    renamed = TensorDict({"obs": data["observation"], "act": data["action"],
                          "next": {"obs": data["next", "observation"], "rew": data["next", "reward"],
                                   "done": data["next", "done"], "term": data["next", "terminated"]}}, [8])
    _, loss = _make()
    loss.set_keys(observation="obs", action="act", reward="rew", terminated="term", priority="prio")
    assert ("next", "rew") in loss.in_keys
    _run(loss, renamed)
    assert renamed["prio"].shape == (8,)
    _, ref = _make()
    torch.testing.assert_close(_run(loss, renamed)["loss_qvalue"], _run(ref, data)["loss_qvalue"])


# --- TensorDict critics ----------------------------------------------------------------
def _value_operator(seed=0):
    torch.manual_seed(seed)
    return ValueOperator(MLP(in_features=OBS + ACT, out_features=1, num_cells=[16]),
                         in_keys=["observation", "action"])


def _actor(**kw):
    torch.manual_seed(0)
    return DeFlowActor(VelocityField(OBS, ACT, H), Refiner(OBS, ACT, H), **kw)


def test_value_operator_critic_is_vmapped_over_independent_members():
    loss = DeFlowLoss(_actor(), _value_operator(), num_qvalue_nets=3)
    assert loss.num_qvalue_nets == 3
    w = loss.critic_params["module", "0", "weight"]
    assert w.shape[0] == 3 and not torch.equal(w[0], w[1])
    data = random_transitions(8, OBS, ACT)
    out = loss(data)
    out["loss_qvalue"].backward()
    assert loss.critic_params["module", "0", "weight"].grad.abs().sum() > 0
    q = loss.q_values(loss.critic_params, data["observation"], data["action"])
    assert q.shape == (3, 8)


def test_a_list_of_value_operators_is_one_member_each():
    critics = [_value_operator(0), _value_operator(1)]
    loss = DeFlowLoss(_actor(), critics)
    data = random_transitions(8, OBS, ACT)
    q = loss.q_values(loss.critic_params, data["observation"], data["action"])
    torch.testing.assert_close(q[1], critics[1](data.clone())["state_action_value"].squeeze(-1))
    with pytest.raises(ValueError, match="num_qvalue_nets=3 but 2"):
        DeFlowLoss(_actor(), critics, num_qvalue_nets=3)


def test_a_critic_with_the_wrong_output_shape_is_one_clear_error():
    class Bad(torch.nn.Module):
        observation_dim, action_dim = OBS, ACT

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, obs, action):
            return obs.sum(-1) + self.w  # [B], no member dimension

    loss = DeFlowLoss(_actor(), Bad())
    with pytest.raises(ValueError, match=r"critic must return Q-values of shape \[members, batch\]"):
        loss(random_transitions(8, OBS, ACT))


def test_best_of_n_with_a_value_operator_ranks_with_the_trained_critic():
    actor = _actor(sampling="best_of_n", num_samples=4)
    loss = DeFlowLoss(actor, _value_operator(), num_qvalue_nets=2)
    params = TensorDict.from_module(actor)
    assert any("params" in ".".join(k) for k in params.keys(True, True))  # the critic is part of the policy
    with torch.no_grad():
        loss.critic_params["module", "2", "bias"].fill_(3.0)
    obs = torch.randn(5, OBS)
    q = actor.critic(obs, actor.act(obs))
    assert q.shape == (2, 5) and torch.isclose(q, torch.full_like(q, 3.0), atol=5).all()


def test_policy_state_dict_and_weight_sync_include_the_ranking_critic():
    policy, loss = _make(sampling="iterative")
    keys = set(TensorDict.from_module(policy).keys(True, True))
    assert any(k[0] == "critic" for k in keys)
    assert any(k.startswith("critic.") for k in policy.state_dict())
    # weight sync: writing new weights into the policy's tensordict changes its ranking critic
    other, _ = _make(sampling="iterative")
    with torch.no_grad():
        for p in other.critic.parameters():
            p.add_(1.0)
    TensorDict.from_module(other).to_module(policy)
    obs, act = torch.randn(3, OBS), torch.zeros(3, ACT)
    torch.testing.assert_close(policy.critic(obs, act), other.critic(obs, act))


# --- action specs and noise --------------------------------------------------------------
def test_action_spec_maps_policy_actions_to_the_env_bounds_and_back():
    from torchrl.data import Bounded

    spec = Bounded(low=-2.0, high=2.0, shape=(ACT,))
    policy, loss = _make(action_spec=spec)
    torch.manual_seed(0)
    a = policy.act(torch.randn(256, OBS))
    assert a.abs().max() <= 2.0 and a.abs().max() > 1.0  # uses the whole range
    data = random_transitions(16, OBS, ACT)
    data["action"] = data["action"] * 2  # dataset in env units
    assert torch.isfinite(loss(data)["loss_qvalue"])
    data["action"] = data["action"] * 1.5
    with pytest.raises(ValueError, match="action-spec bounds"):
        loss(data)


def test_unbounded_spec_is_one_clear_error():
    from torchrl.data import Unbounded

    with pytest.raises(ValueError, match="bounded spec"):
        _make(action_spec=Unbounded(shape=(ACT,)))
    with pytest.raises(ValueError, match="high > low"):
        _actor(low=1.0, high=-1.0)


def test_noise_key_fixes_the_latent():
    actor = _actor(noise_key="latent")
    obs = torch.randn(4, OBS)
    latent = torch.randn(4, ACT)
    a1 = actor(TensorDict(observation=obs, latent=latent, batch_size=[4]))["action"]
    a2 = actor(TensorDict(observation=obs, latent=latent, batch_size=[4]))["action"]
    torch.testing.assert_close(a1, a2)
    torch.testing.assert_close(a1, actor.sampler(obs, latent))
    with pytest.raises(ValueError, match="noise must have shape"):
        actor(TensorDict(observation=obs, latent=torch.randn(4, 3), batch_size=[4]))


def test_numpy_ints_and_float64_observations():
    import numpy as np

    policy, loss = make_deflow(np.int64(OBS), np.int64(ACT), hidden_sizes=H)
    assert policy.observation_dim == OBS
    with pytest.raises(TypeError, match="DoubleToFloat"):
        policy.act(torch.randn(2, OBS, dtype=torch.float64))
    data = random_transitions(4, OBS, ACT)
    data["observation"] = data["observation"].double()
    with pytest.raises(TypeError, match="float64"):
        loss(data)
    with pytest.raises(ValueError, match="hidden_sizes"):
        make_deflow(OBS, ACT, hidden_sizes=[0])
    with pytest.raises(ValueError, match="hidden_sizes"):
        make_deflow(OBS, ACT, hidden_sizes=[])


def test_empty_batch_and_batchless_input_are_clear_errors():
    _, loss = _make()
    with pytest.raises(ValueError, match="batch dimension"):
        loss(random_transitions(4, OBS, ACT)[0])
    with pytest.raises(KeyError, match="flow_loss needs"):
        loss.flow_loss(TensorDict(observation=torch.randn(2, OBS), batch_size=[2]))
