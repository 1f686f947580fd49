"""Image encoders for pixel observations (OGBench's visual suites).

An encoder maps an observation batch ``[*B, H, W, C]`` — channels-last, as OGBench
stores frames, uint8 (0..255) or float on the same scale — to features ``[*B, F]``
and exposes ``out_features`` (F). DeFlow builds one encoder per network (critic,
velocity field, refiner), as the public reference does (docs/design.md §3, "Pixel suites").

``impala_small`` is the reference's encoder of that name (FQL's ``utils/encoders.py``:
``ImpalaEncoder(num_blocks=1)``), layer for layer:

* ``x / 255``;
* for each width in (16, 32, 32): 3×3 conv (stride 1, 'SAME' = zero padding 1) →
  3×3 max-pool, stride 2, **'SAME' as in Flax** (pad ``(0, 1)`` for even sizes, with
  −inf, so the windows start at pixel 0; PyTorch's ``padding=1`` would shift them by
  one pixel) → ``num_blocks`` residual blocks ``x + conv(relu(conv(relu(x))))``;
  64 → 32 → 16 → 8 pixels;
* ReLU, flatten in (H, W, C) order (the reference's channels-last reshape), then an
  MLP with activation on its final layer: ``Linear(8·8·32 = 2048, 512)`` → GELU (tanh
  approximation, JAX's default); no LayerNorm;
* Xavier-uniform weights (conv fan = channels × 3 × 3, as ``jax.nn.initializers.xavier_uniform``),
  zero biases.

Convolutions run in PyTorch's ``channels_last`` memory format: the channels-last input
is permuted to NCHW *logically* without a copy, which is what ``channels_last`` means.

Examples:
    >>> import torch
    >>> from deflow_trl.encoders import make_encoder
    >>> enc = make_encoder("impala_small", in_channels=9)
    >>> frames = torch.randint(0, 256, (4, 64, 64, 9), dtype=torch.uint8)
    >>> enc(frames).shape, enc.out_features
    (torch.Size([4, 512]), 512)
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from deflow_trl.nets import _gelu, _xavier_linear

__all__ = ["ImpalaEncoder", "make_encoder", "ENCODERS", "same_pool_padding"]


def _xavier_conv(in_channels: int, out_channels: int) -> nn.Conv2d:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
    nn.init.xavier_uniform_(conv.weight)  # fan_in = C_in·9, fan_out = C_out·9, as Flax's xavier_uniform
    nn.init.zeros_(conv.bias)
    return conv


def same_pool_padding(size: int, window: int = 3, stride: int = 2) -> tuple[int, int]:
    """(low, high) padding of a 'SAME' pooling (XLA/TensorFlow rule): output ``ceil(size / stride)``.

    >>> same_pool_padding(64), same_pool_padding(33)
    ((0, 1), (1, 1))
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def _max_pool_same(x: torch.Tensor) -> torch.Tensor:
    """3×3 max-pool, stride 2, 'SAME' padding with −inf (Flax ``nn.max_pool(..., padding='SAME')``)."""
    top, bottom = same_pool_padding(x.shape[-2])
    left, right = same_pool_padding(x.shape[-1])
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom), value=float("-inf"))
    return F.max_pool2d(x, kernel_size=3, stride=2)


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = _xavier_conv(channels, channels)
        self.conv1 = _xavier_conv(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(F.relu(self.conv0(F.relu(x))))


class _Stack(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_blocks: int) -> None:
        super().__init__()
        self.conv = _xavier_conv(in_channels, out_channels)
        self.blocks = nn.ModuleList(_ResidualBlock(out_channels) for _ in range(num_blocks))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _max_pool_same(self.conv(x))
        for block in self.blocks:
            x = block(x)
        return x


class ImpalaEncoder(nn.Module):
    """IMPALA CNN + MLP head, as the reference's ``ImpalaEncoder`` (module docstring for the layers).

    Args:
        in_channels: C of the input ``[*B, H, W, C]`` (3 × frame stack; 9 for OGBench's 3-frame stacks).
        image_size: (H, W) the encoder is built for (the head's input width depends on it).
        stack_sizes: conv widths, one stack each (reference: (16, 32, 32)).
        num_blocks: residual blocks per stack (``impala_small``: 1; ``impala``: 2).
        mlp_hidden_sizes: widths of the head; every layer is followed by GELU (reference: (512,)).

    Input: uint8 (scaled by 1/255 here) or floating point on the 0..255 scale, channels-last,
    any number of leading batch dims. Output ``[*B, out_features]`` in the input's float dtype
    (float32 for uint8 input).

    Raises ``ValueError`` naming the problem for a wrong rank, channel count or image size,
    and ``TypeError`` for an integer dtype other than uint8.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: tuple[int, int] = (64, 64),
        stack_sizes: Sequence[int] = (16, 32, 32),
        num_blocks: int = 1,
        mlp_hidden_sizes: Sequence[int] = (512,),
    ) -> None:
        super().__init__()
        if in_channels < 1 or len(image_size) != 2 or min(image_size) < 1 or not stack_sizes or not mlp_hidden_sizes:
            raise ValueError(
                f"ImpalaEncoder needs in_channels >= 1, image_size (H, W) > 0 and non-empty stack/MLP sizes; "
                f"got in_channels={in_channels}, image_size={image_size}, stack_sizes={stack_sizes}, "
                f"mlp_hidden_sizes={mlp_hidden_sizes}"
            )
        self.in_channels = int(in_channels)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        widths = [self.in_channels, *stack_sizes]
        self.stacks = nn.ModuleList(_Stack(i, o, num_blocks) for i, o in zip(widths[:-1], widths[1:]))
        h, w = self.image_size
        for _ in stack_sizes:
            h, w = -(-h // 2), -(-w // 2)  # 'SAME' pooling, stride 2
        self.feature_map_shape = (h, w, widths[-1])
        sizes = [h * w * widths[-1], *mlp_hidden_sizes]
        self.head = nn.ModuleList(_xavier_linear(i, o) for i, o in zip(sizes[:-1], sizes[1:]))
        self.out_features = int(sizes[-1])

    def _check(self, obs: torch.Tensor) -> None:
        if obs.ndim < 3 or tuple(obs.shape[-3:]) != (*self.image_size, self.in_channels):
            hint = ""
            if obs.ndim >= 3 and obs.shape[-1] != self.in_channels and obs.shape[-1] % 3 == 0:
                hint = (f" (got {obs.shape[-1] // 3} stacked RGB frames where the encoder was built for "
                        f"{self.in_channels / 3:g}: the frame stack of the data/env does not match the encoder's)")
            elif obs.ndim >= 3 and obs.shape[-3] == self.in_channels:
                hint = " (channels-first input? pass [*B, H, W, C] as OGBench stores frames)"
            raise ValueError(
                f"ImpalaEncoder expects observations [*B, {self.image_size[0]}, {self.image_size[1]}, "
                f"{self.in_channels}] (channels-last), got shape {tuple(obs.shape)}{hint}"
            )
        if not (obs.dtype == torch.uint8 or obs.dtype.is_floating_point):
            raise TypeError(f"ImpalaEncoder expects uint8 frames (or floats on the 0..255 scale), got {obs.dtype}")

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        self._check(obs)
        batch = obs.shape[:-3]
        x = obs.reshape(-1, *obs.shape[-3:])
        dtype = obs.dtype if obs.dtype.is_floating_point else torch.get_default_dtype()
        x = x.to(dtype) / 255.0
        # [N, H, W, C] -> logical NCHW view with channels_last strides (no copy).
        x = x.permute(0, 3, 1, 2)
        for stack in self.stacks:
            x = stack(x)
        x = F.relu(x)
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)  # flatten (H, W, C) like the reference
        for linear in self.head:
            x = _gelu(linear(x))
        return x.reshape(*batch, self.out_features)


# name -> factory(in_channels, image_size) -> encoder; the reference's registry entries we build.
ENCODERS: dict[str, Callable[..., nn.Module]] = {
    "impala_small": functools.partial(ImpalaEncoder, num_blocks=1),
    "impala": functools.partial(ImpalaEncoder, num_blocks=2),
}


def make_encoder(name: str, in_channels: int, image_size: tuple[int, int] = (64, 64), **kwargs) -> nn.Module:
    """A fresh encoder by name (``impala_small``: the reference's pixel encoder; ``impala``: 2 blocks per stack).

    Args:
        name: a key of :data:`ENCODERS`.
        in_channels: channels of the channels-last input (3 × frame stack).
        image_size: (H, W) of the frames.
        **kwargs: passed to the encoder (e.g. ``stack_sizes``, ``mlp_hidden_sizes``).

    >>> make_encoder("impala_small", in_channels=9).out_features
    512
    """
    if name not in ENCODERS:
        raise ValueError(f"Unknown encoder {name!r}; known: {sorted(ENCODERS)}")
    return ENCODERS[name](in_channels=in_channels, image_size=image_size, **kwargs)
