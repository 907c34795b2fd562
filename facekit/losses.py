"""Training losses: pixel (L1/Charbonnier), adversarial, gradient penalty; every GAN loss of facekit.

Adversarial losses (``gan_type``): the absolute ``wgan``, ``hinge``, ``lsgan`` and ``vanilla``,
and the relativistic average ones, ``ragan`` (ESRGAN, Wang et al. 2018: BCE on
``D(x) - mean D(y)``) and ``ragan_ls`` (DeblurGAN-v2, Kupyn et al. 2019: least squares on the
same differences). A relativistic generator term also needs the discriminator's logits on real
images (pass them detached).

Discriminator outputs may be one tensor, a list of tensors or a dict of tensors by scale
(multi-scale PatchGAN, :class:`facekit.archs.deblurganv2.DoubleScaleDiscriminator`); every
adversarial term is averaged over the scales. Loss dicts use the keys ``l_g_pix``, ``l_g_gan``,
``l_d_real``, ``l_d_fake``, ``l_d_gp`` plus ``l_g_<name>`` for extra losses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Callable

import torch
import torch.nn.functional as F

from facekit.errors import ConfigError

RELATIVISTIC_TYPES = ("ragan_ls", "ragan")  # DeblurGAN-v2's RaGAN-LS, ESRGAN's RaGAN
GAN_TYPES = ("wgan", "hinge", "lsgan", "vanilla", *RELATIVISTIC_TYPES)
PIXEL_LOSSES = ("l1", "charbonnier")
GP_MODES = ("interpolate", "r1")

# name -> (weight, callable(out, gt) -> scalar tensor); the identity loss plugs in here later.
ExtraLosses = dict[str, tuple[float, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]]


def _as_list(pred) -> list[torch.Tensor]:
    if isinstance(pred, Mapping):  # scales by name, in a fixed order
        return [pred[k] for k in sorted(pred)]
    return list(pred) if isinstance(pred, (list, tuple)) else [pred]


def _as_pairs(real_pred, fake_pred) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(real, fake)`` logit pairs per scale from two tensors, two dicts or two lists."""
    if isinstance(real_pred, torch.Tensor) and isinstance(fake_pred, torch.Tensor):
        return [(real_pred, fake_pred)]
    if isinstance(real_pred, Mapping) and isinstance(fake_pred, Mapping):
        if set(real_pred) != set(fake_pred) or not real_pred:
            raise ValueError(f"real/fake predictions have different scales: {sorted(real_pred)} vs {sorted(fake_pred)}")
        return [(real_pred[k], fake_pred[k]) for k in sorted(real_pred)]
    if isinstance(real_pred, Sequence) and isinstance(fake_pred, Sequence) and len(real_pred) == len(fake_pred) > 0:
        return list(zip(real_pred, fake_pred))
    raise ValueError(
        "relativistic GAN losses take two tensors, two dicts with the same keys, or two equal-length lists; "
        f"got {type(real_pred).__name__} and {type(fake_pred).__name__}"
    )


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


def ragan_ls_d_loss(real_pred, fake_pred) -> torch.Tensor:
    """Relativistic average least-squares discriminator loss (DeblurGAN-v2, eq. 2).

    ``L_D = ( mean (D(x) - mean D(G(z)) - 1)^2 + mean (D(G(z)) - mean D(x) + 1)^2 ) / 2``,
    averaged over scales when given a dict/list of logit maps (as
    :class:`facekit.archs.deblurganv2.DoubleScaleDiscriminator` returns). The means are over the
    current batch, not DeblurGAN-v2's 50-entry history pool, so the loss is a pure function of
    its inputs.

    Args:
        real_pred: D logits on sharp images: a tensor, or a dict/list of tensors per scale.
        fake_pred: D logits on generated images (detached from G), same structure.

    Returns:
        Scalar loss.
    """
    losses = [
        0.5 * (torch.mean((r - f.mean() - 1) ** 2) + torch.mean((f - r.mean() + 1) ** 2))
        for r, f in _as_pairs(real_pred, fake_pred)
    ]
    return torch.stack(losses).mean()


def ragan_ls_g_loss(real_pred, fake_pred) -> torch.Tensor:
    """Relativistic average least-squares generator loss (targets of :func:`ragan_ls_d_loss` swapped).

    ``L_G = ( mean (D(x) - mean D(G(z)) + 1)^2 + mean (D(G(z)) - mean D(x) - 1)^2 ) / 2``,
    averaged over scales. Pass ``real_pred`` detached; the gradient flows through ``fake_pred``.

    Args:
        real_pred: D logits on real images (detached): a tensor, or a dict/list per scale.
        fake_pred: D logits on generated images (with G's graph), same structure.

    Returns:
        Scalar loss.
    """
    losses = [
        0.5 * (torch.mean((r - f.mean() + 1) ** 2) + torch.mean((f - r.mean() - 1) ** 2))
        for r, f in _as_pairs(real_pred, fake_pred)
    ]
    return torch.stack(losses).mean()


def ragan_d_loss(real_pred: torch.Tensor, fake_pred: torch.Tensor) -> torch.Tensor:
    """ESRGAN's relativistic average discriminator loss (binary cross-entropy on logits).

    ``L_D = 0.5*BCE(C(real) - mean C(fake), 1) + 0.5*BCE(C(fake) - mean C(real), 0)``.

    Args:
        real_pred: discriminator logits on real images, any shape.
        fake_pred: logits on generated images (detached from the generator), any shape.

    Returns:
        Scalar loss.
    """
    l_d_real = F.binary_cross_entropy_with_logits(real_pred - fake_pred.mean(), torch.ones_like(real_pred))
    l_d_fake = F.binary_cross_entropy_with_logits(fake_pred - real_pred.mean(), torch.zeros_like(fake_pred))
    return 0.5 * (l_d_real + l_d_fake)


def ragan_g_loss(real_pred: torch.Tensor, fake_pred: torch.Tensor) -> torch.Tensor:
    """ESRGAN's relativistic average generator loss (the D loss with labels swapped).

    ``L_G = 0.5*BCE(C(real) - mean C(fake), 0) + 0.5*BCE(C(fake) - mean C(real), 1)``; the
    generator receives gradients from both terms. Pass ``real_pred`` detached.

    Args:
        real_pred: discriminator logits on real images (detached), any shape.
        fake_pred: logits on generated images (with the generator's graph), any shape.

    Returns:
        Scalar loss.
    """
    l_g_real = F.binary_cross_entropy_with_logits(real_pred - fake_pred.mean(), torch.zeros_like(real_pred))
    l_g_fake = F.binary_cross_entropy_with_logits(fake_pred - real_pred.mean(), torch.ones_like(fake_pred))
    return 0.5 * (l_g_real + l_g_fake)


def relativistic_d_terms(gan_type: str, real_pred, fake_pred) -> tuple[torch.Tensor, torch.Tensor]:
    """``(l_d_real, l_d_fake)``: the real and fake halves of a relativistic discriminator loss.

    Their sum is :func:`ragan_d_loss` (``gan_type="ragan"``) or :func:`ragan_ls_d_loss`
    (``"ragan_ls"``); split so a training log shows how D judges each side.

    Args:
        gan_type: ``"ragan"`` or ``"ragan_ls"``.
        real_pred: D logits on real images: a tensor, or a dict of tensors by scale (averaged over
            the scales, in sorted key order).
        fake_pred: D logits on generated images (detached from G), same structure.

    Returns:
        Two scalar tensors.
    """
    if isinstance(real_pred, Mapping):
        terms = [relativistic_d_terms(gan_type, real_pred[k], fake_pred[k]) for k in sorted(real_pred)]
        return (torch.stack([t[0] for t in terms]).mean(), torch.stack([t[1] for t in terms]).mean())
    rel_real, rel_fake = real_pred - fake_pred.mean(), fake_pred - real_pred.mean()
    if gan_type == "ragan_ls":
        return 0.5 * torch.mean((rel_real - 1) ** 2), 0.5 * torch.mean((rel_fake + 1) ** 2)
    if gan_type == "ragan":
        return (0.5 * F.binary_cross_entropy_with_logits(rel_real, torch.ones_like(rel_real)),
                0.5 * F.binary_cross_entropy_with_logits(rel_fake, torch.zeros_like(rel_fake)))
    raise ConfigError(f"{gan_type!r} is not a relativistic GAN loss; valid: {', '.join(RELATIVISTIC_TYPES)}")


def d_adversarial(real_pred, fake_pred, gan_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Discriminator terms ``(l_d_real, l_d_fake)`` for logits on real and (detached) fake images."""
    check_gan_type(gan_type)
    if gan_type in RELATIVISTIC_TYPES:
        return relativistic_d_terms(gan_type, real_pred, fake_pred)
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


def g_adversarial(fake_pred, gan_type: str, real_pred=None) -> torch.Tensor:
    """Generator term ``l_g_gan`` for discriminator logits on (non-detached) fake images.

    Args:
        fake_pred: D logits on the generator's output (with its graph): a tensor, or a list/dict
            of tensors per scale.
        gan_type: one of :data:`GAN_TYPES`.
        real_pred: D logits on real images, detached, same structure; needed (only) by the
            relativistic types.

    Returns:
        Scalar loss, averaged over scales.
    """
    check_gan_type(gan_type)
    if gan_type in RELATIVISTIC_TYPES:
        if real_pred is None:
            raise ConfigError(f"the relativistic GAN loss {gan_type!r} needs the discriminator's logits on real images")
        if gan_type == "ragan_ls":
            return ragan_ls_g_loss(real_pred, fake_pred)
        pairs = _as_pairs(real_pred, fake_pred)
        if len(pairs) == 1:
            return ragan_g_loss(*pairs[0])
        return torch.stack([ragan_g_loss(r, f) for r, f in pairs]).mean()
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
                     extra: ExtraLosses | None = None, real_pred=None
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total generator loss and its named terms (``l_g_pix``, ``l_g_gan``, ``l_g_<extra>``).

    Args:
        out: ``(N,3,H,W)`` generator output (with its graph); gt: ``(N,3,H,W)`` targets in [0,1].
        fake_pred: D logits on ``out`` (see :func:`g_adversarial`), or None for no GAN term.
        real_pred: D logits on ``gt``, detached; needed by the relativistic ``gan_type`` values.
        extra: further ``{name: (weight, fn(out, gt))}`` terms, logged as ``l_g_<name>``.

    Returns:
        ``(weighted total, {name: unweighted term})``, scalar tensors.
    """
    terms = {"l_g_pix": pixel_loss(out, gt, pixel_kind)}
    total = pixel_weight * terms["l_g_pix"]
    if fake_pred is not None:
        terms["l_g_gan"] = g_adversarial(fake_pred, gan_type, real_pred)
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
