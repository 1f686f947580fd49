"""The ``app`` extra: one line instead of an ``ImportError`` traceback when it is missing.

``pip install deflow_trl`` is the core (loss, actor, sampler, networks); the envs, data
tools and the Hydra app need ``pip install 'deflow_trl[app]'``. Every entry point calls
:func:`check_app_extra` before importing them. Lowest floor of the package (imports nothing of it).

Examples:
    >>> missing_app_packages() == [] or INSTALL_APP in str(MissingExtra(INSTALL_APP))
    True
"""
from __future__ import annotations

import importlib.util
import sys

__all__ = ["APP_PACKAGES", "INSTALL_APP", "MissingExtra", "check_app_extra", "missing_app_packages"]

# import name -> distribution name, for the packages of the ``app`` extra (pyproject.toml)
APP_PACKAGES = {"ogbench": "ogbench", "hydra": "hydra-core", "omegaconf": "hydra-core",
                "matplotlib": "matplotlib", "tqdm": "tqdm", "scipy": "scipy"}
INSTALL_APP = "pip install 'deflow_trl[app]'"


class MissingExtra(ImportError):
    """A package of the ``app`` extra is not installed (the message says how to install it)."""


def missing_app_packages() -> list[str]:
    """Distribution names of the ``app`` extra that cannot be imported here (empty when complete)."""
    missing = []
    for module, dist in APP_PACKAGES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package missing, or a module set to None in sys.modules
            found = False
        if not found and dist not in missing:
            missing.append(dist)
    return missing


def check_app_extra(what: str, exit: bool = True) -> None:
    """Stops ``what`` (an app or command) with one line if the ``app`` extra is incomplete.

    ``exit=True``: writes the line to stderr and raises ``SystemExit(1)`` (console scripts,
    ``python -m``); ``exit=False``: raises :class:`MissingExtra` with the same line.
    """
    missing = missing_app_packages()
    if not missing:
        return
    line = f"{what} needs {', '.join(missing)}, which {'is' if len(missing) == 1 else 'are'} not installed: {INSTALL_APP}"
    if not exit:
        raise MissingExtra(line)
    sys.stderr.write(f"[deflow_trl] error: {line}\n")
    raise SystemExit(1)
