"""``python -m facekit train``: train a restoration GAN from a config file."""

from __future__ import annotations

import argparse

from facekit.runs import RunDir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="YAML training config (see configs/)")
    parser.add_argument("--resume", action="store_true", help="continue from the run's checkpoints/last.pt")
    parser.add_argument("--overwrite", action="store_true", help="start again even if the run has checkpoints")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (YAML syntax), repeatable; e.g. --set steps=100")
    parser.add_argument("--runs-dir", default=None, help="parent folder of run folders (default data/runs)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_cli(args: argparse.Namespace) -> int:
    from facekit import train  # torch: ``train --help`` does not pay its import

    cfg = train.TrainConfig.from_yaml(args.config).with_overrides(args.overrides)
    if getattr(args, "threads", None) is not None:  # the command line wins over the config file
        cfg.threads = args.threads
    run_dir = train.train(cfg, resume=args.resume, progress=not args.no_progress, runs_dir=args.runs_dir,
                    overwrite=args.overwrite)
    if train.dist_info()[0] == 0:  # one process of a torchrun job prints
        print(run_dir)
        summary = RunDir(run_dir).summary
        if summary.exists():
            print(summary.read_text())
    return 0
