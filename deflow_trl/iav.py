"""Intrinsic action variance (IAV) of a dataset, and the trust-region size δ it suggests.

IAV measures how much the behaviour data's actions vary among *similar*
states: for each state, take its k nearest states in the dataset (Euclidean
distance on observations, the state itself included), compute the variance of
their actions per action dimension (population variance) and average over
dimensions; IAV is the mean of that over states. It is a per-dimension number,
like DeFlow's divergence ``mean Δ²``, so δ is proportional to it: ≈ 0.1·IAV for
manipulation (cube, scene, puzzle), ≈ 1·IAV for locomotion/navigation.

Exact when every state is a query (``max_queries=None`` or a small dataset).
For 1M-transition datasets a uniform subsample of query states is used (the
neighbours are still searched in the full dataset, so each per-state term is
exact) and the standard error of the mean is returned with
``return_stderr=True``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.spatial import cKDTree

# δ / IAV ratios (docs/design.md §2): fine manipulation is tighter than locomotion.
_DELTA_RATIO = {
    "cube": 0.1,
    "scene": 0.1,
    "puzzle": 0.1,
    "antmaze": 1.0,
    "humanoidmaze": 1.0,
    "antsoccer": 1.0,
    "pointmaze": 1.0,
}


def _as_tensor(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D array [N, dim], got shape {tuple(t.shape)}")
    t = t.to(torch.float32)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf")
    return t


@torch.no_grad()
def intrinsic_action_variance(
    observations,
    actions,
    k: int = 5,
    max_queries: int | None = 20_000,
    seed: int = 0,
    return_stderr: bool = False,
    workers: int = -1,
):
    """IAV of ``(observations [N, obs_dim], actions [N, action_dim])``.

    Args:
        observations, actions: arrays or tensors (a TensorDict's entries work).
        k: neighbourhood size, the state itself included (k ≥ 2).
        max_queries: number of query states sampled uniformly without
            replacement; ``None`` uses every state (exact).
        seed: seed of the query subsample.
        return_stderr: also return the standard error of the mean over queries
            (0 when exact).
        workers: threads for the neighbour search (-1: all cores).

    The neighbour search is exact (a k-d tree, :class:`scipy.spatial.cKDTree`):
    fast on real state data, whose intrinsic dimension is low; on isotropic
    high-dimensional noise it degrades toward brute force.

    Examples:
        >>> obs = torch.zeros(10, 3)  # all states identical: neighbours are arbitrary
        >>> act = torch.ones(10, 2)   # ... but all actions agree
        >>> intrinsic_action_variance(obs, act)
        0.0
    """
    obs = _as_tensor(observations, "observations")
    act = _as_tensor(actions, "actions")
    n = obs.shape[0]
    if act.shape[0] != n:
        raise ValueError(f"{n} observations but {act.shape[0]} actions")
    if not isinstance(k, int) or k < 2:
        raise ValueError(f"k must be an integer >= 2, got {k!r}")
    if max_queries is not None and (isinstance(max_queries, bool) or not isinstance(max_queries, int) or max_queries < 1):
        raise ValueError(f"max_queries must be None (every state) or an integer >= 1, got {max_queries!r}")
    if n < k:
        raise ValueError(f"need at least k={k} transitions, got {n}")
    exact = max_queries is None or max_queries >= n
    if exact:
        query_idx = torch.arange(n)
    else:
        gen = torch.Generator().manual_seed(seed)
        query_idx = torch.randperm(n, generator=gen)[:max_queries]
    obs_np = obs.numpy()
    tree = cKDTree(obs_np, balanced_tree=False, compact_nodes=False)
    _, neighbours = tree.query(obs_np[query_idx.numpy()], k=k, workers=workers)  # [q, k]
    neighbours = torch.from_numpy(neighbours.astype(np.int64))
    local_var = act.double()[neighbours].var(dim=1, unbiased=False).mean(dim=-1)
    iav = local_var.mean().item()
    if not return_stderr:
        return iav
    stderr = 0.0 if exact else (local_var.std().item() / math.sqrt(local_var.numel()))
    return iav, stderr


def propose_delta(iav: float, suite: str) -> float:
    """δ proposed from IAV for a suite or dataset name (``"cube"``,
    ``"cube-single-play-singletask-task1-v0"``, ``"antmaze-large-navigate-v0"``...).

    Examples:
        >>> propose_delta(0.01, "cube-single-play-v0")
        0.001
    """
    if not iav > 0:
        raise ValueError(f"IAV must be > 0 to propose δ, got {iav!r}")
    family = suite.split("-")[0]
    if family not in _DELTA_RATIO:
        raise ValueError(f"unknown suite {suite!r}; known families: {sorted(_DELTA_RATIO)}")
    return _DELTA_RATIO[family] * iav
