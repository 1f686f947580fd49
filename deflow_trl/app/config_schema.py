"""The training app's config: typed schema plus the value checks, all before any work.

:func:`validate_config` is the first thing :func:`deflow_trl.app.train.run` does. It

1. types every field with OmegaConf structured configs (the dataclasses
   below): ``batch_size='256'`` becomes 256, ``offline_steps=1.5``, ``seed=abc``
   or ``agent.lr=fast`` are refused naming the key, and so is a key the schema
   does not know, even one added with Hydra's ``+`` (``+agent.hidden_sise=[8]``
   would otherwise train with the default widths: nothing reads it). The schema
   is the union of the shipped configs' fields (every agent's and suite's;
   ``tests/test_packaging.py`` checks every file). The agent part is derived:
   the builders' keywords (names, types, defaults read from the signatures of
   ``make_deflow`` and ``make_fql``) plus :class:`AgentAppFields`, so a new agent
   hyperparameter is a new builder keyword (and its YAML line); any other new
   config field goes into its dataclass here. A known field missing from a
   config is not added (so schema defaults are never used);
2. checks values and cross-field rules that types cannot say
   (:func:`check_config`): ranges, names of samplers/backends/storages/devices,
   logger packages importable.

Every problem is a :class:`~deflow_trl.errors.ConfigError` with one line naming
the key, the value and what is expected. The schema is applied inside the app,
not as Hydra's primary config, so ``deflow_trl/configs/*.yaml`` compose exactly as before.

Examples:
    >>> from omegaconf import OmegaConf
    >>> cfg = OmegaConf.create({"seed": "3", "batch_size": 8})
    >>> typed_config(cfg).seed
    3
    >>> try:
    ...     typed_config(OmegaConf.create({"offline_steps": 1.5}))
    ... except ConfigError as err:
    ...     print(err)
    offline_steps: Value '1.5' of type 'float' could not be converted to Integer
    >>> try:
    ...     typed_config(OmegaConf.create({"agent": {"hidden_sise": [8]}}))
    ... except ConfigError as err:
    ...     print(err)
    agent.hidden_sise: unknown key (did you mean agent.hidden_sizes?)
"""
from __future__ import annotations

import collections.abc
import difflib
import importlib.util
import inspect
import math
import types
import typing
from dataclasses import dataclass, field, make_dataclass
from typing import Any, List, Optional

import torch
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from deflow_trl.actor import SAMPLING_MODES
from deflow_trl.app.agents import BUILDERS, config_keywords
from deflow_trl.backends import BACKENDS, resolve_backend
from deflow_trl.data import parse_ogbench_name
from deflow_trl.errors import ConfigError
from deflow_trl.hardware import resolve_bf16_solves  # the one place that knows the accepted values
from deflow_trl.sampler import check_solver
from deflow_trl.seeds import duplicate_seeds
from deflow_trl.threads import resolve_threads

__all__ = ["validate_config", "typed_config", "check_config", "resolve_device", "TrainSchema"]


# ----------------------------------------------------------------------------- schema (types only)
@dataclass
class AgentAppFields:
    """The agent fields that are not builder keywords: the app reads them itself (their one home)."""

    name: str = "deflow"  # the agent's label: run dirs runs/<name>/<dataset>/seed<seed>, logs
    kind: str = "deflow"  # which builder: deflow (make_deflow) | fql (make_fql); deflow_trl.app.agents.BUILDERS
    lr: float = 3e-4  # the learning rate of the run's one Adam (every parameter of the loss)
    tau: float = 0.005  # Polyak rate of the target critic (SoftUpdate)


def _schema_type(annotation: Any) -> Any:
    """The structured-config type for a builder annotation: int/float/str/bool as they are, a sequence of
    them as a ``List``, ``Optional`` of a plain type kept, anything else (``bool | str``, callables) ``Any``."""
    plain = (int, float, str, bool)
    if annotation in plain:
        return annotation
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (list, tuple, collections.abc.Sequence):  # Sequence[int], tuple[int, ...], list[float]
        items = {a for a in args if a is not Ellipsis}
        item = items.pop() if len(items) == 1 else Any
        return List[item if item in plain else Any]
    if origin in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        if type(None) in args and len(rest) == 1 and rest[0] in plain:
            return Optional[rest[0]]
    return Any  # bool | str, callables, modules, no annotation


def _builder_fields() -> list[tuple[str, Any, Any]]:
    """``(name, type, field)`` of every keyword that an agent config sets, from the builders' signatures
    (:func:`deflow_trl.app.agents.config_keywords`), make_deflow's first. A keyword of both builders takes
    make_deflow's default (``normalize_q_loss``: True; make_fql's is False): the schema default is never
    used, as :func:`typed_config` keeps only the keys the config has (``fql.yaml`` sets its own)."""
    out: dict[str, tuple[str, Any, Any]] = {}
    for make in BUILDERS.values():
        for name, param in config_keywords(make).items():
            if name in out:
                continue
            default = param.default
            if default is inspect.Parameter.empty:
                spec = field(default=MISSING)  # a required keyword: every config of that agent must set it
            elif isinstance(default, (list, tuple)):
                spec = field(default_factory=lambda d=default: list(d))
            else:
                spec = field(default=default)
            out[name] = (name, _schema_type(param.annotation), spec)
    return list(out.values())


# Agent fields: the app's own (AgentAppFields) plus the keywords of every builder (an agent uses its own
# subset). Types and defaults come from the builders' signatures: a new hyperparameter is a new builder keyword.
AgentSchema = make_dataclass("AgentSchema", _builder_fields(), bases=(AgentAppFields,), namespace={
    "__doc__": "Agent fields: :class:`AgentAppFields` + the keywords of make_deflow and make_fql.",
    "__module__": __name__,  # make_dataclass's module= is Python >= 3.12
})


@dataclass
class EnvSchema:
    name: str = "cube-single-play"
    default_task: int = 2
    target_divergence: float = 1e-3
    discount: float = 0.99
    q_agg: str = "mean"
    fql_alpha: float = 10.0
    # pixel suites (deflow_trl/configs/env/visual_*.yaml)
    pixels: bool = False
    frame_stack: int = 3
    encoder: str = "impala_small"
    augment_prob: float = 0.5
    crop_padding: int = 3
    offline_steps: int = 500_000  # read by +experiment=visual
    eval_interval: int = 100_000
    eval_episodes: int = 50


@dataclass
class DataSchema:
    dataset_dir: Optional[str] = None
    storage: str = "ram"
    download: bool = False
    cache: bool = True
    generate_if_missing: bool = False
    generate_episodes: int = 1000
    generate_workers: int = 2


@dataclass
class LoggerSchema:
    backend: str = "csv"
    project: str = "deflow_trl"
    video: bool = False


@dataclass
class OnlineSchema:
    freeze_flow: bool = False


@dataclass
class TrainSchema:
    env: EnvSchema = field(default_factory=EnvSchema)
    agent: AgentSchema = field(default_factory=AgentSchema)
    logger: LoggerSchema = field(default_factory=LoggerSchema)
    data: DataSchema = field(default_factory=DataSchema)
    online: OnlineSchema = field(default_factory=OnlineSchema)
    seed: int = 0
    seeds: Optional[List[int]] = None  # several seeds in one process (deflow_trl.app.seed_group)
    seeds_per_job: int = 1  # > 1: this job trains seeds seed .. seed + n - 1 together
    task: int = 2
    dataset: str = ""
    offline_steps: int = 1_000_000
    online_steps: int = 0
    batch_size: int = 256
    eval_interval: int = 100_000
    eval_episodes: int = 50
    eval_envs: int = 1
    eval_parallel: bool = False
    eval_async: bool = False
    log_interval: int = 5000
    save_interval: int = 50_000
    keep_checkpoints: int = 3
    resume: Any = "auto"
    overwrite: bool = False
    init_from: Optional[str] = None
    device: str = "cpu"
    threads: Any = "auto"  # auto | adaptive | a count (deflow_trl.threads.resolve_threads checks it)
    compile_update: bool = True
    progress: bool = True
    debug: bool = False


def _prune(typed: Any, given: Any) -> Any:
    """``typed`` restricted to the keys present in ``given`` (the schema adds no fields)."""
    if isinstance(typed, dict) and isinstance(given, dict):
        return {k: _prune(typed[k], v) for k, v in given.items()}
    return typed


def _unknown_key(full_key: str) -> str:
    """One line for a key the schema lacks, with the closest known key of its node."""
    parent, _, key = full_key.rpartition(".")
    node: Any = OmegaConf.structured(TrainSchema)
    for part in parent.split(".") if parent else ():
        node = node.get(part) if isinstance(node, DictConfig) else None
    known = list(node.keys()) if isinstance(node, DictConfig) else []
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {parent + '.' if parent else ''}{close[0]}?" if close else f"known: {', '.join(known)}"
    return f"{full_key}: unknown key ({hint})"


def typed_config(cfg: DictConfig) -> DictConfig:
    """``cfg`` resolved and typed by :class:`TrainSchema`; ``ConfigError`` naming the first bad key."""
    try:
        given = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"cannot resolve the config: {str(err).splitlines()[0]}") from None
    schema = OmegaConf.structured(TrainSchema)  # struct: an unknown key fails the merge
    try:
        merged = OmegaConf.merge(schema, given)
    except ConfigKeyError as err:
        raise ConfigError(_unknown_key(str(getattr(err, "full_key", "") or getattr(err, "key", "")))) from None
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        msg = str(err).splitlines()[0]
        raise ConfigError(f"{key}: {msg}" if key else msg) from None
    return OmegaConf.create(_prune(OmegaConf.to_container(merged), given))


# ----------------------------------------------------------------------------- values
def resolve_device(name: str) -> torch.device:
    """``auto`` → cuda if available else cpu; refuses unknown names and absent devices."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:<index>, got {name!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name} but CUDA is not available (use device=cpu or device=auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device={name} but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type != "cpu":
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:<index>, got {name!r}")
    return device


_LOGGER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def _check_agent(a: DictConfig) -> None:
    """Checks of the known agent fields that are present (another agent may lack some)."""

    if "hidden_sizes" in a:
        sizes = list(a.hidden_sizes)
        if not sizes or any(h < 1 for h in sizes):
            raise ConfigError(f"agent.hidden_sizes must be a non-empty list of widths >= 1, got {sizes}")
    for key in ("num_critics", "num_samples", "refine_iterations"):
        if key in a and a[key] < 1:
            raise ConfigError(f"agent.{key} must be >= 1, got {a[key]}")
    if "target_divergence" in a and not a.target_divergence > 0:
        raise ConfigError(f"agent.target_divergence (δ) must be > 0, got {a.target_divergence}")
    if "discount" in a and not 0 <= a.discount <= 1:
        raise ConfigError(f"agent.discount must be in [0, 1], got {a.discount}")
    if "q_agg" in a and a.q_agg not in ("mean", "min"):
        raise ConfigError(f"agent.q_agg must be 'mean' or 'min', got {a.q_agg!r}")
    if "solver" in a or "num_flow_steps" in a:
        try:
            check_solver(a.get("solver", "euler"), a.get("num_flow_steps", 10))
        except ValueError as err:
            raise ConfigError(f"agent: {err}") from None
    if "lr" in a and not a.lr > 0:
        raise ConfigError(f"agent.lr must be > 0, got {a.lr}")
    if "tau" in a and not 0 < a.tau <= 1:
        raise ConfigError(f"agent.tau must be in (0, 1], got {a.tau}")
    if "init_log_alpha" in a and not math.isfinite(a.init_log_alpha):
        raise ConfigError(f"agent.init_log_alpha must be finite, got {a.init_log_alpha}")
    if "sampling" in a:
        if a.sampling not in SAMPLING_MODES:
            raise ConfigError(f"agent.sampling must be one of {', '.join(SAMPLING_MODES)}, got {a.sampling!r}")
        if a.get("refine", True) is False and a.sampling != "plain":
            raise ConfigError(f"agent.refine=false (flow BC) acts with sampling=plain only, got {a.sampling!r}")
    if "backend" in a and a.backend not in BACKENDS:
        raise ConfigError(f"agent.backend must be one of {', '.join(BACKENDS)}, got {a.backend!r}")
    if "bf16_solves" in a:
        try:
            resolve_bf16_solves(a.bf16_solves)
        except ValueError as err:
            raise ConfigError(f"agent.{err}") from None


def _check_seeds(cfg: DictConfig) -> None:
    """``seeds`` (a list) and ``seeds_per_job`` (a count): one way of naming a group, its seeds valid and distinct."""
    seeds, per_job = cfg.get("seeds"), cfg.get("seeds_per_job", 1)
    if per_job < 1:
        raise ConfigError(f"seeds_per_job must be >= 1, got {per_job}")
    if seeds is None:
        if cfg.seed + per_job > 2**31:
            raise ConfigError(f"seeds_per_job={per_job} from seed={cfg.seed} runs past 2**31 - 1")
        return
    if per_job > 1:
        raise ConfigError(f"seeds={list(seeds)} and seeds_per_job={per_job} both name a group of seeds: give one")
    if len(seeds) == 0:
        raise ConfigError("seeds=[] is empty: give at least one seed (e.g. seeds=[0,1,2])")
    duplicates = duplicate_seeds(seeds)
    if duplicates:
        raise ConfigError(f"seeds={list(seeds)} repeats {duplicates}: each seed once")
    bad = [s for s in seeds if not 0 <= s < 2**31]
    if bad:
        raise ConfigError(f"seeds must be in [0, 2**31), got {bad}")


def check_config(cfg: DictConfig) -> None:
    """Every check that needs no data: one clear error per problem (``cfg`` already typed)."""

    _check_agent(cfg.agent)
    if not 0 <= cfg.seed < 2**31:
        raise ConfigError(f"seed must be in [0, 2**31), got {cfg.seed}")
    _check_seeds(cfg)
    if cfg.eval_episodes < 1:
        raise ConfigError(f"eval_episodes must be >= 1, got {cfg.eval_episodes}")
    if cfg.get("eval_envs", 1) < 1:
        raise ConfigError(f"eval_envs must be >= 1, got {cfg.eval_envs}")
    for key in ("batch_size", "eval_interval", "log_interval", "save_interval", "keep_checkpoints"):
        if cfg[key] < 1:
            raise ConfigError(f"{key} must be >= 1, got {cfg[key]}")
    if cfg.offline_steps < 0 or cfg.online_steps < 0 or cfg.offline_steps + cfg.online_steps < 1:
        raise ConfigError(
            f"offline_steps and online_steps must be >= 0 and not both 0, got {cfg.offline_steps} and {cfg.online_steps}")
    if cfg.resume not in ("auto", True, False):
        raise ConfigError(f"resume must be auto, true or false, got {cfg.resume!r}")
    if cfg.get("overwrite", False) and cfg.resume is True:
        raise ConfigError("overwrite=true starts the run afresh and resume=true requires a checkpoint: pick one")
    if cfg.task not in (1, 2, 3, 4, 5):
        raise ConfigError(f"task must be one of 1..5 (OGBench single-task ids), got {cfg.task!r}")
    try:
        parse_ogbench_name(cfg.dataset, pixels=bool(cfg.env.get("pixels", False)))
    except ValueError as err:
        raise ConfigError(f"unknown env/dataset {cfg.dataset!r}: {err}") from None
    d = cfg.data
    if d.storage not in ("ram", "memmap"):
        raise ConfigError(f"data.storage must be ram or memmap, got {d.storage!r}")
    if d.generate_episodes < 1 or d.generate_workers < 1:
        raise ConfigError(
            f"data.generate_episodes and data.generate_workers must be >= 1, got {d.generate_episodes}, {d.generate_workers}")
    backend = cfg.logger.backend
    if backend not in ("csv", "tensorboard", "wandb"):
        raise ConfigError(f"logger.backend must be csv, tensorboard or wandb, got {backend!r}")
    package = _LOGGER_PACKAGES.get(backend)
    if package and importlib.util.find_spec(package) is None:
        raise ConfigError(
            f"logger={backend} needs the {package} package, which is not installed: "
            f"pip install torch==2.13.0 {package}  (or use logger=csv)")
    device = resolve_device(cfg.device)
    if "backend" in cfg.agent:
        try:
            resolve_backend(cfg.agent.backend, device)  # e.g. triton on a CPU: refused now, not at the first action
        except RuntimeError as err:
            raise ConfigError(f"agent.backend={cfg.agent.backend}: {err}") from None
    try:
        resolve_threads(cfg.get("threads", "auto"))
    except ValueError as err:
        raise ConfigError(str(err)) from None


def validate_config(cfg: DictConfig) -> DictConfig:
    """Types then values (see the module docstring); returns the typed, resolved config."""
    typed = typed_config(cfg)
    check_config(typed)
    return typed
