"""First (cache build) vs cached load of a 1M-transition OGBench dataset.

No machine of this project can download the official ``cube-single-play-v0`` (1000
episodes x 1001 steps), and regenerating it takes hours, so this script writes a
synthetic file with the exact OGBench layout and dtypes of that dataset
(``observations`` float32 [1001000, 28], ``actions`` float32 [1001000, 5] in [-1, 1],
``terminals`` bool, one every 1001 steps, ``qpos`` float32 [., 21], ``qvel`` float32 [., 20];
smooth random walks, so it compresses somewhat like real data) and times, each as the
median of ``--repeats`` runs in this process (imports done beforehand, page cache warm):

- ``uncached``: :func:`~deflow_trl.data.load_ogbench_dataset` as the app calls it today
  (decompress + OGBench's single-task relabelling + checks), every run;
- ``build``: ``OGBenchExperienceReplay(..., download="force")``: the same plus writing the cache;
- ``cached``: ``OGBenchExperienceReplay(...)``: manifest + CRC32 of the cache files, memory-map;
- ``cached_nocrc``: the same with ``verify_cache=False`` (sizes only);
- ``cached_ram``: ``load_ogbench_dataset(..., cache=root)``: cached, then copied into RAM
  (what a writable offline-to-online buffer needs);
- ``sample``: 200 batches of 256 from the memory-mapped buffer vs a RAM buffer.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/dataset_load.py --dir /tmp/ogbench_bench --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

NAME = "cube-single-play-singletask-task1-v0"
STEM = "cube-single-play-v0"


def write_synthetic(path: str, episodes: int, length: int, seed: int = 0) -> None:
    from deflow_trl.data.generate import atomic_savez

    rng = np.random.default_rng(seed)
    n = episodes * length

    def walk(dim: int, scale: float) -> np.ndarray:
        steps = rng.normal(0.0, scale, (n, dim)).astype(np.float32)
        return np.cumsum(steps, axis=0, dtype=np.float32) % 2.0 - 1.0  # bounded, smooth within an episode

    terminals = np.zeros(n, dtype=bool)
    terminals[length - 1 :: length] = True
    actions = np.tanh(walk(5, 0.05)).astype(np.float32)
    atomic_savez(path, {"observations": walk(28, 0.01), "actions": actions, "terminals": terminals,
                        "qpos": walk(21, 0.01), "qvel": walk(20, 0.05)})


def timed(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="/tmp/ogbench_bench", help="scratch directory (data + cache)")
    p.add_argument("--episodes", type=int, default=1000)
    p.add_argument("--length", type=int, default=1001)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    import torch

    from deflow_trl.data import OGBenchExperienceReplay, load_ogbench_dataset, make_ogbench_replay_buffer

    data_dir, root = os.path.join(args.dir, "data"), os.path.join(args.dir, "cache")
    train = os.path.join(data_dir, f"{STEM}.npz")
    if not os.path.isfile(train):
        t = time.perf_counter()
        write_synthetic(train, args.episodes, args.length)
        write_synthetic(os.path.join(data_dir, f"{STEM}-val.npz"), max(1, args.episodes // 100), args.length, seed=1)
        print(f"wrote {train} ({os.path.getsize(train) / 2**20:.0f} MiB) in {time.perf_counter() - t:.1f} s")
    kw = dict(dataset_dir=data_dir, root=root, download=False)
    load_ogbench_dataset(NAME, data_dir, split="val")  # imports, gymnasium registry, env build: not timed

    out = {}
    out["uncached"] = timed(lambda: load_ogbench_dataset(NAME, data_dir), args.repeats)
    out["build"] = timed(lambda: OGBenchExperienceReplay(NAME, 256, **{**kw, "download": "force"}), args.repeats)
    out["cached"] = timed(lambda: OGBenchExperienceReplay(NAME, 256, **kw), args.repeats)
    out["cached_nocrc"] = timed(lambda: OGBenchExperienceReplay(NAME, 256, verify_cache=False, **kw), args.repeats)
    out["cached_ram"] = timed(lambda: load_ogbench_dataset(NAME, data_dir, cache=root), args.repeats)

    mm = OGBenchExperienceReplay(NAME, 256, **kw)
    ram = make_ogbench_replay_buffer(NAME, 256, dataset_dir=data_dir, cache=root)
    n = len(mm)
    for label, rb in (("sample_memmap", mm), ("sample_ram", ram)):
        rb.sample()
        torch.manual_seed(0)
        out[label] = timed(lambda rb=rb: [rb.sample() for _ in range(200)], args.repeats)

    print(f"{n} transitions; medians of {args.repeats} (all runs in brackets), seconds:")
    for k, (med, runs) in out.items():
        print(f"  {k:13s} {med:8.3f}   [{', '.join(f'{r:.3f}' for r in runs)}]")
    return {k: v[0] for k, v in out.items()} | {"transitions": n}


if __name__ == "__main__":
    print(json.dumps(main()))
