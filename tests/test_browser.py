"""Browser check of the HTML reports: headless Chromium renders the index and one report.

The run is produced by the test itself (fixture notebook 01_alpha into a temporary reports
folder). Skipped, with the reason, where Debian's ``chromium`` is not installed
(``.ci/run`` installs it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

from facekit import runner

FIXTURES = Path(__file__).parent / "fixtures" / "notebooks"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed (Debian: apt-get install chromium; .ci/run does this)",
)


def chromium(url: str, user_data_dir: Path, *extra: str, timeout: float = 90) -> str:
    """Run headless Chromium on ``url`` with ``extra`` flags; returns its stdout."""
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--hide-scrollbars", f"--user-data-dir={user_data_dir}", *extra, url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return proc.stdout


def screenshot(url: str, png: Path, user_data_dir: Path) -> np.ndarray:
    """Screenshot ``url`` at 1200x900; returns the (900,1200,3) uint8 BGR image."""
    chromium(url, user_data_dir, f"--screenshot={png}", "--window-size=1200,900")
    image = cv2.imread(str(png))
    assert image is not None, f"no screenshot written to {png}"
    return image


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("browser") / "reports"
    summary = runner.run_pipeline(profile="smoke", only="01", notebooks_dir=FIXTURES,
                                  reports_dir=out, progress=False)
    assert summary.ok, summary.failed and summary.failed.error
    return out


def test_index_renders_with_the_headline_table(reports, tmp_path):
    url = (reports / "index.html").as_uri()
    dom = chromium(url, tmp_path / "profile-dom", "--dump-dom")
    assert '<table class="headline" id="headline">' in dom
    assert 'data-stem="01_alpha"' in dom and 'href="html/01_alpha.html"' in dom
    assert 'data-name="value_squared"' in dom
    # a thumbnail of the key figure per notebook, embedded in the page
    assert dom.count('<img class="thumb"') == 1 and 'src="data:image/png;base64,' in dom
    # a unit for every headline number (each number is a tr.metric row with a td.unit)
    units = re.findall(r'<tr class="metric[^"]*"[^>]*>.*?<td class="unit">([^<]*)</td>', dom, re.S)
    assert len(units) == 3 and all(u.strip() for u in units), units
    image = screenshot(url, tmp_path / "index.png", tmp_path / "profile-shot")
    assert image.shape == (900, 1200, 3)
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    assert gray.std() > 10, f"index screenshot looks blank (std {gray.std():.1f})"
    # text and the table rules: a real share of the page is not background
    assert (gray < 200).mean() > 0.005
    # the green "ok" badge (#2e7d32) is drawn
    green = (np.abs(image.astype(int) - [0x32, 0x7D, 0x2E]).sum(axis=2) < 40).sum()
    assert green > 50, f"no 'ok' status badge in the screenshot ({green} green pixels)"


def test_report_renders_with_its_embedded_figure(reports, tmp_path):
    url = (reports / "html" / "01_alpha.html").as_uri()
    image = screenshot(url, tmp_path / "report.png", tmp_path / "profile")
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    assert gray.std() > 10, f"report screenshot looks blank (std {gray.std():.1f})"
    # the notebook's figure is a thick tab:red line (#d62728): it only shows if the PNG is
    # embedded in the HTML file and decoded by the browser
    red = (np.abs(image.astype(int) - [0x28, 0x27, 0xD6]).sum(axis=2) < 60).sum()
    assert red > 300, f"the embedded figure is not visible ({red} red pixels)"
