"""Several seeds in one process: ``seeds=[0,1,2,3]`` (or ``seeds_per_job=4``) in the app.

    python -m deflow_trl.train +experiment=quick 'seeds=[0,1,2]'        # three seeds, one process
    python -m deflow_trl.train -m +experiment=paper seeds_per_job=8     # the paper sweep, 8 seeds per job

Each seed is a full run of its own: a :class:`~deflow_trl.app.training_run.TrainingRun` for the directory a
lone run of that seed gets (its lock, ``.hydra`` record with ``seed: s``, ``train.log``, metrics, checkpoints,
evaluations and learning curve; ``summarize`` reads them as lone runs). What the seeds share is the process,
the dataset and replay buffer in memory, the evaluation envs and one update: a
:class:`~deflow_trl.seeds.SeedGroup` stacks their parameters and trains them under ``torch.vmap``, each seed
sampling its batches and drawing its noise from its own RNG stream, seeded as the lone run's.

Where the runs live: the launch's run directory (``hydra.run.dir``, a sweep job's directory) is the first
seed's when its last component is ``seed<seed>`` (the app's default pattern), and seed ``s`` gets the sibling
``seed<s>``; otherwise every seed gets ``<run dir>/seed<s>``.

What a seed of a group reproduces: the lone run with the same seed, to float32 round-off (vmap's matmuls sum
in another order, a compiled lone update fuses others; both draw the same noise: ``deflow_trl/update.py``, "RNG";
``tests/test_seed_group.py`` states the tolerances). The group's update is eager (a compiled group step was measured slower: ``docs/design.md`` §6), its solves fp32
(``agent.bf16_solves=auto`` becomes false) and its sampler eager (``agent.backend=auto`` becomes eager); each
seed's record says so. A seed's checkpoints are a lone run's (weights, that seed's slice of the optimiser
state, its own RNG stream), so a lone run resumes from a group's seed directory and a group from lone
runs' directories (the seeds at one step; a group killed between two seeds' checkpoints resumes all of them
from the latest step every seed has).

DeFlow, FQL and the flow-BC baseline (its update trains the flow alone, as a lone flow-BC run's does). Not
supported (one line each): ``online_steps > 0``, pixel suites, ``eval_async``, ``init_from``, ``agent.bf16_solves=true`` and a sampler backend other than
eager. The memory the seeds need is estimated before training and refused when over what is available.

When to use it (``benchmarks/seed_throughput.py``, ``docs/results.md``): on a GPU, always (one small MLP
leaves it idle); on a CPU where the table shows a gain (small networks), or to run many seeds as one job.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import logging
import os
import time

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from deflow_trl.app.agents import trains_flow_only
from deflow_trl.app.checkpoint import load_checkpoint_at
from deflow_trl.app.evaluator import is_pixels, make_eval_env
from deflow_trl.app.runlock import run_dir_lock
from deflow_trl.app.signals import GracefulStop
from deflow_trl.app.training_run import TrainingRun, TrainingStopped, flow_bc_metrics
from deflow_trl.envs.ogbench import make_batched_env
from deflow_trl.errors import ConfigError
from deflow_trl.hardware import available_memory_bytes
from deflow_trl.paths import check_writable
from deflow_trl.seeds import RngStreams, SeedGroup, estimate_bytes_per_seed

log = logging.getLogger("deflow_trl.app.train")


# ----------------------------------------------------------------------------- which seeds, where
def group_seeds(cfg: DictConfig) -> list[int] | None:
    """The seeds this launch trains together, or None for a lone run."""
    if cfg.get("seeds") is not None:
        return [int(s) for s in cfg.seeds]
    n = int(cfg.get("seeds_per_job", 1))
    return list(range(cfg.seed, cfg.seed + n)) if n > 1 else None


def check_seed_override() -> None:
    """``seeds`` with an explicit ``seed=`` on the command line (or from a sweep) is refused in one line."""
    from hydra.core.hydra_config import HydraConfig  # lazy: a library call of run() has no Hydra

    if not HydraConfig.initialized():
        return
    given = [o for o in HydraConfig.get().overrides.task if o.lstrip("+~").split("=", 1)[0] == "seed"]
    if given:
        raise ConfigError(f"seeds=[...] trains the seeds it lists; drop {given[0]} (or use seeds_per_job with seed "
                          "as the first seed)")


def seed_run_dir(run_dir: str, first_seed: int, seed: int) -> str:
    """Seed ``seed``'s run directory for a launch in ``run_dir`` (module docstring)."""
    run_dir = os.path.normpath(run_dir)
    if os.path.basename(run_dir) == f"seed{first_seed}":
        return os.path.join(os.path.dirname(run_dir), f"seed{seed}")
    return os.path.join(run_dir, f"seed{seed}")


def member_config(cfg: DictConfig, seed: int) -> DictConfig:
    """The config seed ``seed``'s run records: a lone run's (``seed: s``), with what the group changes."""
    member = OmegaConf.to_container(cfg, resolve=True)
    member.update(seed=seed, seeds=None, seeds_per_job=1, compile_update=False)
    if member["agent"].get("bf16_solves") == "auto":
        member["agent"]["bf16_solves"] = False
    if member["agent"].get("backend") == "auto":
        member["agent"]["backend"] = "eager"
    return OmegaConf.create(member)


def check_group(cfg: DictConfig, seeds: list[int]) -> None:
    """What a group cannot do yet, one line each, before anything is built."""
    refusals = [
        (cfg.online_steps > 0, "online_steps > 0 (offline-to-online) is not supported with several seeds in one "
                               "process yet: run the seeds one per process"),
        (is_pixels(cfg), "pixel suites are not supported with several seeds in one process yet"),
        (cfg.get("eval_async", False), "eval_async=true is not supported with several seeds in one process"),
        (cfg.get("init_from") is not None, "init_from is not supported with several seeds in one process"),
        (cfg.agent.get("bf16_solves") is True,
         "agent.bf16_solves=true is not supported with several seeds in one process (use false or auto)"),
        (cfg.agent.get("backend", "eager") not in ("eager", "auto"),
         f"agent.backend={cfg.agent.get('backend')} is not supported with several seeds in one process (the "
         "group's update runs the sampler under vmap: eager or auto)"),
    ]
    for refused, line in refusals:
        if refused:
            raise ConfigError(f"seeds={seeds}: {line}")


def check_memory(loss, batch, seeds: list[int], device: torch.device) -> None:
    """Refuses a group that would not fit in the device's available memory (estimated, before training)."""
    available = available_memory_bytes(device)
    if available is None:
        return
    per_seed = estimate_bytes_per_seed(loss, batch)
    need = per_seed * len(seeds)
    if need > available:
        raise ConfigError(
            f"seeds: {len(seeds)} seeds need about {need / 2**30:.2f} GiB ({per_seed / 2**20:.0f} MiB each: weights, "
            f"gradients, Adam moments and one update's activations), {available / 2**30:.2f} GiB is available on "
            f"{device}: use fewer seeds per process")


# ----------------------------------------------------------------------------- the run
def run_group(cfg: DictConfig, seeds: list[int], run_dir: str, device: torch.device, eval_env) -> dict[int, dict]:
    """Locks every seed's directory, then trains the group; returns ``{seed: last evaluation}``."""
    check_group(cfg, seeds)
    dirs = {s: seed_run_dir(run_dir, cfg.seed, s) for s in seeds}
    made = [d for d in dirs.values() if not os.path.exists(d)]
    try:
        for d in dirs.values():
            check_writable(d, "run directory")
        with contextlib.ExitStack() as stack:
            locks = {s: stack.enter_context(run_dir_lock(d)) for s, d in dirs.items()}
            members = [TrainingRun(member_config(cfg, s), dirs[s], device, eval_env, locks[s]) for s in seeds]
            return SeedGroupRun(cfg, members).execute()
    except BaseException:
        for d in made:  # a refused group leaves no empty directories behind (a lone run's: Hydra's, removed by main)
            with contextlib.suppress(OSError):
                os.rmdir(d)
        raise
    finally:
        # Hydra made the launch's directory; when no seed runs in it (seeds=[3,4] from the default seed0), drop it
        if os.path.normpath(run_dir) not in dirs.values():
            with contextlib.suppress(OSError):
                os.rmdir(run_dir)  # only if empty


class SeedGroupRun:
    """The seeds' :class:`TrainingRun` s driven together: their own stages where a lone run's apply (resume rules,
    record, logging, evaluation, checkpoints, report), shared data and buffer, one :class:`SeedGroup` update."""

    def __init__(self, cfg: DictConfig, members: list[TrainingRun]):
        self.cfg, self.members = cfg, members
        self.seeds = [m.cfg.seed for m in members]
        self.batched_env = None
        self.group: SeedGroup | None = None
        self.flow_only = trains_flow_only(cfg.agent)  # flow BC: the flow's loss alone, no target update

    def execute(self) -> dict[int, dict]:
        try:
            self.find_start()
            self.load_data()
            self.build()
            for m in self.members:
                m.write_record()
            self.fill_buffer()
            self.start()
            self.loop()
            return {m.cfg.seed: m.report() for m in self.members}
        except BaseException as err:
            for m in self.members:
                m.fail(err)
            raise
        finally:
            for m in self.members:
                m.close()
            if self.batched_env is not None and not self.batched_env.is_closed:
                self.batched_env.close()

    def find_start(self) -> None:
        """Each seed's resume rules; seeds found at different steps all resume from the latest common one."""
        for m in self.members:
            m.find_start()
        steps = {m.cfg.seed: int(m.found[0]["step"]) if m.resuming else None for m in self.members}
        if len(set(steps.values())) <= 1:
            return
        if None in steps.values():
            raise ConfigError(f"seeds={self.seeds}: some seeds have checkpoints and some do not ({steps}); resume "
                              "them as they were run, or pass overwrite=true")
        common = min(steps.values())
        for m in self.members:
            if steps[m.cfg.seed] != common:
                found = load_checkpoint_at(m.ckpt_dir, common)
                if found is None:
                    raise ConfigError(f"seeds={self.seeds}: checkpoints at steps {steps}, and seed {m.cfg.seed} has "
                                      f"none at step {common} any more; resume the seeds one per process")
                m.found = found
        log.info("seeds %s: checkpoints at steps %s; all resume from step %d", self.seeds, steps, common)

    def load_data(self) -> None:
        """The dataset once (a lone run loads it right after seeding: the same bytes for every seed)."""
        first = self.members[0]
        first.load_data()
        for m in self.members[1:]:
            m.data, m.num_offline = first.data, first.num_offline
            m.obs_shape, m.act_dim, m.extra = first.obs_shape, first.act_dim, first.extra

    def build(self) -> None:
        """Each seed's networks as its lone run builds them (right after ``torch.manual_seed(s)``) and restored
        from its checkpoint; then the group: stacked parameters, one optimiser, each seed's RNG stream."""
        device, states = self.members[0].device, []
        outer = RngStreams.capture(device)
        for m in self.members:
            torch.manual_seed(m.cfg.seed)
            m.build()
            m.restore()
            states.append(RngStreams.capture(device))
        RngStreams(states, device)._set(outer)
        lone_optimizers = [m.optimizer.state_dict() for m in self.members]
        with torch.random.fork_rng(devices=[]):
            # on a copy: a forward/backward leaves hook flags on modules, which SeedGroup's same-settings check reads
            check_memory(copy.deepcopy(self.members[0].loss), self.members[0].data[: self.cfg.batch_size], self.seeds,
                         device)
        self.group = SeedGroup([m.loss for m in self.members], self.seeds, rng_states=states,
                               tau=None if self.flow_only else self.cfg.agent.tau, flow_only=self.flow_only,
                               optimizer=lambda params: torch.optim.Adam(params, lr=self.cfg.agent.lr))
        if any(m.state is not None for m in self.members):
            self.group.load_optimizer_state_dicts(lone_optimizers)
        for i, m in enumerate(self.members):
            m.optimizer = _SeedOptimizer(self.group, i)  # what m.save() writes: a lone run's optimiser state
            m.update = None  # the group updates every seed

    def fill_buffer(self) -> None:
        first = self.members[0]
        first.fill_buffer()
        for m in self.members[1:]:
            m.buffer = first.buffer

    def start(self) -> None:
        """Each seed's loggers and evaluator (one batched evaluation env shared by all), one progress bar."""
        cfg = self.cfg
        if cfg.eval_envs > 1:  # built once (each seed still evaluates its own episode seeds on it)
            self.batched_env = make_batched_env(functools.partial(make_eval_env, cfg, self.seeds[0]), cfg.eval_envs,
                                                parallel=cfg.get("eval_parallel", False))
        for i, m in enumerate(self.members):
            m.progress, m.batched_eval_env, m.label = False, self.batched_env, f" (seed {m.cfg.seed})"
            with self.group.rng.use(i):  # a lost evaluation re-run at start draws nothing, but stay on the stream
                m.start()
        step = self.members[0].step
        self.bar = tqdm(total=self.members[0].total, initial=step, desc=f"{cfg.agent.name} {cfg.dataset} seeds "
                        f"{','.join(map(str, self.seeds))}", disable=not cfg.progress, dynamic_ncols=True)

    def loop(self) -> None:
        """Offline steps: one group update, then each seed's log / evaluate / checkpoint at its intervals."""
        buffer, device = self.members[0].buffer, self.members[0].device
        key = "loss_flow" if self.flow_only else "loss_qvalue"  # on the bar, per seed (each member's is disabled)
        with GracefulStop() as stop:
            while self.members[0].step < self.cfg.offline_steps and not stop.requested:
                out = self.group.update(lambda: buffer.sample().to(device))
                self.bar.update(1)
                for i, m in enumerate(self.members):
                    m.step += 1
                    t0 = time.perf_counter()
                    with self.group.rng.use(i):  # its checkpoint records its own stream
                        m.after_update(flow_bc_metrics(out["loss_flow"][i]) if self.flow_only else out[i])
                    for other in self.members:  # one seed's evaluation / checkpoint pauses every seed's training
                        if other is not m:
                            other.paused_s += time.perf_counter() - t0
                if self.members[0].step % self.cfg.log_interval == 0:  # as a lone run's bar: at log points only
                    self.bar.set_postfix({f"{key}[{s}]": f"{out[key][i].item():.3g}"
                                          for i, s in enumerate(self.seeds[:4])})
            self.bar.close()
            for m in self.members:
                m.log_evaluations(m.evaluator.wait())
            if stop.requested:
                paths = []
                for i, m in enumerate(self.members):
                    with self.group.rng.use(i):
                        paths.append(m.saved_path if m.saved_step == m.step else m.save())
                step = self.members[0].step
                log.warning("%s: seeds %s stopped at step %d; checkpoints %s", stop.name, self.seeds, step, paths)
                raise TrainingStopped(stop.name, stop.exit_code, step, paths[0])


class _SeedOptimizer:
    """Seed ``i``'s view of the group's optimiser, for its :meth:`TrainingRun.save`: a lone run's state dict."""

    def __init__(self, group: SeedGroup, i: int):
        self.group, self.i = group, i

    def state_dict(self) -> dict:
        return self.group.optimizer_state_dict(self.i)
