"""``python -m facekit restore``: restore the faces in photos and frames, or whole face crops, with a chain.

Two modes, both scale-aware (by default a face is never shrunk below its own resolution before the
model):

* **Whole images** (default), as GFPGAN's and CodeFormer's command lines work: the faces are
  found with YuNet (:class:`facekit.faces.FaceDetector`), each is cut as a square around its
  landmarks (framed like the training crops, :func:`facekit.faces.align_face`'s margin), restored
  at the scale its size needs and pasted back with a feathered mask. The output is the input
  enlarged ``--upscale U`` times (bicubic; U=1 keeps it as it is), and every pixel outside the
  faces' paste squares is exactly that (upscaled) input. An image without a face is written
  unchanged (upscaled) and reported as "no face found".
* **Face crops** (``--aligned``): every input is one face, restored whole. Its aspect is kept
  (nothing is centre-cropped); the output's longer side is ``max(input longer side, --out-size)``
  (default ``--out-size``: the chain's output side, e.g. 16 px x4 = 64 px).

Per face, with side ``c`` (the crop's longer side), target side ``t`` in the output (``c * U``
for whole images, ``max(c, --out-size)`` for crops), chain input side ``n`` and scale ``s``:

* ``c >= t`` and ``c >= --out-size``: **kept** -- the face is already at the output size; a crop
  is written bit-identical, a face in an image is left as the (upscaled) input.
* ``c < n``: enlarged (bicubic) to ``n``, restored ``n -> n*s``, resized to ``t``.
* ``c >= n``, by ``--large-faces``: ``own`` (default) restores it at its own size ``c -> c*s``
  (reflection-padded to a multiple of 8; the released chains are fully convolutional; a chain
  that only runs at ``n``, found by one probe, keeps such faces), ``native`` shrinks it to ``n``
  first, ``keep`` leaves it unrestored. The result is resized to ``t`` (area filter when
  shrinking, bicubic when enlarging); a kept face is resized to ``t`` by bicubic like the
  background. A chain trained on ``n`` px faces may do badly at other sizes: the summary says
  when faces ran at their own size.

Faces at the chain's own input size run on the chosen backend (ONNX Runtime may be picked by
``--backend auto``); other sizes run in PyTorch, since the ONNX files are exported per size.

Model layout: a chain folder (the released default is ``models/default/``) holds one checkpoint
per stage and a ``chain.yaml`` listing them in run order::

    # models/default/chain.yaml
    size: 16                  # input side the chain was trained for
    stages:                   # stage name -> checkpoint file, relative to this folder, in order
      deblur: deblur.pt
      reconstruct: reconstruct.pt
      upscale: upscale.pt

Each checkpoint is a :func:`facekit.chain.save_stage` file or a facekit training checkpoint.
``--chain`` picks the membership and order, ``--checkpoint STAGE=PATH`` replaces or adds a stage.

Inputs and outputs are checked before any model is loaded (a missing input, an empty folder or
an output that is a file where a folder is needed stop the command at once). Outputs keep the
input's relative path with a ``.png`` suffix (``a.jpg`` -> ``a.png``; when two inputs would
collide, e.g. ``a.jpg`` and ``a.png``, the later keeps its full name: ``a.png.png``). One line
per file says what was found and done, then the totals. Unreadable inputs are reported by name
and skipped; the exit status is 1 when any input failed (a file without a face is not a failure).
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from facekit import imageio, images, settings
from facekit.errors import ConfigError, ImageReadError, OutputError
from facekit.faces import FACE_MARGIN, FaceDetector, face_square
from facekit.images import crop_square, paste_face, resize_to
from facekit.restorer import RestoreOutput, Restorer

# ---------------------------------------------------------------------------------------------
# Inputs and outputs


def list_inputs(input_path: str | Path) -> tuple[Path, list[Path]]:
    """Return ``(root, relative paths)`` of the images to restore.

    A file is restored on its own (whatever its extension; unreadable files are reported later);
    a folder is searched recursively for files with an image extension.

    Raises:
        ConfigError: the input does not exist.
    """
    input_path = Path(input_path)
    if input_path.is_file():
        return input_path.parent, [Path(input_path.name)]
    if not input_path.is_dir():
        raise ConfigError(f"{input_path}: input does not exist (give an image, a face crop or a folder of them)")
    files = sorted(p.relative_to(input_path) for p in input_path.rglob("*")
                   if p.is_file() and p.suffix.lower() in imageio.IMAGE_EXTENSIONS and not p.name.startswith("."))
    return input_path, files


def output_names(rel_paths: list[Path]) -> list[Path]:
    """Relative output path per input: same name with ``.png``; collisions keep the full name."""
    seen: set[Path] = set()
    out = []
    for rel in rel_paths:
        name = rel.with_suffix(".png")
        if name in seen:
            name = rel.with_name(rel.name + ".png")
        seen.add(name)
        out.append(name)
    return out


def _refuse_overwriting_inputs(input_path: Path, output: Path, root: Path, rels: list[Path],
                               targets: list[Path]) -> None:
    """Raise ConfigError when an output would replace an input, or the output folder lies in the
    (recursively searched) input folder."""
    if input_path.is_dir():
        out, src = output.resolve(), input_path.resolve()
        if out == src or src in out.parents:
            where = "the input folder" if out == src else "inside the input folder"
            raise ConfigError(f"{output}: the output folder is {where} {input_path}: results would overwrite "
                              f"inputs or be restored again on the next run; give a folder outside it")
        return
    sources = {(root / rel).resolve() for rel in rels}
    for target in targets:
        if target.resolve() in sources:
            raise ConfigError(f"{target}: the output would overwrite the input; give another output path")


def plan_paths(input_path: str | Path, output: str | Path) -> tuple[Path, list[Path], list[Path]]:
    """Check the input and output paths and pair every input with its output file (reads no image).

    Args:
        input_path: an image file or a folder (searched recursively).
        output: a folder; for a single input file, a path with an image extension (that is not a
            folder) is the output file itself.

    Returns:
        ``(root, input paths relative to root, output paths)``.

    Raises:
        ConfigError: the input does not exist, a folder holds no image, the output (or a folder
            above it) is an existing file where a folder is needed, or an output would overwrite
            an input (or land inside the input folder, where the next run would restore it again).
        OutputError: the output folder (or the parent it would be made in) is not writable.
    """
    root, rels = list_inputs(input_path)
    if not rels:
        raise ConfigError(f"{input_path}: no image files found (extensions: {', '.join(imageio.IMAGE_EXTENSIONS)})")
    output = Path(output)
    if Path(input_path).is_file() and output.suffix.lower() in imageio.IMAGE_EXTENSIONS and not output.is_dir():
        targets, folder = [output], output.parent
    else:
        if output.exists() and not output.is_dir():
            raise ConfigError(f"{output}: output is an existing file, but a folder is needed for "
                              f"{'the outputs' if len(rels) > 1 else 'the output'} (give a folder"
                              + (", or an output file name with an image extension)" if len(rels) == 1 else ")"))
        targets, folder = [output / name for name in output_names(rels)], output
    _refuse_overwriting_inputs(Path(input_path), output, root, rels, targets)
    for parent in [folder, *folder.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"{output}: cannot create the output there: {parent} is a file")
            break

    # before any model loads: a read-only folder was a traceback at the first write
    settings.check_writable(folder, "output folder", "; give another output path")
    return root, rels, targets


def prepare_face(img: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop an RGB image to a square and resize it to ``size`` x ``size``.

    (The command no longer does this; kept for callers that feed a fixed-size model.)

    Args:
        img: ``(H,W,3) uint8`` RGB.
        size: output side.

    Returns:
        ``(size,size,3) uint8``.
    """
    h, w = img.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    img = img[top:top + side, left:left + side]
    if side == size:
        return np.ascontiguousarray(img)
    interp = cv2.INTER_AREA if side > size else cv2.INTER_CUBIC
    return cv2.resize(img, (size, size), interpolation=interp)


# ---------------------------------------------------------------------------------------------
# Per-face geometry: what to run, at which size, and where to paste it

PAD_MULTIPLE = 8      # sides of off-size chain inputs are reflection-padded to a multiple of this


@dataclass
class FacePlan:
    """How one face is handled.

    Attributes:
        side: the face's side in input pixels (a crop's longer side).
        target: ``(h, w)`` it takes in the output.
        run: chain input side (longer side, before padding), or None when the face is kept.
        action: what is done, in words ("restored at 16->64", "kept: already at output size").
    """

    side: int
    target: tuple[int, int]
    run: int | None
    action: str


LARGE_FACES = settings.LARGE_FACES


def resolve_large(large: str, restorer: Restorer) -> str:
    """``"auto"`` -> ``"own"`` when ``restorer`` runs any face size as trained (every stage of a
    chain declares ``any_size``), else ``"native"``."""
    if large != "auto":
        return large
    return "own" if restorer.any_size else "native"


def plan_face(h: int, w: int, target: tuple[int, int], in_size: int, scale: int, out_size: int,
              any_size: bool | None = True, large: str = "own") -> FacePlan:
    """Decide how a face of ``h`` x ``w`` pixels reaching ``target`` in the output is restored.

    Args:
        h, w: the face crop's size in input pixels.
        target: ``(h, w)`` in the output.
        in_size: chain input side ``n``; smaller faces are enlarged to it.
        scale: chain scale ``s``.
        out_size: faces at least this big that need no enlarging are kept.
        any_size: whether the chain runs at sizes other than ``n`` (None: not known yet, treated
            as True; see :func:`chain_runs_any_size`).
        large: faces above ``n`` (and below the output size): ``"own"`` restores them at their
            own size, ``"native"`` shrinks them to ``n`` first, ``"keep"`` leaves them unrestored.

    Returns:
        A :class:`FacePlan` (``run`` None: kept, resized to ``target`` like the background).
    """
    if large not in LARGE_FACES:
        raise ConfigError(f"--large-faces must be one of {', '.join(LARGE_FACES)}, got {large!r}")
    side = max(h, w)
    t = max(target)
    if side >= t and side >= out_size:
        return FacePlan(side, target, None, f"kept: already at output size ({side} px >= {out_size} px)")
    if side > in_size and large == "keep":
        return FacePlan(side, target, None, f"kept: {side} px is above the chain's {in_size} px input "
                                            "(--large-faces keep)" + (f", resized to {t}" if t != side else ""))
    run = in_size if large == "native" else max(side, in_size)
    if run != in_size and any_size is False:
        return FacePlan(side, target, None, f"kept: the chain runs only at {in_size} px and the face is {side} px"
                        + (f", resized to {t}" if t != side else ""))
    action = ""
    if side != run:
        action = f"{'enlarged' if side < run else 'shrunk'} {side}->{run}, "
    action += f"restored at {run}->{run * scale}"
    if t != run * scale:
        action += f", resized to {t}"
    return FacePlan(side, target, run, action)


def _chain_input(face: np.ndarray, run: int, in_size: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The (padded) chain input for a face crop and the padding ``(top, bottom, left, right)``.

    A crop whose longer side is not ``run`` is resized to it (bicubic when enlarging, area when
    shrinking; aspect kept). At the
    chain's own size the input is reflection-padded to ``in_size`` x ``in_size`` (so it batches
    and runs on any backend); at other sizes each side is padded to a multiple of :data:`PAD_MULTIPLE`.
    """
    h, w = face.shape[:2]
    side = max(h, w)
    if side != run:
        h, w = max(1, round(h * run / side)), max(1, round(w * run / side))
        face = cv2.resize(face, (w, h), interpolation=cv2.INTER_CUBIC if side < run else cv2.INTER_AREA)
    if run == in_size:
        ph, pw = in_size - h, in_size - w
    else:
        ph, pw = (-h) % PAD_MULTIPLE, (-w) % PAD_MULTIPLE
    pad = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
    if ph or pw:
        face = np.pad(face, ((pad[0], pad[1]), (pad[2], pad[3]), (0, 0)), mode="reflect")
    return np.ascontiguousarray(face), pad


def runs_any_size(restorer: Restorer, in_size: int) -> bool:
    """Whether ``restorer`` restores non-square inputs of other sizes than ``in_size``.

    Probes one ``(in_size + 8) x (in_size + 16)`` input and checks the output is ``scale`` times
    larger; any error means no (such faces are then kept rather than shrunk to ``in_size``).
    """
    h, w = in_size + PAD_MULTIPLE, in_size + 2 * PAD_MULTIPLE
    try:
        out = restorer.fn(torch.full((1, 3, h, w), 0.5), (h * restorer.scale, w * restorer.scale))
    except Exception:  # noqa: BLE001 - any failure means "not at this size"
        return False
    out = out.out if isinstance(out, RestoreOutput) else out
    return tuple(out.shape) == (1, 3, h * restorer.scale, w * restorer.scale)


# ---------------------------------------------------------------------------------------------
# Reports


@dataclass
class FaceReport:
    """What happened to one face.

    Attributes:
        side: face side in input pixels (the crop square's side; a crop's longer side).
        action: what was done ("restored at 16->64", "kept: already at output size (...)").
        restored: whether the chain ran on it.
        box: YuNet box ``(x, y, w, h)`` in input pixels (whole-image mode; None for crops).
        score: detector confidence (whole-image mode).
        square: ``(x0, y0, side)`` the face square in input pixels (whole-image mode).
        region: ``(x0, y0, side)`` its paste square in output pixels; the output differs from
            the (upscaled) input only inside these squares (whole-image mode).
    """

    side: int
    action: str
    restored: bool
    box: tuple[int, int, int, int] | None = None
    score: float | None = None
    square: tuple[int, int, int] | None = None
    region: tuple[int, int, int] | None = None

    def text(self) -> str:
        if self.box is None:
            return self.action
        x, y, w, h = self.box
        x0, y0, side = self.square
        return f"box ({x}, {y}, {w}, {h}) score {self.score:.2f}, square {side} px at ({x0}, {y0}): {self.action}"


@dataclass
class FileReport:
    """What happened to one input file.

    Attributes:
        rel: input path relative to the input root.
        output: the file written.
        in_shape / out_shape: ``(H, W)`` of the input and the output.
        faces: one :class:`FaceReport` per face (crops: exactly one).
        aligned: whether the input was treated as a face crop.
    """

    rel: Path
    output: Path
    in_shape: tuple[int, int]
    out_shape: tuple[int, int]
    faces: list[FaceReport] = field(default_factory=list)
    aligned: bool = False

    @property
    def restored(self) -> int:
        return sum(f.restored for f in self.faces)

    @property
    def kept(self) -> int:
        return sum(not f.restored for f in self.faces)

    def text(self) -> str:
        (ih, iw), (oh, ow) = self.in_shape, self.out_shape
        head = f"{self.rel}: {iw}x{ih} -> {ow}x{oh}"
        if self.aligned:
            return f"{head}: {self.faces[0].action}"
        if not self.faces:
            return f"{head}: no face found; written " + ("unchanged" if self.in_shape == self.out_shape else "upscaled")
        lines = [f"{head}: {len(self.faces)} face(s) found, {self.restored} restored, {self.kept} kept"]
        lines += [f"  face {i + 1}: {f.text()}" for i, f in enumerate(self.faces)]
        return "\n".join(lines)


@dataclass
class RestoreSummary:
    """What :func:`restore_path` did.

    Attributes:
        written: output files, in input order.
        failed: ``(input relative path, problem)`` for every input that could not be read.
        files: one :class:`FileReport` per written file, in input order.
        seconds: total wall time (reading, detecting, restoring, writing).
        model_seconds: time inside the chain.
        stage_seconds: per-stage time summed over batches.
        backend: the backend that ran faces at the chain's own input size (other sizes: torch).
        off_size: chain input side of every face restored at a size other than ``in_size``.
        in_size: the chain's input side.
    """

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    files: list[FileReport] = field(default_factory=list)
    seconds: float = 0.0
    model_seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    backend: str = "torch"
    off_size: list[int] = field(default_factory=list)
    in_size: int | None = None

    @property
    def faces_found(self) -> int:
        return sum(len(f.faces) for f in self.files)

    @property
    def faces_restored(self) -> int:
        return sum(f.restored for f in self.files)

    @property
    def faces_kept(self) -> int:
        return sum(f.kept for f in self.files)

    @property
    def no_face(self) -> list[Path]:
        """Inputs in which no face was found (whole-image mode)."""
        return [f.rel for f in self.files if not f.faces]

    @property
    def faces_per_s(self) -> float:
        return self.faces_restored / self.seconds if self.seconds > 0 else 0.0

    @property
    def model_faces_per_s(self) -> float:
        return self.faces_restored / self.model_seconds if self.model_seconds > 0 else 0.0

    def text(self, per_file: bool = True) -> str:
        """The report: one line per file (with ``per_file``), the totals and the unreadable inputs."""
        lines = [f.text() for f in self.files] if per_file else []
        lines.append(f"total: {len(self.written)} file(s) written, {self.faces_found} face(s) found, "
                     f"{self.faces_restored} restored, {self.faces_kept} kept"
                     + (f"; no face found in {len(self.no_face)} file(s)" if self.no_face else ""))
        small = [f for f in self.files if not f.faces and max(f.in_shape) <= 128]
        if small and not any(f.aligned for f in self.files):
            lines.append(f"hint: {len(small)} input(s) without a face are small ({max(small[0].in_shape)} px); "
                         "if they are face crops, restore them with --aligned")
        if self.off_size:
            lines.append(f"note: {len(self.off_size)} face(s) ran at their own size ({min(self.off_size)}-"
                         f"{max(self.off_size)} px), not the chain's {self.in_size} px input; a chain trained "
                         "at one face size may restore other sizes badly (see --large-faces native|keep)")
        lines.append(f"restored {self.faces_restored} face(s) in {self.seconds:.2f} s: {self.faces_per_s:.1f} faces/s "
                     f"overall, {self.model_faces_per_s:.1f} faces/s in the chain ({self.backend}"
                     + "".join(f"; {k} {v:.2f} s" for k, v in self.stage_seconds.items()) + ")")
        lines.append(f"unreadable inputs: {len(self.failed)}")
        lines += [f"  {rel}: {problem}" for rel, problem in self.failed]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Restoring files


@dataclass
class _Loaded:
    index: int                      # position in the input list
    img: np.ndarray                 # (H,W,3) uint8 input
    squares: list[tuple] | None     # whole-image mode: [(detection, (x0, y0, side))]


def _load(root: Path, rels: list[Path], indices: list[int], detector, margin: float
          ) -> tuple[list[_Loaded], list[tuple[int, str]]]:
    """Read (and in whole-image mode, detect faces in) a chunk of files; runs on the prefetch thread."""
    ok, failed = [], []
    for i in indices:
        try:
            img = imageio.read_image(root / rels[i])
        except ImageReadError as exc:
            failed.append((i, exc.problem))
            continue
        except (OSError, ValueError, cv2.error) as exc:  # anything else a broken file can raise
            failed.append((i, f"{type(exc).__name__}: {exc}"))
            continue
        squares = None
        if detector is not None:
            squares = [(d, face_square(d, margin)) for d in detector.detect(img)]
        ok.append(_Loaded(i, img, squares))
    return ok, failed


def _run_jobs(restorer: Restorer, jobs: list[tuple], batch: int, scale: int,
              summary: RestoreSummary, gains: dict | None = None) -> dict[tuple[int, int], np.ndarray]:
    """Run the restorer on planned faces, batched by input shape; adds the timing to ``summary``.

    Args:
        jobs: ``(file k, face j, FacePlan, (h,w,3) uint8 padded input, (top, bottom, left, right))``.
        gains: filled with ``(k, j)`` -> the relight step's ``(3,)`` linear RGB gains when the
            restorer reports an explicit global correction (a chain whose first stage relights),
            so each face's correction can be said.

    Returns:
        ``(k, j)`` -> the restored face, unpadded and resized to its plan's target: ``(th,tw,3)``
        float32 in [0, 255].
    """
    results: dict[tuple[int, int], np.ndarray] = {}
    by_shape: dict[tuple[int, int], list] = {}
    for job in jobs:
        by_shape.setdefault(job[3].shape[:2], []).append(job)
    for group in by_shape.values():
        for g in range(0, len(group), batch):
            part = group[g:g + batch]
            x = images.to_tensor(np.stack([jb[3] for jb in part]))
            t0 = time.perf_counter()
            result = restorer.restore(x, keep_size=True)
            summary.model_seconds += time.perf_counter() - t0
            for name, sec in result.seconds.items():
                summary.stage_seconds[name] = summary.stage_seconds.get(name, 0.0) + sec
            if result.gains is not None and gains is not None:
                gains.update({(jb[0], jb[1]): gi for jb, gi in zip(part, result.gains.numpy())})
            out = images.to_hwc_float(result.out, 255.0)
            for (k, j, plan, _, (top, bottom, left, right)), o in zip(part, out):
                o = o[top * scale:o.shape[0] - bottom * scale, left * scale:o.shape[1] - right * scale]
                results[(k, j)] = np.clip(resize_to(np.ascontiguousarray(o), *plan.target), 0, 255)
    return results


def restore_path(input_path: str | Path, output: str | Path, restorer: Restorer, size: int, batch: int = 32,
                 progress: bool = True, *, aligned: bool = False, upscale: int = 1, out_size: int | None = None,
                 detector=None, margin: float = FACE_MARGIN, large: str = "auto") -> RestoreSummary:
    """Restore the faces in one image or in every image under a folder.

    Args:
        input_path: image file or folder (searched recursively).
        output: folder for the results (for a single input file, a path with an image extension
            is used as the output file itself).
        restorer: a :class:`facekit.restorer.Restorer` (a chain: :func:`facekit.restorers.chain_restorer`)
            whose ``scale`` is its own; faces reach it at the sizes planned here (``keep_size``).
        size: the chain's input side ``n``: smaller faces are enlarged to it, larger ones run at
            their own size (see the module docstring).
        batch: files read per step (and most faces per chain call).
        progress: show a tqdm progress bar.
        aligned: inputs are face crops, restored whole (else faces are detected and pasted back).
        upscale: whole-image mode: integer factor the output is enlarged by (>= 1).
        out_size: crops: the output's longer side is at least this; whole images: faces at least
            this big are kept unless ``upscale`` enlarges them. Default ``size * chain.scale``.
        detector: a :class:`facekit.faces.FaceDetector` (default: a new one; whole-image mode).
        margin: context around each detected face (whole-image mode).
        large: faces above ``size``: ``"own"`` (restored at their own size), ``"native"``
            (shrunk to ``size`` first) or ``"keep"`` (not restored); see :func:`plan_face`.

    Returns:
        A :class:`RestoreSummary`; unreadable inputs are listed there (and warned about), not
        raised; a file without a face is written (upscaled) and listed in ``no_face``.

    Raises:
        ConfigError: bad paths (see :func:`plan_paths`) or settings.
    """
    from tqdm.auto import tqdm

    if batch < 1:
        raise ConfigError(f"--batch must be >= 1, got {batch}")
    if size < 1:
        raise ConfigError(f"--size must be >= 1, got {size}")
    if int(upscale) != upscale or upscale < 1:
        raise ConfigError(f"--upscale must be a whole number >= 1, got {upscale}")
    upscale = int(upscale)
    if aligned and upscale != 1:
        raise ConfigError("--upscale enlarges whole images; for face crops (--aligned) set the output side "
                          "with --out-size")
    scale = int(restorer.scale)
    out_size = int(out_size or size * scale)
    if out_size < 1:
        raise ConfigError(f"--out-size must be >= 1, got {out_size}")
    if large not in LARGE_FACES:
        raise ConfigError(f"--large-faces must be one of {', '.join(LARGE_FACES)}, got {large!r}")
    large = resolve_large(large, restorer)
    t_start = time.perf_counter()
    root, rels, targets = plan_paths(input_path, output)
    if not aligned and detector is None:
        detector = FaceDetector()
    summary = RestoreSummary(backend=restorer.meta.get("backend", "torch"), in_size=size)
    any_size: list[bool | None] = [None]  # probed once, the first time a face needs another size

    def any_size_ok() -> bool:
        if any_size[0] is None:
            any_size[0] = runs_any_size(restorer, size)
        return bool(any_size[0])

    def plan(h: int, w: int, target: tuple[int, int]) -> FacePlan:
        p = plan_face(h, w, target, size, scale, out_size, True, large)
        if p.run is not None and p.run != size and not any_size_ok():
            p = plan_face(h, w, target, size, scale, out_size, False, large)
        if p.run is not None and p.run != size:
            summary.off_size.append(p.run)
        return p

    chunks = [list(range(i, min(i + batch, len(rels)))) for i in range(0, len(rels), batch)]
    bar = tqdm(total=len(rels), unit="file", desc="restore", disable=not progress, file=sys.stderr)
    # Decode (and detect) the next chunk on a worker thread while the chain runs on the current one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(_load, root, rels, chunks[0], None if aligned else detector, margin)
        for c in range(len(chunks)):
            loaded, failed = pending.result()
            if c + 1 < len(chunks):
                pending = pool.submit(_load, root, rels, chunks[c + 1], None if aligned else detector, margin)
            for i, problem in failed:
                summary.failed.append((rels[i], problem))
                bar.write(f"restore: skipped unreadable input {rels[i]}: {problem}", file=sys.stderr)
            # Plan every face of the chunk, then run them grouped by chain input shape.
            jobs = []  # (file k, face j, plan, chain input, padding)
            canvases, reports = [], []
            for k, item in enumerate(loaded):
                h, w = item.img.shape[:2]
                if aligned:
                    side = max(h, w)
                    t = max(side, out_size)
                    target = (max(1, round(h * t / side)), max(1, round(w * t / side)))
                    p = plan(h, w, target)
                    canvases.append(resize_to(item.img, *target) if p.run is None else None)
                    faces = [FaceReport(p.side, p.action, p.run is not None)]
                    if p.run is not None:
                        jobs.append((k, 0, p, *_chain_input(item.img, p.run, size)))
                else:
                    canvases.append(item.img.copy() if upscale == 1 else
                                    cv2.resize(item.img, (w * upscale, h * upscale), interpolation=cv2.INTER_CUBIC))
                    faces = []
                    for j, (det, (x0, y0, side)) in enumerate(item.squares):
                        t = side * upscale
                        p = plan(side, side, (t, t))
                        box = tuple(int(round(float(v))) for v in det.box)
                        faces.append(FaceReport(side, p.action, p.run is not None, box, float(det.score),
                                                (x0, y0, side), (x0 * upscale, y0 * upscale, t)))
                        if p.run is not None:
                            jobs.append((k, j, p, *_chain_input(crop_square(item.img, x0, y0, side), p.run, size)))
                reports.append(faces)
            gains: dict = {}
            results = _run_jobs(restorer, jobs, batch, scale, summary, gains)
            for (k, j), g in gains.items():
                if np.abs(g - 1.0).max() > 1e-4:  # the explicit global correction, said per face
                    reports[k][j].action += (f"; relit (linear gains R {g[0]:.2f} G {g[1]:.2f} B {g[2]:.2f}; "
                                             "--no-relight keeps the input's colour)")
            for k, item in enumerate(loaded):
                canvas = canvases[k]
                if aligned:
                    if canvas is None:
                        canvas = np.rint(results[(k, 0)]).astype(np.uint8)
                else:
                    # paste the most confident face last, so it wins where squares overlap
                    for j in reversed(range(len(reports[k]))):
                        if (k, j) in results:
                            x0, y0, _ = reports[k][j].region
                            paste_face(canvas, results[(k, j)], x0, y0)
                target_path = targets[item.index]
                try:
                    summary.written.append(imageio.write_image(target_path, canvas))
                except OSError as exc:  # the folder turned read-only or the disk filled mid-run
                    raise OutputError(target_path, f"cannot write the output: {exc.strerror or exc}") from None
                report = FileReport(rels[item.index], target_path, item.img.shape[:2], canvas.shape[:2],
                                    reports[k], aligned)
                summary.files.append(report)
                if not report.faces:
                    bar.write(f"restore: no face found in {report.rel}", file=sys.stderr)
            bar.update(len(chunks[c]))
            bar.set_postfix(faces=summary.faces_found, failed=len(summary.failed))
    bar.close()
    summary.seconds = time.perf_counter() - t_start
    return summary


# ---------------------------------------------------------------------------------------------
# Command line
