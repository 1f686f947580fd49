"""Failed jobs of a Hydra sweep, whatever launcher ran them.

A job that fails with a known error writes ``<run dir>/FAILED`` (first line:
the reason) — in its own process, which may be a joblib worker or a SLURM
node. :class:`FailedJobsReport`, a Hydra callback registered in
``deflow_trl/configs/train.yaml``, notes ``hydra.sweep.dir`` in the launching process;
when the sweep ends (Hydra re-raises the first failure, or returns),
:func:`report_failed_jobs` lists the markers there and the app exits with
status 1. ``summarize`` reports such runs as crashed.
"""
from __future__ import annotations

import glob
import os
import sys

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

FAILED_MARKER = "FAILED"


def mark_failed(run_dir: str, reason: str) -> None:
    """Writes the ``FAILED`` marker of a job that failed in ``run_dir``."""
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, FAILED_MARKER), "w") as f:
        f.write(reason.strip() + "\n")


def clear_failed(run_dir: str) -> None:
    """A run that starts (again) is no longer failed."""
    try:
        os.remove(os.path.join(run_dir, FAILED_MARKER))
    except FileNotFoundError:
        pass


def failure_reason(run_dir: str) -> str | None:
    """The first non-empty line of ``run_dir``'s ``FAILED`` marker ("" if it has none or cannot be
    read), or None when the run has no marker."""
    marker = os.path.join(run_dir, FAILED_MARKER)
    if not os.path.exists(marker):
        return None
    try:
        with open(marker, errors="replace") as f:
            return next((line.strip() for line in f if line.strip()), "")
    except OSError:
        return ""


def failed_runs(sweep_dir: str) -> list[tuple[str, str]]:
    """``(run dir, reason)`` of every ``FAILED`` marker under ``sweep_dir``."""
    run_dirs = (os.path.dirname(p) for p in glob.glob(os.path.join(sweep_dir, "**", FAILED_MARKER), recursive=True))
    return [(d, failure_reason(d) or "failed") for d in sorted(run_dirs)]


SWEEP_DIRS: list[str] = []  # the sweep directory of this process's multirun (set when it starts)


class FailedJobsReport(Callback):
    """Remembers the sweep directory when a sweep starts (in the launching process);
    :func:`report_failed_jobs` lists the failures when the app exits."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        SWEEP_DIRS.append(str(config.hydra.sweep.dir))


def report_failed_jobs() -> list[tuple[str, str]]:
    """Prints every failed job of this process's sweep (if any) and returns them."""
    failed = [f for d in SWEEP_DIRS for f in failed_runs(d)]
    if failed:
        sys.stderr.write(f"[deflow_trl] {len(failed)} job(s) of the sweep failed:\n")
        for run_dir, reason in failed:
            sys.stderr.write(f"  {run_dir}: {reason}\n")
    return failed
