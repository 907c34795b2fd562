"""CCTV-like degradations and the data-driven pipeline that turns a clean face into a training pair.

Image format: every function takes ``(H,W,3)`` RGB, ``uint8`` or float in ``[0,1]``, and returns
``float32`` in ``[0,1]``. float32 is the working format because blur, resizing and noise need it
and OpenCV is fast on it; ``uint8`` only appears inside JPEG/video coding. Functions never modify
their input in place.

Each degradation is a plain function with explicit parameters (``motion_blur``, ``jpeg`` ...) and
a random variant, ``random_op(name, image, rng)`` with a :class:`numpy.random.Generator`, that
returns ``(image, params)``; ``op(image, **params)`` reproduces it exactly. Noise ops take an
integer ``seed`` as an explicit parameter so they replay too.

A pipeline is data (see :data:`PRESETS`)::

    [{"op": "motion_blur", "p": 0.5, "length_frac": [0.04, 0.16]},
     {"op": "downsample", "method": ["area", "bicubic"]},
     {"op": "jpeg", "p": 0.9, "quality": [10, 70]}]

Each entry names an op of :data:`OPS`; ``p`` is its probability; every other key overrides a
parameter with a range ``[low, high]`` (drawn uniformly; log-uniformly where marked), a fixed
number, a list of choices or a single choice. Spatial sizes are fractions of the current image
side (``*_frac``), so one preset works at 64, 128 or 256 px. ``Pipeline(spec)(gt, rng)`` returns
``(lq, gt, params)``: ``params["ops"]`` lists every op applied with its drawn values, and
``replay(params, gt)`` rebuilds ``lq`` bit for bit. Geometric ops (``pose``) come first and apply
to both images; everything else applies to ``lq`` only.

:data:`OPS` is the one registry of ops: each :class:`OpDef` also carries its explorer controls
(:class:`Control`), the evaluation factor columns its recorded params feed (:class:`Factor`,
:func:`degradation_factors`) and its family in the model card's headroom table, so adding an op
is a change here only (``facekit.explorer``, ``facekit.evaluate`` and ``facekit.release`` derive
their tables from it).

Speed: ops are small OpenCV calls on cached kernels; the costly video-codec pass (about 2 ms a
frame: it writes and reads a temporary file) is left out of ``cctv-heavy`` and lives in the
``cctv-video`` preset. See ``benchmarks/bench_degrade.py``.
"""

from __future__ import annotations

import functools
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from facekit import augment, settings
from facekit.errors import ConfigError, FacekitError

DOWNSAMPLE_METHODS = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}
OCCLUSION_KINDS = ("rectangle", "eyes", "lower_face", "hand")
VIDEO_CODECS = {"MJPG": ".avi", "mp4v": ".mp4"}
TRAJECTORY_BANK = 32  # distinct camera-shake paths the random variant picks from (kernels are cached)
_BORDER = cv2.BORDER_REFLECT_101


class ImageFormatError(FacekitError, ValueError):
    """An image array has the wrong shape, dtype or value range."""


# ---------------------------------------------------------------------------------------------
# Image format


def to_float(img) -> np.ndarray:
    """Return an ``(H,W,3)`` image as float32 in [0,1] (uint8 is scaled by 1/255; float32 is not copied)."""
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ImageFormatError(f"expected an (H,W,3) RGB image, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / np.float32(255.0)
    if a.dtype.kind != "f":
        raise ImageFormatError(f"expected a uint8 or float image, got dtype {a.dtype}")
    return a if a.dtype == np.float32 else a.astype(np.float32)


def to_uint8(img) -> np.ndarray:
    """Float image in [0,1] -> ``uint8`` (rounded, clipped)."""
    a = np.asarray(img)
    if a.dtype == np.uint8:
        return a
    return (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Blur kernels (cached: they depend only on a few rounded numbers)


def _splat(points: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Rasterise sub-pixel points (``(n,2)`` x,y about the origin) into a normalised odd kernel whose
    centre of mass is the centre pixel, so blurring never shifts the face against ``gt``."""
    w = np.ones(len(points)) if weights is None else weights
    pts = points - (points * w[:, None]).sum(0) / w.sum()
    half = int(math.ceil(np.abs(pts).max())) + 1
    k = 2 * half + 1
    x = pts[:, 0] + half
    y = pts[:, 1] + half
    x0 = np.floor(x).astype(int)
    y0 = np.floor(y).astype(int)
    fx = x - x0
    fy = y - y0
    ker = np.zeros((k + 1, k + 1))
    np.add.at(ker, (y0, x0), w * (1 - fx) * (1 - fy))
    np.add.at(ker, (y0, x0 + 1), w * fx * (1 - fy))
    np.add.at(ker, (y0 + 1, x0), w * (1 - fx) * fy)
    np.add.at(ker, (y0 + 1, x0 + 1), w * fx * fy)
    ker = ker[:k, :k]
    # Trim empty borders symmetrically to keep filter2D cheap.
    while ker.shape[0] > 1 and not ker[0].any() and not ker[-1].any() and not ker[:, 0].any() and not ker[:, -1].any():
        ker = ker[1:-1, 1:-1]
    out = (ker / ker.sum()).astype(np.float32)
    out.setflags(write=False)
    return out


@functools.lru_cache(maxsize=1024)
def linear_motion_kernel(length_px: int, angle: float) -> np.ndarray:
    """Straight motion-blur kernel: a line of ``length_px`` pixels at ``angle`` degrees
    (counter-clockwise from the x axis), anti-aliased, centred, summing to 1. ``(k,k) float32``."""
    length_px = int(length_px)
    if length_px < 1:
        raise ValueError(f"motion length must be >= 1 pixel, got {length_px}")
    if length_px == 1:
        return _splat(np.zeros((1, 2)))
    t = np.linspace(-(length_px - 1) / 2.0, (length_px - 1) / 2.0, 4 * length_px + 1)
    a = math.radians(angle)
    return _splat(np.c_[t * math.cos(a), -t * math.sin(a)])


@functools.lru_cache(maxsize=TRAJECTORY_BANK * 4)
def shake_trajectory(trajectory: int, iters: int = 1000) -> np.ndarray:
    """A random camera-shake path of total length 1 (DeblurGAN, Kupyn et al. 2018).

    A 2-D random walk with inertia: constant speed, Gaussian steering, a pull back to the start
    (centripetal) and rare large jerks, all scaled per path from ``trajectory`` (the path's seed).

    Returns:
        ``(iters,2) float64`` x,y positions, first at the origin.
    """
    rng = np.random.default_rng([0x5EED, int(trajectory)])
    max_len, expl = 60.0, float(rng.choice([0.01, 0.005, 0.003, 0.001]))
    centripetal = 0.7 * rng.random()
    prob_big_shake = 0.2 * rng.random()
    gaussian_shake = 10.0 * rng.random()
    step = max_len / (iters - 1)
    v = complex(math.cos(2 * math.pi * rng.random()), math.sin(2 * math.pi * rng.random()))
    v = v / abs(v) * step
    jerk = rng.random(iters) < prob_big_shake * expl * (2000.0 / iters)
    jerk_turn = rng.random(iters) - 0.5
    steer = rng.standard_normal(iters) + 1j * rng.standard_normal(iters)
    x = np.zeros(iters, dtype=complex)
    for t in range(iters - 1):
        nxt = 2 * v * np.exp(1j * (math.pi + jerk_turn[t])) if jerk[t] else 0.0
        v = v + nxt + expl * (gaussian_shake * steer[t] - centripetal * x[t]) * step
        v = v / abs(v) * step
        x[t + 1] = x[t] + v
    x = x / max_len
    return np.c_[x.real, x.imag]


@functools.lru_cache(maxsize=4096)
def trajectory_kernel(length_px: int, exposure: float = 1.0, trajectory: int = 0) -> np.ndarray:
    """Camera-shake kernel: the first ``exposure`` fraction of path ``trajectory`` scaled to a path
    length of ``length_px`` pixels, rasterised. ``(k,k) float32`` summing to 1, centred."""
    length_px = int(length_px)
    if length_px < 1:
        raise ValueError(f"motion length must be >= 1 pixel, got {length_px}")
    if not 0.0 < exposure <= 1.0:
        raise ValueError(f"exposure must be within (0,1], got {exposure}")
    path = shake_trajectory(int(trajectory))
    n = max(2, int(round(exposure * len(path))))
    return _splat(path[:n] * length_px)


@functools.lru_cache(maxsize=512)
def disk_kernel(radius_px: float) -> np.ndarray:
    """Defocus kernel: an anti-aliased disk of ``radius_px`` pixels (8x supersampled), sum 1."""
    if radius_px <= 0:
        raise ValueError(f"defocus radius must be positive, got {radius_px}")
    half = int(math.ceil(radius_px))
    sub = (np.arange(8 * (2 * half + 1)) + 0.5) / 8.0 - half - 0.5
    inside = (sub[:, None] ** 2 + sub[None, :] ** 2) <= radius_px ** 2
    ker = inside.reshape(2 * half + 1, 8, 2 * half + 1, 8).mean(axis=(1, 3))
    out = (ker / ker.sum()).astype(np.float32)
    out.setflags(write=False)
    return out


def apply_kernel(img, kernel: np.ndarray) -> np.ndarray:
    """Convolve every channel with a 2-D kernel (borders reflected). Returns float32 ``(H,W,3)``."""
    x = to_float(img)
    if kernel.shape == (1, 1):
        return x.copy()
    return cv2.filter2D(x, -1, kernel, borderType=_BORDER)


def motion_blur(img, length_px: int, exposure: float = 1.0, trajectory: int = 0) -> np.ndarray:
    """Camera-shake blur along random path number ``trajectory`` (see :func:`trajectory_kernel`)."""
    return apply_kernel(img, trajectory_kernel(int(length_px), float(exposure), int(trajectory)))


def linear_motion_blur(img, length_px: int, angle: float) -> np.ndarray:
    """Straight motion blur of ``length_px`` pixels at ``angle`` degrees."""
    return apply_kernel(img, linear_motion_kernel(int(length_px), float(angle)))


def defocus_blur(img, radius_px: float) -> np.ndarray:
    """Out-of-focus blur with a disk of ``radius_px`` pixels."""
    return apply_kernel(img, disk_kernel(float(radius_px)))


def gaussian_blur(img, sigma_px: float) -> np.ndarray:
    """Gaussian blur with standard deviation ``sigma_px`` pixels."""
    if sigma_px <= 0:
        raise ValueError(f"gaussian sigma must be positive, got {sigma_px}")
    return cv2.GaussianBlur(to_float(img), (0, 0), sigmaX=float(sigma_px), borderType=_BORDER)


# ---------------------------------------------------------------------------------------------
# Resolution


def downsample(img, scale: float, method: str = "area") -> np.ndarray:
    """Shrink by ``scale`` (2-8 gives CCTV's 8-32 px faces from 64-256 px crops).

    Returns:
        ``(round(H/scale), round(W/scale), 3) float32``.
    """
    if method not in DOWNSAMPLE_METHODS:
        raise ValueError(f"unknown downsample method {method!r}; valid: {', '.join(DOWNSAMPLE_METHODS)}")
    if not scale >= 1:
        raise ValueError(f"downsample scale must be >= 1, got {scale}")
    x = to_float(img)
    h, w = max(1, int(round(x.shape[0] / scale))), max(1, int(round(x.shape[1] / scale)))
    return resize(x, h, w, method)


def resize(img, height: int, width: int, method: str = "area") -> np.ndarray:
    """Resize to exactly ``(height, width)`` with an OpenCV interpolation (area, bilinear, bicubic)."""
    x = to_float(img)
    if (x.shape[0], x.shape[1]) == (height, width):
        return x.copy()
    out = cv2.resize(x, (int(width), int(height)), interpolation=DOWNSAMPLE_METHODS[method])
    if method == "bicubic":  # cubic overshoots
        np.clip(out, 0.0, 1.0, out=out)
    return out


# ---------------------------------------------------------------------------------------------
# Noise


def _noise_rng(seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(int(seed))


def gaussian_noise(img, sigma: float, color: bool = True, seed=0) -> np.ndarray:
    """Add zero-mean Gaussian (read) noise of standard deviation ``sigma`` (in [0,1] units).

    Args:
        color: independent noise per channel (colour speckle); False adds the same noise to all
            three channels (luminance noise).
        seed: int (replayable) or a Generator.
    """
    if sigma < 0:
        raise ValueError(f"noise sigma must be >= 0, got {sigma}")
    x = to_float(img)
    h, w = x.shape[:2]
    n = _noise_rng(seed).standard_normal((h, w, 3 if color else 1), dtype=np.float32)
    out = x + n * np.float32(sigma)
    np.clip(out, 0.0, 1.0, out=out)
    return out


def poisson_noise(img, photons: float, color: bool = True, seed=0) -> np.ndarray:
    """Signal-dependent shot noise: a pixel of value v collects Poisson(v * photons) photons.

    ``photons`` is the photon count at full white; darker pixels collect fewer, so the relative
    noise (std/value = 1/sqrt(v*photons)) grows as light falls. ``color=False`` draws the noise on
    luminance and adds it to all channels.
    """
    if photons <= 0:
        raise ValueError(f"photons must be positive, got {photons}")
    x = to_float(img)
    g = _noise_rng(seed)
    ph = float(photons)
    if color:
        out = (g.poisson(x * ph) * (1.0 / ph)).astype(np.float32)
    else:
        y = x @ augment.LUMA
        dy = (g.poisson(y * ph) * (1.0 / ph)).astype(np.float32) - y
        out = x + dy[:, :, None]
    np.clip(out, 0.0, 1.0, out=out)
    return out


def low_light(img, level: float, gamma: float = 1.0, black: float = 0.0, photons: float | None = None,
              read_noise: float = 0.0, seed=0) -> np.ndarray:
    """Under-exposed sensor: gamma, crushed blacks, exposure drop to a target mean luminance, noise.

    Args:
        img: ``(H,W,3)`` uint8 or float in [0,1].
        level: target mean Rec.709 luminance after the exposure drop (e.g. 0.03-0.15).
        gamma: mid-tone curve applied first (> 1 darkens shadows more than highlights).
        black: black level crushed to zero (values below it clip), as cheap sensors do.
        photons: shot noise photon count at full white *before* the drop (None: no shot noise);
            the effective count scales with the exposure, so darker frames get noisier.
        read_noise: Gaussian read-noise std added after the drop.
        seed: noise seed (int, replayable) or Generator.

    Returns:
        ``(H,W,3) float32`` in [0,1]; without noise its mean luminance equals ``level``
        (unless ``level`` exceeds what the image can reach without clipping).
    """
    if not 0.0 < level <= 1.0:
        raise ValueError(f"low-light level must be within (0,1], got {level}")
    if gamma <= 0 or not 0.0 <= black < 1.0:
        raise ValueError(f"need gamma > 0 and black in [0,1), got gamma={gamma}, black={black}")
    x = to_float(img)
    y = np.power(x, np.float32(gamma)) if gamma != 1.0 else x
    if black > 0:
        y = np.maximum(y - np.float32(black), 0.0) * np.float32(1.0 / (1.0 - black))
    mean = float(y.reshape(-1, 3).mean(axis=0) @ augment.LUMA)
    gain = level / mean if mean > 1e-6 else 1.0
    out = y * np.float32(gain)
    np.clip(out, 0.0, 1.0, out=out)
    if photons or read_noise:
        g = _noise_rng(seed)
        if photons:
            out = poisson_noise(out, photons * min(gain, 1.0), color=True, seed=g)
        if read_noise:
            out = gaussian_noise(out, read_noise, color=True, seed=g)
    return out


# ---------------------------------------------------------------------------------------------
# Compression


def jpeg(img, quality: int) -> np.ndarray:
    """JPEG encode/decode at ``quality`` (1-100; CCTV stills are often 10-50)."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be within 1-100, got {quality}")
    u = np.ascontiguousarray(to_uint8(to_float(img))[:, :, ::-1])
    ok, buf = cv2.imencode(".jpg", u, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise FacekitError(f"OpenCV could not JPEG-encode an image of shape {u.shape}")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1] / np.float32(255.0)


def video_codec(img, codec: str = "mp4v", quality: int = 50, motion_px: int = 1) -> np.ndarray:
    """Pass a frame through a video codec (OpenCV ``VideoWriter`` to a temp file, then decode).

    Two frames are written: the image shifted by ``motion_px`` pixels, then the image itself, and
    the second is read back, so inter-frame codecs (mp4v) predict it from a moved reference and
    show their blocking and smearing. The frame is padded to a multiple of 16 pixels (codec
    macroblocks) and cropped back. Costs about 2 ms a frame (file I/O).

    Args:
        codec: ``"mp4v"`` (MPEG-4 part 2, inter-frame) or ``"MJPG"`` (motion JPEG).
        quality: encoder quality 1-100 (used by MJPG; mp4v runs at OpenCV's default bitrate).
        motion_px: shift of the reference frame.
    """
    if codec not in VIDEO_CODECS:
        raise ValueError(f"unknown video codec {codec!r}; valid: {', '.join(VIDEO_CODECS)}")
    x = to_float(img)
    h, w = x.shape[:2]
    ph, pw = -h % 16, -w % 16
    u = cv2.copyMakeBorder(to_uint8(x)[:, :, ::-1], 0, ph, 0, pw, cv2.BORDER_REPLICATE)
    ref = np.roll(u, (int(motion_px), int(motion_px)), axis=(0, 1))
    fd, path = tempfile.mkstemp(suffix=VIDEO_CODECS[codec], prefix="facekit-codec-")
    os.close(fd)
    try:
        # MJPG goes through OpenCV's own writer: FFMPEG ignores the quality setting.
        backend = cv2.CAP_OPENCV_MJPEG if codec == "MJPG" else cv2.CAP_FFMPEG
        writer = cv2.VideoWriter(path, backend, cv2.VideoWriter_fourcc(*codec), 25.0, (u.shape[1], u.shape[0]))
        if not writer.isOpened():
            raise FacekitError(f"OpenCV cannot encode {codec!r} video here (backend missing?)")
        if codec == "MJPG":
            writer.set(cv2.VIDEOWRITER_PROP_QUALITY, int(quality))
        writer.write(np.ascontiguousarray(ref))
        writer.write(np.ascontiguousarray(u))
        writer.release()
        cap = cv2.VideoCapture(path, backend)
        frame = None
        for _ in range(2):
            ok, f = cap.read()
            if ok:
                frame = f
        cap.release()
        if frame is None:
            raise FacekitError(f"OpenCV wrote a {codec!r} video it cannot decode ({path})")
    finally:
        try:
            os.remove(path)
        except OSError:
            pass
    return frame[:h, :w, ::-1] / np.float32(255.0)


# ---------------------------------------------------------------------------------------------
# Occlusion


def occlusion_mask(shape_hw: tuple[int, int], kind: str, cx: float, cy: float, w: float, h: float,
                   angle: float = 0.0) -> np.ndarray:
    """Mask of an occluder; geometry in fractions of the image width/height.

    Kinds: ``rectangle`` (rotated box), ``eyes`` (sunglasses: two lenses and a bridge),
    ``lower_face`` (scarf/medical mask: rounded top, down to the bottom edge), ``hand`` (palm and
    four fingers). ``(cx, cy)`` is the centre, ``(w, h)`` the size, ``angle`` degrees.

    Returns:
        ``(H,W) float32`` in [0,1] (1 = occluded), edges softened by half a pixel.
    """
    if kind not in OCCLUSION_KINDS:
        raise ValueError(f"unknown occlusion kind {kind!r}; valid: {', '.join(OCCLUSION_KINDS)}")
    hh, ww = int(shape_hw[0]), int(shape_hw[1])
    m = np.zeros((hh, ww), np.uint8)
    sh = 4  # cv2 sub-pixel drawing: coordinates in 1/16 px

    def pt(x, y):
        return int(round(x * ww * 16)), int(round(y * hh * 16))

    def axes(a, b):
        return max(1, int(round(a * ww * 16))), max(1, int(round(b * hh * 16)))

    rad = math.radians(angle)
    ca, sa = math.cos(rad), math.sin(rad)

    def rot(dx, dy):  # offset (fractions) rotated about the centre, in pixel-consistent units
        px, py = dx * ww, dy * hh
        return cx + (px * ca - py * sa) / ww, cy + (px * sa + py * ca) / hh

    if kind == "rectangle":
        box = cv2.boxPoints(((cx * ww, cy * hh), (w * ww, h * hh), angle))
        cv2.fillConvexPoly(m, np.round(box * 16).astype(np.int32), 255, cv2.LINE_AA, sh)
    elif kind == "eyes":
        for side in (-1, 1):
            ex, ey = rot(side * w / 4.0, 0.0)
            cv2.ellipse(m, pt(ex, ey), axes(w / 4.4, h / 2.0), angle, 0, 360, 255, -1, cv2.LINE_AA, sh)
        box = cv2.boxPoints(((cx * ww, cy * hh), (w * ww / 2.0, h * hh / 4.0), angle))
        cv2.fillConvexPoly(m, np.round(box * 16).astype(np.int32), 255, cv2.LINE_AA, sh)
    elif kind == "lower_face":
        cv2.ellipse(m, pt(cx, cy), axes(w / 2.0, h / 2.0), angle, 0, 360, 255, -1, cv2.LINE_AA, sh)
        x0, x1 = (cx - w / 2.0) * ww, (cx + w / 2.0) * ww
        poly = np.array([[x0, cy * hh], [x1, cy * hh], [x1 + 0.1 * ww, hh + 1], [x0 - 0.1 * ww, hh + 1]])
        cv2.fillConvexPoly(m, np.round(poly * 16).astype(np.int32), 255, cv2.LINE_AA, sh)
    else:  # hand: palm plus four fingers pointing "up" in the rotated frame
        cv2.ellipse(m, pt(cx, cy), axes(w / 2.0, h / 3.0), angle, 0, 360, 255, -1, cv2.LINE_AA, sh)
        for k in range(4):
            fx, fy = rot((k - 1.5) * w / 4.2, -h / 3.0)
            cv2.ellipse(m, pt(fx, fy), axes(w / 10.0, h / 4.0), angle, 0, 360, 255, -1, cv2.LINE_AA, sh)
    return m / np.float32(255.0)


def occlude(img, kind: str, cx: float, cy: float, w: float, h: float, angle: float = 0.0,
            color=(0.1, 0.1, 0.1)) -> tuple[np.ndarray, np.ndarray]:
    """Paint an occluder of flat ``color`` (RGB in [0,1]) over the image.

    Returns:
        ``(image (H,W,3) float32, mask (H,W) float32 in [0,1])``.
    """
    x = to_float(img)
    m = occlusion_mask(x.shape[:2], kind, cx, cy, w, h, angle)[:, :, None]
    out = x * (1.0 - m) + np.asarray(color, dtype=np.float32) * m
    return out, m[:, :, 0]


def _occlude_image(img, **params) -> np.ndarray:
    return occlude(img, **params)[0]


# ---------------------------------------------------------------------------------------------
# Op registry: parameter definitions, samplers


@dataclass(frozen=True)
class Param:
    """One configurable parameter of an op.

    ``kind="range"``: ``default`` is ``(low, high)``; user values are a number or ``[low, high]``
    within ``bounds``. ``kind="choice"``: ``default`` is a tuple of allowed values drawn
    uniformly; user values are one value or a list, each in ``choices``.
    """

    default: Any
    kind: str = "range"
    bounds: tuple | None = None
    choices: tuple | None = None
    integer: bool = False
    log: bool = False
    doc: str = ""


@dataclass(frozen=True)
class Control:
    """One widget of the degradation explorer (:mod:`facekit.explorer`) for one op parameter.

    ``kind`` is ``"float"``, ``"int"``, ``"choice"`` or ``"bool"``. ``value`` is the initial
    value; for a gate (``gate=True``) it is also the "off" value that skips the op. ``lo``/``hi``/
    ``step`` bound sliders; ``choices`` list dropdown options.
    """

    kind: str
    value: Any
    lo: float | None = None
    hi: float | None = None
    step: float | None = None
    choices: tuple = ()
    gate: bool = False
    label: str = ""


EXPLORER_OFF = "off"  # the "op skipped" option of a gate dropdown


def _float_control(lo, hi, step, value=None, gate=False, label=""):
    return Control("float", lo if value is None else value, lo, hi, step, gate=gate, label=label)


def _int_control(lo, hi, value=None, gate=False, label="", step=1):
    return Control("int", lo if value is None else value, lo, hi, step, gate=gate, label=label)


def _choice_control(choices, value, gate=False, label=""):
    return Control("choice", value, choices=tuple(choices), gate=gate, label=label)


def _bool_control(value=False, gate=False, label=""):
    return Control("bool", value, gate=gate, label=label)


FACTOR_COMBINES = ("last", "max", "join", "root_sum")


@dataclass(frozen=True)
class Factor:
    """One evaluation factor column that an op's recorded params feed (see :func:`degradation_factors`).

    Several ops may feed one column (every blur op feeds ``blur``); they must then agree on
    ``default`` and ``combine``.

    Attributes:
        column: the factor column's name.
        value: one recorded op (``{"op": name, **drawn}``) -> its contribution to the column.
        default: the column's value when no applied op feeds it.
        combine: how the contributions of a pipeline's records (in record order) merge:
            ``"last"`` (the last one), ``"max"`` (the largest, and at least ``default``),
            ``"join"`` (labels joined by ``"+"``) or ``"root_sum"`` (the square root of their
            sum: the contributions are variances, the column a standard deviation).
    """

    column: str
    value: Callable[[dict], Any]
    default: Any
    combine: str = "last"


@dataclass(frozen=True)
class OpDef:
    """A pipeline op: its explicit function, its parameters and sampler, and what the tools built
    on the registry need to know about it, so adding an op is a change here only.

    Attributes:
        name, apply, params, sample, geometric, doc: the op itself (``apply(image, **drawn)``,
            ``sample(rng, resolved params, image shape) -> drawn``).
        controls: parameter -> :class:`Control`, the op's row in the degradation explorer, one
            control per parameter (empty: not in the explorer).
        factors: the evaluation factor columns its recorded params feed (:class:`Factor`).
        headroom: the degradation family the model card's headroom table removes it with
            (``""``: removed only by that table's "downsample only" row).
        headroom_keep: the "downsample only" row of the headroom table keeps it.
        chain_position: its place in the imaging chain (geometry, scene, optics, sampling,
            exposure, sensor noise, codec); the explorer lists ops in this order, and so does a
            headroom family.
    """

    name: str
    apply: Callable[..., np.ndarray]
    params: dict
    sample: Callable[[np.random.Generator, dict, tuple], dict]
    geometric: bool = False
    doc: str = ""
    controls: dict = field(default_factory=dict)
    factors: tuple = ()
    headroom: str = ""
    headroom_keep: bool = False
    chain_position: int = 0


def _draw(rng: np.random.Generator, cfg: dict, key: str):
    kind, val, integer, log = cfg[key]
    if kind == "choice":
        return val[0] if len(val) == 1 else val[int(rng.integers(len(val)))]
    lo, hi = val
    if lo == hi:
        return int(lo) if integer else float(lo)
    if integer:
        return int(rng.integers(int(lo), int(hi) + 1))
    if log:
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    return float(rng.uniform(lo, hi))


def _px(frac: float, shape) -> float:
    return frac * max(shape[0], shape[1])


def _seed(rng) -> int:
    return int(rng.integers(2 ** 31 - 1))


def _s_motion(rng, cfg, shape):
    return {"length_px": max(1, int(round(_px(_draw(rng, cfg, "length_frac"), shape)))),
            "exposure": round(_draw(rng, cfg, "exposure"), 1),  # 0.1 steps keep kernels cached
            "trajectory": int(rng.integers(TRAJECTORY_BANK))}


def _s_linear(rng, cfg, shape):
    return {"length_px": max(1, int(round(_px(_draw(rng, cfg, "length_frac"), shape)))),
            "angle": float(int(_draw(rng, cfg, "angle")))}  # whole degrees keep kernels cached


def _s_defocus(rng, cfg, shape):
    return {"radius_px": max(0.5, round(_px(_draw(rng, cfg, "radius_frac"), shape) * 4) / 4)}


def _s_gauss_blur(rng, cfg, shape):
    return {"sigma_px": max(0.2, _px(_draw(rng, cfg, "sigma_frac"), shape))}


def _s_downsample(rng, cfg, shape):
    return {"scale": _draw(rng, cfg, "scale"), "method": _draw(rng, cfg, "method")}


def _s_resize(rng, cfg, shape):
    raise ConfigError("op 'resize' is added by the pipeline itself and cannot be listed in a spec")


def _s_gauss_noise(rng, cfg, shape):
    return {"sigma": _draw(rng, cfg, "sigma"), "color": bool(_draw(rng, cfg, "color")), "seed": _seed(rng)}


def _s_poisson(rng, cfg, shape):
    return {"photons": _draw(rng, cfg, "photons"), "color": bool(_draw(rng, cfg, "color")), "seed": _seed(rng)}


def _s_low_light(rng, cfg, shape):
    return {k: _draw(rng, cfg, k) for k in ("level", "gamma", "black", "photons", "read_noise")} | {"seed": _seed(rng)}


def _s_jpeg(rng, cfg, shape):
    return {"quality": _draw(rng, cfg, "quality")}


def _s_video(rng, cfg, shape):
    return {"codec": _draw(rng, cfg, "codec"), "quality": _draw(rng, cfg, "quality"),
            "motion_px": _draw(rng, cfg, "motion_px")}


# kind -> (cx, cy, w, h, angle) ranges in fractions/degrees, and colour family
_OCCLUSION_GEOMETRY = {
    "rectangle": ((0.2, 0.8), (0.2, 0.8), (0.15, 0.45), (0.15, 0.45), (-30.0, 30.0)),
    "eyes": ((0.45, 0.55), (0.36, 0.46), (0.6, 0.8), (0.12, 0.2), (-8.0, 8.0)),
    "lower_face": ((0.45, 0.55), (0.66, 0.76), (0.6, 0.85), (0.25, 0.4), (-5.0, 5.0)),
    "hand": ((0.25, 0.75), (0.45, 0.85), (0.3, 0.45), (0.35, 0.55), (-60.0, 60.0)),
}


def _s_occlusion(rng, cfg, shape):
    kind = _draw(rng, cfg, "kind")
    cx, cy, w, h, ang = (float(rng.uniform(*r)) for r in _OCCLUSION_GEOMETRY[kind])
    if kind == "eyes":  # dark lenses
        color = [float(rng.uniform(0.0, 0.15))] * 3
    elif kind == "hand":  # skin tones from dark to light
        t = float(rng.uniform(0.0, 1.0))
        color = [0.35 + 0.55 * t, 0.22 + 0.5 * t, 0.15 + 0.45 * t]
    else:
        color = [float(c) for c in rng.uniform(0.05, 0.95, 3)]
    return {"kind": kind, "cx": cx, "cy": cy, "w": w, "h": h, "angle": ang, "color": color}


def _s_lighting(rng, cfg, shape):
    return augment.sample_lighting(_draw(rng, cfg, "condition"), rng)


def _s_directional(rng, cfg, shape):
    return {k: _draw(rng, cfg, k) for k in ("azimuth", "strength", "softness")}


def _s_pose(rng, cfg, shape):
    return {"roll": _draw(rng, cfg, "roll"), "yaw": _draw(rng, cfg, "yaw"), "pitch": _draw(rng, cfg, "pitch"),
            "flip": bool(_draw(rng, cfg, "flip"))}


# Factor columns fed by several ops.
_SCALE = Factor("scale", lambda r: int(r["scale"]), 1)  # the pipeline's recorded scale overrides it
_BLUR_LENGTH = Factor("blur_length_px", lambda r: float(r["length_px"]), 0.0, "max")
_JPEG_QUALITY = Factor("jpeg_quality", lambda r: float(r["quality"]), float("nan"))


def _blur_kind(label: str) -> Factor:
    """The ``blur`` column: every kind of blur applied, in order, joined by "+" ("none" without blur)."""
    return Factor("blur", lambda r: label, "none", "join")


def _noise_variance(variance: Callable[[dict], float]) -> Factor:
    """The ``noise_sigma`` column: the combined noise std at 50% grey, the ops' variances added
    (Poisson shot noise of ``photons`` at full white has variance ``0.5 / photons`` there)."""
    return Factor("noise_sigma", variance, 0.0, "root_sum")


def _pose_angle(key: str) -> Factor:
    return Factor(key, lambda r: r[key], 0.0)


# Degradation families of the model card's headroom table (facekit.release.headroom_table).
HEADROOM_NOISE = "noise + JPEG"
HEADROOM_SCENE = "occlusion + directional light"
HEADROOM_BLUR = "blur"

_BOOL = (False, True)
# The registry. Each op carries its explorer controls, its factor columns and its headroom family;
# facekit.explorer, facekit.evaluate and facekit.release derive theirs from here.
OPS: dict[str, OpDef] = {
    "motion_blur": OpDef("motion_blur", motion_blur, {
        "length_frac": Param((0.04, 0.16), bounds=(0.0, 1.0), doc="shake path length / image side"),
        "exposure": Param((0.5, 1.0), bounds=(0.05, 1.0), doc="fraction of the path during the exposure"),
    }, _s_motion, doc="camera shake along a random DeblurGAN-style trajectory",
        controls={"length_frac": _float_control(0.0, 0.3, 0.01, gate=True, label="length"),
                  "exposure": _float_control(0.1, 1.0, 0.1, 1.0, label="exposure")},
        factors=(_blur_kind("motion"), _BLUR_LENGTH), headroom=HEADROOM_BLUR, chain_position=30),
    "linear_motion_blur": OpDef("linear_motion_blur", linear_motion_blur, {
        "length_frac": Param((0.04, 0.16), bounds=(0.0, 1.0), doc="blur length / image side"),
        "angle": Param((0, 179), bounds=(-360, 360), integer=True, doc="direction, degrees"),
    }, _s_linear, doc="straight motion blur at any angle",
        controls={"length_frac": _float_control(0.0, 0.3, 0.01, gate=True, label="length"),
                  "angle": _int_control(0, 179, 0, label="angle °")},
        factors=(_blur_kind("linear"), _BLUR_LENGTH), headroom=HEADROOM_BLUR, chain_position=40),
    "defocus_blur": OpDef("defocus_blur", defocus_blur, {
        "radius_frac": Param((0.01, 0.04), bounds=(0.0, 0.5), doc="disk radius / image side"),
    }, _s_defocus, doc="out-of-focus disk blur",
        controls={"radius_frac": _float_control(0.0, 0.1, 0.005, gate=True, label="radius")},
        factors=(_blur_kind("defocus"), Factor("defocus_radius_px", lambda r: float(r["radius_px"]), 0.0)),
        headroom=HEADROOM_BLUR, chain_position=50),
    "gaussian_blur": OpDef("gaussian_blur", gaussian_blur, {
        "sigma_frac": Param((0.005, 0.025), bounds=(0.0, 0.5), doc="sigma / image side"),
    }, _s_gauss_blur, doc="Gaussian blur (lens, atmosphere)",
        controls={"sigma_frac": _float_control(0.0, 0.05, 0.0025, gate=True, label="sigma")},
        factors=(_blur_kind("gaussian"), Factor("gauss_sigma_px", lambda r: float(r["sigma_px"]), 0.0)),
        headroom=HEADROOM_BLUR, chain_position=60),
    "downsample": OpDef("downsample", downsample, {
        "scale": Param((2, 8), bounds=(1, 16), integer=True, doc="factor; defaults to the pipeline scale"),
        "method": Param(tuple(DOWNSAMPLE_METHODS), kind="choice", choices=tuple(DOWNSAMPLE_METHODS)),
    }, _s_downsample, doc="resolution loss",
        controls={"scale": _int_control(1, 8, 1, gate=True, label="factor"),
                  "method": _choice_control(tuple(DOWNSAMPLE_METHODS), "area", label="method")},
        factors=(_SCALE,), headroom_keep=True, chain_position=70),
    "resize": OpDef("resize", resize, {}, _s_resize, doc="internal: final resize to the pipeline's lq size",
                    chain_position=140),
    "gaussian_noise": OpDef("gaussian_noise", gaussian_noise, {
        "sigma": Param((0.005, 0.05), bounds=(0.0, 1.0), doc="std in [0,1] units"),
        "color": Param(_BOOL, kind="choice", choices=_BOOL, doc="per-channel noise"),
    }, _s_gauss_noise, doc="read noise",
        controls={"sigma": _float_control(0.0, 0.2, 0.005, gate=True, label="sigma"),
                  "color": _bool_control(True, label="colour")},
        factors=(_noise_variance(lambda r: float(r["sigma"]) ** 2),
                 Factor("gauss_noise_sigma", lambda r: float(r["sigma"]), 0.0)),
        headroom=HEADROOM_NOISE, chain_position=110),
    "poisson_noise": OpDef("poisson_noise", poisson_noise, {
        "photons": Param((30.0, 500.0), bounds=(1.0, 1e6), log=True, doc="photons at full white"),
        "color": Param(_BOOL, kind="choice", choices=_BOOL),
    }, _s_poisson, doc="shot noise, stronger in the dark",
        controls={"photons": _int_control(0, 2000, 0, gate=True, label="photons", step=10),
                  "color": _bool_control(True, label="colour")},
        factors=(_noise_variance(lambda r: 0.5 / float(r["photons"])),
                 Factor("poisson_photons", lambda r: float(r["photons"]), float("nan"))),
        headroom=HEADROOM_NOISE, chain_position=100),
    "low_light": OpDef("low_light", low_light, {
        "level": Param((0.04, 0.15), bounds=(0.001, 1.0), doc="target mean luminance"),
        "gamma": Param((1.0, 1.4), bounds=(0.2, 5.0)),
        "black": Param((0.0, 0.04), bounds=(0.0, 0.5), doc="crushed black level"),
        "photons": Param((100.0, 1000.0), bounds=(1.0, 1e6), log=True, doc="at full white before the drop"),
        "read_noise": Param((0.0, 0.02), bounds=(0.0, 0.5)),
    }, _s_low_light, doc="under-exposure with matching sensor noise",
        controls={"level": _float_control(0.0, 0.5, 0.01, gate=True, label="level"),
                  "gamma": _float_control(0.5, 2.0, 0.05, 1.0, label="gamma"),
                  "black": _float_control(0.0, 0.1, 0.005, 0.0, label="black"),
                  "photons": _float_control(10.0, 2000.0, 10.0, 300.0, label="photons"),
                  "read_noise": _float_control(0.0, 0.05, 0.0025, 0.0, label="read noise")},
        factors=(_noise_variance(lambda r: 0.5 / float(r["photons"]) + float(r["read_noise"]) ** 2),),
        chain_position=90),
    "jpeg": OpDef("jpeg", jpeg, {
        "quality": Param((10, 95), bounds=(1, 100), integer=True),
    }, _s_jpeg, doc="JPEG compression",
        controls={"quality": _int_control(0, 100, 0, gate=True, label="quality")},
        factors=(_JPEG_QUALITY,), headroom=HEADROOM_NOISE, chain_position=120),
    "video_codec": OpDef("video_codec", video_codec, {
        "codec": Param(tuple(VIDEO_CODECS), kind="choice", choices=tuple(VIDEO_CODECS)),
        "quality": Param((10, 90), bounds=(1, 100), integer=True, doc="MJPG quality"),
        "motion_px": Param((0, 2), bounds=(0, 8), integer=True),
    }, _s_video, doc="video codec round trip (slow: ~2 ms)",
        controls={"codec": _choice_control((EXPLORER_OFF, *VIDEO_CODECS), EXPLORER_OFF, gate=True, label="codec"),
                  "quality": _int_control(1, 100, 50, label="quality"),
                  "motion_px": _int_control(0, 8, 1, label="motion px")},
        factors=(_JPEG_QUALITY,), chain_position=130),
    "occlusion": OpDef("occlusion", _occlude_image, {
        "kind": Param(OCCLUSION_KINDS, kind="choice", choices=OCCLUSION_KINDS),
    }, _s_occlusion, doc="sunglasses, scarf/mask, hand or a random box",
        controls={"kind": _choice_control((EXPLORER_OFF, *OCCLUSION_KINDS), EXPLORER_OFF, gate=True, label="kind")},
        factors=(Factor("occlusion", lambda r: str(r["kind"]), "none"),),
        headroom=HEADROOM_SCENE, chain_position=10),
    "directional_light": OpDef("directional_light", augment.directional_light, {
        "azimuth": Param((0.0, 360.0), bounds=(-720.0, 720.0)),
        "strength": Param((0.2, 0.6), bounds=(0.0, 1.0)),
        "softness": Param((0.15, 0.6), bounds=(0.01, 10.0)),
    }, _s_directional, doc="side light / half-face shadow",
        controls={"strength": _float_control(0.0, 1.0, 0.05, gate=True, label="strength"),
                  "azimuth": _float_control(0.0, 360.0, 5.0, 90.0, label="azimuth °"),
                  "softness": _float_control(0.05, 2.0, 0.05, 0.3, label="softness")},
        factors=(Factor("directional_light", lambda r: True, False),),
        headroom=HEADROOM_SCENE, chain_position=20),
    "lighting": OpDef("lighting", augment.apply_lighting, {
        "condition": Param(augment.CONDITIONS, kind="choice", choices=augment.CONDITIONS),
    }, _s_lighting, doc="one of the five named lighting conditions (facekit.augment)",
        controls={"condition": _choice_control((EXPLORER_OFF, *augment.CONDITIONS), EXPLORER_OFF, gate=True,
                                               label="condition")},
        factors=(Factor("kelvin", lambda r: float(r["kelvin"]), augment.NEUTRAL_KELVIN),
                 Factor("exposure_stops", lambda r: float(r["exposure_stops"]), 0.0)),
        headroom_keep=True, chain_position=80),
    "pose": OpDef("pose", augment.pose_warp, {
        "roll": Param(augment.POSE_RANGES["roll"], bounds=(-180.0, 180.0)),
        "yaw": Param(augment.POSE_RANGES["yaw"], bounds=(-80.0, 80.0)),
        "pitch": Param(augment.POSE_RANGES["pitch"], bounds=(-80.0, 80.0)),
        "flip": Param(_BOOL, kind="choice", choices=_BOOL),
    }, _s_pose, geometric=True, doc="head pose (applies to gt too)",
        controls={"roll": _float_control(-45.0, 45.0, 1.0, 0.0, gate=True, label="roll °"),
                  "yaw": _float_control(-60.0, 60.0, 1.0, 0.0, gate=True, label="yaw °"),
                  "pitch": _float_control(-40.0, 40.0, 1.0, 0.0, gate=True, label="pitch °"),
                  "flip": _bool_control(False, gate=True, label="flip")},
        factors=(_pose_angle("roll"), _pose_angle("yaw"), _pose_angle("pitch"),
                 Factor("flip", lambda r: bool(r["flip"]), False)),
        chain_position=0),
}

# Degradation presets. Order: scene (occluders, light) -> optics (blur) -> sensor (resolution,
# light level, noise) -> codec. "lighting" sits after "downsample": it is per-pixel, so it
# commutes with blur/resizing up to gamma rounding, and is 16x cheaper on the small image.
PRESETS: dict[str, list[dict]] = {
    "cctv-light": [
        {"op": "gaussian_blur", "p": 0.4, "sigma_frac": [0.004, 0.015]},
        {"op": "linear_motion_blur", "p": 0.2, "length_frac": [0.03, 0.08]},
        {"op": "downsample"},
        {"op": "lighting"},
        {"op": "gaussian_noise", "p": 0.5, "sigma": [0.003, 0.02]},
        {"op": "jpeg", "p": 0.7, "quality": [50, 95]},
    ],
    "cctv-heavy": [
        {"op": "occlusion", "p": 0.15},
        {"op": "directional_light", "p": 0.3},
        {"op": "motion_blur", "p": 0.35},
        {"op": "linear_motion_blur", "p": 0.15},
        {"op": "defocus_blur", "p": 0.2},
        {"op": "gaussian_blur", "p": 0.4},
        {"op": "downsample"},
        {"op": "lighting"},
        {"op": "poisson_noise", "p": 0.5, "photons": [60.0, 1000.0]},
        {"op": "gaussian_noise", "p": 0.6, "sigma": [0.01, 0.05]},
        {"op": "jpeg", "p": 0.9, "quality": [15, 75]},
    ],
    "lowlight": [
        {"op": "gaussian_blur", "p": 0.3},
        {"op": "downsample"},
        {"op": "lighting"},
        {"op": "low_light"},
        {"op": "jpeg", "p": 0.8, "quality": [20, 80]},
    ],
    "motion": [
        {"op": "motion_blur", "p": 0.7, "length_frac": [0.06, 0.2]},
        {"op": "linear_motion_blur", "p": 0.3, "length_frac": [0.06, 0.2]},
        {"op": "downsample"},
        {"op": "lighting"},
        {"op": "gaussian_noise", "p": 0.3, "sigma": [0.003, 0.02]},
        {"op": "jpeg", "p": 0.5, "quality": [40, 90]},
    ],
    "cctv-video": [
        {"op": "gaussian_blur", "p": 0.4},
        {"op": "motion_blur", "p": 0.3},
        {"op": "downsample"},
        {"op": "lighting"},
        {"op": "gaussian_noise", "p": 0.6, "sigma": [0.005, 0.04]},
        {"op": "video_codec", "quality": [10, 60]},
    ],
}


# ---------------------------------------------------------------------------------------------
# Spec validation


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _resolve_param(op: str, key: str, pdef: Param, value) -> tuple:
    """Validate one user value against its Param; return the compact ``(kind, val, integer, log)``."""
    where = f"op {op!r} parameter {key!r}"
    if pdef.kind == "choice":
        vals = list(value) if isinstance(value, (list, tuple)) else [value]
        if not vals:
            raise ConfigError(f"{where}: empty list of choices; valid: {', '.join(map(str, pdef.choices))}")
        for v in vals:
            if v not in pdef.choices or (isinstance(v, bool) != isinstance(pdef.choices[0], bool)):
                raise ConfigError(f"{where}: invalid choice {v!r}; valid: {', '.join(map(str, pdef.choices))}")
        return ("choice", tuple(vals), False, False)
    if _is_number(value):
        lo = hi = float(value)
    elif isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_number(v) for v in value):
        lo, hi = float(value[0]), float(value[1])
    else:
        raise ConfigError(f"{where}: expected a number or a [low, high] range, got {value!r}")
    if lo > hi:
        raise ConfigError(f"{where}: range [{value[0]}, {value[1]}] is inverted (low > high)")
    if pdef.bounds is not None and (lo < pdef.bounds[0] or hi > pdef.bounds[1]):
        raise ConfigError(f"{where}: {value!r} is outside the allowed [{pdef.bounds[0]}, {pdef.bounds[1]}]")
    if pdef.log and lo <= 0:
        raise ConfigError(f"{where}: must be positive (drawn log-uniformly), got {value!r}")
    if pdef.integer:
        if lo != int(lo) or hi != int(hi):
            raise ConfigError(f"{where}: expects whole numbers, got {value!r}")
        lo, hi = int(lo), int(hi)
    return ("range", (lo, hi), pdef.integer, pdef.log)


def validate_op(entry: dict) -> tuple[OpDef, dict, float]:
    """Check one spec entry; return ``(op definition, resolved parameters, probability)``.

    Raises:
        ConfigError: unknown op or parameter (listing the valid names), inverted range, value out
            of bounds, probability outside [0,1].
    """
    if not isinstance(entry, dict) or "op" not in entry:
        raise ConfigError(f"each pipeline entry must be a mapping with an 'op' key, got {entry!r}")
    name = entry["op"]
    if name not in OPS or name == "resize":
        valid = ", ".join(n for n in OPS if n != "resize")
        raise ConfigError(f"unknown degradation op {name!r}; valid ops: {valid}")
    opdef = OPS[name]
    p = entry.get("p", 1.0)
    if not _is_number(p) or not 0.0 <= float(p) <= 1.0:
        raise ConfigError(f"op {name!r}: probability p={p!r} must be a number within [0, 1]")
    cfg = {}
    for key, pdef in opdef.params.items():
        cfg[key] = _resolve_param(name, key, pdef, entry.get(key, pdef.default))
    unknown = set(entry) - set(opdef.params) - {"op", "p"}
    if unknown:
        raise ConfigError(f"op {name!r} has no parameter {sorted(unknown)[0]!r}; "
                          f"valid: p, {', '.join(opdef.params) or '(none)'}")
    return opdef, cfg, float(p)


def load_spec(spec) -> list[dict]:
    """Turn a spec into a list of op entries.

    Args:
        spec: a preset name, a list of op dicts, a dict with an ``"ops"`` list, a YAML string
            holding either, or a path to a ``.yaml``/``.yml`` file.
    """
    if isinstance(spec, Path) or (isinstance(spec, str) and spec.endswith((".yaml", ".yml"))):
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"{path}: pipeline spec file not found")
        spec = settings.load_yaml(path)
    elif isinstance(spec, str):
        if spec in PRESETS:
            return [dict(e) for e in PRESETS[spec]]
        if "\n" not in spec and ":" not in spec and "[" not in spec:
            raise ConfigError(f"unknown preset {spec!r}; valid presets: {', '.join(PRESETS)}")
        spec = settings.parse_yaml(spec, "pipeline spec")
    if isinstance(spec, dict):
        if "ops" not in spec:
            raise ConfigError(f"a pipeline spec mapping needs an 'ops' list, got keys {sorted(spec)}")
        spec = spec["ops"]
    if not isinstance(spec, (list, tuple)):
        raise ConfigError(f"a pipeline spec must be a list of ops, got {type(spec).__name__}")
    return [dict(e) if isinstance(e, dict) else e for e in spec]


# ---------------------------------------------------------------------------------------------
# Pipeline


@dataclass
class _Step:
    opdef: OpDef
    cfg: dict
    p: float
    entry: dict = field(default_factory=dict)


class Pipeline:
    """A degradation pipeline: ordered ops with probabilities and parameter ranges.

    Args:
        spec: see :func:`load_spec` (preset name, list of op dicts, YAML ...).
        scale: ``lq`` side = ``gt`` side / scale (the gt side must be divisible by it). A
            ``downsample`` op without an explicit ``scale`` uses this; whatever the ops do, the
            pipeline ends with an exact resize to this size when needed (recorded in params).

    Call ``pipeline(image, rng, condition=None)`` -> ``(lq, gt, params)``:
        image: ``(S,S,3)`` (or ``(H,W,3)``) uint8 or float in [0,1].
        lq: ``(H/scale, W/scale, 3) float32`` in [0,1]; gt: ``(H,W,3) float32`` in [0,1], the
        input after the geometric ops (the input itself, not a copy, when it is float32 and no
        geometric op applied). condition: force this lighting condition (the ``lighting`` op is
        inserted after the geometric ops when the spec has none).
        params: ``{"ops": [{"op": name, **drawn}], "condition": str | None, "scale": int,
        "shape": [H, W]}``; JSON-serialisable.
    """

    def __init__(self, spec="cctv-heavy", scale: int = 4):
        if not _is_number(scale) or int(scale) != scale or not 1 <= scale <= 16:
            raise ConfigError(f"pipeline scale must be a whole number within 1-16, got {scale!r}")
        self.scale = int(scale)
        self.name = spec if isinstance(spec, str) and spec in PRESETS else "custom"
        self.entries = load_spec(spec)
        steps = []
        for entry in self.entries:
            opdef, cfg, p = validate_op(entry)
            if opdef.name == "downsample" and "scale" not in entry:
                cfg["scale"] = ("range", (self.scale, self.scale), True, False)
            steps.append(_Step(opdef, cfg, p, entry))
        seen_photometric = False
        for st in steps:
            if st.opdef.geometric and seen_photometric:
                raise ConfigError(f"geometric op {st.opdef.name!r} must come before every photometric op "
                                  "(it transforms gt as well)")
            seen_photometric |= not st.opdef.geometric
        self.steps = steps
        self._by_condition: dict[str, list[_Step]] = {}

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, scale={self.scale}, ops={[s.opdef.name for s in self.steps]})"

    @property
    def op_names(self) -> list[str]:
        """Names of the ops, in order."""
        return [s.opdef.name for s in self.steps]

    def to_spec(self) -> list[dict]:
        """The validated spec entries (a list of dicts, YAML/JSON friendly)."""
        return [dict(e) for e in self.entries]

    def _steps(self, condition: str | None) -> list[_Step]:
        if condition is None:
            return self.steps
        steps = self._by_condition.get(condition)
        if steps is None:
            if condition not in augment.CONDITIONS:
                raise ConfigError(f"unknown lighting condition {condition!r}; valid: {', '.join(augment.CONDITIONS)}")
            fixed = ("choice", (condition,), False, False)
            steps = [(_Step(s.opdef, dict(s.cfg, condition=fixed), 1.0, s.entry) if s.opdef.name == "lighting" else s)
                     for s in self.steps]
            if not any(s.opdef.name == "lighting" for s in steps):
                at = sum(1 for s in steps if s.opdef.geometric)
                steps.insert(at, _Step(OPS["lighting"], {"condition": fixed}, 1.0, {"op": "lighting"}))
            self._by_condition[condition] = steps
        return steps

    def __call__(self, image, rng: np.random.Generator, condition: str | None = None):
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        img = to_float(image)
        h, w = img.shape[:2]
        if h % self.scale or w % self.scale:
            raise ImageFormatError(f"image size {h}x{w} is not divisible by the pipeline scale {self.scale}")
        records = []
        gt = None
        label = None
        for st in self._steps(condition):
            if gt is None and not st.opdef.geometric:
                gt = img
            if st.p < 1.0 and rng.random() >= st.p:
                continue
            drawn = st.opdef.sample(rng, st.cfg, img.shape)
            img = st.opdef.apply(img, **drawn)
            if st.opdef.name == "lighting":
                label = drawn["condition"]
            records.append({"op": st.opdef.name, **drawn})
        if gt is None:
            gt = img
        th, tw = h // self.scale, w // self.scale
        if img.shape[:2] != (th, tw):
            method = "area" if img.shape[0] >= th else "bicubic"
            drawn = {"height": th, "width": tw, "method": method}
            img = resize(img, **drawn)
            records.append({"op": "resize", **drawn})
        params = {"ops": records, "condition": label, "scale": self.scale, "shape": [h, w]}
        return img, gt, params


def replay(params: dict, gt) -> np.ndarray:
    """Rebuild ``lq`` from a pipeline's ``params`` and the ``gt`` it returned (bit-exact).

    Geometric ops are skipped: they are already in ``gt``. Use :func:`replay_gt` to rebuild ``gt``
    from the original image.

    Returns:
        ``lq``: ``(H/scale, W/scale, 3) float32`` in [0,1].
    """
    img = to_float(gt)
    for rec in _records(params):
        opdef = OPS[rec["op"]]
        if not opdef.geometric:
            img = opdef.apply(img, **{k: v for k, v in rec.items() if k != "op"})
    return img


def replay_gt(params: dict, image) -> np.ndarray:
    """Rebuild ``gt`` by applying the recorded geometric ops (pose) to the original image."""
    img = to_float(image)
    for rec in _records(params):
        opdef = OPS[rec["op"]]
        if opdef.geometric:
            img = opdef.apply(img, **{k: v for k, v in rec.items() if k != "op"})
    return img


def _records(params: dict, ops: dict[str, OpDef] | None = None) -> list[dict]:
    ops = OPS if ops is None else ops
    if not isinstance(params, dict) or not isinstance(params.get("ops"), list):
        raise ConfigError("params must be the dict a Pipeline returned (with an 'ops' list)")
    for rec in params["ops"]:
        if rec.get("op") not in ops:
            raise ConfigError(f"params name an unknown op {rec.get('op')!r}; valid: {', '.join(ops)}")
    return params["ops"]


def occlusion_masks(params: dict) -> np.ndarray | None:
    """Union of the occlusion masks a pipeline applied, in ``gt`` pixels (``(H,W) float32``), or None."""
    h, w = params["shape"]
    masks = [occlusion_mask((h, w), **{k: v for k, v in r.items() if k not in ("op", "color")})
             for r in _records(params) if r["op"] == "occlusion"]
    return np.maximum.reduce(masks) if masks else None


def pose_angles(params: dict) -> dict:
    """The applied head pose ``{"roll", "yaw", "pitch", "flip"}`` (zeros/False when none)."""
    out = {"roll": 0.0, "yaw": 0.0, "pitch": 0.0, "flip": False}
    for r in _records(params):
        if r["op"] == "pose":
            out.update({k: r[k] for k in out})
    return out


# ---------------------------------------------------------------------------------------------
# Factor columns: what the evaluation records about the degradations of each face


def factor_columns(ops: dict[str, OpDef] | None = None) -> dict[str, Factor]:
    """Every factor column the ops feed, each with the first :class:`Factor` declaring it.

    Args:
        ops: the op registry (default :data:`OPS`).

    Returns:
        column -> Factor, ``"scale"`` first (the pipeline's own), then in op registry order.

    Raises:
        ConfigError: two ops feed one column with a different default or combine rule.
    """
    columns: dict[str, Factor] = {"scale": _SCALE}
    for opdef in (OPS if ops is None else ops).values():
        for f in opdef.factors:
            if f.combine not in FACTOR_COMBINES:
                raise ConfigError(f"op {opdef.name!r}: factor {f.column!r} has combine rule {f.combine!r}; "
                                  f"valid: {', '.join(FACTOR_COMBINES)}")
            first = columns.setdefault(f.column, f)
            same_default = first.default == f.default or (first.default != first.default and f.default != f.default)
            if first.combine != f.combine or not same_default:
                raise ConfigError(f"op {opdef.name!r} feeds factor {f.column!r} with default {f.default!r} and "
                                  f"combine {f.combine!r}, another op with {first.default!r} and {first.combine!r}")
    return columns


def _combine(factor: Factor, values: list):
    if not values:
        return factor.default
    if factor.combine == "last":
        return values[-1]
    if factor.combine == "max":
        return functools.reduce(max, values, factor.default)
    if factor.combine == "join":
        return "+".join(values)
    total = 0.0
    for v in values:  # in record order (not sum(): Python 3.12's sum compensates, changing the bits)
        total += v
    return math.sqrt(total)


def degradation_factors(params: dict, ops: dict[str, OpDef] | None = None) -> dict:
    """Flatten a pipeline's recorded params into factor columns (the evaluation's per-row factors).

    Each applied op feeds the columns of its :attr:`OpDef.factors`; a column no applied op feeds
    keeps its default (0 for blur and noise, NaN for JPEG quality and photons, ``"none"`` for
    occlusion and the blur kind). ``noise_sigma`` is the combined noise std at 50% grey.

    Args:
        params: what :class:`Pipeline` returned (``{"ops": [...], "scale": ...}``).
        ops: the op registry (default :data:`OPS`).

    Returns:
        Dict with the keys of :func:`factor_columns`, in its order. ``scale`` is the pipeline's
        recorded scale (its ``lq`` side is the ``gt`` side / scale, downsample op or not).

    Raises:
        ConfigError: params that are not a pipeline's, or that name an unknown op.
    """
    ops = OPS if ops is None else ops
    columns = factor_columns(ops)
    fed: dict[str, list] = {name: [] for name in columns}
    for rec in _records(params, ops):
        for f in ops[rec["op"]].factors:
            fed[f.column].append(f.value(rec))
    out = {name: _combine(f, fed[name]) for name, f in columns.items()}
    if "scale" in params:
        out["scale"] = int(params["scale"])
    return out


# ---------------------------------------------------------------------------------------------
# Random draws of any op: (op name, image, rng, **parameter overrides) -> (image, drawn params)


def random_op(name: str, img, rng: np.random.Generator, **overrides) -> tuple[np.ndarray, dict]:
    """Apply op ``name`` with parameters drawn from its default ranges (or ``overrides``).

    Args:
        name: an op of :data:`OPS`, e.g. ``"downsample"``.
        img: ``(H,W,3)`` RGB, uint8 or float in [0,1].
        rng: the generator the parameters are drawn from.
        **overrides: parameter ranges or fixed values, as in a pipeline entry (``scale=[2, 8]``).

    Returns:
        ``(image float32 in [0,1], params)``; ``OPS[name].apply(image, **params)`` replays it.
    """
    opdef, cfg, _ = validate_op({"op": name, **overrides})
    x = to_float(img)
    drawn = opdef.sample(rng, cfg, x.shape)
    return opdef.apply(x, **drawn), drawn


def random_occlusion(img, rng, kind=OCCLUSION_KINDS) -> tuple[np.ndarray, np.ndarray, dict]:
    """Random occluder of one of ``kind``. Returns ``(image, mask (H,W) float32, params)``."""
    opdef, cfg, _ = validate_op({"op": "occlusion", "kind": kind})
    x = to_float(img)
    drawn = opdef.sample(rng, cfg, x.shape)
    out, mask = occlude(x, **drawn)
    return out, mask, drawn


# factor -> (levels, spec builder(level) -> (ops list, pipeline scale)). Each sweep changes one
# factor; light is neutral ("medium") and there is no pose. Lengths/radii are fractions of the side.
SEVERITY_SWEEPS: dict[str, tuple[tuple, Callable]] = {
    "scale": ((2, 4, 8), lambda v: ([{"op": "downsample", "method": "area"}], int(v))),
    "blur": ((0.04, 0.1, 0.16), lambda v: ([{"op": "motion_blur", "length_frac": float(v), "exposure": 1.0},
                                           {"op": "downsample", "method": "area"}], None)),
    "noise": ((0.01, 0.03, 0.06), lambda v: ([{"op": "downsample", "method": "area"},
                                             {"op": "gaussian_noise", "sigma": float(v), "color": True}], None)),
    "jpeg": ((75, 40, 15), lambda v: ([{"op": "downsample", "method": "area"},
                                      {"op": "jpeg", "quality": int(v)}], None)),
}
