"""``python -m facekit restore``: restore a face image or a folder of face crops with a chain.

Model layout: a chain folder (the released default is ``models/default/``) holds one checkpoint
per stage and a ``chain.yaml`` listing them in run order::

    # models/default/chain.yaml
    size: 16                  # input side the chain was trained for (faces are resized to it)
    stages:                   # stage name -> checkpoint file, relative to this folder, in order
      deblur: deblur.pt
      reconstruct: reconstruct.pt
      upscale: upscale.pt

Each checkpoint is a :func:`facekit.chain.save_stage` file or a facekit training checkpoint.
``--chain`` picks the membership and order, ``--checkpoint STAGE=PATH`` replaces or adds a stage.

Inputs of any size are centre-cropped to a square and resized to ``--size`` (area filter when
shrinking, bicubic when enlarging). Outputs keep the input's relative path with a ``.png``
suffix (``a.jpg`` -> ``a.png``; when two inputs would collide, e.g. ``a.jpg`` and ``a.png``, the
later keeps its full name: ``a.png.png``). Unreadable inputs are reported by name and skipped;
the exit status is 1 when any input failed.
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from facekit.errors import ConfigError, ImageReadError

CHAIN_FILE = "chain.yaml"


def default_model_dir() -> Path:
    """The released default chain folder, ``models/default``."""
    from facekit.settings import MODELS_DIR

    return MODELS_DIR / "default"


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
    """
    import yaml

    path = Path(path)
    if path.is_dir() or path.suffix.lower() not in (".yaml", ".yml"):
        path = path / CHAIN_FILE
    if not path.is_file():
        raise ConfigError(_no_default_message(path))
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
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
    return ChainSpec({n: (path.parent / f) for n, f in stages.items()}, size, path)


def parse_checkpoint_args(items: list[str] | None) -> dict[str, Path]:
    """Turn ``["deblur=a.pt", ...]`` into ``{"deblur": Path("a.pt")}``."""
    out: dict[str, Path] = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ConfigError(f"--checkpoint expects STAGE=PATH, got {item!r}")
        out[name.strip()] = Path(path.strip())
    return out


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
    from facekit.chain import STAGE_ORDER

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


# ---------------------------------------------------------------------------------------------
# Inputs and outputs


def list_inputs(input_path: str | Path) -> tuple[Path, list[Path]]:
    """Return ``(root, relative paths)`` of the images to restore.

    A file is restored on its own (whatever its extension; unreadable files are reported later);
    a folder is searched recursively for files with an image extension.
    """
    from facekit.imageio import IMAGE_EXTENSIONS

    input_path = Path(input_path)
    if input_path.is_file():
        return input_path.parent, [Path(input_path.name)]
    if not input_path.is_dir():
        raise ConfigError(f"{input_path}: input does not exist (give a face image or a folder of face crops)")
    files = sorted(p.relative_to(input_path) for p in input_path.rglob("*")
                   if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
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


def prepare_face(img: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop an RGB image to a square and resize it to ``size`` x ``size``.

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


def _read_batch(root: Path, rels: list[Path], size: int) -> tuple[list[int], np.ndarray, list[tuple[Path, str]]]:
    from facekit.imageio import read_image

    ok, faces, failed = [], [], []
    for i, rel in enumerate(rels):
        try:
            faces.append(prepare_face(read_image(root / rel), size))
            ok.append(i)
        except ImageReadError as exc:
            failed.append((rel, exc.problem))
        except (OSError, ValueError, cv2.error) as exc:  # anything else a broken file can raise
            failed.append((rel, f"{type(exc).__name__}: {exc}"))
    arr = np.stack(faces) if faces else np.empty((0, size, size, 3), np.uint8)
    return ok, arr, failed


@dataclass
class RestoreSummary:
    """What :func:`restore_path` did.

    Attributes:
        written: output files, in input order.
        failed: ``(input relative path, problem)`` for every input that could not be read.
        seconds: total wall time (reading, restoring, writing).
        model_seconds: time inside the chain.
        stage_seconds: per-stage time summed over batches.
        backend: the backend that ran.
    """

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    seconds: float = 0.0
    model_seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    backend: str = "torch"

    @property
    def faces_per_s(self) -> float:
        return len(self.written) / self.seconds if self.seconds > 0 else 0.0

    @property
    def model_faces_per_s(self) -> float:
        return len(self.written) / self.model_seconds if self.model_seconds > 0 else 0.0

    def text(self) -> str:
        lines = [f"restored {len(self.written)} face(s) in {self.seconds:.2f} s: {self.faces_per_s:.1f} faces/s "
                 f"overall, {self.model_faces_per_s:.1f} faces/s in the chain ({self.backend}; "
                 + ", ".join(f"{k} {v:.2f} s" for k, v in self.stage_seconds.items()) + ")",
                 f"unreadable inputs: {len(self.failed)}"]
        lines += [f"  {rel}: {problem}" for rel, problem in self.failed]
        return "\n".join(lines)


def restore_path(input_path: str | Path, output: str | Path, chain, size: int, batch: int = 32,
                 progress: bool = True) -> RestoreSummary:
    """Restore one image or every image under a folder.

    Args:
        input_path: image file or folder (searched recursively).
        output: folder for the restored faces (for a single input file, a path with an image
            extension is used as the output file itself).
        chain: a :class:`facekit.chain.RestorationChain`.
        size: side every face is resized to before the chain.
        batch: faces per chain call.
        progress: show a tqdm progress bar.

    Returns:
        A :class:`RestoreSummary`; unreadable inputs are listed there (and warned about), not raised.
    """
    from tqdm.auto import tqdm

    from facekit.imageio import IMAGE_EXTENSIONS, write_image

    if batch < 1:
        raise ConfigError(f"--batch must be >= 1, got {batch}")
    if size < 1:
        raise ConfigError(f"--size must be >= 1, got {size}")
    t_start = time.perf_counter()
    root, rels = list_inputs(input_path)
    if not rels:
        raise ConfigError(f"{input_path}: no image files found (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    output = Path(output)
    single_file = Path(input_path).is_file()
    if single_file and output.suffix.lower() in IMAGE_EXTENSIONS:
        targets = [output]
    else:
        targets = [output / name for name in output_names(rels)]
    summary = RestoreSummary(backend=chain.backend)
    chunks = [list(range(i, min(i + batch, len(rels)))) for i in range(0, len(rels), batch)]
    bar = tqdm(total=len(rels), unit="face", desc="restore", disable=not progress, file=sys.stderr)
    # Decode the next batch on a worker thread while the chain runs on the current one.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(_read_batch, root, [rels[i] for i in chunks[0]], size) if chunks else None
        for c, idx in enumerate(chunks):
            ok, faces, failed = pending.result()
            if c + 1 < len(chunks):
                pending = pool.submit(_read_batch, root, [rels[i] for i in chunks[c + 1]], size)
            for rel, problem in failed:
                summary.failed.append((rel, problem))
                bar.write(f"restore: skipped unreadable input {rel}: {problem}", file=sys.stderr)
            if len(ok):
                lq = torch.from_numpy(faces).permute(0, 3, 1, 2).float().div_(255.0)
                t0 = time.perf_counter()
                result = chain(lq)
                summary.model_seconds += time.perf_counter() - t0
                for k, v in result.seconds.items():
                    summary.stage_seconds[k] = summary.stage_seconds.get(k, 0.0) + v
                out = (result.out.permute(0, 2, 3, 1).mul(255.0).round_().clamp_(0, 255)
                       .to(torch.uint8).cpu().numpy())
                for j, i in enumerate(ok):
                    summary.written.append(write_image(targets[idx[i]], out[j]))
            bar.update(len(idx))
            bar.set_postfix(failed=len(summary.failed))
    bar.close()
    summary.seconds = time.perf_counter() - t_start
    return summary


# ---------------------------------------------------------------------------------------------
# Command line


def build_chain(chain: list[str] | None = None, checkpoints: dict[str, Path] | None = None,
                model_dir: str | Path | None = None, size: int | None = None, backend: str = "auto",
                device: str = "cpu", batch: int = 32):
    """Load the chain the CLI would run; returns ``(RestorationChain, input size)``."""
    from facekit.chain import RestorationChain, Stage

    order, ckpts, spec_size = resolve_stages(chain, checkpoints, model_dir)
    stages = [Stage.from_checkpoint(n, ckpts[n], device=device) for n in order]
    size = int(size or spec_size or stages[0].in_size or 16)
    from facekit.settings import DATA_DIR

    chain_obj = RestorationChain(stages, device=device, backend=backend, in_size=size,
                                 onnx_dir=DATA_DIR / "onnx-cache", auto_batch=max(1, min(batch, 8)))
    return chain_obj, size


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="a face image or a folder of face crops (any size)")
    parser.add_argument("output", help="folder for the restored faces (same relative names, .png)")
    parser.add_argument("--chain", default=None,
                        help="comma-separated stages in run order, e.g. deblur,reconstruct,upscale "
                             "(default: the order in chain.yaml)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="STAGE=PATH",
                        help="checkpoint for a stage (repeatable); overrides the model folder's")
    parser.add_argument("--models", default=None, metavar="DIR",
                        help="chain folder with chain.yaml (default: models/default)")
    parser.add_argument("--size", type=int, default=None,
                        help="input side faces are resized to (default: chain.yaml's size, e.g. 16 or 32)")
    parser.add_argument("--batch", type=int, default=32, help="faces per batch (default 32)")
    parser.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto",
                        help="inference backend; auto measures both and keeps the faster (default)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run_cli(args: argparse.Namespace) -> int:
    chain_names = [n.strip() for n in args.chain.split(",")] if args.chain else None
    checkpoints = parse_checkpoint_args(args.checkpoint)
    chain, size = build_chain(chain_names, checkpoints, args.models, args.size, args.backend, args.device,
                              args.batch)
    print(f"restore: chain {' -> '.join(chain.names)} (x{chain.scale}), {size}px -> {size * chain.scale}px, "
          f"backend {chain.backend}" + (f" (measured {', '.join(f'{k} {v * 1e3:.1f} ms' for k, v in chain.timings.items())})"
                                        if chain.timings else ""), file=sys.stderr)
    summary = restore_path(args.input, args.output, chain, size, args.batch, progress=not args.no_progress)
    print(summary.text())
    return 1 if summary.failed else 0
