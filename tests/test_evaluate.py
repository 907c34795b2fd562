"""Evaluation: paired degradations, factor columns, bootstrap summaries, identification, files."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from facekit import augment, degrade
from facekit import evaluate as ev
from facekit import restorers
from facekit.errors import ConfigError


@pytest.fixture(scope="module")
def orl(tmp_path_factory):
    from facekit.data import load_faces

    return load_faces("orl", size=64, progress=False, cache_root=tmp_path_factory.mktemp("orl"))


def _needs(module: str):
    return pytest.importorskip(f"facekit.{module}", reason=f"facekit.{module} is not in this tree yet")


# --- metrics on evaluate's path ---------------------------------------------------------------


def test_psnr_of_known_noise_and_ssim_of_identical_through_scorers():
    _needs("metrics")
    gt = torch.full((4, 3, 64, 64), 0.5)
    noise = torch.randn(gt.shape, generator=torch.Generator().manual_seed(0))
    out = gt + 0.05 * noise  # stays inside [0,1] (|0.05 z| < 0.5 for |z| < 10)
    scores, _ = ev.Scorers(lpips=False, identity=False).score(out, gt)
    expected = 10 * np.log10(1.0 / (0.05 * noise).pow(2).mean((1, 2, 3)).numpy())
    assert scores["psnr"] == pytest.approx(expected, abs=1e-3)
    assert scores["psnr"].mean() == pytest.approx(26.02, abs=0.1)  # 20 log10(1/0.05)
    same, _ = ev.Scorers(lpips=False, identity=False).score(gt, gt)
    assert same["ssim"] == pytest.approx(np.ones(4), abs=1e-6)


# --- bootstrap ----------------------------------------------------------------------------------


def test_bootstrap_ci_contains_mean_and_narrows_with_more_samples():
    rng = np.random.default_rng(0)
    small = rng.normal(20.0, 3.0, 20)
    large = rng.normal(20.0, 3.0, 2000)
    m, lo, hi = ev.bootstrap_ci(small, n_boot=2000, seed=1)
    assert lo < m < hi and m == pytest.approx(small.mean())
    m2, lo2, hi2 = ev.bootstrap_ci(large, n_boot=2000, seed=1)
    assert lo2 < m2 < hi2
    assert (hi2 - lo2) < 0.25 * (hi - lo)  # ~sqrt(100) = 10x narrower
    # the interval is about +-1.96 sigma/sqrt(n)
    assert (hi2 - lo2) == pytest.approx(2 * 1.96 * large.std() / np.sqrt(2000), rel=0.15)
    assert ev.bootstrap_ci(small, seed=1) == ev.bootstrap_ci(small, seed=1)  # seeded
    assert ev.bootstrap_ci([np.nan, 2.0]) == (2.0, 2.0, 2.0)
    assert all(np.isnan(ev.bootstrap_ci([])))


def test_summarise_groups_and_bool_metrics():
    df = pd.DataFrame({"method": ["a"] * 6 + ["b"] * 6, "condition": ["warm", "low"] * 6,
                       "psnr": np.arange(12, dtype=float), "detected": [True, False] * 6})
    s = ev.summarise(df, ["method", "condition"], n_boot=200)
    assert list(s[["method", "condition"]].itertuples(index=False, name=None)) == \
        [("a", "warm"), ("a", "low"), ("b", "warm"), ("b", "low")]
    assert s["n"].tolist() == [3, 3, 3, 3]
    assert s.loc[0, "psnr"] == pytest.approx(2.0) and s.loc[0, "detected"] == 1.0 and s.loc[1, "detected"] == 0.0
    assert {"psnr_lo", "psnr_hi", "detected_lo"} <= set(s.columns)
    with pytest.raises(ConfigError, match="not a column"):
        ev.summarise(df, ["yaw_bin"])


# --- identification scores ----------------------------------------------------------------------


def test_identification_scores_perfect_and_random():
    rng = np.random.default_rng(0)
    gallery = ev._normalise(rng.normal(size=(40, 128)))
    ids = np.array([f"p{i}" for i in range(40)], dtype=object)
    probe_ids = np.repeat(ids, 3)
    close = ev._normalise(np.repeat(gallery, 3, axis=0) + 0.05 * rng.normal(size=(120, 128)))
    res = ev.identification_scores(close, probe_ids, gallery, ids)
    assert res["rank1"] == 1.0 and res["tar_far1"] == 1.0 and res["tar_far01"] == 1.0
    assert res["n_impostor"] == 120 * 39
    noise = ev._normalise(rng.normal(size=(120, 128)))
    res = ev.identification_scores(noise, probe_ids, gallery, ids)
    assert res["rank1"] < 0.15 and res["tar_far1"] < 0.1
    few = ev.identification_scores(close[:3], probe_ids[:3], gallery[:3], ids[:3])
    assert np.isnan(few["tar_far1"]) and few["rank1"] == 1.0  # 6 impostor pairs cannot measure FAR 1%


# --- pairs and factors --------------------------------------------------------------------------


def test_pairs_share_degradations_across_conditions_and_replay(orl):
    maker = ev.PairMaker("cctv-heavy", 4, angles=True, seed=3)
    face = orl.images[5]
    by_cond = {c: maker(face, 5, c) for c in augment.CONDITIONS}
    strip = lambda p: [r for r in p["ops"] if r["op"] != "lighting"]  # noqa: E731
    ref = strip(by_cond["medium"][2])
    for c, (lq, gt, params) in by_cond.items():
        assert lq.shape == (16, 16, 3) and gt.shape == (64, 64, 3)
        assert strip(params) == ref, f"{c} drew different degradations"
        assert params["condition"] == c
        assert np.array_equal(degrade.replay(params, gt), lq)
    assert np.array_equal(by_cond["warm"][1], by_cond["low"][1])  # same pose: same gt
    f = ev.degradation_factors(by_cond["warm"][2])
    assert set(ev.FACTOR_COLUMNS) <= set(f)
    assert f["kelvin"] < 4000 and ev.degradation_factors(by_cond["low"][2])["exposure_stops"] < 0


def test_sweep_pairs_blur_at_full_resolution_then_downsample(orl):
    """A spec without a lighting op gets the light first and blurs the full-size face (as Pipeline does)."""
    ops, _ = ev.SWEEPS["blur"][1](0.1)
    lq, gt, params = ev.PairMaker(ops, 4, angles=False, seed=0)(orl.images[0], 0, "medium")
    assert lq.shape == (16, 16, 3) and gt.shape == (64, 64, 3)
    assert [r["op"] for r in params["ops"]] == ["lighting", "motion_blur", "downsample"]
    assert ev.degradation_factors(params)["blur_length_px"] == round(0.1 * 64)
    assert np.array_equal(degrade.replay(params, gt), lq)


def test_degradation_factors_from_recorded_params():
    params = {"scale": 4, "shape": [64, 64], "condition": "warm", "ops": [
        {"op": "pose", "roll": 12.0, "yaw": -25.0, "pitch": 3.0, "flip": True},
        {"op": "occlusion", "kind": "eyes", "cx": 0.5, "cy": 0.4, "w": 0.7, "h": 0.15, "angle": 0.0, "color": [0, 0, 0]},
        {"op": "motion_blur", "length_px": 7, "exposure": 1.0, "trajectory": 2},
        {"op": "downsample", "scale": 4, "method": "area"},
        {"op": "lighting", "condition": "warm", "kelvin": 3000.0, "exposure_stops": 0.0, "gamma": 1.0},
        {"op": "gaussian_noise", "sigma": 0.03, "color": True, "seed": 1},
        {"op": "poisson_noise", "photons": 200.0, "color": True, "seed": 2},
        {"op": "jpeg", "quality": 30}]}
    f = ev.degradation_factors(params)
    assert f["scale"] == 4 and f["blur"] == "motion" and f["blur_length_px"] == 7
    assert f["noise_sigma"] == pytest.approx(np.sqrt(0.03 ** 2 + 0.5 / 200))
    assert f["jpeg_quality"] == 30 and f["occlusion"] == "eyes"
    assert (f["yaw"], f["roll"], f["flip"], f["kelvin"]) == (-25.0, 12.0, True, 3000.0)
    binned = ev.severity_levels(pd.DataFrame([f]))
    assert binned.loc[0, ["blur_level", "noise_level", "jpeg_level", "yaw_bin", "roll_bin"]].tolist() == \
        ["4-8px", ">=0.04", "q<35", "20-30", "10-20"]


def test_bad_arguments_are_clear(orl):
    m = {"bicubic": restorers.build_restorer("bicubic")}
    with pytest.raises(ConfigError, match="unknown lighting condition 'dusk'"):
        ev.evaluate(orl.images[:2], m, ev.EvalConfig(conditions=("dusk",)), progress=False)
    with pytest.raises(ConfigError, match="unknown severity sweep 'fog'; valid: scale, blur, noise, jpeg"):
        ev.evaluate(orl.images[:2], m, ev.EvalConfig(conditions=("warm",), severities=["fog"]), progress=False)
    with pytest.raises(ConfigError, match="at least one method"):
        ev.evaluate(orl.images[:2], {}, progress=False)
    with pytest.raises(TypeError, match="EvalConfig"):  # the settings are one EvalConfig, not loose arguments
        ev.evaluate(orl.images[:2], m, ("warm",), progress=False)


def test_eval_config_normalises_its_fields_and_records_the_device():
    cfg = ev.EvalConfig(conditions="low", preset=[], scale="2", severities=["noise"], identity_nets="dlib")
    assert cfg.conditions == ("low",) and cfg.preset == [] and cfg.scale == 2 and cfg.identity_nets == ["dlib"]
    assert cfg.severities == {"noise": ev.SWEEPS["noise"][0]}
    assert ev.EvalConfig(severities=[]).severities is None
    assert ev.EvalConfig() == ev.EvalConfig(identity_nets=("sface",))
    rec = cfg.record("cpu")
    assert list(rec) == ["conditions", "preset", "scale", "seed", "sample_size", "angles", "severities", "batch",
                         "device", "lpips", "identity", "identity_nets"]
    assert rec["conditions"] == ["low"] and rec["device"] == "cpu"
    assert rec["severities"] == {"noise": [0.01, 0.03, 0.06]}


# --- end to end ---------------------------------------------------------------------------------


def test_small_orl_evaluation_writes_columns_and_files(orl, tmp_path):
    _needs("metrics")
    test = orl.subset("test")
    methods, _ = restorers.build_restorers("bicubic,classical")
    df = ev.evaluate(test, methods, ev.EvalConfig(conditions=("warm", "low"), sample_size=8, seed=0,
                                                  severities={"noise": [0.02, 0.06]}, identity=False), progress=False)
    main = df[df["sweep"] == ""]
    assert len(main) == 8 * 2 * 2 and len(df) == len(main) + 8 * 2 * 2
    expected = {"image", "identity", "method", "condition", "sweep", "severity", "psnr", "ssim",
                "seconds_per_face", "blur_level", "noise_level", "jpeg_level", "yaw_bin", "roll_bin",
                *ev.FACTOR_COLUMNS}
    assert expected <= set(df.columns)
    assert main.groupby(["method", "condition"]).size().eq(8).all()
    # the paired design: both methods saw the same 8 faces with the same factors
    a = main[main["method"] == "bicubic"].reset_index(drop=True)
    b = main[main["method"] == "classical"].reset_index(drop=True)
    assert a[["image", "condition", "noise_sigma", "yaw"]].equals(b[["image", "condition", "noise_sigma", "yaw"]])
    low = main[main["condition"] == "low"].groupby("method")["psnr"].mean()
    assert low["classical"] > low["bicubic"] + 3  # auto exposure recovers the dark frames
    # the sweep: more noise, lower PSNR
    sw = df[df["sweep"] == "noise"].groupby("severity")["psnr"].mean()
    assert sw[0.02] > sw[0.06]

    paths = ev.save_results(df, tmp_path / "run")
    assert paths["csv"].name == "metrics.csv" and paths["json"].name == "metrics.json"
    rows, info = ev.load_results(tmp_path / "run")
    assert len(rows) == len(df) and set(df.columns) <= set(rows.columns)
    assert np.allclose(rows["psnr"], df["psnr"])
    cond = info["summary"]["condition"].set_index(["method", "condition"])
    assert cond.at[("classical", "low"), "psnr"] == pytest.approx(low["classical"], abs=1e-5)
    assert info["config"]["sample_size"] == 8 and info["config"]["conditions"] == ["warm", "low"]
    assert json.loads(paths["json"].read_text())["n_rows"] == len(df)
    assert {"condition", "yaw", "occlusion", "noise", "sweep"} <= set(info["summary"])


def test_identification_high_for_clean_probes_and_drops_when_degraded(orl):
    _needs("metrics")
    _needs("recognition")
    test = orl.subset("test")
    keep = lambda lq: lq  # noqa: E731  (scale 1, no degradation: the probe is the clean face)
    clean = ev.evaluate(test, {"as-is": keep}, ev.EvalConfig(conditions=("medium",), preset=[], scale=1, angles=False,
                                                             lpips=False, sample_size=20), gallery=orl, progress=False)
    idc = ev.identification(clean)
    if idc.empty:
        pytest.skip(f"identification not available: {clean.attrs['missing'].get('rank1_hit')}")
    heavy = ev.evaluate(test, {"bicubic": restorers.build_restorer("bicubic", 8)},
                        ev.EvalConfig(conditions=("low",), preset="cctv-heavy", scale=8, lpips=False, sample_size=20),
                        gallery=orl, progress=False)
    idh = ev.identification(heavy)
    assert idc.loc[0, "n_gallery"] == len(set(orl.identity))
    assert idc.loc[0, "rank1"] >= 0.9
    assert idh.loc[0, "rank1"] < idc.loc[0, "rank1"] - 0.2
    # the per-row hits agree with the table
    hits = clean["rank1_hit"].dropna().astype(float)
    assert hits.mean() == pytest.approx(idc.loc[0, "rank1"])
    assert clean["id_sface"].to_numpy() == pytest.approx(1.0, abs=1e-4)  # restored == clean face
    assert heavy["id_sface"].mean() < 0.5
    assert clean["detected"].all() and heavy["lq_detected"].mean() < clean["lq_detected"].mean()


def test_metrics_json_holds_input_and_output_detectability(orl, tmp_path):
    """lq_detected (YuNet on the degraded inputs) is a summarised metric beside detected (outputs)."""
    _needs("metrics")
    _needs("recognition")
    assert "lq_detected" in ev.METRICS and "lq_detected" not in ev.LOWER_IS_BETTER
    methods, _ = restorers.build_restorers("bicubic,classical")
    config = ev.EvalConfig(conditions=("low", "bright"), sample_size=6, seed=0, lpips=False, identity=True,
                           severities={"noise": [0.06]})
    df = ev.evaluate(orl.subset("test"), methods, config, progress=False)
    if "lq_detected" not in df.columns:
        pytest.skip(f"YuNet detection not available: {df.attrs['missing'].get('detected')}")
    paths = ev.save_results(df, tmp_path / "run", n_boot=200)
    summary = json.loads(paths["json"].read_text())["summary"]
    for name in ("overall", "condition", "sweep"):
        for rec in summary[name]:
            assert {"lq_detected", "lq_detected_lo", "lq_detected_hi", "detected"} <= set(rec), name
            assert 0.0 <= rec["lq_detected_lo"] <= rec["lq_detected"] <= rec["lq_detected_hi"] <= 1.0
    main = df[df["sweep"] == ""]
    overall = {r["method"]: r for r in summary["overall"]}
    for method, grp in main.groupby("method"):
        assert overall[method]["lq_detected"] == pytest.approx(grp["lq_detected"].mean(), abs=1e-6)
        assert overall[method]["detected"] == pytest.approx(grp["detected"].mean(), abs=1e-6)
    # the inputs are the same for every method: one input detectability
    assert overall["bicubic"]["lq_detected"] == overall["classical"]["lq_detected"]

    _, info = ev.load_results(tmp_path / "run")
    det = ev.detectability(info["summary"]["condition"])
    assert det["method"].tolist()[:2] == [ev.INPUT_LABEL] * 2  # the inputs first, then the summary's rows
    assert det["method"].value_counts().to_dict() == {ev.INPUT_LABEL: 2, "bicubic": 2, "classical": 2}
    assert list(det.columns) == ["method", "condition", "n", "detected", "detected_lo", "detected_hi"]
    low_in = det[(det["method"] == ev.INPUT_LABEL) & (det["condition"] == "low")]["detected"].item()
    low_rows = main[main["condition"] == "low"]
    assert low_in == pytest.approx(low_rows.groupby("image")["lq_detected"].first().mean(), abs=1e-6)
    table = ev.ci_table(det, "condition", "detected", 3)
    assert list(table.columns) == [ev.INPUT_LABEL, "bicubic", "classical"] and list(table.index) == ["low", "bright"]
    assert ev.detectability(info["summary"]["overall"])["method"].tolist() == [ev.INPUT_LABEL, "bicubic", "classical"]
    with pytest.raises(ConfigError, match="lq_detected"):
        ev.detectability(info["summary"]["overall"].drop(columns=["lq_detected"]))


def test_checkpoints_parameter_expands_released_models_and_training_runs(orl, tmp_path, monkeypatch):
    """Notebook 05's checkpoints: "auto" -> released_restorers() (chain:default once models/default exists),
    "run:NAME" -> DATA_DIR/runs/NAME/checkpoints/last.pt; the methods evaluate end to end."""
    _needs("metrics")
    chain = pytest.importorskip("facekit.chain")
    from facekit import settings
    from facekit.archs import build_model

    monkeypatch.setattr(settings, "MODELS_DIR", tmp_path / "models")
    monkeypatch.setattr(settings, "DATA_DIR", tmp_path / "data")
    assert ev.released_restorers() == [] and ev.checkpoint_methods("auto") == {}
    kwargs = {"scale": 4, "base": 8, "depth": 2}
    torch.manual_seed(0)
    chain.save_stage(tmp_path / "models" / "default" / "reconstruct.pt", "reconstruct",
                     build_model("unet", **kwargs).eval(), kwargs, arch="unet", in_size=16)
    (tmp_path / "models" / "default" / "chain.yaml").write_text("size: 16\nstages:\n  reconstruct: reconstruct.pt\n")
    last = tmp_path / "data" / "runs" / "full-03" / "checkpoints" / "last.pt"
    chain.save_stage(last, "reconstruct", build_model("unet", **kwargs).eval(), kwargs, arch="unet", in_size=16)
    assert ev.released_restorers() == ["chain:default"]
    realtime = tmp_path / "models" / "realtime"
    realtime.mkdir()
    (realtime / "chain.yaml").write_text("size: 16\nstages:\n  reconstruct: ../default/reconstruct.pt\n")
    assert ev.released_restorers() == ["chain:default", f"chain:{realtime}"]  # every released chain folder
    shutil.rmtree(realtime)
    assert ev.checkpoint_methods(["auto", "run:full-03", "x/y.pt", "chain:c@deblur"]) == {
        "chain:default": "chain:default", "run:full-03": f"model:{last}", "model:x/y.pt": "model:x/y.pt",
        "chain:c@deblur": "chain:c@deblur"}
    assert ev.checkpoint_methods([]) == {} and ev.checkpoint_methods(None) == {}
    with pytest.raises(ConfigError, match="run:NAME"):
        ev.checkpoint_methods(["run:"])

    methods, skipped = ev.build_eval_methods(["bicubic"], ["auto", "run:full-03", "run:never-trained"])
    assert list(methods) == ["bicubic", "chain:default", "run:full-03"]
    assert "never-trained" in skipped["run:never-trained"] and "not found" in skipped["run:never-trained"]
    assert str(last) in methods["run:full-03"].note
    df = ev.evaluate(orl.subset("test"), methods, ev.EvalConfig(conditions=("medium",), sample_size=3, lpips=False,
                                                                identity=False), progress=False)
    assert set(df["method"]) == set(methods) and df["psnr"].notna().all()


def test_full_profile_evaluates_every_sweep_both_identity_nets_and_the_model_03_trains():
    from facekit import runner

    full = runner.load_profile("full")
    e05 = full["05_evaluation"]
    assert e05["severities"] == list(ev.SWEEPS)
    assert e05["identity_nets"] == ["sface", "dlib"]
    labels = ev.checkpoint_methods(e05["checkpoints"])
    assert "auto" in e05["checkpoints"]  # the released models stay beside the new one
    assert f"run:{full['03_train_gan']['run_name']}" in labels
    # smoke stays at the notebook's fast defaults
    smoke = runner.load_profile("smoke")
    assert not {"severities", "identity_nets", "sample_size"} & set(smoke.get("05_evaluation", {}))
