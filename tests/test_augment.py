"""Lighting conditions, directional light and head pose: effects and reproducibility."""

import cv2
import numpy as np
import pytest

from facekit import augment
from facekit.data import orl_dir


def _face(size=64) -> np.ndarray:
    g = cv2.imread(str(orl_dir() / "s3" / "2.pgm"), cv2.IMREAD_GRAYSCALE)
    top = (g.shape[0] - g.shape[1]) // 2
    g = cv2.resize(g[top:top + g.shape[1]], (size, size), interpolation=cv2.INTER_AREA)
    return np.repeat(g[:, :, None], 3, axis=2)


def _colour_face(size=64) -> np.ndarray:
    """A skin-toned version of the face (R > G > B), so white-balance effects show on colour too."""
    f = _face(size).astype(np.float32) / 255.0
    return np.clip(f * np.array([1.0, 0.8, 0.65], np.float32), 0, 1)


def _rb(img) -> float:
    m = img.reshape(-1, 3).mean(axis=0)
    return float(m[0] / m[2])


@pytest.mark.parametrize("img", [_face(), _colour_face()], ids=["gray", "colour"])
def test_warm_raises_and_cold_lowers_red_blue_ratio(img):
    base = _rb(img.astype(np.float32))  # the ratio does not depend on the value scale
    warm = augment.apply_lighting(img, kelvin=3000)
    warmer = augment.apply_lighting(img, kelvin=2700)
    cold = augment.apply_lighting(img, kelvin=9000)
    assert _rb(warm) > 1.5 * base
    assert _rb(warmer) > _rb(warm)
    assert _rb(cold) < 0.9 * base
    # white-point shifts recolour, they do not brighten or darken (apart from clipping)
    assert abs(augment.mean_luminance(cold) - augment.mean_luminance(img)) < 0.03


def test_random_warm_and_cold_conditions_move_the_ratio_every_time():
    img = _face()
    rng = np.random.default_rng(0)
    for _ in range(10):
        warm, pw = augment.lighting_condition(img, "warm", rng)
        cold, pc = augment.lighting_condition(img, "cold", rng)
        assert 2700 <= pw["kelvin"] <= 3500 and 7000 <= pc["kelvin"] <= 10000
        assert _rb(warm) > 1.3 and _rb(cold) < 0.95
        assert pw["condition"] == "warm" and pc["condition"] == "cold"


def test_low_darkens_bright_brightens_medium_is_neutral():
    img = _face()
    base = augment.mean_luminance(img)
    rng = np.random.default_rng(1)
    for _ in range(5):
        low, p_low = augment.lighting_condition(img, "low", rng)
        bright, p_bright = augment.lighting_condition(img, "bright", rng)
        assert augment.mean_luminance(low) < 0.55 * base
        assert augment.mean_luminance(bright) > 1.1 * base
        assert -2.0 <= p_low["exposure_stops"] <= -1.0 and 1.0 <= p_low["gamma"] <= 1.3
        assert 0.2 <= p_bright["exposure_stops"] <= 0.7 and 0.85 <= p_bright["gamma"] <= 1.0
    assert augment.apply_lighting(img, exposure_stops=1.0).max() == 1.0  # highlights clip, never exceed 1
    f = img.astype(np.float32) / 255.0
    medium, p = augment.lighting_condition(f, "medium", rng)
    assert np.array_equal(medium, f)
    assert p == {"condition": "medium", "kelvin": 6500.0, "exposure_stops": 0.0, "gamma": 1.0}


def test_exposure_stops_scale_linear_light():
    x = np.full((8, 8, 3), 0.2, np.float32)
    assert np.allclose(augment.apply_lighting(x, exposure_stops=1.0), 0.4, atol=1e-6)
    assert np.allclose(augment.apply_lighting(x, exposure_stops=-1.0, gamma=2.0), 0.01, atol=1e-6)


def test_lighting_errors():
    with pytest.raises(ValueError, match="valid: warm, cold, low, medium, bright"):
        augment.sample_lighting("dusk", np.random.default_rng(0))
    with pytest.raises(ValueError, match="1,000-40,000 K"):
        augment.kelvin_to_rgb(100)
    with pytest.raises(ValueError, match=r"\(H,W,3\)"):
        augment.apply_lighting(np.zeros((4, 4)))


def test_directional_light_shades_the_far_side():
    img = np.full((32, 32, 3), 0.8, np.float32)
    lit_right = augment.directional_light(img, azimuth=0.0, strength=0.6, softness=0.2)
    assert lit_right[:, -4:].mean() > 0.75 and lit_right[:, :4].mean() < 0.4
    lit_top = augment.directional_light(img, azimuth=90.0, strength=0.6, softness=0.2)
    assert lit_top[:4].mean() > 0.75 and lit_top[-4:].mean() < 0.4
    field = augment.shading_field((32, 32), 45.0, 0.5, 0.3)
    assert field.min() >= 0.5 - 1e-6 and field.max() <= 1.0 + 1e-6
    out, params = augment.random_directional_light(img, np.random.default_rng(2))
    assert np.array_equal(augment.directional_light(img, **params), out)


def test_pose_zero_is_identity_and_flip_mirrors():
    img = _face()
    f = img.astype(np.float32) / 255.0
    assert np.array_equal(augment.pose_warp(img), f)
    assert np.array_equal(augment.pose_warp(img, flip=True), f[:, ::-1])


def test_roll_rotates_about_the_centre():
    img = np.zeros((33, 33, 3), np.float32)
    img[16, 26] = 1.0  # a dot 10 px right of the centre
    out = augment.pose_warp(img, roll=90.0)
    y, x = np.unravel_index(out[..., 0].argmax(), out.shape[:2])
    assert (y, x) == (26, 16)  # positive roll turns clockwise on screen (y points down)


def test_yaw_and_pitch_foreshorten_and_keep_the_centre():
    h = augment.pose_homography((64, 64), yaw=30.0)
    c = h @ np.array([31.5, 31.5, 1.0])
    assert np.allclose(c[:2] / c[2], 31.5, atol=1e-6)
    corners = np.array([[0, 31.5, 1.0], [63, 31.5, 1.0]])
    mapped = (h @ corners.T).T
    width = abs(mapped[1, 0] / mapped[1, 2] - mapped[0, 0] / mapped[0, 2])
    assert 63 * 0.8 < width < 63 * 0.95  # about cos(30 deg) narrower
    hp = augment.pose_homography((64, 64), pitch=30.0)
    top, bottom = hp @ np.array([31.5, 0, 1.0]), hp @ np.array([31.5, 63, 1.0])
    height = abs(bottom[1] / bottom[2] - top[1] / top[2])
    assert 63 * 0.8 < height < 63 * 0.95
    out = augment.pose_warp(_face(), yaw=25.0, pitch=-10.0, roll=5.0)
    assert out.shape == (64, 64, 3) and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1


def test_random_pose_returns_applied_angles_reproducibly():
    img = _face()
    a, pa = augment.random_pose(img, np.random.default_rng(5))
    b, pb = augment.random_pose(img, np.random.default_rng(5))
    assert pa == pb and np.array_equal(a, b)
    assert -15 <= pa["roll"] <= 15 and -30 <= pa["yaw"] <= 30 and -15 <= pa["pitch"] <= 15
    assert np.array_equal(augment.pose_warp(img, **pa), a)
    _, p = augment.random_pose(img, np.random.default_rng(0), yaw=(40.0, 45.0), flip_prob=1.0)
    assert 40 <= p["yaw"] <= 45 and p["flip"] is True
