"""Bicubic upsampling by an integer factor as a fixed convolution plus a pixel shuffle.

``F.interpolate(x, scale_factor=r, mode="bicubic", align_corners=False)`` is, for an integer
``r``, a separable 5-tap filter per output phase: output pixel ``r*i + a`` reads input pixels
``i-2 .. i+2`` with weights that depend only on ``a``. Written as a grouped 5x5 convolution at
the *input* size (``r*r`` phase channels per colour channel) followed by ``PixelShuffle(r)``, it
gives the same numbers (to float rounding) at a fraction of the cost on a CPU: at 16 -> 64 px,
batch 1, PyTorch's ``upsample_bicubic2d`` takes ~0.2 ms, more than a small restoration net's
convolutions, and ONNX Runtime's cubic ``Resize`` is slower still. The phase form also lets a
generator add its residual before the shuffle, so one shuffle serves both.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

CUBIC_A = -0.75  # PyTorch's (and OpenCV's) cubic convolution coefficient
TAPS = 5  # input pixels i-2 .. i+2 reach output pixel r*i + a for every integer r


def _cubic(x: float) -> float:
    x = abs(x)
    if x <= 1.0:
        return ((CUBIC_A + 2.0) * x - (CUBIC_A + 3.0)) * x * x + 1.0
    if x < 2.0:
        return ((CUBIC_A * x - 5.0 * CUBIC_A) * x + 8.0 * CUBIC_A) * x - 4.0 * CUBIC_A
    return 0.0


def bicubic_phase_taps(scale: int) -> torch.Tensor:
    """1-D weights of each output phase of bicubic upsampling by ``scale`` (align_corners=False).

    Returns:
        ``(scale, 5)`` float64: row ``a`` weights input offsets -2..2 for output pixel ``scale*i + a``.
    """
    r = int(scale)
    taps = torch.zeros(r, TAPS, dtype=torch.float64)
    for a in range(r):
        src = (a + 0.5) / r - 0.5  # source coordinate of output pixel a, relative to input pixel 0
        base = math.floor(src)  # plain Python: also builds on the meta device (archs.build_model's size check)
        t = src - base
        for k, w in zip(range(-1, 3), (_cubic(1 + t), _cubic(t), _cubic(1 - t), _cubic(2 - t))):
            taps[a, base + k + 2] += w
    return taps


class BicubicPhases(nn.Module):
    """Bicubic x``scale`` upsampling in phase form: ``PixelShuffle(scale)(self(x))`` equals
    ``F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)``.

    Borders are replicated, as PyTorch clamps the source index. The filter is a non-persistent
    buffer, so state dicts (and checkpoints) of the models using it are unchanged.

    Args:
        scale: integer factor >= 1.
        channels: input channels (3 for RGB).
    """

    def __init__(self, scale: int, channels: int = 3):
        super().__init__()
        self.scale, self.channels = int(scale), int(channels)
        taps = bicubic_phase_taps(self.scale)
        kernel = torch.einsum("ak,bl->abkl", taps, taps).reshape(self.scale ** 2, 1, TAPS, TAPS)
        # Output channel c*r*r + a*r + b is colour c, phase (a, b): PixelShuffle's order.
        self.register_buffer("weight", kernel.repeat(self.channels, 1, 1, 1).float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N,C,h,w)`` -> ``(N,C*scale**2,h,w)`` phases (same dtype; values not clamped)."""
        pad = TAPS // 2
        x = F.pad(x, (pad, pad, pad, pad), mode="replicate")
        return F.conv2d(x, self.weight.to(x.dtype), groups=self.channels)


def bicubic_upsample(x: torch.Tensor, scale: int) -> torch.Tensor:
    """``(N,C,h,w)`` -> ``(N,C,h*scale,w*scale)``, bicubic (align_corners=False) via :class:`BicubicPhases`."""
    return F.pixel_shuffle(BicubicPhases(scale, x.shape[1]).to(x.device)(x), int(scale))
