"""OGBench single-task environments as TorchRL environments.

:class:`OGBenchEnv` is a small ``EnvBase`` around ``gymnasium.make(<singletask id>)``
rather than a ``GymWrapper``: it fixes what the generic wrapper gets wrong for
OGBench without extra transforms:

- observations are float32 (OGBench returns float64; the datasets are float32);
- ``success`` (from ``info``) is an observation entry, so a rollout carries
  ``("next", "success")`` at every step and evaluation reads the last one;
- OGBench draws part of its reset noise from numpy's *global* RNG (mazes) and
  from the action space's RNG; this env keeps a private copy of the global state
  and seeds the action space, so ``set_seed`` makes rollouts reproducible and
  other code's use of ``np.random`` cannot change them;
- ``reset`` is always called before stepping a finished episode (an OGBench env
  stepped before its first reset answers with ``reset()``'s 2-tuple).

Episodes end on success (``terminated``, OGBench's ``terminate_at_goal``) or at the
registered time limit (``truncated``): 200 steps for cube-single, 500 for
cube-double and puzzle, 750 for scene, 1000 for mazes.

Examples:
    >>> from deflow_trl.envs import make_ogbench_env
    >>> env = make_ogbench_env("cube-single-play-singletask-task1-v0", seed=0)
    >>> td = env.rollout(3)  # random actions
    >>> td["next", "observation"].dtype, td["next", "success"].shape
    (torch.float32, torch.Size([3, 1]))
"""

from __future__ import annotations

import contextlib
import functools

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from deflow_trl.data.names import DATASET_TYPES, known_env_ids, parse_ogbench_name

__all__ = ["OGBenchEnv", "make_ogbench_env", "singletask_env_id"]


def singletask_env_id(name: str) -> str:
    """Env id for a single-task dataset name or env id; ``ValueError`` listing known ids otherwise.

    >>> singletask_env_id("scene-play-singletask-task2-v0")
    'scene-singletask-task2-v0'
    """
    splits = name.split("-")
    if "singletask" in splits and splits[splits.index("singletask") - 1] in DATASET_TYPES:
        env_id = parse_ogbench_name(name).env_id
    else:
        env_id = name
    known = [k for k in known_env_ids() if "singletask" in k]
    if env_id not in known:
        raise ValueError(
            f"Unknown OGBench single-task env {name!r}. Pass a single-task dataset name "
            f"('cube-single-play-singletask-task1-v0') or one of these env ids: {', '.join(known)}"
        )
    return env_id


class OGBenchEnv(EnvBase):
    """One OGBench single-task environment.

    Args:
        name: single-task env id (``cube-single-singletask-task1-v0``) or dataset name
            (``cube-single-play-singletask-task1-v0``).
        seed: optional seed, as :meth:`set_seed`.
        device: device of the output tensors.
        max_episode_steps: override the registered time limit.
        **env_kwargs: passed to ``gymnasium.make``.

    Keys: ``observation`` [o] float32, ``success`` [1] bool, ``action`` [a] in [-1, 1],
    ``reward`` [1] (0 on success, negative otherwise), ``done``/``terminated``/``truncated``.
    """

    def __init__(self, name: str, seed: int | None = None, device="cpu", max_episode_steps: int | None = None,
                 **env_kwargs):
        import gymnasium
        import ogbench  # noqa: F401  (registers the envs)

        super().__init__(device=device, batch_size=torch.Size([]))
        self.env_id = singletask_env_id(name)
        if max_episode_steps is not None:
            env_kwargs["max_episode_steps"] = max_episode_steps
        self._env = gymnasium.make(self.env_id, disable_env_checker=True, **env_kwargs)
        self.max_episode_steps = self._env.spec.max_episode_steps
        # Private stream for OGBench's uses of the global numpy RNG.
        self._np_global_state = np.random.RandomState(0).get_state()
        self._pending_seed: int | None = None
        obs_dim = self._env.observation_space.shape
        act_dim = self._env.action_space.shape
        self.observation_spec = Composite(
            observation=Unbounded(shape=obs_dim, dtype=torch.float32, device=device),
            success=Categorical(2, shape=(1,), dtype=torch.bool, device=device),
        )
        self.action_spec = Bounded(-1.0, 1.0, shape=act_dim, dtype=torch.float32, device=device)
        self.reward_spec = Unbounded(shape=(1,), dtype=torch.float32, device=device)
        flag = Categorical(2, shape=(1,), dtype=torch.bool, device=device)
        self.full_done_spec = Composite(done=flag, terminated=flag.clone(), truncated=flag.clone(), device=device)
        if seed is not None:
            self.set_seed(seed)

    @contextlib.contextmanager
    def _private_global_rng(self):
        outside = np.random.get_state()
        np.random.set_state(self._np_global_state)
        try:
            yield
        finally:
            self._np_global_state = np.random.get_state()
            np.random.set_state(outside)

    def _obs(self, ob) -> torch.Tensor:
        return torch.as_tensor(np.asarray(ob, dtype=np.float32), device=self.device)

    def _flag(self, value) -> torch.Tensor:
        return torch.tensor([bool(value)], device=self.device)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        with self._private_global_rng():
            # gymnasium reseeds only when given a seed: pass it once, after set_seed.
            ob, _ = self._env.reset(seed=self._pending_seed)
        self._pending_seed = None
        f = self._flag(False)
        return TensorDict(
            {"observation": self._obs(ob), "success": f, "done": f, "terminated": f.clone(), "truncated": f.clone()},
            batch_size=[], device=self.device,
        )

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get("action").detach().cpu().numpy().astype(np.float64)
        with self._private_global_rng():
            ob, reward, terminated, truncated, info = self._env.step(action)
        return TensorDict(
            {
                "observation": self._obs(ob),
                "reward": torch.tensor([float(reward)], dtype=torch.float32, device=self.device),
                "success": self._flag(info.get("success", False)),
                "terminated": self._flag(terminated),
                "truncated": self._flag(truncated),
                "done": self._flag(terminated or truncated),
            },
            batch_size=[], device=self.device,
        )

    def _set_seed(self, seed: int | None) -> None:
        if seed is None:
            return
        self._pending_seed = int(seed)
        self._env.action_space.seed(int(seed))
        self._np_global_state = np.random.RandomState(int(seed) % 2**32).get_state()

    def close(self, *, raise_if_closed: bool = True):
        self._env.close()
        super().close(raise_if_closed=raise_if_closed)


def make_ogbench_env(name: str, seed: int | None = None, *, num_envs: int = 1, device="cpu", **kwargs) -> EnvBase:
    """A TorchRL env for an OGBench single-task name; ``num_envs > 1`` gives a ``ParallelEnv``.

    Works with ``env.rollout(max_steps, policy)`` and ``torchrl.collectors.Collector``.
    With ``num_envs > 1`` the sub-envs get seeds derived from ``seed`` by TorchRL.
    """
    if num_envs == 1:
        return OGBenchEnv(name, seed=seed, device=device, **kwargs)
    from torchrl.envs import EnvCreator, ParallelEnv

    singletask_env_id(name)  # fail here, not in a worker process
    env = ParallelEnv(num_envs, EnvCreator(functools.partial(OGBenchEnv, name, device=device, **kwargs)))
    if seed is not None:
        env.set_seed(seed)
    return env
