"""Gallery matching: enrol known people, match probe faces (raw or restored), ranked candidates.

A :class:`Gallery` holds one identity embedding per enrolled image (SFace by default), the
identity of each, and a decision threshold calibrated on a labelled set (ORL by default: the
threshold at which 1% of impostor pairs would be accepted). It is saved/loaded as ``.npz``.

Faces are handled as margin crops (``facekit.faces.align_face`` framing, margin 0.15): photos are
detected and aligned with YuNet; images in which no face is found are taken as ready-made crops
(centre square). Command line::

    python -m facekit identify GALLERY PROBES [--top-k 5] [--threshold auto|0.4] [--restore [METHOD]]
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from facekit import images, recognition, restorers
from facekit.errors import ConfigError, DataSourceError, FacekitError, ImageReadError
from facekit.faces import align_face, center_crop
from facekit.imageio import IMAGE_EXTENSIONS, printable_path, read_image

CROP_SIZE = 160  # margin-crop side used for enrolment and probes read from files (ArcFace frame ~123 px)
MARGIN = recognition.DEFAULT_MARGIN
UNKNOWN = ""


class Candidate(NamedTuple):
    """One ranked match: an enrolled identity and its best cosine similarity to the probe."""

    identity: str
    similarity: float


@dataclass
class FaceInput:
    """A face read from a file: its margin crop and how it was obtained."""

    path: str
    crop: np.ndarray
    detected: bool


def _natural_key(p: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p)]


def read_faces(paths, size: int = CROP_SIZE, margin: float = MARGIN, detector=None):
    """Read image files into margin crops.

    A photo in which YuNet finds a face gives the aligned crop of its most confident face; an
    image without a detectable face is taken as a crop already (centre square, resized).

    Args:
        paths: image files.
        size: crop side.
        margin: crop margin.
        detector: a :class:`facekit.faces.FaceDetector` (default: the shared one).

    Returns:
        ``(faces list[FaceInput], skipped list[(path, reason)])``.
    """
    det = detector or recognition.shared_detector()
    faces, skipped = [], []
    for p in paths:
        name = printable_path(p)  # a name that is not UTF-8 is read as is, recorded with \\xNN escapes
        try:
            img = read_image(p)
        except ImageReadError as exc:
            skipped.append((name, exc.problem))
            continue
        if min(img.shape[:2]) < 8:
            skipped.append((name, f"image too small ({img.shape[1]}x{img.shape[0]})"))
            continue
        dets = det.detect(img)
        if dets:
            faces.append(FaceInput(name, align_face(img, dets[0].landmarks, size, margin), True))
        else:
            faces.append(FaceInput(name, center_crop(img, size), False))
    return faces, skipped


def list_gallery_folder(root: str | Path) -> list[tuple[Path, str]]:
    """``(file, identity)`` pairs of a gallery folder.

    Images inside a sub-folder belong to the sub-folder's name; images directly in ``root`` belong
    to their file-name prefix before the first ``_`` (``alice_01.jpg`` -> ``alice``; no ``_``: the
    whole stem).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataSourceError(f"gallery folder {root} does not exist or is not a folder")
    out = []
    for p in sorted(root.rglob("*"), key=lambda q: _natural_key(str(q.relative_to(root)))):
        if not p.is_file() or p.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        rel = p.relative_to(root)
        who = rel.parts[0] if len(rel.parts) > 1 else p.stem.split("_")[0]
        out.append((p, printable_path(who)))
    if not out:
        raise DataSourceError(f"gallery folder {root} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return out


def _read_tracks(root: Path) -> list:
    """The ``tracks`` list of a ``facekit video`` folder's ``tracks.json``; DataSourceError if unreadable."""
    try:
        return json.loads((root / "tracks.json").read_text())["tracks"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataSourceError(f"{root / 'tracks.json'}: not a readable track table ({exc})") from None


def track_probe_files(video_out: str | Path) -> list[Path]:
    """One face per track of a ``facekit video`` output folder: the fused face
    (``gallery/track_NNNN_fused.png``) where the track was fused, else its best single frame.

    Raises:
        DataSourceError: an unreadable ``tracks.json`` or no track with a face image.
    """
    root = Path(video_out)
    tracks = _read_tracks(root)
    files = []
    for t in tracks:
        for key in ("fused", "gallery"):
            name = t.get(key) if isinstance(t, dict) else None
            if name and (root / name).is_file():
                files.append(root / name)
                break
    if not files:
        raise DataSourceError(f"{root}: no track has a face image (run `facekit video` with the gallery on)")
    return files


def track_views(video_out: str | Path) -> dict[str, list[Path]]:
    """The views of each fused track of a ``facekit video`` output folder: ``{fused face path:
    [its restored frames]}`` (``views`` in ``tracks.json``; tracks without them are left out).
    Any other probe file or folder has none: ``{}``.

    Raises:
        DataSourceError: an unreadable ``tracks.json``.
    """
    root = Path(video_out)
    if not (root / "tracks.json").is_file():
        return {}
    tracks = _read_tracks(root)
    out = {}
    for t in tracks:
        if not isinstance(t, dict) or not t.get("fused") or not t.get("views"):
            continue
        folder = root / t["views"]
        files = sorted(p for p in folder.glob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS) \
            if folder.is_dir() else []
        if files:
            out[printable_path(root / t["fused"])] = files
    return out


def list_probe_files(probes: str | Path) -> list[Path]:
    """Image files of a probe file or folder (recursive, natural order). A ``facekit video``
    output folder (it holds ``tracks.json``) gives one face per track: :func:`track_probe_files`."""
    probes = Path(probes)
    if probes.is_file():
        return [probes]
    if not probes.is_dir():
        raise DataSourceError(f"probes {probes}: no such file or folder")
    if (probes / "tracks.json").is_file():
        return track_probe_files(probes)
    files = [p for p in probes.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if not files:
        raise DataSourceError(f"probe folder {probes} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return sorted(files, key=lambda q: _natural_key(str(q.relative_to(probes))))


@dataclass
class Gallery:
    """Enrolled identities and their embeddings.

    Attributes:
        net: recognition back-end ("sface", "sface-torch" or "dlib"; see ``facekit.recognition``).
        margin: margin of the crops the gallery expects.
        embeddings: ``(M,128) float32`` L2-normalised, one per enrolled image.
        identities: ``(M,)`` identity of each row.
        paths: ``(M,)`` source of each row ("" for arrays).
        threshold: cosine similarity at or above which a match is accepted (NaN: not calibrated).
        threshold_far: the false accept rate the threshold was calibrated for.
        calibration: where and how the threshold came from.
        skipped: ``[(path, reason)]`` inputs that could not be enrolled.
    """

    net: str = "sface"
    margin: float = MARGIN
    embeddings: np.ndarray = field(default_factory=lambda: np.zeros((0, 128), np.float32))
    identities: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    paths: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    threshold: float = float("nan")
    threshold_far: float = float("nan")
    calibration: str = ""
    skipped: list = field(default_factory=list)
    device: str = "cpu"

    def __post_init__(self):
        if self.net not in recognition.BACKENDS:
            raise ConfigError(f"unknown recognition net {self.net!r}; valid: {', '.join(recognition.BACKENDS)}")

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def people(self) -> list[str]:
        """Enrolled identities, sorted."""
        return sorted(set(self.identities.tolist()))

    def embed(self, crops) -> np.ndarray:
        """L2-normalised embeddings of margin crops (``(N,S,S,3) uint8`` or ``(N,3,S,S)`` in [0,1])."""
        e = recognition.embed(crops, self.net, self.margin, self.device)
        return recognition.l2_normalize(e)

    def enroll_crops(self, crops, identities, paths=None) -> "Gallery":
        """Add margin crops with known identities (empty identity -> skipped)."""
        crops = recognition.as_uint8_images(crops, "crops")
        identities = np.asarray(identities, dtype=object).astype(str)
        if len(identities) != len(crops):
            raise DataSourceError(f"{len(crops)} crops but {len(identities)} identities")
        paths = np.asarray(paths if paths is not None else [""] * len(crops), dtype=object).astype(str)
        keep = identities != ""
        for p in paths[~keep]:
            self.skipped.append((str(p), "identity unknown"))
        if keep.any():
            e = self.embed(crops[keep])
            self.embeddings = np.concatenate([self.embeddings, e]).astype(np.float32)
            self.identities = np.concatenate([self.identities.astype(str), identities[keep]]).astype(object)
            self.paths = np.concatenate([self.paths.astype(str), paths[keep]]).astype(object)
        return self

    def enroll(self, source, identities=None, detector=None) -> "Gallery":
        """Enrol a gallery folder, a ``FaceSet``, or an array of crops.

        Args:
            source: folder (one sub-folder or file-name prefix ``name_xxx.jpg`` per person; photos
                are detected and aligned with YuNet, images without a detectable face are taken as
                crops), a ``facekit.data.FaceSet`` (its crops and identities), or ``(N,S,S,3) uint8``
                crops with ``identities``.
            identities: identities for an array source.
            detector: face detector for folder sources.

        Returns:
            self (unreadable files are recorded in :attr:`skipped` with the reason).
        """
        if isinstance(source, (str, Path)):
            pairs = list_gallery_folder(source)
            who = {printable_path(p): w for p, w in pairs}
            faces, skipped = read_faces([p for p, _ in pairs], CROP_SIZE, self.margin, detector)
            self.skipped.extend(skipped)
            if faces:
                self.enroll_crops(np.stack([f.crop for f in faces]), [who[f.path] for f in faces],
                                  [f.path for f in faces])
        elif hasattr(source, "images") and hasattr(source, "identity"):
            self.enroll_crops(source.images, source.identity, getattr(source, "paths", None))
        else:
            if identities is None:
                raise DataSourceError("enrolling an array of crops needs their identities")
            self.enroll_crops(source, identities)
        if len(self) == 0:
            raise DataSourceError(f"nothing enrolled from {source if isinstance(source, (str, Path)) else 'the input'}; "
                                  f"skipped: {self.skipped[:3]}")
        return self

    def calibrate(self, faces=None, far: float = 0.01, mode: str = "pair") -> float:
        """Set :attr:`threshold` to the similarity giving ``far`` false accepts on a labelled set.

        Args:
            faces: a labelled ``FaceSet`` (default: ORL, 400 faces of 40 people, 64-px crops).
            far: target false accept rate.
            mode: ``"pair"``: FAR over every impostor pair of ``faces`` (the verification
                threshold). ``"open-set"``: FAR over ``faces`` used as strangers against this
                gallery, i.e. the fraction of probes of people not enrolled whose *best* gallery
                similarity passes (a face's own identity in the gallery is ignored). A pair
                threshold at FAR 1% lets far more than 1% of strangers through a gallery of many
                images, because each stranger gets one try per enrolled image; "open-set" sets
                the threshold that keeps that rate at ``far`` for this gallery. The calibration
                people must not be enrolled under other names (a face of an enrolled person counts
                as a stranger unless its identity string is the gallery's), or the threshold is
                far too strict.

        Returns:
            The threshold.
        """
        if mode not in ("pair", "open-set"):
            raise ConfigError(f"unknown calibration mode {mode!r}; valid: pair, open-set")
        name = "given faces"
        if faces is None:
            from facekit.data import load_faces  # looked up per call (tests substitute a small ORL)

            faces = load_faces("orl", size=64, align="landmarks", progress=False)
            name = "ORL"
        ids = np.asarray(faces.identity, dtype=object)
        known = ids != ""
        if len(set(ids[known].tolist())) < 2:
            raise DataSourceError("calibration needs labelled faces of at least 2 people")
        e = self.embed(np.asarray(faces.images)[known])
        ids = ids[known]
        if mode == "pair":
            gen, imp = recognition.pair_scores(e, ids)
            self.threshold = recognition.threshold_at_far(imp, far)
            self.calibration = (f"{name}: {len(gen)} genuine / {len(imp)} impostor pairs, FAR {far:g}, "
                                f"TAR {recognition.tar_at_far(gen, imp, far):.3f}, net {self.net}")
        else:
            if len(self) == 0:
                raise FacekitError("open-set calibration needs an enrolled gallery")
            sims = e @ self.embeddings.T
            sims[ids[:, None] == self.identities[None, :].astype(str)] = -np.inf
            best = sims.max(axis=1)
            best = best[np.isfinite(best)]
            self.threshold = recognition.threshold_at_far(best, far)
            self.calibration = (f"{name}: {len(best)} strangers vs this gallery ({len(self)} images), "
                                f"open-set FAR {far:g}, net {self.net}")
        self.threshold_far = float(far)
        return self.threshold

    def match(self, probe_crops, top_k: int = 5) -> list[list[Candidate]]:
        """Rank enrolled identities for each probe.

        Args:
            probe_crops: ``(N,S,S,3) uint8`` or ``(N,3,S,S)`` float tensor in [0,1], margin crops
                (raw or restored).
            top_k: candidates per probe.

        Returns:
            Per probe, up to ``top_k`` :class:`Candidate` sorted by descending similarity (an
            identity's similarity is its best over its enrolled images).
        """
        if len(self) == 0:
            raise FacekitError("the gallery is empty: enrol faces first")
        e = self.embed(probe_crops)
        return self.match_embeddings(e, top_k)

    def match_embeddings(self, emb: np.ndarray, top_k: int = 5) -> list[list[Candidate]]:
        """:meth:`match` on precomputed L2-normalised probe embeddings ``(N,128)``."""
        people = self.people
        col = {p: i for i, p in enumerate(people)}
        sims = np.asarray(emb, np.float32) @ self.embeddings.T
        best = np.full((len(sims), len(people)), -np.inf, np.float32)
        idx = np.array([col[w] for w in self.identities])
        for j in range(len(people)):
            cols = idx == j
            best[:, j] = sims[:, cols].max(axis=1)
        order = np.argsort(-best, axis=1, kind="stable")[:, :max(1, int(top_k))]
        return [[Candidate(people[j], float(best[i, j])) for j in row] for i, row in enumerate(order)]

    def label(self, probe_crops, threshold: float | None = None) -> list[Candidate]:
        """Best identity per probe, or ``Candidate("", sim)`` when below the threshold."""
        t = self.threshold if threshold is None else float(threshold)
        if np.isnan(t):
            raise ConfigError("the gallery has no threshold: call calibrate() or pass threshold=")
        out = []
        for cands in self.match(probe_crops, top_k=1):
            c = cands[0]
            out.append(c if c.similarity >= t else Candidate(UNKNOWN, c.similarity))
        return out

    def save(self, path: str | Path) -> Path:
        """Write the gallery to ``.npz`` (no pickles)."""
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(".npz")
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"net": self.net, "margin": self.margin, "threshold": self.threshold,
                "threshold_far": self.threshold_far, "calibration": self.calibration,
                "skipped": [list(s) for s in self.skipped], "version": 1}
        np.savez(path, embeddings=self.embeddings.astype(np.float32),
                 identities=np.asarray(self.identities, dtype=str), paths=np.asarray(self.paths, dtype=str),
                 meta=np.array(json.dumps(meta)))
        return path

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "Gallery":
        """Read a gallery written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise DataSourceError(f"gallery file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                emb, ids, paths = z["embeddings"], z["identities"], z["paths"]
        except (OSError, ValueError, KeyError) as exc:
            raise DataSourceError(f"{path} is not a facekit gallery file ({exc})") from exc
        return cls(net=meta["net"], margin=float(meta["margin"]), embeddings=emb.astype(np.float32),
                   identities=ids.astype(object), paths=paths.astype(object), threshold=float(meta["threshold"]),
                   threshold_far=float(meta["threshold_far"]), calibration=meta.get("calibration", ""),
                   skipped=[tuple(s) for s in meta.get("skipped", [])], device=device)


def restore_crops(crops: np.ndarray, method: str, scale: int = 4, size: int = 64, device: str = "cpu") -> np.ndarray:
    """Restore probe crops with a restorer of :mod:`facekit.restorers` (model, chain or baseline).

    The crops are downsampled (area) to ``size // scale`` px, the model's input framing, and the
    method restores them to ``size`` px.

    Args:
        crops: ``(N,S,S,3) uint8`` margin crops.
        method: a :data:`facekit.restorers.RESTORERS` name (e.g. ``"model:models/x.pt"``, ``"bicubic"``).
        scale: the method's upscaling factor.
        size: restored crop side (the model's training size).
        device: torch device.

    Returns:
        ``(N,size,size,3) uint8`` restored crops.
    """
    methods, skipped = restorers.build_restorers([method], scale, device, skip_unavailable=True)
    if method not in methods:
        raise ConfigError(f"restoration method {method!r} unavailable: {skipped.get(method, 'unknown reason')}")
    lq_side = max(1, size // scale)
    lq = np.stack([cv2.resize(c, (lq_side, lq_side), interpolation=cv2.INTER_AREA) for c in crops])
    return images.to_uint8(methods[method](images.to_tensor(lq), (size, size)))


def default_restore_method() -> str:
    """The first released restoration method (``chain:default`` before ``model:models/*.pt``).

    Raises:
        ConfigError: ``models/`` holds no released model.
    """
    names = restorers.released_restorers()
    if not names:
        raise ConfigError("--restore without a method needs a released model (models/default/chain.yaml or "
                          "models/*.pt); none found (pass a method, e.g. --restore bicubic or --restore model:PATH)")
    return names[0]


# ---------------------------------------------------------------------------------------------
# Command line


