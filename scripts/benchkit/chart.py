"""The charts, drawn with matplotlib (scripts/requirements.txt): the matrix
(throughput and server CPU per message against connections, one chart per
message size and mode), churn (connections per second, server CPU per
connection and transaction p99 against messages per connection, one chart
per churn cell) and the sweep (latency percentiles against achieved rate,
one chart per cell). Every median carries a min–max whisker over its
repetitions; every chart has a legend and a caption naming the topology, the
machine, the commit and the CPUs.

matplotlib is optional: `unavailable()` says why charts cannot be drawn, and
bench.py then writes its tables alone and says how to get the charts. This
module does no measuring and writes nothing but the image files."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

from .model import Cell, find
from .sweep import PERCENTILES

INSTALL_HINT = "pip install -r scripts/requirements.txt"
# Colour-blind-safe palette (Okabe-Ito), one colour and marker per backend.
STYLE = {
    "uring": ("#0072B2", "o"),
    "epoll": ("#D55E00", "s"),
    "tokio-uring": ("#009E73", "D"),
    "tokio": ("#CC79A7", "^"),
    "monoio": ("#E69F00", "v"),
}
FALLBACK = ("#555555", "o")
# Sweep: one line style per percentile.
PERCENTILE_STYLE = {"p50_us": ":", "p99_us": "-", "p999_us": "--"}


def size_label(size: int) -> str:
    """64 -> '64 B', 16384 -> '16 KiB'."""
    if size >= 1024 and size % 1024 == 0:
        return f"{size // 1024} KiB"
    return f"{size} B"


def unavailable() -> Optional[str]:
    """Why charts cannot be drawn here, or None."""
    if importlib.util.find_spec("matplotlib") is None:
        return (f"no charts: matplotlib is not installed ({INSTALL_HINT}; then "
                "scripts/bench.py --from-results DIR draws them from DIR/results.json)")
    return None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _whiskers(stats: list) -> tuple:
    """medians, and the [below, above] distances to min and max."""
    med = [s["median"] for s in stats]
    lo = [s["median"] - s["min"] for s in stats]
    hi = [s["max"] - s["median"] for s in stats]
    return med, [lo, hi]


def _si_label(v: float) -> str:
    """312400 -> '312k', 1500000 -> '1.5M'."""
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:g}"


def _si_formatter():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda v, _pos: _si_label(v))


def _duration_formatter():
    """Microseconds as people read them: 50 µs, 2 ms, 1.5 s."""
    from matplotlib.ticker import FuncFormatter

    def label(us, _pos):
        if us >= 1e6:
            return f"{us / 1e6:g} s"
        if us >= 1e3:
            return f"{us / 1e3:g} ms"
        return f"{us:g} µs"
    return FuncFormatter(label)


def _caption(fig, caption: str) -> None:
    fig.text(0.5, 0.01, caption, ha="center", va="bottom", fontsize=7.5, color="#444",
             wrap=True)


def _save(plt, fig, path: Path, caption: str) -> None:
    """Captions `fig`, writes it to `path` and frees it."""
    _caption(fig, caption)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def matrix(path: Path, summaries: list, size: int, pipeline: int, backends: list,
           conns: list, caption: str) -> bool:
    """Throughput and server CPU per message against connections for one
    (size, mode); False when no backend had a result to draw."""
    plt = _pyplot()
    fig, (thr, cpu) = plt.subplots(1, 2, figsize=(11, 4.8))
    drawn = False
    for b in backends:
        color, marker = STYLE.get(b, FALLBACK)
        for ax, metric in ((thr, "msgs_per_s"), (cpu, "server_total_ns_per_msg")):
            xs, stats = [], []
            for c in conns:
                s = find(summaries, "matrix", Cell(c, size, pipeline), b)
                st = s.stats.get(metric) if s else None
                if metric == "server_total_ns_per_msg" and s and not st:
                    st = s.stats.get("server_cpu_ns_per_msg")
                if st:
                    xs.append(c)
                    stats.append(st)
            if xs:
                med, err = _whiskers(stats)
                ax.errorbar(xs, med, yerr=err, color=color, marker=marker, capsize=4,
                            label=b, linewidth=1.6, markersize=6)
                drawn = True
    if not drawn:
        plt.close(fig)
        return False
    mode = "closed loop" if pipeline == 1 else f"pipelined ({pipeline} in flight)"
    for ax, title, ylabel in (
            (thr, "Throughput (higher is better)", "messages / s"),
            (cpu, "Server CPU per message (lower is better)",
             "ns / message (busy time of its CPUs)")):
        ax.set_xscale("log")
        ax.set_xticks(conns, [f"{c:,}" for c in conns])
        ax.minorticks_off()
        ax.set_xlabel("connections (log scale)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=11)
        ax.set_ylim(bottom=0)
        ax.yaxis.set_major_formatter(_si_formatter())
        ax.grid(True, alpha=0.3)
    thr.legend(title="backend (median, whiskers min–max)", fontsize=8, title_fontsize=8)
    fig.suptitle(f"uring-echo: {size_label(size)} messages, {mode}", fontsize=13)
    _save(plt, fig, path, caption)
    return True


def sweep(path: Path, points: list, knees: dict, conns: int, size: int, bound_us: float,
          caption: str) -> bool:
    """p50, p99 and p99.9 against achieved rate for one cell, log y (and log
    x: the grid is log-spaced); the p99 bound as a line, each knee marked."""
    if not points:
        return False
    plt = _pyplot()
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(12, 5.6))
    backends = list(dict.fromkeys(p.backend for p in points))
    for b in backends:
        color, marker = STYLE.get(b, FALLBACK)
        pts = sorted((p for p in points if p.backend == b and not p.saturated),
                     key=lambda p: p.asked)
        for key, _ in PERCENTILES:
            have = [p for p in pts if key in p.latency]
            if not have:
                continue
            x, xerr = _whiskers([p.achieved for p in have])
            y, yerr = _whiskers([p.latency[key] for p in have])
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, color=color, marker=marker,
                        linestyle=PERCENTILE_STYLE[key], capsize=3, markersize=4.5,
                        linewidth=1.4, alpha=0.95 if key == "p99_us" else 0.7)
        k = knees.get(b)
        if k and k.rate:
            ax.plot([k.rate], [k.p99_at_knee_us], marker="*", markersize=16, color=color,
                    markeredgecolor="black", linestyle="none", zorder=5)
    ax.axhline(bound_us, color="#888", linestyle="-.", linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("achieved rate, messages / s (log scale)")
    ax.set_ylabel("latency (log scale)")
    ax.grid(True, which="both", alpha=0.25)
    handles = [Line2D([], [], color=STYLE.get(b, FALLBACK)[0], marker=STYLE.get(b, FALLBACK)[1],
                      label=b) for b in backends]
    handles += [Line2D([], [], color="black", linestyle=PERCENTILE_STYLE[k], label=label)
                for k, label in PERCENTILES]
    handles += [Line2D([], [], color="#888", linestyle="-.", label=f"p99 bound {bound_us:g} µs"),
                Line2D([], [], color="gray", marker="*", markersize=12, markeredgecolor="black",
                       linestyle="none", label="knee: highest rate, p99 under the bound")]
    ax.legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              title="median, whiskers min–max", title_fontsize=8)
    rates = sorted({p.asked for p in points})
    ax.set_xticks(rates, [_si_label(r) for r in rates], fontsize=8)
    ax.minorticks_off()
    ax.yaxis.set_major_formatter(_duration_formatter())
    ax.set_title(f"uring-echo: latency against load, {conns:,} connections × "
                 f"{size_label(size)}, open loop", fontsize=12)
    _save(plt, fig, path, caption)
    return True


# Churn chart panels: metric, title, y label.
CHURN_PANELS = (
    ("conns_per_s", "Connections per second (higher is better)", "connections / s"),
    ("server_total_ns_per_conn", "Server CPU per connection (lower is better)",
     "ns / connection (busy time of its CPUs)"),
    ("txn_p99_us", "Transaction p99, connect to last echo (lower is better)", "latency"),
)


def churn(path: Path, summaries: list, conns: int, size: int, per_conn: list, backends: list,
          caption: str) -> bool:
    """Grouped bars, one group per messages-per-connection value, one bar per
    backend (median, whiskers min–max), in three panels: connections per
    second, server CPU per connection, transaction p99. False when no
    backend had a result to draw."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(CHURN_PANELS), figsize=(15, 4.8))
    width = 0.8 / max(1, len(backends))
    drawn = False
    for bi, b in enumerate(backends):
        color, _ = STYLE.get(b, FALLBACK)
        for ax, (metric, _title, _ylabel) in zip(axes, CHURN_PANELS):
            xs, stats = [], []
            for i, n in enumerate(per_conn):
                s = find(summaries, "matrix", Cell(conns, size, 1, per_conn=n), b)
                st = s.stats.get(metric) if s else None
                if metric == "server_total_ns_per_conn" and s and not st:
                    st = s.stats.get("server_cpu_ns_per_conn")
                if st:
                    xs.append(i + (bi - (len(backends) - 1) / 2) * width)
                    stats.append(st)
            if xs:
                med, err = _whiskers(stats)
                ax.bar(xs, med, width * 0.95, yerr=err, color=color, capsize=3, label=b,
                       error_kw={"elinewidth": 1})
                drawn = True
    if not drawn:
        plt.close(fig)
        return False
    for ax, (metric, title, ylabel) in zip(axes, CHURN_PANELS):
        ax.set_xticks(range(len(per_conn)), [f"{n:,}" for n in per_conn])
        ax.set_xlabel("messages per connection")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.yaxis.set_major_formatter(_duration_formatter() if metric.endswith("_us")
                                     else _si_formatter())
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend(title="backend (median, whiskers min–max)", fontsize=8, title_fontsize=8)
    fig.suptitle(f"uring-echo: connection churn, {conns:,} connections open at once × "
                 f"{size_label(size)}, closed loop", fontsize=13)
    _save(plt, fig, path, caption)
    return True
