"""Intrinsic action variance and the δ it proposes."""
import numpy as np
import pytest
import torch

from deflow_trl import intrinsic_action_variance, propose_delta


def brute_force_iav(obs, act, k):
    d = ((obs[:, None, :] - obs[None, :, :]) ** 2).sum(-1)
    nn_idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return act[nn_idx].var(axis=1).mean()


def test_exact_iav_matches_brute_force():
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(300, 4)).astype(np.float32)
    act = np.tanh(obs[:, :2] + 0.3 * rng.normal(size=(300, 2))).astype(np.float32)
    expected = brute_force_iav(obs.astype(np.float64), act.astype(np.float64), 5)
    got = intrinsic_action_variance(obs, act, k=5, max_queries=None)
    assert got == pytest.approx(expected, rel=1e-5)


def test_iav_tracks_local_action_noise():
    """Actions = f(s) + σ·noise with a smooth f: IAV ≈ σ² once neighbours are close."""
    rng = np.random.default_rng(1)
    obs = rng.uniform(-1, 1, size=(20_000, 2))
    sigma = 0.1
    act = 0.5 * np.sin(obs) + sigma * rng.normal(size=(20_000, 2))
    iav = intrinsic_action_variance(obs, act, k=5, max_queries=None)
    # population variance of 5 draws has expectation (4/5) σ²
    assert iav == pytest.approx(0.8 * sigma**2, rel=0.1)


def test_subsampled_iav_is_within_its_standard_error():
    rng = np.random.default_rng(2)
    obs = rng.normal(size=(5000, 3))
    act = np.clip(0.3 * obs[:, :2] + 0.2 * rng.normal(size=(5000, 2)), -1, 1)
    exact = intrinsic_action_variance(obs, act, max_queries=None)
    approx, stderr = intrinsic_action_variance(obs, act, max_queries=1000, seed=3, return_stderr=True)
    assert stderr > 0 and abs(approx - exact) < 4 * stderr
    assert intrinsic_action_variance(obs, act, max_queries=None, return_stderr=True)[1] == 0.0


def test_propose_delta_by_suite():
    assert propose_delta(1e-2, "cube-single-play-singletask-task1-v0") == pytest.approx(1e-3)
    assert propose_delta(1e-2, "puzzle-3x3-play-v0") == pytest.approx(1e-3)
    assert propose_delta(1e-2, "antmaze-large-navigate-v0") == pytest.approx(1e-2)
    with pytest.raises(ValueError, match="unknown suite"):
        propose_delta(1e-2, "hopper-medium-v2")
    with pytest.raises(ValueError, match="> 0"):
        propose_delta(0.0, "cube")


@pytest.mark.parametrize(
    "obs,act,match",
    [
        (np.zeros((10, 3)), np.zeros((9, 2)), "10 observations but 9 actions"),
        (np.zeros(10), np.zeros((10, 2)), "2-D"),
        (np.full((10, 3), np.nan), np.zeros((10, 2)), "NaN"),
        (np.zeros((3, 3)), np.zeros((3, 2)), "at least k=5"),
    ],
)
def test_bad_input_raises(obs, act, match):
    with pytest.raises(ValueError, match=match):
        intrinsic_action_variance(obs, act)


def test_accepts_tensors():
    obs, act = torch.randn(50, 3), torch.rand(50, 2)
    assert intrinsic_action_variance(obs, act) == pytest.approx(
        intrinsic_action_variance(obs.numpy(), act.numpy()), rel=1e-6
    )


def test_max_queries_must_be_positive():
    obs, act = torch.randn(20, 3), torch.rand(20, 2)
    for bad in (0, -5, 2.5):
        with pytest.raises(ValueError, match="max_queries"):
            intrinsic_action_variance(obs, act, max_queries=bad)
