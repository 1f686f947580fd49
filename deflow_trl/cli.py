"""The console scripts and the app boundary: a missing extra in one line, a quiet console.

``pip install deflow_trl`` installs the core (loss, actor, sampler, networks: torch,
tensordict, torchrl, numpy). The apps need the ``app`` extra (OGBench, Hydra,
matplotlib, tqdm, scipy)::

    pip install torch==2.13.0 'deflow_trl[app]'
    deflow-train +experiment=quick          # = python -m deflow_trl.train
    deflow-generate --env cube-single-play-v0 --episodes 10
    deflow-iav --help
    deflow-summarize runs/paper

Each console script first checks that the extra is installed and otherwise prints one
line (``... pip install 'deflow_trl[app]'``) and exits with status 1, instead of an
``ImportError`` traceback. :func:`quiet_app` is called by the apps' ``main`` (training
and data generation) and by nothing that ``import deflow_trl`` runs: library users keep
their own warning filters, logging levels and environment.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import sys
import warnings

__all__ = ["APP_PACKAGES", "MissingExtra", "check_app_extra", "missing_app_packages", "quiet_app",
           "train", "generate", "iav", "summarize"]

# import name -> distribution name, for the packages of the ``app`` extra (pyproject.toml)
APP_PACKAGES = {"ogbench": "ogbench", "hydra": "hydra-core", "omegaconf": "hydra-core",
                "matplotlib": "matplotlib", "tqdm": "tqdm", "scipy": "scipy"}
INSTALL_APP = "pip install 'deflow_trl[app]'"

# Third-party messages the apps silence (warnings.filterwarnings patterns; matched from the message start).
NOISE_WARNINGS = (
    r".*precision lowered by casting to float32",  # gymnasium: OGBench's float64 Box bounds
    r".*DISPLAY environment variable is missing",  # GLFW without a display (MuJoCo's default backend)
)

# Third-party loggers whose INFO lines the apps drop (their warnings and errors still print).
QUIET_LOGGERS = ("torchrl", "OpenGL")  # "Initialized LazyTensorStorage ...", "No OpenGL_accelerate module loaded"


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


def _headless_gl() -> None:
    """``MUJOCO_GL=egl`` when there is no display, none was chosen and EGL can be loaded (Linux).

    Reuses :func:`deflow_trl.pixel_envs.ensure_headless_gl` (which also repoints an already
    imported ``mujoco`` at EGL). Without libEGL nothing changes: MuJoCo keeps its default
    (GLFW, unusable without a display but harmless for state-based envs) and the GLFW
    warning is filtered instead.
    """
    import ctypes.util

    if not sys.platform.startswith("linux") or os.environ.get("DISPLAY") or os.environ.get("MUJOCO_GL"):
        return
    if ctypes.util.find_library("EGL") is None:
        return
    before = {k: os.environ.get(k) for k in ("MUJOCO_GL", "PYOPENGL_PLATFORM")}
    try:
        from deflow_trl.pixel_envs import ensure_headless_gl

        ensure_headless_gl()
    except (ImportError, RuntimeError):  # EGL listed but unusable: leave the environment as it was
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def quiet_app() -> None:
    """Silences known third-party console noise for an app process (call at the app's entry only).

    * a headless GL backend (``MUJOCO_GL=egl``) when there is no ``DISPLAY`` and none was set,
      so GLFW never complains that ``DISPLAY`` is missing; child processes inherit it;
    * warning filters for :data:`NOISE_WARNINGS` (gymnasium's float32 casts, GLFW);
    * absl (dm_control/MuJoCo: "MUJOCO_GL is not set", "MuJoCo library version") and the
      :data:`QUIET_LOGGERS` (TorchRL's "Initialized LazyTensorStorage", PyOpenGL's
      "No OpenGL_accelerate module") only from WARNING up.

    Our own log lines, progress bars, results and every error still print.
    """
    for pattern in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    _headless_gl()  # after the levels: it imports PyOpenGL
    try:
        from absl import logging as absl_logging
    except ImportError:
        return
    absl_logging.set_verbosity(absl_logging.WARNING)


# ----------------------------------------------------------------------------- console scripts
def train() -> None:
    """``deflow-train``: the Hydra training app (:func:`deflow_trl.train.cli`)."""
    check_app_extra("deflow-train")
    from deflow_trl.train import cli

    cli()


def generate() -> None:
    """``deflow-generate``: regenerate OGBench datasets (:func:`deflow_trl.data.generate.main`)."""
    check_app_extra("deflow-generate")
    from deflow_trl.data.generate import main

    main()


def iav() -> None:
    """``deflow-iav``: intrinsic action variance and a proposed δ (:func:`deflow_trl.data.iav_cli.main`)."""
    check_app_extra("deflow-iav")
    from deflow_trl.data.iav_cli import main

    main()


def summarize() -> None:
    """``deflow-summarize``: tables and plots of finished runs (:func:`deflow_trl.summarize.main`)."""
    check_app_extra("deflow-summarize")
    from deflow_trl.summarize import main

    main()
