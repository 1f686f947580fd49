"""Shared fixtures: tiny OGBench datasets generated here (never downloaded)."""
import os

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # One thread per test worker (and for the apps the tests start): OpenMP threads of parallel
    # workers on a 2-core machine wait on each other (measured: 5x slower updates when oversubscribed).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)

# The app's dataset cache (data.cache=true) goes to a per-session temporary root, never the user's
# ~/.cache: every test dataset lives in its own tmp dir, so each would add a cache entry there.
if "DEFLOW_OGBENCH_CACHE" not in os.environ:
    import atexit
    import shutil
    import tempfile

    os.environ["DEFLOW_OGBENCH_CACHE"] = tempfile.mkdtemp(prefix="deflow_test_cache_")
    atexit.register(shutil.rmtree, os.environ["DEFLOW_OGBENCH_CACHE"], ignore_errors=True)  # xdist workers inherit it

# Tiny but real: OGBench's scripted oracles, a few short episodes (seconds to make).
TINY_EPISODES = 3
TINY_LENGTH = 50


@pytest.fixture(scope="session")
def tiny_ogbench_dir(tmp_path_factory):
    """A dataset dir with cube-single-play-v0 (3x50 steps + 1 val episode) and puzzle-3x3-play-v0 (2x40 + 1)."""
    from deflow_trl.data.generate import generate_dataset

    d = tmp_path_factory.mktemp("ogbench_data")
    generate_dataset("cube-single-play-v0", TINY_EPISODES, episode_length=TINY_LENGTH, dataset_dir=str(d),
                     seed=0, progress=False)
    generate_dataset("puzzle-3x3-play-v0", 2, episode_length=40, dataset_dir=str(d), seed=0, progress=False)
    return str(d)


def random_transitions(n, obs_dim, act_dim, seed=0, terminal_prob=0.0):
    """A batch of random transitions in TorchRL's layout (actions in [-1, 1])."""
    import torch
    from tensordict import TensorDict

    g = torch.Generator().manual_seed(seed)
    return TensorDict(
        {
            "observation": torch.randn(n, obs_dim, generator=g),
            "action": torch.rand(n, act_dim, generator=g) * 2 - 1,
            "next": {
                "observation": torch.randn(n, obs_dim, generator=g),
                "reward": torch.randn(n, 1, generator=g),
                "done": torch.zeros(n, 1, dtype=torch.bool),
                "terminated": torch.rand(n, 1, generator=g) < terminal_prob,
            },
        },
        batch_size=[n],
    )
