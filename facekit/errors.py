"""Exception types raised by facekit for bad input; each message names the file and the problem."""

from __future__ import annotations


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
