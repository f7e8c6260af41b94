"""The matrix as runs, in the order they will run (interleaved, rotated,
skips named), and how long a selection will take. Pure logic, no I/O."""

from __future__ import annotations

import argparse
from typing import Optional

from . import env, targets
from .model import BACKENDS, CHURN, MODES, Cell, Run, rotated, server_workers, skip_reason

# Seconds a run takes beyond ramp, warm-up and measured time (server start and
# stop, loadgen start, drain), measured on the 2-core development VM.
RUN_OVERHEAD_S = 0.4



def matrix_cells(args: argparse.Namespace) -> list:
    """The grid's cells (--sizes x modes x --conns), then the churn cells
    (--churn-cells x --churn: closed loop, one message in flight)."""
    cells = [Cell(c, s, MODES[m]) for s in args.sizes for m in args.modes if m != CHURN
             for c in args.conns]
    if CHURN in args.modes:
        cells += [Cell(c, s, 1, per_conn=n) for c, s in args.churn_cells for n in args.churn]
    return cells


def plan_matrix(args: argparse.Namespace, nofile: int, tcp_mem: Optional[int]) -> list:
    """Every run of the matrix, in the order it will run (skips included once)."""
    plan = []
    for rep in range(args.reps):
        for i, cell in enumerate(matrix_cells(args)):
            for name in rotated(args.backends, rep + i):
                backend = BACKENDS[name]
                run = Run("matrix", cell, name, rep,
                          server_workers(backend, cell.conns, args.workers, nofile))
                why = skip_reason(backend, cell, nofile, tcp_mem)
                if why:
                    if rep > 0:
                        continue
                    run.status, run.reason = "skipped", why
                plan.append(run)
    return plan


def run_seconds(cell: Cell, duration: float, warmup: float) -> float:
    return RUN_OVERHEAD_S + cell.conns / env.LOADGEN_CONNECT_RATE + warmup + duration


def estimate_s(args: argparse.Namespace, plan: list) -> float:
    total = sum(run_seconds(r.cell, args.duration, args.warmup) for r in plan if r.status != "skipped")
    if args.targets:
        per_rep = sum(len(b) * run_seconds(c, args.duration, args.warmup)
                      for _, c, b in targets.CLOSED_PHASES)
        per_rep += 6 * run_seconds(targets.T1, args.duration, args.warmup)  # T6, T7, S3
        conns = round(targets.S1_CONNS * args.targets_scale)
        s1 = (run_seconds(Cell(conns, 64, 1), max(args.duration, targets.S1_MIN_DURATION_S),
                          args.warmup) + targets.S1_WARM_S + args.warmup + 3)
        total += args.reps * per_rep + s1
    if args.sweep:
        for c, _size in args.sweep_cells:
            per_run = run_seconds(Cell(c, 64, 1), args.duration, args.warmup)
            runs = len(args.backends) * (args.reps * args.sweep_steps + (1 if args.only_sweep else 0))
            # The top rates saturate some backends: loadgen then waits out its drain.
            saturated = len(args.backends) * args.reps * 3 * env.LOADGEN_DRAIN_S
            total += runs * per_run + saturated
    return total
