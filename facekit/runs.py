"""The layout of a training run folder, spelled in one place.

:func:`facekit.train.train` writes, and release, fine-tuning (``init_from``) and distillation
(``distill_from``) read::

    data/runs/<name>/
        config.yaml                   the run's TrainConfig
        metrics.csv                   one row per logged step
        summary.json                  written when the run ends
        checkpoints/last.pt           the latest state: resume, release, init_from, distill_from
        checkpoints/step_NNNNNN.pt    every ``ckpt_every`` steps
        samples/step_NNNNNN.png       validation samples every ``sample_every`` steps

A bottom-layer module: the standard library and :mod:`facekit.errors` only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from facekit.errors import ConfigError

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
CHECKPOINTS_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
SAMPLES_DIR = "samples"


@dataclass(frozen=True)
class RunDir:
    """One training run folder and the paths inside it (nothing is created or read on construction).

    Args:
        path: the run folder, e.g. ``data/runs/celeba-default``.
    """

    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))  # accept str; frozen, so set it this way

    @classmethod
    def of(cls, where: str | Path) -> "RunDir":
        """The run a folder or one of its checkpoint files (``<run>/checkpoints/<file>.pt``) belongs to.

        Args:
            where: a run folder or a ``.pt`` file inside its ``checkpoints/``.

        Returns:
            The run folder's :class:`RunDir`.
        """
        where = Path(where)
        return cls(where.parent.parent if where.suffix == ".pt" else where)

    @property
    def name(self) -> str:
        """The run's name (its folder's name, the config's ``name``)."""
        return self.path.name

    @property
    def config(self) -> Path:
        """``config.yaml``: the run's TrainConfig."""
        return self.path / CONFIG_FILE

    @property
    def metrics(self) -> Path:
        """``metrics.csv``: losses and validation scores per logged step."""
        return self.path / METRICS_FILE

    @property
    def summary(self) -> Path:
        """``summary.json``: timing and final scores, written when the run ends."""
        return self.path / SUMMARY_FILE

    @property
    def checkpoints(self) -> Path:
        """``checkpoints/``: the run's training states."""
        return self.path / CHECKPOINTS_DIR

    @property
    def last(self) -> Path:
        """``checkpoints/last.pt``: the latest training state."""
        return self.checkpoints / LAST_CHECKPOINT

    @property
    def samples(self) -> Path:
        """``samples/``: validation sample sheets."""
        return self.path / SAMPLES_DIR

    def checkpoint(self, step: int) -> Path:
        """The checkpoint kept at ``step`` (``checkpoints/step_NNNNNN.pt``)."""
        return self.checkpoints / f"step_{int(step):06d}.pt"

    def sample(self, step: int) -> Path:
        """The validation sample sheet of ``step`` (``samples/step_NNNNNN.png``)."""
        return self.samples / f"step_{int(step):06d}.png"

    def is_run(self) -> bool:
        """Whether the folder holds a run's ``config.yaml``."""
        return self.config.is_file()

    def require_last(self) -> Path:
        """The run's ``checkpoints/last.pt``.

        Raises:
            ConfigError: naming the folder, when it has none.
        """
        if not self.last.is_file():
            raise ConfigError(f"{self.path}: no {CHECKPOINTS_DIR}/{LAST_CHECKPOINT} "
                              "(is this a facekit training run folder?)")
        return self.last

    def read_summary(self) -> dict:
        """The run's ``summary.json``; ``{}`` while the run has not finished writing one.

        Raises:
            ConfigError: naming the file, when it is not a JSON mapping.
        """
        if not self.summary.is_file():
            return {}
        try:
            data = json.loads(self.summary.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{self.summary}: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{self.summary}: expected a JSON mapping, got {type(data).__name__}")
        return data


def checkpoint_file(where: str | Path) -> Path:
    """A training checkpoint as given, or a run folder's ``checkpoints/last.pt``.

    Args:
        where: a checkpoint file or a run folder (``init_from``, ``distill_from``).

    Returns:
        The checkpoint path (not checked to exist: the loader names a missing file).
    """
    where = Path(where)
    return RunDir(where).last if where.is_dir() else where
