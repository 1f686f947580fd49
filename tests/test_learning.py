"""Learning behaviour on toy problems: Lagrange dynamics, the trust region, the flow's modes.

Each test trains small networks for a few hundred to a few thousand steps
(seconds on 2 CPU cores); numbers, not smoke.
"""
import pytest
import torch
from tensordict import TensorDict
from torchrl.objectives import SoftUpdate

from deflow_trl import make_deflow


def bandit_data(n, obs_dim=2, act_dim=2, action_std=0.3, seed=0):
    """One-step problems (terminated = True): Q(s, a) = r = sum(a), so the
    refiner is pushed toward +1 in every dimension, far outside the data."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, obs_dim, generator=g)
    action = (action_std * torch.randn(n, act_dim, generator=g)).clamp(-0.99, 0.99)
    return TensorDict(
        {
            "observation": obs,
            "action": action,
            "next": {
                "observation": obs,
                "reward": action.sum(-1, keepdim=True),
                "done": torch.ones(n, 1, dtype=torch.bool),
                "terminated": torch.ones(n, 1, dtype=torch.bool),
            },
        },
        batch_size=[n],
    )


def train(loss, data, steps, batch_size=128, lr=1e-3, alpha_lr=None, seed=0):
    """Adam over loss.parameters(); optionally a faster, separate learning rate for
    log α (the dual variable is slow by design at lr 3e-4, docs/design.md §6)."""
    torch.manual_seed(seed)
    others = [p for n, p in loss.named_parameters() if n != "log_alpha"]
    groups = [{"params": others}, {"params": [loss.log_alpha], "lr": alpha_lr or lr}]
    opt = torch.optim.Adam(groups, lr=lr)
    updater = SoftUpdate(loss, tau=0.005)
    history = []
    for _ in range(steps):
        idx = torch.randint(0, data.shape[0], (batch_size,))
        out = loss(data[idx])
        opt.zero_grad()
        sum(out[k] for k in out.keys() if k.startswith("loss_")).backward()
        opt.step()
        updater.step()
        history.append(out.select("alpha", "divergence"))
    return torch.stack(history)


def test_alpha_rises_above_and_falls_below_the_trust_region():
    data = bandit_data(2048)
    torch.manual_seed(0)
    _, tight = make_deflow(2, 2, hidden_sizes=(32, 32), target_divergence=1e-6)
    h_tight = train(tight, data, steps=60, lr=3e-4)
    torch.manual_seed(0)
    _, loose = make_deflow(2, 2, hidden_sizes=(32, 32), target_divergence=10.0)
    h_loose = train(loose, data, steps=60, lr=3e-4)
    assert (h_tight["divergence"] > 1e-6).all() and (h_loose["divergence"] < 10.0).all()
    # Adam moves log α by ≈ lr per step, so 60 steps move it by ≈ 0.018.
    assert h_tight["alpha"][-1] > h_tight["alpha"][0] * 1.01
    assert h_loose["alpha"][-1] < h_loose["alpha"][0] * 0.99
    # Monotone: the sign of the divergence gap sets the direction every step.
    assert (h_tight["alpha"].diff() >= 0).all() and (h_loose["alpha"].diff() <= 0).all()


@pytest.mark.slow
def test_trust_region_holds_after_training():
    delta = 1e-2
    data = bandit_data(4096)
    torch.manual_seed(0)
    _, loss = make_deflow(2, 2, hidden_sizes=(64, 64), num_flow_steps=4, target_divergence=delta)
    history = train(loss, data, steps=400, batch_size=64, lr=1e-3, alpha_lr=5e-2)
    final = history["divergence"][-150:].mean().item()
    # Without the constraint the refiner would move actions by ≈ 1 per dim (Δ² ≈ 1).
    assert final <= 2 * delta, f"mean per-dimension Δ² = {final:.4f} > 2δ = {2 * delta}"
    assert final >= 0.25 * delta, f"refiner does not use its budget: Δ² = {final:.5f}"
    assert history["alpha"][-1] > history["alpha"][0]  # the multiplier had to grow to hold it


@pytest.mark.slow
def test_flow_reproduces_a_bimodal_behaviour_distribution():
    n, p_right = 8192, 0.7
    g = torch.Generator().manual_seed(0)
    right = torch.rand(n, generator=g) < p_right
    action = torch.where(right, 0.6, -0.6) + 0.05 * torch.randn(n, generator=g)
    obs = torch.zeros(n, 1)
    torch.manual_seed(0)
    policy, loss = make_deflow(1, 1, hidden_sizes=(64, 64))
    opt = torch.optim.Adam(loss.actor.velocity.parameters(), lr=1e-3)
    for _ in range(1500):
        idx = torch.randint(0, n, (256,))
        data = TensorDict(observation=obs[idx], action=action[idx, None], batch_size=[256])
        opt.zero_grad()
        loss.flow_loss(data)[0].backward()
        opt.step()
    torch.manual_seed(1)
    samples = policy.sampler.base_actions(torch.zeros(4000, 1), torch.randn(4000, 1)).squeeze(-1)
    frac_right = (samples > 0).float().mean().item()
    assert abs(frac_right - p_right) <= 0.05, f"right-mode frequency {frac_right:.3f} vs {p_right}"
    # Both modes are sharp: most samples land near ±0.6, few in the gap.
    assert ((samples.abs() - 0.6).abs() < 0.2).float().mean() > 0.85
