"""Helpers notebooks use to publish results for the HTML reports.

Every notebook writes its headline numbers with :func:`write_headline`; the runner's
``reports/index.html`` reads them back from these files instead of re-typing them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from facekit import settings
from facekit.errors import ConfigError


def headline_path(notebook: str, *, reports_dir: str | Path | None = None) -> Path:
    """Return the JSON file holding a notebook's headline numbers.

    Args:
        notebook: notebook stem, e.g. ``"01_data_prep"``.
        reports_dir: reports folder; ``None`` uses ``settings.REPORTS_DIR``
            (env ``FACEKIT_REPORTS_DIR``, which the runner sets for the notebook kernels).
    """
    base = settings.REPORTS_DIR if reports_dir is None else Path(reports_dir)
    return base / "metrics" / f"{notebook}.json"


def _jsonable(value):
    if hasattr(value, "item"):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def write_headline(notebook: str, numbers: dict) -> Path:
    """Write a notebook's headline numbers (a flat ``{name: value}`` dict) for the report index.

    Args:
        notebook: notebook stem, e.g. ``"03_train_gan"``.
        numbers: flat mapping of short names to scalars or short strings.

    Returns:
        The path written (atomically: temp file then rename).
    """
    path = headline_path(notebook)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({k: _jsonable(v) for k, v in numbers.items()}, indent=2))
    tmp.replace(path)
    return path


def read_headline(notebook: str, *, reports_dir: str | Path | None = None) -> dict:
    """Read a notebook's headline numbers; an empty dict when the notebook wrote none.

    Args:
        notebook: notebook stem.
        reports_dir: reports folder; ``None`` uses ``settings.REPORTS_DIR``.

    Raises:
        ConfigError: the file exists but is not a JSON object (names the file).
    """
    path = headline_path(notebook, reports_dir=reports_dir)
    if not path.exists():
        return {}
    try:
        numbers = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: headline file is not valid JSON ({exc})") from exc
    if not isinstance(numbers, dict):
        raise ConfigError(f"{path}: headline file must hold a JSON object, got {type(numbers).__name__}")
    return numbers


# --- HTML reports -------------------------------------------------------------------------------

# The lab template loads require.js, MathJax, mermaid and the widget manager from CDNs; a report
# must open offline as one file, so those blocks are emptied. A link back to the index is added.
_REPORT_TEMPLATE_NAME = "facekit_report.html.j2"
_REPORT_TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block body_header -%}
{{ super() }}
<nav style="font: 13px sans-serif; padding: 6px 12px;"><a href="../index.html">&larr; all reports</a></nav>
{%- endblock body_header -%}
"""
# Widget views need the (CDN) widget manager to render; their text/plain fallback is shown instead.
_DISPLAY_PRIORITY = [
    "application/javascript", "text/html", "text/markdown", "image/svg+xml", "text/latex",
    "image/png", "image/jpeg", "text/plain",
]


_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
_WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def inline_widget_outputs(nb) -> int:
    """Replace widget views by the static outputs their ``Output`` widgets held, in place.

    A report cannot run the widget manager (it is JavaScript from a CDN), but the kernel saved
    the widgets' state, including what an ``interact`` explorer drew for its default values.

    Args:
        nb: executed notebook (``nbformat`` v4 node) with ``metadata.widgets`` saved by nbclient.

    Returns:
        How many widget views were replaced (views without saved outputs are left as they are).
    """
    import nbformat

    state = nb.metadata.get("widgets", {}).get(_WIDGET_STATE, {}).get("state", {})

    def outputs_of(model_id: str, seen: set) -> list:
        if model_id in seen or model_id not in state:
            return []
        seen.add(model_id)
        model, model_state = state[model_id], state[model_id].get("state", {})
        found = list(model_state.get("outputs", [])) if model.get("model_name") == "OutputModel" else []
        for child in model_state.get("children") or []:
            if isinstance(child, str) and child.startswith("IPY_MODEL_"):
                found += outputs_of(child[len("IPY_MODEL_"):], seen)
        return found

    note = nbformat.v4.new_output("display_data", data={
        "text/html": "<em>Interactive widget (its controls work in JupyterLab); the default view:</em>"})
    replaced = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outputs = []
        for out in cell.get("outputs", []):
            view = out.get("data", {}).get(_WIDGET_VIEW)
            inner = outputs_of(view.get("model_id", ""), set()) if view else []
            if inner:
                outputs += [note, *(nbformat.from_dict(o) for o in inner)]
                replaced += 1
            else:
                outputs.append(out)
        cell.outputs = outputs
    return replaced


def notebook_to_html(executed: str | Path, html_path: str | Path) -> Path:
    """Convert an executed notebook to one self-contained HTML file.

    Figures are inline ``data:`` URIs (notebook PNG outputs already are; markdown images are
    embedded with ``embed_images``), and no script or stylesheet is loaded from outside the file.
    Widgets show the outputs they held when the notebook ran (see :func:`inline_widget_outputs`).

    Args:
        executed: the executed ``.ipynb`` (as papermill writes it, errors included).
        html_path: where to write the ``.html``; parent folders are created.

    Returns:
        ``html_path``.

    Raises:
        ConfigError: the notebook file cannot be read as a notebook (names the file).
    """
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter
    from traitlets.config import Config

    executed, html_path = Path(executed), Path(html_path)
    try:
        nb = nbformat.read(executed, as_version=4)
    except Exception as exc:  # nbformat raises several unrelated types for a bad file
        raise ConfigError(f"{executed}: cannot read notebook for the HTML report ({exc})") from exc
    inline_widget_outputs(nb)
    config = Config()
    config.NbConvertBase.display_data_priority = list(_DISPLAY_PRIORITY)
    exporter = HTMLExporter(
        config=config,
        template_name="lab",
        extra_loaders=[DictLoader({_REPORT_TEMPLATE_NAME: _REPORT_TEMPLATE})],
        template_file=_REPORT_TEMPLATE_NAME,
        embed_images=True,
    )
    # embed_images resolves relative image paths against the notebook's folder.
    resources = {"metadata": {"name": executed.stem, "path": str(executed.parent)}}
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(body, encoding="utf-8")
    return html_path


def _format_value(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}".replace(",", "\u2009") if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_duration(seconds: float | None) -> str:
    """Format seconds for people: ``"4.2 s"``, ``"3 min 05 s"``, ``"1 h 02 min"``; ``"–"`` for None."""
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


_INDEX_CSS = """
body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px 32px; color: #222; }
h1 { font-size: 22px; margin: 0 0 12px; }
table { border-collapse: collapse; margin: 12px 0 20px; }
th, td { border: 1px solid #d0d4da; padding: 6px 10px; vertical-align: top; text-align: left; }
th { background: #eef1f5; }
table.run th { width: 9em; }
.status { display: inline-block; padding: 1px 8px; border-radius: 9px; font-weight: 600; color: #fff; }
.status-ok { background: #2e7d32; } .status-failed { background: #c62828; } .status-skipped { background: #8a8f98; }
.metric { display: inline-block; margin: 0 14px 2px 0; white-space: nowrap; }
.metric b { font-weight: 600; color: #555; margin-right: 4px; }
.params { color: #555; font: 12px monospace; }
td.duration { white-space: nowrap; }
a.ipynb { font-size: 11px; color: #777; margin-left: 6px; }
.error { border: 1px solid #c62828; background: #fdecea; padding: 10px 14px; white-space: pre-wrap; font: 13px monospace; }
"""


def render_index(summary: dict) -> str:
    """Render the run summary (as in ``run.json``) to the self-contained ``index.html`` text.

    Args:
        summary: ``RunSummary.to_dict()`` of :mod:`facekit.runner`: run-level keys (``started``,
            ``profile``, ``data_source``, ``status``, ...) and ``notebooks``, a list of
            per-notebook dicts (``stem``, ``status``, ``duration_s``, ``html`` relative to the
            reports folder or None, ``headline`` numbers, ``parameters``, ``error``).

    Returns:
        The HTML page. Its notebook table has class and id ``headline``.
    """
    from html import escape

    def esc(value) -> str:
        return escape(str(value), quote=True)

    run_rows = [
        ("run date", summary.get("started", "")),
        ("profile", summary.get("profile", "")),
        ("data source", summary.get("data_source") or "notebook defaults"),
        ("status", summary.get("status", "")),
        ("duration", format_duration(summary.get("duration_s"))),
        ("threads", summary.get("threads", "")),
        ("notebooks", summary.get("notebooks_dir", "")),
    ]
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1.0">',
        f"<title>facekit reports · {esc(summary.get('profile', ''))}</title>",
        f"<style>{_INDEX_CSS}</style></head><body>",
        "<h1>facekit reports</h1>",
        '<table class="run" id="run">',
        *(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in run_rows),
        "</table>",
    ]
    if summary.get("error"):
        out.append(f'<div class="error" id="error">{esc(summary["error"])}</div>')
    out += [
        '<table class="headline" id="headline">',
        "<thead><tr><th>#</th><th>notebook</th><th>status</th><th>duration</th>"
        "<th>headline numbers</th><th>parameters</th></tr></thead><tbody>",
    ]
    for i, nb in enumerate(summary.get("notebooks", []), 1):
        stem, status = nb.get("stem", "?"), nb.get("status", "?")
        name = esc(stem)
        if nb.get("html"):
            name = f'<a href="{esc(nb["html"])}">{name}</a>'
        if nb.get("executed"):
            name += f' <a class="ipynb" href="{esc(nb["executed"])}">.ipynb</a>'
        metrics = "".join(
            f'<span class="metric" data-name="{esc(k)}"><b>{esc(k)}</b>{esc(_format_value(v))}</span>'
            for k, v in (nb.get("headline") or {}).items()
        )
        params = ", ".join(f"{k}={v!r}" for k, v in (nb.get("parameters") or {}).items())
        out.append(
            f'<tr data-stem="{esc(stem)}" data-status="{esc(status)}"><td>{i}</td><td>{name}</td>'
            f'<td><span class="status status-{esc(status)}">{esc(status)}</span></td>'
            f'<td class="duration">{esc(format_duration(nb.get("duration_s")))}</td>'
            f"<td>{metrics or '–'}</td>"
            f'<td class="params">{esc(params) or "defaults"}</td></tr>'
        )
    out += ["</tbody></table>", "</body></html>", ""]
    return "\n".join(out)


def write_index(summary: dict, reports_dir: str | Path | None = None) -> Path:
    """Write ``index.html`` and ``run.json`` for a run summary into the reports folder.

    Args:
        summary: ``RunSummary.to_dict()`` (see :func:`render_index`).
        reports_dir: reports folder; ``None`` uses ``settings.REPORTS_DIR``.

    Returns:
        The path of ``index.html``.
    """
    base = settings.REPORTS_DIR if reports_dir is None else Path(reports_dir)
    base.mkdir(parents=True, exist_ok=True)
    (base / "run.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    index = base / "index.html"
    index.write_text(render_index(summary), encoding="utf-8")
    return index
