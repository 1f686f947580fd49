"""DeFlow on OGBench, launched with Hydra.

    python -m deflow_trl.train                                  # reference protocol, cube-single (its default task)
    python -m deflow_trl.train +experiment=quick                # the README's few-minute run
    python -m deflow_trl.train env=puzzle_3x3 task=2 seed=1     # another suite / task / seed
    python -m deflow_trl.train agent=flow_bc                    # the flow-BC baseline (no refiner)
    python -m deflow_trl.train online_steps=100000              # offline-to-online fine-tuning
    python -m deflow_trl.train -m seed=0,1,2                    # a sweep (Hydra's basic launcher)
    python -m deflow_trl.train 'seeds=[0,1,2]'                  # three seeds in one process (app/seed_group.py)

The run directory (``runs/<agent>/<dataset>/seed<seed>`` by default) holds the
resolved config (``.hydra/``), ``metrics/scalars/*.csv`` (TorchRL's
``CSVLogger``), ``checkpoints/``, ``train.log`` and ``learning_curve.png``. Running the same
command again resumes from the latest checkpoint (``resume=auto``); ``init_from=<checkpoint or
run dir>`` starts a *new* run directory from another run's checkpoint (e.g. online arms
branching from one offline run; :func:`deflow_trl.app.rundir.load_init_checkpoint`).

Runs survive people and clusters: one process per run directory (an OS lock,
:mod:`deflow_trl.app.runlock`); the record is written only after every check passed
(:mod:`deflow_trl.app.rundir`; a refused launch changes nothing); Ctrl-C, SIGTERM,
SIGUSR1 and SIGUSR2 finish the update, save a checkpoint and print the resume command
(:mod:`deflow_trl.app.signals`); a corrupt newest checkpoint is moved aside and the one
before it resumed. Known errors are one line (:mod:`deflow_trl.errors`; ``debug=true``
or ``DEFLOW_DEBUG=1`` for tracebacks); in a ``-m`` sweep a failed job is listed at
the end and the others still run.

:func:`run` checks the config and locks the run directory; :class:`~deflow_trl.app.training_run.TrainingRun`
(``app/training_run.py``) holds the run's state and reads as its stages, top to bottom: resume rules → data → networks, loss, optimiser →
checkpoint → the run's record → replay buffer → offline steps (update, log, evaluate, checkpoint) →
online steps (a TorchRL collector adds env transitions to the same buffer) → final plot. A training
rate that falls far under the run's own earlier rate is said once (:mod:`deflow_trl.app.progress`).
"""
from __future__ import annotations

if __name__ == "__main__":  # `python -m deflow_trl.train` without the app extra: one line, not a traceback
    from deflow_trl.extras import check_app_extra

    check_app_extra("python -m deflow_trl.train")
    from deflow_trl import threads

    threads.prefer_short_spin()  # before torch loads its OpenMP runtime (deflow_trl/threads.py)

import logging
import os
import shlex
import sys

import hydra
from hydra.errors import CompactHydraException
from omegaconf import DictConfig

from deflow_trl.app.config_schema import check_config, resolve_device, validate_config  # noqa: F401 (re-exported)
from deflow_trl.app.evaluator import is_pixels, make_eval_env, make_evaluator  # noqa: F401 (re-exported)
from deflow_trl.app.runlock import run_dir_lock
from deflow_trl.app.seed_group import check_seed_override, group_seeds, run_group
from deflow_trl.app.sweep_report import mark_failed, report_failed_jobs
from deflow_trl.app.training_run import (  # noqa: F401 (re-exported: the app's public names before the split)
    RECORDED_RUN_DIRS,
    FlowBCUpdate,
    Metrics,
    TrainingRun,
    TrainingStopped,
    check_data_fits,
    dataset_header,
    prepare_dataset,
)
from deflow_trl.console import quiet_app
from deflow_trl.errors import ConfigError, debug_requested, one_line
from deflow_trl.paths import check_writable, default_dataset_dir
from deflow_trl.threads import apply_threads

log = logging.getLogger("deflow_trl.app.train")
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")  # deflow_trl/configs, shipped inside the package


# ----------------------------------------------------------------------------- the run
def run(cfg: DictConfig, run_dir: str) -> dict:
    """Trains and evaluates as configured; returns the last evaluation (with ``seeds``: ``{seed: evaluation}``).

    Every check that needs no training comes first and touches nothing: the
    config (types and values), the output directories, the dataset's shapes
    against the env's spaces. Then the run directory is locked for the run's life
    (:mod:`deflow_trl.app.runlock`), the resume rules are applied (:mod:`deflow_trl.app.rundir`),
    the data and networks are built and the checkpoint loaded; only then is the
    run's record (``.hydra/``, ``train.log``, metrics) written. A stop signal
    ends the loop with a checkpoint and :class:`TrainingStopped`. With ``seeds=[...]`` (or
    ``seeds_per_job``) the seeds train together in this process, each in its own run directory
    (:mod:`deflow_trl.app.seed_group`).
    """
    cfg = validate_config(cfg)
    seeds = group_seeds(cfg)
    if cfg.get("seeds") is not None:
        check_seed_override()  # `seeds` and an explicit `seed=` on one command: which one was meant?
    check_writable(run_dir, "run directory")
    header = dataset_header(cfg)
    if header is None and (cfg.data.generate_if_missing or cfg.data.download):
        check_writable(cfg.data.dataset_dir or default_dataset_dir(), "data.dataset_dir")
    device = resolve_device(cfg.device)
    apply_threads(cfg.get("threads", "auto"))  # before any torch work: the compiled update specialises on it
    if is_pixels(cfg) and cfg.logger.get("video", False):
        raise ConfigError("logger.video records state-based suites; a pixel suite's observations are its frames already")
    if cfg.get("eval_async", False) and cfg.logger.get("video", False):
        raise ConfigError("logger.video records in the training process: use eval_async=false with it")
    if is_pixels(cfg) and cfg.online_steps > 0:
        raise ConfigError("online_steps > 0 is not supported for pixel suites yet (the frame-stack buffer cannot grow)")
    eval_env = make_eval_env(cfg, cfg.seed)  # built, never stepped, before any work
    try:
        check_data_fits(cfg, eval_env, header)
        if seeds is not None:
            return run_group(cfg, seeds, run_dir, device, eval_env)
        lock = run_dir_lock(run_dir)
        with lock:
            return TrainingRun(cfg, run_dir, device, eval_env, lock).execute()
    finally:
        eval_env.close()


class JobFailed(CompactHydraException):
    """A sweep job that failed with a known error (its one line is already printed)."""


def resume_command(run_dir: str) -> str:
    """The command that resumes the run in ``run_dir`` (this job's overrides plus its directory)."""
    from hydra.core.hydra_config import HydraConfig

    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    args = [a for a in overrides if not a.startswith("hydra.run.dir=")] + [f"hydra.run.dir={run_dir}"]
    return " ".join(["python -m deflow_trl.train", *map(shlex.quote, args)])


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    quiet_app()  # the app's process only (also each job of a sweep launcher): headless GL, no third-party noise
    hydra_cfg = HydraConfig.get()
    run_dir = hydra_cfg.runtime.output_dir
    try:
        return run(cfg, run_dir)
    except TrainingStopped as stopped:  # also ends a sweep: the user or the scheduler asked to stop
        sys.stderr.write(f"[deflow_trl] {stopped.signal_name}: stopped at step {stopped.step}, checkpoint saved; "
                         f"resume with: {resume_command(run_dir)}\n")
        raise SystemExit(stopped.exit_code) from None
    except KeyboardInterrupt:  # Ctrl-C before training started: nothing to save
        sys.stderr.write("[deflow_trl] interrupted before training started (nothing to resume)\n")
        raise SystemExit(130) from None
    except Exception as err:
        line = one_line(err)
        if line is None or debug_requested(cfg):
            raise  # a bug, or debug=true / DEFLOW_DEBUG=1: the full traceback
        made_for_this_job = os.path.isdir(run_dir) and not os.listdir(run_dir)
        sys.stderr.write(f"[deflow_trl] error: {line}\n")
        if hydra_cfg.mode == RunMode.MULTIRUN:
            if made_for_this_job or run_dir in RECORDED_RUN_DIRS:  # never mark another run's directory
                mark_failed(run_dir, line)  # read by the sweep's report (any launcher) and by summarize
            raise JobFailed(f"[deflow_trl] the sweep had failed jobs; the first: {run_dir}: {line}") from None
        if made_for_this_job:
            os.rmdir(run_dir)  # Hydra made it for this refused launch
        raise SystemExit(2) from None


def cli() -> None:
    """``python -m deflow_trl.train``: Hydra's app; a sweep with failed jobs (listed by
    :class:`deflow_trl.app.sweep_report.FailedJobsReport`, any launcher) exits with status 1."""
    try:
        main()
    finally:
        failed = report_failed_jobs()
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    cli()
