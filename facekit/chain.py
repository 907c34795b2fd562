"""Restoration chain: named stages (deblur -> reconstruct -> upscale) run in order, in PyTorch or
ONNX Runtime, returning the final image, every intermediate and per-stage timing.

A stage is a fully convolutional generator mapping ``(N,3,h,w)`` float32 in [0,1] to
``(N,3,s*h,s*w)`` in [0,1] (``s`` = its scale: 1 for deblurring, 4 for an x4 upscaler). Each stage
has its own checkpoint (:func:`save_stage` / :meth:`Stage.from_checkpoint`): the architecture name
from :mod:`facekit.archs`, its keyword arguments, the generator weights and the stage role it was
trained for, so a checkpoint given for the wrong stage fails with a clear message instead of
producing a wrong image.

Roles (:data:`STAGE_ROLES`) constrain the scale: ``deblur`` keeps the size, ``upscale`` enlarges,
``reconstruct`` may do either (the U-Net restores and usually upsamples x4). Any order and subset
of stages is allowed; the chain's overall scale is the product of its stages' scales.

Backends: ``torch`` (``torch.inference_mode``, channels-last weights and inputs), ``onnx`` (every
stage exported per input size with a dynamic batch axis, cached by a digest of its weights, and
run with ONNX Runtime; matches PyTorch to ~1e-6) and ``auto`` (measures both on one batch and keeps the faster).

A chain folder (``models/default`` and every released model) lists its stages in ``chain.yaml``:
:func:`read_chain_spec`, :func:`resolve_stages` and :func:`build_chain` load it for ``restore``,
``video``, the baselines and the evaluation. Training stages lives in :mod:`facekit.stage_train`,
comparing them in :mod:`facekit.chain_eval`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from facekit import settings
from facekit.archs import ARCHS, arch_name, construct
from facekit.checkpoint import CHAIN_FILE, chain_sha256_table, load_checkpoint, save_checkpoint
from facekit.errors import CheckpointError, ConfigError, OutputError
from facekit.restorer import RestoreOutput

BACKENDS = ("torch", "onnx", "auto")
STAGE_ORDER = ("deblur", "reconstruct", "upscale")  # the default chain order
# role -> (description, scale check). Unknown names are allowed (no scale constraint).
STAGE_ROLES: dict[str, tuple[str, Callable[[int], bool]]] = {
    "deblur": ("keeps the image size (scale 1)", lambda s: s == 1),
    "reconstruct": ("any scale >= 1", lambda s: s >= 1),
    "upscale": ("enlarges the image (scale > 1)", lambda s: s > 1),
}
STAGE_FORMAT = "facekit-stage-v1"
# The real-time chain's stage architectures (registry name, kwargs), chosen by measured speed on
# 16-32 px faces (benchmarks/bench_restore.py): DeblurGAN-v2's FPN-MobileNetV2 at half width, a
# shallow x1 U-Net that restores at the input size, and a narrow compact RRDBNet x4 (the RRDBNet
# tail runs at the output size, so its width sets the cost). The upscaler's convs replicate their
# borders: with ESRGAN's zero padding a smoke-trained upscaler drew a dark frame round every face
# (outer row at half the centre's brightness); replicate costs no measurable time.
REALTIME_STAGES: dict[str, tuple[str, dict]] = {
    "deblur": ("deblurganv2", {"num_filters": 32, "num_filters_fpn": 64, "norm": "instance"}),
    "reconstruct": ("unet", {"scale": 1, "base": 16, "depth": 2}),
    "upscale": ("rrdbnet_compact", {"num_feat": 16, "num_block": 2, "num_grow_ch": 16, "scale": 4,
                                    "padding_mode": "replicate"}),
}


# ---------------------------------------------------------------------------------------------
# Building and loading stage models


def stage_archs() -> dict[str, Any]:
    """Architectures a stage may use: :data:`facekit.archs.ARCHS`."""
    return ARCHS


def build_stage_model(arch: str, kwargs: dict | None = None) -> torch.nn.Module:
    """Build a stage generator by registry name.

    Args:
        arch: a name from :func:`stage_archs`.
        kwargs: constructor arguments. ``pretrained_backbone`` is forced off for architectures
            that take it: weights come from the stage checkpoint, so nothing else is read.

    Returns:
        The (randomly initialised) module.
    """
    kwargs = dict(kwargs or {})
    archs = stage_archs()
    cls = archs.get(arch)
    if cls is None:
        raise ConfigError(f"unknown architecture {arch!r}; valid: {', '.join(sorted(archs))}")
    if callable(cls) and "pretrained_backbone" in inspect.signature(cls).parameters:
        kwargs["pretrained_backbone"] = False

    return construct(arch, cls, kwargs)  # kwargs bounded before any weight is allocated


def save_stage(path: str | Path, name: str, model: torch.nn.Module, arch_kwargs: dict, arch: str | None = None,
               in_size: int | None = None, extra: dict | None = None, half: bool = False) -> Path:
    """Write a stage checkpoint atomically (temp file + rename).

    Args:
        path: destination ``.pt``.
        name: the stage role it is meant for (``deblur``, ``reconstruct``, ``upscale``, ...).
        model: the generator whose weights are saved (moved to CPU in the file).
        arch_kwargs: its constructor arguments (rebuilt with them on load).
        arch: registry name of the generator (default: looked up from ``type(model)``).
        in_size: input side it was trained on (the chain's default input size).
        extra: small metadata (training config, metrics) stored alongside.
        half: store float32 *parameters* as float16 (half the file; ``load_state_dict`` casts them
            back to float32). Buffers (e.g. the relight locus) keep their precision.

    Returns:
        The written path.
    """
    path = Path(path)
    arch = arch or arch_name(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    params = {k for k, _ in model.named_parameters()} if half else set()
    state = {k: (v.detach().cpu().half() if k in params and v.dtype == torch.float32 else v.detach().cpu())
             for k, v in model.state_dict().items()}
    payload = {"format": STAGE_FORMAT, "stage": name, "arch": arch, "arch_kwargs": dict(arch_kwargs),
               "in_size": in_size, "state_dict": state, "extra": dict(extra or {})}
    # through a file handle, so the archive's inner folder name does not come from the random temp
    # name: exporting the same weights twice gives the same bytes
    return save_checkpoint(path, payload)


def _get(obj: Any, key: str) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def _unpack_checkpoint(data: dict, path: Path) -> tuple[str | None, str, dict, dict, int | None]:
    """Return ``(stage role or None, arch, arch kwargs, generator state dict, in_size)``.

    Accepts facekit stage checkpoints and training checkpoints of :mod:`facekit.train` (config
    with the generator's architecture, EMA weights preferred).
    """
    if data.get("format") == STAGE_FORMAT:
        return data.get("stage"), data["arch"], dict(data.get("arch_kwargs") or {}), data["state_dict"], data.get("in_size")
    entry = data.get("arch_g")
    if isinstance(entry, dict) and "name" in entry:  # facekit.train checkpoint (facekit.checkpoint layout)
        state = data.get("net_g_ema") if data.get("net_g_ema") is not None else data.get("net_g")
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: training checkpoint holds no generator weights")
        cfg = data.get("config") or {}
        size, scale = _get(cfg, "size"), _get(cfg, "scale")
        in_size = int(size) // int(scale) if size and scale else None
        return data.get("stage"), str(entry["name"]), dict(entry.get("kwargs") or {}), state, in_size
    raise CheckpointError(
        f"{path}: not a restoration stage checkpoint (keys: {', '.join(sorted(map(str, data))) or 'none'}); "
        "expected one written by facekit.chain.save_stage or a facekit training run"
    )


def _strip_prefix(state: dict) -> dict:
    # DDP and torch.compile wrap names; a checkpoint from either still loads.
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _infer_scale(model: torch.nn.Module, in_size: int) -> int:
    scale = getattr(model, "scale", None)
    if isinstance(scale, int) and scale >= 1:
        return scale
    with torch.inference_mode():
        out = model.eval()(torch.rand(1, 3, in_size, in_size))
    if out.shape[-1] % in_size:
        raise ConfigError(f"stage output side {out.shape[-1]} is not a whole multiple of its input side {in_size}")
    return out.shape[-1] // in_size


# ---------------------------------------------------------------------------------------------
# Stages and the chain


@dataclass
class Stage:
    """One step of the chain.

    Attributes:
        name: stage name, e.g. "deblur", "reconstruct", "upscale".
        model: module mapping ``(N,3,h,w)`` float32 in [0,1] to ``(N,3,h*scale,w*scale)`` in [0,1].
        scale: output/input size ratio (read from ``model.scale`` or measured when None).
        in_size: input side the stage was trained on (used as the chain's default input size and
            as the ONNX export example), or None.
        checkpoint: file it was loaded from, if any.
        arch: registry name of the model, if known.
    """

    name: str
    model: torch.nn.Module
    scale: int | None = None
    in_size: int | None = None
    checkpoint: Path | None = None
    arch: str | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(f"stage name must be a non-empty string, got {self.name!r}")
        if self.scale is None:
            self.scale = _infer_scale(self.model, self.in_size or 16)
        role = STAGE_ROLES.get(self.name)
        if role is not None and not role[1](int(self.scale)):
            where = f" from {self.checkpoint}" if self.checkpoint else ""
            article = "an" if self.name[0] in "aeiou" else "a"
            raise CheckpointError(f"stage {self.name!r}{where}: model has scale {self.scale}, but {article} "
                                  f"{self.name} stage {role[0]}")

    @classmethod
    def from_checkpoint(cls, name: str, path: str | Path, device: str | torch.device = "cpu") -> "Stage":
        """Load a stage from its checkpoint.

        Args:
            name: the stage role (``deblur``, ``reconstruct``, ``upscale`` or a custom name).
            path: a :func:`save_stage` file or a facekit training checkpoint.
            device: where to put the model.

        Raises:
            CheckpointError: missing/corrupt file, a checkpoint saved for another stage role, a
                scale that does not fit the role, or weights that do not fit the architecture.
        """
        path = Path(path)
        data = load_checkpoint(path)
        saved_for, arch, kwargs, state, in_size = _unpack_checkpoint(data, path)
        if saved_for and saved_for != name and (saved_for in STAGE_ROLES or name in STAGE_ROLES):
            raise CheckpointError(f"{path}: checkpoint holds a {saved_for!r} stage ({arch}), not a {name!r} stage; "
                                  f"pass it as --checkpoint {saved_for}={path} or give the {name} checkpoint")
        try:
            model = build_stage_model(arch, kwargs)
        except ConfigError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        try:
            model.load_state_dict(_strip_prefix(state), strict=True)
        except RuntimeError as exc:
            first = " ".join(str(exc).split())[:300]
            raise CheckpointError(f"{path}: weights do not fit architecture {arch!r} {kwargs}: {first}") from None
        model.to(device).eval()
        return cls(name=name, model=model, in_size=in_size, checkpoint=path, arch=arch)


def ort_session(model: str | Path | bytes, threads: int | None = None):
    """An ONNX Runtime CPU session as facekit runs them all.

    Its worker threads sleep between calls instead of spinning: facekit's calls are short and come
    between OpenCV and numpy work in the same process (track fusion, video), which spinning threads
    starve (an 8-crop fusion took 3.5 ms more with spinning sessions than with torch, 3.5 ms less without).

    Args:
        model: an ``.onnx`` path or the model's bytes.
        threads: intra-op threads (None: the process-wide ``--threads``).
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or settings.current_threads()
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), opts,
                                providers=["CPUExecutionProvider"])


class OnnxModule:
    """Callable running an exported stage with ONNX Runtime (same contract as the torch module)."""

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        self.session = ort_session(path, threads)
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input_name: arr})[0])


# What torch's TorchScript ONNX exporter says on every facekit export, each understood; these and
# nothing else are silenced, so a new warning still shows. The newer torch.export-based exporter
# (dynamo=True) would say none of them but needs the onnxscript package, which facekit does not
# install; the exported graphs and their numbers are those of this exporter.
LEGACY_EXPORT_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # the exporter itself (torch >= 2.9) and a helper it calls inside (torch >= 2.7)
    (r"You are using the legacy TorchScript-based ONNX export", DeprecationWarning),
    (r"The feature will be removed\. Please remove usage of this function", DeprecationWarning),
    # the generators choose their padding from the input size in Python: one export per size
    (r"", torch.jit.TracerWarning),
    # InstanceNorm without running statistics always normalises by the input's own: exact in eval
    (r"ONNX export mode is set to TrainingMode\.EVAL, but operator 'instance_norm'", UserWarning),
    # a crop the exporter cannot pre-compute stays a Slice node: same result, computed at run time
    (r"Constant folding - Only steps=1 can be constant folded", UserWarning),
)


def export_onnx(model: torch.nn.Module, path: str | Path, in_size: int, opset: int = 17,
                dynamic_hw: bool = False) -> Path:
    """Export a stage to ONNX for ``in_size`` x ``in_size`` inputs with a dynamic batch axis.

    Height and width stay fixed on purpose: the generators pick their padding mode from the input
    size in Python (reflect vs replicate), which a trace freezes, so one file per input size is
    the only export that is exact for every size. The exporter's expected warnings
    (:data:`LEGACY_EXPORT_WARNINGS`) are silenced; any other still shows.

    Args:
        model: the stage module (exported from a CPU copy in eval mode; the original is untouched).
        path: destination ``.onnx`` file (written atomically).
        in_size: example input side.
        opset: ONNX opset.
        dynamic_hw: also leave height and width dynamic (exact only for a net whose padding
            choice does not change between the sizes it is run at).

    Returns:
        The written path.
    """
    import copy

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(path.parent, f"cannot create the ONNX export folder: {exc.strerror or exc}") from None
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    model = copy.deepcopy(model).float().eval().cpu().to(memory_format=torch.contiguous_format)
    example = torch.rand(1, 3, in_size, in_size, generator=torch.Generator().manual_seed(0))
    axes = ({"lq": {0: "n", 2: "h", 3: "w"}, "out": {0: "n", 2: "oh", 3: "ow"}} if dynamic_hw
            else {"lq": {0: "n"}, "out": {0: "n"}})
    try:
        with torch.no_grad(), warnings.catch_warnings():
            for message, category in LEGACY_EXPORT_WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=category)
            torch.onnx.export(model, (example,), str(tmp), input_names=["lq"], output_names=["out"],
                              dynamic_axes=axes, opset_version=opset, dynamo=False)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only ONNX cache (DATA_DIR/onnx-cache), no space left
        raise OutputError(path.parent, f"cannot write the ONNX export {path.name}: {exc.strerror or exc}; "
                                       "--backend torch needs no export") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _model_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha1(type(model).__qualname__.encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    h.update(torch.__version__.encode())
    return h.hexdigest()[:16]


class RestorationChain:
    """Run named stages in order.

    Args:
        stages: the stages, in order (membership and order are the caller's choice).
        device: torch device for the torch backend (ONNX Runtime runs on CPU).
        backend: "torch", "onnx" (stages exported to ONNX and run with ONNX Runtime), or "auto"
            (time both on one batch and keep the faster; see :attr:`timings`; the choice is stored
            in a given ``onnx_dir`` and reused, :attr:`backend_from_cache`).
        onnx_dir: where exported stage files go; files are named by a digest of the weights, so
            a folder can be reused as a cache (default: a temporary folder).
        threads: intra-op threads for ONNX Runtime, and for torch when given (default:
            FACEKIT_THREADS / all cores for ONNX Runtime; torch keeps its current setting).
        auto_batch: batch size used by ``backend="auto"`` to time the backends.
        in_size: input side the chain will be fed (default: the first stage's ``in_size``, else
            16); used to time ``auto`` and to pre-export ONNX files.
    """

    def __init__(self, stages: list[Stage], device: str | torch.device = "cpu", backend: str = "torch",
                 onnx_dir: str | Path | None = None, threads: int | None = None, auto_batch: int = 8,
                 in_size: int | None = None):
        if not stages:
            raise ConfigError("a restoration chain needs at least one stage")
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ConfigError(f"stage names must be unique, got {names}")
        if backend not in BACKENDS:
            raise ConfigError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")

        self.threads = int(threads or settings.current_threads())
        if threads is not None:  # otherwise keep the process-wide setting (facekit.settings.set_threads)
            torch.set_num_threads(self.threads)
        self.stages = list(stages)
        self._in_size = in_size
        self.device = torch.device(device)
        for s in self.stages:
            s.model.eval().to(self.device)
            if self.device.type == "cpu":
                s.model.to(memory_format=torch.channels_last)
        self.backend = "torch"
        self.requested_backend = backend
        self.timings: dict[str, float] = {}
        self.backend_from_cache = False  # "auto" reused a stored choice (see _pick_faster)
        self.onnx_dir = Path(onnx_dir) if onnx_dir else None
        self._onnx: dict[tuple[str, int, int], OnnxModule] = {}
        self._digests: dict[str, str] = {}
        if backend in ("onnx", "auto"):
            self._prepare_onnx(self.in_size)
            self.backend = "onnx"
            if backend == "auto":
                self.backend = self._pick_faster(auto_batch)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    @property
    def scale(self) -> int:
        """Overall output/input size ratio."""
        return int(np.prod([s.scale for s in self.stages]))

    @property
    def in_size(self) -> int:
        """Input side the chain expects: the constructor's ``in_size``, else the first stage's, else 16."""
        return int(self._in_size or self.stages[0].in_size or 16)

    def stage_in_sizes(self, size: int) -> list[int]:
        """Input side of every stage when the chain is fed ``size`` x ``size`` faces."""
        out = []
        for s in self.stages:
            out.append(size)
            size *= s.scale
        return out

    def _onnx_module(self, stage: Stage, h: int, w: int) -> OnnxModule:
        key = (stage.name, h, w)
        if key not in self._onnx:
            if self.onnx_dir is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="facekit-onnx-")
                self.onnx_dir = Path(self._tmp.name)
            if stage.name not in self._digests:
                self._digests[stage.name] = _model_digest(stage.model)
            path = self.onnx_dir / f"{stage.name}-{self._digests[stage.name]}-{h}x{w}.onnx"
            if not path.is_file():
                if h != w:
                    raise ConfigError(f"ONNX backend runs square inputs; got {h}x{w}")
                export_onnx(stage.model, path, h)
            self._onnx[key] = OnnxModule(path, self.threads)
        return self._onnx[key]

    def _prepare_onnx(self, size: int) -> None:
        """Export (or load from ``onnx_dir``) every stage for ``size`` x ``size`` chain inputs."""
        for s, side in zip(self.stages, self.stage_in_sizes(size)):
            self._onnx_module(s, side, side)

    def onnx_paths(self) -> dict[str, Path]:
        """``"stage@HxW"`` -> exported ONNX file, for every stage and size exported so far."""
        return {f"{n}@{h}x{w}": m.path for (n, h, w), m in self._onnx.items()}

    def _pick_faster(self, batch: int) -> str:
        """Time both backends on one batch and return the faster; with a persistent ``onnx_dir`` the
        choice is stored there (``backend-choice.json``, keyed by the weights' digests, input side,
        batch and threads), so later chains reuse it instead of timing on every start."""
        size = self.in_size
        key = "-".join(self._digests[s.name] for s in self.stages) + f"-{size}px-b{batch}-t{self.threads}"
        cache = None if getattr(self, "_tmp", None) is not None else self.onnx_dir / "backend-choice.json"
        known = {}
        if cache is not None:
            try:
                known = json.loads(cache.read_text())
                entry = known[key]
                if entry["backend"] in ("torch", "onnx"):
                    self.timings = {k: float(v) for k, v in entry["timings"].items()}
                    self.backend_from_cache = True
                    return entry["backend"]
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                known = known if isinstance(known, dict) else {}
        x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
        for backend in ("torch", "onnx"):
            self.backend = backend
            self(x)  # warm-up (allocations, lazy init)
            best = float("inf")
            for _ in range(2):
                t0 = time.perf_counter()
                self(x)
                best = min(best, time.perf_counter() - t0)
            self.timings[backend] = best
        choice = min(self.timings, key=self.timings.get)
        if cache is not None:
            known[key] = {"backend": choice, "timings": self.timings}
            tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
            try:
                tmp.write_text(json.dumps(known, indent=1))
                tmp.replace(cache)
            except OSError:
                pass  # a read-only cache folder: time again next start
        return choice

    def _run_stage(self, stage: Stage, x: torch.Tensor, backend: str) -> torch.Tensor:
        if backend == "onnx":
            return self._onnx_module(stage, x.shape[-2], x.shape[-1])(x).to(self.device)
        if self.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        return stage.model(x)

    @torch.inference_mode()
    def __call__(self, lq: torch.Tensor, backend: str | None = None) -> RestoreOutput:
        """Restore a batch.

        Args:
            lq: ``(N,3,h,w)`` float32 in [0,1].
            backend: override the chain's backend for this call ("torch" or "onnx").

        Returns:
            A :class:`RestoreOutput` with the final ``out`` ``(N,3,h*scale,w*scale)``, every
            intermediate and per-stage seconds.
        """
        if not isinstance(lq, torch.Tensor) or lq.ndim != 4 or lq.shape[1] != 3:
            shape = tuple(lq.shape) if isinstance(lq, torch.Tensor) else type(lq).__name__
            raise ValueError(f"expected a (N,3,H,W) float batch in [0,1], got {shape}")
        backend = backend or self.backend
        if backend not in ("torch", "onnx"):
            raise ConfigError(f"unknown backend {backend!r}; valid: torch, onnx")
        x = lq.float() if backend == "onnx" else lq.to(self.device, torch.float32)
        result = RestoreOutput(out=x)
        for stage in self.stages:
            t0 = time.perf_counter()
            x = self._run_stage(stage, x, backend).float().clamp_(0, 1).contiguous()
            result.seconds[stage.name] = time.perf_counter() - t0
            result.intermediates[stage.name] = x
        result.out = x
        return result


def load_chain(checkpoints: dict[str, str | Path], order: list[str] | None = None, device: str = "cpu",
               backend: str = "torch", **kwargs) -> RestorationChain:
    """Build a chain from ``{stage name: checkpoint path}``.

    Args:
        checkpoints: stage name -> checkpoint file.
        order: stage names in run order (default: the keys of ``checkpoints`` in
            :data:`STAGE_ORDER` order, unknown names last).
        device, backend, kwargs: passed to :class:`RestorationChain`.
    """
    if order is None:
        order = sorted(checkpoints, key=lambda n: STAGE_ORDER.index(n) if n in STAGE_ORDER else len(STAGE_ORDER))
    missing = [n for n in order if n not in checkpoints]
    if missing:
        raise ConfigError(f"no checkpoint for stage(s) {', '.join(missing)}; have: {', '.join(checkpoints) or 'none'}")
    stages = [Stage.from_checkpoint(n, checkpoints[n], device=device) for n in order]
    return RestorationChain(stages, device=device, backend=backend, **kwargs)


# ---------------------------------------------------------------------------------------------
# Chain folders (chain.yaml) and the released default


def default_model_dir() -> Path:
    """The released default chain folder, ``models/default``."""
    return settings.MODELS_DIR / "default"


def _no_default_message(chain_file: Path) -> str:
    return (
        f"no default restoration model: {chain_file} does not exist.\n"
        "Train the stages (notebooks/04_chain_deblur_esrgan.ipynb writes stage checkpoints; the reconstruct "
        "model comes from `python -m facekit train --config ...`), put the checkpoints in that folder and list "
        "them in chain.yaml, e.g.\n"
        "  size: 16\n  stages:\n    reconstruct: reconstruct.pt\n"
        "or pass checkpoints explicitly: --checkpoint reconstruct=PATH [--checkpoint upscale=PATH ...]"
    )


@dataclass
class ChainSpec:
    """A chain folder's ``chain.yaml``: stage name -> checkpoint path (in order) and the input size."""

    stages: dict[str, Path]
    size: int | None = None
    path: Path | None = None


def read_chain_spec(path: str | Path) -> ChainSpec:
    """Read a ``chain.yaml`` (or the folder holding one).

    Raises:
        ConfigError: missing file, bad YAML, or a malformed ``stages`` entry (named in the message).
        CheckpointError: the file records sha256 hashes but not for every stage file it lists
            (each is checked against its hash when it loads: :func:`facekit.checkpoint.load_checkpoint`).
    """
    path = Path(path)
    if path.is_dir() or path.suffix.lower() not in (".yaml", ".yml"):
        path = path / CHAIN_FILE
    if not path.is_file():
        raise ConfigError(_no_default_message(path))
    data = settings.load_yaml(path) or {}  # size and alias limits; a bad file is one line naming it
    stages = data.get("stages") if isinstance(data, dict) else None
    if isinstance(stages, list):  # also accept [{name: file}, ...]
        merged: dict = {}
        for item in stages:
            if not isinstance(item, dict) or len(item) != 1:
                raise ConfigError(f"{path}: each stages entry must be 'name: checkpoint', got {item!r}")
            merged.update(item)
        stages = merged
    if not isinstance(stages, dict) or not stages:
        raise ConfigError(f"{path}: expected a non-empty 'stages:' mapping of stage name -> checkpoint file")
    for name, file in stages.items():
        if not isinstance(name, str) or not isinstance(file, str):
            raise ConfigError(f"{path}: stage entry {name!r}: {file!r} must map a name to a file name")
    size = data.get("size")
    if size is not None and (not isinstance(size, int) or size < 1):
        raise ConfigError(f"{path}: size must be a positive integer, got {size!r}")
    chain_sha256_table(path)  # a stage outside the folder or without a hash would load unchecked
    return ChainSpec({n: (path.parent / f) for n, f in stages.items()}, size, path)


def resolve_stages(chain: list[str] | None, checkpoints: dict[str, Path] | None = None,
                   model_dir: str | Path | None = None) -> tuple[list[str], dict[str, Path], int | None]:
    """Decide the stage order and each stage's checkpoint.

    Args:
        chain: stage names in order (``--chain``), or None for the chain file's order (plus any
            extra ``--checkpoint`` stages, in deblur -> reconstruct -> upscale order).
        checkpoints: explicit ``{stage: path}`` (override the chain file's entries).
        model_dir: chain folder (default ``models/default``); only read when needed.

    Returns:
        ``(order, {stage: checkpoint path}, size from chain.yaml or None)``.
    """
    checkpoints = dict(checkpoints or {})
    model_dir = Path(model_dir) if model_dir else default_model_dir()
    spec = None
    needs_spec = not checkpoints or (chain is not None and any(n not in checkpoints for n in chain))
    if needs_spec or (model_dir / CHAIN_FILE).is_file():
        spec = read_chain_spec(model_dir)
    known = dict(spec.stages) if spec else {}
    known.update(checkpoints)
    if chain is None:
        order = list(spec.stages) if spec else []
        extra = [n for n in checkpoints if n not in order]
        order += sorted(extra, key=lambda n: STAGE_ORDER.index(n) if n in STAGE_ORDER else len(STAGE_ORDER))
    else:
        order = list(chain)
        if not order or any(not n for n in order):
            raise ConfigError(f"--chain needs comma-separated stage names, got {','.join(chain)!r}")
        if len(set(order)) != len(order):
            raise ConfigError(f"--chain names a stage twice: {','.join(order)}")
    missing = [n for n in order if n not in known]
    if missing:
        where = f" in {spec.path}" if spec else ""
        raise ConfigError(f"no checkpoint for stage(s) {', '.join(missing)}{where}; known stages: "
                          f"{', '.join(known) or 'none'}; pass --checkpoint {missing[0]}=PATH")
    return order, {n: known[n] for n in order}, spec.size if spec else None


def relight_stage(chain):
    """The chain's first stage model when its explicit relight step is on (else None)."""
    stages = getattr(chain, "stages", None) or []
    model = getattr(stages[0], "model", None) if stages else None
    return model if getattr(model, "relight", False) else None


def set_relight(chain, on: bool) -> None:
    """Switch the explicit relight step of every stage that has one (``--no-relight``)."""
    for st in getattr(chain, "stages", []):
        if hasattr(st.model, "relight"):
            st.model.relight = bool(on)


def build_chain(chain: list[str] | None = None, checkpoints: dict[str, Path] | None = None,
                model_dir: str | Path | None = None, size: int | None = None, backend: str = "auto",
                device: str = "cpu", batch: int = 32, threads: int | None = None):
    """Load the chain the CLI would run; returns ``(RestorationChain, input size)``.

    ``threads`` is :class:`RestorationChain`'s (None: the process-wide setting).
    """
    order, ckpts, spec_size = resolve_stages(chain, checkpoints, model_dir)
    stages = [Stage.from_checkpoint(n, ckpts[n], device=device) for n in order]
    size = int(size or spec_size or stages[0].in_size or 16)

    chain_obj = RestorationChain(stages, device=device, backend=backend, in_size=size,
                                 onnx_dir=settings.DATA_DIR / "onnx-cache", auto_batch=max(1, min(batch, 8)),
                                 threads=threads)
    return chain_obj, size
