"""The processes of one run: a server started fresh and pinned, its clients
(clients.py) pinned elsewhere, the sampling of the server's memory while they
run, and the stop with SIGTERM. On the netns topology every process runs
inside its namespace through `ip netns exec`, which execs: the PID is the
program's own, so /proc/PID reads the server itself."""

from __future__ import annotations

import json
import re
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

from . import clients, host
from .env import Env, client_timeout_s, cpus
from .model import BACKENDS, Cell, Run, per_conn_metrics

SERVER_START_TIMEOUT_S = 15.0
# uring-echo drains for up to --drain-timeout (5 s) after SIGTERM.
SERVER_STOP_TIMEOUT_S = 20.0
RSS_SAMPLE_S = 0.2
# Before a run, wait (at most this long) for the sockets of the last one to be
# gone: orphans still sending FINs and retransmits would load the next run.
SETTLE_MAX_S = 10.0
SETTLE_ORPHANS = 100
SETTLE_STALL_S = 2.0
PINGPONG_LINE = re.compile(
    r"msgs=(\d+) secs=([\d.]+) msgs_per_s=([\d.]+) cpu_ns_per_msg=([\d.]+)"
)


def server_argv(env: Env, backend: str, workers: int, extra: tuple = ()) -> list:
    b = BACKENDS[backend]
    if b.ours:
        argv = [Path(b.binary) if b.binary else env.bin_dir / "uring-echo",
                "--port", "0", "--addr", env.listen_addr,
                "--workers", workers, "--backend", b.program, *b.args, *extra]
    else:
        argv = [env.bin_dir / "examples" / f"{backend}_echo", 0, workers, env.listen_addr]
    return env.server_pinned(argv)


class Server:
    """A server process, its stdout and stderr in a log file."""

    def __init__(self, argv: list, log_path: Path, cwd: Path):
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            preexec_fn=host.die_with_parent,
        )
        self.port = self._wait_listening()

    def _wait_listening(self) -> str:
        """The port the server listens on."""
        # Every server under test prints `... listening on ADDR` first.
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            m = re.search(r"listening on \S+:(\d+)", self.log_path.read_text(errors="replace"))
            if m:
                return m.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"server did not start: {self.log_tail()}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> Optional[int]:
        """SIGTERM, wait for the drain; SIGKILL only if it does not end."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(SERVER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def log_tail(self, n: int = 3) -> str:
        lines = self.log_path.read_text(errors="replace").strip().splitlines()
        return " | ".join(lines[-n:]) or "(no output)"


class RssSampler(threading.Thread):
    """Samples a process's VmRSS and RssAnon every 200 ms until stopped."""

    def __init__(self, pid: int, keep_series: bool = False):
        super().__init__(daemon=True)
        self.pid = pid
        self.keep_series = keep_series
        self.peak = {"VmRSS": 0, "RssAnon": 0}
        self.series: list = []
        self._stop_event = threading.Event()
        self._t0 = time.monotonic()

    def run(self) -> None:
        while True:
            m = host.memory_kib(self.pid)
            for k in self.peak:
                self.peak[k] = max(self.peak[k], m.get(k, 0))
            if self.keep_series and m:
                self.series.append((round(time.monotonic() - self._t0, 2), m.get("VmRSS", 0),
                                    m.get("RssAnon", 0)))
            if self._stop_event.wait(RSS_SAMPLE_S):
                return

    def finish(self) -> dict:
        self._stop_event.set()
        self.join()
        return self.peak


def settle(namespaces: tuple = (None,)) -> dict:
    """Waits while the sockets orphaned by earlier runs (closed, still sending
    FINs or retransmitting) go away, at most SETTLE_MAX_S and only while their
    number keeps falling; returns the TCP socket counts the run starts with."""
    now = host.tcp_sockstat(namespaces)
    deadline = time.monotonic() + SETTLE_MAX_S
    best, best_at = now.get("orphan", 0), time.monotonic()
    while now.get("orphan", 0) > SETTLE_ORPHANS and time.monotonic() < deadline:
        if time.monotonic() - best_at > SETTLE_STALL_S:
            break  # not falling: someone else's, or stuck in backoff
        time.sleep(0.2)
        now = host.tcp_sockstat(namespaces)
        if now.get("orphan", 0) < best:
            best, best_at = now.get("orphan", 0), time.monotonic()
    return now


def execute(env: Env, run: Run, client: str = "loadgen", server_extra: tuple = (),
            duration: Optional[float] = None, keep_rss_series: bool = False,
            warm_cell: Optional[Cell] = None, warm_s: float = 0.0) -> Run:
    """Runs `run` (server fresh, client, stop) and fills in its metrics, flags
    and status. `client` is "loadgen" or "pingpong". With `warm_cell`, a
    loadgen run of that shape first loads the fresh server for `warm_s`
    seconds, unmeasured, so that what it touches once (buffer pool pages, code)
    is in the baseline the measured run is compared with."""
    if run.status == "skipped":
        return run
    duration = env.duration if duration is None else duration
    argv = server_argv(env, run.backend, run.workers, server_extra)
    run.commands["server"] = shlex.join(map(str, argv))
    if env.dry_run:
        planned = clients.plan(env, client, "PORT", run.cell, duration, run.file_stem)
        run.commands["client"] = "\n".join(shlex.join(map(str, a)) for a in planned.argvs)
        run.status, run.reason = "skipped", "dry run"
        return run
    run.metrics["tcp_sockets_before"] = settle(env.namespaces)
    t0 = time.monotonic()
    try:
        server = Server(argv, env.runs_dir / f"{run.file_stem}.server.log", env.repo)
    except RuntimeError as e:
        run.status, run.reason = "failed", str(e)
        return run
    try:
        if warm_cell is not None:
            warm_up(env, run, server, warm_cell, warm_s)
        seen = observe(env, run, server, client, duration, keep_rss_series)
    except RuntimeError as e:
        run.status, run.reason = "failed", str(e)
        return run
    finally:
        run.metrics["server_exit"] = server.stop()
        run.wall_s = round(time.monotonic() - t0, 2)
    record(run, client, seen, server.log_path, keep_rss_series)
    return run


def warm_up(env: Env, run: Run, server: Server, cell: Cell, seconds: float) -> None:
    """An unmeasured loadgen run against the server, then a pause while the
    server closes its connections."""
    run.metrics["rss_fresh_kib"] = host.memory_kib(server.pid).get("VmRSS")
    argv = clients.loadgen_argv(env, server.port, cell, seconds)
    run.commands["warmup"] = shlex.join(map(str, argv))
    try:
        with open(env.runs_dir / f"{run.file_stem}.warmup.log", "wb") as err:
            subprocess.run(argv, cwd=env.repo, stdout=subprocess.DEVNULL, stderr=err,
                           preexec_fn=host.die_with_parent,
                           timeout=client_timeout_s(cell, seconds, env.warmup))
    except subprocess.TimeoutExpired:
        raise RuntimeError("the warm-up client timed out")
    time.sleep(1.0)


def observe(env: Env, run: Run, server: Server, client: str, duration: float,
            keep_rss_series: bool) -> dict:
    """Runs the clients while watching the server; returns the raw readings."""
    start_at = None
    planned = clients.plan(env, client, server.port, run.cell, duration, run.file_stem)
    if planned.start_delay:
        start_at = time.time() + planned.start_delay
        planned = clients.plan(env, client, server.port, run.cell, duration, run.file_stem,
                               start_at)
        run.metrics["start_at"] = round(start_at, 3)
    run.commands["client"] = "\n".join(shlex.join(map(str, a)) for a in planned.argvs)
    server_cpus, client_cpus = cpus(env.server_cpus), cpus(env.client_cpus)
    seen = {"rss_before": host.memory_kib(server.pid), "cpu_before": host.cpu_seconds(server.pid),
            "busy_before": (host.busy_seconds(server_cpus), host.busy_seconds(client_cpus)),
            "wall_before": time.monotonic(),
            "ipi_before": (host.ipis(server_cpus), host.ipis(client_cpus)),
            "net_before": host.net_counters(env.namespaces)}
    sampler = RssSampler(server.pid, keep_rss_series)
    sampler.start()
    try:
        seen.update(clients.run(env, planned, run.cell, duration, run.file_stem))
    finally:
        seen["peak"] = sampler.finish()
    seen.update(cpu_after=host.cpu_seconds(server.pid), rss_after=host.memory_kib(server.pid),
                busy_after=(host.busy_seconds(server_cpus), host.busy_seconds(client_cpus)),
                wall_after=time.monotonic(), cpu_counts=(len(server_cpus), len(client_cpus)),
                ipi_after=(host.ipis(server_cpus), host.ipis(client_cpus)),
                net_after=host.net_counters(env.namespaces), series=sampler.series)
    return seen


def record(run: Run, client: str, seen: dict, server_log: Path, keep_rss_series: bool) -> None:
    """Turns the readings of `observe` into the run's metrics, flags and status."""
    run.net = host.counter_delta(seen["net_before"], seen["net_after"])
    run.flags = host.noise_flags(run.net)
    run.suspect = host.is_severe(run.net)
    orphans = run.metrics["tcp_sockets_before"].get("orphan", 0)
    if orphans > SETTLE_ORPHANS:
        run.flags.append(f"started beside {orphans} orphaned TCP sockets")
        run.suspect = True
    m, before, peak = run.metrics, seen["rss_before"], seen["peak"]
    m["rss_before_kib"] = before.get("VmRSS")
    m["rss_peak_kib"] = peak["VmRSS"]
    m["rss_anon_before_kib"] = before.get("RssAnon")
    m["rss_anon_peak_kib"] = peak["RssAnon"]
    m["rss_after_kib"] = seen["rss_after"].get("VmRSS")
    m["server_errors"] = _server_errors(server_log)
    if keep_rss_series:
        m["rss_series"] = seen["series"]
    if before.get("VmRSS") is not None and peak["VmRSS"]:
        m["mem_per_conn_b"] = (peak["VmRSS"] - before["VmRSS"]) * 1024 / run.cell.conns

    rc = seen["rc"]
    if rc is None:
        run.status, run.reason = "failed", seen["client_err"]
        return
    try:
        msgs = _client_metrics(run, client, seen["stdout"])
    except (ValueError, KeyError) as e:
        run.status = "failed"
        run.reason = f"client exit {rc}, no result ({e}): {seen['client_err']}"
        return
    cpu_before, cpu_after = seen["cpu_before"], seen["cpu_after"]
    if cpu_before is not None and cpu_after is not None and msgs:
        m["server_cpu_s"] = round(cpu_after - cpu_before, 3)
        m["server_cpu_ns_per_msg"] = (cpu_after - cpu_before) * 1e9 / msgs
    cpu_metrics(m, seen, msgs)
    for side, key in enumerate(("server_ipis_per_msg", "client_ipis_per_msg")):
        before, after = seen["ipi_before"][side], seen["ipi_after"][side]
        if before is not None and after is not None and msgs:
            m[key] = (after - before) / msgs
    if run.cell.per_conn is not None:
        m.update(per_conn_metrics(m, run.cell.per_conn))
    if rc != 0:
        run.status, run.reason = "failed", f"client exit {rc}: {seen['client_err']}"


def cpu_metrics(m: dict, seen: dict, msgs: int) -> None:
    """The server's CPU per message, and how busy each side's CPUs were.

    server_total: the busy time of the server's CPUs (host.busy_seconds),
    which counts its receive processing once; server_cpu: its process's
    utime + stime, which under tick accounting includes the softirq ticks
    taken while it ran; server_other = total - process: what its CPUs did
    outside the process's time (receive processing while it slept,
    ksoftirqd). *_busy_frac: the share of their CPUs' time over the client
    run, 1.0 when saturated: the side near 1.0 is the limit."""
    wall = seen["wall_after"] - seen["wall_before"]
    for side, name in enumerate(("server", "client")):
        before, after = seen["busy_before"][side], seen["busy_after"][side]
        if before is None or after is None:
            continue
        if wall > 0 and seen["cpu_counts"][side]:
            m[f"{name}_busy_frac"] = round((after - before) / (wall * seen["cpu_counts"][side]), 3)
        if name == "server" and msgs:
            m["server_total_ns_per_msg"] = (after - before) * 1e9 / msgs
            if "server_cpu_ns_per_msg" in m:
                m["server_other_ns_per_msg"] = max(
                    0.0, m["server_total_ns_per_msg"] - m["server_cpu_ns_per_msg"])


def _client_metrics(run: Run, client: str, stdout: str) -> int:
    """Fills run.client and run.metrics from the client's output; returns the
    message count server CPU is divided by."""
    m = run.metrics
    if client == "pingpong":
        hit = PINGPONG_LINE.search(stdout)
        if not hit:
            raise ValueError("no msgs=... line")
        msgs, secs, rate, cpu = hit.groups()
        run.client = {"msgs": int(msgs), "secs": float(secs), "msgs_per_s": float(rate),
                      "cpu_ns_per_msg": float(cpu)}
        m["msgs_per_s"] = float(rate)
        m["loadgen_cpu_ns_per_msg"] = float(cpu)  # the client's CPU, whichever client
        return int(msgs)
    j = json.loads(stdout)
    run.client = j
    lat = j["latency_us"]
    m.update(
        msgs_per_s=j["throughput"]["msgs_per_s"],
        p50_us=lat["p50"], p99_us=lat["p99"], p999_us=lat["p999"],
        errors=sum(j["errors"].values()),
        error_kinds=j["errors"],
        mismatches=j["verify"]["mismatches"],
        established=j["connections"]["established"],
        lost=j["connections"]["lost"],
        unfinished=j["messages"]["unfinished"],
        loadgen_cpu_ns_per_msg=j["cpu"]["ns_per_msg"],
        loadgen_threads=j["config"]["threads"],
        cpu_msgs=j["cpu"]["msgs"],
    )
    if j.get("rate"):
        m["rate_achieved"] = j["rate"]["achieved"]
        # loadgen's own lateness after each due time (absent before it was reported).
        lag = j.get("schedule_lag_us") or {}
        if lag.get("count"):
            m["lag_p99_us"] = lag["p99"]
    if run.cell.per_conn is not None:
        txn, connect = j["transaction_us"], j["connect_us"]
        m.update(conns_per_s=j["throughput"]["conns_per_s"],
                 completed=j["connections"]["completed"],
                 txn_p50_us=txn["p50"], txn_p99_us=txn["p99"], txn_p999_us=txn["p999"],
                 connect_p50_us=connect["p50"], connect_p99_us=connect["p99"])
    start = j.get("start") or {}
    if start.get("requested") is not None:
        # Several load hosts: how far apart their measured windows began, and
        # whether one's connection ramp ran past the instant they were given.
        m["start_spread_s"] = start.get("spread_s")
        m["start_late"] = start.get("late")
        if start.get("late"):
            run.flags.append("a load host started late: its connections took longer "
                             "than the --start-at lead")
    return j["cpu"]["msgs"]


def _server_errors(log: Path) -> Optional[int]:
    # uring-echo's summary line: "uring-echo stopped after ...: ... errors=N ..."
    m = re.search(r"stopped after .* errors=(\d+)", log.read_text(errors="replace"))
    return int(m.group(1)) if m else None
