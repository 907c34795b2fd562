"""Video sources and outputs: opening frames, writing videos, atomic files and graceful stops.

:func:`resolve_source` classifies an input (video file, image sequence, webcam, stream URL) and
:func:`open_capture` opens it within a timeout (:class:`ImageSequence` reads a folder of frames,
checking each file before decoding it); an open that overruns is abandoned and kept in
:data:`ABANDONED_OPENS`, and :class:`DeadCapture` stands in for a live source that could not be
reopened. :class:`VideoWriter` owns the output videos (a fragmented ``.mp4`` and a VP8 ``.webm``
through ffmpeg, else OpenCV's writer). Every output is written under a temporary name
(:func:`tmp_path`, :func:`write_atomic`) and renamed once final; :func:`sweep_stale_temps` deals
with those of killed runs. :class:`StopSignals` turns SIGTERM and SIGINT into a graceful stop
(:class:`StopRequested`). Used by :mod:`facekit.video`, :mod:`facekit.video_tracks` and
:mod:`facekit.commands.video`.
"""

from __future__ import annotations

import glob
import os
import re
import signal
import stat
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from facekit import imageio
from facekit.errors import ConfigError, FacekitError, VideoReadError
from facekit.imageio import opencv_path, printable_path

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm")
# codec -> container extension for the main output (VP8 is the browser copy, always .webm).
CODECS: dict[str, str] = {"mp4v": ".mp4", "MJPG": ".avi", "XVID": ".avi", "VP80": ".webm"}


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
ABANDONED_OPENS: list[threading.Thread] = []
"""Open threads that overran their timeout in :func:`open_capture` (they may still be inside OpenCV).

:func:`facekit.commands.video.run_cli` waits :data:`OPEN_GRACE_S` for the ones of its run and,
when any is still alive, leaves through :func:`exit_now`."""


def exit_now(code: int) -> None:
    """Flush stdout and stderr, then leave the process at once with ``code`` (``os._exit``).

    Registered as an ``atexit`` hook when an abandoned open is still inside OpenCV: that thread
    would abort the interpreter's normal shutdown in C++ (exit 134, after the clear error message).

    Args:
        code: the process exit status.
    """
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
        # (an interpreter exit with a thread in there aborts: exit 134), see facekit.commands.video.run_cli
        ABANDONED_OPENS.append(th)
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


class DeadCapture:
    """A capture that never delivers a frame: stands in for a live source that could not be reopened.

    It has the ``cv2.VideoCapture`` methods the pipeline calls, so the run ends as if the stream did.
    """

    def read(self):
        """No frame: ``(False, None)``, as ``cv2.VideoCapture.read`` at the end of a stream."""
        return False, None

    def release(self):
        """Nothing to release."""

    def isOpened(self):  # noqa: N802
        """Always False."""
        return False


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


def write_atomic(final: Path, data: bytes | str) -> Path:
    """Write ``data`` under a temporary name, then rename it to ``final`` (never half-written).

    Args:
        final: the file's final path; the temporary one is :func:`tmp_path` of it (removed on failure).
        data: text (written with the default encoding) or bytes.

    Returns:
        ``final``.
    """
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

    Raised by :func:`facekit.video.process_video` after the outputs are finalised (``result`` holds
    its :class:`facekit.video.VideoResult`), or from wherever the signal arrived when it came before
    any output was opened (``result`` None).
    A subclass of ``KeyboardInterrupt`` so that callers that handle Ctrl-C handle it too.
    """

    def __init__(self, signum: int, result=None):
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
    :func:`facekit.video.process_video` gracefully.

    Before the writers exist a signal raises :class:`StopRequested` at once. Once they do, it only
    records the request: the processing loop stops after the current frame, the outputs are
    finalised, and :func:`facekit.video.process_video` then raises :class:`StopRequested`. Further
    signals while finalising are ignored (SIGKILL still ends the process; the next run sweeps its
    temporary files).
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


def active_stop_signals() -> StopSignals | None:
    """The :class:`StopSignals` in effect (entered in the main thread), or None outside one."""
    return _ACTIVE_STOP


# ---------------------------------------------------------------------------------------------
# Output videos


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


class VideoWriter:
    """Owns the output video files; :func:`facekit.video.process_video` feeds it from its writer thread.

    Each file is written under its :func:`tmp_path` name; :meth:`close` finishes them and
    :meth:`commit` renames them to their final names (:attr:`paths`), or :meth:`discard` deletes them.

    Args:
        out_dir: folder of ``annotated.EXT`` and ``annotated.webm``. size: ``(width, height)`` of the frames.
        fps: frame rate of the outputs.
        codec: FourCC of the main video (:data:`CODECS`). quality: encoder quality 0-100.
        webm: also write the browser-playable VP8 ``annotated.webm``; webm_scale: its size factor.
    """

    def __init__(self, out_dir: Path, size: tuple[int, int], fps: float, codec: str = "mp4v", quality: int = 90,
                 webm: bool = True, webm_scale: float = 1.0):
        self.paths: dict[str, Path] = {}
        self.frames = 0
        self.seconds = 0.0
        self.size = size
        self.resized = 0  # frames of another size (a stream that changed resolution) resized to ``size``
        w, h = size
        self.tmp: dict[str, Path] = {}  # key -> temporary file, renamed to self.paths[key] by commit()
        self.video_path = out_dir / ("annotated" + CODECS[codec])
        self.tmp["video"] = tmp_path(self.video_path)
        self.main = None
        self.video_backend = "opencv " + codec
        if codec == "mp4v":  # fragmented mp4: playable up to the last keyframe even after SIGKILL
            try:
                self.main = FfmpegMp4Writer(self.tmp["video"], (w, h), fps, quality)
                self.video_backend = "imageio-ffmpeg mpeg4 (fragmented mp4)"
            except (ImportError, OSError, RuntimeError):
                self.main = None
        if self.main is None:
            with opencv_path(self.tmp["video"]) as name:
                self.main = cv2.VideoWriter(name, cv2.VideoWriter_fourcc(*codec), fps, (w, h))
            if not self.main.isOpened():
                self.main.release()
                self.tmp["video"].unlink(missing_ok=True)
                raise ConfigError(f"OpenCV cannot write {self.video_path} with codec {codec}")
            self.main.set(cv2.VIDEOWRITER_PROP_QUALITY, float(quality))
        self.paths["video"] = self.video_path
        self.webm = None
        self.webm_backend = "none"
        # VP8 with yuv420p needs even sides
        self.webm_size = (max(2, int(round(w * webm_scale / 2)) * 2),
                          max(2, int(round(h * webm_scale / 2)) * 2))
        if webm:
            self.webm_path = out_dir / "annotated.webm"
            self.tmp["webm"] = tmp_path(self.webm_path)
            try:
                self.webm = FfmpegWebmWriter(self.tmp["webm"], self.webm_size, fps, quality)
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
        """Append one BGR frame to every output (resized to :attr:`size` when it differs)."""
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
