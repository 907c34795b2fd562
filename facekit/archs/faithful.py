"""A face restorer that is faithful to its input by construction.

The earlier releases learned a free residual plus a global colour transform. On faces they never
saw, that freedom became harm: skin tone pulled to one average, grey faces tinted, bicubic beaten
only on the training preset. :class:`FaithfulGenerator` removes the freedom instead of hoping
training will not use it:

* **Low frequencies come from the input.** The network's residual is high-passed at the input
  scale (``r - up(blur(down(r)))``) before it is added to the exact bicubic upsampling of ``lq``,
  so the output's mean colour, shading and skin tone are the input's: downscaling the output
  gives back the input's low-pass content whatever the weights are.
* **Colour detail only where there is colour.** The residual is predicted as one luma channel
  plus two chroma channels (BT.601 YCbCr differences); the chroma part is gated to zero on grey
  inputs, and an equal luma change in R, G and B keeps a grey face exactly grey.
* **Relighting is explicit and separate** (:mod:`facekit.relight`): an optional, reported,
  switchable pre-step (``relight=True`` and the fitted locus buffers), never learned inside the
  residual. Training runs with it off, on pairs whose target carries the same light as the input.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from facekit.archs.resample import BicubicPhases
from facekit.archs.unet import UNetBody, leaky_act
from facekit.errors import ConfigError
from facekit.relight import is_gray, relight

# BT.601 YCbCr -> RGB for differences: dR = dY + 1.402 dCr, dG = dY - 0.344 dCb - 0.714 dCr, dB = dY + 1.772 dCb
_YCC_TO_RGB = ((1.0, 0.0, 1.402), (1.0, -0.344136, -0.714136), (1.0, 1.772, 0.0))


class _ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv2d(ch, ch, 3, 1, 1)
        self.act = leaky_act()
        self.conv2 = nn.Conv2d(ch, ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.conv2(self.act(self.conv1(x)))


def _gauss_taps(sigma: float) -> torch.Tensor:
    half = max(1, int(math.ceil(2.5 * sigma)))
    t = torch.arange(-half, half + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return (k / k.sum()).float()


class FaithfulGenerator(UNetBody):
    """x``scale`` restorer: bicubic base + a high-passed luma/chroma residual from an LR U-Net.

    Args:
        scale: output side = input side * scale (1-8).
        base: channels at the input resolution.
        depth: 2x downsamplings inside the U-Net (inputs are padded to a multiple of ``2**depth``).
        max_channels: channel cap of the deep levels.
        res_blocks: residual blocks at the input resolution after the U-Net (capacity where the
            detail is decided, at 1/scale**2 of the output's cost).
        lowpass_sigma: Gaussian sigma, in input pixels, of the band the residual may not touch;
            larger lets the network change broader structure (denoising, deblurring), smaller
            ties the output more tightly to the input.
        chroma: predict chroma detail (gated off on grey inputs); False = luma only.
        chroma_detail: with ``chroma``, whether the chroma detail is added (a release-time switch,
            like ``relight``: False keeps the trained weights but adds luma detail only, so every
            output colour comes from the input).
        relight: apply the explicit relight pre-step (:func:`facekit.relight.relight`) with the
            fitted locus buffers. Off in training; the released stage turns it on.
    """

    any_size = True  # fully convolutional and scale-consistent: runs at a face's own input size

    def __init__(self, scale: int = 4, base: int = 48, depth: int = 2, max_channels: int = 192,
                 res_blocks: int = 2, lowpass_sigma: float = 1.0, chroma: bool = True, relight: bool = False,
                 chroma_detail: bool = True):
        super().__init__()
        if not 1 <= int(scale) <= 8:
            raise ConfigError(f"scale must be between 1 and 8, got {scale!r}")
        if int(depth) < 1 or int(base) < 1 or int(res_blocks) < 0:
            raise ConfigError(f"depth and base must be >= 1 and res_blocks >= 0, got depth={depth!r} "
                              f"base={base!r} res_blocks={res_blocks!r}")
        if not 0.0 < float(lowpass_sigma) <= 8.0:
            raise ConfigError(f"lowpass_sigma must be in (0, 8] input pixels, got {lowpass_sigma!r}")
        self.scale = int(scale)
        self.chroma = bool(chroma)
        self.relight = bool(relight)
        self.chroma_detail = bool(chroma_detail)
        chs = [min(int(base) * 2 ** i, int(max_channels)) for i in range(int(depth) + 1)]
        self._build_body(3, chs, "resize")
        self.res = nn.Sequential(*[_ResBlock(chs[0]) for _ in range(int(res_blocks))])
        self.n_out = 3 if self.chroma else 1
        self.tail = nn.Conv2d(chs[0], self.n_out * self.scale ** 2, 3, 1, 1)
        self._init_tail()
        self.bicubic = BicubicPhases(self.scale, 3)
        taps = _gauss_taps(float(lowpass_sigma))
        # separable taps for the 3 residual channels, as fixed-shape depthwise kernels (ONNX needs
        # constant kernel shapes)
        self.register_buffer("lowpass_x", taps.view(1, 1, 1, -1).repeat(3, 1, 1, 1), persistent=False)
        self.register_buffer("lowpass_y", taps.view(1, 1, -1, 1).repeat(3, 1, 1, 1), persistent=False)
        self.register_buffer("ycc", torch.tensor(_YCC_TO_RGB)[:, : self.n_out].contiguous(), persistent=False)
        # Relight locus (facekit.relight.fit_locus); persistent so a released stage carries it.
        # The defaults make relighting a no-op until a locus is fitted.
        self.register_buffer("locus_mean", torch.zeros(2))
        self.register_buffer("locus_icov", torch.zeros(2, 2))
        self.register_buffer("locus_radius", torch.tensor(float("inf")))
        self.register_buffer("luma_floor", torch.tensor(0.0))

    def _lowpass_lr(self, x: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian blur of ``(N,3,h,w)`` at the input scale (replicated borders)."""
        pad = self.lowpass_x.shape[-1] // 2
        x = F.pad(x, (pad, pad, pad, pad), mode="replicate")
        x = F.conv2d(x, self.lowpass_x.to(x.dtype), groups=3)
        return F.conv2d(x, self.lowpass_y.to(x.dtype), groups=3)

    def highpass(self, res: torch.Tensor) -> torch.Tensor:
        """Remove from an output-size residual ``(N,3,H,W)`` what its input-scale low-pass holds."""
        low = self._lowpass_lr(F.avg_pool2d(res, self.scale))
        return res - F.pixel_shuffle(self.bicubic(low), self.scale)

    def residual(self, lq: torch.Tensor) -> torch.Tensor:
        """The RGB residual (before high-passing) for ``lq`` ``(N,3,h,w)`` -> ``(N,3,h*s,w*s)``."""
        x, _ = self._body_any_size(lq)
        ycc = F.pixel_shuffle(self.tail(self.res(x)), self.scale)  # (N, n_out, H, W)
        if self.chroma and not self.chroma_detail:
            ycc = ycc[:, :1]
        elif self.chroma:
            colour = (~is_gray(lq)).to(ycc.dtype).view(-1, 1, 1, 1)
            ycc = torch.cat([ycc[:, :1], ycc[:, 1:] * colour], dim=1)
        return torch.einsum("ck,nkhw->nchw", self.ycc[:, : ycc.shape[1]].to(ycc.dtype), ycc)

    def forward(self, lq: torch.Tensor, out_size: tuple[int, int] | int | None = None) -> torch.Tensor:
        """Restore ``lq`` ``(N,3,h,w)`` float in [0,1] -> ``(N,3,h*scale,w*scale)`` float (not clamped).

        ``out_size`` other than the native size resizes the native output (bicubic).
        """
        if lq.dim() != 4 or lq.shape[1] != 3:
            raise ValueError(f"lq must be (N,3,h,w), got shape {tuple(lq.shape)}")
        if self.relight:
            lq = relight(lq, self)[0]
        base = F.pixel_shuffle(self.bicubic(lq), self.scale)
        out = base + self.highpass(self.residual(lq))
        if out_size is not None:
            size = (out_size, out_size) if isinstance(out_size, int) else (int(out_size[0]), int(out_size[1]))
            if tuple(out.shape[-2:]) != size:
                out = F.interpolate(out, size=size, mode="bicubic", align_corners=False)
        return out
