"""Helpers notebooks use to publish results for the HTML reports.

Every notebook writes its headline numbers with :func:`write_headline` and its key figure with
:func:`save_figure`; the runner's ``reports/index.html`` reads them back from these files instead
of re-typing them.

Headline file format (``reports/metrics/<stem>.json``): a flat JSON object. A value is either a
bare scalar (the original format, still read) or a :func:`metric` entry
``{"value", "unit", "better", "baseline", "baseline_name", "ci", "label"}``; keys starting with
``_`` are about the notebook, not numbers: ``_scope`` is one sentence on what this run can show.
"""

from __future__ import annotations

import base64
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


BETTER = ("higher", "lower")
_METRIC_KEYS = ("value", "unit", "better", "baseline", "baseline_name", "ci", "label")


def metric(value, unit: str, better: str | None = None, *, baseline=None,
           baseline_name: str | None = None, ci=None, label: str | None = None) -> dict:
    """One headline number with what a reader needs to judge it, for :func:`write_headline`.

    Args:
        value: the number (numpy/torch scalars are fine; NaN is stored as None).
        unit: its unit, e.g. ``"dB"``, ``"0-1"``, ``"faces"``, ``"ms/face"``; never empty.
        better: ``"higher"``, ``"lower"`` or None (a count or setting, not a score).
        baseline: the same number for the reference method (bicubic, the input ...), or None.
        baseline_name: what the baseline is, e.g. ``"bicubic"``.
        ci: ``(low, high)`` 95% confidence interval of ``value``, or None.
        label: readable name shown instead of the key, or None.

    Returns:
        The JSON-ready entry (keys other than ``value`` that are None are left out).

    Raises:
        ConfigError: empty unit, unknown ``better``, or a ``ci`` that is not a pair.
    """
    if not isinstance(unit, str) or not unit.strip():
        raise ConfigError(f"metric {value!r}: unit must be a non-empty string, got {unit!r}")
    if better is not None and better not in BETTER:
        raise ConfigError(f"metric {value!r}: better must be 'higher', 'lower' or None, got {better!r}")
    if ci is not None:
        ci = [_jsonable(c) for c in ci]
        if len(ci) != 2:
            raise ConfigError(f"metric {value!r}: ci must be (low, high), got {ci!r}")
    entry = {"value": _jsonable(value), "unit": unit, "better": better, "baseline": _jsonable(baseline),
             "baseline_name": baseline_name, "ci": ci, "label": label}
    return {k: v for k, v in entry.items() if v is not None or k == "value"}


def _entry(value):
    if isinstance(value, dict):
        unknown = set(value) - set(_METRIC_KEYS)
        if unknown or "value" not in value:
            raise ConfigError(f"headline entry {value!r}: use facekit.report.metric() "
                              f"(unknown keys: {', '.join(sorted(unknown)) or 'none'})")
        return {k: ([_jsonable(c) for c in v] if k == "ci" else _jsonable(v)) for k, v in value.items()}
    return _jsonable(value)


def write_headline(notebook: str, numbers: dict, *, scope: str | None = None) -> Path:
    """Write a notebook's headline numbers for the report index.

    Args:
        notebook: notebook stem, e.g. ``"03_train_gan"``.
        numbers: flat mapping of short names to :func:`metric` entries, scalars or short strings.
        scope: one sentence on what this run can show (and what it cannot), e.g. that a smoke
            run shows the pipeline works, not the model's quality.

    Returns:
        The path written (atomically: temp file then rename).
    """
    path = headline_path(notebook)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {k: _entry(v) for k, v in numbers.items()}
    if scope:
        data["_scope"] = str(scope)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
    return path


def figure_path(notebook: str, *, reports_dir: str | Path | None = None) -> Path:
    """Return the PNG file holding a notebook's key figure (``reports/figures/<stem>.png``).

    Args:
        notebook: notebook stem.
        reports_dir: reports folder; ``None`` uses ``settings.REPORTS_DIR``.
    """
    base = settings.REPORTS_DIR if reports_dir is None else Path(reports_dir)
    return base / "figures" / f"{notebook}.png"


THUMBNAIL_WIDTH_PX = 640  # stored width; the index shows it at half that (sharp on HiDPI screens)


def save_figure(notebook: str, figure) -> Path:
    """Save a notebook's key figure (its before/after or main comparison) for the index thumbnail.

    Args:
        notebook: notebook stem.
        figure: a matplotlib ``Figure``, or the path of an image file (PNG/JPEG) already written.

    Returns:
        The PNG written (``figures/<stem>.png`` in the reports folder, about 640 px wide).
    """
    path = figure_path(notebook)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    if hasattr(figure, "savefig"):
        dpi = THUMBNAIL_WIDTH_PX / max(figure.get_figwidth(), 1e-3)
        figure.savefig(tmp, dpi=dpi, format="png", facecolor="white")
    else:
        from PIL import Image

        with Image.open(figure) as image:
            image = image.convert("RGB")
            if image.width > THUMBNAIL_WIDTH_PX:
                height = round(image.height * THUMBNAIL_WIDTH_PX / image.width)
                image = image.resize((THUMBNAIL_WIDTH_PX, max(height, 1)), Image.LANCZOS)
            image.save(tmp, format="PNG")
    tmp.replace(path)
    return path


def headline_rows(headline: dict) -> tuple[list[dict], str | None]:
    """Normalise a headline (either file format) into display rows and the scope sentence.

    Args:
        headline: what :func:`read_headline` returned.

    Returns:
        ``(rows, scope)``: one dict per entry with ``name``, ``label``, ``value``, ``unit``,
        ``better``, ``baseline``, ``baseline_name``, ``ci`` (None where not given) and ``verdict``
        (see :func:`verdict`); ``scope`` is the ``_scope`` sentence or None.
    """
    rows = []
    for name, entry in headline.items():
        if name.startswith("_"):
            continue
        row = dict.fromkeys(_METRIC_KEYS)
        row.update(entry if isinstance(entry, dict) else {"value": entry})
        row["name"] = name
        row["label"] = row["label"] or name
        row["verdict"] = verdict(row["value"], row["baseline"], row["better"], row["ci"])
        rows.append(row)
    scope = headline.get("_scope")
    return rows, (str(scope) if scope else None)


def headline_table(notebook: str, *, reports_dir: str | Path | None = None):
    """The headline numbers a notebook wrote, read back from its file, as a small table.

    Notebooks end with it, so what they show is what the index shows (plain numbers, not
    ``np.float64(...)`` reprs).

    Args:
        notebook: notebook stem.
        reports_dir: reports folder; ``None`` uses ``settings.REPORTS_DIR``.

    Returns:
        A DataFrame indexed by name: ``value``, ``unit``, ``ci``, ``baseline``, ``baseline_name``,
        ``better`` and ``verdict``, columns without any entry left out.
    """
    import pandas as pd

    rows, _ = headline_rows(read_headline(notebook, reports_dir=reports_dir))
    columns = ["name", "value", "unit", "ci", "baseline", "baseline_name", "better", "verdict"]
    table = pd.DataFrame(rows, columns=columns).set_index("name")
    table["verdict"] = table["verdict"].where(table["verdict"] != "none")
    return table.dropna(axis=1, how="all")


def verdict(value, baseline, better: str | None, ci=None) -> str:
    """Compare a number with its baseline for the index's colours.

    Args:
        value: the number.
        baseline: the baseline's number, or None.
        better: ``"higher"``, ``"lower"`` or None.
        ci: ``(low, high)`` 95% CI of ``value``, or None.

    Returns:
        ``"better"`` (green), ``"worse"`` (red), ``"same"`` (grey: equal, or the baseline inside
        the CI, so no difference is shown) or ``"none"`` (nothing to compare).
    """
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (value, baseline))
    if better not in BETTER or not numeric:
        return "none"
    if ci is not None and None not in ci and min(ci) <= baseline <= max(ci):
        return "same"
    if value == baseline:
        return "same"
    return "better" if (value > baseline) == (better == "higher") else "worse"


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


def _coalesce_streams(nb) -> None:
    """Merge each cell's stream outputs and apply carriage returns, in place.

    A text progress bar rewrites its line with ``\\r``; a notebook keeps every refresh, and HTML
    would show them all run together. After this only the last state of each line is left.
    """
    from nbconvert.preprocessors import CoalesceStreamsPreprocessor

    CoalesceStreamsPreprocessor().preprocess(nb, {})


def notebook_to_html(executed: str | Path, html_path: str | Path) -> Path:
    """Convert an executed notebook to one self-contained HTML file.

    Figures are inline ``data:`` URIs (notebook PNG outputs already are; markdown images are
    embedded with ``embed_images``), and no script or stylesheet is loaded from outside the file.
    Widgets show the outputs they held when the notebook ran (see :func:`inline_widget_outputs`);
    text progress bars show their last state (carriage returns applied).

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
    _coalesce_streams(nb)
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


# Width (CSS px) at which a report shows a figure: about the output column of the lab template in
# a 1200 px window; a wider PNG is scaled down to it. Plotting helpers size panels for it.
REPORT_FIGURE_WIDTH_PX = 1000
MIN_PANEL_WIDTH_PX = 250  # narrowest readable panel at that width (ticks, labels, a title)


def panel_widths_px(figure, report_width_px: int = REPORT_FIGURE_WIDTH_PX) -> list[float]:
    """Width of each panel (axes, colour bars left out) of a figure as a report shows it.

    Args:
        figure: a matplotlib ``Figure`` (after ``tight_layout`` or with a layout engine).
        report_width_px: width the report gives figures; wider figures are scaled down to it.

    Returns:
        One width in px per panel, in ``figure.axes`` order.
    """
    figure.canvas.draw()
    width_px = figure.get_figwidth() * figure.dpi
    scale = min(1.0, report_width_px / width_px)
    return [ax.get_position().width * width_px * scale
            for ax in figure.axes if ax.get_label() != "<colorbar>"]


MAX_PANELS_PER_ROW = 3


def panel_grid(n: int, ncols: int = MAX_PANELS_PER_ROW, panel_height: float = 3.0):
    """A figure for ``n`` plot panels that stays readable at report width.

    At most ``ncols`` (never more than :data:`MAX_PANELS_PER_ROW`) panels per row, the figure as
    wide as the report shows it (:data:`REPORT_FIGURE_WIDTH_PX` at 100 dpi, so nothing is scaled
    down), constrained layout so that :func:`shared_legend` can sit outside the axes.

    Args:
        n: number of panels.
        ncols: panels per row.
        panel_height: height of one row, in inches.

    Returns:
        ``(figure, axes)``: ``axes`` is a list of the ``n`` panels (unused grid cells removed).
    """
    import matplotlib.pyplot as plt

    ncols = max(1, min(ncols, MAX_PANELS_PER_ROW, n))
    nrows = -(-n // ncols)
    fig, grid = plt.subplots(nrows, ncols, figsize=(REPORT_FIGURE_WIDTH_PX / 100, panel_height * nrows + 0.4),
                             dpi=100, squeeze=False, layout="constrained")
    axes = list(grid.flat)
    for ax in axes[n:]:
        ax.remove()
    return fig, axes[:n]


def shared_legend(figure, axes, ncol: int = 6, fontsize: float = 8):
    """Replace the panels' own legends by one legend above them, outside every axes.

    Args:
        figure: the figure (made with a layout engine, e.g. :func:`panel_grid`).
        axes: the panels whose legend entries are merged (first label wins).
        ncol: most entries per legend row.
        fontsize: legend font size.

    Returns:
        The figure legend, or None when no panel had labelled artists.
    """
    entries: dict = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    if not entries:
        return None
    return figure.legend(list(entries.values()), list(entries), loc="outside upper center",
                         ncol=min(ncol, len(entries)), frameon=False, fontsize=fontsize)


def rotate_crowded_ticks(figure, axes, rotation: float = 30, gap_px: float = 4) -> list:
    """Tilt the x tick labels of panels where neighbouring labels touch or run together.

    Args:
        figure: the figure (it is drawn once to measure the labels).
        axes: the panels to check.
        rotation: angle in degrees for the crowded panels (labels right-aligned to their tick).
        gap_px: smallest gap between two labels that still counts as readable.

    Returns:
        The panels whose labels were tilted.
    """
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    tilted = []
    for ax in axes:
        boxes = sorted((t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()),
                       key=lambda b: b.x0)
        if any(b.x0 - a.x1 < gap_px for a, b in zip(boxes, boxes[1:])):
            for label in ax.get_xticklabels():
                label.set_rotation(rotation)
                label.set_horizontalalignment("right")
                label.set_rotation_mode("anchor")
            tilted.append(ax)
    return tilted


_INDEX_CSS = """
body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px 32px; color: #222; }
h1 { font-size: 22px; margin: 0 0 12px; }
table { border-collapse: collapse; margin: 12px 0 20px; }
th, td { border: 1px solid #d0d4da; padding: 6px 10px; vertical-align: top; text-align: left; }
th { background: #eef1f5; }
table.run th { width: 9em; }
.status { display: inline-block; padding: 1px 8px; border-radius: 9px; font-weight: 600; color: #fff; }
.status-ok { background: #2e7d32; } .status-failed { background: #c62828; } .status-skipped { background: #8a8f98; }
.params { color: #555; font: 12px monospace; margin-top: 6px; }
.duration { color: #555; white-space: nowrap; }
a.ipynb { font-size: 11px; color: #777; margin-left: 6px; }
.error { border: 1px solid #c62828; background: #fdecea; padding: 10px 14px; white-space: pre-wrap; font: 13px monospace; }
.profile-note, .scope { background: #fff8e1; border-left: 4px solid #f9a825; padding: 6px 10px; margin: 8px 0; }
.scope { margin: 0 0 6px; font-size: 13px; }
img.thumb { width: 320px; max-height: 260px; object-fit: contain; border: 1px solid #d0d4da; background: #fff; }
.no-figure { color: #8a8f98; font-style: italic; }
table.numbers { margin: 0; font-size: 13px; }
table.numbers th, table.numbers td { padding: 2px 8px; }
table.numbers td.value, table.numbers td.baseline, table.numbers td.ci { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
table.numbers td.better { color: #555; white-space: nowrap; }
tr.cmp-better td.value { background: #e3f4e1; color: #1b5e20; font-weight: 600; }
tr.cmp-worse td.value { background: #fde4e1; color: #b71c1c; font-weight: 600; }
tr.cmp-same td.value { background: #eef1f5; }
.context { color: #555; font-size: 13px; margin: 0 0 4px; }
.context .metric { margin-right: 14px; white-space: nowrap; } .context .metric b { font-weight: 600; margin-right: 4px; }
.legend { font-size: 12px; color: #555; }
.legend span { padding: 0 6px; margin-right: 6px; }
"""

# What each profile of params/ can show; a notebook adds its own sentence (write_headline's scope).
PROFILE_NOTES = {
    "smoke": "Smoke profile: a few faces and a few dozen training steps. It shows that every notebook "
             "runs end to end; it does not measure the quality of the models (the model cards in "
             "models/ and the full profile do).",
    "full": "Full profile: the whole test split and full-length training; the numbers measure the "
            "models, within the 95% confidence intervals shown.",
}
_BETTER_TEXT = {"higher": "higher is better", "lower": "lower is better", None: "–"}
_VERDICT_TEXT = {"better": "better than the baseline", "worse": "worse than the baseline",
                 "same": "no difference from the baseline (equal, or inside the 95% CI)", "none": ""}


def _thumbnail(reports_dir: Path | None, figure: str | None) -> bytes | None:
    if not figure or reports_dir is None:
        return None
    path = Path(reports_dir) / figure
    return path.read_bytes() if path.is_file() else None


def _numbers_html(headline: dict, esc) -> str:
    """The headline of one notebook: scope sentence, text entries, then the table of numbers."""
    rows, scope = headline_rows(headline)
    numbers = [r for r in rows if isinstance(r["value"], (int, float)) and not isinstance(r["value"], bool)
               or r["value"] is None]
    texts = [r for r in rows if r not in numbers]
    out = [f'<p class="scope">{esc(scope)}</p>'] if scope else []
    if texts:
        out.append('<p class="context">' + "".join(
            f'<span class="metric text" data-name="{esc(r["name"])}"><b>{esc(r["label"])}</b>'
            f'{esc(_format_value(r["value"]))}</span>' for r in texts) + "</p>")
    if numbers:
        out.append('<table class="numbers"><thead><tr><th>number</th><th>value</th><th>unit</th>'
                   "<th>95% CI</th><th>baseline</th><th>direction</th></tr></thead><tbody>")
        for r in numbers:
            ci = f"[{_format_value(r['ci'][0])}, {_format_value(r['ci'][1])}]" if r["ci"] else ""
            base = "" if r["baseline"] is None else _format_value(r["baseline"])
            if r["baseline_name"] and base:
                base += f" ({r['baseline_name']})"
            out.append(
                f'<tr class="metric cmp-{r["verdict"]}" data-name="{esc(r["name"])}" '
                f'title="{esc(_VERDICT_TEXT[r["verdict"]])}"><th>{esc(r["label"])}</th>'
                f'<td class="value">{esc(_format_value(r["value"]))}</td>'
                f'<td class="unit">{esc(r["unit"] or "")}</td><td class="ci">{esc(ci)}</td>'
                f'<td class="baseline">{esc(base)}</td>'
                f'<td class="better">{esc(_BETTER_TEXT.get(r["better"], "–"))}</td></tr>')
        out.append("</tbody></table>")
    return "".join(out) or "–"


def render_index(summary: dict, reports_dir: str | Path | None = None) -> str:
    """Render the run summary (as in ``run.json``) to the self-contained ``index.html`` text.

    Per notebook: its status and links, a thumbnail of its key figure (embedded), the sentence on
    what this run can show, and its headline numbers as a table with unit, 95% CI, baseline and
    direction, the value coloured green/red/grey against the baseline (see :func:`verdict`).

    Args:
        summary: ``RunSummary.to_dict()`` of :mod:`facekit.runner`: run-level keys (``started``,
            ``profile``, ``data_source``, ``status``, ...) and ``notebooks``, a list of
            per-notebook dicts (``stem``, ``status``, ``duration_s``, ``html`` and ``figure``
            relative to the reports folder or None, ``headline`` numbers, ``parameters``, ``error``).
        reports_dir: folder the ``figure`` paths are relative to; None uses
            ``summary["reports_dir"]`` (no thumbnails when neither is given).

    Returns:
        The HTML page. Its notebook table has class and id ``headline``; each notebook row has
        ``data-stem``, each number a ``tr.metric`` row with ``data-name`` and a ``td.unit``.
    """
    from html import escape

    def esc(value) -> str:
        return escape(str(value), quote=True)

    if reports_dir is None and summary.get("reports_dir"):
        reports_dir = summary["reports_dir"]
    reports_dir = Path(reports_dir) if reports_dir is not None else None
    profile = summary.get("profile", "")
    run_rows = [
        ("run date", summary.get("started", "")),
        ("profile", profile),
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
        f"<title>facekit reports · {esc(profile)}</title>",
        f"<style>{_INDEX_CSS}</style></head><body>",
        "<h1>facekit reports</h1>",
        '<table class="run" id="run">',
        *(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in run_rows),
        "</table>",
    ]
    if PROFILE_NOTES.get(profile):
        out.append(f'<p class="profile-note" id="profile-note">{esc(PROFILE_NOTES[profile])}</p>')
    if summary.get("error"):
        out.append(f'<div class="error" id="error">{esc(summary["error"])}</div>')
    out += [
        '<p class="legend">Model numbers against their baseline: '
        '<span class="cmp" style="background:#e3f4e1;color:#1b5e20">better</span>'
        '<span class="cmp" style="background:#fde4e1;color:#b71c1c">worse</span>'
        '<span class="cmp" style="background:#eef1f5">no difference (baseline inside the 95% CI)</span>'
        "Click a notebook or its figure for the full report.</p>",
        '<table class="headline" id="headline">',
        "<thead><tr><th>#</th><th>notebook</th><th>key figure</th>"
        "<th>headline numbers</th></tr></thead><tbody>",
    ]
    for i, nb in enumerate(summary.get("notebooks", []), 1):
        stem, status = nb.get("stem", "?"), nb.get("status", "?")
        name = esc(stem)
        if nb.get("html"):
            name = f'<a href="{esc(nb["html"])}">{name}</a>'
        if nb.get("executed"):
            name += f' <a class="ipynb" href="{esc(nb["executed"])}">.ipynb</a>'
        png = _thumbnail(reports_dir, nb.get("figure"))
        if png is not None:
            uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
            thumb = f'<img class="thumb" alt="key figure of {esc(stem)}" src="{uri}">'
            if nb.get("html"):
                thumb = f'<a href="{esc(nb["html"])}">{thumb}</a>'
        else:
            thumb = '<span class="no-figure">no figure</span>'
        params = ", ".join(f"{k}={v!r}" for k, v in (nb.get("parameters") or {}).items())
        out.append(
            f'<tr data-stem="{esc(stem)}" data-status="{esc(status)}"><td>{i}</td>'
            f'<td>{name}<br><span class="status status-{esc(status)}">{esc(status)}</span> '
            f'<span class="duration">{esc(format_duration(nb.get("duration_s")))}</span>'
            f'<div class="params">{esc(params) or "defaults"}</div></td>'
            f'<td class="figure">{thumb}</td>'
            f'<td class="numbers">{_numbers_html(nb.get("headline") or {}, esc)}</td></tr>'
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
    index.write_text(render_index(summary, base), encoding="utf-8")
    return index
