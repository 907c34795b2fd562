"""Command line: ``python -m facekit <command> ...``.

Each command is a thin module in :mod:`facekit.commands` providing ``add_arguments(parser)``
and ``run_cli(args) -> int``. The top-level parser is built from :data:`COMMANDS` alone and a
command's module is imported only once argparse reaches that command's word
(:class:`_LazySubParsers`), so ``python -m facekit --help``, a bare
``python -m facekit`` and an unknown command import no torch (~0.1 s instead of ~7 s and 1 GB),
and a missing optional dependency only affects its own command.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from facekit import settings
from facekit.errors import FacekitError

DESCRIPTION = "Reconstruct recognisable faces from low-quality CCTV footage, CPU-first."
EPILOG = "Run 'python -m facekit COMMAND --help' for a command's options."

# command name -> (module, one-line help). A literal dict so the valid commands are visible.
COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("facekit.commands.data", "ingest a face source into an aligned, split, cached dataset"),
    "train": ("facekit.commands.train", "train a restoration GAN from a config file"),
    "run": ("facekit.commands.run", "run the notebooks headless and write HTML reports"),
    "evaluate": ("facekit.commands.evaluate", "score restorers across lighting, angles and severities vs baselines; "
                                              "--suite ood: on faces and degradations no model trained on"),
    "identify": ("facekit.commands.identify", "match probe faces against a gallery of known people"),
    "restore": ("facekit.commands.restore", "restore the faces in photos and frames (detect, restore, paste back), "
                                            "or face crops with --aligned"),
    "release": ("facekit.commands.release", "export a finished training run as a released chain folder with its "
                                            "model card"),
    "fuse": ("facekit.commands.fuse", "fuse the crops of one face track (a folder of crops or a clip) into one face; "
                                      "--train / --export the learned fusion stage"),
    "video": ("facekit.commands.video", "detect, track, enhance and composite faces in a video file or live stream"),
    "mesh": ("facekit.commands.mesh", "3D face mesh (OBJ+PNG, PLY, glb), head pose and a frontal view of the face "
                                      "in an image"),
}


def load_command(parser: argparse.ArgumentParser, module_name: str) -> None:
    """Import ``module_name`` and add its arguments to the command's sub-parser ``parser``.

    A module that fails to import leaves ``_import_error`` in the parsed arguments instead, so
    :func:`main` can say why and the other commands keep working.
    """
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        parser.set_defaults(_import_error=f"{module_name} is not available: {exc}")
        return
    module.add_arguments(parser)


class _LazySubParsers(argparse._SubParsersAction):
    """Sub-parsers whose arguments are added the first time their command is parsed.

    The top-level ``--help`` lists the commands from their ``help`` strings and never calls this,
    nor does an invalid command word (argparse rejects it against ``choices`` first).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._pending: dict[str, str] = {}  # command -> module whose arguments are not added yet

    def add_lazy_parser(self, name: str, module_name: str, **kwargs) -> argparse.ArgumentParser:
        p = self.add_parser(name, **kwargs)
        p.set_defaults(_module=module_name)
        self._pending[name] = module_name
        return p

    def __call__(self, parser, namespace, values, option_string=None):
        name = values[0]
        module_name = self._pending.pop(name, None)
        if module_name is not None:
            load_command(self._name_parser_map[name], module_name)
        super().__call__(parser, namespace, values, option_string)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with one sub-parser per command.

    Cheap: no command module is imported until ``parse_args`` meets that command.
    """
    parser = argparse.ArgumentParser(prog="facekit", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch/OpenCV threads (default: FACEKIT_THREADS or all cores)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", action=_LazySubParsers)
    for name, (module_name, help_text) in COMMANDS.items():
        sub.add_lazy_parser(name, module_name, help=help_text, description=help_text)
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

    if getattr(sys.stdout, "errors", None) == "strict":  # a file name that is not UTF-8 prints as \\xNN
        sys.stdout.reconfigure(errors="backslashreplace")
    module = importlib.import_module(args._module)
    try:
        settings.set_threads(args.threads)  # inside: a bad --threads or FACEKIT_THREADS is a one-line error
        return int(module.run_cli(args) or 0)
    except FacekitError as exc:
        from facekit.imageio import printable_path  # a name that is not UTF-8 as \\xNN, not \\udcNN

        print(f"facekit {args.command}: error: {printable_path(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"facekit {args.command}: interrupted", file=sys.stderr)
        return 130
