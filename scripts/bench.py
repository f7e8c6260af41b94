#!/usr/bin/env python3
"""Runs uring-echo's benchmark matrix, latency against load and the target
measurements, and writes results a person reads (results.md, charts) and a
program parses (results.json, runs/*.json).

Topology: netns by default where it can be made (root, iproute2): the server
in one network namespace and each load host (--load-hosts) in its own, joined
by veth pairs on 198.18.0.0/15, RPS steering each side's receive processing
to its own CPUs; loopback otherwise (saying why) or with --topology loopback.
On loopback each side runs the other's receive path, and every server looks
alike; see docs/benchmarks.md.

Matrix: backends x connections x message size x mode (closed loop = pipeline
1, pipelined = pipeline 16), each cell run --reps times, interleaved: for each
repetition, for each cell, every backend once, in an order rotated per cell
and repetition so that no backend always runs first. Every run starts its
server fresh, pinned with taskset to --server-cpus, drives it with loadgen
pinned to --client-cpus (several load hosts start together with --start-at
and are merged with loadgen merge), and stops it with SIGTERM. --sweep adds
open-loop runs at log-spaced rates per cell and each backend's knee.

Per run: loadgen's JSON (msgs/s, latency, errors, mismatches, its own CPU per
message), the server's CPU per message (the busy time of its CPUs from
/proc/stat, its receive processing included, and its process's share,
utime+stime from /proc/PID/stat, over the loadgen run, divided by loadgen's
cpu.msgs), how busy the server's and loadgen's CPUs were, the server's memory per connection, and
the growth of the drop and retransmit counters (read inside the namespaces;
a run that saw drops, RTOs or accept-queue overflows is marked suspect).

Outputs in --out DIR: runs/<cell>-<backend>-<rep>.json (and the processes'
logs), results.json, results.md, chart.png (64 B closed loop),
chart-<size>-<mode>.png for the other shapes and sweep-<conns>-<size>.png
(charts need matplotlib: pip install -r scripts/requirements.txt).

Linux only (taskset, /proc, ip netns).
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import os
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path

# benchkit lives beside this script; leave no __pycache__ in the tree.
sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit import (  # noqa: E402
    chart, env, host, options, procs, reload, report, sweep, targets, topology)
from benchkit.plan import estimate_s, plan_matrix  # noqa: E402
from benchkit.setup import (  # noqa: E402
    REPO, build, check_start_at, choose_topology, interrupt_on, shown, target_dir)
from benchkit.model import (  # noqa: E402
    BACKENDS, CHURN, MODES, Cell, Run, rotated, saturated, server_workers, skip_reason, summarise)

# ---------------------------------------------------------------- phases

def _busy(m: dict) -> str:
    """How busy the server's and the client's CPUs were over one run."""
    parts = [f"{m[k] * 100:.0f} %" if m.get(k) is not None else "-"
             for k in ("server_busy_frac", "client_busy_frac")]
    return f"CPUs busy {parts[0]} server, {parts[1]} client"


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
        self.sweeps: list = []  # per (conns, size): maxima, grid, backends
        self.interrupted = False
        self._log_file = None
        if not args.dry_run:
            (out / "runs").mkdir(parents=True, exist_ok=True)
            self._log_file = open(out / "bench.log", "a")
        self.env = env.Env(
            repo=REPO, bin_dir=shown(release), runs_dir=out / "runs",
            server_cpus=args.server_cpus, client_cpus=args.client_cpus,
            loadgen_threads=args.loadgen_threads, duration=args.duration,
            warmup=args.warmup, nofile=self.nofile, log=self.log, dry_run=args.dry_run)
        self.meta = {
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": host.machine(),
            # The 1, 5 and 15-minute load averages: on a shared machine, how busy
            # the neighbours were (2 cores: above 2, they took CPU from the run).
            "load_average": {"start": [round(v, 2) for v in os.getloadavg()]},
            "git": host.git(str(REPO)),
            "command": shlex.join([sys.argv[0], *sys.argv[1:]]),
            "options": {
                "matrix": not (args.only_targets or args.only_sweep),
                "sweep": args.sweep, "sweep_steps": args.sweep_steps,
                "p99_bound_us": args.p99_bound_us, "large": args.large,
                "targets": args.targets,
                "quick": args.quick,
                "backends": args.backends, "variants": args.variant,
                "conns": args.conns, "sizes": args.sizes,
                "modes": args.modes, "churn": args.churn, "churn_cells": args.churn_cells,
                "reps": args.reps, "duration": args.duration,
                "warmup": args.warmup, "workers": args.workers,
                "server_cpus": args.server_cpus, "client_cpus": args.client_cpus,
                "loadgen_threads": args.loadgen_threads, "targets_scale": args.targets_scale,
                "nofile": self.nofile,
            },
        }

    @classmethod
    def reloaded(cls, args: argparse.Namespace, out: Path, res: dict) -> "Bench":
        """A Bench holding what a results.json recorded, ready to write it again."""
        b = cls.__new__(cls)
        b.args, b.out, b.started, b.nofile = args, out, time.monotonic(), args.nofile
        b.runs = [reload.run_from_json(r) for r in res["runs"]]
        b.targets = [reload.target_from_json(t) for t in res.get("targets", [])]
        b.sweeps, b.summaries = reload.sweeps(res), []
        b.interrupted, b._log_file, b.is_reloaded = res.get("interrupted", False), None, True
        b.meta = {k: v for k, v in res.items() if k not in ("schema", "runs", "medians", "targets",
                                                            "sweeps")}
        b.meta["options"]["p99_bound_us"] = args.p99_bound_us
        hosts = b.meta.get("topology", {}).get("load_hosts")
        plan = None
        if hosts:
            plan = topology.plan(0, len(hosts), options.cpus(args.server_cpus),
                                 options.cpus(args.client_cpus))
        b.env = env.Env(repo=REPO, bin_dir=Path("."), runs_dir=out / "runs",
                        server_cpus=args.server_cpus, client_cpus=args.client_cpus,
                        loadgen_threads=args.loadgen_threads, duration=args.duration,
                        warmup=args.warmup, nofile=args.nofile, log=b.log, net=plan)
        b.log(f"from {out / 'results.json'}: {len(b.runs)} runs, measured {b.meta.get('date')}")
        return b

    def set_topology(self, net_plan, why_loopback) -> None:
        self.env.net = net_plan
        self.meta["options"]["topology"] = self.env.topology
        self.meta["options"]["load_hosts"] = len(self.env.load_hosts)
        self.meta["topology"] = (net_plan.to_json() if net_plan else
                                 {"kind": "loopback", "why": why_loopback})

    def close(self) -> None:
        if self._log_file:
            self._log_file.close()
            self._log_file = None

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
            self.execute(r, f"[{i}/{len(todo)}]")

    def execute(self, r: Run, counter: str) -> None:
        """Runs `r`, logs what it measured, keeps it."""
        self.log(f"  {counter} {r.phase} {r.cell.name} {r.backend} rep {r.rep + 1}/{self.args.reps}"
                 f"{f' workers={r.workers}' if r.workers != self.args.workers else ''}")
        procs.execute(self.env, r)
        m = r.metrics
        if saturated(r):
            r.status = "saturated"
            self.log(f"      saturated: {m.get('unfinished'):,} messages still queued at the end "
                     f"(asked {r.cell.rate:,.0f} msgs/s)")
        elif r.status == "ok" and r.cell.per_conn is not None:
            self.log(f"      {m.get('conns_per_s', 0):,.0f} conns/s, server "
                     f"{m.get('server_total_ns_per_conn', 0):,.0f} ns/conn, {_busy(m)}, transaction p99 "
                     f"{m.get('txn_p99_us', 0):,} us"
                     + (f"  {'SUSPECT' if r.suspect else 'flags'}: {'; '.join(r.flags)}"
                        if r.flags else ""))
        elif r.status == "ok":
            self.log(f"      {m.get('msgs_per_s', 0):,.0f} msgs/s, server "
                     f"{m.get('server_total_ns_per_msg', 0):,.0f} ns/msg, {_busy(m)}, p99 "
                     f"{m.get('p99_us', 0):,} us"
                     + (f"  {'SUSPECT' if r.suspect else 'flags'}: {'; '.join(r.flags)}"
                        if r.flags else ""))
        elif r.status == "failed":
            self.log(f"      FAILED: {r.reason}")
        self.runs.append(r)
        self.save_run(r)

    def run_sweep(self) -> None:
        """Latency against load per (conns, size): each backend's closed-loop
        maximum (from the matrix when it ran that cell, else measured now),
        then every backend open loop at each rate of the grid, interleaved
        and rotated like the matrix."""
        a = self.args
        for conns, size in a.sweep_cells:
            closed = Cell(conns, size, 1)
            backends = [b for b in a.backends
                        if not skip_reason(BACKENDS[b], closed, self.nofile)]
            maxima = sweep.maxima_from(summarise(self.runs), "matrix", conns, size, backends)
            missing = [b for b in backends if b not in maxima]
            if missing:
                self.log(f"sweep {closed.name}: closed-loop maxima of {', '.join(missing)}")
                for b in missing:
                    self.execute(Run("sweep-max", closed, b, 0, self.workers(b, conns)),
                                 "[max]")
                maxima.update(sweep.maxima_from(summarise(self.runs), "sweep-max", conns,
                                                size, missing))
            if not maxima:
                self.log(f"sweep {closed.name}: no closed-loop maximum measured; skipped")
                continue
            grid = sweep.rate_grid(maxima, a.sweep_steps)
            self.sweeps.append({"conns": conns, "size": size, "maxima": maxima,
                                "grid": grid, "backends": backends})
            self.log(f"sweep {closed.name}: rates {', '.join(f'{r:,.0f}' for r in grid)} "
                     f"msgs/s (maxima: {', '.join(f'{b} {v:,.0f}' for b, v in maxima.items())})")
            total = a.reps * len(grid) * len(backends)
            done = 0
            for rep in range(a.reps):
                for i, rate in enumerate(grid):
                    for b in rotated(backends, rep + i):
                        done += 1
                        self.execute(Run("sweep", Cell(conns, size, 1, rate=rate), b, rep,
                                         self.workers(b, conns)), f"[{done}/{total}]")

    def workers(self, backend: str, conns: int) -> int:
        return server_workers(BACKENDS[backend], conns, self.args.workers, self.nofile)

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
        if not getattr(self, "is_reloaded", False):
            self.meta["elapsed_s"] = round(time.monotonic() - self.started, 1)
            self.meta["load_average"] = {"start": self.meta["load_average"]["start"],
                                         "end": [round(v, 2) for v in os.getloadavg()]}
            self.meta["interrupted"] = self.interrupted
        sweeps = self.sweep_results()
        missing = chart.unavailable()
        charts = {} if missing else self.write_charts(sweeps)
        report.write_json(self.out / "results.json",
                          report.results_json(self.meta, self.runs, self.summaries, self.targets,
                                              sweeps))
        (self.out / "results.md").write_text(
            report.markdown(self.meta, self.runs, self.summaries, self.targets, charts, sweeps))
        self.log(f"wrote {self.out}/results.json, results.md"
                 + (", " + ", ".join(charts.values()) if charts else ""))
        if missing:
            self.log(missing.replace(" DIR ", f" {self.out} ").replace("DIR/", f"{self.out}/"))
        if self.args.update_doc:
            self.update_doc(charts, sweeps)

    def sweep_results(self) -> list:
        """Per swept cell: its grid, points and each backend's knee."""
        out = []
        for sw in self.sweeps:
            pts = sweep.points(self.summaries, "sweep", sw["conns"], sw["size"], sw["backends"],
                               sw["grid"])
            knees = {b: sweep.knee([p for p in pts if p.backend == b], self.args.p99_bound_us)
                     for b in sw["backends"]}
            out.append({**sw, "bound_us": self.args.p99_bound_us, "points": pts,
                        "knees": {b: k for b, k in knees.items() if k}})
        return out

    def caption(self) -> str:
        a, m, g = self.args, self.meta["machine"], self.meta["git"]
        return (f"topology {self.env.topology}"
                f"{f' ({len(self.env.load_hosts)} load hosts)' if len(self.env.load_hosts) > 1 else ''}; "
                f"{m['cpu_model']}, {m['cores']} cores, Linux {m['kernel']}; commit "
                f"{g['commit'][:12]}{' (dirty)' if g['dirty'] else ''}; {self.meta['date']}; "
                f"server CPUs {a.server_cpus}, loadgen CPUs {a.client_cpus}, {a.workers} worker(s); "
                f"medians of {a.reps}" + ("; SMOKE RUN" if a.quick else ""))

    def write_charts(self, sweeps: list) -> dict:
        """chart.png for 64 B closed loop (or the first shape measured), one
        per other (size, mode), churn-<conns>-<size>.png per churn cell,
        sweep-<conns>-<size>.png per swept cell; returns shape, ("churn",
        conns, size) or ("sweep", conns, size) -> file name, main first."""
        a, names = self.args, {}
        if self.meta["options"]["matrix"] and any(r.phase == "matrix" for r in self.runs):
            shapes = [(s, mode) for s in a.sizes for mode in a.modes if mode != CHURN]
            first = (64, "closed") if (64, "closed") in shapes else next(iter(shapes), None)
            ordered = [first] + [x for x in shapes if x != first] if shapes else []
            for size, mode in ordered:
                name = "chart.png" if (size, mode) == first else f"chart-{size}-{mode}.png"
                if chart.matrix(self.out / name, self.summaries, size, MODES[mode], a.backends,
                                sorted(a.conns), self.caption()):
                    names[(size, mode)] = name
            if CHURN in a.modes:
                for conns, size in a.churn_cells:
                    name = f"churn-{conns}-{size}.png"
                    if chart.churn(self.out / name, self.summaries, conns, size, a.churn,
                                   a.backends, self.caption()):
                        names[("churn", conns, size)] = name
        for sw in sweeps:
            name = f"sweep-{sw['conns']}-{sw['size']}.png"
            if chart.sweep(self.out / name, sw["points"], sw["knees"], sw["conns"], sw["size"],
                           sw["bound_us"], self.caption()):
                names[("sweep", sw["conns"], sw["size"])] = name
        return names

    def update_doc(self, charts: dict, sweeps: list) -> None:
        """Rewrites this run's results section of docs/benchmarks.md
        (<!-- bench:begin KEY --> ... <!-- bench:end KEY -->, KEY the topology,
        TOPOLOGY-sweep for --only-sweep, TOPOLOGY-churn for --modes churn
        alone) and copies its charts to
        docs/benchmarks-KEY-*.png."""
        doc = REPO / "docs" / "benchmarks.md"
        topo, copied = self.env.topology + doc_key_suffix(self.args), {}
        for key, name in charts.items():
            dest = f"benchmarks-{self.env.topology}-{name}"
            shutil.copyfile(self.out / name, REPO / "docs" / dest)
            copied[key] = dest
        section = report.markdown(self.meta, self.runs, self.summaries, self.targets, copied,
                                  sweeps, level=3)
        report.update_doc(doc, section, topo)
        self.log(f"updated {doc.relative_to(REPO)} ({topo} section)"
                 + (f" and {len(copied)} chart(s) in docs/" if copied else ""))


def doc_key_suffix(args: argparse.Namespace) -> str:
    """Which results section of docs/benchmarks.md a run rewrites, after its
    topology: a sweep alone or churn alone has its own, so that it does not
    replace the full run's."""
    if args.only_sweep:
        return "-sweep"
    if args.modes == [CHURN] and not args.sweep and not args.targets:
        return "-churn"
    return ""


def from_results(args: argparse.Namespace) -> int:
    """--from-results DIR: the outputs of a past run, written again."""
    res = reload.load(args.from_results / "results.json")
    args = reload.options(args, res)
    bench = Bench.reloaded(args, args.from_results, res)
    bench.write_outputs()
    return 0


def main(argv: list) -> int:
    args = options.parse_args(argv, __doc__)
    if args.from_results:
        return from_results(args)
    release = target_dir() / "release"
    if not args.dry_run:
        build(args.no_build, release)
        check_start_at(release, args.load_hosts)
    net_plan, why_loopback = choose_topology(args)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    out = args.out or REPO / "bench-results" / stamp
    bench = Bench(args, out, release)
    bench.set_topology(net_plan, why_loopback)
    plan = plan_matrix(args, bench.nofile, host.tcp_memory_limit_bytes()) if not args.only_targets else []
    if args.only_sweep or args.only_targets:
        plan = []
    est = estimate_s(args, plan)
    bench.log(f"output: {out}; open-files limit {bench.nofile}; estimated {est / 60:.1f} min "
              f"({len([r for r in plan if r.status != 'skipped'])} matrix runs"
              f"{' + targets' if args.targets else ''}{' + sweep' if args.sweep else ''}); "
              f"topology {bench.env.topology}")
    if args.dry_run:
        if net_plan:
            print("topology: " + net_plan.describe())
            print("\n".join(shlex.join(c) for c in net_plan.setup_commands()))
        for r in plan:
            if r.status != "skipped":
                procs.execute(bench.env, r)  # dry: fills in the commands only
            print(f"{r.cell.name:>18} {r.backend:<12} rep {r.rep + 1} workers {r.workers}: "
                  + (r.commands.get("server", "") + "\n" + " " * 22 + "client: "
                     + r.commands.get("client", "") if r.reason == "dry run" else f"SKIP {r.reason}"))
        return 0
    interrupt_on(signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    net = None
    try:
        if net_plan:
            topology.remove_leftovers(bench.log)
            net = topology.Topology(net_plan, bench.log)
            atexit.register(net.remove)  # the last resort: an exception past finally
            try:
                net.create()
                bench.log("topology netns: " + net_plan.describe())
            except RuntimeError as e:
                if args.topology == "netns" or args.load_hosts > 1:
                    bench.log(f"--topology netns: {e}")
                    return 2
                bench.log(f"topology loopback: the namespaces could not be made: {e}")
                bench.set_topology(None, f"the namespaces could not be made: {e}")
        try:
            if plan:
                bench.run_matrix(plan)
            if args.sweep:
                bench.run_sweep()
            if args.targets:
                bench.run_targets()
        except KeyboardInterrupt:
            bench.interrupted = True
            bench.log("interrupted: writing what was measured")
        bench.write_outputs()
    finally:
        if net:
            net.remove()
    failed = [r for r in bench.runs if r.status == "failed"]
    if failed:
        bench.log(f"{len(failed)} run(s) failed: see results.md")
    bench.close()
    return 1 if failed or bench.interrupted else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
