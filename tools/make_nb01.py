"""Regenerate notebooks/01_data_prep.ipynb."""
from pathlib import Path

from nbtools import write_notebook

ROOT = Path(__file__).resolve().parent.parent
write_notebook(ROOT / "notebooks" / "01_data_prep.ipynb", [
    ("md", """
# 01 · Data preparation

Turns a face source into clean, aligned, square crops with identities and deterministic splits,
cached under `data/processed/`. Sources: `orl` (built-in, 40 people × 10), `folder:PATH`,
`celeba:PATH` (e.g. `celeba:../shared/data/celeba-10k`), `video:PATH`.
Every input that yields no face is listed below with its reason; nothing is dropped silently.
"""),
    ("params", """
source = "orl"      # orl | folder:PATH | celeba:PATH | video:PATH
size = 64           # crop side in pixels (64, 128, 256)
align = "auto"      # auto | landmarks (YuNet five-point) | none (centre crop, pre-aligned sets)
limit = None        # only the first N inputs
seed = 0            # split seed
"""),
    ("code", """
import matplotlib.pyplot as plt
from facekit import settings
from facekit.data import load_faces, contact_sheet, plot_counts
from facekit.report import metric, save_figure, write_headline

settings.set_threads()  # so FACEKIT_THREADS (tests, CI: 1) applies inside the kernel too
faces = load_faces(source, size=size, align=align, limit=limit, seed=seed)
print(f"{len(faces)} faces, {faces.align} alignment, {faces.size}px" + (" (from cache)" if faces.from_cache else ""))
faces.counts()
"""),
    ("md", "## Contact sheet (first 40 faces, labelled by identity)"),
    ("code", """
labels = [i or "?" for i in faces.identity[:40]]
fig = contact_sheet(faces.images[:40], cols=10, labels=labels)
save_figure("01_data_prep", fig)  # the index thumbnail
plt.show()
"""),
    ("md", "## Faces per split, faces per identity, detection scores"),
    ("code", """
fig = plot_counts(faces)
plt.show()
"""),
    ("md", "## Inputs without a usable face, with the reason"),
    ("code", """
skipped = faces.skipped[["path", "reason"]]
print(f"{len(skipped)} of {len(faces.manifest)} inputs skipped")
skipped.head(30)
"""),
    ("code", """
write_headline("01_data_prep", {
    "source": source, "faces": metric(len(faces), "faces"),
    "identities": metric(len({i for i in faces.identity if i}), "people"),
    "skipped": metric(len(skipped), "inputs", "lower"),
    **{f"{s}_faces": metric(int((faces.split == s).sum()), "faces") for s in ("train", "val", "test")},
}, scope=f"Data only: shows which {source} faces the other notebooks use, their splits and why inputs "
         "were skipped; no model is involved.")
print("manifest:", faces.cache_dir / "manifest.csv" if faces.cache_dir else "(cache disabled)")
"""),
])
