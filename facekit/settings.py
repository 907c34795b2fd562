"""Process-wide settings: torch thread count and well-known paths.

The thread count matters on small machines: with 2 cores, a second busy process can slow an
oversubscribed step tenfold, so tests and CI pin it to 1 through ``FACEKIT_THREADS``.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("FACEKIT_DATA_DIR", PROJECT_ROOT / "data"))
REPORTS_DIR = Path(os.environ.get("FACEKIT_REPORTS_DIR", PROJECT_ROOT / "reports"))
MODELS_DIR = PROJECT_ROOT / "models"
# Development/test material beside the project; absent on a user's fresh clone.
SHARED_DIR = Path(os.environ.get("FACEKIT_SHARED_DIR", PROJECT_ROOT.parent / "shared"))


def default_threads() -> int:
    """Return the configured torch/OpenCV thread count.

    Returns:
        ``FACEKIT_THREADS`` when set (tests and CI use 1), else the number of usable cores.
    """
    env = os.environ.get("FACEKIT_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError as exc:
            raise ValueError(f"FACEKIT_THREADS must be a positive integer, got {env!r}") from exc
        if n < 1:
            raise ValueError(f"FACEKIT_THREADS must be a positive integer, got {env!r}")
        return n
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_threads(n: int | None = None) -> int:
    """Set the intra-op thread count of torch and OpenCV.

    Args:
        n: thread count; ``None`` uses :func:`default_threads`.

    Returns:
        The thread count applied.
    """
    n = default_threads() if n is None else int(n)
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n}")
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass
    try:
        import cv2

        cv2.setNumThreads(n)
    except ImportError:
        pass
    return n


def shared_path(*parts: str) -> Path:
    """Return a path inside ``../shared/`` (which may not exist; callers check)."""
    return SHARED_DIR.joinpath(*parts)
