"""``python -m facekit restore``: restore the faces in photos and frames, or face crops with ``--aligned``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from facekit import settings
from facekit.errors import ConfigError


def parse_checkpoint_args(items: list[str] | None) -> dict[str, Path]:
    """Turn ``["deblur=a.pt", ...]`` into ``{"deblur": Path("a.pt")}``."""
    out: dict[str, Path] = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ConfigError(f"--checkpoint expects STAGE=PATH, got {item!r}")
        out[name.strip()] = Path(path.strip())
    return out


# the chain's input side (--size): faces are enlarged to it, so an absurd value would allocate
# (side * scale)^2 pixels per face; 1024 is far above any released chain (16-64)
MAX_INPUT_SIDE = 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m facekit restore`` (values range-checked here: a bad one exits 2)."""
    parser.add_argument("input", help="an image (photo, frame) or a folder of them; with --aligned, face crops")
    parser.add_argument("output", help="folder for the results (same relative names, .png), or an output "
                                       "file name for a single input")
    parser.add_argument("--aligned", action="store_true",
                        help="inputs are face crops: restore each whole, keeping its aspect (default: find "
                             "the faces in each image, restore them and paste them back)")
    parser.add_argument("--upscale", type=int, default=1, metavar="U",
                        help="whole images: enlarge the output U times (background bicubic, faces restored; "
                             "default 1)")
    parser.add_argument("--out-size", type=settings.int_arg(1, 8192), default=None, metavar="PX",
                        help="face crops: the output's longer side is at least PX; whole images: faces of "
                             "PX or more are kept unless --upscale enlarges them (default: the chain's "
                             "output side, e.g. 64)")
    parser.add_argument("--large-faces", choices=settings.LARGE_FACES, default="auto",
                        help="faces larger than the chain's input (and below the output size): own = restore "
                             "at their own size (the chain must cope with that face size), native = "
                             "shrink to the chain's input first, keep = leave them unrestored (bicubic); "
                             "auto (default) = own for chains trained for any face size, else native")
    parser.add_argument("--no-relight", action="store_true",
                        help="switch off the explicit relight step (colour-cast and under-exposure "
                             "correction, reported per face): the output keeps the input's mean colour")
    parser.add_argument("--det-score", type=settings.float_arg(0.0, 1.0, lo_open=True), default=0.6,
                        help="whole images: minimum YuNet face confidence (default 0.6)")
    parser.add_argument("--chain", default=None,
                        help="comma-separated stages in run order, e.g. deblur,reconstruct,upscale "
                             "(default: the order in chain.yaml)")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="STAGE=PATH",
                        help="checkpoint for a stage (repeatable); overrides the model folder's")
    parser.add_argument("--models", default=None, metavar="DIR",
                        help="chain folder with chain.yaml (default: models/default)")
    parser.add_argument("--size", type=settings.int_arg(4, MAX_INPUT_SIDE), default=None,
                        help=f"the chain's input side (4-{MAX_INPUT_SIDE}): smaller faces are enlarged to it, larger ones run at "
                             "their own size (default: chain.yaml's size, e.g. 16)")
    parser.add_argument("--batch", type=settings.int_arg(1, 4096), default=32,
                        help="files read, and faces restored, per batch (1-4096, default 32)")
    parser.add_argument("--backend", choices=("auto", "torch", "onnx"), default="auto",
                        help="inference backend for faces at the chain's input size (other sizes run in "
                             "torch); auto measures both once per model, input size and thread count, keeps the faster "
                             "and stores the choice beside the ONNX exports in DATA_DIR/onnx-cache (default)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run_cli(args: argparse.Namespace) -> int:
    # imported here so that ``facekit restore --help`` loads no torch (a few seconds)
    from facekit import faces, restore, restorers
    from facekit.chain import build_chain, set_relight

    # Everything that can be checked without a model is checked first.
    chain_names = [n.strip() for n in args.chain.split(",")] if args.chain else None
    checkpoints = parse_checkpoint_args(args.checkpoint)
    for flag, value, low in (("--batch", args.batch, 1), ("--upscale", args.upscale, 1),
                             ("--size", args.size, 1), ("--out-size", args.out_size, 1)):
        if value is not None and value < low:
            raise ConfigError(f"{flag} must be >= {low}, got {value}")
    if args.aligned and args.upscale != 1:
        raise ConfigError("--upscale enlarges whole images; for face crops (--aligned) set the output side "
                          "with --out-size")
    if not 0.0 < args.det_score <= 1.0:
        raise ConfigError(f"--det-score must be in (0, 1], got {args.det_score}")
    restore.plan_paths(args.input, args.output)
    settings.check_device(args.device, "--device", available=True)
    chain, size = build_chain(chain_names, checkpoints, args.models, args.size, args.backend, args.device,
                              args.batch)
    if args.no_relight:
        set_relight(chain, False)
    detector = None
    if not args.aligned:
        detector = faces.FaceDetector(score_threshold=args.det_score)
    out_size = args.out_size or size * chain.scale
    mode = ("face crops (--aligned), output side >= " f"{out_size} px" if args.aligned else
            f"whole images: detect faces, restore, paste back, upscale x{args.upscale}")
    print(f"restore: chain {' -> '.join(chain.names)} (x{chain.scale}), {size}px -> {size * chain.scale}px, "
          f"backend {chain.backend}" + (f" (measured {', '.join(f'{k} {v * 1e3:.1f} ms' for k, v in chain.timings.items())})"
                                        if chain.timings else "") + f"; {mode}", file=sys.stderr)
    restorer = restorers.chain_restorer(chain, size, f"chain:{args.models or 'default'}", batch=args.batch,
                                        where=str(args.models or "default"))
    summary = restore.restore_path(args.input, args.output, restorer, size, args.batch, progress=not args.no_progress,
                           aligned=args.aligned, upscale=args.upscale, out_size=args.out_size, detector=detector,
                           large=args.large_faces)
    print(summary.text())
    return 1 if summary.failed else 0
