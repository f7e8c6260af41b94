"""scripts/bench.py's command line: the flags, their defaults (the full
matrix, --quick), and the checks that name a bad flag and its accepted
range. Parsing only: bench.py runs what they ask for."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .env import cpus
from .model import BACKENDS, CHURN, MODES, add_variant

DEFAULTS = {
    "backends": list(BACKENDS),
    "conns": [100, 1000, 10_000],
    "sizes": [64, 1024],
    "modes": ["closed", "pipelined", CHURN],
    "churn": [1, 10],
    "churn_cells": [(100, 64)],
    "reps": 3,
    "duration": 5.0,
    "warmup": 1.0,
}
# --large adds these to the default matrix: cells that need a big host
# (50,000 connections: an open-files limit above 50,064 for the fd-based
# backends; 16 KiB pipelined at 10,000 connections: 2.4 GiB in flight).
LARGE = {"conns": [50_000], "sizes": [16_384]}
QUICK = {
    "backends": ["uring", "epoll"],
    "conns": [100, 1000],
    "sizes": [64],
    "modes": ["closed", CHURN],
    "churn": [1],
    "churn_cells": [(100, 64)],
    "reps": 1,
    "duration": 2.0,
    "warmup": 0.5,
}
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


def name_list(s: str) -> list:
    vals = [x for x in s.split(",") if x]
    if not vals:
        raise argparse.ArgumentTypeError(f"'{s}' names no server")
    return vals


def cpu_list(s: str) -> str:
    if not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", s):
        raise argparse.ArgumentTypeError(f"'{s}' is not a CPU list for taskset -c (e.g. 0 or 0-7,16)")
    return s


def cell_list(s: str) -> list:
    """'1000x64,10000x1024' -> [(1000, 64), (10000, 1024)]."""
    out = []
    for part in s.split(","):
        m = re.fullmatch(r"(\d[\d_]*)x(\d[\d_]*)", part.strip())
        if not m or not int(m.group(1).replace("_", "")) or not int(m.group(2).replace("_", "")):
            raise argparse.ArgumentTypeError(
                f"'{part}' is not CONNSxSIZE with both positive (e.g. 1000x64)")
        out.append((int(m.group(1).replace("_", "")), int(m.group(2).replace("_", ""))))
    return out


def positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{s}' is not a number")
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{v} must be > 0")
    return v


def parse_args(argv: list, doc: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench.py",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=doc.split("\n\n")[0] + "\n\n" + "\n\n".join(doc.split("\n\n")[1:4]),
        epilog="""examples:
  scripts/bench.py --quick                      smoke test, well under a minute
  scripts/bench.py                              the full matrix (see docs/benchmarks.md for its length)
  scripts/bench.py --topology loopback          the same on loopback
  scripts/bench.py --sweep                      the matrix, then latency against load
  scripts/bench.py --only-sweep --conns 1000 --sizes 64 --backends uring,epoll
  scripts/bench.py --load-hosts 3               three load hosts, one merged figure per cell
  scripts/bench.py --targets --update-doc       matrix + targets, then rewrite docs/benchmarks.md
  scripts/bench.py --workers 8 --server-cpus 0-7 --client-cpus 8-15   a bigger host
  scripts/bench.py --modes churn --reps 5      connection churn alone: N = 1 and 10, 100 conns x 64 B
  scripts/bench.py --dry-run                    print the plan and its length, run nothing

exit status: 0 when every run passed; 1 when a run failed (results are still
written); 2 on bad arguments, a failed build or missing binaries.""")
    a = p.add_argument
    a("--backends", type=name_list,
      help="comma-separated servers to compare: " + ", ".join(BACKENDS) + ", and the names of "
           "--variant [default: " + ",".join(DEFAULTS["backends"]) + ", then every --variant]")
    a("--variant", action="append", default=[], metavar="NAME=BACKEND[@BINARY] ARGS",
      help="a backend of uring-echo's run with extra server flags (and with @BINARY, "
           "another uring-echo binary, e.g. one built from an earlier commit), measured as a "
           "server of its own beside the others, interleaved: a change's before and after in "
           "one invocation, e.g. --variant 'uring-b32=uring --wait-batch 32 --min-wait 50' or "
           "--variant 'before=uring@/tmp/old/release/uring-echo' (repeatable)")
    a("--conns", type=int_list,
      help="comma-separated connection counts [default: 100,1000,10000]")
    a("--sizes", type=int_list, help="comma-separated message sizes in bytes [default: 64,1024]")
    a("--large", action="store_true",
      help="add the cells that need a big host to the matrix: 50,000 connections and 16 KiB "
           "messages (a cell beyond the open-files limit or half of tcp_mem is skipped, "
           "with the reason)")
    a("--modes", type=choice_list([*MODES, CHURN]),
      help="closed (pipeline 1), pipelined (pipeline 16) and/or churn (short-lived "
           "connections: --churn-cells x --churn) [default: closed,pipelined,churn]")
    a("--churn", type=int_list, metavar="N,...",
      help="churn cells: messages each connection carries before loadgen closes it and "
           "opens another (loadgen --messages-per-conn; 1 is neper's tcp_crr) "
           "[default: 1,10]")
    a("--churn-cells", type=cell_list, metavar="CONNSxSIZE,...",
      help="churn cells: connections open at once x message size, e.g. 100x64 "
           "[default: 100x64]")
    a("--reps", type=int, help="repetitions of every cell, interleaved [default: 3]")
    a("--duration", type=positive_float, help="measured seconds per run [default: 5]")
    a("--warmup", type=float, help="loadgen warm-up seconds per run, not measured [default: 1]")
    a("--workers", type=int, default=1,
      help="server worker threads (the io_uring backend gets more when its rings need "
           "them for the connections: ceil(conns / (open-files limit - 64))) [default: 1]")
    a("--server-cpus", type=cpu_list, default="0",
      help="CPUs of the server: its taskset list and, with --topology netns, where RPS "
           "steers its receive processing [default: 0]")
    a("--client-cpus", type=cpu_list, default="1",
      help="CPUs of loadgen (split between --load-hosts when there are enough), for taskset "
           "and RPS likewise [default: 1]")
    a("--topology", choices=["netns", "loopback"],
      help="netns: the server in one network namespace and each load host in its own, "
           "joined by veth pairs on 198.18.0.0/15, RPS steering each side's receive "
           "processing to its own CPUs (needs root and iproute2); loopback: both on "
           "127.0.0.1 [default: netns where it can be made, else loopback, saying why]")
    a("--load-hosts", type=int, default=1,
      help="load hosts (netns): each its own namespace, address and loadgen with its share "
           "of the connections and rate; they start their load at one instant "
           "(loadgen --start-at) and their results are merged (loadgen merge) [default: 1]")
    a("--sweep", action="store_true",
      help="after the matrix, latency against load: each backend open loop (loadgen "
           "--rate) at --sweep-steps log-spaced rates from 10%% of the slowest backend's "
           "closed-loop maximum to 120%% of the fastest's, per --conns x --sizes cell")
    a("--only-sweep", action="store_true",
      help="the sweep alone (the closed-loop maxima it starts from are measured first)")
    a("--sweep-cells", type=cell_list,
      help="comma-separated CONNSxSIZE cells to sweep, e.g. 1000x64,10000x1024 "
           "[default: every --conns x --sizes cell]")
    a("--sweep-steps", type=int, default=10, help="rates in the sweep grid, 2..=50 [default: 10]")
    a("--p99-bound-us", type=positive_float,
      help="the sweep reports each backend's knee: the highest achieved rate whose p99 "
           "stays under this many microseconds [default: 1000; with --from-results, the "
           "bound recorded there]")
    a("--from-results", type=Path, metavar="DIR",
      help="measure nothing: read DIR/results.json and write its tables and charts again "
           "into DIR (after installing matplotlib, or with another --p99-bound-us); "
           "with --update-doc, into docs/benchmarks.md too")
    a("--loadgen-threads", type=int,
      help="loadgen --threads [default: loadgen decides: CPUs it may run on, raised to what "
           "the connections need]")
    a("--quick", action="store_true",
      help="smoke test: uring,epoll x 100,1000 conns x 64 B x closed loop, and churn at "
           "100 conns x 64 B x 1 message per connection, 1 rep, 2 s "
           "(flags given explicitly still apply)")
    a("--targets", action="store_true", help="after the matrix, measure the targets (docs/benchmarks.md)")
    a("--only-targets", action="store_true", help="measure the targets only, no matrix")
    a("--targets-scale", type=positive_float, default=1.0, help=argparse.SUPPRESS)
    a("--out", type=Path, help="output directory [default: bench-results/<UTC timestamp>]")
    a("--update-doc", action="store_true",
      help="rewrite this topology's results section of docs/benchmarks.md (between "
           "<!-- bench:begin TOPOLOGY --> and <!-- bench:end TOPOLOGY -->; TOPOLOGY-sweep "
           "with --only-sweep, TOPOLOGY-churn with --modes churn alone) and copy the charts to docs/benchmarks-TOPOLOGY-*.png")
    a("--no-build", action="store_true",
      help="use the release binaries as they are, in cargo's target directory (asked of "
           "cargo metadata: CARGO_TARGET_DIR is honoured) [default: cargo build --release "
           "--bins --examples first, so the binaries match the commit recorded]")
    a("--dry-run", action="store_true", help="print the plan and its estimated length; run nothing")
    args = p.parse_args(argv)

    churn_given = args.churn is not None or args.churn_cells is not None
    if churn_given and args.modes is not None and CHURN not in args.modes:
        p.error(f"--churn and --churn-cells describe churn cells, but --modes {','.join(args.modes)} "
                "has no churn: add it (--modes ...,churn)")
    for spec in args.variant:
        try:
            add_variant(spec)
        except ValueError as e:
            p.error(f"--variant: {e}")
    variants = [v.partition("=")[0] for v in args.variant]
    if args.backends is None and variants:
        args.backends = list((QUICK if args.quick else DEFAULTS)["backends"]) + variants
    unknown = [b for b in args.backends or [] if b not in BACKENDS]
    if unknown:
        p.error(f"--backends: '{','.join(unknown)}' not among {', '.join(BACKENDS)}")
    base = QUICK if args.quick else DEFAULTS
    for key, val in base.items():
        if getattr(args, key) is None:
            setattr(args, key, list(val) if isinstance(val, list) else val)
            if args.large and key in LARGE:
                getattr(args, key).extend(v for v in LARGE[key] if v not in val)
    for flag, v, lo in (("--reps", args.reps, 1), ("--workers", args.workers, 1),
                        ("--loadgen-threads", args.loadgen_threads or 1, 1)):
        if v < lo:
            p.error(f"{flag} must be >= {lo}, not {v}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, not {args.warmup}")
    if not 1 <= args.load_hosts <= 256:
        p.error(f"--load-hosts must be 1..=256, not {args.load_hosts}")
    if args.load_hosts > 1 and args.topology == "loopback":
        p.error("--load-hosts > 1 needs --topology netns (a load host is a network namespace)")
    if not 2 <= args.sweep_steps <= 50:
        p.error(f"--sweep-steps must be 2..=50, not {args.sweep_steps}")
    if args.only_targets and args.only_sweep:
        p.error("--only-targets and --only-sweep exclude each other: drop one of them")
    if args.from_results is None and args.p99_bound_us is None:
        args.p99_bound_us = 1000.0
    if args.only_targets:
        args.targets = True
    if args.only_sweep:
        args.sweep = True
    if args.sweep_cells is None:
        args.sweep_cells = [(c, s) for c in args.conns for s in args.sizes]
    if set(cpus(args.server_cpus)) & set(cpus(args.client_cpus)):
        print(f"bench: warning: --server-cpus {args.server_cpus} and --client-cpus "
              f"{args.client_cpus} overlap: server and loadgen will compete for CPU",
              file=sys.stderr)
    return args
