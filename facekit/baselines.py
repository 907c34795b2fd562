"""The non-learned restorers: bicubic, the classical image-processing chain, a fast sharpen.

The algorithms alone; :mod:`facekit.restorers` registers them (``bicubic``, ``classical``,
``classical-ref``, ``sharpen``) beside the learned ones, behind the one contract of
:mod:`facekit.restorer`.

- :func:`bicubic`: bicubic upsampling only (the floor any restorer must beat).
- :func:`classical` / :func:`classical_image`: grey-world (or reference-colour) white balance,
  auto exposure, non-local-means denoising, bicubic upsampling, unsharp mask.
- :func:`sharpen_uint8`: bilateral denoise, half-strength CLAHE on lightness and an unsharp mask
  at the input's size: cheap enough for every face of every video frame.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from facekit.restorer import check_batch, resize_batch, size_pair


def bicubic(lq, out_size) -> torch.Tensor:
    """Bicubic upsampling (PyTorch, ``align_corners=False``), clamped to [0,1].

    Args:
        lq: ``(N,3,h,w)`` float in [0,1] (torch or numpy).
        out_size: ``(H, W)`` or one int for square output.

    Returns:
        ``(N,3,H,W)`` float32 in [0,1].
    """
    lq = check_batch(lq, "bicubic").float()
    return resize_batch(lq, size_pair(out_size, lq, 1))


# ---------------------------------------------------------------------------------------------
# Classical chain on one image

LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)  # Rec.709


@dataclass(frozen=True)
class ClassicalConfig:
    """Settings of the classical chain (defaults chosen on the ORL train split, never on test faces).

    Attributes:
        reference: channel-mean ratios (mean 1) white balance aims at; (1,1,1) is grey world,
            :func:`face_reference` gives the average colour of a face set.
        max_gain: white-balance gains are clipped to [1/max_gain, max_gain] (a face filling the frame
            is not grey on average; clipping keeps grey-world from over-correcting skin tones).
        dark_pct, dark_below, white, max_exposure_gain: under-exposure test and gain (see
            :func:`auto_exposure`).
        bright_above, target_mean: over-exposure test and the mean its gamma aims at.
        denoise_strength: NLM filter strength ``h`` = this x the estimated noise sigma (0-255 units).
        denoise_min, denoise_max: bounds on ``h``.
        sharpen_amount: unsharp-mask amount (0 disables).
        sharpen_sigma: Gaussian sigma of the unsharp mask, in output pixels per 64 px of side.
    """

    reference: tuple[float, float, float] = (1.0, 1.0, 1.0)
    max_gain: float = 2.5
    dark_pct: float = 99.0
    dark_below: float = 0.6
    white: float = 0.95
    max_exposure_gain: float = 6.0
    bright_above: float = 0.55
    target_mean: float = 0.45
    denoise_strength: float = 1.0
    denoise_min: float = 3.0
    denoise_max: float = 25.0
    sharpen_amount: float = 0.5
    sharpen_sigma: float = 1.0


def grey_world(img: np.ndarray, max_gain: float = 2.5, reference=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Grey-world white balance: scale each channel so the three channel means are equal.

    Gains keep the mean luminance unchanged (so white balance does not also change exposure).

    Args:
        img: ``(H,W,3)`` float32 RGB in [0,1].
        max_gain: gains are clipped to ``[1/max_gain, max_gain]``.
        reference: target ratios of the channel means (normalised to mean 1); (1,1,1) = grey.

    Returns:
        ``(H,W,3)`` float32 in [0,1].
    """
    means = img.reshape(-1, 3).mean(0).astype(np.float64) + 1e-6
    ref = np.asarray(reference, dtype=np.float64)
    gains = means.mean() * (ref / ref.mean()) / means
    gains = np.clip(gains, 1.0 / max_gain, max_gain)
    gains *= float(LUMA @ means) / float(LUMA @ (means * gains))
    return np.clip(img * gains.astype(np.float32), 0.0, 1.0)


def face_reference(images) -> tuple[float, float, float]:
    """Average colour of clean faces as channel-mean ratios (mean 1), the target of :func:`grey_world`.

    Args:
        images: ``(N,S,S,3)`` uint8 RGB (e.g. ``FaceSet.images`` of the training split).

    Returns:
        ``(r, g, b)`` with mean 1; (1,1,1) for grey faces such as ORL.
    """
    a = np.asarray(getattr(images, "images", images))
    if a.ndim != 4 or a.shape[3] != 3 or len(a) == 0:
        raise ValueError(f"face_reference: expected (N,S,S,3) RGB faces, got shape {a.shape}")
    means = a.reshape(len(a), -1, 3).mean(1).astype(np.float64) + 1e-6
    ratios = (means / means.mean(1, keepdims=True)).mean(0)
    return tuple(float(v) for v in ratios / ratios.mean())


def auto_exposure(img: np.ndarray, dark_pct: float = 99.0, dark_below: float = 0.6, white: float = 0.95,
                  max_gain: float = 6.0, bright_above: float = 0.55, target_mean: float = 0.45) -> np.ndarray:
    """Auto exposure that only corrects frames which are clearly under- or over-exposed.

    Under-exposed (the ``dark_pct`` luminance percentile below ``dark_below``): a linear gain puts
    that percentile at ``white``, like a camera's exposure time (it keeps relative contrast, which a
    percentile stretch of the black point would not). Over-exposed (mean luminance above
    ``bright_above``): a gamma brings the mean to ``target_mean`` (clipped highlights are lost either
    way; the gamma restores mid-tone contrast). Otherwise the image is returned unchanged: a face that
    is already well exposed gets darker or brighter only by a photographer's taste, and stretching
    it costs 2-3 dB PSNR against the clean face (measured on the ORL train split).

    Args:
        img: ``(H,W,3)`` float32 RGB in [0,1].
        dark_pct, dark_below, white, max_gain: under-exposure test and correction.
        bright_above, target_mean: over-exposure test and correction.

    Returns:
        ``(H,W,3)`` float32 in [0,1]; the same curve on every channel (hue kept).
    """
    luma = img @ LUMA
    hi = float(np.percentile(luma, dark_pct))
    mean = float(luma.mean())
    if hi < dark_below:
        return np.clip(img * np.float32(min(max_gain, white / max(hi, 1e-3))), 0.0, 1.0)
    if bright_above < mean < 0.999:
        gamma = math.log(target_mean) / math.log(mean)
        return np.power(img, np.float32(gamma)).astype(np.float32)
    return img


def estimate_noise_sigma(img: np.ndarray) -> float:
    """Estimate the std of additive white noise (Immerkaer 1996, fast noise variance estimation).

    Args:
        img: ``(H,W,3)`` float RGB in [0,1] (H, W >= 3).

    Returns:
        Noise sigma in [0,1] units, from the luminance channel.
    """
    luma = (img @ LUMA).astype(np.float32)
    h, w = luma.shape
    if h < 3 or w < 3:
        return 0.0
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    resp = cv2.filter2D(luma, -1, kernel)[1:-1, 1:-1]
    return float(math.sqrt(math.pi / 2.0) * np.abs(resp).sum() / (6.0 * (w - 2) * (h - 2)))


def nlm_denoise(img: np.ndarray, sigma: float, strength: float = 1.0, h_min: float = 3.0,
                h_max: float = 25.0) -> np.ndarray:
    """Non-local-means colour denoising (``cv2.fastNlMeansDenoisingColored``) with ``h`` set from a noise sigma.

    Args:
        img: ``(H,W,3)`` float32 RGB in [0,1].
        sigma: noise std in [0,1] units (e.g. from :func:`estimate_noise_sigma`).
        strength: ``h`` = strength x sigma x 255, clipped to ``[h_min, h_max]``.

    Returns:
        ``(H,W,3)`` float32 in [0,1] (computed on 8 bits: OpenCV's colour NLM needs uint8).
    """
    h = float(np.clip(strength * sigma * 255.0, h_min, h_max))
    u8 = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    # Small windows: the faces are 16-32 px at this stage; the 7/21 defaults would average across
    # the whole face. The Lab colour pass uses the same h.
    den = cv2.fastNlMeansDenoisingColored(u8, None, h, h, 3, 7)
    return den.astype(np.float32) / np.float32(255.0)


def unsharp_mask(img: np.ndarray, amount: float = 0.5, sigma: float = 1.0) -> np.ndarray:
    """Unsharp mask: ``img + amount * (img - gaussian(img, sigma))``, clipped to [0,1]."""
    if amount <= 0:
        return img
    blur = cv2.GaussianBlur(img, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT_101)
    return np.clip(img + amount * (img - blur), 0.0, 1.0)


def classical_image(img, out_size, config: ClassicalConfig = ClassicalConfig()) -> np.ndarray:
    """Restore one image with the classical chain: white balance, exposure, denoise, upscale, sharpen.

    Args:
        img: ``(h,w,3)`` RGB, uint8 or float in [0,1].
        out_size: ``(H, W)`` or one int.
        config: chain settings.

    Returns:
        ``(H,W,3)`` float32 in [0,1].
    """
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"classical: expected an (h,w,3) RGB image, got shape {a.shape}")
    x = a.astype(np.float32) / np.float32(255.0) if a.dtype == np.uint8 else np.clip(a.astype(np.float32), 0, 1)
    th, tw = (int(out_size), int(out_size)) if isinstance(out_size, (int, np.integer)) else map(int, out_size)
    x = grey_world(x, config.max_gain, config.reference)
    # Noise is estimated after the exposure curve, which amplifies it: NLM must be set for the
    # noise it will actually see.
    x = auto_exposure(x, config.dark_pct, config.dark_below, config.white, config.max_exposure_gain,
                      config.bright_above, config.target_mean)
    x = nlm_denoise(x, estimate_noise_sigma(x), config.denoise_strength, config.denoise_min, config.denoise_max)
    interp = cv2.INTER_CUBIC if th >= x.shape[0] else cv2.INTER_AREA
    x = np.clip(cv2.resize(x, (tw, th), interpolation=interp), 0.0, 1.0)
    return unsharp_mask(x, config.sharpen_amount, config.sharpen_sigma * max(th, tw) / 64.0)


def classical(lq, out_size, config: ClassicalConfig = ClassicalConfig()) -> torch.Tensor:
    """Batch version of :func:`classical_image`.

    Args:
        lq: ``(N,3,h,w)`` float in [0,1] (torch or numpy).
        out_size: ``(H, W)`` or one int.
        config: chain settings.

    Returns:
        ``(N,3,H,W)`` float32 in [0,1].
    """
    lq = check_batch(lq, "classical")
    size = size_pair(out_size, lq, 1)
    arr = lq.detach().float().cpu().numpy().transpose(0, 2, 3, 1)
    out = np.stack([classical_image(im, size, config) for im in arr]) if len(arr) else \
        np.zeros((0, size[0], size[1], 3), np.float32)
    return torch.from_numpy(np.ascontiguousarray(out.transpose(0, 3, 1, 2)))


def classical_uint8(images: np.ndarray, out_size, config: ClassicalConfig = ClassicalConfig()) -> np.ndarray:
    """Classical chain on ``(N,h,w,3)`` uint8 RGB -> ``(N,H,W,3)`` uint8 RGB."""
    a = np.asarray(images)
    if a.ndim != 4 or a.shape[3] != 3 or a.dtype != np.uint8:
        raise ValueError(f"classical_uint8: expected (N,h,w,3) uint8, got {a.shape} {a.dtype}")
    out = [classical_image(im, out_size, config) for im in a]
    return (np.clip(np.stack(out), 0, 1) * 255.0 + 0.5).astype(np.uint8)


_CLAHE = threading.local()  # cv2's CLAHE object is not thread-safe: one per thread


def sharpen_uint8(crops: np.ndarray) -> np.ndarray:
    """Edge-preserving denoise, CLAHE on lightness, unsharp mask: a fast non-learned enhancer.

    Args:
        crops: ``(N,h,w,3)`` uint8 RGB.

    Returns:
        ``(N,h,w,3)`` uint8 RGB, the same size.
    """
    if not hasattr(_CLAHE, "op"):
        _CLAHE.op = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4))
    out = np.empty_like(crops)
    for i, c in enumerate(crops):
        d = cv2.bilateralFilter(c, 5, 30, 5)
        lab = cv2.cvtColor(d, cv2.COLOR_RGB2LAB)
        # half-strength CLAHE: full strength lifts faces into a washed-out look
        lab[:, :, 0] = cv2.addWeighted(_CLAHE.op.apply(lab[:, :, 0]), 0.5, lab[:, :, 0], 0.5, 0)
        d = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
        blur = cv2.GaussianBlur(d, (0, 0), 1.2)
        out[i] = cv2.addWeighted(d, 1.5, blur, -0.5, 0)
    return out
