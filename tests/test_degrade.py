"""Degradations: effects (not just shapes), the pipeline spec, reproducibility and replay."""

import json

import cv2
import numpy as np
import pytest

from facekit import augment, degrade
from facekit.data import orl_dir
from facekit.errors import ConfigError


def _orl_face(person=1, k=1, size=64) -> np.ndarray:
    """A real face: ORL pgm, centre square, resized, as RGB uint8."""
    g = cv2.imread(str(orl_dir() / f"s{person}" / f"{k}.pgm"), cv2.IMREAD_GRAYSCALE)
    h, w = g.shape
    top = (h - w) // 2
    g = cv2.resize(g[top:top + w], (size, size), interpolation=cv2.INTER_AREA)
    return np.repeat(g[:, :, None], 3, axis=2)


def _texture(size=64, seed=0) -> np.ndarray:
    """Random colour texture in [0.2, 0.8]: rich in high frequencies in every direction."""
    return np.random.default_rng(seed).uniform(0.2, 0.8, (size, size, 3)).astype(np.float32)


def _grad_energy(img):
    g = img.mean(axis=2)
    return float((np.diff(g, axis=1) ** 2).mean()), float((np.diff(g, axis=0) ** 2).mean())


def _luma(img):
    return float(degrade.to_float(img).reshape(-1, 3).mean(0) @ augment.LUMA)


# ---------------------------------------------------------------------------------------------
# Blur


@pytest.mark.parametrize("angle,axis", [(0, 0), (90, 1)])
def test_linear_motion_blur_removes_high_frequencies_along_its_direction(angle, axis):
    x = _texture()
    out = degrade.linear_motion_blur(x, length_px=9, angle=angle)
    before, after = _grad_energy(x), _grad_energy(out)
    along, across = after[axis] / before[axis], after[1 - axis] / before[1 - axis]
    assert along < 0.05  # a 9-px box along the motion kills neighbouring differences
    assert along < 0.3 * across  # ... much more than across it
    assert abs(out.mean() - x.mean()) < 2e-3


def test_motion_blur_on_a_face_keeps_mean_brightness_and_lowers_detail():
    face = degrade.to_float(_orl_face())
    for traj in range(4):
        out = degrade.motion_blur(face, length_px=9, exposure=1.0, trajectory=traj)
        eh0, ev0 = _grad_energy(face)
        eh1, ev1 = _grad_energy(out)
        assert eh1 + ev1 < 0.7 * (eh0 + ev0)
        assert abs(out.mean() - face.mean()) < 3e-3


@pytest.mark.parametrize("kernel", [
    degrade.linear_motion_kernel(7, 33.0), degrade.linear_motion_kernel(12, 150.0),
    degrade.trajectory_kernel(11, 0.7, 3), degrade.trajectory_kernel(20, 1.0, 17),
    degrade.disk_kernel(2.5),
])
def test_kernels_sum_to_one_and_are_centred(kernel):
    k = kernel.astype(np.float64)
    assert kernel.shape[0] == kernel.shape[1] and kernel.shape[0] % 2 == 1
    assert abs(k.sum() - 1.0) < 1e-5 and (k >= 0).all()
    c = (k.shape[0] - 1) / 2
    ys, xs = np.mgrid[:k.shape[0], :k.shape[1]]
    assert abs((k * xs).sum() - c) < 1e-3 and abs((k * ys).sum() - c) < 1e-3  # no shift against gt


def test_linear_kernel_length_and_direction():
    k = degrade.linear_motion_kernel(9, 0.0)
    rows = np.nonzero(k.sum(axis=1) > 1e-6)[0]
    cols = np.nonzero(k.sum(axis=0) > 1e-6)[0]
    assert len(rows) == 1 and 9 <= len(cols) <= 10
    kv = degrade.linear_motion_kernel(9, 90.0)
    assert len(np.nonzero(kv.sum(axis=0) > 1e-6)[0]) == 1


def test_trajectories_differ_and_exposure_shortens_the_path():
    k1, k2 = degrade.trajectory_kernel(15, 1.0, 1), degrade.trajectory_kernel(15, 1.0, 2)
    assert k1.shape != k2.shape or not np.allclose(k1, k2)
    short = degrade.trajectory_kernel(15, 0.2, 1)
    assert short.shape[0] <= k1.shape[0]


def test_defocus_and_gaussian_blur_grow_with_their_size():
    x = _texture()
    e = [sum(_grad_energy(degrade.defocus_blur(x, r))) for r in (1.0, 2.0, 3.0)]
    assert e[0] > e[1] > e[2]
    g = [sum(_grad_energy(degrade.gaussian_blur(x, s))) for s in (0.5, 1.0, 2.0)]
    assert g[0] > g[1] > g[2]
    assert abs(degrade.gaussian_blur(x, 2.0).mean() - x.mean()) < 2e-3


# ---------------------------------------------------------------------------------------------
# Resolution, noise, light, compression, occlusion


@pytest.mark.parametrize("method", ["area", "bilinear", "bicubic"])
def test_downsample_gives_exact_size(method):
    face = _orl_face(size=64)
    for scale in range(2, 9):
        out = degrade.downsample(face, scale, method)
        assert out.shape == (round(64 / scale), round(64 / scale), 3) and out.dtype == np.float32
        assert 0.0 <= out.min() and out.max() <= 1.0
    assert degrade.downsample(face, 4, method).shape == (16, 16, 3)
    with pytest.raises(ValueError, match="valid: area"):
        degrade.downsample(face, 4, "nearest-ish")


@pytest.mark.parametrize("sigma", [0.01, 0.05])
def test_gaussian_noise_std_matches(sigma):
    x = np.full((128, 128, 3), 0.5, np.float32)
    out = degrade.gaussian_noise(x, sigma, color=True, seed=3)
    assert abs(out.std() / sigma - 1.0) < 0.05
    assert abs(out.mean() - 0.5) < 0.003
    gray = degrade.gaussian_noise(x, sigma, color=False, seed=3)
    assert np.array_equal(gray[..., 0], gray[..., 2])  # luminance noise: same in every channel
    assert np.array_equal(out, degrade.gaussian_noise(x, sigma, color=True, seed=3))


def test_poisson_noise_std_and_growth_as_light_falls():
    photons = 100.0
    rel = []
    for v in (0.5, 0.1):
        x = np.full((128, 128, 3), v, np.float32)
        out = degrade.poisson_noise(x, photons, seed=1)
        expected = np.sqrt(v / photons)
        assert abs(out.std() / expected - 1.0) < 0.06
        assert abs(out.mean() - v) < 0.01
        rel.append(out.std() / v)
    assert rel[1] > 2.0 * rel[0]  # sqrt(5) = 2.24 times noisier relative to the signal


@pytest.mark.parametrize("level", [0.03, 0.08, 0.15])
def test_low_light_hits_requested_mean_luminance(level):
    face = _orl_face()
    assert _luma(face) > 0.3
    out = degrade.low_light(face, level, gamma=1.3, black=0.02)
    assert abs(_luma(out) - level) < 1e-3
    noisy = degrade.low_light(face, level, gamma=1.3, black=0.02, photons=50, read_noise=0.01, seed=2)
    assert abs(_luma(noisy) - level) < 0.02
    assert np.abs(noisy - out).mean() > 1e-3  # the matching noise is there


def test_jpeg_quality_controls_error():
    face = degrade.to_float(_orl_face())
    err = {q: np.abs(degrade.jpeg(face, q) - face).mean() for q in (10, 50, 95)}
    assert err[10] > err[50] > err[95]
    assert degrade.jpeg(face, 30).shape == face.shape
    with pytest.raises(ValueError, match="1-100"):
        degrade.jpeg(face, 0)


@pytest.mark.parametrize("codec", ["MJPG", "mp4v"])
def test_video_codec_round_trip(codec):
    face = degrade.to_float(_orl_face(size=32))[:30, :28]  # not a multiple of 16: padded and cropped
    out = degrade.video_codec(face, codec=codec, quality=20, motion_px=1)
    assert out.shape == face.shape and out.dtype == np.float32
    err = np.abs(out - face).mean()
    assert 0.0 < err < 0.15
    if codec == "MJPG":
        assert err > np.abs(degrade.video_codec(face, codec, quality=95) - face).mean()
    assert np.array_equal(out, degrade.video_codec(face, codec=codec, quality=20, motion_px=1))


@pytest.mark.parametrize("kind", degrade.OCCLUSION_KINDS)
def test_occlusion_returns_its_mask(kind):
    face = _orl_face()
    rng = np.random.default_rng(4)
    out, mask, params = degrade.random_occlusion(face, rng, kind=kind)
    assert mask.shape == (64, 64) and 0.0 <= mask.min() and mask.max() == pytest.approx(1.0)
    covered = mask > 0.99
    assert 0.02 < covered.mean() < 0.6
    assert np.allclose(out[covered], np.asarray(params["color"], np.float32), atol=1e-5)
    assert np.array_equal(out[mask == 0], degrade.to_float(face)[mask == 0])
    rows = np.nonzero(covered.any(axis=1))[0]
    if kind == "eyes":
        assert rows.min() > 10 and rows.max() < 40  # a band across the upper-middle face
    if kind == "lower_face":
        assert rows.max() == 63 and rows.min() > 25  # down to the chin/bottom edge


# ---------------------------------------------------------------------------------------------
# Pipeline


def test_every_preset_gives_exact_lq_size_range_and_replays():
    face = _orl_face()
    for name in degrade.PRESETS:
        for scale in (2, 4, 8):
            pipe = degrade.Pipeline(name, scale=scale)
            for s in range(3 if name != "cctv-video" else 1):
                lq, gt, params = pipe(face, np.random.default_rng([s, scale]), condition=augment.CONDITIONS[s])
                assert lq.shape == (64 // scale, 64 // scale, 3) and lq.dtype == np.float32
                assert 0.0 <= lq.min() and lq.max() <= 1.0
                assert np.array_equal(gt, degrade.to_float(face))  # no geometric op: gt is the clean face
                assert params["condition"] == augment.CONDITIONS[s]
                again = json.loads(json.dumps(params))  # params survive JSON
                assert np.array_equal(degrade.replay(again, gt), lq)


def test_same_seed_identical_and_different_seed_differs():
    face = _orl_face()
    pipe = degrade.Pipeline("cctv-heavy", scale=4)
    a = pipe(face, np.random.default_rng(11))
    b = pipe(face, np.random.default_rng(11))
    assert np.array_equal(a[0], b[0]) and a[2] == b[2]
    outs = [pipe(face, np.random.default_rng(s))[0] for s in range(5)]
    assert all(not np.array_equal(outs[0], o) for o in outs[1:])


def test_params_record_every_applied_op_with_drawn_values_in_range():
    spec = [{"op": "pose", "roll": [-5, 5], "yaw": 10, "pitch": 0, "flip": False},
            {"op": "occlusion", "kind": "eyes"},
            {"op": "motion_blur", "length_frac": [0.1, 0.12]},
            {"op": "downsample", "method": "bicubic"},
            {"op": "lighting", "condition": ["warm", "cold"]},
            {"op": "gaussian_noise", "sigma": [0.02, 0.03], "color": False},
            {"op": "jpeg", "quality": [20, 30]},
            {"op": "gaussian_blur", "p": 0.0}]
    pipe = degrade.Pipeline(spec, scale=4)
    face = _orl_face()
    for s in range(5):
        lq, gt, params = pipe(face, np.random.default_rng(s))
        ops = {r["op"]: r for r in params["ops"]}
        assert [r["op"] for r in params["ops"]] == [e["op"] for e in spec[:-1]]  # p=0 never recorded
        assert -5 <= ops["pose"]["roll"] <= 5 and ops["pose"]["yaw"] == 10.0
        assert 6 <= ops["motion_blur"]["length_px"] <= 8  # 0.10-0.12 of 64 px
        assert ops["downsample"] == {"op": "downsample", "scale": 4, "method": "bicubic"}
        assert ops["lighting"]["condition"] == params["condition"] and params["condition"] in ("warm", "cold")
        assert 0.02 <= ops["gaussian_noise"]["sigma"] <= 0.03 and ops["gaussian_noise"]["color"] is False
        assert 20 <= ops["jpeg"]["quality"] <= 30
        # geometry moved gt; lq replays from gt, gt replays from the source face
        assert not np.array_equal(gt, degrade.to_float(face))
        assert np.array_equal(degrade.replay_gt(params, face), gt)
        assert np.array_equal(degrade.replay(params, gt), lq)
        assert degrade.occlusion_masks(params).shape == (64, 64)
        assert degrade.pose_angles(params)["yaw"] == 10.0


def test_condition_override_and_missing_downsample_gets_exact_resize():
    pipe = degrade.Pipeline([{"op": "jpeg", "quality": 90}], scale=4)
    lq, gt, params = pipe(_orl_face(), np.random.default_rng(0), condition="low")
    assert params["ops"][0]["op"] == "lighting" and params["condition"] == "low"
    assert params["ops"][-1] == {"op": "resize", "height": 16, "width": 16, "method": "area"}
    assert lq.shape == (16, 16, 3)
    assert np.array_equal(degrade.replay(params, gt), lq)


def test_yaml_spec_and_to_spec_round_trip():
    text = """
ops:
  - {op: gaussian_blur, p: 0.5, sigma_frac: [0.01, 0.02]}
  - op: downsample
    method: [area, bilinear]
  - {op: jpeg, quality: 40}
"""
    pipe = degrade.Pipeline(text, scale=2)
    assert pipe.op_names == ["gaussian_blur", "downsample", "jpeg"]
    again = degrade.Pipeline(pipe.to_spec(), scale=2)
    face = _orl_face()
    a, b = pipe(face, np.random.default_rng(1)), again(face, np.random.default_rng(1))
    assert np.array_equal(a[0], b[0])


@pytest.mark.parametrize("spec,match", [
    ([{"op": "motion_blurr"}], r"unknown degradation op 'motion_blurr'; valid ops: motion_blur, linear_motion_blur"),
    ([{"op": "jpeg", "quality": [90, 10]}], r"op 'jpeg' parameter 'quality': range \[90, 10\] is inverted"),
    ([{"op": "jpeg", "p": 1.5}], r"op 'jpeg': probability p=1.5 must be a number within \[0, 1\]"),
    ([{"op": "jpeg", "p": -0.1}], r"probability"),
    ([{"op": "jpeg", "qualty": 50}], r"op 'jpeg' has no parameter 'qualty'; valid: p, quality"),
    ([{"op": "jpeg", "quality": [0, 50]}], r"outside the allowed \[1, 100\]"),
    ([{"op": "downsample", "method": "lanczos"}], r"invalid choice 'lanczos'; valid: area, bilinear, bicubic"),
    ([{"op": "lighting", "condition": "dusk"}], r"invalid choice 'dusk'; valid: warm, cold, low, medium, bright"),
    ([{"op": "jpeg"}, {"op": "pose"}], r"geometric op 'pose' must come before"),
    ([{"quality": 3}], r"'op' key"),
    ("cctv-medium", r"unknown preset 'cctv-medium'; valid presets: cctv-light, cctv-heavy, lowlight, motion"),
    ({"steps": []}, r"needs an 'ops' list"),
])
def test_invalid_specs_raise_clear_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        degrade.Pipeline(spec)


def test_bad_inputs_raise_clear_errors():
    pipe = degrade.Pipeline("cctv-light", scale=4)
    with pytest.raises(degrade.ImageFormatError, match="not divisible by the pipeline scale 4"):
        pipe(np.zeros((30, 30, 3), np.uint8), np.random.default_rng(0))
    with pytest.raises(degrade.ImageFormatError, match=r"\(H,W,3\)"):
        pipe(np.zeros((32, 32), np.uint8), np.random.default_rng(0))
    with pytest.raises(ConfigError, match="unknown lighting condition 'sunny'"):
        pipe(np.zeros((32, 32, 3), np.uint8), np.random.default_rng(0), condition="sunny")
    with pytest.raises(TypeError, match="Generator"):
        pipe(np.zeros((32, 32, 3), np.uint8), 0)
    with pytest.raises(ConfigError, match="scale"):
        degrade.Pipeline("cctv-light", scale=2.5)


def test_random_variants_replay_through_their_explicit_functions():
    face = _orl_face()
    rng = np.random.default_rng(9)
    for name in ("motion_blur", "linear_motion_blur", "defocus_blur", "gaussian_blur", "downsample",
                 "gaussian_noise", "poisson_noise", "low_light", "jpeg"):
        out, params = degrade.random_op(name, face, rng)
        assert np.array_equal(degrade.OPS[name].apply(degrade.to_float(face), **params), out), name
    out, params = degrade.random_op("downsample", face, rng, scale=[2, 8])
    assert out.shape[0] == round(64 / params["scale"])
