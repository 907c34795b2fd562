"""Explicit, bounded relighting: undo a strong colour cast or under-exposure, and nothing else.

A face's mean colour cannot tell a warm light from warm skin, nor a dark room from dark skin: a
learned colour correction answers that ambiguity with the training set's average face, which is
how the earlier releases pulled every skin tone toward one. This step is not learned. It is fitted
once, on clean faces under neutral light, as a *locus*: the Gaussian spread of natural face
chromaticities ``(log R/G, log B/G)`` of the central face region in linear light, and the darkest
natural face luminance (``luma_floor``). At run time a face whose chromaticity lies inside the
locus (within ``radius`` Mahalanobis units) keeps its colour exactly; one outside is moved to the
locus boundary along the line to its centre, which removes most of a tungsten or blue cast while
leaving every natural skin tone alone. A face darker than the darkest natural face is brightened
to that floor (at most 2 stops), and no further. Grey faces get equal gains, so they stay grey.

The gains are returned per face (``restore`` and the evaluation report them), and the step is off
with ``--no-relight`` (``net.relight = False``).
"""

from __future__ import annotations

import numpy as np
import torch

from facekit import images

LUMA_709 = (0.2126, 0.7152, 0.0722)
MAX_EXPOSURE_GAIN = 4.0  # 2 stops: more than this invents a face rather than lighting it
_EPS = 1e-4

GRAY_TOLERANCE = 1.0 / 255.0  # an input whose channels never differ by more than this is grey


def is_gray(lq: torch.Tensor, tol: float = GRAY_TOLERANCE) -> torch.Tensor:
    """Per-image grey test: ``(N,3,h,w)`` -> ``(N,)`` bool, True when no pixel's channels differ by more than ``tol``."""
    spread = lq.amax(dim=1) - lq.amin(dim=1)
    return spread.flatten(1).amax(dim=1) <= tol


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """sRGB-encoded values in [0,1] -> linear light (same shape)."""
    return torch.where(x <= 0.04045, x / 12.92, ((x.clamp(min=0) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    """Linear light in [0,1] -> sRGB-encoded values (same shape)."""
    x = x.clamp(0.0, 1.0)
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp(min=1e-8) ** (1 / 2.4) - 0.055)


def face_mask(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Central face region: an ellipse at ``(0.5 W, 0.55 H)`` with semi-axes ``0.28 W x 0.34 H``
    (cheeks, nose, forehead; little hair or background). Returns ``(h,w)`` weights summing to 1."""
    yy = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
    xx = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
    inside = ((xx[None, :] - 0.5) / 0.28) ** 2 + ((yy[:, None] - 0.55) / 0.34) ** 2 <= 1.0
    m = inside.to(dtype)
    return m / m.sum().clamp(min=1.0)


def region_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear-light mean colour of the face region and its chromaticity.

    Args:
        x: ``(N,3,h,w)`` float sRGB in [0,1].

    Returns:
        ``(mean (N,3) linear RGB, chroma (N,2) = (log R/G, log B/G))``.
    """
    mask = face_mask(x.shape[-2], x.shape[-1], x.device, x.dtype)
    mean = (srgb_to_linear(x) * mask).sum(dim=(2, 3)).clamp(min=_EPS)
    chroma = torch.stack([torch.log(mean[:, 0] / mean[:, 1]), torch.log(mean[:, 2] / mean[:, 1])], dim=1)
    return mean, chroma


def fit_locus(faces: np.ndarray, radius: float = 4.0, floor_percentile: float = 0.5) -> dict:
    """Fit the natural-face locus on clean, neutrally lit faces.

    Args:
        faces: ``(N,S,S,3) uint8`` RGB clean faces of every skin tone the model should leave alone
            (the training faces; never evaluation faces).
        radius: Mahalanobis radius of the locus. On the OOD suite's degraded inputs in neutral light
            (UTKFace eval, Pins), radius 3 touched 5% of the faces (+0.18 dE, -0.04 dB), radius 4
            touched 2-3% (+0.09 dE, -0.02 dB) while still removing a third of the warm-light gain
            a relight can give (+0.8 dB): 4 is the default.
        floor_percentile: percentile of face-region luminance below which a face counts as
            under-exposed.

    Returns:
        ``{"mean": (2,), "icov": (2,2), "radius": float, "luma_floor": float}`` (plain lists/floats).
    """
    faces = np.asarray(faces)
    if faces.ndim != 4 or faces.shape[-1] != 3 or len(faces) < 10:
        raise ValueError(f"fit_locus needs at least 10 (N,S,S,3) faces, got shape {faces.shape}")
    x = images.to_tensor(faces)
    mean, chroma = region_stats(x)
    colour = (faces.max(axis=-1).astype(np.int16) - faces.min(axis=-1)).reshape(len(faces), -1).max(axis=1) > 2
    c = chroma[torch.from_numpy(colour)].double()
    if len(c) < 10:
        raise ValueError("fit_locus needs at least 10 colour (non-grey) faces")
    mu = c.mean(dim=0)
    cov = torch.cov(c.T) + 1e-6 * torch.eye(2, dtype=torch.float64)
    luma = mean.double() @ torch.tensor(LUMA_709, dtype=torch.float64)
    return {"mean": mu.tolist(), "icov": torch.linalg.inv(cov).tolist(), "radius": float(radius),
            "luma_floor": float(np.percentile(luma.numpy(), floor_percentile))}


def set_locus(net: torch.nn.Module, locus: dict) -> None:
    """Copy a :func:`fit_locus` result into a generator's ``locus_*`` / ``luma_floor`` buffers."""
    with torch.no_grad():
        net.locus_mean.copy_(torch.tensor(locus["mean"]))
        net.locus_icov.copy_(torch.tensor(locus["icov"]))
        net.locus_radius.fill_(float(locus["radius"]))
        net.luma_floor.fill_(float(locus["luma_floor"]))


def relight_gains(lq: torch.Tensor, net: torch.nn.Module) -> torch.Tensor:
    """Per-face linear-light RGB gains of the relight step (all ones inside the locus).

    Args:
        lq: ``(N,3,h,w)`` float sRGB in [0,1].
        net: a module with the locus buffers (``locus_mean``, ``locus_icov``, ``locus_radius``,
            ``luma_floor``).

    Returns:
        ``(N,3)`` float gains.
    """
    mean, chroma = region_stats(lq)
    d = chroma - net.locus_mean.to(lq.dtype)
    maha = torch.sqrt((d @ net.locus_icov.to(lq.dtype) * d).sum(dim=1).clamp(min=0))
    radius = net.locus_radius.to(lq.dtype)
    shrink = torch.where(maha > radius, radius / maha.clamp(min=_EPS), torch.ones_like(maha))
    target = net.locus_mean.to(lq.dtype) + d * shrink[:, None]
    delta = torch.where(is_gray(lq)[:, None], torch.zeros_like(d), target - chroma)
    gains = torch.stack([torch.exp(delta[:, 0]), torch.ones_like(delta[:, 0]), torch.exp(delta[:, 1])], dim=1)
    w = torch.tensor(LUMA_709, dtype=lq.dtype, device=lq.device)
    luma = mean @ w
    gains = gains * (luma / ((mean * gains) @ w).clamp(min=_EPS))[:, None]  # chroma moves keep luminance
    floor = net.luma_floor.to(lq.dtype)
    exposure = (floor / luma.clamp(min=_EPS)).clamp(min=1.0, max=MAX_EXPOSURE_GAIN)
    return gains * exposure[:, None]


def relight(lq: torch.Tensor, net: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the relight step: ``(N,3,h,w)`` sRGB in [0,1] -> (relit ``(N,3,h,w)``, gains ``(N,3)``)."""
    gains = relight_gains(lq, net)
    out = linear_to_srgb(srgb_to_linear(lq) * gains[:, :, None, None])
    return out, gains
