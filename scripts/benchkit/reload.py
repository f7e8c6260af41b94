"""Reads a results.json back into the objects bench.py measured, so that its
tables and charts can be written again without measuring again
(`bench.py --from-results DIR`): after installing matplotlib, with another
--p99-bound-us for the knees, or to put a run into docs/benchmarks.md.
Parsing only."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .model import BACKENDS, Cell, Run, add_variant
from .targets import Target

# Options that describe what was measured: taken from the file, not the
# command line.
MEASURED = ("backends", "conns", "sizes", "modes", "churn", "churn_cells", "reps", "duration", "warmup", "workers",
            "server_cpus", "client_cpus", "loadgen_threads", "quick", "targets",
            "targets_scale", "sweep", "sweep_steps", "large", "nofile")


def load(path: Path) -> dict:
    try:
        res = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"bench: --from-results: cannot read {path}: {e}")
    if res.get("schema") != 1 or "runs" not in res:
        raise SystemExit(f"bench: --from-results: {path} is not a bench.py results.json (schema 1)")
    return res


def run_from_json(d: dict) -> Run:
    c = d["cell"]
    fields = {k: d[k] for k in ("status", "reason", "commands", "metrics", "net", "flags",
                                "suspect", "wall_s", "client") if k in d}
    return Run(d["phase"], Cell(c["conns"], c["size"], c["pipeline"], c.get("rate"),
                                c.get("per_conn")),
               d["backend"], d["rep"], d["workers"], **fields)


def target_from_json(d: dict) -> Target:
    return Target(**d)


def options(args: argparse.Namespace, res: dict) -> argparse.Namespace:
    """The command line's options with what was measured taken from `res`."""
    o = res["options"]
    for spec in o.get("variants") or []:
        if spec.partition("=")[0] not in BACKENDS:
            add_variant(spec)
    ns = argparse.Namespace(**vars(args))
    for k in MEASURED:
        if k in o:
            setattr(ns, k, o[k])
    ns.only_sweep = bool(not o["matrix"] and o.get("sweep"))
    ns.only_targets = bool(not o["matrix"] and o.get("targets") and not o.get("sweep"))
    if ns.p99_bound_us is None:
        ns.p99_bound_us = o.get("p99_bound_us") or 1000.0
    return ns


def sweeps(res: dict) -> list:
    """The sweeps as run_sweep records them (grid, maxima, backends per cell)."""
    return [{k: sw[k] for k in ("conns", "size", "maxima", "grid", "backends")}
            for sw in res.get("sweeps", [])]
