"""Real-time CCTV video: read frames (file, image sequence, webcam, stream URL), detect and track
faces, enhance each face crop, paste it back with a feathered blend, keep enhanced faces stable
over time, and write an annotated video, a browser-playable VP8 ``.webm``, a per-track gallery and
compact track files.

This module holds the pipeline: the enhancers (:func:`make_enhancer`), the settings
(:class:`VideoConfig`, :data:`LIMITS`), the per-frame processing (:class:`FaceVideoProcessor`) and
the threaded run (:func:`process_video`). The rest is in sibling modules: sources, output videos,
temporary files and stop signals in :mod:`facekit.video_io`; track identities in
:mod:`facekit.video_identity`; the per-track outputs (fusion, meshes, gallery,
``tracks.csv``/``tracks.json``) in :mod:`facekit.video_tracks`; the command line in
:mod:`facekit.commands.video`. The paragraphs below describe a run as a whole.

Reader, detection (one frame ahead of the rest), processing and writer run in separate threads
joined by bounded queues. Files process every frame (the reader waits); live sources drop the
oldest queued frame when processing falls behind, and the count is reported.

Identities (:mod:`facekit.video_identity`): with a gallery of known people
(``VideoConfig.identity_gallery`` or ``--gallery PATH``: a gallery folder, one sub-folder or
``name_`` file prefix per person, or a ``.npz`` saved by
``python -m facekit identify --save-gallery``), each track is labelled with the best-matching
enrolled person, or ``unknown`` when the similarity is below the threshold (``--gallery-threshold``:
a cosine similarity, or ``auto`` = the gallery's calibrated threshold, else one calibrated on ORL at
1% false accepts, which embeds 400 faces at start-up; a calibrated ``.npz`` skips that). The label
is the match of the mean SFace embedding of the track's few best crops (detector score x sharpness;
``identity_crops``, default 3), aligned on the detector's landmarks from the composited (enhanced)
frame. Embedding runs in a background thread only when a crop enters a track's best few (at most
``identity_max_embeds`` per track while it is on screen) and once more when the track ends, so the
processing thread only pays for one landmark warp per improved crop. Labels go into the box caption
(``ID 3 alice 0.62``), ``tracks.csv``/``tracks.json`` (``identity``, ``identity_score``,
``identity_candidate``, ``identity_crops``), the gallery image name (``track_0003_alice_0.62.png``)
and ``summary.json`` (``identities``, with the embedding cost). Measured on a busy 2-core machine
(640x360, two faces, 150 frames, sharpen enhancer): 12 crops embedded at ~38 ms CPU each, +2.7 ms
CPU per frame in all (+22%), of which ~1 ms in the processing thread. Without a gallery none of
these columns or names change.

Command line (:mod:`facekit.commands.video`): ``python -m facekit video INPUT OUTPUT_DIR
[--enhancer ...] [--detect-every k] [--gallery PATH [--gallery-threshold auto|0.4]] ...``.

Stopping and crash safety (:mod:`facekit.video_io`): every output (videos, gallery images,
``tracks.csv``/``tracks.json``, ``summary.json``) is written under a temporary name in its own
folder (``.NAME.facekit-tmp-PID.EXT``) and renamed to its final name only once finalised, so nothing
half-written ever carries a final name. On the command line SIGTERM (systemd, docker, ``timeout``)
is handled like SIGINT (Ctrl-C): the run stops reading, flushes and closes the writers, writes the
tracks and ``summary.json`` (with ``"stopped": "SIGTERM"`` or ``"SIGINT"``), renames everything,
then exits with 128 + the signal number: **143 for SIGTERM, 130 for SIGINT** (a second signal while
finalising is ignored). A run that is killed (SIGKILL, power loss) leaves only temporary files; the
next run into the same folder sweeps those of dead processes at start-up: a temporary video that
OpenCV can still read at least one frame from is kept as ``NAME.killed-PID.EXT`` and reported, every
other one is deleted; both are listed in ``summary.json`` (``swept``). The default ``mp4v``
``annotated.mp4`` is a fragmented MP4 written by the ffmpeg binary of ``imageio-ffmpeg``
(:class:`facekit.video_io.FfmpegMp4Writer`; OpenCV's ``VideoWriter`` writes the index only on
release and takes no muxer options), so a file cut by SIGKILL plays up to its last keyframe (at most
about one second lost); when only facekit is killed, the encoder (in its own session, like the webm
encoder) sees its input close and finishes the file. Without ``imageio-ffmpeg``, or with
``--codec MJPG/XVID/VP80``, OpenCV writes the main video and a killed ``.mp4`` is not playable
(deleted at the sweep); ``summary.json`` names the writer (``video_backend``).

Image sequences (a folder or glob of frames, read by :class:`facekit.video_io.ImageSequence`):
non-regular files (FIFOs, sockets, devices, broken links) are never opened; they are skipped and
reported (stderr and ``summary.json`` ``skipped``). Each frame's size is read from its header before
decoding and refused above :data:`facekit.imageio.MAX_PIXELS` (64 Mpx, the single-image limit); a
frame whose size differs from the first frame's is an error naming the file (exit 1), never silently
dropped. Unreadable frames are skipped and reported, and are not counted in ``frames``. Other
sources whose frame size changes mid-run (a stream after a reconnect) have those frames resized to
the first frame's size, counted in ``message``; no frame is ever dropped by the writer.
"""

from __future__ import annotations

import json
import queue
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from facekit import faces, fusion, mesh, settings
from facekit.errors import ConfigError, FacekitError, VideoReadError
from facekit.tracking import CropStabilizer, FlickerMeter, IoUTracker, TrackerConfig
from facekit.video_identity import (IDENTITY_SOURCES, UNKNOWN_LABEL, TrackIdentifier, build_identifier,
                                    parse_identity_threshold)
from facekit.video_io import (CODECS, DeadCapture, Source, StopRequested, StopSignals, VideoWriter, active_stop_signals,
                              open_capture, resolve_source, sweep_stale_temps, write_atomic)
from facekit.video_tracks import (FUSION_MAX_SIDE, TrackRecord, fuse_records, mesh_records, template_labels,
                                  track_color, write_tracks)

Enhancer = Callable[[np.ndarray], np.ndarray]
"""``(N,S,S,3) uint8 RGB crops -> (N,S',S',3) uint8 RGB`` enhanced crops (resized when pasted)."""
# facekit.restorers.RESTORERS names for --help, written out so that --help loads no torch;
# tests/test_restorers.py checks each is registered.
ENHANCER_NAMES = ("none", "bicubic", "classical", "sharpen", "realesrgan-x4plus")
ENHANCER_HELP = (f"auto (the released chain when installed, else sharpen), {', '.join(ENHANCER_NAMES)}, "
                 "model:PATH (a chain folder, .pt or .onnx) or chain:DIR")


class RestorerEnhancer:
    """A restorer of :mod:`facekit.restorers` on the video's face crops.

    Crops come at ``crop_size``, the side they are pasted from. A network gets them at the side it
    was trained for (``in_size``), shrunk by OpenCV's area filter while still uint8: the cheapest
    faithful shrink, and what keeps the video real-time. The output comes back at the crops' side.

    Args:
        restorer: a :class:`facekit.restorer.Restorer`.
    """

    def __init__(self, restorer):
        self.restorer = restorer

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        if len(crops) == 0:
            return crops
        side = crops.shape[1:3]
        s = self.restorer.in_size
        if s and crops.shape[1] > s and crops.shape[2] > s:
            crops = np.stack([cv2.resize(c, (s, s), interpolation=cv2.INTER_AREA) for c in crops])
        return self.restorer.restore_uint8(crops, side)


def make_enhancer(spec: str | Enhancer, backend: str = "onnx", threads: int | None = None) -> Enhancer:
    """Build an enhancer from a restorer name (:data:`facekit.restorers.RESTORERS`, ``"auto"``,
    ``"model:PATH"``), or pass a callable through.

    Args:
        backend: for chains: "onnx" (ONNX Runtime, fastest on CPU), "torch" or "auto".
        threads: ONNX Runtime intra-op threads (None: the process-wide setting); torch's
            process-wide thread count is left as it was.

    Returns:
        The enhancer callable: ``(N,S,S,3)`` uint8 RGB -> ``(N,S,S,3)`` uint8 RGB.

    Raises:
        ConfigError: an unknown name (the valid ones are listed).
        CheckpointError: a ``model:PATH`` that is missing or not a model.
    """
    if callable(spec):
        return spec
    from facekit import restorers  # defers torch: video --help and non-model enhancers stay light

    return RestorerEnhancer(restorers.build_restorer(spec, backend=backend, threads=threads))


# ---------------------------------------------------------------------------------------------
# Config and results


# Accepted range of each numeric VideoConfig setting: (kind, low, high, low excluded, high excluded,
# None allowed). One table for VideoConfig.validate (ConfigError, exit 1) and the command-line
# options (argparse, exit 2). Upper bounds keep memory bounded: the two frame queues hold up to
# 2 x queue_size frames (a 1080p frame is 6 MB), a crop is enhanced at crop_size^2.
LIMITS: dict[str, tuple] = {
    "detect_every": (int, 1, 1000, False, False, False),
    "max_frames": (int, 1, None, False, False, True),
    "crop_size": (int, 8, 1024, False, False, False),
    "margin": (float, 0.0, 1.0, False, False, False),
    "temporal": (float, 0.0, 1.0, False, True, False),
    "feather": (float, 0.0, 1.0, False, False, False),
    "quality": (int, 0, 100, False, False, False),
    "webm_scale": (float, 0.0, 4.0, True, False, False),
    "queue_size": (int, 1, 256, False, False, False),
    "reconnect": (int, 0, 1000, False, False, False),
    "reconnect_delay_s": (float, 0.0, 3600.0, False, False, False),
    "open_timeout_s": (float, 0.0, 3600.0, True, False, False),
    "score_threshold": (float, 0.0, 1.0, False, False, False),
    "min_face": (int, 1, 4096, False, False, False),
    "detect_side": (int, 64, 8192, False, False, False),
    "gallery_size": (int, 16, 1024, False, False, False),
    "identity_crops": (int, 1, 64, False, False, False),
    "identity_max_embeds": (int, 0, 1000, False, False, False),
    "fusion_frames": (int, 2, 64, False, False, False),
    "enhancer_threads": (int, 1, 256, False, False, True),
}


@dataclass
class VideoConfig:
    """Settings of :func:`process_video` (saved in ``summary.json``); ranges in :data:`LIMITS`.

    Attributes:
        enhancer: "auto" (the released chain ``models/default`` when installed, else "sharpen";
            ``summary.json`` records the resolved one), or any restorer name of
            :data:`facekit.restorers.RESTORERS` (``classical``, ``model:PATH`` ...);
            model_backend: how a model runs (:data:`facekit.settings.MODEL_BACKENDS`).
        enhancer_threads: ONNX Runtime intra-op threads of a ``model:`` enhancer (None: the
            process-wide ``--threads``). One by default: it sees a few small crops per frame, where
            a second thread mostly spins waiting (on the 640x360 Pexels clip with 2 threads: ~20 ms
            more CPU per frame), while the next frame's detection runs beside it.
        detect_every: run YuNet on every k-th frame, track in between.
        max_frames: stop after this many frames (None: all).
        crop_size: side the face crop is resized to before enhancement.
        margin: crop margin around the face box (fraction of its side).
        temporal: history weight of the enhanced-crop EMA (0 disables stabilisation).
        feather: width of the soft edge of the elliptical paste mask (fraction of the radius).
        detail_transfer: for faces larger than ``crop_size``, add back the frame's fine detail
            that the crop lost (the enhancer then changes only what it can see).
        codec: FourCC of the main annotated video (:data:`CODECS`).
        quality: encoder quality 0-100 (used by codecs that honour it: MJPG, VP8).
        webm: also write a browser-playable VP8 ``annotated.webm``; webm_scale: its size factor.
        annotate: draw boxes, IDs and fps on the output.
        queue_size: bounded queue length between threads.
        live: treat the source as live (drop stale frames); None = from the source kind.
        reconnect: reopen attempts when a live source stops delivering; reconnect_delay_s between.
        open_timeout_s: give up opening a source after this long.
        score_threshold, min_face: detector confidence and smallest face side (px) kept.
        detect_side: longest side of the frame the detector sees (smaller is faster, misses small faces).
        gallery: save the best enhanced face per track; gallery_size: its side in px.
        progress: tqdm progress bar with live fps.
        identity_gallery: known people to label tracks with: a gallery folder (one sub-folder or
            ``name_`` file prefix per person) or a ``.npz`` saved by ``facekit.identify``
            (None: no identification, outputs as without it).
        identity_threshold: cosine similarity at or above which a track takes the best identity
            (below: "unknown"), or "auto" (the gallery's calibrated threshold, else calibrated on
            ORL at FAR 1%).
        identity_crops: best crops per track whose mean embedding is matched.
        identity_source: "enhanced" (crops from the composited frame) or "raw" (the input frame).
        identity_max_embeds: embeddings per track while it is on screen (the real-time budget);
            the track's best crops are embedded once more when it ends.
        fuse_tracks: when a run ends, fuse each track's best raw crops into one face
            (:mod:`facekit.fusion`) and write it beside the best single-frame face
            (``gallery/track_NNNN_fused.png``, ``fused`` columns of the track table).
        fusion_frames: raw crops kept per track for fusion (the best by quality).
        mesh_tracks: when a run ends, write a 3D face mesh per track (:mod:`facekit.mesh`, needs
            MediaPipe) from its fused face, else its best face, into ``meshes/``, with head pose in
            the track table.
    """

    enhancer: str = "auto"
    model_backend: str = "onnx"
    enhancer_threads: int | None = 1
    detect_every: int = 3
    max_frames: int | None = None
    crop_size: int = 64
    margin: float = 0.2
    temporal: float = 0.6
    feather: float = 0.35
    detail_transfer: bool = True
    codec: str = "mp4v"
    quality: int = 90
    webm: bool = True
    webm_scale: float = 1.0
    annotate: bool = True
    queue_size: int = 8
    live: bool | None = None
    reconnect: int = 3
    reconnect_delay_s: float = 0.5
    open_timeout_s: float = 5.0
    score_threshold: float = 0.6
    min_face: int = 8
    detect_side: int = 640
    gallery: bool = True
    gallery_size: int = 128
    progress: bool = True
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    identity_gallery: str | None = None
    identity_threshold: float | str = "auto"
    identity_crops: int = 3
    identity_source: str = "enhanced"
    identity_max_embeds: int = 4
    fuse_tracks: bool = True
    fusion_frames: int = 16
    mesh_tracks: bool = False

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid setting (types and :data:`LIMITS`)."""
        for key, (kind, lo, hi, lo_open, hi_open, optional) in LIMITS.items():
            if kind is int:
                settings.check_int(getattr(self, key), key, lo, hi, optional=optional)
            else:
                settings.check_float(getattr(self, key), key, lo, hi, lo_open, hi_open, optional=optional)
        if self.codec not in CODECS:
            raise ConfigError(f"unknown codec {self.codec!r}; valid: {', '.join(CODECS)}")
        if self.identity_source not in IDENTITY_SOURCES:
            raise ConfigError(f"unknown identity_source {self.identity_source!r}; valid: {', '.join(IDENTITY_SOURCES)}")
        parse_identity_threshold(self.identity_threshold)


@dataclass
class VideoResult:
    """Summary of a run (also written as ``summary.json``)."""

    input: str
    output_dir: str
    frames: int
    width: int
    height: int
    fps_in: float
    fps: float
    seconds: float
    tracks: int
    dropped: int
    reconnects: int
    truncated: bool
    message: str
    stage_ms: dict[str, float]
    flicker: float | None
    outputs: dict[str, str]
    webm_backend: str
    config: dict
    identities: dict | None = None
    stopped: str | None = None  # "SIGTERM" / "SIGINT" when a signal stopped the run early
    skipped: list[str] = field(default_factory=list)  # sequence entries skipped: "path: reason"
    swept: list[str] = field(default_factory=list)  # temporary files of killed runs dealt with at start
    video_backend: str = ""  # writer of the main video
    fusion: dict | None = None  # track fusion: mode, tracks fused, ms per track (None: off); "mesh" with --mesh-tracks

    def to_json(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Pipeline pieces


def _ellipse_mask(h: int, w: int, feather: float) -> np.ndarray:
    """Soft elliptical alpha ``(h,w) float32``: 1 inside, ramping to 0 at the box edge."""
    yy = (np.arange(h, dtype=np.float32) + 0.5) / h * 2 - 1
    xx = (np.arange(w, dtype=np.float32) + 0.5) / w * 2 - 1
    r = np.sqrt(yy[:, None] ** 2 + xx[None, :] ** 2)
    return np.ascontiguousarray(np.clip((1.0 - r) / max(feather, 1e-3), 0.0, 1.0))


def _square_crop_box(box, margin: float, w: int, h: int) -> tuple[int, int, int] | None:
    """Square region ``(x0, y0, side)`` around a face box, shifted to stay inside the frame."""
    x, y, bw, bh = box
    side = int(round(max(bw, bh) * (1 + 2 * margin)))
    side = min(side, w, h)
    if side < 4:
        return None
    cx, cy = x + bw / 2, y + bh / 2
    x0 = int(round(min(max(cx - side / 2, 0), w - side)))
    y0 = int(round(min(max(cy - side / 2, 0), h - side)))
    return x0, y0, side


def sharpness(img: np.ndarray) -> float:
    """Variance of the Laplacian of the grey image (higher = sharper)."""
    g = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(g, cv2.CV_32F).var())


_STOP = object()


def _reader(cap_holder: dict, source: Source, cfg: VideoConfig, q: "queue.Queue", state: dict,
            stop: threading.Event, factory) -> None:
    """Read frames into ``q``; live sources drop the oldest queued frame instead of waiting."""
    live = state["live"]
    index = 0
    failures = 0
    try:
        while not stop.is_set():
            if cfg.max_frames is not None and index >= cfg.max_frames:
                break
            t0 = time.perf_counter()
            cap = cap_holder["cap"]
            try:
                ok, frame = cap.read()
            except cv2.error as exc:
                ok, frame = False, None
                state["message"] = f"read error: {exc}"
            state["read_s"] += time.perf_counter() - t0
            if not ok or frame is None:
                if not live or failures >= cfg.reconnect:
                    if live and failures:
                        frames = index + state.get("offset", 0)
                        state["message"] = (f"{source.spec}: stream stopped after {frames} frames; "
                                            f"gave up after {failures} reconnect attempt(s)")
                    break
                failures += 1
                state["reconnects"] += 1
                try:
                    cap.release()
                except Exception:  # noqa: BLE001 - a dead capture may fail to release
                    pass
                time.sleep(cfg.reconnect_delay_s)
                try:
                    cap_holder["cap"] = open_capture(source, cfg.open_timeout_s, factory)
                except VideoReadError as exc:
                    state["message"] = str(exc)
                    cap_holder["cap"] = DeadCapture()
                continue
            failures = 0
            if frame.ndim == 2:
                frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
            elif frame.shape[2] == 4:
                frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
            item = (index, frame)
            index += 1
            if live:
                while True:
                    try:
                        q.put_nowait(item)
                        break
                    except queue.Full:
                        try:
                            q.get_nowait()
                            state["dropped"] += 1
                        except queue.Empty:
                            pass
            else:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
    except Exception as exc:  # noqa: BLE001 - surfaced by the processing thread
        state["error"] = exc
    finally:
        state["read_frames"] = index
        if not stop.is_set():
            q.put(_STOP)  # files: the consumer is still draining, nothing may be lost
        else:  # the consumer gave up: make room rather than block forever
            while True:
                try:
                    q.put_nowait(_STOP)
                    break
                except queue.Full:
                    try:
                        q.get_nowait()
                    except queue.Empty:
                        pass


class FaceVideoProcessor:
    """Per-frame detection, tracking, enhancement, stabilisation, compositing and annotation.

    Usable on its own (``process(index, bgr) -> bgr``) or through :func:`process_video`.
    """

    def __init__(self, cfg: VideoConfig, enhancer: Enhancer | None = None, detector=None,
                 identifier: TrackIdentifier | None = None):
        self.cfg = cfg
        self.enhancer = enhancer or make_enhancer(cfg.enhancer, cfg.model_backend, threads=cfg.enhancer_threads)
        self.detector = detector or faces.FaceDetector(score_threshold=cfg.score_threshold, max_side=cfg.detect_side)
        self.tracker = IoUTracker(cfg.tracker)
        self.stabilizer = CropStabilizer(cfg.temporal)
        self.flicker = FlickerMeter()
        self.records: dict[int, TrackRecord] = {}
        self.times = {"detect": 0.0, "track": 0.0, "enhance": 0.0, "composite": 0.0, "annotate": 0.0}
        self.identifier = identifier
        if identifier is not None:
            self.times["identify"] = 0.0  # processing-thread share only; embedding is in the worker
        self.detections = 0
        self._masks: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self.fps = 0.0

    def _mask(self, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        key = (h, w)
        if key not in self._masks:
            if len(self._masks) > 256:
                self._masks.clear()
            m = _ellipse_mask(h, w, self.cfg.feather)
            self._masks[key] = (m, 1.0 - m)
        return self._masks[key]

    def detect(self, index: int, bgr: np.ndarray) -> list | None:
        """Run the face detector on frame ``index`` if it is a detection frame (every ``detect_every``-th).

        It reads no tracking state, so :func:`process_video` runs it for the next frame in its own
        thread while this one is enhanced and composited; :meth:`process` gives the same result
        whether the detections come from here beforehand or are computed inside it.

        Args:
            index: frame index. bgr: ``(H,W,3) uint8`` BGR frame (not modified).

        Returns:
            The detections of at least ``min_face`` px, or None on a frame that is only tracked.
        """
        if index % self.cfg.detect_every != 0:
            return None
        t0 = time.perf_counter()
        dets = [d for d in self.detector.detect(bgr[:, :, ::-1]) if min(d.box[2], d.box[3]) >= self.cfg.min_face]
        self.times["detect"] += time.perf_counter() - t0
        return dets

    def process(self, index: int, bgr: np.ndarray, annotate: bool | None = None,
                detections: list | None = None) -> tuple[np.ndarray, list]:
        """Process one frame.

        Args:
            index: frame index (increasing). bgr: ``(H,W,3) uint8`` BGR frame (not modified).
            annotate: draw boxes and the rate (None: ``cfg.annotate``).
            detections: this frame's :meth:`detect` result when it was computed ahead (None: run
                the detector here when it is a detection frame).

        Returns:
            ``(output BGR frame, [(track_id, (x0, y0, side), enhanced RGB crop)])``.
        """
        cfg = self.cfg
        h, w = bgr.shape[:2]
        t0 = time.perf_counter()
        if index % cfg.detect_every == 0:
            dets = self.detect(index, bgr) if detections is None else detections
            t1 = time.perf_counter()
            self.detections += len(dets)
            tracks = self.tracker.update(index, [d.box for d in dets], [d.score for d in dets],
                                         [d.landmarks for d in dets] if dets else None)
            fresh = True
        else:
            t1 = t0
            tracks = self.tracker.predict(index)
            fresh = False
        for t in self.tracker.finished:
            self.stabilizer.drop(t.id)
            if self.identifier is not None:
                self.identifier.track_ended(t.id)
        self.tracker.finished.clear()
        t2 = time.perf_counter()
        self.times["track"] += t2 - t1

        regions, crops, live_tracks = [], [], []
        for t in tracks:
            r = _square_crop_box(t.box, cfg.margin, w, h)
            if r is None:
                continue
            x0, y0, side = r
            # Resize the BGR region, then flip the small result to RGB: OpenCV copies a channel-flipped
            # view of the whole region first (3x the resize's cost on a 360 px face), and resizing
            # works per channel, so the pixels are the same.
            crops.append(cv2.resize(bgr[y0:y0 + side, x0:x0 + side], (cfg.crop_size, cfg.crop_size),
                                    interpolation=cv2.INTER_AREA if side > cfg.crop_size
                                    else cv2.INTER_LINEAR)[:, :, ::-1])
            regions.append(r)
            live_tracks.append(t)
        out = bgr.copy()
        faces = []
        offers = []
        if crops:
            batch = np.stack(crops)
            enhanced = self.enhancer(batch)
            if (not isinstance(enhanced, np.ndarray) or enhanced.dtype != np.uint8 or enhanced.ndim != 4
                    or len(enhanced) != len(batch) or enhanced.shape[-1] != 3):
                raise ConfigError(f"enhancer returned {getattr(enhanced, 'shape', type(enhanced))} "
                                  f"{getattr(enhanced, 'dtype', '')}; expected ({len(batch)},S,S,3) uint8")
            t3 = time.perf_counter()
            self.times["enhance"] += t3 - t2
            for t, (x0, y0, side), e, small in zip(live_tracks, regions, enhanced, batch):
                if fresh and cfg.fuse_tracks and t.last_seen == index:
                    self._keep_for_fusion(t, index, bgr[y0:y0 + side, x0:x0 + side], side)
                e = self.stabilizer(t.id, e, reset=t.reset)
                self.flicker.add(t.id, index, e)
                faces.append((t.id, (x0, y0, side), e))
                # flip the small crop to BGR before enlarging it (same pixels, no strided full-size copy)
                patch = cv2.resize(np.ascontiguousarray(e[:, :, ::-1]), (side, side),
                                   interpolation=cv2.INTER_AREA if e.shape[0] > side else cv2.INTER_CUBIC)
                if cfg.detail_transfer and side > 1.25 * cfg.crop_size:
                    # A face larger than the crop lost its fine detail on the way to the enhancer;
                    # add it back (frame crop minus its crop-size version) so big faces are not blurred.
                    low = cv2.resize(small[:, :, ::-1], (side, side), interpolation=cv2.INTER_LINEAR)
                    detail = cv2.subtract(bgr[y0:y0 + side, x0:x0 + side], low, dtype=cv2.CV_16S)
                    # saturating add straight to uint8: the same pixels as int16 + clip + astype
                    patch = cv2.add(patch, detail, dtype=cv2.CV_8U)
                region = out[y0:y0 + side, x0:x0 + side]
                m, inv = self._mask(side, side)
                region[:] = cv2.blendLinear(np.ascontiguousarray(patch), np.ascontiguousarray(region), m, inv)
                q = self._record(t, index, e, fresh)
                if q is not None:
                    offers.append((t, q))
            self.times["composite"] += time.perf_counter() - t3
            if offers and self.identifier is not None:
                t5 = time.perf_counter()
                self._offer_identity(index, bgr if cfg.identity_source == "raw" else out, offers)
                self.times["identify"] += time.perf_counter() - t5
        else:
            self.times["enhance"] += time.perf_counter() - t2
        for t in live_tracks:
            rec = self.records[t.id]
            rec.last = index
            bx = t.box
            rec.boxes[index] = tuple(int(round(v)) for v in bx)
        if annotate if annotate is not None else cfg.annotate:
            t4 = time.perf_counter()
            self._annotate(out, live_tracks)
            self.times["annotate"] += time.perf_counter() - t4
        return out, faces

    def _record(self, t, index: int, crop: np.ndarray, fresh: bool) -> float | None:
        """Update the track's record; returns the crop's quality (score x sharpness) on detection frames."""
        rec = self.records.get(t.id)
        if rec is None:
            rec = self.records[t.id] = TrackRecord(id=t.id, first=index, last=index)
        rec.max_score = max(rec.max_score, t.score)
        if not fresh or not (self.cfg.gallery or self.identifier is not None):
            return None
        sharp = sharpness(crop)
        quality = t.score * sharp
        if self.cfg.gallery and quality > rec.best_quality:
            rec.best_quality, rec.best_frame, rec.best_score, rec.best_sharpness = quality, index, t.score, sharp
            rec.best_crop = crop.copy()
        return quality

    def _keep_for_fusion(self, t, index: int, crop_bgr: np.ndarray, side: int) -> None:
        """Keep the track's ``fusion_frames`` best raw crops (RGB, at most FUSION_MAX_SIDE px) for fusion.

        Args:
            t: the track (matched to a detection on this frame). index: frame index.
            crop_bgr: the face's square region of the input frame (BGR view). side: its side in px.
        """
        rec = self.records.get(t.id)
        if rec is None:
            rec = self.records[t.id] = TrackRecord(id=t.id, first=index, last=index)
        if crop_bgr.shape[0] != crop_bgr.shape[1] or side < 4:
            return  # clipped at the frame edge: not the same framing as the others
        # Runs on every detection frame: resize the BGR view and flip only the 32 px result (a
        # flipped view would be copied whole first; per-channel resizing gives the same pixels).
        small = cv2.resize(crop_bgr, (FUSION_MAX_SIDE,) * 2, interpolation=cv2.INTER_AREA) \
            if side > FUSION_MAX_SIDE else crop_bgr
        crop = np.ascontiguousarray(small[:, :, ::-1])
        q = float(fusion.frame_quality(crop[None], [t.score])[0])
        store = rec.fusion_crops
        if len(store) >= self.cfg.fusion_frames:
            worst = min(range(len(store)), key=lambda i: store[i][0])
            if store[worst][0] >= q:
                return
            store.pop(worst)
        store.append((q, index, crop, float(t.score), int(side)))

    def _offer_identity(self, index: int, frame_bgr: np.ndarray, offers) -> None:
        """Hand the identifier landmark-aligned crops of tracks whose crop improved on this frame."""
        ident = self.identifier
        for t, quality in offers:
            # landmarks belong to this frame only when the track was matched to a detection now
            if t.landmarks is None or t.last_seen != index or not ident.wants(t.id, quality):
                continue
            try:
                crop = faces.align_face(frame_bgr, t.landmarks, ident.crop_side, ident.margin)
            except FacekitError:  # degenerate landmarks: skip this crop, the track has others
                continue
            ident.offer(t.id, index, quality, np.ascontiguousarray(crop[:, :, ::-1]))

    def _annotate(self, out: np.ndarray, tracks) -> None:
        h = out.shape[0]
        thick = max(1, h // 360)
        fs = max(0.4, h / 900)
        for t in tracks:
            x, y, bw, bh = (int(round(v)) for v in t.box)
            color = track_color(t.id)
            cv2.rectangle(out, (x, y), (x + bw, y + bh), color, thick)
            text = f"ID {t.id}"
            if self.identifier is not None:
                lab = self.identifier.label(t.id)
                text += f" {lab.caption()}" if lab is not None else " ..."
            cv2.putText(out, text, (x, max(12, y - 4)), cv2.FONT_HERSHEY_SIMPLEX, fs, color, thick,
                        cv2.LINE_AA)
        # the rate is measured between output frames: none yet on the first one (not "0.0 fps")
        rate = f"{self.fps:5.1f} fps" if self.fps > 0 else "-- fps"
        cv2.putText(out, rate, (6, int(18 * fs / 0.4)), cv2.FONT_HERSHEY_SIMPLEX, fs,
                    (0, 255, 255), thick, cv2.LINE_AA)


# ---------------------------------------------------------------------------------------------
# Driver


def process_video(input_spec, out_dir, config: VideoConfig | None = None, *, enhancer: Enhancer | None = None,
                  capture_factory=None, detector=None, frame_hook=None, gallery=None) -> VideoResult:
    """Run the whole pipeline on a video source and write every output.

    Args:
        input_spec: file path, folder/glob of images, webcam index, or stream URL.
        out_dir: output folder (created).
        config: :class:`VideoConfig` (defaults when None).
        enhancer: a callable overriding ``config.enhancer``.
        capture_factory: ``factory(target) -> capture`` used to open (and reopen) the source.
        detector: a face detector with ``detect(rgb) -> [Detection]`` (default YuNet).
        frame_hook: ``hook(index, input_bgr, output_bgr, faces)`` called in the processing thread
            for every frame with the composited frame before annotation (boxes are drawn on it in
            place after the hook returns: copy it to keep it); ``faces`` is
            ``[(track_id, (x0, y0, side), enhanced RGB crop)]``.
        gallery: a ready ``facekit.identify.Gallery`` to label tracks with (overrides
            ``config.identity_gallery``; its threshold still follows ``config.identity_threshold``).

    Returns:
        A :class:`VideoResult`; ``summary.json`` in ``out_dir`` holds the same. With a gallery,
        each ``TrackRecord.label`` holds the track's final :class:`TrackLabel`.

    Every output is written under a temporary name and renamed once finalised; temporary files of
    killed runs in ``out_dir`` are swept first (:func:`sweep_stale_temps`). Under
    :class:`StopSignals` (the command line), SIGTERM/SIGINT stop the run after the current frame.

    Raises:
        VideoReadError: the source cannot be opened or yields no frame; an image-sequence frame is
            above the pixel limit or of another size than the first.
        ConfigError: bad settings, or a gallery path that is neither a gallery folder nor a saved gallery.
        StopRequested: under :class:`StopSignals`, a signal stopped the run; raised after every
            output (``summary.json`` included, with ``stopped``) is finalised; ``.result`` holds it.
        KeyboardInterrupt: Ctrl-C without :class:`StopSignals`; re-raised after the same finalisation.
    """
    cfg = config or VideoConfig()
    cfg.validate()
    if enhancer is None:
        from facekit import restorers  # defers torch (the released chain)

        cfg.enhancer = restorers.resolve_auto(cfg.enhancer)
    source = resolve_source(input_spec)
    out_dir = Path(out_dir)

    settings.check_writable(out_dir, "output folder", "; give another OUTPUT_DIR")  # before the source opens
    if cfg.mesh_tracks:  # a missing MediaPipe is said now, not after the whole video
        mesh.require_mediapipe()
    live = source.live if cfg.live is None else bool(cfg.live)
    # Before opening the source: a bad gallery fails fast, and enrolment/calibration stay off the clock.
    identifier = build_identifier(cfg.identity_gallery, cfg.identity_threshold, cfg.identity_crops,
                                  cfg.identity_max_embeds, gallery)
    cap, first, expected, fps_in = _open_first_frame(source, cfg.open_timeout_s, capture_factory)
    processor = FaceVideoProcessor(cfg, enhancer=enhancer, detector=detector, identifier=identifier)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        swept = sweep_stale_temps(out_dir)
    except BaseException:
        cap.release()
        raise
    for line in swept:
        print(f"facekit video: {line}", file=sys.stderr)
    if first.ndim == 2:
        first = cv2.cvtColor(first, cv2.COLOR_GRAY2BGR)
    first = first[:, :, :3]
    h, w = first.shape[:2]
    guard = active_stop_signals()
    if guard is not None:
        guard.defer = True  # from here on a signal only asks the loop to stop; the outputs get finalised
    try:
        writer = VideoWriter(out_dir, (w, h), fps_in, cfg.codec, cfg.quality, cfg.webm, cfg.webm_scale)
    except BaseException:
        cap.release()
        raise

    run = _run_frames(cap, first, source, cfg, live, expected, processor, writer, guard, capture_factory, frame_hook)
    interrupted = run.error if isinstance(run.error, KeyboardInterrupt) else None
    if run.writer_error is not None:  # the writer failed: its files cannot be trusted
        writer.discard()
        if run.error is not None:
            raise run.error
        raise FacekitError(f"writing {out_dir}: {run.writer_error}")
    writer.commit(webm_ok=not run.webm_error)  # finalised: the temporary files take their final names
    if run.error is not None and interrupted is None:
        raise run.error
    if "error" in run.state and interrupted is None:
        raise VideoReadError(f"{source.spec}: reader failed: {run.state['error']}")

    stopped = None
    if guard is not None and guard.signum is not None:
        stopped = signal.Signals(guard.signum).name
    elif interrupted is not None:
        stopped = "SIGINT"
    truncated, message, skipped = _run_message(source, cfg, run, expected, stopped, writer)
    outputs = {k: str(v) for k, v in writer.paths.items()}
    track_outputs, fusion_info, identities = _finish_tracks(processor, identifier, run.labels, out_dir, cfg,
                                                            cfg.enhancer if enhancer is None else "")
    outputs.update(track_outputs)
    stage_ms = {k: 1000.0 * v / max(run.frames, 1) for k, v in processor.times.items()}
    stage_ms["read"] = 1000.0 * run.state["read_s"] / max(run.read_frames, 1)
    stage_ms["write"] = 1000.0 * writer.seconds / max(writer.frames, 1)
    flick = processor.flicker.mean()
    n, elapsed = run.frames, run.seconds
    result = VideoResult(
        input=source.spec, output_dir=str(out_dir), frames=n, width=w, height=h, fps_in=fps_in,
        fps=n / elapsed if elapsed > 0 else 0.0, seconds=elapsed, tracks=len(processor.records),
        dropped=run.state["dropped"], reconnects=run.state["reconnects"], truncated=truncated, message=message,
        stage_ms={k: round(v, 3) for k, v in stage_ms.items()},
        flicker=None if flick is None else round(flick, 4), outputs=outputs,
        webm_backend=writer.webm_backend, config=_jsonable(asdict(cfg)), identities=identities,
        stopped=stopped, skipped=skipped, swept=swept, video_backend=writer.video_backend, fusion=fusion_info)
    outputs["summary"] = str(out_dir / "summary.json")
    write_atomic(out_dir / "summary.json", json.dumps(result.to_json(), indent=2))
    if interrupted is not None:
        if isinstance(interrupted, StopRequested):
            interrupted.result = result
        raise interrupted
    if stopped:
        raise StopRequested(guard.signum, result)
    return result


def _open_first_frame(source: Source, timeout_s: float, factory) -> tuple[object, np.ndarray, int, float]:
    """Open ``source`` and read its first frame (which sizes the output videos).

    Returns:
        ``(capture, first frame, frame count or 0, frame rate)``; the rate is 25 when the source
        gives none or one above 240.

    Raises:
        VideoReadError: the source cannot be opened or yields no frame (the capture is released).
    """
    cap = open_capture(source, timeout_s, factory)
    expected = 0
    fps_in = 0.0
    try:
        expected = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        fps_in = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    except Exception:  # noqa: BLE001 - fake captures may not implement get()
        pass
    try:
        ok, first = cap.read()
    except BaseException:
        cap.release()
        raise
    if not ok or first is None:
        cap.release()
        skipped = getattr(cap, "skipped", None)
        detail = f"; skipped: {'; '.join(skipped[:3])}" if skipped else ""
        raise VideoReadError(f"{source.spec}: no readable frame (empty, zero-frame or truncated video){detail}")
    if fps_in <= 0 or fps_in > 240:
        fps_in = 25.0
    return cap, first, expected, fps_in


@dataclass
class _Run:
    """How the frame loop of :func:`process_video` ended (its threads joined, the writer closed)."""

    frames: int  # frames processed and handed to the writer
    seconds: float  # from the first detection until the threads were joined and the identities final
    error: BaseException | None  # what ended the loop early (Ctrl-C included), re-raised once finalised
    writer_error: BaseException | None  # the writer failed: its files cannot be trusted
    webm_error: str  # the webm encoder's problem ("" when none)
    state: dict  # the reader's: dropped, reconnects, message, read_s, read_frames (and error if it failed)
    cap: object  # the capture last read (a reconnect replaces the first), released
    labels: dict  # the identifier's final labels {track id: TrackLabel} ({} without a gallery)

    @property
    def read_frames(self) -> int:
        """Frames read from the source: the reader's and the first one, read before it started."""
        return self.state["read_frames"] + 1


def _run_frames(cap, first: np.ndarray, source: Source, cfg: VideoConfig, live: bool, expected: int,
                processor: FaceVideoProcessor, writer: VideoWriter, guard: StopSignals | None, capture_factory,
                frame_hook) -> _Run:
    """Process every frame: reader, detector and writer threads around the processing loop in this thread.

    Frames flow from the reader (continuing after ``first``, already read) to the detector (one
    frame ahead), to :meth:`FaceVideoProcessor.process` here, to the writer. Whatever ends the loop
    (the end of the source, a stop signal recorded by ``guard``, an error, Ctrl-C), the threads are
    stopped and joined, the writer closed (its files still under temporary names), the capture
    released and the identities finished; an exception is returned in ``error``, not raised.
    """
    state = {"dropped": 0, "reconnects": 0, "message": "", "read_s": 0.0, "live": live, "read_frames": 0,
             "offset": 1}
    frames_q: queue.Queue = queue.Queue(maxsize=cfg.queue_size)
    # one detected frame waits while the previous one is composited: detection stays one frame ahead
    detected_q: queue.Queue = queue.Queue(maxsize=1)
    out_q: queue.Queue = queue.Queue(maxsize=cfg.queue_size)
    stop = threading.Event()
    frames_q.put((0, first))
    cap_holder = {"cap": cap}
    reader_cfg = cfg if cfg.max_frames is None else VideoConfig(**{**asdict(cfg), "max_frames": cfg.max_frames - 1,
                                                                   "tracker": cfg.tracker})

    def _reader_offset():
        # The first frame was read before (to size the writers); the reader continues from frame 1.
        q_proxy = _OffsetQueue(frames_q, 1)
        _reader(cap_holder, source, reader_cfg, q_proxy, state, stop, capture_factory)

    writer_err: dict = {}

    def _write_loop():
        try:
            while True:
                item = out_q.get()
                if item is _STOP:
                    break
                writer.write(item)
        except Exception as exc:  # noqa: BLE001 - surfaced after the run
            writer_err["error"] = exc
            while out_q.get() is not _STOP:  # keep draining so the producer never blocks
                pass

    rt = threading.Thread(target=_reader_offset, daemon=True, name="facekit-video-reader")
    wt = threading.Thread(target=_write_loop, daemon=True, name="facekit-video-writer")
    dt = threading.Thread(target=_detect_ahead, args=(processor, frames_q, detected_q, stop), daemon=True,
                          name="facekit-video-detect")
    rt.start()
    wt.start()

    bar = _progress_bar(cfg, expected, live)
    t_start = time.perf_counter()
    dt.start()  # after the clock starts: no frame is detected off the clock
    n = 0
    error = None
    recent: list[float] = []
    try:
        while True:
            item = _next_frame(detected_q, guard)
            if item is _STOP:
                break
            if isinstance(item, _Failed):
                raise item.exc
            index, frame, dets = item
            out, faces = processor.process(index, frame, annotate=False, detections=dets)
            if frame_hook is not None:
                frame_hook(index, frame, out, faces)
            if cfg.annotate:
                t4 = time.perf_counter()
                processor._annotate(out, processor.tracker.visible())
                processor.times["annotate"] += time.perf_counter() - t4
            out_q.put(out)
            n += 1
            now = time.perf_counter()
            recent.append(now)
            if len(recent) > 30:
                recent.pop(0)
            if len(recent) > 1:
                processor.fps = (len(recent) - 1) / (recent[-1] - recent[0])
            if bar is not None:
                bar.update(1)
                if n % 10 == 0:
                    bar.set_postfix(fps=f"{processor.fps:.1f}", tracks=len(processor.records),
                                    dropped=state["dropped"])
    except BaseException as exc:  # finalise outputs even on errors / Ctrl-C; process_video re-raises
        error = exc
    finally:
        stop.set()
        for q in (frames_q, detected_q):  # unblock a reader or the detector waiting on a full queue
            while True:
                try:
                    q.get_nowait()
                except queue.Empty:
                    break
        dt.join()  # it sees ``stop`` within 0.2 s of finishing the frame it holds
        out_q.put(_STOP)
        wt.join()
        try:
            webm_error = writer.close()
        except FacekitError as exc:  # the main video could not be finished: discarded by process_video
            writer_err.setdefault("error", exc)
            webm_error = ""
        rt.join(timeout=2.0)
        try:
            cap_holder["cap"].release()
        except Exception:  # noqa: BLE001
            pass
        if bar is not None:
            bar.close()
        signalled = guard is not None and guard.signum is not None
        labels = (processor.identifier.finish(embed=error is None and not signalled)
                  if processor.identifier is not None else {})
    return _Run(frames=n, seconds=time.perf_counter() - t_start, error=error, writer_error=writer_err.get("error"),
                webm_error=webm_error, state=state, cap=cap_holder["cap"], labels=labels)


def _progress_bar(cfg: VideoConfig, expected: int, live: bool):
    """A tqdm bar counting frames (None when ``cfg.progress`` is off); its total is known for files."""
    if not cfg.progress:
        return None
    from tqdm.auto import tqdm

    total = expected if (expected > 0 and not live) else None
    if cfg.max_frames:
        total = min(total, cfg.max_frames) if total else cfg.max_frames
    return tqdm(total=total, desc="video", unit="frame", leave=False)


def _run_message(source: Source, cfg: VideoConfig, run: _Run, expected: int, stopped: str | None,
                 writer: VideoWriter) -> tuple[bool, str, list[str]]:
    """``(truncated, message, skipped)`` of a finished run; the message and skipped images go to stderr.

    ``truncated``: a video file ended well before its frame count. ``message`` joins the reader's
    message, truncation, skipped images, the stop signal, resized frames and a webm problem.
    ``skipped``: image-sequence entries skipped ("path: reason").
    """
    truncated = False
    message = run.state["message"]
    read_frames = run.read_frames
    wanted = expected if cfg.max_frames is None else min(expected, cfg.max_frames)
    if not stopped and source.kind == "file" and expected > 0 and read_frames < wanted - 1:
        truncated = True
        message = (f"{source.spec}: video ended after {read_frames} of {expected} frames "
                   "(truncated or corrupt); outputs hold the frames read")
    skipped = list(getattr(run.cap, "skipped", None) or []) if source.kind == "sequence" else []
    if skipped:
        for line in skipped[:20]:
            print(f"facekit video: skipped {line}", file=sys.stderr)
        if len(skipped) > 20:
            print(f"facekit video: ... and {len(skipped) - 20} more skipped", file=sys.stderr)
        message = f"skipped {len(skipped)} image(s): {skipped[:3]}"
    if stopped:
        message = (message + "; " if message else "") + f"stopped by {stopped} after {run.frames} frames"
    if writer.resized:
        w, h = writer.size
        message = (message + "; " if message else "") + (
            f"{writer.resized} frame(s) of another size than the first were resized to {w}x{h}")
    if run.webm_error:
        message = (message + "; " if message else "") + f"webm: {run.webm_error}"
    if message:
        print(f"facekit video: {message}", file=sys.stderr)
    return truncated, message, skipped


def _finish_tracks(processor: FaceVideoProcessor, identifier: TrackIdentifier | None, labels: dict, out_dir: Path,
                   cfg: VideoConfig, fusion_spec: str) -> tuple[dict[str, str], dict | None, dict | None]:
    """Label, fuse and mesh the tracks as ``cfg`` asks, and write the gallery and track files.

    Args:
        labels: the identifier's final labels. fusion_spec: the enhancer spec whose released chain
            may run the learned fusion ("" for an enhancer given as a callable).

    Returns:
        ``(output paths, fusion summary or None, identities summary or None)`` for ``summary.json``.
    """
    for tid, lab in labels.items():
        if tid in processor.records:
            processor.records[tid].label = lab
    fusion_info = None
    if cfg.fuse_tracks:
        t_fuse = time.perf_counter()
        fusion_info = fuse_records(processor.records, fusion_spec)
        fusion_info["seconds"] = round(time.perf_counter() - t_fuse, 3)
    if cfg.mesh_tracks:
        t_mesh = time.perf_counter()
        mesh_info = mesh_records(processor.records, out_dir)
        mesh_info["seconds"] = round(time.perf_counter() - t_mesh, 3)
        fusion_info = {**(fusion_info or {}), "mesh": mesh_info}
    templated, t_templates = 0, time.perf_counter()
    if identifier is not None and not identifier.error:
        # the live label saw a track's best crops one by one; the fused face and its views decide better
        templated = template_labels(processor.records, identifier, cfg.gallery_size)
    t_templates = time.perf_counter() - t_templates
    outputs = write_tracks(processor.records, out_dir, cfg.gallery_size, labelled=identifier is not None,
                           meshed=cfg.mesh_tracks)
    identities = None
    if identifier is not None:
        identities = identifier.summary()
        identities["gallery"] = str(cfg.identity_gallery or "(given)")
        identities["tracks"] = {str(tid): rec.label.identity if rec.label else UNKNOWN_LABEL
                                for tid, rec in sorted(processor.records.items())}
        identities["track_templates"] = {str(tid): rec.track_label.identity
                                         for tid, rec in sorted(processor.records.items()) if rec.track_label}
        identities["template_ms_per_track"] = round(1000.0 * t_templates / max(templated, 1), 2)
    return outputs, fusion_info, identities


class _Failed:
    """An exception raised in a pipeline thread, handed to the processing thread to re-raise."""

    def __init__(self, exc: BaseException):
        self.exc = exc


def _detect_ahead(processor: FaceVideoProcessor, frames_q: queue.Queue, detected_q: queue.Queue,
                  stop: threading.Event) -> None:
    """Detect faces on the queued frames, one frame ahead of the processing thread.

    Detection is most of a frame's time and in OpenCV mostly runs on one core; here it overlaps the
    enhancement and compositing of the previous frame (ONNX Runtime and OpenCV release the GIL).
    Tracking and everything after it stay in the processing thread, in frame order, so the output
    is the same as :meth:`FaceVideoProcessor.process` called frame by frame.

    Args:
        processor: its :meth:`FaceVideoProcessor.detect` is called (it reads no tracking state).
        frames_q: ``(index, frame)`` items from the reader, ending with ``_STOP``.
        detected_q: receives ``(index, frame, detections or None)`` in the same order, then
            ``_STOP``; or a :class:`_Failed` when detection raised.
        stop: set by the processing thread when it stops consuming.
    """

    def put(item) -> bool:
        while not stop.is_set():
            try:
                detected_q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    try:
        while not stop.is_set():
            try:
                item = frames_q.get(timeout=0.2)  # a timeout: the reader may be gone when stop is set
            except queue.Empty:
                continue
            if item is _STOP:
                break
            index, frame = item
            if not put((index, frame, processor.detect(index, frame))):
                return
    except Exception as exc:  # noqa: BLE001 - re-raised by the processing thread
        put(_Failed(exc))
        return
    put(_STOP)


def _next_frame(frames_q: queue.Queue, guard: StopSignals | None):
    """The next queued frame, or ``_STOP`` once a stop signal was recorded by ``guard``."""
    if guard is None:
        return frames_q.get()
    while guard.signum is None:
        try:
            return frames_q.get(timeout=0.1)
        except queue.Empty:
            continue
    return _STOP


class _OffsetQueue:
    """Queue proxy that shifts the reader's frame indices by ``offset`` (frames read before it)."""

    def __init__(self, q: queue.Queue, offset: int):
        self.q, self.offset = q, offset

    def _shift(self, item):
        return item if item is _STOP else (item[0] + self.offset, item[1])

    def put(self, item, timeout=None):
        self.q.put(self._shift(item), timeout=timeout)

    def put_nowait(self, item):
        self.q.put_nowait(self._shift(item))

    def get_nowait(self):
        return self.q.get_nowait()


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj
