"""One registry per degradation op: the explorer controls, the evaluation's factor columns and the
headroom table's families are derived from ``degrade.OPS``; the derived tables equal the ones
written by hand before (kept below as the expected values), and a new op shows up in all three."""

import dataclasses
import math

import numpy as np
import pytest

from facekit import augment, degrade, evaluate, explorer, release
from facekit.errors import ConfigError

C = explorer.Control


def _f(lo, hi, step, value=None, gate=False, label=""):
    return C("float", lo if value is None else value, lo, hi, step, gate=gate, label=label)


def _i(lo, hi, value=None, gate=False, label="", step=1):
    return C("int", lo if value is None else value, lo, hi, step, gate=gate, label=label)


def _c(choices, value, gate=False, label=""):
    return C("choice", value, choices=tuple(choices), gate=gate, label=label)


def _b(value=False, gate=False, label=""):
    return C("bool", value, gate=gate, label=label)


OFF = "off"
# explorer.CONTROLS as written by hand before the registry carried it.
OLD_CONTROLS = {
    "pose": {
        "roll": _f(-45.0, 45.0, 1.0, 0.0, gate=True, label="roll °"),
        "yaw": _f(-60.0, 60.0, 1.0, 0.0, gate=True, label="yaw °"),
        "pitch": _f(-40.0, 40.0, 1.0, 0.0, gate=True, label="pitch °"),
        "flip": _b(False, gate=True, label="flip"),
    },
    "occlusion": {"kind": _c((OFF, *degrade.OCCLUSION_KINDS), OFF, gate=True, label="kind")},
    "directional_light": {
        "strength": _f(0.0, 1.0, 0.05, gate=True, label="strength"),
        "azimuth": _f(0.0, 360.0, 5.0, 90.0, label="azimuth °"),
        "softness": _f(0.05, 2.0, 0.05, 0.3, label="softness"),
    },
    "motion_blur": {
        "length_frac": _f(0.0, 0.3, 0.01, gate=True, label="length"),
        "exposure": _f(0.1, 1.0, 0.1, 1.0, label="exposure"),
    },
    "linear_motion_blur": {
        "length_frac": _f(0.0, 0.3, 0.01, gate=True, label="length"),
        "angle": _i(0, 179, 0, label="angle °"),
    },
    "defocus_blur": {"radius_frac": _f(0.0, 0.1, 0.005, gate=True, label="radius")},
    "gaussian_blur": {"sigma_frac": _f(0.0, 0.05, 0.0025, gate=True, label="sigma")},
    "downsample": {
        "scale": _i(1, 8, 1, gate=True, label="factor"),
        "method": _c(tuple(degrade.DOWNSAMPLE_METHODS), "area", label="method"),
    },
    "lighting": {"condition": _c((OFF, *augment.CONDITIONS), OFF, gate=True, label="condition")},
    "low_light": {
        "level": _f(0.0, 0.5, 0.01, gate=True, label="level"),
        "gamma": _f(0.5, 2.0, 0.05, 1.0, label="gamma"),
        "black": _f(0.0, 0.1, 0.005, 0.0, label="black"),
        "photons": _f(10.0, 2000.0, 10.0, 300.0, label="photons"),
        "read_noise": _f(0.0, 0.05, 0.0025, 0.0, label="read noise"),
    },
    "poisson_noise": {
        "photons": _i(0, 2000, 0, gate=True, label="photons", step=10),
        "color": _b(True, label="colour"),
    },
    "gaussian_noise": {
        "sigma": _f(0.0, 0.2, 0.005, gate=True, label="sigma"),
        "color": _b(True, label="colour"),
    },
    "jpeg": {"quality": _i(0, 100, 0, gate=True, label="quality")},
    "video_codec": {
        "codec": _c((OFF, *degrade.VIDEO_CODECS), OFF, gate=True, label="codec"),
        "quality": _i(1, 100, 50, label="quality"),
        "motion_px": _i(0, 8, 1, label="motion px"),
    },
}
# evaluate.FACTOR_COLUMNS as written by hand (its rows put roll before yaw: see old_degradation_factors).
OLD_FACTOR_COLUMNS = ("scale", "blur", "blur_length_px", "defocus_radius_px", "gauss_sigma_px", "noise_sigma",
                      "gauss_noise_sigma", "poisson_photons", "jpeg_quality", "occlusion", "directional_light",
                      "kelvin", "exposure_stops", "yaw", "roll", "pitch", "flip")
OLD_HEADROOM_GROUPS = {
    "noise + JPEG": ("poisson_noise", "gaussian_noise", "jpeg"),
    "occlusion + directional light": ("occlusion", "directional_light"),
    "blur": ("motion_blur", "linear_motion_blur", "defocus_blur", "gaussian_blur"),
}
OLD_HEADROOM_KEEP = ("downsample", "lighting")


def old_degradation_factors(params: dict) -> dict:
    """evaluate.degradation_factors as written by hand (an if/elif over op names)."""
    out = {"scale": int(params.get("scale", 1)), "blur": "none", "blur_length_px": 0.0, "defocus_radius_px": 0.0,
           "gauss_sigma_px": 0.0, "noise_sigma": 0.0, "gauss_noise_sigma": 0.0, "poisson_photons": float("nan"),
           "jpeg_quality": float("nan"), "occlusion": "none", "directional_light": False,
           "kelvin": augment.NEUTRAL_KELVIN, "exposure_stops": 0.0}
    blurs = []
    var = 0.0
    for r in params["ops"]:
        op = r["op"]
        if op in ("motion_blur", "linear_motion_blur"):
            out["blur_length_px"] = max(out["blur_length_px"], float(r["length_px"]))
            blurs.append("motion" if op == "motion_blur" else "linear")
        elif op == "defocus_blur":
            out["defocus_radius_px"] = float(r["radius_px"])
            blurs.append("defocus")
        elif op == "gaussian_blur":
            out["gauss_sigma_px"] = float(r["sigma_px"])
            blurs.append("gaussian")
        elif op == "downsample":
            out["scale"] = int(params.get("scale", r["scale"]))
        elif op == "gaussian_noise":
            out["gauss_noise_sigma"] = float(r["sigma"])
            var += float(r["sigma"]) ** 2
        elif op == "poisson_noise":
            out["poisson_photons"] = float(r["photons"])
            var += 0.5 / float(r["photons"])
        elif op == "low_light":
            var += 0.5 / float(r["photons"]) + float(r["read_noise"]) ** 2
        elif op == "jpeg":
            out["jpeg_quality"] = float(r["quality"])
        elif op == "video_codec":
            out["jpeg_quality"] = float(r["quality"])
        elif op == "occlusion":
            out["occlusion"] = str(r["kind"])
        elif op == "directional_light":
            out["directional_light"] = True
        elif op == "lighting":
            out["kelvin"] = float(r["kelvin"])
            out["exposure_stops"] = float(r["exposure_stops"])
    out["blur"] = "+".join(blurs) if blurs else "none"
    out["noise_sigma"] = math.sqrt(var)
    out.update({k: v for k, v in degrade.pose_angles(params).items()})
    out["flip"] = bool(out["flip"])
    return out


def _same(a: dict, b: dict) -> bool:
    """Equal keys in the same order and equal values (NaN equals NaN; bit-equal floats)."""
    return list(a) == list(b) and all(
        (isinstance(a[k], float) and math.isnan(a[k]) and isinstance(b[k], float) and math.isnan(b[k]))
        or (type(a[k]) is type(b[k]) and a[k] == b[k]) for k in a)


def _recorded_params():
    """Params of every op, several times over: the presets (and one pipeline of all ops) drawn."""
    face = np.random.default_rng(0).random((32, 32, 3), dtype=np.float32)
    specs = [*degrade.PRESETS,
             [{"op": "pose"}, {"op": "occlusion"}, {"op": "directional_light"}, {"op": "motion_blur"},
              {"op": "linear_motion_blur"}, {"op": "motion_blur"}, {"op": "defocus_blur"}, {"op": "gaussian_blur"},
              {"op": "downsample"}, {"op": "lighting"}, {"op": "low_light"}, {"op": "poisson_noise"},
              {"op": "gaussian_noise"}, {"op": "jpeg"}, {"op": "video_codec"}],
             [{"op": "jpeg"}]]  # no downsample: the pipeline resizes
    out = []
    for spec in specs:
        pipe = degrade.Pipeline(spec, scale=4)
        for seed in range(6):
            out.append(pipe(face, np.random.default_rng(seed))[2])
    out.append({"ops": [{"op": "downsample", "scale": 3, "method": "area"}]})  # no recorded pipeline scale
    out.append({"ops": []})
    return out


def test_derived_tables_equal_the_hand_written_ones():
    assert explorer.CONTROLS == OLD_CONTROLS
    assert list(explorer.CONTROLS) == list(OLD_CONTROLS)  # same rows, same order
    for op, group in OLD_CONTROLS.items():
        assert list(explorer.CONTROLS[op]) == list(group), op  # same controls, same order
    assert set(evaluate.FACTOR_COLUMNS) == set(OLD_FACTOR_COLUMNS)
    assert release.HEADROOM_GROUPS == OLD_HEADROOM_GROUPS
    assert list(release.HEADROOM_GROUPS) == list(OLD_HEADROOM_GROUPS)
    assert release.HEADROOM_KEEP == OLD_HEADROOM_KEEP


def test_derived_factors_equal_the_hand_written_ones_for_every_op():
    records = _recorded_params()
    applied = {r["op"] for p in records for r in p["ops"]}
    assert applied >= set(degrade.OPS), f"ops never drawn: {set(degrade.OPS) - applied}"
    for params in records:
        new = evaluate.degradation_factors(params)
        assert _same(new, old_degradation_factors(params)), params
        assert tuple(new) == evaluate.FACTOR_COLUMNS


def _smudge(img, strength: float):
    return degrade.to_float(img) * np.float32(1.0 - strength)


SMUDGE = degrade.OpDef(
    "smudge", _smudge, {"strength": degrade.Param((0.1, 0.3), bounds=(0.0, 1.0))},
    lambda rng, cfg, shape: {"strength": degrade._draw(rng, cfg, "strength")},
    doc="test-only: a lens smudge",
    controls={"strength": degrade.Control("float", 0.0, 0.0, 1.0, 0.05, gate=True, label="strength")},
    factors=(degrade.Factor("smudge_strength", lambda r: float(r["strength"]), 0.0),
             degrade.Factor("blur", lambda r: "smudge", "none", "join")),
    headroom="lens", chain_position=55)


def test_an_op_registered_in_one_place_shows_up_everywhere(monkeypatch):
    monkeypatch.setitem(degrade.OPS, "smudge", SMUDGE)
    controls = explorer.explorer_controls()
    assert controls["smudge"] == SMUDGE.controls
    assert list(controls).index("smudge") == list(controls).index("defocus_blur") + 1  # by chain position
    columns = degrade.factor_columns()
    assert list(columns)[-1] == "smudge_strength"
    params = degrade.Pipeline([{"op": "gaussian_blur", "p": 1.0}, {"op": "smudge", "strength": 0.2}], scale=1)(
        np.full((16, 16, 3), 0.5, np.float32), np.random.default_rng(0))[2]
    factors = degrade.degradation_factors(params)
    assert factors["smudge_strength"] == 0.2 and factors["blur"] == "gaussian+smudge"
    assert release.headroom_groups()["lens"] == ("smudge",)
    assert list(release.headroom_groups())[:3] == list(OLD_HEADROOM_GROUPS)  # a new family comes last
    assert release.headroom_keep() == OLD_HEADROOM_KEEP


def test_ops_that_share_a_factor_column_must_agree_on_it():
    clash = dataclasses.replace(SMUDGE, factors=(degrade.Factor("jpeg_quality", lambda r: 1.0, 0.0),))
    with pytest.raises(ConfigError, match="feeds factor 'jpeg_quality' with default 0.0"):
        degrade.factor_columns({**degrade.OPS, "smudge": clash})
    odd = dataclasses.replace(SMUDGE, factors=(degrade.Factor("x", lambda r: 1.0, 0.0, "mean"),))
    with pytest.raises(ConfigError, match="combine rule 'mean'; valid: last, max, join, root_sum"):
        degrade.factor_columns({**degrade.OPS, "smudge": odd})


def test_explorer_positions_are_distinct():
    positions = [opdef.chain_position for opdef in degrade.OPS.values()]
    assert len(set(positions)) == len(positions)
