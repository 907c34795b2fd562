"""The degradation explorer: a control for every op, widget values -> spec, effects, widgets build."""

import cv2
import numpy as np
import pytest

from facekit import augment, degrade, explorer
from facekit.data import orl_dir
from facekit.errors import ConfigError


def _face(size=64) -> np.ndarray:
    g = cv2.imread(str(orl_dir() / "s3" / "2.pgm"), cv2.IMREAD_GRAYSCALE)
    top = (g.shape[0] - g.shape[1]) // 2
    g = cv2.resize(g[top:top + g.shape[1]], (size, size), interpolation=cv2.INTER_AREA)
    f = np.repeat(g[:, :, None], 3, axis=2).astype(np.float32) / 255.0
    return np.clip(f * np.array([1.0, 0.85, 0.7], np.float32), 0, 1)  # skin-toned, so colour shifts show


FACE = _face()
GREY = np.full((64, 64, 3), 0.5, np.float32)


def _hf(img) -> float:
    """High-frequency energy: variance of the Laplacian of the luminance."""
    y = np.ascontiguousarray(img @ augment.LUMA)
    return float(cv2.Laplacian(y, cv2.CV_32F).var())


def _rb(img) -> float:
    m = img.reshape(-1, 3).mean(axis=0)
    return float(m[0] / m[2])


def test_every_registered_op_has_a_control_for_each_parameter():
    user_ops = [name for name in degrade.OPS if name not in explorer.INTERNAL_OPS]
    for name in user_ops:
        assert name in explorer.CONTROLS, f"degrade op {name!r} has no explorer control"
        assert set(explorer.CONTROLS[name]) == set(degrade.OPS[name].params), name
        assert any(c.gate for c in explorer.CONTROLS[name].values()), f"{name}: no control switches it off"
    assert set(explorer.CONTROLS) == set(user_ops)


def test_controls_only_offer_values_the_op_accepts():
    """Each slider end and dropdown option (gate on) validates as a pipeline spec."""
    for op, group in explorer.CONTROLS.items():
        on = {}
        for key, c in group.items():  # a valid "on" value for every gate
            if c.gate:
                on[f"{op}.{key}"] = ([v for v in c.choices if v != c.value][0] if c.kind == "choice"
                                     else (not c.value) if c.kind == "bool" else c.hi)
        for key, c in group.items():
            if c.kind == "choice":
                tries = [v for v in c.choices if v != explorer.OFF]
            elif c.kind == "bool":
                tries = [True, False]
            else:
                tries = [c.lo + c.step if c.gate and c.lo == c.value else c.lo, c.hi]
            for v in tries:
                spec = explorer.explorer_spec({**on, f"{op}.{key}": v})
                assert [e["op"] for e in spec] == [op]
                degrade.Pipeline(spec, scale=1)  # raises ConfigError on an invalid value


def test_all_off_yields_no_ops_and_the_face_unchanged():
    values = explorer.off_values()
    assert explorer.explorer_spec(values) == []
    assert explorer.explorer_spec({}) == []
    for face in (FACE, (FACE * 255).round().astype(np.uint8)):
        lq, gt, params = explorer.apply_values(face, values, seed=3)
        assert params["ops"] == []
        np.testing.assert_array_equal(lq, degrade.to_float(face))
        np.testing.assert_array_equal(gt, degrade.to_float(face))


def test_unknown_control_is_a_clear_error():
    with pytest.raises(ConfigError, match="unknown explorer control 'jpeg.qualty'"):
        explorer.explorer_spec({"jpeg.qualty": 20})


def _one(key, value, face=FACE, **extra):
    """Turn one gate on: the spec holds exactly that op with that value; return (lq, gt, params)."""
    op, param = key.split(".")
    spec = explorer.explorer_spec({key: value, **extra})
    assert [e["op"] for e in spec] == [op]
    assert spec[0][param] == value and spec[0].get("p", 1.0) == 1.0
    lq, gt, params = explorer.apply_values(face, {key: value, **extra}, seed=1)
    assert [r["op"] for r in params["ops"] if r["op"] != "resize"] == [op]
    return lq, gt, params


@pytest.mark.parametrize("key, value", [
    ("motion_blur.length_frac", 0.15), ("linear_motion_blur.length_frac", 0.15),
    ("defocus_blur.radius_frac", 0.04), ("gaussian_blur.sigma_frac", 0.03)])
def test_blur_controls_remove_high_frequencies_and_keep_brightness(key, value):
    lq, gt, _ = _one(key, value)
    np.testing.assert_array_equal(gt, FACE)
    assert _hf(lq) < 0.5 * _hf(FACE)
    assert abs(augment.mean_luminance(lq) - augment.mean_luminance(FACE)) < 0.02


def test_linear_motion_angle_sets_the_blur_direction():
    lq, _, params = _one("linear_motion_blur.length_frac", 0.2, **{"linear_motion_blur.angle": 0})
    assert params["ops"][0]["angle"] == 0.0
    dx = np.abs(np.diff(lq, axis=1)).mean() / np.abs(np.diff(FACE, axis=1)).mean()
    dy = np.abs(np.diff(lq, axis=0)).mean() / np.abs(np.diff(FACE, axis=0)).mean()
    assert dx < 0.6 * dy  # horizontal blur smooths along x far more than along y


@pytest.mark.parametrize("factor, method", [(4, "area"), (2, "bicubic"), (8, "bilinear")])
def test_downsample_control_gives_the_exact_size(factor, method):
    lq, _, params = _one("downsample.scale", factor, **{"downsample.method": method})
    assert lq.shape == (64 // factor, 64 // factor, 3)
    assert params["ops"][0]["method"] == method and params["scale"] == factor


def test_downsample_factor_that_does_not_divide_the_face_is_shown_at_face_size():
    lq, _, params = _one("downsample.scale", 3)
    assert lq.shape == FACE.shape and [r["op"] for r in params["ops"]] == ["downsample", "resize"]


@pytest.mark.parametrize("sigma", [0.02, 0.05])
def test_gaussian_noise_control_has_the_requested_std(sigma):
    lq, _, _ = _one("gaussian_noise.sigma", sigma, face=GREY)
    assert abs(float((lq - GREY).std()) - sigma) < 0.1 * sigma


def test_poisson_noise_control_follows_the_photon_count():
    lq, _, params = _one("poisson_noise.photons", 100, face=GREY)
    assert params["ops"][0]["photons"] == 100
    expected = np.sqrt(0.5 / 100)  # std of Poisson(v*N)/N
    assert abs(float((lq - GREY).std()) - expected) < 0.1 * expected


def test_low_light_control_sets_the_mean_luminance():
    lq, _, _ = _one("low_light.level", 0.1, **{"low_light.photons": 2000.0})
    assert abs(augment.mean_luminance(lq) - 0.1) < 0.01


@pytest.mark.parametrize("quality", [5, 30])
def test_jpeg_control_compresses_at_that_quality(quality):
    lq, _, _ = _one("jpeg.quality", quality)
    np.testing.assert_array_equal(lq, degrade.jpeg(FACE, quality))
    assert np.abs(lq - FACE).mean() > 0.003


def test_video_codec_control_round_trips_through_the_codec():
    lq, _, params = _one("video_codec.codec", "MJPG", **{"video_codec.quality": 10})
    assert params["ops"][0] == {"op": "video_codec", "codec": "MJPG", "quality": 10, "motion_px": 1}
    assert lq.shape == FACE.shape and np.abs(lq - FACE).mean() > 0.003


@pytest.mark.parametrize("kind", degrade.OCCLUSION_KINDS)
def test_occlusion_control_paints_only_inside_its_mask(kind):
    lq, _, params = _one("occlusion.kind", kind)
    mask = degrade.occlusion_masks(params)
    assert mask.mean() > 0.03
    changed = np.abs(lq - FACE).max(axis=2) > 1e-6
    assert not changed[mask == 0].any()


def test_lighting_dropdown_applies_the_condition():
    warm, _, p_warm = _one("lighting.condition", "warm")
    cold, _, _ = _one("lighting.condition", "cold")
    low, _, _ = _one("lighting.condition", "low")
    assert p_warm["condition"] == "warm"
    assert _rb(warm) > 1.3 * _rb(FACE) and _rb(cold) < 0.9 * _rb(FACE)
    assert augment.mean_luminance(low) < 0.6 * augment.mean_luminance(FACE)
    medium, _, _ = _one("lighting.condition", "medium")
    np.testing.assert_allclose(medium, FACE, atol=1e-5)  # medium is neutral


def test_directional_light_control_shades_one_side():
    lq, _, _ = _one("directional_light.strength", 0.6, face=GREY, **{"directional_light.azimuth": 0.0})
    left, right = augment.mean_luminance(lq[:, :32]), augment.mean_luminance(lq[:, 32:])
    assert abs(left - right) > 0.05


@pytest.mark.parametrize("key, value", [("pose.roll", 15.0), ("pose.yaw", 30.0), ("pose.pitch", -15.0)])
def test_pose_sliders_warp_gt_and_lq_alike(key, value):
    lq, gt, params = _one(key, value)
    assert degrade.pose_angles(params)[key.split(".")[1]] == value
    np.testing.assert_array_equal(lq, gt)  # pose is geometric: the target turns too
    np.testing.assert_allclose(gt, augment.pose_warp(FACE, **{key.split(".")[1]: value}), atol=1e-6)
    assert np.abs(gt - FACE).mean() > 0.01


def test_flip_checkbox_mirrors_the_face():
    lq, gt, _ = _one("pose.flip", True)
    np.testing.assert_allclose(gt, FACE[:, ::-1], atol=1e-6)


def test_static_preview_outside_a_kernel():
    ex = explorer.explore(FACE, values={"jpeg.quality": 20}, show=False)
    assert ex.widget is None and ex.controls == {}
    assert ex.png.startswith(b"\x89PNG") and [r["op"] for r in ex.params["ops"]] == ["jpeg"]
    shown = cv2.imdecode(np.frombuffer(ex.png, np.uint8), cv2.IMREAD_COLOR)
    assert shown.shape[1] > 2 * 192  # clean | degraded
    assert "jpeg" in explorer.params_text(ex.params)


def test_explore_builds_widgets_and_updates_on_change():
    pytest.importorskip("ipywidgets")
    ex = explorer.explore(FACE, seed=2, interactive=True, show=False)
    assert set(ex.controls) == set(explorer.off_values()) | {"seed"}
    assert ex.values() == explorer.off_values() and ex.params["ops"] == []
    assert "image/png" in ex.output.outputs[0]["data"]  # rendered eagerly (headless runs keep it)
    ex.controls["jpeg.quality"].value = 20
    ex.controls["lighting.condition"].value = "cold"
    assert [r["op"] for r in ex.params["ops"]] == ["lighting", "jpeg"]
    assert '"quality": 20' in ex.output.outputs[1]["data"]["text/plain"]
    ex.controls["seed"].value = 5
    assert ex.seed == 5
    reset = [w for w in ex.widget.children[1].children if getattr(w, "description", "") == "all off"][0]
    reset.click()
    assert ex.params["ops"] == [] and ex.spec() == []
