"""Fidelity by construction (issue 24): the faithful generator, the explicit relight step and the
wide randomised training degradations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facekit import randdeg, relight
from facekit.archs import build_model
from facekit.relight import is_gray
from facekit.errors import ConfigError


def _net(seed=0, **kw):
    torch.manual_seed(seed)
    net = build_model("faithful", base=8, depth=2, max_channels=16, res_blocks=1, **kw).eval()
    # a trained-looking residual: large random tail weights, so the constraints are tested hard
    with torch.no_grad():
        net.tail.weight.normal_(0, 0.5)
        net.tail.bias.normal_(0, 0.3)
    return net


def _faces(n=4, side=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 1, 1, generator=g) * 0.6 + 0.2
    return (base + 0.15 * torch.rand(n, 3, side, side, generator=g)).clamp(0, 1)


def test_grey_in_gives_grey_out_for_any_weights():
    net = _net()
    lq = _faces()
    grey = lq.mean(dim=1, keepdim=True).repeat(1, 3, 1, 1)
    with torch.no_grad():
        out = net(grey)
        out_colour = net(lq)
    assert out.shape == (4, 3, 64, 64)
    assert (out.amax(1) - out.amin(1)).max().item() == 0.0
    # the colour input does get colour detail (the gate is not stuck off)
    assert (out_colour.amax(1) - out_colour.amin(1)).max().item() > 0.01
    assert is_gray(grey).all() and not is_gray(lq).any()


def test_output_keeps_the_inputs_low_frequencies_whatever_the_weights():
    net = _net()
    lq = _faces()
    with torch.no_grad():
        out = net(lq)
        res = net.residual(lq)
    base = F.interpolate(lq, scale_factor=4, mode="bicubic", align_corners=False)
    # the raw residual moves the mean colour a lot; the high-passed output does not
    raw_shift = (F.avg_pool2d(res, 64)).abs().max().item()
    out_shift = (F.avg_pool2d(out - base, 64)).abs().max().item()
    assert raw_shift > 0.05
    assert out_shift < 0.1 * raw_shift
    # downscaling the output and blurring at the input scale gives back the input's low-pass content
    blur = net._lowpass_lr
    err = (blur(F.avg_pool2d(out, 4)) - blur(F.avg_pool2d(base, 4))).abs().mean().item()
    assert err < 0.02 * (res.abs().mean().item())


def test_runs_at_any_input_size_with_native_scale():
    net = _net()
    for side in (12, 16, 24, 32, 13):
        with torch.no_grad():
            out = net(torch.rand(1, 3, side, side))
        assert out.shape == (1, 3, 4 * side, 4 * side)
    assert net.any_size


def test_bad_arguments_are_config_errors():
    with pytest.raises(ConfigError, match="lowpass_sigma"):
        build_model("faithful", lowpass_sigma=0)
    with pytest.raises(ConfigError, match="res_blocks"):
        build_model("faithful", res_blocks=-1)


def _natural_faces(n=60, seed=0):
    """Skin-like faces of many tones under neutral light: (N,32,32,3) uint8."""
    rng = np.random.default_rng(seed)
    tone = rng.uniform(0.15, 0.85, n)
    rgb = np.stack([tone ** 0.85, tone ** 1.05, tone ** 1.25], axis=1)  # redder as darker, like skin
    img = rgb[:, None, None, :] * (0.9 + 0.1 * rng.random((n, 32, 32, 1)))
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def test_relight_leaves_natural_faces_alone_and_removes_a_strong_cast():
    faces = _natural_faces()
    net = _net(relight=True)
    relight.set_locus(net, relight.fit_locus(faces))
    x = torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 255
    gains = relight.relight_gains(x, net)
    untouched = (gains - 1).abs().amax(dim=1) < 1e-5
    assert untouched.float().mean() > 0.9  # radius 3: natural faces keep their colour exactly
    # a tungsten cast (R up, B down) on a mid-tone face is moved back towards the locus
    face = x[30:31]
    cast = (face * torch.tensor([1.6, 1.0, 0.45]).view(1, 3, 1, 1)).clamp(0, 1)
    fixed, g = relight.relight(cast, net)
    _, c_face = relight.region_stats(face)
    _, c_cast = relight.region_stats(cast)
    _, c_fixed = relight.region_stats(fixed)
    assert (c_fixed - c_face).norm() < 0.5 * (c_cast - c_face).norm()
    assert g[0, 0] < 1 < g[0, 2]
    # grey faces get equal gains (stay grey), and the step can be switched off
    grey = x[:2].mean(dim=1, keepdim=True).repeat(1, 3, 1, 1) * 0.2
    gg = relight.relight_gains(grey, net)
    assert torch.allclose(gg[:, 0], gg[:, 1]) and torch.allclose(gg[:, 1], gg[:, 2])
    net.relight = False
    with torch.no_grad():
        off = net(cast)
    base = F.interpolate(cast, scale_factor=4, mode="bicubic", align_corners=False)
    assert (off.mean(dim=(2, 3)) - base.mean(dim=(2, 3))).abs().max() < 0.01  # mean colour = the input's


def test_relight_brightens_only_below_the_darkest_natural_face():
    faces = _natural_faces()
    net = _net(relight=True)
    locus = relight.fit_locus(faces)
    relight.set_locus(net, locus)
    x = torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 255
    dark = x * 0.15
    g = relight.relight_gains(dark, net)
    assert (g >= 1).all() and (g <= relight.MAX_EXPOSURE_GAIN + 1e-5).all()
    mean, _ = relight.region_stats(relight.relight(dark, net)[0])
    luma = mean @ torch.tensor(relight.LUMA_709)
    assert (luma <= locus["luma_floor"] * 1.05 + 1e-6).all()  # lifted to the floor at most, never beyond


def test_randdeg_pairs_are_deterministic_varied_and_grey_when_drawn_grey():
    face = _natural_faces(1)[0].repeat(2, 0).repeat(2, 1)  # 64 px
    a = randdeg.degrade_pair(face, 4, np.random.default_rng([1, 2]))
    b = randdeg.degrade_pair(face, 4, np.random.default_rng([1, 2]))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert a[0].shape == (16, 16, 3) and a[1].shape == (64, 64, 3)
    kinds, greys, lights = set(), 0, 0
    for i in range(200):
        lq, gt, p = randdeg.degrade_pair(face, 4, np.random.default_rng([7, i]), gray_prob=0.3)
        kinds.update(op.get("kind", op["op"]) for op in p["ops"])
        if p["gray"]:
            greys += 1
            assert np.ptp(lq, axis=2).max() == 0 and np.ptp(gt, axis=2).max() == 0
        lights += p["light"]["exposure_stops"] != 0
        assert 0 <= lq.min() and lq.max() <= 1
    assert {"iso", "aniso", "motion", "line", "defocus", "gauss", "poisson", "jpeg"} <= kinds
    assert 30 < greys < 90 and lights > 30


def test_random_preset_dataset_and_val_pairs():
    from facekit.dataset import PairedFaceDataset, make_eval_pairs

    faces = np.stack([_natural_faces(1, s)[0].repeat(2, 0).repeat(2, 1) for s in range(3)])
    ds = PairedFaceDataset(faces, preset="random", scale=4, seed=3, gray_prob=0.2)
    item = ds[1]
    assert item["lq"].shape == (3, 16, 16) and item["gt"].shape == (3, 64, 64) and item["condition"] == "random"
    lq, gt = make_eval_pairs(faces, "random", 4, seed=5)
    lq2, _ = make_eval_pairs(faces, "random", 4, seed=5)
    assert lq.shape == (3, 3, 16, 16) and torch.equal(lq, lq2)


def test_training_refuses_evaluation_only_sources():
    from facekit.train import TrainConfig

    with pytest.raises(ConfigError, match="evaluation-only"):
        TrainConfig(data="pins:/tmp")
    with pytest.raises(ConfigError, match="evaluation-only"):
        TrainConfig(sources=[{"data": "pins:/x", "share": 0.2}])
    with pytest.raises(ConfigError, match="add up"):
        TrainConfig(mix_data="orl", mix_share=0.5, sources=[{"data": "orl", "share": 0.6}])
    cfg = TrainConfig(mix_data="orl", mix_people=[21, 40], mix_share=0.1,
                      sources=[{"data": "utkface:/x", "share": 0.3}])
    assert cfg.mix_entries() == [("orl", [21, 40], 0.1), ("utkface:/x", None, 0.3)]


def test_onnx_export_matches_torch_with_relight_on(tmp_path):
    import onnxruntime as ort

    from facekit.chain import export_onnx

    net = _net(relight=True)
    relight.set_locus(net, relight.fit_locus(_natural_faces()))
    path = export_onnx(net, tmp_path / "f.onnx", 16)
    x = _faces(3)
    x[1] = x[1].mean(dim=0, keepdim=True)  # a grey face in the batch
    x[2] = (x[2] * torch.tensor([1.0, 0.8, 0.4]).view(3, 1, 1)).clamp(0, 1)  # a cast the relight moves
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"lq": x.numpy()})[0]
    with torch.no_grad():
        want = net(x).numpy()
    assert np.abs(got - want).max() < 1e-4
    assert np.ptp(got[1], axis=0).max() == 0.0


def test_chroma_detail_off_adds_the_same_detail_to_every_channel():
    net = _net()
    lq = _faces(3)
    with torch.no_grad():
        full = net(lq)
        net.chroma_detail = False
        luma = net(lq)
    base = F.interpolate(lq, scale_factor=4, mode="bicubic", align_corners=False)
    d = luma - base
    assert d.abs().max() > 1e-3  # detail is still added ...
    assert (d - d[:, :1]).abs().max() < 1e-5  # ... equally to R, G and B: no colour from the network
    assert (full - luma).abs().max() > 1e-3  # (the chroma detail was there before)
    # the same weights load into either setting (a release-time switch)
    other = build_model("faithful", base=8, depth=2, max_channels=16, res_blocks=1, chroma_detail=False)
    other.load_state_dict(net.state_dict())
