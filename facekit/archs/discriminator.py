"""PatchGAN discriminator (optionally multi-scale) with a batch/instance/no-norm switch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from facekit.errors import ConfigError

NORMS = ("batch", "instance", "none")


def _norm(kind: str, ch: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(ch)
    if kind == "instance":
        return nn.InstanceNorm2d(ch, affine=True)
    return nn.Identity()


class _Patch(nn.Module):
    def __init__(self, in_channels: int, base: int, n_layers: int, norm: str):
        super().__init__()
        bias = norm == "none"  # a bias before a norm layer is redundant
        layers: list[nn.Module] = [nn.Conv2d(in_channels, base, 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        ch = base
        for i in range(1, n_layers + 1):
            out = min(base * 2 ** i, base * 8)
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(ch, out, 4, stride, 1, bias=bias), _norm(norm, out), nn.LeakyReLU(0.2, inplace=True)]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN: one realness logit per overlapping patch (70x70 receptive field with 3 layers).

    Args:
        base: channels of the first conv.
        n_layers: strided conv layers after the first one (3 = the pix2pix 70x70 PatchGAN).
        norm: "batch", "instance" or "none" (use "none" or "instance" with WGAN-GP; batch norm
            couples samples, which the per-sample gradient penalty assumes they are not).
        num_scales: >1 adds discriminators on 2x, 4x ... average-pooled copies of the input.

    Forward: ``(N,3,H,W)`` in [0,1] -> ``(N,1,h,w)`` logits, or a list of them (one per scale)
    when ``num_scales > 1``.
    """

    def __init__(self, base: int = 64, n_layers: int = 3, norm: str = "none", num_scales: int = 1,
                 in_channels: int = 3):
        super().__init__()
        if norm not in NORMS:
            raise ConfigError(f"unknown discriminator norm {norm!r}; valid: {', '.join(NORMS)}")
        if int(num_scales) < 1 or int(n_layers) < 1:
            raise ConfigError(f"num_scales and n_layers must be >= 1, got {num_scales!r}, {n_layers!r}")
        self.norm = norm
        self.num_scales = int(num_scales)
        self.nets = nn.ModuleList(_Patch(in_channels, int(base), int(n_layers), norm) for _ in range(self.num_scales))

    def forward(self, x: torch.Tensor):
        outs = []
        for i, net in enumerate(self.nets):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            outs.append(net(x))
        return outs[0] if self.num_scales == 1 else outs
