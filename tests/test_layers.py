"""The package's import layering (issue 21): no cycle, no import of a higher layer, no hidden imports.

The rule lives in :data:`facekit.LAYERS`. These tests read the source with :mod:`ast` (nothing is
imported), so they are fast and see imports inside functions too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

import facekit

ROOT = Path(facekit.__file__).resolve().parent
REPO = ROOT.parent
# Third-party packages worth deferring: importing any of them costs far more than a light module
# (numpy, OpenCV and PIL included: the command line's parser and --help load none of them).
HEAVY = {"numpy", "cv2", "PIL", "torch", "torchvision", "onnxruntime", "onnx", "mediapipe", "dlib", "matplotlib", "pandas",
         "ipywidgets", "nbformat", "nbconvert", "papermill", "scipy", "sklearn", "spandrel"}


def module_files() -> dict[str, Path]:
    """``{dotted name below facekit: file}`` for every module of the package."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            out[".".join(parts)] = path
    return out


def _layer_of() -> dict[str, int]:
    return {m: i for i, (_, (_, mods)) in enumerate(facekit.LAYERS.items()) for m in mods}


@lru_cache(maxsize=None)
def imports_of(name: str) -> tuple[tuple, ...]:
    """``(target, lineno, top_level, third_party)`` for each import in module ``name``.

    ``target`` is a facekit module name (below ``facekit``) or, for a third-party import, its
    top-level package; ``top_level`` is False for an import inside a function or method.
    """
    path = module_files()[name]
    mods = module_files()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    found = []

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    _record(alias.name, [], child.lineno, not in_function)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package[:len(package) - (child.level - 1)] if child.level > 1 else package
                    dotted = "facekit." + ".".join(base + ([child.module] if child.module else []))
                    dotted = dotted.rstrip(".")
                else:
                    dotted = child.module or ""
                _record(dotted, [a.name for a in child.names], child.lineno, not in_function)
            visit(child, inner)

    def _record(dotted: str, names: list[str], lineno: int, top: bool):
        if dotted == "facekit" or dotted.startswith("facekit."):
            rel = dotted[len("facekit."):] if dotted != "facekit" else ""
            targets = [f"{rel}.{n}".lstrip(".") for n in names if f"{rel}.{n}".lstrip(".") in mods]
            if not targets and rel:
                targets = [rel]
            for t in targets:
                if t and t != name:
                    found.append((t, lineno, top, False))
        else:
            found.append((dotted.split(".")[0], lineno, top, True))

    visit(tree, False)
    return tuple(found)


@lru_cache(maxsize=None)
def heavy_at_import(name: str) -> frozenset[str]:
    """The heavy third-party packages that importing facekit module ``name`` loads."""
    heavy, seen, todo = set(), {name}, [name]
    while todo:
        mod = todo.pop()
        if "." in mod:  # a submodule import runs its package's __init__ first
            todo.extend(p for p in [mod.rsplit(".", 1)[0]] if p not in seen and not seen.add(p))
        for target, _, top, third in imports_of(mod):
            if not top:
                continue
            if third:
                heavy |= {target} & HEAVY
            elif target not in seen:
                seen.add(target)
                todo.append(target)
    return frozenset(heavy)


def test_every_module_has_one_layer():
    listed = [m for _, (_, mods) in facekit.LAYERS.items() for m in mods]
    assert len(listed) == len(set(listed)), "a module is listed in two layers"
    files = set(module_files())
    assert not files - set(listed), f"modules missing from facekit.LAYERS: {sorted(files - set(listed))}"
    assert not set(listed) - files, f"facekit.LAYERS lists modules that do not exist: {sorted(set(listed) - files)}"


def test_no_import_of_a_higher_layer():
    layer = _layer_of()
    names = list(facekit.LAYERS)
    bad = []
    for name in module_files():
        for target, line, _, third in imports_of(name):
            if not third and layer[target] > layer[name]:
                bad.append(f"facekit/{name.replace('.', '/')}.py:{line} ({names[layer[name]]}) imports "
                           f"{target} ({names[layer[target]]})")
    assert not bad, "imports of a higher layer:\n" + "\n".join(bad)


def test_no_import_cycle():
    graph = {name: {t for t, _, _, third in imports_of(name) if not third} for name in module_files()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            dfs(node)


def test_imports_inside_functions_only_defer_heavy_packages():
    """An import inside a function is allowed only when it defers a heavy package the module
    itself does not already load (torch for a light module, MediaPipe, matplotlib, ...)."""
    bad = []
    for name in module_files():
        own = heavy_at_import(name)
        for target, line, top, third in imports_of(name):
            if top:
                continue
            deferred = ({target} & HEAVY) if third else heavy_at_import(target)
            if third and target not in HEAVY:
                continue  # the standard library and light third-party packages are not policed here
            if not deferred - own:
                bad.append(f"facekit/{name.replace('.', '/')}.py:{line} imports {target} inside a function "
                           f"but defers nothing heavy (move it to the top)")
    assert not bad, "\n".join(bad)


def test_runtime_imports_nothing_from_training_evaluation_or_release():
    """What users run loads no trainer, scorer or release code, even through its lazy imports."""
    layer = _layer_of()
    order = list(facekit.LAYERS)
    runtime = order.index("runtime")

    def reach(name, seen):
        for target, _, _, third in imports_of(name):
            if not third and target not in seen:
                seen.add(target)
                reach(target, seen)
        return seen

    for name in facekit.LAYERS["runtime"][1]:
        above = sorted(m for m in reach(name, set()) if layer[m] > runtime)
        assert not above, f"{name} reaches {above}"


@pytest.mark.parametrize("argv", [["--help"], ["restore", "--help"], ["run", "--help"], ["train", "--help"]])
def test_help_imports_no_torch(argv):
    code = (f"import sys\nfrom facekit import cli\ntry:\n    cli.main({argv!r})\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'cv2', 'numpy', 'onnxruntime'})\n"
            "print('HEAVY', heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("HEAVY")][-1]
    assert line == "HEAVY []", line


def test_readme_layout_names_every_module():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Layout"):]
    section = section[:section.index("\n## ", 4)]
    missing = [m for m in module_files()
               if not any(f"`{name}`" in section for name in (m, m.split(".")[-1], m.replace(".", "/") + "/"))]
    assert not missing, f"README's layout table does not name: {missing}"
    for layer in facekit.LAYERS:
        assert f"**{layer}**" in section, f"README's layout table lacks the {layer} layer"
