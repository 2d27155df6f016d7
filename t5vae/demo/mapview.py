"""The latent map as an inline SVG (no plotting library, nothing fetched): the validation lines' codes in 2-D
coloured by statement kind, the current path as a line through its points, the scrubbed point ringed.
Hovering any point shows its line (an SVG ``<title>``)."""

from __future__ import annotations

from collections import Counter
from html import escape

import numpy as np

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
OTHER = "#b0b0b0"
PATH_COLOUR = "#111111"
WIDTH, HEIGHT, PAD = 640, 420, 16


def kind_colours(kinds, order=None) -> dict[str, str]:
    """The most frequent kinds get the palette's colours (ties by name), or with ``order`` (kinds that have
    an order of their own, such as length buckets) the kinds present in that order; the rest are grey."""
    counts = Counter(kinds)
    if order is not None:
        ranked = [k for k in order if k in counts] + sorted(k for k in counts if k not in order)
    else:
        ranked = [k for k, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return {k: PALETTE[i] if i < len(PALETTE) else OTHER for i, k in enumerate(ranked)}


def _scaler(xy: np.ndarray):
    lo, hi = xy.min(0), xy.max(0)
    span = np.where(hi - lo > 1e-12, hi - lo, 1.0)

    def to_px(p):
        p = (np.asarray(p, np.float64) - lo) / span
        return PAD + p[..., 0] * (WIDTH - 2 * PAD), HEIGHT - PAD - p[..., 1] * (HEIGHT - 2 * PAD)

    return to_px


def render_map(xy, kinds, lines, path_xy=None, path_lines=(), current: int | None = None, order=None) -> str:
    """HTML: an SVG of points ``xy`` [n, 2] (``kinds``, ``lines`` [n]), the path ``path_xy`` [p, 2] with its
    decoded ``path_lines``, point ``current`` of the path ringed; then a legend of the kinds shown."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    path_xy = np.zeros((0, 2)) if path_xy is None else np.asarray(path_xy, np.float64).reshape(-1, 2)
    if not len(xy) and not len(path_xy):
        return '<div id="latent-map" class="map-empty">No lines to map.</div>'
    to_px = _scaler(np.concatenate([xy, path_xy]))
    colours = kind_colours(kinds, order)
    out = [
        f'<div id="latent-map"><svg viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" style="max-width:{WIDTH}px" '
        f'role="img" aria-label="latent map" xmlns="http://www.w3.org/2000/svg">',
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#fafafa" stroke="#dddddd"/>',
    ]
    xs, ys = to_px(xy)
    for x, y, kind, line in zip(xs, ys, kinds, lines):
        out.append(
            f'<circle class="map-point" data-kind="{escape(kind)}" cx="{x:.1f}" cy="{y:.1f}" r="3.5" '
            f'fill="{colours[kind]}" fill-opacity="0.75">'
            f"<title>{escape(line)} ({escape(kind)})</title></circle>"
        )
    if len(path_xy):
        px, py = to_px(path_xy)
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in zip(px, py))
        out.append(
            f'<polyline class="map-path" points="{pts}" fill="none" stroke="{PATH_COLOUR}" stroke-width="1.5"/>'
        )
        n = len(path_xy)
        for i, (x, y) in enumerate(zip(px, py)):
            ratio = i / max(n - 1, 1)
            line = path_lines[i] if i < len(path_lines) else ""
            ring = ' stroke="#e4002b" stroke-width="3"' if i == current else ""
            out.append(
                f'<circle class="path-point{" path-current" if i == current else ""}" data-index="{i}" '
                f'cx="{x:.1f}" cy="{y:.1f}" r="{6 if i == current else 4.5}" fill="{PATH_COLOUR}"{ring}>'
                f"<title>ratio {ratio:.3f}: {escape(line)}</title></circle>"
            )
    out.append("</svg>")
    legend = " ".join(
        f'<span class="map-kind"><span style="color:{c}">&#9679;</span> {escape(k)}</span>'
        for k, c in colours.items()
        if c != OTHER
    )
    if OTHER in colours.values():
        legend += f' <span class="map-kind"><span style="color:{OTHER}">&#9679;</span> other</span>'
    if len(path_xy):
        legend += (
            f' <span class="map-kind"><span style="color:{PATH_COLOUR}">&#9679;&#8212;</span> path</span>'
        )
    out.append(f'<div class="map-legend">{legend}</div></div>')
    return "".join(out)
