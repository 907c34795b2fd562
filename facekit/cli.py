"""Command line: ``python -m facekit <command> ...``.

Each command lives in the module that owns its concern; that module provides
``add_arguments(parser)`` and ``run_cli(args) -> int``. Modules are imported lazily so that
``python -m facekit --help`` stays fast and a missing optional dependency only affects its command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from facekit.errors import FacekitError

# command name -> (module, one-line help). A literal dict so the valid commands are visible.
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("facekit.data", "ingest a face source into an aligned, split, cached dataset"),
    "train": ("facekit.train", "train a restoration GAN from a config file"),
    "run": ("facekit.runner", "run the notebooks headless and write HTML reports"),
    "evaluate": ("facekit.evaluate", "score restorers across lighting, angles and severities vs baselines"),
    "identify": ("facekit.identify", "match probe faces against a gallery of known people"),
    "restore": ("facekit.restore", "restore a face image or a folder of face crops with the deblur/reconstruct/upscale chain"),
    "release": ("facekit.release", "export a finished training run as a released chain folder with its model card"),
    "video": ("facekit.video", "detect, track, enhance and composite faces in a video file or live stream"),
}


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with one sub-parser per command."""
    parser = argparse.ArgumentParser(prog="facekit", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch/OpenCV threads (default: FACEKIT_THREADS or all cores)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            p.set_defaults(_import_error=f"{module_name} is not available: {exc}")
            continue
        module.add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    if getattr(args, "_import_error", None):
        print(f"facekit {args.command}: {args._import_error}", file=sys.stderr)
        return 2
    from facekit.settings import set_threads

    set_threads(args.threads)
    module = importlib.import_module(args._module)
    try:
        return int(module.run_cli(args) or 0)
    except FacekitError as exc:
        print(f"facekit {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"facekit {args.command}: interrupted", file=sys.stderr)
        return 130
