"""Robust image reading and writing: any common file to ``(H,W,3) uint8`` RGB, or a clear error.

Everything facekit reads goes through :func:`read_image` so that grayscale, RGBA, palette,
16-bit, CMYK and EXIF-rotated files all arrive the same way, and so that corrupt, truncated,
empty, mislabelled or gigantic files raise :class:`~facekit.errors.ImageReadError` naming the file
instead of failing deep inside numpy or OpenCV.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from facekit.errors import ImageReadError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp", ".webp", ".tif", ".tiff")
# Image formats a user may drop into a folder that facekit does not read: listed in the manifest as
# skipped with the reason, instead of vanishing without a word.
UNSUPPORTED_IMAGE_EXTENSIONS = (".gif", ".heic", ".heif", ".avif", ".jxl", ".svg", ".psd", ".dng", ".cr2", ".nef")
# 64 Mpx covers any real camera frame; a 20,000 x 20,000 image (400 Mpx, 1.2 GB as RGB) is refused
# from its header alone, before any pixel is decoded.
MAX_PIXELS = 64_000_000


def printable_path(path) -> str:
    """A path or name as text that any stream or UTF-8 file can take.

    File names on Linux are bytes; one that is not valid UTF-8 reaches Python as a str with
    surrogate escapes (``os.fsdecode``), which ``print``, ``csv`` and ``.encode()`` refuse.

    Args:
        path: a str, bytes or ``os.PathLike``.

    Returns:
        The same text, with each undecodable byte written as ``\\xNN`` (``bad\\xff.png``).
    """
    raw = os.fsencode(path)
    return raw.decode("utf-8", "backslashreplace")


def cv_safe(path) -> bool:
    """Whether OpenCV can take ``path`` as a file name (it crashes on a str with surrogate escapes)."""
    p = os.fspath(path)
    try:
        p.encode("utf-8") if isinstance(p, str) else p.decode("utf-8")
    except UnicodeError:
        return False
    return True


@contextlib.contextmanager
def opencv_path(path):
    """A name of ``path`` that OpenCV's ``VideoCapture``/``VideoWriter`` can take.

    OpenCV's Python binding segfaults on a str holding surrogate escapes (a file or folder name that
    is not UTF-8). Such a path is reached through a temporary symbolic link with an ASCII name: to
    the file itself when it exists (reading), else to its folder (writing a new file whose own name
    is UTF-8). The link is removed on exit; OpenCV keeps the file it opened, so open the capture or
    writer inside the ``with`` block.

    Args:
        path: the file (str, bytes or ``os.PathLike``).

    Yields:
        ``str(path)`` when it is UTF-8 already, else the link's path.

    Raises:
        OSError: the link cannot be made (no such folder, no symlinks on this file system).
    """
    if cv_safe(path):
        yield os.fsdecode(path)
        return
    raw = os.path.abspath(os.fsencode(path))
    folder, name = os.path.split(raw)
    ext = os.path.splitext(name)[1].decode("ascii", "replace").replace("\ufffd", "")
    tmp = tempfile.mkdtemp(prefix="facekit-cvpath-")
    try:
        if os.path.lexists(raw) or not cv_safe(name):
            link = os.path.join(tmp, "input" + ext)
            os.symlink(raw, link)
        else:  # a new file in a folder whose name is not UTF-8
            os.symlink(folder, os.path.join(tmp, "dir"))
            link = os.path.join(tmp, "dir", os.fsdecode(name))
        yield link
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def to_rgb_uint8(arr: np.ndarray, *, source: str | Path = "<array>", bgr: bool = False) -> np.ndarray:
    """Normalise a decoded pixel array to 8-bit RGB.

    Args:
        arr: ``(H,W)``, ``(H,W,1)``, ``(H,W,3)`` or ``(H,W,4)`` array of uint8, uint16, int32 or
            float (floats are taken as [0,1]).
        source: name used in error messages.
        bgr: the channels are in OpenCV's BGR(A) order.

    Returns:
        ``(H,W,3) uint8`` RGB, C-contiguous. Alpha is composited over white, because a transparent
        background in a face cut-out is usually meant to be blank, not black.
    """
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageReadError(source, f"unsupported pixel layout with shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageReadError(source, f"image has no pixels (shape {arr.shape})")

    if arr.dtype == np.uint8:
        img = arr.astype(np.float32) if arr.ndim == 3 and arr.shape[2] == 4 else arr
    elif arr.dtype == np.uint16:
        img = arr.astype(np.float32) / 257.0  # full 16-bit range onto 0..255
    elif arr.dtype in (np.int32, np.int64):
        img = np.clip(arr, 0, 65535).astype(np.float32) / 257.0
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageReadError(source, "image contains NaN or infinite values")
        img = np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0
    elif arr.dtype == bool:
        img = arr.astype(np.float32) * 255.0
    else:
        raise ImageReadError(source, f"unsupported pixel type {arr.dtype}")

    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.shape[2] == 4:
        img = img.astype(np.float32)
        alpha = img[:, :, 3:4] / 255.0
        img = img[:, :, :3] * alpha + 255.0 * (1.0 - alpha)
    if bgr:
        img = img[:, :, ::-1]
    if img.dtype != np.uint8:
        img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


def _decode_with_pil(path: Path, max_pixels: int) -> np.ndarray:
    with Image.open(path) as im:
        w, h = im.size
        if w * h > max_pixels:
            raise ImageReadError(
                path, f"image is {w}x{h} ({w * h / 1e6:.0f} Mpx), above the limit of "
                      f"{max_pixels / 1e6:.0f} Mpx; downscale it first")
        im.load()  # decodes now, so truncation surfaces here rather than later
        im = ImageOps.exif_transpose(im)
        mode = im.mode
        if mode in ("RGB", "L"):
            return to_rgb_uint8(np.asarray(im), source=path)
        if mode in ("RGBA", "LA", "PA"):
            return to_rgb_uint8(np.asarray(im.convert("RGBA")), source=path)
        if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
            return to_rgb_uint8(np.asarray(im).astype(np.uint16), source=path)
        if mode == "I":
            arr = np.asarray(im)
            # PIL widens 16-bit PNGs to mode "I"; only values above 255 mean a 16-bit range.
            if arr.max(initial=0) > 255:
                return to_rgb_uint8(arr, source=path)
            return to_rgb_uint8(np.clip(arr, 0, 255).astype(np.uint8), source=path)
        if mode == "F":
            arr = np.asarray(im, dtype=np.float32)
            hi = float(arr.max(initial=0.0))
            return to_rgb_uint8(arr / (255.0 if hi > 1.0 else 1.0), source=path)
        if mode == "P" and "transparency" in im.info:
            return to_rgb_uint8(np.asarray(im.convert("RGBA")), source=path)
        # CMYK, YCbCr, LAB, P, 1: PIL knows the conversion to RGB.
        return to_rgb_uint8(np.asarray(im.convert("RGB")), source=path)


def _decode_with_opencv(path: Path, data: bytes, max_pixels: int) -> np.ndarray:
    buf = np.frombuffer(data, dtype=np.uint8)
    arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    if arr is None:
        raise ImageReadError(path, "not a readable image (unknown format or corrupt data)")
    if arr.shape[0] * arr.shape[1] > max_pixels:
        raise ImageReadError(path, f"image is {arr.shape[1]}x{arr.shape[0]}, above the pixel limit")
    return to_rgb_uint8(arr, source=path, bgr=arr.ndim == 3)


def read_image(path: str | Path, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file as 8-bit RGB, honouring EXIF orientation.

    Args:
        path: image file (jpg, png, pgm, bmp, webp, tif, ...).
        max_pixels: refuse images with more pixels than this (checked from the header).

    Returns:
        ``(H,W,3) uint8`` RGB array.

    Raises:
        ImageReadError: the file is missing, empty, not an image, truncated, corrupt or too large;
            the message names the file and the problem.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "file does not exist")
    if path.is_dir():
        raise ImageReadError(path, "is a folder, not an image file")
    size = path.stat().st_size
    if size == 0:
        raise ImageReadError(path, "file is empty (0 bytes)")
    with warnings.catch_warnings():
        # PIL warns about decompression bombs; we enforce our own, clearer limit.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return _decode_with_pil(path, max_pixels)
        except ImageReadError:
            raise
        except UnidentifiedImageError:
            head = path.read_bytes()[:64]
            if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head):
                raise ImageReadError(path, "is a text file, not an image") from None
            try:
                return _decode_with_opencv(path, path.read_bytes(), max_pixels)
            except ImageReadError:
                raise ImageReadError(path, "not a recognised image format (corrupt or unsupported)") from None
        except Image.DecompressionBombError as exc:
            # PIL refuses from the header too, before our own check can run; report it the same way.
            m = re.search(r"\((\d+) pixels\)", str(exc))
            n = f" ({int(m.group(1)) / 1e6:.0f} Mpx)" if m else ""
            raise ImageReadError(path, f"image is too large{n}, above the limit of {max_pixels / 1e6:.0f} Mpx; "
                                       "downscale it first") from None
        except (OSError, SyntaxError, ValueError) as exc:
            msg = str(exc)
            if any(k in msg.lower() for k in ("truncated", "broken data stream", "premature end")):
                raise ImageReadError(path, f"image data is truncated ({size} bytes on disk)") from None
            # PIL cannot hold some layouts (e.g. 16-bit RGB TIFF); OpenCV can.
            try:
                return _decode_with_opencv(path, path.read_bytes(), max_pixels)
            except ImageReadError:
                raise ImageReadError(path, f"corrupt or unsupported image ({msg})") from None


def write_image(path: str | Path, img: np.ndarray, *, quality: int = 95) -> Path:
    """Write an RGB image; the format follows the file extension.

    Args:
        path: destination file (``.png``, ``.jpg``, ...); parent folders are created.
        img: ``(H,W,3) uint8`` RGB (or anything :func:`to_rgb_uint8` accepts).
        quality: JPEG/WebP quality.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = to_rgb_uint8(img, source=path)
    params = []
    ext = path.suffix.lower()
    if ext in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    elif ext == ".webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, int(quality)]
    ok, buf = cv2.imencode(ext if ext else ".png", rgb[:, :, ::-1], params)
    if not ok:
        raise ImageReadError(path, f"OpenCV cannot encode images as {ext!r}")
    path.write_bytes(buf.tobytes())
    return path
