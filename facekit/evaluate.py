"""Evaluation of restorers across lighting conditions, head angles and degradation severities.

:func:`evaluate` degrades clean test faces, restores them with every method and scores each
output against its clean face. It returns one row per (face, method, condition) -- plus one per
(face, method, severity level) when a severity sweep is asked for -- with the image metrics
(PSNR, SSIM, ST-LPIPS), identity metrics (SFace / dlib cosine similarity to the clean face,
rank-1 hit against a clean gallery, YuNet detectability of the output and of the degraded input)
and every degradation factor the pipeline drew (scale, blur, noise, JPEG quality, occlusion,
yaw/roll), so any breakdown is a ``groupby`` away. :func:`summarise` turns rows into means with
bootstrap 95% confidence intervals (detectability of inputs and outputs included, see
:func:`detectability`); :func:`identification` gives rank-1 and TAR at FAR 1% / 0.1% per method and condition;
:func:`save_results` writes ``metrics.csv`` / ``metrics.json`` which the notebook reads back, so
the report and the files hold the same numbers.

Pairing: a face gets the same occluder, blur, noise and JPEG draws under all five lighting
conditions (the draws before and after the lighting op come from their own generators), so the
per-condition comparison measures the light, not a different set of degradations.

Severity sweeps (:data:`SWEEPS`): one factor at fixed levels, everything else off, neutral light,
no pose -- a controlled heatmap of severity x method beside the random-mix breakdowns.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from facekit import augment, data, dataset, degrade, images, metrics, perceptual, recognition, settings
from facekit.data import person_numbers
from facekit.errors import ConfigError, DataSourceError
from facekit.identify import Gallery
from facekit.restorer import Restorer, resize_batch
from facekit.restorers import build_restorers, released_restorers

CONDITIONS = augment.CONDITIONS
# The score columns of an evaluation row, in column order: the image metrics of facekit.metrics,
# then those Scorers computes with other modules' networks (facekit.metrics, a layer below them,
# cannot hold these) and the loop's timing. "lq_detected" scores the inputs, which are the same for
# every method, so its summary is the input's detectability.
SCORES: dict[str, metrics.Metric] = {
    "psnr": metrics.METRICS["psnr"],
    "ssim": metrics.METRICS["ssim"],
    "lpips": metrics.Metric(None, False, "ST-LPIPS perceptual distance to the clean face (AlexNet; 0: identical)"),
    "id_sface": metrics.Metric(None, True, "cosine similarity of the SFace embeddings of output and clean face"),
    "id_dlib": metrics.Metric(None, True, "cosine similarity of the dlib embeddings of output and clean face"),
    "rank1_hit": metrics.Metric(None, True, "the output's nearest clean gallery face (SFace) is its own person"),
    "detected": metrics.Metric(None, True, "YuNet finds a face in the restored output"),
    "lq_detected": metrics.Metric(None, True, "YuNet finds a face in the degraded input the method was given"),
    "seconds_per_face": metrics.Metric(None, False, "wall-clock seconds the method took per face"),
}
METRICS = tuple(SCORES)
LOWER_IS_BETTER = tuple(name for name, score in SCORES.items() if not score.higher_is_better)
# Degradation factors recorded per row: each degrade op declares the columns its recorded params
# feed (degrade.OpDef.factors), so a new op needs no change here.
degradation_factors = degrade.degradation_factors
FACTOR_COLUMNS = tuple(degrade.factor_columns())
ANGLE_BINS = (0.0, 5.0, 10.0, 20.0, 30.0, 90.0)  # |degrees|: bins "0-5", "5-10", ...

# factor -> (levels, spec builder): the severity sweeps live beside the ops they build (light to import).
SWEEPS = degrade.SEVERITY_SWEEPS


@dataclass
class EvalConfig:
    """What one evaluation measures: its degradations, sweeps and metric groups (saved beside its results).

    Construction normalises the fields (a condition name becomes a 1-tuple, a spec or
    :class:`facekit.degrade.Pipeline` a list of op dicts, severities a factor -> levels dict or
    None, one identity net a list) and rejects unknown conditions and sweeps with a
    :class:`facekit.errors.ConfigError`.

    Attributes:
        conditions: lighting conditions (see :data:`facekit.augment.CONDITIONS`), each with the
            same paired degradations.
        preset: degradation preset name (see :data:`facekit.degrade.PRESETS`) or spec (list of op dicts).
        scale: gt side / lq side.
        seed: base seed; face ``i`` uses generators seeded ``[seed, i, part]``.
        sample_size: evaluate this many faces (a seeded random subset, in index order); None = all.
        angles: head pose: True (default ranges), False (none) or a dict of pose ranges.
        severities: sweep factors -> levels (``{"noise": [0.01, 0.05]}``), a list of factor
            names (default levels), True for all of :data:`SWEEPS`, or None for no sweep.
        batch: faces per method call.
        lpips: compute ST-LPIPS when the package is installed.
        identity: compute identity metrics (SFace, dlib when installed, rank-1, detectability).
        identity_nets: recognition networks for the ``id_*`` columns ("sface", "dlib"; see :class:`Scorers`).
    """

    conditions: tuple = CONDITIONS
    preset: str | list = "cctv-heavy"
    scale: int = 4
    seed: int = 0
    sample_size: int | None = None
    angles: bool | dict = True
    severities: dict | None = None
    batch: int = 32
    lpips: bool = True
    identity: bool = True
    identity_nets: list = field(default_factory=lambda: ["sface"])

    def __post_init__(self):
        self.conditions = (self.conditions,) if isinstance(self.conditions, str) else tuple(self.conditions)
        for c in self.conditions:
            if c not in CONDITIONS:
                raise ConfigError(f"unknown lighting condition {c!r}; valid: {', '.join(CONDITIONS)}")
        if isinstance(self.preset, degrade.Pipeline):
            self.preset = self.preset.to_spec()
        if not isinstance(self.preset, str):
            self.preset = degrade.load_spec(self.preset)
        self.scale, self.seed, self.batch = int(self.scale), int(self.seed), int(self.batch)
        self.severities = _sweep_levels(self.severities) or None
        nets = self.identity_nets
        self.identity_nets = [nets] if isinstance(nets, str) else list(nets)

    def record(self, device: str) -> dict:
        """The config as JSON-able values, with the ``device`` the scores ran on (``df.attrs["config"]``)."""
        d = asdict(self)
        d["conditions"] = list(d["conditions"])
        if d["severities"]:
            d["severities"] = {k: list(v) for k, v in d["severities"].items()}
        keys = list(d)
        at = keys.index("batch") + 1  # where the record has always held it
        return {**{k: d[k] for k in keys[:at]}, "device": device, **{k: d[k] for k in keys[at:]}}


# ---------------------------------------------------------------------------------------------
# Degraded pairs


def _split_spec(preset) -> tuple[list[dict], dict | None, list[dict]]:
    """Split a spec at its lighting op: ``(ops before, lighting entry or None, ops after)``.

    Without a lighting op, it goes after the geometric ops (as :class:`facekit.degrade.Pipeline` does).
    """
    spec = degrade.load_spec(preset)
    for k, e in enumerate(spec):
        if isinstance(e, dict) and e.get("op") == "lighting":
            return spec[:k], e, spec[k + 1:]
    at = sum(1 for e in spec if isinstance(e, dict) and e.get("op") in degrade.OPS and degrade.OPS[e["op"]].geometric)
    return spec[:at], None, spec[at:]


class PairMaker:
    """Build ``(lq, gt, params)`` for a face under a condition, paired across conditions.

    The ops before the lighting op draw from ``default_rng([seed, i, 0])``, the lighting from
    ``[seed, i, 1]`` and the ops after it from ``[seed, i, 2]``, so face ``i`` gets the same
    occluder, blur, noise and JPEG settings whatever the condition. ``degrade.replay(params, gt)``
    rebuilds ``lq`` exactly.

    Args:
        preset: preset name or spec.
        scale: gt side / lq side.
        angles: head pose (True, False or a dict of pose ranges).
        seed: base seed.
    """

    def __init__(self, preset="cctv-heavy", scale: int = 4, angles=True, seed: int = 0):
        full = dataset.build_pipeline(preset, scale, angles)  # validates the spec and places the pose op
        before, _, after = _split_spec(full.to_spec())
        # The resolution loss belongs to whichever part holds the downsample op (presets put the
        # light after it; a spec without a lighting op gets the light first, as Pipeline does).
        pre_scale = scale if any(isinstance(e, dict) and e.get("op") == "downsample" for e in before) else 1
        self.pre = degrade.Pipeline(before, scale=pre_scale)
        self.post = degrade.Pipeline(after, scale=scale // pre_scale) if after or pre_scale != scale else None
        self.scale = int(scale)
        self.seed = int(seed)

    def __call__(self, image: np.ndarray, index: int, condition: str):
        """Return ``(lq (h,w,3), gt (S,S,3), params)`` float32 in [0,1] for face ``index``."""
        lq, gt, p_pre = self.pre(image, np.random.default_rng([self.seed, int(index), 0]))
        lq, light = augment.lighting_condition(lq, condition, np.random.default_rng([self.seed, int(index), 1]))
        ops = list(p_pre["ops"]) + [{"op": "lighting", **light}]
        if self.post is not None:
            lq, _, p_post = self.post(lq, np.random.default_rng([self.seed, int(index), 2]))
            ops += p_post["ops"]
        return lq, gt, {"ops": ops, "condition": condition, "scale": self.scale, "shape": p_pre["shape"]}


def _sweep_levels(severities) -> dict[str, tuple]:
    if severities is None or severities is False:
        return {}
    if severities is True:
        return {k: v[0] for k, v in SWEEPS.items()}
    if isinstance(severities, str):
        severities = [s.strip() for s in severities.split(",") if s.strip()]
    items = severities.items() if isinstance(severities, dict) else ((k, None) for k in severities)
    out = {}
    for name, levels in items:
        if name not in SWEEPS:
            raise ConfigError(f"unknown severity sweep {name!r}; valid: {', '.join(SWEEPS)}")
        out[name] = tuple(levels) if levels is not None else SWEEPS[name][0]
        if not out[name]:
            raise ConfigError(f"severity sweep {name!r} has no levels")
    return out


def _angle_bin(values: np.ndarray) -> np.ndarray:
    a = np.abs(np.asarray(values, dtype=float))
    labels = [f"{int(lo)}-{int(hi)}" if hi < 90 else f">{int(lo)}" for lo, hi in zip(ANGLE_BINS[:-1], ANGLE_BINS[1:])]
    idx = np.clip(np.searchsorted(ANGLE_BINS, a, side="right") - 1, 0, len(labels) - 1)
    return np.array(labels, dtype=object)[idx]


def severity_levels(df: pd.DataFrame) -> pd.DataFrame:
    """Add binned severity columns (``blur_level``, ``noise_level``, ``jpeg_level``, ``yaw_bin``, ``roll_bin``).

    Levels: blur by the longest blur length or 2x defocus radius / 3x Gaussian sigma in gt pixels
    (none, <4, 4-8, >=8 px); noise sigma at 50% grey (none, <0.02, 0.02-0.04, >=0.04); JPEG quality
    (none, >=60, 35-60, <35).
    """
    df = df.copy()
    blur = np.maximum.reduce([df["blur_length_px"].to_numpy(float), 2 * df["defocus_radius_px"].to_numpy(float),
                              3 * df["gauss_sigma_px"].to_numpy(float)])
    df["blur_level"] = np.select([blur <= 0, blur < 4, blur < 8], ["none", "<4px", "4-8px"], ">=8px")
    ns = df["noise_sigma"].to_numpy(float)
    df["noise_level"] = np.select([ns <= 0, ns < 0.02, ns < 0.04], ["none", "<0.02", "0.02-0.04"], ">=0.04")
    q = df["jpeg_quality"].to_numpy(float)
    df["jpeg_level"] = np.select([np.isnan(q), q >= 60, q >= 35], ["none", "q>=60", "q35-60"], "q<35")
    df["yaw_bin"] = _angle_bin(df["yaw"].to_numpy(float))
    df["roll_bin"] = _angle_bin(df["roll"].to_numpy(float))
    return df


# ---------------------------------------------------------------------------------------------
# Scoring back-ends (other modules own them; each is optional and reports why it is absent)


class Scorers:
    """The metric functions available here, with the reason for each one that is not.

    PSNR/SSIM come from :mod:`facekit.metrics`, ST-LPIPS from :mod:`facekit.perceptual`, identity
    embeddings and YuNet detectability from :mod:`facekit.recognition`. Identity similarity is the
    cosine of the restored and the clean face's embeddings; the clean embeddings are computed once
    per batch (:meth:`reference`) and reused for every method, and the restored SFace embedding is
    returned for rank-1 matching, so each output is embedded once.

    Args:
        lpips, identity: whether to try ST-LPIPS and the identity metrics.
        device: where networks run.
        identity_nets: recognition networks for ``id_<net>`` columns: "sface" (default) and/or
            "dlib" (about 2x slower than SFace on the CPU, so only when asked).
    """

    def __init__(self, lpips: bool = True, identity: bool = True, device: str = "cpu",
                 identity_nets=("sface",)):
        self.device = device
        self.missing: dict[str, str] = {}
        self.psnr = self.ssim = self.lpips = None
        self.nets: list[str] = []
        self.recognition = None

        self.psnr, self.ssim = metrics.psnr, metrics.ssim
        if lpips:
            if perceptual.is_available("alex"):
                self.lpips = lambda out, gt: perceptual.stlpips(out, gt, "alex", device)
            else:
                self.missing["lpips"] = "ST-LPIPS package not installed (pip install stlpips-pytorch==0.0.2)"
        else:
            self.missing["lpips"] = "disabled"
        if not identity:
            for k in ("id_sface", "id_dlib", "rank1_hit", "detected", "lq_detected"):
                self.missing[k] = "disabled"
            return

        self.recognition = recognition
        nets = (identity_nets,) if isinstance(identity_nets, str) else tuple(identity_nets)
        for net in nets:
            if net not in ("sface", "dlib"):
                raise ConfigError(f"unknown identity network {net!r}; valid: sface, dlib")
        self.nets = ["sface"] if "sface" in nets else []
        if "sface" not in nets:
            self.missing["id_sface"] = self.missing["rank1_hit"] = "not requested (identity_nets)"
        if "dlib" in nets:
            if recognition.dlib_available():
                self.nets.append("dlib")
            else:
                self.missing["id_dlib"] = "dlib or its weights not installed (pip install dlib-bin face-recognition-models)"
        else:
            self.missing["id_dlib"] = "not requested (identity_nets; dlib is ~2x slower than SFace on the CPU)"

    @property
    def detect(self):
        """Per-image YuNet detection flags, or None."""
        return self.recognition.detectability if self.recognition is not None else None

    def embed(self, x: torch.Tensor, net: str = "sface") -> np.ndarray:
        """L2-normalised identity embeddings ``(N,D)`` of ``(N,3,S,S)`` crops."""
        return _normalise(self.recognition.embed(x, backend=net, device=self.device))

    def reference(self, gt: torch.Tensor) -> dict[str, np.ndarray]:
        """Embeddings of the clean faces, one per identity network."""
        return {net: self.embed(gt, net) for net in self.nets}

    def score(self, out: torch.Tensor, gt: torch.Tensor, ref: dict | None = None):
        """Per-image metrics of ``out`` against ``gt`` (both ``(N,3,H,W)`` float32 in [0,1]).

        Returns:
            ``(metrics name -> (N,) array, SFace embeddings of out or None)``.
        """
        res = {}
        for name in ("psnr", "ssim", "lpips"):
            fn = getattr(self, name)
            if fn is not None:
                res[name] = _as_numpy(fn(out, gt)).astype(np.float64)
        ref = self.reference(gt) if ref is None else ref
        emb_sface = None
        for net in self.nets:
            e = self.embed(out, net)
            res[f"id_{net}"] = np.sum(e * ref[net], axis=1).astype(np.float64)
            if net == "sface":
                emb_sface = e
        if self.detect is not None:
            res["detected"] = np.asarray(self.detect(out), dtype=bool)
        return res, emb_sface


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


# ---------------------------------------------------------------------------------------------
# Evaluation


def _face_arrays(faces):
    images = np.asarray(getattr(faces, "images", faces))
    if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8 or images.shape[1] != images.shape[2]:
        raise DataSourceError(f"faces must be an (N,S,S,3) uint8 array or a FaceSet, got {images.shape} {images.dtype}")
    if len(images) == 0:
        raise DataSourceError("faces is empty: nothing to evaluate")
    n = len(images)
    ident = getattr(faces, "identity", None)
    ident = np.asarray(ident, dtype=object) if ident is not None else np.array([""] * n, dtype=object)
    paths = getattr(faces, "paths", None)
    paths = np.asarray(paths, dtype=object) if paths is not None else np.array([""] * n, dtype=object)
    return images, ident, paths


def _pick(n: int, sample_size: int | None, seed: int) -> np.ndarray:
    if sample_size is None or sample_size >= n:
        return np.arange(n)
    if int(sample_size) < 1:
        raise ConfigError(f"sample_size must be a positive integer or None, got {sample_size}")
    return np.sort(np.random.default_rng([int(seed), 0x5A]).choice(n, int(sample_size), replace=False))


def _call(method, lq: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    out = method(lq, size) if isinstance(method, Restorer) else method(lq)
    out = torch.as_tensor(out).detach().float().cpu()
    if out.ndim != 4 or out.shape[:2] != lq.shape[:2]:
        raise ConfigError(f"a method returned shape {tuple(out.shape)} for input {tuple(lq.shape)}; "
                          "expected (N,3,H,W)")
    return resize_batch(out, size).clamp_(0.0, 1.0)


def _to_batch(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2)))


@dataclass
class _Job:
    """One degraded set: a condition of the preset, or one level of a severity sweep."""

    condition: str
    maker: PairMaker
    sweep: str = ""
    severity: float = float("nan")


def _jobs(cfg: EvalConfig) -> list[_Job]:
    jobs = [_Job(c, PairMaker(cfg.preset, cfg.scale, cfg.angles, cfg.seed)) for c in cfg.conditions]
    for name, levels in _sweep_levels(cfg.severities).items():
        for level in levels:
            ops, scale = SWEEPS[name][1](level)
            jobs.append(_Job("medium", PairMaker(ops, scale or cfg.scale, False, cfg.seed), name, float(level)))
    return jobs


def evaluate(faces, methods: dict, config: EvalConfig | None = None, *, gallery=None, progress: bool = True,
             device: str | torch.device = "cpu") -> pd.DataFrame:
    """Degrade clean faces, restore them with every method and score each output.

    Args:
        faces: clean test faces: a :class:`facekit.data.FaceSet` (identities enable rank-1) or an
            ``(N,S,S,3) uint8`` array.
        methods: name -> callable. A :class:`facekit.restorer.Restorer` is called as
            ``m(lq, (S,S))``; any other callable as ``f(lq)`` with its output resized to ``S x S``
            when it is not already. ``lq`` is ``(n,3,S/scale,S/scale)`` float32 in [0,1].
        config: conditions, degradations, sweeps, sample and metric groups (see
            :class:`EvalConfig`); None = its defaults.
        gallery: extra clean faces of other people (FaceSet) added to the rank-1 gallery as
            distractors; the gallery always holds the first face of each identity in ``faces``,
            and that face is then not used as a probe.
        progress: show a progress bar.
        device: where ST-LPIPS and the identity networks run (methods carry their own device).

    Returns:
        One row per (face, method, condition) and per (face, method, sweep level). Columns: image
        (index into ``faces``), identity, method, condition, sweep ("" for the preset rows),
        severity, psnr, ssim, lpips, id_sface, id_dlib, rank1_hit, detected, lq_detected,
        seconds_per_face (only the metrics whose back-end is here), the factor columns of
        :func:`degradation_factors` and the binned levels of :func:`severity_levels`.
        ``df.attrs`` holds ``config`` (:meth:`EvalConfig.record`), ``missing`` (metric ->
        why it is absent), ``identification`` (see :func:`identification`) and ``methods`` (notes).
    """
    if not methods:
        raise ConfigError("evaluate needs at least one method")
    cfg = EvalConfig() if config is None else config
    if not isinstance(cfg, EvalConfig):
        raise TypeError(f"evaluate's config must be an EvalConfig, got {type(cfg).__name__}")
    device = str(torch.device(device))
    images, ident, _paths = _face_arrays(faces)
    size = images.shape[1]
    if size % cfg.scale:
        raise ConfigError(f"scale {cfg.scale} does not divide the face size {size}")
    picked = _pick(len(images), cfg.sample_size, cfg.seed)
    scorers = Scorers(cfg.lpips, cfg.identity, device, cfg.identity_nets)
    jobs = _jobs(cfg)

    gal = _Gallery(scorers, images, ident, picked, gallery) if "sface" in scorers.nets else None
    if gal is not None and gal.reason:
        scorers.missing["rank1_hit"] = gal.reason
        gal = None

    from tqdm.auto import tqdm

    rows: list[dict] = []
    embeddings: dict[tuple[str, str, str], np.ndarray] = {}
    bar = tqdm(total=len(jobs) * len(picked) * len(methods), desc="evaluate", disable=not progress, unit="face")
    for job in jobs:
        for start in range(0, len(picked), cfg.batch):
            idx = picked[start:start + cfg.batch]
            triples = [job.maker(images[i], int(i), job.condition) for i in idx]
            lq = _to_batch([t[0] for t in triples])
            gt = _to_batch([t[1] for t in triples])
            factors = [degradation_factors(t[2]) for t in triples]
            lq_det = np.asarray(scorers.detect(lq), dtype=bool) if scorers.detect is not None else None
            ref = scorers.reference(gt)
            for name, method in methods.items():
                t0 = time.perf_counter()
                out = _call(method, lq, (size, size))
                spf = (time.perf_counter() - t0) / len(idx)
                scores, emb = scorers.score(out, gt, ref)
                hits = gal.hits(emb, idx) if gal is not None else None
                for j, i in enumerate(idx):
                    row = {"image": int(i), "identity": str(ident[i]), "method": name, "condition": job.condition,
                           "sweep": job.sweep, "severity": job.severity}
                    row.update({k: float(v[j]) if v.dtype != bool else bool(v[j]) for k, v in scores.items()})
                    if hits is not None:
                        row["rank1_hit"] = hits[j]
                    if lq_det is not None:
                        row["lq_detected"] = bool(lq_det[j])
                    row["seconds_per_face"] = spf
                    row.update(factors[j])
                    rows.append(row)
                if hits is not None:
                    key = (name, job.condition, job.sweep + (f"={job.severity:g}" if job.sweep else ""))
                    embeddings.setdefault(key, []).append(emb)
                bar.update(len(idx))
    bar.close()
    df = severity_levels(pd.DataFrame(rows))
    df.attrs["config"] = cfg.record(device)
    df.attrs["missing"] = dict(scorers.missing)
    df.attrs["methods"] = {n: getattr(m, "note", "") for n, m in methods.items()}
    if gal is not None:
        df.attrs["identification"] = gal.identification({k: np.concatenate(v) for k, v in embeddings.items()},
                                                        picked)
    return df


class _Gallery:
    """Clean gallery of SFace embeddings for rank-1 / TAR@FAR of restored probes.

    The first face of each known identity among the evaluated faces is its gallery image (and is
    not a probe); ``extra`` faces add one clean image per other identity as distractors.
    """

    def __init__(self, scorers: Scorers, images, ident, picked, extra):
        self.reason = ""
        known = [i for i in picked if ident[i]]
        if not known:
            self.reason = "no identities known for the evaluated faces"
            return
        first: dict[str, int] = {}
        for i in known:
            first.setdefault(str(ident[i]), int(i))
        self.gallery_index = set(first.values())
        g_imgs = [images[i] for i in first.values()]
        g_ids = list(first)
        if extra is not None:
            e_imgs, e_ident, _ = _face_arrays(extra)
            seen = set(g_ids)
            for img, who in zip(e_imgs, e_ident):
                if who and str(who) not in seen:
                    seen.add(str(who))
                    g_imgs.append(img)
                    g_ids.append(str(who))
        if len(g_ids) < 2:
            self.reason = f"rank-1 needs at least 2 identities in the gallery, got {len(g_ids)}"
            return
        g = torch.from_numpy(np.stack(g_imgs).transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
        self.gallery = scorers.embed(g, "sface")
        self.gallery_ids = np.array(g_ids, dtype=object)
        self.ident = ident
        self.probe_mask = np.array([bool(ident[i]) and int(i) not in self.gallery_index for i in picked])

    def hits(self, emb: np.ndarray, idx: np.ndarray) -> list:
        """Rank-1 hit per face (True/False; None for gallery faces and unknown identities)."""
        best = self.gallery_ids[np.argmax(emb @ self.gallery.T, axis=1)]
        return [None if (not self.ident[i] or int(i) in self.gallery_index) else bool(best[j] == self.ident[i])
                for j, i in enumerate(idx)]

    def identification(self, embeddings: dict, picked: np.ndarray) -> pd.DataFrame:
        """Rank-1 and TAR at FAR 1% / 0.1% per (method, condition/sweep level)."""
        probe_ids = np.array([self.ident[i] for i in picked], dtype=object)[self.probe_mask]
        rows = []
        for (method, condition, sweep), emb in embeddings.items():
            rows.append({"method": method, "condition": condition, "sweep": sweep,
                         **identification_scores(emb[self.probe_mask], probe_ids, self.gallery, self.gallery_ids)})
        return pd.DataFrame(rows)


def _normalise(e: np.ndarray) -> np.ndarray:
    e = np.asarray(e, dtype=np.float32).reshape(len(e), -1)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def identification_scores(probe: np.ndarray, probe_ids, gallery: np.ndarray, gallery_ids) -> dict:
    """Rank-1 accuracy and TAR at FAR 1% / 0.1% of probe embeddings against a gallery.

    Uses :func:`facekit.recognition.rank1` and :func:`facekit.recognition.tar_at_far`. Verification
    scores every probe x gallery pair: genuine when the identities match, impostor otherwise.

    Args:
        probe: ``(P,D)`` embeddings; probe_ids: ``(P,)`` identities.
        gallery: ``(G,D)`` embeddings; gallery_ids: ``(G,)`` identities.

    Returns:
        ``{"rank1", "tar_far1", "tar_far01", "n_probes", "n_gallery", "n_impostor"}``; TAR is NaN
        when fewer than ``1/FAR`` impostor pairs exist (that FAR cannot be measured).
    """
    probe_ids = np.asarray(probe_ids, dtype=object)
    gallery_ids = np.asarray(gallery_ids, dtype=object)
    p, g = _normalise(probe), _normalise(gallery)
    same = probe_ids[:, None] == gallery_ids[None, :]
    res = {"n_probes": int(len(p)), "n_gallery": int(len(g)), "n_impostor": int((~same).sum())}
    if len(p) == 0:
        return dict(res, rank1=float("nan"), tar_far1=float("nan"), tar_far01=float("nan"))
    res["rank1"] = recognition.rank1(p, probe_ids, g, gallery_ids)
    sims = p @ g.T
    genuine, impostor = sims[same], sims[~same]
    for key, far in (("tar_far1", 0.01), ("tar_far01", 0.001)):
        ok = len(impostor) >= 1.0 / far and len(genuine) > 0
        res[key] = recognition.tar_at_far(genuine, impostor, far) if ok else float("nan")
    return res


def identification(df: pd.DataFrame) -> pd.DataFrame:
    """The rank-1 / TAR@FAR table :func:`evaluate` computed (empty when identities were unknown)."""
    return df.attrs.get("identification", pd.DataFrame(
        columns=["method", "condition", "sweep", "rank1", "tar_far1", "tar_far01", "n_probes", "n_gallery",
                 "n_impostor"]))


# ---------------------------------------------------------------------------------------------
# Summaries


def bootstrap_ci(values, n_boot: int = 1000, ci: float = 0.95, seed: int | list[int] = 0) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap confidence interval of the mean.

    Args:
        values: 1-D numbers (NaNs dropped; booleans count as 0/1).
        n_boot: resamples (drawn at once: an ``(n_boot, n)`` index matrix).
        ci: confidence level.
        seed: seed (or seed list) of the resampling generator.

    Returns:
        ``(mean, low, high)``; NaNs for no values, ``(v, v, v)`` for one.
    """
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(v.mean())
    if len(v) == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(int(n_boot), len(v)))].mean(axis=1)
    a = (1.0 - ci) / 2.0
    lo, hi = np.quantile(means, [a, 1.0 - a])
    return mean, float(lo), float(hi)


def summarise(df: pd.DataFrame, by=("method", "condition"), metrics=None, n_boot: int = 1000,
              ci: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Mean of each metric per group with bootstrap confidence intervals.

    Args:
        df: rows from :func:`evaluate`.
        by: grouping columns.
        metrics: metric columns (default: those of :data:`METRICS` present in ``df``).
        n_boot, ci, seed: bootstrap settings (one seeded generator per group and metric, so a
            group's interval does not depend on which other groups exist).

    Returns:
        One row per group: the ``by`` columns, ``n`` (rows), and per metric ``<m>``, ``<m>_lo``, ``<m>_hi``.
    """
    by = [by] if isinstance(by, str) else list(by)
    for c in by:
        if c not in df.columns:
            raise ConfigError(f"cannot group by {c!r}: not a column; columns: {', '.join(map(str, df.columns))}")
    metrics = [m for m in (metrics or METRICS) if m in df.columns]
    out = []
    for key, grp in df.groupby(by, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(by, key))
        row["n"] = int(len(grp))
        for k, m in enumerate(metrics):
            vals = pd.to_numeric(grp[m], errors="coerce").to_numpy(float)
            mean, lo, hi = bootstrap_ci(vals, n_boot, ci, seed=[int(seed), k])
            row[m], row[f"{m}_lo"], row[f"{m}_hi"] = mean, lo, hi
        out.append(row)
    return pd.DataFrame(out)


BREAKDOWNS: dict[str, list[str]] = {
    "overall": ["method"],
    "condition": ["method", "condition"],
    "yaw": ["method", "yaw_bin"],
    "roll": ["method", "roll_bin"],
    "blur": ["method", "blur_level"],
    "noise": ["method", "noise_level"],
    "jpeg": ["method", "jpeg_level"],
    "occlusion": ["method", "occlusion"],
    "sweep": ["method", "sweep", "severity"],
}


def breakdowns(df: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Every breakdown of :data:`BREAKDOWNS` as a summary table (preset rows; sweeps separately)."""
    main = df[df["sweep"] == ""]
    sweep = df[df["sweep"] != ""]
    out = {}
    for name, by in BREAKDOWNS.items():
        src = sweep if name == "sweep" else main
        if len(src):
            out[name] = summarise(src, by, n_boot=n_boot, seed=seed)
    return out


INPUT_LABEL = "input (lq)"


def detectability(summary: pd.DataFrame) -> pd.DataFrame:
    """Face detectability of the degraded inputs beside that of each method's outputs.

    Args:
        summary: a :func:`summarise` table with ``detected`` and ``lq_detected`` (any breakdown of
            ``metrics.json``, e.g. ``info["summary"]["condition"]``).

    Returns:
        The table's rows with ``method`` and its group columns, ``n`` and ``detected`` (+ ``_lo`` /
        ``_hi``): first one :data:`INPUT_LABEL` row per group (``lq_detected``: every method was
        given the same inputs), then each method's outputs. Usable with :func:`ci_table` and
        :func:`plot_conditions` / :func:`plot_breakdown` as metric ``"detected"``.
    """
    for m in ("detected", "lq_detected"):
        if m not in summary.columns:
            raise ConfigError(f"detectability needs a summary with {m!r}; "
                              f"columns: {', '.join(map(str, summary.columns))}")
    stats = {c for m in METRICS for c in (m, f"{m}_lo", f"{m}_hi")} | {"n"}
    groups = [c for c in summary.columns if c not in stats and c != "method"]
    det = ["detected", "detected_lo", "detected_hi"]
    out_rows = summary[["method", *groups, "n", *det]]
    if summary.empty:
        return out_rows.copy()
    first = summary["method"] == summary["method"].iloc[0]
    inputs = summary.loc[first, [*groups, "n", "lq_detected", "lq_detected_lo", "lq_detected_hi"]]
    inputs = inputs.set_axis([*groups, "n", *det], axis=1).assign(method=INPUT_LABEL)[out_rows.columns]
    return pd.concat([inputs, out_rows], ignore_index=True)


# ---------------------------------------------------------------------------------------------
# Files


def checkpoint_methods(checkpoints="auto") -> dict[str, str]:
    """Expand notebook 05's ``checkpoints`` parameter into ``{label: method name}``.

    Args:
        checkpoints: one entry or a list of entries: ``"auto"`` (the released models,
            :func:`released_restorers`), ``"run:NAME"`` (the last checkpoint of the training run
            ``DATA_DIR/runs/NAME/checkpoints/last.pt``, e.g. what notebook 03 just trained; labelled
            ``run:NAME``), a method name (``"model:PATH"``, ``"chain:DIR"``, ``"chain:DIR@stage"``) or a
            bare checkpoint path (taken as ``model:PATH``). None or [] = no models (baselines only).

    Returns:
        Label (the method's name in the results) -> name for :func:`facekit.restorers.build_restorer`.
    """
    if checkpoints is None:
        return {}
    entries = [checkpoints] if isinstance(checkpoints, str) else list(checkpoints)
    out: dict[str, str] = {}
    for entry in entries:
        entry = str(entry).strip()
        if entry == "auto":
            out.update({m: m for m in released_restorers()})
        elif entry.startswith("run:"):
            name = entry[len("run:"):].strip()
            if not name:
                raise ConfigError("checkpoint entry 'run:NAME' needs a training run name after the colon")
            out[f"run:{name}"] = f"model:{settings.DATA_DIR / 'runs' / name / 'checkpoints' / 'last.pt'}"
        elif entry:
            name = entry if ":" in entry else f"model:{entry}"
            out[name] = name
    return out


def build_eval_methods(baselines=(), checkpoints="auto", scale: int = 4, device: str = "cpu", train_faces=None):
    """The methods notebook 05 evaluates: the baselines, then the models of ``checkpoints``.

    Args:
        baselines: method names (``"bicubic"``, ``"classical"`` ...).
        checkpoints: see :func:`checkpoint_methods`.
        scale, device, train_faces: see :func:`facekit.restorers.build_restorers`.

    Returns:
        ``(label -> Method, label -> why it was skipped)``. A ``run:NAME`` whose ``last.pt`` does not
        exist (the run was not trained here) is skipped with that reason; other unavailable methods
        as :func:`facekit.restorers.build_restorers` does.
    """
    labels = {b: b for b in ([baselines] if isinstance(baselines, str) else list(baselines or []))}
    labels.update(checkpoint_methods(checkpoints))
    methods, skipped = {}, {}
    for label, name in labels.items():
        if label.startswith("run:") and not Path(name[len("model:"):]).is_file():
            skipped[label] = (f"{name[len('model:'):]} not found: train run {label[4:]!r} first "
                              "(notebook 03 or python -m facekit train)")
            continue
        built, why = build_restorers([name], scale, device, train_faces=train_faces)
        for m in built.values():
            if label != name and name.startswith("model:"):
                m.note = f"{m.note}, {name[len('model:'):]}"
            methods[label] = m
        for reason in why.values():
            skipped[label] = reason
    return methods, skipped


def run_dir(name: str) -> Path:
    """``DATA_DIR/runs/eval-<name>/`` (created)."""
    settings.check_name(name, "evaluation run name")
    path = settings.child_dir(settings.DATA_DIR / "runs", f"eval-{name}", "evaluation run name")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _records(table: pd.DataFrame) -> list[dict]:
    return json.loads(table.to_json(orient="records", double_precision=6))


def save_results(df: pd.DataFrame, run_dir: str | Path, n_boot: int = 1000, seed: int = 0) -> dict[str, Path]:
    """Write ``metrics.csv`` (every row) and ``metrics.json`` (config, breakdown summaries, identification).

    Args:
        df: rows from :func:`evaluate`.
        run_dir: output folder (created).
        n_boot, seed: bootstrap settings of the summaries.

    Returns:
        ``{"csv": path, "json": path}``.
    """
    folder = Path(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = folder / "metrics.csv", folder / "metrics.json"
    tmp = csv_path.with_suffix(".csv.tmp")
    df.to_csv(tmp, index=False)
    tmp.replace(csv_path)
    payload = {
        "config": df.attrs.get("config", {}),
        "missing": df.attrs.get("missing", {}),
        "methods": df.attrs.get("methods", {}),
        "skipped_methods": df.attrs.get("skipped_methods", {}),
        "n_rows": int(len(df)),
        "summary": {k: _records(v) for k, v in breakdowns(df, n_boot, seed).items()},
        "identification": _records(identification(df)),
    }
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str))
    tmp.replace(json_path)
    return {"csv": csv_path, "json": json_path}


def load_results(run_dir: str | Path) -> tuple[pd.DataFrame, dict]:
    """Read back ``metrics.csv`` and ``metrics.json``.

    Returns:
        ``(rows, info)`` where ``info["summary"][name]`` and ``info["identification"]`` are DataFrames.
    """
    folder = Path(run_dir)
    csv_path, json_path = folder / "metrics.csv", folder / "metrics.json"
    for p in (csv_path, json_path):
        if not p.is_file():
            raise DataSourceError(f"{p}: evaluation results not found (run facekit.evaluate.save_results first)")
    df = pd.read_csv(csv_path, keep_default_na=False, na_values=["", "NaN", "nan"])
    df["sweep"] = df["sweep"].fillna("").astype(str)
    info = json.loads(json_path.read_text())
    info["summary"] = {k: pd.DataFrame(v) for k, v in info.get("summary", {}).items()}
    info["identification"] = pd.DataFrame(info.get("identification", []))
    return df, info


# ---------------------------------------------------------------------------------------------
# Plots


def _ci_bars(ax, table: pd.DataFrame, x: str, hue: str, metric: str, order=None, hue_order=None, palette=None):
    """Grouped bars (seaborn) of ``table[metric]`` with the table's own CI columns as error bars."""
    import seaborn as sns

    order = list(order or dict.fromkeys(table[x]))
    hue_order = list(hue_order or dict.fromkeys(table[hue]))
    sns.barplot(data=table, x=x, y=metric, hue=hue, order=order, hue_order=hue_order, errorbar=None, ax=ax,
                palette=palette)
    # Bars come in hue-major order; each container is one hue level.
    for container, h in zip(ax.containers, hue_order):
        sub = table[table[hue] == h].set_index(x)
        for bar, xv in zip(container, order):
            if xv not in sub.index or not np.isfinite(sub.at[xv, metric]):
                continue
            lo, hi, m = sub.at[xv, f"{metric}_lo"], sub.at[xv, f"{metric}_hi"], sub.at[xv, metric]
            ax.errorbar(bar.get_x() + bar.get_width() / 2, m, yerr=[[m - lo], [hi - m]], color="black",
                        capsize=2, linewidth=1)
    # Room above the bars for a one-row legend, so it never hides a bar.
    top = np.nanmax(table[f"{metric}_hi"].to_numpy(float))
    bottom = ax.get_ylim()[0]
    if np.isfinite(top):
        ax.set_ylim(bottom, top + 0.22 * (top - bottom))
    ax.legend(fontsize=7, loc="upper center", ncol=len(hue_order), frameon=False)
    return ax


def plot_conditions(summary: pd.DataFrame, metric: str = "psnr", ax=None, title: str | None = None):
    """Grouped bars: x = lighting condition, hue = method, error bars = bootstrap 95% CI.

    Args:
        summary: ``summarise(df, ["method", "condition"])`` (or the ``"condition"`` breakdown).
        metric: metric column.
        ax: matplotlib axes (new figure when None).

    Returns:
        The axes.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.6))
    order = [c for c in CONDITIONS if c in set(summary["condition"])]
    _ci_bars(ax, summary, "condition", "method", metric, order=order)
    ax.set_title(title or f"{metric} per lighting condition (mean, 95% bootstrap CI)")
    ax.set_ylabel(metric + (" (lower is better)" if metric in LOWER_IS_BETTER else ""))
    if metric == "psnr":
        low = np.nanmin(summary[f"{metric}_lo"].to_numpy(float))
        ax.set_ylim(max(0.0, low - 2.0), ax.get_ylim()[1])
    return ax


# Display order of the binned columns (worst last); other columns are sorted.
LEVEL_ORDER: dict[str, tuple] = {
    "condition": CONDITIONS,
    "yaw_bin": ("0-5", "5-10", "10-20", "20-30", ">30"),
    "roll_bin": ("0-5", "5-10", "10-20", "20-30", ">30"),
    "blur_level": ("none", "<4px", "4-8px", ">=8px"),
    "noise_level": ("none", "<0.02", "0.02-0.04", ">=0.04"),
    "jpeg_level": ("none", "q>=60", "q35-60", "q<35"),
    "occlusion": ("none",) + degrade.OCCLUSION_KINDS,
}


def level_order(column: str, values) -> list:
    """The values of a breakdown column in display order (see :data:`LEVEL_ORDER`)."""
    present = list(dict.fromkeys(values))
    known = [v for v in LEVEL_ORDER.get(column, ()) if v in present]
    return known + sorted((v for v in present if v not in known), key=str)


def ci_table(summary: pd.DataFrame, by: str, metric: str = "psnr", digits: int = 2) -> pd.DataFrame:
    """A breakdown as text cells ``"mean [lo, hi]"``: rows = levels of ``by``, columns = methods."""
    cells = summary.assign(cell=[f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]" if np.isfinite(m) else ""
                                 for m, lo, hi in zip(summary[metric], summary[f"{metric}_lo"], summary[f"{metric}_hi"])])
    table = cells.pivot(index=by, columns="method", values="cell")
    table = table.loc[level_order(by, table.index), list(dict.fromkeys(summary["method"]))]
    table.columns.name = f"{metric} (95% CI)"
    return table


def plot_breakdown(summary: pd.DataFrame, by: str, metric: str = "psnr", ax=None, order=None):
    """Grouped bars of any breakdown (yaw_bin, occlusion, noise_level ...) with CI error bars."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.2))
    _ci_bars(ax, summary, by, "method", metric, order=order or level_order(by, summary[by]))
    ax.set_title(f"{metric} by {by} (95% CI)")
    return ax


PAIR_KEYS = ("image", "condition", "sweep", "severity")  # one degraded input: the same for every method


def gain_summary(df: pd.DataFrame, by: str, metric: str = "psnr", baseline: str = "bicubic", n_boot: int = 1000,
                 seed: int = 0) -> pd.DataFrame:
    """Each method's gain over a baseline per level of ``by``, paired on the same degraded inputs.

    Every method row is matched with the baseline's row for the same input (:data:`PAIR_KEYS`),
    so the interval is that of the paired difference: narrower than comparing two means, and
    read directly as "is this method better than the baseline here".

    Args:
        df: rows from :func:`evaluate` / :func:`load_results`; preset rows only (sweeps dropped,
            as in :func:`breakdowns`).
        by: the breakdown column (``yaw_bin``, ``occlusion``, ``noise_level`` ...).
        metric: metric column.
        baseline: the method subtracted (its own rows are not in the result: its gain is 0).
        n_boot, seed: bootstrap settings (as :func:`summarise`).

    Returns:
        One row per (method, level): ``method``, ``by``, ``n`` (pairs) and ``<metric>_gain``,
        ``<metric>_gain_lo``, ``<metric>_gain_hi`` (method minus baseline, in the metric's unit;
        for a lower-is-better metric a negative gain is the improvement).

    Raises:
        ConfigError: the baseline, the metric or the column is missing from ``df``.
    """
    main = df[df["sweep"] == ""] if "sweep" in df.columns else df
    for c in (by, metric, "method", *PAIR_KEYS):
        if c not in main.columns:
            raise ConfigError(f"gain_summary: no column {c!r}; columns: {', '.join(map(str, main.columns))}")
    if baseline not in set(main["method"]):
        raise ConfigError(f"gain_summary: baseline {baseline!r} not evaluated; methods: "
                          f"{', '.join(dict.fromkeys(main['method']))}")
    keys = list(PAIR_KEYS)
    base = main[main["method"] == baseline].set_index(keys)[metric].astype(float)
    others = main[main["method"] != baseline]
    gain = others[metric].astype(float).to_numpy() - base.reindex(pd.MultiIndex.from_frame(others[keys])).to_numpy()
    paired = others.assign(**{f"{metric}_gain": gain})
    table = summarise(paired, ["method", by], metrics=[f"{metric}_gain"], n_boot=n_boot, seed=seed)
    return table


def plot_breakdown_gain(df: pd.DataFrame, by: str, metric: str = "psnr", baseline: str = "bicubic", ax=None,
                        order=None, n_boot: int = 1000):
    """Grouped bars of each method's gain over ``baseline`` per level of ``by``, 95% CI error bars.

    The zero line is the baseline. Bars of absolute PSNR all start at 0 dB and run to 20-25 dB,
    which hides differences of a few tenths between methods; gains put them on the scale that
    matters. Colours follow the method order of ``df`` (the baseline keeps its colour slot), so a
    method has the same colour as in :func:`plot_conditions`.

    Args:
        df: rows from :func:`evaluate` / :func:`load_results`.
        by: the breakdown column.
        metric: metric column (``"psnr"``: the axis reads dB).
        baseline: the method at zero.
        ax: matplotlib axes (new figure when None).
        order: level order (default :func:`level_order`).
        n_boot: bootstrap resamples.

    Returns:
        The axes.
    """
    import matplotlib.pyplot as plt

    table = gain_summary(df, by, metric, baseline, n_boot=n_boot)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3.2))
    methods = list(dict.fromkeys(df["method"]))
    palette = {m: f"C{i}" for i, m in enumerate(methods)}
    _ci_bars(ax, table, by, "method", f"{metric}_gain", order=order or level_order(by, table[by]),
             hue_order=[m for m in methods if m != baseline], palette=palette)
    ax.axhline(0.0, color="black", linewidth=1, label=f"{baseline} (zero line)")
    unit = " (dB)" if metric == "psnr" else ""
    sign = "-" if metric in LOWER_IS_BETTER else "+"  # which side of the zero line is better
    ax.set_ylabel(f"{metric} - {baseline}{unit}, {sign} better", fontsize=8)
    ax.set_title(f"gain by {by} (95% CI)")
    return ax


def severity_table(df: pd.DataFrame, metric: str = "psnr") -> pd.DataFrame:
    """Mean ``metric`` with rows = severity level and columns = method.

    Uses the controlled sweep rows when there are any (``"noise=0.03"`` ...), else the binned
    factors of the preset rows (``"blur <4px"`` ...).
    """
    sweep = df[df["sweep"] != ""]
    if len(sweep):
        t = sweep.assign(level=sweep["sweep"] + "=" + sweep["severity"].map(lambda v: f"{v:g}"))
        order = list(dict.fromkeys(t["level"]))
        return t.pivot_table(index="level", columns="method", values=metric, aggfunc="mean", sort=False).loc[order]
    main = df[df["sweep"] == ""]
    parts = []
    for col in ("blur_level", "noise_level", "jpeg_level", "occlusion"):
        p = main.pivot_table(index=col, columns="method", values=metric, aggfunc="mean")
        p.index = [f"{col.replace('_level', '')} {v}" for v in p.index]
        parts.append(p)
    return pd.concat(parts)


def plot_severity_heatmap(df: pd.DataFrame, metric: str = "psnr", ax=None):
    """Heatmap of mean ``metric``: severity level x method (see :func:`severity_table`)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    table = severity_table(df, metric)
    if ax is None:
        _, ax = plt.subplots(figsize=(1.6 + 1.3 * table.shape[1], 0.9 + 0.32 * table.shape[0]))
    # Dark = bad for both directions of metric.
    cmap = "rocket_r" if metric in LOWER_IS_BETTER else "rocket"
    sns.heatmap(table, annot=True, fmt=".1f" if metric == "psnr" else ".3g", cmap=cmap, ax=ax,
                cbar_kws={"label": metric})
    ax.set_title(f"{metric}: severity x method")
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.tick_params(axis="y", rotation=0)
    ax.tick_params(axis="x", rotation=20)
    return ax


def worst_cases(df: pd.DataFrame, faces, methods: dict, metric: str = "psnr", k: int = 6, method: str | None = None,
                config: dict | None = None):
    """Grid of the ``k`` worst faces: lq | each method | gt, with each method's score.

    The worst faces (each face once, under its worst condition) are the lowest ``metric`` (highest for lower-is-better metrics) of ``method``
    (default: the method with the best mean, so these are the failures that remain). The pairs
    are rebuilt from the saved config (deterministic), so no images are kept during evaluation.

    Args:
        df: rows from :func:`evaluate` (or :func:`load_results`).
        faces: the faces given to :func:`evaluate`.
        methods: the same methods.
        metric, k, method: what to rank.
        config: the evaluation config (default ``df.attrs["config"]``).

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    cfg = config or df.attrs.get("config")
    if not cfg:
        raise ConfigError("worst_cases needs the evaluation config (df.attrs['config'] or config=)")
    main = df[(df["sweep"] == "") & df[metric].notna()] if metric in df.columns else None
    if main is None or main.empty:
        raise ConfigError(f"no rows with metric {metric!r}; columns: {', '.join(map(str, df.columns))}")
    lower_better = metric in LOWER_IS_BETTER
    means = main.groupby("method")[metric].mean()
    method = method or (means.idxmin() if lower_better else means.idxmax())
    # One row per face (its worst condition): under paired degradations a hopeless face would
    # otherwise fill the grid five times.
    rows = (main[main["method"] == method].sort_values(metric, ascending=not lower_better)
            .drop_duplicates("image").head(int(k)))
    images, _, _ = _face_arrays(faces)
    size = images.shape[1]
    maker = PairMaker(cfg["preset"], cfg["scale"], cfg["angles"], cfg["seed"])
    names = list(methods)
    fig, axes = plt.subplots(len(rows), len(names) + 2, figsize=(1.5 * (len(names) + 2), 1.65 * len(rows)),
                             squeeze=False)
    for r, (_, case) in enumerate(rows.iterrows()):
        lq, gt, _ = maker(images[int(case["image"])], int(case["image"]), case["condition"])
        lq_t = _to_batch([lq])
        panels = [("lq", lq)]
        for name in names:
            out = _call(methods[name], lq_t, (size, size))[0].numpy().transpose(1, 2, 0)
            score = df[(df["method"] == name) & (df["image"] == case["image"]) &
                       (df["condition"] == case["condition"]) & (df["sweep"] == "")][metric]
            panels.append((f"{name}\n{metric} {score.iloc[0]:.3g}" if len(score) else name, out))
        panels.append(("gt", gt))
        for c, (label, img) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(label, fontsize=7)
        axes[r, 0].set_ylabel(f"#{int(case['image'])} {case['condition']}", fontsize=7)
    fig.suptitle(f"worst {len(rows)} faces by {metric} of {method}", fontsize=9)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# Command line


def probe_check(methods: dict, people: int = 20, condition: str = "medium", preset: str = "cctv-heavy",
                scale: int = 4, size: int = 64, seeds=(0, 1, 2), faces=None, progress: bool = False,
                nets=("sface",)):
    """Recognition of CCTV-degraded, restored probes against a clean gallery (ORL by default).

    Images 1-5 of people 1..``people`` are enrolled clean; images 6-10 are degraded with ``preset``
    at ``x scale`` under ``condition`` (no head pose; :class:`facekit.evaluate.PairMaker` seeds),
    restored by each method and matched. ORL is a domain the CelebA-trained models never saw:
    grey 1990s photos, so it shows whether restoration keeps identity or paints a generic face.

    Args:
        methods: ``{name: fn(lq (N,3,h,w) float32 in [0,1], (H, W)) -> (N,3,H,W) in [0,1]}``
            (:func:`facekit.restorers.build_restorer`); include ``"bicubic"`` for the degraded side.
        people: how many ORL people (1..40) to use.
        condition: lighting condition of the probes.
        preset, scale, size: degradation preset, factor and clean crop side (lq side = size/scale).
        seeds: PairMaker seeds; each probe is degraded once per seed (three draws of 100 probes
            tell a method's rank-1 apart more surely than one: one draw moves it by ~0.05).
        faces: a FaceSet with ``images``, ``identity`` and ``paths`` instead of ORL (image numbers
            are read from the file names).
        progress: a bar over the methods.
        nets: recognition back-ends (``recognition.BACKENDS``) scoring the same restored probes;
            ``"dlib"`` checks a model trained with the SFace identity loss against a network it never saw.

    Returns:
        DataFrame, one row per net and method plus ``clean`` (the undegraded probes): ``net``, ``method``,
        ``similarity`` (mean SFace cosine of each probe to its own clean image), ``margin`` (that
        minus its mean cosine to the other people's clean probes), ``rank1`` (share of probes whose
        best gallery match is their person), ``probes`` (distinct images), ``draws`` (degraded copies
        of each: one per seed; 1 for ``clean``), ``people``. Read ``margin`` and ``rank1``
        before ``similarity``: a featureless face (each probe's mean colour) is closer to its clean
        face (~0.22) than a bicubic CCTV probe is (~0.15), because it is close to every face.
    """
    from tqdm.auto import tqdm

    if faces is None:
        faces = data.load_faces("orl", size=size, align="landmarks", progress=False)
    num = np.array([int(re.sub(r"\D", "", Path(p).stem) or 0) for p in faces.paths])
    person = person_numbers(faces.identity)
    chosen = (person >= 1) & (person <= int(people))
    g, p = chosen & (num <= 5), chosen & (num > 5)
    if not g.any() or not p.any():
        raise ConfigError(f"probe_check needs images 1-5 (gallery) and 6-10 (probes) of people 1-{people}; "
                          f"found {int(g.sum())} and {int(p.sum())}")
    seeds = [int(s) for s in np.atleast_1d(seeds)]
    if not seeds:
        raise ConfigError("probe_check needs at least one seed")
    probes, who = faces.images[p], faces.identity[p]
    lq = []
    for seed in seeds:
        make = PairMaker(preset, scale=scale, angles=False, seed=seed)
        lq.extend(make(c, i, condition)[0] for i, c in enumerate(probes))
    lq = torch.from_numpy(np.stack(lq)).permute(0, 3, 1, 2).contiguous()
    restored = {}  # each method restores once, whatever the number of nets
    for name, fn in tqdm(methods.items(), desc="probe check", disable=not progress):
        with torch.inference_mode():
            out = fn(lq, (size, size)).clamp(0, 1)
        restored[name] = images.to_uint8(out)
    n = len(probes)
    rows = []
    for net in nets:
        gallery = Gallery(net=net).enroll(faces.images[g], identities=faces.identity[g])
        e_clean = recognition.l2_normalize(recognition.embed(probes, backend=net))

        def score(name, e):
            """Row for embeddings ``e`` of ``draws`` copies of the probes, copy-major."""
            draws = len(e) // n
            own_person = np.tile(who, draws)
            sims = e @ e_clean.T
            other = own_person[:, None] != who[None, :]
            own = float(sims[np.arange(len(e)), np.arange(len(e)) % n].mean())
            margin = own - float((sims * other).sum() / other.sum())
            top = gallery.match_embeddings(e, top_k=1)
            rank1 = float(np.mean([m[0].identity == w for m, w in zip(top, own_person)]))
            return {"net": net, "method": name, "similarity": own, "margin": margin, "rank1": rank1, "probes": n,
                    "draws": draws, "people": len(gallery.people)}

        rows.append(score("clean", e_clean))
        rows.extend(score(name, recognition.l2_normalize(recognition.embed(crops, backend=net)))
                    for name, crops in restored.items())
    return pd.DataFrame(rows)
