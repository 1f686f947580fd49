"""OGBench names: dataset name -> (file stem, environment id, task).

OGBench packs three things into one dataset name, e.g.
``cube-single-play-singletask-task1-v0``:

- the dataset file stem ``cube-single-play-v0`` (what sits on disk),
- the environment id ``cube-single-singletask-task1-v0`` (what ``gymnasium.make`` builds),
- the dataset type ``play`` and, for single-task names, the task id ``1``.

The split below follows ``ogbench.utils.make_env_and_datasets`` word for word, and
every name is checked against the gymnasium registry that ``import ogbench``
fills, so an unknown name fails here, before any file is opened.

Examples:
    >>> from deflow_trl.envs.names import parse_ogbench_name
    >>> n = parse_ogbench_name("cube-single-play-singletask-task1-v0")
    >>> n.file_stem, n.env_id, n.dataset_type, n.singletask
    ('cube-single-play-v0', 'cube-single-singletask-task1-v0', 'play', True)
    >>> parse_ogbench_name("puzzle-3x3-play-v0").env_id
    'puzzle-3x3-v0'

Pixel-based (``visual-``) names of the manipulation suites parse the same way, but only
where the caller says it handles pixels (``pixels=True`` or ``None``); the state-based
loaders and envs call ``parse_ogbench_name(name)`` (``pixels=False``) and so refuse
them with an error that names the pixel entry points:

    >>> v = parse_ogbench_name("visual-cube-single-play-singletask-task1-v0", pixels=True)
    >>> v.env_id, v.suite, v.pixels, v.state_env_id
    ('visual-cube-single-singletask-task1-v0', 'cube', True, 'cube-single-singletask-task1-v0')
"""

from __future__ import annotations

import dataclasses
import functools

__all__ = ["OGBenchName", "parse_ogbench_name", "known_env_ids", "DATASET_TYPES", "suite_of", "VISUAL_PREFIX"]

# Dataset types OGBench publishes (the word between the env and the version).
DATASET_TYPES = ("play", "noisy", "navigate", "stitch", "explore")

# Families this project handles (state-based; powderworld is out of scope).
_FAMILIES = ("cube", "scene", "puzzle", "pointmaze", "antmaze", "humanoidmaze", "antsoccer")
# Pixel-based ("visual-") families handled by deflow_trl.data.pixels / deflow_trl.envs.pixels
# (the paper's visual table: manipulation only; visual mazes are not wired).
_PIXEL_FAMILIES = ("cube", "scene", "puzzle")
VISUAL_PREFIX = "visual-"


@dataclasses.dataclass(frozen=True)
class OGBenchName:
    """A parsed OGBench dataset name.

    Attributes:
        dataset_name: the name as given (``cube-single-play-singletask-task1-v0``).
        file_stem: the ``.npz`` stem on disk (``cube-single-play-v0``).
        env_id: the gymnasium id to build (``cube-single-singletask-task1-v0``).
        base_env_id: the goal-conditioned env id (``cube-single-v0``), used for data generation.
        dataset_type: ``play``, ``noisy``, ``navigate``, ``stitch`` or ``explore``.
        singletask: whether rewards/masks come from OGBench's single-task relabelling.
        pixels: a ``visual-`` name (64×64×3 uint8 frames instead of state vectors).
    """

    dataset_name: str
    file_stem: str
    env_id: str
    base_env_id: str
    dataset_type: str
    singletask: bool

    @property
    def suite(self) -> str:
        return suite_of(self.base_env_id)

    @property
    def pixels(self) -> bool:
        return self.env_id.startswith(VISUAL_PREFIX)

    @property
    def state_env_id(self) -> str:
        """The state-based twin of ``env_id`` (same task, same simulator; used to relabel rewards without rendering)."""
        return self.env_id[len(VISUAL_PREFIX):] if self.pixels else self.env_id


def suite_of(env_id: str) -> str:
    """The family of an env id: ``cube``, ``scene``, ``puzzle``, ``pointmaze``, ``antmaze``, ...

    A ``visual-`` env belongs to the family of its state twin (``visual-cube-single-v0`` -> ``cube``).
    """
    if env_id.startswith(VISUAL_PREFIX):
        env_id = env_id[len(VISUAL_PREFIX):]
    return env_id.split("-")[0]


@functools.lru_cache(maxsize=3)
def known_env_ids(pixels: bool | None = False) -> tuple[str, ...]:
    """OGBench env ids registered by ``import ogbench`` (goal-conditioned and singletask).

    Args:
        pixels: False (default): state-based ids; True: the ``visual-`` manipulation ids;
            None: both.
    """
    import gymnasium
    import ogbench  # noqa: F401  (fills the gymnasium registry)

    def wanted(k: str) -> bool:
        if "oraclerep" in k:
            return False
        if k.startswith(VISUAL_PREFIX):
            return pixels is not False and k[len(VISUAL_PREFIX):].split("-")[0] in _PIXEL_FAMILIES
        return pixels is not True and k.split("-")[0] in _FAMILIES

    return tuple(sorted(k for k in gymnasium.registry if wanted(k)))


def _unknown(name: str, why: str, pixels: bool | None = False) -> ValueError:
    base = sorted({k for k in known_env_ids(pixels) if "singletask" not in k})
    return ValueError(
        f"Unknown OGBench dataset/env name {name!r} ({why}). Dataset names look like "
        f"'<env>-<type>-v0' or '<env>-<type>-singletask[-taskN]-v0' with <type> in {list(DATASET_TYPES)} "
        f"and <env> one of: {', '.join(b[:-3] for b in base)}. "
        "Example: 'cube-single-play-singletask-task1-v0'."
    )


def parse_ogbench_name(name: str, pixels: bool | None = False) -> OGBenchName:
    """Split an OGBench dataset name; raise ``ValueError`` listing the known names if it is not one.

    Args:
        name: a dataset name such as ``scene-play-singletask-task2-v0`` or ``cube-double-play-v0``.
        pixels: which kind the caller handles: False (state vectors; the default, so every
            state-based path refuses ``visual-`` names with a clear error), True (``visual-``
            names only) or None (either).
    """
    if not isinstance(name, str):
        raise TypeError(f"an OGBench name must be a string, got {type(name).__name__}")
    is_visual = name.startswith(VISUAL_PREFIX)
    if is_visual and pixels is False:
        raise ValueError(
            f"{name!r} is a pixel-based (visual) OGBench name: its observations are 64x64x3 uint8 frames, "
            "which this state-based path cannot load. Use deflow_trl.data.pixels.make_pixel_replay_buffer / "
            "load_visual_dataset for data and deflow_trl.envs.pixels.make_pixel_env for the env "
            "(Hydra: env=visual_cube_single, visual_cube_double, visual_scene, visual_puzzle_3x3 or visual_puzzle_4x4)."
        )
    if not is_visual and pixels is True:
        raise ValueError(
            f"{name!r} is a state-based OGBench name, not a visual one (those start with {VISUAL_PREFIX!r}, "
            f"e.g. 'visual-{name}'). Load state datasets with deflow_trl.data.load_ogbench_dataset."
        )
    splits = name.split("-")
    if "singletask" in splits:
        pos = splits.index("singletask")
        dataset_type = splits[pos - 1] if pos >= 1 else ""
        env_id = "-".join(splits[: pos - 1] + splits[pos:])
        file_stem = "-".join(splits[:pos] + splits[-1:])
        base_env_id = "-".join(splits[: pos - 1] + splits[-1:])
        singletask = True
    else:
        dataset_type = splits[-2] if len(splits) >= 3 else ""
        env_id = "-".join(splits[:-2] + splits[-1:])
        file_stem = name
        base_env_id = env_id
        singletask = False
    kind = is_visual if pixels is None else pixels
    if dataset_type not in DATASET_TYPES:
        raise _unknown(name, f"dataset type {dataset_type!r} is not one of {list(DATASET_TYPES)}", kind)
    known = known_env_ids(kind)
    if env_id not in known or base_env_id not in known:
        raise _unknown(name, f"environment {env_id!r} is not registered by ogbench, or not a suite handled here", kind)
    return OGBenchName(name, file_stem, env_id, base_env_id, dataset_type, singletask)
