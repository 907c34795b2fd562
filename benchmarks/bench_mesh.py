"""Benchmark facekit.mesh against issue 23's targets; prints one JSON object.

1. Landmark stability: on the clean 64 px crop (margin 0.15) of each ORL (people 1-20) and
   UTKFace eval face, and on its restoration from 16 px (area downscale, then the released
   ``chain:default``; bicubic beside it), the mean distance of the 468 landmarks from the clean
   face's, over the clean face's inter-ocular distance. Target: <= 0.05.
2. Frontalised vs raw posed probes (clean 112 px, and restored 16->64 px): Pins (105 people, 4 enrolled photos each, 3 probes) and ORL
   people 1-20 (2 enrolled, 8 probes), 112 px SFace crops. Each probe is turned by
   ``augment.pose_warp`` at yaw +-{0, 15, 30, 45} (sign drawn per probe, seeded). Rank-1 of the
   raw posed crop, of the raw crop re-aligned on its own landmarks (the stronger 2D baseline),
   and of the frontalised crop (with and without the shape normalisation). Target: frontalised
   rank-1 at yaw 30-45 >= 1.2x raw.
3. Speed: ms per face of ``build_mesh`` (landmarks + mesh + pose) on a 64 px crop, and of
   ``frontalise`` on a 192 px one, with the process at --threads and the landmark model at
   --model-threads (default 1: see facekit.mesh.LandmarkModel).

    PYTHONPATH=. python benchmarks/bench_mesh.py [--threads 2] [--limit N] [--sections speed,stability,recognition]
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
            variants = {"raw": [], "raw_realigned": [], "frontal": [], "frontal_3d_only": []}
            missed = 0
            for p in posed:
                try:
                    variants["raw_realigned"].append(M.frontal_crop(p, model=model, frontal=False))
                    variants["frontal"].append(M.frontal_crop(p, model=model))
                    variants["frontal_3d_only"].append(M.frontal_crop(p, model=model, normalise_shape=False))
                except M.NoFaceError:  # no landmarks: the probe stays as it is (at 112 px) in every variant
                    missed += 1
                    for k in ("raw_realigned", "frontal", "frontal_3d_only"):
                        variants[k].append(cv2.resize(p, (112, 112), interpolation=cv2.INTER_CUBIC))
                variants["raw"].append(cv2.resize(p, (112, 112), interpolation=cv2.INTER_CUBIC)
                                       if p.shape[0] != 112 else p)
            res[f"no_landmarks_yaw{yaw}"] = missed
            res[f"yaw{yaw}"] = {k: round(R.rank1(R.embed(np.stack(v), "sface", 0.15), ids, g_emb, g_ids), 4)
                                for k, v in variants.items()}
        hi = [res[f"yaw{y}"] for y in YAWS if y >= 30]
        res["yaw30_45"] = {k: round(float(np.mean([h[k] for h in hi])), 4) for k in hi[0]}
        out[source] = res
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
    ap.add_argument("--sections", default="speed,stability,recognition",
                    help="comma-separated subset of speed, stability, recognition")
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
    result["seconds"] = round(time.time() - t0, 1)
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
