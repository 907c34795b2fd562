"""``python -m facekit video``: detect, track, enhance and composite the faces of a video or live stream.

The options map onto :class:`facekit.video.VideoConfig` (ranges from :data:`facekit.video.LIMITS`:
a bad value exits 2). The run is under :class:`facekit.video_io.StopSignals`: SIGTERM or SIGINT
finalises the outputs and exits with 143 or 130.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import cv2

from facekit import settings
from facekit.errors import ConfigError, FacekitError
from facekit.video import ENHANCER_HELP, LIMITS, VideoConfig, process_video
from facekit.video_identity import IDENTITY_SOURCES, parse_identity_threshold
from facekit.video_io import ABANDONED_OPENS, CODECS, OPEN_GRACE_S, StopRequested, StopSignals, exit_now


def _limit_arg(key: str):
    """argparse ``type=`` for the option of VideoConfig setting ``key`` (see :data:`LIMITS`)."""
    kind, lo, hi, lo_open, hi_open, _ = LIMITS[key]
    return settings.int_arg(lo, hi) if kind is int else settings.float_arg(lo, hi, lo_open, hi_open)


def _threshold_arg(text: str):
    """argparse ``type=`` of ``--gallery-threshold``: ``auto`` or a cosine similarity in [-1, 1]."""
    try:
        value = parse_identity_threshold(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return "auto" if value is None else value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m facekit video``: :class:`facekit.video.VideoConfig`'s settings."""
    d = VideoConfig()
    parser.add_argument("input", help="video file, image folder/glob, webcam index (0) or stream URL")
    parser.add_argument("output_dir", help="folder for annotated video, webm, gallery, tracks, summary.json")
    parser.add_argument("--enhancer", default=d.enhancer,
                        help=f"face enhancer: {ENHANCER_HELP} (default {d.enhancer})")
    parser.add_argument("--model-backend", default=d.model_backend, choices=settings.MODEL_BACKENDS,
                        help="runtime of a model:PATH enhancer (default onnx = ONNX Runtime)")
    parser.add_argument("--detect-every", type=_limit_arg("detect_every"), default=d.detect_every,
                        help="run the detector every k frames (1-1000)")
    parser.add_argument("--max-frames", type=_limit_arg("max_frames"), default=None, help="stop after N frames")
    parser.add_argument("--detect-side", type=_limit_arg("detect_side"), default=d.detect_side,
                        help="longest frame side the detector sees (64-8192; smaller = faster)")
    parser.add_argument("--min-face", type=_limit_arg("min_face"), default=d.min_face,
                        help="smallest face side (px) kept (1-4096)")
    parser.add_argument("--temporal", type=_limit_arg("temporal"), default=d.temporal,
                        help="enhanced-face EMA history weight in [0,1) (0 = off)")
    parser.add_argument("--crop-size", type=_limit_arg("crop_size"), default=d.crop_size,
                        help="face crop side fed to the enhancer (8-1024)")
    parser.add_argument("--codec", default=d.codec, choices=list(CODECS), help="codec of annotated video")
    parser.add_argument("--quality", type=_limit_arg("quality"), default=d.quality, help="encoder quality 0-100")
    parser.add_argument("--no-webm", action="store_true", help="skip the browser-playable VP8 copy")
    parser.add_argument("--webm-scale", type=_limit_arg("webm_scale"), default=d.webm_scale,
                        help="size factor of the webm copy (0-4]")
    parser.add_argument("--no-annotate", action="store_true", help="do not draw boxes/IDs/fps")
    parser.add_argument("--live", action="store_true", default=None,
                        help="treat the input as live (drop stale frames) even if it is a file")
    parser.add_argument("--reconnect", type=_limit_arg("reconnect"), default=d.reconnect,
                        help="reconnect attempts for live sources (0-1000)")
    parser.add_argument("--open-timeout", type=_limit_arg("open_timeout_s"), default=d.open_timeout_s,
                        help="seconds to open a source (0-3600]")
    parser.add_argument("--queue-size", type=_limit_arg("queue_size"), default=d.queue_size,
                        help="bounded queue length in frames (1-256)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--gallery", default=None, metavar="PATH",
                        help="label tracks with known people: a gallery folder (sub-folder or name_ prefix per "
                             "person) or a .npz saved by `facekit identify --save-gallery`")
    parser.add_argument("--gallery-threshold", type=_threshold_arg, default=d.identity_threshold,
                        metavar="auto|SIM",
                        help="cosine similarity a track needs to take an identity (below: unknown); auto = the "
                             "gallery's calibrated threshold, else calibrated on ORL at FAR 1%%")
    parser.add_argument("--identity-crops", type=_limit_arg("identity_crops"), default=d.identity_crops,
                        help="best crops per track averaged into its embedding (default %(default)s)")
    parser.add_argument("--identity-source", default=d.identity_source, choices=IDENTITY_SOURCES,
                        help="match the enhanced (composited) face or the raw input face")
    parser.add_argument("--no-fuse-tracks", action="store_true",
                        help="do not fuse each track's crops into one face at the end (gallery/*_fused.png)")
    parser.add_argument("--fusion-frames", type=_limit_arg("fusion_frames"), default=d.fusion_frames,
                        help="raw crops kept per track for fusion, the best by quality (2-64)")
    parser.add_argument("--mesh-tracks", action="store_true",
                        help="write a 3D face mesh per track into meshes/ (OBJ/PLY/glb, head pose in tracks.csv; "
                             "needs MediaPipe, see `facekit mesh`)")


def run_cli(args: argparse.Namespace) -> int:
    """Run the video and print its summary; returns the exit code (143 / 130 when SIGTERM / SIGINT stopped it)."""
    cfg = VideoConfig(enhancer=args.enhancer, model_backend=args.model_backend, detect_every=args.detect_every,
                      max_frames=args.max_frames,
                      detect_side=args.detect_side, min_face=args.min_face,
                      temporal=args.temporal, crop_size=args.crop_size, codec=args.codec, quality=args.quality,
                      webm=not args.no_webm, webm_scale=args.webm_scale, annotate=not args.no_annotate,
                      live=args.live, reconnect=args.reconnect, open_timeout_s=args.open_timeout,
                      queue_size=args.queue_size, progress=not args.no_progress,
                      identity_gallery=args.gallery, identity_threshold=args.gallery_threshold,
                      identity_crops=args.identity_crops, identity_source=args.identity_source,
                      fuse_tracks=not args.no_fuse_tracks, fusion_frames=args.fusion_frames,
                      mesh_tracks=args.mesh_tracks)
    try:  # facekit reports what failed in one line; OpenCV's own warnings (stream timeouts) only repeat it
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:
        pass
    first_new = len(ABANDONED_OPENS)  # only this run's overrun opens decide how the CLI exits
    with StopSignals():
        try:
            res = process_video(args.input, args.output_dir, cfg)
        except StopRequested as stop:
            if stop.result is None:
                print(f"facekit video: stopped by {stop.signame} before any output was written", file=sys.stderr)
            else:
                print(f"facekit video: stopped by {stop.signame} after {stop.result.frames} frames; outputs "
                      f"finalised in {stop.result.output_dir}", file=sys.stderr)
            return stop.exit_code  # 143 for SIGTERM, 130 for SIGINT (128 + signal number)
        except FacekitError:
            # OpenCV's FFmpeg open has a timeout of its own: give an overrun open a grace to return
            deadline = time.monotonic() + OPEN_GRACE_S
            mine = ABANDONED_OPENS[first_new:]
            for t in mine:
                t.join(max(0.0, deadline - time.monotonic()))
            if any(t.is_alive() for t in mine):
                import atexit

                atexit.register(exit_now, 1)  # after facekit.cli has printed the error line
            raise
    summary = {k: getattr(res, k) for k in ("frames", "fps", "tracks", "dropped", "reconnects", "truncated",
                                            "flicker", "stage_ms")}
    summary["fps"] = round(summary["fps"], 2)
    if res.identities is not None:
        summary["identities"] = res.identities["tracks"]
    print(json.dumps(summary, indent=2))
    print(f"outputs in {res.output_dir}")
    return 0
