"""`python -m facekit video` stops cleanly (issue 19, items 2 and 3): outputs under temporary names until
finalised, SIGTERM handled like SIGINT (exit 143), killed runs swept at the next start, and the
image-sequence guards (pixel limit from the header, one frame size, FIFOs never opened)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from facekit import video_io
from facekit.errors import VideoReadError
from facekit.settings import shared_path
from facekit.video_io import ImageSequence, resolve_source, sweep_stale_temps

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "FACEKIT_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _cli(*args, **kw) -> list[str]:
    return [sys.executable, "-m", "facekit", "video", *map(str, args), "--enhancer", "sharpen", "--no-progress",
            *kw.get("extra", [])]


def _frames(path) -> int:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"{path} does not open"
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".facekit-tmp-" in p.name]


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    """A clip long enough to still be running when the signal arrives: single_face.mp4 (72 frames)
    looped 12x, about 30 s of work (3x finished before the SIGKILL test's signal on a busy CI run) (or, without the shared data, a synthetic 1,800-frame clip with a moving bright blob: it holds no
    face, so it runs fast, and a shorter one could finish before the signal on a fresh clone)."""
    out = tmp_path_factory.mktemp("clip") / "long.mp4"
    src = shared_path("data", "video", "single_face.mp4")
    frames = []
    if src.is_file():
        cap = cv2.VideoCapture(str(src))
        while True:
            ok, f = cap.read()
            if not ok:
                break
            frames.append(f)
        cap.release()
        frames = frames * 12
    if not frames:
        for i in range(1800):
            f = np.full((240, 320, 3), 40, np.uint8)
            cv2.circle(f, (40 + i % 240, 120), 30, (200, 180, 160), -1)
            frames.append(f)
    h, w = frames[0].shape[:2]
    wr = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), 25, (w, h))
    for f in frames:
        wr.write(f)
    wr.release()
    assert _frames(out) == len(frames)
    return out


def _start_and_wait_for_frames(clip: Path, out: Path) -> subprocess.Popen:
    proc = subprocess.Popen(_cli(clip, out), env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        tmp = [p for p in out.glob(".annotated.facekit-tmp-*.mp4")] if out.is_dir() else []
        if tmp and tmp[0].stat().st_size > 20_000:  # frames have reached the (temporary) file
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    proc.kill()
    out_, err = proc.communicate()
    pytest.fail(f"no temporary annotated video grew (rc {proc.returncode}): {err.decode()[-800:]}")


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_signal_finalises_playable_outputs(long_clip, tmp_path, sig, code):
    """SIGTERM is handled like SIGINT: finalise everything, then exit 128 + signal (143 / 130)."""
    out = tmp_path / "out"
    proc = _start_and_wait_for_frames(long_clip, out)
    assert not (out / "annotated.mp4").exists()  # nothing under the final name while recording
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    err = err.decode()
    assert proc.returncode == code, err
    assert "Traceback" not in err and f"stopped by {sig.name}" in err
    n = _frames(out / "annotated.mp4")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stopped"] == sig.name and summary["truncated"] is False
    assert 0 < n == summary["frames"] < _frames(long_clip)
    cap = cv2.VideoCapture(str(out / "annotated.mp4"))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) > 0
    cap.release()
    assert (out / "tracks.csv").is_file() and (out / "tracks.json").is_file()
    if "webm" in summary["outputs"]:
        assert _frames(out / "annotated.webm") > 0
    assert _temps(out) == []


def _children(pid: int) -> list[int]:
    kids = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat_file.parent.name))
    return kids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc to find the encoder processes")
def test_sigkill_leaves_playable_temp_swept_next_run(long_clip, tmp_path):
    """SIGKILL of the run *and* its encoders (a cgroup kill, OOM): the temporary fragmented mp4 still
    plays up to its last fragment; the next run keeps it as annotated.killed-PID.mp4 and sweeps the rest."""
    out = tmp_path / "out"
    proc = _start_and_wait_for_frames(long_clip, out)
    time.sleep(1.5)  # past the first keyframe interval (one fragment per second of video)
    # freeze the run first, so that it cannot react to its encoders dying (on a loaded machine it
    # would finalise the output before its own SIGKILL arrives); then the encoders, so that none can
    # finish its file; then the run
    os.kill(proc.pid, signal.SIGSTOP)
    for kid in _children(proc.pid):
        os.kill(kid, signal.SIGKILL)
    proc.kill()
    proc.communicate(timeout=30)
    assert not (out / "annotated.mp4").exists() and not (out / "summary.json").exists()
    left = _temps(out)
    tmp_mp4 = [p for p in left if p.suffix == ".mp4"]
    assert len(tmp_mp4) == 1
    n_killed = _frames(tmp_mp4[0])
    assert n_killed >= 25, "the fragmented temporary mp4 plays up to its last fragment"
    r = subprocess.run(_cli(long_clip, out, extra=["--max-frames", "3"]), env=ENV, cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "left by a killed run" in r.stderr
    assert _temps(out) == []
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["swept"]) == len(left)
    assert _frames(out / "annotated.mp4") == 3
    kept = out / f"annotated.killed-{proc.pid}.mp4"
    assert _frames(kept) == n_killed


def test_sweep_leaves_live_runs_alone(tmp_path):
    live = tmp_path / ".annotated.facekit-tmp-1.mp4"  # pid 1 is alive (init)
    live.write_bytes(b"x")
    own = video_io.tmp_path(tmp_path / "summary.json")  # this process's own temporary file
    own.write_text("{")
    dead = tmp_path / ".summary.facekit-tmp-999999999.json"
    dead.write_text("{")
    broken = tmp_path / ".annotated.facekit-tmp-999999998.mp4"  # no moov atom: unplayable, removed
    broken.write_bytes(b"\0\0\0\x1cftypisom" + bytes(100))
    lines = sweep_stale_temps(tmp_path)
    assert live.exists() and own.exists() and not dead.exists() and not broken.exists()
    assert len(lines) == 2 and all("removed" in line for line in lines)


def _png(path: Path, w: int, h: int, value: int = 120) -> Path:
    cv2.imwrite(str(path), np.full((h, w, 3), value, np.uint8))
    return path


def test_sequence_odd_sized_frame_is_an_error_naming_it(tmp_path):
    seq = tmp_path / "seq"
    seq.mkdir()
    for i in range(3):
        _png(seq / f"{i:04d}.png", 64, 48)
    odd = _png(seq / "0003.png", 80, 48)
    r = subprocess.run(_cli(seq, tmp_path / "out"), env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    assert str(odd) in r.stderr and "80x48" in r.stderr and "64x48" in r.stderr
    assert not (tmp_path / "out" / "summary.json").exists()
    assert _temps(tmp_path / "out") == []


def test_sequence_fifo_is_skipped_without_opening(tmp_path):
    seq = tmp_path / "seq"
    seq.mkdir()
    for i in (0, 1, 3):
        _png(seq / f"{i:04d}.png", 64, 48)
    os.mkfifo(seq / "0002.png")
    r = subprocess.run(_cli(seq, tmp_path / "out"), env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "0002.png" in r.stderr and "FIFO" in r.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["frames"] == 3 == _frames(tmp_path / "out" / "annotated.mp4")
    assert len(summary["skipped"]) == 1 and "FIFO" in summary["skipped"][0]


def test_sequence_pixel_limit_from_header(tmp_path):
    seq = tmp_path / "seq"
    seq.mkdir()
    a = _png(seq / "0000.png", 64, 48)
    b = _png(seq / "0001.png", 64, 48)
    src = resolve_source(str(seq))
    cap = ImageSequence(src.target, max_pixels=64 * 48)
    assert cap.read()[0]
    cap = ImageSequence([a, b], max_pixels=64 * 48 - 1)
    with pytest.raises(VideoReadError, match="0000.png: frame is 64x48 .*above the limit"):
        cap.read()


def test_sequence_bomb_frame_refused_before_decoding(tmp_path):
    """A 1-bit PNG of 8000x8001 (64.008 Mpx, ~8 kB on disk) is refused from its header, exit 1."""
    from PIL import Image

    seq = tmp_path / "seq"
    seq.mkdir()
    _png(seq / "0000.png", 64, 48)
    Image.new("1", (8000, 8001)).save(seq / "0001.png", optimize=True)
    r = subprocess.run(_cli(seq, tmp_path / "out"), env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stderr
    assert "0001.png: frame is 8000x8001" in r.stderr and "64 Mpx" in r.stderr
    assert "Traceback" not in r.stderr


def test_temporary_name_is_hidden_sibling(tmp_path):
    p = tmp_path / "annotated.mp4"
    tp = video_io.tmp_path(p)
    assert tp.parent == p.parent and tp.suffix == ".mp4"
    assert tp.name == f".annotated.facekit-tmp-{os.getpid()}.mp4"


def test_stream_frames_of_another_size_are_resized_and_counted(tmp_path):
    """A source that changes resolution (e.g. a camera after a reconnect): frames are resized to the
    first frame's size and counted in the message, never silently dropped from the video."""
    from facekit.video import VideoConfig, process_video

    class Cap:
        i = 0

        def isOpened(self):  # noqa: N802
            return True

        def get(self, prop):
            return 0.0

        def release(self):
            pass

        def read(self):
            self.i += 1
            if self.i > 6:
                return False, None
            return True, np.full((48 if self.i < 4 else 60, 64, 3), 100, np.uint8)

    (tmp_path / "x.mp4").write_bytes(b"")
    res = process_video(tmp_path / "x.mp4", tmp_path / "out", VideoConfig(enhancer="none", progress=False),
                        capture_factory=lambda target: Cap())
    assert res.frames == 6 == _frames(tmp_path / "out" / "annotated.mp4")
    assert "3 frame(s) of another size than the first were resized to 64x48" in res.message
    assert _temps(tmp_path / "out") == []
