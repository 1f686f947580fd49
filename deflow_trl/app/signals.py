"""Stop a training loop cleanly on Ctrl-C, SIGTERM, SIGUSR1 or SIGUSR2.

Inside :class:`GracefulStop` the first SIGINT (Ctrl-C), SIGTERM (``kill``,
SLURM's preemption and time limit), SIGUSR1 (SLURM's ``--signal=USR1@<s>``
warning) or SIGUSR2 (submitit's warning before preemption or the time limit,
its default ``SUBMITIT_PREEMPT_SIGNAL``) only sets :attr:`GracefulStop.signum`:
the loop finishes the current update, writes a checkpoint and exits with a line
saying how to resume. A second SIGINT exits at once (exit status 130) with one
line; checkpoints are written atomically, so even that loses at most the steps
since the last one. Outside the context the previous handlers are back.

Hand-over: when the signal that stopped the loop had a Python handler before
the context (submitit's requeue-and-exit handler inside a
``hydra/launcher=submitit_slurm`` job, or a host program's own), that handler is
called once the context exits — after the loop's checkpoint — so the launcher
still requeues the job and the requeued job resumes with nothing lost.
Python's default Ctrl-C handler (``KeyboardInterrupt``) is not called.

Python runs signal handlers in the main thread between bytecodes, so an update
step (C++ kernels) always completes; a long evaluation completes before the loop
sees the request. Handlers can only be installed from the main thread: elsewhere
the context does nothing (``active`` is False).

Examples:
    >>> import os, signal
    >>> with GracefulStop() as stop:
    ...     os.kill(os.getpid(), signal.SIGUSR1)
    ...     print(stop.requested, stop.name)
    True SIGUSR1
"""
from __future__ import annotations

import os
import signal
import sys
import threading

__all__ = ["GracefulStop", "STOP_SIGNALS"]

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class GracefulStop:
    """Records the first stop signal; a second SIGINT exits the process at once."""

    def __init__(self, signals=STOP_SIGNALS):
        self.signals = tuple(signals)
        self.signum: int | None = None
        self.active = False
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str | None:
        return None if self.signum is None else signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        """The shell's convention for death by a signal: 128 + its number."""
        return 128 + (self.signum or 0)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            sys.stderr.write("[deflow_trl] second Ctrl-C: exiting now, without a new checkpoint "
                             "(the last saved one is intact; rerun the command to resume from it)\n")
            sys.stderr.flush()
            os._exit(128 + signal.SIGINT)
        if self.signum is None:
            self.signum = signum
            sys.stderr.write(f"[deflow_trl] {signal.Signals(signum).name} received: finishing this update, "
                             "then saving a checkpoint (Ctrl-C again to exit at once)\n")
            sys.stderr.flush()

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for s in self.signals:
                self._previous[s] = signal.signal(s, self._handle)
            self.active = True
        return self

    def __exit__(self, *exc) -> None:
        previous = self._previous.get(self.signum) if self.signum is not None else None
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()
        self.active = False
        if callable(previous) and previous is not signal.default_int_handler:
            sys.stderr.write(f"[deflow_trl] passing {self.name} on to the handler installed before training "
                             f"({getattr(previous, '__qualname__', previous)!s})\n")
            sys.stderr.flush()
            previous(self.signum, None)  # e.g. submitit: requeue the job, then exit
