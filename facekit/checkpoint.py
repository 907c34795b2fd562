"""Training checkpoints: atomic writes, safe loads, architecture checks, every RNG state.

A checkpoint is a plain dict readable with ``torch.load(weights_only=True)``:

- ``"format"``: ``"facekit-train-1"``; ``"step"``, ``"epoch"``;
- ``"config"``: the training config as a plain dict;
- ``"arch_g"``/``"arch_d"``: ``{"name", "kwargs", "signature"}`` where ``signature`` maps each
  state-dict entry to its shape, so a checkpoint of another architecture fails clearly;
- ``"net_g"``, ``"net_g_ema"``, ``"net_d"``, ``"optim_g"``, ``"optim_d"``, ``"sched_g"``,
  ``"sched_d"``: state dicts;
- ``"rng"``: python, numpy, torch CPU (and CUDA when available) states plus named
  ``torch.Generator`` states.

Every load (:func:`load_checkpoint`, used by training, stages and chains) refuses a file whose
sha256 differs from the one the nearest ``chain.yaml`` at or above it records (released stage
files, in sub-folders too), and any
checkpoint holding a NaN or infinite value in a floating-point tensor.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from facekit import errors, settings
from facekit.errors import CheckpointError, describe_load_failure

FORMAT = "facekit-train-1"


def model_signature(model: nn.Module) -> dict[str, list[int]]:
    """``{state-dict key: shape}`` of ``model`` (unwrapping DDP/compile wrappers)."""
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def rng_state(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every global RNG state (python, numpy, torch CPU/CUDA) plus the named generators'."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        # numpy arrays are not allowed under weights_only loading; store the key as a tensor.
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator] | None = None) -> None:
    """Restore what :func:`rng_state` saved (CUDA states only where CUDA is available)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, key, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for k, g in (generators or {}).items():
        if k in state.get("generators", {}):
            g.set_state(state["generators"][k])


# the temporary files of save_checkpoint: ".NAME.pt.XXXXXXXX.tmp" (tempfile.mkstemp's 8 random characters)
_TMP_RE = re.compile(r"\..+\.pth?\.[A-Za-z0-9_]{8}\.tmp")
_STARTED = time.time()  # this process's start, near enough: training imports this module first
_swept: set[str] = set()


def sweep_stale_temps(folder: str | Path, before: float | None = None) -> list[Path]:
    """Remove the temporary files that killed saves left in ``folder``.

    Only files named like :func:`save_checkpoint`'s temporaries (``.last.pt.XXXXXXXX.tmp``) and last
    modified before ``before`` are removed: a save in progress keeps touching its file.

    Args:
        folder: a checkpoint folder (not searched recursively).
        before: a time (``time.time()``); default this process's start.

    Returns:
        The files removed (those that could not be removed are left, silently).
    """
    before = _STARTED if before is None else before
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        try:
            if (_TMP_RE.fullmatch(entry.name) and entry.is_file(follow_symlinks=False)
                    and entry.stat(follow_symlinks=False).st_mtime < before):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically: a temp file in the same folder, fsync, then ``os.replace``,
    so a crash mid-write never leaves a truncated checkpoint under ``path``.

    The first save of a process into a folder also removes the temporaries that killed saves
    left there before this process started (:func:`sweep_stale_temps`, one line on stderr).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.path.abspath(path.parent)
    if folder not in _swept:
        _swept.add(folder)
        gone = sweep_stale_temps(folder)
        if gone:
            print(f"facekit: removed {len(gone)} temporary file(s) left by killed saves in {path.parent} "
                  f"({', '.join(p.name for p in gone[:3])}{', ...' if len(gone) > 3 else ''})", file=sys.stderr)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


CHAIN_FILE = "chain.yaml"


def _chain_key(name: str) -> str | None:
    """A ``chain.yaml`` file entry as a normalised path relative to its folder (``a/b.pt``), or
    None for one that leaves the folder (absolute or through ``..``)."""
    text = name.replace("\\", "/").strip()
    if not text or text.startswith("/") or re.match(r"[A-Za-z]:", text):
        return None
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def chain_sha256_table(chain: str | Path) -> tuple[dict[str, str] | None, set[str]]:
    """Read a ``chain.yaml``'s ``sha256`` table and the stage files it lists.

    Args:
        chain: the ``chain.yaml`` file.

    Returns:
        ``(table, stage files)``: ``table`` maps each file, as a path relative to the chain
        folder (``reconstruct.pt``, ``weights/upscale.pt``), to its lower-case hex sha256, or is
        None when the file records none (older releases); ``stage files`` are the ``stages:``
        entries in the same form (those that leave the folder left out).

    Raises:
        CheckpointError: unreadable YAML (size and alias limits), a table that is not a mapping
            of files to 64-digit hex strings, or (with a table) a stage file that has no entry
            or lies outside the chain folder: a release records every stage it ships.
    """
    chain = Path(chain)
    try:
        data = settings.load_yaml(chain)
    except errors.ConfigError as exc:
        raise CheckpointError(str(exc)) from None
    data = data if isinstance(data, dict) else {}
    stages = data.get("stages")
    if isinstance(stages, list):  # [{name: file}, ...] is accepted too
        stages = {k: v for item in stages if isinstance(item, dict) for k, v in item.items()}
    files = [f for f in (stages.values() if isinstance(stages, dict) else ()) if isinstance(f, str)]
    raw = data.get("sha256")
    if raw is None:
        return None, {k for k in map(_chain_key, files) if k}
    if not isinstance(raw, dict):
        raise CheckpointError(f"{chain}: 'sha256' must map stage files to hex digests, got {raw!r}")
    table: dict[str, str] = {}
    for name, want in raw.items():
        key = _chain_key(str(name))
        if key is None:
            raise CheckpointError(f"{chain}: sha256 entry {name!r} must be a file inside the chain folder")
        if not isinstance(want, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", want):
            raise CheckpointError(f"{chain}: sha256 of {name} must be 64 hex digits, got {want!r}")
        table[key] = want.lower()
    listed = set()
    for f in files:
        key = _chain_key(f)
        if key is None:
            raise CheckpointError(f"{chain}: stage file {f} lies outside the chain folder, so its sha256 "
                                  "cannot be recorded; copy it into the folder")
        if key not in table:
            raise CheckpointError(f"{chain}: stage file {f} has no sha256 entry (the file records one for "
                                  f"{', '.join(sorted(table)) or 'no file'}); a weights file that is not "
                                  "checked is not loaded")
        listed.add(key)
    return table, listed


def _recorded(path: str | Path) -> tuple[str | None, Path | None]:
    """``(recorded sha256 or None, the chain.yaml that decides or None)``; see :func:`recorded_sha256`."""
    path = Path(os.path.abspath(path))
    for folder in path.parents:
        chain = folder / CHAIN_FILE
        if chain.is_file():  # the nearest chain.yaml decides, so an unrelated one higher up is never read
            table, _ = chain_sha256_table(chain)  # raises for a listed stage without an entry
            return (table or {}).get(path.relative_to(folder).as_posix()), chain
    return None, None


def recorded_sha256(path: str | Path) -> str | None:
    """The sha256 that a released chain's ``chain.yaml`` records for a weights file.

    The nearest ``chain.yaml`` in the file's folder or a folder above it decides, its ``sha256``
    table keyed by paths relative to its folder (``reconstruct.pt``, ``weights/upscale.pt``), so
    stage files in sub-folders are covered. A chain without a ``sha256`` table (older releases),
    or whose table does not name the file (not one of its stages), records none.

    Returns:
        The lower-case hex digest, or None.

    Raises:
        CheckpointError: see :func:`chain_sha256_table` (a listed stage without an entry
            included).
    """
    return _recorded(path)[0]


def _non_finite(obj, where: str = "") -> str | None:
    """Name (``key.key``) of the first floating-point tensor in ``obj`` holding NaN or inf, else None.

    An infinite one-element tensor is allowed: it is a deliberate sentinel, such as the faithful
    generator's ``locus_radius`` before a relight locus is fitted (inf = touch no face).
    """
    if isinstance(obj, torch.Tensor):
        if obj.is_floating_point() and obj.numel() and (bool(torch.isnan(obj).any()) or (
                obj.numel() > 1 and not bool(torch.isfinite(obj).all()))):
            return where or "tensor"
        return None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    for k, v in items:
        found = _non_finite(v, f"{where}.{k}" if where else str(k))
        if found:
            return found
    return None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``, checked.

    Args:
        path: the ``.pt`` file.
        map_location: where tensors are loaded.

    Returns:
        The checkpoint dict.

    Raises:
        CheckpointError: missing file; a sha256 that differs from the one ``chain.yaml`` records
            (see :func:`recorded_sha256`); not a readable checkpoint dict; a NaN or infinite value
            in any floating-point tensor. One line naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    want, chain = _recorded(path)
    if want is not None:
        got = file_sha256(path)
        if got != want:
            raise CheckpointError(f"{path}: weights file changed or corrupted (sha256 {got[:16]}..., "
                                  f"{chain} records {want[:16]}...)")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or non-checkpoint file
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {describe_load_failure(exc)}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict, got {type(data).__name__}")
    bad = _non_finite(data)
    if bad:
        raise CheckpointError(f"{path}: weights hold NaN or infinite values (in {bad}); the file is corrupt "
                              "or comes from a diverged run")
    return data


def arch_entry(name: str, kwargs: dict, model: nn.Module) -> dict[str, Any]:
    """The ``arch_g``/``arch_d`` record of a checkpoint."""
    return {"name": name, "kwargs": dict(kwargs), "signature": model_signature(model)}


def check_architecture(ckpt: dict, path: str | Path, key: str, expected_name: str, model: nn.Module) -> None:
    """Raise :class:`CheckpointError` unless ``ckpt[key]`` matches ``model`` (name and shapes).

    Args:
        ckpt: a loaded checkpoint.
        path: its file (for the message).
        key: ``"arch_g"`` or ``"arch_d"``.
        expected_name: registry name of ``model``.
        model: the module the weights will be loaded into.
    """
    entry = ckpt.get(key)
    if not isinstance(entry, dict) or "name" not in entry:
        raise CheckpointError(f"{path}: not a facekit training checkpoint (no {key!r} architecture record)")
    found = entry["name"]
    if found != expected_name:
        raise CheckpointError(f"{path}: wrong architecture for {key}: expected {expected_name!r}, "
                              f"found {found!r} (kwargs {entry.get('kwargs')})")
    want, have = model_signature(model), entry.get("signature", {})
    if want != have:
        missing = sorted(set(want) - set(have))[:3]
        extra = sorted(set(have) - set(want))[:3]
        shape = [f"{k}: expected {want[k]}, found {have[k]}" for k in want if k in have and want[k] != have[k]][:3]
        raise CheckpointError(f"{path}: {key} {expected_name!r} was saved with another configuration "
                              f"(kwargs {entry.get('kwargs')}): missing {missing}, unexpected {extra}, "
                              f"shape mismatches {shape}")


def load_generator(path: str | Path, device: str | torch.device = "cpu", ema: bool = True):
    """Build the generator stored in a training checkpoint, ready for inference.

    Args:
        path: a checkpoint written by :mod:`facekit.train`.
        device: where to put the model.
        ema: use the EMA weights (the released ones) when present.

    Returns:
        ``(net_g in eval mode, info)`` with info ``{"arch", "kwargs", "scale", "size", "step", "config"}``.
    """
    from facekit.archs import build_model

    ckpt = load_checkpoint(path)
    entry = ckpt.get("arch_g")
    if not isinstance(entry, dict) or "name" not in entry:
        raise CheckpointError(f"{path}: not a facekit training checkpoint (no generator architecture record)")
    net = build_model(entry["name"], **entry.get("kwargs", {}))
    check_architecture(ckpt, path, "arch_g", entry["name"], net)
    weights = ckpt.get("net_g_ema") if ema and ckpt.get("net_g_ema") is not None else ckpt.get("net_g")
    if weights is None:
        raise CheckpointError(f"{path}: checkpoint holds no generator weights")
    net.load_state_dict(weights)
    net.eval().requires_grad_(False).to(device)
    cfg = ckpt.get("config", {}) or {}
    info = {"arch": entry["name"], "kwargs": entry.get("kwargs", {}), "scale": int(cfg.get("scale", getattr(net, "scale", 4))),
            "size": cfg.get("size"), "step": ckpt.get("step"), "config": cfg}
    return net, info
