"""The update rate quiet and beside one CPU-bound neighbour process, per thread policy.

Users train on shared workstations, in containers and in SLURM jobs, where another process holds a
core. torch's OpenMP threads then wait at every parallel region for the thread that lost its core,
and idle threads that *spin* (GNU OpenMP's default) steal time from it. This script measures, for
each policy below, the median time of an eager DeFlow update (the README main run's 2×256 networks,
batch 256, K = 10) with the machine quiet and with one neighbour (``python -c "while True: pass"``,
not pinned, as a user's other job would be), and prints the slowdown ratio of each.

Policies (each runs in its own process: the OpenMP wait policy is read when torch loads):

* ``active``: torch's default, all usable CPUs as threads, idle threads spin;
* ``passive``: the same threads, ``OMP_WAIT_POLICY=PASSIVE`` (idle threads sleep at once);
* ``one``: one thread (leaves the other core to the neighbour);
* ``spin10k``, ``spin1k``: all usable CPUs, idle threads spin only 10,000 / 1,000 times (``GOMP_SPINCOUNT``;
  GNU OpenMP's default is 300,000) before sleeping;
* ``adaptive``: the app's ``threads=adaptive`` (with its ``GOMP_SPINCOUNT=1000``): after a first window the
  threads are the usable CPUs minus those the other processes keep busy, re-checked after every timed repeat.

    python benchmarks/neighbour.py                       # ≈ 2-3 min on 2 cores
    python benchmarks/neighbour.py --json neighbour.json --repeats 7

Run it on an otherwise quiet machine: the neighbour is the only load it should meet.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
POLICIES = {
    "active": {"threads": 0, "env": {}},  # 0: all usable CPUs
    "passive": {"threads": 0, "env": {"OMP_WAIT_POLICY": "PASSIVE"}},
    "one": {"threads": 1, "env": {}},
    "spin10k": {"threads": 0, "env": {"GOMP_SPINCOUNT": "10000"}},
    "spin1k": {"threads": 0, "env": {"GOMP_SPINCOUNT": "1000"}},
    "spin100": {"threads": 0, "env": {"GOMP_SPINCOUNT": "100"}},
    "spin3k": {"threads": 0, "env": {"GOMP_SPINCOUNT": "3000"}},
    "adaptive": {"threads": -1, "env": {"GOMP_SPINCOUNT": "1000"}},  # the app's threads=adaptive
}


def child(args) -> None:
    """Times ``--updates`` eager updates ``--repeats`` times in this process; prints one JSON line."""
    sys.path.insert(0, HERE)
    import torch
    from update_throughput import CONFIGS, make_batch, make_updater

    from deflow_trl.threads import AdaptiveThreads, usable_cpus

    torch.set_num_threads(args.threads if args.threads > 0 else usable_cpus())
    adaptive = AdaptiveThreads() if args.threads < 0 else None
    updater = make_updater(CONFIGS[args.config], compile=False)
    batch = make_batch()
    if adaptive is not None:
        adaptive.load.sample()
    for _ in range(3 if adaptive is None else args.updates):
        updater(batch)
    samples, counts = [], []
    for _ in range(args.repeats):
        if adaptive is not None:
            adaptive.update()  # the app does this at its log points
        counts.append(torch.get_num_threads())
        t0 = time.perf_counter()
        for _ in range(args.updates):
            updater(batch)
        samples.append(1e3 * (time.perf_counter() - t0) / args.updates)
    print(json.dumps({"ms": statistics.median(samples), "samples_ms": samples, "threads": torch.get_num_threads(),
                      "threads_per_repeat": counts}))


def measure(policy: str, neighbour: bool, args) -> dict:
    spec = POLICIES[policy]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")}
    env.update(spec["env"])
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if neighbour else None
    try:
        time.sleep(0.5 if neighbour else 0)
        out = subprocess.run([sys.executable, __file__, "--child", "--threads", str(spec["threads"]), "--config", args.config,
                              "--updates", str(args.updates), "--repeats", str(args.repeats)],
                             env=env, capture_output=True, text=True, check=True)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="quick", choices=("quick", "small", "reference"))
    parser.add_argument("--updates", type=int, default=20, help="updates per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--policies", nargs="+", default=list(POLICIES), choices=list(POLICIES))
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return {}

    import torch

    from deflow_trl.hardware import cpu_description
    from deflow_trl.threads import usable_cpus

    load_before = os.getloadavg()
    rows = []
    for policy in args.policies:
        quiet = measure(policy, False, args)
        busy = measure(policy, True, args)
        rows.append({"policy": policy, "threads": quiet["threads"], "quiet_ms": quiet["ms"], "neighbour_ms": busy["ms"],
                     "slowdown": busy["ms"] / quiet["ms"], "quiet_samples_ms": quiet["samples_ms"],
                     "neighbour_samples_ms": busy["samples_ms"], "quiet_threads_per_repeat": quiet["threads_per_repeat"],
                     "neighbour_threads_per_repeat": busy["threads_per_repeat"]})
    best_quiet = min(r["quiet_ms"] for r in rows)
    for r in rows:
        r["quiet_vs_best"] = r["quiet_ms"] / best_quiet
        r["neighbour_vs_best_quiet"] = r["neighbour_ms"] / best_quiet
    result = {"machine": {"cpu": cpu_description(), "usable_cpus": usable_cpus(), "torch": torch.__version__,
                          "python": platform.python_version(), "load_before": load_before,
                          "load_after": os.getloadavg()},
              "config": args.config, "updates": args.updates, "repeats": args.repeats, "rows": rows}
    print(f"{result['machine']['cpu']}; torch {torch.__version__}; load {load_before[0]:.2f} → {result['machine']['load_after'][0]:.2f}")
    print(f"eager DeFlow update, {args.config} config, median of {args.repeats}×{args.updates}; neighbour = 1 busy process")
    print(f"{'policy':<10}{'threads':>8}{'quiet ms':>10}{'neighbour ms':>14}{'slowdown':>10}{'vs best quiet':>15}")
    for r in rows:
        print(f"{r['policy']:<10}{r['threads']:>8}{r['quiet_ms']:>10.1f}{r['neighbour_ms']:>14.1f}"
              f"{r['slowdown']:>9.2f}×{r['neighbour_vs_best_quiet']:>14.2f}×")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
