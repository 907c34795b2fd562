"""Image quality metrics: PSNR and SSIM, per image, and the registry of metrics by name (:data:`METRICS`).

Torch functions take ``(N,3,H,W)`` float tensors in [0,1] (values are clamped to [0,1]) and
return ``(N,)`` float32 tensors; the ``*_uint8`` helpers take numpy ``(N,H,W,3)`` or ``(H,W,3)``
uint8 RGB arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from facekit.errors import ConfigError

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


# ----------------------------------------------------------------------------- colour fidelity
# numpy only (uint8 RGB in): how well a restoration keeps the face's colour and exposure, and
# whether a grey input stays grey.

def _uint8_batch(images) -> np.ndarray:
    a = np.asarray(images)
    if a.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB images, got {a.dtype}")
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[-1] != 3 or a.shape[1] < 1 or a.shape[2] < 1:
        raise ValueError(f"expected (H,W,3) or (N,H,W,3) uint8 RGB, got shape {a.shape}")
    return a


def face_region_mask(h: int, w: int) -> np.ndarray:
    """Boolean ``(h,w)`` mask of the central face ellipse used by :func:`face_region_lab`.

    The ellipse is centred at (0.5 W, 0.55 H) with semi-axes 0.28 W x 0.34 H. On a face framed
    by a detector box (tight to loose), that covers the cheeks, nose and forehead, where skin
    colour and exposure show, and keeps out the hair, ears and background, whose colour says
    nothing about the face. It always holds the centre pixel, so it is never empty.
    """
    yy, xx = np.mgrid[0:h, 0:w]
    # Pixel centres sit at half-integer coordinates.
    u = (xx + 0.5 - 0.5 * w) / (0.28 * w)
    v = (yy + 0.5 - 0.55 * h) / (0.34 * h)
    return u * u + v * v <= 1.0


def face_region_lab(images) -> np.ndarray:
    """Mean CIELAB colour of the central face region of each image.

    Args:
        images: ``(N,H,W,3)`` or ``(H,W,3)`` uint8 RGB (sRGB, D65).

    Returns:
        ``(N,3) float64``: per image the mean over :func:`face_region_mask` of per-pixel
        (L, a, b) from ``cv2.cvtColor`` on float32 [0,1] RGB: L in 0-100, a and b roughly
        -128..127.
    """
    import cv2  # here, so importing facekit.metrics does not need OpenCV

    a = _uint8_batch(images)
    mask = face_region_mask(a.shape[1], a.shape[2])
    out = np.empty((a.shape[0], 3), np.float64)
    for i, img in enumerate(a):
        lab = cv2.cvtColor(img.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
        out[i] = lab[mask].astype(np.float64).mean(0)
    return out


def delta_e(lab_a, lab_b) -> np.ndarray:
    """CIE76 colour difference (Euclidean distance in CIELAB).

    Args:
        lab_a, lab_b: ``(N,3)`` or ``(3,)`` Lab colours (e.g. from :func:`face_region_lab`);
            they broadcast against each other.

    Returns:
        ``(N,) float64`` (a 1-element array for single colours); about 2.3 is a just
        noticeable difference.
    """
    a = np.atleast_2d(np.asarray(lab_a, np.float64))
    b = np.atleast_2d(np.asarray(lab_b, np.float64))
    if a.shape[-1] != 3 or b.shape[-1] != 3 or a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"expected (N,3) or (3,) Lab colours, got {a.shape} and {b.shape}")
    return np.sqrt(((a - b) ** 2).sum(-1))


def gray_spread(images) -> np.ndarray:
    """How far from grey each image is: the largest channel spread of any pixel.

    Args:
        images: ``(N,H,W,3)`` or ``(H,W,3)`` uint8 RGB.

    Returns:
        ``(N,) float64`` in 0-255: max over pixels of (max channel - min channel); 0 exactly
        when every pixel has three equal channels.
    """
    a = _uint8_batch(images)
    spread = a.max(-1).astype(np.int16) - a.min(-1).astype(np.int16)
    return spread.reshape(a.shape[0], -1).max(1).astype(np.float64)


# ----------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Metric:
    """One per-image metric: how to compute it, which way is better, what it measures.

    Attributes:
        fn: ``(out, gt) -> (N,)`` scores, or None for a column computed elsewhere (a table that
            extends :data:`METRICS`, such as ``facekit.evaluate.SCORES``, may hold such entries).
        higher_is_better: False for distances, errors and times.
        description: one line, for tables and plot labels.
    """

    fn: Callable | None
    higher_is_better: bool
    description: str


# The image metrics of this module, by name. Identity, perceptual and detection scores need
# networks (facekit.recognition, facekit.perceptual, a layer above this one): facekit.evaluate
# extends this table with them.
METRICS: dict[str, Metric] = {
    "psnr": Metric(psnr, True, f"peak signal-to-noise ratio in dB (data range 1, capped at {MAX_PSNR:g})"),
    "ssim": Metric(ssim, True, "structural similarity (Wang et al. 2004; 11x11 Gaussian window), at most 1"),
}


def get_metric(name: str, registry: dict[str, Metric] | None = None) -> Metric:
    """Look a metric up by name.

    Args:
        name: a key of ``registry``.
        registry: the table to look in (default :data:`METRICS`).

    Returns:
        Its :class:`Metric`.

    Raises:
        ConfigError: an unknown name (the message lists the valid ones).
    """
    registry = METRICS if registry is None else registry
    if name not in registry:
        raise ConfigError(f"unknown metric {name!r}; valid: {', '.join(registry)}")
    return registry[name]
