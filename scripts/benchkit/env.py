"""What every run of one invocation shares: where the binaries are, the
topology and the pinning, timing, where logs go; and the few timing
constants of the programs under test. Data only: procs.py and clients.py
start the processes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from . import topology
from .model import Cell

LOADGEN_CONNECT_RATE = 20_000  # loadgen's default --connect-rate
LOADGEN_DRAIN_S = 5.0  # loadgen's default --drain-timeout


@dataclass
class Env:
    """What every run shares."""

    repo: Path
    bin_dir: Path  # the release directory, relative to repo when inside it
    runs_dir: Path
    server_cpus: str
    client_cpus: str
    loadgen_threads: Optional[int]
    duration: float
    warmup: float
    nofile: int
    log: Callable[[str], None]
    dry_run: bool = False
    net: Optional[topology.Plan] = None  # None: loopback

    @property
    def topology(self) -> str:
        return "netns" if self.net else "loopback"

    @property
    def listen_addr(self) -> str:
        # Inside the server namespace only the veths' 198.18.x.1 addresses exist.
        return "0.0.0.0" if self.net else "127.0.0.1"

    @property
    def namespaces(self) -> tuple:
        """Where the run's TCP counters live (None: this process's namespace)."""
        return tuple(self.net.namespaces) if self.net else (None,)

    @property
    def load_hosts(self) -> list:
        """One entry per load host: its topology.LoadHost, None on loopback."""
        return list(self.net.hosts) if self.net else [None]

    def server_pinned(self, argv: list) -> list:
        ns = self.net.server_ns if self.net else None
        return [*topology.ns_exec(ns), "taskset", "-c", self.server_cpus, *map(str, argv)]

    def client_pinned(self, host_i: int, argv: list) -> list:
        host = self.load_hosts[host_i]
        ns, cpus = (host.ns, host.cpus) if host else (None, self.client_cpus)
        return [*topology.ns_exec(ns), "taskset", "-c", cpus, *map(str, argv)]


def cpus(spec: str) -> list:
    """A taskset CPU list, "0-2,5", as numbers: [0, 1, 2, 5]."""
    out = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


def share(total, parts: int, i: int):
    """Part i of `total` split as evenly as possible (ints stay ints)."""
    if isinstance(total, int):
        return total // parts + (i < total % parts)
    return total / parts


def client_timeout_s(cell: Cell, duration: float, warmup: float, delay: float = 0.0) -> float:
    ramp = cell.conns / LOADGEN_CONNECT_RATE
    return delay + ramp + warmup + duration + LOADGEN_DRAIN_S + 60.0
