"""U-Net generator that restores a gt-sized face from a low-quality input of any scale (x1-x8).

The input is first upsampled bicubically to the target size; the network predicts a residual on
top of it, so an untrained network already equals the bicubic baseline and training only has to
learn the missing detail. No normalisation layers: small batches and a 1x1 bottleneck make batch
statistics meaningless there, and SR generators train well without them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facekit.errors import ConfigError

UP_MODES = ("resize", "transpose")


def _act() -> nn.Module:
    return nn.LeakyReLU(0.2, inplace=True)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), _act(), nn.Conv2d(cout, cout, 3, 1, 1), _act())


class _Up(nn.Module):
    """2x upsampling: nearest resize + 3x3 conv (no checkerboard) or a 4x4 transposed conv."""

    def __init__(self, cin: int, cout: int, mode: str):
        super().__init__()
        self.mode = mode
        if mode == "resize":
            self.conv = nn.Conv2d(cin, cout, 3, 1, 1)
        else:
            self.conv = nn.ConvTranspose2d(cin, cout, 4, 2, 1)
        self.act = _act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "resize":
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.act(self.conv(x))


class UNetGenerator(nn.Module):
    """U-Net with skip connections learning a residual over bicubic upsampling.

    Args:
        scale: output side = input side * scale (1-8), unless ``out_size`` is given to forward.
        base: channels at full resolution.
        depth: number of 2x downsamplings (the output size is padded internally to a multiple of
            ``2**depth``, so any size works).
        max_channels: channel cap for deep levels.
        up: "resize" (nearest resize then conv; the default because it cannot produce
            checkerboard artifacts) or "transpose" (4x4 stride-2 transposed conv). Measured in
            ``benchmarks/bench_train.py`` (64 px, batch 16, 2 threads) the whole G+D step is ~20%
            faster with "transpose"; we keep "resize" as the default for artifact-free faces.
        in_channels / out_channels: 3 for RGB.
    """

    def __init__(self, scale: int = 4, base: int = 32, depth: int = 3, max_channels: int = 256,
                 up: str = "resize", in_channels: int = 3, out_channels: int = 3):
        super().__init__()
        if up not in UP_MODES:
            raise ConfigError(f"unknown upsampling mode {up!r}; valid: {', '.join(UP_MODES)}")
        if not 1 <= int(scale) <= 8:
            raise ConfigError(f"scale must be between 1 and 8, got {scale!r}")
        if int(depth) < 1 or int(base) < 1:
            raise ConfigError(f"depth and base must be >= 1, got depth={depth!r} base={base!r}")
        self.scale = int(scale)
        self.depth = int(depth)
        chs = [min(int(base) * 2 ** i, int(max_channels)) for i in range(self.depth + 1)]
        self.head = nn.Sequential(nn.Conv2d(in_channels, chs[0], 3, 1, 1), _act(), nn.Conv2d(chs[0], chs[0], 3, 1, 1), _act())
        self.downs = nn.ModuleList(nn.Sequential(nn.Conv2d(chs[i], chs[i + 1], 3, 2, 1), _act())
                                   for i in range(self.depth))
        self.encs = nn.ModuleList(_block(chs[i + 1], chs[i + 1]) for i in range(self.depth))
        self.ups = nn.ModuleList(_Up(chs[i + 1], chs[i], up) for i in range(self.depth))
        self.decs = nn.ModuleList(_block(2 * chs[i], chs[i]) for i in range(self.depth))
        self.tail = nn.Conv2d(chs[0], out_channels, 3, 1, 1)
        # Start close to the bicubic baseline: a small residual keeps early GAN steps stable.
        with torch.no_grad():
            self.tail.weight.mul_(0.1)
            self.tail.bias.zero_()

    def forward(self, lq: torch.Tensor, out_size: tuple[int, int] | int | None = None) -> torch.Tensor:
        """Restore ``lq``.

        Args:
            lq: ``(N,3,h,w)`` float in [0,1].
            out_size: output ``(H,W)`` (or one int); default ``(h*scale, w*scale)``.

        Returns:
            ``(N,3,H,W)`` float, roughly in [0,1] (not clamped, so gradients stay alive).
        """
        if lq.dim() != 4:
            raise ValueError(f"lq must be (N,C,h,w), got shape {tuple(lq.shape)}")
        if out_size is None:
            out_size = (lq.shape[-2] * self.scale, lq.shape[-1] * self.scale)
        elif isinstance(out_size, int):
            out_size = (out_size, out_size)
        out_size = (int(out_size[0]), int(out_size[1]))
        if tuple(lq.shape[-2:]) == out_size:
            base = lq
        else:
            base = F.interpolate(lq, size=out_size, mode="bicubic", align_corners=False)
        m = 2 ** self.depth
        ph, pw = (-out_size[0]) % m, (-out_size[1]) % m
        x = F.pad(base, (0, pw, 0, ph), mode="replicate") if (ph or pw) else base
        x = self.head(x)
        skips = [x]
        for down, enc in zip(self.downs, self.encs):
            x = enc(down(x))
            skips.append(x)
        for i in reversed(range(self.depth)):
            x = self.ups[i](x)
            x = self.decs[i](torch.cat([x, skips[i]], dim=1))
        res = self.tail(x)
        if ph or pw:
            res = res[..., : out_size[0], : out_size[1]]
        return base + res
