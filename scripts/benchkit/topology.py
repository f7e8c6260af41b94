"""Where the server and its clients run: `loopback` (one network namespace,
127.0.0.1) or `netns` (two or more hosts on one machine: the server in one
network namespace, each load host in its own, joined by veth pairs).

On loopback a send runs the peer's whole receive path in the sender's own
context, so each side pays for the other's receive processing and a transmit
notifies nobody. Across a veth pair the receive side runs on the receiving
namespace's CPUs (RPS on the veth's receive queue steers it there), and each
send raises a cross-CPU interrupt, as a NIC would take a doorbell write: the
closer of the two to two real hosts.

The plan (names, addresses, RPS masks, the `ip` commands) is pure and unit
tested; `Topology` runs it and removes every namespace it made on every exit
path. Namespace names are `ue-<pid>-...`: `leftovers` picks the ones whose
creating process is dead, so concurrent runs (other users, CI, the Rust
tests' `tests/common/netns.rs`, which uses the same prefix) never collide and
only a killed run's namespaces are removed.

Addresses come from 198.18.0.0/15 (RFC 2544, set aside for benchmarking)
only; nothing is configured in the caller's own namespace and no sysctl of
the machine is changed. This module does not start servers or clients: see
procs.py.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Callable, Optional

PREFIX = "ue-"
BENCH_NET = ipaddress.ip_network("198.18.0.0/15")
# One /24 per load host inside BENCH_NET: the server side is .1, the client
# side .2 upwards.
MAX_LOAD_HOSTS = 256
# Addresses each load host gets: one source address's ephemeral ports
# (net.ipv4.ip_local_port_range, 28,232 by default) cap its connections to
# one server port, so a host holding many connections spreads them over these.
CLIENT_ADDRS_PER_HOST = 8
# Connections given to one source address. Measured on this topology (check
# S1, 100,000 connections from one load host): at 20,000 per address (5
# addresses) 71,100-72,500 came up whatever the connect rate (2,000-20,000/s)
# and connect timeout (5-30 s), about 14,200 per address, the rest timing
# out; at 12,500 (all 8) every one of the 100,000 did, connect p99 944 us.
# It is not a plain per-address port limit: 25,000 connections from a single
# address over the same kind of veth pair all came up. The cause is not
# traced; this is the spread that measured clean.
CONNS_PER_SOURCE_ADDR = 12_500
CAP_NET_ADMIN, CAP_SYS_ADMIN = 12, 21
NAME_RE = re.compile(r"^" + re.escape(PREFIX) + r"(\d+)-")


def cpu_mask(cpus: list) -> str:
    """The hex bitmap /sys/class/net/DEV/queues/rx-0/rps_cpus takes: CPUs
    [0] -> '1', [1] -> '2', [0..3] -> 'f'; past 32 CPUs, comma-separated
    32-bit groups, most significant first, as the kernel prints it."""
    if not cpus or min(cpus) < 0:
        raise ValueError(f"a CPU mask needs CPUs >= 0, not {cpus}")
    bits = 0
    for c in cpus:
        bits |= 1 << c
    groups = []
    while True:
        groups.append(bits & 0xFFFFFFFF)
        bits >>= 32
        if not bits:
            break
    head, *rest = reversed(groups)
    return ",".join([f"{head:x}"] + [f"{g:08x}" for g in rest])


def split_cpus(cpus: list, hosts: int) -> list:
    """The client CPUs of each load host: a contiguous share each when there
    are at least as many CPUs as hosts, otherwise every host on all of them."""
    if hosts <= 1 or len(cpus) < hosts:
        return [list(cpus) for _ in range(hosts)]
    per, extra = divmod(len(cpus), hosts)
    out, at = [], 0
    for i in range(hosts):
        n = per + (i < extra)
        out.append(list(cpus[at:at + n]))
        at += n
    return out


def cpu_list(cpus: list) -> str:
    """[0, 1, 2, 5] -> '0-2,5' (taskset -c syntax)."""
    out, i, s = [], 0, sorted(set(cpus))
    while i < len(s):
        j = i
        while j + 1 < len(s) and s[j + 1] == s[j] + 1:
            j += 1
        out.append(str(s[i]) if i == j else f"{s[i]}-{s[j]}")
        i = j + 1
    return ",".join(out)


@dataclass(frozen=True)
class LoadHost:
    """One load host: its namespace, its veth pair and addresses, its CPUs."""

    index: int
    ns: str
    server_dev: str  # the veth end in the server namespace
    client_dev: str  # the veth end in this host's namespace
    server_addr: str  # what this host connects to
    client_addrs: tuple  # this host's own addresses, the first is its main one
    cpus: str  # taskset list for this host's loadgen
    rps_mask: str  # this host's receive processing: its own CPUs

    def source_addrs(self, conns: int) -> list:
        """The source addresses loadgen needs for `conns` connections from
        this host: one per CONNS_PER_SOURCE_ADDR, none below that."""
        need = -(-conns // CONNS_PER_SOURCE_ADDR)
        if need <= 1:
            return []
        if need > len(self.client_addrs):
            raise ValueError(
                f"{conns:,} connections from one load host need {need} source addresses; "
                f"it has {len(self.client_addrs)}: use more --load-hosts")
        return list(self.client_addrs[:need])


@dataclass(frozen=True)
class Plan:
    """Everything `Topology` creates, as data."""

    pid: int
    server_ns: str
    server_cpus: str
    server_rps_mask: str
    hosts: tuple = field(default_factory=tuple)

    @property
    def namespaces(self) -> list:
        return [self.server_ns] + [h.ns for h in self.hosts]

    def setup_commands(self) -> list:
        """The `ip` commands that build it, in order. Both ends of every veth
        are created directly inside their namespaces: nothing appears, even
        for a moment, in the caller's namespace."""
        cmds = [["ip", "netns", "add", ns] for ns in self.namespaces]
        cmds += [["ip", "-n", ns, "link", "set", "lo", "up"] for ns in self.namespaces]
        for h in self.hosts:
            cmds.append(["ip", "link", "add", h.server_dev, "netns", self.server_ns, "type", "veth",
                         "peer", "name", h.client_dev, "netns", h.ns])
            cmds.append(["ip", "-n", self.server_ns, "addr", "add", f"{h.server_addr}/24",
                         "dev", h.server_dev])
            cmds += [["ip", "-n", h.ns, "addr", "add", f"{a}/24", "dev", h.client_dev]
                     for a in h.client_addrs]
            cmds.append(["ip", "-n", self.server_ns, "link", "set", h.server_dev, "up"])
            cmds.append(["ip", "-n", h.ns, "link", "set", h.client_dev, "up"])
            # /sys/class/net shows the devices of the namespace `ip netns exec`
            # enters (it remounts /sys there).
            cmds.append(rps_command(self.server_ns, h.server_dev, self.server_rps_mask))
            cmds.append(rps_command(h.ns, h.client_dev, h.rps_mask))
            cmds.append(tw_reuse_command(h.ns))
        return cmds

    def describe(self) -> str:
        hosts = "; ".join(f"{h.ns} {h.client_addrs[0]} on CPUs {h.cpus} (RPS {h.rps_mask})"
                          for h in self.hosts)
        return (f"server namespace {self.server_ns} on CPUs {self.server_cpus} "
                f"(RPS {self.server_rps_mask}); load hosts: {hosts}")

    def to_json(self) -> dict:
        return {
            "kind": "netns",
            "server_ns": self.server_ns,
            "server_cpus": self.server_cpus,
            "server_rps_cpus": self.server_rps_mask,
            "load_hosts": [
                {"ns": h.ns, "server_addr": h.server_addr, "client_addrs": list(h.client_addrs),
                 "cpus": h.cpus, "rps_cpus": h.rps_mask, "veth": [h.server_dev, h.client_dev]}
                for h in self.hosts
            ],
        }


def rps_command(ns: str, dev: str, mask: str) -> list:
    return ["ip", "netns", "exec", ns, "sh", "-c",
            f"echo {mask} > /sys/class/net/{dev}/queues/rx-0/rps_cpus"]


def tw_reuse_command(ns: str) -> list:
    """net.ipv4.tcp_tw_reuse = 1 inside load host `ns` (a sysctl of our own
    namespace, not the machine's): its connects may take a port whose
    TIME_WAIT is 1 s old. The default, 2, does so on loopback only; on the
    veth a churn run would run out of ports at ~470 connections a second per
    source address (docs/kernel-tuning.md, Connection churn)."""
    return ["ip", "netns", "exec", ns, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/tcp_tw_reuse"]


def plan(pid: int, load_hosts: int, server_cpus: list, client_cpus: list) -> Plan:
    """The topology for `load_hosts` load hosts: server namespace
    ue-<pid>-srv, load host i in ue-<pid>-c<i>, joined by veth vs<i>/vc<i>,
    on 198.18.<i>.0/24 (server .1, host .2 ...)."""
    if not 1 <= load_hosts <= MAX_LOAD_HOSTS:
        raise ValueError(f"--load-hosts must be 1..={MAX_LOAD_HOSTS}, not {load_hosts}")
    base = int(BENCH_NET.network_address)
    hosts = []
    for i, cpus in enumerate(split_cpus(client_cpus, load_hosts)):
        net = base + (i << 8)
        addrs = tuple(str(ipaddress.ip_address(net + 2 + k)) for k in range(CLIENT_ADDRS_PER_HOST))
        hosts.append(LoadHost(
            index=i, ns=f"{PREFIX}{pid}-c{i}", server_dev=f"vs{i}", client_dev=f"vc{i}",
            server_addr=str(ipaddress.ip_address(net + 1)), client_addrs=addrs,
            cpus=cpu_list(cpus), rps_mask=cpu_mask(cpus)))
    for h in hosts:
        for a in (h.server_addr, *h.client_addrs):
            assert ipaddress.ip_address(a) in BENCH_NET, a
    return Plan(pid=pid, server_ns=f"{PREFIX}{pid}-srv", server_cpus=cpu_list(server_cpus),
                server_rps_mask=cpu_mask(server_cpus), hosts=tuple(hosts))


def leftovers(names: list, alive: Callable[[int], bool]) -> list:
    """The namespaces among `names` that a killed run left: our prefix, and
    the PID in the name no longer alive. Others' namespaces are never touched."""
    out = []
    for name in names:
        m = NAME_RE.match(name)
        if m and not alive(int(m.group(1))):
            out.append(name)
    return out


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def list_namespaces() -> list:
    """Names from `ip netns list` ('NAME' or 'NAME (id: N)' per line)."""
    done = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def _capabilities() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def unavailable_reason() -> Optional[str]:
    """Why the netns topology cannot be made here, or None if it can."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    caps = _capabilities()
    missing = [name for bit, name in ((CAP_NET_ADMIN, "CAP_NET_ADMIN"),
                                      (CAP_SYS_ADMIN, "CAP_SYS_ADMIN")) if not caps >> bit & 1]
    if missing:
        return (f"creating network namespaces needs root ({' and '.join(missing)} missing); "
                "run as root for --topology netns")
    if not os.path.exists("/proc/self/ns/net"):
        return "this kernel has no network namespaces (CONFIG_NET_NS)"
    return None


def ns_exec(ns: Optional[str]) -> list:
    """The argv prefix that runs a program inside `ns` (none for loopback)."""
    return ["ip", "netns", "exec", ns] if ns else []


class Topology:
    """The namespaces of a Plan, created by `create` and removed by `remove`
    (idempotent; bench.py calls it from finally, atexit and its signal
    handlers)."""

    def __init__(self, p: Plan, log: Callable[[str], None]):
        self.plan = p
        self.log = log
        self.created: list = []

    def create(self) -> None:
        """Runs the plan; on a failing command removes what it made and
        raises RuntimeError naming the command and ip's message."""
        try:
            for cmd in self.plan.setup_commands():
                done = subprocess.run(cmd, capture_output=True, text=True)
                if cmd[:3] == ["ip", "netns", "add"] and done.returncode == 0:
                    self.created.append(cmd[3])
                if done.returncode != 0:
                    raise RuntimeError(f"`{' '.join(cmd)}` failed: {done.stderr.strip()}")
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        """Stops what still runs inside our namespaces (only our own children
        can be there), then deletes the namespaces; their veths go with them."""
        while self.created:
            ns = self.created.pop()
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                                  text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            done = subprocess.run(["ip", "netns", "del", ns], capture_output=True, text=True)
            if done.returncode != 0:
                self.log(f"could not remove network namespace {ns}: {done.stderr.strip()}")


def remove_leftovers(log: Callable[[str], None]) -> list:
    """Deletes namespaces of killed runs (ours by prefix, dead PID); returns
    their names. Processes still inside one are named, not killed: they are
    not this run's."""
    gone = leftovers(list_namespaces(), pid_alive)
    for ns in gone:
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True,
                              text=True).stdout.split()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        log(f"removed network namespace {ns}, left by a run that no longer exists"
            + (f"; processes still inside it: {' '.join(pids)}" if pids else ""))
    return gone
