"""Track outputs: what a video run keeps per track, fused faces, meshes, the gallery and track files.

:class:`TrackRecord` is what :mod:`facekit.video` keeps about one track (a box per frame, its best
crop, raw crops for fusion, its identity label). When the run ends :func:`fuse_records` fuses each
track's raw crops into one face, :func:`mesh_records` meshes it, and :func:`write_tracks` writes
``gallery/track_NNNN*.png``, ``tracks.csv`` and ``tracks.json``, each under a temporary name first.
:func:`track_color` is the colour of a track's box and caption in the annotated video.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from facekit import fusion, mesh
from facekit.errors import ConfigError
from facekit.video_identity import UNKNOWN_LABEL, TrackLabel
from facekit.video_io import write_atomic


@dataclass
class TrackRecord:
    """Everything kept about one track for the outputs (boxes as int16 per frame in its range)."""

    id: int
    first: int
    last: int
    boxes: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)
    best_quality: float = -1.0
    best_frame: int = -1
    best_score: float = 0.0
    best_sharpness: float = 0.0
    best_crop: np.ndarray | None = None
    max_score: float = 0.0
    label: "TrackLabel | None" = None
    track_label: "TrackLabel | None" = None  # the fused track's identity template's decision (template_labels)
    fusion_crops: list = field(default_factory=list)  # [(quality, frame, raw RGB crop, score, side)]
    fused: np.ndarray | None = None  # the fused face (uint8 RGB), when the track was fused
    views: np.ndarray | None = None  # (k,S,S,3) uint8 restorations of the frames fused (learned fusion)
    mesh: dict | None = None  # facekit.mesh.mesh_track_face's result (paths and pose, or "error")
    fusion: dict | None = None  # facekit.fusion.FusionResult.summary() of that fusion


def track_color(i: int) -> tuple[int, int, int]:
    """The BGR colour of track ``i``'s box and caption."""
    hue = (i * 47) % 180
    c = cv2.cvtColor(np.uint8([[[hue, 220, 255]]]), cv2.COLOR_HSV2BGR)[0, 0]
    return int(c[0]), int(c[1]), int(c[2])


IDENTITY_FIELDS = ["identity", "identity_score", "identity_candidate", "identity_crops",
                   "track_identity", "track_identity_score", "track_identity_views"]
MESH_FIELDS = ["mesh", "head_yaw", "head_pitch", "head_roll"]


def _file_safe(name: str) -> str:
    """``name`` with every run of characters unsafe in a file name replaced by ``-``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "x"


FUSION_MAX_SIDE = 32  # fusion is for small faces; larger crops are kept at this side


def fuse_records(records: dict[int, TrackRecord], enhancer_spec: str, device: str = "cpu") -> dict:
    """Fuse each track's kept raw crops into ``record.fused`` (tracks with at least 2 crops).

    The crops are brought to one side (their median, 8-32 px). The learned stage runs when the
    enhancer is a released chain (``model:PATH``) and ``models/fusion/fusion.pt`` exists; otherwise
    the classical multi-frame fusion is the fused face. With the learned stage, ``record.views``
    also gets the single-frame restorations of the frames fused: with the fused face they make the
    track's identity template (:func:`facekit.recognition.track_template`, used by ``identify``).

    Returns:
        ``{"mode": "learned"|"classical"|"off", "tracks": n fused, "ms_per_track": mean time of the
        fusion, "views_ms_per_track": mean time restoring the views}``.
    """
    todo = [r for r in records.values() if len(r.fusion_crops) >= 2]
    if not todo:
        return {"mode": "off", "tracks": 0, "ms_per_track": 0.0}
    restorer = enhancer_spec[len("model:"):] if isinstance(enhancer_spec, str) and \
        enhancer_spec.startswith("model:") else None
    learned = restorer is not None and fusion.default_fusion_model().is_file()
    fuser = fusion.TrackFuser(fusion.FusionConfig(), restorer=restorer if learned else None,
                              model="default" if learned else None, device=device)
    t0 = time.perf_counter()
    views_s = 0.0
    for rec in todo:
        sides = np.array([c[4] for c in rec.fusion_crops], np.float64)
        side = int(np.clip(np.median(np.minimum(sides, FUSION_MAX_SIDE)), 8, FUSION_MAX_SIDE))
        crops = np.stack([cv2.resize(c[2], (side, side), interpolation=cv2.INTER_AREA if c[2].shape[0] > side
                                     else cv2.INTER_CUBIC) for c in rec.fusion_crops])
        try:
            res = fuser(crops, [c[3] for c in rec.fusion_crops], sides)
        except ConfigError:  # no crop registered to the reference: the track keeps its single face
            continue
        rec.fused = res.out
        frames = [rec.fusion_crops[i][1] for i in res.frames]
        rec.fusion = {"frames": frames, "used": int(res.registration.used.sum()), "side": side}
        if fuser.restorer is not None:
            tv = time.perf_counter()
            # the reference's restoration is the fusion's own; a crop that failed to register is left out
            others = np.asarray(res.frames)[1:][res.registration.used[1:]]
            views = [res.single[None]]
            if len(others):
                views.append(fusion.to_uint8(fusion.restore_crops(fuser.restorer, crops[others])))
            rec.views = np.concatenate(views)
            views_s += time.perf_counter() - tv
    ms = 1000.0 * (time.perf_counter() - t0 - views_s) / len(todo)
    return {"mode": "learned" if learned else "classical", "tracks": len(todo), "ms_per_track": round(ms, 2),
            "views_ms_per_track": round(1000.0 * views_s / len(todo), 2)}


def mesh_records(records: dict[int, TrackRecord], out_dir: Path) -> dict:
    """Mesh each track's fused face (else its best face) into ``out_dir/meshes`` (``record.mesh``).

    Raises:
        MeshDependencyError: MediaPipe is not installed (the message says how to install it).
    """
    done = failed = 0
    for tid, rec in sorted(records.items()):
        face = rec.fused if rec.fused is not None else rec.best_crop
        if face is None:
            continue
        rec.mesh = mesh.mesh_track_face(face, out_dir / "meshes", f"track_{tid:04d}")
        failed += "error" in rec.mesh
        done += "error" not in rec.mesh
    return {"meshed": done, "no_face": failed}


def gallery_image(img: np.ndarray, size: int) -> np.ndarray:
    """A face as the run's gallery stores it: ``(size,size,3) uint8``, resized by bicubic."""
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC)


def template_labels(records: dict[int, TrackRecord], identifier, gallery_size: int = 128) -> int:
    """Set ``record.track_label`` of every fused track from its identity template
    (:meth:`facekit.video_identity.TrackIdentifier.template_label`), on the images the gallery
    files will hold, so that ``facekit identify`` on the run's folder decides the same.

    Returns:
        How many tracks were labelled.
    """
    n = 0
    for rec in records.values():
        if rec.fused is None:
            continue
        views = None if rec.views is None else np.stack([gallery_image(v, gallery_size) for v in rec.views])
        rec.track_label = identifier.template_label(gallery_image(rec.fused, gallery_size), views)
        n += 1
    return n


def write_tracks(records: dict[int, TrackRecord], out_dir: Path, gallery_size: int = 128,
                 labelled: bool = False, meshed: bool = False) -> dict[str, str]:
    """Write ``gallery/track_NNNN.png``, ``tracks.csv`` (one row per track) and ``tracks.json``.

    ``tracks.json`` stores each track as its frame range and one ``[x, y, w, h]`` per frame of the
    range (``null`` where the face was not visible), which is compact and easy to replay. A fused
    track with views (:func:`fuse_records`) also gets ``gallery/track_NNNN_views/NN.png`` and their
    folder under ``views`` in ``tracks.json``.

    Args:
        meshed: tracks were meshed (:func:`mesh_records`): add :data:`MESH_FIELDS` (mesh OBJ, head pose).
        labelled: tracks were matched against a gallery: add :data:`IDENTITY_FIELDS` to both files
            (score empty / null when a track had no usable crop; ``track_identity`` empty for a
            track that was not fused) and name gallery images ``track_NNNN_<identity>_<score>.png``.
    """
    gallery = out_dir / "gallery"
    gallery.mkdir(exist_ok=True)
    rows, tracks_json = [], []
    for tid in sorted(records):
        rec = records[tid]
        lab = rec.label or TrackLabel(UNKNOWN_LABEL, float("nan"), "", 0)
        ident = {}
        if labelled:
            score = None if math.isnan(lab.score) else round(lab.score, 4)
            tl = rec.track_label
            ident = {"identity": lab.identity, "identity_score": score, "identity_candidate": lab.candidate,
                     "identity_crops": lab.crops, "track_identity": tl.identity if tl else "",
                     "track_identity_score": round(tl.score, 4) if tl else None,
                     "track_identity_views": tl.crops - 1 if tl else 0}
        gfile = ""
        if rec.best_crop is not None:
            img = gallery_image(rec.best_crop, gallery_size)
            stem = f"track_{tid:04d}"
            if labelled:
                stem += f"_{_file_safe(lab.identity)}" + ("" if math.isnan(lab.score) else f"_{lab.score:.2f}")
            gpath = gallery / f"{stem}.png"
            ok, buf = cv2.imencode(".png", img[:, :, ::-1])
            if ok:
                write_atomic(gpath, buf.tobytes())
            gfile = str(gpath.relative_to(out_dir))
        ffile = ""
        if rec.fused is not None:
            img = gallery_image(rec.fused, gallery_size)
            fpath = gallery / f"track_{tid:04d}_fused.png"
            ok, buf = cv2.imencode(".png", img[:, :, ::-1])
            if ok:
                write_atomic(fpath, buf.tobytes())
                ffile = str(fpath.relative_to(out_dir))
        fused = {"fused": ffile, "fused_frames": rec.fusion["used"] if rec.fusion else 0}
        vdir = ""
        if rec.views is not None and ffile:
            folder = gallery / f"track_{tid:04d}_views"
            folder.mkdir(exist_ok=True)
            for j, view in enumerate(rec.views):
                ok, buf = cv2.imencode(".png", gallery_image(view, gallery_size)[:, :, ::-1])
                if ok:
                    write_atomic(folder / f"{j:02d}.png", buf.tobytes())
            vdir = str(folder.relative_to(out_dir))
        if meshed:
            ok = rec.mesh is not None and "error" not in rec.mesh
            pose = rec.mesh["pose"] if ok else {}
            fused.update({"mesh": str(Path(rec.mesh["obj"]).relative_to(out_dir)) if ok else "",
                          **{f"head_{k}": round(float(pose[k]), 1) if ok else "" for k in ("yaw", "pitch", "roll")}})
        rows.append({"track_id": tid, "first_frame": rec.first, "last_frame": rec.last, "frames": len(rec.boxes),
                     "max_score": round(rec.max_score, 4), "best_frame": rec.best_frame,
                     "best_score": round(rec.best_score, 4), "best_sharpness": round(rec.best_sharpness, 2),
                     "gallery": gfile, **fused, **ident})
        boxes = [list(rec.boxes[f]) if f in rec.boxes else None for f in range(rec.first, rec.last + 1)]
        tracks_json.append({"id": tid, "first": rec.first, "last": rec.last, "best_frame": rec.best_frame,
                            "gallery": gfile, **fused, "views": vdir, **ident, "boxes": boxes})
    fields = ["track_id", "first_frame", "last_frame", "frames", "max_score", "best_frame", "best_score",
              "best_sharpness", "gallery", "fused", "fused_frames"] + (MESH_FIELDS if meshed else []) \
        + (IDENTITY_FIELDS if labelled else [])
    text = io.StringIO(newline="")
    wr = csv.DictWriter(text, fieldnames=fields)
    wr.writeheader()
    wr.writerows(rows)
    write_atomic(out_dir / "tracks.csv", text.getvalue().encode())
    write_atomic(out_dir / "tracks.json", json.dumps({"box_format": "xywh", "tracks": tracks_json},
                                                      separators=(",", ":")))
    return {"tracks_csv": str(out_dir / "tracks.csv"), "tracks_json": str(out_dir / "tracks.json"),
            "gallery": str(gallery)}
