"""The out-of-distribution evaluation suite (issue 24): it must catch a restorer that does harm."""

import numpy as np
import pandas as pd
import pytest
import torch

from facekit import ood
from facekit.restorers import build_restorer


@pytest.fixture(scope="module")
def orl_data():
    return ood.load_ood_data(("orl",), limit=2, progress=False)


def _constant(lq, size):
    return torch.full((lq.shape[0], 3, *size), 0.5)


def test_missing_shared_source_is_skipped_with_the_reason(tmp_path, orl_data):
    data = ood.load_ood_data(("utkface", "orl"), limit=1, root=tmp_path, progress=False)
    assert "utkface" in data.skipped and "absent" in data.skipped["utkface"]
    assert len(data.probes["orl"]) == 8  # one person, photos 3-10
    assert len(orl_data.gallery["orl"][0]) == 4  # photos 1-2 of two people enrolled


def test_pairs_are_deterministic_and_landmarks_follow_the_framing(orl_data):
    faces = orl_data.probes["orl"]
    cell = ood.Cell("medium", "offcentre")
    a = ood.make_cell_pairs(faces, cell, 3, 2, seed=1)
    b = ood.make_cell_pairs(faces, cell, 3, 2, seed=1)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[2], b[2])
    assert a[0].shape == (16, 16, 16, 3) and a[1].shape == (16, 64, 64, 3)
    # clean framed faces aligned at the mapped landmarks are recognised against the gallery
    from facekit import recognition

    for framing in ("tight", "loose", "offcentre"):
        _, gt, lms, _ = ood.make_cell_pairs(faces, ood.Cell("medium", framing), 0, 2)
        emb = recognition.l2_normalize(recognition.embed(ood.identity_crops(gt, lms), "sface"))
        g_crops, g_ids = orl_data.gallery["orl"]
        g_emb = recognition.l2_normalize(recognition.embed(g_crops, "sface"))
        hits = g_ids[np.argmax(emb @ g_emb.T, axis=1)] == np.array([f.identity for f in faces], dtype=object)
        assert hits.mean() >= 0.85, framing


def test_suite_flags_a_constant_face_restorer_in_every_cell(orl_data):
    methods = {"bicubic": build_restorer("bicubic"), "constant": _constant}
    cells = ood.default_cells(quick=True)
    df = ood.evaluate_ood(methods, orl_data, cells, identity_nets=("sface",), progress=False)
    assert set(df["cell"]) == {c.name for c in cells}
    fl = ood.flags(ood.summarise(df))
    bad = fl[fl["method"] == "constant"]
    assert len(bad) == len(cells) and bad["worse"].all()
    # raw similarity alone would miss it: a featureless face has ~0.26 to anyone; the margin does not
    assert bad["id_sface_margin_worse"].all() and bad["ssim_worse"].all()
    results = {r.target.split(" ")[0].rstrip(","): r for r in ood.check_targets(df, "constant")}
    assert not results["PSNR"].passed
    assert "0/7 cells" in results["PSNR"].value
    assert not results["no"].passed and "0/8 cells" in results["no"].value  # every cell, grey included
    grey = [r for r in ood.check_targets(df, "constant") if r.target.startswith("grey")][0]
    assert grey.passed  # a constant grey face is grey; the colour-cast check below is the converse
    md = ood.markdown_gain_table(df, "constant")
    assert md.count("✗") == len(cells)


def test_targets_catch_colour_added_to_grey_faces_and_a_skin_tone_shift(orl_data):
    def tinted(lq, size):
        out = torch.nn.functional.interpolate(lq, size=size, mode="bicubic", align_corners=False)
        return (out * torch.tensor([1.1, 1.0, 0.9]).view(1, 3, 1, 1)).clamp(0, 1)

    methods = {"bicubic": build_restorer("bicubic"), "tinted": tinted}
    df = ood.evaluate_ood(methods, orl_data, [ood.Cell("medium"), ood.Cell("medium", gray=True)],
                          identity_nets=("sface",), progress=False)
    grey = [r for r in ood.check_targets(df, "tinted") if r.target.startswith("grey")][0]
    assert not grey.passed
    s = ood.summarise(df).set_index(["cell", "method"])
    assert s.loc[("medium", "tinted"), "dE"] > s.loc[("medium", "bicubic"), "dE"] + 2


def test_results_round_trip(tmp_path, orl_data):
    methods = {"bicubic": build_restorer("bicubic"), "constant": _constant}
    df = ood.evaluate_ood(methods, orl_data, [ood.Cell("medium")], identity_nets=("sface",), progress=False)
    paths = ood.save_results(df, tmp_path / "run", ["constant"])
    back = ood.load_results(tmp_path / "run")
    assert len(back) == len(df)
    assert np.allclose(back["psnr"], df["psnr"])
    import json

    doc = json.loads(paths["json"].read_text())
    assert doc["targets"]["constant"][0]["passed"] is False


def test_bad_names_and_sources_are_refused():
    from facekit.errors import ConfigError

    with pytest.raises(ConfigError, match="single folder name"):
        ood.run_dir("../x")
    for bad in ("a b", "x\x00", "n" * 300, ".."):  # the settings layer's rule, as for every run name
        with pytest.raises(ConfigError):
            ood.run_dir(bad)
    with pytest.raises(ConfigError, match="valid"):
        ood.load_ood_data(("lfw",))


def test_embedding_cache_returns_what_a_fresh_run_computes(tmp_path, orl_data):
    methods = {"bicubic": build_restorer("bicubic"), "constant": _constant}
    cells = [ood.Cell("medium"), ood.Cell("low", gray=True)]
    fresh = ood.evaluate_ood(methods, orl_data, cells, identity_nets=("sface",), progress=False)
    first = ood.evaluate_ood(methods, orl_data, cells, identity_nets=("sface",), progress=False, cache_dir=tmp_path)
    again = ood.evaluate_ood(methods, orl_data, cells, identity_nets=("sface",), progress=False, cache_dir=tmp_path)
    assert first.attrs["embeddings_computed"] > 0  # (a constant face's crops repeat across cells: hits)
    # the second run embeds nothing; gallery, clean faces and both methods come from the cache
    assert again.attrs["embeddings_computed"] == 0
    assert again.attrs["embeddings_cached"] == first.attrs["embeddings_computed"] + first.attrs["embeddings_cached"]
    cols = ["id_sface", "id_sface_margin", "rank1_hit"]
    pd_testing = pytest.importorskip("pandas.testing")
    pd_testing.assert_frame_equal(fresh[cols], again[cols])
    # a changed method output is a cache miss, never a stale hit
    methods["constant"] = lambda lq, size: torch.full((lq.shape[0], 3, *size), 0.4)
    changed = ood.evaluate_ood(methods, orl_data, cells, identity_nets=("sface",), progress=False, cache_dir=tmp_path)
    assert changed.attrs["embeddings_computed"] >= 1
    assert not np.allclose(changed.loc[changed["method"] == "constant", "id_sface"],
                           again.loc[again["method"] == "constant", "id_sface"])
    # a damaged entry is recomputed
    for f in tmp_path.glob("*.npy"):
        f.write_bytes(b"junk")
    redone = ood.evaluate_ood(methods, orl_data, cells, identity_nets=("sface",), progress=False, cache_dir=tmp_path)
    assert redone.attrs["embeddings_computed"] == first.attrs["embeddings_computed"]  # as with an empty cache


def test_a_loss_outside_the_16px_target_cells_still_fails_the_no_harm_target(orl_data):
    bicubic = build_restorer("bicubic")

    def worse_on_big_faces(lq, size):  # bicubic, except that 24 px inputs come back featureless
        return _constant(lq, size) if lq.shape[-1] == 24 else bicubic(lq, size)

    cells = [ood.Cell("medium"), ood.Cell("medium", size=24)]
    df = ood.evaluate_ood({"bicubic": bicubic, "big": worse_on_big_faces}, orl_data, cells,
                          identity_nets=("sface",), progress=False)
    results = {r.target.split(":")[0]: r for r in ood.check_targets(df, "big")}
    assert results["PSNR, SSIM and SFace margin above bicubic in every source x lighting/framing cell"].passed
    assert not results["no cell below bicubic"].passed and "medium/24px" in results["no cell below bicubic"].value


def test_rank1_ratio_interval_covers_the_ratio_and_narrows_with_more_probes():
    def rows(n, hits_method, hits_base):
        faces = [f"p{i}" for i in range(n)]
        return pd.DataFrame({"face": faces * 2, "method": ["m"] * n + ["bicubic"] * n,
                             "rank1_hit": np.r_[hits_method, hits_base].astype(float)})

    rng = np.random.default_rng(0)
    small = rows(200, rng.random(200) < 0.15, rng.random(200) < 0.10)
    big = rows(2000, rng.random(2000) < 0.15, rng.random(2000) < 0.10)
    for table in (small, big):
        lo, hi, n = ood.rank1_ratio_ci(table, "m")
        h = table.groupby("method")["rank1_hit"].mean()
        assert lo < h["m"] / h["bicubic"] < hi and n == len(table) // 2
    width = lambda t: np.subtract(*ood.rank1_ratio_ci(t, "m")[1::-1])  # noqa: E731
    assert width(big) < 0.5 * width(small)
    # a baseline that never hits has no ratio to bound
    lo, hi, _ = ood.rank1_ratio_ci(rows(50, np.ones(50), np.zeros(50)), "m")
    assert np.isnan(lo) and np.isnan(hi)


def _rank1_rows(hits: dict, faces: int = 100) -> pd.DataFrame:
    """Rows of one source: ``hits[(draw, method)]`` = hit rate, the first faces hitting."""
    rows = []
    for (draw, method), rate in hits.items():
        for i in range(faces):
            rows.append({"source": "orl", "draw": draw, "face": f"f{i}", "method": method,
                         "rank1_hit": float(i < round(rate * faces))})
    return pd.DataFrame(rows)


def test_rank1_targets_pool_the_draws_and_the_interval_resamples_faces():
    # one draw at 1.0x and one at 3.0x bicubic: pooled 2.0x passes, and the card says each draw's ratio
    rows = _rank1_rows({(0, "m"): 0.1, (0, "bicubic"): 0.1, (1, "m"): 0.3, (1, "bicubic"): 0.1})
    (t,) = ood.rank1_targets(rows, "m")
    assert t.passed and t.target == "rank-1 orl medium >= 1.5x bicubic"
    assert t.value.startswith("0.200 vs 0.100 (2.00x;") and "over 200 probes in 2 degradation draws; per draw 1.00, 3.00" in t.value
    (t,) = ood.rank1_targets(rows[rows["draw"] == 0], "m")
    assert not t.passed and "draws" not in t.value
    # the same faces drawn ten times over with identical hits carry no more evidence than one draw:
    # the interval resamples faces, so it does not narrow (probes pairs of the same face are not independent)
    rng = np.random.default_rng(1)
    one = pd.DataFrame({"face": [f"f{i}" for i in range(300)] * 2, "method": ["m"] * 300 + ["bicubic"] * 300,
                        "rank1_hit": np.r_[rng.random(300) < 0.2, rng.random(300) < 0.1].astype(float), "draw": 0})
    ten = pd.concat([one.assign(draw=d) for d in range(10)], ignore_index=True)
    lo1, hi1, n1 = ood.rank1_ratio_ci(one, "m")
    lo10, hi10, n10 = ood.rank1_ratio_ci(ten, "m")
    assert (lo1, hi1) == pytest.approx((lo10, hi10)) and n10 == 10 * n1 == 3000


def test_rank1_draws_are_other_draws_of_the_medium_cell_and_are_saved_with_the_suite(orl_data, tmp_path):
    methods = {"bicubic": build_restorer("bicubic"), "constant": _constant}
    rows = ood.rank1_draws(methods, orl_data, draws=2, progress=False, seed=3)
    assert sorted(rows["draw"].unique()) == [3, 4] and set(rows["cell"]) == {"medium"}
    assert len(rows) == 2 * 2 * len(orl_data.probes["orl"])
    # each draw is evaluate_ood's medium cell at that seed: the degradations differ between draws
    alone = ood.evaluate_ood(methods, orl_data, [ood.Cell("medium")], 4, identity_nets=("sface",), progress=False)
    four = rows[rows["draw"] == 4].drop(columns="draw").reset_index(drop=True)
    pd.testing.assert_frame_equal(four, alone, check_dtype=False)
    bic = rows[rows["method"] == "bicubic"].pivot_table(index="face", columns="draw", values="psnr")
    assert (bic[3] != bic[4]).all()
    # the targets are judged on the draws, not on the suite's one draw
    suite = ood.evaluate_ood(methods, orl_data, [ood.Cell("medium")], 0, identity_nets=("sface",), progress=False)
    with_draws = {t.target: t for t in ood.check_targets(suite, "constant", rank1_rows=rows)}
    assert "in 2 degradation draws" in with_draws["rank-1 orl medium >= 1.5x bicubic"].value
    assert "draws" not in {t.target: t for t in ood.check_targets(suite, "constant")}["rank-1 orl medium >= 1.5x bicubic"].value
    # saved beside the suite's rows, read back; a later run without draws leaves no stale file
    ood.save_results(suite, tmp_path, ["constant"], rank1_rows=rows)
    back = ood.load_rank1_rows(tmp_path)
    pd.testing.assert_frame_equal(back, rows, check_dtype=False)
    ood.save_results(suite, tmp_path, ["constant"])
    assert ood.load_rank1_rows(tmp_path) is None
    # sources without a gallery give no rows; no draws is a clear error
    assert ood.rank1_draws(methods, ood.OODData({"orl": orl_data.probes["orl"]}), 2, progress=False).empty
    with pytest.raises(ood.ConfigError, match="at least 1"):
        ood.rank1_draws(methods, orl_data, draws=0, progress=False)
