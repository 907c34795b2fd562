"""Evaluating track fusion on synthetic tracks of unseen faces (issue 22).

Each evaluation face (the OOD suite's: ORL people 1-20, UTKFace eval, CelebA 9,901-10,000) becomes
a synthetic track of ``max(ks)`` crops: sub-pixel motion, small rotation and zoom, exposure flicker,
and an independent degradation per crop from :mod:`facekit.ood_recipe` (the suite's recipe, which
no model trains on). For ``k`` in ``ks`` the first ``k`` crops form the track, so the curves over
``k`` are measured on the same crops. Methods, all at the reference crop (the best by quality):

* ``bicubic``: the reference crop upsampled;
* ``single``: the single-frame restoration of the reference crop (the released restorer);
* ``oracle_single``: the best single-frame restoration among the ``k`` crops, each scored against
  its own clean crop (an upper bound on what choosing one frame can give);
* ``classical``: :func:`facekit.fusion.fuse_classical`;
* ``fused``: :class:`facekit.fusion.TrackFuser`'s output (single + learned correction);
* ``track`` (rank-1 only): the track's identity template, :func:`facekit.recognition.track_template`
  of the fused face and the restorations of the frames it fused (what ``facekit identify`` matches
  for a ``facekit video`` track).

Scores against the reference's clean crop: PSNR, SSIM, SFace similarity; with a gallery (ORL,
Pins), rank-1 of each method's output among other photos of the suite's people.
"""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd

from facekit import fusion, metrics, ood, ood_recipe, recognition
from facekit.errors import ConfigError

METHODS = ("bicubic", "single", "oracle_single", "classical", "fused")
KS = (1, 2, 4, 8, 16)


def _landmarks_in_crop(face, info: dict, framed_side: int, m: np.ndarray) -> np.ndarray:
    """The face's 5 landmarks in a clean burst crop (framing, then the crop's own map ``m``)."""
    lm = ood._crop_landmarks(face, info, framed_side)
    return lm @ m[:, :2].T + m[:, 2]


def evaluate_tracks(faces, fuser: fusion.TrackFuser, ks=KS, lq_side: int = 16, condition: str = "medium",
                    seed: int = 0, context: float = 1.7 / 1.15, gallery=None, progress: bool = True,
                    source: str = "") -> pd.DataFrame:
    """Score fusion against single frames on synthetic tracks of the given faces.

    Args:
        faces: :class:`facekit.ood.OODFace` items (photo, box, landmarks, identity).
        fuser: a :class:`facekit.fusion.TrackFuser` with a restorer (its ``restorer`` gives ``single``).
        ks: track lengths; the longest is drawn once per face and shorter tracks are its prefixes.
        lq_side: crop side (px); condition: :data:`facekit.ood_recipe.LIGHTING` entry.
        seed: every draw derives from ``(seed, face index)``.
        context: the loose framing's extent over the tight crop's, so moved crops see real context.
        gallery: ``(embeddings (G,128) float32, identities (G,))`` of the source's gallery photos
            (the OOD suite's), or None for no rank-1.
        source: name written in the ``source`` column.

    Returns:
        One row per (face, k, method): ``source, face, identity, group (skin-tone group where the
        source has one), k, method, psnr, ssim, id_sface, rank1_hit`` (NaN without a gallery; the
        ``track`` method has a rank-1 hit only).
    """
    from tqdm.auto import tqdm

    if fuser.restorer is None:
        raise ValueError("evaluate_tracks needs a fuser with a single-frame restorer")
    kmax = max(ks)
    ident = ood._Identity(("sface",), ood.embedding_cache_dir())
    degrade = fusion.ood_degrade(lq_side, condition)
    big = lq_side * fuser.config.scale
    framed_side = int(round(2 * big * context))
    rows = []
    outs, gts, lms, keys = [], [], [], []
    frame_imgs, frame_lms, tracks = [], [], []  # restored frames, and per (face, k) which of them a track fused
    for i, face in enumerate(tqdm(faces, desc=f"fusion eval {source}", disable=not progress)):
        rng = np.random.default_rng([int(seed), i])
        framed, info = ood_recipe.frame_face_info(face.image, face.box, "loose", framed_side, rng)
        lq, gt, _, maps = fusion.synthetic_burst(framed, kmax, lq_side, rng, degrade, scale=fuser.config.scale,
                                                 context=context, return_maps=True)
        restored_all = fusion.to_uint8(fusion.restore_crops(fuser.restorer, lq))
        own_psnr = metrics.psnr_uint8(restored_all, gt)
        first = len(frame_imgs)
        frame_imgs.extend(restored_all)
        frame_lms.extend(_landmarks_in_crop(face, info, framed_side, m) for m in maps)
        for k in ks:
            res = fuser(lq[:k])
            ref = res.reference
            oracle = int(np.argmax(own_psnr[:k]))
            cand = {"bicubic": fusion.to_uint8(_bicubic(lq[ref], big)), "single": res.single,
                    "oracle_single": restored_all[oracle], "classical": res.classical, "fused": res.out}
            tracks.append((len(outs) + list(cand).index("fused"),
                           [first + int(f) for f, u in zip(res.frames, res.registration.used) if u],
                           (face.key, face.identity, k, "track", face.group)))
            for name, out in cand.items():
                tgt = gt[oracle] if name == "oracle_single" else gt[ref]
                m = maps[oracle] if name == "oracle_single" else maps[ref]
                outs.append(out), gts.append(tgt), lms.append(_landmarks_in_crop(face, info, framed_side, m))
                keys.append((face.key, face.identity, k, name, face.group))
    outs, gts, lms = np.stack(outs), np.stack(gts), np.stack(lms).astype(np.float32)
    psnr = metrics.psnr_uint8(outs, gts)
    ssim = metrics.ssim_uint8(outs, gts)
    emb = ident.embed(ood.identity_crops(outs, lms))["sface"]
    gt_emb = ident.embed(ood.identity_crops(gts, lms))["sface"]
    sim = np.sum(emb * gt_emb, axis=1)
    hits = np.full(len(outs), np.nan)
    track_hits = np.full(len(tracks), np.nan)
    if gallery is not None:
        g_emb, g_ids = gallery
        hits = recognition.rank1_hits(emb, [k[1] for k in keys], g_emb, g_ids).astype(float)
        frame_emb = ident.embed(ood.identity_crops(np.stack(frame_imgs), np.stack(frame_lms).astype(np.float32)))["sface"]
        templates = np.stack([recognition.track_template(emb[j], frame_emb[fr]) for j, fr, _ in tracks])
        track_hits = recognition.rank1_hits(templates, [t[2][1] for t in tracks], g_emb, g_ids).astype(float)
    for j, (key, identity, k, name, group) in enumerate(keys):
        rows.append({"source": source, "face": key, "identity": identity, "group": group, "k": k, "method": name,
                     "psnr": float(psnr[j]), "ssim": float(ssim[j]), "id_sface": float(sim[j]),
                     "rank1_hit": float(hits[j])})
    for (_, _, (key, identity, k, name, group)), hit in zip(tracks, track_hits):
        rows.append({"source": source, "face": key, "identity": identity, "group": group, "k": k, "method": name,
                     "psnr": np.nan, "ssim": np.nan, "id_sface": np.nan, "rank1_hit": float(hit)})
    return pd.DataFrame(rows)


def _bicubic(img: np.ndarray, side: int) -> np.ndarray:
    return cv2.resize(img, (side, side), interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255.0


def run(sources=("orl", "utkface", "celeba"), limit: int | dict | None = 20, ks=KS, lq_side: int = 16,
        condition: str = "medium", seed: int = 0, fuser: fusion.TrackFuser | None = None,
        progress: bool = True) -> pd.DataFrame:
    """Load the OOD suite's faces and run :func:`evaluate_tracks` per source (galleries included).

    Args:
        limit: per source, at most this many faces or people (:func:`facekit.ood.load_ood_data`);
            a dict gives each source its own (``{"orl": 12, "utkface": 60}``; a source it does not
            name has no limit); None = all.

    Returns:
        :func:`evaluate_tracks`'s rows for every source; ``attrs["skipped"]``: absent sources and why.
    """
    limits = limit if isinstance(limit, dict) else {s: limit for s in sources}
    unknown = sorted(set(limits) - set(sources))
    if unknown:
        raise ConfigError(f"limit names sources that are not evaluated: {', '.join(unknown)}")
    data, skipped = {}, {}
    for src in sources:
        part = ood.load_ood_data((src,), limits.get(src), progress=progress)
        data[src] = part
        skipped.update(part.skipped)
    fuser = fuser or fusion.TrackFuser()
    ident = ood._Identity(("sface",), ood.embedding_cache_dir())
    frames = []
    for src in sources:
        if src not in data[src].probes:
            continue
        gallery = None
        if src in data[src].gallery:
            crops, ids = data[src].gallery[src]
            gallery = (ident.embed(crops)["sface"], ids)
        frames.append(evaluate_tracks(data[src].probes[src], fuser, ks, lq_side, condition, seed, gallery=gallery,
                                      progress=progress, source=src))
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    df.attrs["skipped"] = skipped
    return df


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Mean of each score per (k, method), all sources pooled; rank-1 as a rate."""
    return df.groupby(["k", "method"])[["psnr", "ssim", "id_sface", "rank1_hit"]].mean().reset_index()


def gains(df: pd.DataFrame, over: str = "single") -> pd.DataFrame:
    """Per k: fused minus ``over`` in PSNR (dB) and SFace similarity, paired per face, with 95% CIs."""
    rows = []
    for k, g in df.groupby("k"):
        p = g.pivot_table(index=["source", "face"], columns="method", values=["psnr", "id_sface"])
        for metric in ("psnr", "id_sface"):
            d = (p[(metric, "fused")] - p[(metric, over)]).dropna().to_numpy()
            half = 1.96 * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
            rows.append({"k": k, "metric": metric, "gain": float(d.mean()), "ci95": float(half), "n": len(d)})
    return pd.DataFrame(rows)


def plot_curves(df: pd.DataFrame, axes=None):
    """PSNR and SFace similarity against track length ``k``, one line per method."""
    import matplotlib.pyplot as plt

    s = summary(df)
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for metric, ax, label in (("psnr", axes[0], "PSNR (dB)"), ("id_sface", axes[1], "SFace similarity to clean")):
        for name in METHODS:
            g = s[s["method"] == name]
            if len(g):
                ax.plot(g["k"], g[metric], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(s["k"].unique()))
        ax.set_xticklabels([str(k) for k in sorted(s["k"].unique())])
        ax.set_xlabel("frames in the track (k)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return axes


def track_examples(faces, fuser: fusion.TrackFuser, k: int = 8, n: int = 4, lq_side: int = 16,
                   condition: str = "medium", seed: int = 0, context: float = 1.7 / 1.15) -> list[dict]:
    """Images of a few synthetic tracks for a figure: the crops, the best crop upsampled, the
    single-frame restoration, the classical and the fused face, and the clean reference crop.

    Returns:
        ``[{"crops": (k,s,s,3), "best_frame", "single", "classical", "fused", "truth": (S,S,3) uint8,
        "reference": int}]`` (same draws as :func:`evaluate_tracks` with the same seed).
    """
    big = lq_side * fuser.config.scale
    framed_side = int(round(2 * big * context))
    out = []
    for i, face in enumerate(faces[:n]):
        rng = np.random.default_rng([int(seed), i])
        framed, _ = ood_recipe.frame_face_info(face.image, face.box, "loose", framed_side, rng)
        lq, gt, _ = fusion.synthetic_burst(framed, k, lq_side, rng, fusion.ood_degrade(lq_side, condition),
                                           scale=fuser.config.scale, context=context)
        res = fuser(lq)
        out.append({"crops": lq, "best_frame": fusion.to_uint8(_bicubic(lq[res.reference], big)),
                    "single": res.single, "classical": res.classical, "fused": res.out,
                    "truth": gt[res.reference], "reference": res.reference})
    return out


def plot_examples(examples: list[dict]):
    """One row per track: best frame (bicubic), single-frame restoration, classical, fused, truth."""
    import matplotlib.pyplot as plt

    cols = ("best_frame", "single", "classical", "fused", "truth")
    titles = ("best frame (bicubic)", "single-frame restored", "classical fusion", "fused", "ground truth")
    fig, axes = plt.subplots(len(examples), len(cols), figsize=(2.0 * len(cols), 2.0 * len(examples)),
                             squeeze=False)
    for r, ex in enumerate(examples):
        for c, key in enumerate(cols):
            ax = axes[r, c]
            ax.imshow(ex[key])
            if key != "truth":
                ax.set_title(f"{titles[c]}\n{float(metrics.psnr_uint8(ex[key][None], ex['truth'][None])[0]):.1f} dB"
                             if r == 0 else f"{float(metrics.psnr_uint8(ex[key][None], ex['truth'][None])[0]):.1f} dB",
                             fontsize=8)
            elif r == 0:
                ax.set_title(titles[c], fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    return fig
