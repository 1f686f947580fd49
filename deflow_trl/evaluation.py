"""Evaluate a policy on an OGBench single-task environment, the way OGBench scores it.

An episode counts as a success when ``success`` is true at its **last** step (OGBench's
definition; single-task envs end an episode on success, so this is "solved before
the time limit"). The success rate is in [0, 1]; OGBench tables report it x100.

Reproducibility: the env is seeded once with ``seed`` and torch's RNG is set to
``seed`` inside a forked RNG scope (the caller's RNG state is untouched), so the
same policy and seed give the same episodes, bit for bit, on the same machine, when
``evaluate`` builds the env from a name. Re-seeding an env object that already ran
episodes reproduces them to round-off (~1e-13: MuJoCo/IK solver state OGBench does
not reset), which does not change successes in practice.

Examples:
    >>> import torch
    >>> from tensordict.nn import TensorDictModule
    >>> from deflow_trl.evaluation import evaluate
    >>> still = TensorDictModule(lambda obs: torch.zeros(*obs.shape[:-1], 5), ["observation"], ["action"])
    >>> out = evaluate(still, "cube-single-play-singletask-task1-v0", num_episodes=1, seed=0, progress=False,
    ...                max_steps=10)
    >>> out["success_rate"], out["lengths"]
    (0.0, [10])
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from tensordict import TensorDictBase
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type

from deflow_trl.envs import make_ogbench_env

__all__ = ["evaluate"]


def evaluate(
    policy: Callable[[TensorDictBase], TensorDictBase],
    env_or_name: EnvBase | str,
    num_episodes: int = 50,
    seed: int = 0,
    progress: bool = True,
    *,
    max_steps: int | None = None,
    exploration_type: ExplorationType | None = None,
) -> dict:
    """Run ``num_episodes`` episodes and return OGBench's metrics.

    Args:
        policy: reads ``"observation"``, writes ``"action"`` (a ``TensorDictModule``, an actor, ...).
        env_or_name: an unbatched TorchRL env with a ``success`` entry (e.g. :class:`~deflow_trl.envs.OGBenchEnv`)
            or a single-task name for :func:`~deflow_trl.envs.make_ogbench_env` (built and closed here).
        num_episodes: episodes, run one after another on the same seeded env.
        seed: seeds the env and torch's RNG (inside ``torch.random.fork_rng``).
        progress: tqdm bar over episodes.
        max_steps: step cap per episode (default: the env's time limit, else 1000).
        exploration_type: if given, run the policy under ``set_exploration_type(exploration_type)``.

    Returns:
        ``success_rate``, ``return_mean``, ``length_mean``, ``num_episodes`` and the per-episode
        lists ``successes``, ``returns``, ``lengths``.
    """
    if num_episodes < 1:
        raise ValueError(f"num_episodes must be >= 1, got {num_episodes}")
    own_env = isinstance(env_or_name, str)
    env = make_ogbench_env(env_or_name) if own_env else env_or_name
    if env.batch_size != torch.Size([]):
        raise ValueError(f"evaluate() runs one unbatched env; got batch_size {tuple(env.batch_size)}")
    if ("next", "success") not in env.full_observation_spec.keys(True) and "success" not in env.observation_spec.keys():
        raise ValueError("the env has no 'success' observation entry; build it with deflow_trl.envs.make_ogbench_env")
    if max_steps is None:
        max_steps = getattr(env, "max_episode_steps", None) or 1000

    from tqdm import tqdm

    successes, returns, lengths = [], [], []
    mode = set_exploration_type(exploration_type) if exploration_type is not None else contextlib.nullcontext()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad(), mode:
            torch.manual_seed(seed)
            env.set_seed(seed)
            for _ in tqdm(range(num_episodes), desc="evaluate", unit="ep", disable=not progress):
                traj = env.rollout(max_steps, policy, auto_reset=True, break_when_any_done=True)
                successes.append(bool(traj["next", "success"][-1].item()))
                returns.append(float(traj["next", "reward"].sum().item()))
                lengths.append(int(traj.shape[0]))
    finally:
        if own_env:
            env.close()
    n = float(num_episodes)
    return {
        "success_rate": sum(successes) / n,
        "return_mean": sum(returns) / n,
        "length_mean": sum(lengths) / n,
        "num_episodes": num_episodes,
        "successes": successes,
        "returns": returns,
        "lengths": lengths,
    }
