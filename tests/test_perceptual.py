"""ST-LPIPS: built from the weights inside stlpips-pytorch (no downloads), and it measures what it should."""

import sys

import numpy as np
import pytest
import torch

from facekit import perceptual

pytestmark = pytest.mark.skipif(not perceptual.is_available("alex"),
                                reason="stlpips-pytorch is not installed (pip install stlpips-pytorch==0.0.2)")


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    from facekit.data import load_faces

    f = load_faces("orl", size=64, progress=False, limit=20, cache_root=tmp_path_factory.mktemp("orl"))
    return torch.from_numpy(f.images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)


@pytest.fixture(scope="module")
def metric():
    return perceptual.STLPIPS("alex")


def _psnr(a, b):
    return (10 * torch.log10(1.0 / ((a - b) ** 2).mean((1, 2, 3)))).numpy()


def test_weights_come_from_the_package_and_nothing_downloads(monkeypatch):
    def no_download(*args, **kwargs):
        raise AssertionError("ST-LPIPS tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    path = perceptual.weights_path("alex")
    assert path.name == "alex_shift_tolerant.pth" and "stlpips_pytorch" in path.parts
    m = perceptual.STLPIPS("alex")
    # every parameter was loaded from the file (strict): compare one backbone conv with the file
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert torch.equal(m.model.net.slice1[0].weight, state["net.slice1.0.weight"])
    assert torch.equal(m.model.lins[4].model[1].weight, state["lin4.model.1.weight"])
    # the import stubs (torchsummary/IPython) do not leak into sys.modules
    assert "torchsummary" not in sys.modules or sys.modules["torchsummary"].__spec__ is not None


def test_unknown_net_names_the_valid_ones():
    with pytest.raises(perceptual.PerceptualUnavailable, match="alex, vgg"):
        perceptual.weights_path("squeeze")


def test_identical_is_zero_and_distance_grows_with_noise(metric, faces):
    x = faces[:6]
    assert torch.allclose(metric(x, x), torch.zeros(6), atol=1e-6)
    g = torch.Generator().manual_seed(0)
    d = [metric(x, (x + s * torch.randn(x.shape, generator=g)).clamp(0, 1)).mean().item() for s in (0.02, 0.05, 0.1)]
    assert 0 < d[0] < d[1] < d[2]


def test_shift_tolerant_unlike_psnr(metric, faces):
    """A one-pixel shift is invisible; PSNR calls it worse than faint noise, ST-LPIPS does not."""
    x = faces[:8]
    shifted = torch.roll(x, 1, dims=3)
    noisy = (x + 0.02 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    assert _psnr(x, shifted).mean() < _psnr(x, noisy).mean() - 5  # PSNR: the shift is far "worse"
    assert metric(x, shifted).mean() < 0.5 * metric(x, noisy).mean()


def test_function_interface_and_bad_input(faces):
    x = faces[:2]
    d = perceptual.stlpips(x, x.flip(0))
    assert d.shape == (2,) and d.dtype == torch.float32 and (d > 0.05).all()
    with pytest.raises(ValueError, match="same shape"):
        perceptual.stlpips(x, x[:, :, :32])
    with pytest.raises(ValueError, match="at least 32x32"):
        perceptual.stlpips(x[:, :, :16, :16], x[:, :, :16, :16])
