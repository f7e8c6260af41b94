"""The clients of one run: loadgen on every load host (each with its share of
the connections and the rate, all starting their load at one wall-clock
instant with `--start-at`), or the minimal ping-pong client on the first; and
the merge of the hosts' results into the run's figure (`loadgen merge`),
each host's own file kept beside it. Builds and runs the commands; what the
numbers mean is procs.record's business."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .model import Cell
from . import host
from .env import LOADGEN_CONNECT_RATE, Env, client_timeout_s, share


@dataclass
class Clients:
    """The client commands of one run, one per load host."""

    argvs: list
    json_paths: list = field(default_factory=list)  # per host; empty: one host, JSON on stdout
    start_delay: float = 0.0  # seconds from now to --start-at

    @property
    def merged(self) -> bool:
        return bool(self.json_paths)


def target(env: Env, host_i: int, port: str) -> str:
    host = env.load_hosts[host_i]
    return f"{host.server_addr if host else '127.0.0.1'}:{port}"


def loadgen_argv(env: Env, port: str, cell: Cell, duration: float, host_i: int = 0,
                 json_out: str = "-", start_at: Optional[str] = None) -> list:
    """loadgen on load host `host_i`, with its share of the cell's
    connections and rate."""
    hosts = env.load_hosts
    host, n = hosts[host_i], len(hosts)
    conns = share(cell.conns, n, host_i)
    argv = [env.bin_dir / "loadgen", "--target", target(env, host_i, port), "--conns", conns,
            "--size", cell.size, "--pipeline", cell.pipeline,
            "--duration", duration, "--warmup", env.warmup, "--json", json_out, "--quiet"]
    if cell.rate is not None:
        argv += ["--rate", f"{share(float(cell.rate), n, host_i):.0f}"]
    if cell.per_conn is not None:
        argv += ["--messages-per-conn", cell.per_conn]
    if env.loadgen_threads:
        argv += ["--threads", env.loadgen_threads]
    if host is not None and churn_source_addrs(host, cell):
        argv += ["--source-addrs", ",".join(churn_source_addrs(host, cell))]
    elif host is not None and host.source_addrs(conns):
        argv += ["--source-addrs", ",".join(host.source_addrs(conns))]
    if start_at is not None:
        argv += ["--start-at", start_at]
    return env.client_pinned(host_i, argv)


def churn_source_addrs(host, cell: Cell) -> list:
    """A churn cell's source addresses on a load host: all of the host's.
    Churn leaves one TIME_WAIT per connection on loadgen's side for 60 s,
    each holding a port of its source address; the load host's namespace
    reuses them after 1 s (topology sets tcp_tw_reuse = 1 there), so one
    address sustains ~28,000 connections a second, and the spread keeps the
    port search short. Empty for other cells (see LoadHost.source_addrs)."""
    return list(host.client_addrs) if cell.per_conn is not None else []


def pingpong_argv(env: Env, port: str, cell: Cell, duration: float) -> list:
    argv = [env.bin_dir / "examples" / "pingpong", target(env, 0, port), cell.conns, cell.size,
            cell.pipeline, duration]
    return env.client_pinned(0, argv)


def start_delay_s(env: Env, cell: Cell) -> float:
    """How far ahead of now the load hosts are told to start their load: one
    host's connection ramp with room to spare, plus time for a busy machine
    to start the processes."""
    hosts = len(env.load_hosts)
    return 1.0 + 0.2 * hosts + 1.5 * share(cell.conns, hosts, 0) / LOADGEN_CONNECT_RATE


def plan(env: Env, client: str, port: str, cell: Cell, duration: float, stem: str,
         start_at: Optional[float] = None) -> Clients:
    """The commands; `start_at` None shows a placeholder (dry run)."""
    if client == "pingpong":
        return Clients([pingpong_argv(env, port, cell, duration)])
    n = len(env.load_hosts)
    if n == 1:
        return Clients([loadgen_argv(env, port, cell, duration)])
    when = "UNIX_SECONDS" if start_at is None else f"{start_at:.3f}"
    paths = [env.runs_dir / f"{stem}.host{i}.json" for i in range(n)]
    return Clients([loadgen_argv(env, port, cell, duration, i, str(paths[i]), when)
                    for i in range(n)], paths, start_delay_s(env, cell))


def run(env: Env, clients: Clients, cell: Cell, duration: float, log_stem: str) -> dict:
    """Starts every host's client, waits for all (bounded), merges. Returns
    rc (None on a timeout; the first failing host's otherwise), stdout (the
    run's JSON), client_err (the last lines of the failing or first log)."""
    timeout = client_timeout_s(cell, duration, env.warmup, clients.start_delay)
    logs = [env.runs_dir / (f"{log_stem}.client.log" if len(clients.argvs) == 1
                            else f"{log_stem}.host{i}.client.log")
            for i in range(len(clients.argvs))]
    procs, files = [], []
    out = {"rc": 0, "stdout": "", "client_err": ""}
    try:
        for argv, log in zip(clients.argvs, logs):
            f = open(log, "wb")
            files.append(f)
            procs.append(subprocess.Popen(
                [str(a) for a in argv], cwd=env.repo, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL if clients.merged else subprocess.PIPE, stderr=f,
                preexec_fn=host.die_with_parent))
        deadline = time.monotonic() + timeout
        for i, p in enumerate(procs):
            try:
                stdout, _ = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                out["rc"] = None
                out["client_err"] = f"client timed out after {timeout:.0f} s: {_tail(logs[i])}"
                return out
            if i == 0 and stdout:
                out["stdout"] = stdout.decode(errors="replace")
            if p.returncode != 0 and out["rc"] == 0:
                out["rc"], out["client_err"] = p.returncode, _tail(logs[i])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in files:
            f.close()
    if not out["client_err"]:
        out["client_err"] = _tail(logs[0])
    if clients.merged:
        have = [str(p) for p in clients.json_paths if Path(p).exists()]
        merge = [str(env.bin_dir / "loadgen"), "merge", *have]
        done = subprocess.run(merge, cwd=env.repo, capture_output=True, text=True)
        if done.returncode != 0 or len(have) < len(clients.json_paths):
            out["rc"] = out["rc"] or done.returncode or 1
            out["client_err"] += f" | loadgen merge ({len(have)} of {len(clients.json_paths)} " \
                                 f"host files): {done.stderr.strip()}"
        out["stdout"] = done.stdout
    return out


def _tail(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines()
    return " | ".join(lines[-2:]) or "(no output)"
