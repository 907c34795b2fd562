"""PSNR and SSIM per image."""

import math

import numpy as np
import pytest
import torch

from facekit import metrics


def test_psnr_of_a_known_noise_level():
    gt = torch.full((2, 3, 16, 16), 0.5)
    # +-0.1 everywhere: MSE = 0.01 -> 20 dB; +-0.05: MSE 0.0025 -> ~26.02 dB
    sign = torch.where(torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) > 0.5, 1.0, -1.0)
    out = gt + sign * torch.tensor([0.1, 0.05]).view(2, 1, 1, 1)
    p = metrics.psnr(out, gt)
    assert p.shape == (2,)
    assert p.tolist() == pytest.approx([20.0, 10 * math.log10(1 / 0.0025)], abs=1e-4)


def test_psnr_of_gaussian_noise_matches_its_sigma():
    g = torch.Generator().manual_seed(1)
    gt = torch.full((1, 3, 128, 128), 0.5)
    out = gt + 0.02 * torch.randn(gt.shape, generator=g)
    assert metrics.psnr(out, gt).item() == pytest.approx(-20 * math.log10(0.02), abs=0.1)  # ~33.98 dB


def test_identical_images():
    x = torch.rand(3, 3, 20, 20)
    assert torch.allclose(metrics.ssim(x, x), torch.ones(3))
    assert metrics.psnr(x, x).tolist() == [metrics.MAX_PSNR] * 3


def test_ssim_matches_scikit_image():
    # scikit-image is in requirements.txt: a missing install is a failure, not a skip
    import skimage.metrics as skm

    g = torch.Generator().manual_seed(2)
    a = torch.rand(2, 3, 32, 32, generator=g)
    b = (a + 0.1 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    ours = metrics.ssim(a, b)
    for i in range(2):
        ref = skm.structural_similarity(a[i].permute(1, 2, 0).numpy(), b[i].permute(1, 2, 0).numpy(), channel_axis=2,
                                        gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
        assert ours[i].item() == pytest.approx(float(ref), abs=1e-4)
    assert (ours < 1).all() and (ours > 0.3).all()


def test_uint8_helpers_and_bad_input():
    a = np.full((16, 16, 3), 100, np.uint8)
    b = a.copy()
    b[::2] += 10  # half the pixels off by 10/255
    mse = 0.5 * (10 / 255) ** 2
    assert metrics.psnr_uint8(b, a)[0] == pytest.approx(10 * math.log10(1 / mse), abs=1e-3)
    assert metrics.ssim_uint8(a[None], a[None])[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="uint8"):
        metrics.psnr_uint8(a.astype(np.float32), a)
    with pytest.raises(ValueError, match="same shape"):
        metrics.psnr(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 9))


def test_the_registry_names_each_metric_its_function_and_direction():
    from facekit.errors import ConfigError

    assert metrics.get_metric("psnr").fn is metrics.psnr and metrics.get_metric("ssim").fn is metrics.ssim
    assert all(m.higher_is_better and m.description for m in metrics.METRICS.values())
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    for name, m in metrics.METRICS.items():
        assert m.fn(x, x).shape == (2,), name
    with pytest.raises(ConfigError, match="unknown metric 'psnrr'; valid: psnr, ssim"):
        metrics.get_metric("psnrr")


def test_the_evaluation_derives_its_metric_columns_and_directions_from_a_registry():
    from facekit import evaluate

    # the hand-written tables they replace
    assert evaluate.METRICS == ("psnr", "ssim", "lpips", "id_sface", "id_dlib", "rank1_hit", "detected",
                                "lq_detected", "seconds_per_face")
    assert evaluate.LOWER_IS_BETTER == ("lpips", "seconds_per_face")
    assert all(evaluate.SCORES[name] is m for name, m in metrics.METRICS.items())
    assert all(s.description for s in evaluate.SCORES.values())
