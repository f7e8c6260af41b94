#!/usr/bin/env python3
"""Checks that Cargo.toml's `rust-version` is at least the `rust-version` every
locked dependency declares, over the dependency graph actually built here:
this package's normal, dev and build dependencies, their normal and build
dependencies, and so on, for the host platform (`cargo metadata
--filter-platform`). A dependency's dev-dependencies are never built, so they
do not count.

No older toolchain can be installed on CI to try the declared minimum, so this
is how CI keeps the README's and Cargo.toml's MSRV honest. It prints the true
minimum, and fails naming every dependency that needs more than what is
declared. It does not check that the code itself builds on that version.

Usage: scripts/check-msrv.py [--manifest-path Cargo.toml]
"""

import argparse
import json
import subprocess
import sys


def parse_version(text):
    """'1.85' or '1.71.1' -> (1, 85, 0) / (1, 71, 1), for comparison."""
    parts = [int(p) for p in text.strip().split(".")]
    if not 1 <= len(parts) <= 3:
        raise ValueError(f"not a Rust version: {text!r}")
    return tuple(parts + [0] * (3 - len(parts)))


def show(version):
    """(1, 88, 0) -> '1.88', the way Cargo.toml spells it."""
    major, minor, patch = version
    return f"{major}.{minor}" + (f".{patch}" if patch else "")


def host_triple():
    out = subprocess.run(
        ["rustc", "-vV"], check=True, capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        if line.startswith("host: "):
            return line.split(": ", 1)[1].strip()
    raise SystemExit("check-msrv: `rustc -vV` printed no host triple")


def built_packages(metadata):
    """Ids of the packages built for the root package, root excluded."""
    root = metadata["resolve"]["root"]
    if root is None:
        raise SystemExit("check-msrv: not a single package (no resolve root)")
    nodes = {n["id"]: n for n in metadata["resolve"]["nodes"]}
    seen = set()
    stack = [(root, True)]
    while stack:
        pkg_id, is_root = stack.pop()
        for dep in nodes[pkg_id]["deps"]:
            kinds = {k["kind"] for k in dep["dep_kinds"]}
            # Kind None is a normal dependency; "dev" counts only for the root.
            wanted = kinds & ({None, "build", "dev"} if is_root else {None, "build"})
            if wanted and dep["pkg"] not in seen:
                seen.add(dep["pkg"])
                stack.append((dep["pkg"], False))
    return seen


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest-path", default="Cargo.toml")
    args = ap.parse_args()
    metadata = json.loads(
        subprocess.run(
            [
                "cargo", "metadata", "--format-version", "1", "--locked",
                "--manifest-path", args.manifest_path,
                "--filter-platform", host_triple(),
            ],
            check=True, capture_output=True, text=True,
        ).stdout
    )
    packages = {p["id"]: p for p in metadata["packages"]}
    root = packages[metadata["resolve"]["root"]]
    if not root.get("rust_version"):
        print(f"check-msrv: {args.manifest_path} declares no rust-version", file=sys.stderr)
        return 1
    declared = parse_version(root["rust_version"])

    needs = []
    for pkg_id in built_packages(metadata):
        pkg = packages[pkg_id]
        if pkg.get("rust_version"):
            needs.append((parse_version(pkg["rust_version"]), pkg["name"], pkg["version"]))
    needs.sort(reverse=True)
    true_minimum = max([declared] + [v for v, _, _ in needs])
    highest = max((v for v, _, _ in needs), default=None)

    offenders = [(v, n, ver) for v, n, ver in needs if v > declared]
    if offenders:
        print(
            f"check-msrv: {root['name']} declares rust-version {show(declared)}, "
            f"but {len(offenders)} locked dependenc{'y' if len(offenders) == 1 else 'ies'} "
            f"declare more:",
            file=sys.stderr,
        )
        for v, name, ver in offenders:
            print(f"  {name} {ver} needs Rust {show(v)}", file=sys.stderr)
        print(
            f"check-msrv: set rust-version = \"{show(true_minimum)}\" in Cargo.toml "
            "and the README's toolchain line",
            file=sys.stderr,
        )
        return 1
    top = ", ".join(f"{n} {ver} ({show(v)})" for v, n, ver in needs if v == highest)
    print(
        f"check-msrv: rust-version {show(declared)} covers all {len(needs)} built "
        f"dependencies that declare one; the highest: {top or 'none'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
