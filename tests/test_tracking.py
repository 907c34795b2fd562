"""Tracker association, ID stability, box smoothing and crop stabilisation (pure numpy, fast)."""

import numpy as np
import pytest

from facekit.tracking import CropStabilizer, FlickerMeter, IoUTracker, TrackerConfig, iou


def test_iou_values():
    a = np.array([0, 0, 10, 10], float)
    assert iou(a, a) == pytest.approx(1.0)
    assert iou(a, np.array([5, 0, 10, 10], float)) == pytest.approx(50 / 150)
    assert iou(a, np.array([20, 20, 5, 5], float)) == 0.0


def _moving(n, start, v, size=40.0):
    return [np.array([start[0] + v[0] * t, start[1] + v[1] * t, size, size]) for t in range(n)]


def test_two_faces_keep_ids_and_crossing_gap():
    """Two faces moving in opposite directions keep their IDs, also across frames without detection."""
    tr = IoUTracker()
    a = _moving(30, (10, 50), (3, 0))
    b = _moving(30, (300, 150), (-3, 0))
    ids_a, ids_b = set(), set()
    for t in range(30):
        if t % 3:  # detector only every third frame
            vis = tr.predict(t)
        else:
            vis = tr.update(t, [a[t], b[t]], [0.9, 0.8])
        assert len(vis) == 2
        for trk in vis:
            (ids_a if trk.box[1] < 100 else ids_b).add(trk.id)
            # predictions stay close to the truth thanks to the velocity estimate
            truth = a[t] if trk.box[1] < 100 else b[t]
            assert iou(trk.box, truth) > 0.5
    assert ids_a == {1} and ids_b == {2}


def test_missed_detections_then_track_ends_and_new_id():
    cfg = TrackerConfig(max_missed=2)
    tr = IoUTracker(cfg)
    box = np.array([50, 50, 40, 40.0])
    tr.update(0, [box], [0.9])
    for t in (1, 2):  # missed twice: kept but hidden
        assert tr.update(t, [], []) == []
        assert len(tr.tracks) == 1
    tr.update(3, [], [])
    assert tr.tracks == [] and [t.id for t in tr.finished] == [1]
    vis = tr.update(4, [box], [0.9])
    assert [t.id for t in vis] == [2]


def test_smoothing_reduces_box_jitter():
    rng = np.random.default_rng(0)
    truth = np.array([100, 100, 60, 60.0])
    tr = IoUTracker(TrackerConfig(alpha=0.4, beta=0.05))
    raw_err, smooth_err = [], []
    for t in range(60):
        noisy = truth + rng.normal(0, 3, 4)
        (trk,) = tr.update(t, [noisy], [0.9])
        if t > 10:
            raw_err.append(np.abs(noisy - truth).mean())
            smooth_err.append(np.abs(trk.box - truth).mean())
    assert np.mean(smooth_err) < 0.75 * np.mean(raw_err)


def test_jump_resets_smoothing():
    tr = IoUTracker(TrackerConfig(centroid_gate=2.0))
    tr.update(0, [[100, 100, 40, 40]], [0.9])
    (trk,) = tr.update(1, [[140, 100, 40, 40]], [0.9])  # IoU 0 with the prediction, matched by centroid
    assert trk.id == 1 and trk.reset
    np.testing.assert_allclose(trk.box, [140, 100, 40, 40], atol=1e-4)


def test_stabilizer_lowers_flicker_and_resets_on_change():
    rng = np.random.default_rng(1)
    base = rng.integers(60, 200, (32, 32, 3)).astype(np.float32)
    stab = CropStabilizer(alpha=0.7, reset_diff=40)
    raw, smooth = FlickerMeter(), FlickerMeter()
    for t in range(40):
        noisy = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        raw.add(1, t, noisy)
        smooth.add(1, t, stab(1, noisy))
    assert smooth.mean() < 0.6 * raw.mean()
    other = np.zeros((32, 32, 3), np.uint8)  # a completely different crop restarts the average
    np.testing.assert_array_equal(stab(1, other), other)
    # alpha 0 passes crops through
    np.testing.assert_array_equal(CropStabilizer(alpha=0.0)(5, other), other)
    with pytest.raises(ValueError, match="alpha"):
        CropStabilizer(alpha=1.0)
