"""The errors the app expects, and how each reaches the user: as one line.

A run can fail for reasons that are not bugs: a bad config value, a missing or
damaged dataset, a run directory held by another process, a corrupt checkpoint,
a full disk, no network. :func:`one_line` turns each of these into a single line
(the cause that matters, e.g. "No space left on device", rather than the last
frame of a 30-line chained traceback); anything else is a bug and keeps its full
traceback. ``debug=true`` (or the environment variable ``DEFLOW_DEBUG=1``) shows
the full traceback for every error.

Examples:
    >>> one_line(ConfigError("seed must be >= 0, got -1"))
    'seed must be >= 0, got -1'
    >>> import errno
    >>> err = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    >>> err.__context__ = OSError(errno.ENOSPC, "No space left on device")
    >>> one_line(err).startswith("disk full")
    True
    >>> one_line(KeyError("a bug")) is None
    True
"""
from __future__ import annotations

import errno
import os
import socket
import urllib.error

__all__ = ["ConfigError", "RunLockedError", "CheckpointError", "DatasetError", "one_line", "debug_requested"]


class ConfigError(ValueError):
    """A configuration that cannot run; raised before any work is done."""


class RunLockedError(ConfigError):
    """Another live process holds the run directory (or dataset file) lock."""


class CheckpointError(RuntimeError):
    """No usable checkpoint where one is needed (every candidate corrupt)."""


class DatasetError(ValueError):
    """A dataset file that exists but cannot be used (corrupt, wrong shapes, out-of-range values)."""


_NETWORK = (urllib.error.URLError, ConnectionError, socket.timeout, socket.gaierror, TimeoutError)


def _chain(err: BaseException):
    """``err`` and every exception it was raised from or while handling, outermost first."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _flat(text: str) -> str:
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())


def one_line(err: BaseException) -> str | None:
    """One line for a known error class, or None for anything else (a bug: show the traceback)."""
    chain = list(_chain(err))
    for e in chain:  # the real cause first: a full disk or a dead network hides under other errors
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" while writing {e.filename}" if getattr(e, "filename", None) else ""
            return (f"disk full (No space left on device){where}: {_flat(err)}. "
                    "Free some space or point hydra.run.dir / data.dataset_dir at another disk")
    for e in chain:
        if isinstance(e, _NETWORK):
            if e is err:
                return f"network error: {_flat(err)}"
            reason = getattr(e, "reason", None) or e
            return f"network error ({type(e).__name__}: {_flat(reason)}): {_flat(err)}"
    if isinstance(err, (ConfigError, CheckpointError, DatasetError, FileNotFoundError, FileExistsError)):
        return _flat(err)
    if isinstance(err, OSError):  # permissions, read-only file systems, missing mounts: the environment, not a bug
        return f"{type(err).__name__}: {_flat(err)}"
    return None


def debug_requested(cfg=None) -> bool:
    """``debug=true`` in the config or ``DEFLOW_DEBUG`` set to a true value in the environment."""
    if os.environ.get("DEFLOW_DEBUG", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        return bool(cfg is not None and cfg.get("debug", False))
    except Exception:
        return False
