"""Video pipeline: IDs on a synthetic clip, outputs, bad input, live-stream drops, flicker."""

import json
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from facekit import synthclip
from facekit.errors import ConfigError, VideoReadError
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
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["frames"] == N_FRAMES and summary["tracks"] == 1 and summary["dropped"] == 0
    assert set(summary["stage_ms"]) >= {"detect", "enhance", "read", "write"}


def test_no_face_clip_gives_no_tracks(tmp_path, faces):
    src = shared_path("data", "video", "no_face.mp4")
    if not src.is_file():  # a generated clip with no face: background only
        src = synthclip.make_clip(faces[:1], tmp_path / "src", n_frames=12, size=SIZE, face_frac=0.0001)
    res = process_video(src, tmp_path / "out", _cfg(max_frames=15))
    assert res.tracks == 0 and res.frames > 0
    assert json.loads((tmp_path / "out" / "tracks.json").read_text())["tracks"] == []
    assert _count_frames(res.outputs["video"])[0] == res.frames


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

        res = process_video(clip, tmp_path / f"t{temporal}", _cfg(enhancer="classical", temporal=temporal,
                                                                  detect_every=1, webm=False), frame_hook=hook)
        assert res.tracks == 1
        out[temporal] = (res.flicker, float(np.mean(psnrs)))
    assert out[0.7][0] < 0.8 * out[0.0][0], out
    assert out[0.7][1] > out[0.0][1] - 0.5, out  # smoothing does not cost fidelity to the truth


def test_enhancers_and_errors(tmp_path):
    crops = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    assert make_enhancer("none")(crops) is crops
    assert make_enhancer("bicubic")(crops).shape == (3, 64, 64, 3)
    out = make_enhancer("classical")(crops)
    assert out.shape == crops.shape and out.dtype == np.uint8
    with pytest.raises(ConfigError, match="valid: none, bicubic, classical"):
        make_enhancer("magic")
    with pytest.raises(ConfigError, match="does not exist"):
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
    path = tmp_path / "x2.onnx"
    torch.onnx.export(net, torch.rand(1, 3, 16, 16), str(path), input_names=["lq"], output_names=["out"],
                      dynamic_axes={"lq": {0: "n"}, "out": {0: "n"}}, dynamo=False)
    enh = make_enhancer(f"model:{path}")
    crops = np.full((2, 64, 64, 3), 100, np.uint8)
    out = enh(crops)
    assert out.shape == (2, 32, 32, 3) and out.dtype == np.uint8
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
    assert out.shape == (2, 32, 32, 3) and out.dtype == np.uint8
    (tmp_path / "chain.yaml").unlink()
    with pytest.raises(ConfigError, match="chain.yaml"):
        make_enhancer(f"model:{tmp_path}")
