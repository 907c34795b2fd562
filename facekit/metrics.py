"""Image quality metrics: PSNR and SSIM, per image.

Torch functions take ``(N,3,H,W)`` float tensors in [0,1] (values are clamped to [0,1]) and
return ``(N,)`` float32 tensors; the ``*_uint8`` helpers take numpy ``(N,H,W,3)`` or ``(H,W,3)``
uint8 RGB arrays.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# PSNR of identical images is infinite; we cap it so means stay finite.
MAX_PSNR = 100.0


def _check(out: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if out.shape != gt.shape or out.dim() != 4:
        raise ValueError(f"out and gt must be (N,C,H,W) tensors of the same shape, got "
                         f"{tuple(out.shape)} and {tuple(gt.shape)}")
    return out.detach().float().clamp(0, 1), gt.detach().float().clamp(0, 1)


def psnr(out: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB (data range 1), ``(N,)``, capped at :data:`MAX_PSNR`."""
    out, gt = _check(out, gt)
    mse = (out - gt).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(10 ** (-MAX_PSNR / 10)))).float()


def _gaussian(size: int = 11, sigma: float = 1.5, device=None) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim(out: torch.Tensor, gt: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1=0.01,
    K2=0.03, data range 1), averaged over channels and valid window positions; ``(N,)``."""
    out, gt = _check(out, gt)
    n, c, h, w = out.shape
    if min(h, w) < window:
        window = min(h, w) | 1 if min(h, w) % 2 else min(h, w) - 1
    g = _gaussian(window, sigma, out.device)
    kernel = (g[:, None] * g[None, :]).expand(c, 1, window, window).contiguous()

    def blur(x):
        return F.conv2d(x, kernel, groups=c)

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mu_x, mu_y = blur(out), blur(gt)
    sxx = blur(out * out) - mu_x ** 2
    syy = blur(gt * gt) - mu_y ** 2
    sxy = blur(out * gt) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2))
    return s.flatten(1).mean(1)


def _uint8_to_tensor(a: np.ndarray) -> torch.Tensor:
    a = np.asarray(a)
    if a.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image array, got {a.dtype}")
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4:
        raise ValueError(f"expected (H,W,C) or (N,H,W,C) uint8, got shape {a.shape}")
    return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).float() / 255.0


def psnr_uint8(out: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """PSNR of uint8 RGB arrays; ``(N,)`` float (a 1-element array for a single image)."""
    return psnr(_uint8_to_tensor(out), _uint8_to_tensor(gt)).numpy()


def ssim_uint8(out: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """SSIM of uint8 RGB arrays; ``(N,)`` float."""
    return ssim(_uint8_to_tensor(out), _uint8_to_tensor(gt)).numpy()
