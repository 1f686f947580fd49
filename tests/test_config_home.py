"""One home per agent hyperparameter: the builder's signature (``make_deflow``, ``make_fql``).

The agent YAMLs (``deflow_trl/configs/agent/*.yaml``) set the values; the keys the app passes to the builder
(``DEFLOW_KEYS``/``FQL_KEYS``) and the typed schema (``AgentSchema``) are read from the signatures. These tests
check that the YAMLs agree with the signatures: every key has a home, every value is the signature's default
unless listed below as a deliberate difference, and every field keeps its comment.
"""
import dataclasses
import inspect
import os
from typing import Any, List

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import deflow_trl
from deflow_trl.app.agents import APP_SUPPLIED, BUILDERS, DEFLOW_KEYS, FQL_KEYS, build_agent, config_keywords
from deflow_trl.app.config_schema import AgentAppFields, AgentSchema
from deflow_trl.fql import make_fql
from deflow_trl.make import make_deflow

CONFIG_DIR = os.path.join(os.path.dirname(deflow_trl.__file__), "configs")
AGENT_DIR = os.path.join(CONFIG_DIR, "agent")

# Builder keywords no agent config sets; train.py/evaluator.py supply encoder= (pixels) and device, and set
# loss.freeze_flow from online.freeze_flow when the online phase starts; action_spec and reduction keep the defaults.
EXPECTED_APP_SUPPLIED = {"device", "encoder", "action_spec", "reduction", "freeze_flow"}
APP_ONLY = {f.name for f in dataclasses.fields(AgentAppFields)}  # name, kind, lr, tau

# agent config → (builder, keys interpolated from the suite's env config, deliberate differences from the signature).
AGENTS = {
    "deflow": (make_deflow, {"discount", "target_divergence", "q_agg"}, {
        # The library default is eager (no compile wait, any device, nothing to install); the app trains for
        # hours, so it takes the fastest backend the machine has (auto: triton on CUDA, else compile; backends.py).
        "backend": "auto",
    }),
    "flow_bc": (make_deflow, {"discount", "target_divergence", "q_agg"}, {
        "backend": "auto",  # as deflow's
        "refine": False,  # the baseline itself: flow-matching behaviour cloning, no refiner (agent/flow_bc.yaml)
    }),
    "fql": (make_fql, {"discount", "q_agg", "alpha"}, {  # alpha: FQL tunes it per suite (env fql_alpha)
        "backend": "auto",  # as deflow's
    }),
}


def _agent_config(name):
    """The composed (unresolved) agent node of ``agent=<name>``, as the app sees it (flow_bc's defaults applied)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=[f"agent={name}"]).agent


def _keyword_only(make):
    return {n for n, p in inspect.signature(make).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def test_every_agent_config_is_tested():
    assert sorted(f[:-5] for f in os.listdir(AGENT_DIR) if f.endswith(".yaml")) == sorted(AGENTS)


def test_agent_keys_are_the_builders_keywords_minus_the_app_supplied_ones():
    assert set(APP_SUPPLIED) == EXPECTED_APP_SUPPLIED
    assert set(DEFLOW_KEYS) == _keyword_only(make_deflow) - EXPECTED_APP_SUPPLIED
    assert set(FQL_KEYS) == _keyword_only(make_fql) - EXPECTED_APP_SUPPLIED
    assert EXPECTED_APP_SUPPLIED <= _keyword_only(make_deflow) & _keyword_only(make_fql)  # no stale exclusion


def test_the_agent_schema_is_the_builders_keywords_plus_the_app_only_fields():
    fields = {f.name: f for f in dataclasses.fields(AgentSchema)}
    assert set(fields) == APP_ONLY | set(DEFLOW_KEYS) | set(FQL_KEYS)
    assert not APP_ONLY & (_keyword_only(make_deflow) | _keyword_only(make_fql))  # an app field is no keyword
    # A keyword of both builders has one schema type: the builders must annotate it alike.
    deflow, fql = config_keywords(make_deflow), config_keywords(make_fql)
    for key in set(deflow) & set(fql):
        assert deflow[key].annotation == fql[key].annotation, key
    assert fields["num_critics"].type is int and fields["alpha"].type is float
    assert fields["hidden_sizes"].type == List[int]  # Sequence[int]: a list type OmegaConf accepts
    assert fields["bf16_solves"].type is Any  # bool | str (true | false | auto): no OmegaConf union type


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_every_agent_yaml_key_has_one_home(name):
    """Each key is the agent's own builder keyword or an app-only field; each builder keyword is set."""
    make, _, _ = AGENTS[name]
    agent = _agent_config(name)
    keys = set(config_keywords(make))
    assert set(agent) - keys - APP_ONLY == set(), "a key that neither the builder nor the app reads"
    assert keys - set(agent) == set(), "a builder keyword the config lacks (build_agent would refuse it)"
    assert BUILDERS[agent.get("kind", "deflow")] is make


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_agent_yaml_values_are_the_builder_defaults(name):
    make, per_suite, deliberate = AGENTS[name]
    agent = _agent_config(name)
    params = config_keywords(make)
    interpolated = {k for k in agent if OmegaConf.is_interpolation(agent, k)}
    assert interpolated == per_suite
    for key in per_suite:  # set by the suite, e.g. ${env.discount}: checked by test_fidelity's reference table
        assert OmegaConf.to_container(agent, resolve=False)[key].startswith("${env."), key
    values = OmegaConf.to_container(agent, resolve=False)
    for key in sorted(set(params) - per_suite):
        default = params[key].default
        default = list(default) if isinstance(default, tuple) else default
        if key in deliberate:
            assert values[key] == deliberate[key] != default, f"{key}: the listed difference is stale"
        else:
            assert values[key] == default and type(values[key]) is type(default), \
                f"agent/{name}.yaml {key}: {values[key]!r}, {make.__name__}'s default {default!r}"


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_every_agent_yaml_field_has_a_comment(name):
    with open(os.path.join(AGENT_DIR, f"{name}.yaml")) as f:
        lines = [line for line in f if line[:1].isalpha() and not line.startswith("defaults:")]
    assert lines and [line for line in lines if "#" not in line] == []


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_the_shipped_agent_configs_build(name):
    """build_agent passes exactly the derived keys: each shipped agent builds (small widths, CPU)."""
    import torch

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[f"agent={name}", "agent.hidden_sizes=[8]", "agent.backend=eager"])
    policy, loss = build_agent(cfg.agent, 4, 2, torch.device("cpu"))
    assert type(policy).__name__ == ("FQLActor" if name == "fql" else "DeFlowActor")
    assert policy.refine is (name != "flow_bc") and len(list(loss.parameters())) > 0
