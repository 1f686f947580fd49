"""Learning curves from a run directory's CSV metrics (TorchRL ``CSVLogger`` layout)."""
from __future__ import annotations

import os

import numpy as np


def read_scalar(run_dir: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of ``<run_dir>/metrics/scalars/<name>.csv``, sorted by step.

    A resumed run may have logged some steps twice (between its last checkpoint
    and the kill): the last value logged for a step wins.
    """
    path = os.path.join(run_dir, "metrics", "scalars", f"{name}.csv")
    if not os.path.isfile(path):
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    by_step: dict[int, float] = {}
    with open(path) as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) == 2:
                by_step[int(float(parts[0]))] = float(parts[1])
    steps = np.array(sorted(by_step), dtype=np.int64)
    return steps, np.array([by_step[s] for s in steps])


def plot_run(run_dir: str, out: str | None = None, target_divergence: float | None = None) -> str:
    """Writes ``learning_curve.png`` (success rate, losses and the trust region
    against steps; δ as a dashed line when given); returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = out or os.path.join(run_dir, "learning_curve.png")
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    steps, success = read_scalar(run_dir, "eval/success_rate")
    axes[0].plot(steps, 100 * success, marker="o")
    axes[0].set(title="evaluation success rate", xlabel="step", ylabel="%", ylim=(-2, 102))
    for name in ("loss_qvalue", "loss_flow", "flow_bc_mse"):
        s, v = read_scalar(run_dir, f"train/{name}")
        if len(s) and np.isfinite(v).any():
            axes[1].plot(s, v, label=name)
    axes[1].set(title="losses", xlabel="step", yscale="log")
    axes[1].legend(fontsize=8)
    s, v = read_scalar(run_dir, "train/divergence")
    if len(s):
        axes[2].plot(s, v, label="mean Δ² (divergence)")
        if target_divergence is not None:
            axes[2].axhline(target_divergence, color="k", ls="--", lw=1, label="δ")
        axes[2].set(yscale="log")
    s, v = read_scalar(run_dir, "train/alpha")
    if len(s) and np.isfinite(v).any():
        twin = axes[2].twinx()
        twin.plot(s, v, color="tab:red", label="α")
        twin.set_ylabel("α", color="tab:red")
    s, v = read_scalar(run_dir, "train/distill")  # FQL: the one-step policy's distance to the flow
    if len(s):
        axes[2].plot(s, v, label="distillation gap (FQL)")
        axes[2].set(yscale="log")
    axes[2].set(title="trust region / distillation", xlabel="step")
    if axes[2].get_legend_handles_labels()[0]:
        axes[2].legend(fontsize=8, loc="upper left")
    fig.suptitle(run_dir, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
