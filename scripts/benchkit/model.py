"""The data model: what a cell, a backend and one run are, and the medians
over repetitions. Pure logic, no I/O."""

from __future__ import annotations

import math
import os
import re
import shlex
import statistics
from dataclasses import asdict, dataclass, field
from typing import Optional

# File descriptors a server holds besides its connections (listeners, epoll or
# ring fds, eventfds, stdio), kept free below the open-files limit.
FD_HEADROOM = 64

MODES = {"closed": 1, "pipelined": 16}
# Connection churn (loadgen --messages-per-conn N): short-lived connections,
# closed loop, one message in flight. Its cells come from --churn-cells and
# --churn, not from the --conns x --sizes grid of the other modes.
CHURN = "churn"


@dataclass(frozen=True)
class Backend:
    """A server under test. `ours` servers are `uring-echo --backend NAME`;
    the others are examples of this crate taking `PORT THREADS`."""

    name: str
    ours: bool
    # One file descriptor per connection (everything but the io_uring backend,
    # which accepts into direct descriptors).
    fd_per_conn: bool
    # A variant (--variant NAME=BACKEND ARGS): the backend it runs, and the
    # server flags it adds. Empty for the backends themselves.
    base: str = ""
    args: tuple = ()
    # A variant's own uring-echo binary (BACKEND@PATH), e.g. one built from an
    # earlier commit; empty: the one under test.
    binary: str = ""

    @property
    def program(self) -> str:
        """The backend this one runs: its own name, or a variant's base."""
        return self.base or self.name


BACKENDS = {
    b.name: b
    for b in (
        Backend("uring", ours=True, fd_per_conn=False),
        Backend("epoll", ours=True, fd_per_conn=True),
        Backend("tokio-uring", ours=True, fd_per_conn=True),
        Backend("tokio", ours=False, fd_per_conn=True),
        Backend("monoio", ours=False, fd_per_conn=True),
    )
}


VARIANT_NAME = re.compile(r"[a-z0-9][a-z0-9_.+-]*")


def add_variant(spec: str) -> Backend:
    """Registers `NAME=BACKEND[@BINARY] ARGS...` (e.g. `uring-b32=uring
    --wait-batch 32 --min-wait 50`) as a backend of its own: uring-echo's
    BACKEND with ARGS added, so that a server flag's before and after are
    measured side by side, interleaved, in one invocation. With @BINARY, that
    uring-echo binary runs instead (one built from an earlier commit: a
    change's before and after). Raises ValueError saying what is wrong."""
    name, sep, rest = spec.partition("=")
    words = shlex.split(rest) if sep else []
    if not sep or not words:
        raise ValueError(f"'{spec}' is not NAME=BACKEND ARGS (e.g. 'uring-b32=uring --wait-batch 32')")
    if not VARIANT_NAME.fullmatch(name):
        raise ValueError(f"variant name '{name}': lower-case letters, digits and _.+- only")
    if name in BACKENDS:
        raise ValueError(f"variant name '{name}' is taken by a backend or an earlier --variant")
    backend, _, binary = words[0].partition("@")
    if binary and not os.access(binary, os.X_OK):
        raise ValueError(f"variant '{name}': {binary} is not an executable uring-echo")
    base = BACKENDS.get(backend)
    if base is None or not base.ours or base.base:
        ours = ", ".join(b.name for b in BACKENDS.values() if b.ours and not b.base)
        raise ValueError(f"variant '{name}': its backend must be one of uring-echo's ({ours}), "
                         f"not '{backend}'")
    b = Backend(name, ours=True, fd_per_conn=base.fd_per_conn, base=base.name,
                args=tuple(words[1:]), binary=binary)
    BACKENDS[name] = b
    return b


@dataclass(frozen=True)
class Cell:
    """One load shape: connections x message size x messages in flight, for
    the open loop a rate (msgs/s, all connections together), and for churn
    the messages each connection carries before it is closed and replaced
    (`conns` of them open at once)."""

    conns: int
    size: int
    pipeline: int
    rate: Optional[float] = None
    per_conn: Optional[int] = None

    @property
    def mode(self) -> str:
        if self.per_conn is not None:
            return CHURN
        if self.rate is not None:
            return "open"
        return "pipelined" if self.pipeline > 1 else "closed"

    @property
    def name(self) -> str:
        base = f"c{self.conns}-s{self.size}-p{self.pipeline}"
        if self.rate is not None:
            base += f"-r{self.rate:.0f}"
        return base if self.per_conn is None else f"{base}-n{self.per_conn}"


def server_workers(backend: Backend, conns: int, workers: int, nofile: int) -> int:
    """Workers the server needs for `conns`: the io_uring backend's rings each
    hold at most RLIMIT_NOFILE direct descriptors, so it gets more rings."""
    if backend.fd_per_conn:
        return workers
    per_ring = max(1, nofile - FD_HEADROOM)
    return max(workers, math.ceil(conns / per_ring))


def skip_reason(backend: Backend, cell: Cell, nofile: int,
                tcp_mem_bytes: Optional[int] = None) -> Optional[str]:
    """Why `backend` cannot run `cell` here, or None.

    Besides the open-files limit: a closed-loop cell keeps conns x pipeline x
    size bytes in flight, and every one of them sits in a socket buffer, most
    of the time in two (the client's send buffer and the server's receive
    buffer, then the server's send buffer and the client's receive buffer).
    Past half the kernel's TCP memory limit the kernel drops and stalls
    (tcp_mem pressure), whatever the server: 10,000 x 16 x 16 KiB = 2.4 GiB
    left every backend with thousands of messages unechoed at the end."""
    if backend.fd_per_conn and cell.conns + FD_HEADROOM > nofile:
        return (
            f"needs RLIMIT_NOFILE >= conns ({cell.conns} + {FD_HEADROOM} fds of headroom); "
            f"the open-files limit here is {nofile}"
        )
    in_flight = cell.conns * cell.pipeline * cell.size
    if cell.rate is None and tcp_mem_bytes is not None and in_flight > tcp_mem_bytes / 2:
        gib = 2**30
        return (
            f"keeps conns x pipeline x size = {in_flight / gib:.1f} GiB in flight, more than "
            f"half the kernel's TCP memory limit here (net.ipv4.tcp_mem max "
            f"{tcp_mem_bytes / gib:.1f} GiB): the kernel, not the server, would stall"
        )
    return None


def rotated(items: list, by: int) -> list:
    """`items` rotated left by `by`, so each repetition starts elsewhere."""
    if not items:
        return []
    k = by % len(items)
    return items[k:] + items[:k]


def saturated(run: "Run") -> bool:
    """An open-loop run that failed only because messages were still queued
    at the end (loadgen's unfinished count), nothing lost or corrupted: the
    rate was past what the server can echo, which is what a sweep's top
    rates are for. Any mismatch, error or lost connection is a failure."""
    m = run.metrics
    return (run.cell.rate is not None and run.status == "failed"
            and m.get("mismatches") == 0 and m.get("errors") == 0 and m.get("lost") == 0
            and (m.get("unfinished") or 0) > 0)


@dataclass
class Run:
    """One server start, one client run against it, one stop."""

    phase: str  # "matrix", or the target phase's name ("t1", "s3-pingpong", ...)
    cell: Cell
    backend: str
    rep: int
    workers: int  # effective server workers
    status: str = "ok"  # ok | failed | skipped | saturated (open loop past the server's limit)
    reason: Optional[str] = None
    commands: dict = field(default_factory=dict)  # server, client: shell lines
    metrics: dict = field(default_factory=dict)
    net: dict = field(default_factory=dict)  # counter deltas over the run
    flags: list = field(default_factory=list)  # noise the counters saw during the run
    suspect: bool = False  # the noise was of a kind that distorts results (host.SEVERE)
    wall_s: float = 0.0
    client: Optional[dict] = None  # loadgen's JSON (or pingpong's parsed line)

    @property
    def file_stem(self) -> str:
        prefix = "" if self.phase == "matrix" else f"{self.phase}-"
        return f"{prefix}{self.cell.name}-{self.backend}-{self.rep}"

    def to_json(self, with_histograms: bool = True) -> dict:
        d = asdict(self)
        d["cell"]["name"] = self.cell.name
        d["cell"]["mode"] = self.cell.mode
        if not with_histograms and d.get("client") and "histograms" in d["client"]:
            d["client"] = {k: v for k, v in d["client"].items() if k != "histograms"}
        return d


# Metrics summarised over repetitions.
SUMMARY_METRICS = (
    "msgs_per_s",
    "server_cpu_ns_per_msg",
    "server_other_ns_per_msg",
    "server_total_ns_per_msg",
    # The share of the server's CPUs' and the client's CPUs' time that was
    # busy over the client run: the side at 1.0 is the limit.
    "server_busy_frac",
    "client_busy_frac",
    "rate_achieved",
    "loadgen_cpu_ns_per_msg",
    "p50_us",
    "p99_us",
    "p999_us",
    # Open loop: loadgen's own lateness (schedule_lag_us.p99), part of p99_us.
    "lag_p99_us",
    "mem_per_conn_b",
    # Cross-CPU interrupts per message taken by the server's CPUs and by
    # loadgen's (host.ipis).
    "server_ipis_per_msg",
    "client_ipis_per_msg",
    # Churn cells only: connections completed per second, the server's CPU
    # per connection (per message x messages per connection), the transaction
    # (connect start to last echo) and connect latency, loadgen's CPU per
    # connection.
    "conns_per_s",
    "server_cpu_ns_per_conn",
    "server_other_ns_per_conn",
    "server_total_ns_per_conn",
    "txn_p50_us",
    "txn_p99_us",
    "txn_p999_us",
    "connect_p99_us",
    "loadgen_cpu_ns_per_conn",
)


@dataclass
class Summary:
    """Medians, minima and maxima of one (phase, cell, backend) over its runs."""

    phase: str
    cell: Cell
    backend: str
    workers: int
    runs: int
    failed: int
    flagged: int  # runs with any flag
    suspect: int  # runs whose flags distort results
    skipped: Optional[str]
    stats: dict  # metric -> {"median", "min", "max"}
    saturated: int = 0  # open-loop runs that ended with messages never echoed

    def median(self, metric: str) -> Optional[float]:
        s = self.stats.get(metric)
        return None if s is None else s["median"]

    def to_json(self) -> dict:
        d = asdict(self)
        d["cell"]["name"] = self.cell.name
        d["cell"]["mode"] = self.cell.mode
        return d


def summarise(runs: list) -> list:
    """One Summary per (phase, cell, backend), in first-seen order. Medians are
    over the runs that passed; a flagged or suspect run still counts (it is marked)."""
    groups: dict = {}
    for r in runs:
        groups.setdefault((r.phase, r.cell, r.backend), []).append(r)
    out = []
    for (phase, cell, backend), rs in groups.items():
        ok = [r for r in rs if r.status == "ok"]
        skipped = next((r.reason for r in rs if r.status == "skipped"), None)
        stats = {}
        for m in SUMMARY_METRICS:
            vals = [r.metrics[m] for r in ok if r.metrics.get(m) is not None]
            if vals:
                stats[m] = {
                    "median": statistics.median(vals),
                    "min": min(vals),
                    "max": max(vals),
                }
        out.append(
            Summary(
                phase=phase,
                cell=cell,
                backend=backend,
                workers=max((r.workers for r in rs), default=0),
                runs=len(ok),
                failed=sum(r.status == "failed" for r in rs),
                saturated=sum(r.status == "saturated" for r in rs),
                flagged=sum(bool(r.flags) for r in ok),
                suspect=sum(r.suspect for r in ok),
                skipped=skipped if not ok and skipped else None,
                stats=stats,
            )
        )
    return out


def find(summaries: list, phase: str, cell: Cell, backend: str) -> Optional[Summary]:
    for s in summaries:
        if s.phase == phase and s.cell == cell and s.backend == backend:
            return s
    return None


def per_conn_metrics(metrics: dict, per_conn: int) -> dict:
    """A churn run's per-connection costs from its per-message ones: each
    connection carries `per_conn` messages, so the CPU the server spent over
    the load phase divided by the connections it served is the per-message
    figure times `per_conn` (loadgen's cpu.msgs counts the echoes of the
    whole load phase, the connections cut by its edges aside)."""
    out = {}
    for msg_key in ("server_cpu_ns_per_msg", "server_other_ns_per_msg", "server_total_ns_per_msg",
                    "loadgen_cpu_ns_per_msg"):
        if metrics.get(msg_key) is not None:
            out[msg_key.replace("_per_msg", "_per_conn")] = metrics[msg_key] * per_conn
    return out


def churn_ratio(summaries: list, phase: str, cell: Cell, backend: str,
                other: str) -> Optional[float]:
    """`backend`'s median connections per second over `other`'s on a churn
    cell (uring over epoll: the issue's target), None where either is missing."""
    a, b = find(summaries, phase, cell, backend), find(summaries, phase, cell, other)
    if a is None or b is None:
        return None
    x, y = a.median("conns_per_s"), b.median("conns_per_s")
    return None if x is None or not y else x / y
