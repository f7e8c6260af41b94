"""Checks what a `scripts/bench.py --quick` run wrote, for CI: the topology
asked for was the one used, every backend of every cell has a throughput,
no run failed, the tables and charts exist, every churn cell (when asked
for) has its connections per second and its chart, and a sweep (when run)
has its points and knees. Exit 0 when all hold; 1 naming each that does not.

Usage: python3 scripts/benchkit/check_smoke.py OUT_DIR TOPOLOGY [LOAD_HOSTS]
Reads only: the measuring is bench.py's.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path


def problems(out: Path, topology: str, load_hosts: int) -> list:
    res_path = out / "results.json"
    if not res_path.exists():
        return [f"{res_path} was not written"]
    res = json.loads(res_path.read_text())
    bad = []
    topo = res.get("topology", {})
    if topo.get("kind") != topology:
        bad.append(f"topology {topo.get('kind')!r}, asked for {topology!r}")
    if topology == "netns" and len(topo.get("load_hosts", [])) != load_hosts:
        bad.append(f"{len(topo.get('load_hosts', []))} load hosts, asked for {load_hosts}")
    o = res["options"]
    if o["matrix"]:
        have = {(m["cell"]["conns"], m["cell"]["size"], m["backend"]): m for m in res["medians"]
                if m["phase"] == "matrix" and m["cell"]["mode"] != "churn"}
        for conns in o["conns"]:
            for size in o["sizes"]:
                for b in o["backends"]:
                    m = have.get((conns, size, b))
                    rate = (m or {}).get("stats", {}).get("msgs_per_s", {}).get("median")
                    if not rate or rate <= 0:
                        bad.append(f"no throughput for {b} at {conns} conns x {size} B")
        bad += churn_problems(out, res)
    failed = [r for r in res["runs"] if r["status"] == "failed"]
    bad += [f"run {r['phase']} {r['cell']['name']} {r['backend']} failed: {r['reason']}"
            for r in failed]
    if load_hosts > 1:
        for r in res["runs"]:
            if r["status"] == "ok" and (r.get("client") or {}).get("hosts") != load_hosts:
                bad.append(f"run {r['cell']['name']} {r['backend']}: merged "
                           f"{(r.get('client') or {}).get('hosts')} hosts, not {load_hosts}")
    if not (out / "results.md").exists():
        bad.append("results.md was not written")
    charts = importlib.util.find_spec("matplotlib") is not None
    if charts and o["matrix"] and not (out / "chart.png").exists():
        bad.append("chart.png was not drawn (matplotlib is installed)")
    for sw in res.get("sweeps", []):
        name = f"{sw['conns']} conns x {sw['size']} B"
        if len(sw["points"]) < len(sw["backends"]) * len(sw["grid"]):
            bad.append(f"sweep {name}: {len(sw['points'])} points, expected "
                       f"{len(sw['backends']) * len(sw['grid'])}")
        if set(sw["knees"]) != set(sw["backends"]):
            bad.append(f"sweep {name}: knees for {sorted(sw['knees'])}, not {sw['backends']}")
        if charts and not (out / f"sweep-{sw['conns']}-{sw['size']}.png").exists():
            bad.append(f"sweep {name}: no chart")
    if o.get("sweep") and not res.get("sweeps"):
        bad.append("--sweep was asked for and no sweep was recorded")
    return bad


def churn_problems(out: Path, res: dict) -> list:
    """Every churn cell x messages per connection x backend has a
    connections-per-second median and completed connections; each churn
    cell has its chart where matplotlib is installed."""
    o, bad = res["options"], []
    if "churn" not in o["modes"]:
        return bad
    have = {(m["cell"]["conns"], m["cell"]["size"], m["cell"].get("per_conn"), m["backend"]): m
            for m in res["medians"] if m["phase"] == "matrix" and m["cell"]["mode"] == "churn"}
    for conns, size in o["churn_cells"]:
        for per_conn in o["churn"]:
            for b in o["backends"]:
                m = have.get((conns, size, per_conn, b))
                rate = (m or {}).get("stats", {}).get("conns_per_s", {}).get("median")
                if not rate or rate <= 0:
                    bad.append(f"no connections per second for {b} at churn {conns} conns x "
                               f"{size} B x {per_conn} message(s) per connection")
        if (importlib.util.find_spec("matplotlib") is not None
                and not (out / f"churn-{conns}-{size}.png").exists()):
            bad.append(f"churn {conns} conns x {size} B: no chart")
    return bad


def main(argv: list) -> int:
    if len(argv) not in (2, 3):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    out, topology = Path(argv[0]), argv[1]
    load_hosts = int(argv[2]) if len(argv) == 3 else 1
    bad = problems(out, topology, load_hosts)
    for b in bad:
        print(f"check_smoke: {out}: {b}", file=sys.stderr)
    if not bad:
        print(f"check_smoke: {out}: {topology} results complete")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
