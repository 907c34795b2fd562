"""Comparing restoration chains (notebook 04): an ablation over stage subsets and a grid of each
stage's output.
"""

from __future__ import annotations

import itertools
import time
from typing import Callable

import torch

from facekit import metrics
from facekit.chain import RestorationChain, Stage
from facekit.restorer import RestoreOutput


def _at_size(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size:
        return x
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def ablation(stages: list[Stage], lq: torch.Tensor, gt: torch.Tensor, combos: list[list[str]] | None = None,
             extra: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None, backend: str = "torch",
             batch: int = 32):
    """PSNR/SSIM and time per face of stage subsets on held-out pairs.

    Args:
        stages: the trained stages (any order; each combination runs them in the given order).
        lq: ``(N,3,h,w)`` float32 in [0,1]; gt: ``(N,3,H,W)``.
        combos: stage-name lists to run (default: every non-empty subset, keeping the order).
        extra: more methods ``name -> fn(lq) -> out`` (e.g. Real-ESRGAN x4plus).
        backend: chain backend.
        batch: faces per call.

    Outputs whose size differs from ``gt`` are resized bicubically (a lone deblur stage is scored
    as deblur + bicubic x4); ``bicubic`` is always included as the floor.

    Returns:
        ``(table, outputs)``: a DataFrame (method, stages, psnr, ssim, ms_per_face) sorted by PSNR,
        and ``{method: (N,3,H,W) output}``.
    """
    import pandas as pd

    by_name = {s.name: s for s in stages}
    if combos is None:
        names = [s.name for s in stages]
        combos = [list(c) for r in range(1, len(names) + 1) for c in itertools.combinations(names, r)]
    methods: dict[str, Callable] = {"bicubic": lambda x: x}
    for combo in combos:
        chain = RestorationChain([by_name[n] for n in combo], backend=backend)
        methods[" + ".join(combo)] = lambda x, c=chain: c(x).out
    methods.update(extra or {})
    rows, outputs = [], {}
    size = gt.shape[-1]
    for name, fn in methods.items():
        outs, t0 = [], time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(lq), batch):
                outs.append(_at_size(fn(lq[i:i + batch]).float().clamp(0, 1), size))
        seconds = time.perf_counter() - t0
        out = torch.cat(outs)
        outputs[name] = out
        rows.append({"method": name, "psnr": float(metrics.psnr(out, gt).mean()),
                     "ssim": float(metrics.ssim(out, gt).mean()), "ms_per_face": 1e3 * seconds / len(lq)})
    table = pd.DataFrame(rows).sort_values("psnr", ascending=False).reset_index(drop=True)
    return table, outputs


def plot_intermediates(result: RestoreOutput, lq: torch.Tensor, gt: torch.Tensor | None = None, n: int = 6):
    """Grid: one row per face, columns lq | each stage's output | gt (all shown at the final size)."""
    import matplotlib.pyplot as plt

    cols = [("lq", lq)] + list(result.intermediates.items()) + ([("gt", gt)] if gt is not None else [])
    n = min(n, len(lq))
    size = result.out.shape[-1]
    fig, axes = plt.subplots(n, len(cols), figsize=(1.6 * len(cols), 1.6 * n), squeeze=False)
    for j, (title, imgs) in enumerate(cols):
        imgs = _at_size(imgs[:n].float(), size) if title != "lq" else torch.nn.functional.interpolate(
            imgs[:n].float(), size=(size, size), mode="nearest")
        for i in range(n):
            axes[i, j].imshow(imgs[i].permute(1, 2, 0).clamp(0, 1).numpy())
            axes[i, j].axis("off")
        axes[0, j].set_title(f"{title}\n{tuple(result.intermediates[title].shape[-2:]) if title in result.intermediates else ''}",
                             fontsize=8)
    fig.tight_layout()
    return fig
