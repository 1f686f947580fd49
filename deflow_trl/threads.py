"""Threads that fit the machine: how many CPUs this process may really use, and how idle threads wait.

``os.cpu_count()`` counts the machine's CPUs, not this process's: a ``taskset`` or SLURM
``--cpus-per-task`` affinity mask, or a container's cgroup CPU quota, leaves fewer. torch sizes its
intra-op pool from the machine, so in those places its OpenMP threads outnumber the cores they may
run on and wait for each other at every parallel region. :func:`usable_cpus` reads the affinity mask
and the cgroup quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``); :func:`resolve_threads` turns the
app's ``threads`` setting (``auto`` or a count) into a thread count, refusing a count above what is
usable in one line.

How idle threads wait is the other half. GNU OpenMP (torch's CPU pool on Linux) lets a thread that
finished its share *spin* up to ``GOMP_SPINCOUNT`` = 300,000 times before sleeping; when another
process holds one of the cores, the spinning thread steals time from the very thread it waits for.
Measured on a 2-core AMD EPYC Zen 4 (``benchmarks/neighbour.py``: eager 2×256 update, batch 256, one
CPU-bound neighbour process; ``docs/results.md``, "Threads"):

==========================  ========  ============  ==========================
policy                      quiet     beside one    beside one / best quiet
==========================  ========  ============  ==========================
2 threads, default spin     26.3 ms   96.3 ms       3.7×
2 threads, spin 1,000       26.0 ms   56.0 ms       2.2×
2 threads, spin 100         37.7 ms   46.1 ms       1.8×
2 threads, passive wait     40.0 ms   43.0 ms       1.8×
1 thread                    38.8 ms   39.4 ms       1.6×
threads=adaptive            25.9 ms   38.6 ms       1.5×
==========================  ========  ============  ==========================

So the apps' entry points set ``GOMP_SPINCOUNT=1000`` (:func:`prefer_short_spin`): as fast as the
default on a quiet machine, and it halves the collapse beside a neighbour; ``OMP_WAIT_POLICY=PASSIVE``
costs 1.5× on a quiet machine (every small op pays a wake-up) and is not used. Where a neighbour is
there to stay, one thread (``threads=1``) is the fastest; the app's slowdown warning says so, and
``threads=adaptive`` (:class:`AdaptiveThreads`, opt-in) does it by itself: at each log point it sets the
threads to the usable CPUs minus those other processes keep busy (``/proc/stat`` minus this process's own
CPU time), so it runs all CPUs on a quiet machine and leaves a busy core to its neighbour (measured: 1.45–1.6×
of the best quiet rate beside one busy process, against 2.2× for ``auto``).
The variable is read when the OpenMP runtime starts (at ``import torch``), so only an entry point
that has not imported torch yet can set it; a value the user exported (``GOMP_SPINCOUNT`` or
``OMP_WAIT_POLICY``) is left alone. The library (``import deflow_trl``) never sets it.

Examples:
    >>> usable_cpus() >= 1
    True
    >>> resolve_threads("auto") == usable_cpus()
    True
    >>> try:
    ...     resolve_threads(0)
    ... except ValueError as err:
    ...     print(err)
    threads must be 'auto', 'adaptive' or a count >= 1, got 0
"""
from __future__ import annotations

import math
import os
import sys
import time

__all__ = ["AdaptiveThreads", "OtherLoad", "apply_threads", "cgroup_cpu_limit", "prefer_short_spin", "resolve_threads",
           "threads_mode", "usable_cpus", "SPIN_VAR", "WAIT_POLICY_VAR"]

WAIT_POLICY_VAR = "OMP_WAIT_POLICY"
SPIN_VAR = "GOMP_SPINCOUNT"
SHORT_SPIN = 1000  # measured: quiet speed unchanged, half the slowdown beside a neighbour (module docstring)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup") -> float | None:
    """CPUs allowed by this process's cgroup quota (e.g. 1.5), or None when there is no quota.

    cgroup v2: ``<root>/<cgroup path>/cpu.max`` (``"<quota> <period>"`` or ``"max <period>"``);
    cgroup v1: ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota -1: none). The process's own
    cgroup is read from ``/proc/self/cgroup`` and the root's file is the fallback.
    """
    own = ""
    text = _read("/proc/self/cgroup") or ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and (parts[0] == "0" or "cpu" in parts[1].split(",")):
            own = parts[2].lstrip("/")
            break
    for directory in dict.fromkeys((os.path.join(root, own), root, os.path.join(root, "cpu"), os.path.join(root, "cpu,cpuacct"))):
        v2 = _read(os.path.join(directory, "cpu.max"))
        if v2:
            quota, _, period = v2.partition(" ")
            if quota != "max" and period:
                return int(quota) / int(period)
            return None
        quota, period = _read(os.path.join(directory, "cpu.cfs_quota_us")), _read(os.path.join(directory, "cpu.cfs_period_us"))
        if quota and period:
            return None if int(quota) < 0 else int(quota) / int(period)
    return None


def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by the cgroup quota (rounded up), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return max(1, cpus)


def threads_mode(value: int | str) -> str | None:
    """``"auto"`` or ``"adaptive"`` for those settings of ``threads`` (any case), None for anything else (a count)."""
    mode = value.strip().lower() if isinstance(value, str) else None
    return mode if mode in ("auto", "adaptive") else None


def resolve_threads(value: int | str) -> int:
    """The thread count for ``threads=value``: ``auto`` → :func:`usable_cpus`; a count must be 1…usable.

    Raises ``ValueError`` with one line naming the value and the usable CPUs.
    """
    if threads_mode(value):
        return usable_cpus()
    try:
        count = int(value)
        if isinstance(value, bool) or count != float(value):
            raise ValueError
    except (TypeError, ValueError):
        raise ValueError(f"threads must be 'auto', 'adaptive' or a count >= 1, got {value!r}") from None
    if count < 1:
        raise ValueError(f"threads must be 'auto', 'adaptive' or a count >= 1, got {count}")
    usable = usable_cpus()
    if count > usable:
        raise ValueError(f"threads={count} but this process may use only {usable} CPU(s) "
                         f"(affinity mask and cgroup quota): use threads=auto or a count <= {usable}")
    return count


def prefer_short_spin(spins: int = SHORT_SPIN) -> bool:
    """Sets ``GOMP_SPINCOUNT=spins`` unless the user chose a wait policy; True if it will take effect.

    Only an entry point may call it, before ``import torch`` (the OpenMP runtime reads the variable once,
    when torch loads it); later it changes nothing and returns False.
    """
    if SPIN_VAR in os.environ or WAIT_POLICY_VAR in os.environ:
        return False
    if "torch" in sys.modules:
        return False
    os.environ[SPIN_VAR] = str(spins)
    return True


def apply_threads(value: int | str) -> int:
    """Sets torch's intra-op threads for ``threads=value`` and returns the count in use.

    ``auto`` defers to an ``OMP_NUM_THREADS`` the user exported (torch already follows it) and otherwise
    uses :func:`usable_cpus`; a count is checked by :func:`resolve_threads` and set as given.
    """
    import torch  # lazy: this module is imported by entry points before torch (prefer_short_spin)

    if threads_mode(value) and os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads()
    count = resolve_threads(value)
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all CPUs spent busy since boot (``/proc/stat``'s first line: all but idle and iowait)."""
    text = _read("/proc/stat")
    if not text or not text.startswith("cpu "):
        return None
    fields = [int(x) for x in text.split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    guest = sum(fields[8:10]) if len(fields) > 9 else 0  # already counted in user/nice
    return (sum(fields) - idle - guest) / os.sysconf("SC_CLK_TCK")


class OtherLoad:
    """CPUs used by *other* processes between two calls: the machine's busy CPU time (``/proc/stat``) minus this
    process's own (all its threads: ``time.process_time``), per second of wall time. None where ``/proc`` is missing.

    Examples:
        >>> load = OtherLoad()
        >>> other = load.sample()  # the first call only starts the window
        >>> other is None
        True
    """

    def __init__(self) -> None:
        self._last: tuple[float, float, float] | None = None

    def sample(self) -> float | None:
        busy = _busy_cpu_seconds()
        if busy is None:
            return None
        now = (time.monotonic(), busy, time.process_time())
        last, self._last = self._last, now
        if last is None or now[0] - last[0] <= 0:
            return None
        return max(0.0, ((now[1] - last[1]) - (now[2] - last[2])) / (now[0] - last[0]))


class AdaptiveThreads:
    """``threads=adaptive``: torch's threads = the usable CPUs minus those other processes keep busy (at least 1).

    Call :meth:`update` at the app's log points. Measured (``benchmarks/neighbour.py``, Zen 4, eager 2×256 update):
    beside one CPU-bound process, one thread runs the update 1.25–1.6× slower than the best quiet rate, against
    1.9–2.2× for two spinning-for-1,000 threads; on a quiet machine all CPUs are best. A change of the thread count
    recompiles a compiled update once per count (inductor's CPU kernels are built for one) and changes float
    round-off, so it is opt-in: ``threads=auto`` (the default) never changes the count during a run.

    Examples:
        >>> threads = AdaptiveThreads(usable=2, current=2)
        >>> threads.decide(other=0.97), threads.decide(other=0.1)  # a neighbour holds a core; then it left
        (1, 2)
    """

    def __init__(self, usable: int | None = None, current: int | None = None, busy_at: float = 0.5) -> None:
        self.usable = usable if usable is not None else usable_cpus()
        self.current = current
        self.busy_at = busy_at  # other processes' CPUs that count as one core taken (rounded from here)
        self.load = OtherLoad()

    def decide(self, other: float | None) -> int:
        """The thread count for ``other`` CPUs used by other processes (None: keep the current one)."""
        if other is None:
            return self.current or self.usable
        taken = int(other + (1 - self.busy_at)) if other >= self.busy_at else 0
        return max(1, self.usable - taken)

    def update(self) -> tuple[int, int, float] | None:
        """Re-sizes torch's threads if the load of other processes changed: ``(before, after, other CPUs)`` or None."""
        import torch  # lazy: see apply_threads

        before = torch.get_num_threads() if self.current is None else self.current
        other = self.load.sample()
        after = self.decide(other)
        self.current = after
        if after == before:
            return None
        torch.set_num_threads(after)
        return before, after, other
