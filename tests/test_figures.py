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


def _summary(col: str) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for level in ev.LEVEL_ORDER[col]:
        for method in METHODS:
            m = 24 + rng.normal()
            rows.append({col: level, "method": method, "n": 10, "psnr": m, "psnr_lo": m - 0.8, "psnr_hi": m + 0.8})
    return pd.DataFrame(rows)


def breakdown_figure():
    """The breakdown figure as notebook 05 draws it."""
    fig, axes = report.panel_grid(len(PARTS))
    for ax, (name, col) in zip(axes, PARTS.items()):
        ev.plot_breakdown(_summary(col), col, "psnr", ax=ax)
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
        assert [t.get_text() for t in legend.get_texts()] == METHODS
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
            # level names of the occlusion panel ("none", "rectangle", "lower_face" ...) need the tilt
            assert tilted == (ax.get_title() == "psnr by occlusion (95% CI)"), ax.get_title()
            if not tilted:
                assert all(b.x0 - a.x1 >= 4 for a, b in zip(boxes, boxes[1:])), ax.get_title()
    finally:
        plt.close(fig)


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
