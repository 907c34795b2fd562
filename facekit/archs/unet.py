"""U-Net generator that restores a gt-sized face from a low-quality input of any scale (x1-x8).

The input is first upsampled bicubically to the target size; the network predicts a residual on
top of it, so an untrained network already equals the bicubic baseline and training only has to
learn the missing detail. No normalisation layers: small batches and a 1x1 bottleneck make batch
statistics meaningless there, and SR generators train well without them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from facekit.archs.resample import BicubicPhases
from facekit.errors import ConfigError

UP_MODES = ("resize", "transpose")
LR_UPSAMPLERS = ("resize", "shuffle")  # LRUNetGenerator's detail path to the output size


def leaky_act() -> nn.Module:
    """The activation of every facekit U-Net: LeakyReLU(0.2), in place."""
    return nn.LeakyReLU(0.2, inplace=True)


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), leaky_act(), nn.Conv2d(cout, cout, 3, 1, 1), leaky_act())


class _Up(nn.Module):
    """2x upsampling: nearest resize + 3x3 conv (no checkerboard) or a 4x4 transposed conv."""

    def __init__(self, cin: int, cout: int, mode: str):
        super().__init__()
        self.mode = mode
        if mode == "resize":
            self.conv = nn.Conv2d(cin, cout, 3, 1, 1)
        else:
            self.conv = nn.ConvTranspose2d(cin, cout, 4, 2, 1)
        self.act = leaky_act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "resize":
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.act(self.conv(x))


def _out_size(lq: torch.Tensor, scale: int, out_size) -> tuple[int, int]:
    """Validate ``lq`` ``(N,C,h,w)`` and resolve the output ``(H,W)`` (default ``(h*scale, w*scale)``)."""
    if lq.dim() != 4:
        raise ValueError(f"lq must be (N,C,h,w), got shape {tuple(lq.shape)}")
    if out_size is None:
        return (lq.shape[-2] * scale, lq.shape[-1] * scale)
    if isinstance(out_size, int):
        return (out_size, out_size)
    return (int(out_size[0]), int(out_size[1]))


class UNetBody(nn.Module):
    """Encoder-decoder with skip connections shared by the U-Net generators (same parameter names).

    ``chs[i]`` channels at level ``i`` (full size at 0, ``2**i`` smaller below).
    """

    def _build_body(self, in_channels: int, chs: list[int], up: str) -> None:
        self.depth = len(chs) - 1
        self.head = nn.Sequential(nn.Conv2d(in_channels, chs[0], 3, 1, 1), leaky_act(),
                                  nn.Conv2d(chs[0], chs[0], 3, 1, 1), leaky_act())
        self.downs = nn.ModuleList(nn.Sequential(nn.Conv2d(chs[i], chs[i + 1], 3, 2, 1), leaky_act())
                                   for i in range(self.depth))
        self.encs = nn.ModuleList(_block(chs[i + 1], chs[i + 1]) for i in range(self.depth))
        self.ups = nn.ModuleList(_Up(chs[i + 1], chs[i], up) for i in range(self.depth))
        self.decs = nn.ModuleList(_block(2 * chs[i], chs[i]) for i in range(self.depth))

    def _init_tail(self) -> None:
        # Start close to the bicubic baseline: a small residual keeps early GAN steps stable.
        with torch.no_grad():
            self.tail.weight.mul_(0.1)
            self.tail.bias.zero_()

    def _body_any_size(self, lq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_body` on an input of any size: replicate-padded to a multiple of ``2**depth``,
        the decoded features cropped back to ``lq``'s size; returns ``(decoded, deepest)``."""
        h, w = int(lq.shape[-2]), int(lq.shape[-1])
        m = 2 ** self.depth
        ph, pw = (-h) % m, (-w) % m
        x = F.pad(lq, (0, pw, 0, ph), mode="replicate") if (ph or pw) else lq
        x, deepest = self._body(x)
        return (x[..., :h, :w] if (ph or pw) else x), deepest

    def _body(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the U-Net on ``x`` (sides a multiple of ``2**depth``); returns ``(decoded, deepest)``."""
        x = self.head(x)
        skips = [x]
        for down, enc in zip(self.downs, self.encs):
            x = enc(down(x))
            skips.append(x)
        deepest = x
        for i in reversed(range(self.depth)):
            x = self.ups[i](x)
            x = self.decs[i](torch.cat([x, skips[i]], dim=1))
        return x, deepest


class UNetGenerator(UNetBody):
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
        chs = [min(int(base) * 2 ** i, int(max_channels)) for i in range(int(depth) + 1)]
        self._build_body(in_channels, chs, up)
        self.tail = nn.Conv2d(chs[0], out_channels, 3, 1, 1)
        self._init_tail()

    def forward(self, lq: torch.Tensor, out_size: tuple[int, int] | int | None = None) -> torch.Tensor:
        """Restore ``lq``.

        Args:
            lq: ``(N,3,h,w)`` float in [0,1].
            out_size: output ``(H,W)`` (or one int); default ``(h*scale, w*scale)``.

        Returns:
            ``(N,3,H,W)`` float, roughly in [0,1] (not clamped, so gradients stay alive).
        """
        out_size = _out_size(lq, self.scale, out_size)
        if tuple(lq.shape[-2:]) == out_size:
            base = lq
        else:
            base = F.interpolate(lq, size=out_size, mode="bicubic", align_corners=False)
        m = 2 ** self.depth
        ph, pw = (-out_size[0]) % m, (-out_size[1]) % m
        x = F.pad(base, (0, pw, 0, ph), mode="replicate") if (ph or pw) else base
        x, _ = self._body(x)
        res = self.tail(x)
        if ph or pw:
            res = res[..., : out_size[0], : out_size[1]]
        return base + res


class _GlobalColour(nn.Module):
    """Per-image 3x3 colour matrix and offset predicted from pooled deep features.

    Lighting (white balance, exposure) is a global transform of the whole face; predicting it
    explicitly frees the convolutional residual for local detail. Initialised to the identity.
    """

    def __init__(self, channels: int, hidden: int = 64):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), leaky_act(), nn.Linear(hidden, 12))
        with torch.no_grad():
            self.mlp[-1].weight.zero_()
            self.mlp[-1].bias.zero_()
        self.register_buffer("eye", torch.eye(3).reshape(1, 3, 3), persistent=False)

    def forward(self, feats: torch.Tensor, img: torch.Tensor) -> torch.Tensor:
        """Apply the predicted transform to ``img`` ``(N,3,H,W)``; ``feats`` is ``(N,C,h,w)``."""
        p = self.mlp(feats.mean(dim=(2, 3)))
        mat = self.eye + p[:, :9].reshape(-1, 3, 3)
        out = torch.matmul(mat, img.flatten(2)).reshape(img.shape)  # matmul, not einsum: plain ONNX MatMul
        return out + p[:, 9:].reshape(-1, 3, 1, 1)


class LRUNetGenerator(UNetBody):
    """U-Net with skip connections that runs at the *input* resolution, then upsamples.

    Same contract as :class:`UNetGenerator` (any scale x1-x8, a residual over bicubic
    upsampling of ``lq``), but the encoder-decoder sees the ``h x w`` input instead of its
    bicubic blow-up, so a 16->64 face costs ~1/5 of the FLOPs at the same width. Detail is then
    grown by ``ceil(log2(scale))`` resize-then-conv 2x stages (no checkerboard artifacts) that
    halve the channels each time. An optional global branch predicts a per-image colour matrix
    and offset applied to the bicubic base (lighting correction, see :class:`_GlobalColour`).

    Args:
        scale: output side = input side * scale (1-8), unless ``out_size`` is given to forward.
        base: channels at the input resolution.
        depth: number of 2x downsamplings inside the U-Net (the input is padded internally to a
            multiple of ``2**depth``).
        max_channels: channel cap for deep levels.
        min_up_channels: the upsampling stages halve the width down to this floor.
        global_colour: add the global colour branch.
        upsampler: "resize" (the resize-then-conv 2x stages above) or "shuffle": one 3x3 conv
            at the input size to ``3*scale**2`` channels, then a pixel shuffle (ESPCN), so no
            convolution runs above the input size. At base 16 and 16 px that removes ~40% of the
            MACs (the resize stages run at 32 and 64 px); for the real-time student.
        in_channels / out_channels: 3 for RGB.
    """

    def __init__(self, scale: int = 4, base: int = 64, depth: int = 2, max_channels: int = 256,
                 min_up_channels: int = 16, global_colour: bool = True, in_channels: int = 3,
                 out_channels: int = 3, upsampler: str = "resize"):
        super().__init__()
        if not 1 <= int(scale) <= 8:
            raise ConfigError(f"scale must be between 1 and 8, got {scale!r}")
        if int(depth) < 1 or int(base) < 1 or int(min_up_channels) < 1:
            raise ConfigError(f"depth, base and min_up_channels must be >= 1, got depth={depth!r} base={base!r} "
                              f"min_up_channels={min_up_channels!r}")
        if upsampler not in LR_UPSAMPLERS:
            raise ConfigError(f"unknown upsampler {upsampler!r}; valid: {', '.join(LR_UPSAMPLERS)}")
        self.scale = int(scale)
        chs = [min(int(base) * 2 ** i, int(max_channels)) for i in range(int(depth) + 1)]
        self._build_body(in_channels, chs, "resize")
        self.colour = _GlobalColour(chs[-1]) if global_colour else None
        self.bicubic = BicubicPhases(self.scale, in_channels)  # the bicubic base at output size k*input (no weights)
        if upsampler == "shuffle":
            # Residual channels in PixelShuffle order (c*r*r + i*r + j); the ``grow`` name keeps
            # the forward identical for both upsamplers.
            self.grow = nn.PixelShuffle(self.scale)
            self.tail = nn.Conv2d(chs[0], out_channels * self.scale ** 2, 3, 1, 1)
            self._init_tail()
            return
        n_up = math.ceil(math.log2(self.scale)) if self.scale > 1 else 0
        ch, grow = chs[0], []
        for _ in range(n_up):
            nxt = max(ch // 2, int(min_up_channels))
            grow.append(_Up(ch, nxt, "resize"))
            ch = nxt
        self.grow = nn.Sequential(*grow)
        self.tail = nn.Conv2d(ch, out_channels, 3, 1, 1)
        self._init_tail()

    def forward(self, lq: torch.Tensor, out_size: tuple[int, int] | int | None = None) -> torch.Tensor:
        """Restore ``lq`` ``(N,3,h,w)`` in [0,1]; same contract as :meth:`UNetGenerator.forward`."""
        out_size = _out_size(lq, self.scale, out_size)
        h, w = int(lq.shape[-2]), int(lq.shape[-1])
        x, deepest = self._body_any_size(lq)
        shuffle = isinstance(self.grow, nn.PixelShuffle)
        if out_size == (h * self.scale, w * self.scale) and self.scale > 1:
            # The colour transform is per-pixel linear and bicubic weights sum to 1, so colour at the
            # input size then upsample equals upsample then colour, at 1/scale**2 of the cost.
            img = self.colour(deepest, lq) if self.colour is not None else lq
            phases = self.bicubic(img)
            if shuffle:  # one shuffle for base and residual
                return F.pixel_shuffle(self.tail(x) + phases, self.scale)
            base = F.pixel_shuffle(phases, self.scale)
        else:
            base = lq if (h, w) == out_size else F.interpolate(lq, size=out_size, mode="bicubic", align_corners=False)
            if self.colour is not None:
                base = self.colour(deepest, base)
        res = self.grow(self.tail(x)) if shuffle else self.tail(self.grow(x))
        if tuple(res.shape[-2:]) != out_size:
            res = F.interpolate(res, size=out_size, mode="bilinear", align_corners=False)
        return base + res
