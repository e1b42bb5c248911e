"""A picture of the baseline against the window for the drifted features, as a small SVG.

SVG is text: no plotting library to install, and the UI (or any browser) opens the file that the
monitoring asset links in its metadata. One panel per feature: the share of values per bin, on
bins common to both sides, baseline as grey bars and the window as an orange outline.

The window's values come from its statistics.json (the ``kll`` sketch: up to 2,048 evenly spaced
order statistics), the baseline's from its reference sample: both are quantile summaries, so the
histograms are those of the distributions, whatever the size of the window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape

import numpy as np

BINS = 20
PANEL_W, PANEL_H = 360, 220
MARGIN_L, MARGIN_R, MARGIN_T, MARGIN_B = 44, 12, 40, 34
COLUMNS = 3
MAX_PANELS = 12  # a window with more drifted features shows the first 12 (the table lists all)
BASELINE_FILL, WINDOW_STROKE = "#9e9e9e", "#e6550d"


@dataclass(frozen=True)
class Panel:
    """One feature: its reference values, the window's values, and a caption (the test's figures)."""

    name: str
    baseline: np.ndarray
    window: np.ndarray
    caption: str = ""


def window_values(statistics: dict, name: str) -> np.ndarray:
    """The window's order statistics of ``name`` from its statistics.json (empty if it has none)."""
    for feature in statistics.get("features", []):
        if feature.get("name") == name:
            data = (
                feature.get("numerical_statistics", {}).get("distribution", {}).get("kll", {}).get("sketch", {})
            ).get("data", [])
            return np.asarray([v for level in data for v in level], dtype="float64")
    return np.empty(0)


def shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Share of ``values`` in each bin between ``edges`` (the last bin includes its upper edge)."""
    if len(values) == 0:
        return np.zeros(len(edges) - 1)
    counts, _ = np.histogram(values, bins=edges)
    return counts / len(values)


def distribution_svg(panels: Sequence[Panel], title: str = "") -> bytes:
    """The SVG document (UTF-8) with one histogram panel per feature, at most ``MAX_PANELS``."""
    panels = list(panels)[:MAX_PANELS]
    rows = max(1, -(-len(panels) // COLUMNS))
    width, height = PANEL_W * min(max(len(panels), 1), COLUMNS), 28 + PANEL_H * rows
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="8" y="18" font-size="13" font-weight="bold">{escape(title)}</text>',
    ]
    if not panels:
        parts.append('<text x="8" y="50">no drifted feature: nothing to draw</text>')
    for index, panel in enumerate(panels):
        x0, y0 = PANEL_W * (index % COLUMNS), 28 + PANEL_H * (index // COLUMNS)
        parts.append(_panel(panel, x0, y0))
    parts.append("</svg>")
    return "\n".join(parts).encode("utf-8")


def _panel(panel: Panel, x0: float, y0: float) -> str:
    both = np.concatenate([panel.baseline, panel.window])
    low, high = (float(both.min()), float(both.max())) if len(both) else (0.0, 1.0)
    if high <= low:
        low, high = low - 0.5, high + 0.5  # one value everywhere: a bin around it
    edges = np.linspace(low, high, BINS + 1)
    base, win = shares(panel.baseline, edges), shares(panel.window, edges)
    top = max(float(base.max(initial=0)), float(win.max(initial=0)), 1e-9)
    plot_w, plot_h = PANEL_W - MARGIN_L - MARGIN_R, PANEL_H - MARGIN_T - MARGIN_B
    left, bottom, bin_w = x0 + MARGIN_L, y0 + MARGIN_T + plot_h, plot_w / BINS

    def y(share: float) -> float:
        return bottom - plot_h * share / top

    out = [
        f'<text x="{x0 + 8}" y="{y0 + 14}" font-weight="bold">{escape(panel.name)}</text>',
        f'<text x="{x0 + 8}" y="{y0 + 28}" fill="#555">{escape(panel.caption)}</text>',
    ]
    for i, share in enumerate(base):
        if share > 0:
            out.append(
                f'<rect x="{left + i * bin_w:.1f}" y="{y(share):.1f}" width="{bin_w:.1f}" '
                f'height="{bottom - y(share):.1f}" fill="{BASELINE_FILL}" fill-opacity="0.6"/>'
            )
    points = [f"{left:.1f},{bottom:.1f}"]
    for i, share in enumerate(win):
        points += [f"{left + i * bin_w:.1f},{y(share):.1f}", f"{left + (i + 1) * bin_w:.1f},{y(share):.1f}"]
    points.append(f"{left + plot_w:.1f},{bottom:.1f}")
    out.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="{WINDOW_STROKE}" stroke-width="2"/>')
    out += [
        f'<line x1="{left}" y1="{bottom}" x2="{left + plot_w}" y2="{bottom}" stroke="black"/>',
        f'<line x1="{left}" y1="{bottom}" x2="{left}" y2="{bottom - plot_h}" stroke="black"/>',
        f'<text x="{left - 4}" y="{bottom - plot_h + 4}" text-anchor="end">{top:.0%}</text>',
        f'<text x="{left - 4}" y="{bottom + 4}" text-anchor="end">0</text>',
        f'<text x="{left}" y="{bottom + 14}" text-anchor="start">{_number(low)}</text>',
        f'<text x="{left + plot_w}" y="{bottom + 14}" text-anchor="end">{_number(high)}</text>',
        f'<rect x="{left + 4}" y="{bottom + 20}" width="10" height="8" fill="{BASELINE_FILL}" fill-opacity="0.6"/>',
        f'<text x="{left + 18}" y="{bottom + 28}">baseline (n={len(panel.baseline):,} quantiles)</text>',
        f'<line x1="{left + 180}" y1="{bottom + 24}" x2="{left + 194}" y2="{bottom + 24}" '
        f'stroke="{WINDOW_STROKE}" stroke-width="2"/>',
        f'<text x="{left + 198}" y="{bottom + 28}">window</text>',
    ]
    return "\n".join(out)


def _number(value: float) -> str:
    return f"{value:.4g}"
