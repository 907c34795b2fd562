"""Paired ``(lq, gt)`` face datasets synthesised on the fly from clean face crops.

``gt`` is the clean, neutrally lit face (after the same head-pose warp as ``lq``, so the two stay
pixel-aligned); ``lq`` is that face under one of the five lighting conditions of
:mod:`facekit.augment` and a degradation preset of :mod:`facekit.degrade`, ``scale`` times smaller.

Determinism: sample ``i`` of epoch ``e`` is drawn from ``np.random.default_rng([seed, e, i])``
alone, so it does not depend on worker count, batch order or what was drawn before; a training
run resumed mid-epoch sees exactly the samples it would have seen. Call :meth:`set_epoch` before
each epoch; with a ``DataLoader`` keep ``persistent_workers=False`` (the default) so workers pick
up the new epoch when they are re-created for each pass.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from facekit import augment, degrade, randdeg
from facekit.errors import ConfigError, DataSourceError

RANDOM_PRESET = "random"  # the wide randomised degradation model of facekit.randdeg


def _face_array(faces) -> np.ndarray:
    images = getattr(faces, "images", faces)  # a facekit.data.FaceSet or the array itself
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[3] != 3 or images.shape[1] != images.shape[2] or images.dtype != np.uint8:
        raise DataSourceError(f"faces must be an (N,S,S,3) uint8 array (FaceSet.images), got "
                              f"{images.shape} {images.dtype}")
    if len(images) == 0:
        raise DataSourceError("faces is empty: nothing to build pairs from")
    return images


def _conditions(conditions) -> tuple[str, ...]:
    if conditions is None:
        return augment.CONDITIONS
    conds = (conditions,) if isinstance(conditions, str) else tuple(conditions)
    if not conds:
        raise ConfigError(f"conditions must not be empty; valid: {', '.join(augment.CONDITIONS)}")
    for c in conds:
        if c not in augment.CONDITIONS:
            raise ConfigError(f"unknown lighting condition {c!r}; valid: {', '.join(augment.CONDITIONS)}")
    return conds


def build_pipeline(preset="cctv-heavy", scale: int = 4, angles=True) -> degrade.Pipeline:
    """A degradation pipeline with the head-pose op in front (or removed).

    Args:
        preset: preset name, spec (see :func:`facekit.degrade.load_spec`) or a Pipeline's spec.
        scale: lq side = gt side / scale.
        angles: True for the default pose ranges, False for none, or a dict of pose overrides
            (e.g. ``{"yaw": [-45, 45], "flip": False}``).
    """
    spec = degrade.load_spec(preset.to_spec() if isinstance(preset, degrade.Pipeline) else preset)
    spec = [e for e in spec if not (isinstance(e, dict) and e.get("op") == "pose")]
    if angles:
        pose = {"op": "pose"}
        if isinstance(angles, dict):
            pose.update(angles)
        spec = [pose] + spec
    return degrade.Pipeline(spec, scale=scale)


LUMA_601 = np.array([0.299, 0.587, 0.114], np.float32)


def to_gray(face: np.ndarray) -> np.ndarray:
    """A monochrome copy of an RGB face: ``(S,S,3) uint8`` -> ``(S,S,3) uint8`` with equal channels."""
    y = np.clip(face.astype(np.float32) @ LUMA_601 + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(y[..., None], 3, axis=-1)


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """``(H,W,3) float32`` -> ``(3,H,W) float32`` tensor (a copy, contiguous)."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))


class PairedFaceDataset(torch.utils.data.Dataset):
    """Training pairs generated on the fly from clean faces.

    Args:
        faces: ``(N,S,S,3) uint8`` RGB (``facekit.data.load_faces(...).images``) or a FaceSet.
        preset: degradation preset name or spec (see :data:`facekit.degrade.PRESETS`).
        scale: lq side = S / scale (S must be divisible by it).
        conditions: lighting conditions drawn uniformly per sample; None = all five; a single
            name fixes it (evaluation).
        angles: head-pose augmentation (True, False, or a dict of pose ranges).
        seed: base seed; sample ``i`` of epoch ``e`` uses ``default_rng([seed, e, i])``.
        gray_prob: chance that a sample's clean face is first turned monochrome (BT.601 luma in
            all three channels), as from an IR night-mode or monochrome CCTV camera: both ``gt``
            and ``lq`` are then grey apart from what the degradations add (chroma noise, JPEG).
            Drawn from its own stream ``default_rng([seed, e, i, 1])``, so 0 leaves every other
            draw unchanged.

    Items are dicts: ``"lq"`` ``(3,S/scale,S/scale) float32`` in [0,1], ``"gt"`` ``(3,S,S)
    float32`` in [0,1], ``"condition"`` str, ``"index"`` int, ``"roll"``/``"yaw"``/``"pitch"``
    float degrees (0 without pose), ``"flip"`` bool, ``"scale"`` int, ``"gray"`` bool.
    """

    def __init__(self, faces, preset="cctv-heavy", scale: int = 4,
                 conditions=augment.CONDITIONS, angles=True, seed: int = 0, gray_prob: float = 0.0):
        self.faces = _face_array(faces)
        if not 0.0 <= float(gray_prob) <= 1.0:
            raise ConfigError(f"gray_prob must be in [0, 1], got {gray_prob!r}")
        self.gray_prob = float(gray_prob)
        size = self.faces.shape[1]
        if not isinstance(scale, (int, np.integer)) or scale < 1 or size % scale:
            raise ConfigError(f"scale must be a whole number dividing the face size {size}, got {scale!r}")
        self.scale = int(scale)
        self.conditions = _conditions(conditions)
        # "random": facekit.randdeg draws light, framing, grey and degradations itself (the target
        # carries the input's light), so the lighting conditions and the preset pipeline are unused.
        self.random = preset == RANDOM_PRESET
        self.pipeline = None if self.random else build_pipeline(preset, self.scale, angles)
        self.preset = preset if isinstance(preset, str) else "custom"
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.faces)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose samples ``__getitem__`` returns."""
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        """The generator of sample ``index`` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def sample(self, index: int, lq_side: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
        """``(lq (h,w,3), gt (S,S,3), params)`` as float32 numpy arrays, for inspection/replay.

        ``lq_side`` (random preset only): area-resize the clean face to ``lq_side * scale`` first
        (multi-scale training), so ``gt`` is that side instead of S.
        """
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} faces")
        index = index % len(self)
        rng = self.rng(index)
        face = self.faces[index]
        if lq_side is not None:
            side = int(lq_side) * self.scale
            if not self.random or not 4 <= int(lq_side) or side > face.shape[0]:
                raise ConfigError(f"lq_side {lq_side!r} needs the random preset and lq_side x scale <= {face.shape[0]}")
            if side != face.shape[0]:
                face = cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)
        if self.random:
            lq, gt, params = randdeg.degrade_pair(face, self.scale, rng, gray_prob=self.gray_prob)
            params.update(condition=RANDOM_PRESET, records=[])
            return lq, gt, params
        conds = self.conditions
        condition = conds[0] if len(conds) == 1 else conds[int(rng.integers(len(conds)))]
        gray = self.gray_prob > 0 and np.random.default_rng([self.seed, self.epoch, index, 1]).random() < self.gray_prob
        if gray:
            face = to_gray(face)
        lq, gt, params = self.pipeline(face, rng, condition=condition)
        params["gray"] = bool(gray)
        return lq, gt, params

    def __getitem__(self, index) -> dict:
        """Item ``index``, or ``(index, lq_side)`` for a multi-scale batch (see :meth:`sample`)."""
        index, lq_side = index if isinstance(index, tuple) else (index, None)
        lq, gt, params = self.sample(int(index), lq_side)
        pose = degrade.pose_angles(params) if not self.random else {"roll": 0.0, "yaw": 0.0, "pitch": 0.0,
                                                                     "flip": False}
        return {"lq": to_tensor(lq), "gt": to_tensor(gt), "condition": params["condition"],
                "index": int(index) % len(self), "roll": float(pose["roll"]), "yaw": float(pose["yaw"]),
                "pitch": float(pose["pitch"]), "flip": bool(pose["flip"]), "scale": self.scale,
                "gray": params["gray"]}

    @staticmethod
    def worker_init_fn(worker_id: int) -> None:
        """``DataLoader(worker_init_fn=...)``: one OpenCV/torch thread per worker (no oversubscription)."""
        cv2.setNumThreads(1)
        torch.set_num_threads(1)


def make_eval_pairs(faces, preset="cctv-heavy", scale: int = 4, condition: str = "medium",
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed evaluation pairs under one lighting condition, without pose augmentation.

    Face ``i`` uses ``default_rng([seed, i])``, so the same call always gives the same pairs.

    Returns:
        ``(lq (N,3,S/scale,S/scale), gt (N,3,S,S))`` float32 tensors in [0,1].
    """
    images = _face_array(faces)
    if preset == RANDOM_PRESET:
        size = images.shape[1]
        pairs = [randdeg.degrade_pair(images[i], int(scale), np.random.default_rng([int(seed), i]))
                 for i in range(len(images))]
        return (torch.from_numpy(np.stack([p[0].transpose(2, 0, 1) for p in pairs])),
                torch.from_numpy(np.stack([p[1].transpose(2, 0, 1) for p in pairs])))
    cond = _conditions(condition)
    if len(cond) != 1:
        raise ConfigError(f"make_eval_pairs needs one lighting condition, got {condition!r}")
    size = images.shape[1]
    if not isinstance(scale, (int, np.integer)) or scale < 1 or size % scale:
        raise ConfigError(f"scale must be a whole number dividing the face size {size}, got {scale!r}")
    pipe = build_pipeline(preset, int(scale), angles=False)
    n, h = len(images), size // int(scale)
    lq = np.empty((n, 3, h, h), np.float32)
    gt = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        lq_i, gt_i, _ = pipe(images[i], np.random.default_rng([int(seed), i]), condition=cond[0])
        lq[i] = lq_i.transpose(2, 0, 1)
        gt[i] = gt_i.transpose(2, 0, 1)
    return torch.from_numpy(lq), torch.from_numpy(gt)
