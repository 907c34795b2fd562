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
import zipfile
import zlib
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
EMBEDDING_WIDTH = 128  # every net of facekit.recognition (SFace, its torch port, dlib) gives 128-d embeddings
TRACK_FILE_FIELDS = ("gallery", "fused", "views")  # tracks.json fields naming a file or folder of the run


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
        crop, detected = face_crop(img, size, margin, det)
        faces.append(FaceInput(name, crop, detected))
    return faces, skipped


def face_crop(img: np.ndarray, size: int = CROP_SIZE, margin: float = MARGIN, detector=None) -> tuple[np.ndarray, bool]:
    """The margin crop :func:`read_faces` makes of one image.

    Args:
        img: ``(H,W,3) uint8`` RGB.
        size, margin, detector: as :func:`read_faces`.

    Returns:
        ``(crop (size,size,3) uint8, detected)``: the aligned crop of the most confident face YuNet
        finds, or, without one, the image taken as a crop already (centre square, resized).
    """
    dets = (detector or recognition.shared_detector()).detect(img)
    if dets:
        return align_face(img, dets[0].landmarks, size, margin), True
    return center_crop(img, size), False


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


def _read_tracks(root: Path) -> list[dict]:
    """The ``tracks`` list of a ``facekit video`` folder's ``tracks.json``, its file fields checked.

    Args:
        root: the ``facekit video`` output folder.

    Returns:
        The track dicts; each of :data:`TRACK_FILE_FIELDS` present is a string (or null).

    Raises:
        DataSourceError: ``tracks.json`` is unreadable, not a track table, or a track's
            ``gallery``/``fused``/``views`` is not a path; the message names the track and field.
    """
    table = root / "tracks.json"
    try:
        tracks = json.loads(table.read_text())["tracks"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataSourceError(f"{table}: not a readable track table ({exc})") from None
    if not isinstance(tracks, list):
        raise DataSourceError(f"{table}: \"tracks\" is {_shown(tracks)}, not a list of tracks")
    for i, t in enumerate(tracks):
        if not isinstance(t, dict):
            raise DataSourceError(f"{table}: track entry {i} is {_shown(t)}, not a track object")
        for key in TRACK_FILE_FIELDS:
            # checked here: a number or list would otherwise fail later as a pathlib TypeError (root / 3)
            if t.get(key) is not None and not isinstance(t[key], str):
                raise DataSourceError(f"{table}: {_track_name(t, i)}: \"{key}\" is {_shown(t[key])}, "
                                      f"expected a path relative to {root} (a string)")
    return tracks


def _shown(value) -> str:
    """A JSON value as a message shows it.

    Args:
        value: a value parsed from JSON.

    Returns:
        Its JSON text, cut to 60 characters (a hand-edited file may hold a long one).
    """
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _track_name(track: dict, index: int) -> str:
    """How a message names a track of ``tracks.json``.

    Args:
        track: the track object.
        index: its place in the ``tracks`` list.

    Returns:
        ``track 3`` (its ``id``), or ``track entry 5`` for a track without an id.
    """
    return f"track {track['id']}" if isinstance(track.get("id"), (int, str)) else f"track entry {index}"


def track_probe_files(video_out: str | Path) -> list[Path]:
    """One face per track of a ``facekit video`` output folder: the fused face
    (``gallery/track_NNNN_fused.png``) where the track was fused, else its best single frame.

    Args:
        video_out: the ``facekit video`` output folder.

    Returns:
        The face image of each track that has one.

    Raises:
        DataSourceError: an unreadable or malformed ``tracks.json`` or no track with a face image.
    """
    root = Path(video_out)
    tracks = _read_tracks(root)
    files = []
    for t in tracks:
        for key in ("fused", "gallery"):
            name = t.get(key)
            if name and (root / name).is_file():
                files.append(root / name)
                break
    if not files:
        raise DataSourceError(f"{root}: no track has a face image (run `facekit video` with the gallery on)")
    return files


class TrackViews(NamedTuple):
    """The views of one fused track: its name, the folder ``tracks.json`` gives and the images in it."""

    track: str
    folder: Path
    files: list[Path]


def track_view_folders(video_out: str | Path) -> dict[str, TrackViews]:
    """The views folder of each fused track of a ``facekit video`` output folder, listed.

    Unlike :func:`track_views`, a track whose views folder is missing or holds no image is kept
    (with no files), so the caller can say that it is matched by its fused face alone.

    Args:
        video_out: a ``facekit video`` output folder; any other probe file or folder has none.

    Returns:
        ``{fused face path: TrackViews}`` for each track with both ``fused`` and ``views``.

    Raises:
        DataSourceError: an unreadable or malformed ``tracks.json``.
    """
    root = Path(video_out)
    if not (root / "tracks.json").is_file():
        return {}
    out = {}
    for i, t in enumerate(_read_tracks(root)):
        if not t.get("fused") or not t.get("views"):
            continue
        folder = root / t["views"]
        files = sorted(p for p in folder.glob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS) \
            if folder.is_dir() else []
        out[printable_path(root / t["fused"])] = TrackViews(_track_name(t, i), folder, files)
    return out


def track_views(video_out: str | Path) -> dict[str, list[Path]]:
    """The views of each fused track of a ``facekit video`` output folder: ``{fused face path:
    [its restored frames]}`` (``views`` in ``tracks.json``; tracks without them, or whose views
    folder is missing or empty, are left out). Any other probe file or folder has none: ``{}``.

    Args:
        video_out: the probe file or folder.

    Returns:
        The view files of each fused track that has some.

    Raises:
        DataSourceError: an unreadable or malformed ``tracks.json``.
    """
    return {k: v.files for k, v in track_view_folders(video_out).items() if v.files}


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
        """Read a gallery written by :meth:`save`, checking every field before it is used.

        Args:
            path: the ``.npz`` file.
            device: torch device for embedding probes.

        Returns:
            The gallery.

        Raises:
            DataSourceError: the file is missing, truncated, corrupt, or a field is damaged
                (wrong width, no or non-finite embeddings, identities not one per embedding,
                bad meta); the message names the file and the problem.
        """
        path = Path(path)
        if not path.is_file():
            raise DataSourceError(f"gallery file {path} does not exist")
        meta, emb, ids, paths = _read_gallery_npz(path)
        return cls(**_gallery_fields(path, meta, emb, ids, paths), device=device)


_GALLERY_ARRAYS = ("meta", "embeddings", "identities", "paths")


def _read_gallery_npz(path: Path) -> tuple:
    """The parsed ``meta`` and the raw ``embeddings``, ``identities`` and ``paths`` of a gallery file.

    Args:
        path: the ``.npz`` file.

    Returns:
        ``(meta, embeddings, identities, paths)``; nothing about their contents is checked yet.

    Raises:
        DataSourceError: the file is not a readable ``.npz`` holding the four arrays.
    """
    not_gallery = f"{path} is not a facekit gallery file"
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        # a truncated file is BadZipFile, an empty one EOFError, other bytes ValueError (pickle refused)
        raise DataSourceError(f"{not_gallery} (truncated or corrupt: {exc})") from None
    if not isinstance(z, np.lib.npyio.NpzFile):  # a lone .npy array under an .npz name
        raise DataSourceError(f"{not_gallery} (a single array, not an .npz archive)")
    with z:
        missing = [k for k in _GALLERY_ARRAYS if k not in z.files]
        if missing:
            raise DataSourceError(f"{not_gallery} (no {', '.join(missing)} array)")
        try:
            arrays = [z[k] for k in _GALLERY_ARRAYS]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise DataSourceError(f"{not_gallery} (truncated or corrupt: {exc})") from None
    raw = arrays[0]
    if raw.ndim != 0 or raw.dtype.kind != "U":
        raise DataSourceError(f"gallery file {path}: meta is not a JSON text "
                              f"(a {raw.dtype} array of shape {raw.shape})")
    try:
        meta = json.loads(str(raw))
    except ValueError as exc:
        raise DataSourceError(f"gallery file {path}: meta is not valid JSON ({exc})") from None
    return (meta, *arrays[1:])


def _meta_number(path: Path, meta: dict, key: str, low: float, high: float, nan_ok: bool) -> float:
    """A number of a gallery file's ``meta``, range-checked.

    Args:
        path: the file, for messages.
        meta: the parsed ``meta``.
        key: the field.
        low, high: its valid range.
        nan_ok: NaN is valid too (a threshold that was never calibrated).

    Returns:
        ``meta[key]`` as a float.

    Raises:
        DataSourceError: not a number (null, text, true...) or out of range.
    """
    value = meta[key]
    # bool is an int to Python, and JSON null is None: neither is a number here
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DataSourceError(f"gallery file {path}: meta {key!r} is {_shown(value)}, expected a number"
                              + (" (NaN when not calibrated)" if nan_ok else ""))
    value = float(value)
    if np.isnan(value) and nan_ok:
        return value
    if not low <= value <= high:  # also refuses NaN and infinities
        raise DataSourceError(f"gallery file {path}: meta {key!r} is {value}, "
                              f"expected a number in [{low:g}, {high:g}]")
    return value


def _string_rows(path: Path, arr: np.ndarray, name: str, rows: int) -> np.ndarray:
    """A gallery file's per-embedding strings (identities or paths), checked: one per embedding.

    Args:
        path: the file, for messages.
        arr: the stored array.
        name: its name, for messages.
        rows: the number of embeddings.

    Returns:
        ``arr`` as an object array.

    Raises:
        DataSourceError: not a 1-D string array, or not ``rows`` long.
    """
    if arr.ndim != 1 or arr.dtype.kind != "U":
        raise DataSourceError(f"gallery file {path}: {name} must be a list of strings, "
                              f"got a {arr.dtype} array of shape {arr.shape}")
    if len(arr) != rows:
        raise DataSourceError(f"gallery file {path}: {len(arr)} {name} for {rows} embeddings (one each is needed)")
    return arr.astype(object)


def _gallery_fields(path: Path, meta, emb: np.ndarray, ids: np.ndarray, paths: np.ndarray) -> dict:
    """Check a loaded gallery's fields against what :meth:`Gallery.save` writes.

    Args:
        path: the file, for messages.
        meta: the parsed ``meta`` JSON.
        emb, ids, paths: the arrays as stored.

    Returns:
        :class:`Gallery` keyword arguments (all but ``device``).

    Raises:
        DataSourceError: the first field found damaged, named with the file.
    """
    if not isinstance(meta, dict):
        raise DataSourceError(f"gallery file {path}: meta is a JSON {type(meta).__name__}, expected an object")
    missing = [k for k in ("net", "margin", "threshold", "threshold_far") if k not in meta]
    if missing:
        raise DataSourceError(f"gallery file {path}: meta has no {', '.join(repr(k) for k in missing)}")
    net = meta["net"]
    if net not in recognition.BACKENDS:
        raise DataSourceError(f"gallery file {path}: meta 'net' is {_shown(net)}, expected one of "
                              f"{', '.join(recognition.BACKENDS)}")
    margin = _meta_number(path, meta, "margin", 0.0, 1.0, nan_ok=False)
    threshold = _meta_number(path, meta, "threshold", -1.0, 1.0, nan_ok=True)
    threshold_far = _meta_number(path, meta, "threshold_far", 0.0, 1.0, nan_ok=True)
    calibration = meta.get("calibration", "")
    if not isinstance(calibration, str):
        raise DataSourceError(f"gallery file {path}: meta 'calibration' is {_shown(calibration)}, expected a string")
    skipped = meta.get("skipped", [])
    if not isinstance(skipped, list) or not all(isinstance(s, list) and len(s) == 2
                                                and all(isinstance(x, str) for x in s) for s in skipped):
        raise DataSourceError(f"gallery file {path}: meta 'skipped' must be a list of [path, reason] pairs")

    if emb.ndim != 2 or emb.dtype.kind not in "fiu":
        raise DataSourceError(f"gallery file {path}: embeddings must be a (M, {EMBEDDING_WIDTH}) number array, "
                              f"got a {emb.dtype} array of shape {emb.shape}")
    if emb.shape[1] != EMBEDDING_WIDTH:
        raise DataSourceError(f"gallery file {path}: embeddings are {emb.shape[1]} wide, "
                              f"the net {net} gives {EMBEDDING_WIDTH}")
    if len(emb) == 0:
        raise DataSourceError(f"gallery file {path} holds no embeddings")
    emb = emb.astype(np.float32)
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        raise DataSourceError(f"gallery file {path} has non-finite embeddings ({int(bad.sum())} of {len(emb)} "
                              f"rows, the first row {int(np.argmax(bad))})")
    norms = np.linalg.norm(emb, axis=1)
    # save() writes L2-normalised rows; any other row gives similarities outside [-1, 1]
    off = np.abs(norms - 1.0) > 1e-3
    if off.any():
        i = int(np.argmax(off))
        raise DataSourceError(f"gallery file {path}: embeddings are not unit length (row {i} has norm "
                              f"{norms[i]:.4g}); the file was not written by facekit or was edited")
    ids = _string_rows(path, ids, "identities", len(emb))
    empty = [i for i, who in enumerate(ids) if who == UNKNOWN]  # enroll_crops never stores one
    if empty:
        raise DataSourceError(f"gallery file {path}: identity of row {empty[0]} is empty "
                              f"(every embedding needs a person)")
    return {"net": net, "margin": margin, "embeddings": emb, "identities": ids,
            "paths": _string_rows(path, paths, "paths", len(emb)), "threshold": threshold,
            "threshold_far": threshold_far, "calibration": calibration,
            "skipped": [tuple(s) for s in skipped]}


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


