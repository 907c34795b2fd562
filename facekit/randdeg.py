"""Randomised training degradations: a wide, shuffled, second-order model of CCTV faces.

The fixed ``cctv-heavy`` preset taught the earlier releases one camera; on other cameras and
other faces they did harm. This module draws each training pair from a much wider family, in the
spirit of Real-ESRGAN's second-order model and BSRGAN's shuffled degradations:

* framing and scale jitter of the clean face (tight, loose, off-centre crops);
* a global light (white balance 2,500-11,000 K, exposure -2.5..+1 stops) applied to **both** the
  clean target and the degraded input, so the network learns restoration under any light and
  never learns to guess a skin tone or a light (the explicit relight step does that, see
  :mod:`facekit.relight`);
* grey (IR / mono CCTV) samples, grey in both ``lq`` and ``gt``;
* one or two rounds of {blur, resize, noise, JPEG}, the blur and noise order shuffled: isotropic,
  anisotropic, motion (shake trajectories and straight lines) and defocus kernels; area,
  bilinear, bicubic and nearest resizes; Gaussian, Poisson and colour noise; JPEG 30-95;
* now and then almost no degradation at all (a plain area downscale), so sharp inputs stay sharp.

Every draw comes from the generator passed in; :func:`degrade_pair` records them in ``params``.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from facekit import augment, degrade

RESIZE_MODES = ("area", "bilinear", "bicubic", "nearest")
_CV_RESIZE = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC,
              "nearest": cv2.INTER_NEAREST}
BLUR_KINDS = ("iso", "aniso", "motion", "line", "defocus")
# Probabilities of the top-level choices; see the module docstring for why each exists.
P_CLEAN = 0.08  # plain area downscale only
P_SECOND_ORDER = 0.5
P_GRAY = 0.2
P_NEUTRAL_LIGHT = 0.45


def anisotropic_gaussian_kernel(sigma_x: float, sigma_y: float, theta: float, size: int | None = None) -> np.ndarray:
    """Rotated anisotropic Gaussian kernel.

    Args:
        sigma_x / sigma_y: standard deviations (pixels) along the rotated axes, > 0.
        theta: rotation in radians.
        size: odd side; default ``2*ceil(3*max sigma)+1``.

    Returns:
        ``(size,size) float32`` summing to 1.
    """
    if sigma_x <= 0 or sigma_y <= 0:
        raise ValueError(f"sigmas must be positive, got {sigma_x}, {sigma_y}")
    half = int(math.ceil(3 * max(sigma_x, sigma_y))) if size is None else size // 2
    ax = np.arange(-half, half + 1, dtype=np.float64)
    xx, yy = np.meshgrid(ax, ax)
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * xx + s * yy, -s * xx + c * yy
    k = np.exp(-0.5 * ((u / sigma_x) ** 2 + (v / sigma_y) ** 2))
    return (k / k.sum()).astype(np.float32)


def _resize(x: np.ndarray, side_hw: tuple[int, int], mode: str) -> np.ndarray:
    h, w = side_hw
    if x.shape[:2] == (h, w):
        return x
    out = cv2.resize(x, (w, h), interpolation=_CV_RESIZE[mode])
    return np.clip(out, 0.0, 1.0) if mode == "bicubic" else out


def jitter_frame(face: np.ndarray, rng: np.random.Generator, zoom=(0.72, 1.2), shift: float = 0.12) -> tuple[np.ndarray, dict]:
    """Re-frame a clean face crop: zoom out (loose) or in (tight) and shift it (off-centre).

    Args:
        face: ``(S,S,3) uint8`` clean aligned face.
        rng: draws zoom, shift and whether to jitter at all (40% keep the aligned framing).
        zoom: range of the face scale; < 1 makes the face smaller (a looser crop).
        shift: largest centre shift as a fraction of the side.

    Returns:
        ``((S,S,3) uint8, {"zoom", "dx", "dy"})``; borders are reflected.
    """
    if rng.random() < 0.4:
        return face, {"zoom": 1.0, "dx": 0.0, "dy": 0.0}
    s = face.shape[0]
    z = float(rng.uniform(*zoom))
    dx, dy = (float(v) for v in rng.uniform(-shift, shift, 2))
    c = (s - 1) / 2.0
    mat = np.array([[z, 0.0, c - z * c + dx * s], [0.0, z, c - z * c + dy * s]], np.float32)
    out = cv2.warpAffine(face, mat, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return out, {"zoom": z, "dx": dx, "dy": dy}


def random_light(rng: np.random.Generator) -> dict:
    """A global light: ``{"kelvin", "exposure_stops", "gamma"}`` (neutral about 45% of the time)."""
    if rng.random() < P_NEUTRAL_LIGHT:
        return {"kelvin": augment.NEUTRAL_KELVIN, "exposure_stops": 0.0, "gamma": 1.0}
    kelvin = float(np.exp(rng.uniform(np.log(2500.0), np.log(11000.0)))) if rng.random() < 0.7 else augment.NEUTRAL_KELVIN
    stops = float(rng.uniform(-2.5, 1.0)) if rng.random() < 0.7 else 0.0
    gamma = float(rng.uniform(0.85, 1.25)) if rng.random() < 0.3 else 1.0
    return {"kelvin": round(kelvin / 50.0) * 50.0, "exposure_stops": stops, "gamma": gamma}


def _blur(x: np.ndarray, rng: np.random.Generator, side: int, strength: float) -> tuple[np.ndarray, dict]:
    kind = BLUR_KINDS[int(rng.integers(len(BLUR_KINDS)))]
    f = side / 64.0 * strength  # kernel sizes are drawn for a 64 px face and scaled
    if kind == "iso":
        sigma = float(rng.uniform(0.3, 2.6) * f)
        return degrade.gaussian_blur(x, max(sigma, 0.1)), {"kind": kind, "sigma": sigma}
    if kind == "aniso":
        sx, sy = (float(v) for v in rng.uniform(0.3, 3.0, 2) * f)
        theta = float(rng.uniform(0, math.pi))
        return degrade.apply_kernel(x, anisotropic_gaussian_kernel(max(sx, 0.1), max(sy, 0.1), theta)), \
            {"kind": kind, "sigma_x": sx, "sigma_y": sy, "theta": theta}
    if kind == "motion":
        length = max(1, int(round(rng.uniform(1.5, 7.0) * f)))
        traj = int(rng.integers(0, 64))
        return degrade.motion_blur(x, length, float(rng.uniform(0.5, 1.0)), traj), \
            {"kind": kind, "length_px": length, "trajectory": traj}
    if kind == "line":
        length = max(1, int(round(rng.uniform(2.0, 7.0) * f)))
        angle = float(rng.uniform(0, 180))
        return degrade.linear_motion_blur(x, length, angle), {"kind": kind, "length_px": length, "angle": angle}
    radius = float(rng.uniform(0.6, 2.6) * f)
    return degrade.defocus_blur(x, max(radius, 0.3)), {"kind": kind, "radius_px": radius}


def _noise(x: np.ndarray, rng: np.random.Generator, gray: bool, strength: float) -> tuple[np.ndarray, dict]:
    # filters leave -1e-17 where a value should be 0, and Poisson rates must not be negative
    x = np.clip(x, 0.0, 1.0)
    colour = (not gray) and rng.random() < 0.5
    if rng.random() < 0.5:
        sigma = float(rng.uniform(0.002, 0.06) * strength)
        return degrade.gaussian_noise(x, sigma, color=colour, seed=rng), {"kind": "gauss", "sigma": sigma, "color": colour}
    photons = float(np.exp(rng.uniform(np.log(40.0), np.log(2000.0))) / max(strength, 1e-3))
    return degrade.poisson_noise(x, photons, color=colour, seed=rng), {"kind": "poisson", "photons": photons, "color": colour}


def _round(x: np.ndarray, rng: np.random.Generator, out_hw: tuple[int, int], gray: bool, strength: float,
           p_blur: float) -> tuple[np.ndarray, list[dict]]:
    """One {blur, resize, noise, JPEG} round; blur and resize order shuffled, noise after resize."""
    ops: list[dict] = []
    blur_first = rng.random() < 0.75
    do_blur = rng.random() < p_blur
    mode = RESIZE_MODES[int(rng.integers(len(RESIZE_MODES)))] if rng.random() < 0.6 else "area"
    if do_blur and blur_first:
        x, p = _blur(x, rng, x.shape[0], strength)
        ops.append({"op": "blur", **p})
    x = _resize(x, out_hw, mode)
    ops.append({"op": "resize", "mode": mode, "size": list(out_hw)})
    if do_blur and not blur_first:
        x, p = _blur(x, rng, x.shape[0] * 4, strength * 0.35)
        ops.append({"op": "blur", **p})
    if rng.random() < 0.75:
        x, p = _noise(x, rng, gray, strength)
        ops.append({"op": "noise", **p})
    if rng.random() < 0.7:
        q = int(rng.integers(30, 96))
        x = degrade.jpeg(x, q)
        ops.append({"op": "jpeg", "quality": q})
    return x.astype(np.float32, copy=False), ops


def degrade_pair(face: np.ndarray, scale: int, rng: np.random.Generator, gray_prob: float = P_GRAY
                 ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Draw one training pair from a clean face.

    Args:
        face: ``(S,S,3) uint8`` clean aligned face (S divisible by ``scale``).
        scale: lq side = S / scale.
        rng: the sample's generator (every draw comes from it).
        gray_prob: chance of a grey sample (grey ``gt`` and ``lq``).

    Returns:
        ``(lq (S/scale,S/scale,3) float32 in [0,1], gt (S,S,3) float32 in [0,1], params)``;
        ``gt`` is the re-framed face under the drawn light, ``lq`` its degraded copy.
    """
    face, frame = jitter_frame(face, rng)
    gray = rng.random() < gray_prob
    light = random_light(rng)
    gt = augment.apply_lighting(degrade.to_float(face), light["kelvin"], light["exposure_stops"], light["gamma"])
    gt = np.clip(gt, 0.0, 1.0).astype(np.float32)
    if gray:
        gt = np.repeat((gt @ augment.LUMA)[..., None], 3, axis=-1).astype(np.float32)
    lq, ops = degrade_lq(gt, scale, rng, gray)
    return lq, gt, {"frame": frame, "light": light, "gray": bool(gray), "ops": ops}


def degrade_lq(gt: np.ndarray, scale: int, rng: np.random.Generator, gray: bool = False
               ) -> tuple[np.ndarray, list[dict]]:
    """The camera part of :func:`degrade_pair`: a clean face (already framed and lit) to its input.

    Args:
        gt: ``(S,S,3) float32`` in [0,1] clean face (S divisible by ``scale``).
        scale: lq side = S / scale.
        rng: every draw comes from it.
        gray: a grey sample: colour noise and JPEG chroma rounding are taken out again.

    Returns:
        ``(lq (S/scale,S/scale,3) float32 in [0,1], ops)``: one dict per applied operation.
    """
    s = gt.shape[0]
    lq_hw = (s // scale, s // scale)
    if rng.random() < P_CLEAN:
        lq = _resize(gt, lq_hw, "area")
        ops = [{"op": "resize", "mode": "area", "size": list(lq_hw)}]
    else:
        second = rng.random() < P_SECOND_ORDER
        strength = float(rng.uniform(0.3, 1.0))
        if second:
            mid = int(round(s / float(rng.uniform(1.3, scale * 0.75))))
            mid = int(np.clip(mid, lq_hw[0] + 1, s))
            lq, ops1 = _round(gt, rng, (mid, mid), gray, strength * 0.7, 0.8)
            lq, ops2 = _round(lq, rng, lq_hw, gray, strength * 0.6, 0.4)
            ops = ops1 + ops2
        else:
            lq, ops = _round(gt, rng, lq_hw, gray, strength, 0.85)
    if gray:  # colour noise and JPEG chroma rounding must not colour a grey sample
        lq = np.repeat((lq @ augment.LUMA)[..., None], 3, axis=-1)
    return np.clip(lq, 0.0, 1.0).astype(np.float32), ops
