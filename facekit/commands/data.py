"""``python -m facekit data``: ingest a face source into an aligned, split, cached dataset."""

from __future__ import annotations

import argparse

from facekit import data, settings
from facekit.faces import ALIGN_MODES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m facekit data`` (values range-checked here: a bad one exits 2)."""
    parser.add_argument("source", nargs="?", default="orl",
                        help="orl | folder:PATH | celeba:PATH | video:PATH (default: orl)")
    parser.add_argument("--size", type=settings.int_arg(16, 1024), default=64, help="crop side in pixels (16-1024, default 64)")
    parser.add_argument("--align", default="auto", choices=ALIGN_MODES)
    parser.add_argument("--limit", type=settings.int_arg(1), default=None, help="use only the first N inputs")
    parser.add_argument("--seed", type=settings.int_arg(0, settings.SEED_MAX), default=0, help=f"split seed (0-{settings.SEED_MAX})")
    parser.add_argument("--no-cache", action="store_true", help="ignore and do not write the cache")


def run_cli(args: argparse.Namespace) -> int:
    """Run ``python -m facekit data``: ingest, then print counts and skipped files."""
    faces = data.load_faces(args.source, size=args.size, align=args.align, limit=args.limit, seed=args.seed,
                       cache=not args.no_cache)
    print(f"{len(faces)} faces from {args.source} ({faces.align} alignment, {faces.size}px)"
          + (" [from cache]" if faces.from_cache else ""))
    print(faces.counts().to_string(index=False))
    skipped = faces.skipped
    if len(skipped):
        print(f"{len(skipped)} inputs skipped:")
        for _, row in skipped.head(20).iterrows():
            print(f"  {row['path']}: {row['reason']}")
    if faces.cache_dir:
        print(f"manifest: {faces.cache_dir / 'manifest.csv'}")
    return 0
