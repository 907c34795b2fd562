"""Test-wide settings: one torch/OpenCV thread (2-core machines), quiet progress bars."""

import os

os.environ.setdefault("FACEKIT_THREADS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

from facekit.settings import set_threads  # noqa: E402

set_threads()
