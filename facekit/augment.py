"""Lighting conditions, directional light and head-pose augmentation for face crops.

All functions take ``(H,W,3)`` RGB images, either ``uint8`` or floating point in ``[0,1]``, and
return ``float32`` in ``[0,1]`` (the working format of :mod:`facekit.degrade`). Random variants
take an explicit :class:`numpy.random.Generator` and return ``(image, params)`` so the drawn
values can be logged and replayed.

Lighting conditions (:data:`CONDITIONS`, ranges in :data:`CONDITION_RANGES`):

========  ===============================  ====================  ============
condition white point (Kelvin)              exposure (stops)      gamma
========  ===============================  ====================  ============
warm      2,700 - 3,500 K (tungsten)        0                     1
cold      7,000 - 10,000 K (shade, LED)     0                     1
low       6,500 K (neutral)                 -2.0 .. -1.0          1.0 .. 1.3
medium    6,500 K (neutral)                 0                     1
bright    6,500 K (neutral)                 +0.2 .. +0.7          0.85 .. 1.0
========  ===============================  ====================  ============

The neutral white point is :data:`NEUTRAL_KELVIN` = 6,500 K (about D65, the sRGB white).
Warm/cold re-light the scene as if lit by a black body at that temperature while the camera
stays balanced for 6,500 K; the gains keep Rec.709 luminance unchanged, so warm/cold change
colour, not brightness. The brief's cold range starts at 6,500 K, which is the neutral point
itself, so cold starts at 7,000 K to always be a visible shift. Low and bright change exposure
(``2**stops``) then gamma, with clipping (blown highlights in bright, crushed shadows in low).
Medium is exactly neutral (identity), so evaluation under "medium" sees unaltered light. The
low/bright ranges stop short of black or white frames: the face must stay recoverable (the
``low_light`` degradation of :mod:`facekit.degrade` goes darker, with sensor noise).

Head pose: roll is an in-plane rotation; yaw and pitch are approximated by the perspective
warp of the face crop as a plane turned in 3-D (x right, y down, z into the scene, camera at
twice the crop size); horizontal flip mirrors first. Angles are in degrees.
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

CONDITIONS = ("warm", "cold", "low", "medium", "bright")
NEUTRAL_KELVIN = 6500.0
# condition -> {parameter: (low, high)}; documented in the module docstring.
CONDITION_RANGES = {
    "warm": {"kelvin": (2700.0, 3500.0), "exposure_stops": (0.0, 0.0), "gamma": (1.0, 1.0)},
    "cold": {"kelvin": (7000.0, 10000.0), "exposure_stops": (0.0, 0.0), "gamma": (1.0, 1.0)},
    "low": {"kelvin": (NEUTRAL_KELVIN, NEUTRAL_KELVIN), "exposure_stops": (-2.0, -1.0), "gamma": (1.0, 1.3)},
    "medium": {"kelvin": (NEUTRAL_KELVIN, NEUTRAL_KELVIN), "exposure_stops": (0.0, 0.0), "gamma": (1.0, 1.0)},
    "bright": {"kelvin": (NEUTRAL_KELVIN, NEUTRAL_KELVIN), "exposure_stops": (0.2, 0.7), "gamma": (0.85, 1.0)},
}
POSE_RANGES = {"roll": (-15.0, 15.0), "yaw": (-30.0, 30.0), "pitch": (-15.0, 15.0)}
LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)  # Rec.709


def _float_image(img) -> np.ndarray:
    """Validate an ``(H,W,3)`` image and return it as float32 in [0,1] (no copy when possible)."""
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"expected an (H,W,3) RGB image, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / np.float32(255.0)
    if a.dtype.kind != "f":
        raise ValueError(f"expected a uint8 or float image, got dtype {a.dtype}")
    return a if a.dtype == np.float32 else a.astype(np.float32)


def mean_luminance(img) -> float:
    """Mean Rec.709 luminance of an RGB image, in [0,1]."""
    a = _float_image(img)
    return float(a.reshape(-1, 3).mean(axis=0) @ LUMA)


def _check_condition(condition: str) -> str:
    if condition not in CONDITIONS:
        raise ValueError(f"unknown lighting condition {condition!r}; valid: {', '.join(CONDITIONS)}")
    return condition


# ---------------------------------------------------------------------------------------------
# White point, exposure, gamma


def kelvin_to_rgb(kelvin: float) -> np.ndarray:
    """RGB colour of a black body at ``kelvin`` (Tanner Helland's fit), ``(3,) float64`` in [0,1]."""
    if not 1000.0 <= kelvin <= 40000.0:
        raise ValueError(f"colour temperature must be within 1,000-40,000 K, got {kelvin}")
    t = kelvin / 100.0
    r = 255.0 if t <= 66 else 329.698727446 * (t - 60) ** -0.1332047592
    g = 99.4708025861 * math.log(t) - 161.1195681661 if t <= 66 else 288.1221695283 * (t - 60) ** -0.0755148492
    if t >= 66:
        b = 255.0
    elif t <= 19:
        b = 0.0
    else:
        b = 138.5177312231 * math.log(t - 10) - 305.0447927307
    return np.clip(np.array([r, g, b]), 0.0, 255.0) / 255.0


@functools.lru_cache(maxsize=4096)
def _gains(kelvin: float, neutral: float) -> np.ndarray:
    """Per-channel gains that re-light a ``neutral`` scene with a ``kelvin`` light.

    Returns:
        ``(3,) float32``, read-only (cached); their Rec.709 luminance is 1 (brightness is kept).
    """
    gains = kelvin_to_rgb(kelvin) / kelvin_to_rgb(neutral)
    gains = gains / float(gains @ LUMA.astype(np.float64))
    out = gains.astype(np.float32)
    out.setflags(write=False)
    return out


def apply_lighting(img, kelvin: float = NEUTRAL_KELVIN, exposure_stops: float = 0.0,
                   gamma: float = 1.0, condition: str | None = None) -> np.ndarray:
    """Re-light an image: white-point shift, exposure change, then gamma, with clipping.

    Args:
        img: ``(H,W,3)`` uint8 or float in [0,1].
        kelvin: light colour temperature; :data:`NEUTRAL_KELVIN` leaves colours unchanged.
        exposure_stops: exposure change in stops (factor ``2**stops``); negative darkens.
        gamma: output = input ** gamma after exposure (> 1 darkens mid-tones).
        condition: label only (kept so a params record can be passed back as ``**params``).

    Returns:
        ``(H,W,3) float32`` in [0,1].
    """
    if gamma <= 0:
        raise ValueError(f"gamma must be positive, got {gamma}")
    x = _float_image(img)
    if kelvin == NEUTRAL_KELVIN and exposure_stops == 0.0 and gamma == 1.0:
        return x.copy()  # "medium": exactly neutral
    gain = _gains(float(kelvin), NEUTRAL_KELVIN) * np.float32(2.0 ** exposure_stops)
    out = x * gain
    np.clip(out, 0.0, 1.0, out=out)
    if gamma != 1.0:
        np.power(out, np.float32(gamma), out=out)
    return out


def sample_lighting(condition: str, rng: np.random.Generator) -> dict:
    """Draw the parameters of one lighting condition from :data:`CONDITION_RANGES`.

    Returns:
        ``{"condition", "kelvin", "exposure_stops", "gamma"}`` (plain Python scalars).
    """
    ranges = CONDITION_RANGES[_check_condition(condition)]
    out = {"condition": condition}
    for key in ("kelvin", "exposure_stops", "gamma"):
        lo, hi = ranges[key]
        out[key] = float(lo) if lo == hi else float(rng.uniform(lo, hi))
    if out["kelvin"] != NEUTRAL_KELVIN:
        out["kelvin"] = float(round(out["kelvin"] / 50.0) * 50.0)  # 50 K steps: gains stay cached
    return out


def lighting_condition(img, condition: str, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Random variant: re-light ``img`` under a named condition.

    Returns:
        ``(image (H,W,3) float32 in [0,1], params)``; ``params["condition"]`` is the label.
    """
    params = sample_lighting(condition, rng)
    return apply_lighting(img, **params), params


# ---------------------------------------------------------------------------------------------
# Directional light


@functools.lru_cache(maxsize=64)
def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    xs = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    return xs, ys


def shading_field(shape_hw: tuple[int, int], azimuth: float, strength: float, softness: float) -> np.ndarray:
    """Smooth shading from a light at ``azimuth`` degrees (0 = from the right, 90 = from above).

    The lit side keeps full brightness; the far side falls to ``1 - strength`` through a sigmoid
    of width ``softness`` (in half-widths of the crop), i.e. side lighting / a half-face shadow.

    Returns:
        ``(H,W) float32`` in ``[1-strength, 1]``.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be within [0,1], got {strength}")
    if softness <= 0:
        raise ValueError(f"softness must be positive, got {softness}")
    xs, ys = _grid(int(shape_hw[0]), int(shape_hw[1]))
    a = math.radians(azimuth)
    u = xs * np.float32(math.cos(a)) - ys * np.float32(math.sin(a))  # y grows downwards
    lit = 0.5 + 0.5 * np.tanh(u * np.float32(1.0 / softness))
    return np.float32(1.0 - strength) + np.float32(strength) * lit


def directional_light(img, azimuth: float, strength: float = 0.5, softness: float = 0.3) -> np.ndarray:
    """Multiply an image by :func:`shading_field`. Returns ``(H,W,3) float32`` in [0,1]."""
    x = _float_image(img)
    return x * shading_field(x.shape[:2], azimuth, strength, softness)[:, :, None]


def random_directional_light(img, rng: np.random.Generator, strength=(0.2, 0.6),
                             softness=(0.15, 0.6)) -> tuple[np.ndarray, dict]:
    """Random variant of :func:`directional_light` (azimuth uniform in [0,360))."""
    params = {"azimuth": float(rng.uniform(0.0, 360.0)), "strength": float(rng.uniform(*strength)),
              "softness": float(rng.uniform(*softness))}
    return directional_light(img, **params), params


# ---------------------------------------------------------------------------------------------
# Head pose


def pose_homography(shape_hw: tuple[int, int], roll: float = 0.0, yaw: float = 0.0, pitch: float = 0.0,
                    flip: bool = False) -> np.ndarray:
    """3x3 homography (source -> output pixels) for flip, then yaw/pitch of the crop plane, then roll.

    The crop is a plane through the image centre, seen by a pinhole camera at a distance of twice
    the crop size; yaw turns it about the vertical axis, pitch about the horizontal axis.
    """
    h, w = int(shape_hw[0]), int(shape_hw[1])
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    dist = 2.0 * max(h, w)
    ry, rp, rr = (math.radians(v) for v in (yaw, pitch, roll))
    rot_y = np.array([[math.cos(ry), 0, math.sin(ry)], [0, 1, 0], [-math.sin(ry), 0, math.cos(ry)]])
    rot_x = np.array([[1, 0, 0], [0, math.cos(rp), -math.sin(rp)], [0, math.sin(rp), math.cos(rp)]])
    rot_z = np.array([[math.cos(rr), -math.sin(rr), 0], [math.sin(rr), math.cos(rr), 0], [0, 0, 1]])
    rot = rot_z @ rot_x @ rot_y
    src = np.array([[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]], dtype=np.float32)
    plane = np.zeros((4, 3))
    plane[:, :2] = src - np.array([cx, cy])
    if flip:
        plane[:, 0] = -plane[:, 0]
    pts = plane @ rot.T
    scale = dist / (pts[:, 2] + dist)
    dst = (pts[:, :2] * scale[:, None] + np.array([cx, cy])).astype(np.float32)
    return cv2.getPerspectiveTransform(src, dst)


def pose_warp(img, roll: float = 0.0, yaw: float = 0.0, pitch: float = 0.0, flip: bool = False) -> np.ndarray:
    """Apply a head-pose change to a face crop (borders reflected, bilinear).

    Args:
        img: ``(H,W,3)`` uint8 or float in [0,1].
        roll, yaw, pitch: degrees; flip: mirror horizontally first.

    Returns:
        ``(H,W,3) float32`` in [0,1], same size as the input.
    """
    x = _float_image(img)
    if roll == 0.0 and yaw == 0.0 and pitch == 0.0:
        return np.ascontiguousarray(x[:, ::-1]) if flip else x
    hmat = pose_homography(x.shape[:2], roll, yaw, pitch, flip)
    return cv2.warpPerspective(x, hmat, (x.shape[1], x.shape[0]), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT_101)


def sample_pose(rng: np.random.Generator, roll=POSE_RANGES["roll"], yaw=POSE_RANGES["yaw"],
                pitch=POSE_RANGES["pitch"], flip_prob: float = 0.5) -> dict:
    """Draw ``{"roll", "yaw", "pitch", "flip"}`` uniformly from the given degree ranges."""
    if not 0.0 <= flip_prob <= 1.0:
        raise ValueError(f"flip_prob must be within [0,1], got {flip_prob}")
    return {"roll": float(rng.uniform(*roll)), "yaw": float(rng.uniform(*yaw)),
            "pitch": float(rng.uniform(*pitch)), "flip": bool(rng.random() < flip_prob)}


def random_pose(img, rng: np.random.Generator, **ranges) -> tuple[np.ndarray, dict]:
    """Random variant of :func:`pose_warp`; returns ``(image, applied angles)``."""
    params = sample_pose(rng, **ranges)
    return pose_warp(img, **params), params
