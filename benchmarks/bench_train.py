"""Images/s of facekit's G+D training step vs a plain eager PyTorch step (same run, same machine).

Both steps train the same U-Net generator and PatchGAN discriminator with the same losses
(L1 + hinge adversarial + R1 gradient penalty) on the same batch. The plain step is what a
straightforward script does: float32 NCHW, ``Adam`` with default (for-loop) updates,
``zero_grad(set_to_none=False)``, a second generator forward for the G step, the penalty on
every step and a Python-loop EMA. facekit's step: one G forward shared by both steps, lazy R1
(every ``lazy_k`` steps, scaled by k), ``foreach`` Adam, ``set_to_none``, fused EMA lerp and
optionally channels-last. Ablations toggle one optimisation at a time.

Usage: ``python benchmarks/bench_train.py [--sizes 64 128] [--batch 16] [--seconds 6]``. Prints JSON.
Timings on a shared 2-core machine are noisy: compare numbers from the same run only.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time

import torch

from facekit import losses
from facekit.archs import build_model
from facekit.settings import set_threads
from facekit.train import Trainer, TrainConfig

G_KW = {"base": 32, "depth": 3}
D_KW = {"base": 32, "n_layers": 3}


class PlainStep:
    """A straightforward eager G+D step (the baseline)."""

    def __init__(self, cfg: TrainConfig):
        torch.manual_seed(0)
        self.cfg = cfg
        self.net_g = build_model("unet", scale=cfg.scale, **cfg.arch_g_kwargs)
        self.net_d = build_model("patchgan", norm=cfg.d_norm, **cfg.arch_d_kwargs)
        self.ema = copy.deepcopy(self.net_g)
        self.opt_g = torch.optim.Adam(self.net_g.parameters(), lr=cfg.lr_g, betas=tuple(cfg.betas), foreach=False)
        self.opt_d = torch.optim.Adam(self.net_d.parameters(), lr=cfg.lr_d, betas=tuple(cfg.betas), foreach=False)

    def step(self, lq, gt):
        cfg = self.cfg
        fake = self.net_g(lq)
        self.opt_d.zero_grad(set_to_none=False)
        l_real, l_fake = losses.d_adversarial(self.net_d(gt), self.net_d(fake.detach()), cfg.gan_type)
        gp = losses.gradient_penalty(self.net_d, gt, mode=cfg.gp_mode)
        (l_real + l_fake + cfg.gp_weight * gp).backward()
        self.opt_d.step()
        out = self.net_g(lq)
        self.opt_g.zero_grad(set_to_none=False)
        l_g = cfg.pixel_weight * losses.pixel_loss(out, gt) + cfg.gan_weight * losses.g_adversarial(self.net_d(out), cfg.gan_type)
        l_g.backward()
        self.opt_g.step()
        with torch.no_grad():
            for pe, p in zip(self.ema.parameters(), self.net_g.parameters()):
                pe.mul_(cfg.ema_decay).add_(p, alpha=1 - cfg.ema_decay)


def make_cfg(size: int, batch: int, **kw) -> TrainConfig:
    base = dict(name="bench", size=size, scale=4, batch=batch, arch_g_kwargs=dict(G_KW), arch_d_kwargs=dict(D_KW),
                gan_type="hinge", gan_weight=0.01, gp_mode="r1", gp_weight=1.0, lazy_k=4, ema_decay=0.999)
    base.update(kw)
    return TrainConfig(**base)


def time_steps(step_fn, lq, gt, seconds: float, min_steps: int = 4) -> float:
    """Images/s over whole lazy periods (a multiple of 4 steps) after 2 warm-up steps."""
    for _ in range(2):
        step_fn(lq, gt)
    n, t0 = 0, time.perf_counter()
    while n < min_steps or time.perf_counter() - t0 < seconds or n % 4:
        step_fn(lq, gt)
        n += 1
    return n * lq.shape[0] / (time.perf_counter() - t0)


def bench_size(size: int, batch: int, seconds: float, compile_: bool) -> dict:
    g = torch.Generator().manual_seed(0)
    lq = torch.rand(batch, 3, size // 4, size // 4, generator=g)
    gt = torch.rand(batch, 3, size, size, generator=g)
    res: dict = {"size": size, "batch": batch}
    variants = {
        "facekit": {},
        "facekit_channels_last": {"channels_last": True},
        "facekit_transpose_up": {"arch_g_kwargs": dict(G_KW, up="transpose")},
        "facekit_gp_every_step": {"lazy_k": 1},
        "facekit_no_foreach": {"fused_optim": False},
    }
    plain_cfg = make_cfg(size, batch)
    res["plain_images_per_s"] = time_steps(PlainStep(plain_cfg).step, lq, gt, seconds)
    for name, kw in variants.items():
        tr = Trainer(make_cfg(size, batch, **kw), torch.device("cpu"))
        res[f"{name}_images_per_s"] = time_steps(tr.step, lq, gt, seconds)
    res["plain_images_per_s_again"] = time_steps(PlainStep(plain_cfg).step, lq, gt, seconds)
    if compile_:
        tr = Trainer(make_cfg(size, batch), torch.device("cpu"))
        try:
            t0 = time.perf_counter()
            tr.net_g = torch.compile(tr.net_g)
            tr.step(lq, gt)
            res["compile_first_step_s"] = round(time.perf_counter() - t0, 1)
            res["facekit_compiled_images_per_s"] = time_steps(tr.step, lq, gt, seconds)
        except Exception as exc:  # inductor needs a C++ toolchain; report instead of failing
            res["facekit_compiled_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    plain = 0.5 * (res["plain_images_per_s"] + res["plain_images_per_s_again"])
    res["ratio_facekit_vs_plain"] = res["facekit_images_per_s"] / plain
    for k, v in list(res.items()):
        if isinstance(v, float):
            res[k] = round(v, 3)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=6.0, help="timed seconds per variant")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compile", action="store_true", help="also try torch.compile on the generator")
    args = ap.parse_args()
    threads = set_threads(args.threads)
    out = {"torch": torch.__version__, "machine": platform.machine(), "threads": threads,
           "arch_g": {"unet": G_KW}, "arch_d": {"patchgan": D_KW}, "loss": "L1 + 0.01 hinge + R1 (lazy k=4)",
           "results": []}
    for size in args.sizes:
        out["results"].append(bench_size(size, args.batch, args.seconds, args.compile))
        print(json.dumps(out["results"][-1]), file=sys.stderr, flush=True)  # partial results as they come
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
