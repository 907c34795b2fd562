"""Benchmark facekit.mesh against issue 23's targets; prints one JSON object.

1. Landmark stability: on the clean 64 px crop (margin 0.15) of each ORL (people 1-20) and
   UTKFace eval face, and on its restoration from 16 px (area downscale, then the released
   ``chain:default``; bicubic beside it), the mean distance of the 468 landmarks from the clean
   face's, over the clean face's inter-ocular distance. Target: <= 0.05.
2. Frontalised vs raw posed probes (synthetic poses) (clean 112 px, and restored 16->64 px): Pins (105 people, 4 enrolled photos each, 3 probes) and ORL
   people 1-20 (2 enrolled, 8 probes), 112 px SFace crops. Each probe is turned by
   ``augment.pose_warp`` at yaw +-{0, 15, 30, 45} (sign drawn per probe, seeded). Rank-1 of the
   raw posed crop, of the raw crop re-aligned on its own landmarks (the stronger 2D baseline),
   and of the frontalised crop (with and without the shape normalisation). Target: frontalised
   rank-1 at yaw 30-45 >= 1.2x raw.
3. Frontalisation on real turned heads (``real_pose``): Pins photos at measured yaw 30-45
   against each person's most frontal photos; see :func:`real_pose`.
4. Speed: ms per face of ``build_mesh`` (landmarks + mesh + pose) on a 64 px crop, and of
   ``frontalise`` on a 192 px one, with the process at --threads and the landmark model at
   --model-threads (default 1: see facekit.mesh.LandmarkModel).

    PYTHONPATH=. python benchmarks/bench_mesh.py [--threads 2] [--limit N]
        [--sections speed,stability,recognition,real_pose]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import cv2
import numpy as np

from facekit import augment
from facekit import mesh as M
from facekit import ood
from facekit import recognition as R
from facekit.faces import align_face

YAWS = (0, 15, 30, 45)


def _u8(x) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255.0 + 0.5).astype(np.uint8)


def landmark_stability(data, model, methods=("chain:default", "bicubic")) -> dict:
    """Mean/median normalised landmark error of restored 16->64 vs clean 64 px faces, per source."""
    from facekit.identify import restore_crops

    out = {}
    for source in ("orl", "utkface"):
        faces = data.probes.get(source)
        if not faces:
            out[source] = {"skipped": data.skipped.get(source, "no faces")}
            continue
        clean = np.stack([align_face(f.image, f.landmarks, 64, 0.15) for f in faces])
        ref, keep = [], []
        for i, c in enumerate(clean):
            try:
                ref.append(M.face_landmarks(c, model))
                keep.append(i)
            except M.NoFaceError:
                pass
        res = {"faces": len(clean), "clean_found": len(keep)}
        for method in methods:
            restored = restore_crops(clean[keep], method, scale=4, size=64)
            errs, missed = [], 0
            for r, lm_ref in zip(restored, ref):
                try:
                    errs.append(M.landmark_error(M.face_landmarks(r, model), lm_ref))
                except M.NoFaceError:
                    missed += 1
            e = np.asarray(errs)
            res[method] = {"mean": round(float(e.mean()), 4), "median": round(float(np.median(e)), 4),
                           "p90": round(float(np.percentile(e, 90)), 4),
                           "share_within_5pct": round(float(np.mean(e <= 0.05)), 3), "not_found": missed}
        out[source] = res
    return out


def recognition(data, model, seed: int = 0, conditions=("clean", "restored")) -> dict:
    """Rank-1 per yaw of raw, re-aligned and frontalised probes against frontal galleries.

    ``clean``: the posed 112 px crop itself; ``restored``: the posed crop shrunk to 16 px (area)
    and restored to 64 px by ``chain:default`` before anything else (the CCTV case).
    """
    out = {}
    for condition in conditions:
        out[condition] = _recognition(data, model, seed, condition)
    return out


def _recognition(data, model, seed: int, condition: str) -> dict:
    from facekit.identify import restore_crops

    rng = np.random.default_rng(seed)
    out = {}
    for source in ("pins", "orl"):
        faces = data.probes.get(source)
        if not faces or source not in data.gallery:
            out[source] = {"skipped": data.skipped.get(source, "no gallery")}
            continue
        g_crops, g_ids = data.gallery[source]
        g_emb = R.embed(g_crops, "sface", 0.15)
        ids = np.array([f.identity for f in faces], dtype=object)
        crops = np.stack([align_face(f.image, f.landmarks, 112, 0.15) for f in faces])
        res = {"people": int(len(set(g_ids))), "probes": len(faces)}
        for yaw in YAWS:
            signs = rng.choice([-1.0, 1.0], size=len(crops))
            posed = np.stack([_u8(augment.pose_warp(c, yaw=s * yaw)) for c, s in zip(crops, signs)])
            if condition == "restored":
                small = np.stack([cv2.resize(p, (64, 64), interpolation=cv2.INTER_AREA) for p in posed])
                posed = restore_crops(small, "chain:default", scale=4, size=64)
            variants, missed = _probe_variants(posed, model)
            res[f"no_landmarks_yaw{yaw}"] = missed
            res[f"yaw{yaw}"] = {k: round(R.rank1(R.embed(np.stack(v), "sface", 0.15), ids, g_emb, g_ids), 4)
                                for k, v in variants.items()}
        hi = [res[f"yaw{y}"] for y in YAWS if y >= 30]
        res["yaw30_45"] = {k: round(float(np.mean([h[k] for h in hi])), 4) for k in hi[0]}
        out[source] = res
    return out


def _probe_variants(probes, model) -> tuple[dict[str, np.ndarray], int]:
    """The four recognition crops of each probe: raw, re-aligned on its own landmarks, frontalised.

    Returns:
        ``({variant: (N,112,112,3) uint8}, probes without landmarks)``; such a probe stays as it
        is (at 112 px) in every variant.
    """
    variants = {"raw": [], "raw_realigned": [], "frontal": [], "frontal_3d_only": []}
    missed = 0
    for p in probes:
        up = p if p.shape[0] == 112 else cv2.resize(p, (112, 112), interpolation=cv2.INTER_CUBIC)
        try:
            variants["raw_realigned"].append(M.frontal_crop(p, model=model, frontal=False))
            variants["frontal"].append(M.frontal_crop(p, model=model))
            variants["frontal_3d_only"].append(M.frontal_crop(p, model=model, normalise_shape=False))
        except M.NoFaceError:
            missed += 1
            for k in ("raw_realigned", "frontal", "frontal_3d_only"):
                variants[k].append(up)
        variants["raw"].append(up)
    return {k: np.stack(v) for k, v in variants.items()}, missed


def real_pose(model, yaw_range=(30.0, 45.0), frontal_max: float = 10.0, gallery_per_person: int = 3,
              limit: int | None = None, conditions=("clean", "restored")) -> dict:
    """Frontalisation on real turned heads: Pins photos whose head yaw is in ``yaw_range``.

    ``augment.pose_warp`` turns a flat picture, which the landmark model reads as a narrower
    frontal face (section 2). Pins' web photos hold real turned heads: each photo's yaw is
    measured by :func:`facekit.mesh.head_pose` on its 5-point-aligned 112 px crop (YuNet points);
    per person the ``gallery_per_person`` most frontal photos with ``|yaw| <= frontal_max`` are
    enrolled, and every photo with ``|yaw|`` in ``yaw_range`` of an enrolled person is a probe.
    Probes are scored as in section 2 (raw, re-aligned, frontalised), clean and restored from
    16 px, with a paired-bootstrap 95% interval of the frontal / raw rank-1 ratio.
    """
    import pandas as pd
    from facekit.faces import FaceDetector
    from facekit.identify import restore_crops
    from facekit.imageio import read_image

    root = ood.shared_data_dir() / "pins-105"
    if not (root / "labels.csv").is_file():
        return {"skipped": f"{root} is absent (the shared evaluation data sit beside the project in ../shared/)"}
    table = pd.read_csv(root / "labels.csv").sort_values(["identity", "file"])
    if limit:
        table = table[table["identity"].isin(sorted(table["identity"].unique())[:limit])]
    detector = FaceDetector(score_threshold=0.5)
    crops, ids, yaws, undetected = [], [], [], 0
    for file, person in zip(table["file"], table["identity"]):
        img = read_image(root / file)
        dets = detector.detect(img)
        if not dets:
            undetected += 1
            continue
        crop = align_face(img, dets[0].landmarks, 112, 0.15)
        try:
            lm = M.face_landmarks(cv2.resize(crop, (M.LANDMARK_SIDE,) * 2, interpolation=cv2.INTER_CUBIC), model)
        except M.NoFaceError:
            undetected += 1
            continue
        crops.append(crop)
        ids.append(person)
        yaws.append(M.head_pose(lm)["yaw"])
    crops, ids, ayaw = np.stack(crops), np.asarray(ids, dtype=object), np.abs(np.asarray(yaws))
    gallery = []
    for person in sorted(set(ids)):
        mine = np.flatnonzero((ids == person) & (ayaw <= frontal_max))
        gallery += list(mine[np.argsort(ayaw[mine], kind="stable")][:gallery_per_person])
    enrolled = set(ids[gallery])
    probes = [i for i in range(len(ids)) if i not in set(gallery) and yaw_range[0] <= ayaw[i] <= yaw_range[1]
              and ids[i] in enrolled]
    out = {"photos": len(table), "faces": len(ids), "undetected": undetected,
           "yaw_histogram": {f"{lo}-{hi}": int(((ayaw > lo) & (ayaw <= hi)).sum()) for lo, hi in
                             ((0, 10), (10, 20), (20, 30), (30, 45), (45, 90))},
           "gallery_photos": len(gallery), "gallery_people": len(enrolled), "probes": len(probes)}
    if not probes:
        return out
    g_emb = R.embed(crops[gallery], "sface", 0.15)
    p_ids = ids[probes]
    for condition in conditions:
        p = crops[probes]
        if condition == "restored":
            small = np.stack([cv2.resize(c, (64, 64), interpolation=cv2.INTER_AREA) for c in p])
            p = restore_crops(small, "chain:default", scale=4, size=64)
        variants, missed = _probe_variants(p, model)
        hits = {k: R.rank1_hits(R.embed(v, "sface", 0.15), p_ids, g_emb, ids[gallery]) for k, v in variants.items()}
        res = {k: round(float(h.mean()), 4) for k, h in hits.items()}
        res["no_landmarks"] = missed
        res["frontal_over_raw"] = round(res["frontal"] / max(res["raw"], 1e-9), 3)
        res["frontal_over_raw_ci95"] = [round(v, 3) for v in ood.paired_ratio_ci(hits["frontal"], hits["raw"])]
        out[condition] = res
    return out


def speed(data, model, n: int = 60) -> dict:
    """Median ms per face of build_mesh on 64 px crops and of frontalise at 192 px."""
    faces = [f for src in ("orl", "utkface", "pins") for f in data.probes.get(src, [])][:n]
    crops = [align_face(f.image, f.landmarks, 64, 0.15) for f in faces]
    for c in crops[:3]:  # warm-up
        M.build_mesh(c, model=model)
    t_mesh, t_front, t_export = [], [], []
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        for i, c in enumerate(crops):
            t = time.perf_counter()
            try:
                m = M.build_mesh(c, model=model)
            except M.NoFaceError:
                continue
            t_mesh.append(time.perf_counter() - t)
            big = cv2.resize(c, (192, 192), interpolation=cv2.INTER_CUBIC)
            mb = M.build_mesh(big, landmarks=m.vertices * 3.0, model=model)
            t = time.perf_counter()
            M.frontalise(mb)
            t_front.append(time.perf_counter() - t)
            t = time.perf_counter()
            M.save_mesh(m, tmp, f"f{i}")
            t_export.append(time.perf_counter() - t)
    ms = lambda v: round(float(np.median(v)) * 1000.0, 2)  # noqa: E731
    return {"faces": len(t_mesh), "mesh_ms_median": ms(t_mesh), "mesh_ms_p90": round(float(np.percentile(t_mesh, 90)) * 1000, 2),
            "frontalise_192_ms_median": ms(t_front), "export_obj_ply_glb_ms_median": ms(t_export)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2, help="torch/OpenCV threads of the process")
    ap.add_argument("--model-threads", type=int, default=1, help="the landmark model's XNNPACK threads")
    ap.add_argument("--limit", type=int, default=None, help="faces (UTKFace) / people (Pins, ORL) per source")
    ap.add_argument("--sections", default="speed,stability,recognition,real_pose",
                    help="comma-separated subset of speed, stability, recognition, real_pose")
    ap.add_argument("--conditions", default="clean,restored", help="recognition probes: clean, restored")
    args = ap.parse_args()
    from facekit.settings import set_threads

    set_threads(args.threads)
    model = M.LandmarkModel(threads=args.model_threads)
    t0 = time.time()
    sections = set(args.sections.split(","))
    sources = {"orl"} | ({"utkface"} if sections & {"speed", "stability"} else set()) \
        | ({"pins"} if "recognition" in sections else set())
    data = ood.load_ood_data(sources=tuple(sorted(sources)), limit=args.limit, progress=False)
    result = {"threads": args.threads, "model_threads": args.model_threads, "limit": args.limit, "skipped_sources": data.skipped,
              "targets": {"landmark_error_max": 0.05, "frontal_rank1_gain_min": 1.2, "mesh_ms_max": 30.0}}
    if "speed" in sections:
        result["speed"] = speed(data, model)
    if "stability" in sections:
        result["landmark_stability"] = landmark_stability(data, model)
    if "recognition" in sections:
        result["recognition"] = recognition(data, model, conditions=tuple(args.conditions.split(",")))
    if "real_pose" in sections:
        result["real_pose"] = real_pose(model, limit=args.limit, conditions=tuple(args.conditions.split(",")))
    result["seconds"] = round(time.time() - t0, 1)
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
