"""DeFlow on OGBench, launched with Hydra.

    python -m deflow_trl.train                                  # reference protocol, cube-single task 1
    python -m deflow_trl.train +experiment=quick                # the README's few-minute run
    python -m deflow_trl.train env=puzzle_3x3 task=2 seed=1     # another suite / task / seed
    python -m deflow_trl.train agent=flow_bc                    # the flow-BC baseline (no refiner)
    python -m deflow_trl.train online_steps=100000              # offline-to-online fine-tuning
    python -m deflow_trl.train -m seed=0,1,2                    # a sweep (Hydra's basic launcher)

The run directory (``runs/<agent>/<dataset>/seed<seed>`` by default) holds the
resolved config (``.hydra/``), ``metrics/scalars/*.csv`` (TorchRL's
``CSVLogger``), ``checkpoints/`` and ``learning_curve.png``. Running the same
command again resumes from the latest checkpoint (``resume=auto``).

The loop reads top to bottom: check the config → data → networks, loss,
optimiser → offline steps (update, log, evaluate, checkpoint) → online steps
(a TorchRL collector adds env transitions to the same buffer) → final plot.
"""
from __future__ import annotations

import logging
import math
import os
import time

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDict
from torchrl.objectives import SoftUpdate
from tqdm import tqdm

from deflow_trl.checkpoint import load_latest_checkpoint, rng_state, save_checkpoint, set_rng_state
from deflow_trl.data import replay_buffer_from_transitions
from deflow_trl.make import make_deflow
from deflow_trl.update import make_update

log = logging.getLogger("deflow_trl.train")
CONFIG_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, "configs"))
# make_deflow keywords that the agent config provides.
AGENT_KEYS = (
    "hidden_sizes", "num_critics", "num_flow_steps", "solver", "discount", "target_divergence", "q_agg",
    "normalize_q_loss", "init_log_alpha", "sampling", "num_samples", "refine_iterations", "backend", "refine",
    "bf16_solves",
)


class ConfigError(ValueError):
    """A configuration that cannot run; raised before any work is done."""


# ----------------------------------------------------------------------------- config
def check_config(cfg: DictConfig) -> None:
    """Every check that needs no data: one clear error per problem."""
    from deflow_trl.data import parse_ogbench_name
    from deflow_trl.sampler import check_solver

    a = cfg.agent
    if not a.target_divergence > 0:
        raise ConfigError(f"agent.target_divergence (δ) must be > 0, got {a.target_divergence}")
    if not 0 <= a.discount <= 1:
        raise ConfigError(f"agent.discount must be in [0, 1], got {a.discount}")
    if a.q_agg not in ("mean", "min"):
        raise ConfigError(f"agent.q_agg must be 'mean' or 'min', got {a.q_agg!r}")
    try:
        check_solver(a.solver, a.num_flow_steps)
    except ValueError as err:
        raise ConfigError(f"agent: {err}") from None
    if not a.lr > 0 or not 0 < a.tau <= 1:
        raise ConfigError(f"agent.lr must be > 0 and agent.tau in (0, 1]; got lr={a.lr}, tau={a.tau}")
    if cfg.eval_episodes < 1:
        raise ConfigError(f"eval_episodes must be >= 1, got {cfg.eval_episodes}")
    for key in ("batch_size", "eval_interval", "log_interval", "save_interval", "keep_checkpoints"):
        if cfg[key] < 1:
            raise ConfigError(f"{key} must be >= 1, got {cfg[key]}")
    if cfg.offline_steps < 0 or cfg.online_steps < 0 or cfg.offline_steps + cfg.online_steps < 1:
        raise ConfigError("offline_steps and online_steps must be >= 0 and not both 0")
    if cfg.resume not in ("auto", True, False):
        raise ConfigError(f"resume must be auto, true or false, got {cfg.resume!r}")
    if cfg.task not in (1, 2, 3, 4, 5):
        raise ConfigError(f"task must be one of 1..5 (OGBench single-task ids), got {cfg.task!r}")
    try:
        parse_ogbench_name(cfg.dataset)
    except ValueError as err:
        raise ConfigError(f"unknown env/dataset {cfg.dataset!r}: {err}") from None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device=cuda but CUDA is not available")
    return torch.device(name)


# ----------------------------------------------------------------------------- data
def dataset_size(cfg: DictConfig) -> int | None:
    """Transitions in the train file, read from the ``.npz`` header (no decompression)."""
    from deflow_trl.data import ogbench_dataset_path
    from deflow_trl.data.ogbench import _npz_headers

    path = ogbench_dataset_path(cfg.dataset, cfg.data.dataset_dir, "train")
    if not os.path.isfile(path):
        return None
    try:
        return _npz_headers(path)["observations"][0][0]
    except Exception:
        return None  # the loader reports what is wrong with the file


def prepare_dataset(cfg: DictConfig) -> TensorDict:
    """Loads the dataset; regenerates it first if missing and allowed."""
    from deflow_trl.data import generate_dataset, load_ogbench_dataset, ogbench_dataset_path, parse_ogbench_name

    path = ogbench_dataset_path(cfg.dataset, cfg.data.dataset_dir, "train")
    if not os.path.isfile(path) and cfg.data.generate_if_missing and not cfg.data.download:
        stem = parse_ogbench_name(cfg.dataset).file_stem
        log.info("%s is missing: regenerating %d episodes locally with OGBench's scripted oracle", path, cfg.data.generate_episodes)
        generate_dataset(
            stem, cfg.data.generate_episodes, dataset_dir=cfg.data.dataset_dir,
            workers=cfg.data.generate_workers, seed=cfg.seed, progress=cfg.progress,
        )
    return load_ogbench_dataset(cfg.dataset, cfg.data.dataset_dir, download=cfg.data.download)


# ----------------------------------------------------------------------------- logging
class Metrics:
    """TorchRL loggers: CSV always (the plot and ``summarize`` read it), plus
    TensorBoard or W&B when configured."""

    def __init__(self, cfg: DictConfig, run_dir: str):
        from torchrl.record.loggers import CSVLogger

        self.loggers = [CSVLogger(exp_name="metrics", log_dir=run_dir)]
        if cfg.logger.backend == "tensorboard":
            from torchrl.record.loggers import TensorboardLogger

            self.loggers.append(TensorboardLogger(exp_name="tb", log_dir=run_dir))
        elif cfg.logger.backend == "wandb":
            from torchrl.record.loggers import WandbLogger

            self.loggers.append(WandbLogger(exp_name=os.path.basename(run_dir), project=cfg.logger.project, save_dir=run_dir))
        elif cfg.logger.backend != "csv":
            raise ConfigError(f"logger.backend must be csv, tensorboard or wandb, got {cfg.logger.backend!r}")

    def log(self, values: dict, step: int) -> None:
        for logger in self.loggers:
            for name, value in values.items():
                logger.log_scalar(name, float(value), step=step)


# ----------------------------------------------------------------------------- the run
def run(cfg: DictConfig, run_dir: str) -> dict:
    """Trains and evaluates as configured; returns the last evaluation."""
    from deflow_trl.envs import make_ogbench_env
    from deflow_trl.evaluation import evaluate
    from deflow_trl.plot import plot_run

    check_config(cfg)
    n = dataset_size(cfg)
    if n is not None and cfg.batch_size > n:
        raise ConfigError(f"batch_size={cfg.batch_size} is larger than the dataset ({n} transitions)")
    ckpt_dir = os.path.join(run_dir, "checkpoints")
    found = load_latest_checkpoint(ckpt_dir)
    if found is not None and cfg.resume is False:
        raise ConfigError(f"{run_dir} already holds checkpoints; pass resume=true/auto, or another hydra.run.dir")
    if found is None and cfg.resume is True:
        raise ConfigError(f"resume=true but {ckpt_dir} holds no checkpoint")
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)

    # Data: the dataset is the replay buffer's initial content.
    data = prepare_dataset(cfg)
    if cfg.batch_size > data.shape[0]:
        raise ConfigError(f"batch_size={cfg.batch_size} is larger than the dataset ({data.shape[0]} transitions)")
    num_offline = data.shape[0]
    # Room for every online step: nothing is evicted, and the online part is buffer[num_offline:].
    buffer = replay_buffer_from_transitions(
        data, cfg.batch_size, capacity=num_offline + cfg.online_steps, storage=cfg.data.storage,
        scratch_dir=os.path.join(run_dir, "buffer"),
    )
    obs_dim, act_dim = data["observation"].shape[-1], data["action"].shape[-1]

    # Networks, loss, optimiser, target updates.
    agent = {k: cfg.agent[k] for k in AGENT_KEYS}
    agent["hidden_sizes"] = tuple(agent["hidden_sizes"])
    policy, loss = make_deflow(obs_dim, act_dim, device=device, **agent)
    optimizer = torch.optim.Adam(loss.parameters(), lr=cfg.agent.lr)
    target_updater = SoftUpdate(loss, tau=cfg.agent.tau)
    if cfg.agent.refine:
        update = make_update(loss, optimizer, target_updater, compile=cfg.compile_update)
    else:
        update = FlowBCUpdate(loss, optimizer)

    step = 0
    if found is not None:
        state, path = found
        saved = state.get("config", {})
        now = OmegaConf.to_container(cfg, resolve=True)
        changed = [k for k in ("agent", "dataset", "seed", "batch_size") if k in saved and saved[k] != now[k]]
        if changed:
            raise ConfigError(
                f"{path} was trained with different {', '.join(changed)} than this command; "
                "resume with the same settings, or use another hydra.run.dir"
            )
        try:
            loss.load_state_dict(state["loss"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise ConfigError(
                f"the checkpoint {path} does not match this configuration (another agent or network size?): "
                f"{str(err).splitlines()[0]}; use another hydra.run.dir"
            ) from None
        set_rng_state(state["rng"])
        step = int(state["step"])
        if state.get("online_data") is not None:
            buffer.extend(TensorDict.from_dict(state["online_data"], batch_dims=1))
        log.info("resumed from %s at step %d", path, step)

    metrics = Metrics(cfg, run_dir)
    eval_env = make_ogbench_env(cfg.dataset, seed=cfg.seed)
    total = cfg.offline_steps + cfg.online_steps
    last_eval: dict = {}

    def save():
        state = {"step": step, "loss": loss.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_state(),
                 "config": OmegaConf.to_container(cfg, resolve=True)}
        if len(buffer) > num_offline:
            state["online_data"] = buffer[num_offline : len(buffer)].to_dict()
        save_checkpoint(ckpt_dir, step, state, keep=cfg.keep_checkpoints)

    def run_eval() -> dict:
        result = evaluate(policy, eval_env, cfg.eval_episodes, seed=cfg.seed, progress=False)
        return {"success_rate": result["success_rate"], "return_mean": result["return_mean"],
                "length_mean": result["length_mean"], "step": step}

    def maybe_log_eval_save(out):
        nonlocal last_eval
        if step % cfg.log_interval == 0 or step == total:
            values = {f"train/{k}": v.item() for k, v in out.items()}
            metrics.log(values, step)
            bar.set_postfix({k: f"{out[k].item():.3g}" for k in ("loss_critic", "loss_flow", "divergence", "alpha")})
        if step % cfg.eval_interval == 0 or step == total:
            last_eval = run_eval()
            metrics.log({f"eval/{k}": last_eval[k] for k in ("success_rate", "return_mean", "length_mean")}, step)
            tqdm.write(f"step {step}: success rate {100 * last_eval['success_rate']:.1f}% over {cfg.eval_episodes} episodes")
        if step % cfg.save_interval == 0 or step == total:
            save()

    bar = tqdm(total=total, initial=step, desc=f"{cfg.agent.name} {cfg.dataset}", disable=not cfg.progress, dynamic_ncols=True)
    start = time.perf_counter()

    # Offline: gradient steps on the buffer.
    while step < cfg.offline_steps:
        out = update(buffer.sample().to(device))
        step += 1
        bar.update(1)
        maybe_log_eval_save(out)

    # Online: one env step (collector → buffer) then one update, until the budget is spent.
    if step < total:
        from torchrl.collectors import Collector

        loss.freeze_flow = cfg.online.freeze_flow
        env = make_ogbench_env(cfg.dataset, seed=cfg.seed + 1)
        # The policy is stateless: no InitTracker/primer transforms to register on the env.
        collector = Collector(env, policy, frames_per_batch=1, total_frames=total - step, device=device,
                              auto_register_policy_transforms=False)
        keys = list(data.keys(True, True))
        episodes = successes = 0
        for batch in collector:
            batch = batch.reshape(-1)
            ended = batch["next", "done"].squeeze(-1)
            episodes += int(ended.sum())
            successes += int((batch["next", "success"].squeeze(-1) & ended).sum())
            buffer.extend(batch.select(*keys).to("cpu"))
            out = update(buffer.sample().to(device))
            step += 1
            bar.update(1)
            if step % cfg.log_interval == 0:
                metrics.log({"online/buffer_size": len(buffer), "online/episodes": episodes,
                             "online/episode_success_rate": successes / max(episodes, 1)}, step)
            maybe_log_eval_save(out)
        collector.shutdown()
    bar.close()

    if not last_eval:  # resumed a finished run: report its policy once more
        last_eval = run_eval()
    eval_env.close()
    elapsed = time.perf_counter() - start
    png = plot_run(run_dir, target_divergence=cfg.agent.target_divergence if cfg.agent.refine else None)
    print(
        f"[deflow_trl] {cfg.agent.name} on {cfg.dataset}: success rate "
        f"{100 * last_eval.get('success_rate', math.nan):.1f}% at step {step} "
        f"({elapsed:.0f} s this session). Curve: {png}"
    )
    return last_eval


class FlowBCUpdate:
    """The flow-BC baseline's update: flow matching only (no critic, no refiner)."""

    def __init__(self, loss, optimizer):
        self.loss, self.optimizer = loss, optimizer

    def __call__(self, batch):
        self.optimizer.zero_grad(set_to_none=True)
        flow, _ = self.loss.flow_loss(batch)
        flow.backward()
        self.optimizer.step()
        return TensorDict({"loss_flow": flow.detach(), "loss_critic": torch.tensor(math.nan),
                           "divergence": torch.tensor(math.nan), "alpha": torch.tensor(math.nan)}, [])


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    try:
        run(cfg, HydraConfig.get().runtime.output_dir)
    except (ConfigError, FileNotFoundError) as err:
        log.error("%s", err)  # once, to the console and the run's train.log
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
