"""Helpers notebooks use to publish results for the HTML reports.

Every notebook writes its headline numbers with :func:`write_headline`; the runner's
``reports/index.html`` reads them back from these files instead of re-typing them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from facekit import settings


def headline_path(notebook: str) -> Path:
    """Return the JSON file holding a notebook's headline numbers.

    Args:
        notebook: notebook stem, e.g. ``"01_data_prep"``.
    """
    return settings.REPORTS_DIR / "metrics" / f"{notebook}.json"


def _jsonable(value):
    if hasattr(value, "item"):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_headline(notebook: str, numbers: dict) -> Path:
    """Write a notebook's headline numbers (a flat ``{name: value}`` dict) for the report index.

    Args:
        notebook: notebook stem, e.g. ``"03_train_gan"``.
        numbers: flat mapping of short names to scalars or short strings.

    Returns:
        The path written (atomically: temp file then rename).
    """
    path = headline_path(notebook)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({k: _jsonable(v) for k, v in numbers.items()}, indent=2))
    tmp.replace(path)
    return path


def read_headline(notebook: str) -> dict:
    """Read a notebook's headline numbers; an empty dict when the notebook wrote none."""
    path = headline_path(notebook)
    if not path.exists():
        return {}
    return json.loads(path.read_text())
