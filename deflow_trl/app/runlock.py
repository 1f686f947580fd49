"""The lock of a training run directory (:class:`deflow_trl.filelock.FileLock` on ``<run dir>/.lock``).

Two training commands on one run directory would both append to its metrics and race on
checkpoint rotation; the second is refused at once, naming the holder (see :mod:`deflow_trl.filelock`).
"""
from __future__ import annotations

import os

from deflow_trl.filelock import FileLock

__all__ = ["run_dir_lock"]


def run_dir_lock(run_dir: str) -> FileLock:
    """The lock of a training run directory: ``<run_dir>/.lock``."""
    return FileLock(os.path.join(run_dir, ".lock"), what=f"run directory {run_dir}")
