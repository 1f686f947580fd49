"""The app's agents: one builder per agent config (``deflow_trl/configs/agent/*.yaml``).

An agent is a loss and a config, not a second app: every agent shares the
data, the critic, the behaviour flow, evaluation, checkpoints and logging.

* ``kind: deflow`` (``agent=deflow``; ``agent=flow_bc`` is the same with
  ``refine: false``): :func:`~deflow_trl.make.make_deflow`;
* ``kind: fql`` (``agent=fql``): :func:`~deflow_trl.fql.make_fql`.

One home per hyperparameter: the builder's signature (name, type, default and
the inline comment) is the definition. The keys an agent config must provide
(:data:`DEFLOW_KEYS`, :data:`FQL_KEYS`) and the typed agent schema
(:class:`~deflow_trl.app.config_schema.AgentSchema`) are read from it;
``tests/test_config_home.py`` checks that the YAMLs' values are the signature's
defaults (or a listed, deliberate difference).

Examples:
    >>> "num_critics" in DEFLOW_KEYS and "alpha" in FQL_KEYS and "alpha" not in DEFLOW_KEYS
    True
    >>> sorted(set(config_keywords(make_deflow)) & set(APP_SUPPLIED))
    []
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch
from omegaconf import DictConfig

from deflow_trl.fql import make_fql
from deflow_trl.make import make_deflow

BUILDERS: dict[str, Callable] = {"deflow": make_deflow, "fql": make_fql}  # agent.kind → builder
AGENT_KINDS = tuple(BUILDERS)

# Builder keywords that no agent config sets: the app supplies them (or leaves the builder's default).
APP_SUPPLIED = {
    "device": "the run's device, build_agent's argument",
    "encoder": "pixel suites: cfg.env.encoder, through build_agent's **extra (train.py, evaluator.py)",
    "action_spec": "left at None: OGBench's actions are in [-1, 1]",
    "reduction": "left at 'mean': the app's updates take the batch mean",
    "freeze_flow": "online.freeze_flow, set on the loss when the online phase starts (train.py)",
}


def config_keywords(make: Callable) -> dict[str, inspect.Parameter]:
    """``make``'s keyword-only parameters that an agent config sets (all but :data:`APP_SUPPLIED`), in
    signature order; annotations evaluated (the builders' modules use postponed annotations)."""
    params = inspect.signature(make, eval_str=True).parameters.values()
    return {p.name: p for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in APP_SUPPLIED}


# make_deflow / make_fql keywords that each agent config provides.
DEFLOW_KEYS = tuple(config_keywords(make_deflow))
FQL_KEYS = tuple(config_keywords(make_fql))


def agent_kind(agent: DictConfig) -> str:
    kind = agent.get("kind", "deflow")
    if kind not in AGENT_KINDS:
        raise ValueError(f"agent.kind must be one of {', '.join(AGENT_KINDS)}, got {kind!r}")
    return kind


def trains_flow_only(agent: DictConfig) -> bool:
    """The flow-BC baseline: only the behaviour flow is trained (no critic, no policy term)."""
    return agent_kind(agent) == "deflow" and not agent.get("refine", True)


def build_agent(agent: DictConfig, observation_dim: int, action_dim: int, device: torch.device, **extra):
    """``(policy, loss)`` for the agent config; ``extra`` keywords go to the builder
    (e.g. ``encoder=`` for pixels)."""
    kind = agent_kind(agent)
    make = BUILDERS[kind]
    keys = FQL_KEYS if kind == "fql" else DEFLOW_KEYS
    missing = [k for k in keys if k not in agent]
    if missing:
        raise ValueError(f"agent config {agent.get('name', kind)!r} lacks {', '.join(missing)}")
    kwargs = {k: agent[k] for k in keys}
    kwargs["hidden_sizes"] = tuple(kwargs["hidden_sizes"])
    return make(observation_dim, action_dim, device=device, **kwargs, **extra)
