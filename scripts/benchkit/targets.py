"""The target measurements: each a ratio (or a count) measured in one
invocation, medians of interleaved repetitions, compared with its target.

1. 1,000 conns x 64 B closed loop: uring >= 1.5x epoll, >= 1.25x best of tokio/monoio
2. 10,000 conns x 64 B closed loop: uring >= 1.3x epoll
3. server CPU per message: uring <= 0.7x epoll at 1,000 and 10,000 conns
4. 100,000 connections held and echoing on the uring server; memory per idle
   connection beyond the buffer pool <= 256 B
5. loadgen's CPU per message within 10% of the minimal ping-pong client's
6. at half of epoll's maximum rate, uring p99 latency <= 0.8x epoll's
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

from . import procs
from .env import Env
from .model import BACKENDS, Cell, Run, find, rotated, server_workers, summarise

# The targets are stated for one server worker.
TARGET_WORKERS = 1
T1 = Cell(1000, 64, 1)
T2 = Cell(10_000, 64, 1)
T4_CONNS = 100_000
# Target 4's server: a pool small enough that the warm-up touches every page of
# it, so the memory measured afterwards is the connections' own.
T4_BUF_COUNT = 256
T4_BUF_SIZE = 4096
# Warm-up before target 4's baseline: connections per server worker, seconds.
T4_WARM_CONNS_PER_WORKER = 200
T4_WARM_S = 2.0
# Each of target 4's connections echoes one message every this many seconds.
T4_SECONDS_PER_MSG = 2.0
T4_MIN_DURATION_S = 6.0


@dataclass
class Target:
    """One line of the targets table."""

    id: str
    goal: str  # the target as stated
    measured: str  # what was measured, in words and numbers
    value: Optional[float]  # the measured ratio or quantity
    required: str  # e.g. ">= 1.5"
    met: Optional[bool]  # None: could not be measured
    commands: list = field(default_factory=list)  # [role, shell line] pairs
    note: str = ""

    def to_json(self) -> dict:
        return asdict(self)


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def _fmt(v: Optional[float], unit: str = "") -> str:
    if v is None:
        return "n/a"
    if abs(v) >= 1000:
        return f"{v:,.0f}{unit}"
    return f"{v:.3g}{unit}"


def _verdict(value: Optional[float], at_least: Optional[float] = None,
             at_most: Optional[float] = None) -> Optional[bool]:
    if value is None:
        return None
    if at_least is not None:
        return value >= at_least
    return value <= at_most


def _commands(runs: list, phase: str, cell: Cell) -> list:
    """[role, command] pairs: a server and its client per backend, as run
    (first repetition)."""
    seen, out = set(), []
    for r in runs:
        if r.phase == phase and r.cell == cell and r.backend not in seen and r.commands:
            seen.add(r.backend)
            out += _roles(r)
    return out


def _roles(run: Run) -> list:
    client = "pingpong" if run.phase.endswith("pingpong") else "loadgen"
    roles = (("server", f"{run.backend} server"), ("warmup", "warm-up loadgen"),
             ("client", client))
    return [[label, run.commands[key]] for key, label in roles if run.commands.get(key)]


def run_targets(env: Env, reps: int, scale: float, save: Callable[[Run], None],
                log: Callable[[str], None]) -> tuple:
    """Runs every target phase; returns (runs, summaries, targets)."""
    runs: list = []

    def go(run: Run, **kw) -> None:
        log(f"  {run.phase} {run.cell.name} {run.backend} rep {run.rep + 1}/{reps}")
        procs.execute(env, run, **kw)
        if run.status != "ok" or run.flags:
            log(f"    {run.status}{': ' + run.reason if run.reason else ''}"
                f"{(' SUSPECT: ' if run.suspect else ' flags: ') + '; '.join(run.flags) if run.flags else ''}")
        runs.append(run)
        save(run)

    # -- targets 1-3: closed loop, interleaved, rotated
    phase_cells = [("t1", T1, ["uring", "epoll", "tokio", "monoio"]),
                   ("t2", T2, ["uring", "epoll"])]
    log("targets 1-3: closed loop at 1,000 and 10,000 connections")
    for rep in range(reps):
        for i, (phase, cell, backends) in enumerate(phase_cells):
            for b in rotated(backends, rep + i):
                go(Run(phase, cell, b, rep, TARGET_WORKERS))

    # -- target 5: loadgen vs ping-pong client, same server, same load
    log("target 5: loadgen vs the minimal ping-pong client")
    for rep in range(reps):
        for client in rotated(["loadgen", "pingpong"], rep):
            go(Run(f"t5-{client}", T1, "uring", rep, TARGET_WORKERS), client=client)

    # -- target 6: fixed rate at half of epoll's maximum
    summaries = summarise(runs)
    epoll_max = _median(summaries, "t1", T1, "epoll", "msgs_per_s")
    rate_cell = None
    if epoll_max:
        rate_cell = Cell(T1.conns, T1.size, 1, rate=round(epoll_max / 2))
        log(f"target 6: open loop at {rate_cell.rate:,.0f} msgs/s (half of epoll's {epoll_max:,.0f})")
        for rep in range(reps):
            for b in rotated(["uring", "epoll"], rep):
                go(Run("t6", rate_cell, b, rep, TARGET_WORKERS))
    else:
        log("target 6: skipped, no epoll maximum from target 1")

    # -- target 4: many connections held, memory per idle connection
    t4 = target4(env, scale, go, log)

    summaries = summarise(runs)
    targets = evaluate(runs, summaries, rate_cell, reps) + t4
    return runs, summaries, targets


def _median(summaries: list, phase: str, cell: Cell, backend: str, metric: str):
    s = find(summaries, phase, cell, backend)
    return s.median(metric) if s else None


def target4(env: Env, scale: float, go: Callable, log: Callable) -> list:
    conns = max(1, round(T4_CONNS * scale))
    workers = server_workers(BACKENDS["uring"], conns, TARGET_WORKERS, env.nofile)
    pool = ("--buf-count", T4_BUF_COUNT, "--buf-size", T4_BUF_SIZE)
    duration = max(env.duration, T4_MIN_DURATION_S)
    cell = Cell(conns, 64, 1, rate=round(conns / T4_SECONDS_PER_MSG))
    log(f"target 4: {conns:,} connections on the uring server, {workers} workers")
    # A warm-up client first touches the whole pool; the baseline is taken after it.
    run = Run("t4", cell, "uring", 0, workers)
    warm = Cell(T4_WARM_CONNS_PER_WORKER * workers, 64, 1)
    go(run, server_extra=pool, duration=duration, keep_rss_series=True,
       warm_cell=warm, warm_s=T4_WARM_S)
    m = run.metrics
    established = m.get("established")
    held = (run.status == "ok" and established == conns and m.get("lost") == 0
            and m.get("mismatches") == 0 and m.get("unfinished") == 0)
    echoed = m.get("cpu_msgs")
    pool_bytes = T4_BUF_COUNT * T4_BUF_SIZE * workers
    per_conn = m.get("mem_per_conn_b")
    per_conn_anon = None
    if m.get("rss_anon_peak_kib") and m.get("rss_anon_before_kib") is not None:
        per_conn_anon = (m["rss_anon_peak_kib"] - m["rss_anon_before_kib"]) * 1024 / conns
    note = "" if conns == T4_CONNS else f"scaled run ({conns:,} instead of {T4_CONNS:,} connections)"
    return [
        Target("4a", f"{T4_CONNS:,} concurrent connections held and echoing (uring, "
               f"workers as needed)",
               f"established {_fmt(established)} of {conns:,}, lost {m.get('lost')}, "
               f"mismatches {m.get('mismatches')}, unfinished {m.get('unfinished')}, "
               f"errors {m.get('errors')}, {_fmt(echoed)} echoes ({workers} workers)"
               + (f"; {run.status}: {run.reason}" if run.status != "ok" else ""),
               established, f"== {conns:,}", held if established is not None else None,
               _roles(run), note),
        Target("4b", "server memory per idle connection beyond the buffer pool <= 256 B",
               f"(peak VmRSS with the connections up - VmRSS after the warm-up) / conns = "
               f"{_fmt(per_conn, ' B')} (RssAnon: {_fmt(per_conn_anon, ' B')}); pool "
               f"{pool_bytes // 1024} KiB touched by the warm-up, in the baseline",
               per_conn, "<= 256 B", _verdict(per_conn, at_most=256.0),
               [], "the run of 4a" + (f"; {note}" if note else "")),
    ]


def evaluate(runs: list, summaries: list, rate_cell: Optional[Cell], reps: int) -> list:
    med = lambda phase, cell, b, metric: _median(summaries, phase, cell, b, metric)  # noqa: E731
    note = "" if reps >= 3 else f"only {reps} rep(s): indicative, not a verdict"
    out = []

    u1 = med("t1", T1, "uring", "msgs_per_s")
    e1 = med("t1", T1, "epoll", "msgs_per_s")
    peers = {b: med("t1", T1, b, "msgs_per_s") for b in ("tokio", "monoio")}
    best_peer = max(((v, b) for b, v in peers.items() if v), default=(None, None))
    r = _ratio(u1, e1)
    out.append(Target("1a", "1,000 conns x 64 B closed loop: uring >= 1.5x epoll msgs/s",
                      f"uring {_fmt(u1)} / epoll {_fmt(e1)} msgs/s = {_fmt(r)}x",
                      r, ">= 1.5", _verdict(r, at_least=1.5), _commands(runs, "t1", T1), note))
    r = _ratio(u1, best_peer[0])
    out.append(Target("1b", "1,000 conns x 64 B closed loop: uring >= 1.25x best of tokio, monoio",
                      f"uring {_fmt(u1)} / {best_peer[1]} {_fmt(best_peer[0])} msgs/s = {_fmt(r)}x "
                      f"(tokio {_fmt(peers['tokio'])}, monoio {_fmt(peers['monoio'])})",
                      r, ">= 1.25", _verdict(r, at_least=1.25), [], note))

    u2 = med("t2", T2, "uring", "msgs_per_s")
    e2 = med("t2", T2, "epoll", "msgs_per_s")
    r = _ratio(u2, e2)
    out.append(Target("2", "10,000 conns x 64 B closed loop: uring >= 1.3x epoll msgs/s",
                      f"uring {_fmt(u2)} / epoll {_fmt(e2)} msgs/s = {_fmt(r)}x",
                      r, ">= 1.3", _verdict(r, at_least=1.3), _commands(runs, "t2", T2), note))

    for tid, phase, cell in (("3a", "t1", T1), ("3b", "t2", T2)):
        uc = med(phase, cell, "uring", "server_cpu_ns_per_msg")
        ec = med(phase, cell, "epoll", "server_cpu_ns_per_msg")
        r = _ratio(uc, ec)
        out.append(Target(tid, f"server CPU per message at {cell.conns:,} conns: uring <= 0.7x epoll",
                          f"uring {_fmt(uc, ' ns')} / epoll {_fmt(ec, ' ns')} = {_fmt(r)}x "
                          "(server utime+stime over the loadgen run, ramp included, / echoes)",
                          r, "<= 0.7", _verdict(r, at_most=0.7), [], note))

    lg = med("t5-loadgen", T1, "uring", "loadgen_cpu_ns_per_msg")
    pp = med("t5-pingpong", T1, "uring", "loadgen_cpu_ns_per_msg")
    r = _ratio(lg, pp)
    out.append(Target("5", "loadgen CPU per message (verification, histograms on) within 10% "
                      "of the minimal ping-pong client's, 1,000 conns x 64 B vs uring",
                      f"loadgen {_fmt(lg, ' ns')} / pingpong {_fmt(pp, ' ns')} = {_fmt(r)}x",
                      r, "<= 1.10", _verdict(r, at_most=1.10),
                      _commands(runs, "t5-loadgen", T1) + _commands(runs, "t5-pingpong", T1),
                      note))

    if rate_cell is not None:
        up = med("t6", rate_cell, "uring", "p99_us")
        ep = med("t6", rate_cell, "epoll", "p99_us")
        r = _ratio(up, ep)
        out.append(Target("6", "at half of epoll's maximum rate (1,000 conns x 64 B), "
                          "uring p99 <= 0.8x epoll's",
                          f"rate {rate_cell.rate:,.0f} msgs/s: uring p99 {_fmt(up, ' us')} / "
                          f"epoll p99 {_fmt(ep, ' us')} = {_fmt(r)}x",
                          r, "<= 0.8", _verdict(r, at_most=0.8),
                          _commands(runs, "t6", rate_cell), note))
    else:
        out.append(Target("6", "at half of epoll's maximum rate, uring p99 <= 0.8x epoll's",
                          "not measured: no epoll median from target 1", None, "<= 0.8", None))
    return out

