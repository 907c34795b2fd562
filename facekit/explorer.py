"""Interactive explorer of the degradation engine: a control per op, clean | degraded side by side.

The widget values are plain data: a flat dict ``{"op.param": value}`` (see :data:`CONTROLS`).
:func:`explorer_spec` turns them into a :mod:`facekit.degrade` pipeline spec (pure, testable),
:func:`apply_values` runs that spec on a face, and :func:`explore` builds the ipywidgets UI for
JupyterLab.

Every op of :data:`facekit.degrade.OPS` (except the pipeline's internal ``resize``) has a control
group here, with one control per parameter, so nothing is drawn from the op's default range.
Each op has *gate* controls: when all its gates sit at their "off" value (0, ``"off"``, 1 for the
downsample factor, False for flip) the op is skipped; the other controls of the group only tune
it. With everything off the spec is empty and the face comes back unchanged. What the registry
still draws at random (the camera-shake path, the occluder's exact geometry and colour, noise
seeds, the Kelvin value within a lighting condition's range) comes from the explorer's ``seed``.

Headless runs: outside an IPython kernel (plain Python, tests), or with ``FACEKIT_HEADLESS=1``,
or with ``explore(..., interactive=False)``, no widget is built: :func:`explore` shows a static
preview (one PNG and the params) and returns. Inside a kernel without a live frontend
(papermill, nbval) the widgets are inert but harmless: the view is rendered once, eagerly, into
an ``Output`` widget whose saved state the HTML reports show (:func:`facekit.report.inline_widget_outputs`).
"""

from __future__ import annotations

import base64
import json
import os

import cv2
import numpy as np

from facekit import degrade
from facekit.errors import ConfigError

INTERNAL_OPS = ("resize",)  # added by the pipeline itself; not a user op (it has no controls)
OFF = degrade.EXPLORER_OFF
Control = degrade.Control  # each op's controls live on its degrade.OpDef


def explorer_controls(ops: dict[str, degrade.OpDef] | None = None) -> dict[str, dict[str, Control]]:
    """The explorer's control groups, derived from the op registry.

    Args:
        ops: the op registry (default :data:`facekit.degrade.OPS`).

    Returns:
        op -> {parameter: :class:`~facekit.degrade.Control`} for every op with controls, in
        imaging-chain order (:attr:`~facekit.degrade.OpDef.chain_position`: geometric ops first,
        then scene -> optics -> sensor -> codec, as in the presets).
    """
    ops = degrade.OPS if ops is None else ops
    ordered = sorted(ops.values(), key=lambda opdef: opdef.chain_position)
    return {opdef.name: dict(opdef.controls) for opdef in ordered if opdef.controls}


# op -> {parameter of degrade.OPS[op]: Control}: one control per parameter.
CONTROLS: dict[str, dict[str, Control]] = explorer_controls()


def off_values() -> dict:
    """Every control at its initial value (all ops off): ``{"op.param": value}``."""
    return {f"{op}.{key}": c.value for op, group in CONTROLS.items() for key, c in group.items()}


def _check_values(values: dict) -> dict:
    known = off_values()
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown explorer control {unknown[0]!r}; valid: {', '.join(known)}")
    return known | dict(values)


def _spec_value(c: Control, v):
    if c.kind == "int":
        return int(v)
    if c.kind == "float":
        return float(v)
    if c.kind == "bool":
        return bool(v)
    return v


def explorer_spec(values: dict) -> list[dict]:
    """Turn explorer values into a :mod:`facekit.degrade` pipeline spec (pure).

    Args:
        values: ``{"op.param": value}``; missing keys take their initial value (see
            :func:`off_values`).

    Returns:
        A list of op dicts, in pipeline order, with ``p = 1`` and every parameter fixed: one entry
        per op whose gate controls are not all off. Empty when everything is off.

    Raises:
        ConfigError: a key names no control.
    """
    vals = _check_values(values)
    spec = []
    for op, group in CONTROLS.items():
        if all(vals[f"{op}.{k}"] == c.value for k, c in group.items() if c.gate):
            continue
        spec.append({"op": op, **{k: _spec_value(c, vals[f"{op}.{k}"]) for k, c in group.items()}})
    return spec


def explorer_scale(spec: list[dict], shape_hw: tuple[int, int]) -> int:
    """Pipeline scale for a spec: the downsample factor when it divides the face, else 1.

    With scale 1 and a downsample op the pipeline resizes ``lq`` back up to the face size.
    """
    for entry in spec:
        if entry["op"] == "downsample":
            s = int(entry["scale"])
            return s if shape_hw[0] % s == 0 and shape_hw[1] % s == 0 else 1
    return 1


def apply_values(face, values: dict, seed: int = 0):
    """Run the explorer's spec on one face.

    Returns:
        ``(lq, gt, params)`` as :class:`facekit.degrade.Pipeline` returns them; with every
        control off, ``lq`` is the face itself (as float32) and ``params["ops"]`` is empty.
    """
    img = degrade.to_float(face)
    spec = explorer_spec(values)
    pipe = degrade.Pipeline(spec, scale=explorer_scale(spec, img.shape[:2]))
    return pipe(img, np.random.default_rng(int(seed)))


def _label(img: np.ndarray, text: str) -> np.ndarray:
    strip = np.full((18, img.shape[1], 3), 255, np.uint8)
    cv2.putText(strip, text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, img], axis=0)


def side_by_side(gt, lq, panel_px: int = 192) -> np.ndarray:
    """``clean | degraded`` as one ``uint8`` RGB image; each panel scaled to ``panel_px`` (nearest)."""
    panels = []
    for name, img in (("clean (gt)", gt), (f"degraded (lq {lq.shape[1]}x{lq.shape[0]})", lq)):
        u = degrade.to_uint8(degrade.to_float(img))
        h, w = u.shape[:2]
        f = panel_px / max(h, w)
        u = cv2.resize(u, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_NEAREST)
        panels.append(_label(u, name))
    height = max(p.shape[0] for p in panels)
    panels = [np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0)), constant_values=255) for p in panels]
    gap = np.full((height, 8, 3), 255, np.uint8)
    return np.concatenate([panels[0], gap, panels[1]], axis=1)


def _png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[:, :, ::-1]))
    if not ok:
        raise RuntimeError("OpenCV could not PNG-encode the preview")
    return buf.tobytes()


def _round(obj):
    if isinstance(obj, float):
        return round(obj, 4)
    if isinstance(obj, dict):
        return {k: _round(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_round(v) for v in obj]
    return obj


def params_text(params: dict) -> str:
    """The params dict as compact JSON text, one op per line."""
    head = {k: v for k, v in params.items() if k != "ops"}
    lines = [json.dumps(_round(head))] + [f"  {json.dumps(_round(r))}" for r in params["ops"]]
    return "\n".join(lines) if params["ops"] else lines[0] + "\n  (no ops: every control is off)"


def in_interactive_kernel() -> bool:
    """True inside an IPython kernel (JupyterLab, but also papermill/nbval), unless ``FACEKIT_HEADLESS`` is set."""
    if os.environ.get("FACEKIT_HEADLESS", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


class Explorer:
    """What :func:`explore` returns: the current values, their render, and the widgets if any.

    Attributes:
        face: the face shown (float32 in [0,1]).
        seed: seed of the random draws the ops still make.
        widget: the ipywidgets box (None for a static preview).
        controls: ``{"op.param": widget}`` (empty for a static preview).
        output: the ``Output`` widget holding the rendered view (None for a static preview).
        lq, gt, params, png: the latest render.
    """

    def __init__(self, face, values: dict | None = None, seed: int = 0, panel_px: int = 192):
        self.face = degrade.to_float(face)
        self.seed = int(seed)
        self.panel_px = int(panel_px)
        self._values = _check_values(values or {})
        self.widget = None
        self.output = None
        self.controls: dict = {}
        self._muted = False
        self.render()

    def values(self) -> dict:
        """Current ``{"op.param": value}`` (read from the widgets when there are any)."""
        if self.controls:
            return {k: w.value for k, w in self.controls.items() if k != "seed"}
        return dict(self._values)

    def spec(self) -> list[dict]:
        """The pipeline spec of the current values (:func:`explorer_spec`)."""
        return explorer_spec(self.values())

    def render(self):
        """Recompute ``lq``, ``gt``, ``params`` and the PNG from the current values."""
        if "seed" in self.controls:
            self.seed = int(self.controls["seed"].value)
        self.lq, self.gt, self.params = apply_values(self.face, self.values(), self.seed)
        self.png = _png(side_by_side(self.gt, self.lq, self.panel_px))
        return self.lq, self.gt, self.params

    def _outputs(self) -> tuple:
        text = params_text(self.params)
        return ({"output_type": "display_data", "metadata": {},
                 "data": {"image/png": base64.b64encode(self.png).decode("ascii"), "text/plain": "clean | degraded"}},
                {"output_type": "display_data", "metadata": {}, "data": {"text/plain": text}})

    def refresh(self, *_):
        """Re-render and put the view into the ``Output`` widget (called on every change)."""
        if self._muted:
            return
        try:
            self.render()
            outputs = self._outputs()
        except Exception as exc:  # show the problem in the view rather than losing the explorer
            outputs = ({"output_type": "display_data", "metadata": {},
                        "data": {"text/plain": f"{type(exc).__name__}: {exc}"}},)
        if self.output is not None:
            self.output.outputs = outputs

    def show_static(self) -> None:
        """Display the static preview (PNG, then the params) in IPython; no-op elsewhere."""
        try:
            from IPython.display import Image, Pretty, display
        except ImportError:
            return
        display(Image(data=self.png, format="png"), Pretty(params_text(self.params)))

    def _build_widgets(self) -> None:
        import ipywidgets as widgets  # lazy: only the interactive explorer needs it

        row_w, ctl_w = widgets.Layout(width="auto"), widgets.Layout(width="230px")
        style = {"description_width": "70px"}
        rows = []
        for op, group in CONTROLS.items():
            ctls = []
            for key, c in group.items():
                v = self._values[f"{op}.{key}"]
                common = dict(description=c.label or key, style=style, layout=ctl_w)
                if c.kind == "float":
                    w = widgets.FloatSlider(value=v, min=c.lo, max=c.hi, step=c.step, continuous_update=False,
                                            readout_format=".4g", **common)
                elif c.kind == "int":
                    w = widgets.IntSlider(value=v, min=c.lo, max=c.hi, step=c.step, continuous_update=False, **common)
                elif c.kind == "choice":
                    w = widgets.Dropdown(options=list(c.choices), value=v, **common)
                else:
                    w = widgets.Checkbox(value=bool(v), indent=False, description=c.label or key,
                                         layout=widgets.Layout(width="90px"))
                self.controls[f"{op}.{key}"] = w
                ctls.append(w)
            name = widgets.HTML(f"<b>{op}</b>", layout=widgets.Layout(width="130px"),
                                tooltip=degrade.OPS[op].doc)
            rows.append(widgets.HBox([name, *ctls], layout=row_w))
        seed = widgets.IntSlider(value=self.seed, min=0, max=99, description="seed", style=style,
                                 layout=ctl_w, continuous_update=False)
        self.controls["seed"] = seed
        reset = widgets.Button(description="all off", layout=widgets.Layout(width="90px"))

        def all_off(_):
            self._muted = True  # one render at the end, not one per control
            try:
                for k, v in off_values().items():
                    self.controls[k].value = v
            finally:
                self._muted = False
            self.refresh()

        reset.on_click(all_off)
        self.output = widgets.Output(layout=widgets.Layout(min_width="420px"))
        for w in self.controls.values():
            w.observe(self.refresh, names="value")
        head = widgets.HBox([widgets.HTML("<b>random draws</b>", layout=widgets.Layout(width="130px")), seed, reset])
        self.widget = widgets.VBox([self.output, head, *rows])
        self.refresh()


def explore(face, values: dict | None = None, seed: int = 0, interactive: bool | None = None,
            show: bool = True, panel_px: int = 192) -> Explorer:
    """Explore every degradation op on one face: a slider (group) per op, clean | degraded.

    Args:
        face: ``(H,W,3)`` uint8 or float face crop.
        values: initial ``{"op.param": value}`` (missing: off); see :data:`CONTROLS`.
        seed: seed for what the ops still draw (camera-shake path, occluder, noise, Kelvin).
        interactive: build ipywidgets (True), a static preview (False), or decide (None:
            widgets inside an IPython kernel, see :func:`in_interactive_kernel`).
        show: display the explorer (widgets or static preview) when running under IPython.
        panel_px: side of each displayed panel.

    Returns:
        An :class:`Explorer`; ``.widget`` is None for a static preview.
    """
    ex = Explorer(face, values, seed, panel_px)
    if interactive is None:
        interactive = in_interactive_kernel()
    if interactive:
        ex._build_widgets()
        if show:
            from IPython.display import display

            display(ex.widget)
    elif show:
        ex.show_static()
    return ex
