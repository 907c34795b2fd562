"""``python -m facekit restore``: face crops (--aligned) and whole images (detect, restore, paste back),
scale-aware sizes, folders, unreadable inputs, chain.yaml, clear errors before any model is loaded."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from facekit.chain import default_model_dir, read_chain_spec, resolve_stages, save_stage
from facekit.cli import main
from facekit.errors import ConfigError
from facekit.imageio import read_image, write_image
from facekit.images import feather_mask
from facekit.restore import output_names, plan_face, prepare_face, restore_path
from facekit.restorer import RestoreOutput, Restorer
from tests.test_chain import DEBLUR_KW, RECON_KW, UPSCALE_KW, tiny_deblur, tiny_reconstruct, tiny_upscale


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A chain folder with three tiny random stages and its chain.yaml."""
    d = tmp_path_factory.mktemp("models")
    save_stage(d / "deblur.pt", "deblur", tiny_deblur(), DEBLUR_KW, in_size=16)
    save_stage(d / "reconstruct.pt", "reconstruct", tiny_reconstruct(), RECON_KW, in_size=16)
    save_stage(d / "upscale.pt", "upscale", tiny_upscale(), UPSCALE_KW, in_size=16)
    (d / "chain.yaml").write_text("size: 16\nstages:\n  deblur: deblur.pt\n  reconstruct: reconstruct.pt\n"
                                  "  upscale: upscale.pt\n")
    return d


@pytest.fixture
def faces_dir(tmp_path):
    """Four readable face crops of different sizes (one nested), one corrupt jpg, one text file."""
    rng = np.random.default_rng(0)
    d = tmp_path / "in"
    for rel, (h, w) in {"a.png": (40, 40), "b.jpg": (109, 89), "sub/c.png": (12, 12), "d.bmp": (64, 48)}.items():
        write_image(d / rel, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (d / "notes.txt").write_text("not an image")
    return d


@pytest.fixture(autouse=True)
def onnx_cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setattr("facekit.settings.DATA_DIR", tmp_path / "data")


def test_restore_folder_writes_one_output_per_input_and_reports_unreadable(models, faces_dir, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["--threads", "1", "restore", str(faces_dir), str(out), "--aligned", "--models", str(models),
               "--batch", "2", "--backend", "torch", "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 1  # one input failed; the others were still restored
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["a.png", "b.png", "d.png", "sub/c.png"]
    # 40 and 12 px crops are restored to the 64 px output side; 109x89 and 64x48 crops are already
    # at it: they keep their size and aspect and come back bit-identical
    shapes = {name: read_image(out / name).shape for name in written}
    assert shapes == {"a.png": (64, 64, 3), "sub/c.png": (64, 64, 3), "b.png": (109, 89, 3), "d.png": (64, 48, 3)}
    for name, src in (("b.png", "b.jpg"), ("d.png", "d.bmp")):
        assert np.array_equal(read_image(out / name), read_image(faces_dir / src))
    # "auto": these stages were not trained for any face size, so a 40 px face is shrunk to 16 first
    assert "a.png: 40x40 -> 64x64: shrunk 40->16, restored at 16->64" in captured.out
    assert "sub/c.png: 12x12 -> 64x64: enlarged 12->16, restored at 16->64" in captured.out
    assert "b.jpg: 89x109 -> 89x109: kept: already at output size" in captured.out
    assert "total: 4 file(s) written, 4 face(s) found, 2 restored, 2 kept" in captured.out
    assert "broken.jpg" in captured.out and "unreadable inputs: 1" in captured.out
    assert "broken.jpg" in captured.err  # warned while running, too
    assert "restored 2 face(s)" in captured.out and "faces/s" in captured.out
    assert "notes.txt" not in captured.out + captured.err


def test_restore_matches_the_chain_and_onnx_backend(models, faces_dir, tmp_path, capsys):
    from facekit.chain import build_chain

    out_t, out_o = tmp_path / "t", tmp_path / "o"
    crop = faces_dir / "sub" / "c.png"  # 12 px: enlarged to the chain's 16 px, where ONNX runs too
    base = ["restore", str(crop), "--aligned", "--models", str(models), "--chain", "upscale,deblur", "--no-progress"]
    assert main(base[:2] + [str(out_t)] + base[2:] + ["--backend", "torch"]) == 0
    assert main(base[:2] + [str(out_o)] + base[2:] + ["--backend", "onnx"]) == 0
    assert "upscale -> deblur" in capsys.readouterr().err
    t, o = read_image(out_t / "c.png").astype(int), read_image(out_o / "c.png").astype(int)
    assert t.shape == (64, 64, 3) and np.abs(t - o).max() <= 1  # 1e-4 in float -> at most 1 level
    # The file holds exactly what the chain computes on the face enlarged to its input size.
    chain, size = build_chain(["upscale", "deblur"], None, models, backend="torch")
    face = prepare_face(read_image(crop), size)
    ref = chain(torch.from_numpy(face).permute(2, 0, 1)[None].float() / 255).out[0]
    ref = (ref.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(read_image(out_t / "c.png"), ref)


def test_single_file_to_named_output_and_size_option(models, faces_dir, tmp_path):
    target = tmp_path / "restored.png"
    rc = main(["restore", str(faces_dir / "b.jpg"), str(target), "--aligned", "--models", str(models), "--size", "32",
               "--chain", "reconstruct,upscale", "--backend", "torch", "--no-progress"])
    # a 32 px chain input x4: the output side is 128; the 109x89 crop keeps its aspect
    assert rc == 0 and read_image(target).shape == (128, round(89 * 128 / 109), 3)


def test_missing_default_model_explains_how_to_get_one(faces_dir, tmp_path, capsys):
    rc = main(["restore", str(faces_dir), str(tmp_path / "out"), "--models", str(tmp_path / "empty"),
               "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "chain.yaml does not exist" in err and "--checkpoint reconstruct=PATH" in err
    assert not (tmp_path / "out").exists()


def test_wrong_checkpoint_for_stage_via_cli(models, faces_dir, tmp_path, capsys):
    rc = main(["restore", str(faces_dir), str(tmp_path / "out"), "--models", str(tmp_path / "none"),
               "--checkpoint", f"deblur={models / 'upscale.pt'}", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "holds a 'upscale' stage" in err and "not a 'deblur' stage" in err


def test_resolve_stages_and_chain_spec(models, tmp_path):
    order, ckpts, size = resolve_stages(None, None, models)
    assert order == ["deblur", "reconstruct", "upscale"] and size == 16
    order, ckpts, _ = resolve_stages(["upscale"], {"upscale": tmp_path / "x.pt"}, models)
    assert order == ["upscale"] and ckpts["upscale"] == tmp_path / "x.pt"
    with pytest.raises(ConfigError, match="no checkpoint for stage.*sharpen"):
        resolve_stages(["deblur", "sharpen"], None, models)
    with pytest.raises(ConfigError, match="names a stage twice"):
        resolve_stages(["deblur", "deblur"], None, models)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "chain.yaml").write_text("stages: [1, 2]\n")
    with pytest.raises(ConfigError, match="name: checkpoint"):
        read_chain_spec(bad)
    assert [p.as_posix() for p in output_names([__import__("pathlib").Path("x/a.jpg"),
                                                __import__("pathlib").Path("x/a.png")])] == ["x/a.png", "x/a.png.png"]


def test_prepare_face_crops_centre_and_resizes():
    img = np.zeros((30, 10, 3), np.uint8)
    img[10:20] = 200  # the centre square
    out = prepare_face(img, 5)
    assert out.shape == (5, 5, 3) and out.min() == 200


def test_empty_folder_is_an_error(models, tmp_path, capsys):
    (tmp_path / "empty_in").mkdir()
    rc = main(["restore", str(tmp_path / "empty_in"), str(tmp_path / "out"), "--models", str(models),
               "--backend", "torch", "--no-progress"])
    assert rc == 1 and "no image files found" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Inputs are checked before any model is loaded


@pytest.fixture
def no_model(monkeypatch):
    """Make loading a model fail loudly: a test using this proves the error came first."""
    def build_chain(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr("facekit.chain.build_chain", build_chain)


def test_bad_inputs_are_reported_before_any_model_is_loaded(no_model, faces_dir, tmp_path, capsys):
    missing = tmp_path / "no_such_photo.jpg"
    assert main(["restore", str(missing), str(tmp_path / "out"), "--no-progress"]) == 1
    assert f"{missing}: input does not exist" in capsys.readouterr().err
    (tmp_path / "empty_in").mkdir()
    assert main(["restore", str(tmp_path / "empty_in"), str(tmp_path / "out"), "--no-progress"]) == 1
    assert "no image files found" in capsys.readouterr().err
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    assert main(["restore", str(faces_dir), str(a_file), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"{a_file}: output is an existing file, but a folder is needed" in err
    assert main(["restore", str(faces_dir / "a.png"), str(a_file / "sub" / "out.png"), "--no-progress"]) == 1
    assert f"{a_file} is a file" in capsys.readouterr().err
    assert main(["restore", str(faces_dir), str(tmp_path / "out"), "--upscale", "0", "--no-progress"]) == 1
    assert "--upscale must be >= 1" in capsys.readouterr().err
    assert main(["restore", str(faces_dir), str(tmp_path / "out"), "--aligned", "--upscale", "2",
                 "--no-progress"]) == 1
    assert "--out-size" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_restore_never_writes_over_its_inputs(no_model, faces_dir, capsys):
    before = {p: p.read_bytes() for p in faces_dir.rglob("*") if p.is_file()}
    # a crop restored into its own folder would replace it (a.png -> a.png)
    assert main(["restore", str(faces_dir / "a.png"), str(faces_dir), "--aligned", "--no-progress"]) == 1
    assert f"{faces_dir / 'a.png'}: the output would overwrite the input" in capsys.readouterr().err
    assert main(["restore", str(faces_dir / "a.png"), str(faces_dir / "a.png"), "--aligned", "--no-progress"]) == 1
    assert "would overwrite the input" in capsys.readouterr().err
    # a folder searched recursively: its own outputs would be restored again by the next run
    for out in (faces_dir, faces_dir / "sub", faces_dir / "restored"):
        assert main(["restore", str(faces_dir), str(out), "--aligned", "--no-progress"]) == 1
        assert "the input folder" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in faces_dir.rglob("*") if p.is_file()} == before
    assert not (faces_dir / "restored").exists()


# ---------------------------------------------------------------------------------------------
# Face crops (--aligned): sizes follow the face, not a fixed 16 px


@pytest.fixture(scope="module")
def orl_photo():
    """A real ORL face photo: 92x112 (w x h) grayscale read as RGB, sharp."""
    from facekit.data import orl_dir

    return read_image(orl_dir() / "s1" / "1.pgm")


def _restore_one(img, tmp_path, models, *extra, name="face.png"):
    write_image(tmp_path / "in" / name, img)
    out = tmp_path / "out" / name
    rc = main(["restore", str(tmp_path / "in" / name), str(out), "--aligned", "--models", str(models),
               "--chain", "reconstruct,upscale", "--backend", "torch", "--no-progress", *extra])
    assert rc == 0
    return read_image(out)


def _run(chain, face: np.ndarray) -> np.ndarray:
    """What the chain makes of a uint8 face, as float32 HWC in [0, 255]."""
    out = chain(torch.from_numpy(face).permute(2, 0, 1)[None].float() / 255).out[0]
    return out.permute(1, 2, 0).mul(255).numpy()


def test_aligned_sharp_crop_keeps_its_size_and_a_clean_64px_face_comes_back_identical(orl_photo, models, tmp_path,
                                                                                        capsys):
    # The old behaviour shrank this 92x112 photo to 16 px and returned a blurrier 64x64 face.
    out = _restore_one(orl_photo, tmp_path, models)
    assert out.shape == (112, 92, 3) and np.array_equal(out, orl_photo)
    assert "face.png: 92x112 -> 92x112: kept: already at output size (112 px >= 64 px)" in capsys.readouterr().out
    clean = cv2.resize(orl_photo[12:104], (64, 64), interpolation=cv2.INTER_AREA)
    out = _restore_one(clean, tmp_path, models, name="clean64.png")
    assert np.array_equal(out, clean)  # PSNR against itself: infinite, not 0.5 dB below it


def test_aligned_small_crops_are_restored_to_the_output_size_not_just_resized(orl_photo, models, tmp_path):
    from facekit.chain import build_chain

    chain, size = build_chain(["reconstruct", "upscale"], None, models, backend="torch")
    assert (size, chain.scale) == (16, 4)
    face = orl_photo[10:102]  # 92x92 around the face
    tiny = cv2.resize(face, (12, 12), interpolation=cv2.INTER_AREA)
    mid = cv2.resize(face, (32, 32), interpolation=cv2.INTER_AREA)

    out12 = _restore_one(tiny, tmp_path, models, name="t12.png")
    ref12 = _run(chain, cv2.resize(tiny, (16, 16), interpolation=cv2.INTER_CUBIC))  # enlarged to 16, 16 -> 64
    assert out12.shape == (64, 64, 3) and np.abs(out12.astype(int) - np.rint(ref12)).max() <= 1

    # "own" explicitly: these test stages are not marked any_size, so "auto" would shrink to 16
    out32 = _restore_one(mid, tmp_path, models, "--large-faces", "own", name="m32.png")
    own = _run(chain, mid)  # restored at its own 32 px -> 128, then area-resized to the 64 px output
    ref32 = cv2.resize(own, (64, 64), interpolation=cv2.INTER_AREA)
    assert own.shape == (128, 128, 3)
    assert out32.shape == (64, 64, 3) and np.abs(out32.astype(int) - np.rint(ref32)).max() <= 1
    for out, small in ((out12, tiny), (out32, mid)):  # not a plain bicubic resize
        bicubic = cv2.resize(small, (64, 64), interpolation=cv2.INTER_CUBIC).astype(int)
        assert np.abs(out.astype(int) - bicubic).mean() > 5

    big = _restore_one(mid, tmp_path, models, "--out-size", "128", "--large-faces", "own", name="m32_128.png")
    assert big.shape == (128, 128, 3) and np.abs(big.astype(int) - np.rint(own.clip(0, 255))).max() <= 1
    # --large-faces native shrinks the 32 px crop to the chain's 16 px first; keep only resizes it
    native = _restore_one(mid, tmp_path, models, "--large-faces", "native", name="m32_native.png")
    ref = _run(chain, cv2.resize(mid, (16, 16), interpolation=cv2.INTER_AREA))
    assert np.abs(native.astype(int) - np.rint(ref)).max() <= 1
    kept = _restore_one(mid, tmp_path, models, "--large-faces", "keep", name="m32_keep.png")
    assert np.array_equal(kept, cv2.resize(mid, (64, 64), interpolation=cv2.INTER_CUBIC))


def test_aligned_non_square_crop_keeps_its_aspect(orl_photo, models, tmp_path):
    small = cv2.resize(orl_photo, (23, 28), interpolation=cv2.INTER_AREA)  # 23x28 (w x h), not centre-cropped
    out = _restore_one(small, tmp_path, models)
    assert out.shape == (64, round(23 * 64 / 28), 3)
    # The padding around off-size and non-square crops is removed exactly: with a restorer that
    # is bicubic x4 then the negative, the output is the negative of the crop, not shifted or squeezed.
    for w, h, note in ((23, 28, "own size, padded to 24x32"), (10, 14, "enlarged to 11x16, padded to 16x16")):
        crop = cv2.resize(orl_photo, (w, h), interpolation=cv2.INTER_AREA)
        write_image(tmp_path / "ns" / f"{w}x{h}.png", crop)
        restore_path(tmp_path / "ns" / f"{w}x{h}.png", tmp_path / "ns_out", InvertRestorer(), 16, progress=False,
                     aligned=True)
        out = read_image(tmp_path / "ns_out" / f"{w}x{h}.png").astype(int)
        ref = cv2.resize(crop, (round(w * 64 / h), 64), interpolation=cv2.INTER_CUBIC).astype(int)
        assert out.shape == ref.shape, note
        assert np.abs((255 - out) - ref).mean() < 6, note


def test_plan_face_rules():
    # (h, w, target, n, s, out_size) -> chain input side or None (kept)
    assert plan_face(12, 12, (64, 64), 16, 4, 64).action == "enlarged 12->16, restored at 16->64"
    assert plan_face(32, 32, (128, 128), 16, 4, 64).action == "restored at 32->128"
    assert plan_face(40, 40, (40, 40), 16, 4, 64).action == "restored at 40->160, resized to 40"
    kept = plan_face(90, 90, (90, 90), 16, 4, 64)
    assert kept.run is None and kept.action.startswith("kept: already at output size")
    assert plan_face(90, 90, (180, 180), 16, 4, 64).run == 90  # enlarged x2: restored at its own size
    assert plan_face(40, 40, (40, 40), 16, 4, 64, any_size=False).run is None  # a fixed-size chain keeps it
    assert plan_face(40, 40, (40, 40), 16, 4, 64, large="native").run == 16
    with pytest.raises(ConfigError, match="--large-faces"):
        plan_face(40, 40, (40, 40), 16, 4, 64, large="shrink")


# ---------------------------------------------------------------------------------------------
# Whole images: detect, restore each face at its scale, paste back; the background is untouched


class InvertRestorer(Restorer):
    """A stand-in restorer whose effect cannot be missed: bicubic x4, then the negative."""

    def __init__(self):
        self.sizes = []
        super().__init__("invert", self._run, scale=4)

    def _run(self, x, size):
        self.sizes.append(tuple(x.shape[-2:]))
        out = 1.0 - F.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
        return RestoreOutput(out=out, seconds={"invert": 0.0})


@pytest.fixture(scope="module")
def two_faces(tmp_path_factory, orl_photo):
    """A 400x250 photo: two real ORL faces (about 70x85 px) far apart on a textured background."""
    from facekit.data import orl_dir

    other = read_image(orl_dir() / "s2" / "1.pgm")
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 256, (250, 400, 3), dtype=np.uint8), (0, 0), 2)
    for face, (x, y) in ((orl_photo, (50, 70)), (other, (260, 50))):
        small = cv2.resize(face, None, fx=0.75, fy=0.75, interpolation=cv2.INTER_AREA)
        img[y:y + small.shape[0], x:x + small.shape[1]] = small
    path = tmp_path_factory.mktemp("photo") / "two.png"
    write_image(path, img)
    return path, img, [(50, 70, 69, 84), (260, 50, 69, 84)]


def _outside(regions, shape):
    keep = np.ones(shape[:2], bool)
    for x0, y0, t in regions:
        keep[max(0, y0):y0 + t, max(0, x0):x0 + t] = False
    return keep


def test_two_faces_are_restored_in_place_and_the_background_is_bit_identical(two_faces, tmp_path):
    path, img, pasted = two_faces
    chain = InvertRestorer()
    summary = restore_path(path, tmp_path / "x2", chain, 16, progress=False, upscale=2)
    out = read_image(tmp_path / "x2" / "two.png")
    up = cv2.resize(img, (800, 500), interpolation=cv2.INTER_CUBIC)
    assert out.shape == (500, 800, 3)
    report = summary.files[0]
    assert len(report.faces) == 2 and report.restored == 2 and not summary.failed
    regions = [f.region for f in report.faces]
    # every face square holds a real face: its detection box lies inside one of the pasted photos
    for f in report.faces:
        x, y, w, h = f.box
        assert any(px - 5 <= x and x + w <= px + pw + 5 and py - 5 <= y and y + h <= py + ph + 5
                   for px, py, pw, ph in pasted)
        assert f.side > max(w, h) and f.region == (2 * f.square[0], 2 * f.square[1], 2 * f.side)
        assert f.action == f"restored at {f.side}->{4 * f.side}, resized to {2 * f.side}"
    # each face ran at its own size (about 95 px, padded to a multiple of 8), not shrunk to the
    # chain's 16 px; the first call is the one-off probe that the chain runs at other sizes
    assert chain.sizes[0] == (24, 32)
    assert set(chain.sizes[1:]) == {(-(-f.side // 8) * 8,) * 2 for f in report.faces}
    outside = _outside(regions, out.shape)
    assert outside.mean() > 0.8 and np.array_equal(out[outside], up[outside])
    for x0, y0, t in regions:  # inside, where the mask is 1, the face is the restorer's (inverted) output
        m = feather_mask(t, t)
        core = out[y0:y0 + t, x0:x0 + t][m == 1].astype(int)
        assert np.abs(core - up[y0:y0 + t, x0:x0 + t][m == 1]).mean() > 60
        assert np.abs(core - (255 - up[y0:y0 + t, x0:x0 + t][m == 1].astype(int))).mean() < 12
    # at U=1 the same faces (about 95 px >= the 64 px output side) are kept: the photo comes back as is
    summary = restore_path(path, tmp_path / "x1", InvertRestorer(), 16, progress=False)
    assert np.array_equal(read_image(tmp_path / "x1" / "two.png"), img)
    assert summary.faces_found == 2 and summary.faces_kept == 2
    assert "2 face(s) found, 0 restored, 2 kept" in summary.text()


@pytest.mark.skipif(not (default_model_dir() / "chain.yaml").is_file(), reason="no released model")
def test_released_model_restores_faces_in_place_via_the_cli(two_faces, tmp_path, capsys):
    path, img, _ = two_faces
    rc = main(["restore", str(path), str(tmp_path / "out"), "--out-size", "128", "--backend", "torch", "--large-faces", "own",
               "--no-progress"])
    captured = capsys.readouterr()
    out = read_image(tmp_path / "out" / "two.png")
    assert rc == 0 and out.shape == img.shape
    assert "two.png: 400x250 -> 400x250: 2 face(s) found, 2 restored, 0 kept" in captured.out
    assert "  face 1: box (" in captured.out and "resized to" in captured.out
    assert "note: 2 face(s) ran at their own size" in captured.out
    import re

    squares = [tuple(map(int, m)) for m in re.findall(r"square (\d+) px at \((-?\d+), (-?\d+)\)", captured.out)]
    assert len(squares) == 2
    changed = np.abs(out.astype(int) - img).max(2) > 0
    # the restorer changed both faces, and nothing outside the two squares; a faithful model at the
    # faces' own size only adds detail, so a good share of each square changes, not all of it
    regions = [(x0, y0, side) for side, x0, y0 in squares]
    assert not changed[_outside(regions, img.shape)].any()
    for x0, y0, side in regions:
        assert changed[y0:y0 + side, x0:x0 + side].mean() > 0.25


def test_photo_without_a_face_is_written_unchanged_and_reported(tmp_path):
    rng = np.random.default_rng(1)
    img = cv2.GaussianBlur(rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), (0, 0), 3)
    write_image(tmp_path / "in" / "wall.png", img)
    chain = InvertRestorer()
    summary = restore_path(tmp_path / "in", tmp_path / "out", chain, 16, progress=False, upscale=3)
    out = read_image(tmp_path / "out" / "wall.png")
    assert np.array_equal(out, cv2.resize(img, (480, 360), interpolation=cv2.INTER_CUBIC))
    assert chain.sizes == [] and summary.no_face == [summary.files[0].rel] and not summary.failed
    assert "wall.png: 160x120 -> 480x360: no face found; written upscaled" in summary.text()
    assert "no face found in 1 file(s)" in summary.text()
