"""What the host tells us: the machine and the commit a result belongs to, a
process's CPU time and memory, and the system-wide network counters that
reveal drops and retransmits. Reads /proc and runs git; changes nothing."""

from __future__ import annotations

import ctypes
import os
import platform
import resource
import subprocess
from typing import Optional

CLK_TCK = os.sysconf("SC_CLK_TCK")


def open_files_limit() -> int:
    """Raises this process's soft RLIMIT_NOFILE to the hard limit, so every
    server and client started from here inherits it, and returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def tcp_memory_limit_bytes() -> Optional[int]:
    """The kernel's limit on all TCP sockets' buffer memory together (the
    third value of net.ipv4.tcp_mem, in pages), or None where unreadable."""
    fields = _read("/proc/sys/net/ipv4/tcp_mem").split()
    if len(fields) != 3 or not fields[2].isdigit():
        return None
    return int(fields[2]) * os.sysconf("SC_PAGE_SIZE")


def _read(path: str, ns: Optional[str] = None) -> str:
    """A file's text ("" when unreadable); with `ns`, as seen from inside that
    network namespace (/proc/net/* is per namespace)."""
    if ns is not None:
        done = subprocess.run(["ip", "netns", "exec", ns, "cat", path], capture_output=True,
                              text=True)
        return done.stdout if done.returncode == 0 else ""
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def machine() -> dict:
    """CPU model, cores, memory, kernel, and the settings that shape results."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in _read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown",
    )
    mem_kib = next(
        (
            int(line.split()[1])
            for line in _read("/proc/meminfo").splitlines()
            if line.startswith("MemTotal:")
        ),
        0,
    )

    def sysctl(name: str) -> Optional[str]:
        v = _read("/proc/sys/" + name.replace(".", "/")).split()
        return " ".join(v) if v else None

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "hostname": platform.node(),
        "nofile": {"soft": soft, "hard": hard},
        "sysctl": {
            k: sysctl(k)
            for k in (
                "net.core.netdev_max_backlog",
                "net.core.somaxconn",
                "net.ipv4.tcp_max_syn_backlog",
                "net.ipv4.ip_local_port_range",
                "net.ipv4.tcp_tw_reuse",
            )
        },
    }


def git(repo: str) -> dict:
    def out(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", repo, *args], capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {
        "commit": out("rev-parse", "HEAD") or "unknown",
        "branch": out("rev-parse", "--abbrev-ref", "HEAD"),
        # Results from an uncommitted tree cannot be reproduced from the hash
        # alone. Documentation does not change them (--update-doc rewrites
        # docs/ between the invocations of one full run).
        "dirty": bool(out("status", "--porcelain", "--untracked-files=no", "--", ".",
                          ":(exclude)docs", ":(exclude)*.md")),
    }


def cpu_seconds(pid: int) -> Optional[float]:
    """utime + stime of a process, all its threads (live and exited), seconds."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    # The command name, field 2, may hold spaces: count fields after its ')'.
    fields = stat.rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLK_TCK


def memory_kib(pid: int) -> dict:
    """VmRSS, RssAnon and VmHWM of a process, KiB (missing ones absent)."""
    out = {}
    for line in _read(f"/proc/{pid}/status").splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
            out[key] = int(rest.split()[0])
    return out


def net_counters(namespaces: tuple = (None,)) -> dict:
    """Counters whose growth during a run means lost packets: the TCP ones
    summed over `namespaces` (None: this process's own), softnet once.

    softnet_dropped: packets dropped because a CPU's backlog queue
    (net.core.netdev_max_backlog, one for the whole machine) was full; every
    packet on loopback, and every packet RPS steers off a veth, passes
    through it, and a drop costs a retransmit, often after an RTO.
    """
    c = {"softnet_dropped": 0, "softnet_squeezed": 0}
    for line in _read("/proc/net/softnet_stat").splitlines():
        cols = line.split()
        if len(cols) >= 3:
            c["softnet_dropped"] += int(cols[1], 16)
            c["softnet_squeezed"] += int(cols[2], 16)
    wanted = {
        "Tcp": ("RetransSegs",),
        "TcpExt": (
            "TCPTimeouts",
            "TCPLossProbes",
            "TCPSynRetrans",
            "ListenOverflows",
            "ListenDrops",
        ),
    }
    for path, ns in ((p, ns) for ns in namespaces for p in ("/proc/net/snmp", "/proc/net/netstat")):
        lines = _read(path, ns).splitlines()
        # Each group is a header line of names followed by a line of values.
        for names, values in zip(lines[::2], lines[1::2]):
            group, _, names = names.partition(":")
            keys = wanted.get(group)
            if not keys:
                continue
            row = dict(zip(names.split(), values.partition(":")[2].split()))
            for k in keys:
                if k in row:
                    c[k] = c.get(k, 0) + int(row[k])
    return c


def tcp_sockstat(namespaces: tuple = (None,)) -> dict:
    """TCP sockets in `namespaces` together: inuse, orphan, tw (TIME_WAIT),
    alloc, mem (pages; the kernel's count is machine-wide)."""
    out: dict = {}
    for ns in namespaces:
        for line in _read("/proc/net/sockstat", ns).splitlines():
            if line.startswith("TCP:"):
                parts = line.split()[1:]
                for i in range(0, len(parts) - 1, 2):
                    out[parts[i]] = out.get(parts[i], 0) + int(parts[i + 1])
    return out


def counter_delta(before: dict, after: dict) -> dict:
    return {k: after.get(k, 0) - v for k, v in before.items()}


# Counter -> how a run that grew it is flagged.
NOISE_FLAGS = (
    ("softnet_dropped", "backlog drops (netdev_max_backlog)"),
    ("TCPTimeouts", "RTO timeouts"),
    ("RetransSegs", "TCP retransmits"),
    ("ListenOverflows", "accept queue overflows"),
)


# Counters whose growth means the run itself was disturbed: a drop or an RTO
# stalls a connection for 200 ms or more, an accept-queue overflow delays a
# connect by a SYN retransmit (1 s). Retransmits alone are mostly tail loss
# probes, which cost little.
SEVERE = ("softnet_dropped", "TCPTimeouts", "ListenOverflows")


def is_severe(delta: dict) -> bool:
    return any(delta.get(k, 0) > 0 for k in SEVERE)


def noise_flags(delta: dict) -> list:
    """Human-readable flags for the noise a run saw, e.g. 'RTO timeouts: 3'.
    The counters are system-wide: other traffic on a shared host adds to them."""
    flags = []
    for k, label in NOISE_FLAGS:
        if delta.get(k, 0) > 0:
            flag = f"{label}: {delta[k]}"
            if k == "RetransSegs" and delta.get("TCPLossProbes", 0) > 0:
                # A tail loss probe fires when an ACK is late (a descheduled
                # peer on a busy host), not only when a packet was lost.
                flag += f" ({delta['TCPLossProbes']} tail loss probes)"
            flags.append(flag)
    return flags


def busy_seconds(cpus: list) -> Optional[float]:
    """Time `cpus` spent doing anything (user, nice, system, irq and softirq
    of /proc/stat; not idle, iowait or steal), seconds.

    This, not a process's utime + stime plus its CPUs' irq and softirq time,
    is what the server costs its CPUs. Under tick accounting without
    CONFIG_IRQ_TIME_ACCOUNTING (common, and this development VM's kernel) a
    tick that lands in softirq while the process runs is charged both to the
    process's stime and to the CPU's softirq column, so that sum counted the
    receive processing done in the process's time twice (up to 1.4 CPU
    seconds a second on one CPU). The busy time counts each tick once,
    receive processing included: on the netns topology RPS steers the
    server's to its own CPUs; on loopback it runs in the sender's softirq."""
    total, seen = 0, 0
    for line in _read("/proc/stat").splitlines():
        name, _, rest = line.partition(" ")
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            cols = [int(c) for c in rest.split()]
            user, nice, system, irq, softirq = cols[0], cols[1], cols[2], cols[5], cols[6]
            total += user + nice + system + irq + softirq
            seen += 1
    return total / CLK_TCK if seen else None


def ipis(cpus: list) -> Optional[int]:
    """Cross-CPU interrupts `cpus` have taken: the function-call (CAL) row of
    /proc/interrupts, where RPS's wake-ups of a remote CPU's receive
    processing land. In a VM each costs its sender a VM exit; batching the
    packets that cross CPUs is what saves them."""
    for line in _read("/proc/interrupts").splitlines():
        cols = line.split()
        if cols and cols[0] == "CAL:":
            counts = cols[1:]
            try:
                return sum(int(counts[c]) for c in cpus)
            except (IndexError, ValueError):
                return None
    return None


# Loaded once here, so that the forked child in die_with_parent only calls it.
_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """For Popen's preexec_fn: the child gets SIGKILL when this process dies,
    however it dies (SIGKILL included), so no server outlives a killed bench
    run. prctl(PR_SET_PDEATHSIG) survives the execs of `ip netns exec` and
    taskset (neither is set-uid)."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, 9, 0, 0, 0)  # SIGKILL
