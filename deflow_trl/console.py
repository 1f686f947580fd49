"""A quiet console for the apps and off-screen rendering for MuJoCo.

:func:`quiet_app` is called by the apps' entry points (training, data generation,
evaluation worker) and by nothing that ``import deflow_trl`` runs: library users keep
their own warning filters, logging levels and environment. Lowest floor of the package.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings

__all__ = ["NOISE_WARNINGS", "QUIET_LOGGERS", "ensure_headless_gl", "quiet_app"]

# Third-party messages the apps silence (warnings.filterwarnings patterns; matched from the message start).
NOISE_WARNINGS = (
    r".*precision lowered by casting to float32",  # gymnasium: OGBench's float64 Box bounds
    r".*DISPLAY environment variable is missing",  # GLFW without a display (MuJoCo's default backend)
)

# Third-party loggers whose INFO lines the apps drop (their warnings and errors still print).
QUIET_LOGGERS = ("torchrl", "OpenGL")  # "Initialized LazyTensorStorage ...", "No OpenGL_accelerate module loaded"


def ensure_headless_gl() -> None:
    """Let MuJoCo render off-screen: select EGL when no GL backend was asked for (Linux).

    ``MUJOCO_GL`` is read once, when ``mujoco`` is imported; ``import deflow_trl`` already
    imports it (through ogbench), so setting the variable later has no effect. When the
    variable was unset (MuJoCo then picks GLFW, which needs a display) and there is no
    ``DISPLAY``, this sets ``MUJOCO_GL=egl`` and, if ``mujoco`` is already loaded, points
    its renderer at the EGL context. An explicit ``MUJOCO_GL`` (egl, osmesa, glx, glfw) is
    left alone.

    Raises ``RuntimeError`` naming the fix if EGL cannot be loaded.
    """
    if not sys.platform.startswith("linux"):
        return
    requested = os.environ.get("MUJOCO_GL", "").lower().strip()
    gl_context = sys.modules.get("mujoco.rendering.classic.gl_context")
    if gl_context is None:  # mujoco not loaded yet: it will read MUJOCO_GL itself
        if not requested and not os.environ.get("DISPLAY"):
            os.environ["MUJOCO_GL"] = "egl"
            if "OpenGL" not in sys.modules:
                os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
        return
    if getattr(gl_context, "_MUJOCO_GL", "") in ("egl", "osmesa", "glx"):
        return  # mujoco already renders headless
    if (requested or ("" if os.environ.get("DISPLAY") else "egl")) != "egl":
        return  # GLFW with a display, or another explicit choice
    os.environ["MUJOCO_GL"] = "egl"
    if "OpenGL" not in sys.modules:
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    try:
        from mujoco.egl import GLContext
    except Exception as err:  # missing libEGL, PyOpenGL bound to another platform
        raise RuntimeError(
            "visual OGBench envs render with MuJoCo and need a headless OpenGL backend; EGL failed to load "
            f"({type(err).__name__}: {err}). Install libEGL (e.g. apt-get install libegl1) or start Python with "
            "MUJOCO_GL=osmesa (software) set before anything imports mujoco."
        ) from err
    gl_context.GLContext = GLContext  # mujoco.Renderer looks the context class up here at construction


def _headless_gl() -> None:
    """``MUJOCO_GL=egl`` when there is no display, none was chosen and EGL can be loaded (Linux).

    Reuses :func:`ensure_headless_gl` (which also repoints an already
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
