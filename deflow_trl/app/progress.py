"""Watching the training rate: a run that became much slower than it was says so, once.

On a small CPU machine the training rate collapses when another process loads the cores: torch's
OpenMP threads spin waiting for a core the neighbour holds (measured: 50x slower updates on 2 cores,
issue 25). Nothing fails, the run only crawls, so :class:`SlowdownWatch` turns the rate the app
already logs (``time/steps_per_s``) into one warning that names the cause and the remedy.
"""
from __future__ import annotations

import torch

from deflow_trl.threads import usable_cpus

__all__ = ["SlowdownWatch"]


class SlowdownWatch:
    """Says once when the training rate falls under ``ratio`` of the rate the run had once warm.

    Feed it each log window's rate (steps per second between two log points, evaluation and
    checkpoint time left out, as ``time/steps_per_s``) through :meth:`observe`. The decisions:

    - Baseline: the first ``warmup`` windows are skipped (compilation, first allocations, a resumed
      run warming up again); the baseline is the fastest of the next ``baseline_windows`` windows,
      then fixed. A run already slowed from its start has a low baseline and is never flagged:
      the watch compares the run with itself only, no absolute speed is assumed.
    - Phases: :meth:`restart` starts a new warm-up and baseline (the app calls it when the online
      phase begins: an env step per update makes each step slower, which is not a slowdown).
    - Warning: :meth:`observe` returns the warning text the first time a window is slower than
      ``ratio`` x baseline, and never again in this run (even after a recovery and a new drop: one
      line is enough to name the cause; the logged ``time/steps_per_s`` keeps the whole story).
      :attr:`slow` says whether the latest window was slow, and :meth:`postfix` shows it on the
      progress bar for as long as it lasts.

    Examples:
        >>> watch = SlowdownWatch(threads=2, cpus=2)
        >>> [watch.observe(r) for r in (40.0, 300.0, 310.0, 290.0, 280.0)]  # warm-up, baseline, steady
        [None, None, None, None, None]
        >>> print(watch.observe(50.0))  # doctest: +ELLIPSIS
        training slowed to 50.0 steps/s from 310.0 steps/s earlier in this run: another process ... threads=1: it resumes. ...
        >>> watch.observe(20.0) is None, watch.slow, watch.postfix()  # said once; the bar still shows it
        (True, True, {'slow': '20/s (was 310/s): CPU shared?'})
        >>> watch.observe(300.0), watch.slow, watch.postfix()  # recovered: the bar is clean again
        (None, False, {})
    """

    def __init__(self, ratio: float = 1 / 3, warmup: int = 1, baseline_windows: int = 3,
                 threads: int | None = None, cpus: int | None = None):
        self.ratio, self.warmup, self.baseline_windows = ratio, warmup, baseline_windows
        self.threads, self.cpus = threads, cpus
        self.warned = False
        self.restart()

    def restart(self) -> None:
        """A new phase: its own warm-up and baseline. A warning already given stays given."""
        self.seen = 0  # windows observed in this phase
        self.baseline: float | None = None
        self.rate: float | None = None
        self.slow = False

    def observe(self, rate: float) -> str | None:
        """Takes one window's rate; returns the warning the first time the run is slow, else None."""
        self.seen += 1
        self.rate = rate
        if self.seen <= self.warmup:
            return None
        if self.seen <= self.warmup + self.baseline_windows:
            self.baseline = rate if self.baseline is None else max(self.baseline, rate)
            return None
        self.slow = rate < self.ratio * self.baseline
        if not self.slow or self.warned:
            return None
        self.warned = True
        return self.message()

    def message(self) -> str:
        """The warning: the measured rates, the likely cause and what to do."""
        threads = self.threads if self.threads is not None else torch.get_num_threads()
        cpus = self.cpus if self.cpus is not None else usable_cpus()
        return (
            f"training slowed to {self.rate:.1f} steps/s from {self.baseline:.1f} steps/s earlier in this run: "
            f"another process is probably using the CPU cores (torch runs {threads} threads on {cpus} cores, and "
            f"its threads wait for the cores another process holds). Stop the other work, or stop this run (Ctrl-C "
            f"saves a checkpoint) and rerun the same command with fewer threads, e.g. threads=1: "
            f"it resumes. Said once per run; time/steps_per_s keeps the rate"
        )

    def postfix(self) -> dict[str, str]:
        """For the progress bar: the slow rate against the baseline while it lasts, else nothing."""
        if not self.slow:
            return {}
        return {"slow": f"{self.rate:.0f}/s (was {self.baseline:.0f}/s): CPU shared?"}
