"""Benchmark facekit.recognition on ORL: rank-1, TAR@FAR, torch-vs-OpenCV SFace agreement, speeds.

Prints one JSON object. ORL: 40 people x 10 faces, 64-px crops (margin 0.15); images 1-5 of each
person are the gallery, 6-10 the probes. Degraded probes: 8x (or 4x) area downscale + Gaussian
noise (sigma 12/255, or 5/255) + bicubic upscale back to 64 px.

    PYTHONPATH=. python benchmarks/bench_recognition.py [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import time

import cv2
import numpy as np
import torch

from facekit import recognition as R
from facekit.data import load_faces


def degrade(crops, factor=8, noise=12.0, seed=0):
    rng = np.random.default_rng(seed)
    s = crops.shape[1]
    out = []
    for c in crops:
        small = cv2.resize(c, (s // factor, s // factor), interpolation=cv2.INTER_AREA).astype(np.float32)
        small = np.clip(small + rng.normal(0, noise, small.shape), 0, 255).astype(np.uint8)
        out.append(cv2.resize(small, (s, s), interpolation=cv2.INTER_CUBIC))
    return np.stack(out)


def timed(fn, *a, repeat=2):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn(*a)
        best = min(best, time.perf_counter() - t)
    return out, best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-dlib", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    faces = load_faces("orl", size=64, align="landmarks", progress=False)
    ids = faces.identity
    num = np.array([int(p.replace("\\", "/").split("/")[-1].split(".")[0]) for p in faces.paths])
    g, p = num <= 5, num > 5
    bad = degrade(faces.images[p])
    res: dict = {"threads": args.threads, "n_gallery": int(g.sum()), "n_probes": int(p.sum()),
                 "note": "2-core machine shared with other jobs: timings are noisy"}

    arc = R.to_arcface_112(faces.images)
    cv = R.SFaceCV()
    net = R.SFaceTorch("cpu")
    e_cv, t_cv = timed(cv.embed, arc)
    e_t, t_t = timed(net.embed, arc)
    res["sface_cv_faces_per_s"] = round(len(arc) / t_cv, 1)
    res["sface_torch_faces_per_s"] = round(len(arc) / t_t, 1)
    res["torch_vs_cv_max_abs_diff"] = float(np.abs(e_cv - e_t).max())
    loss = R.IdentityLoss("cpu")
    for bs in (16, 16):  # the first pass warms up
        x = torch.from_numpy(faces.images[:bs]).permute(0, 3, 1, 2).float().div(255).requires_grad_(True)
        t = time.perf_counter()
        loss(x, x.detach().flip(0)).backward()
        res["identity_loss_fwd_bwd_faces_per_s_batch16"] = round(bs / (time.perf_counter() - t), 1)

    for name in ("sface",) + (() if args.no_dlib or not R.dlib_available() else ("dlib",)):
        t = time.perf_counter()
        e_all = R.embed(faces.images, name)
        res[f"{name}_embed_crops_per_s"] = round(len(faces.images) / (time.perf_counter() - t), 1)
        e_bad = R.embed(bad, name)
        e_g, e_p = R.l2_normalize(e_all[g]), R.l2_normalize(e_all[p])
        res[f"{name}_rank1_clean"] = R.rank1(e_p, ids[p], e_g, ids[g])
        res[f"{name}_rank1_degraded_8x_noise12"] = R.rank1(R.l2_normalize(e_bad), ids[p], e_g, ids[g])
        e_4x = R.embed(degrade(faces.images[p], 4, 5.0), name)
        res[f"{name}_rank1_degraded_4x_noise5"] = R.rank1(R.l2_normalize(e_4x), ids[p], e_g, ids[g])
        gen, imp = R.pair_scores(e_all, ids)
        res[f"{name}_tar_far1_all_pairs"] = R.tar_at_far(gen, imp, 0.01)
        res[f"{name}_tar_far01_all_pairs"] = R.tar_at_far(gen, imp, 0.001)
        res[f"{name}_threshold_far1"] = R.threshold_at_far(imp, 0.01)
        sims = R.l2_normalize(e_bad) @ e_g.T
        same = ids[p][:, None] == ids[g][None, :]
        res[f"{name}_tar_far1_degraded_vs_gallery"] = R.tar_at_far(sims[same], sims[~same], 0.01)
        if name == "dlib":
            d = np.linalg.norm(e_all[:, None] - e_all[None], axis=2)
            iu = np.triu_indices(len(e_all), 1)
            s = (ids[:, None] == ids[None])[iu]
            res["dlib_same_below_0.6"] = float((d[iu][s] < 0.6).mean())
            res["dlib_different_below_0.6"] = float((d[iu][~s] < 0.6).mean())
    t = time.perf_counter()
    res["detectability_clean"] = R.detectability_rate(faces.images[p])
    res["detect_faces_per_s"] = round(p.sum() / (time.perf_counter() - t), 1)
    res["detectability_degraded"] = R.detectability_rate(bad)
    lq16 = np.stack([cv2.resize(c, (16, 16), interpolation=cv2.INTER_AREA) for c in faces.images[p]])
    res["detectability_16px"] = R.detectability_rate(lq16)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
