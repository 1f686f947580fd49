"""Where things live on disk: OGBench's dataset directory, and whether a directory can be written.

Lowest floor of the package: the data loaders, the generator and the app all ask here.

Examples:
    >>> import tempfile
    >>> check_writable(tempfile.mkdtemp() + "/new/dir", "dataset_dir")  # nothing is created
"""
from __future__ import annotations

import os

from deflow_trl.errors import ConfigError

__all__ = ["check_writable", "default_dataset_dir"]


def default_dataset_dir() -> str:
    """The directory ogbench reads by default (``~/.ogbench/data``), expanded."""
    from ogbench.utils import DEFAULT_DATASET_DIR  # lazy: ogbench is in the app extra

    return os.path.expanduser(DEFAULT_DATASET_DIR)


def check_writable(path: str, what: str) -> None:
    """``path`` (a directory, possibly not yet existing) can be created and written; nothing is created."""
    path = os.path.abspath(os.path.expanduser(path))
    probe = path
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe):
        raise ConfigError(f"{what} {path} cannot be created: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {path} is not writable ({probe} does not allow writing)")
