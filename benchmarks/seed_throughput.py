"""Seeds per process: a :class:`deflow_trl.seeds.SeedGroup` of G seeds vs G lone updaters, one after another.

Aggregate seed-updates per second (G seeds × updates / time) of

* ``group``: one ``SeedGroup`` of G seeds (parameters stacked, the loss under ``torch.vmap``, one Adam, one
  Polyak update; batches and noise drawn per seed on its own RNG stream);
* ``lone``: G plain eager :class:`~deflow_trl.update.Updater` s, stepped one after another in this process
  (what running G seeds sequentially costs).

Both run eager (no ``torch.compile``) on a random dataset of 4096 transitions (obs 28, act 5, K = 10, 2 critics,
batch 256), sampling batches with replacement as the app's replay buffer does. ``--config quick`` is the README
main run's networks (2×256), ``reference`` the paper's (4×512).

Separate processes (one per seed) would not be faster on a small CPU: they share the same cores (2 on the
project's machine), so G processes split the machine G ways, like the ``lone`` column, plus G copies of the
framework's memory and G times the threads' contention. Timings on a shared machine are noisy: the load average is
printed, and the numbers are indicative.

    python benchmarks/seed_throughput.py --seeds 1 2 4 8 --config quick
    python benchmarks/seed_throughput.py --seeds 1 2 4 --config reference --steps 5 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Sequence

import torch
from tensordict import TensorDict
from torchrl.objectives import SoftUpdate

from deflow_trl import make_deflow
from deflow_trl.hardware import cpu_description
from deflow_trl.seeds import SeedGroup
from deflow_trl.update import Updater

OBS_DIM, ACT_DIM, BATCH, NUM_STEPS, DATASET = 28, 5, 256, 10, 4096
CONFIGS = {"quick": (256, 256), "reference": (512, 512, 512, 512), "tiny": (16, 16)}


def dataset(n: int = DATASET) -> TensorDict:
    g = torch.Generator().manual_seed(0)
    return TensorDict({
        "observation": torch.randn(n, OBS_DIM, generator=g), "action": torch.rand(n, ACT_DIM, generator=g) * 2 - 1,
        "next": {"observation": torch.randn(n, OBS_DIM, generator=g), "reward": -torch.rand(n, 1, generator=g),
                 "done": torch.zeros(n, 1, dtype=torch.bool), "terminated": torch.zeros(n, 1, dtype=torch.bool)},
    }, batch_size=[n])


def build(seeds: Sequence[int], hidden, data):
    """``(group step, lone round)``: one update of every seed, stacked or one updater after another."""
    def sample():
        return data[torch.randint(0, data.shape[0], (BATCH,))]

    def make():
        return make_deflow(OBS_DIM, ACT_DIM, hidden_sizes=hidden, num_flow_steps=NUM_STEPS)[1]

    group = SeedGroup.build(seeds, make)
    updaters = []
    for s in seeds:
        torch.manual_seed(s)
        loss = make()
        updaters.append(Updater(loss, torch.optim.Adam(loss.parameters(), lr=3e-4), SoftUpdate(loss, tau=0.005)))

    def lone_round():
        for update in updaters:
            update(sample())

    return (lambda: group.update(sample)), lone_round


def timed(fn, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def time_both(seeds: Sequence[int], hidden, data, steps: int, warmup: int, repeats: int) -> tuple[float, float]:
    """Median seconds per group update and per lone round, timed in alternating chunks (a shared machine's load
    changes during a run: alternating spreads it over both)."""
    group, lone = build(seeds, hidden, data)
    timed(group, warmup)
    timed(lone, warmup)
    g, lo = [], []
    for _ in range(repeats):
        g.append(timed(group, steps))
        lo.append(timed(lone, steps))
    return statistics.median(g), statistics.median(lo)


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 4, 8], help="group sizes G to time")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="quick")
    parser.add_argument("--steps", type=int, default=None, help="updates per timed chunk (default 5 quick, 2 reference)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed chunks per mode (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--json", type=str, default=None, help="write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    hidden = CONFIGS[args.config]
    steps = args.steps or (2 if args.config == "reference" else 5)
    data = dataset()
    load = os.getloadavg()
    print(f"{cpu_description()}, {torch.get_num_threads()} threads, load average {load[0]:.2f}; "
          f"config {args.config} {hidden}, batch {BATCH}, K = {NUM_STEPS}, median of {args.repeats} chunks of {steps} "
          "updates", flush=True)
    rows = []
    for g in args.seeds:
        seeds = list(range(g))
        group, lone = time_both(seeds, hidden, data, steps, args.warmup, args.repeats)
        row = {"seeds": g, "group_ms_per_update": 1e3 * group, "lone_ms_per_round": 1e3 * lone,
               "group_seed_updates_per_s": g / group, "lone_seed_updates_per_s": g / lone, "speedup": lone / group}
        rows.append(row)
        print(f"G={g}: group {row['group_seed_updates_per_s']:.1f}, lone {row['lone_seed_updates_per_s']:.1f} "
              "seed-updates/s", flush=True)
    print()
    print("| seeds G | group: ms / update | group: seed-updates/s | lone × G: ms / round | lone: seed-updates/s "
          "| group / lone |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['seeds']} | {r['group_ms_per_update']:.1f} | {r['group_seed_updates_per_s']:.1f} | "
              f"{r['lone_ms_per_round']:.1f} | {r['lone_seed_updates_per_s']:.1f} | {r['speedup']:.2f}× |")
    result = {"machine": {"cpu": cpu_description(), "threads": torch.get_num_threads(), "load_average": load[0],
                          "torch": torch.__version__},
              "config": {"name": args.config, "hidden": list(hidden), "batch": BATCH, "flow_steps": NUM_STEPS,
                         "updates_per_chunk": steps, "chunks": args.repeats},
              "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
