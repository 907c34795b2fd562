"""``python -m facekit fuse``: fuse the crops of one face track, or train / export the learned stage.

Fusing is runtime (:mod:`facekit.fusion`); ``--train`` and ``--export`` are training
(:mod:`facekit.fusion_train`), so the command sits above both.
"""

from __future__ import annotations

from pathlib import Path

from facekit import fusion
from facekit.errors import ConfigError
from facekit.settings import check_device, int_arg


def add_arguments(parser) -> None:
    """Arguments of ``python -m facekit fuse``."""
    parser.add_argument("input", nargs="?", help="a folder of face crops of one person, or a video clip of one face")
    parser.add_argument("output", nargs="?", help="output folder (fused.png, single.png, classical.png, fusion.json)")
    parser.add_argument("--size", type=int_arg(8, 128), default=None,
                        help="crop side the crops are brought to (default: their median side, 8-64)")
    parser.add_argument("--k", type=int_arg(1, 64), default=fusion.FusionConfig.k, help="most crops fused (best first)")
    parser.add_argument("--restorer", default="default", help="single-frame restorer chain folder (default: models/default)")
    parser.add_argument("--model", default="default", help="learned fusion weights (default: models/fusion/fusion.pt)")
    parser.add_argument("--no-learned", action="store_true", help="classical multi-frame fusion only")
    parser.add_argument("--no-mirror", action="store_true",
                        help="one pass of the learned stage (default: averaged with its mirrored pass, "
                             "+0.13 dB for ~3 ms more per track)")
    parser.add_argument("--every", type=int_arg(1, 1000), default=1, help="clip input: use every N-th frame")
    parser.add_argument("--max-frames", type=int_arg(1, 100000), default=300, help="clip input: most frames read")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backend", choices=fusion.FUSION_BACKENDS, default="auto",
                        help="how the networks run: auto (ONNX Runtime on a CPU where installed), torch or onnx")
    parser.add_argument("--train", metavar="CONFIG",
                        help="train the learned stage from a config (released: configs/fusion/fusion-gpu-a.yaml)")
    parser.add_argument("--resume", action="store_true", help="with --train: continue the run")
    parser.add_argument("--export", nargs=2, metavar=("RUN", "DEST"), help="write a run's weights as a fusion model")


def run_cli(args) -> int:
    """``python -m facekit fuse``: fuse one person's crops or clip; or train / export the learned stage."""
    if args.train or args.export:
        from facekit import fusion_train  # torch: ``fuse --help`` and fusing do not pay its import here

    if args.train:
        out = fusion_train.train_fusion(fusion_train.FusionTrainConfig.from_yaml(args.train), resume=args.resume)
        print(f"fusion run: {out}")
        return 0
    if args.export:
        print(f"fusion model: {fusion_train.export(*args.export)}")
        return 0
    if not args.input or not args.output:
        raise ConfigError("fuse needs INPUT (a folder of crops or a clip) and OUTPUT (a folder)")
    src = Path(args.input)
    if not src.exists():
        raise ConfigError(f"{src}: no such file or folder")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: output is an existing file; give a folder for fused.png and the rest")
    if src.is_dir() and out.resolve() == src.resolve():
        raise ConfigError(f"{out}: the output folder is the crops folder: its results would be read as crops on "
                          f"the next run; give another folder")
    device = check_device(args.device, "--device", available=True)
    scores = sides = None
    if src.is_dir():
        crops, names = fusion.crops_from_folder(src, args.size)
    elif src.suffix.lower() in fusion.VIDEO_SUFFIXES:
        crops, names, scores, sides = fusion.crops_from_clip(src, args.size, args.every, args.max_frames)
    else:
        raise ConfigError(f"{src}: expected a folder of crops or a video clip ({', '.join(fusion.VIDEO_SUFFIXES)})")
    # One track, not a stream: the mirrored pass's few milliseconds buy quality here.
    fuser = fusion.TrackFuser(fusion.FusionConfig(k=args.k, mirror=not args.no_mirror), restorer=args.restorer,
                       model=None if args.no_learned else args.model, device=device, backend=args.backend)
    result = fuser(crops, scores, sides)
    paths = fusion.write_fusion(result, crops, out, names, fuser.config)
    used = int(result.registration.used.sum())
    print(f"fused {used} of {len(crops)} crops ({crops.shape[1]} px, reference {names[result.reference]}) -> "
          f"{paths['fused']}")
    return 0
