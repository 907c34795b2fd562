"""``python -m facekit mesh``: a 3D face mesh, head pose and a frontal view of the face in an image."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from facekit import errors, imageio, settings
from facekit import mesh as face_mesh  # run_cli has a local called mesh


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``facekit mesh``."""
    parser.add_argument("image", help="a face photo, frame or face crop (any format facekit reads)")
    parser.add_argument("out", help="output folder: NAME.obj/.mtl/.png, NAME.ply, NAME.glb, NAME_frontal.png, NAME.json")
    parser.add_argument("--formats", default=",".join(face_mesh.FORMATS),
                        help=f"comma-separated mesh formats out of {', '.join(face_mesh.FORMATS)} (default: all)")

    parser.add_argument("--max-faces", type=settings.int_arg(1, 100), default=1,
                        help="faces per image, by detector score (default 1)")
    parser.add_argument("--no-frontal", action="store_true", help="skip the frontal rendering")


def run_cli(args: argparse.Namespace) -> int:
    """``facekit mesh IMAGE OUT``: mesh, pose and frontal view of the faces in one image."""
    formats = tuple(f.strip().lower() for f in args.formats.split(",") if f.strip())
    bad = [f for f in formats if f not in face_mesh.FORMATS]
    if bad or not formats:
        raise errors.ConfigError(f"--formats {args.formats!r}: choose from {', '.join(face_mesh.FORMATS)}")
    if args.max_faces < 1:
        raise errors.ConfigError(f"--max-faces {args.max_faces}: must be at least 1")
    src = Path(args.image)
    if not src.is_file():
        raise errors.ConfigError(f"{src}: no such image file")
    out = Path(args.out)
    # the mesh's files are named after the image (STEM.png is its texture), so an image in the
    # output folder with one of those names would be replaced by them
    written = {f"{src.stem}{ext}" for ext in (".obj", ".mtl", ".png", ".ply", ".glb", ".json")}
    if out.resolve() == src.parent.resolve() and src.name in written:
        raise errors.ConfigError(f"{out}: writing the mesh there would overwrite the input {src.name} "
                                 f"(its texture is {src.stem}.png); give another output folder")
    settings.check_writable(out, "output folder", "; give another output folder")
    face_mesh.require_mediapipe()  # say how to install it before reading anything
    img = imageio.read_image(src)
    crops = face_mesh.face_crops(img, args.max_faces, source=str(src))
    summary = {"image": str(src), "faces": []}
    for i, crop in enumerate(crops):
        stem = src.stem if len(crops) == 1 else f"{src.stem}_face{i}"
        t0 = time.perf_counter()
        try:
            mesh = face_mesh.build_mesh(crop, source=str(src))
        except face_mesh.NoFaceError:
            if len(crops) == 1:
                raise
            continue
        ms = (time.perf_counter() - t0) * 1000.0
        paths = face_mesh.save_mesh(mesh, args.out, stem, formats)
        entry = {"stem": stem, "pose": mesh.pose, "mesh_ms": round(ms, 1),
                 "files": {k: str(p) for k, p in paths.items()}}
        if not args.no_frontal:
            front, _ = face_mesh.frontalise(mesh)
            entry["files"]["frontal"] = str(face_mesh._write_png(Path(args.out) / f"{stem}_frontal.png", front))
        summary["faces"].append(entry)
        pose = ", ".join(f"{k} {v:+.1f}" for k, v in mesh.pose.items())
        print(f"{stem}: {len(mesh.vertices)} vertices, {len(mesh.triangles)} triangles; pose (deg) {pose}; "
              f"{ms:.0f} ms -> {args.out}")
    if not summary["faces"]:
        raise face_mesh.NoFaceError(f"{src}: the detector found {len(crops)} face box(es) but the landmark model no face")
    (Path(args.out) / f"{src.stem}.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0
