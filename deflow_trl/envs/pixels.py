"""OGBench's pixel-based (``visual-``) single-task environments as TorchRL environments.

The policy must see at evaluation what it saw in training
(:mod:`deflow_trl.data.pixels`): ``observation`` = the last ``frame_stack`` 64×64 RGB
frames concatenated along channels, oldest first, uint8, channels-last —
``[64, 64, 3·frame_stack]`` (``[64, 64, 9]`` for the reference's 3 frames). At reset
the stack is filled with copies of the first frame, which is the training rule
("frames before the episode start are the episode's first frame"). The stacking is
TorchRL's :class:`~torchrl.envs.transforms.CatFrames` on top of :class:`VisualOGBenchEnv`.

:class:`VisualOGBenchEnv` is :class:`deflow_trl.envs.OGBenchEnv` (same reset/step/seed
semantics, ``success`` entry, time limits) with frames instead of state vectors: the
observation spec is ``Bounded(0, 255, [64, 64, 3], uint8)`` and every frame is checked
(size, dtype). It reuses ``OGBenchEnv``'s ``_reset``/``_step``/``_set_seed``, and so
relies on its attributes ``_env``, ``_np_rng``, ``_pending_seed`` and
``max_episode_steps`` (``tests/test_pixels.py`` exercises them with a fake renderer).

Rendering: OGBench renders each step with MuJoCo; without a display that needs EGL
(``MUJOCO_GL=egl``). :func:`ensure_headless_gl` selects it when nothing else was asked
for, even if ``mujoco`` was imported first. Software EGL on a CPU costs ≈ 0.3–0.6 s per
64×64 frame here, so a 50-episode evaluation of visual-cube-single (≤ 200 steps each)
takes up to ~1.5 h on CPU; use a GPU machine (hardware EGL) for real evaluations.

Examples:
    >>> from deflow_trl.envs.pixels import make_pixel_env
    >>> env = make_pixel_env("visual-cube-single-play-singletask-task1-v0", seed=0)  # doctest: +SKIP
    >>> td = env.rollout(2)                                                          # doctest: +SKIP
    >>> td["next", "observation"].shape, td["next", "observation"].dtype             # doctest: +SKIP
    (torch.Size([2, 64, 64, 9]), torch.uint8)
"""

from __future__ import annotations

import numpy as np
import torch
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase, TransformedEnv
from torchrl.envs.transforms import CatFrames

from deflow_trl.console import ensure_headless_gl
from deflow_trl.envs.names import DATASET_TYPES, known_env_ids, parse_ogbench_name
from deflow_trl.envs.ogbench import OGBenchEnv, _PrivateStream

__all__ = ["VisualOGBenchEnv", "make_pixel_env", "visual_env_id", "FRAME_SHAPE"]

# OGBench's visual envs render 64x64 RGB frames (ogbench.manipspace: visual_dict width/height).
FRAME_SHAPE = (64, 64, 3)


def visual_env_id(name: str) -> str:
    """Env id for a visual single-task dataset name or env id; ``ValueError`` listing the known ones otherwise.

    >>> visual_env_id("visual-scene-play-singletask-task1-v0")
    'visual-scene-singletask-task1-v0'
    """
    splits = name.split("-")
    if "singletask" in splits and splits[splits.index("singletask") - 1] in DATASET_TYPES:
        env_id = parse_ogbench_name(name, pixels=True).env_id
    else:
        env_id = name
    known = [k for k in known_env_ids(pixels=True) if "singletask" in k]
    if env_id not in known:
        hint = " (a state-based name: use deflow_trl.envs.make_ogbench_env)" if not name.startswith("visual-") else ""
        raise ValueError(
            f"Unknown visual OGBench single-task env {name!r}{hint}. Pass a visual single-task dataset name "
            f"('visual-cube-single-play-singletask-task1-v0') or one of these env ids: {', '.join(known)}"
        )
    return env_id


class VisualOGBenchEnv(OGBenchEnv):
    """One OGBench visual single-task environment; one 64×64×3 uint8 frame per step (no stacking).

    Args:
        name: visual single-task env id (``visual-cube-single-singletask-task1-v0``) or dataset
            name (``visual-cube-single-play-singletask-task1-v0``).
        seed: optional seed, as :meth:`set_seed`.
        device: device of the output tensors.
        max_episode_steps: override the registered time limit.
        frame_shape: expected (H, W, 3) of every rendered frame (OGBench: 64×64×3).
        gym_env: an already built gymnasium env to wrap instead of ``gymnasium.make(name)``
            (custom render settings, or a fake renderer in tests); ``name`` is still checked.
        **env_kwargs: passed to ``gymnasium.make``.

    Keys: ``observation`` [H, W, 3] uint8, ``success`` [1] bool, ``action`` [a] in [-1, 1],
    ``reward`` [1], ``done``/``terminated``/``truncated``. A frame of another shape or dtype
    raises ``ValueError``.
    """

    def __init__(self, name: str, seed: int | None = None, device="cpu", max_episode_steps: int | None = None,
                 frame_shape: tuple[int, int, int] = FRAME_SHAPE, gym_env=None, **env_kwargs):
        EnvBase.__init__(self, device=device, batch_size=torch.Size([]))  # OGBenchEnv.__init__ refuses visual ids
        self.env_id = visual_env_id(name)
        self.frame_shape = tuple(int(s) for s in frame_shape)
        if len(self.frame_shape) != 3 or self.frame_shape[-1] != 3:
            raise ValueError(f"frame_shape must be (H, W, 3), got {frame_shape}")
        if gym_env is None:
            import gymnasium
            import ogbench  # noqa: F401  (registers the envs)

            ensure_headless_gl()
            if max_episode_steps is not None:
                env_kwargs["max_episode_steps"] = max_episode_steps
            gym_env = gymnasium.make(self.env_id, disable_env_checker=True, **env_kwargs)
        self._env = gym_env
        spec = getattr(gym_env, "spec", None)
        self.max_episode_steps = max_episode_steps or getattr(spec, "max_episode_steps", None)
        self._np_rng = _PrivateStream(0)
        self._pending_seed: int | None = None
        self.observation_spec = Composite(
            observation=Bounded(0, 255, shape=self.frame_shape, dtype=torch.uint8, device=device),
            success=Categorical(2, shape=(1,), dtype=torch.bool, device=device),
        )
        self.action_spec = Bounded(-1.0, 1.0, shape=gym_env.action_space.shape, dtype=torch.float32, device=device)
        self.reward_spec = Unbounded(shape=(1,), dtype=torch.float32, device=device)
        flag = Categorical(2, shape=(1,), dtype=torch.bool, device=device)
        self.full_done_spec = Composite(done=flag, terminated=flag.clone(), truncated=flag.clone(), device=device)
        if seed is not None:
            self.set_seed(seed)

    def _obs(self, ob) -> torch.Tensor:
        ob = np.asarray(ob)
        if ob.dtype != np.uint8 or ob.shape != self.frame_shape:
            raise ValueError(
                f"{self.env_id}: rendered frame has shape {ob.shape} and dtype {ob.dtype}; expected "
                f"{self.frame_shape} uint8 (OGBench's visual envs render 64x64 RGB; was width/height overridden?)"
            )
        return torch.as_tensor(ob, device=self.device)


def make_pixel_env(name: str, seed: int | None = None, *, frame_stack: int = 3, device="cpu", **kwargs) -> TransformedEnv:
    """A visual OGBench single-task env whose ``observation`` is a ``[64, 64, 3·frame_stack]`` uint8 frame stack.

    Args:
        name: visual single-task dataset name or env id (see :class:`VisualOGBenchEnv`).
        seed: seeds the env (reset noise, action-space sampling).
        frame_stack: frames per observation; must equal the training data's
            (:func:`deflow_trl.data.pixels.make_pixel_replay_buffer`) and the encoder's ``in_channels / 3``.
        device: device of the output tensors.
        **kwargs: passed to :class:`VisualOGBenchEnv` (``max_episode_steps``, ``gym_env``, ...).

    Works with :func:`deflow_trl.envs.evaluation.evaluate`, ``env.rollout`` and TorchRL collectors.
    """
    if isinstance(frame_stack, bool) or not isinstance(frame_stack, int) or frame_stack < 1:
        raise ValueError(f"frame_stack must be an integer >= 1, got {frame_stack!r}")
    base = VisualOGBenchEnv(name, seed=seed, device=device, **kwargs)
    # padding="same": at reset every slot holds the first frame, as the dataset's episode-start rule.
    return TransformedEnv(base, CatFrames(N=frame_stack, dim=-1, in_keys=["observation"], out_keys=["observation"]))
