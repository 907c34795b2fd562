"""The report index built from synthetic headline files and figures (no kernel, no notebook).

A reader must understand the index in 30 seconds: a thumbnail per notebook, a unit and a
direction for every headline number, the baseline beside it, a CI where there is one, and
green/red/grey against the baseline. Everything is written under ``tmp_path``.
"""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from facekit import report  # noqa: E402
from facekit.errors import ConfigError  # noqa: E402

# 1x1 PNG
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==")


class _Rows(HTMLParser):
    """stem -> {"thumb": bool, "metrics": {name: {"class", "value", "unit", "ci", "baseline"}}, "scope"}."""

    def __init__(self):
        super().__init__()
        self.rows, self.row, self.metric, self.cell, self.in_scope = {}, None, None, None, False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and "data-stem" in a:
            self.row = self.rows[a["data-stem"]] = {"thumb": False, "metrics": {}, "scope": ""}
        elif self.row is None:
            return
        elif tag == "img" and "thumb" in a.get("class", "") and a.get("src", "").startswith("data:image/png;base64,"):
            self.row["thumb"] = True
        elif tag == "tr" and "metric" in a.get("class", ""):
            self.metric = self.row["metrics"][a["data-name"]] = {"class": a["class"]}
        elif tag == "td" and self.metric is not None:
            self.cell = a.get("class")
            self.metric[self.cell] = ""
        elif tag == "p" and a.get("class") == "scope":
            self.in_scope = True

    def handle_data(self, data):
        if self.metric is not None and self.cell:
            self.metric[self.cell] += data
        elif self.in_scope:
            self.row["scope"] += data

    def handle_endtag(self, tag):
        if tag == "td":
            self.cell = None
        elif tag == "tr" and self.metric is not None:
            self.metric = None
        elif tag == "p":
            self.in_scope = False


def parse(page: str) -> dict:
    parser = _Rows()
    parser.feed(page)
    return parser.rows


def _write(reports, stem, data, figure=True):
    (reports / "metrics").mkdir(parents=True, exist_ok=True)
    (reports / "metrics" / f"{stem}.json").write_text(json.dumps(data))
    if figure:
        (reports / "figures").mkdir(parents=True, exist_ok=True)
        (reports / "figures" / f"{stem}.png").write_bytes(PNG)
    return {"stem": stem, "status": "ok", "duration_s": 3.0, "html": f"html/{stem}.html",
            "figure": f"figures/{stem}.png" if figure else None,
            "headline": report.read_headline(stem, reports_dir=reports)}


@pytest.fixture
def index(tmp_path):
    reports = tmp_path / "reports"
    m = report.metric
    notebooks = [
        _write(reports, "03_train", {
            "val_psnr": m(27.5, "dB", "higher", baseline=25.0, baseline_name="bicubic"),
            "val_ssim": m(0.70, "0-1", "higher", baseline=0.75, baseline_name="bicubic"),
            "lpips": m(0.20, "0-1", "lower", baseline=0.30, baseline_name="bicubic"),
            "psnr_ci": m(25.3, "dB", "higher", baseline=25.0, ci=(24.8, 25.9)),
            "steps_per_s": m(3.2, "steps/s", "higher"),
            "source": "orl",
            "_scope": "30 steps: shows the loop runs, not quality."}),
        _write(reports, "04_old_format", {"chain_psnr": 21.35, "name": "x"}, figure=False),
    ]
    summary = {"profile": "smoke", "status": "ok", "reports_dir": str(reports), "notebooks": notebooks}
    return report.write_index(summary, reports)


def test_every_notebook_with_a_figure_gets_an_embedded_thumbnail(index):
    page = index.read_text()
    rows = parse(page)
    assert rows["03_train"]["thumb"] and not rows["04_old_format"]["thumb"]
    assert "no figure" in page
    # self-contained: the thumbnail is inside the file, not a link to reports/figures
    assert 'src="figures/' not in page


def test_every_headline_number_has_a_unit_and_a_direction(index):
    numbers = parse(index.read_text())["03_train"]["metrics"]
    assert set(numbers) == {"val_psnr", "val_ssim", "lpips", "psnr_ci", "steps_per_s"}
    assert all(n["unit"].strip() for n in numbers.values()), numbers
    assert numbers["val_psnr"]["better"] == "higher is better"
    assert numbers["lpips"]["better"] == "lower is better"
    assert numbers["val_psnr"]["baseline"] == "25 (bicubic)"
    assert numbers["psnr_ci"]["ci"] == "[24.8, 25.9]"


def test_colours_against_the_baseline(index):
    numbers = parse(index.read_text())["03_train"]["metrics"]
    cls = {k: v["class"].split()[-1] for k, v in numbers.items()}
    assert cls == {"val_psnr": "cmp-better", "val_ssim": "cmp-worse", "lpips": "cmp-better",
                   "psnr_ci": "cmp-same", "steps_per_s": "cmp-none"}


def test_scope_sentence_and_profile_note(index):
    page = index.read_text()
    assert parse(page)["03_train"]["scope"] == "30 steps: shows the loop runs, not quality."
    assert 'id="profile-note"' in page and "not measure the quality" in page


def test_old_headline_files_still_render(index):
    numbers = parse(index.read_text())["04_old_format"]["metrics"]
    assert numbers["chain_psnr"]["value"] == "21.35" and numbers["chain_psnr"]["class"].endswith("cmp-none")


def test_verdict_rule():
    assert report.verdict(2.0, 1.0, "higher") == "better"
    assert report.verdict(2.0, 1.0, "lower") == "worse"
    assert report.verdict(1.0, 1.0, "higher") == "same"
    assert report.verdict(2.0, 1.0, "higher", ci=(0.5, 3.0)) == "same"
    assert report.verdict(2.0, None, "higher") == "none" and report.verdict(2.0, 1.0, None) == "none"
    assert report.verdict(None, 1.0, "higher") == "none"


def test_metric_checks_its_arguments():
    assert report.metric(float("nan"), "dB", "higher", ci=(1, 2)) == {
        "value": None, "unit": "dB", "better": "higher", "ci": [1, 2]}
    with pytest.raises(ConfigError, match="unit"):
        report.metric(1.0, "")
    with pytest.raises(ConfigError, match="better"):
        report.metric(1.0, "dB", "up")
    with pytest.raises(ConfigError, match="ci"):
        report.metric(1.0, "dB", ci=(1, 2, 3))


def test_write_headline_and_save_figure_go_to_the_reports_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(report.settings, "REPORTS_DIR", tmp_path)
    path = report.write_headline("07_x", {"psnr": report.metric(20.0, "dB", "higher"), "n": 3}, scope="a test")
    assert json.loads(path.read_text()) == {
        "psnr": {"value": 20.0, "unit": "dB", "better": "higher"}, "n": 3, "_scope": "a test"}
    with pytest.raises(ConfigError, match="metric"):
        report.write_headline("07_x", {"psnr": {"val": 1}})
    fig, ax = plt.subplots(figsize=(8, 2))
    ax.plot([0, 1])
    png = report.save_figure("07_x", fig)
    plt.close(fig)
    assert png == tmp_path / "figures" / "07_x.png"
    from PIL import Image

    with Image.open(png) as image:
        assert image.width == report.THUMBNAIL_WIDTH_PX
    big = tmp_path / "big.png"
    Image.new("RGB", (1600, 400)).save(big)
    with Image.open(report.save_figure("08_y", big)) as image:
        assert image.size == (report.THUMBNAIL_WIDTH_PX, 160)


def test_headline_table_reads_the_file_back(tmp_path):
    reports = tmp_path / "reports"
    _write(reports, "03_t", {"psnr": report.metric(27.5, "dB", "higher", baseline=25.0, baseline_name="bicubic"),
                             "n": 3, "_scope": "x"}, figure=False)
    table = report.headline_table("03_t", reports_dir=reports)
    assert list(table.index) == ["psnr", "n"]
    assert table.at["psnr", "value"] == 27.5 and table.at["psnr", "unit"] == "dB"
    assert table.at["psnr", "verdict"] == "better" and table.isna().at["n", "verdict"]
    assert "ci" not in table.columns  # no entry had one
