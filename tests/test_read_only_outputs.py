"""Read-only output and cache folders end in one line naming the folder, before any work starts.

The tests run as root, where chmod does not stop a write, so the :func:`read_only` fixture makes
folders read-only for this process the way the OS does for a user without write access: every
attempt to create, write or rename into a file or folder under them raises PermissionError.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from facekit import cli, settings
from facekit.errors import OutputError
from facekit.imageio import write_image
from facekit.restorer import Restorer


@pytest.fixture
def read_only(monkeypatch):
    """Return ``add(folder)``: from then on nothing under ``folder`` can be created or written."""
    roots: list[Path] = []

    def under(p) -> bool:
        if not isinstance(p, (str, bytes, os.PathLike)):
            return False  # a file descriptor
        p = Path(os.path.abspath(os.fsdecode(p)))
        return any(p == r or r in p.parents for r in roots)

    def deny(p):
        raise PermissionError(errno.EACCES, "Permission denied", os.fsdecode(p))

    real_open, real_os_open, real_mkdir = io.open, os.open, os.mkdir
    real_replace, real_rename = os.replace, os.rename

    def fake_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and under(file):
            deny(file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and under(path):
            deny(path)
        return real_os_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if under(path):
            if os.path.exists(path):  # as Linux: an existing name is EEXIST before EACCES
                raise FileExistsError(errno.EEXIST, "File exists", os.fsdecode(path))
            deny(path)
        return real_mkdir(path, *args, **kwargs)

    def fake_move(real):
        def move(src, dst, *args, **kwargs):
            if under(dst):
                deny(dst)
            return real(src, dst, *args, **kwargs)
        return move

    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    monkeypatch.setattr(os, "replace", fake_move(real_replace))
    monkeypatch.setattr(os, "rename", fake_move(real_rename))
    return lambda folder: roots.append(Path(os.path.abspath(folder)))


def test_the_fixture_really_blocks_writes(read_only, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    read_only(ro)
    for attempt in (lambda: (ro / "a.txt").write_text("x"), lambda: (ro / "sub").mkdir(),
                    lambda: np.save(ro / "a.npy", np.zeros(2)), lambda: write_image(ro / "a.png", np.zeros((4, 4, 3), np.uint8))):
        with pytest.raises(PermissionError):
            attempt()
    (tmp_path / "b.txt").write_text("x")  # elsewhere still writable
    assert not any(ro.iterdir())


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"facekit {command}: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _face_png(path: Path) -> Path:
    return write_image(path, np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))


@pytest.mark.parametrize("missing", [False, True], ids=["existing-folder", "folder-to-create"])
def test_restore_read_only_output_is_one_line_before_any_model_loads(read_only, tmp_path, capsys, monkeypatch, missing):
    monkeypatch.setattr("facekit.chain.build_chain", lambda *a, **k: pytest.fail("a model was loaded first"))
    src = _face_png(tmp_path / "in.png")
    parent = tmp_path / "out"
    parent.mkdir()
    read_only(parent)
    out = parent / "restored" if missing else parent
    assert cli.main(["restore", str(src), str(out), "--aligned"]) == 1
    line = _one_error_line(capsys, "restore")
    assert f"{out}" in line and "output folder is not writable: Permission denied" in line
    if missing:
        assert f"cannot create it in {parent}" in line
    assert not any(parent.iterdir())


def test_restore_failed_write_mid_run_names_the_file(tmp_path, monkeypatch):
    """The folder passed the check but a write fails later (disk full): the file is named."""
    from facekit import imageio, restore

    identity = Restorer("identity", lambda x, size: x, scale=1)  # the smallest restorer: x1, its input

    def full(path, img, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(imageio, "write_image", full)
    src = _face_png(tmp_path / "in.png")
    with pytest.raises(OutputError, match=r"out\.png: cannot write the output: No space left on device"):
        restore.restore_path(src, tmp_path / "out.png", identity, 32, aligned=True, progress=False)


def test_evaluate_read_only_results_folder_is_one_line_before_any_data_loads(read_only, tmp_path, capsys, monkeypatch):
    from facekit import data

    monkeypatch.setattr(settings, "DATA_DIR", tmp_path / "data")
    monkeypatch.setattr(data, "load_faces", lambda *a, **k: pytest.fail("faces were loaded first"))
    (tmp_path / "data").mkdir()
    read_only(tmp_path / "data")
    assert cli.main(["evaluate", "--name", "x"]) == 1
    line = _one_error_line(capsys, "evaluate")
    assert f"{tmp_path / 'data' / 'runs'}" in line and "results folder is not writable: Permission denied" in line
    assert "FACEKIT_DATA_DIR" in line


def test_data_read_only_cache_is_one_line_before_the_ingestion(read_only, tmp_path, capsys, monkeypatch):
    from facekit import data

    monkeypatch.setattr(settings, "DATA_DIR", tmp_path / "data")
    real_ingest = data.ingest
    monkeypatch.setattr(data, "ingest", lambda *a, **k: pytest.fail("ingestion ran first"))
    (tmp_path / "data" / "processed").mkdir(parents=True)
    read_only(tmp_path / "data" / "processed")
    assert cli.main(["data", "orl", "--size", "32", "--limit", "3"]) == 1
    line = _one_error_line(capsys, "data")
    assert f"{tmp_path / 'data' / 'processed'}" in line and "data cache is not writable: Permission denied" in line
    assert "--no-cache" in line
    # without the cache the same command works and writes nothing there
    monkeypatch.setattr(data, "ingest", real_ingest)
    assert cli.main(["data", "orl", "--size", "32", "--limit", "3", "--no-cache"]) == 0
    assert "3 faces from orl" in capsys.readouterr().out
    assert not any((tmp_path / "data" / "processed").iterdir())


def test_data_cache_write_failure_names_the_folder(tmp_path, monkeypatch):
    from facekit import data

    def full(path, write):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(data, "_replace_atomically", full)
    with pytest.raises(OutputError, match="cannot write the data cache: No space left on device"):
        data.save_cache(tmp_path / "c", np.zeros((1, 16, 16, 3), np.uint8), data.pd.DataFrame(), {})


def test_onnx_export_into_a_read_only_cache_names_the_folder(read_only, tmp_path):
    from facekit.chain import export_onnx

    ro = tmp_path / "onnx-cache"
    ro.mkdir()
    read_only(ro)
    net = torch.nn.Conv2d(3, 3, 3, padding=1)
    with pytest.raises(OutputError, match=r"onnx-cache: cannot write the ONNX export x\.onnx: Permission denied"):
        export_onnx(net, ro / "x.onnx", 8)
    with pytest.raises(OutputError, match=r"cannot create the ONNX export folder: Permission denied"):
        export_onnx(net, ro / "sub" / "x.onnx", 8)
    assert not any(ro.iterdir())


def test_check_writable_names_a_file_in_the_way(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match=r"cannot create the output folder .*f/sub there: .*f is a file"):
        settings.check_writable(tmp_path / "f" / "sub", "output folder")
    assert settings.check_writable(tmp_path / "new" / "deeper", "output folder") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # the check creates nothing
    assert [p.name for p in tmp_path.iterdir()] == ["f"]  # and leaves no probe file


def test_video_read_only_output_is_one_line_before_the_source_opens(read_only, tmp_path, capsys, monkeypatch):
    from facekit import video

    monkeypatch.setattr(video, "open_capture", lambda *a, **k: pytest.fail("the source was opened first"))
    clip = tmp_path / "clip.avi"
    clip.write_bytes(b"not opened")
    out = tmp_path / "out"
    out.mkdir()
    read_only(out)
    assert cli.main(["video", str(clip), str(out), "--no-progress"]) == 1
    line = _one_error_line(capsys, "video")
    assert f"{out}" in line and "output folder is not writable" in line


def test_train_read_only_runs_folder_is_one_line_before_any_data_loads(read_only, tmp_path, capsys, monkeypatch):
    from facekit import data

    monkeypatch.setattr(data, "load_faces", lambda *a, **k: pytest.fail("faces were loaded first"))
    runs = tmp_path / "runs"
    runs.mkdir()
    read_only(runs)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: ro\nsteps: 1\n")
    assert cli.main(["train", "--config", str(cfg), "--runs-dir", str(runs)]) == 1
    line = _one_error_line(capsys, "train")
    assert f"{runs / 'ro'}" in line and "not writable" in line
