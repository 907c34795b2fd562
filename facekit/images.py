"""Image layouts and the pixel-level helpers every layer shares: crop, resize, paste.

One place for the conversions between the two layouts facekit uses: ``(H,W,3) uint8`` RGB for
files, frames and OpenCV, and ``(N,3,H,W) float32`` in [0,1] for the networks. numpy and OpenCV
only at import; torch is imported by the two tensor conversions alone, so the command line's
``--help`` stays light.
"""

from __future__ import annotations

import cv2
import numpy as np

FEATHER = 0.12        # width of the paste mask's soft edge, as a fraction of the face square


def to_tensor(images, device=None):
    """Files' layout to the networks': ``(N,H,W,3)`` or ``(H,W,3)`` uint8 RGB -> ``(N,3,H,W)`` float32 in [0,1].

    Args:
        images: an array, or a sequence of equally sized ``(H,W,3)`` arrays.
        device: torch device (default CPU).

    Returns:
        A torch tensor (a view of nothing: safe to modify).
    """
    import torch

    arr = np.asarray(images)
    if arr.ndim == 3:
        arr = arr[None]
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float().div_(255.0)
    return x if device is None else x.to(device)


def to_uint8(x) -> np.ndarray:
    """Networks' layout to files': ``(N,3,H,W)`` float (torch) -> ``(N,H,W,3)`` uint8 RGB.

    Values are clipped to [0,1] and rounded half up (``+0.5`` then truncation).
    """
    import torch

    return (x.detach().float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()


def to_hwc_float(x, peak: float = 1.0) -> np.ndarray:
    """``(N,3,H,W)`` float (torch) -> ``(N,H,W,3)`` float32 numpy, clipped to [0,1] and scaled by ``peak``.

    For outputs that are resized or blended before they are rounded (``peak=255``) or that stay in
    [0,1] (``peak=1``).
    """
    out = x.detach().float().clamp(0, 1)
    if peak != 1.0:
        out = out * peak
    return np.ascontiguousarray(out.permute(0, 2, 3, 1).cpu().numpy(), dtype=np.float32)


def resize_to(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Resize ``(H,W,C)`` to ``h`` x ``w``: area filter when shrinking, bicubic when enlarging."""
    ih, iw = img.shape[:2]
    if (ih, iw) == (h, w):
        return img
    interp = cv2.INTER_AREA if h <= ih and w <= iw else cv2.INTER_CUBIC
    return cv2.resize(img, (w, h), interpolation=interp)


def resize_faces(images: np.ndarray, size: int) -> np.ndarray:
    """``(N,S,S,3) uint8`` faces -> ``(N,size,size,3) uint8`` (area filter when shrinking)."""
    return np.stack([resize_to(f, size, size) for f in images])


def crop_square(img: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    """Cut ``img[y0:y0+side, x0:x0+side]``, filling any part past the border by reflection.

    Args:
        img: ``(H,W,3) uint8``.
        x0, y0, side: the square in image pixels (may extend past the image).

    Returns:
        ``(side,side,3) uint8``.
    """
    h, w = img.shape[:2]
    top, left = max(0, -y0), max(0, -x0)
    bottom, right = max(0, y0 + side - h), max(0, x0 + side - w)
    inner = img[max(0, y0):min(h, y0 + side), max(0, x0):min(w, x0 + side)]
    if inner.size == 0:  # the square misses the image (never for a detection): use the nearest pixel
        y, x = min(max(y0, 0), h - 1), min(max(x0, 0), w - 1)
        return np.broadcast_to(img[y, x], (side, side, img.shape[2])).copy()
    if top or bottom or left or right:
        inner = np.pad(inner, ((top, bottom), (left, right), (0, 0)), mode="reflect")
    return np.ascontiguousarray(inner)


def feather_mask(h: int, w: int, feather: float = FEATHER) -> np.ndarray:
    """Soft paste mask: 1 inside, easing (smoothstep) to ~0 at the border of an ``h`` x ``w`` square.

    Args:
        h, w: mask size in pixels.
        feather: width of the soft edge as a fraction of the shorter side (at least 1 px).

    Returns:
        ``(h,w) float32`` in (0, 1].
    """
    width = max(1.0, feather * min(h, w))

    def ramp(n: int) -> np.ndarray:
        i = np.arange(n, dtype=np.float32) + 0.5
        r = np.clip(np.minimum(i, n - i) / width, 0.0, 1.0)
        return r * r * (3.0 - 2.0 * r)

    return np.outer(ramp(h), ramp(w)).astype(np.float32)


def paste_face(canvas: np.ndarray, face: np.ndarray, x0: int, y0: int, mask: np.ndarray | None = None) -> None:
    """Blend ``face`` into ``canvas`` at ``(x0, y0)`` with a soft mask, in place.

    Only pixels where the mask is above zero (inside the canvas) are written; every other pixel
    keeps its exact value.

    Args:
        canvas: ``(H,W,3) uint8``, modified in place.
        face: ``(h,w,3)`` uint8 or float32 in [0,255], placed with its top-left at ``(x0, y0)``
            (parts past the canvas border are dropped).
        x0, y0: position in canvas pixels.
        mask: ``(h,w)`` float32 in [0,1] (default :func:`feather_mask`).
    """
    h, w = face.shape[:2]
    mask = feather_mask(h, w) if mask is None else mask
    H, W = canvas.shape[:2]
    ya, yb, xa, xb = max(0, y0), min(H, y0 + h), max(0, x0), min(W, x0 + w)
    if ya >= yb or xa >= xb:
        return
    m = mask[ya - y0:yb - y0, xa - x0:xb - x0, None]
    src = face[ya - y0:yb - y0, xa - x0:xb - x0].astype(np.float32)
    dst = canvas[ya:yb, xa:xb]
    blended = np.clip(np.rint(dst.astype(np.float32) * (1.0 - m) + src * m), 0, 255).astype(np.uint8)
    np.copyto(dst, blended, where=m > 0)
