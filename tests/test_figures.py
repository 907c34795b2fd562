"""Figures readable at report width: at most three panels per row, each at least 250 px wide as the
report shows it, and one legend outside the axes (notebook 05's breakdown figure)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from facekit import evaluate as ev  # noqa: E402
from facekit import report  # noqa: E402

METHODS = ["bicubic", "classical", "classical-ref", "realesrgan-x4plus", "chain:default"]
# notebook 05's "per head angle, occlusion type and degradation severity" cell
PARTS = {"yaw": "yaw_bin", "roll": "roll_bin", "occlusion": "occlusion", "blur": "blur_level",
         "noise": "noise_level", "jpeg": "jpeg_level"}


def _rows() -> pd.DataFrame:
    """Evaluation rows as :func:`facekit.evaluate.evaluate` writes them: 24 faces x 2 conditions,
    every factor level present, each method a fixed offset from bicubic plus noise."""
    rng = np.random.default_rng(0)
    offsets = {"bicubic": 0.0, "classical": 0.4, "classical-ref": 0.6, "realesrgan-x4plus": -1.5, "chain:default": 1.2}
    rows = []
    for image in range(24):
        levels = {col: ev.LEVEL_ORDER[col][image % len(ev.LEVEL_ORDER[col])] for col in PARTS.values()}
        for condition in ("low", "medium"):
            base = 24 + rng.normal()
            for method in METHODS:
                rows.append({"image": image, "method": method, "condition": condition, "sweep": "",
                             "severity": np.nan, "psnr": base + offsets[method] + 0.1 * rng.normal(), **levels})
    return pd.DataFrame(rows)


def breakdown_figure():
    """The breakdown figure as notebook 05 draws it."""
    fig, axes = report.panel_grid(len(PARTS))
    rows = _rows()
    for ax, (name, col) in zip(axes, PARTS.items()):
        ev.plot_breakdown_gain(rows, col, "psnr", ax=ax, n_boot=200)
    report.shared_legend(fig, axes)
    report.rotate_crowded_ticks(fig, axes)
    return fig, axes


def test_breakdown_panels_are_wide_enough_at_report_width():
    fig, axes = breakdown_figure()
    try:
        assert len(axes) == 6
        rows = {round(ax.get_position().y0, 3) for ax in axes}
        assert len(rows) == 2  # three per row
        widths = report.panel_widths_px(fig)
        assert len(widths) == 6
        assert min(widths) >= report.MIN_PANEL_WIDTH_PX, widths
        # each axes' width in pixels at the figure's own dpi, as saved (no scaling needed)
        assert fig.get_figwidth() * fig.dpi <= report.REPORT_FIGURE_WIDTH_PX
        assert all(ax.get_window_extent().width >= 250 for ax in axes)
    finally:
        plt.close(fig)


def test_breakdown_has_one_legend_outside_every_axes():
    fig, axes = breakdown_figure()
    try:
        assert all(ax.get_legend() is None for ax in axes)
        assert len(fig.legends) == 1
        legend = fig.legends[0]
        assert [t.get_text() for t in legend.get_texts()] == METHODS[1:] + ["bicubic (zero line)"]
        fig.canvas.draw()
        box = legend.get_window_extent()
        for ax in axes:
            assert not box.overlaps(ax.get_window_extent()), ax.get_title()
    finally:
        plt.close(fig)


def test_tick_labels_do_not_run_together():
    fig, axes = breakdown_figure()
    try:
        fig.canvas.draw()
        for ax in axes:
            boxes = sorted((t.get_window_extent() for t in ax.get_xticklabels() if t.get_text()), key=lambda b: b.x0)
            tilted = ax.get_xticklabels()[0].get_rotation() != 0
            # level names of the occlusion panel ("none", "rectangle", "lower_face" ...) need the tilt;
            # short ones do not; the noise levels ("0.02-0.04" ...) fit with a few px to spare or not
            if "noise_level" not in ax.get_title():
                assert tilted == (ax.get_title() == "gain by occlusion (95% CI)"), ax.get_title()
            if not tilted:
                assert all(b.x0 - a.x1 >= 4 for a, b in zip(boxes, boxes[1:])), ax.get_title()
    finally:
        plt.close(fig)


def test_breakdown_bars_are_gains_over_bicubic_on_an_axis_near_the_data():
    """Notebook 05's bars used to be absolute PSNR from 0 dB (all 20-25 dB long), hiding the
    differences between methods. Each bar is now a method's paired gain over bicubic, the zero
    line is bicubic, and the axis spans the gains (a few dB), not 0-25 dB."""
    rows = _rows()
    fig, ax = plt.subplots()
    try:
        ev.plot_breakdown_gain(rows, "blur_level", "psnr", ax=ax, n_boot=200)
        gains = ev.gain_summary(rows, "blur_level", "psnr", n_boot=200)
        heights = sorted(round(b.get_height(), 6) for c in ax.containers for b in c if hasattr(b, "get_height"))
        assert heights == sorted(round(v, 6) for v in gains["psnr_gain"])
        lo, hi = ax.get_ylim()
        assert lo < -1.5 and hi < 5.0 and hi - lo < 8.0, (lo, hi)  # realesrgan -1.5 dB ... chain +1.2 dB
        zero = [ln for ln in ax.get_lines() if ln.get_label() == "bicubic (zero line)"]
        assert len(zero) == 1 and set(zero[0].get_ydata()) == {0.0}
        assert "bicubic" not in set(gains["method"])
        assert "(dB)" in ax.get_ylabel()
    finally:
        plt.close(fig)


def test_gain_summary_pairs_each_row_with_bicubic_on_the_same_input():
    rows = _rows()
    gains = ev.gain_summary(rows, "occlusion", "psnr", n_boot=500).set_index(["method", "occlusion"])
    main = rows.set_index(["image", "condition"])
    for method in ("classical", "chain:default"):
        for level in ("none", "hand"):
            sel = rows[(rows["method"] == method) & (rows["occlusion"] == level)].set_index(["image", "condition"])
            want = (sel["psnr"] - main[main["method"] == "bicubic"]["psnr"].reindex(sel.index)).mean()
            got = gains.loc[(method, level)]
            assert got["psnr_gain"] == pytest.approx(want, abs=1e-9)
            assert got["n"] == len(sel)
            # paired: the spread of the faces (sd 1 dB, an unpaired 95% CI about 1.2 dB wide here) cancels;
            # what is left is the 0.1 dB jitter of each method (about 0.2 dB wide)
            assert got["psnr_gain_lo"] < want < got["psnr_gain_hi"] and got["psnr_gain_hi"] - got["psnr_gain_lo"] < 0.4
    with pytest.raises(ev.ConfigError, match="baseline 'nearest' not evaluated"):
        ev.gain_summary(rows, "occlusion", baseline="nearest")


def test_six_panels_in_one_row_would_fail_the_check():
    """The old layout (six subplots in one row, 15 in wide) is what the width check catches."""
    fig, axes = plt.subplots(1, 6, figsize=(15, 3.2))
    try:
        fig.tight_layout()
        assert min(report.panel_widths_px(fig)) < report.MIN_PANEL_WIDTH_PX
    finally:
        plt.close(fig)


@pytest.mark.parametrize("n, ncols, shape", [(1, 3, 1), (2, 3, 2), (4, 3, 3), (4, 2, 2), (5, 9, 3)])
def test_panel_grid_never_puts_more_than_three_in_a_row(n, ncols, shape):
    fig, axes = report.panel_grid(n, ncols=ncols)
    try:
        assert len(axes) == n and len(fig.axes) == n
        per_row = max(sum(1 for a in axes if round(a.get_position().y0, 3) == y)
                      for y in {round(a.get_position().y0, 3) for a in axes})
        assert per_row == shape
        assert min(report.panel_widths_px(fig)) >= report.MIN_PANEL_WIDTH_PX
    finally:
        plt.close(fig)
