"""Real-time CCTV video: read frames (file, image sequence, webcam, stream URL), detect and track
faces, enhance each face crop, paste it back with a feathered blend, keep enhanced faces stable
over time, and write an annotated video, a browser-playable VP8 ``.webm``, a per-track gallery and
compact track files.

Reader, detection (one frame ahead of the rest), processing and writer run in separate threads
joined by bounded queues. Files process every frame (the reader waits); live sources drop the
oldest queued frame when processing falls behind, and the count is reported.

Identities: with a gallery of known people (``VideoConfig.identity_gallery`` or ``--gallery PATH``:
a gallery folder, one sub-folder or ``name_`` file prefix per person, or a ``.npz`` saved by
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
(640x360, two faces, 150 frames, classical enhancer): 12 crops embedded at ~38 ms CPU each, +2.7 ms
CPU per frame in all (+22%), of which ~1 ms in the processing thread. Without a gallery none of
these columns or names change.

Command line: ``python -m facekit video INPUT OUTPUT_DIR [--enhancer ...] [--detect-every k]
[--gallery PATH [--gallery-threshold auto|0.4]] ...``.

Stopping and crash safety: every output (videos, gallery images, ``tracks.csv``/``tracks.json``,
``summary.json``) is written under a temporary name in its own folder (``.NAME.facekit-tmp-PID.EXT``)
and renamed to its final name only once finalised, so nothing half-written ever carries a final name.
On the command line SIGTERM (systemd, docker, ``timeout``) is handled like SIGINT (Ctrl-C): the run
stops reading, flushes and closes the writers, writes the tracks and ``summary.json`` (with
``"stopped": "SIGTERM"`` or ``"SIGINT"``), renames everything, then exits with 128 + the signal
number: **143 for SIGTERM, 130 for SIGINT** (a second signal while finalising is ignored). A run
that is killed (SIGKILL, power loss) leaves only temporary files; the next run into the same folder
sweeps those of dead processes at start-up: a temporary video that OpenCV can still read at least
one frame from is kept as ``NAME.killed-PID.EXT`` and reported, every other one is deleted; both
are listed in ``summary.json`` (``swept``). The default ``mp4v`` ``annotated.mp4`` is a fragmented
MP4 written by the ffmpeg binary of ``imageio-ffmpeg`` (:class:`FfmpegMp4Writer`; OpenCV's
``VideoWriter`` writes the index only on release and takes no muxer options), so a file cut by
SIGKILL plays up to its last keyframe (at most about one second lost); when only facekit is killed,
the encoder (in its own session, like the webm encoder) sees its input close and finishes the file.
Without ``imageio-ffmpeg``, or with ``--codec MJPG/XVID/VP80``, OpenCV writes the main video and a
killed ``.mp4`` is not playable (deleted at the sweep); ``summary.json`` names the writer
(``video_backend``).

Image sequences (a folder or glob of frames): non-regular files (FIFOs, sockets, devices, broken
links) are never opened; they are skipped and reported (stderr and ``summary.json`` ``skipped``).
Each frame's size is read from its header before decoding and refused above
:data:`facekit.imageio.MAX_PIXELS` (64 Mpx, the single-image limit); a frame whose size differs
from the first frame's is an error naming the file (exit 1), never silently dropped. Unreadable
frames are skipped and reported, and are not counted in ``frames``.
Other sources whose frame size changes mid-run (a stream after a reconnect) have those frames
resized to the first frame's size, counted in ``message``; no frame is ever dropped by the writer.
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import math
import os
import queue
import re
import signal
import stat
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from facekit import errors, faces, fusion, imageio, mesh, settings
from facekit.errors import ConfigError, FacekitError, VideoReadError
from facekit.imageio import opencv_path, printable_path
from facekit.tracking import CropStabilizer, FlickerMeter, IoUTracker, TrackerConfig

Enhancer = Callable[[np.ndarray], np.ndarray]
"""``(N,S,S,3) uint8 RGB crops -> (N,S2,S2,3) uint8 RGB`` enhanced crops."""

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
# codec -> container extension for the main output (VP8 is the browser copy, always .webm).
CODECS: dict[str, str] = {"mp4v": ".mp4", "MJPG": ".avi", "XVID": ".avi", "VP80": ".webm"}


# ---------------------------------------------------------------------------------------------
# Enhancers


def _enhance_none(crops: np.ndarray) -> np.ndarray:
    return crops


def _enhance_bicubic(crops: np.ndarray) -> np.ndarray:
    if len(crops) == 0:
        return crops
    s = crops.shape[1] * 2
    return np.stack([cv2.resize(c, (s, s), interpolation=cv2.INTER_CUBIC) for c in crops])


_CLAHE = threading.local()


def _enhance_classical(crops: np.ndarray) -> np.ndarray:
    """Edge-preserving denoise, CLAHE on lightness, unsharp mask: a fast non-learned baseline."""
    if not hasattr(_CLAHE, "op"):
        _CLAHE.op = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4))
    out = np.empty_like(crops)
    for i, c in enumerate(crops):
        d = cv2.bilateralFilter(c, 5, 30, 5)
        lab = cv2.cvtColor(d, cv2.COLOR_RGB2LAB)
        # half-strength CLAHE: full strength lifts faces into a washed-out look
        lab[:, :, 0] = cv2.addWeighted(_CLAHE.op.apply(lab[:, :, 0]), 0.5, lab[:, :, 0], 0.5, 0)
        d = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
        blur = cv2.GaussianBlur(d, (0, 0), 1.2)
        out[i] = cv2.addWeighted(d, 1.5, blur, -0.5, 0)
    return out


class ModelEnhancer:
    """Restore crops with a trained facekit model.

    Args:
        path: a chain folder (``chain.yaml``), a ``chain.yaml``, a stage checkpoint (``.pt``/``.pth``)
            run as a one-stage "reconstruct" chain, or an exported ``.onnx`` taking ``(N,3,S,S)``
            float in [0,1].
        backend: chain backend ("onnx", "torch", "auto"); ONNX Runtime is usually fastest on CPU.
        device: torch device of the chain's stages.
        threads: ONNX Runtime intra-op threads (None: the process-wide ``--threads``); torch's
            process-wide thread count is left as it was.
    """

    def __init__(self, path: str | Path, backend: str = "onnx", device: str = "cpu", threads: int | None = None):
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"enhancer model {path} does not exist (expected a chain folder with chain.yaml, "
                              "a .pt checkpoint or an .onnx file)")
        self.path = path
        self._session = None
        self._chain = None
        if path.suffix.lower() == ".onnx":
            import onnxruntime as ort


            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads or settings.current_threads()
            self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            shape = self._session.get_inputs()[0].shape
            self.size = shape[-1] if isinstance(shape[-1], int) else 32
        else:
            try:
                import torch

                from facekit import chain as chain_mod
            except ImportError as exc:
                raise ConfigError(f"enhancer model:{path}: the restoration chain is not available ({exc})") from None
            torch_threads = torch.get_num_threads()
            try:
                if path.suffix.lower() in (".pt", ".pth", ".ckpt"):
                    stage = chain_mod.Stage.from_checkpoint("reconstruct", path, device=device)
                    self.size = int(stage.in_size or 16)
                    self._chain = chain_mod.RestorationChain([stage], device=device, backend=backend,
                                                             in_size=self.size, threads=threads)
                else:
                    self._chain, self.size = chain_mod.build_chain(model_dir=path, backend=backend, device=device,
                                                                   threads=threads)
            finally:  # a chain given threads also sets torch's process-wide count: the caller's stays
                torch.set_num_threads(torch_threads)

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        if len(crops) == 0:
            return crops
        s = self.size
        small = np.stack([cv2.resize(c, (s, s), interpolation=cv2.INTER_AREA) for c in crops])
        x = small.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
        if self._session is not None:
            name = self._session.get_inputs()[0].name
            y = self._session.run(None, {name: x})[0]
        else:
            import torch

            y = self._chain(torch.from_numpy(x)).out.cpu().numpy()
        return (np.clip(y, 0, 1).transpose(0, 2, 3, 1) * 255 + 0.5).astype(np.uint8)


ENHANCERS: dict[str, Callable[[], Enhancer]] = {
    "none": lambda: _enhance_none,
    "bicubic": lambda: _enhance_bicubic,
    "classical": lambda: _enhance_classical,
}


MODEL_BACKENDS = ("onnx", "torch", "auto")


def resolve_enhancer(spec: str) -> str:
    """Turn ``"auto"`` into the released restoration chain (``model:models/default``) when it is
    installed, else ``"classical"``; any other spec is returned unchanged."""
    if spec != "auto":
        return spec
    from facekit import chain

    folder = chain.default_model_dir()
    return f"model:{folder}" if (folder / chain.CHAIN_FILE).is_file() else "classical"


def make_enhancer(spec: str | Enhancer, backend: str = "onnx", threads: int | None = None) -> Enhancer:
    """Build an enhancer from a name (:data:`ENHANCERS`), ``"auto"``, ``"model:PATH"``, or pass a callable through.

    Args:
        backend: for ``model:PATH`` chains: "onnx" (ONNX Runtime, fastest on CPU), "torch" or "auto".
        threads: for ``model:PATH``: ONNX Runtime intra-op threads (None: the process-wide setting).

    Returns:
        The enhancer callable.
    """
    if callable(spec):
        return spec
    spec = resolve_enhancer(spec) if isinstance(spec, str) else spec
    if isinstance(spec, str) and spec.startswith("model:"):
        if backend not in MODEL_BACKENDS:
            raise ConfigError(f"unknown model backend {backend!r}; valid: {', '.join(MODEL_BACKENDS)}")
        return ModelEnhancer(spec[len("model:"):], backend=backend, threads=threads)
    if spec not in ENHANCERS:
        raise ConfigError(f"unknown enhancer {spec!r}; valid: auto, {', '.join(ENHANCERS)}, model:PATH")
    return ENHANCERS[spec]()


# ---------------------------------------------------------------------------------------------
# Sources


def _not_regular(path: Path) -> str:
    """Why ``path`` must not be opened as a frame ("" when it is a regular file)."""
    try:
        mode = os.stat(path).st_mode  # follows links: a link to a FIFO is a FIFO
    except FileNotFoundError:
        return "broken symbolic link" if os.path.islink(path) else "no longer exists"
    except OSError as exc:
        return f"cannot stat ({exc.strerror or exc})"
    if stat.S_ISREG(mode):
        return ""
    kind = ("FIFO" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) else "device"
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "folder" if stat.S_ISDIR(mode) else "special file")
    return f"not a regular file ({kind}), not opened"


def _header_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from the image header without decoding pixels; None when unrecognised."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:
                return im.size
        except Image.DecompressionBombError as exc:
            m = re.search(r"\((\d+) pixels\)", str(exc))
            n = int(m.group(1)) if m else 0
            return (n, 1) if n else (1 << 30, 1 << 30)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            return None


class ImageSequence:
    """A ``cv2.VideoCapture``-like reader over a sorted list of image files.

    Every frame is checked before it is opened or decoded: non-regular files are skipped (a FIFO
    would block forever), the header's pixel count must be at most ``max_pixels``, and the decoded
    frame must have the first frame's size.

    Raises (from :meth:`read`):
        VideoReadError: a frame above ``max_pixels`` or of another size than the first, naming the file.
    """

    def __init__(self, files: list[Path], max_pixels: int | None = None, skipped: list[str] | None = None):
        self.files = files
        self.pos = 0
        self.max_pixels = imageio.MAX_PIXELS if max_pixels is None else max_pixels
        self.size: tuple[int, int] | None = None
        self.skipped: list[str] = list(skipped or [])  # "path: reason" lines

    def isOpened(self) -> bool:  # noqa: N802 - mirrors cv2.VideoCapture
        return True

    def read(self):
        while self.pos < len(self.files):
            f = Path(self.files[self.pos])
            self.pos += 1
            why = _not_regular(f)
            if why:
                self.skipped.append(f"{printable_path(f)}: {why}")
                continue
            hs = _header_size(f)
            if hs is None:
                self.skipped.append(f"{printable_path(f)}: not a recognised image")
                continue
            if hs[0] * hs[1] > self.max_pixels:
                raise VideoReadError(f"{f}: frame is {hs[0]}x{hs[1]} ({hs[0] * hs[1] / 1e6:.0f} Mpx), above the "
                                     f"limit of {self.max_pixels / 1e6:.0f} Mpx; downscale the sequence first")
            try:
                img = cv2.imdecode(np.fromfile(f, dtype=np.uint8), cv2.IMREAD_COLOR)
            except (OSError, cv2.error):
                img = None
            if img is None:
                self.skipped.append(f"{printable_path(f)}: unreadable (corrupt or truncated)")
                continue
            size = (img.shape[1], img.shape[0])
            if self.size is None:
                self.size = size
            elif size != self.size:
                raise VideoReadError(f"{f}: frame is {size[0]}x{size[1]} but the sequence started at "
                                     f"{self.size[0]}x{self.size[1]}; every frame of an image sequence must "
                                     "have one size (resize them first)")
            return True, img
        return False, None

    def get(self, prop):
        if prop == cv2.CAP_PROP_FRAME_COUNT:
            return float(len(self.files))
        return 0.0

    def release(self) -> None:
        pass


@dataclass
class Source:
    """An input resolved from the user's spec: what to open and whether it is live."""

    spec: str
    kind: str  # "file", "sequence", "webcam", "url"
    target: object
    live: bool
    skipped: list[str] = field(default_factory=list)  # sequence entries never opened: "path: reason"


def resolve_source(spec) -> Source:
    """Classify ``spec``: webcam index (int or digits), stream URL, folder/glob of images, or a file.

    Raises:
        VideoReadError: a file, folder or glob that does not exist or holds no images.
    """
    if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
        return Source(str(spec), "webcam", int(spec), True)
    s = str(spec)
    if "://" in s:
        return Source(s, "url", s, not s.startswith("file://"))
    p = Path(s)
    if p.is_dir() or any(ch in s for ch in "*?["):
        files = sorted(p.iterdir()) if p.is_dir() else sorted(Path(f) for f in glob.glob(s))
        files = [f for f in files if f.suffix.lower() in IMAGE_EXTS]
        skipped, regular = [], []
        for f in files:
            why = _not_regular(f)
            if why:
                skipped.append(f"{printable_path(f)}: {why}")
            else:
                regular.append(f)
        if not regular:
            extra = f" ({len(skipped)} non-regular entries skipped)" if skipped else ""
            raise VideoReadError(f"{s}: no image files ({', '.join(IMAGE_EXTS)}) for an image sequence{extra}")
        return Source(s, "sequence", regular, False, skipped)
    if not p.exists():
        raise VideoReadError(f"{s}: no such video file")
    if not p.is_file():
        raise VideoReadError(f"{s}: not a regular file")
    return Source(s, "file", str(p), False)


def _default_capture(target, timeout_s: float):
    if isinstance(target, str) and "://" in target:
        ms = int(timeout_s * 1000)
        return cv2.VideoCapture(target, cv2.CAP_FFMPEG,
                                [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
    if isinstance(target, str):  # a file: OpenCV crashes on a name that is not UTF-8
        with opencv_path(target) as name:
            return cv2.VideoCapture(name)
    return cv2.VideoCapture(target)


OPEN_GRACE_S = 3.0  # extra wait for an open that overran its timeout to return (see open_capture)
_ABANDONED_OPENS: list[threading.Thread] = []  # open threads still inside OpenCV after the grace


def _exit_now(code: int) -> None:
    """Leave at once with ``code`` (an ``atexit`` hook): a thread still inside OpenCV's open would
    abort the interpreter's shutdown in C++ (exit 134, after the clear error message)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def open_capture(source: Source, timeout_s: float = 5.0, factory=None):
    """Open ``source`` within ``timeout_s`` seconds.

    OpenCV's open of an RTSP/HTTP URL can block far longer than its own timeout properties on some
    backends, so the open runs in a daemon thread and is abandoned when it overruns.

    Args:
        factory: ``factory(target) -> capture`` (anything with ``read``/``release``/``isOpened``),
            for tests and custom sources; default ``cv2.VideoCapture`` with timeouts.

    Raises:
        VideoReadError: the source did not open, or not in time.
    """
    if source.kind == "sequence" and factory is None:
        return ImageSequence(source.target, skipped=source.skipped)
    box: dict = {}

    def _open():
        try:
            box["cap"] = factory(source.target) if factory else _default_capture(source.target, timeout_s)
        except Exception as exc:  # noqa: BLE001 - reported below with the source named
            box["error"] = exc

    th = threading.Thread(target=_open, daemon=True, name="facekit-video-open")
    th.start()
    th.join(timeout_s)
    if th.is_alive():
        # the thread may still be inside OpenCV's C++ open; the CLI waits for it before exiting
        # (an interpreter exit with a thread in there aborts: exit 134), see run_cli
        _ABANDONED_OPENS.append(th)
        raise VideoReadError(f"{source.spec}: could not open the {source.kind} within {timeout_s:g} s "
                             "(unreachable stream or camera?)")
    if "error" in box:
        raise VideoReadError(f"{source.spec}: could not open the {source.kind}: {box['error']}")
    cap = box["cap"]
    if cap is None or not cap.isOpened():
        if cap is not None:
            cap.release()
        what = {"file": "as a video (corrupt, truncated or unsupported codec)",
                "url": "(unreachable URL, wrong path or unsupported protocol)",
                "webcam": "(no such camera or it is busy)"}.get(source.kind, "")
        raise VideoReadError(f"{source.spec}: cannot open {what}".rstrip())
    return cap


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


@dataclass
class VideoConfig:
    """Settings of :func:`process_video` (saved in ``summary.json``); ranges in :data:`LIMITS`.

    Attributes:
        enhancer: "auto" (the released chain ``models/default`` when installed, else "classical";
            ``summary.json`` records the resolved one), a name in :data:`ENHANCERS` or
            ``model:PATH``; model_backend: how a model runs.
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
class TrackRecord:
    """Everything kept about one track for the outputs (boxes as int16 per frame in its range)."""

    id: int
    first: int
    last: int
    boxes: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)
    best_quality: float = -1.0
    best_frame: int = -1
    best_score: float = 0.0
    best_sharpness: float = 0.0
    best_crop: np.ndarray | None = None
    max_score: float = 0.0
    label: "TrackLabel | None" = None
    fusion_crops: list = field(default_factory=list)  # [(quality, frame, raw RGB crop, score, side)]
    fused: np.ndarray | None = None  # the fused face (uint8 RGB), when the track was fused
    mesh: dict | None = None  # facekit.mesh.mesh_track_face's result (paths and pose, or "error")
    fusion: dict | None = None  # facekit.fusion.FusionResult.summary() of that fusion


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
# Track identities (gallery matching)


IDENTITY_SOURCES = ("enhanced", "raw")
UNKNOWN_LABEL = "unknown"


def parse_identity_threshold(value) -> float | None:
    """``"auto"`` -> None (use the gallery's / calibrate), a number (or numeric string) -> float.

    Raises:
        ConfigError: anything else, or a number outside [-1, 1].
    """
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"gallery threshold must be 'auto' or a cosine similarity in [-1, 1], "
                          f"got {value!r}") from None
    if not -1.0 <= t <= 1.0 or math.isnan(t):
        raise ConfigError(f"gallery threshold must be a cosine similarity in [-1, 1], got {t}")
    return t


class TrackLabel:
    """A track's identity decision.

    Attributes:
        identity: the enrolled person, or :data:`UNKNOWN_LABEL` below the threshold / without crops.
        score: cosine similarity in [-1, 1] of the track's mean embedding to ``candidate``
            (NaN when no crop was embedded).
        candidate: the best-matching enrolled person even when rejected ("" without crops).
        crops: how many crops the mean embedding was made of.
    """

    __slots__ = ("identity", "score", "candidate", "crops")

    def __init__(self, identity: str, score: float, candidate: str, crops: int):
        self.identity, self.score, self.candidate, self.crops = identity, float(score), candidate, int(crops)

    def caption(self) -> str:
        """Box caption text: ``"alice 0.62"`` / ``"unknown 0.21"`` (no score without crops)."""
        return self.identity if math.isnan(self.score) else f"{self.identity} {self.score:.2f}"

    def __repr__(self) -> str:
        return f"TrackLabel({self.identity!r}, {self.score:.3f}, {self.candidate!r}, {self.crops})"


def load_gallery(path, device: str = "cpu"):
    """Open a gallery for video labelling: a saved ``.npz`` or a folder to enrol.

    Args:
        path: ``.npz`` written by ``facekit.identify.Gallery.save`` or a gallery folder.

    Returns:
        A ``facekit.identify.Gallery``.

    Raises:
        ConfigError: ``path`` is neither; the message names it.
    """
    from facekit.identify import Gallery

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"gallery {p}: no such gallery folder or saved gallery (.npz) file")
    try:
        return Gallery(device=device).enroll(p) if p.is_dir() else Gallery.load(p, device=device)
    except errors.DataSourceError as exc:
        msg = str(exc)
        raise ConfigError(msg if str(p) in msg else f"gallery {p}: {msg}") from exc


class TrackIdentifier:
    """Label tracks with gallery identities from the mean embedding of each track's best crops.

    The processing thread only calls :meth:`wants` / :meth:`offer` (a comparison, and a landmark
    warp by the caller when a crop is wanted); embedding happens in a background worker (one job
    per track queued at a time, so a burst of improving crops costs one embedding pass), capped at
    ``max_embeds`` per track while the track lives, and once more at :meth:`track_ended` /
    :meth:`finish`, which embed whatever of the best crops is still missing. Final labels depend
    only on the crops offered, not on the worker's timing.

    Args:
        gallery: an enrolled ``facekit.identify.Gallery``.
        threshold: accept threshold on cosine similarity in [-1, 1].
        crops: best crops kept per track (by quality = detector score x sharpness).
        max_embeds: embeddings per track before it ends.
        background: embed in a worker thread (False: only at :meth:`track_ended` / :meth:`finish`).
    """

    def __init__(self, gallery, threshold: float, crops: int = 3, max_embeds: int = 4, background: bool = True):
        if len(gallery) == 0:
            raise ConfigError("the gallery is empty: enrol faces first")
        self.gallery = gallery
        self.threshold = float(threshold)
        self.k = max(1, int(crops))
        self.max_embeds = max(0, int(max_embeds))
        # side of a margin crop whose ArcFace frame is 112 px, so re-framing for SFace barely resamples
        from facekit.recognition import SFACE_SIZE

        self.crop_side = int(round(SFACE_SIZE * (1 + 2 * gallery.margin)))
        self.margin = gallery.margin
        self._lock = threading.Lock()
        self._entries: dict[int, list[list]] = {}  # tid -> [[quality, frame, crop, emb|None], ...] best first
        self._embedded: dict[int, int] = {}
        self._labels: dict[int, TrackLabel] = {}
        self._pending: set[tuple[int, bool]] = set()  # queued (track, final) jobs
        self._jobs: queue.Queue = queue.Queue()
        self.embeds = 0
        self.embed_s = 0.0
        self.embed_cpu_s = 0.0
        self.error = ""
        self.background = background
        self._worker = None  # started on the first job, so a run that fails early leaves no thread

    # -- processing-thread side
    def wants(self, tid: int, quality: float) -> bool:
        """Whether a crop of ``quality`` would enter track ``tid``'s best few."""
        with self._lock:
            e = self._entries.get(tid)
            return e is None or len(e) < self.k or quality > e[-1][0]

    def offer(self, tid: int, frame: int, quality: float, crop: np.ndarray) -> None:
        """Keep ``crop`` (``(S,S,3) uint8`` RGB margin crop, :attr:`crop_side`) if among the best few."""
        with self._lock:
            e = self._entries.setdefault(tid, [])
            if len(e) >= self.k and quality <= e[-1][0]:
                return
            e.append([float(quality), int(frame), crop, None])
            e.sort(key=lambda r: -r[0])
            del e[self.k:]
            if self._embedded.get(tid, 0) < self.max_embeds:
                self._schedule(tid)

    def track_ended(self, tid: int) -> None:
        """Embed the rest of the track's best crops (in the worker) and fix its label."""
        with self._lock:
            if tid in self._entries:
                self._schedule(tid, final=True)

    def label(self, tid: int) -> TrackLabel | None:
        """The current label of a track (None until one of its crops is embedded)."""
        return self._labels.get(tid)

    # -- worker side
    def _schedule(self, tid: int, final: bool = False) -> None:
        if not self.background:
            return
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, daemon=True, name="facekit-video-identify")
            self._worker.start()
        key = (tid, final)
        if key not in self._pending:
            self._pending.add(key)
            self._jobs.put(key)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                break
            with self._lock:
                self._pending.discard(job)
            try:
                self._update(job[0], capped=not job[1])
            except Exception as exc:  # noqa: BLE001 - recorded; finish() retries synchronously
                self.error = f"{type(exc).__name__}: {exc}"

    def _update(self, tid: int, capped: bool) -> None:
        with self._lock:
            todo = [r for r in self._entries.get(tid, []) if r[3] is None]
            if capped:
                todo = todo[:max(0, self.max_embeds - self._embedded.get(tid, 0))]
        if todo:
            t0, c0 = time.perf_counter(), time.thread_time()
            emb = self.gallery.embed(np.stack([r[2] for r in todo]))
            with self._lock:
                for r, v in zip(todo, emb):
                    r[3] = v
                self._embedded[tid] = self._embedded.get(tid, 0) + len(todo)
                self.embeds += len(todo)
                self.embed_s += time.perf_counter() - t0
                # CPU time, not wall time: the worker's wall time mostly measures waiting for a core
                self.embed_cpu_s += time.thread_time() - c0
        with self._lock:
            kept = self._entries.get(tid, [])
            embs = [r[3] for r in kept if r[3] is not None]
            if not capped and len(embs) == len(kept):
                for r in kept:  # final: only embeddings are needed now (bounds memory on long streams)
                    r[2] = None
        if not embs:
            return
        mean = np.mean(embs, axis=0)
        mean = mean / max(float(np.linalg.norm(mean)), 1e-12)
        cand = self.gallery.match_embeddings(mean[None], top_k=1)[0][0]
        who = cand.identity if cand.similarity >= self.threshold else UNKNOWN_LABEL
        self._labels[tid] = TrackLabel(who, cand.similarity, cand.identity, len(embs))

    def finish(self, embed: bool = True) -> dict[int, TrackLabel]:
        """Stop the worker, embed every kept crop not yet embedded (unless ``embed`` is False, e.g.
        after an error), and return the final labels."""
        self.background = False  # no new jobs (a late track_ended) once finishing
        if self._worker is not None:
            self._jobs.put(None)
            self._worker.join()
            self._worker = None
        if embed:
            for tid in list(self._entries):
                self._update(tid, capped=False)
        return dict(self._labels)

    def summary(self) -> dict:
        """What ``summary.json`` records about the gallery and its cost."""
        g = self.gallery
        return {"people": len(g.people), "images": len(g), "net": g.net, "threshold": round(self.threshold, 4),
                "calibration": g.calibration, "crops_per_track": self.k, "embeds": self.embeds,
                "embed_wall_ms_per_crop": round(1000 * self.embed_s / max(self.embeds, 1), 2),
                "embed_cpu_ms_per_crop": round(1000 * self.embed_cpu_s / max(self.embeds, 1), 2),
                "embed_cpu_s_total": round(self.embed_cpu_s, 3), **({"error": self.error} if self.error else {})}


def build_identifier(cfg: VideoConfig, gallery=None, background: bool = True) -> TrackIdentifier | None:
    """The :class:`TrackIdentifier` for ``cfg`` (None without a gallery).

    Args:
        gallery: a ready ``facekit.identify.Gallery`` (overrides ``cfg.identity_gallery``).
    """
    if gallery is None and not cfg.identity_gallery:
        return None
    if gallery is None:
        gallery = load_gallery(cfg.identity_gallery)
    threshold = parse_identity_threshold(cfg.identity_threshold)
    if threshold is None:
        if math.isnan(gallery.threshold):
            print("facekit video: calibrating the gallery threshold on ORL (FAR 1%); save a calibrated gallery "
                  "with `python -m facekit identify GALLERY PROBES --save-gallery G.npz` to skip this",
                  file=sys.stderr)
            gallery.calibrate()
        threshold = gallery.threshold
    return TrackIdentifier(gallery, threshold, cfg.identity_crops, cfg.identity_max_embeds, background)


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


# ---------------------------------------------------------------------------------------------
# Temporary names, atomic writes, stale-file sweep

TMP_MARK = ".facekit-tmp-"
"""Temporary outputs are named ``.NAME.facekit-tmp-PID.EXT`` next to their final name."""
_TMP_RE = re.compile(r"^\.(?P<stem>.+)\.facekit-tmp-(?P<pid>\d+)(?P<ext>\.[A-Za-z0-9]+)?$")
VIDEO_EXTS = (".mp4", ".avi", ".webm", ".mkv", ".mov")


def tmp_path(final: Path) -> Path:
    """The temporary name of ``final`` for this process (same folder, same extension, hidden)."""
    final = Path(final)
    return final.with_name(f".{final.stem}{TMP_MARK}{os.getpid()}{final.suffix}")


def _write_atomic(final: Path, data: bytes | str) -> Path:
    """Write ``data`` under a temporary name, then rename it to ``final`` (never half-written)."""
    tmp = tmp_path(final)
    try:
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _readable_frames(path: Path) -> bool:
    with opencv_path(path) as name:
        cap = cv2.VideoCapture(name)
    try:
        ok, _ = cap.read() if cap.isOpened() else (False, None)
        return bool(ok)
    finally:
        cap.release()


def sweep_stale_temps(out_dir: Path) -> list[str]:
    """Deal with the temporary files that killed runs left in ``out_dir`` (and its ``gallery/``).

    Files of processes still alive are left alone. A temporary video that still yields a frame is
    renamed ``NAME.killed-PID.EXT`` (a partial recording, never a final name); everything else is
    deleted. Returns one report line per file.
    """
    lines = []
    for folder in (Path(out_dir), Path(out_dir) / "gallery"):
        if not folder.is_dir():
            continue
        for f in sorted(folder.iterdir()):
            m = _TMP_RE.match(f.name)
            if not m or _pid_alive(int(m.group("pid"))):
                continue
            ext = m.group("ext") or ""
            try:
                if (ext.lower() in VIDEO_EXTS and f.is_file() and not f.is_symlink() and f.stat().st_size > 0
                        and _readable_frames(f)):
                    kept = f.with_name(f"{m.group('stem')}.killed-{m.group('pid')}{ext}")
                    os.replace(f, kept)
                    lines.append(f"{f}: left by a killed run (pid {m.group('pid')}), partial video kept as {kept.name}")
                else:
                    f.unlink()
                    lines.append(f"{f}: left by a killed run (pid {m.group('pid')}), removed")
            except OSError as exc:
                lines.append(f"{f}: left by a killed run, could not be removed ({exc.strerror or exc})")
    return lines


# ---------------------------------------------------------------------------------------------
# Stopping on SIGTERM / SIGINT


class StopRequested(KeyboardInterrupt):
    """SIGTERM or SIGINT asked ``video`` to stop (see :class:`StopSignals`).

    Raised by :func:`process_video` after the outputs are finalised (``result`` holds the summary),
    or from wherever the signal arrived when it came before any output was opened (``result`` None).
    A subclass of ``KeyboardInterrupt`` so that callers that handle Ctrl-C handle it too.
    """

    def __init__(self, signum: int, result: "VideoResult | None" = None):
        self.signum = int(signum)
        self.signame = signal.Signals(self.signum).name
        self.result = result
        super().__init__(self.signame)

    @property
    def exit_code(self) -> int:
        """128 + the signal number: 143 for SIGTERM, 130 for SIGINT."""
        return 128 + self.signum


_ACTIVE_STOP: "StopSignals | None" = None


class StopSignals:
    """Context manager (main thread only; a no-op elsewhere) under which SIGTERM and SIGINT stop
    :func:`process_video` gracefully.

    Before the writers exist a signal raises :class:`StopRequested` at once. Once they do, it only
    records the request: the processing loop stops after the current frame, the outputs are
    finalised, and :func:`process_video` then raises :class:`StopRequested`. Further signals while
    finalising are ignored (SIGKILL still ends the process; the next run sweeps its temporary files).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum: int | None = None
        self.defer = False
        self._old: dict = {}

    def _handle(self, signum, frame):  # noqa: ARG002 - signal handler signature
        if self.signum is not None:
            print(f"facekit video: {signal.Signals(signum).name} ignored: already stopping, finalising outputs",
                  file=sys.stderr)
            return
        self.signum = signum
        if not self.defer:
            raise StopRequested(signum)

    def __enter__(self) -> "StopSignals":
        global _ACTIVE_STOP
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._old[sig] = signal.signal(sig, self._handle)
            _ACTIVE_STOP = self
        return self

    def __exit__(self, *exc) -> None:
        global _ACTIVE_STOP
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
        if _ACTIVE_STOP is self:
            _ACTIVE_STOP = None


class FfmpegWebmWriter:
    """VP8 ``.webm`` through the ffmpeg binary of the pip package ``imageio-ffmpeg``.

    libvpx in realtime mode runs in its own process, ~5-10x faster than OpenCV's VP8 writer
    (whose quality property is ignored), which keeps the browser copy off the critical path.

    Args:
        quality: 0-100, mapped to libvpx's CRF (100 -> 4, 0 -> 63) with a bitrate cap scaled to the frame size.
    """

    def __init__(self, path: Path, size: tuple[int, int], fps: float, quality: int):
        import subprocess
        import tempfile

        import imageio_ffmpeg

        w, h = size
        cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "bgr24",
               "-s", f"{w}x{h}", "-r", f"{fps:g}", "-i", "-", "-an", *self._codec_args(size, fps, quality),
               str(path)]
        self._log = tempfile.TemporaryFile()
        # own session: a Ctrl-C or a signal to the caller's process group does not cut the encoder
        # short; it finishes the file when its input pipe closes (on release, or when we die)
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._log,
                                      start_new_session=True)
        self.path = path
        self.error = ""

    @staticmethod
    def _codec_args(size: tuple[int, int], fps: float, quality: int) -> list[str]:
        w, h = size
        crf = int(round(4 + (100 - quality) * 0.59))
        bitrate = max(200_000, int(w * h * fps * 0.2))
        return ["-c:v", "libvpx", "-crf", str(crf), "-b:v", str(bitrate), "-deadline", "realtime", "-cpu-used", "8",
                "-threads", "1", "-pix_fmt", "yuv420p"]

    def isOpened(self) -> bool:  # noqa: N802 - mirrors cv2.VideoWriter
        return self._proc.poll() is None

    def write(self, bgr: np.ndarray) -> None:
        if self.error:
            return
        try:
            self._proc.stdin.write(np.ascontiguousarray(bgr).tobytes())
        except (BrokenPipeError, OSError) as exc:
            self.error = f"ffmpeg stopped: {exc}"

    def release(self) -> None:
        import subprocess

        try:
            self._proc.stdin.close()
        except OSError:
            pass
        try:
            rc = self._proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            rc = -9
        if rc != 0:
            self._log.seek(0)
            self.error = f"ffmpeg exited with {rc}: {self._log.read().decode(errors='replace')[-400:]}"
        self._log.close()


class FfmpegMp4Writer(FfmpegWebmWriter):
    """MPEG-4 Part 2 (``mp4v``) in a **fragmented** ``.mp4`` through the ffmpeg binary of ``imageio-ffmpeg``.

    The main output for codec ``mp4v`` (the same codec OpenCV's writer would use). OpenCV's writer
    writes the mp4 index only on release and takes no muxer options, so a killed run left an
    unplayable file; here ``-movflags frag_keyframe+empty_moov`` writes a self-contained fragment at
    every keyframe (one per second at most, ``-g`` = fps) and ``-flush_packets 1`` pushes it to the
    file at once, so a file cut by SIGKILL (of this process and the encoder) still plays up to the
    last fragment. When only this process dies, the encoder sees its input pipe close and finishes
    the file completely.

    Args:
        quality: 0-100, mapped to ffmpeg's ``-q:v`` (100 -> 2, 90 -> 5, 0 -> 31).
    """

    @staticmethod
    def _codec_args(size: tuple[int, int], fps: float, quality: int) -> list[str]:
        q = int(round(2 + (100 - quality) * 0.29))
        gop = max(1, int(round(fps)))
        return ["-c:v", "mpeg4", "-tag:v", "mp4v", "-q:v", str(q), "-g", str(gop), "-threads", "1",
                "-pix_fmt", "yuv420p", "-movflags", "frag_keyframe+empty_moov+default_base_moof",
                "-flush_packets", "1", "-f", "mp4"]


class _Writer:
    """Owns the output video writers; runs in its own thread fed by a bounded queue."""

    def __init__(self, out_dir: Path, size: tuple[int, int], fps: float, cfg: VideoConfig):
        self.paths: dict[str, Path] = {}
        self.frames = 0
        self.seconds = 0.0
        self.size = size
        self.resized = 0  # frames of another size (a stream that changed resolution) resized to ``size``
        w, h = size
        self.tmp: dict[str, Path] = {}  # key -> temporary file, renamed to self.paths[key] by commit()
        self.video_path = out_dir / ("annotated" + CODECS[cfg.codec])
        self.tmp["video"] = tmp_path(self.video_path)
        self.main = None
        self.video_backend = "opencv " + cfg.codec
        if cfg.codec == "mp4v":  # fragmented mp4: playable up to the last keyframe even after SIGKILL
            try:
                self.main = FfmpegMp4Writer(self.tmp["video"], (w, h), fps, cfg.quality)
                self.video_backend = "imageio-ffmpeg mpeg4 (fragmented mp4)"
            except (ImportError, OSError, RuntimeError):
                self.main = None
        if self.main is None:
            with opencv_path(self.tmp["video"]) as name:
                self.main = cv2.VideoWriter(name, cv2.VideoWriter_fourcc(*cfg.codec), fps, (w, h))
            if not self.main.isOpened():
                self.main.release()
                self.tmp["video"].unlink(missing_ok=True)
                raise ConfigError(f"OpenCV cannot write {self.video_path} with codec {cfg.codec}")
            self.main.set(cv2.VIDEOWRITER_PROP_QUALITY, float(cfg.quality))
        self.paths["video"] = self.video_path
        self.webm = None
        self.webm_backend = "none"
        # VP8 with yuv420p needs even sides
        self.webm_size = (max(2, int(round(w * cfg.webm_scale / 2)) * 2),
                          max(2, int(round(h * cfg.webm_scale / 2)) * 2))
        if cfg.webm:
            self.webm_path = out_dir / "annotated.webm"
            self.tmp["webm"] = tmp_path(self.webm_path)
            try:
                self.webm = FfmpegWebmWriter(self.tmp["webm"], self.webm_size, fps, cfg.quality)
                self.webm_backend = "imageio-ffmpeg libvpx (realtime)"
            except (ImportError, OSError, RuntimeError):
                with opencv_path(self.tmp["webm"]) as name:
                    wr = cv2.VideoWriter(name, cv2.VideoWriter_fourcc(*"VP80"), fps, self.webm_size)
                if wr.isOpened():
                    self.webm, self.webm_backend = wr, "opencv VP80"
                else:  # neither ffmpeg nor an OpenCV build with libvpx: report, do not fail the run
                    wr.release()
                    self.tmp.pop("webm").unlink(missing_ok=True)
                    self.webm_backend = "unavailable (no imageio-ffmpeg, OpenCV without VP8)"
            if self.webm is not None:
                self.paths["webm"] = self.webm_path

    def write(self, bgr: np.ndarray) -> None:
        t0 = time.perf_counter()
        if (bgr.shape[1], bgr.shape[0]) != self.size:  # never dropped (OpenCV's writer would drop it silently)
            bgr = cv2.resize(bgr, self.size, interpolation=cv2.INTER_AREA)
            self.resized += 1
        self.main.write(bgr)
        if getattr(self.main, "error", ""):
            raise FacekitError(f"encoding {self.video_path.name}: {self.main.error}")
        if self.webm is not None:
            small = bgr if (bgr.shape[1], bgr.shape[0]) == self.webm_size else cv2.resize(
                bgr, self.webm_size, interpolation=cv2.INTER_AREA)
            self.webm.write(small)
        self.frames += 1
        self.seconds += time.perf_counter() - t0

    def close(self) -> str:
        """Finalise every file (still under its temporary name); returns a problem description
        ("" when all is well). Raises FacekitError when the main video could not be finished."""
        self.main.release()
        if getattr(self.main, "error", ""):
            if self.webm is not None:
                self.webm.release()
            raise FacekitError(f"encoding {self.video_path.name}: {self.main.error}")
        if self.webm is not None:
            self.webm.release()
            return getattr(self.webm, "error", "")
        return ""

    def commit(self, webm_ok: bool = True) -> None:
        """Rename the finalised temporary files to their final names (after :meth:`close`). A webm
        whose encoder failed (``webm_ok`` False) is deleted and dropped from :attr:`paths`."""
        for key, tmp in list(self.tmp.items()):
            if key == "webm" and not webm_ok:
                tmp.unlink(missing_ok=True)
                self.paths.pop(key, None)
            elif tmp.exists():
                os.replace(tmp, self.paths[key])
            else:
                self.paths.pop(key, None)
            del self.tmp[key]

    def discard(self) -> None:
        """Delete the temporary files (a failed writer: their content cannot be trusted)."""
        for tmp in self.tmp.values():
            tmp.unlink(missing_ok=True)
        self.tmp.clear()
        self.paths.clear()


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
                    cap_holder["cap"] = _DeadCapture()
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


class _DeadCapture:
    def read(self):
        return False, None

    def release(self):
        pass

    def isOpened(self):  # noqa: N802
        return False


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
            color = _track_color(t.id)
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


def _track_color(i: int) -> tuple[int, int, int]:
    hue = (i * 47) % 180
    c = cv2.cvtColor(np.uint8([[[hue, 220, 255]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return int(c[0]), int(c[1]), int(c[2])


# ---------------------------------------------------------------------------------------------
# Outputs


IDENTITY_FIELDS = ["identity", "identity_score", "identity_candidate", "identity_crops"]
MESH_FIELDS = ["mesh", "head_yaw", "head_pitch", "head_roll"]


def _file_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "x"


FUSION_MAX_SIDE = 32  # fusion is for small faces; larger crops are kept at this side


def fuse_records(records: dict[int, TrackRecord], enhancer_spec: str, device: str = "cpu") -> dict:
    """Fuse each track's kept raw crops into ``record.fused`` (tracks with at least 2 crops).

    The crops are brought to one side (their median, 8-32 px). The learned stage runs when the
    enhancer is a released chain (``model:PATH``) and ``models/fusion/fusion.pt`` exists; otherwise
    the classical multi-frame fusion is the fused face.

    Returns:
        ``{"mode": "learned"|"classical"|"off", "tracks": n fused, "ms_per_track": mean time}``.
    """
    todo = [r for r in records.values() if len(r.fusion_crops) >= 2]
    if not todo:
        return {"mode": "off", "tracks": 0, "ms_per_track": 0.0}
    restorer = enhancer_spec[len("model:"):] if isinstance(enhancer_spec, str) and \
        enhancer_spec.startswith("model:") else None
    learned = restorer is not None and fusion.default_fusion_model().is_file()
    fuser = fusion.TrackFuser(fusion.FusionConfig(), restorer=restorer if learned else None,
                              model="default" if learned else None, device=device)
    t0 = time.perf_counter()
    for rec in todo:
        sides = np.array([c[4] for c in rec.fusion_crops], np.float64)
        side = int(np.clip(np.median(np.minimum(sides, FUSION_MAX_SIDE)), 8, FUSION_MAX_SIDE))
        crops = np.stack([cv2.resize(c[2], (side, side), interpolation=cv2.INTER_AREA if c[2].shape[0] > side
                                     else cv2.INTER_CUBIC) for c in rec.fusion_crops])
        try:
            res = fuser(crops, [c[3] for c in rec.fusion_crops], sides)
        except ConfigError:  # no crop registered to the reference: the track keeps its single face
            continue
        rec.fused = res.out
        frames = [rec.fusion_crops[i][1] for i in res.frames]
        rec.fusion = {"frames": frames, "used": int(res.registration.used.sum()), "side": side}
    ms = 1000.0 * (time.perf_counter() - t0) / len(todo)
    return {"mode": "learned" if learned else "classical", "tracks": len(todo), "ms_per_track": round(ms, 2)}


def mesh_records(records: dict[int, TrackRecord], out_dir: Path) -> dict:
    """Mesh each track's fused face (else its best face) into ``out_dir/meshes`` (``record.mesh``).

    Raises:
        MeshDependencyError: MediaPipe is not installed (the message says how to install it).
    """
    done = failed = 0
    for tid, rec in sorted(records.items()):
        face = rec.fused if rec.fused is not None else rec.best_crop
        if face is None:
            continue
        rec.mesh = mesh.mesh_track_face(face, out_dir / "meshes", f"track_{tid:04d}")
        failed += "error" in rec.mesh
        done += "error" not in rec.mesh
    return {"meshed": done, "no_face": failed}


def write_tracks(records: dict[int, TrackRecord], out_dir: Path, gallery_size: int = 128,
                 labelled: bool = False, meshed: bool = False) -> dict[str, str]:
    """Write ``gallery/track_NNNN.png``, ``tracks.csv`` (one row per track) and ``tracks.json``.

    ``tracks.json`` stores each track as its frame range and one ``[x, y, w, h]`` per frame of the
    range (``null`` where the face was not visible), which is compact and easy to replay.

    Args:
        meshed: tracks were meshed (:func:`mesh_records`): add :data:`MESH_FIELDS` (mesh OBJ, head pose).
        labelled: tracks were matched against a gallery: add :data:`IDENTITY_FIELDS` to both files
            (score empty / null when a track had no usable crop) and name gallery images
            ``track_NNNN_<identity>_<score>.png``.
    """
    gallery = out_dir / "gallery"
    gallery.mkdir(exist_ok=True)
    rows, tracks_json = [], []
    for tid in sorted(records):
        rec = records[tid]
        lab = rec.label or TrackLabel(UNKNOWN_LABEL, float("nan"), "", 0)
        ident = {}
        if labelled:
            score = None if math.isnan(lab.score) else round(lab.score, 4)
            ident = {"identity": lab.identity, "identity_score": score, "identity_candidate": lab.candidate,
                     "identity_crops": lab.crops}
        gfile = ""
        if rec.best_crop is not None:
            img = cv2.resize(rec.best_crop, (gallery_size, gallery_size), interpolation=cv2.INTER_CUBIC)
            stem = f"track_{tid:04d}"
            if labelled:
                stem += f"_{_file_safe(lab.identity)}" + ("" if math.isnan(lab.score) else f"_{lab.score:.2f}")
            gpath = gallery / f"{stem}.png"
            ok, buf = cv2.imencode(".png", img[:, :, ::-1])
            if ok:
                _write_atomic(gpath, buf.tobytes())
            gfile = str(gpath.relative_to(out_dir))
        ffile = ""
        if rec.fused is not None:
            img = cv2.resize(rec.fused, (gallery_size, gallery_size), interpolation=cv2.INTER_CUBIC)
            fpath = gallery / f"track_{tid:04d}_fused.png"
            ok, buf = cv2.imencode(".png", img[:, :, ::-1])
            if ok:
                _write_atomic(fpath, buf.tobytes())
                ffile = str(fpath.relative_to(out_dir))
        fused = {"fused": ffile, "fused_frames": rec.fusion["used"] if rec.fusion else 0}
        if meshed:
            ok = rec.mesh is not None and "error" not in rec.mesh
            pose = rec.mesh["pose"] if ok else {}
            fused.update({"mesh": str(Path(rec.mesh["obj"]).relative_to(out_dir)) if ok else "",
                          **{f"head_{k}": round(float(pose[k]), 1) if ok else "" for k in ("yaw", "pitch", "roll")}})
        rows.append({"track_id": tid, "first_frame": rec.first, "last_frame": rec.last, "frames": len(rec.boxes),
                     "max_score": round(rec.max_score, 4), "best_frame": rec.best_frame,
                     "best_score": round(rec.best_score, 4), "best_sharpness": round(rec.best_sharpness, 2),
                     "gallery": gfile, **fused, **ident})
        boxes = [list(rec.boxes[f]) if f in rec.boxes else None for f in range(rec.first, rec.last + 1)]
        tracks_json.append({"id": tid, "first": rec.first, "last": rec.last, "best_frame": rec.best_frame,
                            "gallery": gfile, **fused, **ident, "boxes": boxes})
    fields = ["track_id", "first_frame", "last_frame", "frames", "max_score", "best_frame", "best_score",
              "best_sharpness", "gallery", "fused", "fused_frames"] + (MESH_FIELDS if meshed else []) \
        + (IDENTITY_FIELDS if labelled else [])
    import io

    text = io.StringIO(newline="")
    wr = csv.DictWriter(text, fieldnames=fields)
    wr.writeheader()
    wr.writerows(rows)
    _write_atomic(out_dir / "tracks.csv", text.getvalue().encode())
    _write_atomic(out_dir / "tracks.json", json.dumps({"box_format": "xywh", "tracks": tracks_json},
                                                      separators=(",", ":")))
    return {"tracks_csv": str(out_dir / "tracks.csv"), "tracks_json": str(out_dir / "tracks.json"),
            "gallery": str(gallery)}


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
        cfg.enhancer = resolve_enhancer(cfg.enhancer)
    source = resolve_source(input_spec)
    out_dir = Path(out_dir)

    settings.check_writable(out_dir, "output folder", "; give another OUTPUT_DIR")  # before the source opens
    if cfg.mesh_tracks:  # a missing MediaPipe is said now, not after the whole video
        mesh.require_mediapipe()
    live = source.live if cfg.live is None else bool(cfg.live)
    # Before opening the source: a bad gallery fails fast, and enrolment/calibration stay off the clock.
    identifier = build_identifier(cfg, gallery)
    cap = open_capture(source, cfg.open_timeout_s, capture_factory)
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
    guard = _ACTIVE_STOP
    if guard is not None:
        guard.defer = True  # from here on a signal only asks the loop to stop; the outputs get finalised
    try:
        writer = _Writer(out_dir, (w, h), fps_in, cfg)
    except BaseException:
        cap.release()
        raise

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
        # The first frame was read above (to size the writers); the reader continues from frame 1.
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

    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        total = expected if (expected > 0 and not live) else None
        if cfg.max_frames:
            total = min(total, cfg.max_frames) if total else cfg.max_frames
        bar = tqdm(total=total, desc="video", unit="frame", leave=False)
    t_start = time.perf_counter()
    dt.start()  # after the clock starts: no frame is detected off the clock
    n = 0
    last_index = -1
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
            last_index = index
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
    except BaseException as exc:  # finalise outputs even on errors / Ctrl-C, then re-raise
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
        except FacekitError as exc:  # the main video could not be finished: discarded below
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
        labels = (identifier.finish(embed=error is None and not signalled)
                  if identifier is not None else {})
    elapsed = time.perf_counter() - t_start
    interrupted = error if isinstance(error, KeyboardInterrupt) else None
    if "error" in writer_err:  # the writer failed: its files cannot be trusted
        writer.discard()
        if error is not None:
            raise error
        raise FacekitError(f"writing {out_dir}: {writer_err['error']}")
    writer.commit(webm_ok=not webm_error)  # finalised: the temporary files take their final names
    if error is not None and interrupted is None:
        raise error
    if "error" in state and interrupted is None:
        raise VideoReadError(f"{source.spec}: reader failed: {state['error']}")

    stopped = None
    if guard is not None and guard.signum is not None:
        stopped = signal.Signals(guard.signum).name
    elif interrupted is not None:
        stopped = "SIGINT"
    truncated = False
    message = state["message"]
    read_frames = state["read_frames"] + 1  # + the first frame, read before the reader started
    wanted = expected if cfg.max_frames is None else min(expected, cfg.max_frames)
    if not stopped and source.kind == "file" and expected > 0 and read_frames < wanted - 1:
        truncated = True
        message = (f"{source.spec}: video ended after {read_frames} of {expected} frames "
                   "(truncated or corrupt); outputs hold the frames read")
    skipped = list(getattr(cap_holder["cap"], "skipped", None) or []) if source.kind == "sequence" else []
    if skipped:
        for line in skipped[:20]:
            print(f"facekit video: skipped {line}", file=sys.stderr)
        if len(skipped) > 20:
            print(f"facekit video: ... and {len(skipped) - 20} more skipped", file=sys.stderr)
        message = f"skipped {len(skipped)} image(s): {skipped[:3]}"
    if stopped:
        message = (message + "; " if message else "") + f"stopped by {stopped} after {n} frames"
    if writer.resized:
        message = (message + "; " if message else "") + (
            f"{writer.resized} frame(s) of another size than the first were resized to {w}x{h}")
    if webm_error:
        message = (message + "; " if message else "") + f"webm: {webm_error}"
    if message:
        print(f"facekit video: {message}", file=sys.stderr)

    for tid, lab in labels.items():
        if tid in processor.records:
            processor.records[tid].label = lab
    outputs = {k: str(v) for k, v in writer.paths.items()}
    fusion_info = None
    if cfg.fuse_tracks:
        t_fuse = time.perf_counter()
        fusion_info = fuse_records(processor.records, cfg.enhancer if enhancer is None else "")
        fusion_info["seconds"] = round(time.perf_counter() - t_fuse, 3)
    if cfg.mesh_tracks:
        t_mesh = time.perf_counter()
        mesh_info = mesh_records(processor.records, out_dir)
        mesh_info["seconds"] = round(time.perf_counter() - t_mesh, 3)
        fusion_info = {**(fusion_info or {}), "mesh": mesh_info}
    outputs.update(write_tracks(processor.records, out_dir, cfg.gallery_size, labelled=identifier is not None,
                                meshed=cfg.mesh_tracks))
    identities = None
    if identifier is not None:
        identities = identifier.summary()
        identities["gallery"] = str(cfg.identity_gallery or "(given)")
        identities["tracks"] = {str(tid): rec.label.identity if rec.label else UNKNOWN_LABEL
                                for tid, rec in sorted(processor.records.items())}
    stage_ms = {k: 1000.0 * v / max(n, 1) for k, v in processor.times.items()}
    stage_ms["read"] = 1000.0 * state["read_s"] / max(read_frames, 1)
    stage_ms["write"] = 1000.0 * writer.seconds / max(writer.frames, 1)
    flick = processor.flicker.mean()
    result = VideoResult(
        input=source.spec, output_dir=str(out_dir), frames=n, width=w, height=h, fps_in=fps_in,
        fps=n / elapsed if elapsed > 0 else 0.0, seconds=elapsed, tracks=len(processor.records),
        dropped=state["dropped"], reconnects=state["reconnects"], truncated=truncated, message=message,
        stage_ms={k: round(v, 3) for k, v in stage_ms.items()},
        flicker=None if flick is None else round(flick, 4), outputs=outputs,
        webm_backend=writer.webm_backend, config=_jsonable(asdict(cfg)), identities=identities,
        stopped=stopped, skipped=skipped, swept=swept, video_backend=writer.video_backend, fusion=fusion_info)
    outputs["summary"] = str(out_dir / "summary.json")
    _write_atomic(out_dir / "summary.json", json.dumps(result.to_json(), indent=2))
    if interrupted is not None:
        if isinstance(interrupted, StopRequested):
            interrupted.result = result
        raise interrupted
    if stopped:
        raise StopRequested(guard.signum, result)
    return result


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


# ---------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = VideoConfig()
    parser.add_argument("input", help="video file, image folder/glob, webcam index (0) or stream URL")
    parser.add_argument("output_dir", help="folder for annotated video, webm, gallery, tracks, summary.json")
    parser.add_argument("--enhancer", default=d.enhancer,
                        help=f"face enhancer: auto (the released chain when installed, else classical), "
                             f"{', '.join(ENHANCERS)} or model:PATH (default {d.enhancer})")
    parser.add_argument("--model-backend", default=d.model_backend, choices=MODEL_BACKENDS,
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
    first_new = len(_ABANDONED_OPENS)  # only this run's overrun opens decide how the CLI exits
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
            mine = _ABANDONED_OPENS[first_new:]
            for t in mine:
                t.join(max(0.0, deadline - time.monotonic()))
            if any(t.is_alive() for t in mine):
                import atexit

                atexit.register(_exit_now, 1)  # after facekit.cli has printed the error line
            raise
    summary = {k: getattr(res, k) for k in ("frames", "fps", "tracks", "dropped", "reconnects", "truncated",
                                            "flicker", "stage_ms")}
    summary["fps"] = round(summary["fps"], 2)
    if res.identities is not None:
        summary["identities"] = res.identities["tracks"]
    print(json.dumps(summary, indent=2))
    print(f"outputs in {res.output_dir}")
    return 0
