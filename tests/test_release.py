"""Releasing a training run: chain folder, model card and numbers measured on held-out faces."""

import json
import re
import shutil

import pandas as pd
import pytest
import torch

from facekit import checkpoint, release
from facekit.restorers import build_restorer
from facekit.errors import ConfigError, OutputError
from facekit.train import TrainConfig, train

from test_train import orl_faces, tiny_cfg


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    faces = orl_faces(40)
    return train(tiny_cfg(steps=6), faces=faces[:32], val_faces=faces[32:36], runs_dir=root, progress=False)


def test_release_writes_a_loadable_chain_and_a_card_with_measured_numbers(tiny_run, tmp_path, monkeypatch):
    from facekit import ood

    # the OOD suite on one ORL person and two cells (the whole suite is the release's, minutes long)
    monkeypatch.setattr(ood, "default_cells", lambda quick=False: [ood.Cell("medium"), ood.Cell("medium", gray=True)])
    out = tmp_path / "default"
    faces = orl_faces(40)
    test_faces, val_faces = faces[30:], faces[32:36]  # the test faces were never trained on
    report = release.release_run(tiny_run, out, compare=[tiny_run], faces=test_faces, identity_nets=("sface",),
                                 n_boot=50, progress=False, val_faces=val_faces, probe_people=4, ood_limit=1,
                                 ood_sources=("orl",), rank1_draws=3)
    for name in ("chain.yaml", "reconstruct.pt", "config.yaml", "report.json", "TRAINING.md", "curves.png",
                 "test_metrics.csv"):
        assert (out / name).is_file(), name
    # "best": the EMA or the raw weights, whichever scores higher on the validation pairs
    val = report["val"]
    assert report["weights"] == ("raw" if val["raw"]["psnr"] > val["ema"]["psnr"] else "ema")
    assert val["raw"]["psnr"] != val["ema"]["psnr"]
    # the chain folder is what restore/evaluate load as chain:DIR; it runs the chosen generator
    net, _ = checkpoint.load_generator(tiny_run / "checkpoints" / "last.pt", ema=report["weights"] == "ema")
    chain = build_restorer(f"chain:{out}", scale=4)
    lq = torch.rand(2, 3, 8, 8)
    with torch.inference_mode():
        assert torch.allclose(chain(lq, (32, 32)), net(lq).clamp(0, 1), atol=1e-5)
    with pytest.raises(ConfigError, match="weights='nope'"):
        release.export_stage(tiny_run, tmp_path / "x.pt", weights="nope")

    assert [r["condition"] for r in report["quality"]] == ["warm", "cold", "low", "medium", "bright"]
    # the card's numbers are the per-face rows' means, not retyped
    df = pd.read_csv(out / "test_metrics.csv")
    name = f"{tiny_run.name} (no id loss)"
    low = df[(df["method"] == name) & (df["condition"] == "low")]
    bic = df[(df["method"] == "bicubic") & (df["condition"] == "low")]
    row = next(r for r in report["quality"] if r["condition"] == "low")
    assert row["n"] == len(test_faces)
    assert row["psnr_model"] == pytest.approx(low["psnr"].mean(), abs=1e-3)
    assert row["psnr_gain"] == pytest.approx(low["psnr"].mean() - bic["psnr"].mean(), abs=1e-3)
    assert row["meets_target"] == (row["psnr_gain"] >= 3.0 and row["ssim_gain"] >= 0.05)
    assert json.loads((out / "report.json").read_text())["quality"] == report["quality"]
    # notebook 03 reads the table back from the report, and colours each bar by its target
    table = release.released_quality(out)
    assert table.to_dict("records") == report["quality"] and table.attrs["model"] == tiny_run.name
    fig = release.plot_quality(table)
    bars = fig.axes[0].patches
    assert [b.get_height() for b in bars] == pytest.approx(list(table["psnr_gain"]))
    assert [b.get_facecolor()[1] > 0.4 for b in bars] == list(table["psnr_gain"] >= 3.0)  # green when met
    with pytest.raises(ConfigError, match=r"nowhere.report.json: no release report here"):
        release.released_quality(tmp_path / "nowhere")
    card = (out / "TRAINING.md").read_text()
    # the card names the data the run trained on (ORL here), not always CelebA
    assert "Trained on `orl`: ORL / AT&T" in card and "CelebA" not in card and f"{row['psnr_model']:.3f}" in card
    assert not re.search(r"\$(\w|\{)", card)  # every template placeholder filled
    head = {r["variant"]: r for r in report["headroom_medium"]}
    assert head["full preset"]["psnr_bicubic"] < head["downsample only"]["psnr_bicubic"]
    assert "Where bicubic's error comes from" in card and f"{head['full preset']['psnr_model']:.2f}" in card
    # the ORL gallery check: clean probes, bicubic, the released model and the compared run
    probes = {r["method"]: r for r in report["orl_probes"]}
    assert list(probes) == ["clean", "bicubic", name]  # the compared run is the same run here
    assert {r["net"] for r in report["orl_probes"]} == {"sface"}  # one block per identity net
    assert probes["clean"]["rank1"] > probes["bicubic"]["rank1"] and probes["clean"]["people"] == 4
    assert "unseen domain: ORL gallery, 4 people" in card and f"{probes[name]['margin']:.3f}" in card
    # the out-of-distribution suite: its gain tables (cells worse than bicubic marked) and targets
    ood_report = report["ood"]
    assert ood_report["faces"]["orl"] == 8 and len(ood_report["targets"]) >= 3
    assert "Out-of-distribution suite" in card and ood_report["psnr_md"] in card
    summary = pd.read_csv(out / "ood_summary.csv")
    mine = summary[summary["method"] == "released"].set_index(["source", "cell"])
    base = summary[summary["method"] == "bicubic"].set_index(["source", "cell"])
    gain = (mine["psnr"] - base["psnr"]).loc[("orl", "medium")]
    assert f"{gain:+.2f}" in ood_report["psnr_md"]
    assert ood_report["all_passed"] == all(t["passed"] for t in ood_report["targets"])
    # the rank-1 target pools its own three draws of the medium cell
    rank1 = [t for t in ood_report["targets"] if t["target"].startswith("rank-1 ")]
    assert [t["target"] for t in rank1] == ["rank-1 orl medium >= 1.5x bicubic"] and ood_report["rank1_draws"] == 3
    assert "over 24 probes in 3 degradation draws; per draw" in rank1[0]["value"] and rank1[0]["value"] in card
    # the card can be rewritten from the saved files alone, to the same text
    (out / "TRAINING.md").write_text("stale")
    assert release.rewrite_card(out, n_boot=50) == out / "TRAINING.md"
    assert (out / "TRAINING.md").read_text() == card
    # the rank-1 targets measured again over other draws: report and card follow, nothing else moves
    others = [t for t in ood_report["targets"] if not t["target"].startswith("rank-1 ")]
    block = release.remeasure_rank1(out, draws=2, progress=False)
    again = json.loads((out / "report.json").read_text())["ood"]
    assert again == block and block["rank1_draws"] == 2
    assert [t for t in block["targets"] if not t["target"].startswith("rank-1 ")] == others
    fresh = [t for t in block["targets"] if t["target"].startswith("rank-1 ")]
    assert len(fresh) == 1 and "over 16 probes in 2 degradation draws" in fresh[0]["value"]  # orl only, as released
    assert block["targets"].index(fresh[0]) == ood_report["targets"].index(rank1[0])
    assert block["all_passed"] == all(t["passed"] for t in block["targets"])
    assert fresh[0]["value"] in (out / "TRAINING.md").read_text() and rank1[0]["value"] not in (out / "TRAINING.md").read_text()
    with pytest.raises(ConfigError, match="at least 1"):
        release.remeasure_rank1(out, draws=0, progress=False)
    (out / "test_metrics.csv").unlink()
    with pytest.raises(ConfigError, match="not a released model folder .missing test_metrics.csv"):
        release.rewrite_card(out)


def test_release_refuses_an_unfinished_run(tiny_run, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(tiny_run, partial)
    shutil.copyfile(partial / "checkpoints" / "step_000003.pt", partial / "checkpoints" / "last.pt")
    with pytest.raises(ConfigError, match="stopped at step 3 of 6"):
        release.export_stage(partial, tmp_path / "x.pt")
    with pytest.raises(ConfigError, match="no checkpoints/last.pt"):
        release.export_stage(tmp_path, tmp_path / "x.pt")


def test_headroom_table_removes_one_degradation_family_per_row():
    faces = orl_faces(12)
    bic = build_restorer("bicubic", scale=4)
    table = release.headroom_table(faces, bic, preset="cctv-heavy", scale=4)
    assert list(table["variant"]) == ["full preset", "no noise + JPEG", "no occlusion + directional light",
                                      "no blur", "downsample only"]
    # bicubic as the "model": the two columns are the same measurement
    assert table["gain"].abs().max() < 1e-4
    full = table.set_index("variant")["psnr_bicubic"]
    # the degradations cost PSNR: each removal helps, removing all helps most
    assert full["downsample only"] > full["no noise + JPEG"] > full["full preset"]
    assert full["downsample only"] == table["psnr_bicubic"].max()
    assert "jpeg" in table.set_index("variant").loc["no noise + JPEG", "removed"]
    # a preset without some family simply has no row for it
    small = release.headroom_table(faces, bic, preset=[{"op": "downsample"}, {"op": "jpeg", "quality": [20, 20]}])
    assert list(small["variant"]) == ["full preset", "no noise + JPEG", "downsample only"]


def test_a_fine_tuned_run_is_released_with_its_parents_config_and_lineage(tiny_run, tmp_path):
    faces = orl_faces(40)
    child = train(tiny_cfg(name="tiny-ft", steps=2, init_from=str(tiny_run)), faces=faces[:32],
                  val_faces=faces[32:36], runs_dir=tmp_path / "runs", progress=False)
    assert release.lineage(child) == [tiny_run, child]
    assert release._step_offsets([tiny_run, child]) == {tiny_run: 0, child: 6}  # child plots after its parent
    out = tmp_path / "default"
    report = release.release_run(child, out, faces=faces[34:38], identity_nets=("sface",), n_boot=20,
                                 progress=False, val_faces=faces[32:36], ood_suite=False)
    # the parent's config travels with the model: the card's retrain line needs it
    assert (out / f"init-{tiny_run.name}.yaml").read_text() == (tiny_run / "config.yaml").read_text()
    assert [p["run"] for p in report["lineage"]] == [tiny_run.name]
    card = (out / "TRAINING.md").read_text()
    assert f"Fine-tuned from `{tiny_run.name}`, 8 steps" in card
    # the card names its own folder (here outside the project, so its path as given)
    assert f"--config {out}/init-{tiny_run.name}.yaml && python -m facekit train --config {out}/config.yaml" in card
    assert f"restore --models {out}`" in card
    # an unreachable parent is named, not silently dropped from the record
    cfg = (child / "config.yaml").read_text().replace(str(tiny_run), str(tmp_path / "gone"))
    (child / "config.yaml").write_text(cfg)
    with pytest.raises(ConfigError, match="gone.*not a run folder"):
        release.lineage(child)


def test_a_run_fine_tuned_from_a_released_model_carries_that_models_lineage(tiny_run, tmp_path):
    import yaml

    faces = orl_faces(40)
    parent_dir = tmp_path / "parent"  # a fine-tune released: its folder holds its parent's config too
    child = train(tiny_cfg(name="tiny-ft", steps=2, init_from=str(tiny_run)), faces=faces[:32],
                  val_faces=faces[32:36], runs_dir=tmp_path / "runs", progress=False)
    release.release_run(child, parent_dir, faces=faces[34:38], identity_nets=("sface",), n_boot=20,
                        progress=False, val_faces=faces[32:36], ood_suite=False)
    stage = parent_dir / "reconstruct.pt"
    grandchild = train(tiny_cfg(name="tiny-ft2", steps=2, init_from=str(stage), mix_data="orl", mix_people=[3, 40],
                                mix_share=0.1), faces=faces[:32], val_faces=faces[32:36], runs_dir=tmp_path / "runs",
                       progress=False)
    assert release.lineage(grandchild) == [grandchild]  # no run folder above it: the released model is
    assert release.released_parent(grandchild) == parent_dir
    # the data checks see what the released model and its own parents trained on, and this run's mix
    assert len(release.training_configs(grandchild)) == 3
    with pytest.raises(ConfigError, match="ORL people 3-40"):
        release.check_probes_unseen([grandchild], 20)
    with pytest.raises(ConfigError, match=r"parent/config\.yaml: trained on ORL people 1-all"):
        release.check_probes_unseen([grandchild], 2)  # the released parent's own run read ORL itself
    out = tmp_path / "released2"
    report = release.release_run(grandchild, out, faces=faces[34:38], identity_nets=("sface",), n_boot=20,
                                 progress=False, val_faces=faces[32:36], ood_suite=False, probe_people=0)
    assert [p["run"] for p in report["lineage"]] == [tiny_run.name, "tiny-ft"]
    assert report["lineage"][-1]["released"] == {"stage_file": str(stage), "sha256": release._sha256(stage)}
    # both parents' configs travel: the released one's config.yaml under its run's name
    assert (out / f"init-{tiny_run.name}.yaml").read_text() == (tiny_run / "config.yaml").read_text()
    assert (out / "init-tiny-ft.yaml").read_text() == (child / "config.yaml").read_text()
    card = (out / "TRAINING.md").read_text()
    assert f"Fine-tuned from `{tiny_run.name}` -> `tiny-ft`, 10 steps" in card
    assert card.count("steps, 32 training faces") == 2  # the parents' lines say what each read
    read = json.loads((grandchild / "summary.json").read_text())
    assert read["mix_faces"] > 0
    assert (f"batch 4, 1 CPU thread(s), {read['train_faces']} training faces "
            f"({read['mix_faces']} of them mixed in)") in card
    assert f"sha256 {release._sha256(stage)[:16]}" in card and "--set init_from=data/runs/tiny-ft" in card
    # releasing over the very file it started from would destroy its parent: refused before any write
    before = stage.read_bytes()
    with pytest.raises(ConfigError, match="the file this release would overwrite"):
        release.release_run(grandchild, parent_dir, faces=faces[34:38], progress=False, ood_suite=False,
                            probe_people=0)
    assert stage.read_bytes() == before
    # a released folder without its report cannot say what it was
    (parent_dir / "report.json").unlink()
    with pytest.raises(ConfigError, match="needs its report.json"):
        release.release_run(grandchild, tmp_path / "released3", faces=faces[34:38], progress=False,
                            ood_suite=False, probe_people=0)
    assert yaml.safe_load((out / "config.yaml").read_text())["init_from"] == str(stage)


def test_release_refuses_an_orl_gallery_check_on_people_the_model_trained_on(tiny_run, tmp_path):
    import yaml

    run = tmp_path / "mixed"
    shutil.copytree(tiny_run, run)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**cfg, "mix_data": "orl", "mix_people": [11, 40]}))
    with pytest.raises(ConfigError, match="ORL people 11-40 .mix_data.*people 1-20.*probe_people=0"):
        release.release_run(run, tmp_path / "out", faces=orl_faces(4), progress=False, ood_suite=False)
    assert not (tmp_path / "out" / "report.json").exists()  # refused before measuring anything
    release.check_probes_unseen([run], 10)  # people 1-10 are unseen by this run
    # ORL joined through the sources list is checked the same way
    (run / "config.yaml").write_text(yaml.safe_dump({**cfg, "sources": [{"data": "orl", "share": 0.2, "people": [5, 40]}]}))
    with pytest.raises(ConfigError, match="ORL people 5-40 .sources.*people 1-20"):
        release.check_probes_unseen([run], 20)
    release.check_probes_unseen([run], 4)
    # a run that read ORL itself as its data source trained on every ORL person
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    summary = json.loads((run / "summary.json").read_text())
    release.check_probes_unseen([run], 20)  # its faces were handed to train(), not read from cfg["data"]
    (run / "summary.json").write_text(json.dumps({**summary, "data_source": "orl"}))
    with pytest.raises(ConfigError, match="ORL people 1-all .data."):
        release.check_probes_unseen([run], 1)


def test_card_names_faces_a_run_of_the_lineage_mixed_in_from_a_second_source(tmp_path):
    import yaml

    (tmp_path / "init-a.yaml").write_text(yaml.safe_dump({"mix_data": "orl", "mix_people": [21, 40], "mix_share": 0.25}))
    report = {"lineage": [{"run": "a", "config": "init-a.yaml", "summary": {"mix_faces": 160}}], "released_run": "b"}
    line = release._mix_lines(tmp_path, report, TrainConfig(mix_data=None), {})
    assert line == " `a` also trained on 160 train-split faces of `orl` (people 21-40; about 25% of its samples)."
    assert release._mix_lines(tmp_path, {"released_run": "b"}, TrainConfig(), {}) == ""


def test_gallery_check_follows_a_distilled_runs_teacher(tiny_run, tmp_path):
    import yaml

    # The teacher: a released folder whose fine-tune parent mixed in ORL people 11-40.
    folder = tmp_path / "teacher"
    folder.mkdir()
    shutil.copyfile(tiny_run / "checkpoints" / "last.pt", folder / "reconstruct.pt")
    cfg = {**yaml.safe_load((tiny_run / "config.yaml").read_text()), "data": "celeba:somewhere"}
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    (folder / "init-parent.yaml").write_text(yaml.safe_dump({**cfg, "mix_data": "orl", "mix_people": [11, 40]}))
    student = tmp_path / "student"
    shutil.copytree(tiny_run, student)
    (student / "config.yaml").write_text(yaml.safe_dump({**cfg, "distill_from": str(folder / "reconstruct.pt")}))
    wheres = [w for w, _, _ in release.training_configs(student)]
    assert wheres == [str(student), str(folder / "config.yaml"), str(folder / "init-parent.yaml")]
    with pytest.raises(ConfigError, match="init-parent.yaml: trained on ORL people 11-40"):
        release.check_probes_unseen([student], 20)
    release.check_probes_unseen([student], 10)
    # A teacher given as a run folder is followed through its own lineage.
    (student / "config.yaml").write_text(yaml.safe_dump({**cfg, "distill_from": str(tiny_run)}))
    assert [w for w, _, _ in release.training_configs(student)] == [str(student), str(tiny_run)]
    (student / "config.yaml").write_text(yaml.safe_dump({**cfg, "distill_from": str(tmp_path / "nowhere.pt")}))
    with pytest.raises(ConfigError, match="what the teacher trained on cannot be checked"):
        release.check_probes_unseen([student], 20)


def test_card_says_a_distilled_model_needs_its_teacher(tmp_path):
    teacher = tmp_path / "t.pt"
    teacher.write_bytes(b"weights")
    cfg = TrainConfig(steps=10, batch=4, threads=1, pixel_loss="l1", gan_type="hinge", gan_weight=0.0, gan_start=0,
                      gp_mode="r1", gp_weight=0.0, lazy_k=1, schedule="cosine", lr_g=1e-3,
                      distill_from=str(teacher), distill_weight=0.5)
    report = {"released_run": "s", "teacher_sha256": release._sha256(str(teacher))}
    text = " ".join(release._training_lines(report, cfg, {"seconds": 60, "steps_per_s": 1.0}, "models/realtime"))
    assert f"Distilled from the frozen teacher `{teacher}`" in text and "weight 0.5" in text
    assert "sha256 9a129038d9a00aed..." in text  # sha256(b"weights")
    assert release._sha256(str(tmp_path / "gone.pt")) is None


def test_release_refuses_to_overwrite_the_runs_own_teacher(tiny_run, tmp_path):
    import yaml

    student = tmp_path / "student"
    shutil.copytree(tiny_run, student)
    out = tmp_path / "default"
    out.mkdir()
    (out / "reconstruct.pt").write_bytes(b"teacher")
    cfg = yaml.safe_load((tiny_run / "config.yaml").read_text())
    (student / "config.yaml").write_text(yaml.safe_dump({**cfg, "distill_from": str(out / "reconstruct.pt")}))
    with pytest.raises(ConfigError, match="teacher .* is the file this release would overwrite"):
        release.release_run(student, out, faces=orl_faces(4), progress=False, probe_people=0, ood_suite=False)
    assert (out / "reconstruct.pt").read_bytes() == b"teacher"


def _fake_ood(passed: bool, rank1_passed: bool = True):
    def section(out_dir, run_dir, limit, progress, sources=None, rank1_draws=10):
        targets = [{"target": "PSNR, SSIM and SFace margin above bicubic",
                    "value": "0/1 cells" if not passed else "1/1 cells", "passed": passed},
                   {"target": "rank-1 orl medium >= 1.5x bicubic", "value": "0.4 vs 0.3", "passed": rank1_passed}]
        return {"faces": {"orl": 8}, "skipped": {}, "limit": limit, "cells": ["medium"], "psnr_md": "| t |",
                "margin_md": "| t |", "sface_md": "| t |", "previous_psnr_md": None, "targets": targets,
                "all_passed": passed and rank1_passed, "colour_medium": []}
    return section


def test_release_makes_a_model_the_default_only_when_every_ood_target_passes(tiny_run, tmp_path, monkeypatch):
    from facekit import chain

    models = tmp_path / "models"
    default = models / "default"
    default.mkdir(parents=True)
    (default / "chain.yaml").write_text("size: 8\nstages:\n  reconstruct: reconstruct.pt\n")
    (default / "report.json").write_text(json.dumps({"released_run": "older"}))
    monkeypatch.setattr(chain, "default_model_dir", lambda: default)
    faces = orl_faces(40)
    kw = dict(faces=faces[30:], identity_nets=("sface",), n_boot=20, progress=False, val_faces=faces[32:36],
              probe_people=0)
    with pytest.raises(ConfigError, match="whole out-of-distribution suite"):
        release.release_run(tiny_run, default, ood_limit=2, **kw)
    monkeypatch.setattr(release, "_ood_section", _fake_ood(False))
    with pytest.raises(ConfigError, match=r"not made the default: PSNR, SSIM and SFace margin above bicubic \(0/1"):
        release.release_run(tiny_run, default, **kw)
    with pytest.raises(ConfigError, match="no-harm targets cannot be waived"):  # doing harm is never waived
        release.release_run(tiny_run, default, accept_failing="because", **kw)
    assert (default / "report.json").read_text() == json.dumps({"released_run": "older"})  # untouched
    candidate = models / f"candidate-{tiny_run.name}"
    assert "NOT all met" in (candidate / "TRAINING.md").read_text()
    monkeypatch.setattr(release, "_ood_section", _fake_ood(True, rank1_passed=False))
    with pytest.raises(ConfigError, match="rank-1 orl"):  # a failing gain target refuses too, unless waived
        release.release_run(tiny_run, default, **kw)
    release.release_run(tiny_run, default, accept_failing="It does less harm than the old default.", **kw)
    assert json.loads((default / "report.json").read_text())["released_run"] == tiny_run.name
    assert (models / "older" / "chain.yaml").is_file() and not candidate.exists()
    card = (default / "TRAINING.md").read_text()
    assert "--models" not in card.split("Loaded by")[1].split("\n")[0]
    assert "waived**: rank-1 orl medium" in card and "It does less harm than the old default." in card
    # measured again over more draws: a waived gain target that now passes takes the waiver with it
    from facekit import ood

    with monkeypatch.context() as m:
        m.setattr(ood, "load_ood_data", lambda *a, **k: ood.OODData())
        m.setattr(ood, "rank1_draws", lambda *a, **k: pd.DataFrame({"draw": [0, 1]}))
        m.setattr(ood, "rank1_targets", lambda rows, method: [
            ood.TargetResult("rank-1 orl medium >= 1.5x bicubic", "0.6 vs 0.3 (2.00x; 2 draws)", True)])
        block = release.remeasure_rank1(default, draws=2, progress=False)
    assert block["all_passed"] and "waived" not in block and block["targets"][1]["value"] == "0.6 vs 0.3 (2.00x; 2 draws)"
    assert "waived" not in (default / "TRAINING.md").read_text()
    # a model fine-tuned from the default's own weights: once it is the default, its config must name
    # those weights where they were kept, not the path that now holds its own
    child = train(tiny_cfg(name="tiny-child", steps=2, init_from=str(default / "reconstruct.pt")), faces=faces[:32],
                  val_faces=faces[32:36], runs_dir=tmp_path / "runs", progress=False)
    parent_sha = release._sha256(default / "reconstruct.pt")
    release.release_run(child, default, accept_failing="It identifies more people.", **kw)
    kept = models / tiny_run.name
    assert release._sha256(kept / "reconstruct.pt") == parent_sha
    assert TrainConfig.from_yaml(default / "config.yaml").init_from == str(kept / "reconstruct.pt")
    assert TrainConfig.from_yaml(child / "config.yaml").init_from == str(default / "reconstruct.pt")  # the run's own record


def test_release_refuses_an_output_folder_that_is_a_file_or_inside_the_run(tmp_path):
    # checked before the run is read at all, so a bare folder stands in for the run here
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("name: run\n")
    out = tmp_path / "out"
    out.write_text("a file")
    with pytest.raises(OutputError, match=r"out: cannot create the release folder .* is a file"):
        release.release_run(run, out, progress=False, ood_suite=False)
    assert out.read_text() == "a file"
    with pytest.raises(ConfigError, match=r"run: the release folder is the run folder; release to a folder of"):
        release.release_run(run, run, progress=False, ood_suite=False)
    for inside in (run / "checkpoints", run / "release"):
        with pytest.raises(ConfigError, match=r"the release folder is inside the run folder .*run;"):
            release.release_run(run, inside, progress=False, ood_suite=False)
    assert sorted(p.name for p in run.rglob("*")) == ["checkpoints", "config.yaml"]


def test_rewrite_card_names_a_broken_report_or_metrics_file(tmp_path):
    for name in ("report.json", "test_metrics.csv", "config.yaml"):
        (tmp_path / name).write_text("")
    good = {"released_run": "r", "step": 6, "arch": "a", "arch_kwargs": {}, "weights": "ema", "val": {},
            "model_mb": 1.0, "in_size": 8, "out_size": 32, "training": {"r": {}},
            "test": {"faces": 4, "preset": "cctv-heavy", "scale": 4, "identity_nets": []},
            "targets": {"met_in_every_condition": False}}
    cases = [("{", "", r"report.json: not valid JSON"),
             ("[1, 2]", "", r"report.json: not a release report \(a JSON list"),
             (json.dumps({**good, "test": {"faces": 4}}), "",
              r"report.json: not a release report \(no test.preset, test.scale"),
             (json.dumps(good), "garbage\n", r"test_metrics.csv: missing columns 'method', 'condition'"),
             (json.dumps(good), "", r"test_metrics.csv: not a readable CSV table")]
    for report, metrics, match in cases:
        (tmp_path / "report.json").write_text(report)
        (tmp_path / "test_metrics.csv").write_text(metrics)
        with pytest.raises(ConfigError, match=match):
            release.rewrite_card(tmp_path)


def test_remeasure_rank1_names_a_folder_it_cannot_measure(tmp_path):
    from facekit.cli import main

    with pytest.raises(ConfigError, match=r"nowhere: not a released model folder \(no report.json\)"):
        release.remeasure_rank1(tmp_path / "nowhere")
    good = {"released_run": "r", "step": 6, "arch": "a", "arch_kwargs": {}, "weights": "ema", "val": {},
            "model_mb": 1.0, "in_size": 8, "out_size": 32, "training": {"r": {}},
            "test": {"faces": 4, "preset": "cctv-heavy", "scale": 4, "identity_nets": []},
            "targets": {"met_in_every_condition": False}}
    for report, match in [("{", "report.json: not valid JSON"),
                          (json.dumps({**good, "ood": None}), "released without the out-of-distribution suite"),
                          (json.dumps({**good, "ood": {"targets": "x"}}), "released without the out-of-distribution")]:
        (tmp_path / "report.json").write_text(report)
        with pytest.raises(ConfigError, match=match):
            release.remeasure_rank1(tmp_path, progress=False)
    assert (tmp_path / "report.json").read_text() == report  # nothing rewritten
    # the command line: one line, exit 1; the two card jobs are not mixed
    assert main(["release", "--remeasure-rank1", str(tmp_path / "nowhere")]) == 1
    assert main(["release", "--remeasure-rank1", str(tmp_path), "--rewrite-card", str(tmp_path)]) == 1
