"""``python -m facekit release``: export a finished training run as a released chain folder with its model card.

The work is :func:`facekit.release.release_run` (or :func:`facekit.release.rewrite_card` with
``--rewrite-card``); this module only maps the options onto it and prints the card's path and
the targets and quality it measured.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from facekit import release, settings
from facekit.errors import ConfigError
from facekit.ood import RANK1_DRAWS as RANK1_DRAWS_DEFAULT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m facekit release``."""
    parser.add_argument("run", nargs="?", default=None, help="finished training run folder (data/runs/NAME)")
    parser.add_argument("out", nargs="?", default=None, help="chain folder to write (default models/default)")
    parser.add_argument("--compare", action="append", default=[], metavar="RUN",
                        help="another finished run scored beside it (repeatable)")
    parser.add_argument("--sample-size", type=int, default=None, help="evaluate this many test faces (default all)")
    parser.add_argument("--weights", choices=release.WEIGHTS, default="best",
                        help="ema, raw (last step) or best of the two on the validation pairs (default)")
    parser.add_argument("--rewrite-card", metavar="DIR", default=None,
                        help="only rewrite DIR/TRAINING.md from its report.json and test_metrics.csv (no re-measuring)")
    parser.add_argument("--remeasure-rank1", metavar="DIR", default=None,
                        help="only measure DIR's rank-1 targets again over --rank1-draws draws, and rewrite its "
                             "report.json and card (for a folder released before the targets pooled draws)")
    parser.add_argument("--rank1-draws", type=settings.int_arg(1, 1000), default=None, metavar="N",
                        help=f"degradation draws of the medium cell that the rank-1 targets pool "
                             f"(default {RANK1_DRAWS_DEFAULT}; the default model needs at least that many)")
    parser.add_argument("--ood-limit", type=int, default=None, metavar="N",
                        help="OOD suite on at most N faces (or people) per source: a quicker card for a folder "
                             "that is not the default (the default needs the whole suite)")
    parser.add_argument("--accept-failing", metavar="REASON", default=None,
                        help="make the default despite failing gain targets (rank-1 ratio), with this reason "
                             "written on the card; no-harm targets (below bicubic, colour, grey) are never waived")
    parser.add_argument("--luma-detail-only", action="store_true",
                        help="faithful generator: add luma detail only (chroma detail off), so every output "
                             "colour comes from the input")
    parser.add_argument("--fp32-weights", action="store_true",
                        help="store the released parameters as float32 (default float16: half the file)")
    parser.add_argument("--no-progress", action="store_true")


def run_cli(args: argparse.Namespace) -> int:
    """Release the run (or only rewrite a card) and print the card's path, targets and quality."""
    from facekit.chain import default_model_dir

    draws = RANK1_DRAWS_DEFAULT if args.rank1_draws is None else args.rank1_draws
    if args.rewrite_card and args.remeasure_rank1:
        raise ConfigError("--rewrite-card and --remeasure-rank1 are two different jobs: give one")
    if args.rewrite_card:
        print(release.rewrite_card(args.rewrite_card))
        return 0
    if args.remeasure_rank1:
        block = release.remeasure_rank1(args.remeasure_rank1, draws, progress=not args.no_progress)
        print(Path(args.remeasure_rank1) / "TRAINING.md")
        print(json.dumps([t for t in block["targets"] if t["target"].startswith("rank-1 ")], indent=2))
        return 0
    if not args.run:
        raise ConfigError("release needs a finished training run folder (data/runs/NAME), or --rewrite-card DIR")
    out = Path(args.out) if args.out else default_model_dir()
    report = release.release_run(args.run, out, compare=args.compare, sample_size=args.sample_size,
                                 progress=not args.no_progress, weights=args.weights,
                                 accept_failing=args.accept_failing, ood_limit=args.ood_limit,
                                 half=not args.fp32_weights, luma_detail_only=args.luma_detail_only,
                                 rank1_draws=draws)
    print(out / "TRAINING.md")
    print(json.dumps({"targets": report["targets"], "quality": report["quality"]}, indent=2))
    return 0
