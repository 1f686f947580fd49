"""The app's agents: one builder per agent config (``deflow_trl/configs/agent/*.yaml``).

An agent is a loss and a config, not a second app: every agent shares the
data, the critic, the behaviour flow, evaluation, checkpoints and logging.

* ``kind: deflow`` (``agent=deflow``; ``agent=flow_bc`` is the same with
  ``refine: false``): :func:`~deflow_trl.make.make_deflow`;
* ``kind: fql`` (``agent=fql``): :func:`~deflow_trl.fql.make_fql`.
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from deflow_trl.fql import make_fql
from deflow_trl.make import make_deflow

# make_deflow / make_fql keywords that each agent config provides.
DEFLOW_KEYS = (
    "hidden_sizes", "num_critics", "num_flow_steps", "solver", "discount", "target_divergence", "q_agg",
    "normalize_q_loss", "init_log_alpha", "sampling", "num_samples", "refine_iterations", "backend", "refine",
    "bf16_solves",
)
FQL_KEYS = (
    "hidden_sizes", "num_critics", "num_flow_steps", "solver", "discount", "q_agg", "alpha", "normalize_q_loss",
    "backend", "bf16_solves",
)
AGENT_KINDS = ("deflow", "fql")


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
    if kind == "fql":

        keys, make = FQL_KEYS, make_fql
    else:

        keys, make = DEFLOW_KEYS, make_deflow
    missing = [k for k in keys if k not in agent]
    if missing:
        raise ValueError(f"agent config {agent.get('name', kind)!r} lacks {', '.join(missing)}")
    kwargs = {k: agent[k] for k in keys}
    kwargs["hidden_sizes"] = tuple(kwargs["hidden_sizes"])
    return make(observation_dim, action_dim, device=device, **kwargs, **extra)
