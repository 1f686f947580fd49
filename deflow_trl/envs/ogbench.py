"""OGBench single-task environments as TorchRL environments: ``GymEnv`` + transforms.

:func:`make_ogbench_env` builds TorchRL's :class:`~torchrl.envs.GymEnv` on the OGBench
single-task id and adds what OGBench needs on top, each a TorchRL part:

- :class:`~torchrl.envs.transforms.DoubleToFloat`: observations float32 (OGBench returns
  float64; the datasets are float32);
- :class:`SuccessReader`, an info-dict reader: ``success`` (from ``info``) is an
  observation entry ``[1]`` bool, so a rollout carries ``("next", "success")`` at every
  step. TorchRL's ``default_info_dict_reader(["success"])`` cannot do it: OGBench's
  ``info["success"]`` is a Python ``bool``, which it fails to write;
- :class:`~torchrl.envs.transforms.StepCounter` (``step_count``) and
  :class:`~torchrl.envs.transforms.RewardSum` (``episode_reward``, the return so far).

What TorchRL cannot do is the one thin wrapper here, :class:`PrivateNumpyRNG` (a
``gymnasium.Wrapper`` under the ``GymEnv``): OGBench draws part of its reset noise from
numpy's *global* RNG (mazes: ``np.random.uniform``) and from the action space's RNG
(scene: ``action_space.sample()``). The wrapper gives each env a private copy of the
global state, reseeded with the env (``reset(seed=s)``, ``set_seed(s)``), and seeds the
action space, so seeding reproduces rollouts and the user's ``np.random`` stream is
neither read nor advanced by the env.

Seeding: ``set_seed(s)`` (TorchRL's ``GymEnv``) resets the env with ``seed=s``; a reset
can also take the seed itself, ``env.reset(seed=s)``, and a batched env one seed per
worker, ``env.reset(list_of_kwargs=[{"seed": s0}, {"seed": s1}, ...])``: this is how
:func:`deflow_trl.envs.evaluation.evaluate` seeds each episode.

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
import warnings
from typing import Any, Callable

import gymnasium
import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase, GymEnv, TransformedEnv
from torchrl.envs.gym_like import BaseInfoDictReader
from torchrl.envs.transforms import Compose, DoubleToFloat, RewardSum, StepCounter

from deflow_trl.envs.names import DATASET_TYPES, known_env_ids, parse_ogbench_name

__all__ = ["make_ogbench_env", "make_batched_env", "singletask_env_id", "OGBenchGymEnv", "PrivateNumpyRNG",
           "SuccessReader", "OGBenchEnv"]


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


class _PrivateStream:
    """A private copy of numpy's global RNG state, swapped in around calls that use ``np.random``."""

    def __init__(self, seed: int = 0) -> None:
        self.seed(seed)

    def seed(self, seed: int) -> None:
        self.state = np.random.RandomState(int(seed) % 2**32).get_state()

    @contextlib.contextmanager
    def active(self):
        outside = np.random.get_state()
        np.random.set_state(self.state)
        try:
            yield
        finally:
            self.state = np.random.get_state()
            np.random.set_state(outside)


class PrivateNumpyRNG(gymnasium.Wrapper):
    """A ``gymnasium.Wrapper``: the wrapped env's uses of ``np.random`` draw from a private stream.

    ``reset(seed=s)`` reseeds that stream and the action space with ``s`` (gymnasium seeds
    only the env's own ``np_random``); ``reset()`` and ``step`` continue the stream. The
    caller's global numpy state is restored after every call.

    >>> import gymnasium, numpy as np, ogbench  # doctest: +SKIP
    >>> env = PrivateNumpyRNG(gymnasium.make("pointmaze-medium-singletask-task1-v0"))  # doctest: +SKIP
    """

    def __init__(self, env) -> None:
        super().__init__(env)
        self._stream = _PrivateStream(0)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self._stream.seed(seed)
            self.env.action_space.seed(int(seed))
        with self._stream.active():
            return self.env.reset(seed=seed, options=options)

    def step(self, action):
        with self._stream.active():
            return self.env.step(action)


class SuccessReader(BaseInfoDictReader):
    """Writes OGBench's ``info["success"]`` (a Python ``bool``; absent → ``False``) as ``success`` [1] bool."""

    def __init__(self, key: str = "success") -> None:
        self.key = key
        self._spec = Composite({key: Categorical(2, shape=(1,), dtype=torch.bool)})

    def __call__(self, info_dict: dict[str, Any], tensordict: TensorDictBase) -> TensorDictBase:
        tensordict.set(self.key, torch.tensor([bool(info_dict.get(self.key, False))], device=tensordict.device))
        return tensordict

    @property
    def info_spec(self) -> Composite:
        return self._spec


class OGBenchGymEnv(GymEnv):
    """TorchRL's ``GymEnv`` on an OGBench id, under :class:`PrivateNumpyRNG`, with :class:`SuccessReader`.

    Use :func:`make_ogbench_env` (it adds the float32 cast, step counter and return): this
    class only puts the numpy-RNG wrapper in ``GymEnv``'s build, so the env still rebuilds
    from its id (``EnvCreator``, ``ParallelEnv`` workers). ``env_id`` and
    ``max_episode_steps`` (the registered time limit) are attributes.
    """

    def __init__(self, env_name: str, **kwargs) -> None:
        import ogbench  # noqa: F401  (registers the envs)

        super().__init__(env_name, **kwargs)
        self.set_info_dict_reader(SuccessReader())

    def _build_env(self, env_name: str, **kwargs):
        return PrivateNumpyRNG(super()._build_env(env_name, **kwargs))

    @property
    def env_id(self) -> str:
        return self.env_name

    @property
    def max_episode_steps(self) -> int | None:
        return self._env.spec.max_episode_steps


def make_ogbench_env(name: str, seed: int | None = None, *, num_envs: int = 1, device="cpu",
                     parallel: bool = True, **kwargs) -> EnvBase:
    """A TorchRL env for an OGBench single-task name (``GymEnv`` + transforms; see the module doc).

    Args:
        name: single-task dataset name (``cube-single-play-singletask-task1-v0``) or env id
            (``cube-single-singletask-task1-v0``); anything else raises ``ValueError`` listing the ids.
        seed: seeds the env (``set_seed``; for ``num_envs > 1`` TorchRL derives the workers' seeds).
        num_envs: ``> 1`` gives a batched env of that many copies (:func:`make_batched_env`).
        device: device of the output tensors.
        parallel: with ``num_envs > 1``, a ``ParallelEnv`` (one process per env) if true,
            else a ``SerialEnv`` (one process).
        **kwargs: passed to ``gymnasium.make`` (e.g. ``max_episode_steps``, ``width``/``height``
            of ``render()``).

    Keys: ``observation`` [o] float32, ``success`` [1] bool, ``step_count`` [1] int64,
    ``episode_reward`` [1], ``action`` [a] in [-1, 1], ``reward`` [1] (0 on success,
    negative otherwise), ``done``/``terminated``/``truncated`` [1] bool.

    Works with ``env.rollout(max_steps, policy)`` and ``torchrl.collectors.Collector``.
    """
    if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
    env_id = singletask_env_id(name)  # fails here, not in a worker process
    if num_envs > 1:
        env = make_batched_env(functools.partial(make_ogbench_env, env_id, device=device, **kwargs), num_envs,
                               parallel=parallel)
    else:
        env = TransformedEnv(OGBenchGymEnv(env_id, device=device, **kwargs),
                             Compose(DoubleToFloat(), StepCounter(), RewardSum()))
    if seed is not None:
        env.set_seed(seed)
    return env


def make_batched_env(make_env: Callable[[], EnvBase], num_envs: int, *, parallel: bool = True) -> EnvBase:
    """``num_envs`` copies of ``make_env()`` as one batched env (``ParallelEnv`` or ``SerialEnv``).

    Each copy gets TorchRL's ``RewardSum`` (``episode_reward``) if it has none, inside the
    copy, so partial resets and partial steps of the batched env keep every return apart.
    ``make_env`` must be picklable for ``parallel=True`` (a module-level function or a
    ``functools.partial`` of one).

    >>> import functools
    >>> env = make_batched_env(functools.partial(make_ogbench_env, "cube-single-play-singletask-task1-v0"), 2,
    ...                        parallel=False)
    >>> env.batch_size
    torch.Size([2])
    """
    from torchrl.envs import EnvCreator, ParallelEnv, SerialEnv

    if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 2:
        raise ValueError(f"num_envs must be an integer >= 2 for a batched env, got {num_envs!r}")
    factory = functools.partial(_with_return, make_env)
    if parallel:
        return ParallelEnv(num_envs, EnvCreator(factory))
    return SerialEnv(num_envs, factory)


def _with_return(make_env: Callable[[], EnvBase]) -> EnvBase:
    env = make_env()
    if not isinstance(env, EnvBase) or env.batch_size != torch.Size([]):
        raise ValueError(f"make_env must return one unbatched TorchRL env, got {type(env).__name__} "
                         f"with batch_size {tuple(getattr(env, 'batch_size', ()))}")
    if "episode_reward" not in env.observation_spec.keys():
        env = TransformedEnv(env, RewardSum())
    return env


class OGBenchEnv(EnvBase):
    """Deprecated for state-based envs (use :func:`make_ogbench_env`); the base of
    :class:`deflow_trl.envs.pixels.VisualOGBenchEnv`, which reuses its reset/step/seed.

    A hand-written ``EnvBase`` around ``gymnasium.make(<singletask id>)`` with the same keys
    as :func:`make_ogbench_env` minus ``step_count``/``episode_reward``. ``reset(seed=s)``
    reseeds it as ``set_seed(s)`` does, then resets.
    """

    def __init__(self, name: str, seed: int | None = None, device="cpu", max_episode_steps: int | None = None,
                 **env_kwargs):
        import gymnasium
        import ogbench  # noqa: F401  (registers the envs)

        warnings.warn("OGBenchEnv is deprecated for state-based envs: use deflow_trl.envs.make_ogbench_env "
                      "(TorchRL's GymEnv with transforms)", DeprecationWarning, stacklevel=2)
        super().__init__(device=device, batch_size=torch.Size([]))
        self.env_id = singletask_env_id(name)
        if max_episode_steps is not None:
            env_kwargs["max_episode_steps"] = max_episode_steps
        self._env = gymnasium.make(self.env_id, disable_env_checker=True, **env_kwargs)
        self.max_episode_steps = self._env.spec.max_episode_steps
        self._np_rng = _PrivateStream(0)  # OGBench draws from numpy's global RNG: keep its stream private
        self._pending_seed: int | None = None
        self.observation_spec = Composite(
            observation=Unbounded(shape=self._env.observation_space.shape, dtype=torch.float32, device=device),
            success=Categorical(2, shape=(1,), dtype=torch.bool, device=device),
        )
        self.action_spec = Bounded(-1.0, 1.0, shape=self._env.action_space.shape, dtype=torch.float32, device=device)
        self.reward_spec = Unbounded(shape=(1,), dtype=torch.float32, device=device)
        flag = Categorical(2, shape=(1,), dtype=torch.bool, device=device)
        self.full_done_spec = Composite(done=flag, terminated=flag.clone(), truncated=flag.clone(), device=device)
        if seed is not None:
            self.set_seed(seed)

    def _private_global_rng(self):
        return self._np_rng.active()

    def _obs(self, ob) -> torch.Tensor:
        return torch.as_tensor(np.asarray(ob, dtype=np.float32), device=self.device)

    def _flag(self, value) -> torch.Tensor:
        return torch.tensor([bool(value)], device=self.device)

    def _reset(self, tensordict: TensorDictBase | None = None, seed: int | None = None, **kwargs) -> TensorDictBase:
        if seed is not None:
            self._set_seed(seed)
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
        self._np_rng.seed(seed)

    def close(self, *, raise_if_closed: bool = True):
        self._env.close()
        super().close(raise_if_closed=raise_if_closed)
