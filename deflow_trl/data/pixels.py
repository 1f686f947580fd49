"""OGBench's pixel-based (``visual-``) datasets in a TorchRL replay buffer, as the reference trains on them.

The files are OGBench's official ``.npz`` pair (downloaded, or regenerated with
``python -m deflow_trl.data.generate --env visual-cube-single-play-v0``): ``observations``
uint8 ``[N, 64, 64, 3]`` (one frame per row, the trajectory's last frame included),
``actions``, ``terminals`` (1 on each trajectory's last row), and ``qpos``/``qvel``
(``button_states``) for single-task relabelling.

**Storage: every frame once.** The buffer holds one row per *frame* (uint8; 12,288
bytes per 64×64×3 frame, so ≈ 12 GB per 1M frames: use ``storage="memmap"`` for the
official sets), with the transition that starts at that frame (``action`` and the
``next`` reward/flags; a trajectory's last row has none and is never sampled). Next
observations and stacks are never stored: a batch gathers them from neighbouring rows.

**Frame stacking at sampling time** (the reference's rule, FQL ``utils/datasets.py``):
for the transition at frame ``t`` of an episode starting at frame ``s``,

* ``observation``         = frames ``[max(t-2, s), max(t-1, s), t]``,
* ``("next", "observation")`` = frames ``[max(t-1, s), t, t+1]``,

concatenated along channels, oldest first: ``[B, 64, 64, 9]`` uint8 for 3 frames.
:class:`FrameStackSampler` draws a transition and returns the ``frame_stack + 1`` row
indices; :class:`StackFrames` turns the ``[B, frame_stack + 1]`` rows into the batch.

**Augmentation** (:class:`RandomCrop`, on the batch, after the batch is moved to the
training device): with probability 0.5 *per batch*, each image is edge-padded by 3
pixels and cropped back to 64×64 at a per-sample random offset — the same offset for a
sample's observation and next observation (the reference's ``augment``). The buffer
crops a sample's ``frame_stack + 1`` frames with its offset before stacking them, which
is the same thing with fewer bytes moved; uint8 stays uint8.

The batch has the state pipeline's keys (:mod:`deflow_trl.data.ogbench`): ``observation``,
``action``, ``("next", "observation" / "reward" / "terminated" / "truncated" / "done")``,
with single-task rewards and terminals from OGBench's own relabelling (computed on the
state twin of the task, so loading never renders), plus ``index`` (the ``[B, frame_stack + 1]``
rows used).

Examples:
    >>> import numpy as np, tempfile, os
    >>> from deflow_trl.data.pixels import make_pixel_replay_buffer
    >>> d = tempfile.mkdtemp()
    >>> n = 12  # two trajectories of 6 frames (5 transitions each), random pixels
    >>> np.savez(os.path.join(d, "visual-cube-single-play-v0.npz"),
    ...          observations=np.random.randint(0, 256, (n, 64, 64, 3), dtype=np.uint8),
    ...          actions=np.zeros((n, 5), np.float32), terminals=np.array([0, 0, 0, 0, 0, 1] * 2, bool))
    >>> rb = make_pixel_replay_buffer("visual-cube-single-play-v0", batch_size=4, dataset_dir=d)
    >>> batch = rb.sample()
    >>> batch["observation"].shape, batch["observation"].dtype, batch["next", "observation"].shape
    (torch.Size([4, 64, 64, 9]), torch.uint8, torch.Size([4, 64, 64, 9]))
"""

from __future__ import annotations

import os
import zipfile
from typing import Iterator, Literal, Sequence

import numpy as np
import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.data import LazyMemmapStorage, LazyTensorStorage, TensorDictReplayBuffer
from torchrl.data.replay_buffers.samplers import Sampler
from torchrl.envs.transforms import Compose, DeviceCastTransform, Transform

from deflow_trl.data.files import (
    checked_actions,
    download_official,
    missing_file_error,
    npz_headers,
    relabel_singletask,
)
from deflow_trl.envs.names import VISUAL_PREFIX, OGBenchName, parse_ogbench_name
from deflow_trl.errors import DatasetError
from deflow_trl.paths import default_dataset_dir

__all__ = [
    "FRAME_SHAPE",
    "BYTES_PER_FRAME",
    "visual_dataset_path",
    "load_visual_dataset",
    "make_pixel_replay_buffer",
    "pixel_replay_buffer_from_rows",
    "frame_stack_indices",
    "stack_frames",
    "random_crop",
    "FrameStackSampler",
    "StackFrames",
    "RandomCrop",
]

FRAME_SHAPE = (64, 64, 3)  # OGBench's visual envs: 64x64 RGB
BYTES_PER_FRAME = int(np.prod(FRAME_SHAPE))  # uint8: 12,288 B, ≈ 12.3 GB per 1M frames


# ----------------------------------------------------------------------------- stacking and cropping
def frame_stack_indices(t: torch.Tensor, episode_start: torch.Tensor, frame_stack: int) -> torch.Tensor:
    """Rows ``[t-S+1, ..., t, t+1]`` clamped below at each episode's first frame: ``[B, S + 1]``.

    ``t``: frame rows of the sampled transitions (never a trajectory's last frame);
    ``episode_start``: the first frame row of each one's episode. Columns ``:S`` are the
    observation's frames, ``1:`` the next observation's.

    >>> frame_stack_indices(torch.tensor([5, 6, 9]), torch.tensor([5, 5, 5]), 3).tolist()
    [[5, 5, 5, 6], [5, 5, 6, 7], [7, 8, 9, 10]]
    """
    offsets = torch.arange(-(frame_stack - 1), 2, device=t.device)
    return torch.maximum(t[:, None] + offsets, episode_start[:, None])


def stack_frames(frames: torch.Tensor) -> torch.Tensor:
    """``[B, S, H, W, C]`` -> ``[B, H, W, S·C]``, oldest frame first (the reference's channel concat)."""
    return torch.cat(frames.unbind(1), dim=-1)  # 4× faster than permute+reshape for uint8 on CPU


def _shift_edge(x: torch.Tensor, d: int, dim: int) -> torch.Tensor:
    """``out[i] = x[clamp(i + d, 0, n - 1)]`` along ``dim``: a shift with edge replication (two contiguous copies)."""
    if d == 0:
        return x
    n = x.shape[dim]
    edge = list(x.shape)
    edge[dim] = abs(d)
    if d > 0:
        return torch.cat([x.narrow(dim, d, n - d), x.narrow(dim, n - 1, 1).expand(edge)], dim)
    return torch.cat([x.narrow(dim, 0, 1).expand(edge), x.narrow(dim, 0, n + d)], dim)


def random_crop(images: torch.Tensor, offsets: torch.Tensor, padding: int) -> torch.Tensor:
    """Edge-pad ``images`` [B, ..., H, W, C] by ``padding``, crop H×W at ``offsets`` [B, 2] (row, col) in [0, 2·padding].

    The reference's ``jnp.pad(img, mode='edge')`` + ``dynamic_slice``; offset ``padding`` is the
    identity. Every image of a sample (all ``...`` entries, e.g. its stacked frames) gets the
    sample's offset. Done without padding, as edge-replicating shifts of the samples that share
    an offset (at most (2·padding + 1)² groups): uint8 stays uint8, any device, contiguous copies.
    """
    h, w = images.shape[-3], images.shape[-2]
    if not 0 <= padding < min(h, w):
        raise ValueError(f"crop padding must be in [0, {min(h, w)}) for {h}x{w} images, got {padding}")
    span = 2 * padding + 1
    offsets = offsets.cpu()
    codes = offsets[:, 0] * span + offsets[:, 1]
    rows_dim, cols_dim = images.ndim - 3, images.ndim - 2
    out = torch.empty_like(images)
    for code in codes.unique().tolist():
        r, c = divmod(int(code), span)
        sel = torch.nonzero(codes == code).squeeze(1).to(images.device)
        crop = _shift_edge(_shift_edge(images.index_select(0, sel), r - padding, rows_dim), c - padding, cols_dim)
        out.index_copy_(0, sel, crop)
    return out


def _check_frame_stack(frame_stack) -> int:
    if isinstance(frame_stack, bool) or not isinstance(frame_stack, (int, np.integer)) or frame_stack < 1:
        raise ValueError(f"frame_stack must be an integer >= 1, got {frame_stack!r}")
    return int(frame_stack)


class FrameStackSampler(Sampler):
    """Uniform over transitions; returns the ``[B, frame_stack + 1]`` frame rows each one needs.

    Args:
        trajectory_end: bool ``[N]`` over the buffer's rows, True on each trajectory's last frame
            (OGBench's ``terminals``); the last row must be one.
        frame_stack: frames per observation (reference: 3).
        generator: optional ``torch.Generator`` (CPU) for reproducible batches.

    The episode bookkeeping is fixed at construction: the buffer must hold exactly these
    ``N`` rows (sampling from a storage of another length raises ``RuntimeError``), so
    online extension of a pixel buffer is not supported yet.
    """

    def __init__(self, trajectory_end: torch.Tensor, frame_stack: int = 3, generator: torch.Generator | None = None):
        super().__init__()
        ends = torch.as_tensor(trajectory_end).reshape(-1).bool()
        if ends.numel() < 2 or not bool(ends[-1]):
            raise DatasetError("trajectory_end must mark the last row as a trajectory end and have >= 2 rows")
        self.frame_stack = _check_frame_stack(frame_stack)
        self.generator = generator
        n = ends.numel()
        is_start = torch.cat([torch.ones(1, dtype=torch.bool), ends[:-1]])
        self.episode_start = torch.cummax(torch.where(is_start, torch.arange(n), 0), 0).values
        self.transitions = torch.nonzero(~ends).squeeze(-1)  # rows that start a transition
        if self.transitions.numel() == 0:
            raise DatasetError("no transitions: every trajectory has a single frame")
        self.num_rows = n

    def sample(self, storage, batch_size: int) -> tuple[torch.Tensor, dict]:
        if len(storage) != self.num_rows:
            raise RuntimeError(
                f"FrameStackSampler was built for {self.num_rows} frame rows but the storage holds {len(storage)}; "
                "a pixel buffer cannot grow (online extension is not supported yet)"
            )
        pick = torch.randint(self.transitions.numel(), (batch_size,), generator=self.generator)
        t = self.transitions[pick]
        return frame_stack_indices(t, self.episode_start[t], self.frame_stack), {}

    def _empty(self) -> None:
        pass

    def dumps(self, path) -> None:  # the bookkeeping is rebuilt from the dataset
        ...

    def loads(self, path) -> None:
        ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        return


class StackFrames(Transform):
    """``[B, S + 1]`` frame rows (from :class:`FrameStackSampler`) -> a ``[B]`` transition batch.

    ``observation`` = rows ``:S`` stacked along channels, ``("next", "observation")`` = rows ``1:``;
    every other entry (action, reward, flags, index) is taken from row ``S - 1`` (frame ``t``).
    """

    def __init__(self, frame_stack: int = 3, pixels_key: str = "pixels"):
        super().__init__(in_keys=[], out_keys=[])
        self.frame_stack = _check_frame_stack(frame_stack)
        self.pixels_key = pixels_key

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        s = self.frame_stack
        if tensordict.ndim != 2 or tensordict.shape[1] != s + 1:
            raise ValueError(
                f"StackFrames(frame_stack={s}) expects rows of shape [B, {s + 1}] (FrameStackSampler with the same "
                f"frame_stack), got batch shape {tuple(tensordict.shape)}"
            )
        pixels = tensordict.get(self.pixels_key)
        out = tensordict[:, s - 1].exclude(self.pixels_key)
        out.set("observation", stack_frames(pixels[:, :s]))
        out.set(("next", "observation"), stack_frames(pixels[:, 1:]))
        return out


class RandomCrop(Transform):
    """Random-shift augmentation of a pixel batch (the reference's ``augment``): edge-pad, crop, same offset per sample.

    Args:
        padding: edge padding in pixels (reference: 3); offsets are uniform in ``[0, 2·padding]``².
        prob: probability that a *batch* is augmented (reference ``p_aug``: 0.5); all or none of its samples.
        keys: image entries ``[B, ..., H, W, C]`` cropped with the same per-sample offsets (the
            buffer crops its ``pixels`` rows ``[B, S + 1, H, W, 3]`` before :class:`StackFrames`).
        generator: optional CPU ``torch.Generator`` for the coin and the offsets.

    Runs on the batch's device (put a :class:`~torchrl.envs.transforms.DeviceCastTransform` first).
    """

    def __init__(self, padding: int = 3, prob: float = 0.5,
                 keys: Sequence = ("observation", ("next", "observation")), generator: torch.Generator | None = None):
        super().__init__(in_keys=[], out_keys=[])
        if not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"augmentation probability must be in [0, 1], got {prob}")
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"crop padding must be an integer >= 0, got {padding!r}")
        self.padding, self.prob, self.keys, self.generator = padding, float(prob), list(keys), generator

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        if self.prob == 0.0 or self.padding == 0 or float(torch.rand((), generator=self.generator)) >= self.prob:
            return tensordict
        first = tensordict.get(self.keys[0])
        offsets = torch.randint(0, 2 * self.padding + 1, (first.shape[0], 2), generator=self.generator)
        for key in self.keys:
            tensordict.set(key, random_crop(tensordict.get(key), offsets, self.padding))
        return tensordict


# ----------------------------------------------------------------------------- files
def visual_dataset_path(name: str, dataset_dir: str | None = None, split: Literal["train", "val"] = "train",
                        dataset_path: str | None = None) -> str:
    """Path of the ``split`` file of visual dataset ``name`` (as :func:`deflow_trl.data.ogbench_dataset_path`)."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    if dataset_path is not None:
        train = os.path.expanduser(dataset_path)
    else:
        stem = parse_ogbench_name(name, pixels=True).file_stem
        train = os.path.join(os.path.expanduser(dataset_dir) if dataset_dir else default_dataset_dir(), f"{stem}.npz")
    return train if split == "train" else train[: -len(".npz")] + "-val.npz"


def _check_visual_file(path: str, parsed: OGBenchName, frame_shape: tuple[int, int, int]) -> int:
    """Shapes/dtypes from the ``.npy`` headers (nothing big is read); returns the number of frame rows."""
    headers = npz_headers(path)
    required = ["observations", "actions", "terminals"]
    if parsed.singletask:
        required.append("qpos")
        if parsed.suite in ("scene", "puzzle"):
            required.append("button_states")
    missing = [k for k in required if k not in headers]
    if missing:
        raise DatasetError(f"{path}: missing arrays {missing} (has {sorted(headers)}); not an OGBench dataset file")
    shape, dtype = headers["observations"]
    if len(shape) == 2:
        raise DatasetError(
            f"{path}: 'observations' is {shape} {dtype} — state vectors, not frames: this is a state-based dataset "
            f"loaded as the visual {parsed.dataset_name!r}. Load state data with deflow_trl.data.load_ogbench_dataset "
            "under its state name (without 'visual-'), or regenerate the visual one: "
            f"python -m deflow_trl.data.generate --env {parsed.file_stem}"
        )
    if len(shape) != 4 or tuple(shape[1:]) != tuple(frame_shape):
        raise DatasetError(
            f"{path}: 'observations' has shape {shape}; visual OGBench frames are [N, {', '.join(map(str, frame_shape))}]"
        )
    if np.dtype(dtype) != np.uint8:
        raise DatasetError(f"{path}: 'observations' has dtype {dtype}; visual OGBench frames are uint8 (0..255)")
    n = shape[0]
    for k in required:
        if headers[k][0][:1] != (n,):
            raise DatasetError(f"{path}: {k!r} has shape {headers[k][0]}, expected {n} rows like 'observations'")
    if n < 2:
        raise DatasetError(f"{path}: needs at least 2 frames, got {n}")
    return n


def _npy_chunks(path: str, key: str, chunk_rows: int) -> Iterator[np.ndarray]:
    """Rows of array ``key`` of an ``.npz``, ``chunk_rows`` at a time, without loading the whole array."""
    from numpy.lib import format as npy

    try:
        with zipfile.ZipFile(path) as zf, zf.open(f"{key}.npy") as f:
            version = npy.read_magic(f)
            reader = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
            shape, fortran, dtype = reader(f)
            if fortran and len(shape) > 1:
                raise DatasetError(f"{path}: {key!r} is stored in Fortran order; rewrite it C-contiguous")
            for start in range(0, shape[0], chunk_rows):
                rows = min(chunk_rows, shape[0] - start)
                out = np.empty((rows, *shape[1:]), dtype=dtype)
                view, got = memoryview(out.reshape(-1).view(np.uint8)), 0
                while got < out.nbytes:
                    n = f.readinto(view[got:])
                    if not n:
                        raise DatasetError(f"{path}: {key!r} ends after {start + got // max(out[0].nbytes, 1)} rows "
                                           f"of {shape[0]} (truncated file)")
                    got += n
                yield out
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        if isinstance(err, DatasetError):
            raise
        raise DatasetError(f"{path}: cannot read {key!r} (truncated or corrupt file): {err}") from err


def _open_visual(name: str, dataset_dir, split, dataset_path, download, frame_shape):
    parsed = parse_ogbench_name(name, pixels=True)
    path = visual_dataset_path(name, dataset_dir, split, dataset_path)
    if not os.path.isfile(path):
        if not download or dataset_path is not None:
            raise missing_file_error(parsed, path, dataset_dir)
        download_official(parsed, dataset_dir, path)
    n = _check_visual_file(path, parsed, frame_shape)
    return parsed, path, n


def _row_fields(path: str, parsed: OGBenchName) -> tuple[TensorDict, torch.Tensor]:
    """Everything but the frames, one row per frame, and the ``trajectory_end`` flags."""
    keys = ["actions", "terminals"] + (["qpos", "button_states"] if parsed.singletask else [])  # what relabelling reads
    try:
        with np.load(path) as f:
            data = {k: f[k] for k in keys if k in f}
    except Exception as err:
        raise DatasetError(f"{path}: failed to decode (corrupt file?): {err}") from err
    ends = np.asarray(data["terminals"]).astype(bool)
    if not ends[-1]:
        raise DatasetError(f"{path}: the last frame is not a trajectory end (terminals[-1] == 0); file truncated?")
    for k in ("actions", "qpos"):
        if k in data and not np.isfinite(data[k]).all():
            raise DatasetError(f"{path}: non-finite values (NaN/inf) in {k!r}")
    n = len(ends)
    # Transition t (rows with ends[t] == 0) goes to frame t + 1; its trajectory ends there if ends[t + 1].
    truncated = np.zeros(n, dtype=bool)
    truncated[:-1] = ends[1:] & ~ends[:-1]
    nxt = {"truncated": torch.as_tensor(truncated).unsqueeze(-1)}
    if parsed.singletask:
        twin = parse_ogbench_name(parsed.dataset_name[len(VISUAL_PREFIX):])  # same task, state env: no rendering
        relabel_singletask(twin, data)  # OGBench's relabel_dataset: 'rewards', 'masks' for every row, elementwise
        nxt["reward"] = torch.as_tensor(data["rewards"], dtype=torch.float32).unsqueeze(-1)
        nxt["terminated"] = torch.as_tensor((data["masks"] == 0) & ~ends).unsqueeze(-1)
    else:
        nxt["terminated"] = torch.zeros(n, 1, dtype=torch.bool)
    nxt["done"] = nxt["terminated"] | nxt["truncated"]
    actions = torch.as_tensor(checked_actions(path, data["actions"].astype(np.float32)))
    return TensorDict({"action": actions, "next": nxt}, batch_size=[n]), torch.as_tensor(ends)


def load_visual_dataset(
    name: str,
    dataset_dir: str | None = None,
    split: Literal["train", "val"] = "train",
    *,
    dataset_path: str | None = None,
    download: bool = False,
    frame_shape: tuple[int, int, int] = FRAME_SHAPE,
) -> TensorDict:
    """A visual OGBench dataset as frame rows in RAM (for inspection and small sets; training uses the buffer).

    Returns a TensorDict ``[N_frames]`` with ``pixels`` uint8 ``[N, 64, 64, 3]``, ``trajectory_end``
    bool ``[N]`` (OGBench's ``terminals``), ``action`` and ``next`` (``reward`` for single-task
    names, ``terminated``, ``truncated``, ``done``) of the transition that starts at each frame
    (meaningless on a trajectory's last frame). Arguments as :func:`make_pixel_replay_buffer`.

    Raises:
        ValueError (``DatasetError``): a state-based name or file, frames of the wrong size or dtype,
            corrupt/truncated file, NaN/inf.
        FileNotFoundError: the file is missing; the message names the regeneration command.
    """
    parsed, path, _ = _open_visual(name, dataset_dir, split, dataset_path, download, frame_shape)
    rows, ends = _row_fields(path, parsed)
    rows.set("pixels", torch.as_tensor(np.concatenate(list(_npy_chunks(path, "observations", 1 << 16)))))
    rows.set("trajectory_end", ends)
    return rows


# ----------------------------------------------------------------------------- replay buffer
def _pixel_buffer(n: int, trajectory_end, batch_size, *, frame_stack, augment_prob, crop_padding, device,
                  storage, scratch_dir, prefetch, generator) -> TensorDictReplayBuffer:
    if storage not in ("ram", "memmap"):
        raise ValueError(f"storage must be 'ram' or 'memmap', got {storage!r}")
    store = LazyTensorStorage(n) if storage == "ram" else LazyMemmapStorage(n, scratch_dir=scratch_dir)
    transforms = []
    if device is not None:
        transforms.append(DeviceCastTransform(device, orig_device="cpu"))  # move the S+1 raw frames, stack there
    # Cropping the S+1 frames of a sample with one offset, then stacking, equals cropping its observation
    # and next observation with that offset (the reference), and moves 4 frames instead of 6.
    transforms += [RandomCrop(crop_padding, augment_prob, keys=["pixels"], generator=generator), StackFrames(frame_stack)]
    return TensorDictReplayBuffer(
        storage=store, sampler=FrameStackSampler(trajectory_end, frame_stack, generator=generator),
        batch_size=batch_size, transform=Compose(*transforms), prefetch=prefetch,
    )


def pixel_replay_buffer_from_rows(
    rows: TensorDictBase,
    batch_size: int,
    *,
    frame_stack: int = 3,
    augment_prob: float = 0.5,
    crop_padding: int = 3,
    device=None,
    storage: Literal["ram", "memmap"] = "ram",
    scratch_dir: str | None = None,
    prefetch: int | None = None,
    generator: torch.Generator | None = None,
) -> TensorDictReplayBuffer:
    """A pixel replay buffer over frame rows in the layout of :func:`load_visual_dataset` (your own frames too).

    ``rows`` needs ``pixels`` uint8 ``[N, H, W, C]``, ``trajectory_end`` bool ``[N]`` (last row True),
    and the per-transition entries to pass through (``action``, ``next`` flags/reward).
    Other arguments as :func:`make_pixel_replay_buffer`.
    """
    pixels = rows.get("pixels", None)
    if pixels is None or pixels.dtype != torch.uint8 or pixels.ndim != 4:
        got = None if pixels is None else (tuple(pixels.shape), pixels.dtype)
        raise DatasetError(f"rows need 'pixels' as uint8 frames [N, H, W, C], got {got}")
    ends = rows.get("trajectory_end", None)
    if ends is None or ends.shape != rows.shape:
        raise DatasetError(f"rows need 'trajectory_end' bool [N] (True on each trajectory's last frame), got "
                           f"{None if ends is None else tuple(ends.shape)} for {rows.shape[0]} rows")
    rb = _pixel_buffer(rows.shape[0], ends, batch_size, frame_stack=frame_stack, augment_prob=augment_prob,
                       crop_padding=crop_padding, device=device, storage=storage, scratch_dir=scratch_dir,
                       prefetch=prefetch, generator=generator)
    rb.extend(rows.exclude("trajectory_end"))
    return rb


def make_pixel_replay_buffer(
    name: str,
    batch_size: int,
    *,
    frame_stack: int = 3,
    augment_prob: float = 0.5,
    crop_padding: int = 3,
    device=None,
    storage: Literal["ram", "memmap"] = "ram",
    scratch_dir: str | None = None,
    dataset_dir: str | None = None,
    dataset_path: str | None = None,
    split: Literal["train", "val"] = "train",
    download: bool = False,
    frame_shape: tuple[int, int, int] = FRAME_SHAPE,
    chunk_frames: int = 16384,
    prefetch: int | None = None,
    generator: torch.Generator | None = None,
) -> TensorDictReplayBuffer:
    """A ``TensorDictReplayBuffer`` over a visual OGBench dataset whose ``sample()`` is a training batch.

    Args:
        name: visual dataset name, e.g. ``visual-cube-single-play-singletask-task1-v0`` (rewards,
            terminals from the task) or ``visual-cube-single-play-v0`` (no reward, never terminated).
        batch_size: transitions per ``sample()``.
        frame_stack: frames per observation (reference 3: ``[B, 64, 64, 9]``); must match the encoder
            (``in_channels = 3·frame_stack``) and :func:`deflow_trl.envs.pixels.make_pixel_env`.
        augment_prob: probability that a batch is random-crop augmented (reference 0.5; 0 = off).
        crop_padding: edge padding of the crop in pixels (reference 3).
        device: where the batch goes before stacking and augmentation (the training device);
            ``None`` leaves it on the CPU.
        storage: ``"ram"`` (``LazyTensorStorage``) or ``"memmap"`` (``LazyMemmapStorage`` in
            ``scratch_dir`` or a temp dir): 12,288 bytes per frame, ≈ 12 GB per 1M frames.
        dataset_dir, dataset_path, split, download: as :func:`deflow_trl.data.load_ogbench_dataset`.
        frame_shape: expected (H, W, 3) of the stored frames.
        chunk_frames: frames read from the file at a time (peak extra RAM = one chunk, also for memmap).
        prefetch: batches prepared in background threads (TorchRL's ``prefetch``).
        generator: CPU ``torch.Generator`` for sampling and augmentation (reproducible batches).

    Raises:
        ValueError (``DatasetError``): a state-based name or file, frames of the wrong size or dtype,
            corrupt/truncated file, NaN/inf, actions outside [-1, 1].
        FileNotFoundError: the file is missing; the message names the regeneration command.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    _check_frame_stack(frame_stack)
    parsed, path, n = _open_visual(name, dataset_dir, split, dataset_path, download, frame_shape)
    fields, ends = _row_fields(path, parsed)
    if len(fields) != n:
        raise DatasetError(f"{path}: {len(fields)} actions/terminals for {n} frames")
    rb = _pixel_buffer(n, ends, batch_size, frame_stack=frame_stack, augment_prob=augment_prob,
                       crop_padding=crop_padding, device=device, storage=storage, scratch_dir=scratch_dir,
                       prefetch=prefetch, generator=generator)
    start = 0
    for frames in _npy_chunks(path, "observations", chunk_frames):
        stop = start + len(frames)
        chunk = fields[start:stop]
        chunk.set("pixels", torch.from_numpy(frames))
        rb.extend(chunk)
        start = stop
    return rb
