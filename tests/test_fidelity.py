"""Fidelity to the public reference (issue 9): the formulas of docs/design.md §2-3 where they
once differed — λ, the critic loss's scale, iterative candidates, per-suite settings."""
import glob
import os

import pytest
import torch
import yaml
from conftest import random_transitions
from torch import nn

from deflow_trl import DeFlowActor, DeFlowLoss, make_deflow
from deflow_trl.nets import Refiner, VelocityField

OBS, ACT, H = 4, 2, (16, 16)


class ObservationOnlyQ(nn.Module):
    """Q_i(s, a) = w_i · s: a critic whose values do not depend on the sampled actions,
    so every quantity of the loss can be recomputed by hand."""

    observation_dim, action_dim = OBS, ACT

    def __init__(self, weight):
        super().__init__()
        self.weight = nn.Parameter(weight)  # [E, OBS]

    def forward(self, obs, action):
        return torch.einsum("eo,...o->e...", self.weight, obs)


def _loss_with(weight, **kw):
    torch.manual_seed(0)
    v, r = VelocityField(OBS, ACT, H), Refiner(OBS, ACT, H)
    return DeFlowLoss(DeFlowActor(v, r), ObservationOnlyQ(weight), **kw)


def test_q_normalisation_is_abs_of_ensemble_mean_when_members_disagree_in_sign():
    # Member 0 sees +s0, member 1 sees -s0 + s1: they disagree in sign on most states.
    weight = torch.zeros(2, OBS)
    weight[0, 0], weight[1, 0], weight[1, 1] = 1.0, -1.0, 1.0
    loss = _loss_with(weight)
    data = random_transitions(64, OBS, ACT, seed=3)
    out = loss(data)
    q = ObservationOnlyQ(weight)(data["observation"], None)  # [2, B]
    signs_differ = (q[0].sign() != q[1].sign()).float().mean()
    assert signs_differ > 0.3  # the case where the two normalisations differ
    lam_reference = 1.0 / q.mean(0).abs().mean()  # 1 / mean_b |mean_i Q_i|
    lam_per_member = 1.0 / q.abs().mean()  # the old, wrong one
    assert not torch.isclose(lam_reference, lam_per_member, rtol=0.05)
    expected = -lam_reference * q.mean() + out["alpha"] * out["divergence"]
    torch.testing.assert_close(out["loss_actor"].detach(), expected, rtol=1e-5, atol=1e-6)


def test_q_normalisation_off_uses_unit_scale():
    weight = torch.randn(2, OBS, generator=torch.Generator().manual_seed(1))
    loss = _loss_with(weight, normalize_q_loss=False)
    data = random_transitions(32, OBS, ACT, seed=4)
    out = loss(data)
    q = ObservationOnlyQ(weight)(data["observation"], None)
    torch.testing.assert_close(out["loss_actor"].detach(), -q.mean() + out["alpha"] * out["divergence"],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("q_agg", ["mean", "min"])
def test_critic_loss_is_the_mean_squared_td_error_over_members_and_batch(q_agg):
    weight = torch.randn(3, OBS, generator=torch.Generator().manual_seed(2))
    loss = _loss_with(weight, discount=0.9, q_agg=q_agg)
    data = random_transitions(32, OBS, ACT, seed=5, terminal_prob=0.3)
    out = loss(data)
    critic = ObservationOnlyQ(weight)
    next_q = critic(data["next", "observation"], None)
    next_q = next_q.mean(0) if q_agg == "mean" else next_q.min(0).values
    not_terminal = 1.0 - data["next", "terminated"].squeeze(-1).float()
    y = data["next", "reward"].squeeze(-1) + 0.9 * not_terminal * next_q
    td = critic(data["observation"], None) - y  # [3, B]
    torch.testing.assert_close(out["loss_qvalue"].detach(), td.pow(2).mean(), rtol=1e-5, atol=1e-6)


class _FirstCoordinateQ(nn.Module):
    observation_dim, action_dim = OBS, ACT

    def forward(self, obs, action):
        return action[..., 0].unsqueeze(0)


class _DownhillRefiner(Refiner):
    """Moves the first coordinate down by 0.5: every refinement lowers Q = a[0]."""

    def forward(self, obs, action):
        delta = torch.zeros_like(action)
        delta[..., 0] = -0.5
        return delta


def test_iterative_refinement_keeps_the_unrefined_base_sample_as_a_candidate():
    torch.manual_seed(0)
    v = VelocityField(OBS, ACT, H)
    actor = DeFlowActor(v, _DownhillRefiner(OBS, ACT, H), _FirstCoordinateQ(), sampling="iterative",
                        refine_iterations=5, generator=torch.Generator().manual_seed(7))
    obs = torch.randn(16, OBS)
    chosen = actor.act(obs)
    base = actor.sampler.base_actions(obs, torch.randn(16, ACT, generator=torch.Generator().manual_seed(7)))
    torch.testing.assert_close(chosen, base)  # every iterate has a lower Q than the base sample


def test_sampling_defaults_are_the_references():
    policy, _ = make_deflow(OBS, ACT, hidden_sizes=H)
    assert (policy.num_samples, policy.refine_iterations) == (10, 5)


# docs/design.md §3, from the reference's published commands: suite → (default task, γ, q_agg, δ).
REFERENCE_SUITES = {
    "antmaze-large-navigate": (1, 0.99, "min", 1e-2),
    "antmaze-giant-navigate": (1, 0.995, "min", 1e-2),
    "humanoidmaze-medium-navigate": (1, 0.995, "mean", 1e-3),
    "humanoidmaze-large-navigate": (1, 0.995, "mean", 1e-3),
    "antsoccer-arena-navigate": (4, 0.995, "mean", 1e-2),
    "cube-single-play": (2, 0.99, "mean", 1e-3),
    "cube-double-play": (2, 0.99, "mean", 1e-3),
    "scene-play": (2, 0.99, "mean", 1e-3),
    "puzzle-3x3-play": (4, 0.99, "mean", 5e-3),
    "puzzle-4x4-play": (4, 0.99, "mean", 5e-3),
}
CONFIG_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "deflow_trl", "configs")


def test_every_state_suite_config_matches_the_reference_table():
    found = {}
    for path in glob.glob(os.path.join(CONFIG_DIR, "env", "*.yaml")):
        cfg = yaml.safe_load(open(path))
        if cfg.get("pixels"):
            continue  # visual suites are checked with the pixel pipeline
        found[cfg["name"]] = (cfg["default_task"], cfg["discount"], cfg["q_agg"], cfg["target_divergence"])
    assert found == REFERENCE_SUITES


def test_the_app_uses_the_suites_default_task_unless_given():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(os.path.abspath(CONFIG_DIR), version_base="1.3"):
        assert compose("train", ["env=puzzle_3x3"]).dataset == "puzzle-3x3-play-singletask-task4-v0"
        assert compose("train").dataset == "cube-single-play-singletask-task2-v0"
        assert compose("train", ["env=antmaze_large", "task=3"]).dataset == "antmaze-large-navigate-singletask-task3-v0"
