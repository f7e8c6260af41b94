#!/usr/bin/env python3
"""Where the server's CPU goes: one server under loadgen on the chosen
topology, `perf record -a -g -C <server CPUs>` in the middle of the load, and
the inclusive share of the kernel and user functions that tell the backends
apart (the socket layer, receive processing, the cross-CPU interrupts RPS
raises, epoll_wait, io_uring_enter); with --messages-per-conn (churn) also
the connection's own path (the handshake, accept, descriptor set-up, close)
and the server's CPU per connection.

  scripts/profile.py --backend uring --topology netns
  scripts/profile.py --backend epoll --topology netns --conns 100 --messages-per-conn 1
  scripts/profile.py --backend epoll --topology loopback --conns 1000 --size 64

Writes OUT/perf-<topology>-<backend>.data, the full `perf report` beside it
(.txt), and prints the table of shares. Needs perf (software events are
enough: it samples cpu-clock) and, for netns, root. The topology, pinning and
clean-up are scripts/bench.py's own (benchkit). Measures nothing else:
throughput and CPU per message are bench.py's business.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchkit import env, host, procs, topology  # noqa: E402
from benchkit.env import cpus  # noqa: E402
from benchkit.model import BACKENDS  # noqa: E402
from benchkit.options import cpu_list  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
# Function -> what it stands for, in the order of the table. A sample counts
# for a function when the function is anywhere on its stack (inclusive).
SYMBOLS = (
    ("tcp_sendmsg", "`tcp_sendmsg`: the echo's send"),
    ("tcp_recvmsg", "`tcp_recvmsg`: reading the message"),
    ("net_rx_action", "`net_rx_action`: receive processing in softirq"),
    ("tcp_v4_rcv", "… of which `tcp_v4_rcv`: TCP receive"),
    ("net_rps_send_ipi", "`net_rps_send_ipi`: raising RPS's cross-CPU interrupts"),
    ("x2apic_send_IPI", "`x2apic_send_IPI`: writing the interrupt command (a VM exit in a guest)"),
    ("sysvec_call_function_single", "`sysvec_call_function_single`: taking a cross-CPU interrupt"),
    ("do_epoll_wait", "`do_epoll_wait`"),
    ("__do_sys_io_uring_enter", "`io_uring_enter`"),
    ("entry_SYSCALL_64_after_hwframe", "any syscall (`entry_SYSCALL_64`)"),
)
# With churn: each connection's way in and out of the server.
CHURN_SYMBOLS = (
    ("tcp_conn_request", "`tcp_conn_request`: the SYN, in softirq"),
    ("tcp_v4_syn_recv_sock", "`tcp_v4_syn_recv_sock`: the child socket, at the handshake's ACK"),
    ("inet_csk_accept", "`inet_csk_accept`: taking it off the accept queue"),
    ("io_accept", "… by io_uring's accept (`io_accept`)"),
    ("__sys_accept4", "… by the `accept4` syscall (`__sys_accept4`)"),
    ("do_epoll_ctl", "`epoll_ctl`: registering the connection"),
    ("tcp_close", "`tcp_close`: the close, FIN and socket release"),
    ("io_close", "… through the ring (`io_close`)"),
    ("__fput", "`__fput`: the descriptor's last reference dropped"),
    ("tcp_rcv_state_process", "`tcp_rcv_state_process`: handshake and teardown segments"),
)
# A sample on the server's CPUs counts as the server's when it ran in one of
# the server's threads (by thread id: on a shared machine other processes'
# threads have the same names), interrupts landing there included, or in a
# hardware interrupt that landed on the idle CPU (RPS's cross-CPU interrupt
# and the receive processing after it). Interrupts landing in other threads
# are left out: on a shared machine they are as likely the neighbours' own
# (their RPS traffic, their TLB shootdowns) as the server's.
IRQ_ENTRY = "asm_"
IDLE_TID = 0


def parse_args(argv: list) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/profile.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    a = p.add_argument
    a("--backend", choices=list(BACKENDS), default="uring", help="server to profile [default: uring]")
    a("--topology", choices=["netns", "loopback"], default="netns", help="[default: netns]")
    a("--conns", type=int, default=1000, help="loadgen connections [default: 1000]")
    a("--size", type=int, default=64, help="message size in bytes [default: 64]")
    a("--pipeline", type=int, default=1, help="messages in flight per connection [default: 1]")
    a("--messages-per-conn", type=int, metavar="N",
      help="connection churn: each connection carries N messages, then loadgen closes it and "
           "opens another (loadgen --messages-per-conn) [default: long-lived connections]")
    a("--seconds", type=float, default=3.0, help="seconds perf records [default: 3]")
    a("--server-cpus", type=cpu_list, default="0", help="[default: 0]")
    a("--client-cpus", type=cpu_list, default="1", help="[default: 1]")
    a("--out", type=Path, default=REPO / "bench-results" / "profiles",
      help="[default: bench-results/profiles]")
    args = p.parse_args(argv)
    for flag, v in (("--conns", args.conns), ("--size", args.size), ("--pipeline", args.pipeline),
                    ("--messages-per-conn", args.messages_per_conn or 1)):
        if v < 1:
            p.error(f"{flag} must be >= 1, not {v}")
    if args.seconds <= 0:
        p.error(f"--seconds must be > 0, not {args.seconds}")
    return args


def release_dir() -> Path:
    done = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=REPO,
                          capture_output=True, text=True, check=True)
    return Path(json.loads(done.stdout)["target_directory"]) / "release"


def samples(script: str) -> list:
    """(thread id, comm, functions on the stack, innermost first) per sample
    of `perf script -F comm,tid,ip,sym`. A user-space frame is named with a
    USER_MARK in front, so that the split below can tell it from the kernel's."""
    out = []
    for block in script.split("\n\n"):
        lines = [line for line in block.splitlines() if line.strip()]
        if not lines:
            continue
        comm, _, tid = lines[0].strip().rpartition(" ")
        funcs = []
        for ip, _, sym in (line.strip().partition(" ") for line in lines[1:]):
            if not sym:
                continue
            user = int(ip, 16) < KERNEL_START if all(c in HEX for c in ip) else False
            funcs.append((USER_MARK if user else "") + sym.split("+")[0])
        out.append((int(tid) if tid.isdigit() else -1, comm.strip(), funcs))
    return out


HEX = set("0123456789abcdef")
KERNEL_START = 0x8000_0000_0000_0000
USER_MARK = "user:"
# The event interface's own code, by the function a sample ran in (self, not
# inclusive): what another event interface could remove or add. Everything
# else (TCP/IP, the device, interrupts, copies, the allocator) is the floor
# that every server pays for the same echo.
EVENT_INTERFACE = (
    ("the process's own code (event loop, runtime)", lambda f: f.startswith(USER_MARK)),
    ("io_uring (`io_*` functions)", lambda f: f.startswith(("io_", "__io_"))),
    ("epoll (`ep_*`, `*epoll*`)", lambda f: f.startswith(("ep_", "__ep_")) or "epoll" in f),
    ("entering and leaving the kernel (syscall entry, exit, descriptor lookups)",
     lambda f: f.startswith(("entry_SYSCALL", "do_syscall_64", "syscall_exit", "__x64_sys_",
                             "__do_sys_", "fdget", "__fget", "fput", "sockfd_lookup"))),
    ("sleeping and waking (the scheduler)",
     lambda f: f.startswith(("__schedule", "schedule", "finish_task_switch", "try_to_wake_up",
                             "pick_next", "__switch_to", "dequeue_", "enqueue_"))),
)


def floor(samples_: list, server_tids: set) -> tuple:
    """(rows of (what, % of the server's samples) for the event interface's
    own code, the floor's %): by the innermost function of each sample."""
    inner = [f[0] for f in (server_part(t, fs, server_tids) for t, _c, fs in samples_) if f]
    if not inner:
        return [], None
    rows = []
    left = list(inner)
    for what, is_it in EVENT_INTERFACE:
        hit = [f for f in left if is_it(f)]
        left = [f for f in left if not is_it(f)]
        rows.append((what, 100.0 * len(hit) / len(inner)))
    return rows, 100.0 * len(left) / len(inner)


def server_part(tid: int, funcs: list, server_tids: set) -> list:
    """The functions of a sample that are the server's work: all of them in
    the server's threads; on the idle CPU, those of a hardware interrupt (up
    to its asm_ entry); elsewhere none."""
    if tid in server_tids:
        return funcs
    if tid != IDLE_TID:
        return []
    entry = next((i for i, f in enumerate(funcs) if f.startswith(IRQ_ENTRY)), None)
    return [] if entry is None else funcs[:entry + 1]


def shares(samples_: list, server_tids: set, symbols: tuple = SYMBOLS) -> tuple:
    """(symbol -> % of the server's samples, the server's samples, all samples)."""
    ours = [set(f) for f in (server_part(t, fs, server_tids) for t, _c, fs in samples_) if f]
    got = {sym: 100.0 * sum(sym in f for f in ours) / len(ours) for sym, _ in symbols} if ours else {}
    return got, len(ours), len(samples_)


def main(argv: list) -> int:
    args = parse_args(argv)
    if shutil.which("perf") is None:
        print("profile: perf is not installed (linux-perf / linux-tools)", file=sys.stderr)
        return 2
    release = release_dir()
    args.out.mkdir(parents=True, exist_ok=True)
    churn = args.messages_per_conn is not None
    stem = f"perf-{args.topology}-{args.backend}" + (f"-n{args.messages_per_conn}" if churn else "")
    net = None
    if args.topology == "netns":
        why = topology.unavailable_reason()
        if why:
            print(f"profile: --topology netns: {why}", file=sys.stderr)
            return 2
        net = topology.Topology(topology.plan(os.getpid(), 1, cpus(args.server_cpus),
                                              cpus(args.client_cpus)), print)

    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, interrupted)
    try:
        if net:
            topology.remove_leftovers(print)
            net.create()
        e = env.Env(repo=REPO, bin_dir=release, runs_dir=args.out, server_cpus=args.server_cpus,
                    client_cpus=args.client_cpus, loadgen_threads=None,
                    duration=args.seconds + 2.0, warmup=1.0, nofile=host.open_files_limit(),
                    log=print, net=net.plan if net else None)
        server = procs.Server(procs.server_argv(e, args.backend, 1), args.out / f"{stem}.server.log",
                              REPO)
        tids: dict = {}
        try:
            from benchkit import clients
            from benchkit.model import Cell

            cell = Cell(args.conns, args.size, args.pipeline, per_conn=args.messages_per_conn)
            (lg,) = clients.plan(e, "loadgen", server.port, cell, e.duration, stem).argvs
            load = subprocess.Popen([str(x) for x in lg], cwd=REPO, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, preexec_fn=host.die_with_parent)
            # Into the measured part: past the ramp and the warm-up.
            time.sleep(args.conns / env.LOADGEN_CONNECT_RATE + 1.5)
            data = args.out / f"{stem}.data"
            subprocess.run(["perf", "record", "-e", "cpu-clock", "-a", "-g", "-C", args.server_cpus,
                            "-o", str(data), "--", "sleep", str(args.seconds)],
                           check=True, capture_output=True)
            for task in Path(f"/proc/{server.pid}/task").iterdir():
                tids[int(task.name)] = (task / "comm").read_text().strip()
            result = json.loads(load.communicate(timeout=60)[0] or "{}")
        finally:
            server.stop()
    finally:
        if net:
            net.remove()
    report = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--children",
                             "--sort", "sym", "-g", "none"], capture_output=True, text=True).stdout
    (args.out / f"{stem}.txt").write_text(report)
    script = subprocess.run(["perf", "script", "-i", str(data), "-F", "comm,tid,ip,sym"],
                            capture_output=True, text=True).stdout
    symbols = SYMBOLS + (CHURN_SYMBOLS if churn else ())
    parsed = samples(script)
    got, ours, total = shares(parsed, set(tids), symbols)
    rate = result.get("throughput", {}).get("conns_per_s" if churn else "msgs_per_s")
    unit = "conns/s" if churn else "msgs/s"
    print(f"{args.backend} on {args.topology}: {args.conns:,} conns x {args.size} B x pipeline "
          f"{args.pipeline}{f' x {args.messages_per_conn} message(s) per connection' if churn else ''}"
          f"; {rate:,.0f} {unit} while perf recorded CPUs {args.server_cpus}"
          if rate else f"{args.backend} on {args.topology}: loadgen gave no result")
    if churn and rate and total:
        # cpu-clock samples CPU time at a fixed rate, idle included: the
        # server's share of the samples is its share of the CPUs' time.
        per_conn_us = ours / total * 1e6 * len(cpus(args.server_cpus)) / rate
        print(f"the server's CPU per connection: {per_conn_us:,.1f} µs (its share of the "
              f"samples x CPU time / connections; the rows below split it)")
    print(f"the server's samples (threads {', '.join(sorted(set(tids.values())))}, and "
          f"interrupts on the idle CPU): "
          f"{ours:,} of {total:,} on CPUs {args.server_cpus}; the rest were other processes")
    print(f"| inclusive share of the server's samples | {args.backend}, {args.topology} |")
    print("|---|---:|")
    for sym, label in symbols:
        print(f"| {label} | {got.get(sym, 0.0):.1f} % |")
    rows, rest = floor(parsed, set(tids))
    if rest is not None:
        print()
        print(f"| where the server's samples ran (self, not inclusive) | {args.backend}, {args.topology} |")
        print("|---|---:|")
        for what, pct in rows:
            print(f"| {what} | {pct:.1f} % |")
        print(f"| **the event interface's part, together** | **{100.0 - rest:.1f} %** |")
        print(f"| the rest: TCP/IP, the device, interrupts, copies: the floor no event interface "
              f"removes | {rest:.1f} % |")
    print(f"(all symbols: {args.out / (stem + '.txt')})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
