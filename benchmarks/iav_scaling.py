"""Time and accuracy of the subsampled IAV on a 1M × 28 dataset.

The default data lie near a 6-dimensional manifold embedded in 28 dimensions
(like robot states along trajectories); ``--data gaussian`` is isotropic noise,
the worst case for the k-d tree.

    python benchmarks/iav_scaling.py [--n 1000000] [--queries 20000] [--json out.json]

Reports the wall time of `intrinsic_action_variance(max_queries=Q)` and its
standard error; with --exact-check it also compares against the exact value on
a 50k subset (every state a query).
"""
import argparse
import json
import time

import numpy as np

from deflow_trl import intrinsic_action_variance
from deflow_trl.hardware import cpu_description


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--obs-dim", type=int, default=28)
    p.add_argument("--act-dim", type=int, default=5)
    p.add_argument("--queries", type=int, default=20_000)
    p.add_argument("--exact-check", type=int, default=50_000, help="size of the exact-vs-subsample check (0: skip)")
    p.add_argument("--data", choices=["manifold", "gaussian"], default="manifold")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    cpu_line = cpu_description()
    print(f"CPU: {cpu_line}", flush=True)
    rng = np.random.default_rng(0)
    if a.data == "manifold":
        z = rng.uniform(-1, 1, size=(a.n, 6))
        obs = np.tanh(z @ rng.normal(size=(6, a.obs_dim))) + 0.01 * rng.normal(size=(a.n, a.obs_dim))
    else:
        obs = rng.normal(size=(a.n, a.obs_dim))
    obs = obs.astype(np.float32)
    act = np.clip(np.tanh(obs[:, : a.act_dim]) + 0.1 * rng.normal(size=(a.n, a.act_dim)), -1, 1).astype(np.float32)
    t0 = time.perf_counter()
    iav, stderr = intrinsic_action_variance(obs, act, max_queries=a.queries, return_stderr=True)
    seconds = time.perf_counter() - t0
    result = {"data": a.data, "n": a.n, "obs_dim": a.obs_dim, "queries": a.queries, "iav": iav, "stderr": stderr,
              "relative_stderr": stderr / iav, "seconds": seconds, "cpu": cpu_line}
    if a.exact_check:
        m = a.exact_check
        exact = intrinsic_action_variance(obs[:m], act[:m], max_queries=None)
        sub, sub_se = intrinsic_action_variance(obs[:m], act[:m], max_queries=a.queries, return_stderr=True)
        result.update(check_n=m, check_exact=exact, check_subsample=sub, check_stderr=sub_se,
                      check_error_in_stderrs=abs(sub - exact) / sub_se)
    print("| quantity | value |\n| --- | --- |")
    for k, v in result.items():
        print(f"| {k} | {v:.6g} |" if isinstance(v, float) else f"| {k} | {v} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
