"""Crash-safe training checkpoints.

A checkpoint is one file ``ckpt_<step>.pt`` written atomically: the state is
saved to a hidden temporary file in the same directory, flushed to disk
(``fsync``), then renamed over the final name (``os.replace`` is atomic on
POSIX). A SIGKILL at any moment therefore leaves either the previous set of
checkpoints or the previous set plus a complete new one, never a half-written
``ckpt_*.pt``; leftover temporary files are ignored by readers and removed by the next save.
A checkpoint damaged some other way (disk error, partial copy) is reported and
skipped by :func:`load_latest_checkpoint`, which falls back to the previous one;
the training app moves it aside as ``<name>.corrupt`` (never deletes it).

Everything stored is loadable with ``torch.load(weights_only=True)``: tensors,
numbers, strings and containers of them. RNG state is TorchRL's
:class:`~torchrl.checkpoint.GlobalRNGState` (CUDA included).

Why not ``torchrl.checkpoint.Checkpoint`` + ``CheckpointRotation`` for the files
themselves (torchrl 0.14.1, probed in docs/history.md): they publish atomically too, but
(1) nothing is fsync'ed, so a power loss after the rename can leave a checkpoint
with empty payloads; (2) ``load_latest`` raises on a corrupt newest checkpoint
instead of falling back to the previous valid one; (3) a save killed midway leaves
its ``.checkpoint-*.stage-*`` directory (a full copy of the state) forever.
"""
from __future__ import annotations

import glob
import os
import random
import re
import tempfile
import warnings

import numpy as np
import torch
from torchrl.checkpoint import GlobalRNGState

from deflow_trl.errors import CheckpointError

_NAME = re.compile(r"^ckpt_(\d{9})\.pt$")


def _checkpoint_files(directory: str) -> list[tuple[int, str]]:
    if not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        m = _NAME.match(name)
        if m:
            found.append((int(m.group(1)), os.path.join(directory, name)))
    return sorted(found)


def rng_state() -> dict:
    """Every process-global RNG as TorchRL's :class:`~torchrl.checkpoint.GlobalRNGState` captures it:
    Python, NumPy, torch CPU and, once initialised, CUDA (all devices), XPU, MPS. Only tensors,
    numbers, strings and tuples: ``weights_only``-safe."""
    return GlobalRNGState().state_dict()


def set_rng_state(state: dict) -> None:
    """Restores :func:`rng_state`'s capture (or the pre-0.2 layout: ``torch``/``numpy_keys``/``python``).

    Accelerator state the machine cannot take (a CUDA run resumed on a CPU-only machine) is
    skipped with a warning: the CPU, NumPy and Python streams still resume exactly, the device's
    random stream does not."""
    if "torch" in state and "torch_cpu" not in state:  # checkpoints written before GlobalRNGState
        torch.set_rng_state(state["torch"])
        np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
        random.setstate((state["python_version"], tuple(state["python"].tolist()), None))
        return
    state = dict(state)
    for key, available in (("torch_cuda", torch.cuda.is_available),
                           ("torch_xpu", lambda: hasattr(torch, "xpu") and torch.xpu.is_available()),
                           ("torch_mps", lambda: torch.backends.mps.is_available())):
        if key in state and not available():
            warnings.warn(f"the checkpoint holds {key[6:].upper()} RNG state but this machine has no such device: "
                          "resuming without it (device-side random draws will differ from the original run)",
                          RuntimeWarning, stacklevel=2)
            del state[key]
    GlobalRNGState().load_state_dict(state)


def save_checkpoint(directory: str, step: int, state: dict, keep: int = 3) -> str:
    """Writes ``state`` as ``<directory>/ckpt_<step>.pt`` atomically, then keeps
    only the ``keep`` most recent checkpoints. Returns the path."""
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"ckpt_{step:09d}.pt")
    fd, tmp = tempfile.mkstemp(prefix=".ckpt_", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:  # make the rename itself durable
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    for _, old in _checkpoint_files(directory)[:-keep]:
        os.unlink(old)
    # Debris of an earlier save killed mid-write (one writer per run directory;
    # readers never delete, since they may run beside a live writer).
    for stale in glob.glob(os.path.join(directory, ".ckpt_*.tmp")):
        os.unlink(stale)
    return path


def _load(path: str, map_location="cpu") -> dict:
    state = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(state, dict) or "step" not in state:
        raise ValueError("not a training checkpoint (no 'step')")
    return state


def load_checkpoint(path: str, map_location="cpu") -> dict:
    """One checkpoint file written by :func:`save_checkpoint` (``weights_only`` loading).

    Raises :class:`~deflow_trl.errors.CheckpointError` naming the file when it cannot be
    read or is not a training checkpoint.
    """
    try:
        return _load(path, map_location)
    except Exception as err:
        reason = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(err).__name__}: {reason})") from None


def load_latest_checkpoint(
    directory: str, map_location="cpu", *, move_corrupt: bool = False,
) -> tuple[dict, str] | None:
    """The newest *valid* checkpoint in ``directory`` as ``(state, path)``, or None if there is none.

    A checkpoint that fails to load (a disk error, a file copied in half, something
    other than :func:`save_checkpoint` wrote it) is never skipped silently: it is
    reported with a warning naming the file and the error, and the next older one
    is tried. With ``move_corrupt=True`` (the training app, which holds the run
    directory's lock) the bad file is renamed to ``<name>.corrupt`` — kept for
    inspection, never deleted, and no longer counted by rotation. If every
    checkpoint is corrupt, :class:`~deflow_trl.errors.CheckpointError` says so.
    """
    files = _checkpoint_files(directory)
    bad = []
    for _, path in reversed(files):
        try:
            state = _load(path, map_location)
        except Exception as err:
            reason = str(err).splitlines()[0] if str(err) else ""
            moved = ""
            if move_corrupt:
                os.replace(path, path + ".corrupt")
                moved = f"; moved to {path}.corrupt"
            warnings.warn(f"checkpoint {path} is corrupt or unreadable ({type(err).__name__}: {reason}){moved}; "
                          "trying the previous one", RuntimeWarning, stacklevel=2)
            bad.append(path)
            continue
        return state, path
    if bad:
        raise CheckpointError(
            f"every checkpoint in {directory} is corrupt or unreadable ({len(bad)}: {', '.join(map(os.path.basename, bad))}"
            f"{', moved aside as *.corrupt' if move_corrupt else ''}); start a new run directory or pass overwrite=true"
        )
    return None


def load_checkpoint_at(directory: str, step: int, map_location="cpu") -> tuple[dict, str] | None:
    """The checkpoint of ``step`` in ``directory`` as ``(state, path)``, or None if it was not kept
    (a seed group resuming its seeds from their latest common step). A corrupt file is one error naming it."""
    for at, path in _checkpoint_files(directory):
        if at == step:
            return load_checkpoint(path, map_location), path
    return None
