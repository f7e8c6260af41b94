"""Latency against load (`--sweep`): the grid of open-loop rates, the points
(achieved rate and latency percentiles per backend and rate, medians with
their ranges over the repetitions) and each backend's knee. Pure logic, no
I/O: bench.py runs the grid, chart.py draws it, report.py tabulates it.

The grid spans about 10% of the slowest backend's closed-loop maximum to
past the fastest's, log-spaced, so that every backend is seen both well
below its limit (latency flat) and beyond it (latency climbing without
bound, as in any open loop past saturation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from .model import Cell, find

LOW_FRACTION = 0.1  # of the slowest backend's closed-loop maximum
HIGH_FRACTION = 1.2  # of the fastest's
PERCENTILES = (("p50_us", "p50"), ("p99_us", "p99"), ("p999_us", "p99.9"))


def _round3(v: float) -> float:
    """To three significant digits: 12345.6 -> 12300."""
    if v <= 0:
        return v
    digits = 2 - math.floor(math.log10(v))
    return round(v, digits) if digits > 0 else float(round(v, digits))


def rate_grid(maxima: dict, steps: int = 10) -> list:
    """`steps` log-spaced rates (msgs/s) from LOW_FRACTION of the smallest of
    `maxima` (backend -> closed-loop msgs/s) to HIGH_FRACTION of the largest,
    rounded to three significant digits, ascending, without duplicates."""
    vals = [v for v in maxima.values() if v and v > 0]
    if not vals:
        raise ValueError("the sweep needs at least one backend's closed-loop maximum")
    if steps < 2:
        raise ValueError(f"--sweep-steps must be >= 2, not {steps}")
    lo, hi = LOW_FRACTION * min(vals), HIGH_FRACTION * max(vals)
    ratio = (hi / lo) ** (1 / (steps - 1))
    grid = []
    for i in range(steps):
        r = _round3(lo * ratio ** i)
        if not grid or r > grid[-1]:
            grid.append(r)
    return grid


@dataclass(frozen=True)
class Point:
    """One backend at one asked rate: medians and [min, max] over the reps."""

    backend: str
    asked: float
    achieved: Optional[dict]  # {"median", "min", "max"} msgs/s; None when saturated
    latency: dict  # "p50_us" ... -> {"median", "min", "max"}
    runs: int
    # Every run at this rate failed: loadgen ended with messages never
    # echoed (past saturation the queue outgrows the drain). Over any bound.
    saturated: bool = False

    def to_json(self) -> dict:
        return {"backend": self.backend, "asked": self.asked, "achieved": self.achieved,
                "latency_us": self.latency, "runs": self.runs, "saturated": self.saturated}


def points(summaries: list, phase: str, conns: int, size: int, backends: list,
           grid: list) -> list:
    """The sweep's points for one cell, from the run summaries (achieved
    rate is loadgen's rate.achieved, falling back to msgs/s)."""
    out = []
    for b in backends:
        for rate in grid:
            s = find(summaries, phase, Cell(conns, size, 1, rate=rate), b)
            if s is None:
                continue
            if not s.runs:
                if s.saturated:
                    out.append(Point(b, rate, None, {}, 0, saturated=True))
                continue
            ach = s.stats.get("rate_achieved") or s.stats.get("msgs_per_s")
            lat = {k: s.stats[k] for k, _ in PERCENTILES if k in s.stats}
            if ach and "p99_us" in lat:
                out.append(Point(b, rate, ach, lat, s.runs))
    return out


@dataclass(frozen=True)
class Knee:
    """The highest achieved rate at which a backend's p99 stayed under the
    bound, with every lower rate of the grid under it too."""

    backend: str
    rate: Optional[float]  # None: p99 over the bound already at the lowest rate
    beyond_grid: bool  # p99 stayed under the bound at every rate: the knee lies higher
    bound_us: float
    p99_at_knee_us: Optional[float]
    next_rate: Optional[float]  # the first achieved (or, saturated, asked) rate over the bound
    next_p99_us: Optional[float]  # None: saturated there

    def _next(self) -> str:
        if self.next_p99_us is None:
            return f"saturated at {self.next_rate:,.0f} asked"
        return f"{self.next_p99_us:,.0f} µs at {self.next_rate:,.0f}"

    def describe(self) -> str:
        if self.rate is None:
            return f"none: p99 over {self.bound_us:g} µs already at the lowest rate ({self._next()})"
        if self.beyond_grid:
            return f"≥ {self.rate:,.0f} msgs/s (p99 {self.p99_at_knee_us:,.0f} µs at the highest rate)"
        return f"{self.rate:,.0f} msgs/s (p99 {self.p99_at_knee_us:,.0f} µs; then {self._next()})"

    def to_json(self) -> dict:
        return {"backend": self.backend, "rate": self.rate, "beyond_grid": self.beyond_grid,
                "bound_us": self.bound_us, "p99_at_knee_us": self.p99_at_knee_us,
                "next_rate": self.next_rate, "next_p99_us": self.next_p99_us}


def knee(pts: list, bound_us: float) -> Optional[Knee]:
    """The knee of one backend's points (asked-rate order decides which come
    first; the figure is the achieved rate). A p99 at or over the bound ends
    the search: a lucky point past a bad one is not a knee."""
    pts = sorted(pts, key=lambda p: p.asked)
    if not pts:
        return None
    best = None
    for p in pts:
        p99 = None if p.saturated else p.latency["p99_us"]["median"]
        if p99 is None or p99 >= bound_us:
            return Knee(p.backend, best.achieved["median"] if best else None, False, bound_us,
                        best.latency["p99_us"]["median"] if best else None,
                        p.asked if p.saturated else p.achieved["median"], p99)
        best = p
    return Knee(best.backend, best.achieved["median"], True, bound_us,
                best.latency["p99_us"]["median"], None, None)


def maxima_from(summaries: list, phase: str, conns: int, size: int, backends: list) -> dict:
    """backend -> median closed-loop msgs/s of Cell(conns, size, 1) in `phase`."""
    out = {}
    for b in backends:
        s = find(summaries, phase, Cell(conns, size, 1), b)
        if s is not None and s.median("msgs_per_s"):
            out[b] = s.median("msgs_per_s")
    return out

