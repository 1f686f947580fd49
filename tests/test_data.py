"""OGBench datasets: generator format, loader semantics (cross-checked with ogbench), bad input."""
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import TINY_EPISODES, TINY_LENGTH

from deflow_trl.data import (
    ACTION_CLIP,
    generate_dataset,
    load_ogbench_dataset,
    make_ogbench_replay_buffer,
    parse_ogbench_name,
    prioritized_replay_available,
)
from deflow_trl.data.generate import atomic_savez

CUBE = "cube-single-play-singletask-task1-v0"
PUZZLE = "puzzle-3x3-play-singletask-task2-v0"


@pytest.fixture(scope="module")
def cube_td(tiny_ogbench_dir):
    return load_ogbench_dataset(CUBE, dataset_dir=tiny_ogbench_dir)


def _copy_pair(src_dir, dst_dir, stem="cube-single-play-v0"):
    os.makedirs(dst_dir, exist_ok=True)
    for suffix in (".npz", "-val.npz"):
        shutil.copy(os.path.join(src_dir, stem + suffix), os.path.join(dst_dir, stem + suffix))
    return os.path.join(dst_dir, stem + ".npz")


def _rewrite(path, **changes):
    with np.load(path) as f:
        arrays = {k: f[k] for k in f}
    arrays.update(changes)
    for k in [k for k, v in changes.items() if v is None]:
        del arrays[k]
    atomic_savez(path, arrays)


# ----------------------------------------------------------------------------- names
def test_parse_names():
    n = parse_ogbench_name("scene-play-singletask-task2-v0")
    assert (n.file_stem, n.env_id, n.base_env_id, n.dataset_type, n.singletask, n.suite) == (
        "scene-play-v0", "scene-singletask-task2-v0", "scene-v0", "play", True, "scene")
    n = parse_ogbench_name("pointmaze-medium-navigate-v0")
    assert (n.file_stem, n.env_id, n.singletask) == ("pointmaze-medium-navigate-v0", "pointmaze-medium-v0", False)


@pytest.mark.parametrize("bad", ["cube-sigle-play-v0", "cube-single-plays-v0", "nonsense"])
def test_unknown_name_lists_known(bad):
    with pytest.raises(ValueError, match="cube-single.*puzzle-3x3") as e:
        load_ogbench_dataset(bad)
    assert repr(bad) in str(e.value)


# ----------------------------------------------------------------------------- generator format
def test_generated_file_format(tiny_ogbench_dir):
    with np.load(os.path.join(tiny_ogbench_dir, "cube-single-play-v0.npz")) as f:
        arrays = {k: f[k] for k in f}
    assert sorted(arrays) == ["actions", "observations", "qpos", "qvel", "terminals"]
    n = TINY_EPISODES * TINY_LENGTH
    assert arrays["observations"].shape == (n, 28) and arrays["observations"].dtype == np.float32
    assert arrays["actions"].shape == (n, 5) and arrays["actions"].dtype == np.float32
    assert arrays["terminals"].dtype == np.bool_
    assert arrays["qpos"].shape[0] == n and arrays["qpos"].dtype == np.float32
    assert np.flatnonzero(arrays["terminals"]).tolist() == [TINY_LENGTH * (i + 1) - 1 for i in range(TINY_EPISODES)]
    assert np.abs(arrays["actions"]).max() <= 1.0
    # The oracle moves the arm: not a constant action stream.
    assert arrays["actions"].std(0).min() > 1e-3
    with np.load(os.path.join(tiny_ogbench_dir, "cube-single-play-v0-val.npz")) as f:
        assert f["terminals"].shape == (TINY_LENGTH,)  # max(1, 3 // 10) validation episode
    with np.load(os.path.join(tiny_ogbench_dir, "puzzle-3x3-play-v0.npz")) as f:
        assert f["button_states"].shape == (80, 9) and f["button_states"].dtype == np.int64


def test_generator_independent_of_workers_and_seeded(tmp_path):
    kw = dict(episode_length=15, val_episodes=1, progress=False)
    a, _ = generate_dataset("cube-single-play-v0", 2, dataset_dir=str(tmp_path / "a"), workers=1, seed=3, **kw)
    b, _ = generate_dataset("cube-single-play-v0", 2, dataset_dir=str(tmp_path / "b"), workers=2, seed=3, **kw)
    c, _ = generate_dataset("cube-single-play-v0", 2, dataset_dir=str(tmp_path / "c"), workers=1, seed=4, **kw)
    with np.load(a) as fa, np.load(b) as fb, np.load(c) as fc:
        for k in fa:
            np.testing.assert_array_equal(fa[k], fb[k])
        assert np.abs(fa["observations"] - fc["observations"]).max() > 1e-3


def test_generator_refuses_overwrite_and_bad_names(tiny_ogbench_dir):
    with pytest.raises(FileExistsError):
        generate_dataset("cube-single-play-v0", 1, dataset_dir=tiny_ogbench_dir, progress=False)
    with pytest.raises(ValueError, match="singletask|single-task"):
        generate_dataset("cube-single-play-singletask-task1-v0", 1, dataset_dir=tiny_ogbench_dir, progress=False)
    with pytest.raises(ValueError, match="Cannot regenerate"):
        generate_dataset("antmaze-large-navigate-v0", 1, dataset_dir=tiny_ogbench_dir, progress=False)


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "x.npz"

    def boom(*a, **k):
        raise KeyboardInterrupt  # a kill mid-write

    monkeypatch.setattr(np, "savez_compressed", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_savez(str(target), {"a": np.zeros(3)})
    assert os.listdir(tmp_path) == []


def test_pointmaze_navigate_generates_and_loads(tmp_path):
    generate_dataset("pointmaze-medium-navigate-v0", 1, episode_length=30, dataset_dir=str(tmp_path), progress=False)
    td = load_ogbench_dataset("pointmaze-medium-navigate-singletask-task1-v0", dataset_dir=str(tmp_path))
    assert td["observation"].shape == (29, 2) and td["action"].shape == (29, 2)
    # The oracle walks toward its subgoal: the point moves.
    assert (td["next", "observation"][-1] - td["observation"][0]).norm() > 0.1


# ----------------------------------------------------------------------------- loader
def test_keys_shapes_dtypes(cube_td):
    n = TINY_EPISODES * (TINY_LENGTH - 1)  # the last state of a trajectory has no successor
    assert cube_td.batch_size == (n,)
    assert cube_td["observation"].shape == (n, 28) and cube_td["observation"].dtype == torch.float32
    assert cube_td["next", "observation"].shape == (n, 28)
    assert cube_td["action"].shape == (n, 5) and cube_td["action"].dtype == torch.float32
    assert cube_td["next", "reward"].shape == (n, 1) and cube_td["next", "reward"].dtype == torch.float32
    for k in ("done", "terminated", "truncated"):
        assert cube_td["next", k].shape == (n, 1) and cube_td["next", k].dtype == torch.bool


def test_truncation_at_trajectory_ends(cube_td):
    ends = torch.nonzero(cube_td["next", "truncated"].squeeze(-1)).squeeze(-1).tolist()
    assert ends == [(TINY_LENGTH - 1) * (i + 1) - 1 for i in range(TINY_EPISODES)]
    done = cube_td["next", "done"]
    assert torch.equal(done, cube_td["next", "terminated"] | cube_td["next", "truncated"])
    # next observation is the following row's observation inside a trajectory
    inside = ~cube_td["next", "truncated"].squeeze(-1)[:-1]
    assert torch.equal(cube_td["next", "observation"][:-1][inside], cube_td["observation"][1:][inside])


@pytest.mark.parametrize("name", [CUBE, PUZZLE])
def test_cross_check_with_ogbench(tiny_ogbench_dir, name):
    import ogbench

    stem = parse_ogbench_name(name).file_stem
    path = os.path.join(tiny_ogbench_dir, f"{stem}.npz")
    _, train, val = ogbench.make_env_and_datasets(name, dataset_path=path)
    for split, ref in (("train", train), ("val", val)):
        td = load_ogbench_dataset(name, dataset_path=path, split=split)
        assert td.shape[0] == len(ref["observations"])
        np.testing.assert_array_equal(td["observation"].numpy(), ref["observations"])
        np.testing.assert_array_equal(td["next", "observation"].numpy(), ref["next_observations"])
        np.testing.assert_array_equal(td["next", "reward"].squeeze(-1).numpy(), ref["rewards"])
        np.testing.assert_array_equal(td["next", "terminated"].squeeze(-1).numpy(), ref["masks"] == 0)
        np.testing.assert_array_equal(td["next", "truncated"].squeeze(-1).numpy(), ref["terminals"] == 1)
        np.testing.assert_allclose(td["action"].numpy(), np.clip(ref["actions"], -ACTION_CLIP, ACTION_CLIP))
    assert set(np.unique(train["rewards"])) <= set(range(-9, 1))


def test_terminated_is_one_minus_mask_on_success(tmp_path, tiny_ogbench_dir):
    """Put the cube on task 1's goal in a few rows: those become terminal with reward 0."""
    import gymnasium

    path = _copy_pair(tiny_ogbench_dir, str(tmp_path))
    env = gymnasium.make("cube-single-singletask-task1-v0")
    env.reset()
    goal = env.unwrapped._data.mocap_pos[0].copy()
    with np.load(path) as f:
        qpos = f["qpos"].copy()
    rows = [5, 6, 60]  # file rows; a file row r (not a trajectory end) is transition r - (episode index)
    qpos[rows, 14:17] = goal
    _rewrite(path, qpos=qpos)
    td = load_ogbench_dataset(CUBE, dataset_path=path)
    terminated = torch.nonzero(td["next", "terminated"].squeeze(-1)).squeeze(-1).tolist()
    assert terminated == [5, 6, 59]
    assert td["next", "reward"][terminated].eq(0).all() and td["next", "reward"].sum() == -(td.shape[0] - 3)
    assert torch.equal(td["next", "done"].squeeze(-1)[terminated], torch.ones(3, dtype=torch.bool))


def test_actions_clipped(tmp_path, tiny_ogbench_dir):
    path = _copy_pair(tiny_ogbench_dir, str(tmp_path))
    with np.load(path) as f:
        actions = f["actions"].copy()
    actions[0] = [1.0, -1.0, 1.0, 0.25, -1.0]
    _rewrite(path, actions=actions)
    td = load_ogbench_dataset(CUBE, dataset_path=path)
    expected = torch.tensor([ACTION_CLIP, -ACTION_CLIP, ACTION_CLIP, 0.25, -ACTION_CLIP])
    torch.testing.assert_close(td["action"][0], expected)
    assert td["action"].abs().max() <= ACTION_CLIP


def test_goal_conditioned_name_has_no_reward(tiny_ogbench_dir):
    td = load_ogbench_dataset("cube-single-play-v0", dataset_dir=tiny_ogbench_dir, split="val")
    assert ("next", "reward") not in td.keys(True)
    assert not td["next", "terminated"].any() and td["next", "done"].sum() == 1


@pytest.mark.parametrize("storage", ["ram", "memmap"])
def test_replay_buffer(tiny_ogbench_dir, cube_td, storage, tmp_path):
    from torchrl.data import LazyMemmapStorage, LazyTensorStorage

    rb = make_ogbench_replay_buffer(CUBE, 32, storage=storage, dataset_dir=tiny_ogbench_dir,
                                    scratch_dir=str(tmp_path / "mm"))
    assert len(rb) == cube_td.shape[0]
    assert isinstance(rb._storage, LazyTensorStorage if storage == "ram" else LazyMemmapStorage)
    torch.manual_seed(0)
    batch = rb.sample()
    assert batch.shape == (32,)
    idx = batch["index"]
    torch.testing.assert_close(batch["observation"], cube_td["observation"][idx])
    torch.testing.assert_close(batch["next", "reward"], cube_td["next", "reward"][idx])
    # uniform: 50 batches hit most of the 147 rows
    seen = torch.cat([rb.sample()["index"] for _ in range(50)]).unique()
    assert seen.numel() > 0.9 * cube_td.shape[0]


def test_prioritized_sampler_needs_extension(tiny_ogbench_dir):
    if prioritized_replay_available():
        rb = make_ogbench_replay_buffer(CUBE, 8, sampler="prioritized", dataset_dir=tiny_ogbench_dir)
        assert rb.sample().shape == (8,)
    else:
        with pytest.raises(RuntimeError, match="C\\+\\+ extension.*uniform"):
            make_ogbench_replay_buffer(CUBE, 8, sampler="prioritized", dataset_dir=tiny_ogbench_dir)


# ----------------------------------------------------------------------------- bad input
def test_missing_dataset_names_generate_command(tmp_path):
    # A leftover temp file from an interrupted generation is not a dataset.
    (tmp_path / ".cube-single-play-v0.npz.abc123.tmp").write_bytes(b"PK\x03\x04 half written")
    with pytest.raises(FileNotFoundError) as e:
        load_ogbench_dataset(CUBE, dataset_dir=str(tmp_path))
    msg = str(e.value)
    assert "python -m deflow_trl.data.generate --env cube-single-play-v0" in msg
    assert f"--dataset-dir {tmp_path}" in msg and "cube-single-play-v0.npz" in msg


def test_truncated_file_raises(tmp_path, tiny_ogbench_dir):
    path = _copy_pair(tiny_ogbench_dir, str(tmp_path))
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt") as e:
        load_ogbench_dataset(CUBE, dataset_path=path)
    assert path in str(e.value)


def test_corrupt_member_raises(tmp_path, tiny_ogbench_dir):
    path = _copy_pair(tiny_ogbench_dir, str(tmp_path))
    data = bytearray(open(path, "rb").read())
    mid = len(data) // 3
    data[mid: mid + 64] = bytes(64)  # zero a block inside a compressed member
    open(path, "wb").write(bytes(data))
    with pytest.raises(ValueError) as e:
        load_ogbench_dataset(CUBE, dataset_path=path)
    assert path in str(e.value)


@pytest.mark.parametrize(
    "change, match",
    [
        ("short_actions", "'actions' has shape"),
        ("nan_obs", "non-finite"),
        ("inf_qpos", "non-finite"),
        ("no_qpos", "missing arrays \\['qpos'\\]"),
        ("open_end", "last step is not a trajectory end"),
    ],
)
def test_bad_contents_raise(tmp_path, tiny_ogbench_dir, change, match):
    path = _copy_pair(tiny_ogbench_dir, str(tmp_path))
    with np.load(path) as f:
        a = {k: f[k].copy() for k in f}
    if change == "short_actions":
        _rewrite(path, actions=a["actions"][:-1])
    elif change == "nan_obs":
        a["observations"][7, 3] = np.nan
        _rewrite(path, observations=a["observations"])
    elif change == "inf_qpos":
        a["qpos"][9, 0] = np.inf
        _rewrite(path, qpos=a["qpos"])
    elif change == "no_qpos":
        _rewrite(path, qpos=None)
    else:
        a["terminals"][-1] = False
        _rewrite(path, terminals=a["terminals"])
    with pytest.raises(ValueError, match=match) as e:
        load_ogbench_dataset(CUBE, dataset_path=path)
    assert path in str(e.value)


# ----------------------------------------------------------------------------- IAV CLI
def test_iav_cli(tiny_ogbench_dir, capsys):
    from deflow_trl.data.iav_cli import dataset_iav, main
    from deflow_trl.iav import intrinsic_action_variance, propose_delta

    out = dataset_iav("cube-single-play-v0", tiny_ogbench_dir, max_queries=None)
    td = load_ogbench_dataset("cube-single-play-v0", tiny_ogbench_dir)
    expected = intrinsic_action_variance(td["observation"], td["action"], k=5, max_queries=None)
    assert out["num_transitions"] == TINY_EPISODES * (TINY_LENGTH - 1)
    assert out["iav"] == pytest.approx(expected) and out["iav"] > 0
    assert out["delta"] == pytest.approx(propose_delta(expected, "cube"))
    main(["--dataset", "cube-single-play-v0", "--dataset-dir", tiny_ogbench_dir, "--max-queries", "0"])
    text = capsys.readouterr().out
    assert f"IAV = {out['iav']:.4g}" in text and f"proposed delta (cube) = {out['delta']:.3g}" in text


def test_replay_buffer_from_transitions_capacity():
    from conftest import random_transitions

    from deflow_trl.data import replay_buffer_from_transitions

    data = random_transitions(20, 3, 2)
    rb = replay_buffer_from_transitions(data, 4, capacity=30)
    assert len(rb) == 20 and rb.sample()["observation"].shape == (4, 3)
    rb.extend(random_transitions(10, 3, 2, seed=1))
    assert len(rb) == 30 and rb[:20]["observation"].equal(data["observation"])  # nothing evicted
    with pytest.raises(ValueError, match="smaller than the 20 transitions"):
        replay_buffer_from_transitions(data, 4, capacity=10)
