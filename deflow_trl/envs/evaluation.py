"""Evaluate a policy on an OGBench single-task environment, the way OGBench scores it.

An episode counts as a success when ``success`` is true at its **last** step (OGBench's
definition; single-task envs end an episode on success, so this is "solved before
the time limit"). The success rate is in [0, 1]; OGBench tables report it x100.

Episodes one at a time, or N at once. With ``num_envs=N > 1`` the episodes run on a
TorchRL ``SerialEnv`` (``parallel=False``: one process, the policy sees N observations per
call) or ``ParallelEnv`` (``parallel=True``: N worker processes step the envs at the same
time). A finished episode's env starts the next episode at once (a partial reset), and
envs without an episode left stop stepping (a partial step); returns come from TorchRL's
``RewardSum`` (``episode_reward``).

Reproducibility, and the same numbers batched or not: episode ``i`` of ``evaluate(...,
seed=s)`` always starts from ``env.reset(seed=env_seed(s, i))``, and a policy with a
``noise_key`` (:class:`~deflow_trl.actor.DeFlowActor`, ``FQLActor``) gets its latent noise
for that episode from its own ``torch.Generator`` seeded from ``(s, i)``; so each episode
gets the same start and the same noise whichever env slot runs it. The actions then agree to
float32 round-off (~1e-7: a matrix product over N rows sums in another order than over one),
and MuJoCo's contact dynamics can amplify that over a long episode into another outcome
(cube-single, 50 episodes of a trained actor: 15 vs 14 successes sequential vs ``SerialEnv(2)``;
docs/results.md). ``batch_invariant=True`` computes each env's action in its own policy call, as the
sequential run does: then the per-episode successes, returns and lengths are identical
sequentially, on a ``SerialEnv`` or on a ``ParallelEnv`` (tested), and only the env stepping
is batched. A policy
without ``noise_key`` draws from torch's global RNG, seeded with ``s`` inside a forked RNG
scope (the caller's state is untouched): reproducible for a fixed ``num_envs``, but its
episodes then depend on the batching. Reused env objects reproduce episodes to round-off
(~1e-13: MuJoCo/IK solver state OGBench does not reset), which does not change successes in
practice.

Video: :func:`record_episode` replays one evaluation episode (the same seed and noise, so
the same trajectory) on a rendering copy of the env and writes it through a TorchRL logger
with TorchRL's ``VideoRecorder`` (``CSVLogger``: ``<log_dir>/<exp_name>/videos/<tag>_<step>.pt``
or ``.mp4``). Rendering needs a headless OpenGL backend (``MUJOCO_GL=egl``, selected by
:func:`~deflow_trl.envs.pixels.ensure_headless_gl` when there is no display); software EGL
takes ≈ 0.4 s per 64×64 frame on a 2-core CPU, ≈ 80 s for a 200-step episode.

Examples:
    >>> import torch
    >>> from tensordict.nn import TensorDictModule
    >>> from deflow_trl.envs.evaluation import evaluate
    >>> still = TensorDictModule(lambda obs: torch.zeros(*obs.shape[:-1], 5), ["observation"], ["action"])
    >>> out = evaluate(still, "cube-single-play-singletask-task1-v0", num_episodes=2, seed=0, progress=False,
    ...                max_steps=10, num_envs=2)
    >>> out["success_rate"], out["lengths"]
    (0.0, [10, 10])
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable

import numpy as np
import torch
from tensordict import TensorDictBase
from torchrl.envs import EnvBase, TransformedEnv
from torchrl.envs.transforms import RewardSum
from torchrl.envs.utils import ExplorationType, set_exploration_type, step_mdp

from deflow_trl.console import ensure_headless_gl
from deflow_trl.envs.ogbench import make_batched_env, make_ogbench_env
from deflow_trl.envs.pixels import make_pixel_env  # pixels pull in the renderer: only when asked

__all__ = ["evaluate", "record_episode", "episode_seeds", "make_eval_env"]

_NOISE_KEY = "_evaluation_noise"  # the latent key lent to a DeFlowActor built without a noise_key


def episode_seeds(seed: int, episode: int) -> tuple[int, int]:
    """``(env_seed, noise_seed)`` of episode ``episode`` in an evaluation with ``seed``.

    Derived with numpy's ``SeedSequence`` from ``(seed, episode)``, so evaluations with
    nearby seeds share no episode (``seed + episode`` would: seed 0's episode 1 = seed 1's episode 0).

    >>> episode_seeds(0, 0) == episode_seeds(0, 0), episode_seeds(0, 1) == episode_seeds(1, 0)
    (True, False)
    """
    env_seed, noise_seed = np.random.SeedSequence([int(seed), int(episode)]).generate_state(2)
    return int(env_seed), int(noise_seed)


class _EpisodeNoise:
    """Writes the policy's latent noise for each env slot from the generator of the episode it runs."""

    def __init__(self, policy, key, shape: tuple[int, ...], seed: int, num_slots: int, row_by_row: bool = False):
        self.policy, self.key, self.shape, self.seed, self.row_by_row = policy, key, shape, seed, row_by_row
        self.generators: list[torch.Generator | None] = [None] * num_slots

    def start(self, slot: int, episode: int) -> None:
        self.generators[slot] = torch.Generator().manual_seed(episode_seeds(self.seed, episode)[1])

    def stop(self, slot: int) -> None:
        self.generators[slot] = None

    def __call__(self, td: TensorDictBase) -> TensorDictBase:
        if self.key is not None:
            noise = [torch.randn(self.shape, generator=g) if g is not None else torch.zeros(self.shape)
                     for g in self.generators]
            td.set(self.key, torch.stack(noise) if td.batch_dims else noise[0])
        if self.row_by_row and td.batch_dims:  # one unbatched call per env, as a sequential evaluation makes
            return torch.stack([self.policy(row) for row in td.unbind(0)], 0)
        return self.policy(td)


def _noise_shape(policy) -> tuple[int, ...]:
    """The latent ``x_0`` of one state for a DeFlow-style actor: ``[N, a]`` for best-of-N, else ``[a]``."""
    if getattr(policy, "refine", True) and getattr(policy, "sampling", "plain") == "best_of_n":
        return (int(policy.num_samples), int(policy.action_dim))
    return (int(policy.action_dim),)


@contextlib.contextmanager
def _lent_noise_key(policy):
    """The policy's noise key (lending one to an actor built without it), or ``None`` if it takes no noise."""
    if not hasattr(policy, "noise_key") or not hasattr(policy, "action_dim"):
        yield None
        return
    if policy.noise_key is not None:
        yield policy.noise_key
        return
    policy.noise_key = _NOISE_KEY
    try:
        yield _NOISE_KEY
    finally:
        policy.noise_key = None


def _make_env(env_or_name, num_envs: int, parallel: bool) -> tuple[EnvBase, bool]:
    """``(env, built_here)``: the env the episodes run on, batched when ``num_envs > 1``."""
    if isinstance(env_or_name, str):
        return make_ogbench_env(env_or_name, num_envs=num_envs, parallel=parallel), True
    if isinstance(env_or_name, EnvBase):
        batch = tuple(env_or_name.batch_size)
        if batch == () and num_envs > 1:
            raise ValueError(f"num_envs={num_envs} needs a batched env, a name or a factory; got an unbatched env "
                             "(pass make_env, a function returning one env, to batch it)")
        if len(batch) > 1 or (len(batch) == 1 and num_envs not in (1, batch[0])):
            raise ValueError(f"evaluate() runs an unbatched env or a batch of envs [N]; got batch_size {batch} "
                             f"with num_envs={num_envs}")
        return env_or_name, False
    if callable(env_or_name):
        if num_envs > 1:
            return make_batched_env(env_or_name, num_envs, parallel=parallel), True
        return env_or_name(), True
    raise TypeError(f"env_or_name must be an OGBench single-task name, a TorchRL env or a function returning one; "
                    f"got {type(env_or_name).__name__}")


def _check_keys(env: EnvBase) -> EnvBase:
    """The env reports ``success``; returns come from ``RewardSum`` (added here to an unbatched env)."""
    keys = env.observation_spec.keys()
    if "success" not in keys:
        raise ValueError("the env has no 'success' observation entry; build it with deflow_trl.envs.make_ogbench_env")
    if "episode_reward" not in keys:
        if env.batch_size != torch.Size([]):
            raise ValueError("a batched env needs RewardSum ('episode_reward') inside each sub-env: build it with "
                             "deflow_trl.envs.make_batched_env or make_ogbench_env(num_envs=N)")
        env = TransformedEnv(env, RewardSum())
    return env


def evaluate(
    policy: Callable[[TensorDictBase], TensorDictBase],
    env_or_name: EnvBase | str | Callable[[], EnvBase],
    num_episodes: int = 50,
    seed: int = 0,
    progress: bool = True,
    *,
    max_steps: int | None = None,
    exploration_type: ExplorationType | None = None,
    num_envs: int = 1,
    parallel: bool = False,
    batch_invariant: bool = False,
) -> dict:
    """Run ``num_episodes`` episodes and return OGBench's metrics.

    Args:
        policy: reads ``"observation"``, writes ``"action"`` (a ``TensorDictModule``, an actor, ...).
            With a ``noise_key`` attribute (DeFlow/FQL actors), its latent noise is per episode (module doc).
        env_or_name: a single-task name (built with :func:`~deflow_trl.envs.make_ogbench_env` and
            closed here), a function returning one unbatched env (batched here when ``num_envs > 1``),
            or a TorchRL env with a ``success`` entry: unbatched, or batched ``[N]`` (then with
            ``episode_reward`` inside each sub-env, as :func:`~deflow_trl.envs.make_batched_env` builds).
            Its reset must take a ``seed`` keyword (``GymEnv`` and this package's envs do).
        num_episodes: episodes in all.
        seed: episode ``i`` is seeded from ``(seed, i)`` (:func:`episode_seeds`).
        progress: tqdm bar over episodes.
        max_steps: step cap per episode (default: the env's time limit, else 1000).
        exploration_type: if given, run the policy under ``set_exploration_type(exploration_type)``.
        num_envs: episodes run at once (1: one after another). A batched env sets it.
        parallel: with ``num_envs > 1`` and a name or function: ``ParallelEnv`` (one process per env)
            instead of ``SerialEnv``.
        batch_invariant: compute each env's action in its own (unbatched) policy call, as a
            sequential evaluation does, instead of one call for all envs. Float32 matrix products
            round differently for different batch sizes (~1e-7), which MuJoCo's contact dynamics can
            amplify over a 200-step episode into another outcome (module doc); with this flag the
            batched episodes are bit for bit the sequential ones, and only the env stepping is batched.

    Returns:
        ``success_rate``, ``return_mean``, ``length_mean``, ``num_episodes`` and the per-episode
        lists ``successes``, ``returns``, ``lengths`` (in episode order).
    """
    if isinstance(num_episodes, bool) or not isinstance(num_episodes, int) or num_episodes < 1:
        raise ValueError(f"num_episodes must be an integer >= 1, got {num_episodes!r}")
    if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"max_steps must be an integer >= 1 or None, got {max_steps!r}")
    env, own_env = _make_env(env_or_name, num_envs, parallel)
    try:
        env = _check_keys(env)
        if max_steps is None:
            max_steps = _time_limit(env)
        from tqdm import tqdm

        mode = set_exploration_type(exploration_type) if exploration_type is not None else contextlib.nullcontext()
        bar = tqdm(total=num_episodes, desc="evaluate", unit="ep", disable=not progress)
        with torch.random.fork_rng(devices=[]), torch.no_grad(), mode, _lent_noise_key(policy) as key, bar:
            torch.manual_seed(seed)  # the fallback for policies without noise_key
            slots = env.batch_size[0] if env.batch_dims else 1
            noisy = _EpisodeNoise(policy, key, _noise_shape(policy) if key is not None else (), seed, slots,
                                  row_by_row=batch_invariant)
            run = _run_batched if env.batch_dims else _run_sequential
            episodes = run(env, noisy, num_episodes, seed, max_steps, bar.update)
    finally:
        if own_env:
            env.close(raise_if_closed=False)
    successes, returns, lengths = zip(*episodes)
    n = float(num_episodes)
    return {
        "success_rate": sum(successes) / n,
        "return_mean": sum(returns) / n,
        "length_mean": sum(lengths) / n,
        "num_episodes": num_episodes,
        "successes": list(successes),
        "returns": list(returns),
        "lengths": list(lengths),
    }


def _time_limit(env: EnvBase) -> int:
    """The env's registered time limit (a ``SerialEnv`` answers one per worker), else 1000.

    A ``ParallelEnv`` does not forward attributes: 1000, a cap only, as its envs end their
    episodes at their own time limit (``truncated``) all the same.
    """
    from torchrl.envs import ParallelEnv
    from torchrl.envs.batched_envs import BatchedEnvBase

    if isinstance(env, ParallelEnv):
        return 1000
    if isinstance(env, BatchedEnvBase) and env.is_closed:
        env.start()  # its attributes are its workers'
    limit = getattr(env, "max_episode_steps", None)
    if isinstance(limit, (list, tuple)):
        limit = max((x for x in limit if isinstance(x, int)), default=None)
    return int(limit) if isinstance(limit, int) and limit > 0 else 1000


def _outcome(last_next: TensorDictBase, length: int) -> tuple[bool, float, int]:
    """``(success, return, length)`` from an episode's last ``"next"`` entry."""
    return bool(last_next["success"].item()), float(last_next["episode_reward"].item()), int(length)


def _run_sequential(env, noisy: _EpisodeNoise, num_episodes, seed, max_steps, done_one) -> list:
    episodes = []
    for i in range(num_episodes):
        noisy.start(0, i)
        start = env.reset(seed=episode_seeds(seed, i)[0])
        traj = env.rollout(max_steps, noisy, auto_reset=False, tensordict=start, break_when_any_done=True)
        episodes.append(_outcome(traj["next"][-1], traj.shape[0]))
        done_one(1)
    return episodes


def _run_batched(env, noisy: _EpisodeNoise, num_episodes, seed, max_steps, done_one) -> list:
    """Episodes on a batched env [N]: each env runs episodes until none is left; one policy call per step."""
    n = env.batch_size[0]
    episodes: list = [None] * num_episodes
    slot_episode = list(range(n))  # the episode each env runs (>= num_episodes: none, idle)
    active = torch.tensor([i < num_episodes for i in range(n)])
    for j in range(min(n, num_episodes)):
        noisy.start(j, j)
    # Idle envs (more envs than episodes) are reset once with any seed, then never stepped.
    td = env.reset(list_of_kwargs=[{"seed": episode_seeds(seed, i)[0]} for i in slot_episode])
    steps = torch.zeros(n, dtype=torch.long)
    next_episode = min(n, num_episodes)
    while active.any():
        td = noisy(td)
        if not active.all():
            td.set("_step", active.clone())  # a partial step: finished envs stay where they are
        td = env.step(td)
        nxt = td["next"]
        steps += active.long()
        ended = active & (nxt["done"].reshape(n) | (steps >= max_steps))
        restart = torch.zeros(n, dtype=torch.bool)
        for j in ended.nonzero().flatten().tolist():
            episodes[slot_episode[j]] = _outcome(nxt[j], steps[j])
            done_one(1)
            steps[j] = 0
            if next_episode < num_episodes:
                slot_episode[j], restart[j] = next_episode, True
                noisy.start(j, next_episode)
                next_episode += 1
            else:
                active[j] = False
                noisy.stop(j)
        td = step_mdp(td, keep_other=True, exclude_action=False).exclude("_step")
        if restart.any():
            td.set("_reset", restart.reshape(env.full_done_spec["done"].shape))
            td = env.reset(td, list_of_kwargs=[{"seed": episode_seeds(seed, i)[0]} for i in slot_episode])
    return episodes


def mp4_writer_error() -> str | None:
    """Why TorchRL's ``CSVLogger`` cannot write ``.mp4`` here (None when it can).

    It encodes with torchcodec's ``VideoEncoder``; the package may be absent, or installed but
    unloadable (its libraries need FFmpeg and a matching torch build: ``OSError`` on import).
    Probing the import is the only reliable test: the package's presence is not enough.
    """
    try:
        from torchcodec.encoders import VideoEncoder  # noqa: F401
    except Exception as err:  # ImportError, or OSError/RuntimeError from its native libraries
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        return f"torchcodec cannot be imported ({type(err).__name__}: {first})"
    return None


def _mp4_or_pt(logger) -> None:
    """A ``CSVLogger`` set to mp4 (``get_logger("csv")`` does) that cannot write mp4 here: save ``.pt``."""
    import logging

    experiment = getattr(logger, "experiment", None)
    if getattr(experiment, "video_format", None) != "mp4":
        return
    why = mp4_writer_error()
    if why is not None:
        logging.getLogger(__name__).warning(
            "%s; the evaluation video is saved as a uint8 tensor (.pt) instead of .mp4 "
            "(for mp4: pip install 'torchcodec>=0.10' with FFmpeg's libraries present)", why)
        experiment.video_format = "pt"


def record_episode(
    policy: Callable[[TensorDictBase], TensorDictBase],
    name: str,
    logger,
    seed: int = 0,
    episode: int = 0,
    *,
    tag: str = "evaluation",
    step: int | None = None,
    max_steps: int | None = None,
    size: int = 64,
) -> dict:
    """Replay episode ``episode`` of ``evaluate(policy, name, seed=seed)`` with rendering; write its video.

    The env is :func:`~deflow_trl.envs.make_ogbench_env` with ``render()`` frames of
    ``size × size`` (TorchRL's ``PixelRenderTransform``) recorded by TorchRL's ``VideoRecorder``
    into ``logger`` (any TorchRL logger: ``CSVLogger`` writes ``<exp>/videos/<tag>_<step>.mp4``, or
    ``.pt`` — a ``[1, T, 3, H, W]`` uint8 tensor — when set so or when torchcodec cannot be imported).
    The same env seed and policy noise as the evaluation give the same trajectory for a
    policy with ``noise_key`` (module doc). Returns the episode's ``success``, ``return``,
    ``length`` and ``frames`` (reset frame included).

    Needs a headless GL backend without a display (``MUJOCO_GL=egl``; set here when possible).
    """
    from torchrl.record import PixelRenderTransform, VideoRecorder

    ensure_headless_gl()
    _mp4_or_pt(logger)
    env = make_ogbench_env(name, width=size, height=size)
    recorder = VideoRecorder(logger, tag=tag, in_keys=["pixels"], skip=1)
    env.append_transform(PixelRenderTransform(out_keys=["pixels"], preproc=functools.partial(np.array, copy=True)))
    env.append_transform(recorder)
    try:
        if max_steps is None:
            max_steps = _time_limit(env)
        with torch.random.fork_rng(devices=[]), torch.no_grad(), _lent_noise_key(policy) as key:
            noisy = _EpisodeNoise(policy, key, _noise_shape(policy) if key is not None else (), seed, 1)
            noisy.start(0, episode)
            recorder.obs = []  # drop the frame the spec check rendered at construction
            start = env.reset(seed=episode_seeds(seed, episode)[0])
            traj = env.rollout(max_steps, noisy, auto_reset=False, tensordict=start, break_when_any_done=True)
        frames = len(recorder.obs)
        recorder.dump(step=step)
    finally:
        env.close()
    success, ret, length = _outcome(traj["next"][-1], traj.shape[0])
    return {"success": success, "return": ret, "length": length, "frames": frames}


def make_eval_env(dataset: str, seed: int, frame_stack: int | None = None) -> EnvBase:
    """The single-task env of ``dataset``: state-based, or frame-stacked pixels when ``frame_stack`` is given.

    Examples:
        >>> env = make_eval_env("cube-single-play-singletask-task1-v0", seed=0)
        >>> env.action_spec.shape
        torch.Size([5])
        >>> env.close()
    """
    if frame_stack is not None:
        return make_pixel_env(dataset, seed=seed, frame_stack=frame_stack)
    return make_ogbench_env(dataset, seed=seed)
