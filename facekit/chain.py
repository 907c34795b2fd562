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

from facekit.errors import CheckpointError, ConfigError

BACKENDS = ("torch", "onnx", "auto")
STAGE_ORDER = ("deblur", "reconstruct", "upscale")  # the default chain order
# role -> (description, scale check). Unknown names are allowed (no scale constraint).
STAGE_ROLES: dict[str, tuple[str, Callable[[int], bool]]] = {
    "deblur": ("keeps the image size (scale 1)", lambda s: s == 1),
    "reconstruct": ("any scale >= 1", lambda s: s >= 1),
    "upscale": ("enlarges the image (scale > 1)", lambda s: s > 1),
}
STAGE_FORMAT = "facekit-stage-v1"


# ---------------------------------------------------------------------------------------------
# Building and loading stage models


def _fallback_archs() -> dict[str, type]:
    """Generators usable as stages, for when :mod:`facekit.archs` has no ``build_model`` yet."""
    from facekit.archs.deblurganv2 import FPNMobileNetGenerator
    from facekit.archs.rrdbnet import CompactRRDBNet, RRDBNet, SRVGGNetCompact

    return {"rrdbnet": RRDBNet, "rrdbnet_compact": CompactRRDBNet, "srvgg_compact": SRVGGNetCompact,
            "deblurganv2": FPNMobileNetGenerator}


def stage_archs() -> dict[str, Any]:
    """Architectures a stage may use: :data:`facekit.archs.ARCHS` plus the generator classes above.

    The registry takes precedence; the generator classes fill in when it lacks them.
    """
    archs = dict(_fallback_archs())
    try:
        from facekit.archs import ARCHS
    except ImportError:
        ARCHS = {}
    archs.update(ARCHS)
    return archs


def arch_name(model: torch.nn.Module) -> str:
    """Registry name of ``model``'s class (for :func:`save_stage`)."""
    for name, cls in stage_archs().items():
        if inspect.isclass(cls) and type(model) is cls:
            return name
    raise ConfigError(f"{type(model).__name__} is not a registered architecture; valid: {', '.join(sorted(stage_archs()))}")


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
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"architecture {arch!r} does not accept {kwargs}: {exc}") from None


def save_stage(path: str | Path, name: str, model: torch.nn.Module, arch_kwargs: dict, arch: str | None = None,
               in_size: int | None = None, extra: dict | None = None) -> Path:
    """Write a stage checkpoint atomically (temp file + rename).

    Args:
        path: destination ``.pt``.
        name: the stage role it is meant for (``deblur``, ``reconstruct``, ``upscale``, ...).
        model: the generator whose weights are saved (moved to CPU in the file).
        arch_kwargs: its constructor arguments (rebuilt with them on load).
        arch: registry name of the generator (default: looked up from ``type(model)``).
        in_size: input side it was trained on (the chain's default input size).
        extra: small metadata (training config, metrics) stored alongside.

    Returns:
        The written path.
    """
    path = Path(path)
    arch = arch or arch_name(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": STAGE_FORMAT, "stage": name, "arch": arch, "arch_kwargs": dict(arch_kwargs),
               "in_size": in_size, "state_dict": state, "extra": dict(extra or {})}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _read_checkpoint(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    try:
        from facekit import checkpoint as ckpt_mod
    except ImportError:
        ckpt_mod = None
    loader = getattr(ckpt_mod, "load_checkpoint", None) if ckpt_mod else None
    try:
        if loader is not None:
            data = loader(path, map_location="cpu")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:  # torch raises many types for a non-checkpoint file
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a checkpoint dict, got {type(data).__name__}")
    return data


def _config_value(cfg: Any, *keys: str) -> Any:
    """Look up the first present key in a dict or dataclass-like config (nested ``model`` allowed)."""
    for holder in (cfg, _get(cfg, "model"), _get(cfg, "net_g")):
        for k in keys:
            v = _get(holder, k)
            if v is not None:
                return v
    return None


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
    cfg = data.get("config") or data.get("cfg") or {}
    arch = _config_value(cfg, "arch_g", "generator", "net_g_arch", "arch")
    kwargs = _config_value(cfg, "arch_g_kwargs", "generator_kwargs", "net_g_kwargs", "arch_kwargs") or {}
    if isinstance(arch, dict):  # {"name": ..., **kwargs}
        arch = dict(arch)
        kwargs = {**{k: v for k, v in arch.items() if k not in ("name", "type", "arch")}, **kwargs}
        arch = arch.get("name") or arch.get("type") or arch.get("arch")
    state = None
    for key in ("net_g_ema", "ema", "params_ema", "net_g", "generator", "params", "state_dict"):
        cand = data.get(key)
        if isinstance(cand, dict) and cand and all(isinstance(v, torch.Tensor) for v in cand.values()):
            state = cand
            break
    if not arch or state is None:
        raise CheckpointError(
            f"{path}: not a restoration stage checkpoint (keys: {', '.join(sorted(map(str, data))) or 'none'}); "
            "expected one written by facekit.chain.save_stage or a facekit training run"
        )
    in_size = _config_value(cfg, "lq_size", "in_size")
    return data.get("stage"), str(arch), dict(kwargs), state, int(in_size) if in_size else None


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
            raise CheckpointError(f"stage {self.name!r}{where}: model has scale {self.scale}, but a {self.name} "
                                  f"stage {role[0]}")

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
        data = _read_checkpoint(path)
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


def export_onnx(model: torch.nn.Module, path: str | Path, in_size: int, opset: int = 17) -> Path:
    """Export a stage to ONNX for ``in_size`` x ``in_size`` inputs with a dynamic batch axis.

    Height and width stay fixed on purpose: the generators pick their padding mode from the input
    size in Python (reflect vs replicate), which a trace freezes, so one file per input size is
    the only export that is exact for every size.

    Args:
        model: the stage module (exported from a CPU copy in eval mode; the original is untouched).
        path: destination ``.onnx`` file (written atomically).
        in_size: example input side.
        opset: ONNX opset.

    Returns:
        The written path.
    """
    import copy

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    model = copy.deepcopy(model).float().eval().cpu().to(memory_format=torch.contiguous_format)
    example = torch.rand(1, 3, in_size, in_size, generator=torch.Generator().manual_seed(0))
    axes = {0: "n"}
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about shape-dependent python ints
            torch.onnx.export(model, (example,), str(tmp), input_names=["lq"], output_names=["out"],
                              dynamic_axes={"lq": axes, "out": axes}, opset_version=opset, dynamo=False)
        os.replace(tmp, path)
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
            (time both on one batch and keep the faster; see :attr:`timings`).
        onnx_dir: where exported stage files go; files are named by a digest of the weights, so
            a folder can be reused as a cache (default: a temporary folder).
        threads: intra-op threads for torch and ONNX Runtime (default: FACEKIT_THREADS / all cores).
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
        size = self.in_size
        x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
        for backend in ("torch", "onnx"):
            self.backend = backend
            self(x)  # warm-up (allocations, lazy init)
            best = float("inf")
            for _ in range(3):
                t0 = time.perf_counter()
                self(x)
                best = min(best, time.perf_counter() - t0)
            self.timings[backend] = best
        return min(self.timings, key=self.timings.get)

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
