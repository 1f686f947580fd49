"""OGBench datasets as a TorchRL offline dataset: :class:`OGBenchExperienceReplay`.

TorchRL ships its offline datasets (D4RL, Minari, ...) as
:class:`~torchrl.data.datasets.BaseDatasetExperienceReplay` subclasses: a replay buffer
whose storage is a memory-mapped copy of the dataset under a cache root, an immutable
writer, and a ``load_dataset("<prefix>:<id>")`` registry entry. This module is the same
for OGBench, which has no upstream TorchRL class.

What happens on construction:

1. the name is parsed (an unknown or ``visual-`` name fails here, before any file is read);
2. if a valid cache exists under ``root`` it is memory-mapped and used: the ``.npz`` is
   **not** decompressed and nothing is relabelled (only the zip directory of the source
   is read, to check it has not changed);
3. otherwise the source ``.npz`` is made available (already on disk; else regenerated with
   the package's oracle generator when ``generate=True``; else downloaded when ``download``),
   loaded and relabelled by :func:`deflow_trl.data.load_ogbench_dataset` (all its file
   checks apply), given an ``episode`` key, written to a temporary directory next to the
   cache and renamed into place (a crash never leaves a half-written cache under the real name).

Cache layout: ``<root>/<dataset_id>/<split>-<hash of the source path>/`` holding
``data/`` (``TensorDict.memmap`` files) and ``ogbench_cache.json`` (the manifest). The
default root is ``$DEFLOW_OGBENCH_CACHE`` or ``~/.cache/deflow_trl/ogbench``. The manifest
records the cache format, the ogbench version (the relabelling is ogbench's), the action
clip, the source file's size and the CRC32 and size of every array in it (read from the zip
directory, so a rewritten file with new content is detected without decompressing it),
and the size and CRC32 of every cache file. A cache whose manifest is missing or
unreadable, whose source changed, or whose files are short, missing or fail their CRC is
**rebuilt** (with a logged warning naming the reason), never used. CRC-checking costs one
sequential read of the cache (≈ 0.25 GB for 1M cube transitions, ≈ 0.1 s when in the page
cache); ``verify_cache=False`` checks sizes only. If the source file was deleted after the
cache was built, the cache is used as is (it is then the only copy).

Keys (``N`` transitions; layout of :func:`~deflow_trl.data.load_ogbench_dataset`, plus ``episode``):

==============================  =======  ==========================================================
``observation``                 [N, o]   float32
``action``                      [N, a]   float32, clipped to ±(1 − 1e-5)
``episode``                     [N]      int64, index of the trajectory in the file (0, 1, ...)
``("next", "observation")``     [N, o]   float32
``("next", "reward")``          [N, 1]   float32, single-task names only
``("next", "terminated")``      [N, 1]   bool (task solved; False for goal-conditioned names)
``("next", "truncated")``       [N, 1]   bool, last transition of each trajectory
``("next", "done")``            [N, 1]   bool, terminated | truncated
==============================  =======  ==========================================================

The class is registered with TorchRL's dataset registry under the prefix ``ogbench`` when
:mod:`deflow_trl.data` is imported, so ``torchrl.data.datasets.load_dataset("ogbench:<name>", ...)``
works after ``import deflow_trl.data``.

Examples:
    >>> import tempfile
    >>> from deflow_trl.data import generate_dataset, OGBenchExperienceReplay
    >>> d, cache = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> _ = generate_dataset("cube-single-play-v0", 2, episode_length=20, dataset_dir=d, progress=False)
    >>> rb = OGBenchExperienceReplay("cube-single-play-singletask-task1-v0", 8, dataset_dir=d, root=cache)
    >>> len(rb), rb.sample()["action"].shape, rb.transitions["episode"].unique().tolist()
    (38, torch.Size([8, 5]), [0, 1])
    >>> from torchrl.data.datasets import load_dataset
    >>> again = load_dataset("ogbench:cube-single-play-singletask-task1-v0", batch_size=8, dataset_dir=d, root=cache)
    >>> bool((again.transitions["observation"] == rb.transitions["observation"]).all())
    True
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Literal

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data.datasets.common import BaseDatasetExperienceReplay
from torchrl.data.replay_buffers import Sampler, TensorStorage, Writer
from torchrl.data.replay_buffers.writers import ImmutableDatasetWriter

from deflow_trl.data.files import ACTION_CLIP, ogbench_dataset_path, read_ogbench_npz
from deflow_trl.data.generate import generate_command, generate_dataset
from deflow_trl.envs.names import parse_ogbench_name

__all__ = ["OGBenchExperienceReplay", "CACHE_ENV", "default_cache_root", "episode_index"]

log = logging.getLogger(__name__)

CACHE_ENV = "DEFLOW_OGBENCH_CACHE"  # overrides the default cache root
_FORMAT = 1  # bump when the cached layout or its semantics change: old caches are rebuilt
_MANIFEST = "ogbench_cache.json"
_CHUNK = 16 << 20  # bytes per read when CRC-checking


def default_cache_root() -> str:
    """``$DEFLOW_OGBENCH_CACHE`` if set, else ``~/.cache/deflow_trl/ogbench``."""
    return os.path.expanduser(os.environ.get(CACHE_ENV) or os.path.join("~", ".cache", "deflow_trl", "ogbench"))


def episode_index(truncated: torch.Tensor) -> torch.Tensor:
    """Trajectory index (int64, shape [N]) of each transition, from the end-of-trajectory flags.

    ``truncated`` ([N] or [N, 1], bool) marks the last transition of each trajectory.

    Examples:
        >>> episode_index(torch.tensor([False, True, False, False, True])).tolist()
        [0, 0, 1, 1, 1]
    """
    ends = truncated.reshape(truncated.shape[0]).long()
    return ends.cumsum(0) - ends


class OGBenchExperienceReplay(BaseDatasetExperienceReplay):
    """An OGBench dataset as an immutable, memory-mapped TorchRL replay buffer (see the module docstring).

    Args:
        dataset_id: an OGBench dataset name, single-task (``cube-single-play-singletask-task1-v0``:
            rewards and terminations from OGBench's relabelling) or goal-conditioned
            (``cube-single-play-v0``: no reward key, never terminated).
        batch_size: default sample size of :meth:`sample`.

    Keyword Args:
        root: cache root (default :func:`default_cache_root`).
        download: ``True`` fetch the official ``.npz`` with ogbench if it is missing (needs
            internet; fails with the local regeneration command otherwise); ``False`` never
            download; ``"force"`` also discard the cache and rebuild it from the source file.
        generate: regenerate a missing ``.npz`` locally with :func:`~deflow_trl.data.generate_dataset`
            (OGBench's scripted oracles; cube/scene/puzzle ``play`` and pointmaze ``navigate`` only).
            Takes precedence over ``download``. ``generate_kwargs`` go to ``generate_dataset``
            (default ``num_episodes=1000``, OGBench's size; e.g. ``workers``, ``seed``, ``episode_length``).
        dataset_dir: where the ``.npz`` pair lives (default ``~/.ogbench/data``).
        dataset_path: explicit train file (its ``-val.npz`` sibling for ``split="val"``); wins over ``dataset_dir``.
        split: ``"train"`` or ``"val"``.
        sampler, writer, collate_fn, pin_memory, prefetch, transform: as
            :class:`~torchrl.data.TensorDictReplayBuffer`; the default writer is TorchRL's
            :class:`~torchrl.data.replay_buffers.ImmutableDatasetWriter` (``extend`` raises).
        split_trajs: store trajectories as rows ``[num_episodes, max_len]`` with a ``mask`` key
            (TorchRL's ``split_trajectories``; built in RAM from the cache at every load).
        device: storage device; ``None`` keeps the memory-mapped CPU tensors (no copy).
        verify_cache: CRC-check the cache files at load (default); ``False`` checks sizes only.

    Raises:
        ValueError: unknown name or bad argument; :class:`~deflow_trl.errors.DatasetError` for a
            corrupt or malformed source file.
        FileNotFoundError: the source file is missing (and no valid cache exists); the message
            names the command that regenerates it.
        ConnectionError: ``download=True`` without internet.
    """

    def __init__(
        self,
        dataset_id: str,
        batch_size: int | None,
        *,
        root: str | Path | None = None,
        download: bool | Literal["force"] = True,
        generate: bool = False,
        dataset_dir: str | None = None,
        dataset_path: str | None = None,
        split: Literal["train", "val"] = "train",
        sampler: Sampler | None = None,
        writer: Writer | None = None,
        collate_fn: Callable | None = None,
        pin_memory: bool = False,
        prefetch: int | None = None,
        transform=None,
        split_trajs: bool = False,
        device: torch.device | str | None = None,
        verify_cache: bool = True,
        generate_kwargs: dict | None = None,
    ):
        if download not in (True, False, "force"):
            raise ValueError(f"download must be True, False or 'force', got {download!r}")
        for flag, value in (("generate", generate), ("split_trajs", split_trajs), ("verify_cache", verify_cache)):
            if not isinstance(value, bool):
                raise ValueError(f"{flag} must be True or False, got {value!r}")
        self.dataset_id = dataset_id
        self.name = parse_ogbench_name(dataset_id)  # unknown / visual names fail here
        self.split = split
        self.dataset_dir, self.dataset_path = dataset_dir, dataset_path
        self.source_path = os.path.realpath(ogbench_dataset_path(dataset_id, dataset_dir, split, dataset_path))
        self.root = Path(os.path.expanduser(str(root))) if root is not None else Path(default_cache_root())
        self.split_trajs = split_trajs
        self.download = download
        self.verify_cache = verify_cache

        os.makedirs(self.data_path_root, exist_ok=True)
        with _flock(self.data_path_root / f".{self.data_path.name}.lock"):
            data = None if download == "force" else self._load_cache()
            if data is None:
                if generate and not os.path.isfile(self.source_path):
                    self._generate(generate_kwargs or {})
                data = self._build()
        if split_trajs:
            from torchrl.collectors.utils import split_trajectories

            data = split_trajectories(data, trajectory_key="episode", done_key=("next", "done"))
        if device is not None:
            data = data.to(device)
        super().__init__(
            storage=TensorStorage(data, device=data.device or "cpu"),
            sampler=sampler,
            writer=writer if writer is not None else ImmutableDatasetWriter(),
            collate_fn=collate_fn,
            pin_memory=pin_memory,
            prefetch=prefetch,
            batch_size=batch_size,
            transform=transform,
        )

    # ------------------------------------------------------------------ TorchRL dataset API
    @property
    def data_path_root(self) -> Path:
        """``<root>/<dataset_id>``: every cache of this dataset name."""
        return self.root / self.dataset_id

    @property
    def data_path(self) -> Path:
        """This split's cache for this source file: ``<root>/<dataset_id>/<split>-<hash of the source path>``."""
        digest = hashlib.sha1(self.source_path.encode()).hexdigest()[:10]
        return self.data_path_root / f"{self.split}-{digest}"

    def _is_downloaded(self) -> bool:
        """Whether a cache exists whose manifest matches (sizes checked, no CRC)."""
        return self._check_cache(verify=False) is None

    @property
    def transitions(self) -> TensorDictBase:
        """The stored transitions (memory-mapped unless ``device`` was given); no transform applied.

        Treat as read-only: writing into it writes into the cache (whose CRC check would then
        rebuild it at the next load).
        """
        return self._storage._storage

    # ------------------------------------------------------------------ cache
    def _manifest_path(self) -> Path:
        return self.data_path / _MANIFEST

    def _expected(self) -> dict:
        """The manifest fields a valid cache must match (except the per-file entries)."""
        return {"format": _FORMAT, "dataset_id": self.dataset_id, "split": self.split,
                "ogbench": _ogbench_version(), "action_clip": ACTION_CLIP}

    def _check_cache(self, verify: bool) -> str | None:
        """None if the cache is valid, else why not (``"absent"`` when there is none)."""
        if not self.data_path.exists():
            return "absent"
        try:
            with open(self._manifest_path()) as f:
                manifest = json.load(f)
            mismatched = [k for k, v in self._expected().items() if manifest.get(k) != v]
            files = {rel: (int(meta["size"]), int(meta["crc32"])) for rel, meta in manifest["files"].items()}
            source = manifest["source"]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            return f"unreadable manifest ({type(err).__name__}: {err})"
        if mismatched:
            return f"built with other {', '.join(mismatched)}"
        on_disk = set(_relative_files(self.data_path, "data"))
        if on_disk != set(files):
            return f"files {sorted(on_disk ^ set(files))} missing or not in the manifest"
        if os.path.isfile(self.source_path):  # a deleted source leaves the cache as the only copy
            try:
                current = _fingerprint(self.source_path)
            except (OSError, zipfile.BadZipFile) as err:
                return f"source {self.source_path} unreadable ({err})"
            if current != source:
                return f"source {self.source_path} changed since the cache was built"
        for rel, (expected_size, crc) in files.items():
            path = self.data_path / rel
            size = os.path.getsize(path)
            if size != expected_size:
                return f"file {rel} has {size} bytes, expected {expected_size} (partial write?)"
            if verify and _crc32(path) != crc:
                return f"file {rel} fails its CRC32 check (corrupt)"
        return None

    def _load_cache(self) -> TensorDict | None:
        why = self._check_cache(self.verify_cache)
        if why is None:
            try:
                data = TensorDict.load_memmap(self.data_path / "data")
                with open(self._manifest_path()) as f:
                    n = json.load(f)["num_transitions"]
                if data.batch_size == torch.Size([n]):
                    log.info("OGBench %s (%s): using the cache %s", self.dataset_id, self.split, self.data_path)
                    return data
                why = f"holds {tuple(data.batch_size)} transitions, manifest says {n}"
            except Exception as err:  # a malformed tensordict meta.json, unknown dtype, ...
                why = f"cannot be memory-mapped ({type(err).__name__}: {err})"
        if why != "absent":
            log.warning("OGBench cache %s is not usable (%s): rebuilding it from %s",
                        self.data_path, why, self.source_path)
        return None

    def _generate(self, kwargs: dict) -> None:
        if generate_command(self.name.file_stem) is None:
            raise ValueError(
                f"generate=True cannot regenerate {self.name.file_stem!r}: no scripted expert ships with ogbench "
                f"for it (regenerable: cube/scene/puzzle play, pointmaze navigate); pass download=True on a machine "
                f"with internet, or put the file at {self.source_path}"
            )
        train = self.source_path if self.split == "train" else self.source_path[: -len("-val.npz")] + ".npz"
        if os.path.basename(train) != f"{self.name.file_stem}.npz":
            raise ValueError(
                f"generate=True writes {self.name.file_stem}.npz, but dataset_path names {train}; "
                "pass dataset_dir instead of dataset_path to regenerate"
            )
        kwargs = {"num_episodes": 1000, **kwargs, "dataset_dir": os.path.dirname(train)}
        log.info("%s is missing: regenerating %d episodes with OGBench's scripted oracle", self.source_path,
                 kwargs["num_episodes"])
        generate_dataset(self.name.file_stem, **kwargs)

    def _build(self) -> TensorDict:
        """Load + relabel the source through ``read_ogbench_npz``, write the cache atomically, map it."""
        try:
            before = _fingerprint(self.source_path)
        except (OSError, zipfile.BadZipFile):  # missing or damaged: the loader raises the right error
            before = None
        data = read_ogbench_npz(self.dataset_id, self.dataset_dir, self.split, dataset_path=self.dataset_path,
                                    download=bool(self.download))
        source = _fingerprint(self.source_path)
        if before is not None and before != source:
            raise RuntimeError(f"{self.source_path} changed while it was being loaded; load again")
        data["episode"] = episode_index(data["next", "truncated"])

        parent = self.data_path_root
        _remove_leftovers(parent, self.data_path.name)
        tmp = Path(tempfile.mkdtemp(dir=parent, prefix=f".{self.data_path.name}.", suffix=".tmp"))
        try:
            data.memmap(tmp / "data")
            files = {rel: {"size": os.path.getsize(tmp / rel), "crc32": _crc32(tmp / rel)}
                     for rel in _relative_files(tmp, "data")}
            manifest = {**self._expected(), "num_transitions": data.shape[0], "source": source, "files": files}
            with open(tmp / _MANIFEST, "w") as f:
                json.dump(manifest, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            if self.data_path.exists():  # a stale or corrupt cache: out of the way first
                trash = Path(tempfile.mkdtemp(dir=parent, prefix=f".{self.data_path.name}.", suffix=".old"))
                os.rename(self.data_path, trash / "cache")
                shutil.rmtree(trash, ignore_errors=True)
            os.rename(tmp, self.data_path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.info("OGBench %s (%s): cached %d transitions in %s", self.dataset_id, self.split, data.shape[0],
                 self.data_path)
        return TensorDict.load_memmap(self.data_path / "data")


# ----------------------------------------------------------------------------- helpers
class _flock:
    """A blocking exclusive ``flock`` (concurrent loads of one dataset wait for one cache build).

    On a read-only cache root (a shared, prebuilt cache) the lock file is opened read-only, or
    skipped if it cannot be created: reading a valid cache needs no lock, and a build there fails
    with the file system's own error.
    """

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        self.fd = None
        for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):
            try:
                self.fd = os.open(self.path, flags, 0o666)
                break
            except OSError:
                continue
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


def _remove_leftovers(parent: Path, name: str) -> None:
    """Temp/trash directories of a build that was killed mid-way (caller holds the lock)."""
    for entry in parent.glob(f".{name}.*"):
        if entry.is_dir() and entry.suffix in (".tmp", ".old"):
            shutil.rmtree(entry, ignore_errors=True)


def _relative_files(base: Path, sub: str) -> list[str]:
    """Every file below ``base/sub``, as paths relative to ``base``."""
    return [str((Path(d) / f).relative_to(base)) for d, _, names in os.walk(base / sub) for f in names]


def _fingerprint(path: str) -> dict:
    """Size of the ``.npz`` and (CRC32, size) of each array, from the zip directory only (no decompression)."""
    with zipfile.ZipFile(path) as zf:
        members = {info.filename: [info.CRC, info.file_size] for info in zf.infolist()}
    return {"size": os.path.getsize(path), "members": members}


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def _ogbench_version() -> str:
    from importlib.metadata import version

    return version("ogbench")
