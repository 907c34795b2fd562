"""The one restorer contract: a low-quality face batch in, a typed :class:`RestoreOutput` out.

Everything that restores faces speaks it: the evaluation's methods, ``video``'s enhancers, the
restoration chain and track fusion's single-frame stage. :class:`Restorer` is the callable;
:mod:`facekit.restorers` builds the named ones (``bicubic``, ``classical``, ``chain:DIR`` ...).

Two layouts, one behaviour:

- :meth:`Restorer.restore`: ``(N,3,h,w)`` float32 in [0,1] (torch or numpy) -> a
  :class:`RestoreOutput` whose ``out`` is ``(N,3,H,W)`` float32 in [0,1] on the CPU;
- :meth:`Restorer.restore_uint8`: ``(N,h,w,3)`` uint8 RGB crops (files, video frames) ->
  ``(N,H,W,3)`` uint8 RGB.

``(H, W)`` is ``out_size`` when given, else ``(h*scale, w*scale)``. A network trained for one
input side (``in_size``) that does not run at others (``any_size`` False) gets its faces resized to
it first; every output is resized to ``(H, W)`` (bicubic up, antialiased bicubic down), so every
restorer is scored on the same pixels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from facekit import images


@dataclass
class RestoreOutput:
    """What a restorer returns, like a diffusers pipeline output.

    Attributes:
        out: ``(N,3,H,W)`` float32 in [0,1] on the CPU.
        intermediates: stage name -> that stage's output ``(N,3,h',w')`` float32 in [0,1], in
            order (a chain's stages; empty for one-step restorers).
        seconds: step name -> wall time for the whole batch.
        gains: ``(N,3)`` linear RGB gains of an explicit global colour correction (a faithful
            model's relight step), or None when the restorer applies none.
    """

    out: torch.Tensor
    intermediates: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    gains: torch.Tensor | None = None

    @property
    def total_seconds(self) -> float:
        return float(sum(self.seconds.values()))

    def to_uint8(self) -> np.ndarray:
        """``out`` as ``(N,H,W,3)`` uint8 RGB."""
        return images.to_uint8(self.out)


def check_batch(lq, who: str) -> torch.Tensor:
    """``lq`` as an ``(N,3,h,w)`` float tensor, or a ValueError naming ``who`` and the shape it got."""
    if isinstance(lq, np.ndarray):
        lq = torch.from_numpy(lq)
    if not isinstance(lq, torch.Tensor) or lq.ndim != 4 or lq.shape[1] != 3:
        shape = tuple(lq.shape) if hasattr(lq, "shape") else type(lq).__name__
        raise ValueError(f"{who}: expected an (N,3,h,w) float batch in [0,1], got {shape}")
    if not lq.is_floating_point():
        raise ValueError(f"{who}: expected a float batch in [0,1], got dtype {lq.dtype}")
    return lq


def size_pair(out_size, lq: torch.Tensor, scale: int) -> tuple[int, int]:
    """``out_size`` (None, one int or ``(H, W)``) as ``(H, W)``; None means the input's side x ``scale``."""
    if out_size is None:
        return int(lq.shape[-2]) * scale, int(lq.shape[-1]) * scale
    if isinstance(out_size, (int, np.integer)):
        return int(out_size), int(out_size)
    h, w = out_size
    return int(h), int(w)


def resize_batch(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``(N,3,h,w)`` to ``size`` = ``(H, W)``: bicubic up, antialiased bicubic down; clamped to [0,1]."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=shrink).clamp_(0.0, 1.0)


def _cat(parts: list[torch.Tensor]) -> torch.Tensor:
    return parts[0] if len(parts) == 1 else torch.cat(parts)  # one batch (the video's case): no copy


StepFn = Callable[[torch.Tensor, tuple[int, int]], "torch.Tensor | RestoreOutput"]


@dataclass
class Restorer:
    """A named restorer with the one contract (see the module docstring).

    Attributes:
        name: registry name (``"bicubic"``, ``"chain:default"``, ``"model:runs/x/best.pt"`` ...).
        fn: ``fn(lq (N,3,h,w), out_size (H,W))`` -> a tensor ``(N,3,H',W')`` or a
            :class:`RestoreOutput`; resized to ``out_size`` afterwards when ``H',W'`` differ.
        scale: default output/input ratio (``out_size`` None -> input side x ``scale``).
        native_scale: the network's own output/input ratio (None when it produces any size).
        note: how it was built (weights file, resizing) for reports.
        batch: most faces fed to ``fn`` at once (big networks on the CPU).
        device: where it runs.
        in_size: the input side the network was trained for (None: no network, no such side).
        any_size: whether faces of other sides run as they are; else they are resized to
            ``in_size`` first.
        meta: extra facts for reports (a reference colour ...).
    """

    name: str
    fn: StepFn
    scale: int = 4
    native_scale: int | None = None
    note: str = ""
    batch: int = 32
    device: str = "cpu"
    in_size: int | None = None
    any_size: bool = True
    meta: dict = field(default_factory=dict)

    def restore(self, lq, out_size=None, keep_size: bool = False) -> RestoreOutput:
        """Restore a batch.

        Args:
            lq: ``(N,3,h,w)`` float in [0,1] (torch or numpy).
            out_size: ``(H, W)`` or one int; None: ``(h*scale, w*scale)``.
            keep_size: run the faces at their own size even when the network does not run any
                size (a caller that planned the size itself, like ``restore`` for large faces).

        Returns:
            A :class:`RestoreOutput`; ``out`` is ``(N,3,H,W)`` float32 in [0,1] on the CPU.
        """
        lq = check_batch(lq, self.name).float()
        size = size_pair(out_size, lq, self.scale)
        if self.in_size and not (self.any_size or keep_size) and tuple(lq.shape[-2:]) != (self.in_size,) * 2:
            lq = resize_batch(lq, (self.in_size, self.in_size))
        result = RestoreOutput(out=torch.zeros((0, 3) + size))
        outs, gains, inter = [], [], {}
        for i in range(0, len(lq), max(1, self.batch)):
            t0 = time.perf_counter()
            step = self.fn(lq[i:i + self.batch], size)
            if not isinstance(step, RestoreOutput):
                step = RestoreOutput(out=step, seconds={self.name: time.perf_counter() - t0})
            outs.append(resize_batch(step.out.detach().float().cpu(), size).clamp_(0.0, 1.0))  # a step may overshoot
            for key, sec in step.seconds.items():
                result.seconds[key] = result.seconds.get(key, 0.0) + sec
            for key, x in step.intermediates.items():
                inter.setdefault(key, []).append(x.detach().cpu())
            if step.gains is not None:
                gains.append(step.gains.detach().cpu())
        if outs:
            result.out = _cat(outs)
        result.intermediates = {k: _cat(v) for k, v in inter.items()}
        result.gains = _cat(gains) if gains and len(gains) == len(outs) else None
        return result

    def __call__(self, lq, out_size=None) -> torch.Tensor:
        """``restore(lq, out_size).out``: ``(N,3,H,W)`` float32 in [0,1] on the CPU (the evaluation's call)."""
        return self.restore(lq, out_size).out

    def restore_uint8(self, crops: np.ndarray, out_size=None) -> np.ndarray:
        """Restore uint8 RGB crops ``(N,h,w,3)`` -> ``(N,H,W,3)`` uint8 RGB (files' and frames' layout)."""
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[-1] != 3 or crops.dtype != np.uint8:
            raise ValueError(f"{self.name}: expected (N,h,w,3) uint8 RGB crops, got {crops.shape} {crops.dtype}")
        size = size_pair(out_size, crops.transpose(0, 3, 1, 2), self.scale)
        if len(crops) == 0:
            return np.zeros((0,) + size + (3,), np.uint8)
        return self.restore(images.to_tensor(crops), size).to_uint8()
