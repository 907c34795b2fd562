"""The model card (TRAINING.md): rendered from facekit/templates, naming the data the run used."""

import re
import shutil
from importlib import resources

import pytest
import yaml

from facekit import release
from facekit.errors import ConfigError
from facekit.settings import PROJECT_ROOT
from facekit.train import TrainConfig

TEMPLATES = [t for t in resources.files("facekit").joinpath("templates").iterdir() if t.name.endswith(".md")]
PLACEHOLDER = re.compile(r"\$(\w+|\{\w+\})")


def test_an_orl_run_is_carded_as_orl_not_celeba():
    text = release._data_lines(TrainConfig(data="orl", preset="cctv-heavy", scale=4))
    assert text.startswith("Trained on `orl`: ORL / AT&T Laboratories Cambridge faces")
    assert "CelebA" not in text and "UTKFace" not in text
    assert "all five lighting conditions, random head pose." in text


def test_every_source_the_config_trained_on_gets_its_note():
    cfg = TrainConfig(data="utkface:u", mix_data="celeba:c", sources=[{"data": "orl", "share": 0.1}])
    text = release._data_lines(cfg)
    assert text.startswith("Trained on `utkface:u`, `orl`: CelebA (Liu et al.")  # mix_data: its own sentence
    # the CelebA note is built from facekit.data's split ranges
    assert "images 1-9,000 train, 9,001-9,900 validation, 9,901-10,000 never seen in training" in text
    assert "ORL / AT&T" in text and "UTKFace's train split" in text and "Non-commercial" in text
    # a folder of one's own photos is named, with no citation or licence claimed for it
    own = release._data_lines(TrainConfig(data="folder:photos", conditions=["low", "warm"], angles=False))
    assert own.startswith("Trained on `folder:photos`. Pairs") and "Non-commercial" not in own
    assert "lighting `low`, `warm`, no head pose." in own  # the run's conditions, not always all five


def test_a_fine_tune_inherits_its_parents_data():
    parent = TrainConfig(name="base", data="celeba:c")
    child = TrainConfig(name="ft", data="orl", init_from="data/runs/base")
    text = release._data_lines(child, [parent])
    assert text.startswith("Trained on `orl` (and, through the runs it was fine-tuned from, `celeba:c`): CelebA")
    assert "ORL / AT&T" in text


def test_every_template_placeholder_is_filled_and_a_missing_one_is_named():
    assert {t.name for t in TEMPLATES} >= {"model_card.md", "model_card_ood.md", "model_card_headroom.md",
                                           "model_card_probes.md"}
    for t in TEMPLATES:
        names = {m.strip("{}") for m in PLACEHOLDER.findall(t.read_text(encoding="utf-8"))}
        assert names, t.name
        text = release.render_card_template(t.name, **{n: f"<{n}>" for n in names})
        assert not PLACEHOLDER.search(text), t.name
        assert "\n\n\n" not in text
        with pytest.raises(ConfigError, match=rf"{t.name}: no value for the placeholder \$"):
            release.render_card_template(t.name, **{n: "" for n in sorted(names)[1:]})


def test_an_empty_section_leaves_no_gap():
    ood = resources.files("facekit").joinpath("templates").joinpath("model_card_ood.md").read_text(encoding="utf-8")
    text = release.render_card_template("model_card_ood.md", **{m.strip("{}"): "" for m in PLACEHOLDER.findall(ood)})
    # no previous default, waiver or colour table: the section ends at the targets line, one blank line apart
    assert "\n\n\n" not in text and text.endswith("Targets (issue 24): ****")


def test_the_released_default_card_re_renders_from_the_template(tmp_path, monkeypatch):
    """The committed card is what the template renders from the folder's saved numbers."""
    from facekit import chain

    src = PROJECT_ROOT / "models" / "default"
    if not (src / "report.json").is_file():
        pytest.skip("no released default model in this checkout")
    folder = tmp_path / "models" / "default"
    folder.mkdir(parents=True)
    for f in ["report.json", "test_metrics.csv", "config.yaml", *[p.name for p in src.glob("init-*.yaml")]]:
        shutil.copyfile(src / f, folder / f)
    monkeypatch.setattr(release, "PROJECT_ROOT", tmp_path)  # the card names its folder relative to the project
    monkeypatch.setattr(chain, "default_model_dir", lambda: folder)
    card = release.rewrite_card(folder).read_text()
    committed = (src / "TRAINING.md").read_text()
    # the one correction: the gallery probes are degraded with the test preset (cctv-heavy for a
    # "random"-preset run), which the card before the template named as the training preset
    assert card == committed.replace("degraded with `random` x4", "degraded with `cctv-heavy` x4")
    assert not PLACEHOLDER.search(card)
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    assert f"Trained on `{cfg['data']}`" in card and "UTKFace's train split" in card  # celeba + utkface + orl
