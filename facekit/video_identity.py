"""Track identities: label each video track with the enrolled person its best crops match.

:class:`TrackIdentifier` keeps each track's few best face crops, embeds them in a background
thread (SFace, through a ``facekit.identify.Gallery``) and matches their mean embedding against the
gallery: one :class:`TrackLabel` per track, ``unknown`` below the threshold.
:func:`build_identifier` makes one from a gallery folder or saved ``.npz`` (:func:`load_gallery`)
and a threshold (:func:`parse_identity_threshold`). Used by :mod:`facekit.video`.
"""

from __future__ import annotations

import math
import queue
import sys
import threading
import time
from pathlib import Path

import numpy as np

from facekit import errors
from facekit.errors import ConfigError

IDENTITY_SOURCES = ("enhanced", "raw")
UNKNOWN_LABEL = "unknown"


def parse_identity_threshold(value) -> float | None:
    """``"auto"`` -> None (use the gallery's / calibrate), a number (or numeric string) -> float.

    Raises:
        ConfigError: anything else, or a number outside [-1, 1].
    """
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"gallery threshold must be 'auto' or a cosine similarity in [-1, 1], "
                          f"got {value!r}") from None
    if not -1.0 <= t <= 1.0 or math.isnan(t):
        raise ConfigError(f"gallery threshold must be a cosine similarity in [-1, 1], got {t}")
    return t


class TrackLabel:
    """A track's identity decision.

    Attributes:
        identity: the enrolled person, or :data:`UNKNOWN_LABEL` below the threshold / without crops.
        score: cosine similarity in [-1, 1] of the track's mean embedding to ``candidate``
            (NaN when no crop was embedded).
        candidate: the best-matching enrolled person even when rejected ("" without crops).
        crops: how many crops the mean embedding was made of.
    """

    __slots__ = ("identity", "score", "candidate", "crops")

    def __init__(self, identity: str, score: float, candidate: str, crops: int):
        self.identity, self.score, self.candidate, self.crops = identity, float(score), candidate, int(crops)

    def caption(self) -> str:
        """Box caption text: ``"alice 0.62"`` / ``"unknown 0.21"`` (no score without crops)."""
        return self.identity if math.isnan(self.score) else f"{self.identity} {self.score:.2f}"

    def __repr__(self) -> str:
        return f"TrackLabel({self.identity!r}, {self.score:.3f}, {self.candidate!r}, {self.crops})"


def load_gallery(path, device: str = "cpu"):
    """Open a gallery for video labelling: a saved ``.npz`` or a folder to enrol.

    Args:
        path: ``.npz`` written by ``facekit.identify.Gallery.save`` or a gallery folder.

    Returns:
        A ``facekit.identify.Gallery``.

    Raises:
        ConfigError: ``path`` is neither; the message names it.
    """
    from facekit.identify import Gallery

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"gallery {p}: no such gallery folder or saved gallery (.npz) file")
    try:
        return Gallery(device=device).enroll(p) if p.is_dir() else Gallery.load(p, device=device)
    except errors.DataSourceError as exc:
        msg = str(exc)
        raise ConfigError(msg if str(p) in msg else f"gallery {p}: {msg}") from exc


class TrackIdentifier:
    """Label tracks with gallery identities from the mean embedding of each track's best crops.

    The processing thread only calls :meth:`wants` / :meth:`offer` (a comparison, and a landmark
    warp by the caller when a crop is wanted); embedding happens in a background worker (one job
    per track queued at a time, so a burst of improving crops costs one embedding pass), capped at
    ``max_embeds`` per track while the track lives, and once more at :meth:`track_ended` /
    :meth:`finish`, which embed whatever of the best crops is still missing. Final labels depend
    only on the crops offered, not on the worker's timing.

    Args:
        gallery: an enrolled ``facekit.identify.Gallery``.
        threshold: accept threshold on cosine similarity in [-1, 1].
        crops: best crops kept per track (by quality = detector score x sharpness).
        max_embeds: embeddings per track before it ends.
        background: embed in a worker thread (False: only at :meth:`track_ended` / :meth:`finish`).
    """

    def __init__(self, gallery, threshold: float, crops: int = 3, max_embeds: int = 4, background: bool = True):
        if len(gallery) == 0:
            raise ConfigError("the gallery is empty: enrol faces first")
        self.gallery = gallery
        self.threshold = float(threshold)
        self.k = max(1, int(crops))
        self.max_embeds = max(0, int(max_embeds))
        # side of a margin crop whose ArcFace frame is 112 px, so re-framing for SFace barely resamples
        from facekit.recognition import SFACE_SIZE

        self.crop_side = int(round(SFACE_SIZE * (1 + 2 * gallery.margin)))
        self.margin = gallery.margin
        self._lock = threading.Lock()
        self._entries: dict[int, list[list]] = {}  # tid -> [[quality, frame, crop, emb|None], ...] best first
        self._embedded: dict[int, int] = {}
        self._labels: dict[int, TrackLabel] = {}
        self._pending: set[tuple[int, bool]] = set()  # queued (track, final) jobs
        self._jobs: queue.Queue = queue.Queue()
        self.embeds = 0
        self.embed_s = 0.0
        self.embed_cpu_s = 0.0
        self.error = ""
        self.background = background
        self._worker = None  # started on the first job, so a run that fails early leaves no thread

    # -- processing-thread side
    def wants(self, tid: int, quality: float) -> bool:
        """Whether a crop of ``quality`` would enter track ``tid``'s best few."""
        with self._lock:
            e = self._entries.get(tid)
            return e is None or len(e) < self.k or quality > e[-1][0]

    def offer(self, tid: int, frame: int, quality: float, crop: np.ndarray) -> None:
        """Keep ``crop`` (``(S,S,3) uint8`` RGB margin crop, :attr:`crop_side`) if among the best few."""
        with self._lock:
            e = self._entries.setdefault(tid, [])
            if len(e) >= self.k and quality <= e[-1][0]:
                return
            e.append([float(quality), int(frame), crop, None])
            e.sort(key=lambda r: -r[0])
            del e[self.k:]
            if self._embedded.get(tid, 0) < self.max_embeds:
                self._schedule(tid)

    def track_ended(self, tid: int) -> None:
        """Embed the rest of the track's best crops (in the worker) and fix its label."""
        with self._lock:
            if tid in self._entries:
                self._schedule(tid, final=True)

    def label(self, tid: int) -> TrackLabel | None:
        """The current label of a track (None until one of its crops is embedded)."""
        return self._labels.get(tid)

    # -- worker side
    def _schedule(self, tid: int, final: bool = False) -> None:
        if not self.background:
            return
        if self._worker is None:
            self._worker = threading.Thread(target=self._work, daemon=True, name="facekit-video-identify")
            self._worker.start()
        key = (tid, final)
        if key not in self._pending:
            self._pending.add(key)
            self._jobs.put(key)

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                break
            with self._lock:
                self._pending.discard(job)
            try:
                self._update(job[0], capped=not job[1])
            except Exception as exc:  # noqa: BLE001 - recorded; finish() retries synchronously
                self.error = f"{type(exc).__name__}: {exc}"

    def _update(self, tid: int, capped: bool) -> None:
        with self._lock:
            todo = [r for r in self._entries.get(tid, []) if r[3] is None]
            if capped:
                todo = todo[:max(0, self.max_embeds - self._embedded.get(tid, 0))]
        if todo:
            t0, c0 = time.perf_counter(), time.thread_time()
            emb = self.gallery.embed(np.stack([r[2] for r in todo]))
            with self._lock:
                for r, v in zip(todo, emb):
                    r[3] = v
                self._embedded[tid] = self._embedded.get(tid, 0) + len(todo)
                self.embeds += len(todo)
                self.embed_s += time.perf_counter() - t0
                # CPU time, not wall time: the worker's wall time mostly measures waiting for a core
                self.embed_cpu_s += time.thread_time() - c0
        with self._lock:
            kept = self._entries.get(tid, [])
            embs = [r[3] for r in kept if r[3] is not None]
            if not capped and len(embs) == len(kept):
                for r in kept:  # final: only embeddings are needed now (bounds memory on long streams)
                    r[2] = None
        if not embs:
            return
        mean = np.mean(embs, axis=0)
        mean = mean / max(float(np.linalg.norm(mean)), 1e-12)
        cand = self.gallery.match_embeddings(mean[None], top_k=1)[0][0]
        who = cand.identity if cand.similarity >= self.threshold else UNKNOWN_LABEL
        self._labels[tid] = TrackLabel(who, cand.similarity, cand.identity, len(embs))

    def template_label(self, fused: np.ndarray, views: np.ndarray | None = None) -> TrackLabel:
        """The decision for a fused track's identity template: its fused face's embedding with the
        mean of its views' (:func:`facekit.recognition.track_template`).

        It is what ``facekit identify GALLERY VIDEO_OUT`` decides for the track, from the same
        images (pass them as the run writes them). On synthetic 8-frame ORL tracks the template
        is identified more often than the mean of the three best restored frames, which is what
        the live label sees (rank-1 0.904 vs 0.821 over three draws of 160 tracks; README).

        Args:
            fused: ``(S,S,3) uint8`` RGB fused face.
            views: ``(k,S,S,3) uint8`` RGB restorations of the frames fused, or None.

        Returns:
            :class:`TrackLabel` (``crops`` = 1 + the views used).
        """
        from facekit import identify, recognition  # cv2/torch: a run without fused tracks does not load them

        g = self.gallery
        emb = g.embed(identify.face_crop(fused, identify.CROP_SIZE, g.margin)[0][None])[0]
        n = 0
        if views is not None and len(views):
            crops = np.stack([identify.face_crop(v, identify.CROP_SIZE, g.margin)[0] for v in views])
            emb, n = recognition.track_template(emb, g.embed(crops)), len(crops)
        cand = g.match_embeddings(emb[None], top_k=1)[0][0]
        return TrackLabel(cand.identity if cand.similarity >= self.threshold else UNKNOWN_LABEL, cand.similarity,
                          cand.identity, 1 + n)

    def finish(self, embed: bool = True) -> dict[int, TrackLabel]:
        """Stop the worker, embed every kept crop not yet embedded (unless ``embed`` is False, e.g.
        after an error), and return the final labels."""
        self.background = False  # no new jobs (a late track_ended) once finishing
        if self._worker is not None:
            self._jobs.put(None)
            self._worker.join()
            self._worker = None
        if embed:
            for tid in list(self._entries):
                self._update(tid, capped=False)
        return dict(self._labels)

    def summary(self) -> dict:
        """What ``summary.json`` records about the gallery and its cost."""
        g = self.gallery
        return {"people": len(g.people), "images": len(g), "net": g.net, "threshold": round(self.threshold, 4),
                "calibration": g.calibration, "crops_per_track": self.k, "embeds": self.embeds,
                "embed_wall_ms_per_crop": round(1000 * self.embed_s / max(self.embeds, 1), 2),
                "embed_cpu_ms_per_crop": round(1000 * self.embed_cpu_s / max(self.embeds, 1), 2),
                "embed_cpu_s_total": round(self.embed_cpu_s, 3), **({"error": self.error} if self.error else {})}


def build_identifier(path, threshold="auto", crops: int = 3, max_embeds: int = 4, gallery=None,
                     background: bool = True) -> TrackIdentifier | None:
    """The :class:`TrackIdentifier` for a gallery (None without one).

    Args:
        path: gallery folder or saved ``.npz`` (:func:`load_gallery`); None or "": no gallery.
        threshold: a cosine similarity, or "auto" (:func:`parse_identity_threshold`).
        crops, max_embeds, background: as in :class:`TrackIdentifier`.
        gallery: a ready ``facekit.identify.Gallery`` (overrides ``path``).
    """
    if gallery is None and not path:
        return None
    if gallery is None:
        gallery = load_gallery(path)
    threshold = parse_identity_threshold(threshold)
    if threshold is None:
        if math.isnan(gallery.threshold):
            print("facekit video: calibrating the gallery threshold on ORL (FAR 1%); save a calibrated gallery "
                  "with `python -m facekit identify GALLERY PROBES --save-gallery G.npz` to skip this",
                  file=sys.stderr)
            gallery.calibrate()
        threshold = gallery.threshold
    return TrackIdentifier(gallery, threshold, crops, max_embeds, background)
