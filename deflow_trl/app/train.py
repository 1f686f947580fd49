"""DeFlow on OGBench, launched with Hydra.

    python -m deflow_trl.train                                  # reference protocol, cube-single (its default task)
    python -m deflow_trl.train +experiment=quick                # the README's few-minute run
    python -m deflow_trl.train env=puzzle_3x3 task=2 seed=1     # another suite / task / seed
    python -m deflow_trl.train agent=flow_bc                    # the flow-BC baseline (no refiner)
    python -m deflow_trl.train online_steps=100000              # offline-to-online fine-tuning
    python -m deflow_trl.train -m seed=0,1,2                    # a sweep (Hydra's basic launcher)

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

The loop reads top to bottom: check the config → data → networks, loss,
optimiser → offline steps (update, log, evaluate, checkpoint) → online steps
(a TorchRL collector adds env transitions to the same buffer) → final plot.
"""
from __future__ import annotations

if __name__ == "__main__":  # `python -m deflow_trl.train` without the app extra: one line, not a traceback
    from deflow_trl.extras import check_app_extra

    check_app_extra("python -m deflow_trl.train")

import logging
import math
import os
import shlex
import shutil
import sys
import time

import hydra
import torch
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict
from torchrl.objectives import SoftUpdate
from tqdm import tqdm

from deflow_trl.app.agents import agent_kind, build_agent, trains_flow_only
from deflow_trl.app.checkpoint import load_latest_checkpoint, rng_state, save_checkpoint, set_rng_state
from deflow_trl.app.config_schema import check_config, resolve_device, validate_config  # noqa: F401 (re-exported)
from deflow_trl.app.evaluator import make_evaluator
from deflow_trl.app.plot import plot_run
from deflow_trl.app.rundir import (
    check_resume,
    clear_record,
    copy_metrics,
    load_init_checkpoint,
    truncate_metrics,
    write_record,
)
from deflow_trl.app.runlock import run_dir_lock
from deflow_trl.app.signals import GracefulStop
from deflow_trl.app.sweep_report import clear_failed, mark_failed, report_failed_jobs
from deflow_trl.console import quiet_app
from deflow_trl.data import (
    generate_dataset,
    load_ogbench_dataset,
    ogbench_dataset_path,
    parse_ogbench_name,
    replay_buffer_from_transitions,
)
from deflow_trl.data.files import npz_headers
from deflow_trl.data.pixels import make_pixel_replay_buffer, visual_dataset_path
from deflow_trl.envs import evaluation
from deflow_trl.envs.evaluation import record_episode
from deflow_trl.errors import ConfigError, debug_requested, one_line
from deflow_trl.paths import check_writable, default_dataset_dir
from deflow_trl.update import make_update

log = logging.getLogger("deflow_trl.app.train")
CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")  # deflow_trl/configs, shipped inside the package


class TrainingStopped(Exception):
    """A stop signal (Ctrl-C, SIGTERM, SIGUSR1, SIGUSR2) ended the run after a checkpoint at ``step``."""

    def __init__(self, signal_name: str, exit_code: int, step: int, checkpoint: str):
        super().__init__(f"{signal_name}: stopped at step {step}, checkpoint {checkpoint}")
        self.signal_name, self.exit_code, self.step, self.checkpoint = signal_name, exit_code, step, checkpoint


# ----------------------------------------------------------------------------- data
def dataset_header(cfg: DictConfig) -> dict | None:
    """Shapes of the train file's arrays, read from the ``.npz`` headers (no decompression); None if missing."""

    if is_pixels(cfg):

        path = visual_dataset_path(cfg.dataset, cfg.data.dataset_dir, "train")
    else:
        path = ogbench_dataset_path(cfg.dataset, cfg.data.dataset_dir, "train")
    if not os.path.isfile(path):
        return None
    return {k: shape for k, (shape, _) in npz_headers(path).items()} | {"path": path}


def is_pixels(cfg: DictConfig) -> bool:
    """A visual suite (``deflow_trl/configs/env/visual_*.yaml``): frames in, an encoder per network."""
    return bool(cfg.env.get("pixels", False))


def make_eval_env(cfg: DictConfig, seed: int):
    """The single-task env of ``cfg.dataset`` (frame-stacked pixels for visual suites)."""
    return evaluation.make_eval_env(cfg.dataset, seed, cfg.env.frame_stack if is_pixels(cfg) else None)


def check_data_fits(cfg: DictConfig, env, header: dict | None) -> None:
    """The dataset's observation/action shapes match the env's spaces and hold at least one batch.

    Reads only the file headers and the env's specs (the env is never stepped), so a
    dataset of another env fails here and not at the first evaluation, hours later.
    """
    if header is None or "observations" not in header or "actions" not in header:
        return  # missing (generated or downloaded next) or not an OGBench file (the loader says what is wrong)
    path = header["path"]
    env_obs = tuple(env.observation_spec["observation"].shape)
    env_act = tuple(env.action_spec.shape)
    obs, act = tuple(header["observations"][1:]), tuple(header["actions"][1:])
    if is_pixels(cfg) and len(obs) == 3:  # stored frames are single frames; the env stacks frame_stack of them
        obs = (*obs[:2], obs[2] * cfg.env.frame_stack)
    if obs != env_obs or act != env_act:
        raise ConfigError(
            f"{path} holds observations {list(obs)} and actions {list(act)} per step, but {cfg.dataset}'s env has "
            f"observations {list(env_obs)} and actions {list(env_act)}: the file belongs to another env or task"
        )
    n = header["observations"][0]
    if cfg.batch_size > n:
        raise ConfigError(f"batch_size={cfg.batch_size} is larger than the dataset ({n} transitions)")


def prepare_dataset(cfg: DictConfig) -> TensorDict:
    """Loads the dataset; regenerates it first if missing and allowed."""

    path = ogbench_dataset_path(cfg.dataset, cfg.data.dataset_dir, "train")
    if not os.path.isfile(path) and cfg.data.generate_if_missing and not cfg.data.download:
        stem = parse_ogbench_name(cfg.dataset).file_stem
        log.info("%s is missing: regenerating %d episodes locally with OGBench's scripted oracle", path, cfg.data.generate_episodes)
        generate_dataset(
            stem, cfg.data.generate_episodes, dataset_dir=cfg.data.dataset_dir,
            workers=cfg.data.generate_workers, seed=cfg.seed, progress=cfg.progress,
        )
    return load_ogbench_dataset(cfg.dataset, cfg.data.dataset_dir, download=cfg.data.download, cache=cfg.data.cache)


# ----------------------------------------------------------------------------- logging
class Metrics:
    """TorchRL loggers from :func:`torchrl.record.loggers.get_logger`: CSV always (the plot and
    ``summarize`` read it), plus TensorBoard or W&B when configured, which also receive the
    resolved config through ``log_hparams``."""

    def __init__(self, cfg: DictConfig, run_dir: str):
        from torchrl.record.loggers import get_logger

        backend = cfg.logger.backend
        if backend not in ("csv", "tensorboard", "wandb"):
            raise ConfigError(f"logger.backend must be csv, tensorboard or wandb, got {backend!r}")
        self.loggers = [get_logger("csv", run_dir, "metrics")]
        if backend == "tensorboard":
            self.loggers.append(get_logger("tensorboard", run_dir, "tb"))
        elif backend == "wandb":
            self.loggers.append(get_logger("wandb", run_dir, os.path.basename(run_dir),
                                           wandb_kwargs={"project": cfg.logger.project}))
        for logger in self.loggers[1:]:  # the CSV run's config is .hydra/config.yaml already
            logger.log_hparams(cfg)

    def log(self, values: dict, step: int) -> None:
        values = {name: float(value) for name, value in values.items()}
        for logger in self.loggers:
            logger.log_metrics(values, step=step)


# ----------------------------------------------------------------------------- the run
def run(cfg: DictConfig, run_dir: str) -> dict:
    """Trains and evaluates as configured; returns the last evaluation.

    Every check that needs no training comes first and touches nothing: the
    config (types and values), the output directories, the dataset's shapes
    against the env's spaces. Then the run directory is locked for the run's life
    (:mod:`deflow_trl.app.runlock`), the resume rules are applied (:mod:`deflow_trl.app.rundir`),
    the data and networks are built and the checkpoint loaded; only then is the
    run's record (``.hydra/``, ``train.log``, metrics) written. A stop signal
    ends the loop with a checkpoint and :class:`TrainingStopped`.
    """

    cfg = validate_config(cfg)
    check_writable(run_dir, "run directory")
    header = dataset_header(cfg)
    if header is None and (cfg.data.generate_if_missing or cfg.data.download):
        check_writable(cfg.data.dataset_dir or default_dataset_dir(), "data.dataset_dir")
    device = resolve_device(cfg.device)
    if is_pixels(cfg) and cfg.logger.get("video", False):
        raise ConfigError("logger.video records state-based suites; a pixel suite's observations are its frames already")
    if cfg.get("eval_async", False) and cfg.logger.get("video", False):
        raise ConfigError("logger.video records in the training process: use eval_async=false with it")
    if is_pixels(cfg) and cfg.online_steps > 0:
        raise ConfigError("online_steps > 0 is not supported for pixel suites yet (the frame-stack buffer cannot grow)")
    eval_env = make_eval_env(cfg, cfg.seed)  # built, never stepped, before any work
    try:
        check_data_fits(cfg, eval_env, header)
        lock = run_dir_lock(run_dir)
        with lock:
            return _train(cfg, run_dir, device, eval_env, lock)
    finally:
        eval_env.close()


def _train(cfg: DictConfig, run_dir: str, device: torch.device, eval_env, lock) -> dict:
    """:func:`run` once the run directory is locked."""

    recorded = False
    file_log: logging.Handler | None = None
    evaluator = None
    scratch = os.path.join(run_dir, "buffer")
    try:
        ckpt_dir = os.path.join(run_dir, "checkpoints")
        found = None if cfg.get("overwrite", False) else load_latest_checkpoint(ckpt_dir, move_corrupt=True)
        resuming = check_resume(cfg, run_dir, found)
        # init_from: a new run starting from another run's checkpoint (e.g. online arms branching from one
        # offline run); once this run has its own checkpoint, it resumes from that and init_from is unused.
        init = load_init_checkpoint(cfg) if cfg.get("init_from") and not resuming else None
        torch.manual_seed(cfg.seed)

        # Data: the dataset is the replay buffer's initial content (pixels: a frame-stack buffer, built below).
        if is_pixels(cfg):
            data = None
            obs_shape = tuple(eval_env.observation_spec["observation"].shape)
            act_dim, num_offline = eval_env.action_spec.shape[-1], 0
            extra = {"encoder": cfg.env.encoder}
        else:
            data = prepare_dataset(cfg)
            check_data_fits(cfg, eval_env, {"path": cfg.dataset, "observations": tuple(data["observation"].shape),
                                            "actions": tuple(data["action"].shape)})
            num_offline = data.shape[0]
            obs_shape, act_dim, extra = data["observation"].shape[-1], data["action"].shape[-1], {}

        # Networks, loss, optimiser, target updates.
        policy, loss = build_agent(cfg.agent, obs_shape, act_dim, device, **extra)
        optimizer = torch.optim.Adam(loss.parameters(), lr=cfg.agent.lr)
        target_updater = SoftUpdate(loss, tau=cfg.agent.tau)
        if trains_flow_only(cfg.agent):
            update = FlowBCUpdate(loss, optimizer)
        else:
            update = make_update(loss, optimizer, target_updater, compile=cfg.compile_update)

        step = 0
        online = {"episodes": 0, "successes": 0}  # online counters, checkpointed with the rest
        state = None
        if resuming or init:
            state, path = found if resuming else init[:2]
            try:
                loss.load_state_dict(state["loss"])
                optimizer.load_state_dict(state["optimizer"])
            except (RuntimeError, ValueError, KeyError) as err:
                raise ConfigError(
                    f"the checkpoint {path} does not match this configuration (another agent or network size?): "
                    f"{str(err).splitlines()[0]}; use another hydra.run.dir"
                ) from None
            if resuming or state.get("config", {}).get("seed") == cfg.seed:
                set_rng_state(state["rng"])  # same seed: a branch continues exactly as its source would
            step = int(state["step"])
            online.update({k: int(v) for k, v in state.get("online_counters", {}).items()})

        # Every check passed: from here on the run writes its record.
        if cfg.get("overwrite", False):
            removed = clear_record(run_dir)
            if removed:
                log.warning("overwrite=true: removed the earlier run's %s from %s", ", ".join(removed), run_dir)
        elif resuming:
            truncate_metrics(run_dir, step)  # rows logged after the checkpoint are logged again below
        recorded = True
        write_record(run_dir, cfg)
        clear_failed(run_dir)
        RECORDED_RUN_DIRS.add(run_dir)
        file_log = logging.FileHandler(os.path.join(run_dir, "train.log"))
        file_log.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        logging.getLogger().addHandler(file_log)
        if resuming:
            log.info("resumed from %s at step %d%s", path, step, " (init_from unused)" if cfg.get("init_from") else "")
        elif init:
            copied = copy_metrics(init[2], run_dir, step) if init[2] else 0
            log.info("started from %s at step %d (init_from; %d metric files of its run copied up to that step)",
                     path, step, copied)

        # Room for every online step: nothing is evicted, and the online part is buffer[num_offline:].
        # A memmap buffer is scratch owned by this (locked) run: rebuilt from the data at every start.
        shutil.rmtree(scratch, ignore_errors=True)
        if is_pixels(cfg):

            buffer = make_pixel_replay_buffer(
                cfg.dataset, cfg.batch_size, frame_stack=cfg.env.frame_stack, augment_prob=cfg.env.augment_prob,
                crop_padding=cfg.env.crop_padding, device=device, storage=cfg.data.storage, scratch_dir=scratch,
                dataset_dir=cfg.data.dataset_dir, download=cfg.data.download,
            )
            num_offline = len(buffer)
        else:
            buffer = replay_buffer_from_transitions(
                data, cfg.batch_size, capacity=num_offline + cfg.online_steps, storage=cfg.data.storage,
                scratch_dir=scratch,
            )
        if state is not None and state.get("online_data") is not None:
            buffer.extend(TensorDict.from_dict(state["online_data"], batch_dims=1))

        metrics = Metrics(cfg, run_dir)
        total = cfg.offline_steps + cfg.online_steps
        last_eval: dict = {}
        # Inline (training waits) or eval_async=true: a worker process evaluates while training goes on.
        evaluator = make_evaluator(cfg, eval_env, obs_shape, act_dim, extra)
        saved = {"step": step if resuming else -1, "path": found[1] if resuming else None}

        def save() -> str:
            state = {"step": step, "loss": loss.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_state(),
                     "config": OmegaConf.to_container(cfg, resolve=True), "online_counters": dict(online)}
            if len(buffer) > num_offline:
                state["online_data"] = buffer[num_offline : len(buffer)].to_dict()
            if evaluator.pending:  # its own step's evaluation still running: a resume evaluates it again
                state["eval_pending"] = evaluator.pending
            saved["path"] = save_checkpoint(ckpt_dir, step, state, keep=cfg.keep_checkpoints)
            saved["step"] = step
            return saved["path"]

        def evaluate_now() -> None:  # inline: evaluated here; eval_async: handed to the worker
            t0 = time.perf_counter()
            evaluator.submit(step, policy)
            if cfg.logger.get("video", False):  # episode 0 again, rendered, into the CSV logger's videos/

                record_episode(policy, cfg.dataset, metrics.loggers[0], seed=cfg.seed, step=step)
            clock["paused"] += time.perf_counter() - t0

        def log_evaluations(results) -> None:  # at the step each belongs to, in step order
            nonlocal last_eval
            for at, result in results:
                metrics.log({**{f"eval/{k}": result[k] for k in ("success_rate", "return_mean", "length_mean")},
                             "time/eval_seconds": result["seconds"]}, at)
                tqdm.write(f"step {at}: success rate {100 * result['success_rate']:.1f}% over {cfg.eval_episodes} episodes")
                last_eval = {**result, "step": at}

        # Training throughput between log points, evaluation and checkpoint time left out.
        clock = {"t": time.perf_counter(), "step": step, "paused": 0.0}

        def maybe_log_eval_save(out):
            nonlocal last_eval
            if step % cfg.log_interval == 0 or step == total:
                values = {f"train/{k}": v.item() for k, v in out.items()}
                now = time.perf_counter()
                busy = now - clock["t"] - clock["paused"]
                if step > clock["step"] and busy > 0:  # sampling + update (+ env step online) per second
                    values["time/steps_per_s"] = (step - clock["step"]) / busy
                clock.update(t=now, step=step, paused=0.0)
                metrics.log(values, step)
                bar.set_postfix({k: f"{out[k].item():.3g}" for k in ("loss_qvalue", "loss_flow", "divergence", "alpha", "distill")
                                 if k in out.keys()})
            if step % cfg.eval_interval == 0 or step == total:
                evaluate_now()
            log_evaluations(evaluator.ready())
            if step % cfg.save_interval == 0 or step == total:
                t0 = time.perf_counter()
                # A checkpoint follows every earlier evaluation (at the last step, its own too: nothing is left to overlap).
                log_evaluations(evaluator.wait(before=step + 1 if step == total else step))
                save()
                clock["paused"] += time.perf_counter() - t0

        bar = tqdm(total=total, initial=step, desc=f"{cfg.agent.name} {cfg.dataset}", disable=not cfg.progress, dynamic_ncols=True)
        start = time.perf_counter()
        if resuming and step in state.get("eval_pending", ()):  # killed while evaluating the checkpoint's step
            log.info("evaluating step %d again: its evaluation was still running when the checkpoint was written", step)
            evaluate_now()

        with GracefulStop() as stop:  # Ctrl-C / SIGTERM / SIGUSR1 / SIGUSR2: finish the update, save, stop
            # Offline: gradient steps on the buffer.
            while step < cfg.offline_steps and not stop.requested:
                out = update(buffer.sample().to(device))
                step += 1
                bar.update(1)
                maybe_log_eval_save(out)

            # Online: one env step (collector → buffer) then one update, until the budget is spent.
            if step < total and not stop.requested:
                from torchrl.collectors import Collector

                loss.freeze_flow = cfg.online.freeze_flow
                env = make_eval_env(cfg, cfg.seed + 1)  # the same single-task env as evaluation, its own seed
                # The policy is stateless: no InitTracker/primer transforms to register on the env.
                collector = Collector(env, policy, frames_per_batch=1, total_frames=total - step, device=device,
                                      auto_register_policy_transforms=False)
                keys = list(data.keys(True, True))
                online_start, online_from = time.perf_counter(), step
                for batch in collector:
                    batch = batch.reshape(-1)
                    ended = batch["next", "done"].squeeze(-1)
                    online["episodes"] += int(ended.sum())
                    online["successes"] += int((batch["next", "success"].squeeze(-1) & ended).sum())
                    buffer.extend(batch.select(*keys).to("cpu"))
                    out = update(buffer.sample().to(device))
                    step += 1
                    bar.update(1)
                    if step % cfg.log_interval == 0:
                        metrics.log({"online/buffer_size": len(buffer), "online/episodes": online["episodes"],
                                     "online/episode_success_rate": online["successes"] / max(online["episodes"], 1),
                                     # wall-clock rate of (one env step + one update), evaluations included
                                     "online/steps_per_s": (step - online_from) / (time.perf_counter() - online_start)},
                                    step)
                    maybe_log_eval_save(out)
                    if stop.requested:
                        break
                collector.shutdown()
            bar.close()
            log_evaluations(evaluator.wait())
            if stop.requested:
                path = saved["path"] if saved["step"] == step else save()
                log.warning("%s: stopped at step %d; checkpoint %s", stop.name, step, path)
                raise TrainingStopped(stop.name, stop.exit_code, step, path)

        if not last_eval:  # resumed a finished run: report its policy once more (not logged again)
            evaluator.submit(step, policy)
            last_eval = {**evaluator.wait()[-1][1], "step": step}
        elapsed = time.perf_counter() - start
        png = plot_run(run_dir, target_divergence=cfg.agent.get("target_divergence")
                       if agent_kind(cfg.agent) == "deflow" and not trains_flow_only(cfg.agent) else None)
        print(
            f"[deflow_trl] {cfg.agent.name} on {cfg.dataset}: success rate "
            f"{100 * last_eval.get('success_rate', math.nan):.1f}% at step {step} "
            f"({elapsed:.0f} s this session). Curve: {png}"
        )
        return last_eval
    except BaseException as err:
        if not recorded and lock.created and set(os.listdir(run_dir)) <= {".lock"}:
            os.unlink(lock.path)  # a refused launch in a fresh directory leaves nothing behind
        line = one_line(err) if isinstance(err, Exception) else None
        if file_log is not None and line:
            file_log.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0, line, None, None))
        raise
    finally:
        if evaluator is not None:
            evaluator.close()
        if file_log is not None:
            logging.getLogger().removeHandler(file_log)
            file_log.close()
        if recorded and cfg.data.storage == "memmap":
            shutil.rmtree(scratch, ignore_errors=True)  # scratch only; rebuilt at the next start


class FlowBCUpdate:
    """The flow-BC baseline's update: flow matching only (no critic, no refiner)."""

    def __init__(self, loss, optimizer):
        self.loss, self.optimizer = loss, optimizer

    def __call__(self, batch):
        self.optimizer.zero_grad(set_to_none=True)
        flow, _ = self.loss.flow_loss(batch)
        flow.backward()
        self.optimizer.step()
        return TensorDict({"loss_flow": flow.detach(), "loss_qvalue": torch.tensor(math.nan),
                           "divergence": torch.tensor(math.nan), "alpha": torch.tensor(math.nan)}, [])


# A job of a -m sweep that fails with a known error writes a FAILED marker in its run directory and
# raises JobFailed, not SystemExit: SystemExit would escape Hydra's launcher and stop the sweep, while
# an Exception fails only this job (every launcher runs the others). When the sweep ends, the
# FailedJobsReport callback (deflow_trl/configs/train.yaml) lists the markers in the launching process, whatever
# launcher ran the jobs (joblib workers, SLURM nodes), and `cli` exits 1; with the basic launcher
# Hydra also re-raises the first failure as one line.
RECORDED_RUN_DIRS: set[str] = set()  # run directories whose record this process wrote (may be marked FAILED)


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
