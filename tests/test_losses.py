"""Pixel, adversarial and gradient-penalty losses against hand-computed values."""

import math

import pytest
import torch

from facekit import losses
from facekit.errors import ConfigError


def _linear_d(weights):
    """D(x) = per-pixel 1x1 conv with fixed weights: its input gradient is the weights at every pixel."""
    d = torch.nn.Conv2d(3, 1, 1, bias=False)
    with torch.no_grad():
        d.weight.copy_(torch.tensor(weights, dtype=torch.float32).view(1, 3, 1, 1))
    return d


def test_wgan_gp_equals_hand_computed_value():
    d = _linear_d([1.0, 2.0, 2.0])  # |w| = 3
    real, fake = torch.rand(2, 3, 2, 2), torch.rand(2, 3, 2, 2)
    # gradient of sum over 4 pixels: w at each pixel -> norm sqrt(4 * 9) = 6 -> (6 - 1)^2 = 25
    gp = losses.gradient_penalty(d, real, fake, "interpolate", generator=torch.Generator().manual_seed(0))
    assert gp.item() == pytest.approx(25.0, rel=1e-5)
    # R1: squared norm at the reals = 36
    assert losses.gradient_penalty(d, real, mode="r1").item() == pytest.approx(36.0, rel=1e-5)


def test_gp_on_a_quadratic_critic_uses_the_interpolates():
    # D(x) = 0.5 * sum(x^2): gradient = x_hat, so the penalty depends on where we interpolate.
    class Quad(torch.nn.Module):
        def forward(self, x):
            return 0.5 * (x ** 2)

    real, fake = torch.full((1, 1, 1, 2), 3.0), torch.full((1, 1, 1, 2), 1.0)
    alpha = torch.full((1, 1, 1, 1), 0.25)
    # x_hat = 0.25*3 + 0.75*1 = 1.5 per entry -> ||grad|| = 1.5*sqrt(2)
    expected = (1.5 * math.sqrt(2) - 1) ** 2
    gp = losses.gradient_penalty(Quad(), real, fake, alpha=alpha)
    assert gp.item() == pytest.approx(expected, rel=1e-5)
    gp.backward()  # has a graph


def test_gp_gets_gradients_into_discriminator_weights():
    d = _linear_d([0.1, 0.2, 0.3])
    gp = losses.gradient_penalty(d, torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4))
    gp.backward()
    assert d.weight.grad is not None and d.weight.grad.abs().sum() > 0


def test_adversarial_terms():
    r, f = torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.5])
    l_real, l_fake = losses.d_adversarial(r, f, "hinge")
    assert (l_real.item(), l_fake.item()) == pytest.approx((0.5, 0.75))
    l_real, l_fake = losses.d_adversarial(r, f, "wgan")
    assert (l_real.item(), l_fake.item()) == pytest.approx((-1.0, -0.75))
    l_real, l_fake = losses.d_adversarial(r, f, "lsgan")
    assert (l_real.item(), l_fake.item()) == pytest.approx((1.0, 2.125))
    assert losses.g_adversarial(f, "lsgan").item() == pytest.approx((9 + 0.25) / 2)
    assert losses.g_adversarial([f, f * 2], "hinge").item() == pytest.approx((0.75 + 1.5) / 2)
    with pytest.raises(ConfigError, match="unknown gan_type 'x'.*wgan, hinge, lsgan"):
        losses.d_adversarial(r, f, "x")


def test_pixel_losses():
    a, b = torch.zeros(1, 1, 1, 2), torch.tensor([[[[0.5, -1.0]]]])
    assert losses.pixel_loss(a, b, "l1").item() == pytest.approx(0.75)
    eps = 1e-3
    expected = (math.sqrt(0.25 + eps ** 2) + math.sqrt(1 + eps ** 2)) / 2
    assert losses.pixel_loss(a, b, "charbonnier", eps).item() == pytest.approx(expected)


def test_lazy_scale():
    assert [losses.lazy_scale(s, 4) for s in range(5)] == [4.0, 0.0, 0.0, 0.0, 4.0]
    assert losses.lazy_scale(7, 1) == 1.0


def test_loss_dicts_have_the_named_keys_and_extras():
    out, gt = torch.rand(2, 3, 8, 8, requires_grad=True), torch.rand(2, 3, 8, 8)
    extra = {"identity": (0.5, lambda o, g: (o - g).abs().max())}
    total, terms = losses.generator_losses(out, gt, torch.randn(2, 1, 2, 2), gan_weight=0.1, extra=extra)
    assert set(terms) == {"l_g_pix", "l_g_gan", "l_g_identity"}
    expected = terms["l_g_pix"] + 0.1 * terms["l_g_gan"] + 0.5 * terms["l_g_identity"]
    assert total.item() == pytest.approx(expected.item())
    d = _linear_d([1.0, 1.0, 1.0])
    total, terms = losses.discriminator_losses(d, gt, out, gp_weight=10.0, gp_scale=2.0, gan_type="wgan")
    assert set(terms) == {"l_d_real", "l_d_fake", "l_d_gp"}
    expected = terms["l_d_real"] + terms["l_d_fake"] + 20.0 * terms["l_d_gp"]
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    _, terms = losses.discriminator_losses(d, gt, out, gp_weight=10.0, gp_scale=0.0)
    assert terms["l_d_gp"].item() == 0.0


def test_ragan_losses_equal_hand_computed_values():
    real = torch.tensor([1.0, 3.0])  # mean 2
    fake = torch.tensor([0.0])  # mean 0
    softplus = lambda z: math.log1p(math.exp(z))  # noqa: E731  BCE(z, 1) = softplus(-z); BCE(z, 0) = softplus(z)
    # D: real logits relative to mean fake (1, 3) should be real; fake relative to mean real (-2) fake.
    expected_d = 0.5 * ((softplus(-1) + softplus(-3)) / 2 + softplus(-2))
    # G: the same differences with the labels swapped.
    expected_g = 0.5 * ((softplus(1) + softplus(3)) / 2 + softplus(2))
    assert losses.ragan_d_loss(real, fake).item() == pytest.approx(expected_d, abs=1e-6)
    assert losses.ragan_g_loss(real, fake).item() == pytest.approx(expected_g, abs=1e-6)
    assert expected_d == pytest.approx(0.153926, abs=1e-6) and expected_g == pytest.approx(2.153926, abs=1e-6)


def test_ragan_ls_losses_equal_hand_computed_values():
    real = torch.tensor([1.0, 2.0, 6.0])  # mean 3
    fake = torch.tensor([0.5, -1.5])  # mean -0.5
    # D: mean((r + 0.5 - 1)^2) = (0.25 + 2.25 + 30.25)/3 = 10.91667; mean((f - 3 + 1)^2) = (2.25 + 12.25)/2 = 7.25
    assert losses.ragan_ls_d_loss(real, fake).item() == pytest.approx((32.75 / 3 + 7.25) / 2, abs=1e-5)
    # G: mean((r + 0.5 + 1)^2) = (6.25 + 12.25 + 56.25)/3 = 24.91667; mean((f - 3 - 1)^2) = (12.25 + 30.25)/2 = 21.25
    assert losses.ragan_ls_g_loss(real, fake).item() == pytest.approx((74.75 / 3 + 21.25) / 2, abs=1e-5)
    # Perfectly separated predictions (real 1 above the fake mean and vice versa) give zero D loss.
    zero = losses.ragan_ls_d_loss(torch.tensor([0.5, 0.5]), torch.tensor([-0.5, -0.5]))
    assert zero.item() == pytest.approx(0.0, abs=1e-7)


def test_ragan_ls_averages_over_scales_and_checks_structure():
    real = {"patch": torch.tensor([1.0, 2.0, 6.0]), "full": torch.tensor([0.5, 0.5])}
    fake = {"patch": torch.tensor([0.5, -1.5]), "full": torch.tensor([-0.5, -0.5])}
    expected = ((32.75 / 3 + 7.25) / 2 + 0.0) / 2
    assert losses.ragan_ls_d_loss(real, fake).item() == pytest.approx(expected, abs=1e-5)
    as_list = losses.ragan_ls_g_loss([real["patch"], real["full"]], [fake["patch"], fake["full"]])
    assert as_list.item() == pytest.approx(losses.ragan_ls_g_loss(real, fake).item(), abs=1e-6)
    with pytest.raises(ValueError, match="different scales"):
        losses.ragan_ls_d_loss(real, {"patch": fake["patch"]})
    with pytest.raises(ValueError, match="two tensors"):
        losses.ragan_ls_g_loss(real["patch"], fake)


def test_relativistic_d_terms_are_the_halves_of_the_d_losses():
    g = torch.Generator().manual_seed(0)
    r, f = torch.randn(2, 1, 5, 5, generator=g), torch.randn(2, 1, 5, 5, generator=g)
    l_real, l_fake = losses.relativistic_d_terms("ragan", r, f)
    assert (l_real + l_fake).item() == pytest.approx(losses.ragan_d_loss(r, f).item(), rel=1e-6)
    # each half alone: BCE of the relative logits against its own label, halved
    assert l_real.item() == pytest.approx(
        0.5 * torch.nn.functional.softplus(-(r - f.mean())).mean().item(), rel=1e-6)
    rd, fd = {"patch": r, "full": f[:, :, :2]}, {"patch": f, "full": r[:, :, :2]}
    l_real, l_fake = losses.relativistic_d_terms("ragan_ls", rd, fd)
    assert (l_real + l_fake).item() == pytest.approx(losses.ragan_ls_d_loss(rd, fd).item(), rel=1e-6)
    with pytest.raises(ConfigError, match="not a relativistic GAN loss"):
        losses.relativistic_d_terms("hinge", r, f)


def test_relativistic_types_go_through_the_common_loss_functions():
    g = torch.Generator().manual_seed(1)
    r, f = torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 1, 4, 4, generator=g)
    for kind, d_loss, g_loss in (("ragan", losses.ragan_d_loss, losses.ragan_g_loss),
                                 ("ragan_ls", losses.ragan_ls_d_loss, losses.ragan_ls_g_loss)):
        assert kind in losses.GAN_TYPES and kind in losses.RELATIVISTIC_TYPES
        assert torch.equal(sum(losses.d_adversarial(r, f, kind)), sum(losses.relativistic_d_terms(kind, r, f)))
        assert sum(losses.d_adversarial(r, f, kind)).item() == pytest.approx(d_loss(r, f).item(), rel=1e-6)
        assert torch.equal(losses.g_adversarial(f, kind, real_pred=r), g_loss(r, f))
        out, gt = torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
        total, terms = losses.generator_losses(out, gt, f, gan_type=kind, gan_weight=0.5, real_pred=r)
        assert torch.equal(terms["l_g_gan"], g_loss(r, f))
        assert total.item() == pytest.approx((terms["l_g_pix"] + 0.5 * terms["l_g_gan"]).item())
        with pytest.raises(ConfigError, match="needs the discriminator's logits on real images"):
            losses.g_adversarial(f, kind)
    # ESRGAN's RaGAN on a multi-scale D: the mean of the per-scale losses
    rd, fd = {"a": r, "b": f}, {"a": f, "b": r}
    assert losses.g_adversarial(fd, "ragan", real_pred=rd).item() == pytest.approx(
        (losses.ragan_g_loss(r, f) + losses.ragan_g_loss(f, r)).item() / 2, rel=1e-6)


def test_absolute_losses_average_a_dict_of_scales():
    r, f = torch.tensor([2.0, 0.0]), torch.tensor([-2.0, 0.5])
    l_real, l_fake = losses.d_adversarial({"full": r, "patch": r * 0}, {"full": f, "patch": f * 0}, "hinge")
    assert (l_real.item(), l_fake.item()) == pytest.approx(((0.5 + 1.0) / 2, (0.75 + 1.0) / 2))
    assert losses.g_adversarial({"full": f, "patch": f * 2}, "hinge").item() == pytest.approx((0.75 + 1.5) / 2)
