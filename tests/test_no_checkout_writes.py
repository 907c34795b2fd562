"""Tests never write into the checkout's ``data/`` or ``reports/`` (issue 20).

The project-root ``conftest.py`` points ``FACEKIT_DATA_DIR`` / ``FACEKIT_REPORTS_DIR`` at a session
folder before :mod:`facekit.settings` is imported. These tests check that the settings follow,
that the usual write paths (headline files, evaluation/training/OOD run folders, face caches) land
there, that subprocesses and notebook kernels inherit it, and that the checkout's files keep their
times. Names written here carry a unique token, so a concurrent ``make report`` cannot make the
comparison fail.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from facekit import settings

ROOT = Path(__file__).resolve().parent.parent
CHECKOUT = [ROOT / "data", ROOT / "reports"]


def _snapshot(token: str | None = None) -> dict[str, tuple]:
    """Files and folders under the checkout's data/ and reports/: path -> (size, mtime_ns)."""
    out = {}
    for top in CHECKOUT:
        for dirpath, dirnames, filenames in os.walk(top):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                if token is not None and token not in p:
                    continue
                try:
                    st = os.lstat(p)
                except OSError:
                    continue
                out[p] = (None, None) if name in dirnames else (st.st_size, st.st_mtime_ns)
    return out


def _inside(path: Path, parent: Path) -> bool:
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(parent))


def test_settings_point_to_session_folders_outside_the_checkout():
    assert settings.DATA_DIR == Path(os.environ["FACEKIT_DATA_DIR"])
    assert settings.REPORTS_DIR == Path(os.environ["FACEKIT_REPORTS_DIR"])
    for path in (settings.DATA_DIR, settings.REPORTS_DIR):
        assert not _inside(path, ROOT), f"{path} is inside the checkout {ROOT}"
    # read-only inputs still come from the project
    assert settings.MODELS_DIR == ROOT / "models"


def test_write_paths_land_in_the_session_folders_and_checkout_times_do_not_change():
    from facekit import data, evaluate, report, train

    token = f"isolation-{uuid.uuid4().hex[:8]}"
    before_all = _snapshot()

    headline = report.write_headline(f"99_{token}", {"value": 1.5})
    eval_dir = evaluate.run_dir(token)
    (eval_dir / "results.csv").write_text("method,psnr\nbicubic,20\n")
    run = train.run_dir_for(train.TrainConfig(name=token))
    cache = data.cache_dir_for(data.parse_source("orl"), 64, "landmarks", None, 0.15)
    written = {"headline": headline, "eval": eval_dir, "train": run, "cache": cache}
    for what, path in written.items():
        assert _inside(path, settings.DATA_DIR) or _inside(path, settings.REPORTS_DIR), (what, path)
        assert not _inside(path, ROOT), (what, path)
    assert headline.is_relative_to(settings.REPORTS_DIR / "metrics")
    assert report.read_headline(f"99_{token}") == {"value": 1.5}

    assert _snapshot(token) == {}, "files with this test's names appeared in the checkout"
    after_all = _snapshot()
    # Nothing this process did touched the checkout; other processes may write there, so only
    # entries of the checkout that existed before are compared, by size and mtime.
    changed = [p for p in before_all if p in after_all and before_all[p] != after_all[p]]
    assert not changed, f"checkout files modified during the test: {changed[:10]}"


def test_subprocesses_inherit_the_session_folders():
    code = "from facekit import settings; print(settings.DATA_DIR); print(settings.REPORTS_DIR)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(settings.DATA_DIR), str(settings.REPORTS_DIR)]


def test_notebook_kernels_inherit_the_session_folders():
    """nbval and papermill start kernels with jupyter_client, which passes on ``os.environ``."""
    jupyter_client = pytest.importorskip("jupyter_client")
    km, kc = jupyter_client.manager.start_new_kernel(kernel_name="python3", cwd=str(ROOT / "notebooks"))
    try:
        seen = []
        kc.execute_interactive(
            "import os; print(os.environ.get('FACEKIT_DATA_DIR'), os.environ.get('FACEKIT_REPORTS_DIR'))",
            timeout=60,
            output_hook=lambda msg: seen.append(msg["content"].get("text", ""))
            if msg["header"]["msg_type"] == "stream" else None,
        )
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert "".join(seen).split() == [str(settings.DATA_DIR), str(settings.REPORTS_DIR)]
