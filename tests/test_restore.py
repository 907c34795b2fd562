"""``python -m facekit restore``: folders, unreadable inputs, chain.yaml, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from facekit.chain import save_stage
from facekit.cli import main
from facekit.errors import ConfigError
from facekit.imageio import read_image, write_image
from facekit.restore import output_names, prepare_face, read_chain_spec, resolve_stages
from tests.test_chain import DEBLUR_KW, RECON_KW, UPSCALE_KW, tiny_deblur, tiny_reconstruct, tiny_upscale

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning",
                                        "ignore:ONNX export mode")


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
    rc = main(["--threads", "1", "restore", str(faces_dir), str(out), "--models", str(models), "--batch", "2",
               "--backend", "torch", "--no-progress"])
    captured = capsys.readouterr()
    assert rc == 1  # one input failed; the others were still restored
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["a.png", "b.png", "d.png", "sub/c.png"]
    for name in written:
        img = read_image(out / name)
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert "broken.jpg" in captured.out and "unreadable inputs: 1" in captured.out
    assert "broken.jpg" in captured.err  # warned while running, too
    assert "restored 4 face(s)" in captured.out and "faces/s" in captured.out
    assert "notes.txt" not in captured.out + captured.err


def test_restore_matches_the_chain_and_onnx_backend(models, faces_dir, tmp_path, capsys):
    from facekit.restore import build_chain

    out_t, out_o = tmp_path / "t", tmp_path / "o"
    base = ["restore", str(faces_dir / "a.png"), "--models", str(models), "--chain", "upscale,deblur", "--no-progress"]
    assert main(base[:2] + [str(out_t)] + base[2:] + ["--backend", "torch"]) == 0
    assert main(base[:2] + [str(out_o)] + base[2:] + ["--backend", "onnx"]) == 0
    assert "upscale -> deblur" in capsys.readouterr().err
    t, o = read_image(out_t / "a.png").astype(int), read_image(out_o / "a.png").astype(int)
    assert t.shape == (64, 64, 3) and np.abs(t - o).max() <= 1  # 1e-4 in float -> at most 1 level
    # The file holds exactly what the chain computes on the resized face.
    chain, size = build_chain(["upscale", "deblur"], None, models, backend="torch")
    face = prepare_face(read_image(faces_dir / "a.png"), size)
    ref = chain(torch.from_numpy(face).permute(2, 0, 1)[None].float() / 255).out[0]
    ref = (ref.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(read_image(out_t / "a.png"), ref)


def test_single_file_to_named_output_and_size_option(models, faces_dir, tmp_path):
    target = tmp_path / "restored.png"
    rc = main(["restore", str(faces_dir / "b.jpg"), str(target), "--models", str(models), "--size", "32",
               "--chain", "reconstruct,upscale", "--backend", "torch", "--no-progress"])
    assert rc == 0 and read_image(target).shape == (128, 128, 3)


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
