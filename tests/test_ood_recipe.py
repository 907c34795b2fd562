"""The OOD evaluation recipe (facekit.ood_recipe) and the colour-fidelity metrics."""

import ast
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from facekit import ood_recipe as ood
from facekit.metrics import delta_e, face_region_lab, face_region_mask, gray_spread

FACE_BOX = (90.0, 70.0, 60.0, 80.0)   # x, y, w, h of the drawn face in `photo`
SKIN = (205, 150, 120)
BACKGROUND = (40, 110, 90)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 240x240 'photo': a skin ellipse with eyes and mouth on a green-grey gradient."""
    h = w = 240
    ramp = np.linspace(0.7, 1.2, w)[None, :, None]
    img = np.clip(np.array(BACKGROUND, np.float64) * ramp * np.ones((h, 1, 1)), 0, 255).astype(np.uint8)
    x, y, bw, bh = FACE_BOX
    cx, cy = int(x + bw / 2), int(y + bh / 2)
    cv2.ellipse(img, (cx, cy), (int(bw / 2), int(bh / 2)), 0, 0, 360, SKIN, -1)
    for ex in (cx - 12, cx + 12):
        cv2.circle(img, (ex, cy - 10), 5, (30, 25, 20), -1)
    cv2.ellipse(img, (cx, cy + 20), (12, 5), 0, 0, 360, (150, 60, 60), -1)
    return img


@pytest.fixture(scope="module")
def face(photo) -> np.ndarray:
    """A tight 64x64 framing of the synthetic face (the gt of a 16 px pair)."""
    return ood.frame_face(photo, FACE_BOX, "tight", 64, np.random.default_rng(0))


def _mean_rgb(img) -> np.ndarray:
    return img.reshape(-1, 3).astype(np.float64).mean(0)


# ----------------------------------------------------------------------------- independence

def test_module_does_not_import_training_degradations():
    tree = ast.parse(Path(ood.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            imported.add(mod)
            imported |= {f"{mod}.{a.name}" for a in node.names}
            if node.level:  # `from . import degrade` and the like
                imported |= {f"facekit.{a.name}" for a in node.names}
                imported.add(f"facekit.{mod}")
    banned = {"facekit.degrade", "facekit.augment", "facekit.dataset"}
    assert not imported & banned, imported & banned


def test_importing_it_loads_no_training_degradations():
    code = ("import sys, facekit.ood_recipe; "
            "print(sorted(m for m in ('facekit.degrade', 'facekit.augment', 'facekit.dataset') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(ood.__file__).parent.parent)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


# ----------------------------------------------------------------------------- determinism

def test_same_seed_same_bytes_different_seed_different(photo):
    for condition in ood.LIGHTING:
        a = ood.make_pair(photo, FACE_BOX, "offcentre", 16, condition, np.random.default_rng(7))
        b = ood.make_pair(photo, FACE_BOX, "offcentre", 16, condition, np.random.default_rng(7))
        c = ood.make_pair(photo, FACE_BOX, "offcentre", 16, condition, np.random.default_rng(8))
        assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
        assert a[2] == b[2]
        assert a[0].tobytes() != c[0].tobytes()


def test_params_are_plain_scalars_and_conditions_share_the_other_draws(face):
    shared = ("blur", "blur_size_px", "blur_angle_deg", "resample", "shot_gain", "read_sigma",
              "chroma", "jpeg_quality")
    seen = []
    for condition in ood.LIGHTING:
        _, p = ood.degrade(face, 16, condition, np.random.default_rng(3))
        assert p["condition"] == condition
        for k, v in p.items():
            assert type(v) in (str, int, float, bool), (k, type(v))
        seen.append(tuple(p[k] for k in shared))
    assert len(set(seen)) == 1


def test_draws_cover_the_documented_ranges(face):
    blurs, resamplers = set(), set()
    for seed in range(60):
        condition = ood.LIGHTING[seed % 5]
        _, p = ood.degrade(face, 16, condition, np.random.default_rng(seed))
        blurs.add(p["blur"])
        resamplers.add(p["resample"])
        assert 35 <= p["jpeg_quality"] <= 70
        assert 0.005 <= p["read_sigma"] <= 0.03
        if condition == "warm":
            assert 2600 <= p["kelvin"] <= 3400 and p["gain_r"] > 1 > p["gain_b"]
        elif condition == "cold":
            assert 7500 <= p["kelvin"] <= 11000 and p["gain_r"] < 1 < p["gain_b"]
        elif condition == "low":
            assert -2.6 <= p["stops"] <= -1.5 and p["noise_boost"] > 1
        elif condition == "bright":
            assert 0.4 <= p["stops"] <= 1.0
        if p["blur"] == "motion":
            assert 0.02 * 64 <= p["blur_size_px"] <= 0.09 * 64
        elif p["blur"] == "gaussian":
            assert 0.004 * 64 <= p["blur_size_px"] <= 0.018 * 64
    assert blurs == set(ood.BLUR_KINDS)
    assert resamplers == set(ood.RESAMPLERS)


# ----------------------------------------------------------------------------- grey and colour

def test_to_gray_is_rec601_and_idempotent(face):
    g = ood.to_gray(face)
    assert g.shape == face.shape and g.dtype == np.uint8
    assert gray_spread(g)[0] == 0
    expected = np.rint(face.astype(np.float64) @ [0.299, 0.587, 0.114])
    assert np.abs(g[..., 0] - expected).max() <= 1
    np.testing.assert_array_equal(ood.to_gray(g), g)


def test_grey_in_grey_out_for_every_condition(photo, face):
    grey = ood.to_gray(face)
    for condition in ood.LIGHTING:
        for seed in range(4):
            lq, p = ood.degrade(grey, 16, condition, np.random.default_rng(seed), gray=True)
            assert lq.shape == (16, 16, 3) and lq.dtype == np.uint8
            assert gray_spread(lq)[0] == 0, (condition, p)
        lq, gt, _ = ood.make_pair(photo, FACE_BOX, "loose", 12, condition,
                                  np.random.default_rng(1), gray=True)
        assert gray_spread(lq)[0] == 0 and gray_spread(gt)[0] == 0


def test_medium_light_keeps_the_mean_colour(face):
    gt_lab = face_region_lab(face)[0]
    for seed in range(5):
        lq, _ = ood.degrade(face, 16, "medium", np.random.default_rng(seed))
        lq_lab = face_region_lab(lq)[0]
        assert abs(lq_lab[0] - gt_lab[0]) < 4.0, (seed, lq_lab, gt_lab)
        assert delta_e(lq_lab, gt_lab)[0] < 8.0


def test_warm_and_cold_shift_red_blue_and_low_darkens(face):
    m = _mean_rgb(face)
    gt_ratio, gt_lum = m[0] / m[2], m.mean()
    for seed in range(4):
        warm = _mean_rgb(ood.degrade(face, 16, "warm", np.random.default_rng(seed))[0])
        cold = _mean_rgb(ood.degrade(face, 16, "cold", np.random.default_rng(seed))[0])
        low = _mean_rgb(ood.degrade(face, 16, "low", np.random.default_rng(seed))[0])
        bright = _mean_rgb(ood.degrade(face, 16, "bright", np.random.default_rng(seed))[0])
        assert warm[0] / warm[2] > 1.3 * gt_ratio
        assert cold[0] / cold[2] < 0.9 * gt_ratio
        assert low.mean() < 0.8 * gt_lum
        assert bright.mean() > 1.05 * gt_lum


def test_illuminant_gains():
    np.testing.assert_allclose(ood.illuminant_gains(ood.REFERENCE_KELVIN), 1.0, atol=1e-12)
    x, y = ood.illuminant_xy(ood.REFERENCE_KELVIN)
    assert abs(x - 0.3127) < 2e-3 and abs(y - 0.3290) < 2e-3   # D65
    g3000, g9000 = ood.illuminant_gains(3000), ood.illuminant_gains(9000)
    assert g3000[1] == g9000[1] == 1.0
    assert g3000[0] > 1.5 and g3000[2] < 0.5
    assert g9000[0] < 1.0 < g9000[2]


def test_motion_kernel_is_normalised_and_oriented():
    k = ood.motion_kernel(5.0, 0.0)
    assert k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
    assert abs(k.sum() - 1) < 1e-5 and k.min() >= 0
    c = k.shape[0] // 2
    assert k[c].sum() > 0.9          # horizontal motion: mass on the centre row
    assert ood.motion_kernel(5.0, 90.0)[:, c].sum() > 0.9


# ----------------------------------------------------------------------------- shapes and framing

@pytest.mark.parametrize("framing", ood.FRAMINGS)
def test_shapes_for_every_size(photo, framing):
    for size in ood.SIZES:
        lq, gt, p = ood.make_pair(photo, FACE_BOX, framing, size, "medium",
                                  np.random.default_rng(size))
        assert lq.shape == (size, size, 3) and lq.dtype == np.uint8
        assert gt.shape == (4 * size, 4 * size, 3) and gt.dtype == np.uint8
        assert p["framing"] == framing and p["lq_side"] == size and p["gt_side"] == 4 * size
    lq, gt, _ = ood.make_pair(photo, FACE_BOX, framing, 16, "warm", np.random.default_rng(0), scale=2)
    assert lq.shape == (16, 16, 3) and gt.shape == (32, 32, 3)


def _skin_centroid(img) -> np.ndarray:
    skin = np.abs(img.astype(np.int16) - SKIN).sum(-1) < 30
    ys, xs = np.nonzero(skin)
    return np.array([xs.mean() + 0.5, ys.mean() + 0.5]) / img.shape[0]


def test_framings_scale_and_offcentre_shifts_the_face(photo):
    tight = ood.frame_face(photo, FACE_BOX, "tight", 96, np.random.default_rng(0))
    loose = ood.frame_face(photo, FACE_BOX, "loose", 96, np.random.default_rng(0))
    assert np.linalg.norm(_skin_centroid(tight) - 0.5) < 0.03
    assert np.linalg.norm(_skin_centroid(loose) - 0.5) < 0.03
    skin = lambda im: (np.abs(im.astype(np.int16) - SKIN).sum(-1) < 30).mean()  # noqa: E731
    assert skin(tight) > 1.5 * skin(loose)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        off = ood.frame_face(photo, FACE_BOX, "offcentre", 96, rng)
        shift = np.linalg.norm(_skin_centroid(off) - 0.5)
        assert 0.09 < shift < 0.23, (seed, shift)
    _, _, p = ood.make_pair(photo, FACE_BOX, "offcentre", 16, "medium", np.random.default_rng(0))
    assert 0.12 <= p["shift_frac"] <= 0.20


def test_frame_reflects_outside_the_photo():
    flat = np.full((50, 60, 3), (10, 200, 30), np.uint8)
    out = ood.frame_face(flat, (0.0, 0.0, 40.0, 40.0), "loose", 32, np.random.default_rng(0))
    assert out.shape == (32, 32, 3)
    assert (out == (10, 200, 30)).all()   # reflection, not black or constant padding
    tiny = ood.frame_face(flat, (-70.0, -75.0, 200.0, 200.0), "loose", 24, np.random.default_rng(0))
    assert tiny.shape == (24, 24, 3)      # a crop many times the photo reflects repeatedly
    assert (tiny == (10, 200, 30)).all()


def test_enlarging_frame_uses_cubic(photo):
    out = ood.frame_face(photo, (100.0, 100.0, 10.0, 10.0), "tight", 64, np.random.default_rng(0))
    assert out.shape == (64, 64, 3)


# ----------------------------------------------------------------------------- bad arguments

@pytest.mark.parametrize("call, match", [
    (lambda p, f: ood.frame_face(p, FACE_BOX, "wide", 32, np.random.default_rng(0)), "framing"),
    (lambda p, f: ood.frame_face(p, (0, 0, -5, 10), "tight", 32, np.random.default_rng(0)), "width"),
    (lambda p, f: ood.frame_face(p, (0, 0, 5), "tight", 32, np.random.default_rng(0)), "box"),
    (lambda p, f: ood.frame_face(p, (900, 900, 20, 20), "tight", 32, np.random.default_rng(0)),
     "outside"),
    (lambda p, f: ood.frame_face(p.astype(np.float32), FACE_BOX, "tight", 32,
                                 np.random.default_rng(0)), "uint8"),
    (lambda p, f: ood.frame_face(p[..., 0], FACE_BOX, "tight", 32, np.random.default_rng(0)),
     "shape"),
    (lambda p, f: ood.frame_face(p, FACE_BOX, "tight", 0, np.random.default_rng(0)), "out_side"),
    (lambda p, f: ood.frame_face(p, FACE_BOX, "tight", 32, 0), "Generator"),
    (lambda p, f: ood.degrade(f, 16, "dusk", np.random.default_rng(0)), "lighting condition"),
    (lambda p, f: ood.degrade(f, 128, "medium", np.random.default_rng(0)), "smaller than lq_side"),
    (lambda p, f: ood.degrade(f[:, :50], 16, "medium", np.random.default_rng(0)), "square"),
    (lambda p, f: ood.degrade(f, 16.0, "medium", np.random.default_rng(0)), "lq_side"),
    (lambda p, f: ood.degrade(f, 16, "medium", 42), "Generator"),
    (lambda p, f: ood.degrade(f, 16, "medium", np.random.default_rng(0), gray="yes"), "gray"),
    (lambda p, f: ood.make_pair(p, FACE_BOX, "tight", 16, "medium", np.random.default_rng(0),
                                scale=0), "scale"),
    (lambda p, f: ood.illuminant_xy(1000), "kelvin"),
])
def test_bad_arguments_raise(photo, face, call, match):
    with pytest.raises(ValueError, match=match):
        call(photo, face)


# ----------------------------------------------------------------------------- colour metrics

def test_face_region_lab_of_a_uniform_colour_matches_cv2():
    colour = (200, 120, 60)
    img = np.full((40, 32, 3), colour, np.uint8)
    expected = cv2.cvtColor(np.array([[colour]], np.float32) / 255.0, cv2.COLOR_RGB2Lab)[0, 0]
    lab = face_region_lab(img)
    assert lab.shape == (1, 3) and lab.dtype == np.float64
    np.testing.assert_allclose(lab[0], expected, atol=1e-3)
    assert 0 <= lab[0, 0] <= 100
    batch = face_region_lab(np.stack([img, np.zeros_like(img)]))
    assert batch.shape == (2, 3)
    np.testing.assert_allclose(batch[1], 0.0, atol=1e-4)


def test_face_region_ignores_the_border():
    img = np.zeros((64, 64, 3), np.uint8)
    mask = face_region_mask(64, 64)
    img[~mask] = 255                     # hair/background changes outside the ellipse...
    np.testing.assert_allclose(face_region_lab(img)[0], 0.0, atol=1e-4)   # ...are not counted
    assert mask[int(0.55 * 64), 32] and not mask[2, 2] and not mask[32, 2]
    assert face_region_mask(1, 1).all()


def test_delta_e():
    a = np.array([[50.0, 10.0, -5.0], [70.0, 0.0, 0.0]])
    np.testing.assert_array_equal(delta_e(a, a), [0.0, 0.0])
    np.testing.assert_allclose(delta_e(a[0], a[0] + [3.0, 4.0, 0.0]), [5.0])
    assert delta_e(a, a[0]).shape == (2,)
    with pytest.raises(ValueError, match="Lab"):
        delta_e(np.zeros((2, 4)), np.zeros((2, 4)))


def test_gray_spread(face):
    assert gray_spread(ood.to_gray(face)).tolist() == [0.0]
    assert gray_spread(face)[0] > 0
    img = np.zeros((2, 4, 4, 3), np.uint8)
    img[1, 2, 3] = (10, 250, 40)
    np.testing.assert_array_equal(gray_spread(img), [0.0, 240.0])
    with pytest.raises(ValueError, match="uint8"):
        gray_spread(img.astype(np.float32))
