"""A run directory's record: what is checked before it is touched, and how it is written.

A run directory holds the run's record — ``.hydra/config.yaml`` (what ran),
``metrics/scalars/*.csv``, ``checkpoints/``, ``train.log``, ``learning_curve.png``
— and a ``.lock`` file (:mod:`deflow_trl.app.runlock`). The app keeps three promises:

- **A refused launch changes nothing.** Hydra would write ``.hydra/`` and open
  ``train.log`` before the app runs; ``deflow_trl/configs/train.yaml`` turns both off
  (``hydra.output_subdir: null``, console-only job logging) and the app writes
  them itself (:func:`write_record`) only after every check passed: config,
  lock, resume compatibility, data, checkpoint loading.
- **Two runs' metrics never merge.** A directory with metrics but no checkpoint
  (an earlier run stopped before its first save) is refused unless
  ``overwrite=true``, which clears the earlier record first; ``resume=false``
  refuses a directory with checkpoints *or* metrics.
- **Metrics match the checkpoint resumed from.** Rows logged after that
  checkpoint (by a run killed between a log and the next save) are dropped, so a
  resumed run logs each step once.

Examples:
    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> os.makedirs(f"{d}/metrics/scalars")
    >>> _ = open(f"{d}/metrics/scalars/x.csv", "w").write("1,0.5\\n2,0.25\\n3,0.125\\n")
    >>> truncate_metrics(d, 2)
    >>> open(f"{d}/metrics/scalars/x.csv").read()
    '1,0.5\\n2,0.25\\n'
"""
from __future__ import annotations

import glob
import os
import shutil

from omegaconf import DictConfig, OmegaConf

from deflow_trl.app.checkpoint import load_checkpoint, load_latest_checkpoint
from deflow_trl.errors import ConfigError
from deflow_trl.paths import default_dataset_dir

__all__ = ["has_metrics", "check_resume", "load_init_checkpoint", "copy_metrics", "clear_record",
           "write_record", "truncate_metrics", "RECORD"]

# What overwrite=true clears (the lock file stays: another process may be about to lock it).
RECORD = (".hydra", "metrics", "checkpoints", "buffer", "tb", "wandb", "train.log", "learning_curve.png")
# Settings a checkpoint must have been trained with to be resumed (besides data.dataset_dir).
RESUME_KEYS = ("agent", "dataset", "seed", "batch_size")
# What a run started with ``init_from`` must share with its source checkpoint (the networks and the task).
INIT_KEYS = ("agent", "dataset")


def has_metrics(run_dir: str) -> bool:
    """Whether ``run_dir`` holds any non-empty metrics CSV."""
    return any(os.path.getsize(p) > 0 for p in glob.glob(os.path.join(run_dir, "metrics", "scalars", "**", "*.csv"),
                                                           recursive=True))


def _dataset_dir(cfg: dict) -> str | None:

    d = (cfg.get("data") or {}).get("dataset_dir", "missing")
    if d == "missing":
        return None  # a checkpoint from before the key was compared
    return os.path.abspath(os.path.expanduser(d)) if d else default_dataset_dir()


def check_resume(cfg: DictConfig, run_dir: str, found: tuple[dict, str] | None) -> bool:
    """Whether this command may use ``run_dir`` given its newest valid checkpoint ``found``.

    Returns True when the run resumes from ``found``; raises ``ConfigError`` naming the
    problem otherwise. Nothing is written.
    """
    overwrite = bool(cfg.get("overwrite", False))
    if overwrite:
        return False
    metrics = has_metrics(run_dir)
    if cfg.resume is False and (found is not None or metrics):
        what = "checkpoints" if found is not None else "metrics"
        raise ConfigError(f"{run_dir} already holds {what}; pass resume=auto to continue it, overwrite=true to "
                          "start it afresh, or use another hydra.run.dir")
    if found is None:
        if cfg.resume is True:
            raise ConfigError(f"resume=true but {os.path.join(run_dir, 'checkpoints')} holds no checkpoint")
        if metrics:
            raise ConfigError(
                f"{run_dir} holds metrics of an earlier run that stopped before its first checkpoint; "
                "pass overwrite=true to replace them, or use another hydra.run.dir")
        return False
    state, path = found
    saved = state.get("config", {})
    now = OmegaConf.to_container(cfg, resolve=True)
    changed = [k for k in RESUME_KEYS if k in saved and k in now and saved[k] != now[k]]
    saved_dir, now_dir = _dataset_dir(saved), _dataset_dir(now)
    if saved_dir is not None and saved_dir != now_dir:
        changed.append(f"data.dataset_dir ({saved_dir} then, {now_dir} now)")
    if changed:
        raise ConfigError(
            f"{path} was trained with different {', '.join(changed)} than this command; "
            "resume with the same settings, pass overwrite=true to start afresh, or use another hydra.run.dir"
        )
    return True


def load_init_checkpoint(cfg: DictConfig) -> tuple[dict, str, str | None]:
    """``init_from=``: the checkpoint a *new* run starts from, as ``(state, path, source run dir or None)``.

    ``init_from`` is a checkpoint file or a run directory (its newest valid checkpoint). The
    source is another run's: nothing in it is moved or written. Its agent and dataset must be
    this command's (otherwise one ``ConfigError`` naming them); seed, batch size, step budgets,
    ``online.*`` and the data directory may differ. Nothing is written here.
    """

    source = os.path.abspath(os.path.expanduser(str(cfg.init_from)))
    if os.path.isdir(source):
        ckpt_dir = os.path.join(source, "checkpoints") if os.path.isdir(os.path.join(source, "checkpoints")) else source
        found = load_latest_checkpoint(ckpt_dir)
        if found is None:
            raise ConfigError(f"init_from={source}: {ckpt_dir} holds no checkpoint (ckpt_*.pt)")
        state, path = found
    elif os.path.isfile(source):
        state, path = load_checkpoint(source), source
    else:
        raise ConfigError(f"init_from={source}: no such checkpoint file or run directory")
    saved, now = state.get("config", {}), OmegaConf.to_container(cfg, resolve=True)
    changed = [k for k in INIT_KEYS if k in saved and saved[k] != now[k]]
    if changed:
        raise ConfigError(f"init_from={path} was trained with a different {' and '.join(changed)} than this command; "
                          "start from a checkpoint of the same agent and dataset")
    parent = os.path.dirname(path)
    run_dir = os.path.dirname(parent) if os.path.basename(parent) == "checkpoints" else None
    return state, path, run_dir


def copy_metrics(source_run: str, run_dir: str, step: int) -> int:
    """Copies ``source_run``'s metric rows logged at or before ``step`` into ``run_dir`` (which has none),
    so a run started with ``init_from`` shows its history from step 0. Returns the number of files."""
    copied = 0
    root = os.path.join(source_run, "metrics")
    for path in glob.glob(os.path.join(root, "scalars", "**", "*.csv"), recursive=True):
        with open(path) as f:
            keep = [line for line in f if _row_step(line) is not None and _row_step(line) <= step]
        if keep:
            dest = os.path.join(run_dir, "metrics", os.path.relpath(path, root))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "w") as f:
                f.writelines(keep)
            copied += 1
    return copied


def clear_record(run_dir: str) -> list[str]:
    """``overwrite=true``: removes the earlier run's record (see :data:`RECORD`); returns what was removed."""
    removed = []
    for name in RECORD:
        path = os.path.join(run_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        elif os.path.lexists(path):
            os.unlink(path)
        else:
            continue
        removed.append(name)
    return removed


def truncate_metrics(run_dir: str, step: int) -> None:
    """Drops CSV rows logged after ``step`` (each file rewritten atomically)."""
    for path in glob.glob(os.path.join(run_dir, "metrics", "scalars", "**", "*.csv"), recursive=True):
        with open(path) as f:
            lines = f.readlines()
        keep = [line for line in lines if _row_step(line) is None or _row_step(line) <= step]
        if len(keep) != len(lines):
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(keep)
            os.replace(tmp, path)


def _row_step(line: str) -> float | None:
    try:
        return float(line.split(",", 1)[0])
    except ValueError:
        return None


def write_record(run_dir: str, cfg: DictConfig) -> None:
    """Writes ``.hydra/`` as Hydra would: ``config.yaml`` (the typed, resolved config that runs)
    and, under Hydra, ``hydra.yaml`` and ``overrides.yaml``."""
    out = os.path.join(run_dir, ".hydra")
    os.makedirs(out, exist_ok=True)
    OmegaConf.save(cfg, os.path.join(out, "config.yaml"))
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        hydra_cfg = HydraConfig.get()
        OmegaConf.save(OmegaConf.create({"hydra": OmegaConf.to_container(hydra_cfg, resolve=False)}),
                       os.path.join(out, "hydra.yaml"))
        OmegaConf.save(hydra_cfg.overrides.task, os.path.join(out, "overrides.yaml"))
