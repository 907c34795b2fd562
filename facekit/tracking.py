"""Face tracking for video: IoU/centroid association with stable IDs, alpha-beta box smoothing,
constant-velocity prediction between detections, and temporal stabilisation of enhanced crops.

OpenCV's KCF/MOSSE trackers live in the contrib build, which ``opencv-python-headless`` lacks;
a constant-velocity predictor with IoU association is enough for faces that are re-detected every
few frames, and costs microseconds instead of milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes."""
    ax2, ay2 = a[0] + a[2], a[1] + a[3]
    bx2, by2 = b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter / union) if union > 0 else 0.0


def _to_state(box) -> np.ndarray:
    """``(x, y, w, h)`` -> ``(cx, cy, w, h)`` float64 (centre form smooths and predicts better)."""
    x, y, w, h = (float(v) for v in box)
    return np.array([x + w / 2, y + h / 2, w, h])


def _to_box(state: np.ndarray) -> np.ndarray:
    cx, cy, w, h = state
    return np.array([cx - w / 2, cy - h / 2, w, h], dtype=np.float32)


@dataclass
class Track:
    """One tracked face.

    Attributes:
        id: stable integer ID (1, 2, ... in order of appearance).
        state: smoothed ``(cx, cy, w, h)``; velocity: its change per frame.
        frame: frame the state refers to; last_seen: last frame with a matched detection.
        hits: matched detections; misses: consecutive detection rounds without a match.
        score: detector score of the last matched detection.
        first_frame: frame the track started on.
        reset: True when the box jumped this frame (temporal filters downstream should restart).
    """

    id: int
    state: np.ndarray
    velocity: np.ndarray
    frame: int
    last_seen: int
    first_frame: int
    score: float
    hits: int = 1
    misses: int = 0
    reset: bool = True
    landmarks: np.ndarray | None = None

    @property
    def box(self) -> np.ndarray:
        """Smoothed ``(x, y, w, h)`` float32 in frame pixels."""
        return _to_box(self.state)


@dataclass
class TrackerConfig:
    """Association and smoothing settings.

    Attributes:
        iou_threshold: minimum IoU between a predicted box and a detection to match them.
        centroid_gate: fallback match when IoU is low: centre distance below this fraction of
            the box size (fast small faces move more than their size between detections).
        max_missed: detection rounds a track survives without a match (predicted, not drawn).
        alpha: weight of the measurement in the position update (1 = no smoothing).
        beta: weight of the residual in the velocity update (0 = no velocity).
        jump_iou: a matched detection overlapping the prediction less than this resets the
            smoothing (and marks the track ``reset`` for crop stabilisers).
    """

    iou_threshold: float = 0.3
    centroid_gate: float = 0.6
    max_missed: int = 2
    alpha: float = 0.6
    beta: float = 0.15
    jump_iou: float = 0.3


class IoUTracker:
    """Link per-frame face detections into tracks with stable IDs.

    Call :meth:`update` on frames where the detector ran and :meth:`predict` on the others; both
    return the tracks to draw (matched on the latest detection round).
    """

    def __init__(self, config: TrackerConfig | None = None):
        self.config = config or TrackerConfig()
        self.tracks: list[Track] = []
        self._next_id = 1
        self.finished: list[Track] = []

    def _advance(self, frame: int) -> None:
        for t in self.tracks:
            dt = frame - t.frame
            if dt > 0:
                t.state = t.state + t.velocity * dt
                t.state[2:] = np.maximum(t.state[2:], 2.0)
                t.frame = frame
            t.reset = False

    def visible(self) -> list[Track]:
        """Tracks matched on the latest detection round."""
        return [t for t in self.tracks if t.misses == 0]

    def predict(self, frame: int) -> list[Track]:
        """Move every track to ``frame`` with its velocity (no detector ran on this frame)."""
        self._advance(frame)
        return self.visible()

    def update(self, frame: int, boxes, scores, landmarks=None) -> list[Track]:
        """Associate this frame's detections with the tracks.

        Args:
            frame: frame index (increasing).
            boxes: ``(n, 4)`` ``(x, y, w, h)`` detections; scores: ``(n,)``; landmarks: optional
                ``(n, 5, 2)``.

        Returns:
            The visible tracks after the update.
        """
        cfg = self.config
        self._advance(frame)
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        pairs = []
        for ti, t in enumerate(self.tracks):
            pb = t.box
            for di, db in enumerate(boxes):
                ov = iou(pb, db)
                if ov >= cfg.iou_threshold:
                    pairs.append((ov + 1.0, ti, di))  # IoU matches rank above centroid matches
                else:
                    ds = _to_state(db)
                    dist = np.hypot(*(ds[:2] - t.state[:2]))
                    size = max(np.sqrt(ds[2] * ds[3]), np.sqrt(t.state[2] * t.state[3]))
                    ratio = ds[2] / max(t.state[2], 1e-6)
                    if dist < cfg.centroid_gate * size and 0.5 < ratio < 2.0:
                        pairs.append((1.0 - dist / size, ti, di))
        pairs.sort(key=lambda p: -p[0])
        used_t, used_d = set(), set()
        for _, ti, di in pairs:
            if ti in used_t or di in used_d:
                continue
            used_t.add(ti)
            used_d.add(di)
            self._correct(self.tracks[ti], boxes[di], scores[di], frame,
                          None if landmarks is None else landmarks[di])
        survivors = []
        for ti, t in enumerate(self.tracks):
            if ti not in used_t:
                t.misses += 1
            if t.misses > cfg.max_missed:
                self.finished.append(t)
            else:
                survivors.append(t)
        self.tracks = survivors
        for di in range(len(boxes)):
            if di not in used_d:
                self.tracks.append(Track(id=self._next_id, state=_to_state(boxes[di]), velocity=np.zeros(4),
                                         frame=frame, last_seen=frame, first_frame=frame, score=float(scores[di]),
                                         landmarks=None if landmarks is None else np.asarray(landmarks[di])))
                self._next_id += 1
        return self.visible()

    def _correct(self, t: Track, box, score: float, frame: int, landmarks) -> None:
        cfg = self.config
        z = _to_state(box)
        dt = max(1, frame - t.last_seen)
        if iou(t.box, box) < cfg.jump_iou:
            t.state, t.velocity, t.reset = z, np.zeros(4), True
        else:
            residual = z - t.state
            t.state = t.state + cfg.alpha * residual
            t.velocity = t.velocity + cfg.beta * residual / dt
            # Size changes slowly for faces; damping its velocity avoids boxes that "breathe".
            t.velocity[2:] *= 0.5
        t.frame = t.last_seen = frame
        t.score = float(score)
        t.hits += 1
        t.misses = 0
        t.landmarks = None if landmarks is None else np.asarray(landmarks)


class CropStabilizer:
    """Exponential moving average of a track's enhanced crops, restarted on big changes.

    Per-frame enhancement of a noisy face flickers (noise and codec blocks change every frame,
    and a GAN amplifies them); averaging the aligned enhanced crops over time removes most of it.

    Args:
        alpha: weight of the history (0 = no smoothing, 0.9 = strong smoothing, more ghosting).
        reset_diff: mean absolute difference (0-255) between the new crop and the average above
            which the average restarts (cut, occlusion, a different face).
    """

    def __init__(self, alpha: float = 0.6, reset_diff: float = 40.0):
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"stabiliser alpha must be within [0, 1), got {alpha}")
        self.alpha = float(alpha)
        self.reset_diff = float(reset_diff)
        self._state: dict[int, np.ndarray] = {}

    def __call__(self, track_id: int, crop: np.ndarray, reset: bool = False) -> np.ndarray:
        """Return the stabilised crop ``(S,S,3) uint8`` for ``track_id`` given its new crop."""
        new = crop.astype(np.float32)
        old = self._state.get(track_id)
        if (self.alpha == 0.0 or reset or old is None or old.shape != new.shape
                or float(np.abs(new - old).mean()) > self.reset_diff):
            self._state[track_id] = new
            return crop
        out = old * self.alpha + new * (1.0 - self.alpha)
        self._state[track_id] = out
        return (out + 0.5).astype(np.uint8)

    def drop(self, track_id: int) -> None:
        """Forget a finished track."""
        self._state.pop(track_id, None)


@dataclass
class FlickerMeter:
    """Mean absolute temporal difference (0-255) of each track's consecutive crops.

    Only consecutive frames of one track count; crops of different sizes are skipped.
    """

    sums: dict[int, float] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)
    _last: dict[int, tuple[int, np.ndarray]] = field(default_factory=dict)

    def add(self, track_id: int, frame: int, crop: np.ndarray) -> None:
        prev = self._last.get(track_id)
        c = crop.astype(np.int16)
        if prev is not None and prev[0] == frame - 1 and prev[1].shape == c.shape:
            self.sums[track_id] = self.sums.get(track_id, 0.0) + float(np.abs(c - prev[1]).mean())
            self.counts[track_id] = self.counts.get(track_id, 0) + 1
        self._last[track_id] = (frame, c)

    def per_track(self) -> dict[int, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums if self.counts[k]}

    def mean(self) -> float | None:
        """Mean over all consecutive pairs of all tracks, or None when there were none."""
        n = sum(self.counts.values())
        return sum(self.sums.values()) / n if n else None
