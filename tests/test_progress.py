"""Progress bars that tell the truth: plain text under the runner, finished in the HTML report.

The switching rule (``FACEKIT_PLAIN_PROGRESS``), the plain bar itself, the terminal echo of a
kernel's bars, and one real run of a tiny notebook whose ``tqdm.auto`` loop must appear in the
report as a finished text bar, not as a widget.
"""

from __future__ import annotations

import io
import re

import pytest
import tqdm.auto
import tqdm.autonotebook

from facekit import progress, report, runner
from tools.nbtools import write_notebook


@pytest.fixture
def restore_tqdm(monkeypatch):
    """Let a test switch tqdm.auto; the original classes come back afterwards."""
    for module in (tqdm.auto, tqdm.autonotebook):
        monkeypatch.setattr(module, "tqdm", module.tqdm)
        monkeypatch.setattr(module, "trange", module.trange)


@pytest.mark.parametrize("value, plain", [
    (None, False), ("", False), ("0", False), ("false", False), ("off", False),
    ("1", True), ("yes", True), ("TRUE", True),
])
def test_plain_progress_rule(value, plain):
    environ = {} if value is None else {progress.PLAIN_ENV: value}
    assert progress.plain_progress(environ) is plain


def test_nothing_changes_outside_the_runner(restore_tqdm, monkeypatch):
    monkeypatch.delenv(progress.PLAIN_ENV, raising=False)
    before = tqdm.auto.tqdm
    assert progress.use_plain_progress() is False
    assert tqdm.auto.tqdm is before


def test_plain_bars_end_as_one_finished_line(restore_tqdm):
    assert progress.use_plain_progress(True) is True
    assert progress.use_plain_progress(True) is True  # twice is the same switch
    bar_class = tqdm.auto.tqdm
    assert bar_class.facekit_plain and tqdm.autonotebook.tqdm is bar_class
    out = io.StringIO()
    # disable=False: tests/conftest.py sets TQDM_DISABLE=1
    for _ in bar_class(range(7), desc="steps", file=out, leave=False, disable=False):  # leave is forced on
        pass
    for _ in tqdm.auto.trange(3, desc="more", file=out, disable=False):
        pass
    import nbformat

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("loop")
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr", text=out.getvalue())]
    nb.cells = [cell]
    report._coalesce_streams(nb)
    lines = nb.cells[0].outputs[0].text.splitlines()
    assert [ln.split("|")[0] for ln in lines] == ["steps: 100%", "more: 100%"], lines
    assert "7/7" in lines[0] and "3/3" in lines[1]


def test_kernel_progress_echoes_only_bar_lines():
    out = io.StringIO()
    sink = runner.KernelProgress("05_eval", stream=out)
    sink.write("evaluate:  40%|####      | 4/10 [00:02<00:03,  2.0it/s]\r")
    sink.write("UserWarning: something deprecated\n")
    sink.write("\rframes: 12it [00:03, 3.9it/s]")
    sink.flush()
    assert out.getvalue().splitlines() == [
        "  05_eval | evaluate:  40%|####      | 4/10 [00:02<00:03,  2.0it/s]",
        "  05_eval | frames: 12it [00:03, 3.9it/s]",
    ]


def test_runner_report_shows_finished_text_bars(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # tests/conftest.py sets it; the kernel inherits it
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    write_notebook(notebooks / "01_bars.ipynb", [
        ("params", "n = 5"),
        ("code", "import facekit\nfrom tqdm.auto import tqdm\nfor _ in tqdm(range(n), desc='steps'):\n    pass"),
    ])
    summary = runner.run_pipeline(profile="smoke", notebooks_dir=notebooks,
                                  reports_dir=tmp_path / "reports", progress=True)
    assert summary.ok, summary.failed and summary.failed.error
    html = (tmp_path / "reports" / "html" / "01_bars.html").read_text()
    assert "steps: 100%" in html and "5/5" in html
    assert re.search(r"\b0%\|", html) is None  # the 0% refresh was overwritten by the last one
    executed = (tmp_path / "reports" / "executed" / "01_bars.ipynb").read_text()
    assert "application/vnd.jupyter.widget-view+json" not in executed  # a text bar, no widget
    assert "01_bars | steps: 100%" in capsys.readouterr().err
