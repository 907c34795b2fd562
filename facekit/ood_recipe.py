"""Out-of-distribution (OOD) degradation recipe, for evaluation only.

This recipe is written independently of facekit's training degradations (``facekit.degrade``,
``facekit.augment``, ``facekit.dataset``) and imports none of them, so a model can be scored on
inputs whose kernels, order and parameter ranges it never saw in training. It uses its own
illuminant model, motion kernels drawn with ``cv2.line``, several OpenCV and PIL resamplers,
Poisson-Gaussian camera noise and PIL JPEG. There is no occlusion.

Pipeline of :func:`degrade` (clean face ``gt``, side ``S``, to a ``lq_side`` input):

1. lighting in linear light: ``warm`` (illuminant 2600-3400 K), ``cold`` (7500-11000 K), ``low``
   (-1.5 to -2.6 stops, noise x1.5), ``bright`` (+0.4 to +1.0 stops, highlights clip), ``medium``
   (unchanged);
2. one blur: linear motion (length 2-9 % of ``S``, any angle), Gaussian (PIL, radius
   0.4-1.8 % of ``S``), or none (20 %);
3. downscale to ``lq_side`` with one of cv2 ``INTER_AREA``/``INTER_LINEAR``, PIL
   ``BOX``/``BICUBIC``/``LANCZOS``;
4. camera noise: Poisson-Gaussian (shot-noise gain 1/3000 to 1/300, read noise sigma
   0.005-0.03), a luminance component plus a weaker chroma one;
5. PIL JPEG, quality 35-70.

All random functions take an explicit ``np.random.Generator``. :func:`degrade` draws every
parameter except the lighting first, in a fixed order and whatever the condition, so the same
seed gives the same blur, resampler, noise and JPEG quality under all five conditions: the
conditions of one seed differ only in their light.
"""

from __future__ import annotations

import io
import math
from numbers import Integral

import cv2
import numpy as np
from PIL import Image, ImageFilter

LIGHTING = ("warm", "cold", "low", "medium", "bright")
FRAMINGS = ("tight", "loose", "offcentre")
SIZES = (12, 16, 24, 32)

# Square side as a multiple of the detector box's longer side, per framing.
FRAME_SIDE = {"tight": 1.15, "loose": 1.7, "offcentre": 1.35}
# Off-centre framings move the crop centre by this fraction of the crop side.
OFFCENTRE_SHIFT = (0.12, 0.20)

# Parameter ranges of :func:`degrade` (uniform draws unless noted).
KELVIN = {"warm": (2600.0, 3400.0), "cold": (7500.0, 11000.0)}
STOPS = {"low": (-2.6, -1.5), "bright": (0.4, 1.0)}
# Reference white: the camera is white-balanced for D65 (sRGB's white point).
REFERENCE_KELVIN = 6504.0
BLUR_KINDS = ("motion", "gaussian", "none")
BLUR_PROBS = (0.4, 0.4, 0.2)
MOTION_LENGTH = (0.02, 0.09)       # fraction of S
GAUSSIAN_RADIUS = (0.004, 0.018)   # fraction of S
RESAMPLERS = ("cv2_area", "cv2_linear", "pil_box", "pil_bicubic", "pil_lanczos")
SHOT_GAIN = (1.0 / 3000.0, 1.0 / 300.0)   # log-uniform; variance of shot noise = gain * value
READ_SIGMA = (0.005, 0.03)
CHROMA = (0.2, 0.5)                # chroma noise amplitude relative to luminance noise
LOW_LIGHT_NOISE = 1.5              # noise multiplier in low light
JPEG_QUALITY = (35, 70)            # inclusive

# sRGB (D65) primaries: CIE XYZ -> linear sRGB (IEC 61966-2-1).
_XYZ_TO_LINEAR_SRGB = np.array([[3.2404542, -1.5371385, -0.4985314],
                                [-0.9692660, 1.8760108, 0.0415560],
                                [0.0556434, -0.2040259, 1.0572252]])
# Relative luminance of linear sRGB (the Y row of linear sRGB -> XYZ).
_LUMINANCE = np.array([0.2126729, 0.7151522, 0.0721750])

_PIL_RESAMPLE = {"pil_box": Image.Resampling.BOX, "pil_bicubic": Image.Resampling.BICUBIC,
                 "pil_lanczos": Image.Resampling.LANCZOS}
_CV2_RESAMPLE = {"cv2_area": cv2.INTER_AREA, "cv2_linear": cv2.INTER_LINEAR}


# ----------------------------------------------------------------------------- validation

def _check_rng(rng) -> None:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                         f"got {type(rng).__name__}")


def _check_side(name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_rgb(name: str, img) -> np.ndarray:
    if not isinstance(img, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(img).__name__}")
    if img.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 RGB, got dtype {img.dtype}")
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"{name} must have shape (H,W,3), got {img.shape}")
    return img


def _check_condition(condition) -> str:
    if condition not in LIGHTING:
        raise ValueError(f"unknown lighting condition {condition!r}; valid: {', '.join(LIGHTING)}")
    return condition


# ----------------------------------------------------------------------------- framing

def _frame(img, box, framing, out_side, rng) -> tuple[np.ndarray, dict]:
    img = _check_rgb("img", img)
    h, w = img.shape[:2]
    if h < 2 or w < 2:
        raise ValueError(f"img must be at least 2x2 pixels to reflect-pad, got {h}x{w}")
    try:
        bx, by, bw, bh = (float(v) for v in box)
    except (TypeError, ValueError):
        raise ValueError(f"box must be four numbers (x, y, w, h), got {box!r}") from None
    if not all(math.isfinite(v) for v in (bx, by, bw, bh)):
        raise ValueError(f"box must be finite, got {box!r}")
    if bw <= 0 or bh <= 0:
        raise ValueError(f"box width and height must be positive, got w={bw}, h={bh}")
    cx, cy = bx + bw / 2, by + bh / 2
    if not (0 <= cx <= w and 0 <= cy <= h):
        raise ValueError(f"box centre ({cx:.1f}, {cy:.1f}) lies outside the {w}x{h} image")
    if framing not in FRAMINGS:
        raise ValueError(f"unknown framing {framing!r}; valid: {', '.join(FRAMINGS)}")
    out_side = _check_side("out_side", out_side)
    _check_rng(rng)

    side = FRAME_SIDE[framing] * max(bw, bh)
    shift_frac, shift_angle = 0.0, 0.0
    if framing == "offcentre":
        shift_frac = float(rng.uniform(*OFFCENTRE_SHIFT))
        shift_angle = float(rng.uniform(0.0, 2 * math.pi))
        cx += shift_frac * side * math.cos(shift_angle)
        cy += shift_frac * side * math.sin(shift_angle)

    n = max(2, int(round(side)))
    x0, y0 = int(round(cx - n / 2)), int(round(cy - n / 2))
    x1, y1 = x0 + n, y0 + n
    pad = ((max(0, -y0), max(0, y1 - h)), (max(0, -x0), max(0, x1 - w)), (0, 0))
    # np.pad's reflect mode keeps reflecting when the pad is larger than the image.
    src = np.pad(img, pad, mode="reflect") if any(sum(p) for p in pad) else img
    crop = src[y0 + pad[0][0]:y1 + pad[0][0], x0 + pad[1][0]:x1 + pad[1][0]]
    interp = cv2.INTER_AREA if n >= out_side else cv2.INTER_CUBIC
    out = cv2.resize(np.ascontiguousarray(crop), (out_side, out_side), interpolation=interp)
    info = {"framing": framing, "crop_side": int(n), "shift_frac": shift_frac,
            "shift_angle_deg": math.degrees(shift_angle)}
    return out, info


def frame_face(img: np.ndarray, box, framing: str, out_side: int,
               rng: np.random.Generator) -> np.ndarray:
    """Crop a square around a detected face and resize it, reflect-padding outside the photo.

    Args:
        img: ``(H,W,3) uint8`` RGB source photo, ``H, W >= 2``.
        box: ``(x, y, w, h)`` face box in pixels (e.g. YuNet's), floats allowed; its centre must
            lie inside the image.
        framing: ``"tight"`` (side 1.15 x the box's longer side, centred on the box), ``"loose"``
            (1.7 x), or ``"offcentre"`` (1.35 x, centre moved by 12-20 % of the side in a random
            direction).
        out_side: output side in pixels, ``>= 1``.
        rng: generator; only ``"offcentre"`` draws from it.

    Returns:
        ``(out_side, out_side, 3) uint8`` RGB: ``cv2.INTER_AREA`` when shrinking,
        ``cv2.INTER_CUBIC`` when enlarging.

    Raises:
        ValueError: naming the bad argument.
    """
    return _frame(img, box, framing, out_side, rng)[0]


def frame_face_info(img: np.ndarray, box, framing: str, out_side: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """:func:`frame_face` plus where the crop came from: ``{"framing", "crop_side", "shift_frac",
    "shift_angle_deg"}`` (what :func:`make_pair` adds to its params)."""
    return _frame(img, box, framing, out_side, rng)


# ----------------------------------------------------------------------------- colour

def to_gray(img: np.ndarray) -> np.ndarray:
    """Rec.601 luma of uint8 RGB, returned as RGB with three equal channels.

    Args:
        img: ``(..., 3) uint8`` RGB, e.g. ``(H,W,3)`` or ``(N,H,W,3)``.

    Returns:
        uint8 array of the same shape, all channels equal; an already-grey image comes back
        unchanged (the integer weights sum to 1000, so equal channels map to themselves).
    """
    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim < 1 or img.shape[-1] != 3:
        raise ValueError(f"img must be uint8 with 3 channels last, got {img.dtype} {img.shape}")
    c = img.astype(np.uint32)
    y = (299 * c[..., 0] + 587 * c[..., 1] + 114 * c[..., 2] + 500) // 1000
    return np.repeat(y.astype(np.uint8)[..., None], 3, axis=-1)


def _srgb_decode(v: np.ndarray) -> np.ndarray:
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)


def _srgb_encode(v: np.ndarray) -> np.ndarray:
    v = np.clip(v, 0.0, 1.0)
    return np.where(v <= 0.0031308, 12.92 * v, 1.055 * np.power(v, 1 / 2.4) - 0.055)


def illuminant_xy(kelvin: float) -> tuple[float, float]:
    """CIE 1931 chromaticity of a light of colour temperature ``kelvin``.

    Below 4000 K the light is taken as incandescent (Planckian locus, Kim et al. 2002 cubic
    fit, valid from 2222 K); from 4000 K as daylight (CIE daylight locus, valid to 25000 K),
    since cold casts in CCTV come from shade and overcast sky rather than from hot bodies.

    Args:
        kelvin: colour temperature in K, 2222-25000.

    Returns:
        ``(x, y)`` chromaticity.
    """
    t = float(kelvin)
    if not 2222.0 <= t <= 25000.0:
        raise ValueError(f"kelvin must be within 2222-25000 K, got {kelvin}")
    if t < 4000.0:
        x = -0.2661239e9 / t ** 3 - 0.2343589e6 / t ** 2 + 0.8776956e3 / t + 0.179910
        y = -0.9549476 * x ** 3 - 1.37418593 * x ** 2 + 2.09137015 * x - 0.16748867
    else:
        if t <= 7000.0:
            x = -4.6070e9 / t ** 3 + 2.9678e6 / t ** 2 + 0.09911e3 / t + 0.244063
        else:
            x = -2.0064e9 / t ** 3 + 1.9018e6 / t ** 2 + 0.24748e3 / t + 0.237040
        y = -3.000 * x ** 2 + 2.870 * x - 0.275
    return x, y


def _illuminant_linear_rgb(kelvin: float) -> np.ndarray:
    x, y = illuminant_xy(kelvin)
    return _XYZ_TO_LINEAR_SRGB @ np.array([x / y, 1.0, (1.0 - x - y) / y])


def illuminant_gains(kelvin: float) -> np.ndarray:
    """Linear-light RGB gains of a ``kelvin`` light seen by a camera balanced for D65.

    Args:
        kelvin: colour temperature in K, 2222-25000.

    Returns:
        ``(3,) float64`` gains (R, G, B), green normalised to 1; about (2.1, 1, 0.32) at
        3000 K, (1, 1, 1) at 6504 K and (0.85, 1, 1.30) at 9000 K.
    """
    g = _illuminant_linear_rgb(kelvin) / _illuminant_linear_rgb(REFERENCE_KELVIN)
    return g / g[1]


# ----------------------------------------------------------------------------- degradation steps

def motion_kernel(length_px: float, angle_deg: float) -> np.ndarray:
    """Normalised linear motion-blur kernel, an antialiased line drawn with ``cv2.line``.

    Args:
        length_px: blur length in pixels (> 0); under 1 px gives a (near) identity kernel.
        angle_deg: direction of motion in degrees.

    Returns:
        ``(k,k) float32`` kernel summing to 1, ``k`` odd.
    """
    if not length_px > 0:
        raise ValueError(f"length_px must be positive, got {length_px}")
    # Room for the line plus its antialiased, rounded ends (half a pixel each).
    k = (int(math.ceil(length_px)) + 1) | 1
    # Drawn as a one-pixel-wide line on a 32x finer canvas with fixed-point coordinates, then
    # area-averaged: fractional lengths and any angle give a smooth kernel centred to ~0.03 px
    # (cv2 does not antialias thick lines, so the fine canvas does the antialiasing).
    up, shift = 32, 4
    canvas = np.zeros((k * up, k * up), np.float32)
    c = (k * up - 1) / 2
    dx = math.cos(math.radians(angle_deg)) * length_px * up / 2
    dy = math.sin(math.radians(angle_deg)) * length_px * up / 2
    p0 = (int(round((c - dx) * (1 << shift))), int(round((c - dy) * (1 << shift))))
    p1 = (int(round((c + dx) * (1 << shift))), int(round((c + dy) * (1 << shift))))
    cv2.line(canvas, p0, p1, 1.0, thickness=up, lineType=cv2.LINE_8, shift=shift)
    kernel = cv2.resize(canvas, (k, k), interpolation=cv2.INTER_AREA)
    return (kernel / kernel.sum()).astype(np.float32)


def _pil_gaussian(x: np.ndarray, radius: float) -> np.ndarray:
    # PIL blurs 8-bit images only, so this step sees the 8-bit image (as an 8-bit ISP would).
    u8 = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    mode = "L" if u8.shape[2] == 1 else "RGB"
    im = Image.fromarray(u8[..., 0] if mode == "L" else u8, mode=mode)
    out = np.asarray(im.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32) / 255.0
    return out.reshape(x.shape)


def _resize(x: np.ndarray, side: int, resampler: str) -> np.ndarray:
    if resampler in _CV2_RESAMPLE:
        out = cv2.resize(x, (side, side), interpolation=_CV2_RESAMPLE[resampler])
        return out.reshape(side, side, x.shape[2])
    # PIL resamples float images ('F' mode) one channel at a time, without 8-bit rounding.
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(x[..., c]), mode="F")
                        .resize((side, side), _PIL_RESAMPLE[resampler]), dtype=np.float32)
             for c in range(x.shape[2])]
    return np.stack(chans, axis=-1)


def _jpeg(u8: np.ndarray, quality: int) -> np.ndarray:
    # Grey is saved as one 'L' plane so JPEG's chroma cannot tint it.
    gray = u8.shape[2] == 1
    im = Image.fromarray(u8[..., 0] if gray else u8, mode="L" if gray else "RGB")
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as dec:
        out = np.asarray(dec.convert("L" if gray else "RGB"))
    return out.reshape(u8.shape)


# ----------------------------------------------------------------------------- the recipe

def degrade(gt: np.ndarray, lq_side: int, condition: str, rng: np.random.Generator,
            gray: bool = False) -> tuple[np.ndarray, dict]:
    """Degrade a clean face into an OOD low-quality input (light, blur, downscale, noise, JPEG).

    Args:
        gt: ``(S,S,3) uint8`` RGB clean face, ``S >= lq_side`` (``S = 4 * lq_side`` typically).
        lq_side: output side in pixels, ``>= 1``.
        condition: one of :data:`LIGHTING`.
        rng: generator; the same generator state gives identical output bytes.
        gray: monochrome camera: ``gt`` is made grey with :func:`to_gray` (a no-op on a grey
            image), the light changes brightness only (by the luminance of its RGB gains), and
            noise and JPEG act on one plane, so the output has three exactly equal channels.

    Returns:
        ``(lq, params)``: ``lq`` is ``(lq_side, lq_side, 3) uint8`` RGB; ``params`` holds every
        draw as plain Python scalars: ``condition, gray, gt_side, lq_side, kelvin,
        stops, gain_r, gain_g, gain_b, blur ("motion"|"gaussian"|"none"), blur_size_px
        (motion length or Gaussian radius at S; 0 for none), blur_angle_deg, resample,
        shot_gain, read_sigma, chroma, noise_boost, jpeg_quality``.

    Raises:
        ValueError: naming the bad argument.
    """
    gt = _check_rgb("gt", gt)
    if gt.shape[0] != gt.shape[1]:
        raise ValueError(f"gt must be square, got {gt.shape[1]}x{gt.shape[0]}")
    lq_side = _check_side("lq_side", lq_side)
    s = gt.shape[0]
    if s < lq_side:
        raise ValueError(f"gt side {s} is smaller than lq_side {lq_side}; degrade only shrinks")
    condition = _check_condition(condition)
    _check_rng(rng)
    if not isinstance(gray, (bool, np.bool_)):
        raise ValueError(f"gray must be a bool, got {gray!r}")
    gray = bool(gray)

    # Draws, in a fixed order that does not depend on the condition (see the module notes).
    blur = BLUR_KINDS[int(rng.choice(len(BLUR_KINDS), p=BLUR_PROBS))]
    motion_len = float(rng.uniform(*MOTION_LENGTH)) * s
    motion_angle = float(rng.uniform(0.0, 180.0))
    radius = float(rng.uniform(*GAUSSIAN_RADIUS)) * s
    resample = RESAMPLERS[int(rng.integers(len(RESAMPLERS)))]
    shot_gain = float(math.exp(rng.uniform(math.log(SHOT_GAIN[0]), math.log(SHOT_GAIN[1]))))
    read_sigma = float(rng.uniform(*READ_SIGMA))
    chroma = float(rng.uniform(*CHROMA))
    quality = int(rng.integers(JPEG_QUALITY[0], JPEG_QUALITY[1] + 1))
    u_kelvin, u_stops = float(rng.random()), float(rng.random())

    kelvin, stops = REFERENCE_KELVIN, 0.0
    if condition in KELVIN:
        lo, hi = KELVIN[condition]
        kelvin = lo + (hi - lo) * u_kelvin
    if condition in STOPS:
        lo, hi = STOPS[condition]
        stops = lo + (hi - lo) * u_stops
    noise_boost = LOW_LIGHT_NOISE if condition == "low" else 1.0
    gains = illuminant_gains(kelvin) if condition in KELVIN else np.ones(3)
    gains = gains * 2.0 ** stops

    # Grey runs on one plane to the end, so the three output channels are equal by construction.
    src = to_gray(gt)[..., :1] if gray else gt
    x = src.astype(np.float32) / 255.0

    # (1) Light scales linear radiance; encoding clips what exceeds white (bright highlights).
    if condition != "medium":
        g = np.array([float(_LUMINANCE @ gains)]) if gray else gains
        x = _srgb_encode(_srgb_decode(x.astype(np.float64)) * g).astype(np.float32)

    # (2) Blur at full resolution.
    if blur == "motion":
        x = cv2.filter2D(x, -1, motion_kernel(motion_len, motion_angle),
                         borderType=cv2.BORDER_REFLECT_101).reshape(x.shape)
    elif blur == "gaussian":
        x = _pil_gaussian(x, radius)

    # (3) Downscale.
    x = np.clip(_resize(x, lq_side, resample), 0.0, 1.0)

    # (4) Poisson-Gaussian noise (heteroscedastic Gaussian approximation, Foi et al. 2008):
    # variance = shot_gain * value + read_sigma^2. Sensor noise is mostly luminance; the
    # demosaiced chroma part is weaker, hence one shared field plus a smaller per-channel one.
    sigma = noise_boost * np.sqrt(shot_gain * x + read_sigma ** 2)
    z_lum = rng.standard_normal(x.shape[:2] + (1,)).astype(np.float32)
    if gray:
        z = z_lum
    else:
        z_chroma = rng.standard_normal(x.shape).astype(np.float32)
        z = (z_lum + chroma * z_chroma) / np.float32(math.sqrt(1.0 + chroma ** 2))
    x = np.clip(x + sigma * z, 0.0, 1.0)

    # (5) JPEG.
    u8 = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    lq = _jpeg(u8, quality)
    if gray:
        lq = np.repeat(lq, 3, axis=2)

    params = {
        "condition": condition, "gray": gray, "gt_side": int(s), "lq_side": lq_side,
        "kelvin": float(kelvin), "stops": float(stops),
        "gain_r": float(gains[0]), "gain_g": float(gains[1]), "gain_b": float(gains[2]),
        "blur": blur,
        "blur_size_px": motion_len if blur == "motion" else radius if blur == "gaussian" else 0.0,
        "blur_angle_deg": motion_angle if blur == "motion" else 0.0,
        "resample": resample, "shot_gain": shot_gain, "read_sigma": read_sigma,
        "chroma": 0.0 if gray else chroma, "noise_boost": float(noise_boost),
        "jpeg_quality": quality,
    }
    return np.ascontiguousarray(lq), params


def make_pair(img: np.ndarray, box, framing: str, lq_side: int, condition: str,
              rng: np.random.Generator, gray: bool = False,
              scale: int = 4) -> tuple[np.ndarray, np.ndarray, dict]:
    """Frame a detected face and degrade it: one OOD evaluation pair.

    Args:
        img: ``(H,W,3) uint8`` RGB source photo.
        box: ``(x, y, w, h)`` face box (e.g. YuNet's).
        framing: one of :data:`FRAMINGS`.
        lq_side: low-quality side in pixels (usually one of :data:`SIZES`).
        condition: one of :data:`LIGHTING`.
        rng: generator (framing draws first, then :func:`degrade`'s).
        gray: make both images grey (:func:`to_gray`) and degrade as a monochrome camera.
        scale: ``gt`` side = ``lq_side * scale``, integer ``>= 1``.

    Returns:
        ``(lq, gt, params)``: ``lq`` ``(lq_side, lq_side, 3) uint8``, ``gt``
        ``(lq_side*scale, lq_side*scale, 3) uint8``, ``params`` = :func:`degrade`'s plus
        ``framing, crop_side, shift_frac, shift_angle_deg, scale``.
    """
    lq_side = _check_side("lq_side", lq_side)
    scale = _check_side("scale", scale)
    _check_condition(condition)
    gt, info = _frame(img, box, framing, lq_side * scale, rng)
    if gray:
        gt = to_gray(gt)
    lq, params = degrade(gt, lq_side, condition, rng, gray=gray)
    params.update(info)
    params["scale"] = scale
    return lq, gt, params
