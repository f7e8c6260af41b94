#!/usr/bin/env python3
"""Runs uring-echo's benchmark matrix and target measurements and writes
results a person reads (results.md, chart.svg) and a program parses
(results.json, runs/*.json).

Matrix: backends x connections x message size x mode (closed loop = pipeline 1,
pipelined = pipeline 16), each cell run --reps times, interleaved: for each
repetition, for each cell, every backend once, in an order rotated per cell
and repetition so that no backend always runs first. Every run starts its
server fresh, pinned with taskset to --server-cpus, drives it with loadgen
pinned to --client-cpus, and stops it with SIGTERM.

Per run: loadgen's JSON (msgs/s, latency, errors, mismatches, its own CPU per
message), the server's CPU per message (utime+stime from /proc/PID/stat over
the loadgen run, connection ramp included, divided by loadgen's cpu.msgs), the
server's memory per connection (peak VmRSS sampled every 200 ms minus VmRSS
before loadgen started, divided by connections), and the growth of the
system-wide drop and retransmit counters (a run that saw drops, RTOs or
accept-queue overflows is marked suspect; retransmits alone are recorded).

Outputs in --out DIR: runs/<cell>-<backend>-<rep>.json (and the processes'
logs), results.json, results.md, chart.svg (64 B closed loop) and
chart-<size>-<mode>.svg for the other shapes. See docs/benchmarks.md.

Standard library only. Linux only (taskset, /proc).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from typing import Optional
from pathlib import Path

# benchkit lives beside this script; leave no __pycache__ in the tree.
sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit import chart, host, procs, report, targets  # noqa: E402
from benchkit.model import (  # noqa: E402
    BACKENDS, MODES, Cell, Run, rotated, server_workers, skip_reason, summarise)

REPO = Path(__file__).resolve().parent.parent
DEFAULTS = {
    "backends": list(BACKENDS),
    "conns": [100, 1000, 10_000, 50_000],
    "sizes": [64, 1024, 16_384],
    "modes": ["closed", "pipelined"],
    "reps": 3,
    "duration": 5.0,
    "warmup": 1.0,
}
QUICK = {
    "backends": ["uring", "epoll"],
    "conns": [100, 1000],
    "sizes": [64],
    "modes": ["closed"],
    "reps": 1,
    "duration": 2.0,
    "warmup": 0.5,
}
# Seconds a run takes beyond ramp, warm-up and measured time (server start and
# stop, loadgen start, drain), measured on the 2-core development VM.
RUN_OVERHEAD_S = 0.4


# ---------------------------------------------------------------- arguments

def int_list(s: str) -> list:
    try:
        vals = [int(x.replace("_", "")) for x in s.split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{s}' is not a comma-separated list of integers")
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"'{s}': values must be positive")
    return vals


def choice_list(choices: list):
    def parse(s: str) -> list:
        vals = [x for x in s.split(",") if x]
        bad = [v for v in vals if v not in choices]
        if bad or not vals:
            raise argparse.ArgumentTypeError(
                f"'{','.join(bad) or s}' not among {', '.join(choices)}")
        return vals
    return parse


def cpu_list(s: str) -> str:
    if not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", s):
        raise argparse.ArgumentTypeError(f"'{s}' is not a CPU list for taskset -c (e.g. 0 or 0-7,16)")
    return s


def positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{s}' is not a number")
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{v} must be > 0")
    return v


def parse_args(argv: list) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n\n")[0] + "\n\n" + "\n\n".join(__doc__.split("\n\n")[1:3]),
        epilog="""examples:
  scripts/bench.py --quick                      smoke test, about a minute
  scripts/bench.py                              the full matrix (see docs/benchmarks.md for its length)
  scripts/bench.py --targets --update-doc       matrix + targets, then rewrite docs/benchmarks.md
  scripts/bench.py --only-targets               the target measurements alone
  scripts/bench.py --workers 8 --server-cpus 0-7 --client-cpus 8-15   a bigger host
  scripts/bench.py --dry-run                    print the plan and its length, run nothing

exit status: 0 when every run passed; 1 when a run failed (results are still
written); 2 on bad arguments, a failed build or missing binaries.""")
    a = p.add_argument
    a("--backends", type=choice_list(list(BACKENDS)),
      help="comma-separated servers to compare [default: " + ",".join(DEFAULTS["backends"]) + "]")
    a("--conns", type=int_list,
      help="comma-separated connection counts [default: 100,1000,10000,50000]")
    a("--sizes", type=int_list, help="comma-separated message sizes in bytes [default: 64,1024,16384]")
    a("--modes", type=choice_list(list(MODES)),
      help="closed (pipeline 1) and/or pipelined (pipeline 16) [default: closed,pipelined]")
    a("--reps", type=int, help="repetitions of every cell, interleaved [default: 3]")
    a("--duration", type=positive_float, help="measured seconds per run [default: 5]")
    a("--warmup", type=float, help="loadgen warm-up seconds per run, not measured [default: 1]")
    a("--workers", type=int, default=1,
      help="server worker threads (the io_uring backend gets more when its rings need "
           "them for the connections: ceil(conns / (open-files limit - 64))) [default: 1]")
    a("--server-cpus", type=cpu_list, default="0", help="taskset CPU list for the server [default: 0]")
    a("--client-cpus", type=cpu_list, default="1", help="taskset CPU list for loadgen [default: 1]")
    a("--loadgen-threads", type=int,
      help="loadgen --threads [default: loadgen decides: CPUs it may run on, raised to what "
           "the connections need]")
    a("--quick", action="store_true",
      help="smoke test: uring,epoll x 100,1000 conns x 64 B x closed loop, 1 rep, 2 s "
           "(flags given explicitly still apply)")
    a("--targets", action="store_true", help="after the matrix, measure the targets (docs/benchmarks.md)")
    a("--only-targets", action="store_true", help="measure the targets only, no matrix")
    a("--targets-scale", type=positive_float, default=1.0, help=argparse.SUPPRESS)
    a("--out", type=Path, help="output directory [default: bench-results/<UTC timestamp>]")
    a("--update-doc", action="store_true",
      help="rewrite the results section of docs/benchmarks.md (between <!-- bench:begin --> "
           "and <!-- bench:end -->) and copy chart.svg to docs/benchmarks.svg")
    a("--no-build", action="store_true",
      help="use the release binaries as they are, in cargo's target directory (asked of "
           "cargo metadata: CARGO_TARGET_DIR is honoured) [default: cargo build --release "
           "--bins --examples first, so the binaries match the commit recorded]")
    a("--dry-run", action="store_true", help="print the plan and its estimated length; run nothing")
    args = p.parse_args(argv)

    base = QUICK if args.quick else DEFAULTS
    for key, val in base.items():
        if getattr(args, key) is None:
            setattr(args, key, val)
    for flag, v, lo in (("--reps", args.reps, 1), ("--workers", args.workers, 1),
                        ("--loadgen-threads", args.loadgen_threads or 1, 1)):
        if v < lo:
            p.error(f"{flag} must be >= {lo}, not {v}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, not {args.warmup}")
    if args.only_targets:
        args.targets = True
    if set(cpus(args.server_cpus)) & set(cpus(args.client_cpus)):
        print(f"bench: warning: --server-cpus {args.server_cpus} and --client-cpus "
              f"{args.client_cpus} overlap: server and loadgen will compete for CPU",
              file=sys.stderr)
    return args


def cpus(spec: str) -> list:
    out = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


# ---------------------------------------------------------------- set-up

def target_dir() -> Path:
    """Where cargo puts its builds: `target_directory` from `cargo metadata`,
    which honours CARGO_TARGET_DIR and .cargo/config.toml's build.target-dir."""
    cmd = ["cargo", "metadata", "--format-version", "1", "--no-deps"]
    try:
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
        return Path(json.loads(done.stdout)["target_directory"])
    except (OSError, subprocess.CalledProcessError, ValueError, KeyError) as e:
        print(f"bench: {shlex.join(cmd)} failed ({e}); looking in target/", file=sys.stderr)
        return REPO / "target"


def build(no_build: bool, release: Path) -> None:
    if not no_build:
        cmd = ["cargo", "build", "--release", "--bins", "--examples"]
        print("bench: " + shlex.join(cmd), file=sys.stderr)
        if subprocess.run(cmd, cwd=REPO).returncode != 0:
            print("bench: the build failed", file=sys.stderr)
            sys.exit(2)
    needed = [release / "uring-echo", release / "loadgen", release / "examples" / "pingpong",
              release / "examples" / "tokio_echo", release / "examples" / "monoio_echo"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        print(f"bench: missing {', '.join(missing)}: run cargo build --release --bins --examples",
              file=sys.stderr)
        sys.exit(2)
    if shutil.which("taskset") is None:
        print("bench: taskset not found (util-linux): it pins the server and loadgen", file=sys.stderr)
        sys.exit(2)


def shown(path: Path) -> Path:
    """`path` relative to the repository when inside it, so commands read as typed there."""
    try:
        return path.relative_to(REPO)
    except ValueError:
        return path


def matrix_cells(args: argparse.Namespace) -> list:
    return [Cell(c, s, MODES[m]) for s in args.sizes for m in args.modes for c in args.conns]


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
    return RUN_OVERHEAD_S + cell.conns / procs.LOADGEN_CONNECT_RATE + warmup + duration


def estimate_s(args: argparse.Namespace, plan: list) -> float:
    total = sum(run_seconds(r.cell, args.duration, args.warmup) for r in plan if r.status != "skipped")
    if args.targets:
        t_runs = args.reps * (4 + 2 + 2 + 2)  # targets 1-3, 5, 6
        t1 = run_seconds(targets.T1, args.duration, args.warmup)
        conns = round(targets.T4_CONNS * args.targets_scale)
        t4 = (run_seconds(Cell(conns, 64, 1), max(args.duration, targets.T4_MIN_DURATION_S),
                          args.warmup) + targets.T4_WARM_S + args.warmup + 3)
        total += t_runs * t1 + t4
    return total


# ---------------------------------------------------------------- phases

class Bench:
    """One invocation: its options, environment, and everything it measured."""

    def __init__(self, args: argparse.Namespace, out: Path, release: Path):
        self.args = args
        self.out = out
        self.started = time.monotonic()
        self.nofile = host.open_files_limit()
        self.runs: list = []
        self.summaries: list = []
        self.targets: list = []
        self.interrupted = False
        self._log_file = None
        if not args.dry_run:
            (out / "runs").mkdir(parents=True, exist_ok=True)
            self._log_file = open(out / "bench.log", "a")
        self.env = procs.Env(
            repo=REPO, bin_dir=shown(release), runs_dir=out / "runs",
            server_cpus=args.server_cpus, client_cpus=args.client_cpus,
            loadgen_threads=args.loadgen_threads, duration=args.duration,
            warmup=args.warmup, nofile=self.nofile, log=self.log, dry_run=args.dry_run)
        self.meta = {
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": host.machine(),
            "git": host.git(str(REPO)),
            "command": shlex.join([sys.argv[0], *sys.argv[1:]]),
            "options": {
                "matrix": not args.only_targets,
                "targets": args.targets,
                "quick": args.quick,
                "backends": args.backends, "conns": args.conns, "sizes": args.sizes,
                "modes": args.modes, "reps": args.reps, "duration": args.duration,
                "warmup": args.warmup, "workers": args.workers,
                "server_cpus": args.server_cpus, "client_cpus": args.client_cpus,
                "loadgen_threads": args.loadgen_threads, "targets_scale": args.targets_scale,
                "nofile": self.nofile,
            },
        }

    def log(self, msg: str) -> None:
        line = f"[{time.monotonic() - self.started:7.1f}s] {msg}"
        print(line, file=sys.stderr, flush=True)
        if self._log_file:
            self._log_file.write(line + "\n")
            self._log_file.flush()

    def save_run(self, run: Run) -> None:
        if run.status == "skipped":
            return
        report.write_json(self.out / "runs" / f"{run.file_stem}.json", run.to_json())

    def run_matrix(self, plan: list) -> None:
        todo = [r for r in plan if r.status != "skipped"]
        self.log(f"matrix: {len(todo)} runs, {len(plan) - len(todo)} cells skipped")
        for r in plan:
            if r.status == "skipped":
                self.log(f"  skip {r.cell.name} {r.backend}: {r.reason}")
                self.runs.append(r)
        for i, r in enumerate(todo, 1):
            self.log(f"  [{i}/{len(todo)}] {r.cell.name} {r.backend} rep {r.rep + 1}/{self.args.reps}"
                     f"{f' workers={r.workers}' if r.workers != self.args.workers else ''}")
            procs.execute(self.env, r)
            m = r.metrics
            if r.status == "ok":
                self.log(f"      {m.get('msgs_per_s', 0):,.0f} msgs/s, server "
                         f"{m.get('server_cpu_ns_per_msg', 0):,.0f} ns/msg, p99 "
                         f"{m.get('p99_us', 0):,} us"
                         + (f"  {'SUSPECT' if r.suspect else 'flags'}: {'; '.join(r.flags)}"
                            if r.flags else ""))
            elif r.status == "failed":
                self.log(f"      FAILED: {r.reason}")
            self.runs.append(r)
            self.save_run(r)

    def run_targets(self) -> None:
        reps = self.args.reps
        if reps < 3:
            self.log(f"targets: {reps} rep(s); the targets ask for medians of >= 3")
        runs, _, self.targets = targets.run_targets(
            self.env, reps, self.args.targets_scale, self.save_run, self.log)
        self.runs += runs

    # ------------------------------------------------------------ outputs

    def write_outputs(self) -> None:
        self.summaries = summarise(self.runs)
        self.meta["elapsed_s"] = round(time.monotonic() - self.started, 1)
        self.meta["interrupted"] = self.interrupted
        report.write_json(self.out / "results.json",
                          report.results_json(self.meta, self.runs, self.summaries, self.targets))
        charts = self.write_charts()
        (self.out / "results.md").write_text(
            report.markdown(self.meta, self.runs, self.summaries, self.targets, charts))
        self.log(f"wrote {self.out}/results.json, results.md"
                 + (", " + ", ".join(charts.values()) if charts else ""))
        if self.args.update_doc:
            main = next(iter(charts.items()), None)
            self.update_doc(main)

    def write_charts(self) -> dict:
        """chart.svg for 64 B closed loop (or the first shape measured), then one
        per other (size, mode); returns (size, mode) -> file name, main first."""
        if not self.meta["options"]["matrix"]:
            return {}
        a, m, g = self.args, self.meta["machine"], self.meta["git"]
        caption = (f"{m['cpu_model']}, {m['cores']} cores, Linux {m['kernel']}; commit "
                   f"{g['commit'][:12]}{' (dirty)' if g['dirty'] else ''}; {self.meta['date']}; "
                   f"server CPUs {a.server_cpus}, loadgen CPUs {a.client_cpus}; medians of {a.reps}"
                   + ("; SMOKE RUN" if a.quick else ""))
        shapes = [(s, mode) for s in a.sizes for mode in a.modes]
        first = (64, "closed") if (64, "closed") in shapes else shapes[0]
        names = {}
        for size, mode in [first] + [x for x in shapes if x != first]:
            name = "chart.svg" if (size, mode) == first else f"chart-{size}-{mode}.svg"
            svg = chart.render(self.summaries, "matrix", size, MODES[mode], a.backends,
                               sorted(a.conns), caption)
            (self.out / name).write_text(svg)
            names[(size, mode)] = name
        return names

    def update_doc(self, main_chart) -> None:
        """Rewrites the results section of docs/benchmarks.md; the main chart
        (64 B closed loop) becomes docs/benchmarks.svg, the others stay in --out."""
        doc = REPO / "docs" / "benchmarks.md"
        charts = {}
        if main_chart:
            shape, name = main_chart
            shutil.copyfile(self.out / name, REPO / "docs" / "benchmarks.svg")
            charts[shape] = "benchmarks.svg"
        section = report.markdown(self.meta, self.runs, self.summaries, self.targets, charts,
                                  level=3)
        report.update_doc(doc, section)
        self.log(f"updated {doc.relative_to(REPO)}" + (" and docs/benchmarks.svg" if charts else ""))


def main(argv: list) -> int:
    args = parse_args(argv)
    release = target_dir() / "release"
    if not args.dry_run:
        build(args.no_build, release)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = args.out or REPO / "bench-results" / stamp
    bench = Bench(args, out, release)
    plan = plan_matrix(args, bench.nofile, host.tcp_memory_limit_bytes()) if not args.only_targets else []
    est = estimate_s(args, plan)
    bench.log(f"output: {out}; open-files limit {bench.nofile}; estimated {est / 60:.1f} min "
              f"({len([r for r in plan if r.status != 'skipped'])} matrix runs"
              f"{' + targets' if args.targets else ''})")
    if args.dry_run:
        for r in plan:
            if r.status != "skipped":
                procs.execute(bench.env, r)  # dry: fills in the commands only
            print(f"{r.cell.name:>18} {r.backend:<12} rep {r.rep + 1} workers {r.workers}: "
                  + (r.commands.get("server", "") + "\n" + " " * 22 + "client: "
                     + r.commands.get("client", "") if r.reason == "dry run" else f"SKIP {r.reason}"))
        return 0
    try:
        if not args.only_targets:
            bench.run_matrix(plan)
        if args.targets:
            bench.run_targets()
    except KeyboardInterrupt:
        bench.interrupted = True
        bench.log("interrupted: writing what was measured")
    bench.write_outputs()
    failed = [r for r in bench.runs if r.status == "failed"]
    if failed:
        bench.log(f"{len(failed)} run(s) failed: see results.md")
    return 1 if failed or bench.interrupted else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
