"""The run folder layout is spelled in facekit.runs alone (issue 21): a ratchet on the rest."""

from pathlib import Path

# Modules that still spell the layout by hand, to move onto facekit.runs.RunDir; empty now, and it stays so.
NOT_YET_ON_RUNDIR: set[str] = set()


def test_no_new_module_spells_the_run_layout_by_hand():
    root = Path(__file__).resolve().parent.parent / "facekit"
    spelled = {p.relative_to(root).as_posix() for p in root.rglob("*.py")
               if p.name != "runs.py" and '"last.pt"' in p.read_text(encoding="utf-8")}
    assert spelled <= NOT_YET_ON_RUNDIR, f"use facekit.runs.RunDir in {sorted(spelled - NOT_YET_ON_RUNDIR)}"
