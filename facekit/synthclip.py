"""Synthetic CCTV clips with ground truth: clean faces moving across a background, degraded
(blur, low resolution, lighting drifting over time, noise, JPEG), with the clean face and its box
saved for every frame so per-frame PSNR and flicker can be measured against truth.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from facekit import degrade
from facekit.augment import apply_lighting
from facekit.errors import ConfigError

CLIP_NAME = "clip.avi"
TRUTH_NAME = "truth.npz"


@dataclass
class ClipPreset:
    """Fixed degradation of a clip (fixed per clip so that only noise and lighting vary per frame).

    Attributes:
        scale: frames are rendered, shrunk by this factor and shown back at full size (CCTV
            resolution); blur_px: Gaussian blur sigma before shrinking; noise: Gaussian noise
            sigma in [0,1] units; jpeg: JPEG quality per frame (codec blocks); light_stops: deepest
            exposure drop of the slow lighting drift (stops); kelvin_swing: colour-temperature swing
            around 6,500 K (K); light_period: period of the drift in frames.
    """

    scale: float = 2.0
    blur_px: float = 1.0
    noise: float = 0.02
    jpeg: int = 60
    light_stops: float = 1.0
    kelvin_swing: float = 2000.0
    light_period: int = 60


PRESETS: dict[str, ClipPreset] = {
    "clean": ClipPreset(scale=1.0, blur_px=0.0, noise=0.0, jpeg=100, light_stops=0.0, kelvin_swing=0.0),
    "cctv-light": ClipPreset(scale=2.0, blur_px=0.8, noise=0.02, jpeg=70, light_stops=0.7, kelvin_swing=1500.0),
    "cctv-heavy": ClipPreset(scale=3.0, blur_px=1.2, noise=0.05, jpeg=35, light_stops=1.5, kelvin_swing=3000.0),
}


def _background(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """A static corridor-like scene: vertical gradient, floor, a few wall panels. ``(H,W,3) float32``."""
    y = np.linspace(0.35, 0.65, h, dtype=np.float32)[:, None, None]
    tint = rng.uniform(0.8, 1.1, size=3).astype(np.float32)
    bg = np.broadcast_to(y * tint, (h, w, 3)).copy()
    bg[int(h * 0.75):] *= 0.7
    for _ in range(4):
        x0, x1 = sorted(rng.integers(0, w, size=2))
        y0, y1 = sorted(rng.integers(0, int(h * 0.75), size=2))
        bg[y0:y1, x0:x1] = rng.uniform(0.2, 0.8, size=3)
    return np.clip(bg, 0, 1)


def _paths(n_faces: int, n_frames: int, w: int, h: int, side: int, speed: float,
           rng: np.random.Generator) -> np.ndarray:
    """Face top-left positions ``(T, F, 2)`` bouncing inside the frame at ``speed`` px/frame."""
    pos = np.zeros((n_frames, n_faces, 2))
    for f in range(n_faces):
        p = np.array([rng.uniform(0, w - side), rng.uniform(0, h - side)])
        ang = rng.uniform(0, 2 * np.pi)
        v = speed * np.array([np.cos(ang), np.sin(ang) * 0.5])
        lim = np.array([w - side, h - side], dtype=float)
        for t in range(n_frames):
            pos[t, f] = p
            p = p + v
            for k in range(2):
                if p[k] < 0 or p[k] > lim[k]:
                    v[k] = -v[k]
                    p[k] = np.clip(p[k], 0, lim[k])
    return pos


def _relight(x: np.ndarray, kelvin: float, stops: float) -> np.ndarray:
    """White-point shift and exposure change (:func:`facekit.augment.apply_lighting`)."""
    return apply_lighting(x, kelvin=kelvin, exposure_stops=stops)


def _degrade(frame: np.ndarray, preset: ClipPreset, kelvin: float, stops: float,
             rng: np.random.Generator) -> np.ndarray:
    """Degrade a clean ``(H,W,3) float32`` frame; returns ``uint8`` RGB.

    Uses :mod:`facekit.degrade`'s ops, so clips carry the same maths as the training degradations.
    """
    h, w = frame.shape[:2]
    x = frame
    if preset.blur_px > 0:
        x = degrade.gaussian_blur(x, preset.blur_px)
    if preset.scale > 1:
        sw, sh = max(1, round(w / preset.scale)), max(1, round(h / preset.scale))
        x = cv2.resize(cv2.resize(x, (sw, sh), interpolation=cv2.INTER_AREA), (w, h),
                       interpolation=cv2.INTER_LINEAR)
    x = _relight(np.clip(x, 0, 1).astype(np.float32), kelvin, stops)
    if preset.noise > 0:
        x = degrade.gaussian_noise(x, preset.noise, seed=rng)
    x = np.clip(x, 0, 1)
    if preset.jpeg < 100:
        x = degrade.jpeg(x, preset.jpeg)
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def make_clip(faces: np.ndarray, out_dir, n_frames: int = 60, size: tuple[int, int] = (320, 240),
              seed: int = 0, preset: str = "cctv-light", n_faces: int = 1, face_frac: float = 0.35,
              speed: float = 1.5, fps: float = 25.0, fourcc: str = "MJPG") -> Path:
    """Write a synthetic CCTV clip and its per-frame ground truth.

    Args:
        faces: ``(N,S,S,3) uint8`` RGB clean face crops; the first ``n_faces`` drawn by ``seed`` move.
        out_dir: folder for ``clip.avi`` (or ``.mp4`` for ``fourcc="mp4v"``) and ``truth.npz``.
        n_frames: frames to write; size: ``(W, H)``; fps: frame rate in the file.
        seed: seed for the background, face choice, paths, noise.
        preset: one of :data:`PRESETS`.
        n_faces: faces on screen; face_frac: face side as a fraction of H; speed: px per frame.

    Returns:
        Path of the clip. ``truth.npz`` holds ``boxes (T,F,4) int32 (x,y,w,h)``,
        ``faces (T,F,S,S,3) uint8`` (the clean frame's region at the box, resized to S, before
        lighting and degradation), ``exposure_stops (T,)``, ``kelvin (T,)``
        and ``preset`` (JSON).
    """
    if preset not in PRESETS:
        raise ConfigError(f"unknown clip preset {preset!r}; valid: {', '.join(PRESETS)}")
    faces = np.asarray(faces)
    if faces.ndim != 4 or faces.shape[-1] != 3 or faces.dtype != np.uint8 or len(faces) == 0:
        raise ConfigError(f"faces must be a non-empty (N,S,S,3) uint8 array, got {faces.shape} {faces.dtype}")
    if n_faces > len(faces):
        raise ConfigError(f"n_faces={n_faces} but only {len(faces)} faces were given")
    w, h = int(size[0]), int(size[1])
    cfg = PRESETS[preset]
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bg = _background(w, h, rng)
    chosen = rng.choice(len(faces), size=n_faces, replace=False)
    side = max(16, int(round(h * face_frac)))
    pos = _paths(n_faces, n_frames, w, h, side, speed, rng)
    scaled = [cv2.resize(faces[i], (side, side), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
              for i in chosen]
    # Soft elliptical alpha so the pasted face has no hard square edge for the detector to key on.
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    r = ((xx - side / 2 + 0.5) / (side * 0.48)) ** 2 + ((yy - side / 2 + 0.5) / (side * 0.58)) ** 2
    alpha = np.clip((1.0 - r) * 4, 0, 1)[..., None]
    ext = ".mp4" if fourcc.lower() in ("mp4v", "avc1") else ".avi"
    clip = out_dir / (Path(CLIP_NAME).stem + ext)
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*fourcc), float(fps), (w, h))
    if not writer.isOpened():
        raise ConfigError(f"OpenCV cannot write {clip} with codec {fourcc!r}")
    boxes = np.zeros((n_frames, n_faces, 4), np.int32)
    s = faces.shape[1]
    truth_faces = np.zeros((n_frames, n_faces, s, s, 3), np.uint8)
    # Lighting drifts slowly: dimming (clouds, auto-exposure) and a colour shift (mixed daylight/LED).
    phase = 2 * np.pi * np.arange(n_frames) / max(cfg.light_period, 1)
    stops = -cfg.light_stops * (0.5 - 0.5 * np.cos(phase))
    kelvin = 6500.0 + cfg.kelvin_swing * np.sin(phase)
    try:
        for t in range(n_frames):
            frame = bg.copy()
            for f in range(n_faces):
                x, y = (int(round(v)) for v in pos[t, f])
                region = frame[y:y + side, x:x + side]
                region[:] = region * (1 - alpha) + scaled[f] * alpha
                boxes[t, f] = (x, y, side, side)
            for f in range(n_faces):  # after all pastes, so overlaps look as on screen
                x, y, _, _ = boxes[t, f]
                crop = frame[y:y + side, x:x + side]
                small = cv2.resize(crop, (s, s), interpolation=cv2.INTER_AREA)
                truth_faces[t, f] = (small * 255 + 0.5).astype(np.uint8)
            lq = _degrade(frame, cfg, float(kelvin[t]), float(stops[t]), rng)
            writer.write(np.ascontiguousarray(lq[:, :, ::-1]))
    finally:
        writer.release()
    np.savez_compressed(out_dir / TRUTH_NAME, boxes=boxes, faces=truth_faces,
                        exposure_stops=stops.astype(np.float32), kelvin=kelvin.astype(np.float32),
                        face_index=chosen,
                        preset=json.dumps({"name": preset, **asdict(cfg)}))
    return clip


def load_truth(out_dir) -> dict:
    """Read ``truth.npz`` written by :func:`make_clip` into a dict of arrays."""
    with np.load(Path(out_dir) / TRUTH_NAME) as z:
        return {k: z[k] for k in z.files}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images of the same shape."""
    mse = float(np.mean((a.astype(np.float32) - b.astype(np.float32)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


def crop_psnr(frame_rgb: np.ndarray, box, truth_face: np.ndarray) -> float:
    """PSNR of the frame region at ``box`` (resized to the truth crop's size) against the clean crop."""
    x, y, w, h = (int(v) for v in box)
    region = frame_rgb[y:y + h, x:x + w]
    s = truth_face.shape[0]
    return psnr(cv2.resize(region, (s, s), interpolation=cv2.INTER_AREA), truth_face)
