"""Video pipeline: IDs on a synthetic clip, outputs, bad input, live-stream drops, flicker, gallery identities."""

import csv
import json
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from facekit import synthclip
from facekit.errors import CheckpointError, ConfigError, VideoReadError
from facekit.settings import shared_path
from facekit.tracking import iou
from facekit.video import VideoConfig, make_enhancer, process_video

N_FRAMES = 40
SIZE = (320, 240)


def _cfg(**kw):
    kw.setdefault("enhancer", "none")
    kw.setdefault("progress", False)
    return VideoConfig(**kw)


def _count_frames(path):
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"{path} does not open"
    n, shape = 0, None
    while True:
        ok, f = cap.read()
        if not ok:
            break
        n, shape = n + 1, f.shape
    cap.release()
    return n, shape


@pytest.fixture(scope="module")
def faces():
    from facekit.data import load_faces

    return load_faces("orl", size=64, progress=False).images


@pytest.fixture(scope="module")
def clip(faces, tmp_path_factory):
    out = tmp_path_factory.mktemp("clip")
    return synthclip.make_clip(faces, out, n_frames=N_FRAMES, size=SIZE, seed=3, speed=2.0)


@pytest.fixture(scope="module")
def clip_frames(clip):
    cap = cv2.VideoCapture(str(clip))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    return frames


def test_synthetic_clip_has_truth(clip):
    truth = synthclip.load_truth(clip.parent)
    assert truth["boxes"].shape == (N_FRAMES, 1, 4)
    assert truth["faces"].shape == (N_FRAMES, 1, 64, 64, 3)
    moved = np.abs(truth["boxes"][-1, 0, :2] - truth["boxes"][0, 0, :2]).max()
    assert moved > 20  # the face really moves
    # lighting changes over time (exposure and colour temperature)
    assert np.ptp(truth["exposure_stops"]) > 0.3 and np.ptp(truth["kelvin"]) > 500
    assert _count_frames(clip) == (N_FRAMES, (SIZE[1], SIZE[0], 3))


def test_ids_stable_outputs_match_input(clip, tmp_path):
    res = process_video(clip, tmp_path, _cfg(detect_every=2))
    assert res.tracks == 1 and res.frames == N_FRAMES and not res.truncated
    tracks = json.loads((tmp_path / "tracks.json").read_text())["tracks"]
    assert [t["id"] for t in tracks] == [1]
    boxes = tracks[0]["boxes"]
    truth = synthclip.load_truth(clip.parent)["boxes"][:, 0]
    seen = [(tracks[0]["first"] + i, b) for i, b in enumerate(boxes) if b is not None]
    assert len(seen) >= 0.9 * N_FRAMES
    # tracked boxes (also on frames between detections) follow the moving face: the face box
    # (smaller than the pasted square, which includes hair and background) stays at its centre
    dist = [np.hypot(b[0] + b[2] / 2 - t[0] - t[2] / 2, b[1] + b[3] / 2 - t[1] - t[3] / 2) / t[2]
            for t, b in ((truth[f], b) for f, b in seen)]
    assert max(dist) < 0.2, dist
    assert all(iou(np.array(b, float), truth[f].astype(float)) > 0.2 for f, b in seen)
    for key in ("video", "webm"):
        n, shape = _count_frames(res.outputs[key])
        assert n == N_FRAMES and shape[:2] == (SIZE[1], SIZE[0])
    assert (tmp_path / "gallery" / "track_0001.png").is_file()
    rows = (tmp_path / "tracks.csv").read_text().splitlines()
    assert rows[0].startswith("track_id") and len(rows) == 2
    # without a gallery: no identity columns, names or summary entry
    assert "identity" not in rows[0] and "identity" not in tracks[0]
    assert rows[0].split(",")[-3:] == ["gallery", "fused", "fused_frames"]
    assert rows[1].split(",")[-3:-1] == ["gallery/track_0001.png", "gallery/track_0001_fused.png"]
    assert (tmp_path / "gallery" / "track_0001_fused.png").is_file()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["frames"] == N_FRAMES and summary["tracks"] == 1 and summary["dropped"] == 0
    assert set(summary["stage_ms"]) >= {"detect", "enhance", "read", "write"}
    assert summary["identities"] is None and "identify" not in summary["stage_ms"]


def test_no_face_clip_gives_no_tracks(tmp_path, faces):
    src = shared_path("data", "video", "no_face.mp4")
    if not src.is_file():  # a generated clip with no face: background only
        src = synthclip.make_clip(faces[:1], tmp_path / "src", n_frames=12, size=SIZE, face_frac=0.0001)
    res = process_video(src, tmp_path / "out", _cfg(max_frames=15))
    assert res.tracks == 0 and res.frames > 0
    assert json.loads((tmp_path / "out" / "tracks.json").read_text())["tracks"] == []
    assert _count_frames(res.outputs["video"])[0] == res.frames


class _JitteryDetector:
    """YuNet with a seeded random delay per call, so detection ahead runs early or late (issue 24)."""

    def __init__(self, seed: int, fail_at: int | None = None):
        from facekit.faces import FaceDetector

        self.det = FaceDetector()
        self.rng = np.random.default_rng(seed)
        self.calls = 0
        self.fail_at = fail_at

    def detect(self, rgb):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("detector broke")
        time.sleep(float(self.rng.uniform(0.0, 0.01)))
        return self.det.detect(rgb)


@pytest.mark.parametrize("detect_every", [1, 2])
def test_detection_ahead_matches_serial_processing(faces, tmp_path, detect_every):
    """process_video detects the next frame in its own thread while the current one is enhanced; the
    frames (in order), tracks, gallery crops and fusion crops are those of FaceVideoProcessor.process
    called frame by frame (issue 24)."""
    from facekit.video import FaceVideoProcessor
    from facekit.video_tracks import fuse_records

    src = synthclip.make_clip(faces, tmp_path / "src", n_frames=24, size=SIZE, seed=11, n_faces=2,
                              face_frac=0.3, speed=3.0)
    cfg = _cfg(enhancer="sharpen", detect_every=detect_every, annotate=False, webm=False)
    seen = []
    res = process_video(src, tmp_path / "out", cfg, detector=_JitteryDetector(seed=detect_every),
                        frame_hook=lambda i, inp, out, f: seen.append((i, out.copy(), [x[0] for x in f])))
    assert [i for i, _, _ in seen] == list(range(24)) and res.frames == 24

    serial = FaceVideoProcessor(_cfg(enhancer="sharpen", detect_every=detect_every, annotate=False))
    cap = cv2.VideoCapture(str(src))
    for i, out, ids in seen:
        ok, frame = cap.read()
        assert ok
        want, want_faces = serial.process(i, frame)
        assert np.array_equal(out, want), f"frame {i} differs from the serial path"
        assert ids == [x[0] for x in want_faces]
    assert len(serial.records) == res.tracks >= 2
    fuse_records(serial.records, "sharpen")  # the kept raw crops fuse the same way
    tracks = json.loads((tmp_path / "out" / "tracks.json").read_text())["tracks"]
    for t in tracks:
        rec = serial.records[t["id"]]
        assert t["best_frame"] == rec.best_frame and t["first"] == rec.first and t["last"] == rec.last
        assert t["boxes"] == [list(rec.boxes[f]) if f in rec.boxes else None for f in range(rec.first, rec.last + 1)]
        assert t["fused_frames"] == (rec.fusion["used"] if rec.fusion else 0)
    assert sum(bool(t["fused_frames"]) for t in tracks) >= 2


def test_detector_error_in_its_thread_is_raised_and_outputs_finalised(clip, tmp_path):
    """A detector failing in the detection thread stops the run with its own error (issue 24)."""
    with pytest.raises(RuntimeError, match="detector broke"):
        process_video(clip, tmp_path, _cfg(detect_every=1), detector=_JitteryDetector(seed=0, fail_at=5))
    assert (tmp_path / "annotated.mp4").is_file()  # the frames before it were written and renamed


def test_truncated_file_finalises_output(clip, tmp_path):
    data = clip.read_bytes()
    bad = tmp_path / "truncated.avi"
    bad.write_bytes(data[: int(len(data) * 0.6)])
    res = process_video(bad, tmp_path / "out", _cfg())
    assert res.truncated and "truncated" in res.message and str(bad) in res.message
    assert 0 < res.frames < N_FRAMES
    assert _count_frames(res.outputs["video"])[0] == res.frames
    assert _count_frames(res.outputs["webm"])[0] == res.frames
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["truncated"] is True


def test_bad_files_raise_clear_errors(tmp_path):
    with pytest.raises(VideoReadError, match="no such video file"):
        process_video(tmp_path / "missing.mp4", tmp_path / "o1", _cfg())
    empty = tmp_path / "zero.avi"
    w = cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 25, SIZE)
    w.release()
    with pytest.raises(VideoReadError, match="zero.avi: no readable frame"):
        process_video(empty, tmp_path / "o2", _cfg())
    mp4 = tmp_path / "cut.mp4"  # mp4's index (moov) is at the end: a cut file does not open
    w = cv2.VideoWriter(str(mp4), cv2.VideoWriter_fourcc(*"mp4v"), 25, SIZE)
    for i in range(10):
        w.write(np.full((SIZE[1], SIZE[0], 3), i * 20, np.uint8))
    w.release()
    mp4.write_bytes(mp4.read_bytes()[:2000])
    with pytest.raises(VideoReadError, match="cut.mp4: cannot open"):
        process_video(mp4, tmp_path / "o3", _cfg())
    (tmp_path / "imgs").mkdir()
    with pytest.raises(VideoReadError, match="no image files"):
        process_video(tmp_path / "imgs", tmp_path / "o4", _cfg())


def test_unreachable_url_errors_quickly(tmp_path):
    t0 = time.perf_counter()
    with pytest.raises(VideoReadError, match="rtsp://127.0.0.1:9/cam"):
        process_video("rtsp://127.0.0.1:9/cam", tmp_path, _cfg(open_timeout_s=3))
    assert time.perf_counter() - t0 < 5

    def hanging_open(target):  # an open that never returns (a black-holed host)
        threading.Event().wait(30)

    t0 = time.perf_counter()
    with pytest.raises(VideoReadError, match="within 0.5 s"):
        process_video("rtsp://10.255.255.1/cam", tmp_path, _cfg(open_timeout_s=0.5), capture_factory=hanging_open)
    assert time.perf_counter() - t0 < 2


class FakeStream:
    """A live capture that serves ``frames[start:stop]`` and then fails (a dropped connection)."""

    def __init__(self, frames, start, stop, delay=0.0):
        self.frames, self.pos, self.stop, self.delay = frames, start, stop, delay

    def isOpened(self):  # noqa: N802
        return True

    def read(self):
        if self.delay:
            time.sleep(self.delay)
        if self.pos >= self.stop:
            return False, None
        self.pos += 1
        return True, self.frames[self.pos - 1].copy()

    def get(self, prop):
        return 0.0

    def release(self):
        pass


def test_stream_drop_reconnects_then_finalises(clip_frames, tmp_path):
    opens = []
    segments = [(0, 15), (15, 25)]

    def factory(target):
        opens.append(target)
        if len(opens) <= len(segments):
            return FakeStream(clip_frames, *segments[len(opens) - 1])
        return None  # the camera is gone for good

    res = process_video("rtsp://camera.local/stream", tmp_path, _cfg(reconnect=2, reconnect_delay_s=0.01,
                                                                     queue_size=64),
                        capture_factory=factory)
    # 1 open + 1 successful reconnect + 2 failed attempts after the second drop
    assert len(opens) == 4 and res.reconnects == 3
    assert res.frames == 25 and res.dropped == 0  # nothing lost up to the drop
    assert "stream stopped after 25 frames" in res.message
    assert _count_frames(res.outputs["video"]) == (25, (SIZE[1], SIZE[0], 3))
    assert _count_frames(res.outputs["webm"])[0] == 25


def test_live_source_drops_stale_frames(clip_frames, tmp_path):
    def slow_enhancer(crops):
        time.sleep(0.03)
        return crops

    def factory(target):
        return FakeStream(clip_frames, 0, len(clip_frames), delay=0.002)

    cfg = _cfg(reconnect=0, queue_size=2, live=True, detect_every=4)
    res = process_video("rtsp://camera.local/stream", tmp_path, cfg, capture_factory=factory,
                        enhancer=slow_enhancer)
    assert res.dropped > 0
    assert res.frames + res.dropped == len(clip_frames)
    assert _count_frames(res.outputs["video"])[0] == res.frames


def test_temporal_smoothing_lowers_flicker(faces, tmp_path):
    clip = synthclip.make_clip(faces, tmp_path / "src", n_frames=30, size=SIZE, seed=5, speed=0.3,
                               preset="cctv-heavy")
    truth = synthclip.load_truth(clip.parent)
    out = {}
    for temporal in (0.0, 0.7):
        psnrs = []

        def hook(index, inp, outp, faces_):
            psnrs.append(synthclip.crop_psnr(outp[:, :, ::-1], truth["boxes"][index, 0], truth["faces"][index, 0]))

        res = process_video(clip, tmp_path / f"t{temporal}", _cfg(enhancer="sharpen", temporal=temporal,
                                                                  detect_every=1, webm=False), frame_hook=hook)
        assert res.tracks == 1
        out[temporal] = (res.flicker, float(np.mean(psnrs)))
    assert out[0.7][0] < 0.8 * out[0.0][0], out
    assert out[0.7][1] > out[0.0][1] - 0.5, out  # smoothing does not cost fidelity to the truth


def test_auto_enhancer_is_the_released_chain_when_installed(tmp_path, monkeypatch):
    from facekit import settings
    from facekit.chain import save_stage
    from facekit.archs import build_model
    from facekit.restorers import resolve_auto
    from facekit.video import RestorerEnhancer

    monkeypatch.setattr(settings, "MODELS_DIR", tmp_path / "models")
    assert resolve_auto("auto") == "sharpen"
    assert resolve_auto("bicubic") == "bicubic"
    folder = tmp_path / "models" / "default"
    net = build_model("unet", scale=4, base=4, depth=1)
    save_stage(folder / "reconstruct.pt", "reconstruct", net, {"scale": 4, "base": 4, "depth": 1}, arch="unet", in_size=8)
    (folder / "chain.yaml").write_text("size: 8\nstages:\n  reconstruct: reconstruct.pt\n")
    assert resolve_auto("auto") == f"model:{folder}"
    enh = make_enhancer("auto", backend="torch")
    assert isinstance(enh, RestorerEnhancer) and enh.restorer.in_size == 8
    crops = np.random.default_rng(0).integers(0, 255, (2, 48, 48, 3), dtype=np.uint8)
    assert enh(crops).shape == (2, 48, 48, 3)  # restored at 8 -> 32, back at the crops' side


def test_enhancers_and_errors(tmp_path):
    crops = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    assert np.array_equal(make_enhancer("none")(crops), crops)
    assert np.array_equal(make_enhancer("bicubic")(crops), crops)  # at the crops' own side: nothing to do
    for name in ("classical", "sharpen"):  # the one registry: evaluation's classical chain and the fast pass
        out = make_enhancer(name)(crops)
        assert out.shape == crops.shape and out.dtype == np.uint8 and not np.array_equal(out, crops)
    with pytest.raises(ConfigError, match="valid: auto, none, bicubic, classical, classical-ref, sharpen"):
        make_enhancer("magic")
    with pytest.raises(CheckpointError, match="not found"):
        make_enhancer(f"model:{tmp_path / 'nope.onnx'}")
    with pytest.raises(ConfigError, match="detect_every"):
        process_video("x.mp4", tmp_path, _cfg(detect_every=0))
    with pytest.raises(ConfigError, match="valid: clean, cctv-light, cctv-heavy"):
        synthclip.make_clip(crops, tmp_path, preset="foggy")
    with pytest.raises(ConfigError, match=r"\(N,S,S,3\) uint8"):
        synthclip.make_clip(crops.astype(np.float32), tmp_path)


def test_model_enhancer_runs_onnx(tmp_path):
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Upsample(scale_factor=2, mode="nearest"))
    from facekit.chain import export_onnx

    path = export_onnx(net, tmp_path / "x2.onnx", 16)  # the exporter's known warnings silenced there
    enh = make_enhancer(f"model:{path}")
    crops = np.full((2, 64, 64, 3), 100, np.uint8)
    out = enh(crops)
    assert out.shape == (2, 64, 64, 3) and out.dtype == np.uint8  # 16 -> 32, back at the crops' side
    assert np.abs(out.astype(int) - 100).max() <= 1


def test_image_sequence_and_cli(clip_frames, clip, tmp_path):
    seq = tmp_path / "seq"
    seq.mkdir()
    for i, f in enumerate(clip_frames[:8]):
        cv2.imwrite(str(seq / f"{i:03d}.png"), f)
    res = process_video(seq, tmp_path / "seq_out", _cfg(webm=False))
    assert res.frames == 8 and res.tracks == 1

    from facekit.cli import main

    rc = main(["video", str(clip), str(tmp_path / "cli"), "--max-frames", "10", "--no-progress",
               "--enhancer", "bicubic", "--codec", "MJPG", "--no-webm"])
    assert rc == 0
    summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert summary["frames"] == 10 and summary["config"]["enhancer"] == "bicubic"
    assert _count_frames(Path(summary["outputs"]["video"]))[0] == 10
    assert main(["video", str(tmp_path / "missing.avi"), str(tmp_path / "o")]) == 1


def test_model_enhancer_runs_chain_folder(tmp_path):
    """``model:FOLDER`` loads a restoration chain (chain.yaml + stage checkpoint) as the enhancer."""
    chain = pytest.importorskip("facekit.chain")
    kw = {"num_feat": 8, "num_conv": 2, "scale": 2}
    chain.save_stage(tmp_path / "reconstruct.pt", "reconstruct", chain.build_stage_model("srvgg_compact", kw), kw,
                     in_size=16)
    (tmp_path / "chain.yaml").write_text("size: 16\nstages:\n  reconstruct: reconstruct.pt\n")
    out = make_enhancer(f"model:{tmp_path}")(np.full((2, 64, 64, 3), 90, np.uint8))
    assert out.shape == (2, 64, 64, 3) and out.dtype == np.uint8
    # the video's own ONNX Runtime thread count (issue 24) leaves torch's process-wide count alone
    import torch

    before = torch.get_num_threads()
    enh = make_enhancer(f"model:{tmp_path}", threads=before + 1)
    assert enh.restorer.meta["chain"].threads == before + 1 and torch.get_num_threads() == before
    assert np.array_equal(enh(np.full((2, 64, 64, 3), 90, np.uint8)), out)
    (tmp_path / "chain.yaml").unlink()
    with pytest.raises(CheckpointError, match="chain.yaml"):
        make_enhancer(f"model:{tmp_path}")


# ---------------------------------------------------------------------------------------------
# Track identities from a gallery

KNOWN, DISTRACTORS, STRANGER = "s4", ("s1", "s2", "s3", "s6"), "s33"
ID_THRESHOLD = 0.4  # SFace cosine; same-person tracks here score ~0.6-0.8, strangers ~0.2-0.3


def _orl_face(faces_set, who, image):
    num = np.array([int(Path(p).stem) for p in faces_set.paths])
    return faces_set.images[np.where((faces_set.identity == who) & (num == image))[0][:1]]


@pytest.fixture(scope="module")
def orl_set():
    from facekit.data import load_faces

    return load_faces("orl", size=64, progress=False)


@pytest.fixture(scope="module")
def id_gallery_dir(tmp_path_factory):
    """ORL originals 1-4 of the clip's person and of 4 distractors, one sub-folder per person."""
    import shutil

    from facekit.data import orl_dir

    root = tmp_path_factory.mktemp("id_gallery")
    for who in (KNOWN, *DISTRACTORS):
        (root / who).mkdir()
        for k in range(1, 5):
            shutil.copy(orl_dir() / who / f"{k}.pgm", root / who / f"{k}.pgm")
    return root


@pytest.fixture(scope="module")
def id_clips(orl_set, tmp_path_factory):
    """One clip of the known person and one of a stranger, from an ORL image not in the gallery."""
    out = tmp_path_factory.mktemp("id_clips")
    return {who: synthclip.make_clip(_orl_face(orl_set, who, 8), out / who, n_frames=30, size=SIZE, seed=3,
                                     speed=2.0)
            for who in (KNOWN, STRANGER)}


def test_gallery_labels_track_with_identity(id_clips, id_gallery_dir, tmp_path, monkeypatch):
    captions = []
    put_text = cv2.putText

    def spy(img, text, *a, **kw):
        captions.append(text)
        return put_text(img, text, *a, **kw)

    monkeypatch.setattr(cv2, "putText", spy)
    cfg = _cfg(enhancer="sharpen", webm=False, identity_gallery=str(id_gallery_dir),
               identity_threshold=ID_THRESHOLD)
    res = process_video(id_clips[KNOWN], tmp_path, cfg)
    assert res.tracks == 1
    rows = list(csv.DictReader((tmp_path / "tracks.csv").open()))
    assert rows[0]["identity"] == KNOWN and rows[0]["identity_candidate"] == KNOWN
    assert float(rows[0]["identity_score"]) >= ID_THRESHOLD
    assert 2 <= int(rows[0]["identity_crops"]) <= cfg.identity_crops  # an aggregate, not one frame
    track = json.loads((tmp_path / "tracks.json").read_text())["tracks"][0]
    assert track["identity"] == KNOWN and track["identity_score"] == pytest.approx(float(rows[0]["identity_score"]))
    gfile = tmp_path / rows[0]["gallery"]
    assert gfile.is_file() and gfile.name.startswith(f"track_0001_{KNOWN}_0.")
    summary = json.loads((tmp_path / "summary.json").read_text())
    ids = summary["identities"]
    assert ids["tracks"] == {"1": KNOWN} and ids["people"] == 1 + len(DISTRACTORS)
    # few embeddings per track (the best crops, not every frame), and the box caption carries the name
    assert ids["embeds"] <= cfg.identity_max_embeds + cfg.identity_crops < N_FRAMES // 2
    assert "identify" in summary["stage_ms"]
    assert any(c.startswith("ID 1 ") and KNOWN in c for c in captions), set(captions)
    # the fused track is also decided by its identity template (classical fusion here: no views)
    assert rows[0]["track_identity"] == KNOWN and rows[0]["track_identity_views"] == "0"
    assert ids["track_templates"] == {"1": KNOWN}


def test_fused_track_is_labelled_by_its_template_as_identify_decides(id_clips, id_gallery_dir, tmp_path):
    """With the released chain, a track is fused by the learned stage and gets views; its
    ``track_identity`` is what ``facekit identify GALLERY RUN`` decides for it, to the similarity."""
    from facekit.cli import main

    cfg = _cfg(enhancer="auto", webm=False, identity_gallery=str(id_gallery_dir), identity_threshold=ID_THRESHOLD)
    process_video(id_clips[KNOWN], tmp_path / "run", cfg)
    row = list(csv.DictReader((tmp_path / "run" / "tracks.csv").open()))[0]
    assert row["fused"] and int(row["track_identity_views"]) >= 2, row
    assert row["track_identity"] == KNOWN and float(row["track_identity_score"]) >= ID_THRESHOLD
    out = tmp_path / "identify.csv"
    assert main(["identify", str(id_gallery_dir), str(tmp_path / "run"), "--threshold", str(ID_THRESHOLD),
                 "--top-k", "1", "--csv", str(out)]) == 0
    fused = [r for r in csv.DictReader(out.open()) if r["probe"].endswith("track_0001_fused.png")]
    assert len(fused) == 1 and fused[0]["identity"] == row["track_identity"]
    assert int(fused[0]["track_views"]) == int(row["track_identity_views"])
    assert float(fused[0]["similarity"]) == pytest.approx(float(row["track_identity_score"]), abs=2e-4)
    ids = json.loads((tmp_path / "run" / "summary.json").read_text())["identities"]
    assert ids["track_templates"] == {"1": KNOWN} and ids["template_ms_per_track"] > 0
    print("template_ms_per_track", ids["template_ms_per_track"])


def test_saved_gallery_cli_labels_stranger_unknown(id_clips, id_gallery_dir, tmp_path):
    from facekit.cli import main
    from facekit.identify import Gallery

    g = Gallery().enroll(id_gallery_dir)
    g.threshold, g.calibration = ID_THRESHOLD, "set by the test"
    saved = g.save(tmp_path / "known.npz")
    # --gallery-threshold auto (the default) takes the saved gallery's threshold
    rc = main(["video", str(id_clips[STRANGER]), str(tmp_path / "out"), "--no-progress", "--no-webm",
               "--enhancer", "none", "--gallery", str(saved)])
    assert rc == 0
    rows = list(csv.DictReader((tmp_path / "out" / "tracks.csv").open()))
    assert len(rows) == 1 and rows[0]["identity"] == "unknown"
    assert float(rows[0]["identity_score"]) < ID_THRESHOLD and rows[0]["identity_candidate"] in (KNOWN, *DISTRACTORS)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["identities"]["threshold"] == ID_THRESHOLD
    assert summary["config"]["identity_gallery"] == str(saved)
    assert [p.name.split("_0.")[0] for p in (tmp_path / "out" / "gallery").glob("*.png")
            if not p.name.endswith("_fused.png")] == ["track_0001_unknown"]
    assert rows[0]["fused"] == "gallery/track_0001_fused.png"


def test_uncalibrated_gallery_with_auto_threshold_is_calibrated_on_orl(id_clips, id_gallery_dir, tmp_path,
                                                                      monkeypatch, capsys):
    import types

    from facekit import data
    from facekit.identify import Gallery

    full = data.load_faces("orl", size=64, align="landmarks", progress=False)
    # ORL people s11-s20 only (none of them enrolled here), so calibrating takes seconds, not ~30 s
    keep = np.isin(full.identity, [f"s{i}" for i in range(11, 21)])
    subset = types.SimpleNamespace(images=full.images[keep], identity=full.identity[keep])
    asked = []
    monkeypatch.setattr(data, "load_faces", lambda src, **kw: asked.append(src) or subset)
    expected = Gallery().enroll(id_gallery_dir).calibrate(subset)
    asked.clear()

    res = process_video(id_clips[KNOWN], tmp_path / "out", _cfg(identity_gallery=str(id_gallery_dir)))
    assert asked == ["orl"]  # auto + a gallery without a threshold: calibrated on ORL, once
    assert "calibrating the gallery threshold on ORL" in capsys.readouterr().err
    ids = json.loads((tmp_path / "out" / "summary.json").read_text())["identities"]
    assert ids["threshold"] == pytest.approx(expected, abs=1e-4)
    assert 0.1 < expected < 0.9 and ids["tracks"] == {"1": KNOWN}  # the known face clears the FAR-1% threshold
    assert res.identities is not None


def test_bad_gallery_gives_clear_error(clip, tmp_path, capsys):
    from facekit.cli import main

    missing = tmp_path / "no_such_gallery"
    with pytest.raises(ConfigError, match=f"gallery {missing}: no such gallery folder"):
        process_video(clip, tmp_path / "o1", _cfg(identity_gallery=str(missing)))
    assert not (tmp_path / "o1").exists()  # failed before any output was started
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=str(tmp_path / "empty")):
        process_video(clip, tmp_path / "o2", _cfg(identity_gallery=str(tmp_path / "empty")))
    junk = tmp_path / "junk.npz"
    junk.write_text("not a gallery")
    with pytest.raises(ConfigError, match=f"{junk} is not a facekit gallery file"):
        process_video(clip, tmp_path / "o3", _cfg(identity_gallery=str(junk)))
    with pytest.raises(ConfigError, match="'auto' or a cosine similarity"):
        process_video(clip, tmp_path / "o4", _cfg(identity_gallery=str(junk), identity_threshold="high"))
    assert main(["video", str(clip), str(tmp_path / "o5"), "--gallery", str(missing)]) == 1
    assert str(missing) in capsys.readouterr().err


class _FakeGallery:
    """Gallery stand-in: a crop's embedding is a fixed unit vector chosen by its first pixel."""

    margin = 0.15
    people = ["alice", "bob"]
    net, calibration = "fake", ""

    def __init__(self):
        self.basis = np.eye(128, dtype=np.float32)[:3]  # 0: alice, 1: bob, 2: nobody
        self.calls = []

    def __len__(self):
        return 2

    def embed(self, crops):
        self.calls.append(len(crops))
        return self.basis[[int(c[0, 0, 0]) for c in crops]]

    def match_embeddings(self, emb, top_k=1):
        from facekit.identify import Candidate

        sims = emb @ self.basis[:2].T
        return [[Candidate(self.people[int(np.argmax(s))], float(np.max(s)))] for s in sims]


def test_track_identifier_aggregates_best_crops_off_the_clock():
    from facekit.video_identity import TrackIdentifier

    def crop(kind):
        return np.full((8, 8, 3), kind, np.uint8)

    g = _FakeGallery()
    ident = TrackIdentifier(g, threshold=0.5, crops=3, max_embeds=0, background=True)
    # the best crops of track 1: two of alice and one of bob; a low-quality bob crop is not kept
    for q, kind in [(5.0, 0), (1.0, 1), (4.0, 1), (6.0, 0)]:
        if ident.wants(1, q):
            ident.offer(1, int(q), q, crop(kind))
    assert not ident.wants(1, 0.5) and ident.wants(1, 9.0)
    assert ident.label(1) is None and g.calls == []  # max_embeds=0: nothing embedded while on screen
    labels = ident.finish()
    assert g.calls == [3]  # the three kept crops, once
    lab = labels[1]
    # mean of (a, a, b) normalised: cosine to alice 2/sqrt(5) ~ 0.89 -> alice, from 3 crops
    assert lab.identity == "alice" and lab.crops == 3 and lab.score == pytest.approx(2 / np.sqrt(5), abs=1e-5)
    # a track whose crops match nobody stays unknown, with its best candidate kept
    ident2 = TrackIdentifier(g, threshold=0.5, crops=2, max_embeds=4, background=True)
    ident2.offer(7, 0, 1.0, crop(2))
    ident2.track_ended(7)
    lab = ident2.finish()[7]
    assert lab.identity == "unknown" and lab.candidate in g.people and lab.score == pytest.approx(0.0)


def test_overlay_shows_no_rate_before_one_is_measured():
    """The first annotated frame has no measured rate yet: it reads "-- fps", never "0.0 fps" (issue 20)."""
    from facekit.video import FaceVideoProcessor

    proc = FaceVideoProcessor(VideoConfig(enhancer="none"), detector=object())

    def drawn(fps):
        proc.fps = fps
        out = np.zeros((240, 320, 3), np.uint8)
        proc._annotate(out, [])
        return out

    def text(s):
        out = np.zeros((240, 320, 3), np.uint8)
        cv2.putText(out, s, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 255, 255), 1, cv2.LINE_AA)
        return out

    assert np.array_equal(drawn(0.0), text("-- fps"))
    assert np.array_equal(drawn(12.34), text(" 12.3 fps"))
