"""``python -m facekit evaluate``: score restorers across lighting, angles and severities, or on the out-of-distribution suite (``--suite ood``)."""

from __future__ import annotations

import argparse
import time

from facekit import augment, data, degrade, ood, settings
from facekit.errors import ConfigError, DataSourceError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m facekit evaluate`` (values range-checked here: a bad one exits 2)."""
    parser.add_argument("--data", default="orl", help="face source (orl, folder:PATH, celeba:PATH)")
    parser.add_argument("--size", type=settings.int_arg(16, 1024), default=64, help="face crop side (16-1024)")
    parser.add_argument("--split", default="test", choices=data.SPLITS, help="split to evaluate")
    parser.add_argument("--methods", default="bicubic,classical",
                        help="comma-separated restorers: bicubic, classical, classical-ref, sharpen, none, realesrgan-x4plus, "
                             "model:PATH, chain:DIR")
    parser.add_argument("--conditions", default=",".join(augment.CONDITIONS), help="comma-separated lighting conditions")
    parser.add_argument("--preset", default="cctv-heavy", help="degradation preset")
    parser.add_argument("--scale", type=settings.int_arg(1, 8), default=4, help="upscaling factor (1-8, divides --size)")
    parser.add_argument("--seed", type=settings.int_arg(0, settings.SEED_MAX), default=0)
    parser.add_argument("--sample-size", type=settings.int_arg(1), default=None,
                        help="evaluate a random subset of this many faces")
    parser.add_argument("--no-angles", action="store_true", help="no head-pose augmentation")
    parser.add_argument("--severities", default="", help="comma-separated sweeps: " + ", ".join(degrade.SEVERITY_SWEEPS))
    parser.add_argument("--no-lpips", action="store_true", help="skip ST-LPIPS")
    parser.add_argument("--no-identity", action="store_true", help="skip identity metrics")
    parser.add_argument("--dlib", action="store_true", help="also score identity with dlib (slower than SFace)")
    parser.add_argument("--device", type=settings.device_arg, default="cpu", help="cpu, cuda, cuda:N or mps")
    parser.add_argument("--batch", type=settings.int_arg(1, 4096), default=32)
    parser.add_argument("--name", type=settings.name_arg, default=None,
                        help="run name (A-Z a-z 0-9 . _ -): results go to DATA_DIR/runs/eval-NAME/ "
                             "(ood suite: DATA_DIR/runs/ood-NAME/)")
    parser.add_argument("--suite", choices=("standard", "ood"), default="standard",
                        help="standard: facekit's own presets on --data; ood: the out-of-distribution suite "
                             "(UTKFace eval, Pins, ORL 1-20, CelebA test slice, facekit.ood_recipe degradations; "
                             "methods default to bicubic,chain:default)")
    parser.add_argument("--limit", type=settings.int_arg(1), default=None,
                        help="ood suite: at most this many faces (UTKFace, CelebA) or people (Pins, ORL) per source")
    parser.add_argument("--quick", action="store_true", help="ood suite: skip the 12/24/32 px and grey low-light cells")
    parser.add_argument("--rank1-draws", type=settings.int_arg(0, 1000), default=None, metavar="N",
                        help="ood suite: degradation draws of the medium cell that the rank-1 targets pool "
                             "(default 10; 0 = the suite's own draw)")
    parser.add_argument("--no-embedding-cache", action="store_true",
                        help="ood suite: do not reuse or store identity embeddings in DATA_DIR/cache/ood-embeddings "
                             "(memoised by the crops' content, so a cached value equals a fresh one)")


def run_cli(args: argparse.Namespace) -> int:
    """Run an evaluation from the command line, write the results and print the condition table."""
    from facekit import evaluate, restorers  # torch: ``evaluate --help`` does not pay its import

    settings.check_device(args.device, "--device", available=True)  # before any data or model loads
    if args.name is not None:
        settings.check_name(args.name, "--name")
    # results go under DATA_DIR/runs: a read-only folder was a traceback after the whole evaluation
    settings.check_writable(settings.DATA_DIR / "runs", "results folder", "; set FACEKIT_DATA_DIR to a writable folder")
    if args.suite == "ood":
        if args.limit is not None and args.limit < 1:
            raise ConfigError(f"--limit must be >= 1, got {args.limit}")
        return run_ood(args)
    if args.size % args.scale:
        raise ConfigError(f"--scale {args.scale}: must divide --size {args.size}")
    faces = data.load_faces(args.data, size=args.size, progress=True)
    test = faces.subset(args.split)
    if len(test) == 0:
        raise DataSourceError(f"{args.data}: the {args.split!r} split is empty")
    methods, skipped = restorers.build_restorers(args.methods, args.scale, args.device,
                                     train_faces=faces.subset("train") if args.split != "train" else None)
    for why in skipped.values():
        print(f"skipped: {why}")
    if not methods:
        raise ConfigError(f"none of the methods {args.methods!r} is available")
    conditions = tuple(c.strip() for c in args.conditions.split(",") if c.strip())
    others = faces.subset("train") if args.split != "train" else None
    config = evaluate.EvalConfig(conditions=conditions, preset=args.preset, scale=args.scale, seed=args.seed,
                                 sample_size=args.sample_size, angles=not args.no_angles,
                                 severities=args.severities or None, batch=args.batch, lpips=not args.no_lpips,
                                 identity=not args.no_identity,
                                 identity_nets=("sface", "dlib") if args.dlib else ("sface",))
    df = evaluate.evaluate(test, methods, config, gallery=others, progress=True, device=args.device)
    df.attrs["skipped_methods"] = skipped
    name = args.name or time.strftime("%Y%m%d-%H%M%S")
    paths = evaluate.save_results(df, evaluate.run_dir(name))
    table = evaluate.summarise(df[df["sweep"] == ""], ["method", "condition"])
    cols = ["method", "condition", "n"] + [m for m in ("psnr", "ssim", "lpips", "id_sface", "detected", "lq_detected")
                                           if m in table]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    for key, path in paths.items():
        print(f"wrote {path}")
    return 0


def run_ood(args: argparse.Namespace) -> int:
    """``python -m facekit evaluate --suite ood``: run, save, print the gain tables and targets."""
    nets = ("sface", "dlib") if not getattr(args, "no_dlib_ood", False) else ("sface",)
    methods = args.methods if args.methods != "bicubic,classical" else "bicubic,chain:default"
    draws = ood.RANK1_DRAWS if getattr(args, "rank1_draws", None) is None else args.rank1_draws
    df, paths = ood.run(methods, args.name or "latest", args.limit, args.quick, seed=args.seed, device=args.device,
                        identity_nets=nets, cache=not getattr(args, "no_embedding_cache", False), rank1_draws_n=draws)
    rank1 = ood.load_rank1_rows(paths["rows"].parent)
    print(f"ood: {df.attrs['embeddings_computed']} embedding batches computed, {df.attrs['embeddings_cached']} from the cache")
    for m in df["method"].unique():
        if m == ood.BASELINE:
            continue
        print(f"\n{m}: PSNR gain over bicubic (dB), source x cell")
        print(ood.gain_table(df, m).to_string(float_format=lambda v: f"{v:+.2f}"))
        print(f"{m}: SFace identity-margin gain over bicubic")
        print(ood.gain_table(df, m, "id_sface_margin").to_string(float_format=lambda v: f"{v:+.3f}"))
        print(ood.targets_table(ood.check_targets(df, m, rank1_rows=rank1)).to_string(index=False))
    for key, path in paths.items():
        print(f"wrote {path}")
    return 0
