"""Images/s of facekit's G+D training step vs a plain eager PyTorch step (same run, same machine).

Both steps train the same U-Net generator and PatchGAN discriminator with the same losses
(L1 + hinge adversarial + R1 gradient penalty) on the same batch. The plain step is what a
straightforward script does: float32 NCHW, ``Adam`` with default (for-loop) updates,
``zero_grad(set_to_none=False)``, a second generator forward for the G step, the penalty on
every step and a Python-loop EMA. facekit's step is the trainer's own :meth:`facekit.train.Trainer.step`
(its D and G updates are :func:`facekit.train.gan_step`, as in training and the stage fits): one G
forward shared by both steps, lazy R1 (every ``lazy_k`` steps, scaled by k), ``foreach`` Adam,
``set_to_none``, fused EMA lerp and channels-last memory format. Ablations toggle one optimisation
at a time.

Usage: ``python benchmarks/bench_train.py [--arch unet_lr|student|unet] [--sizes 64 128] [--batch 16] [--rounds 5]``.
Prints JSON.
Variants run interleaved (4 steps each, in turn) and the median per variant is reported.
Timings on a shared 2-core machine are noisy: compare numbers from the same run only.

Measured 2026-12-02, --threads 2 --no-ablations --rounds 3 (both cores free), batch 16, images/s:
unet_lr (base 64, colour branch): 64 px facekit 103.2 vs plain 57.2 (1.80x); 128 px 28.3 vs 15.2 (1.86x).
student (the released default):  64 px facekit 186.9 vs plain 112.5 (1.66x); 128 px 59.5 vs 31.8 (1.87x).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time

import torch

from facekit import losses
from facekit.archs import build_model
from facekit.settings import set_threads
from facekit.train import Trainer, TrainConfig

# --arch name -> (registry name, kwargs). unet_lr: the GAN-trained generator (configs/celeba-default.yaml,
# models/celeba-orl-identity); student: the released default (configs/celeba-realtime-student.yaml).
G_ARCHS = {"unet": ("unet", {"base": 32, "depth": 3}),
           "unet_lr": ("unet_lr", {"base": 64, "depth": 2, "global_colour": True}),
           "student": ("unet_lr", {"base": 16, "depth": 2, "global_colour": True, "upsampler": "shuffle"})}
D_KW = {"base": 32, "n_layers": 3}


class PlainStep:
    """A straightforward eager G+D step: the baseline, written out here on purpose (not facekit's code)."""

    def __init__(self, cfg: TrainConfig):
        torch.manual_seed(0)
        self.cfg = cfg
        self.net_g = build_model(cfg.arch_g, scale=cfg.scale, **cfg.arch_g_kwargs)
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


def make_cfg(size: int, batch: int, arch: str = "unet", **kw) -> TrainConfig:
    arch_g, kwargs = G_ARCHS[arch]
    base = dict(name="bench", size=size, scale=4, batch=batch, arch_g=arch_g, arch_g_kwargs=dict(kwargs),
                arch_d_kwargs=dict(D_KW),
                gan_type="hinge", gan_weight=0.01, gp_mode="r1", gp_weight=1.0, lazy_k=4, ema_decay=0.999)
    base.update(kw)
    return TrainConfig(**base)


def interleaved(steps: dict, lq, gt, rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median images/s per variant, per wall second and per CPU second of this process, timing
    one lazy period (4 steps) of each variant in turn per round, so load changes on a shared
    machine hit every variant alike. With other jobs on the cores the CPU-time rate is the
    steadier one (with N threads it is the rate per N cores' worth of CPU time)."""
    for fn in steps.values():  # warm-up (allocator, first-call overheads)
        fn(lq, gt)
    wall: dict[str, list[float]] = {k: [] for k in steps}
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):
        for name, fn in steps.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(4):
                fn(lq, gt)
            wall[name].append(4 * lq.shape[0] / (time.perf_counter() - t0))
            cpu[name].append(4 * lq.shape[0] / max(1e-9, time.process_time() - c0))
    return ({k: statistics.median(v) for k, v in wall.items()}, {k: statistics.median(v) for k, v in cpu.items()})


def bench_size(size: int, batch: int, rounds: int, compile_: bool, ablations: bool = True, arch: str = "unet") -> dict:
    g = torch.Generator().manual_seed(0)
    lq = torch.rand(batch, 3, size // 4, size // 4, generator=g)
    gt = torch.rand(batch, 3, size, size, generator=g)
    res: dict = {"size": size, "batch": batch, "rounds": rounds, "arch_g": arch}
    variants = {
        "facekit": {},
        "facekit_nchw": {"channels_last": False},
        "facekit_gp_every_step": {"lazy_k": 1},
        "facekit_no_foreach": {"fused_optim": False},
    }
    if arch == "unet":  # only the full-resolution U-Net has the transposed-conv switch
        variants["facekit_transpose_up"] = {"arch_g_kwargs": dict(G_ARCHS[arch][1], up="transpose")}
    if not ablations:
        variants = {"facekit": {}}
    steps = {"plain": PlainStep(make_cfg(size, batch, arch)).step}
    for name, kw in variants.items():
        steps[name] = Trainer(make_cfg(size, batch, arch, **kw), torch.device("cpu")).step
    if compile_:
        tr = Trainer(make_cfg(size, batch, arch), torch.device("cpu"))
        try:
            t0 = time.perf_counter()
            tr.net_g = torch.compile(tr.net_g)
            tr.step(lq, gt)
            res["compile_first_step_s"] = round(time.perf_counter() - t0, 1)
            steps["facekit_compiled"] = tr.step
        except Exception as exc:  # inductor needs a C++ toolchain; report instead of failing
            res["facekit_compiled_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    wall, cpu = interleaved(steps, lq, gt, rounds)
    for name, ips in wall.items():
        res[f"{name}_images_per_s"] = round(ips, 3)
    for name, ips in cpu.items():
        res[f"{name}_images_per_cpu_s"] = round(ips, 3)
    res["ratio_facekit_vs_plain"] = round(res["facekit_images_per_s"] / res["plain_images_per_s"], 3)
    res["ratio_facekit_vs_plain_cpu"] = round(res["facekit_images_per_cpu_s"] / res["plain_images_per_cpu_s"], 3)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds of 4 steps per variant")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--compile", action="store_true", help="also try torch.compile on the generator")
    ap.add_argument("--no-ablations", action="store_true", help="only facekit vs plain (quicker)")
    ap.add_argument("--arch", choices=sorted(G_ARCHS), default="unet_lr",
                    help="generator: unet_lr (default, the GAN-trained one), student (the released default), unet")
    args = ap.parse_args()
    threads = set_threads(args.threads)
    out = {"torch": torch.__version__, "machine": platform.machine(), "threads": threads,
           "load_average": [round(x, 2) for x in os.getloadavg()],
           "arch_g": {args.arch: {"arch": G_ARCHS[args.arch][0], **G_ARCHS[args.arch][1]}},
           "arch_d": {"patchgan": D_KW}, "loss": "L1 + 0.01 hinge + R1 (lazy k=4)",
           "results": []}
    for size in args.sizes:
        out["results"].append(bench_size(size, args.batch, args.rounds, args.compile, not args.no_ablations, args.arch))
        print(json.dumps(out["results"][-1]), file=sys.stderr, flush=True)  # partial results as they come
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
