"""The app's periodic evaluation, in the training process or beside it (``eval_async=true``).

Both evaluators take ``submit(step, policy)`` at an evaluation step and hand results back as
``(step, result)`` pairs from :meth:`ready` (whatever has finished) and :meth:`wait` (all of it):

- :class:`InlineEvaluator` evaluates at once: training waits (the reference's protocol, and the default).
- :class:`BackgroundEvaluator` sends a CPU copy of the policy's weights to one worker process that holds
  its own evaluation env(s) and a policy of the same architecture, and training goes on meanwhile; each
  result is logged at the step it belongs to when it arrives. Same weights, same env and policy seeds:
  the same episodes as an inline evaluation by a one-thread CPU trainer. Otherwise the policy's float32
  round-off may differ (a GPU; or 2 threads against the worker's 1: measured 1 ulp on a batch of 10), which
  MuJoCo can grow into another outcome, as with ``eval_envs`` (README). Training is untouched, bit for bit.

What it is for: a GPU run, whose GPU idles while an inline evaluation steps MuJoCo on the CPU, or a CPU
machine with cores to spare. The worker runs one thread; the trainer's thread count is left alone, so on
a CPU-only machine give the trainer one core fewer (``OMP_NUM_THREADS``). On a 2-core CPU it does not pay:
switching the trainer between 2 and 1 threads around each evaluation was measured slower than evaluating
inline (the compiled update recompiles per thread count and its kernels specialise on it; ``docs/results.md``).

A checkpoint written while the evaluation of its own step is still running records that step
(``eval_pending``); a run resumed from it evaluates that step again first, from the checkpoint's weights
(the very weights the lost evaluation had), so a kill never leaves an evaluation out of the record.

Examples:
    >>> import torch
    >>> from omegaconf import OmegaConf
    >>> from deflow_trl.make import make_deflow
    >>> from deflow_trl.app.evaluator import InlineEvaluator
    >>> cfg = OmegaConf.create({"dataset": "cube-single-play-singletask-task1-v0", "seed": 0, "eval_episodes": 1,
    ...                         "eval_envs": 1, "env": {"pixels": False}})
    >>> policy, _ = make_deflow(28, 5, hidden_sizes=(8,), num_flow_steps=2)
    >>> ev = InlineEvaluator(cfg, max_steps=3)
    >>> ev.submit(100, policy)
    >>> [(step, r["length_mean"]) for step, r in ev.ready()]
    [(100, 3.0)]
    >>> ev.close()
"""
from __future__ import annotations

import concurrent.futures as futures
import functools
import multiprocessing as mp
import os
import signal
import time
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from deflow_trl.app.agents import build_agent
from deflow_trl.app.signals import STOP_SIGNALS
from deflow_trl.console import quiet_app
from deflow_trl.envs import evaluation
from deflow_trl.envs.evaluation import evaluate
from deflow_trl.envs.ogbench import make_batched_env

__all__ = ["InlineEvaluator", "BackgroundEvaluator", "make_evaluator", "is_pixels", "make_eval_env"]


def is_pixels(cfg: DictConfig) -> bool:
    """A visual suite (``deflow_trl/configs/env/visual_*.yaml``): frames in, an encoder per network."""
    return bool(cfg.env.get("pixels", False))


def make_eval_env(cfg: DictConfig, seed: int):
    """The single-task env of ``cfg.dataset`` (frame-stacked pixels for visual suites)."""
    return evaluation.make_eval_env(cfg.dataset, seed, cfg.env.frame_stack if is_pixels(cfg) else None)


class _Evaluation:
    """The app's evaluation of one policy: its env(s) (the batched one built at first use) and the protocol."""

    def __init__(self, cfg: DictConfig, env=None, max_steps: int | None = None, batched_env=None):
        self.cfg, self.max_steps = cfg, max_steps
        self.num_envs = int(cfg.get("eval_envs", 1))
        self._single, self._batched, self._own_single = env, batched_env, env is None
        self._own_batched = batched_env is None  # a lent batched env (a seed group's) is closed by its owner

    def _env(self):
        make_env = functools.partial(make_eval_env, self.cfg, self.cfg.seed)
        if self.num_envs > 1:
            if self._batched is None:  # built at the first evaluation, reused for the run (≈ 1-2 s per cube env)
                self._batched = make_batched_env(make_env,
                                                 self.num_envs, parallel=self.cfg.get("eval_parallel", False))
            return self._batched
        if self._single is None:
            self._single = make_env()
        return self._single

    def __call__(self, policy) -> dict:
        t0 = time.perf_counter()
        result = evaluate(policy, self._env(), self.cfg.eval_episodes, seed=self.cfg.seed, progress=False,
                          num_envs=self.num_envs, max_steps=self.max_steps)
        return {**{k: result[k] for k in ("success_rate", "return_mean", "length_mean")},
                "seconds": time.perf_counter() - t0}  # the evaluation's own wall time (env building included)

    def close(self) -> None:
        for env, owned in ((self._batched, self._own_batched), (self._single, self._own_single)):
            if env is not None and owned and not env.is_closed:
                env.close()


class InlineEvaluator:
    """Evaluates in the training process, at once (training waits). ``env``: a built single env to reuse;
    ``batched_env``: a built batched env (``eval_envs`` of them) to use instead of building one, closed by its owner."""

    def __init__(self, cfg: DictConfig, env=None, max_steps: int | None = None, batched_env=None):
        self._evaluate = _Evaluation(cfg, env, max_steps, batched_env)
        self._done: list[tuple[int, dict]] = []

    def submit(self, step: int, policy) -> None:
        self._done.append((step, self._evaluate(policy)))

    def ready(self) -> list[tuple[int, dict]]:
        done, self._done = self._done, []
        return done

    def wait(self, before: int | None = None) -> list[tuple[int, dict]]:
        return self.ready()

    @property
    def pending(self) -> list[int]:
        return []

    def close(self) -> None:
        self._evaluate.close()


# ----------------------------------------------------------------------------- the worker process
_WORKER: dict[str, Any] = {}


class _stop_signals_ignored:
    """Ignore the trainer's stop signals in this process for the duration (main thread only; else a no-op)."""

    def __enter__(self):

        self._saved = {}
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) is None:  # None: set outside Python, could not be restored
                continue
            try:
                self._saved[sig] = signal.signal(sig, signal.SIG_IGN)
            except ValueError:  # not the main thread: signal dispositions cannot be changed here
                break
        return self

    def __exit__(self, *exc):
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)


def _start_worker(parent: int, cfg: dict, obs_shape, act_dim: int, extra: dict, max_steps: int | None) -> None:
    # The trainer handles Ctrl-C / SIGTERM / SIGUSR1 / SIGUSR2 (finish, save, stop) and then shuts this
    # process down; signals sent to the whole process group must not kill an evaluation under it.

    for sig in STOP_SIGNALS:  # also ignored since the spawn (inherited); set here in case that was not possible
        signal.signal(sig, signal.SIG_IGN)
    _exit_with_parent(parent)
    torch.set_num_threads(1)

    quiet_app()
    config = OmegaConf.create(cfg)
    policy, _ = build_agent(config.agent, obs_shape, act_dim, torch.device("cpu"), **extra)
    _WORKER.update(policy=policy.eval(), evaluate=_Evaluation(config, max_steps=max_steps))


def _exit_with_parent(parent: int) -> None:
    """A trainer killed with SIGKILL cannot shut this process down, and an idle pool worker waits on its queue
    forever: a daemon thread ends it once the trainer ``parent`` is gone (the worker is re-parented, so
    ``getppid`` changes; the pid is passed in, as the trainer may die before this process has started)."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _evaluate_in_worker(step: int, weights: dict) -> tuple[int, dict]:
    policy = _WORKER["policy"]
    policy.load_state_dict(weights)
    return step, _WORKER["evaluate"](policy)


class BackgroundEvaluator:
    """Evaluates in one worker process while training goes on (module doc).

    The worker is started with ``spawn``: a script that builds one must guard its entry point with
    ``if __name__ == "__main__":`` (the app's ``python -m deflow_trl.train`` does). Checked by hand for a
    pixel suite too (visual-cube-single, 2-step episodes: the same result as inline).

    Args:
        cfg: the run's resolved config (agent, env, dataset, seed, eval_episodes, eval_envs).
        obs_shape, act_dim, extra: what :func:`~deflow_trl.app.agents.build_agent` was given for the trainer's policy.
        max_steps: cap on episode length (tests); None: the env's own time limit.
    """

    def __init__(self, cfg: DictConfig, obs_shape, act_dim: int, extra: dict | None = None,
                 max_steps: int | None = None):
        # spawn, not fork: the trainer holds OpenMP thread pools (and maybe CUDA), which a fork does not survive.
        self._pool = futures.ProcessPoolExecutor(
            1, mp_context=mp.get_context("spawn"), initializer=_start_worker,
            initargs=(os.getpid(), OmegaConf.to_container(cfg, resolve=True), obs_shape, act_dim, dict(extra or {}), max_steps))
        self._futures: dict[int, futures.Future] = {}
        # Start the worker now (it imports and builds envs while training starts), with the stop signals
        # ignored: a child inherits ignored signals through exec and Python then installs no KeyboardInterrupt,
        # so a Ctrl-C sent to the process group cannot kill it while it is still importing.
        with _stop_signals_ignored():
            self._pool.submit(int, 0)

    @property
    def pending(self) -> list[int]:
        """Steps whose evaluation has not been handed back by :meth:`ready` / :meth:`wait` yet."""
        return sorted(self._futures)

    def submit(self, step: int, policy) -> None:
        weights = {k: v.detach().to("cpu", copy=True) for k, v in policy.state_dict().items()}
        self._futures[step] = self._pool.submit(_evaluate_in_worker, step, weights)

    def ready(self) -> list[tuple[int, dict]]:
        return self._collect([s for s, f in self._futures.items() if f.done()])

    def wait(self, before: int | None = None) -> list[tuple[int, dict]]:
        """Block until the evaluations of steps ``< before`` (all when None) are done; return them."""
        return self._collect([s for s in self._futures if before is None or s < before])

    def _collect(self, steps: list[int]) -> list[tuple[int, dict]]:
        out = []
        for step in sorted(steps):
            try:
                out.append(self._futures.pop(step).result())
            except futures.process.BrokenProcessPool:
                raise RuntimeError("the evaluation worker process died (out of memory or killed?); "
                                   "eval_async=false evaluates in the training process") from None
        return out

    def close(self) -> None:
        for f in self._futures.values():
            f.cancel()
        self._futures.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)


def make_evaluator(cfg: DictConfig, env, obs_shape, act_dim: int, extra: dict, batched_env=None):
    """The evaluator ``cfg.eval_async`` asks for (``env``: the trainer's built single env, reused inline;
    ``batched_env``: a built batched env to share, e.g. by the runs of a seed group)."""
    if cfg.get("eval_async", False):
        return BackgroundEvaluator(cfg, obs_shape, act_dim, extra)
    return InlineEvaluator(cfg, env, batched_env=batched_env)
