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
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from facekit.errors import CheckpointError

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


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically: a temp file in the same folder, fsync, then ``os.replace``,
    so a crash mid-write never leaves a truncated checkpoint under ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        CheckpointError: missing file, or not a readable checkpoint dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or non-checkpoint file
        msg = str(exc).splitlines()[0] if str(exc) else ""
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {msg})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict, got {type(data).__name__}")
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
