"""Turn runs' evaluation CSVs into the benchmark protocol's numbers.

    python -m deflow_trl.summarize runs/multirun/2026-11-25_10-00-00 [more dirs...] [--json out.json]

Per run: the mean of the last three evaluations' success rates (OGBench/FQL
protocol). Per (agent, dataset): mean ± std of that over seeds (population
std, as the FQL tables), with the seed count. Runs are found recursively
(any directory holding ``metrics/scalars``); agent, dataset and seed come from
the run's resolved Hydra config (``.hydra/config.yaml``).
"""
from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict

import numpy as np

from deflow_trl.plot import read_scalar, run_dirs

LAST_EVALS = 3


def run_score(run_dir: str) -> dict | None:
    """``{"agent", "dataset", "seed", "score", "last_step", "evals"}`` or None when the run has no evaluation."""
    from omegaconf import OmegaConf

    steps, success = read_scalar(run_dir, "eval/success_rate")
    if len(steps) == 0:
        return None
    cfg_path = os.path.join(run_dir, ".hydra", "config.yaml")
    cfg = OmegaConf.load(cfg_path) if os.path.isfile(cfg_path) else None
    return {
        "run_dir": run_dir,
        "agent": cfg.agent.name if cfg is not None else "?",
        "dataset": (f"{cfg.env.name}-singletask-task{cfg.task}-v0" if cfg is not None else "?"),
        "seed": int(cfg.seed) if cfg is not None else -1,
        "score": float(100 * success[-LAST_EVALS:].mean()),
        "last_step": int(steps[-1]),
        "evals": len(steps),
    }


def summarize(roots: list[str]) -> list[dict]:
    runs = [r for root in roots for d in run_dirs(root) if (r := run_score(d)) is not None]
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in runs:
        groups[(r["agent"], r["dataset"])].append(r)
    rows = []
    for (agent, dataset), members in sorted(groups.items()):
        scores = np.array([m["score"] for m in sorted(members, key=lambda m: m["seed"])])
        rows.append({
            "agent": agent, "dataset": dataset, "seeds": len(scores),
            "mean": float(scores.mean()), "std": float(scores.std()),
            "per_seed": scores.tolist(), "last_step": min(m["last_step"] for m in members),
        })
    return rows


def plot_sweep(roots: list[str], out: str) -> str:
    """Success rate against steps, mean ± std over seeds, one curve per (agent, dataset)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[tuple[str, str], list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
    for root in roots:
        for d in run_dirs(root):
            r = run_score(d)
            if r is not None:
                curves[(r["agent"], r["dataset"])].append(read_scalar(d, "eval/success_rate"))
    fig, ax = plt.subplots(figsize=(6, 4))
    for (agent, dataset), runs in sorted(curves.items()):
        common = sorted(set.intersection(*(set(s.tolist()) for s, _ in runs)))
        values = np.array([[dict(zip(s.tolist(), v))[c] for c in common] for s, v in runs]) * 100
        mean, std = values.mean(0), values.std(0)
        ax.plot(common, mean, marker="o", label=f"{agent} ({len(runs)} seeds)")
        ax.fill_between(common, mean - std, mean + std, alpha=0.2)
    ax.set(xlabel="step", ylabel="success rate %", ylim=(-2, 102), title=", ".join(sorted({d for _, d in curves})))
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def format_table(rows: list[dict]) -> str:
    lines = ["| agent | dataset | success % (mean ± std) | seeds | per seed | steps |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        per_seed = ", ".join(f"{s:.1f}" for s in r["per_seed"])
        lines.append(f"| {r['agent']} | {r['dataset']} | {r['mean']:.1f} ± {r['std']:.1f} | {r['seeds']} | {per_seed} | {r['last_step']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("roots", nargs="+", help="run or sweep directories")
    p.add_argument("--json", default=None, help="also write the rows as JSON here")
    p.add_argument("--plot", default=None, help="also write success-rate curves (mean ± std over seeds) to this PNG")
    a = p.parse_args(argv)
    missing = [r for r in a.roots if not os.path.isdir(r)]
    if missing:
        raise SystemExit(f"error: not a directory: {', '.join(missing)}")
    rows = summarize(a.roots)
    if not rows:
        raise SystemExit(f"error: no run with evaluations under {', '.join(a.roots)}")
    print(format_table(rows))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)
    if a.plot:
        print(f"curves: {plot_sweep(a.roots, a.plot)}")


if __name__ == "__main__":
    main()
