"""Benchmark facekit.video end to end: fps and per-stage milliseconds per frame.

Prints one JSON object. Clips: ``../shared/data/video/WolfgangLanger_Pexels.mp4`` (640x360, one
face) and ``vtest.avi`` (768x576, surveillance camera), each skipped with a reason when absent;
plus a synthetic 640x360 clip from ORL faces so the script always measures something. Every run
writes all outputs (annotated mp4 + VP8 webm + gallery + tracks) to a temporary folder.

    PYTHONPATH=. python benchmarks/bench_video.py [--threads 2] [--enhancer auto]
        [--detect-every 3] [--max-frames 300]

Timings are wall-clock on a shared machine: other processes using the CPU lower them.

Measured 2026-12-01, --threads 1 --max-frames 120, enhancer auto = the released U-Net chain
(the other core busy training): Pexels 640x360 9.1 fps detecting every frame, 12.5 fps every 3rd
(enhance ~50-54 ms per frame for one face, detect 16 ms); vtest 768x576 22.8 / 40.8 fps (faces
of ~10 px: few crops to enhance). The 25 fps target for the 640x360 clip is not met with this
enhancer: the U-Net runs at the 64 px output size (1.8 GFLOP per face).

Measured 2026-12-01 later, --threads 2 --max-frames 300, both cores free, enhancer auto = the
released ``unet_lr`` chain: Pexels 640x360 27.2 fps detecting every frame, 34.7 fps every 3rd
(enhance 7-14 ms, detect 10-25 ms, write 7 ms per frame): the 25 fps target is met. vtest
768x576: 29.1 / 62.7 fps.

Measured 2026-12-02, --threads 2 --max-frames 300, both cores free, enhancer auto = the new default
(the 11 MMAC distilled ``celeba-realtime-student``): Pexels 34.6 fps detecting every frame, 53.1 every
3rd (enhance 2.9 ms per frame; detection, 22 ms, is now the bottleneck); vtest 33.4 / 55.9 fps.

Measured 2026-12-03, --threads 2 --max-frames 300 --detect-every 1, no other work running, enhancer
auto = the faithful ``faithful-ms`` default (luma detail, relight): Pexels 24.0 fps (enhance 6.4 ms,
detect 31 ms per frame), vtest 24.7 fps; back to back with ``--enhancer model:`` the previous
11 MMAC default: Pexels 25.9 fps (enhance 3.2 ms, detect 31 ms), vtest 27.6 fps. Detection took 31
ms per frame that day against 22 ms on 2026-12-02, so both numbers are lower than before; the new
default misses the 25 fps floor on this clip by 4%.

Measured 2026-12-03 late, issue 24 (same default, --threads 2 --max-frames 300, Pexels detecting every
frame), with process_video detecting one frame ahead in its own thread, the model enhancer on one ONNX
Runtime thread and cheaper compositing. Five interleaved before/after pairs on a machine others kept
busy (load 3.4-5.1): median 12.5 -> 25.3 fps (each pair 1.7-2.2x), process CPU 89 -> 50 ms per frame
(ONNX Runtime's second thread spun ~20 ms per frame for a 5 ms model run; OpenCV copied channel-flipped
360 px face views whole before resizing them). When the others stopped (load 0.7 at the start): whole
script Pexels 40.5 fps detecting every frame (detect 24 ms, enhance 10.6, composite 4.6 ms per frame),
50.1 every 3rd; vtest 30.4 / 56.9 fps; then three interleaved pairs: median 23.8 -> 37.9 fps (CPU
83 -> 48 ms per frame): the 25 fps floor is met with a 50% margin. Since detection overlaps the rest,
``detect`` in ``stage_ms`` is the detection thread's time and the stages no longer add up to a frame.
"""

from __future__ import annotations

import argparse
import json
import tempfile

from facekit.settings import set_threads, shared_path
from facekit.video import VideoConfig, process_video

CLIPS = {"pexels_640x360": ("data", "video", "WolfgangLanger_Pexels.mp4"),
         "vtest_768x576": ("data", "video", "vtest.avi")}


def run_one(path, cfg: VideoConfig) -> dict:
    with tempfile.TemporaryDirectory(prefix="facekit-bench-video-") as tmp:
        res = process_video(path, tmp, cfg)
    return {"frames": res.frames, "size": f"{res.width}x{res.height}", "fps": round(res.fps, 2),
            "tracks": res.tracks, "dropped": res.dropped, "flicker": res.flicker,
            "stage_ms": res.stage_ms, "webm": res.webm_backend}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--enhancer", default="auto", help="auto = the released chain when installed, else sharpen")
    ap.add_argument("--detect-every", type=int, default=3)
    ap.add_argument("--max-frames", type=int, default=300)
    args = ap.parse_args()
    threads = set_threads(args.threads)
    base = dict(enhancer=args.enhancer, max_frames=args.max_frames, progress=False)
    out = {"threads": threads, "enhancer": args.enhancer, "note": "shared CPU: numbers are noisy", "clips": {}}
    for name, parts in CLIPS.items():
        path = shared_path(*parts)
        if not path.is_file():
            out["clips"][name] = {"skipped": f"{path} not found"}
            continue
        out["clips"][name] = {
            f"detect_every_{k}": run_one(path, VideoConfig(detect_every=k, **base))
            for k in sorted({1, args.detect_every})
        }
        if name.startswith("vtest"):  # faces of 7-10 px: the detector needs the frame upscaled to find them
            out["clips"][name][f"detect_every_{args.detect_every}_detect_side_1536"] = run_one(
                path, VideoConfig(detect_every=args.detect_every, detect_side=1536, min_face=6, **base))
    from facekit import synthclip
    from facekit.data import load_faces

    with tempfile.TemporaryDirectory(prefix="facekit-bench-clip-") as tmp:
        faces = load_faces("orl", size=64, progress=False).images
        clip = synthclip.make_clip(faces, tmp, n_frames=100, size=(640, 360), seed=0, n_faces=2, face_frac=0.3)
        out["clips"]["synthetic_640x360_2faces"] = {
            f"detect_every_{args.detect_every}": run_one(clip, VideoConfig(detect_every=args.detect_every, **base))}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
