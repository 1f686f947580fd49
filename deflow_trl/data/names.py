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
    >>> from deflow_trl.data.names import parse_ogbench_name
    >>> n = parse_ogbench_name("cube-single-play-singletask-task1-v0")
    >>> n.file_stem, n.env_id, n.dataset_type, n.singletask
    ('cube-single-play-v0', 'cube-single-singletask-task1-v0', 'play', True)
    >>> parse_ogbench_name("puzzle-3x3-play-v0").env_id
    'puzzle-3x3-v0'
"""

from __future__ import annotations

import dataclasses
import functools

__all__ = ["OGBenchName", "parse_ogbench_name", "known_env_ids", "DATASET_TYPES", "suite_of"]

# Dataset types OGBench publishes (the word between the env and the version).
DATASET_TYPES = ("play", "noisy", "navigate", "stitch", "explore")

# Families this project handles (state-based; pixels and powderworld are out of scope).
_FAMILIES = ("cube", "scene", "puzzle", "pointmaze", "antmaze", "humanoidmaze", "antsoccer")


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


def suite_of(env_id: str) -> str:
    """The family of an env id: ``cube``, ``scene``, ``puzzle``, ``pointmaze``, ``antmaze``, ..."""
    head = env_id.split("-")[0]
    return head


@functools.lru_cache(maxsize=1)
def known_env_ids() -> tuple[str, ...]:
    """All state-based OGBench env ids registered by ``import ogbench`` (goal-conditioned and singletask)."""
    import gymnasium
    import ogbench  # noqa: F401  (fills the gymnasium registry)

    return tuple(
        sorted(
            k
            for k in gymnasium.registry
            if k.split("-")[0] in _FAMILIES and "oraclerep" not in k
        )
    )


def _unknown(name: str, why: str) -> ValueError:
    base = sorted({k for k in known_env_ids() if "singletask" not in k})
    return ValueError(
        f"Unknown OGBench dataset/env name {name!r} ({why}). Dataset names look like "
        f"'<env>-<type>-v0' or '<env>-<type>-singletask[-taskN]-v0' with <type> in {list(DATASET_TYPES)} "
        f"and <env> one of: {', '.join(b[:-3] for b in base)}. "
        "Example: 'cube-single-play-singletask-task1-v0'."
    )


def parse_ogbench_name(name: str) -> OGBenchName:
    """Split an OGBench dataset name; raise ``ValueError`` listing the known names if it is not one.

    Args:
        name: a dataset name such as ``scene-play-singletask-task2-v0`` or ``cube-double-play-v0``.
    """
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
    if dataset_type not in DATASET_TYPES:
        raise _unknown(name, f"dataset type {dataset_type!r} is not one of {list(DATASET_TYPES)}")
    known = known_env_ids()
    if env_id not in known or base_env_id not in known:
        raise _unknown(name, f"environment {env_id!r} is not registered by ogbench")
    return OGBenchName(name, file_stem, env_id, base_env_id, dataset_type, singletask)
