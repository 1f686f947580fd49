"""OGBench data for TorchRL: load official or regenerated datasets, regenerate them locally.

* :func:`load_ogbench_dataset` — ``.npz`` pair -> TensorDict of transitions (TorchRL key layout);
* :func:`make_ogbench_replay_buffer` — the same in a writable ``TensorDictReplayBuffer`` (RAM or memmap);
* :class:`OGBenchExperienceReplay` — TorchRL's offline-dataset convention (``BaseDatasetExperienceReplay``):
  a memory-mapped cache built once and reused, an ``episode`` key, immutable; importing this package
  registers it so ``torchrl.data.datasets.load_dataset("ogbench:<name>", batch_size=...)`` works;
* :func:`generate_dataset` — rerun OGBench's scripted oracles (``python -m deflow_trl.data.generate``);
* :func:`parse_ogbench_name` — dataset name -> file stem, env id, task;
* :func:`make_pixel_replay_buffer`, :func:`load_visual_dataset` — ``visual-*`` (pixel) datasets: uint8
  frames stored once, 3-frame stacks and random-crop augmentation at sampling time (:mod:`deflow_trl.data.pixels`).
"""
from typing import TYPE_CHECKING

from deflow_trl.lazy import lazy_names

# The names below are imported on first use (module ``__getattr__``), not with the package: otherwise
# `python -m deflow_trl.data.generate` would find its module already imported by the package (runpy warns).
_LAZY = {
    "generate_dataset": "deflow_trl.data.generate",
    "OGBenchName": "deflow_trl.envs.names",
    "parse_ogbench_name": "deflow_trl.envs.names",
    "load_visual_dataset": "deflow_trl.data.pixels",
    "make_pixel_replay_buffer": "deflow_trl.data.pixels",
    "ACTION_CLIP": "deflow_trl.data.ogbench",
    "load_ogbench_dataset": "deflow_trl.data.ogbench",
    "make_ogbench_replay_buffer": "deflow_trl.data.ogbench",
    "ogbench_dataset_path": "deflow_trl.data.ogbench",
    "prioritized_replay_available": "deflow_trl.data.ogbench",
    "replay_buffer_from_transitions": "deflow_trl.data.ogbench",
    "OGBenchExperienceReplay": "deflow_trl.data.ogbench_replay",
}

if TYPE_CHECKING:
    from deflow_trl.data.generate import generate_dataset
    from deflow_trl.data.ogbench import (
        ACTION_CLIP,
        load_ogbench_dataset,
        make_ogbench_replay_buffer,
        ogbench_dataset_path,
        prioritized_replay_available,
        replay_buffer_from_transitions,
    )
    from deflow_trl.data.ogbench_replay import OGBenchExperienceReplay
    from deflow_trl.data.pixels import load_visual_dataset, make_pixel_replay_buffer
    from deflow_trl.envs.names import OGBenchName, parse_ogbench_name


__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())


def _register() -> None:
    """``load_dataset("ogbench:<name>")``; an "ogbench" source TorchRL itself may ship one day is left in place."""
    from torchrl.data.datasets import register_dataset

    try:
        register_dataset("ogbench", "deflow_trl.data.ogbench_replay:OGBenchExperienceReplay")
    except KeyError:  # already registered (by this package on a reload, or upstream)
        pass


_register()

__all__ = [
    "ACTION_CLIP",
    "OGBenchExperienceReplay",
    "OGBenchName",
    "generate_dataset",
    "load_ogbench_dataset",
    "load_visual_dataset",
    "make_ogbench_replay_buffer",
    "make_pixel_replay_buffer",
    "ogbench_dataset_path",
    "parse_ogbench_name",
    "prioritized_replay_available",
    "replay_buffer_from_transitions",
]
