"""Seeds per process: a :class:`deflow_trl.seeds.SeedGroup` of G seeds vs G lone updaters, one after another.

Aggregate seed-updates per second (G seeds × updates / time) of

* ``group``: one ``SeedGroup`` of G seeds (parameters stacked, the loss under ``torch.vmap``, one Adam, one
  Polyak update; batches and noise drawn per seed on its own RNG stream);
* ``lone``: G plain eager :class:`~deflow_trl.update.Updater` s, stepped one after another in this process
  (what running G seeds sequentially costs);
* ``processes``: the same G lone updaters spread over one process per usable CPU, one thread each, running at
  the same time (one process per seed, the way a sweep launcher runs them on this machine's cores).

``group / best lone`` divides by the faster of the two lone ways.

Both run eager (no ``torch.compile``) on a random dataset of 4096 transitions (obs 28, act 5, K = 10, 2 critics,
batch 256), sampling batches with replacement as the app's replay buffer does. ``--config quick`` is the README
main run's networks (2×256), ``reference`` the paper's (4×512).

Timings on a shared machine are noisy: the load average is printed, and the numbers are indicative.

    python benchmarks/seed_throughput.py --seeds 1 2 4 8 --config quick reference --json out.json
    python benchmarks/update_throughput.py --seeds 1 2 4 8          # the same, from the update benchmark
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
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
from deflow_trl.threads import usable_cpus
from deflow_trl.update import Updater

OBS_DIM, ACT_DIM, BATCH, NUM_STEPS, DATASET = 28, 5, 256, 10, 4096
CONFIGS = {"quick": (256, 256), "reference": (512, 512, 512, 512), "tiny": (16, 16)}
DEVICE = torch.device("cpu")  # --device


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def dataset(n: int = DATASET) -> TensorDict:
    g = torch.Generator().manual_seed(0)
    return TensorDict({
        "observation": torch.randn(n, OBS_DIM, generator=g), "action": torch.rand(n, ACT_DIM, generator=g) * 2 - 1,
        "next": {"observation": torch.randn(n, OBS_DIM, generator=g), "reward": -torch.rand(n, 1, generator=g),
                 "done": torch.zeros(n, 1, dtype=torch.bool), "terminated": torch.zeros(n, 1, dtype=torch.bool)},
    }, batch_size=[n]).to(DEVICE)


def _sampler(data):
    def sample():
        return data[torch.randint(0, data.shape[0], (BATCH,))]
    return sample


def _make(hidden):
    return lambda: make_deflow(OBS_DIM, ACT_DIM, hidden_sizes=hidden, num_flow_steps=NUM_STEPS, device=DEVICE)[1]


def build_group(seeds: Sequence[int], hidden, data):
    """One update of every seed, stacked."""
    group, sample = SeedGroup.build(seeds, _make(hidden)), _sampler(data)
    return lambda: group.update(sample)


def build_lone(seeds: Sequence[int], hidden, data):
    """One update of every seed, one plain eager updater after another."""
    sample, updaters = _sampler(data), []
    for s in seeds:
        torch.manual_seed(s)
        loss = _make(hidden)()
        updaters.append(Updater(loss, torch.optim.Adam(loss.parameters(), lr=3e-4), SoftUpdate(loss, tau=0.005)))

    def lone_round():
        for update in updaters:
            update(sample())

    return lone_round


def _lone_worker(seeds, hidden, steps, warmup, threads, barrier, queue) -> None:
    torch.set_num_threads(threads)
    lone = build_lone(seeds, hidden, dataset())
    timed(lone, warmup)
    barrier.wait()  # every process times the same stretch of wall-clock time
    queue.put((len(seeds), timed(lone, steps)))


def time_processes(g: int, hidden, steps: int, warmup: int, processes: int, threads: int) -> float:
    """Aggregate seed-updates/s of G lone runs spread over ``processes`` processes of ``threads`` threads each,
    running at the same time (the "one process per seed" way, on this machine's cores)."""
    ctx = mp.get_context("spawn")
    chunks = [list(range(g))[i::processes] for i in range(processes)]
    chunks = [c for c in chunks if c]
    barrier, queue = ctx.Barrier(len(chunks)), ctx.Queue()
    procs = [ctx.Process(target=_lone_worker, args=(c, hidden, steps, warmup, threads, barrier, queue)) for c in chunks]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(n / t for n, t in results)


def timed(fn, steps: int) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync()
    return (time.perf_counter() - start) / steps


def time_both(seeds: Sequence[int], hidden, data, steps: int, warmup: int, repeats: int) -> tuple[float, float]:
    """Median seconds per group update and per lone round, timed in alternating chunks (a shared machine's load
    changes during a run: alternating spreads it over both)."""
    group, lone = build_group(seeds, hidden, data), build_lone(seeds, hidden, data)
    timed(group, warmup)
    timed(lone, warmup)
    g, lo = [], []
    for _ in range(repeats):
        g.append(timed(group, steps))
        lo.append(timed(lone, steps))
    return statistics.median(g), statistics.median(lo)


def measure(config: str, sizes: Sequence[int], steps: int, warmup: int, repeats: int, processes: bool) -> list[dict]:
    """Rows of one network size: per G, the group, G lone runs one after another, and (``processes``) G lone runs
    in one process per usable CPU with one thread each."""
    hidden, data, rows = CONFIGS[config], dataset(), []
    cpus = usable_cpus()
    for g in sizes:
        group, lone = time_both(list(range(g)), hidden, data, steps, warmup, repeats)
        row = {"config": config, "seeds": g, "group_ms_per_update": 1e3 * group, "lone_ms_per_round": 1e3 * lone,
               "group_seed_updates_per_s": g / group, "lone_seed_updates_per_s": g / lone}
        best = row["lone_seed_updates_per_s"]
        if processes and g > 1 and cpus > 1:
            p = min(g, cpus)
            rate = statistics.median(time_processes(g, hidden, steps, warmup, p, max(1, cpus // p))
                                     for _ in range(repeats))
            row.update(processes=p, processes_seed_updates_per_s=rate)
            best = max(best, rate)
        row["best_lone_seed_updates_per_s"] = best
        row["group_vs_best_lone"] = row["group_seed_updates_per_s"] / best
        rows.append(row)
        print(f"{config} G={g}: group {row['group_seed_updates_per_s']:.1f}, lone {row['lone_seed_updates_per_s']:.1f}"
              + (f", {row['processes']} processes {rate:.1f}" if "processes" in row else "") + " seed-updates/s",
              flush=True)
    return rows


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 4, 8], help="group sizes G to time")
    parser.add_argument("--config", choices=sorted(CONFIGS), nargs="+", default=["quick"])
    parser.add_argument("--steps", type=int, default=None, help="updates per timed chunk (default 5 quick, 2 reference)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed chunks per mode (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--no-processes", action="store_true", help="skip the one-process-per-CPU lone runs")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (on CUDA: no per-process lone runs)")
    parser.add_argument("--json", type=str, default=None, help="write the results here")
    args = parser.parse_args(argv)
    global DEVICE
    DEVICE = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    load = os.getloadavg()
    print(f"{cpu_description()}, {usable_cpus()} usable CPUs, {torch.get_num_threads()} threads, load average "
          f"{load[0]:.2f}; batch {BATCH}, K = {NUM_STEPS}, median of {args.repeats} chunks", flush=True)
    rows = []
    for config in args.config:
        steps = args.steps or (2 if config == "reference" else 5)
        rows += measure(config, args.seeds, steps, args.warmup, args.repeats,
                        not args.no_processes and DEVICE.type == "cpu")
    print()
    print("| network | seeds G | group: seed-updates/s | lone, one after another | lone, processes × 1 thread "
          "| group / best lone |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        procs = f"{r['processes_seed_updates_per_s']:.1f} ({r['processes']} proc.)" if "processes" in r else "–"
        print(f"| {r['config']} {'×'.join(map(str, CONFIGS[r['config']]))} | {r['seeds']} | "
              f"{r['group_seed_updates_per_s']:.1f} | {r['lone_seed_updates_per_s']:.1f} | {procs} | "
              f"{r['group_vs_best_lone']:.2f}× |")
    gpu = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else None
    result = {"machine": {"cpu": cpu_description(), "gpu": gpu, "usable_cpus": usable_cpus(),
                          "threads": torch.get_num_threads(),
                          "load_before_after": [load[0], os.getloadavg()[0]], "torch": torch.__version__},
              "config": {"batch": BATCH, "flow_steps": NUM_STEPS, "chunks": args.repeats}, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
