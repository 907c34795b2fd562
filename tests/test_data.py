"""Data sources, face detection/alignment, splits and caches."""

import io
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from facekit import data as fdata
from facekit.errors import DataSourceError, VideoReadError
from facekit.faces import FaceDetector, align_face, template
from facekit.imageio import read_image, write_image
from facekit.settings import shared_path

CELEBA = shared_path("data", "celeba-10k")
VIDEO = shared_path("data", "video")


@pytest.fixture(scope="module")
def orl(tmp_path_factory):
    return fdata.load_faces("orl", size=64, cache_root=tmp_path_factory.mktemp("cache"), progress=False)


def _orl_file(person=1, k=1):
    return fdata.orl_dir() / f"s{person}" / f"{k}.pgm"


def test_orl_loads_400_faces_in_40_identities(orl):
    assert orl.images.shape == (400, 64, 64, 3) and orl.images.dtype == np.uint8
    assert len(set(orl.identity)) == 40
    assert (orl.manifest["status"] == "ok").all()
    assert orl.align == "landmarks"
    # every image got a real detection with five landmarks inside the 92x112 frame
    assert orl.manifest["score"].min() > 0.6
    assert orl.manifest["lm0_x"].between(0, 92).all()


def test_splits_disjoint_by_identity_and_reproducible(orl, tmp_path):
    ids = {s: set(orl.identity[orl.split == s]) for s in fdata.SPLITS}
    assert all(ids.values())
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    again = fdata.assign_splits(orl.manifest.assign(split=""), "orl", seed=0)
    np.testing.assert_array_equal(again, orl.manifest["split"].to_numpy())
    other = fdata.assign_splits(orl.manifest.assign(split=""), "orl", seed=1)
    assert (other != again).any()


def test_cache_roundtrips_bit_exactly(tmp_path):
    first = fdata.load_faces("orl", size=32, limit=30, cache_root=tmp_path, progress=False)
    assert not first.from_cache
    second = fdata.load_faces("orl", size=32, limit=30, cache_root=tmp_path, progress=False)
    assert second.from_cache
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.split, second.split)
    np.testing.assert_array_equal(first.identity, second.identity)
    assert (first.cache_dir / "manifest.csv").exists()
    # a different seed re-splits from the cache without re-ingesting
    third = fdata.load_faces("orl", size=32, limit=30, seed=5, cache_root=tmp_path, progress=False)
    assert third.from_cache
    np.testing.assert_array_equal(third.images, first.images)


def _make_bad_folder(root):
    good = root / "good"
    good.mkdir(parents=True)
    for k in range(1, 4):
        shutil.copy(_orl_file(2, k), good / f"face{k}.pgm")
    face = read_image(_orl_file(3, 1))
    rgba = np.dstack([face, np.full(face.shape[:2], 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(good / "rgba.png")
    cv2.imwrite(str(good / "sixteen.png"), face[:, :, 0].astype(np.uint16) * 257)
    bad = root / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.jpg").write_text("hello, I am text\n")
    buf = io.BytesIO()
    Image.fromarray(face).save(buf, "JPEG")
    (bad / "truncated.jpg").write_bytes(buf.getvalue()[:300])
    write_image(bad / "blank.png", np.full((120, 120, 3), 128, np.uint8))  # decodes, but has no face
    return root


def test_folder_with_bad_files_loads_the_good_ones(tmp_path):
    root = _make_bad_folder(tmp_path / "imgs")
    faces = fdata.load_faces(f"folder:{root}", size=64, cache=False, progress=False)
    assert len(faces) == 5
    skipped = faces.skipped.set_index(faces.skipped["path"].map(lambda p: p.rsplit("/", 1)[-1]))
    assert set(skipped.index) == {"empty.jpg", "notes.jpg", "truncated.jpg", "blank.png"}
    assert "empty" in skipped.loc["empty.jpg", "reason"]
    assert "text file" in skipped.loc["notes.jpg", "reason"]
    assert "truncated" in skipped.loc["truncated.jpg", "reason"]
    assert skipped.loc["blank.png", "reason"] == "no face found"
    # "good"/"bad" look like per-person folders, so identities are the folder names
    assert set(faces.identity) == {"good"}


def test_flat_folder_has_unknown_identity_and_file_splits(tmp_path):
    for person in range(1, 11):
        shutil.copy(_orl_file(person, 1), tmp_path / f"p{person}.pgm")
    faces = fdata.load_faces(f"folder:{tmp_path}", size=32, cache=False, progress=False)
    assert len(faces) == 10 and set(faces.identity) == {""}
    assert set(faces.split) == {"train", "val", "test"}


@pytest.mark.parametrize("spec, message", [
    ("nonsense", "unknown data source 'nonsense'; valid kinds: orl, folder:PATH"),
    ("folder:/definitely/not/here", "does not exist"),
    ("folder:", "needs a path"),
])
def test_bad_source_specs(spec, message):
    with pytest.raises(DataSourceError, match=message):
        fdata.load_faces(spec, cache=False, progress=False)


def test_empty_folder_is_a_clear_error(tmp_path):
    with pytest.raises(DataSourceError, match="no images found under"):
        fdata.load_faces(f"folder:{tmp_path}", cache=False, progress=False)


def test_folder_of_only_bad_files_is_a_clear_error(tmp_path):
    (tmp_path / "x.jpg").write_text("text")
    with pytest.raises(DataSourceError, match="no usable face in 1 inputs"):
        fdata.load_faces(f"folder:{tmp_path}", cache=False, progress=False)


def test_yunet_finds_and_aligns_face_in_a_photo():
    """An ORL face upscaled into a larger scene: found, and its aligned crop matches the template."""
    face = read_image(_orl_file(5, 1))
    big = cv2.resize(face, None, fx=2.5, fy=2.5, interpolation=cv2.INTER_CUBIC)
    scene = np.full((480, 640, 3), 90, np.uint8)
    y0, x0 = 120, 300
    scene[y0:y0 + big.shape[0], x0:x0 + big.shape[1]] = big
    dets = FaceDetector().detect(scene)
    assert len(dets) == 1
    x, y, w, h = dets[0].box
    assert x0 - 10 <= x and x + w <= x0 + big.shape[1] + 10 and y0 - 10 <= y
    crop = align_face(scene, dets[0].landmarks, size=128)
    # re-detect on the aligned crop: its landmarks sit on the template
    again = FaceDetector().detect(cv2.copyMakeBorder(crop, 64, 64, 64, 64, cv2.BORDER_REPLICATE))
    assert again, "no face found in the aligned crop"
    err = np.linalg.norm(again[0].landmarks - 64 - template(128), axis=1)
    # YuNet's int8 landmarks jitter by a few pixels and five points never fit a similarity exactly:
    # a wrong alignment would be tens of pixels off.
    assert err.mean() < 0.04 * 128 and err.max() < 0.07 * 128, err


@pytest.mark.skipif(not CELEBA.is_dir(), reason="../shared/data/celeba-10k not present (fresh clone)")
def test_celeba_keeps_test_slice_out_of_training(tmp_path):
    faces = fdata.load_faces(f"celeba:{CELEBA}", size=32, cache_root=tmp_path, progress=False)
    assert len(faces) == 10000
    numbers = np.array([int(p.rsplit("/", 1)[-1][:6]) for p in faces.paths])
    assert set(numbers[faces.split == "test"]) == set(range(9901, 10001))
    assert numbers[faces.split == "train"].max() <= 9000
    assert faces.align == "none"


@pytest.mark.skipif(not (VIDEO / "single_face.mp4").exists(), reason="../shared/data/video not present")
def test_video_source_finds_faces_in_frames(tmp_path):
    faces = fdata.load_faces(f"video:{VIDEO / 'single_face.mp4'}", size=64, video_every=12,
                             cache_root=tmp_path, progress=False)
    assert len(faces) >= 5
    assert all("#frame=" in p for p in faces.paths)


def test_unreadable_video_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    with pytest.raises(VideoReadError, match="broken.mp4"):
        fdata.load_faces(f"video:{bad}", cache=False, progress=False)


def test_counts_table(orl):
    counts = orl.counts().set_index("split")
    assert counts["faces"].sum() == 400
    assert counts.loc["train", "identities"] == 32
