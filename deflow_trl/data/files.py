"""OGBench's ``.npz`` files: where they are, what a valid one holds, and reading one into transitions.

The lowest floor of :mod:`deflow_trl.data`: the loader (:mod:`deflow_trl.data.ogbench`), its
memory-mapped cache (:mod:`deflow_trl.data.ogbench_replay`) and the pixel datasets
(:mod:`deflow_trl.data.pixels`) read files through here. Every problem with a file is one
:class:`~deflow_trl.errors.DatasetError` naming the file and what is wrong with it.
"""
from __future__ import annotations

import os
import socket
import zipfile
from typing import Literal

import numpy as np
import torch
from tensordict import TensorDict

from deflow_trl.data.generate import generate_command
from deflow_trl.envs.names import OGBenchName, parse_ogbench_name
from deflow_trl.errors import DatasetError
from deflow_trl.paths import default_dataset_dir

__all__ = ["ACTION_CLIP", "ACTION_TOLERANCE", "checked_actions", "download_official", "missing_file_error",
           "npz_headers", "ogbench_dataset_path", "read_ogbench_npz", "relabel_singletask"]


# Flow matching targets actions in the open interval; OGBench's agents clip the same way.
ACTION_CLIP = 1.0 - 1e-5
# Actions this close outside [-1, 1] are round-off and get clipped; farther out, the
# file is refused (a silent clip would pile a rescaled dataset's actions onto the bounds).
ACTION_TOLERANCE = 1e-3


# ----------------------------------------------------------------------------- files
def ogbench_dataset_path(
    name: str, dataset_dir: str | None = None, split: Literal["train", "val"] = "train",
    dataset_path: str | None = None,
) -> str:
    """Path of the ``split`` file of dataset ``name`` (not checked for existence).

    ``dataset_path`` (the train file, as in ``ogbench.make_env_and_datasets``) wins over
    ``dataset_dir``; the val file is its ``-val.npz`` sibling.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if dataset_path is not None:
        train = os.path.expanduser(dataset_path)
    else:
        stem = parse_ogbench_name(name).file_stem
        train = os.path.join(os.path.expanduser(dataset_dir) if dataset_dir else default_dataset_dir(), f"{stem}.npz")
    return train if split == "train" else train[: -len(".npz")] + "-val.npz"


def missing_file_error(name: OGBenchName, path: str, dataset_dir: str | None) -> FileNotFoundError:
    cmd = generate_command(name.file_stem, dataset_dir if dataset_dir else os.path.dirname(path))
    how = (
        f"Generate it locally (no internet needed) with:\n    {cmd}\n"
        if cmd
        else f"This module cannot regenerate {name.file_stem!r} (no scripted expert ships with ogbench); "
    )
    return FileNotFoundError(
        f"OGBench dataset file {path} not found. {how}"
        "or, on a machine with internet, pass download=True to fetch the official file."
    )


def download_official(name: OGBenchName, dataset_dir: str | None, path: str) -> None:
    from ogbench.utils import download_datasets

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # fail fast offline instead of hanging on the connect
    try:
        download_datasets([name.file_stem], os.path.expanduser(dataset_dir) if dataset_dir else default_dataset_dir())
    except OSError as err:  # URLError, timeouts, DNS failures
        import urllib.error

        if not isinstance(err, (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout, socket.gaierror)):
            raise  # a local problem (permissions, disk full): reported as itself
        cmd = generate_command(name.file_stem, dataset_dir if dataset_dir else os.path.dirname(path))
        reason = getattr(err, "reason", None) or err
        raise ConnectionError(
            f"downloading the OGBench dataset {name.file_stem!r} failed ({type(err).__name__}: {reason}); "
            "download=True needs internet"
            + (f"; without it, generate the data locally: {cmd}" if cmd else "")
        ) from err
    finally:
        socket.setdefaulttimeout(previous)


def npz_headers(path: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shapes and dtypes of every array in an ``.npz``, reading only the ``.npy`` headers."""
    from numpy.lib import format as npy

    headers = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as f:
                    version = npy.read_magic(f)
                    reader = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
                    shape, _, dtype = reader(f)
                headers[info.filename[:-4]] = (shape, dtype)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise DatasetError(f"{path}: not a readable .npz file (truncated or corrupt): {err}") from err
    return headers


def _check_file(path: str, name: OGBenchName) -> None:
    """Structural checks from the headers (cheap) plus the terminals (one small array)."""
    headers = npz_headers(path)
    required = ["observations", "actions", "terminals"]
    if name.singletask:
        required.append("qpos")  # single-task success is computed from the simulator state
        if name.suite in ("scene", "puzzle"):
            required.append("button_states")
    missing = [k for k in required if k not in headers]
    if missing:
        raise DatasetError(f"{path}: missing arrays {missing} (has {sorted(headers)}); not an OGBench dataset file")
    n = headers["terminals"][0]
    if len(n) != 1 or n[0] < 2:
        raise DatasetError(f"{path}: 'terminals' must have shape [N] with N >= 2, got {n}")
    n = n[0]
    for k in required:
        shape = headers[k][0]
        if k != "terminals" and (len(shape) != 2 or shape[0] != n):
            raise DatasetError(f"{path}: {k!r} has shape {shape}, expected [{n}, dim] to match 'terminals' [{n}]")
    try:
        with np.load(path) as f:
            terminals = f["terminals"]
    except Exception as err:  # zlib/CRC errors in a damaged member
        raise DatasetError(f"{path}: cannot read 'terminals' (corrupt file): {err}") from err
    if not terminals[-1]:
        raise DatasetError(f"{path}: the last step is not a trajectory end (terminals[-1] == 0); file truncated?")


def _check_finite(path: str, arrays: dict[str, np.ndarray]) -> None:
    for k, v in arrays.items():
        if np.issubdtype(v.dtype, np.floating):
            bad = ~np.isfinite(v)
            if bad.any():
                rows = np.unique(np.nonzero(bad)[0])
                raise DatasetError(f"{path}: {int(bad.sum())} non-finite values (NaN/inf) in {k!r}, rows {rows[:5].tolist()}...")


# ----------------------------------------------------------------------------- loading
def checked_actions(path: str, actions: np.ndarray) -> np.ndarray:
    """``actions`` clipped to ±ACTION_CLIP, after checking they lie in [-1, 1] up to ``ACTION_TOLERANCE``.

    Raises :class:`~deflow_trl.errors.DatasetError` naming the fraction out of range and the fix.
    """
    outside = np.abs(actions) > 1.0 + ACTION_TOLERANCE
    if outside.any():
        frac = float(outside.mean())
        worst = float(np.abs(actions).max())
        raise DatasetError(
            f"{path}: {100 * frac:.3g}% of action values lie outside [-1, 1] (max |a| = {worst:.4g}); "
            "the policy and the env act in [-1, 1]: rescale the dataset's actions into [-1, 1] "
            f"(e.g. divide by {worst:.4g} if the scale is symmetric) and rewrite the file; "
            f"values within {ACTION_TOLERANCE:g} of the bounds are clipped, farther ones are refused"
        )
    return np.clip(actions, -ACTION_CLIP, ACTION_CLIP)


def read_ogbench_npz(
    name: str,
    dataset_dir: str | None = None,
    split: Literal["train", "val"] = "train",
    *,
    dataset_path: str | None = None,
    download: bool = False,
) -> TensorDict:
    """Decompresses, checks and relabels one ``.npz`` file into a TensorDict of transitions (no cache).

    What :func:`deflow_trl.data.load_ogbench_dataset` returns with ``cache=False``; arguments as there.
    """
    parsed = parse_ogbench_name(name)
    path = ogbench_dataset_path(name, dataset_dir, split, dataset_path)
    if not os.path.isfile(path):
        if not download or dataset_path is not None:
            raise missing_file_error(parsed, path, dataset_dir)
        download_official(parsed, dataset_dir, path)
    _check_file(path, parsed)

    from ogbench.utils import load_dataset

    try:
        data = load_dataset(path, add_info=parsed.singletask)
    except Exception as err:
        raise DatasetError(f"{path}: failed to decode (corrupt file?): {err}") from err
    _check_finite(path, {k: data[k] for k in ("observations", "actions", "next_observations", "qpos") if k in data})

    n = len(data["observations"])
    truncated = torch.as_tensor(data["terminals"] > 0).unsqueeze(-1)
    nxt = {"observation": torch.as_tensor(data["next_observations"]), "truncated": truncated}
    if parsed.singletask:
        relabel_singletask(parsed, data)
        nxt["reward"] = torch.as_tensor(data["rewards"]).unsqueeze(-1)
        nxt["terminated"] = torch.as_tensor(data["masks"] == 0).unsqueeze(-1)
    else:
        nxt["terminated"] = torch.zeros(n, 1, dtype=torch.bool)
    nxt["done"] = nxt["terminated"] | truncated
    actions = checked_actions(path, data["actions"])
    return TensorDict(
        {"observation": torch.as_tensor(data["observations"]), "action": torch.as_tensor(actions), "next": nxt},
        batch_size=[n],
    )




def relabel_singletask(parsed: OGBenchName, data: dict[str, np.ndarray]) -> None:
    """OGBench's own single-task relabelling (adds 'rewards' and 'masks' in place)."""
    import gymnasium
    import ogbench  # noqa: F401
    from ogbench.relabel_utils import relabel_dataset

    env = gymnasium.make(parsed.env_id)
    try:
        relabel_dataset(parsed.env_id, env, data)
    finally:
        env.close()
