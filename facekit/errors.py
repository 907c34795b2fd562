"""Exception types raised by facekit for bad input; each message names the file and the problem."""

from __future__ import annotations

import pickle
import re


class FacekitError(Exception):
    """Base class for every error facekit raises on purpose."""


class ImageReadError(FacekitError):
    """An image file could not be turned into an 8-bit RGB array (corrupt, truncated, too large...)."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class DataSourceError(FacekitError):
    """A data source spec is invalid, missing or empty."""


class VideoReadError(FacekitError):
    """A video file or stream could not be opened or read."""


class CheckpointError(FacekitError):
    """A checkpoint is missing, corrupt or belongs to a different model."""


class ConfigError(FacekitError):
    """A configuration or spec (degradation pipeline, model name, profile) is invalid."""


class OutputError(FacekitError):
    """An output or cache file or folder cannot be written (read-only, no space, a file in the way)."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def describe_load_failure(exc: Exception) -> str:
    """One line on why ``torch.load(weights_only=True)`` failed, never suggesting the unsafe load.

    torch's own message for a file its safe unpickler refuses says that ``weights_only=False``
    "will likely succeed": that runs any code the file holds, so it is never repeated here.
    """
    text = str(exc)
    detail = (re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|Check the documentation|$)", text, re.S)
              or re.search(r"\n\s*(Trying to load unsupported .+?)\s*(?:\n\n|Check the documentation|$)", text, re.S))
    if isinstance(exc, pickle.UnpicklingError) or detail or "weights_only" in text:
        why = " ".join(detail.group(1).split())[:200] if detail else type(exc).__name__
        return ("corrupt, or it holds objects other than tensors and plain data, which facekit never loads "
                f"({why})")
    first = " ".join(text.split(". ")[0].split())[:200] if text else ""
    return f"corrupt or truncated ({type(exc).__name__}: {first})" if first else f"corrupt ({type(exc).__name__})"
