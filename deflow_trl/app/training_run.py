"""One training run of the app: :class:`TrainingRun` and what it needs (data checks, loggers, flow BC's update).

:func:`deflow_trl.app.train.run` checks the config and locks the run directory, then hands over to
:class:`TrainingRun` (one seed) or :class:`~deflow_trl.app.seed_group.SeedGroupRun` (several seeds in one process,
each a :class:`TrainingRun` for its own directory). The stages are documented on the class.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import time

import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict
from torchrl.objectives import SoftUpdate
from tqdm import tqdm

from deflow_trl.app.agents import agent_kind, build_agent, trains_flow_only
from deflow_trl.app.checkpoint import load_latest_checkpoint, rng_state, save_checkpoint, set_rng_state
from deflow_trl.app.evaluator import is_pixels, make_eval_env, make_evaluator
from deflow_trl.app.plot import plot_run
from deflow_trl.app.progress import SlowdownWatch
from deflow_trl.app.rundir import (
    check_resume,
    clear_record,
    copy_metrics,
    load_init_checkpoint,
    truncate_metrics,
    write_record,
)
from deflow_trl.app.signals import GracefulStop
from deflow_trl.app.sweep_report import clear_failed
from deflow_trl.data import (
    generate_dataset,
    load_ogbench_dataset,
    ogbench_dataset_path,
    parse_ogbench_name,
    replay_buffer_from_transitions,
)
from deflow_trl.data.files import npz_headers
from deflow_trl.data.pixels import make_pixel_replay_buffer, visual_dataset_path
from deflow_trl.envs.evaluation import record_episode
from deflow_trl.errors import ConfigError, one_line
from deflow_trl.threads import AdaptiveThreads, threads_mode
from deflow_trl.update import make_update

log = logging.getLogger("deflow_trl.app.train")  # one logger name for the app's training (train.log, tests)


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


# A job of a -m sweep that fails with a known error writes a FAILED marker in its run directory and
# raises JobFailed, not SystemExit: SystemExit would escape Hydra's launcher and stop the sweep, while
# an Exception fails only this job (every launcher runs the others). When the sweep ends, the
# FailedJobsReport callback (deflow_trl/configs/train.yaml) lists the markers in the launching process, whatever
# launcher ran the jobs (joblib workers, SLURM nodes), and `cli` exits 1; with the basic launcher
# Hydra also re-raises the first failure as one line.
RECORDED_RUN_DIRS: set[str] = set()  # run directories whose record this process wrote (may be marked FAILED)



class TrainingRun:
    """:func:`run` once the run directory is locked: one run's state, and its stages in the order
    :meth:`execute` calls them.

    resume rules → data → networks (:meth:`build`) → checkpoint (:meth:`restore`) → record → buffer →
    loop (offline steps, then online steps; each step: update, log, evaluate, checkpoint) → report.
    The stages before :meth:`write_record` only check and load (a refused launch leaves no record);
    :meth:`fail` and :meth:`close` handle an error and clean up. Each stage sets the state the next
    ones read: :meth:`find_start` ``found``/``resuming``/``init``; :meth:`load_data` ``data`` and the
    shapes; :meth:`build` ``policy``/``loss``/``optimizer``/``update``; :meth:`restore` ``state``/``step``;
    :meth:`fill_buffer` ``buffer``; :meth:`start` ``metrics``/``evaluator``/``bar`` and the throughput
    window (``window_*``, ``paused_s``: evaluation and checkpoint time, left out of ``time/steps_per_s``).
    """

    LOSS_KEYS = ("loss_qvalue", "loss_flow", "divergence", "alpha", "distill")  # on the progress bar

    def __init__(self, cfg: DictConfig, run_dir: str, device: torch.device, eval_env, lock):
        self.cfg, self.run_dir, self.device, self.eval_env, self.lock = cfg, run_dir, device, eval_env, lock
        self.ckpt_dir = os.path.join(run_dir, "checkpoints")
        self.scratch = os.path.join(run_dir, "buffer")  # a memmap buffer's files: scratch of this (locked) run
        self.total = cfg.offline_steps + cfg.online_steps
        self.recorded = False  # the run's record (.hydra/, train.log, metrics) is being written
        self.file_log: logging.Handler | None = None
        self.evaluator = None
        self.step = 0
        self.online = {"episodes": 0, "successes": 0}  # online counters, checkpointed with the rest
        self.state = None  # the checkpoint this run resumes or starts from
        self.last_eval: dict = {}
        self.watch = SlowdownWatch()
        # threads=adaptive: at each log point, threads = usable CPUs minus those other processes keep busy
        adaptive = threads_mode(cfg.get("threads", "auto")) == "adaptive"
        self.adaptive = AdaptiveThreads(usable=torch.get_num_threads()) if adaptive else None
        self.progress = cfg.progress  # its own bar (a seed group shows one bar for all its runs)
        self.batched_eval_env = None  # a batched evaluation env lent by the caller (a seed group shares one)
        self.label = ""  # after the step / dataset in printed lines (a seed group's runs: " (seed s)")

    def execute(self) -> dict:
        """Every stage in order; returns the last evaluation."""
        try:
            self.find_start()
            torch.manual_seed(self.cfg.seed)
            self.load_data()
            self.build()
            self.restore()
            self.write_record()
            self.fill_buffer()
            self.start()
            self.loop()
            return self.report()
        except BaseException as err:
            self.fail(err)
            raise
        finally:
            self.close()

    # ------------------------------------------------------------------------- before the record
    def find_start(self) -> None:
        """Resume rules: this run's latest checkpoint (resume=auto), else ``init_from``'s, else none."""
        cfg = self.cfg
        self.found = None if cfg.get("overwrite", False) else load_latest_checkpoint(self.ckpt_dir, move_corrupt=True)
        self.resuming = check_resume(cfg, self.run_dir, self.found)
        # init_from: a new run starting from another run's checkpoint (e.g. online arms branching from one
        # offline run); once this run has its own checkpoint, it resumes from that and init_from is unused.
        self.init = load_init_checkpoint(cfg) if cfg.get("init_from") and not self.resuming else None

    def load_data(self) -> None:
        """The dataset, the replay buffer's initial content (pixels: a frame-stack buffer, built later)."""
        cfg, env = self.cfg, self.eval_env
        if is_pixels(cfg):
            self.data = None
            self.obs_shape = tuple(env.observation_spec["observation"].shape)
            self.act_dim, self.num_offline = env.action_spec.shape[-1], 0
            self.extra = {"encoder": cfg.env.encoder}
        else:
            data = self.data = prepare_dataset(cfg)
            check_data_fits(cfg, env, {"path": cfg.dataset, "observations": tuple(data["observation"].shape),
                                       "actions": tuple(data["action"].shape)})
            self.num_offline = data.shape[0]
            self.obs_shape, self.act_dim, self.extra = data["observation"].shape[-1], data["action"].shape[-1], {}

    def build(self) -> None:
        """Networks, loss, optimiser, target updates and the update step."""
        cfg = self.cfg
        self.policy, self.loss = build_agent(cfg.agent, self.obs_shape, self.act_dim, self.device, **self.extra)
        self.optimizer = torch.optim.Adam(self.loss.parameters(), lr=cfg.agent.lr)
        target_updater = SoftUpdate(self.loss, tau=cfg.agent.tau)
        if trains_flow_only(cfg.agent):
            self.update = FlowBCUpdate(self.loss, self.optimizer)
        else:  # make_update: this module's global, looked up now (tests patch it)
            self.update = make_update(self.loss, self.optimizer, target_updater, compile=cfg.compile_update)

    def restore(self) -> None:
        """Weights, optimiser, step, online counters and (same seed) RNG of the checkpoint started from."""
        if not (self.resuming or self.init):
            return
        self.state, self.start_path = self.found if self.resuming else self.init[:2]
        try:
            self.loss.load_state_dict(self.state["loss"])
            self.optimizer.load_state_dict(self.state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise ConfigError(
                f"the checkpoint {self.start_path} does not match this configuration (another agent or network "
                f"size?): {str(err).splitlines()[0]}; use another hydra.run.dir"
            ) from None
        if self.resuming or self.state.get("config", {}).get("seed") == self.cfg.seed:
            set_rng_state(self.state["rng"])  # same seed: a branch continues exactly as its source would
        self.step = int(self.state["step"])
        self.online.update({k: int(v) for k, v in self.state.get("online_counters", {}).items()})

    # ------------------------------------------------------------------------- the record
    def write_record(self) -> None:
        """Every check passed: from here on the run writes its record (config, train.log, metrics)."""
        cfg, run_dir = self.cfg, self.run_dir
        if cfg.get("overwrite", False):
            removed = clear_record(run_dir)
            if removed:
                log.warning("overwrite=true: removed the earlier run's %s from %s", ", ".join(removed), run_dir)
        elif self.resuming:
            truncate_metrics(run_dir, self.step)  # rows logged after the checkpoint are logged again below
        self.recorded = True
        write_record(run_dir, cfg)
        clear_failed(run_dir)
        RECORDED_RUN_DIRS.add(run_dir)
        self.file_log = logging.FileHandler(os.path.join(run_dir, "train.log"))
        self.file_log.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        logging.getLogger().addHandler(self.file_log)
        if self.resuming:
            log.info("resumed from %s at step %d%s", self.start_path, self.step,
                     " (init_from unused)" if cfg.get("init_from") else "")
        elif self.init:
            copied = copy_metrics(self.init[2], run_dir, self.step) if self.init[2] else 0
            log.info("started from %s at step %d (init_from; %d metric files of its run copied up to that step)",
                     self.start_path, self.step, copied)

    def fill_buffer(self) -> None:
        """The replay buffer: the dataset, then the checkpoint's online transitions.

        Room for every online step: nothing is evicted, and the online part is buffer[num_offline:].
        A memmap buffer is scratch owned by this (locked) run: rebuilt from the data at every start.
        """
        cfg = self.cfg
        shutil.rmtree(self.scratch, ignore_errors=True)
        if is_pixels(cfg):
            self.buffer = make_pixel_replay_buffer(
                cfg.dataset, cfg.batch_size, frame_stack=cfg.env.frame_stack, augment_prob=cfg.env.augment_prob,
                crop_padding=cfg.env.crop_padding, device=self.device, storage=cfg.data.storage,
                scratch_dir=self.scratch, dataset_dir=cfg.data.dataset_dir, download=cfg.data.download,
            )
            self.num_offline = len(self.buffer)
        else:
            self.buffer = replay_buffer_from_transitions(
                self.data, cfg.batch_size, capacity=self.num_offline + cfg.online_steps, storage=cfg.data.storage,
                scratch_dir=self.scratch,
            )
        if self.state is not None and self.state.get("online_data") is not None:
            self.buffer.extend(TensorDict.from_dict(self.state["online_data"], batch_dims=1))

    # ------------------------------------------------------------------------- the loop
    def start(self) -> None:
        """Loggers, evaluator, throughput clock and progress bar; a lost evaluation of the checkpoint's step."""
        cfg = self.cfg
        self.metrics = Metrics(cfg, self.run_dir)
        # Inline (training waits) or eval_async=true: a worker process evaluates while training goes on.
        self.evaluator = make_evaluator(cfg, self.eval_env, self.obs_shape, self.act_dim, self.extra,
                                        batched_env=self.batched_eval_env)
        self.saved_step = self.step if self.resuming else -1
        self.saved_path = self.found[1] if self.resuming else None
        # Training throughput between log points, evaluation and checkpoint time left out.
        self.window_start, self.window_step, self.paused_s = time.perf_counter(), self.step, 0.0
        if self.adaptive is not None:
            self.adaptive.load.sample()  # opens the first window of the other processes' load
        self.bar = tqdm(total=self.total, initial=self.step, desc=f"{cfg.agent.name} {cfg.dataset}",
                        disable=not self.progress, dynamic_ncols=True)
        self.started = time.perf_counter()
        if self.resuming and self.step in self.state.get("eval_pending", ()):  # killed while evaluating it
            log.info("evaluating step %d again: its evaluation was still running when the checkpoint was written",
                     self.step)
            self.evaluate()

    def loop(self) -> None:
        """Offline steps, then online ones; a stop signal ends the loop with a checkpoint."""
        with GracefulStop() as stop:  # Ctrl-C / SIGTERM / SIGUSR1 / SIGUSR2: finish the update, save, stop
            self.stop = stop
            while self.step < self.cfg.offline_steps and not stop.requested:  # gradient steps on the buffer
                out = self.update(self.buffer.sample().to(self.device))
                self.advance()
                self.after_update(out)
            if self.step < self.total and not stop.requested:
                self.train_online()
            self.bar.close()
            self.log_evaluations(self.evaluator.wait())
            if stop.requested:
                path = self.saved_path if self.saved_step == self.step else self.save()
                log.warning("%s: stopped at step %d; checkpoint %s", stop.name, self.step, path)
                raise TrainingStopped(stop.name, stop.exit_code, self.step, path)

    def train_online(self) -> None:
        """Online: one env step (collector → buffer) then one update, until the budget is spent."""
        from torchrl.collectors import Collector

        cfg = self.cfg
        self.loss.freeze_flow = cfg.online.freeze_flow
        env = make_eval_env(cfg, cfg.seed + 1)  # the same single-task env as evaluation, its own seed
        # The policy is stateless: no InitTracker/primer transforms to register on the env.
        collector = Collector(env, self.policy, frames_per_batch=1, total_frames=self.total - self.step,
                              device=self.device, auto_register_policy_transforms=False)
        keys = list(self.data.keys(True, True))
        self.online_start, self.online_from = time.perf_counter(), self.step
        self.watch.restart()  # an env step per update: a slower phase with its own baseline
        for batch in collector:
            batch = batch.reshape(-1)
            ended = batch["next", "done"].squeeze(-1)
            self.online["episodes"] += int(ended.sum())
            self.online["successes"] += int((batch["next", "success"].squeeze(-1) & ended).sum())
            self.buffer.extend(batch.select(*keys).to("cpu"))
            out = self.update(self.buffer.sample().to(self.device))
            self.advance()
            if self.step % cfg.log_interval == 0:
                self.log_online()
            self.after_update(out)
            if self.stop.requested:
                break
        collector.shutdown()

    def advance(self) -> None:
        """One update done."""
        self.step += 1
        self.bar.update(1)

    def after_update(self, out: TensorDict) -> None:
        """At its intervals (and at the last step): log, evaluate, checkpoint; log the evaluations that finished."""
        cfg, step, last = self.cfg, self.step, self.step == self.total
        if step % cfg.log_interval == 0 or last:
            self.log_training(out)
        if step % cfg.eval_interval == 0 or last:
            self.evaluate()
        self.log_evaluations(self.evaluator.ready())
        if step % cfg.save_interval == 0 or last:
            t0 = time.perf_counter()
            # A checkpoint follows every earlier evaluation (at the last step, its own too: nothing is left to overlap).
            self.log_evaluations(self.evaluator.wait(before=step + 1 if last else step))
            self.save()
            self.paused_s += time.perf_counter() - t0

    # ------------------------------------------------------------------------- log, evaluate, save
    def log_training(self, out: TensorDict) -> None:
        """The update's losses and the training rate since the last log point; the progress bar."""
        values = {f"train/{k}": v.item() for k, v in out.items()}
        now = time.perf_counter()
        busy = now - self.window_start - self.paused_s
        if self.step > self.window_step and busy > 0:  # sampling + update (+ env step online) per second
            values["time/steps_per_s"] = (self.step - self.window_step) / busy
            warning = self.watch.observe(values["time/steps_per_s"])
            if warning:
                log.warning(warning)
        if self.adaptive is not None:
            change = self.adaptive.update()
            if change is not None:
                log.info("threads %d -> %d: other processes keep %.1f CPU(s) busy (threads=adaptive)", *change)
            values["time/threads"] = float(self.adaptive.current)
        self.window_start, self.window_step, self.paused_s = now, self.step, 0.0
        self.metrics.log(values, self.step)
        self.bar.set_postfix({k: f"{out[k].item():.3g}" for k in self.LOSS_KEYS if k in out.keys()}
                             | self.watch.postfix())

    def log_online(self) -> None:
        """The online phase's buffer, episodes and rate."""
        episodes = self.online["episodes"]
        self.metrics.log({"online/buffer_size": len(self.buffer), "online/episodes": episodes,
                          "online/episode_success_rate": self.online["successes"] / max(episodes, 1),
                          # wall-clock rate of (one env step + one update), evaluations included
                          "online/steps_per_s": (self.step - self.online_from)
                          / (time.perf_counter() - self.online_start)}, self.step)

    def evaluate(self) -> None:
        """Inline: evaluated here; eval_async: handed to the worker. Its time is left out of the rate."""
        cfg, t0 = self.cfg, time.perf_counter()
        self.evaluator.submit(self.step, self.policy)
        if cfg.logger.get("video", False):  # episode 0 again, rendered, into the CSV logger's videos/
            record_episode(self.policy, cfg.dataset, self.metrics.loggers[0], seed=cfg.seed, step=self.step)
        self.paused_s += time.perf_counter() - t0

    def log_evaluations(self, results) -> None:
        """Each result at the step it belongs to, in step order."""
        for at, result in results:
            self.metrics.log({**{f"eval/{k}": result[k] for k in ("success_rate", "return_mean", "length_mean")},
                              "time/eval_seconds": result["seconds"]}, at)
            tqdm.write(f"step {at}{self.label}: success rate {100 * result['success_rate']:.1f}% over "
                       f"{self.cfg.eval_episodes} episodes")
            self.last_eval = {**result, "step": at}

    def save(self) -> str:
        """A checkpoint of the current step; returns its path."""
        state = {"step": self.step, "loss": self.loss.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "rng": rng_state(), "config": OmegaConf.to_container(self.cfg, resolve=True),
                 "online_counters": dict(self.online)}
        if len(self.buffer) > self.num_offline:
            state["online_data"] = self.buffer[self.num_offline : len(self.buffer)].to_dict()
        if self.evaluator.pending:  # its own step's evaluation still running: a resume evaluates it again
            state["eval_pending"] = self.evaluator.pending
        self.saved_path = save_checkpoint(self.ckpt_dir, self.step, state, keep=self.cfg.keep_checkpoints)
        self.saved_step = self.step
        return self.saved_path

    # ------------------------------------------------------------------------- the end
    def report(self) -> dict:
        """The final plot and one line; returns the last evaluation."""
        cfg = self.cfg
        if not self.last_eval:  # resumed a finished run: report its policy once more (not logged again)
            self.evaluator.submit(self.step, self.policy)
            self.last_eval = {**self.evaluator.wait()[-1][1], "step": self.step}
        elapsed = time.perf_counter() - self.started
        png = plot_run(self.run_dir, target_divergence=cfg.agent.get("target_divergence")
                       if agent_kind(cfg.agent) == "deflow" and not trains_flow_only(cfg.agent) else None)
        print(
            f"[deflow_trl] {cfg.agent.name} on {cfg.dataset}{self.label}: success rate "
            f"{100 * self.last_eval.get('success_rate', math.nan):.1f}% at step {self.step} "
            f"({elapsed:.0f} s this session). Curve: {png}"
        )
        return self.last_eval

    def fail(self, err: BaseException) -> None:
        """A refused launch in a fresh directory leaves nothing behind; a known error goes to train.log."""
        if not self.recorded and self.lock.created and set(os.listdir(self.run_dir)) <= {".lock"}:
            os.unlink(self.lock.path)
        line = one_line(err) if isinstance(err, Exception) else None
        if self.file_log is not None and line:
            self.file_log.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0, line, None, None))

    def close(self) -> None:
        """The evaluator, the log file handler and a memmap buffer's scratch (rebuilt at the next start)."""
        if self.evaluator is not None:
            self.evaluator.close()
        if self.file_log is not None:
            logging.getLogger().removeHandler(self.file_log)
            self.file_log.close()
        if self.recorded and self.cfg.data.storage == "memmap":
            shutil.rmtree(self.scratch, ignore_errors=True)


class FlowBCUpdate:
    """The flow-BC baseline's update: flow matching only (no critic, no refiner)."""

    def __init__(self, loss, optimizer):
        self.loss, self.optimizer = loss, optimizer

    def __call__(self, batch):
        self.optimizer.zero_grad(set_to_none=True)
        flow, _ = self.loss.flow_loss(batch)
        flow.backward()
        self.optimizer.step()
        return flow_bc_metrics(flow.detach())


def flow_bc_metrics(loss_flow: torch.Tensor) -> TensorDict:
    """What a flow-BC update logs: its flow loss, and NaN for the terms it does not train."""
    nan = torch.tensor(math.nan)
    return TensorDict({"loss_flow": loss_flow, "loss_qvalue": nan, "divergence": nan, "alpha": nan}, [])
