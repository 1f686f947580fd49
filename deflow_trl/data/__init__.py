"""OGBench data for TorchRL: load official or regenerated datasets, regenerate them locally.

* :func:`load_ogbench_dataset` — ``.npz`` pair -> TensorDict of transitions (TorchRL key layout);
* :func:`make_ogbench_replay_buffer` — the same in a ``TensorDictReplayBuffer`` (RAM or memmap);
* :func:`generate_dataset` — rerun OGBench's scripted oracles (``python -m deflow_trl.data.generate``);
* :func:`parse_ogbench_name` — dataset name -> file stem, env id, task;
* :func:`make_pixel_replay_buffer`, :func:`load_visual_dataset` — ``visual-*`` (pixel) datasets: uint8
  frames stored once, 3-frame stacks and random-crop augmentation at sampling time (:mod:`deflow_trl.data.pixels`).
"""
from deflow_trl.data.generate import generate_dataset
from deflow_trl.data.names import OGBenchName, parse_ogbench_name
from deflow_trl.data.pixels import load_visual_dataset, make_pixel_replay_buffer
from deflow_trl.data.ogbench import (
    ACTION_CLIP,
    load_ogbench_dataset,
    make_ogbench_replay_buffer,
    ogbench_dataset_path,
    prioritized_replay_available,
    replay_buffer_from_transitions,
)

__all__ = [
    "ACTION_CLIP",
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
