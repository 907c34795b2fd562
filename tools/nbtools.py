"""Write a notebook from a list of (kind, source) cells; used to keep notebooks/ reproducible.

Usage from a small script:  write_notebook(path, [("md", "# Title"), ("params", "x = 1"), ("code", "...")])
A "params" cell is a code cell tagged ``parameters`` (papermill injects after it).
"""

from __future__ import annotations

from pathlib import Path

import nbformat


def write_notebook(path: str | Path, cells: list[tuple[str, str]]) -> Path:
    """Write an output-free notebook with exactly one ``parameters`` cell."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    n_params = 0
    for kind, src in cells:
        src = src.strip("\n")
        if kind == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(src))
        elif kind in ("code", "params"):
            cell = nbformat.v4.new_code_cell(src)
            if kind == "params":
                cell.metadata["tags"] = ["parameters"]
                n_params += 1
            nb.cells.append(cell)
        else:
            raise ValueError(f"unknown cell kind {kind!r}")
    if n_params != 1:
        raise ValueError(f"{path}: a notebook needs exactly one parameters cell, got {n_params}")
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"c{i:02d}"
    path = Path(path)
    nbformat.validate(nb)
    path.write_text(nbformat.writes(nb) + "\n")
    return path
