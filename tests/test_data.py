"""Data sources, face detection/alignment, splits and caches."""

import io
import shutil

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from facekit import data as fdata
from facekit.errors import DataSourceError, VideoReadError
from facekit.faces import FaceDetector, align_face, template
from facekit.imageio import read_image, write_image
from facekit.settings import shared_path

from test_imageio import _png_header_only

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
    two = np.hstack([face, np.full((112, 30, 3), 90, np.uint8), read_image(_orl_file(7, 1))])
    write_image(bad / "two_faces.png", two)  # two people side by side: ambiguous, must not be cropped
    _png_header_only(bad / "huge.png", 20000, 20000)
    return root


def test_folder_with_bad_files_loads_the_good_ones(tmp_path):
    root = _make_bad_folder(tmp_path / "imgs")
    faces = fdata.load_faces(f"folder:{root}", size=64, cache=False, progress=False)
    assert len(faces) == 5
    skipped = faces.skipped.set_index(faces.skipped["path"].map(lambda p: p.rsplit("/", 1)[-1]))
    assert set(skipped.index) == {"empty.jpg", "notes.jpg", "truncated.jpg", "blank.png", "two_faces.png",
                                  "huge.png"}
    assert (skipped["status"] == "skipped").all()
    assert "empty" in skipped.loc["empty.jpg", "reason"]
    assert "text file" in skipped.loc["notes.jpg", "reason"]
    assert "truncated" in skipped.loc["truncated.jpg", "reason"]
    assert skipped.loc["blank.png", "reason"] == "no face found"
    assert skipped.loc["two_faces.png", "reason"] == "2 faces found (expected one)"
    assert skipped.loc["huge.png", "reason"].startswith("image is too large (400 Mpx)")
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


# ----------------------------------------------------------------------------------------------
# CelebA label files on a small generated folder (tiny jpgs named like img_align_celeba)

FAKE_CELEBA = [1, 2, 3, 4, 5, 6, 7, 8, 9001, 9002, 9899, 9900, 9901, 9902, 9950, 9999, 10000, 10001, 10002, 10003]
# Person 1 appears both inside the test slice (9901) and outside it (1, 10001): in CelebA one
# person has many images spread over the numbering, which is what breaks a naive slice split.
FAKE_IDS = {1: "1", 9901: "1", 10001: "1", 2: "2", 9950: "2", 3: "3", 4: "3", 5: "4", 6: "5", 7: "6",
            8: "7", 9001: "8", 9002: "8", 9899: "9", 9900: "10", 9902: "11", 9999: "12", 10000: "12",
            10002: "13", 10003: "14"}


def _fake_celeba(root, identities=False, partition=False):
    """Write tiny CelebA-named jpgs, optionally with identity_CelebA.txt / list_eval_partition.txt."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for n in FAKE_CELEBA:
        write_image(root / f"{n:06d}.jpg", rng.integers(0, 255, (22, 18, 3), dtype=np.uint8))
    if identities:
        (root / "identity_CelebA.txt").write_text("".join(f"{n:06d}.jpg {FAKE_IDS[n]}\n" for n in FAKE_CELEBA))
    if partition:
        # The official partition: identity-disjoint, and it puts the 9,901-10,000 slice in train.
        official = {"8": 1, "13": 1, "10": 2, "14": 2}
        (root / "list_eval_partition.txt").write_text(
            "".join(f"{n:06d}.jpg {official.get(FAKE_IDS[n], 0)}\n" for n in FAKE_CELEBA))
    return root


def _splits_by_number(faces):
    return {int(p.rsplit("/", 1)[-1][:6]): s for p, s in zip(faces.paths, faces.split)}


def _assert_slice_out_of_training(split):
    for n, s in split.items():
        if 9901 <= n <= 10000:
            assert s == "test", (n, s)


def _people_by_split(faces):
    people = {}
    for i, s in zip(faces.identity, faces.split):
        people.setdefault(i, set()).add(s)
    return people


def test_celeba_partition_file_keeps_test_slice_out_of_training(tmp_path):
    root = _fake_celeba(tmp_path / "img_align_celeba", partition=True)
    faces = fdata.load_faces(f"celeba:{root}", size=16, cache_root=tmp_path / "cache", progress=False)
    assert len(faces) == len(FAKE_CELEBA) and faces.align == "none"
    split = _splits_by_number(faces)
    _assert_slice_out_of_training(split)
    # outside the slice the official partition stands
    assert split[9899] == split[5] == "train" and split[9001] == split[9002] == "val" and split[9900] == "test"
    assert split[10002] == "val" and split[10003] == "test" and split[10001] == "train"
    # a re-split from the cache with another seed restores the partition, not the old seed's splits
    again = fdata.load_faces(f"celeba:{root}", size=16, seed=3, cache_root=tmp_path / "cache", progress=False)
    assert again.from_cache
    assert _splits_by_number(again) == split
    # the slice rule can be switched off: then the official partition applies as is
    items = fdata.list_items(fdata.parse_source(f"celeba:{root}"))
    official = faces.manifest.assign(split=[i.official_split for i in items])
    raw = fdata.assign_splits(official, "celeba", celeba_holdout=False)
    np.testing.assert_array_equal(raw, official["split"].to_numpy())
    assert dict(zip(FAKE_CELEBA, raw))[9950] == "train"


def test_celeba_partition_and_identities_move_slice_people_to_test(tmp_path):
    root = _fake_celeba(tmp_path / "img_align_celeba", identities=True, partition=True)
    faces = fdata.load_faces(f"celeba:{root}", size=16, cache=False, progress=False)
    split = _splits_by_number(faces)
    _assert_slice_out_of_training(split)
    # person 1 (9901) and person 2 (9950) leave training entirely; nobody is in two splits
    assert split[1] == split[10001] == split[2] == "test"
    assert all(len(s) == 1 for s in _people_by_split(faces).values())
    assert split[5] == "train" and split[9001] == "val"


def test_celeba_identities_without_partition_split_by_person(tmp_path):
    root = _fake_celeba(tmp_path / "img_align_celeba", identities=True)
    faces = fdata.load_faces(f"celeba:{root}", size=16, cache=False, progress=False)
    split = _splits_by_number(faces)
    _assert_slice_out_of_training(split)
    people = _people_by_split(faces)
    assert set(people) == set(FAKE_IDS.values())
    assert all(len(s) == 1 for s in people.values()), people
    assert set(faces.split) == {"train", "val", "test"}
    # the slice's four people alone make up test (more than the 10% share of 14); the rest train/val
    assert {p for p, s in people.items() if s == {"test"}} == {"1", "2", "12", "11"}
    # reproducible for a seed, and the seed matters
    m = faces.manifest.assign(split="")
    np.testing.assert_array_equal(fdata.assign_splits(m, "celeba", seed=0), faces.manifest["split"].to_numpy())
    seeds = [tuple(fdata.assign_splits(m, "celeba", seed=s)) for s in range(5)]
    assert len(set(seeds)) > 1
    for s in seeds:
        assert all(dict(zip(FAKE_CELEBA, s))[n] == "test" for n in (9901, 9902, 9950, 9999, 10000))


def test_celeba_without_labels_uses_numeric_slices(tmp_path):
    root = _fake_celeba(tmp_path / "img_align_celeba")
    faces = fdata.load_faces(f"celeba:{root}", size=16, cache=False, progress=False)
    split = _splits_by_number(faces)
    assert {n for n, s in split.items() if s == "test"} == {9901, 9902, 9950, 9999, 10000}
    assert {n for n, s in split.items() if s == "val"} == {9001, 9002, 9899, 9900}


def test_plot_counts_has_separate_identity_and_score_axes(orl):
    import matplotlib.pyplot as plt

    plt.switch_backend("Agg")
    fig = fdata.plot_counts(orl)
    ax_split, ax_id, ax_score = fig.axes
    assert [p.get_height() for p in ax_split.patches] == orl.counts()["faces"].tolist()
    # ORL: 40 people x 10 faces -> one bar of height 40 at 10 faces per identity
    heights = {round(p.get_x() + p.get_width() / 2): p.get_height() for p in ax_id.patches if p.get_height()}
    assert heights == {10: 40}
    assert ax_id.get_xlabel() == "faces per identity"
    assert ax_score.get_xlabel() == "YuNet detection score"
    assert sum(p.get_height() for p in ax_score.patches) == 400
    plt.close(fig)


def test_plot_counts_says_what_a_source_lacks(tmp_path):
    import matplotlib.pyplot as plt

    plt.switch_backend("Agg")
    faces = fdata.load_faces(f"celeba:{_fake_celeba(tmp_path / 'c')}", size=16, cache=False, progress=False)
    fig = fdata.plot_counts(faces)
    _, ax_id, ax_score = fig.axes
    assert [t.get_text() for t in ax_id.texts] == ["identities unknown"]
    assert [t.get_text() for t in ax_score.texts] == ["no detector run (align='none')"]
    assert not ax_id.patches and not ax_score.patches
    plt.close(fig)


def test_concurrent_cache_writers_do_not_collide(tmp_path, monkeypatch):
    # Two runs started together both build the same cache; each file's temp name must be unique
    # to its writer, else one renames the other's half-written temp file (FileNotFoundError).
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(fdata, "SHARD_SIZE", 8)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    manifest = pd.DataFrame({"path": [f"f{i}.png" for i in range(20)], "identity": ["a"] * 20,
                             "split": ["train"] * 20, "status": ["ok"] * 20, "reason": [""] * 20})
    cache = tmp_path / "cache"
    with ThreadPoolExecutor(4) as pool:
        for f in [pool.submit(fdata.save_cache, cache, images, manifest, {"v": 1}) for _ in range(16)]:
            f.result()
    loaded, _ = fdata.load_cache(cache, {"v": 1})
    np.testing.assert_array_equal(loaded, images)
    assert sorted(p.name for p in cache.iterdir()) == ["manifest.csv", "meta.json", "shard-0000.npz",
                                                      "shard-0001.npz", "shard-0002.npz"]
    # A smaller rebuild drops the shards it no longer needs.
    fdata.save_cache(cache, images[:5], manifest[:5], {"v": 2})
    assert sorted(p.name for p in cache.glob("shard-*")) == ["shard-0000.npz"]
    np.testing.assert_array_equal(fdata.load_cache(cache, {"v": 2})[0], images[:5])


def test_links_and_unsupported_formats_get_a_manifest_line(tmp_path):
    for person in range(1, 4):
        shutil.copy(_orl_file(person, 1), tmp_path / f"p{person}.pgm")
    Image.new("RGB", (32, 32), (90, 60, 40)).save(tmp_path / "anim.gif")
    (tmp_path / "gone.png").symlink_to(tmp_path / "nowhere.png")
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    faces = fdata.load_faces(f"folder:{tmp_path}", size=32, cache=False, progress=False)
    assert len(faces) == 3
    skipped = faces.skipped.set_index(faces.skipped["path"].map(lambda p: p.rsplit("/", 1)[-1]))
    assert skipped.loc["anim.gif", "reason"].startswith("unsupported image format (.gif)")
    assert skipped.loc["gone.png", "reason"] == "broken symbolic link (its target does not exist)"
    assert skipped.loc["loop.jpg", "reason"] == "symbolic link loop"
    # a folder of nothing readable names what it found instead of "no images"
    only = tmp_path / "only"
    only.mkdir()
    Image.new("RGB", (8, 8)).save(only / "a.gif")
    with pytest.raises(DataSourceError, match=r"1 unreadable: a.gif: unsupported image format"):
        fdata.load_faces(f"folder:{only}", cache=False, progress=False)


def test_truncated_video_is_ingested_with_a_warning_and_a_manifest_line(tmp_path):
    clip = tmp_path / "clip.avi"
    face = cv2.cvtColor(cv2.imread(str(_orl_file(1, 1)), cv2.IMREAD_GRAYSCALE), cv2.COLOR_GRAY2BGR)
    frame = cv2.copyMakeBorder(cv2.resize(face, (184, 224)), 8, 8, 68, 68, cv2.BORDER_CONSTANT, value=(40, 40, 40))
    w = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (frame.shape[1], frame.shape[0]))
    for _ in range(40):
        w.write(frame)
    w.release()
    whole = fdata.load_faces(f"video:{clip}", size=32, video_every=5, cache=False, progress=False)
    assert not whole.skipped["reason"].str.startswith("missing").any()  # an intact file: no such line
    clip.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    with pytest.warns(fdata.TruncatedVideoWarning, match=r"clip.avi: the video ends after \d+ of the 40 frames"):
        cut = fdata.load_faces(f"video:{clip}", size=32, video_every=5, cache=False, progress=False)
    assert 0 < len(cut) < len(whole)
    line = cut.skipped[cut.skipped["reason"].str.startswith("missing")]
    assert len(line) == 1 and "of 40 frames (truncated or damaged)" in line["reason"].iloc[0]


def _side_streakiness(crop: np.ndarray, width: int = 6) -> list[float]:
    """Per band (left, right, top, bottom ``width`` px of a crop): mean |gradient| along the edge
    over mean |gradient| across it. A replicated edge draws streaks straight across the band
    (tens); natural or softly filled content is about 1."""
    grey = crop.astype(np.float32).mean(-1)
    out = []
    for band in (grey[:, :width], grey[:, -width:], grey[:width].T, grey[-width:].T):
        along, across = np.abs(np.diff(band, axis=0)).mean(), np.abs(np.diff(band, axis=1)).mean()
        out.append(float(along / (across + 1e-3)))
    return out


def test_orl_crops_have_no_streaked_edge_bands(orl):
    """ORL's 92x112 photos are narrower than the margin-0.15 framing (about 40% of every crop lies
    outside the photo): replicating the edge drew streaks across both sides (notebook 01). The
    cached crops use the soft fill; the same faces re-aligned with replicate show the streaks."""
    ok = orl.manifest[orl.manifest["status"] == "ok"].reset_index(drop=True)
    lm_cols = [f"lm{k}_{a}" for k in range(5) for a in "xy"]
    soft, replicate = [], []
    for i in range(0, len(ok), 10):
        lm = ok.loc[i, lm_cols].to_numpy(np.float32).reshape(5, 2)
        soft.append(_side_streakiness(orl.images[i]))
        replicate.append(_side_streakiness(align_face(read_image(ok.loc[i, "path"]), lm, 64, border="replicate")))
    soft, replicate = np.median(soft, axis=0), np.median(replicate, axis=0)
    assert (soft < 2.0).all(), soft  # measured 0.4-1.1
    assert (replicate[:2] > 10.0).all(), replicate  # measured 24-28 on the left and right


def test_soft_border_changes_only_what_lies_outside_the_image():
    """The soft fill leaves every pixel read from inside the image as replicate gives it; outside,
    a noise image's band is blurred flat (no streaks, no mirrored copy) and fades to its median."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (120, 70, 3), dtype=np.uint8)
    # landmarks for a crop 1.6x the template: 102 source px square, centred in a 70x120 image
    lm = (template(64, 0.15) - 32) * 1.6 + np.array([35, 60], np.float32)
    soft = align_face(img, lm, 64, border="soft").astype(np.float32)
    rep = align_face(img, lm, 64, border="replicate").astype(np.float32)
    # crop x of source x = 0 and 69: (x - 35) / 1.6 + 32 -> 10.1 and 53.3; rows stay inside
    inside, left = slice(13, 51), slice(0, 8)
    np.testing.assert_array_equal(soft[:, inside], rep[:, inside])
    assert rep[:, left].std(axis=1).mean() < 1.0  # replicate: each row of the band is one streak
    assert soft[:, left].std(axis=0).mean() < 0.25 * rep[:, left].std(axis=0).mean()  # soft: no streaks down the band
    median = np.median(img.reshape(-1, 3), axis=0)
    assert np.abs(soft[:, 0].mean(axis=0) - median).max() < np.abs(rep[:, 0].mean(axis=0) - median).max() + 1e-6
    assert np.abs(soft[:, 0].mean(axis=0) - median).max() < 12
    # a crop wholly inside the image is the same in both modes
    small = (template(64, 0.15) - 32) * 0.5 + np.array([35, 60], np.float32)
    np.testing.assert_array_equal(align_face(img, small, 64, border="soft"), align_face(img, small, 64))
    with pytest.raises(Exception, match="unknown border fill 'mirror'"):
        align_face(img, lm, 64, border="mirror")


def test_the_sources_registry_says_how_each_kind_is_read(tmp_path):
    # the hand-written tables it replaces
    assert fdata.SOURCE_KINDS == ("orl", "folder", "celeba", "video", "utkface", "pins")
    assert fdata.EVAL_ONLY_KINDS == ("pins",)
    with pytest.raises(DataSourceError, match="valid kinds: orl, folder:PATH, celeba:PATH, video:PATH, "
                                              "utkface:PATH, pins:PATH$"):
        fdata.parse_source("nonsense:x")
    assert all(s.description for s in fdata.SOURCES.values())
    assert {k for k, s in fdata.SOURCES.items() if s.list_items is None} == {"video"}
    # default alignment and path checks come from each kind's entry
    assert fdata.parse_source(f"celeba:{tmp_path}").default_align == "none"
    assert fdata.parse_source(f"folder:{tmp_path}").default_align == "landmarks"
    with pytest.raises(DataSourceError, match="video source must be a video file, got a folder"):
        fdata.parse_source(f"video:{tmp_path}")
    (tmp_path / "f.png").write_bytes(b"")
    with pytest.raises(DataSourceError, match="pins source must be a folder, got a file"):
        fdata.parse_source(f"pins:{tmp_path / 'f.png'}")
    (tmp_path / "labels.csv").write_text("file,identity,split\nf.png,ann,eval\n")
    pins = fdata.list_items(fdata.parse_source(f"pins:{tmp_path}"))
    utk = fdata.list_items(fdata.parse_source(f"utkface:{tmp_path}"))
    assert [(i.identity, i.official_split) for i in pins] == [("ann", "")]
    assert [(i.identity, i.official_split) for i in utk] == [("", "test")]


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def _zero_middle(path):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 3:len(raw) // 2] = bytes(len(raw) // 2 - len(raw) // 3)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("name, damage", [
    ("shard-0000.npz", _truncate),
    ("shard-0000.npz", _zero_middle),
    ("manifest.csv", lambda p: p.write_text("garbage\n")),
    ("meta.json", lambda p: p.write_text("[]")),
])
def test_damaged_cache_is_rebuilt(tmp_path, name, damage):
    first = fdata.load_faces("orl", size=16, limit=4, cache_root=tmp_path, progress=False)
    damage(first.cache_dir / name)
    again = fdata.load_faces("orl", size=16, limit=4, cache_root=tmp_path, progress=False)
    assert not again.from_cache
    np.testing.assert_array_equal(again.images, first.images)
    assert fdata.load_faces("orl", size=16, limit=4, cache_root=tmp_path, progress=False).from_cache


@pytest.mark.parametrize("name, spoil, problem", [
    ("list_eval_partition.txt", lambda p: p.write_bytes(b"000001.jpg \xff\xfe0\n"), "not UTF-8 text"),
    ("identity_CelebA.txt", lambda p: p.mkdir(), "Is a directory"),
])
def test_unreadable_celeba_label_file_is_a_clear_error(tmp_path, name, spoil, problem):
    root = _fake_celeba(tmp_path / "img_align_celeba")
    spoil(root / name)
    with pytest.raises(DataSourceError, match=rf"{name}: not a readable CelebA label file \({problem}\)$"):
        fdata.list_items(fdata.parse_source(f"celeba:{root}"))


@pytest.mark.parametrize("kind", ["utkface", "pins"])
def test_labels_csv_file_names_are_text_and_never_empty(tmp_path, kind):
    (tmp_path / "f.png").write_bytes(b"")  # the folder must hold an image to be listed
    labels = tmp_path / "labels.csv"
    labels.write_text("file,identity,split\n0,ann,train\n1.50,bob,eval\n007,cy,train\n")
    items = fdata.list_items(fdata.parse_source(f"{kind}:{tmp_path}"))
    assert [i.path for i in items] == [str(tmp_path / n) for n in ("0", "1.50", "007")]
    labels.write_text("file,identity,split\na.jpg,ann,train\n\n,bob,eval\n")
    with pytest.raises(DataSourceError, match=r"labels.csv: empty file name on line 4$"):
        fdata.list_items(fdata.parse_source(f"{kind}:{tmp_path}"))


def test_pins_identities_are_text_and_a_blank_one_is_an_error(tmp_path):
    (tmp_path / "f.png").write_bytes(b"")  # the folder must hold an image to be listed
    labels = tmp_path / "labels.csv"
    labels.write_text("file,identity\na.jpg,NA\nb.jpg,null\nc.jpg,nan\nd.jpg,007\n")
    items = fdata.list_items(fdata.parse_source(f"pins:{tmp_path}"))
    # four different people, none merged into a NaN person
    assert [i.identity for i in items] == ["NA", "null", "nan", "007"]
    labels.write_text("file,identity\na.jpg,ann\nb.jpg,\nc.jpg,bob\nd.jpg, \n")
    with pytest.raises(DataSourceError, match=r"labels.csv: empty identity on lines 3, 5$"):
        fdata.list_items(fdata.parse_source(f"pins:{tmp_path}"))
    labels.write_text("file,name\na.jpg,ann\n")
    with pytest.raises(DataSourceError, match=r"labels.csv: no 'identity' column \(columns: file, name\)$"):
        fdata.list_items(fdata.parse_source(f"pins:{tmp_path}"))
