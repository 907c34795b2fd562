"""``python -m facekit run``: run the notebooks headless and write their HTML reports."""

from __future__ import annotations

import sys
import warnings

from facekit import runner, settings


def add_arguments(parser) -> None:
    """Add the ``run`` command's options to an argparse sub-parser."""
    parser.add_argument("--profile", default="smoke",
                        help="parameter profile: a name in params/ (smoke, full) or a .yaml path "
                             "(default: smoke)")
    parser.add_argument("--only", default=None, metavar="LIST",
                        help="comma-separated notebook numbers or names to run, e.g. 01,03")
    parser.add_argument("--data", default=None, metavar="SOURCE",
                        help="face source for every notebook with a 'source' parameter "
                             "(orl | folder:PATH | celeba:PATH | video:PATH)")
    parser.add_argument("--notebooks-dir", default=str(runner.NOTEBOOKS_DIR), metavar="DIR",
                        help="folder of NN_name.ipynb notebooks (default: notebooks/)")
    parser.add_argument("--reports-dir", default=None, metavar="DIR",
                        help="output folder (default: reports/)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no per-notebook messages or cell progress bars")
    parser.add_argument("--cell-timeout", type=settings.float_arg(0.0, None, lo_open=True), default=None,
                        metavar="SECONDS", help="fail a notebook whose cell runs longer than this (default: no limit)")


def run_cli(args) -> int:
    """Run the pipeline from parsed arguments; returns 0 when every notebook succeeded."""
    with warnings.catch_warnings():
        # One line per warning, without the source line of this module.
        warnings.simplefilter("always", runner.RunnerWarning)
        previous = warnings.showwarning
        warnings.showwarning = lambda msg, *a, **k: print(f"warning: {msg}", file=sys.stderr)
        try:
            summary = runner.run_pipeline(
                profile=args.profile, only=args.only, data=args.data,
                notebooks_dir=args.notebooks_dir, reports_dir=args.reports_dir,
                progress=not args.no_progress, threads=getattr(args, "threads", None),
                cell_timeout=args.cell_timeout,
            )
        finally:
            warnings.showwarning = previous
    failed = summary.failed
    if failed is not None:
        print(f"facekit run: {failed.error['message']}", file=sys.stderr)
        if failed.html:
            print(f"facekit run: the error is in {failed.html}", file=sys.stderr)
    return summary.exit_code
