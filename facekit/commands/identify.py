"""``python -m facekit identify``: match probe faces (or a video run's tracks) against a gallery of known people."""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import numpy as np

from facekit import settings
from facekit.errors import ConfigError, DataSourceError, OutputError

DEFAULT_NET = "sface"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m facekit identify`` (values range-checked here: a bad one exits 2)."""
    parser.add_argument("gallery", help="gallery folder (sub-folder or name_ prefix per person) or a saved .npz")
    parser.add_argument("probes", help="probe image file or folder (photos or face crops), or a `facekit video` "
                                       "output folder (one face per track: the fused face where there is one, "
                                       "matched together with the restored frames it fused)")
    parser.add_argument("--top-k", type=settings.int_arg(1, 1000), default=5, help="candidates per probe (1-1000, default 5)")
    parser.add_argument("--threshold", type=_threshold_arg, default="auto",
                        help="accept threshold on cosine similarity in [-1, 1], or 'auto' (the gallery's, else "
                             "calibrated on ORL at FAR 1%%)")
    parser.add_argument("--calibration", default="pair", choices=("pair", "open-set"),
                        help="with --threshold auto: FAR 1%% over ORL impostor pairs (pair) or over ORL "
                             "strangers against this gallery (open-set, stricter; gallery people must not be "
                             "ORL faces under other names)")
    parser.add_argument("--restore", nargs="?", const="auto", default=None, metavar="METHOD",
                        help="restore probes before matching; METHOD is a facekit.baselines name "
                             "(default: the released model, chain:default or models/*.pt)")
    parser.add_argument("--scale", type=settings.int_arg(1, 8), default=4, help="restoration scale (1-8, with --restore)")
    # default None, not DEFAULT_NET: a --net the user gave that differs from a saved gallery's is refused
    parser.add_argument("--net", default=None, choices=settings.RECOGNITION_BACKENDS,
                        help=f"recognition network (default {DEFAULT_NET}; a saved .npz gallery keeps the net it "
                             f"was enrolled with)")
    parser.add_argument("--csv", default=None, help="output CSV (default: data/identify/identify-<time>.csv)")
    parser.add_argument("--save-gallery", default=None, help="write the enrolled gallery to this .npz")
    parser.add_argument("--device", type=settings.device_arg, default="cpu", help="torch device: cpu, cuda, cuda:N or mps")


def _threshold_arg(text: str):
    """argparse ``type=`` of ``--threshold``: ``auto`` or a cosine similarity in [-1, 1] (else exit 2)."""
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        return _threshold(text, None)
    except ConfigError:
        raise argparse.ArgumentTypeError(f"{text!r}: must be 'auto' or a cosine similarity in [-1, 1]") from None


_threshold_arg.__name__ = "threshold"  # argparse names the type in its error message


def _threshold(arg: str, gallery, mode: str = "pair") -> float:
    """The accept threshold: ``arg`` as a number, or ``auto`` (the gallery's, else calibrated now)."""
    if str(arg).lower() == "auto":
        if np.isnan(gallery.threshold):
            gallery.calibrate(mode=mode)
        return gallery.threshold
    try:
        value = float(arg)
    except ValueError:
        raise ConfigError(f"--threshold must be 'auto' or a number, got {arg!r}") from None
    if not -1.0 <= value <= 1.0:  # also refuses NaN
        raise ConfigError(f"--threshold {arg!r}: must be a cosine similarity in [-1, 1]")
    return value


def _csv_path(arg: str | None) -> Path:
    """The output CSV path, checked before any work so a bad one does not waste the matching.

    Args:
        arg: ``--csv`` (None: ``data/identify/identify-<time>.csv``).

    Returns:
        The path to write.

    Raises:
        OutputError: it is a folder, a file stands where a folder above it is needed, or it (or
            the folder it goes in) is not writable.
    """
    out = Path(arg) if arg else settings.DATA_DIR / "identify" / f"identify-{time.strftime('%Y%m%d-%H%M%S')}.csv"
    hint = "; give another --csv path" if arg else "; give a --csv path or set FACEKIT_DATA_DIR"
    if out.is_dir():
        raise OutputError(out, f"--csv names a folder; give a file name (e.g. {out / 'identify.csv'})")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(parent, f"a file is in the way of the CSV {out} (a folder is needed there){hint}")
            break
    settings.check_writable(out.parent, "CSV folder", hint)
    if out.exists() and not os.access(out, os.W_OK):
        raise OutputError(out, f"the CSV file exists and is not writable{hint}")
    return out


def run_cli(args: argparse.Namespace) -> int:
    """Enrol (or load) the gallery, match every probe, print a table and write a CSV."""
    from facekit import identify, imageio, recognition  # torch: ``identify --help`` does not pay its import

    # before the gallery is enrolled: a bad value fails in a second, not after minutes of work
    settings.check_device(args.device, "--device", available=True)
    if not 1 <= int(args.top_k):
        raise ConfigError(f"--top-k {args.top_k}: must be >= 1")
    if str(args.threshold).lower() != "auto":
        _threshold(args.threshold, None)
    out = _csv_path(args.csv)
    gpath = Path(args.gallery)
    if gpath.suffix == ".npz":
        gallery = identify.Gallery.load(gpath, device=args.device)
        if args.net and args.net != gallery.net:
            raise ConfigError(f"--net {args.net}: the gallery {gpath} holds {gallery.net} embeddings, which "
                              f"cannot be matched with {args.net} (leave out --net, or enrol the gallery folder "
                              f"again with --net {args.net})")
    else:
        gallery = identify.Gallery(net=args.net or DEFAULT_NET, device=args.device).enroll(gpath)
    threshold = _threshold(args.threshold, gallery, args.calibration)
    if args.save_gallery:
        print(f"wrote {gallery.save(args.save_gallery)}")
    faces, skipped = identify.read_faces(identify.list_probe_files(args.probes), identify.CROP_SIZE, gallery.margin)
    for p, why in gallery.skipped + skipped:
        print(f"skipped {p}: {why}")
    if not faces:
        raise DataSourceError(f"no readable probe image in {args.probes}")
    crops = np.stack([f.crop for f in faces])
    restored_with = ""
    if args.restore:
        restored_with = identify.default_restore_method() if args.restore == "auto" else args.restore
        crops = identify.restore_crops(crops, restored_with, args.scale, device=args.device)
    emb = gallery.embed(crops)
    # A fused video track is matched by its identity template: the fused face with the
    # restorations of the frames it fused (recognition.track_template).
    views = identify.track_view_folders(args.probes)
    n_views = [0] * len(faces)
    for i, f in enumerate(faces):
        if f.path not in views:
            continue
        track = views[f.path]
        vfaces, vskipped = identify.read_faces(track.files, identify.CROP_SIZE, gallery.margin)
        for p, why in vskipped:
            print(f"skipped {p}: {why}", file=sys.stderr)
        if not vfaces:
            # said aloud: the decision for this track can differ from one with its views
            folder = imageio.printable_path(track.folder)
            why = (f"its views folder {folder} does not exist" if not track.folder.exists() else
                   f"its views folder {folder} is not a folder" if not track.folder.is_dir() else
                   f"its views folder {folder} holds no image" if not track.files else
                   f"no view in {folder} is readable")
            print(f"warning: {track.track}: {why}; matched by its fused face alone", file=sys.stderr)
            continue
        vcrops = np.stack([v.crop for v in vfaces])
        if restored_with:
            vcrops = identify.restore_crops(vcrops, restored_with, args.scale, device=args.device)
        emb[i] = recognition.track_template(emb[i], gallery.embed(vcrops))
        n_views[i] = len(vfaces)
    matches = gallery.match_embeddings(emb, top_k=args.top_k)
    rows = []
    for f, cands, nv in zip(faces, matches, n_views):
        for rank, c in enumerate(cands, 1):
            rows.append({"probe": f.path, "face_detected": f.detected, "rank": rank, "identity": c.identity,
                         "similarity": round(c.similarity, 4), "accepted": bool(c.similarity >= threshold),
                         "restored_with": restored_with, "track_views": nv})
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    except OSError as exc:  # checked before matching, but the disk can still fill up
        raise OutputError(out, f"cannot write the CSV: {exc.strerror or exc}") from None
    print(f"gallery: {len(gallery.people)} people, {len(gallery)} images; net {gallery.net}; "
          f"threshold {threshold:.3f} ({gallery.calibration or 'given'})")
    width = max(len(Path(f.path).name) for f in faces)
    print(f"{'probe':<{width}}  rank  {'identity':<16} similarity  decision")
    for r in rows:
        print(f"{Path(r['probe']).name:<{width}}  {r['rank']:>4}  {r['identity']:<16} {r['similarity']:>10.3f}  "
              f"{'MATCH' if r['accepted'] else '-'}")
    print(f"wrote {out}")
    return 0
