"""Training losses: pixel (L1/Charbonnier), adversarial (wgan/hinge/lsgan/vanilla), gradient penalty.

Discriminator outputs may be one tensor or a list of tensors (multi-scale PatchGAN); every
adversarial term is averaged over the list. Loss dicts use the keys ``l_g_pix``, ``l_g_gan``,
``l_d_real``, ``l_d_fake``, ``l_d_gp`` plus ``l_g_<name>`` for extra losses.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from facekit.errors import ConfigError

GAN_TYPES = ("wgan", "hinge", "lsgan", "vanilla")
PIXEL_LOSSES = ("l1", "charbonnier")
GP_MODES = ("interpolate", "r1")

# name -> (weight, callable(out, gt) -> scalar tensor); the identity loss plugs in here later.
ExtraLosses = dict[str, tuple[float, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]]


def _as_list(pred) -> list[torch.Tensor]:
    return list(pred) if isinstance(pred, (list, tuple)) else [pred]


def check_gan_type(gan_type: str) -> str:
    if gan_type not in GAN_TYPES:
        raise ConfigError(f"unknown gan_type {gan_type!r}; valid: {', '.join(GAN_TYPES)}")
    return gan_type


def pixel_loss(out: torch.Tensor, gt: torch.Tensor, kind: str = "l1", eps: float = 1e-3) -> torch.Tensor:
    """Mean L1 or Charbonnier ``sqrt(d^2 + eps^2)`` distance between ``(N,3,H,W)`` images."""
    if kind == "l1":
        return F.l1_loss(out, gt)
    if kind == "charbonnier":
        return torch.sqrt((out - gt) ** 2 + eps * eps).mean()
    raise ConfigError(f"unknown pixel loss {kind!r}; valid: {', '.join(PIXEL_LOSSES)}")


def d_adversarial(real_pred, fake_pred, gan_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Discriminator terms ``(l_d_real, l_d_fake)`` for logits on real and (detached) fake images."""
    check_gan_type(gan_type)
    reals, fakes = _as_list(real_pred), _as_list(fake_pred)
    l_real = l_fake = 0.0
    for r, f in zip(reals, fakes):
        if gan_type == "wgan":
            l_real, l_fake = l_real - r.mean(), l_fake + f.mean()
        elif gan_type == "hinge":
            l_real, l_fake = l_real + F.relu(1 - r).mean(), l_fake + F.relu(1 + f).mean()
        elif gan_type == "lsgan":
            l_real, l_fake = l_real + ((r - 1) ** 2).mean(), l_fake + (f ** 2).mean()
        else:
            l_real = l_real + F.binary_cross_entropy_with_logits(r, torch.ones_like(r))
            l_fake = l_fake + F.binary_cross_entropy_with_logits(f, torch.zeros_like(f))
    return l_real / len(reals), l_fake / len(fakes)


def g_adversarial(fake_pred, gan_type: str) -> torch.Tensor:
    """Generator term ``l_g_gan`` for discriminator logits on (non-detached) fake images."""
    check_gan_type(gan_type)
    fakes = _as_list(fake_pred)
    loss = 0.0
    for f in fakes:
        if gan_type in ("wgan", "hinge"):
            loss = loss - f.mean()
        elif gan_type == "lsgan":
            loss = loss + ((f - 1) ** 2).mean()
        else:
            loss = loss + F.binary_cross_entropy_with_logits(f, torch.ones_like(f))
    return loss / len(fakes)


def gradient_penalty(net_d, real: torch.Tensor, fake: torch.Tensor | None = None, mode: str = "interpolate",
                     generator: torch.Generator | None = None, alpha: torch.Tensor | None = None) -> torch.Tensor:
    """Gradient penalty of ``net_d``.

    Args:
        net_d: the discriminator.
        real: ``(N,3,H,W)`` real images.
        fake: ``(N,3,H,W)`` generated images (detached); needed for "interpolate".
        mode: "interpolate" (WGAN-GP: ``E[(||grad D(x_hat)|| - 1)^2]`` at random interpolates
            ``x_hat = a*real + (1-a)*fake``) or "r1" (``E[||grad D(real)||^2]``; weight it with gamma/2).
        generator: RNG for the interpolation weights ``a ~ U(0,1)`` (one per sample).
        alpha: explicit ``(N,1,1,1)`` interpolation weights (tests).

    Returns:
        A scalar tensor with a graph (for backward into ``net_d``).
    """
    if mode == "interpolate":
        if fake is None:
            raise ConfigError("gradient_penalty(mode='interpolate') needs the fake images")
        if alpha is None:
            alpha = torch.rand((real.shape[0], 1, 1, 1), generator=generator, dtype=real.dtype,
                               device="cpu" if generator is None else generator.device).to(real.device)
        x = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    elif mode == "r1":
        x = real.detach().requires_grad_(True)
    else:
        raise ConfigError(f"unknown gradient penalty mode {mode!r}; valid: {', '.join(GP_MODES)}")
    preds = _as_list(net_d(x))
    (grad,) = torch.autograd.grad(sum(p.sum() for p in preds), x, create_graph=True)
    norm2 = grad.flatten(1).pow(2).sum(1)
    if mode == "r1":
        return norm2.mean()
    return ((torch.sqrt(norm2 + 1e-12) - 1) ** 2).mean()


def lazy_scale(step: int, every: int) -> float:
    """Lazy regularisation: the penalty's weight multiplier at ``step`` (``every`` on every
    ``every``-th step, 0 otherwise), so its average strength matches an every-step penalty."""
    every = max(1, int(every))
    return float(every) if step % every == 0 else 0.0


def generator_losses(out: torch.Tensor, gt: torch.Tensor, fake_pred, *, pixel_weight: float = 1.0,
                     gan_weight: float = 0.01, gan_type: str = "hinge", pixel_kind: str = "l1",
                     extra: ExtraLosses | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total generator loss and its named terms (``l_g_pix``, ``l_g_gan``, ``l_g_<extra>``)."""
    terms = {"l_g_pix": pixel_loss(out, gt, pixel_kind)}
    total = pixel_weight * terms["l_g_pix"]
    if fake_pred is not None:
        terms["l_g_gan"] = g_adversarial(fake_pred, gan_type)
        total = total + gan_weight * terms["l_g_gan"]
    for name, (weight, fn) in (extra or {}).items():
        key = name if name.startswith("l_g_") else f"l_g_{name}"
        terms[key] = fn(out, gt)
        total = total + float(weight) * terms[key]
    return total, terms


def discriminator_losses(net_d, real: torch.Tensor, fake: torch.Tensor, *, gan_type: str = "hinge",
                         gp_weight: float = 0.0, gp_mode: str = "interpolate", gp_scale: float = 1.0,
                         generator: torch.Generator | None = None, real_pred=None
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total discriminator loss and its terms (``l_d_real``, ``l_d_fake``, ``l_d_gp``).

    ``gp_scale`` is the lazy-regularisation multiplier (:func:`lazy_scale`); with 0 the penalty
    is skipped and ``l_d_gp`` is reported as 0.
    """
    fake = fake.detach()
    if real_pred is None:
        real_pred = net_d(real)
    fake_pred = net_d(fake)
    l_real, l_fake = d_adversarial(real_pred, fake_pred, gan_type)
    total = l_real + l_fake
    if gp_weight > 0 and gp_scale > 0:
        gp = gradient_penalty(net_d, real, fake, gp_mode, generator)
        total = total + gp_weight * gp_scale * gp
    else:
        gp = torch.zeros((), device=real.device)
    return total, {"l_d_real": l_real, "l_d_fake": l_fake, "l_d_gp": gp}
