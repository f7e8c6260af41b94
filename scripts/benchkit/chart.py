"""A hand-written SVG chart: two panels side by side, throughput and server
CPU per message against connections (log x), one line per backend."""

from __future__ import annotations

import math
from xml.sax.saxutils import escape

from .model import Cell, find

PANEL_W, PANEL_H = 440, 300
MARGIN = {"left": 78, "right": 16, "top": 34, "bottom": 46}
LEGEND_H = 30
TITLE_H = 28
# Colour-blind-safe palette (Okabe-Ito), one per backend, with a marker shape.
STYLE = {
    "uring": ("#0072B2", "circle"),
    "epoll": ("#D55E00", "square"),
    "tokio-uring": ("#009E73", "diamond"),
    "tokio": ("#CC79A7", "triangle"),
    "monoio": ("#E69F00", "cross"),
}
FALLBACK = ("#555555", "circle")


def size_label(size: int) -> str:
    """64 -> '64 B', 16384 -> '16 KiB'."""
    if size >= 1024 and size % 1024 == 0:
        return f"{size // 1024} KiB"
    return f"{size} B"


def _nice_max(v: float) -> float:
    """The smallest 1/2/2.5/5 x 10^k at or above v."""
    if v <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if m * exp >= v:
            return m * exp
    return 10 * exp


def _si(v: float) -> str:
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            s = f"{v / div:.1f}".rstrip("0").rstrip(".")
            return s + suffix
    return f"{v:g}"


def _marker(shape: str, x: float, y: float, color: str) -> str:
    r = 4
    if shape == "square":
        return f'<rect x="{x - r:.1f}" y="{y - r:.1f}" width="{2 * r}" height="{2 * r}" fill="{color}"/>'
    if shape == "diamond":
        return (f'<polygon points="{x:.1f},{y - r - 1:.1f} {x + r + 1:.1f},{y:.1f} '
                f'{x:.1f},{y + r + 1:.1f} {x - r - 1:.1f},{y:.1f}" fill="{color}"/>')
    if shape == "triangle":
        return (f'<polygon points="{x:.1f},{y - r - 1:.1f} {x + r + 1:.1f},{y + r:.1f} '
                f'{x - r - 1:.1f},{y + r:.1f}" fill="{color}"/>')
    if shape == "cross":
        return (f'<path d="M{x - r:.1f},{y - r:.1f}L{x + r:.1f},{y + r:.1f}M{x - r:.1f},{y + r:.1f}'
                f'L{x + r:.1f},{y - r:.1f}" stroke="{color}" stroke-width="2.5"/>')
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{color}"/>'


def _panel(ox: float, oy: float, title: str, ylabel: str, conns: list, series: dict) -> list:
    """One panel at (ox, oy): series is backend -> [value or None per conns]."""
    left, top = ox + MARGIN["left"], oy + MARGIN["top"]
    w = PANEL_W - MARGIN["left"] - MARGIN["right"]
    h = PANEL_H - MARGIN["top"] - MARGIN["bottom"]
    values = [v for vs in series.values() for v in vs if v is not None]
    ymax = _nice_max(max(values) * 1.05 if values else 1.0)
    lo, hi = math.log10(min(conns)), math.log10(max(conns))
    # Keep the end points (and their tick labels) off the frame.
    pad = (hi - lo) * 0.06
    lo, hi = lo - pad, hi + pad
    span = (hi - lo) or 1.0

    def px(c: float) -> float:
        return left + (math.log10(c) - lo) / span * w if hi > lo else left + w / 2

    def py(v: float) -> float:
        return top + h - v / ymax * h

    out = [f'<text x="{left + w / 2:.1f}" y="{oy + 20}" text-anchor="middle" '
           f'font-weight="bold">{escape(title)}</text>']
    for i in range(6):  # y grid
        v = ymax * i / 5
        y = py(v)
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + w}" y2="{y:.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_si(v)}</text>')
    for c in conns:  # x ticks at the measured connection counts
        x = px(c)
        out.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{top + h}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{top + h + 16}" text-anchor="middle">{c:,}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#888"/>')
    if not values:
        out.append(f'<text x="{left + w / 2:.1f}" y="{top + h / 2:.1f}" text-anchor="middle" '
                   f'fill="#888">no successful runs</text>')
    out.append(f'<text x="{left + w / 2:.1f}" y="{top + h + 36}" text-anchor="middle">'
               f'connections (log scale)</text>')
    out.append(f'<text transform="translate({ox + 14},{top + h / 2:.1f}) rotate(-90)" '
               f'text-anchor="middle">{escape(ylabel)}</text>')
    for backend, vals in series.items():
        color, shape = STYLE.get(backend, FALLBACK)
        pts = [(px(c), py(v)) for c, v in zip(conns, vals) if v is not None]
        # A skipped cell breaks the line rather than bridging it.
        runs, cur = [], []
        for c, v in zip(conns, vals):
            if v is None:
                if cur:
                    runs.append(cur)
                cur = []
            else:
                cur.append((px(c), py(v)))
        if cur:
            runs.append(cur)
        for seg in runs:
            if len(seg) > 1:
                d = " ".join(f"{x:.1f},{y:.1f}" for x, y in seg)
                out.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="2"/>')
        out += [_marker(shape, x, y, color) for x, y in pts]
    return out


def render(summaries: list, phase: str, size: int, pipeline: int, backends: list,
           conns: list, caption: str) -> str:
    """The SVG for one (size, mode): throughput and server CPU per message."""
    def series(metric: str) -> dict:
        out = {}
        for b in backends:
            vals = []
            for c in conns:
                s = find(summaries, phase, Cell(c, size, pipeline), b)
                vals.append(s.median(metric) if s else None)
            if any(v is not None for v in vals):
                out[b] = vals
        return out

    thr, cpu = series("msgs_per_s"), series("server_cpu_ns_per_msg")
    width = 2 * PANEL_W
    height = TITLE_H + PANEL_H + LEGEND_H + 18
    mode = "closed loop" if pipeline == 1 else f"pipelined ({pipeline} in flight)"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="19" text-anchor="middle" font-size="15" font-weight="bold">'
           f'uring-echo: {size_label(size)} messages, {mode} (medians)</text>']
    if conns:
        out += _panel(0, TITLE_H, "Throughput (higher is better)", "messages / s", conns, thr)
        out += _panel(PANEL_W, TITLE_H, "Server CPU per message (lower is better)",
                      "ns of server CPU / message", conns, cpu)
    ly = TITLE_H + PANEL_H + 14
    shown = [b for b in backends if b in thr or b in cpu]
    step = width / (len(shown) + 1) if shown else width
    for i, b in enumerate(shown):
        color, shape = STYLE.get(b, FALLBACK)
        x = step * (i + 0.6)
        out.append(f'<line x1="{x - 14:.1f}" y1="{ly}" x2="{x + 14:.1f}" y2="{ly}" '
                   f'stroke="{color}" stroke-width="2"/>')
        out.append(_marker(shape, x, ly, color))
        out.append(f'<text x="{x + 20:.1f}" y="{ly + 4}">{escape(b)}</text>')
    out.append(f'<text x="{width / 2}" y="{height - 6}" text-anchor="middle" fill="#555" '
               f'font-size="10">{escape(caption)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
