"""Track-level reconstruction: fuse the low-quality crops of one face track into one face.

A CCTV track gives many bad views of a face, each with its own blur, noise, JPEG blocks and
sub-pixel position. Together they hold more real information than any single frame. This module:

1. scores each crop (:func:`frame_quality`: sharpness of the denoised luma, detector score, size)
   and keeps the best ``k`` (:func:`select_frames`), the best one as the reference;
2. registers every kept crop to the reference (:func:`register`): a phase-correlation start,
   then ECC (enhanced correlation coefficient, invariant to a gain/offset, so lighting flicker
   does not bias it) for a sub-pixel Euclidean warp; a crop that does not correlate is dropped;
3. fuses them (:func:`fuse_classical`): a robust multi-frame super-resolution: photometric
   matching to the reference, a per-pixel outlier-rejecting mean of the aligned upsampled crops,
   then iterative back-projection against every crop with Huber-weighted residuals (an occluded
   or smeared crop disagrees with the others and loses its weight pixel by pixel);
4. restores (:class:`TrackFuser`): the single-frame restorer's output for the reference plus the
   learned multi-frame innovation (:class:`facekit.archs.fusionnet.FusionNet`), which is zero
   by construction when the crops carry nothing the reference does not: ``k`` identical crops give
   exactly the single-frame restoration, never a spurious gain.

Conventions: ``lq`` crops are ``(K,s,s,3) uint8`` RGB; outputs are ``(S,S,3)`` with
``S = s * scale``. Warps are 2x3 affine matrices ``W`` in low-resolution pixel units (pixel
centres at integers) such that ``ref(x) ~ frame(W x)``.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from facekit import errors, faces, imageio, images, ood_recipe, randdeg, settings
from facekit.errors import ConfigError

LUMA = np.array([0.299, 0.587, 0.114], np.float32)


@dataclass
class FusionConfig:
    """Settings of a track fusion.

    Attributes:
        k: most crops fused (the best by quality; the reference is the best).
        scale: output side / crop side.
        iterations: back-projection iterations (0 = the robust mean only).
        step: back-projection step size.
        psf_sigma: assumed camera blur (Gaussian sigma, in low-resolution pixels) of the model that
            maps the face to a crop: blur, then area downscale.
        min_correlation: ECC correlation below which a crop is dropped as unregistrable
            (occluded, another face, a missed track).
        reject: per-pixel outlier threshold, in robust standard deviations of the residuals.
        max_shift: largest accepted registration shift, in low-resolution pixels (as a fraction of
            the side above this: a failed registration).
        mirror: average the learned correction with the mirror image of the correction of the
            mirrored inputs (one batched call): the network is not left-right symmetric, and
            averaging the two halves its asymmetric errors (+0.13 dB PSNR on the fusion card's
            168 tracks) at about 1.8x the learned stage's time (+2.5-3.5 ms, past the 20 ms track
            budget, hence off by default; ``facekit fuse`` turns it on). Identical crops still give
            exactly the single-frame restoration.
    """

    k: int = 8
    scale: int = 4
    iterations: int = 4
    step: float = 2.0
    psf_sigma: float = 0.25
    min_correlation: float = 0.6
    reject: float = 2.5
    max_shift: float = 0.25
    mirror: bool = False

    def __post_init__(self):
        for name, lo, hi in (("k", 1, 64), ("scale", 1, 8), ("iterations", 0, 100)):
            settings.check_int(getattr(self, name), f"fusion {name}", lo, hi)
        for name, lo, hi in (("step", 0.0, 4.0), ("psf_sigma", 0.0, 4.0), ("min_correlation", -1.0, 1.0),
                             ("reject", 0.5, 100.0), ("max_shift", 0.0, 1.0)):
            settings.check_float(getattr(self, name), f"fusion {name}", lo, hi)
        if not isinstance(self.mirror, bool):
            raise ConfigError(f"fusion mirror must be true or false, got {self.mirror!r}")


@dataclass
class Registration:
    """Where each crop lies relative to the reference.

    Attributes:
        warps: ``(K,2,3) float32``, ``ref(x) ~ crop_k(W_k x)`` in low-resolution pixels.
        correlation: ``(K,)`` ECC correlation after alignment (1 = identical up to gain/offset).
        used: ``(K,) bool``: registered well enough to be fused.
    """

    warps: np.ndarray
    correlation: np.ndarray
    used: np.ndarray

    @property
    def shifts(self) -> np.ndarray:
        """``(K,2)`` translation part ``(dx, dy)`` of each warp, in low-resolution pixels."""
        return self.warps[:, :, 2].copy()


@dataclass
class FusionResult:
    """A fused track.

    Attributes:
        out: ``(S,S,3) uint8`` the fused face (the restorer's output plus the learned innovation;
            the classical fusion when no restorer is given).
        classical: ``(S,S,3) uint8`` the classical multi-frame super-resolution.
        single: ``(S,S,3) uint8`` or None: the single-frame restoration of the reference crop.
        reference: index (into the given crops) of the reference crop.
        frames: indices of the crops fused, best first.
        registration: :class:`Registration` of ``frames`` (the reference's warp is the identity).
        quality: ``(N,)`` quality of every given crop.
        timings_ms: per-step wall time.
    """

    out: np.ndarray
    classical: np.ndarray
    single: np.ndarray | None
    reference: int
    frames: list[int]
    registration: Registration
    quality: np.ndarray
    timings_ms: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-ready facts about the fusion (no images)."""
        reg = self.registration
        return {"reference": int(self.reference), "frames": [int(i) for i in self.frames],
                "used": int(reg.used.sum()), "correlation": [round(float(c), 4) for c in reg.correlation],
                "shifts_px": [[round(float(v), 3) for v in s] for s in reg.shifts],
                "quality": [round(float(q), 5) for q in self.quality], "timings_ms": self.timings_ms}


# ----------------------------------------------------------------------------- validation

def as_crops(crops, name: str = "crops") -> np.ndarray:
    """Check and stack a track's crops.

    Args:
        crops: a sequence or array of ``(s,s,3) uint8`` RGB crops of one size.

    Returns:
        ``(K,s,s,3) uint8``.

    Raises:
        ConfigError: naming the problem (empty, mixed sizes, wrong dtype or channels).
    """
    if isinstance(crops, np.ndarray):
        arr = crops
    else:
        crops = list(crops)
        if not crops:
            raise ConfigError(f"{name}: no crops to fuse")
        sizes = {tuple(np.shape(c)) for c in crops}
        if len(sizes) > 1:
            raise ConfigError(f"{name}: crops must share one size, got {sorted(sizes)}")
        arr = np.stack(crops)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] < 1:
        raise ConfigError(f"{name}: expected (K,s,s,3) RGB crops, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ConfigError(f"{name}: expected uint8 crops, got {arr.dtype}")
    if arr.shape[1] != arr.shape[2] or arr.shape[1] < 4:
        raise ConfigError(f"{name}: crops must be square and at least 4 px, got {arr.shape[2]}x{arr.shape[1]}")
    return np.ascontiguousarray(arr)


# ----------------------------------------------------------------------------- quality

def _luma(img: np.ndarray) -> np.ndarray:
    """``(H,W) float32`` luma in [0,1] of an ``(H,W,3)`` uint8 or float image."""
    x = img.astype(np.float32)
    if img.dtype == np.uint8:
        x /= 255.0
    return x @ LUMA


def frame_quality(crops, scores=None, sides=None) -> np.ndarray:
    """Score crops for fusion: sharpness of the lightly denoised luma, times detector score and size.

    Sharpness is the mean gradient energy after a small Gaussian (so noise and JPEG blocks count
    for little), divided by the crop's luma variance (so a darker or lower-contrast copy of the same
    face is not penalised: lighting flicker is not blur).

    Args:
        crops: ``(N,s,s,3) uint8`` RGB crops of one track.
        scores: ``(N,)`` detector scores in [0,1], or None (all 1).
        sides: ``(N,)`` face sizes in frame pixels, or None; a face smaller than the track's largest
            is scaled down by ``side / max side``.

    Returns:
        ``(N,) float64`` quality, larger is better.
    """
    crops = as_crops(crops)
    q = np.empty(len(crops))
    for i, c in enumerate(crops):
        y = cv2.GaussianBlur(_luma(c), (0, 0), 0.7)
        gx = cv2.Sobel(y, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(y, cv2.CV_32F, 0, 1, ksize=3)
        q[i] = float(np.mean(gx * gx + gy * gy)) / (float(y.var()) + 1e-4)
    if scores is not None:
        q *= np.clip(np.asarray(scores, np.float64), 0.0, 1.0)
    if sides is not None:
        s = np.asarray(sides, np.float64)
        q *= s / max(float(s.max()), 1e-9)
    return q


def select_frames(quality, k: int) -> list[int]:
    """Indices of the ``k`` best crops, best first (ties keep the earlier crop first)."""
    quality = np.asarray(quality, np.float64)
    order = sorted(range(len(quality)), key=lambda i: (-quality[i], i))
    return order[:max(1, int(k))]


# ----------------------------------------------------------------------------- registration

_UP = 4  # registration works on 4x bicubic upsamples: ECC's gradients need a few pixels per feature


def _to_up(m: np.ndarray, u: int) -> np.ndarray:
    """A low-resolution warp in the coordinates of a ``u``-times upsample (centre-aligned pixels)."""
    c = (u - 1) / 2.0
    a = m[:, :2]
    t = u * m[:, 2] + c - a @ np.array([c, c])
    return np.hstack([a, t[:, None]]).astype(np.float32)


def _from_up(m: np.ndarray, u: int) -> np.ndarray:
    """Inverse of :func:`_to_up`."""
    c = (u - 1) / 2.0
    a = m[:, :2]
    t = (m[:, 2] - c + a @ np.array([c, c])) / u
    return np.hstack([a, t[:, None]]).astype(np.float32)


def _reg_image(crop: np.ndarray) -> np.ndarray:
    s = crop.shape[0]
    y = cv2.resize(_luma(crop), (s * _UP, s * _UP), interpolation=cv2.INTER_CUBIC)
    return cv2.GaussianBlur(y, (0, 0), _UP * 0.6)


def register(crops, reference: int = 0, motion: str = "euclidean", iterations: int = 25,
             min_correlation: float = 0.6, max_shift: float = 0.25) -> Registration:
    """Register every crop to the reference crop with sub-pixel accuracy.

    Args:
        crops: ``(K,s,s,3) uint8`` RGB crops.
        reference: index of the reference crop.
        motion: ``"translation"`` or ``"euclidean"`` (translation plus rotation).
        iterations: most ECC iterations per crop.
        min_correlation: crops whose aligned correlation is lower are marked unused.
        max_shift: shifts beyond this fraction of the side are a failed registration (unused).

    Returns:
        :class:`Registration` with one warp per crop (identity for the reference).
    """
    crops = as_crops(crops)
    motions = {"translation": cv2.MOTION_TRANSLATION, "euclidean": cv2.MOTION_EUCLIDEAN}
    if motion not in motions:
        raise ConfigError(f"unknown registration motion {motion!r}; valid: {', '.join(motions)}")
    k, s = len(crops), crops.shape[1]
    if not 0 <= reference < k:
        raise ConfigError(f"reference index {reference} is outside the {k} crops")
    ref = _reg_image(crops[reference])
    window = cv2.createHanningWindow(ref.shape[::-1], cv2.CV_64F)
    warps = np.repeat(np.eye(2, 3, dtype=np.float32)[None], k, axis=0)
    corr = np.ones(k, np.float32)
    used = np.ones(k, bool)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, int(iterations), 1e-4)
    for i in range(k):
        if i == reference:
            continue
        img = _reg_image(crops[i])
        # ECC converges from within a few pixels; phase correlation gives that start for free. It
        # windows its first input in place (OpenCV 4.14), so the reference goes in as a fresh copy.
        (dx, dy), _ = cv2.phaseCorrelate(ref.astype(np.float64), img.astype(np.float64), window)
        w = np.array([[1, 0, dx], [0, 1, dy]], np.float32)
        try:
            cc, w = cv2.findTransformECC(ref, img, w, motions[motion], criteria, None, 5)
        except cv2.error:  # did not converge: keep the phase-correlation shift, judge it below
            cc = float("nan")
        lr = _from_up(w, _UP)
        if not np.isfinite(cc):
            aligned = cv2.warpAffine(img, w, ref.shape[::-1], flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                     borderMode=cv2.BORDER_REFLECT)
            cc = float(np.corrcoef(aligned.ravel(), ref.ravel())[0, 1])
        warps[i], corr[i] = lr, cc
        used[i] = bool(np.isfinite(cc) and cc >= min_correlation
                       and np.all(np.abs(lr[:, 2]) <= max_shift * s + 1.0))
    return Registration(warps, corr, used)


# ----------------------------------------------------------------------------- classical fusion

_IDENTITY = np.eye(2, 3, dtype=np.float32)


def _warp_to_frame(z: np.ndarray, w_hr: np.ndarray, interp: int = cv2.INTER_CUBIC) -> np.ndarray:
    """The high-resolution face ``z`` (reference coordinates) as crop ``k`` sees it."""
    # Both interpolations return their input bit for bit under the identity (the reference
    # crop's warp), so it skips the warp: ~80 us a call for a cubic one at 64 px.
    if np.array_equal(w_hr, _IDENTITY):
        return z
    h, w_ = z.shape[:2]
    return cv2.warpAffine(z, w_hr, (w_, h), flags=interp, borderMode=cv2.BORDER_REFLECT)


def _warp_to_ref(x: np.ndarray, w_hr: np.ndarray, interp: int = cv2.INTER_CUBIC) -> np.ndarray:
    """A high-resolution image in crop ``k``'s coordinates brought to the reference's."""
    if np.array_equal(w_hr, _IDENTITY):
        return x
    h, w_ = x.shape[:2]
    return cv2.warpAffine(x, w_hr, (w_, h), flags=interp | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT)


# Back-projection's warps are bilinear: a quarter of a cubic warp's cost, and its extra smoothing
# at 4x the crop's resolution is gone after the blur and area downscale (measured on 77 tracks,
# k=8: fused PSNR and SFace within 0.01 dB and 0.001 of cubic warps). The aligned stack the
# innovations come from stays cubic.
_BP_INTERP = cv2.INTER_LINEAR


@functools.lru_cache(maxsize=16)
def _upsample_matrix(s: int, u: int) -> np.ndarray:
    """``(s*u, s) float32``: OpenCV's cubic upsample of one axis, as a matrix (built by resizing
    an identity image, so it reproduces ``cv2.resize`` to float32 rounding)."""
    m = cv2.resize(np.eye(s, dtype=np.float32), (s, s * u), interpolation=cv2.INTER_CUBIC)
    m.setflags(write=False)
    return m


@functools.lru_cache(maxsize=16)
def _bp_operators(s: int, u: int, psf: float):
    """Separable matrices of back-projection's linear steps, built by applying OpenCV's own
    operations to identity images (so they reproduce them to float32 rounding).

    Returns:
        ``(up (S,s), forward (s,S), back (S,s))`` float32: the cubic upsample; the camera model's
        blur (sigma ``psf``, high-resolution pixels) then area downscale; the upsample then the blur.
    """
    big = s * u
    up = _upsample_matrix(s, u)
    area = cv2.resize(np.eye(big, dtype=np.float32), (big, s), interpolation=cv2.INTER_AREA)
    blur = np.eye(big, dtype=np.float32)
    if psf > 0:
        # GaussianBlur's kernel size for a float image, and its default border (reflect-101)
        g = cv2.getGaussianKernel(int(round(psf * 8 + 1)) | 1, psf, cv2.CV_32F)
        blur = np.ascontiguousarray(cv2.sepFilter2D(blur, -1, g, np.ones((1, 1), np.float32),
                                                    borderType=cv2.BORDER_REFLECT_101).T)
    forward, back = np.ascontiguousarray(area @ blur), np.ascontiguousarray(blur @ up)
    for m in (forward, back):
        m.setflags(write=False)
    return up, forward, back


# OpenBLAS runs a product on all cores from about 2**18 multiply-adds (its default threshold), and
# its threads then spin for a while, taking the second core from OpenCV and ONNX Runtime (an
# 8-crop fusion burnt 2x its wall time in CPU). Back-projection's products are cut below that.
_BLAS_SINGLE_THREAD = 1 << 18


def _tall_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for a tall ``a`` ``(R,K)`` and a small ``b`` ``(K,N)``, in row blocks that
    OpenBLAS runs on the calling thread."""
    rows = max(1, _BLAS_SINGLE_THREAD // (a.shape[1] * b.shape[1]))
    if len(a) <= rows:
        return a @ b
    return np.concatenate([a[i:i + rows] @ b for i in range(0, len(a), rows)])


def _separable(m: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``m @ x_c @ m.T`` for every image and channel of ``x`` ``(M,h,h,C)``; ``(M,H,H,C)``."""
    n, h, _, c = x.shape
    big = m.shape[0]
    mt = np.ascontiguousarray(m.T)
    y = _tall_matmul(np.ascontiguousarray(x.transpose(0, 1, 3, 2)).reshape(-1, h), mt)  # columns
    y = np.ascontiguousarray(y.reshape(n, h, c, big).transpose(0, 2, 3, 1)).reshape(-1, h)
    return _tall_matmul(y, mt).reshape(n, c, big, big).transpose(0, 3, 2, 1)  # rows


def _aligned_stack(crops: np.ndarray, registration: Registration, scale: int):
    """The registered crops, photometrically matched to the reference and upsampled into its frame.

    Returns:
        ``(lq (M,s,s,3) float32, aligned (M,S,S,3) float32, warps_hr [M x (2,3)], weights (M,))``
        for the ``M`` used crops, in their given order (the reference first when it was given
        first); ``weights`` = :func:`crop_weights`.
    """
    used = np.flatnonzero(registration.used)
    if len(used) == 0:
        raise ConfigError("no crop of the track could be registered to the reference")
    s = crops.shape[1]
    big = s * int(scale)
    lq = crops[used].astype(np.float32) / 255.0
    w_hr = [_to_up(registration.warps[i], scale) for i in used]
    ups = _separable(_upsample_matrix(s, int(scale)), lq)
    aligned = np.stack([_warp_to_ref(np.ascontiguousarray(x), w) for x, w in zip(ups, w_hr)])
    # Lighting flicker is undone by matching each crop's mean colour over the central region to
    # the first crop's (the reference's; its own gain is exactly 1).
    c0, c1 = big // 4, big - big // 4
    means = aligned[:, c0:c1, c0:c1].mean(axis=(1, 2))
    gains = np.clip((means[:1] + 1e-3) / (means + 1e-3), 0.5, 2.0).astype(np.float32)[:, None, None, :]
    lq *= gains
    aligned *= gains
    return lq, aligned, w_hr, crop_weights(crops[used])


def crop_weights(crops: np.ndarray, floor: float = 0.05, power: float = 2.0) -> np.ndarray:
    """Per-crop fusion weights from :func:`frame_quality` relative to the sharpest crop.

    A smeared or defocused crop still registers and agrees with the others at low frequencies,
    so per-pixel outlier rejection does not catch it; its lower sharpness lowers its say instead.

    Returns:
        ``(K,) float64`` in ``[floor**power, 1]``; equal for equal crops.
    """
    q = frame_quality(crops)
    return np.clip(q / max(float(q.max()), 1e-12), floor, 1.0) ** power


def _robust_mean(aligned: np.ndarray, reject: float, weights: np.ndarray | None = None) -> np.ndarray:
    """Per-pixel mean that drops values far from the median (occlusions, smears); ``(S,S,3)``."""
    if len(aligned) == 1:  # the reference alone (the innovations' baseline): no median to take
        return aligned[0].astype(np.float32)
    # float64 sums and a mean-based spread: k copies of one crop give bit-for-bit what it gives alone
    # the middle of a sort along the crops: np.median's own partition is 2.5x slower on this layout
    srt = np.sort(aligned, axis=0)
    m = len(aligned)
    med = srt[m // 2] if m % 2 else 0.5 * (srt[m // 2 - 1] + srt[m // 2])
    dev = np.abs(aligned - med)
    sigma = 1.2533 * float(dev.mean(dtype=np.float64)) + 1e-3
    wts = (dev <= reject * sigma).astype(np.float64) + 1e-3
    if weights is not None:
        wts *= np.asarray(weights, np.float64)[:, None, None, None]
    return ((wts * aligned).sum(axis=0) / wts.sum(axis=0)).astype(np.float32)


def fuse_classical(crops, registration: Registration, config: FusionConfig = FusionConfig(),
                   _stack=None) -> np.ndarray:
    """Robust multi-frame super-resolution of registered crops.

    Duplicating crops does not change the result (the estimate is a weighted mean over crops, and
    back-projection averages the crops' corrections in float64), so ``k`` copies of one crop fuse
    to exactly what that crop alone gives.

    Args:
        crops: ``(K,s,s,3) uint8`` RGB crops, the reference first; ``registration`` their warps to it.
        config: :class:`FusionConfig` (``scale``, ``iterations``, ``step``, ``psf_sigma``, ``reject``).

    Returns:
        ``(S,S,3) float32`` in [0,1], ``S = s * scale``, in the reference crop's coordinates.
    """
    crops = as_crops(crops)
    s, u = crops.shape[1], int(config.scale)
    lq, aligned, w_hr, weights = _stack if _stack is not None else _aligned_stack(crops, registration, u)
    # The blurs, area downscales and cubic upsamples are separable linear maps, applied to every
    # crop and channel at once as small matrix products instead of per-crop OpenCV calls (with
    # the median by sort: an 8-crop classical fusion in 7 ms instead of 11). Only the warps
    # differ per crop.
    up, forward, back = _bp_operators(s, u, float(config.psf_sigma * u))
    cw = np.asarray(weights, np.float64)  # float64 sums: k copies of a crop give what it gives alone

    z = _robust_mean(aligned, config.reject, weights)
    # Back-projection: each crop's residual against the simulated crop, Huber-weighted so one
    # crop that disagrees (occluded, blurred) cannot pull the estimate far.
    for _ in range(int(config.iterations)):
        seen = np.stack([_warp_to_frame(z, w, _BP_INTERP) for w in w_hr])
        res = lq - _separable(forward, seen)
        tau = config.reject * (1.2533 * float(np.abs(res).mean(dtype=np.float64)) + 2e-3)
        hub = np.minimum(1.0, tau / (np.abs(res).max(axis=3, keepdims=True) + 1e-6)).astype(np.float32)
        # a correction and its Huber weight travel as one 4-channel image: one warp per crop
        both = np.concatenate([_separable(back, res * hub), _separable(up, hub)], axis=3)
        # einsum's own loop, not BLAS (see _BLAS_SINGLE_THREAD)
        acc = np.einsum("m,mhwc->hwc", cw, np.stack([_warp_to_ref(b, w, _BP_INTERP) for b, w in zip(both, w_hr)]))
        z = np.clip(z + config.step * (acc[..., :3] / np.maximum(acc[..., 3:], 1e-3)).astype(np.float32), 0.0, 1.0)
    return z


def _identity_registration(n: int = 1) -> Registration:
    return Registration(np.repeat(np.eye(2, 3, dtype=np.float32)[None], n, axis=0), np.ones(n, np.float32),
                        np.ones(n, bool))


def fusion_innovations(crops, registration: Registration, config: FusionConfig = FusionConfig()):
    """What the other crops add to the reference: the first input group of
    :class:`facekit.archs.fusionnet.FusionNet` (see :func:`fusion_inputs`).

    Args:
        crops: ``(K,s,s,3) uint8`` RGB crops, the reference first.
        registration: their :class:`Registration` to the reference.
        config: :class:`FusionConfig`.

    Returns:
        ``(innovations (9,S,S) float32, reference upsample (S,S,3) float32, classical (S,S,3) float32)``.
    """
    crops = as_crops(crops)
    u = int(config.scale)
    stack = _aligned_stack(crops, registration, u)
    classical = fuse_classical(crops, registration, config, _stack=stack)
    aligned = stack[1]
    ref_up = aligned[0]
    mean = aligned.mean(axis=0, dtype=np.float64)  # exact for copies of one crop: zero innovation
    spread = np.sqrt(np.maximum((aligned.astype(np.float64) ** 2).mean(axis=0) - mean ** 2, 0.0))
    ref_only = fuse_classical(crops[:1], _identity_registration(), config)
    innov = np.concatenate([classical - ref_only, mean - ref_up, spread], axis=2).astype(np.float32)
    return np.ascontiguousarray(innov.transpose(2, 0, 1)), ref_up, classical


def fusion_context(single: np.ndarray, ref_up: np.ndarray) -> np.ndarray:
    """The second input group of :class:`facekit.archs.fusionnet.FusionNet`: ``(6,S,S) float32``,
    ``single`` and ``single`` minus the reference's upsample (both ``(S,S,3) float32`` in [0,1])."""
    return np.ascontiguousarray(np.concatenate([single, single - ref_up], axis=2).transpose(2, 0, 1))


def fusion_inputs(crops, registration: Registration, single: np.ndarray, config: FusionConfig = FusionConfig()):
    """The evidence :class:`facekit.archs.fusionnet.FusionNet` fuses, for one track.

    Args:
        crops: ``(K,s,s,3) uint8`` RGB crops, the reference first.
        registration: their :class:`Registration` to the reference.
        single: ``(S,S,3) float32`` in [0,1]: the single-frame restoration of the reference crop.
        config: :class:`FusionConfig`.

    Returns:
        ``(innovations (9,S,S) float32, context (6,S,S) float32, classical (S,S,3) float32)``.
        Innovations: classical fusion minus the reference's own classical fusion, mean aligned
        upsample minus the reference's upsample, per-pixel spread of the aligned upsamples; all
        zero when every crop equals the reference. Context: ``single`` and ``single`` minus the
        reference's upsample.
    """
    innov, ref_up, classical = fusion_innovations(crops, registration, config)
    return innov, fusion_context(single, ref_up), classical


def to_uint8(x: np.ndarray) -> np.ndarray:
    """``[0,1]`` float image to uint8 (rounded)."""
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def config_dict(config: FusionConfig) -> dict:
    """The config as a plain dict (for summaries)."""
    return asdict(config)


# ----------------------------------------------------------------------------- synthetic bursts

def _affine3(m: np.ndarray) -> np.ndarray:
    return np.vstack([m, [0.0, 0.0, 1.0]])


def synthetic_burst(face: np.ndarray, k: int, lq_side: int, rng: np.random.Generator, degrade_fn,
                    scale: int = 4, max_shift: float = 1.0, max_rotation: float = 3.0,
                    max_zoom: float = 0.03, flicker: float = 0.08, context: float = 1.0,
                    return_maps: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simulate ``k`` crops of one face from a track: each moved by a sub-pixel shift, a small
    rotation and zoom, lit with a little flicker and degraded independently.

    Args:
        face: ``(F,F,3) uint8`` RGB clean face, framed as the crops should be (``F >= S``).
        k: number of crops.
        lq_side: crop side ``s``; the clean crops are ``S = s * scale``.
        rng: every draw comes from it.
        degrade_fn: ``(gt (S,S,3) uint8, rng) -> (s,s,3) uint8``: one crop's degradation (e.g.
            :func:`facekit.ood_recipe.degrade` for evaluation, :func:`train_degrade` for training).
        max_shift: largest shift per axis, in crop pixels (uniform in +-max_shift).
        max_rotation: largest in-plane rotation, degrees; max_zoom: largest relative zoom.
        flicker: largest relative exposure change per crop.
        context: ``face`` holds this many times the crop's extent (>= 1), so moved crops see real
            surroundings instead of reflected borders; the crops cover its central ``1/context``.

    Returns:
        ``(lq (k,s,s,3) uint8, gt (k,S,S,3) uint8, warps (k,2,3) float32)``; ``warps[j]`` maps crop
        0's low-resolution pixels to crop ``j``'s (``crop_0(x) ~ crop_j(W_j x)``, before degradation).
        With ``return_maps``, a fourth item ``(k,2,3) float64``: each clean crop's map from ``face``
        pixels (to carry landmarks into the crops).
    """
    face = np.asarray(face)
    big = int(lq_side) * int(scale)
    f = face.shape[0]
    c_src, c_dst = (f - 1) / 2.0, (big - 1) / 2.0
    mats, lqs, gts = [], [], []
    # Area-prefilter the face once to about twice the clean crop side, so the per-crop warps
    # (cubic, no prefilter) only shrink by <= 2x and do not alias.
    if not 1.0 <= float(context) <= 4.0:
        raise ConfigError(f"context must be in [1, 4], got {context}")
    r = min(1.0, 2.0 * big * context / f)
    pre = cv2.resize(face, None, fx=r, fy=r, interpolation=cv2.INTER_AREA) if r < 1.0 else face
    r = pre.shape[0] / f
    for j in range(int(k)):
        zoom = big * context / f * (1.0 + (rng.uniform(-max_zoom, max_zoom) if j else 0.0))
        angle = float(rng.uniform(-max_rotation, max_rotation)) if j else 0.0
        shift = rng.uniform(-max_shift, max_shift, 2) * scale if j else np.zeros(2)
        m = cv2.getRotationMatrix2D((c_src, c_src), angle, zoom)  # face pixels -> crop pixels
        m[:, 2] += c_dst - c_src + shift
        # the same map from the prefiltered face: x_face = (x_pre + 0.5) / r - 0.5
        a = m[:, :2]
        m_pre = np.hstack([a / r, (m[:, 2] + a @ np.full(2, 0.5 / r - 0.5))[:, None]])
        gt = cv2.warpAffine(pre, m_pre, (big, big), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT_101)
        gain = 1.0 + (rng.uniform(-flicker, flicker) if j else 0.0)
        lit = np.clip(gt.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        lqs.append(degrade_fn(lit, rng))
        gts.append(gt)
        mats.append(m)
    m0_inv = np.linalg.inv(_affine3(mats[0]))
    warps = np.stack([_from_up((_affine3(m) @ m0_inv)[:2], scale) for m in mats]).astype(np.float32)
    if return_maps:
        return np.stack(lqs), np.stack(gts), warps, np.stack(mats)
    return np.stack(lqs), np.stack(gts), warps


def train_degrade(lq_side: int, gray: bool = False):
    """A training crop degradation (``facekit.randdeg``'s camera model, never the OOD recipe).

    Returns:
        ``degrade_fn(gt (S,S,3) uint8, rng) -> (lq_side,lq_side,3) uint8`` for :func:`synthetic_burst`.
    """
    def fn(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        lq, _ = randdeg.degrade_lq(gt.astype(np.float32) / 255.0, gt.shape[0] // int(lq_side), rng, gray)
        return to_uint8(lq)

    return fn


def ood_degrade(lq_side: int, condition: str = "medium", gray: bool = False):
    """The evaluation crop degradation: :func:`facekit.ood_recipe.degrade` (no model trains on it)."""
    def fn(gt: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return ood_recipe.degrade(gt, int(lq_side), condition, rng, gray=gray)[0]

    return fn


# ----------------------------------------------------------------------------- restorer + learned stage

FUSION_FORMAT = "facekit-fusion-v1"


def single_frame_restorer(model: str = "default", device: str = "cpu", scale: int = 4, backend: str = "torch"):
    """The single-frame restorer fusion builds on: a chain folder (``"default"`` = ``models/default``).

    Args:
        model: chain folder; device: where it runs; scale: output / input side.
        backend: the chain's backend (``torch``, ``onnx``: ONNX Runtime, fastest for one face on a CPU).

    Returns:
        A :class:`facekit.restorer.Restorer` (``chain:MODEL``).
    """
    from facekit.restorers import build_restorer  # defers torch: a classical fusion runs without it

    return build_restorer(f"chain:{model}", int(scale), device, backend=backend)


def restore_crops(restorer, crops: np.ndarray) -> np.ndarray:
    """Restore uint8 crops with ``restorer`` at its scale, kept in float for the fusion arithmetic.

    Args:
        restorer: a :class:`facekit.restorer.Restorer`.
        crops: ``(N,s,s,3)`` uint8 RGB.

    Returns:
        ``(N,S,S,3)`` float32 in [0,1], ``S = s * restorer.scale``.
    """
    return images.to_hwc_float(restorer.restore(images.to_tensor(crops)).out)


def default_fusion_model() -> "Path":
    """``models/fusion/fusion.pt``: the released learned fusion stage."""
    return settings.MODELS_DIR / "fusion" / "fusion.pt"


def load_fusion_model(path, device: str = "cpu"):
    """Load a released :class:`facekit.archs.fusionnet.FusionNet` (``weights_only``, NaN refused).

    Raises:
        ConfigError: missing file, a file that is not a fusion model, or weights of another shape.
    """
    from facekit.archs.fusionnet import FusionNet  # torch: only a learned fusion pays its import
    from facekit.checkpoint import load_checkpoint

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"fusion model {path}: no such file (train one with `python -m facekit fuse --train "
                          f"configs/fusion/fusion-gpu-a.yaml`, or pass --no-learned for the classical fusion)")
    ck = load_checkpoint(path)
    if not isinstance(ck, dict) or ck.get("format") != FUSION_FORMAT:
        got = ck.get("format") if isinstance(ck, dict) else type(ck).__name__
        raise ConfigError(f"fusion model {path}: not a fusion model (format {got!r}, expected {FUSION_FORMAT!r})")
    kw = ck.get("arch_kwargs") or {}
    ch, blocks = kw.get("ch"), kw.get("blocks")
    if not (isinstance(ch, int) and 1 <= ch <= 256 and isinstance(blocks, int) and 1 <= blocks <= 32):
        raise ConfigError(f"fusion model {path}: bad architecture arguments {kw!r}")
    net = FusionNet(ch, blocks)
    try:
        net.load_state_dict(ck["state_dict"])
    except (RuntimeError, KeyError) as exc:
        raise ConfigError(f"fusion model {path}: weights do not fit FusionNet(ch={ch}, blocks={blocks}): "
                          f"{str(exc).splitlines()[0]}") from None
    net.eval().to(device)
    net.restorer_sha256 = ck.get("restorer_sha256")
    return net


FUSION_BACKENDS = ("auto", "torch", "onnx")


def resolve_backend(backend: str, device: str = "cpu") -> str:
    """``torch`` or ``onnx`` for a :class:`TrackFuser`: ``auto`` is ONNX Runtime on a CPU where it is installed.

    Raises:
        ConfigError: a backend not in :data:`FUSION_BACKENDS`, or ``onnx`` off the CPU.
    """
    import importlib.util

    if backend not in FUSION_BACKENDS:
        raise ConfigError(f"unknown fusion backend {backend!r}; valid: {', '.join(FUSION_BACKENDS)}")
    on_cpu = str(device).split(":")[0] == "cpu"
    if backend == "onnx" and not on_cpu:
        raise ConfigError(f"fusion backend onnx runs on the CPU only, not on {device!r}; use torch there")
    if backend == "auto":
        return "onnx" if on_cpu and importlib.util.find_spec("onnxruntime") is not None else "torch"
    return backend


class OnnxFusionNet:
    """The learned stage run by ONNX Runtime (one track at a time; about 0.6x torch's CPU time).

    The network has no size-dependent branch, so one export with dynamic height and width is exact
    for every crop side. It is exported in memory from the loaded weights: nothing is cached on disk.

    Args:
        net: a loaded :class:`facekit.archs.fusionnet.FusionNet`.
        threads: ONNX Runtime intra-op threads (None: the process-wide ``--threads``).
    """

    def __init__(self, net, threads: int | None = None):
        import copy
        import io
        import warnings

        import torch

        from facekit.archs.fusionnet import CONTEXT_CHANNELS, INNOVATION_CHANNELS
        from facekit.chain import LEGACY_EXPORT_WARNINGS, ort_session

        net = copy.deepcopy(net).float().eval().cpu()
        s = 8  # any even side: height and width are dynamic
        example = (torch.zeros(1, INNOVATION_CHANNELS, s, s), torch.zeros(1, CONTEXT_CHANNELS, s, s))
        hw = {0: "n", 2: "h", 3: "w"}
        buf = io.BytesIO()
        with torch.no_grad(), warnings.catch_warnings():
            for message, category in LEGACY_EXPORT_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            torch.onnx.export(net, example, buf, input_names=["innov", "context"], output_names=["corr"],
                              dynamic_axes={"innov": hw, "context": hw, "corr": hw}, opset_version=17, dynamo=False)
        self.session = ort_session(buf.getvalue(), threads)

    def correction(self, innov: np.ndarray, context: np.ndarray) -> np.ndarray:
        """``(N,S,S) float32`` luma corrections for ``innov (N,9,S,S)`` and ``context (N,6,S,S)``."""
        return self.session.run(None, {"innov": innov, "context": context})[0][:, 0]


class TrackFuser:
    """Fuse the crops of one face track: select, register, classical fusion, learned correction.

    Args:
        config: :class:`FusionConfig`.
        restorer: the single-frame restorer: a chain folder (``"default"`` = models/default), a ready
            :class:`facekit.restorer.Restorer`, or None (no restoration: ``out`` is the classical fusion).
        model: the learned stage: a ``fusion.pt`` path, ``"default"`` (:func:`default_fusion_model`)
            or None (``out`` is the single-frame restoration plus nothing: use ``classical``).
        device: where the networks run.
        backend: ``auto`` (ONNX Runtime on a CPU where installed, else torch), ``torch`` or ``onnx``:
            how the learned stage and a restorer given by name run. One track is one small call,
            where ONNX Runtime takes about half torch's time on a CPU.
    """

    def __init__(self, config: FusionConfig = FusionConfig(), restorer="default", model="default",
                 device: str = "cpu", backend: str = "auto"):
        self.config = config
        self.device = device
        self.backend = resolve_backend(backend, device)
        if isinstance(restorer, str):
            restorer = single_frame_restorer(restorer, device, config.scale, backend=self.backend)
        self.restorer = restorer
        if model is not None and restorer is None:
            raise ConfigError("the learned fusion stage needs a single-frame restorer")
        self.net = None
        self._onnx = None
        self._pool = None
        if model is not None:
            self.net = load_fusion_model(default_fusion_model() if model == "default" else model, device)
            if self.backend == "onnx":
                self._onnx = OnnxFusionNet(self.net)

    def _alongside(self, fn, *args):
        """Start ``fn(*args)`` on the fuser's helper thread; returns its future.

        The single-frame restoration does not depend on the registration, and OpenCV and the
        restorer's runtime release the GIL: on two cores it runs beside registration and the
        classical fusion.
        """
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="facekit-fusion")
        return self._pool.submit(fn, *args)

    def _correction(self, innov: np.ndarray, context: np.ndarray) -> np.ndarray:
        """The learned stage's ``(S,S) float32`` luma correction for ``innov (9,S,S)``, ``context (6,S,S)``
        (with :attr:`FusionConfig.mirror`, averaged with the mirrored inputs' correction mirrored back)."""
        innov, context = innov[None], context[None]
        if self.config.mirror:
            innov = np.concatenate([innov, innov[..., ::-1]])
            context = np.concatenate([context, context[..., ::-1]])
        if self._onnx is not None:
            corr = self._onnx.correction(np.ascontiguousarray(innov), np.ascontiguousarray(context))
        else:
            import torch  # only the torch backend of the learned stage needs it here

            with torch.inference_mode():
                corr = self.net(torch.from_numpy(np.ascontiguousarray(innov)).to(self.device),
                                torch.from_numpy(np.ascontiguousarray(context)).to(self.device))[:, 0].cpu().numpy()
        return 0.5 * (corr[0] + corr[1][..., ::-1]) if self.config.mirror else corr[0]

    def __call__(self, crops, scores=None, sides=None) -> FusionResult:
        """Fuse one track.

        Args:
            crops: ``(N,s,s,3) uint8`` RGB crops of one face, any order.
            scores, sides: optional per-crop detector scores and face sizes for :func:`frame_quality`.

        Returns:
            :class:`FusionResult`; its ``timings_ms`` has ``select``, ``register``, ``classical``,
            ``restore`` (the wait for the restoration that ran alongside the two steps before)
            and ``learned``.
        """
        import time

        t = [time.perf_counter()]
        crops = as_crops(crops)
        quality = frame_quality(crops, scores, sides)
        frames = select_frames(quality, self.config.k)
        sel = crops[frames]
        pending = self._alongside(restore_crops, self.restorer, sel[:1]) if self.restorer is not None else None
        t.append(time.perf_counter())
        try:
            reg = register(sel, 0, min_correlation=self.config.min_correlation, max_shift=self.config.max_shift)
            t.append(time.perf_counter())
            if self.net is not None:
                innov, ref_up, classical = fusion_innovations(sel, reg, self.config)
            else:
                classical = fuse_classical(sel, reg, self.config)
            t.append(time.perf_counter())
        finally:  # a track that fails here must not leave its restoration running into the next
            single = pending.result()[0] if pending is not None else None
        t.append(time.perf_counter())
        if self.net is not None:
            corr = self._correction(innov, fusion_context(single, ref_up))
            out = np.clip(single + corr[..., None], 0.0, 1.0)
        else:
            out = classical
        t.append(time.perf_counter())
        names = ("select", "register", "classical", "restore", "learned")
        timings = {n: round((b - a) * 1000, 2) for n, a, b in zip(names, t, t[1:])}
        return FusionResult(to_uint8(out), to_uint8(classical), None if single is None else to_uint8(single),
                            frames[0], frames, reg, quality, timings)


# ----------------------------------------------------------------------------- command line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")


def _common_side(sides, size: int | None) -> int:
    if size:
        return int(size)
    return int(np.clip(int(np.median(sides)), 8, 64))


def crops_from_folder(folder, size: int | None = None) -> tuple[np.ndarray, list[str]]:
    """Read a folder of face crops of one person and bring them to one square side.

    Args:
        folder: images (any format :func:`facekit.imageio.read_image` reads; grey/RGBA/16-bit are
            converted). Non-square crops are centre-cropped to a square.
        size: crop side; default the median side of the crops, clamped to 8-64 px.

    Returns:
        ``(crops (N,size,size,3) uint8, names)``.

    Raises:
        ConfigError: an empty folder, or no readable image (each unreadable file is named).
    """
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ConfigError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) to fuse")
    imgs, names, problems = [], [], []
    for p in files:
        try:
            img = imageio.read_image(p)
        except errors.FacekitError as exc:
            problems.append(str(exc))
            continue
        h, w = img.shape[:2]
        side = min(h, w)
        y0, x0 = (h - side) // 2, (w - side) // 2
        imgs.append(img[y0:y0 + side, x0:x0 + side])
        names.append(p.name)
    if not imgs:
        raise ConfigError(f"{folder}: no readable image; " + "; ".join(problems[:3]))
    side = _common_side([i.shape[0] for i in imgs], size)
    crops = np.stack([cv2.resize(i, (side, side), interpolation=cv2.INTER_AREA if i.shape[0] > side
                                 else cv2.INTER_CUBIC) for i in imgs])
    return crops, names


def crops_from_clip(path, size: int | None = None, every: int = 1, max_frames: int = 300,
                    detector=None) -> tuple[np.ndarray, list[str], np.ndarray, np.ndarray]:
    """Detect the largest face in each frame of a clip of one face and crop it.

    Returns:
        ``(crops (N,size,size,3) uint8, names "frame_K", scores (N,), face sides (N,))``.

    Raises:
        ConfigError: no frame with a face (the clip is named).
    """
    from facekit.data import iter_video_frames
    detector = detector or faces.FaceDetector(score_threshold=0.5)
    raw, names, scores, sides = [], [], [], []
    for index, frame in iter_video_frames(path, every, max_frames):
        dets = detector.detect(frame)
        if not dets:
            continue
        det = max(dets, key=lambda d: d.box[2] * d.box[3])
        x0, y0, side = faces.face_square(det)
        raw.append(images.crop_square(frame, x0, y0, side))
        names.append(f"frame_{index}")
        scores.append(float(det.score))
        sides.append(side)
    if not raw:
        raise ConfigError(f"{path}: no face found in any frame")
    side = _common_side(sides, size)
    crops = np.stack([cv2.resize(c, (side, side), interpolation=cv2.INTER_AREA if c.shape[0] > side
                                 else cv2.INTER_CUBIC) for c in raw])
    return crops, names, np.array(scores), np.array(sides, np.float64)


def write_fusion(result: FusionResult, crops: np.ndarray, out_dir, names=None, config: FusionConfig | None = None) -> dict:
    """Write a fused track: ``fused.png``, ``single.png``, ``classical.png``, ``bicubic.png``,
    ``crops.png`` (the fused crops, best first, pixel-doubled) and ``fusion.json`` (with ``config``,
    the :class:`FusionConfig` it was fused with, when given).

    Returns:
        ``{name: path}`` of the written files.
    """
    import json
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    big = result.out.shape[0]
    ref = crops[result.reference]
    images = {"fused": result.out, "classical": result.classical,
              "bicubic": cv2.resize(ref, (big, big), interpolation=cv2.INTER_CUBIC)}
    if result.single is not None:
        images["single"] = result.single
    strip = np.concatenate([cv2.resize(crops[i], (big // 2, big // 2), interpolation=cv2.INTER_NEAREST)
                            for i in result.frames], axis=1)
    images["crops"] = strip
    paths = {k: str(imageio.write_image(out / f"{k}.png", v)) for k, v in images.items()}
    summary = result.summary()
    if names is not None:
        summary["frame_names"] = [names[i] for i in result.frames]
    if config is not None:
        summary["config"] = asdict(config)
    (out / "fusion.json").write_text(json.dumps(summary, indent=2))
    paths["summary"] = str(out / "fusion.json")
    return paths


