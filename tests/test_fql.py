"""FQL (the baseline, deflow_trl/fql.py): gradient routing, the policy, bad input, learning."""
import pytest
import torch
from conftest import random_transitions
from tensordict import TensorDict
from torchrl.objectives import SoftUpdate

from deflow_trl import DeFlowActor, FQLActor, FQLLoss, make_fql
from deflow_trl.nets import CriticEnsemble, VelocityField

OBS, ACT, H = 4, 2, (32, 32)


@pytest.fixture
def fql():
    torch.manual_seed(0)
    return make_fql(OBS, ACT, hidden_sizes=H, alpha=10.0)


def _grad_owners(loss, key, data):
    loss.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    loss(data)[key].backward()
    groups = {
        "flow": list(loss.actor.velocity.parameters()),
        "onestep": list(loss.actor.onestep.parameters()),
        "critic": list(loss.critic_params.values(True, True)),
    }
    return {name for name, params in groups.items()
            if any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)}


@pytest.mark.parametrize("key,owner", [("loss_qvalue", "critic"), ("loss_flow", "flow"), ("loss_actor", "onestep")])
def test_each_fql_loss_reaches_only_its_own_parameters(fql, key, owner):
    _, loss = fql
    assert _grad_owners(loss, key, random_transitions(16, OBS, ACT)) == {owner}


def test_fql_actor_term_is_alpha_distill_minus_q(fql):
    _, loss = fql
    data = random_transitions(16, OBS, ACT, seed=1)
    out = loss(data)
    # normalize_q_loss is off (FQL's setting): loss_actor = α·distill − mean Q(s, clip μ)
    torch.testing.assert_close(out["loss_actor"].detach(), 10.0 * out["distill"] - out["q_pi"], rtol=1e-5, atol=1e-5)
    assert set(k for k in out.keys() if k.startswith("loss_")) == {"loss_qvalue", "loss_flow", "loss_actor"}


def test_fql_policy_is_the_clipped_one_step_map(fql):
    policy, _ = fql
    obs, z = torch.randn(64, OBS), torch.randn(64, ACT)
    with torch.no_grad():
        policy.onestep.mlp.linears[-1].bias.fill_(5.0)  # push raw outputs far outside [-1, 1]
        expected = policy.onestep(obs, z).clamp(-1, 1)
    torch.testing.assert_close(policy.act(obs, z), expected)
    assert policy.act(obs, z).abs().max() <= 1


def test_bad_fql_arguments_are_refused():
    v = VelocityField(OBS, ACT, H)
    critic = CriticEnsemble(OBS, ACT, H)
    for alpha in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            make_fql(OBS, ACT, hidden_sizes=H, alpha=alpha)
    from deflow_trl.nets import Refiner

    with pytest.raises(TypeError, match="FQLActor"):
        FQLLoss(DeFlowActor(v, Refiner(OBS, ACT, H)), critic, alpha=1.0)
    with pytest.raises(ValueError, match="sampling"):
        FQLActor(v, Refiner(OBS, ACT, H), sampling="best_of_n")


def _bandit(n, seed=0):
    """One-step bandit, behaviour actions at ±0.6 (half each), reward = a: the right mode is better."""
    g = torch.Generator().manual_seed(seed)
    right = torch.rand(n, generator=g) < 0.5
    action = (torch.where(right, 0.6, -0.6) + 0.05 * torch.randn(n, generator=g)).unsqueeze(-1)
    obs = torch.zeros(n, 1)
    return TensorDict({"observation": obs, "action": action,
                       "next": {"observation": obs, "reward": action.clone(),
                                "done": torch.ones(n, 1, dtype=torch.bool),
                                "terminated": torch.ones(n, 1, dtype=torch.bool)}}, [n])


def _train_fql(alpha, data, pre_steps=500, steps=300, seed=0):
    torch.manual_seed(seed)
    policy, loss = make_fql(1, 1, hidden_sizes=(64, 64), num_flow_steps=8, alpha=alpha)
    flow_opt = torch.optim.Adam(loss.actor.velocity.parameters(), lr=1e-3)
    for _ in range(pre_steps):  # the behaviour flow first, so the distillation target is bimodal
        flow_opt.zero_grad()
        loss.flow_loss(data[torch.randint(0, data.shape[0], (256,))])[0].backward()
        flow_opt.step()
    opt = torch.optim.Adam(loss.parameters(), lr=1e-3)
    target = SoftUpdate(loss, tau=0.05)
    for _ in range(steps):
        out = loss(data[torch.randint(0, data.shape[0], (256,))])
        opt.zero_grad()
        sum(out[k] for k in out.keys() if k.startswith("loss_")).backward()
        opt.step()
        target.step()
    torch.manual_seed(1)
    obs, z = torch.zeros(4000, 1), torch.randn(4000, 1)
    return policy.act(obs, z).squeeze(-1), policy.sampler.base_actions(obs, z).squeeze(-1)


@pytest.mark.slow
def test_one_step_policy_distils_the_bimodal_flow():
    # Large α: μ(s, z) must land where the flow's K-step sample from the same z lands.
    mu, flow = _train_fql(alpha=100.0, data=_bandit(8192))
    assert 0.3 < (flow > 0).float().mean() < 0.7  # the flow learnt both modes
    mse = (mu - flow).pow(2).mean().item()
    # A mode swap costs 1.44 per sample, collapsing to the middle 0.36: μ follows the flow.
    assert mse < 0.06, f"one-step policy vs flow sample: mean squared gap {mse:.3f}"
    assert 0.3 < (mu > 0).float().mean() < 0.7, "both behaviour modes are kept"


def test_q_term_moves_the_one_step_policy_uphill():
    class FirstCoordinateQ(torch.nn.Module):
        observation_dim, action_dim = OBS, ACT

        def __init__(self):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(2, 1))

        def forward(self, obs, action):
            return self.scale * action[..., 0]  # [2, B]: Q = a[0] for both members

    torch.manual_seed(0)
    policy, _ = make_fql(OBS, ACT, hidden_sizes=H)
    loss = FQLLoss(policy, FirstCoordinateQ(), alpha=1e-6)
    obs, z = torch.randn(256, OBS), torch.randn(256, ACT)
    before = policy.onestep(obs, z)[:, 0].mean()
    opt = torch.optim.SGD(policy.onestep.parameters(), lr=1e-2)
    for _ in range(20):
        opt.zero_grad()
        loss(random_transitions(256, OBS, ACT))["loss_actor"].backward()
        opt.step()
    assert policy.onestep(obs, z)[:, 0].mean() > before + 0.1


def test_agent_fql_trains_online_and_resumes_in_the_app(tiny_ogbench_dir, tmp_path):
    from test_train import config

    from deflow_trl.app.plot import read_scalar
    from deflow_trl.app.train import run

    cfg = config(tiny_ogbench_dir, "agent=fql", "agent.hidden_sizes=[32,32]", "agent.num_flow_steps=2",
                 "agent.backend=eager", "offline_steps=6", "online_steps=4", "eval_interval=5", "log_interval=2",
                 "save_interval=5")
    assert cfg.agent.alpha == 300 and cfg.agent.q_agg == "mean"  # cube-single's FQL α
    result = run(cfg, str(tmp_path))
    assert result["step"] == 10
    steps, values = read_scalar(str(tmp_path), "train/loss_actor")
    assert steps.tolist() == [2, 4, 6, 8, 10] and torch.isfinite(torch.tensor(values)).all()
    state = torch.load(tmp_path / "checkpoints" / "ckpt_000000010.pt", weights_only=True)
    assert any(k.startswith("actor.sampler.refiner") for k in state["loss"])  # the one-step policy is saved
    cfg = config(tiny_ogbench_dir, "agent=fql", "agent.hidden_sizes=[32,32]", "agent.num_flow_steps=2",
                 "agent.backend=eager", "offline_steps=6", "online_steps=6", "eval_interval=5", "log_interval=2",
                 "save_interval=5")
    assert run(cfg, str(tmp_path))["step"] == 12  # resumed at 10, two more online steps
