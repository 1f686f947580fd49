"""OGBenchExperienceReplay: memmap cache (written once, reused, invalidated, rebuilt), episode key, immutability, registry."""
import logging
import os
import shutil

import numpy as np
import pytest
import torch
from conftest import TINY_EPISODES, TINY_LENGTH

from deflow_trl.data import OGBenchExperienceReplay, load_ogbench_dataset, make_ogbench_replay_buffer, ogbench_replay
from deflow_trl.data.generate import atomic_savez

CUBE = "cube-single-play-singletask-task1-v0"
RAW = "cube-single-play-v0"  # goal-conditioned: no relabelling, so the fastest to build


def _copy_pair(src_dir, dst_dir, stem=RAW):
    os.makedirs(dst_dir, exist_ok=True)
    for suffix in (".npz", "-val.npz"):
        shutil.copy(os.path.join(src_dir, stem + suffix), os.path.join(dst_dir, stem + suffix))
    return os.path.join(dst_dir, stem + ".npz")


def _assert_same(a, b, keys=None):
    keys = keys or [k for k in a.keys(True, True)]
    assert sorted(map(str, keys)) == sorted(map(str, (k for k in b.keys(True, True) if k in keys)))
    for k in keys:
        assert torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])), k


def _forbid_npz(monkeypatch):
    """Any attempt to decompress/relabel the source fails the test."""
    def boom(*a, **k):
        raise AssertionError("the .npz was read although a valid cache exists")

    monkeypatch.setattr(np, "load", boom)
    monkeypatch.setattr(ogbench_replay, "read_ogbench_npz", boom)  # the cache's only way to the source file


@pytest.fixture(scope="module")
def cube_cache(tiny_ogbench_dir, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ogbench_cache"))
    rb = OGBenchExperienceReplay(CUBE, 16, dataset_dir=tiny_ogbench_dir, root=root, download=False)
    return root, rb


# ----------------------------------------------------------------------------- cache
def test_cache_written_then_reused_without_reading_npz(cube_cache, tiny_ogbench_dir, monkeypatch, caplog):
    import ogbench

    root, first = cube_cache
    manifest = os.path.join(first.data_path, "ogbench_cache.json")
    assert os.path.isfile(manifest) and first.data_path.parent == first.data_path_root
    assert not [p for p in os.listdir(first.data_path_root) if p.endswith((".tmp", ".old"))]  # no leftovers

    # The content is OGBench's own (cross-check as tests/test_data.py does for the uncached loader).
    _, ref, _ = ogbench.make_env_and_datasets(CUBE, dataset_path=os.path.join(tiny_ogbench_dir, RAW + ".npz"))
    data = first.transitions
    assert data.shape == (TINY_EPISODES * (TINY_LENGTH - 1),)
    np.testing.assert_array_equal(data["observation"].numpy(), ref["observations"])
    np.testing.assert_array_equal(data["next", "observation"].numpy(), ref["next_observations"])
    np.testing.assert_array_equal(data["next", "reward"].squeeze(-1).numpy(), ref["rewards"])
    np.testing.assert_array_equal(data["next", "terminated"].squeeze(-1).numpy(), ref["masks"] == 0)
    np.testing.assert_array_equal(data["next", "truncated"].squeeze(-1).numpy(), ref["terminals"] == 1)

    _forbid_npz(monkeypatch)
    mtime = os.path.getmtime(manifest)
    with caplog.at_level(logging.INFO, logger=ogbench_replay.__name__):
        second = OGBenchExperienceReplay(CUBE, 16, dataset_dir=tiny_ogbench_dir, root=root, download=False)
    assert "using the cache" in caplog.text and "rebuilding" not in caplog.text
    assert os.path.getmtime(manifest) == mtime  # not rewritten
    _assert_same(first.transitions, second.transitions)
    torch.manual_seed(3)
    a = first.sample()
    torch.manual_seed(3)
    b = second.sample()
    assert a.shape == (16,) and torch.equal(a["index"], b["index"])
    _assert_same(a, b)


def test_cached_equals_uncached_loader_and_wrappers(cube_cache, tiny_ogbench_dir):
    root, rb = cube_cache
    plain = load_ogbench_dataset(CUBE, dataset_dir=tiny_ogbench_dir)
    _assert_same(plain, rb.transitions, keys=list(plain.keys(True, True)))
    via_cache = load_ogbench_dataset(CUBE, dataset_dir=tiny_ogbench_dir, cache=root)
    assert "episode" not in via_cache.keys() and not isinstance(via_cache["observation"], type(rb.transitions["observation"]))
    _assert_same(plain, via_cache)
    # make_ogbench_replay_buffer keeps its writable storage; with cache= it reads the same data from the cache.
    buf = make_ogbench_replay_buffer(CUBE, 8, dataset_dir=tiny_ogbench_dir, cache=root)
    assert len(buf) == plain.shape[0]
    _assert_same(plain, buf[:].exclude("index"))


def test_episode_key_matches_source_trajectories(tiny_ogbench_dir, tmp_path):
    for stem, n_ep, length in ((RAW, TINY_EPISODES, TINY_LENGTH), ("puzzle-3x3-play-v0", 2, 40)):
        rb = OGBenchExperienceReplay(stem, 4, dataset_dir=tiny_ogbench_dir, root=str(tmp_path), download=False)
        with np.load(os.path.join(tiny_ogbench_dir, stem + ".npz")) as f:
            terminals = f["terminals"].astype(np.int64)
        # Episode of each file row = trajectory ends before it; the loader drops each trajectory's last row.
        expected = (np.cumsum(terminals) - terminals)[terminals == 0]
        episode = rb.transitions["episode"]
        assert episode.dtype == torch.int64 and episode.shape == (n_ep * (length - 1),)
        np.testing.assert_array_equal(episode.numpy(), expected)
        assert torch.bincount(episode).tolist() == [length - 1] * n_ep
        # the last transition of each episode is the one flagged truncated
        last = torch.nonzero(episode[1:] != episode[:-1]).squeeze(-1).tolist() + [len(episode) - 1]
        assert torch.nonzero(rb.transitions["next", "truncated"].squeeze(-1)).squeeze(-1).tolist() == last


def test_writer_immutable_by_default(cube_cache, tiny_ogbench_dir):
    _, rb = cube_cache
    batch = rb.sample()
    with pytest.raises(RuntimeError, match="doesn't allow writing"):
        rb.extend(batch)
    with pytest.raises(RuntimeError, match="doesn't allow writing"):
        rb.add(batch[0])
    assert len(rb) == TINY_EPISODES * (TINY_LENGTH - 1)


def test_changed_npz_invalidates_cache(tiny_ogbench_dir, tmp_path, caplog):
    path = _copy_pair(tiny_ogbench_dir, str(tmp_path / "data"))
    kw = dict(dataset_path=path, root=str(tmp_path / "cache"), download=False)
    before = OGBenchExperienceReplay(RAW, 4, **kw).transitions["observation"].clone()
    with np.load(path) as f:
        arrays = {k: f[k] for k in f}
    arrays["observations"] = arrays["observations"] + 1.0
    atomic_savez(path, arrays)  # same size on disk is irrelevant: the member CRCs differ
    with caplog.at_level(logging.WARNING, logger=ogbench_replay.__name__):
        after = OGBenchExperienceReplay(RAW, 4, **kw).transitions["observation"]
    assert "changed since the cache was built" in caplog.text
    torch.testing.assert_close(after, before + 1.0)


def test_cache_outlives_its_source_and_reads_from_read_only_root(tiny_ogbench_dir, tmp_path, monkeypatch):
    path = _copy_pair(tiny_ogbench_dir, str(tmp_path / "data"))
    root = tmp_path / "cache"
    kw = dict(dataset_path=path, root=str(root), download=False)
    good = OGBenchExperienceReplay(RAW, 4, **kw).transitions.clone()
    os.remove(path)  # the cache is now the only copy: used as is
    _forbid_npz(monkeypatch)
    _assert_same(good, OGBenchExperienceReplay(RAW, 4, **kw).transitions)
    # A read-only root (shared prebuilt cache): no lock file can be created; reading still works.
    os.remove(next(root.joinpath(RAW).glob(".*.lock")))
    real_open = os.open

    def read_only_open(file, flags, *a, **k):
        if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise PermissionError(13, "Read-only file system", file)
        return real_open(file, flags, *a, **k)

    monkeypatch.setattr(os, "open", read_only_open)
    _assert_same(good, OGBenchExperienceReplay(RAW, 4, **kw).transitions)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "no_manifest", "bad_manifest", "foreign_format"])
def test_corrupt_cache_rebuilt(tiny_ogbench_dir, tmp_path, caplog, damage):
    kw = dict(dataset_dir=tiny_ogbench_dir, root=str(tmp_path), download=False)
    first = OGBenchExperienceReplay(RAW, 4, **kw)
    good = first.transitions.clone()
    obs_file = os.path.join(first.data_path, "data", "observation.memmap")
    manifest = os.path.join(first.data_path, "ogbench_cache.json")
    if damage == "truncate":  # a partial write
        with open(obs_file, "r+b") as f:
            f.truncate(os.path.getsize(obs_file) // 2)
    elif damage == "flip":  # same size, different bytes: only the CRC sees it
        with open(obs_file, "r+b") as f:
            f.seek(100)
            byte = f.read(1)
            f.seek(100)
            f.write(bytes([byte[0] ^ 0xFF]))
    elif damage == "delete":
        os.remove(os.path.join(first.data_path, "data", "next", "done.memmap"))
    elif damage == "no_manifest":
        os.remove(manifest)
    elif damage == "bad_manifest":
        open(manifest, "w").write('{"format": 1, "files": ')
    else:
        text = open(manifest).read().replace('"format": 1', '"format": 999')
        open(manifest, "w").write(text)
    del first
    with caplog.at_level(logging.WARNING, logger=ogbench_replay.__name__):
        rebuilt = OGBenchExperienceReplay(RAW, 4, **kw)
    assert "is not usable" in caplog.text and "rebuilding" in caplog.text
    _assert_same(good, rebuilt.transitions)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=ogbench_replay.__name__):
        OGBenchExperienceReplay(RAW, 4, **kw)  # the rebuilt cache is valid
    assert caplog.text == ""


def test_killed_build_leaves_no_cache(tiny_ogbench_dir, tmp_path, monkeypatch):
    kw = dict(dataset_dir=tiny_ogbench_dir, root=str(tmp_path), download=False)
    real_rename = os.rename

    def killed(*a):
        raise KeyboardInterrupt  # a kill between writing the files and publishing them

    monkeypatch.setattr(os, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        OGBenchExperienceReplay(RAW, 4, **kw)
    monkeypatch.setattr(os, "rename", real_rename)
    root = os.path.join(str(tmp_path), RAW)
    assert [p for p in os.listdir(root) if not p.endswith(".lock")] == []
    rb = OGBenchExperienceReplay(RAW, 4, **kw)
    assert len(rb) == TINY_EPISODES * (TINY_LENGTH - 1)


def test_force_rebuilds(tiny_ogbench_dir, tmp_path, caplog):
    kw = dict(dataset_dir=tiny_ogbench_dir, root=str(tmp_path))
    a = OGBenchExperienceReplay(RAW, 4, download=False, **kw)
    manifest = os.path.join(a.data_path, "ogbench_cache.json")
    os.utime(manifest, (0, 0))
    b = OGBenchExperienceReplay(RAW, 4, download="force", **kw)
    assert os.path.getmtime(manifest) > 0  # rewritten
    _assert_same(a.transitions, b.transitions)


# ----------------------------------------------------------------------------- options
def test_registry_load_dataset(tiny_ogbench_dir, tmp_path):
    from torchrl.data.datasets import load_dataset

    rb = load_dataset(f"ogbench:{RAW}", batch_size=5, dataset_dir=tiny_ogbench_dir, root=str(tmp_path),
                      download=False, split="val")
    assert isinstance(rb, OGBenchExperienceReplay)
    assert rb.sample().shape == (5,) and len(rb) == TINY_LENGTH - 1  # one val episode
    assert rb.data_path.name.startswith("val-")


def test_split_trajs(tiny_ogbench_dir, tmp_path):
    rb = OGBenchExperienceReplay(RAW, 2, dataset_dir=tiny_ogbench_dir, root=str(tmp_path), download=False,
                                 split_trajs=True)
    flat = OGBenchExperienceReplay(RAW, 2, dataset_dir=tiny_ogbench_dir, root=str(tmp_path), download=False)
    data = rb.transitions
    assert data.shape == (TINY_EPISODES, TINY_LENGTH - 1) and bool(data["mask"].all())
    assert torch.equal(data["observation"].reshape(-1, 28), flat.transitions["observation"])
    assert rb.sample().shape == (2, TINY_LENGTH - 1)  # whole trajectories


def test_generate_when_missing(tmp_path):
    rb = OGBenchExperienceReplay(RAW, 4, dataset_dir=str(tmp_path / "data"), root=str(tmp_path / "cache"),
                                 download=False, generate=True,
                                 generate_kwargs=dict(num_episodes=2, episode_length=12, progress=False))
    assert os.path.isfile(tmp_path / "data" / f"{RAW}.npz") and os.path.isfile(tmp_path / "data" / f"{RAW}-val.npz")
    assert len(rb) == 2 * 11 and rb.transitions["episode"].tolist() == [0] * 11 + [1] * 11


def test_bad_input_errors(tmp_path, tiny_ogbench_dir):
    with pytest.raises(ValueError, match="Unknown OGBench dataset.*cube-single"):
        OGBenchExperienceReplay("cube-sigle-play-v0", 4, root=str(tmp_path))
    with pytest.raises(ValueError, match="pixel-based"):
        OGBenchExperienceReplay("visual-cube-single-play-v0", 4, root=str(tmp_path))
    with pytest.raises(ValueError, match="download must be True, False or 'force'"):
        OGBenchExperienceReplay(RAW, 4, root=str(tmp_path), download="yes")
    with pytest.raises(FileNotFoundError, match="python -m deflow_trl.data.generate --env cube-single-play-v0"):
        OGBenchExperienceReplay(CUBE, 4, dataset_dir=str(tmp_path / "none"), root=str(tmp_path), download=False)
    with pytest.raises(ValueError, match="cannot regenerate 'antmaze-large-navigate-v0'"):
        OGBenchExperienceReplay("antmaze-large-navigate-v0", 4, dataset_dir=str(tmp_path / "none"),
                                root=str(tmp_path), download=False, generate=True)
    # A corrupt source with no cache is refused by the loader's checks, and nothing is cached.
    path = _copy_pair(tiny_ogbench_dir, str(tmp_path / "bad"))
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        OGBenchExperienceReplay(RAW, 4, dataset_path=path, root=str(tmp_path / "c2"), download=False)
    assert [p for p in os.listdir(tmp_path / "c2" / RAW) if not p.endswith(".lock")] == []
