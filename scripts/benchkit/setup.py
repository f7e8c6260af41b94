"""What bench.py does before it measures: find the binaries where cargo
puts them and build them, choose the topology (netns where it can be made,
else loopback, saying why), check that loadgen can start several hosts at
one instant, and turn SIGTERM and SIGHUP into the same unwinding as Ctrl-C.
Measures nothing."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from . import options, topology

REPO = Path(__file__).resolve().parent.parent.parent


def target_dir() -> Path:
    """Where cargo puts its builds: `target_directory` from `cargo metadata`,
    which honours CARGO_TARGET_DIR and .cargo/config.toml's build.target-dir."""
    cmd = ["cargo", "metadata", "--format-version", "1", "--no-deps"]
    try:
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
        return Path(json.loads(done.stdout)["target_directory"])
    except (OSError, subprocess.CalledProcessError, ValueError, KeyError) as e:
        print(f"bench: {shlex.join(cmd)} failed ({e}); looking in target/", file=sys.stderr)
        return REPO / "target"


def build(no_build: bool, release: Path) -> None:
    if not no_build:
        cmd = ["cargo", "build", "--release", "--bins", "--examples"]
        print("bench: " + shlex.join(cmd), file=sys.stderr)
        if subprocess.run(cmd, cwd=REPO).returncode != 0:
            print("bench: the build failed", file=sys.stderr)
            sys.exit(2)
    needed = [release / "uring-echo", release / "loadgen", release / "examples" / "pingpong",
              release / "examples" / "tokio_echo", release / "examples" / "monoio_echo"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        print(f"bench: missing {', '.join(missing)}: run cargo build --release --bins --examples",
              file=sys.stderr)
        sys.exit(2)
    if shutil.which("taskset") is None:
        print("bench: taskset not found (util-linux): it pins the server and loadgen", file=sys.stderr)
        sys.exit(2)


def shown(path: Path) -> Path:
    """`path` relative to the repository when inside it, so commands read as typed there."""
    try:
        return path.relative_to(REPO)
    except ValueError:
        return path


def choose_topology(args) -> tuple:
    """(plan or None for loopback, why loopback). Without --topology: netns
    where it can be made, else loopback and one line saying why; asked for
    explicitly (or needed by --load-hosts) and impossible: exit 2."""
    if args.topology == "loopback":
        return None, "asked for (--topology loopback)"
    reason = topology.unavailable_reason()
    if reason:
        if args.topology == "netns" or args.load_hosts > 1:
            print(f"bench: --topology netns cannot be made here: {reason}", file=sys.stderr)
            sys.exit(2)
        print(f"bench: topology loopback: {reason}", file=sys.stderr)
        return None, reason
    return topology.plan(os.getpid(), args.load_hosts, options.cpus(args.server_cpus),
                         options.cpus(args.client_cpus)), None


def check_start_at(release: Path, load_hosts: int) -> None:
    """Several load hosts need loadgen --start-at to measure the same window."""
    if load_hosts < 2:
        return
    done = subprocess.run([str(release / "loadgen"), "--help"], capture_output=True, text=True)
    if "--start-at" not in done.stdout:
        print("bench: --load-hosts needs loadgen --start-at (to start every host's load at one "
              "instant), which this loadgen does not have: build a newer one", file=sys.stderr)
        sys.exit(2)


def interrupt_on(*signums) -> None:
    """SIGINT (set here too: a background job inherits it ignored), SIGTERM and
    SIGHUP end the run as Ctrl-C does: results written,
    namespaces removed (the finally clauses run)."""
    def handler(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")
    for s in signums:
        signal.signal(s, handler)
