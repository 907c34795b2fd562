"""Tests of the headless notebook runner, its HTML reports/index, profiles and notebook hygiene.

Most tests use the tiny fixture notebooks in tests/fixtures/notebooks (01_alpha draws a figure,
02_broken fails on purpose, 03_gamma writes a headline); each kernel start costs ~1-3 s, so the
two runs are module-scoped and shared. The real smoke profile over notebooks/ is ``slow``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import warnings
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest

from facekit import report, runner, settings
from facekit.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures" / "notebooks"
REAL_NOTEBOOKS = sorted(runner.NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))


class _IndexParser(HTMLParser):
    """Collects the rows of ``table#headline``: stem -> {status, link, metrics{name: text}}.

    A number is a ``tr.metric`` row of the notebook's numbers table (the text of its
    ``td.value``); a text entry is a ``span.metric`` ("<b>name</b>value").
    """

    def __init__(self):
        super().__init__()
        self.rows: dict[str, dict] = {}
        self.depth = 0  # tables open inside table#headline, itself included
        self.row = None
        self.metric = None  # (name, "span" | "tr") being read
        self.in_value = False
        self.text = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = a.get("class", "").split()
        if tag == "table" and (self.depth or (a.get("id") == "headline" and "headline" in classes)):
            self.depth += 1
        elif not self.depth:
            return
        elif tag == "tr" and "data-stem" in a:
            self.row = {"status": a["data-status"], "link": None, "metrics": {}}
            self.rows[a["data-stem"]] = self.row
        elif self.row is not None and tag == "a":
            if a.get("class") == "ipynb":
                self.row["ipynb"] = a["href"]
            elif self.row["link"] is None:  # the name's link (the thumbnail links there too)
                self.row["link"] = a["href"]
        elif self.row is not None and tag in ("span", "tr") and "metric" in classes:
            self.metric, self.text = (a["data-name"], tag), ""
        elif self.metric is not None and tag == "td" and "value" in classes:
            self.in_value = True

    def handle_data(self, data):
        if self.metric is not None and (self.metric[1] == "span" or self.in_value):
            self.text += data

    def handle_endtag(self, tag):
        if self.metric is not None and tag == "td" and self.in_value:
            self.row["metrics"][self.metric[0]] = self.text
            self.metric, self.in_value = None, False
        elif self.metric is not None and tag == "span" and self.metric[1] == "span":
            # "<b>name</b>value": the value is what follows the name
            self.row["metrics"][self.metric[0]] = self.text[len(self.metric[0]):]
            self.metric = None
        elif tag == "table" and self.depth:
            self.depth -= 1


def parse_index(path: Path) -> dict[str, dict]:
    parser = _IndexParser()
    parser.feed(path.read_text())
    return parser.rows


def assert_self_contained(html: str):
    assert not re.search(r"<script[^>]+src=", html), "report loads an external script"
    assert not re.search(r"""<link[^>]+href=["']?https?:""", html), "report loads a stylesheet"
    assert not re.search(r"""src=["']?(https?:|file:|/)""", html), "report references a file"


# --- runs on the fixture notebooks --------------------------------------------------------------


@pytest.fixture(scope="module")
def ok_run(tmp_path_factory):
    """01_alpha and 03_gamma with a profile that overrides parameters, plus --data."""
    tmp = tmp_path_factory.mktemp("ok_run")
    profile = tmp / "test_profile.yaml"
    profile.write_text(
        "common:\n  seed: 7\n  not_declared_anywhere: 1\n"
        "01_alpha:\n  value: 5\n"
        '"03":\n  n: 4\n  typo_param: 2\n'
    )
    env_before = dict(os.environ)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = runner.run_pipeline(
            profile=profile, only="01,03", data="folder:/some/faces",
            notebooks_dir=FIXTURES, reports_dir=tmp / "reports", progress=False, threads=2,
        )
    env_changed = env_before != dict(os.environ)
    return summary, [str(w.message) for w in caught if w.category is runner.RunnerWarning], env_changed


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory):
    """All three fixtures through the command line: 02_broken fails, 03_gamma is skipped."""
    from facekit.cli import main

    reports = tmp_path_factory.mktemp("failed_run") / "reports"
    # A headline left by an earlier run must not be shown beside this run's failure.
    stale = report.headline_path("02_broken", reports_dir=reports)
    stale.parent.mkdir(parents=True)
    stale.write_text('{"stale_number": 123}')
    stale_figure = report.figure_path("02_broken", reports_dir=reports)
    stale_figure.parent.mkdir(parents=True)
    stale_figure.write_bytes(b"not this run's figure")
    err = io.StringIO()  # capsys is function-scoped; this fixture is shared by the module
    with contextlib.redirect_stderr(err):
        code = main(["run", "--notebooks-dir", str(FIXTURES), "--reports-dir", str(reports),
                     "--no-progress"])
    return code, err.getvalue(), reports


def test_run_writes_one_html_per_notebook_and_an_index(ok_run):
    summary, _, _ = ok_run
    assert summary.ok and summary.exit_code == 0
    assert [r.stem for r in summary.results] == ["01_alpha", "03_gamma"]  # --only 01,03
    assert [r.status for r in summary.results] == ["ok", "ok"]
    html_dir = summary.reports_dir / "html"
    assert sorted(p.name for p in html_dir.iterdir()) == ["01_alpha.html", "03_gamma.html"]
    assert sorted(p.name for p in (summary.reports_dir / "executed").iterdir()) == [
        "01_alpha.ipynb", "03_gamma.ipynb"]
    for r in summary.results:
        assert r.duration_s is not None and 0 < r.duration_s < 120
    alpha = (html_dir / "01_alpha.html").read_text()
    # the matplotlib figure is inside the file, as a data URI
    assert re.search(r'<img[^>]+src="data:image/png;base64,[A-Za-z0-9+/]{500}', alpha)
    assert "alpha done 25" in alpha
    assert_self_contained(alpha)
    assert 'href="../index.html"' in alpha


def test_parameters_are_injected_and_data_overrides_source(ok_run):
    summary, _, _ = ok_run
    alpha, gamma = summary.results
    assert alpha.parameters == {"value": 5, "seed": 7, "source": "folder:/some/faces"}
    assert gamma.parameters == {"n": 4}  # 03_gamma declares no seed/source
    # the numbers come from the notebooks themselves, computed from the injected values
    reports = summary.reports_dir
    assert report.read_headline("01_alpha", reports_dir=reports) == {
        "value_squared": {"value": 25, "unit": "units\u00b2", "better": "higher", "baseline": 5,
                          "baseline_name": "value"},
        "source": "folder:/some/faces", "seed": {"value": 7, "unit": "seed"},
        "threads": {"value": 2, "unit": "threads"}, "_scope": "A fixture: shows that the runner works."}
    assert report.read_headline("03_gamma", reports_dir=reports) == {
        "n_times_ten": 40, "label": "g", "pi": 3.14159265}
    assert alpha.headline["value_squared"]["value"] == 25 and gamma.headline["n_times_ten"] == 40
    assert summary.data_source == "folder:/some/faces"


def test_unknown_parameters_are_ignored_with_a_warning(ok_run):
    summary, messages, _ = ok_run
    alpha, gamma = summary.results
    assert "typo_param" in gamma.ignored_parameters and "typo_param" not in gamma.parameters
    assert "not_declared_anywhere" in alpha.ignored_parameters
    assert any("03_gamma" in m and "typo_param" in m for m in messages), messages
    # common parameters are meant for "whoever declares them": no warning for those
    assert not any("not_declared_anywhere" in m for m in messages), messages


def test_kernel_environment_is_restored_and_headlines_land_in_the_reports_dir(ok_run):
    summary, _, env_changed = ok_run
    assert not env_changed
    assert (summary.reports_dir / "metrics" / "01_alpha.json").exists()
    assert settings.REPORTS_DIR != summary.reports_dir


def test_index_lists_every_notebook_with_its_headline_numbers(ok_run):
    summary, _, _ = ok_run
    index = summary.reports_dir / "index.html"
    rows = parse_index(index)
    assert list(rows) == ["01_alpha", "03_gamma"]
    for stem, row in rows.items():
        assert row.pop("ipynb") == f"executed/{stem}.ipynb"
    assert rows["01_alpha"] == {"status": "ok", "link": "html/01_alpha.html",
                                "metrics": {"value_squared": "25", "source": "folder:/some/faces",
                                            "seed": "7", "threads": "2"}}
    assert rows["03_gamma"]["metrics"] == {"n_times_ten": "40", "label": "g", "pi": "3.142"}

    for row in rows.values():
        assert (summary.reports_dir / row["link"]).is_file()
    text = index.read_text()
    assert "test_profile" in text and "folder:/some/faces" in text
    assert_self_contained(text)
    run = json.loads((summary.reports_dir / "run.json").read_text())
    assert run["status"] == "ok" and run["profile"] == "test_profile"
    assert [(n["stem"], n["status"], n["html"]) for n in run["notebooks"]] == [
        ("01_alpha", "ok", "html/01_alpha.html"), ("03_gamma", "ok", "html/03_gamma.html")]
    assert run["notebooks"][0]["headline"]["value_squared"]["value"] == 25
    # the key figure saved by 01_alpha is the index thumbnail; 03_gamma saved none
    assert [n["figure"] for n in run["notebooks"]] == ["figures/01_alpha.png", None]
    assert (summary.reports_dir / "figures" / "01_alpha.png").is_file()
    assert text.count('<img class="thumb"') == 1 and 'data:image/png;base64,' in text


def test_failing_notebook_stops_the_run_with_a_clear_message(failed_run):
    code, err, reports = failed_run
    assert code == 1
    assert "02_broken" in err and "In [3]" in err and "cell index 3" in err
    assert "ratio = 1 / divisor" in err and "ZeroDivisionError: division by zero" in err
    assert str(reports / "html" / "02_broken.html") in err
    run = json.loads((reports / "run.json").read_text())
    assert run["status"] == "failed"
    assert [(n["stem"], n["status"]) for n in run["notebooks"]] == [
        ("01_alpha", "ok"), ("02_broken", "failed"), ("03_gamma", "skipped")]
    error = run["notebooks"][1]["error"]
    assert (error["cell_index"], error["exec_count"], error["ename"]) == (3, 3, "ZeroDivisionError")
    assert "ZeroDivisionError" in run["error"]


def test_failed_notebook_still_gets_a_report_with_the_error(failed_run):
    _, _, reports = failed_run
    broken = (reports / "html" / "02_broken.html").read_text()
    assert "ZeroDivisionError" in broken and "before the failure" in broken
    assert not (reports / "html" / "03_gamma.html").exists()
    assert not (reports / "executed" / "03_gamma.ipynb").exists()
    rows = parse_index(reports / "index.html")
    assert {k: (v["status"], v["link"]) for k, v in rows.items()} == {  # no link when skipped
        "01_alpha": ("ok", "html/01_alpha.html"),
        "02_broken": ("failed", "html/02_broken.html"),
        "03_gamma": ("skipped", None),
    }
    assert rows["02_broken"]["metrics"] == {}  # the stale headline file was removed
    assert not report.figure_path("02_broken", reports_dir=reports).exists()  # and its figure
    assert "division by zero" in (reports / "index.html").read_text()


@pytest.mark.parametrize("exc", [RuntimeError("Kernel died before replying"), KeyboardInterrupt()])
def test_kernel_failures_and_interrupts_still_write_the_index(exc, tmp_path, monkeypatch):
    """No PapermillExecutionError (dead kernel, Ctrl-C): the index still says what happened."""
    import papermill

    def execute(*args, **kwargs):
        raise exc

    monkeypatch.setattr(papermill, "execute_notebook", execute)
    reports = tmp_path / "reports"
    if isinstance(exc, KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            runner.run_pipeline(notebooks_dir=FIXTURES, reports_dir=reports, progress=False)
        expected = "notebook 01_alpha interrupted (KeyboardInterrupt)"
    else:
        summary = runner.run_pipeline(notebooks_dir=FIXTURES, reports_dir=reports, progress=False)
        assert summary.exit_code == 1 and summary.failed.stem == "01_alpha"
        expected = "notebook 01_alpha failed: RuntimeError: Kernel died before replying"
    run = json.loads((reports / "run.json").read_text())
    assert run["error"] == expected
    assert [n["status"] for n in run["notebooks"]] == ["failed", "skipped", "skipped"]
    assert parse_index(reports / "index.html")["01_alpha"]["link"] is None  # nothing to show


def test_a_cell_past_the_timeout_fails_its_notebook_with_a_report(tmp_path):
    """A hung cell (a stuck read, a dead stream) ends the run with a failure, not never."""
    import time

    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("seconds = 120", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("import time\ntime.sleep(seconds)")]
    nbformat.write(nb, nbs / "01_hang.ipynb")
    profile = tmp_path / "profile.yaml"
    profile.write_text("common: {}\n")
    with pytest.raises(ConfigError, match="cell_timeout"):
        runner.run_pipeline(profile=profile, notebooks_dir=nbs, reports_dir=tmp_path / "r0", cell_timeout=0)
    t0 = time.perf_counter()
    summary = runner.run_pipeline(profile=profile, notebooks_dir=nbs, reports_dir=tmp_path / "reports",
                                  progress=False, cell_timeout=3)
    assert time.perf_counter() - t0 < 100  # the 120 s cell was cut short
    assert summary.exit_code == 1 and summary.failed.stem == "01_hang"
    assert summary.failed.error["message"] == "notebook 01_hang failed: a cell ran past the 3 s cell timeout " \
                                              "(--cell-timeout)"
    assert summary.failed.error["ename"] == "CellTimeoutError" and "time.sleep" in summary.failed.error["evalue"]
    assert json.loads((tmp_path / "reports" / "run.json").read_text())["status"] == "failed"


def test_kernels_start_without_the_plain_tcp_warning(tmp_path, capfd):
    """ipykernel 7 prints "Kernel is running over TCP without encryption" on the terminal (into
    the progress bar) unless the kernel manager provisions CurveZMQ keys (issue 20)."""
    import zmq

    config = runner._kernel_config()
    if config is None:
        pytest.skip(f"no Curve support here (zmq.has('curve') is {zmq.has('curve')}) or jupyter_client < 8.9")
    assert config.KernelManager.transport_encryption == "auto"
    summary = runner.run_pipeline(notebooks_dir=FIXTURES, only="03", reports_dir=tmp_path / "reports",
                                  progress=False)
    assert summary.ok
    err = capfd.readouterr().err  # the kernel writes to the inherited file descriptor 2
    assert "without encryption" not in err, err


# --- selection, profiles, parameters (no kernel) ------------------------------------------------


def test_discover_orders_numerically_and_ignores_other_files(tmp_path):
    for name in ["10_late.ipynb", "2_early.ipynb", "01_first.ipynb", "notes.ipynb", "03_x.txt"]:
        (tmp_path / name).write_text("{}")
    assert [p.name for p in runner.discover_notebooks(tmp_path)] == [
        "01_first.ipynb", "2_early.ipynb", "10_late.ipynb"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no numbered notebooks"):
        runner.discover_notebooks(tmp_path / "empty")
    with pytest.raises(ConfigError, match="does not exist"):
        runner.discover_notebooks(tmp_path / "missing")


def test_only_selects_by_number_or_name_and_rejects_unknown():
    paths = runner.discover_notebooks(FIXTURES)
    stems = lambda sel: [p.stem for p in runner.select_notebooks(paths, sel)]  # noqa: E731
    assert stems(None) == ["01_alpha", "02_broken", "03_gamma"]
    assert stems("03,1") == ["01_alpha", "03_gamma"]  # run order, not selector order
    assert stems(["02_broken"]) == ["02_broken"]
    assert stems("3") == ["03_gamma"]
    with pytest.raises(ConfigError, match=r"'07'.*available: 01_alpha, 02_broken, 03_gamma"):
        runner.select_notebooks(paths, "01,07")


def test_profiles_load_and_bad_ones_fail_clearly(tmp_path):
    assert set(runner.available_profiles()) >= {"smoke", "full"}
    assert runner.load_profile("smoke")["common"] == {}
    full = runner.load_profile("full")
    assert full["03_train_gan"]["steps"] > 1000
    with pytest.raises(ConfigError, match="unknown profile 'fast'.*full.*smoke"):
        runner.load_profile("fast")
    bad = tmp_path / "bad.yaml"
    bad.write_text("common: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        runner.load_profile(bad)
    bad.write_text("01_alpha: 5\n")
    with pytest.raises(ConfigError, match="section '01_alpha' must map"):
        runner.load_profile(bad)


def test_resolve_parameters_injects_only_declared_names():
    nb = FIXTURES / "01_alpha.ipynb"
    declared = runner.declared_parameters(nb)
    assert declared == {"value": "2", "source": '"orl"', "seed": "0"}
    sections = {"common": {"seed": 3, "batch": 8}, "01": {"value": 9, "steps": 4}}
    with pytest.warns(runner.RunnerWarning, match="01_alpha.*steps"):
        params, ignored = runner.resolve_parameters(sections, nb, declared, data="celeba:x")
    assert params == {"seed": 3, "value": 9, "source": "celeba:x"}
    assert sorted(ignored) == ["batch", "steps"]
    # no source parameter: --data is not injected
    gamma = FIXTURES / "03_gamma.ipynb"
    params, _ = runner.resolve_parameters({"common": {}}, gamma,
                                          runner.declared_parameters(gamma), data="celeba:x")
    assert params == {}


def test_declared_parameters_reads_every_assignment_of_the_parameters_cell(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("not_a_parameter = 1"),
        nbformat.v4.new_code_cell(
            'source = "orl"   # a | b\nscale = 4        # lq side = size / scale\n'
            "limit: int | None = None\nlo, hi = 0.1, 0.9\nif True:\n    nested = 1",
            metadata={"tags": ["parameters"]}),
    ]
    path = tmp_path / "01_p.ipynb"
    nbformat.write(nb, path)
    assert runner.declared_parameters(path) == {
        "source": '"orl"', "scale": "4", "limit": "None", "lo": "0.1, 0.9", "hi": "0.1, 0.9"}
    nb.cells[1].metadata["tags"] = []
    nbformat.write(nb, path)
    assert runner.declared_parameters(path) == {}


@pytest.mark.parametrize("profile", ["smoke", "full"])
def test_profile_parameters_are_declared_by_existing_notebooks(profile):
    """Every notebook-specific parameter of a profile exists in that notebook (if present yet)."""
    sections = runner.load_profile(profile)
    present = {p.stem: p for p in REAL_NOTEBOOKS}
    checked = 0
    for key, params in sections.items():
        if key in present:
            declared = runner.declared_parameters(present[key])
            assert set(params) <= set(declared), (key, set(params) - set(declared))
            checked += 1
    if checked == 0 and profile == "full":
        pytest.skip("none of the full profile's notebooks exist yet")


def test_read_headline_rejects_a_corrupt_file(tmp_path):
    path = report.headline_path("09_x", reports_dir=tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="09_x.json.*not valid JSON"):
        report.read_headline("09_x", reports_dir=tmp_path)
    assert report.read_headline("10_absent", reports_dir=tmp_path) == {}


def test_index_escapes_values_and_formats_numbers():
    summary = {"profile": "smoke", "status": "ok", "notebooks": [
        {"stem": "01_a", "status": "ok", "duration_s": 125.0, "html": "html/01_a.html",
         "headline": {"psnr": 27.123456, "name": "<script>x</script>", "n": 12345, "nan": None}}]}
    page = report.render_index(summary)
    assert "<script>x" not in page and "&lt;script&gt;x" in page
    assert parse_index_text(page)["01_a"]["metrics"] == {
        "psnr": "27.12", "name": "<script>x</script>", "n": "12\u2009345", "nan": "–"}
    assert "2 min 05 s" in page
    assert report.format_duration(3.04) == "3.0 s" and report.format_duration(3725) == "1 h 02 min"


def test_widget_views_show_the_outputs_they_held(tmp_path):
    """An interact explorer's default figure appears in the report instead of the widget repr."""
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
    nb = nbformat.v4.new_notebook()
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {
        "version_major": 2, "version_minor": 0, "state": {
            "box": {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_slider", "IPY_MODEL_out"]}},
            "slider": {"model_name": "FloatSliderModel", "state": {}},
            "out": {"model_name": "OutputModel", "state": {"outputs": [
                {"output_type": "display_data", "metadata": {},
                 "data": {"image/png": png, "text/plain": "<Figure>"}}]}}}}}
    view = {"model_id": "box", "version_major": 2, "version_minor": 0}
    orphan = {"model_id": "missing", "version_major": 2, "version_minor": 0}
    nb.cells = [nbformat.v4.new_code_cell("interact(...)", execution_count=1, outputs=[
        nbformat.v4.new_output("display_data", data={
            "application/vnd.jupyter.widget-view+json": view, "text/plain": "interactive(children=...)"}),
        nbformat.v4.new_output("display_data", data={
            "application/vnd.jupyter.widget-view+json": orphan, "text/plain": "orphan widget"})])]
    path = tmp_path / "01_w.ipynb"
    nbformat.write(nb, path)
    html = report.notebook_to_html(path, tmp_path / "01_w.html").read_text()
    assert f"data:image/png;base64,{png}" in html
    assert "interactive(children" not in html and "Interactive widget" in html
    assert "orphan widget" in html  # no saved outputs: the text fallback stays
    assert_self_contained(html)


def parse_index_text(text: str) -> dict:
    parser = _IndexParser()
    parser.feed(text)
    return parser.rows


# --- notebook hygiene ---------------------------------------------------------------------------


def test_hygiene_flags_outputs_parameters_and_long_cells(tmp_path):
    assert all(runner.check_notebook_hygiene(p) == [] for p in FIXTURES.glob("*.ipynb"))
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    p1 = nbformat.v4.new_code_cell("a = 1", metadata={"tags": ["parameters"]})
    p2 = nbformat.v4.new_code_cell("b = 2", metadata={"tags": ["parameters"]})
    ran = nbformat.v4.new_code_cell("print(1)", execution_count=4,
                                    outputs=[nbformat.v4.new_output("stream", text="1\n")])
    long = nbformat.v4.new_code_cell("\n".join(f"x{i} = {i}" for i in range(41)))
    nb.cells = [p1, p2, ran, long]
    path = tmp_path / "01_bad.ipynb"
    nbformat.write(nb, path)
    problems = runner.check_notebook_hygiene(path)
    assert len(problems) == 4, problems
    assert any("cell 2 has 1 output" in p for p in problems)
    assert any("cell 2 has execution count 4" in p for p in problems)
    assert any("cell 3 has 41 lines (max 40): 'x0 = 0'" in p for p in problems)
    assert any("exactly one cell tagged 'parameters', found 2 (cells 0, 1)" in p for p in problems)
    nb.cells = [nbformat.v4.new_code_cell("\n".join(["y = 1"] * 40))]
    nbformat.write(nb, path)
    assert runner.check_notebook_hygiene(path) == [
        "01_bad.ipynb: needs exactly one cell tagged 'parameters', found 0"]
    path.write_text("not a notebook")
    assert "not a readable notebook" in runner.check_notebook_hygiene(path)[0]


@pytest.mark.parametrize("path", REAL_NOTEBOOKS or [None], ids=lambda p: p.name if p else "none")
def test_committed_notebooks_are_clean(path):
    if path is None:
        pytest.skip("no notebooks in notebooks/ yet")
    assert runner.check_notebook_hygiene(path) == []


# --- the real pipeline --------------------------------------------------------------------------


@pytest.mark.slow
def test_smoke_profile_runs_every_real_notebook(tmp_path):
    if not REAL_NOTEBOOKS:
        pytest.skip(f"no NN_*.ipynb notebooks in {runner.NOTEBOOKS_DIR}")
    reports = tmp_path / "reports"
    summary = runner.run_pipeline(profile="smoke", reports_dir=reports, progress=False)
    failed = summary.failed
    assert failed is None, failed.error["message"]
    stems = [p.stem for p in REAL_NOTEBOOKS]
    assert sorted(p.stem for p in (reports / "html").glob("*.html")) == sorted(stems)
    for page in (reports / "html").glob("*.html"):
        assert_self_contained(page.read_text())
    rows = parse_index(reports / "index.html")
    assert list(rows) == stems
    assert all(row["status"] == "ok" and row["link"] == f"html/{stem}.html"
               for stem, row in rows.items())
    # every notebook publishes headline numbers, and the index shows them
    assert all(row["metrics"] for row in rows.values()), rows
    assert_index_is_readable_at_a_glance(reports)


def assert_index_is_readable_at_a_glance(reports: Path) -> None:
    """Per notebook: a key figure, a scope sentence, and a unit for every headline number (issue 20)."""
    run = json.loads((reports / "run.json").read_text())
    for nb in run["notebooks"]:
        assert nb["figure"] == f"figures/{nb['stem']}.png", nb["stem"]
        numbers, scope = report.headline_rows(nb["headline"])
        assert scope, f"{nb['stem']}: no scope sentence"
        no_unit = [r["name"] for r in numbers
                   if isinstance(r["value"], (int, float)) and not isinstance(r["value"], bool) and not r["unit"]]
        assert not no_unit, f"{nb['stem']}: headline numbers without a unit: {no_unit}"
    page = (reports / "index.html").read_text()
    assert page.count('<img class="thumb"') == len(run["notebooks"])


def test_a_corrupt_notebook_or_a_file_as_reports_dir_stops_before_any_notebook_runs(tmp_path, monkeypatch):
    import shutil

    import papermill

    from facekit.errors import OutputError

    ran = []
    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **k: ran.append(a))
    notebooks = tmp_path / "notebooks"
    shutil.copytree(FIXTURES, notebooks)
    (notebooks / "04_x.ipynb").write_text("{\n")
    reports = tmp_path / "reports"
    with pytest.raises(ConfigError, match=r"notebooks/04_x\.ipynb: not a valid notebook \(.+\)"):
        runner.run_pipeline(notebooks_dir=notebooks, reports_dir=reports, progress=False)
    assert not ran and not reports.exists()
    # a corrupt notebook that is not selected does not stop the others
    summary = runner.run_pipeline(only="01", notebooks_dir=notebooks, reports_dir=reports, progress=False)
    assert len(ran) == 1 and summary.results[0].stem == "01_alpha"

    ran.clear()
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    with pytest.raises(OutputError, match=r"a_file: cannot create the reports folder .* is a file"):
        runner.run_pipeline(only="01", notebooks_dir=notebooks, reports_dir=a_file, progress=False)
    shutil.rmtree(reports / "html")
    (reports / "html").write_text("not a folder")
    with pytest.raises(OutputError, match=r"html: cannot create the reports folder .* is a file"):
        runner.run_pipeline(only="01", notebooks_dir=notebooks, reports_dir=reports, progress=False)
    assert not ran and a_file.read_text() == (reports / "html").read_text() == "not a folder"
