"""The outputs: results.json for programs, results.md for people, and the
results section of docs/benchmarks.md between its markers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

from .chart import size_label
from .model import CHURN, MODES, Cell, churn_ratio, find



def markers(topology: str) -> tuple:
    """The lines that bound a topology's results in docs/benchmarks.md."""
    return f"<!-- bench:begin {topology} -->", f"<!-- bench:end {topology} -->"


def k(v: Optional[float]) -> str:
    """312400 -> 312.4k; None -> '-'."""
    if v is None:
        return "-"
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.0f}"


def n(v: Optional[float], digits: int = 0) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def results_json(meta: dict, runs: list, summaries: list, targets: list,
                 sweeps: list = ()) -> dict:
    return {
        "schema": 1,
        **meta,
        # Histograms are in runs/*.json; here they would only make the file large.
        "runs": [r.to_json(with_histograms=False) for r in runs],
        "medians": [s.to_json() for s in summaries],
        "targets": [t.to_json() for t in targets],
        "sweeps": [{**{k: v for k, v in sw.items() if k not in ("points", "knees")},
                    "points": [p.to_json() for p in sw["points"]],
                    "knees": {b: k.to_json() for b, k in sw["knees"].items()}}
                   for sw in sweeps],
    }


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n")


def header(meta: dict) -> list:
    m, g, o = meta["machine"], meta["git"], meta["options"]
    lines = []
    if o.get("quick"):
        lines += ["**Smoke run (`--quick`) on a busy, shared machine: it checks that the "
                  "script works; these are not the published results.**", ""]
    lines += [
        f"- Topology: {topology_line(meta)}",
        f"- Machine: {m['cpu_model']}, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"Linux {m['kernel']}; open files {m['nofile']['hard']}; "
        f"netdev_max_backlog {m['sysctl'].get('net.core.netdev_max_backlog')}",
        f"- Commit: `{g['commit'][:12]}`{' (dirty tree)' if g['dirty'] else ''} "
        f"on `{g['branch']}`; run {meta['date']}",
        f"- Server on CPUs `{o['server_cpus']}` with {o['workers']} worker(s) (more for the "
        f"io_uring backend where its rings need them); loadgen on CPUs `{o['client_cpus']}`"
        f"{', ' + str(o['loadgen_threads']) + ' threads' if o['loadgen_threads'] else ''}",
        f"- Each run: fresh server, {o['warmup']:g} s warm-up + {o['duration']:g} s measured; "
        f"{o['reps']} interleaved repetition(s), medians shown",
    ]
    for spec in o.get("variants") or []:
        name, _, rest = spec.partition("=")
        lines.append(f"- Variant `{name}`: `uring-echo --backend {rest}`, measured as a server "
                     "of its own, interleaved with the others")
    la = meta.get("load_average")
    if la and la.get("end"):
        lines.append(f"- Load average (1/5/15 min) at the start {' / '.join(map(str, la['start']))}, "
                     f"at the end {' / '.join(map(str, la['end']))}: above the core count, other "
                     "processes were taking CPU from the run; compare backends within a table")
    return lines


def topology_line(meta: dict) -> str:
    """One line naming where the server and loadgen ran."""
    t = meta.get("topology") or {"kind": "loopback", "why": None}
    if t["kind"] == "loopback":
        why = f" ({t['why']})" if t.get("why") else ""
        return f"**loopback**: server and loadgen on 127.0.0.1 in one network namespace{why}"
    hosts = t["load_hosts"]
    return (f"**netns**: server in its own network namespace, {len(hosts)} load host"
            f"{'s' if len(hosts) > 1 else ''} each in its own, joined by veth pairs "
            f"({hosts[0]['server_addr']} ← {', '.join(h['client_addrs'][0] for h in hosts)}); "
            f"RPS steers the server's receive processing to CPUs {t['server_cpus']} and "
            f"each load host's to its own ({', '.join(h['cpus'] for h in hosts)})")


def matrix_tables(meta: dict, summaries: list, charts: dict, h: str) -> list:
    """One table per (size, mode): rows connections, columns backends, each
    followed by its chart when `charts` (size, mode) -> path has one."""
    o = meta["options"]
    backends, conns = o["backends"], o["conns"]
    lines = []
    skipped = {}
    for size in o["sizes"]:
        for mode in (m for m in o["modes"] if m != CHURN):
            pipeline = MODES[mode]
            title = ("closed loop (pipeline 1)" if mode == "closed"
                     else f"pipelined (pipeline {pipeline})")
            lines += [f"{h}## {size_label(size)}, {title}", "",
                      "msgs/s median · server CPU ns per message: the busy time of the "
                      "server's CPUs, its process and the receive processing that runs "
                      "there, each tick counted once († a run saw drops, RTOs or "
                      "accept-queue overflows; ✗ a run failed)", "",
                      "| conns | " + " | ".join(backends) + " |",
                      "|---:|" + "---:|" * len(backends)]
            for c in conns:
                cells = []
                for b in backends:
                    s = find(summaries, "matrix", Cell(c, size, pipeline), b)
                    if s is None:
                        cells.append("")
                    elif s.skipped:
                        note = skipped.setdefault(s.skipped, len(skipped) + 1)
                        cells.append(f"skipped[^{note}]")
                    elif not s.runs:
                        cells.append("✗ failed")
                    else:
                        cpu = s.median("server_total_ns_per_msg") or s.median("server_cpu_ns_per_msg")
                        txt = f"{k(s.median('msgs_per_s'))} · {n(cpu)} ns"
                        if s.workers != o["workers"]:
                            txt += f" ({s.workers} workers)"
                        txt += " †" * bool(s.suspect) + " ✗" * bool(s.failed)
                        cells.append(txt)
                lines.append(f"| {c:,} | " + " | ".join(cells) + " |")
            lines.append("")
            if charts.get((size, mode)):
                lines += [f"![{size_label(size)}, {mode}: throughput and server CPU per message "
                          f"against connections, {meta['options'].get('topology', 'loopback')}]"
                          f"({charts[(size, mode)]})", ""]
    for reason, i in skipped.items():
        lines.append(f"[^{i}]: {reason}")
    if skipped:
        lines.append("")
    return lines


def churn_tables(meta: dict, summaries: list, charts: dict, h: str) -> list:
    """Per churn cell (connections open at once x size): one row per
    (messages per connection, backend), with uring's connections per second
    over each backend's (the issue's target: >= 1.5 over epoll at N = 1,
    above 1 over tokio and monoio), then the cell's chart."""
    o = meta["options"]
    if CHURN not in o["modes"] or not o.get("churn_cells"):
        return []
    lines = []
    for conns, size in o["churn_cells"]:
        lines += [f"{h}## Connection churn: {conns:,} connections open at once × "
                  f"{size_label(size)}, closed loop", "",
                  "Each connection sends N messages, one in flight, checks the echoes and is "
                  "closed by loadgen, which opens the next at once (`loadgen "
                  "--messages-per-conn N`; N = 1 is neper's `tcp_crr`). Medians; conns/s "
                  "[min–max]; *uring ÷*: uring's conns/s over this backend's; server CPU per "
                  "connection: the busy time of its CPUs (in brackets, its process's "
                  "share); CPUs busy: the share of the server's and of loadgen's CPU "
                  "time in use, the side near 100 % is the limit; "
                  "transaction: from connect start to last echo (loadgen's "
                  "`transaction_us`); † a run saw drops, RTOs or accept-queue overflows; "
                  "✗ a run failed.", "",
                  "| N | backend | conns/s | uring ÷ | server ns/conn (process) | "
                  "CPUs busy server · loadgen | "
                  "transaction p50 / p99 / p99.9 µs | connect p99 µs | loadgen ns/conn | runs |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for per_conn in o["churn"]:
            cell = Cell(conns, size, 1, per_conn=per_conn)
            for b in o["backends"]:
                s = find(summaries, "matrix", cell, b)
                if s is None:
                    continue
                if s.skipped or not s.runs:
                    lines.append(f"| {per_conn:,} | {b} | {'skipped: ' + s.skipped if s.skipped else '✗ failed'} "
                                 "| | | | | | | 0 |")
                    continue
                st = s.stats.get("conns_per_s")
                rng = f"{k(st['median'])} [{k(st['min'])}–{k(st['max'])}]" if st else "-"
                ratio = churn_ratio(summaries, "matrix", cell, "uring", b)
                lat = " / ".join(n(s.median(key)) for key in ("txn_p50_us", "txn_p99_us",
                                                               "txn_p999_us"))
                lines.append(
                    f"| {per_conn:,} | {b} | {rng} | {'-' if ratio is None else f'{ratio:.2f}×'} | "
                    f"{n(s.median('server_total_ns_per_conn'))} "
                    f"({n(s.median('server_cpu_ns_per_conn'))}) | {_busy(s)} | {lat} | "
                    f"{n(s.median('connect_p99_us'))} | {n(s.median('loadgen_cpu_ns_per_conn'))} | "
                    f"{s.runs}{' †' * bool(s.suspect)}{' ✗' * bool(s.failed)} |")
        lines.append("")
        name = charts.get(("churn", conns, size))
        if name:
            lines += [f"![connection churn, {conns:,} connections × {size_label(size)}: "
                      f"connections per second, server CPU per connection and transaction p99 "
                      f"against messages per connection, {o.get('topology', 'loopback')}]"
                      f"({name})", ""]
    return lines


def _busy(s) -> str:
    """The medians of how busy the server's and the client's CPUs were."""
    def pct(key):
        v = s.median(key)
        return "-" if v is None else f"{v * 100:.0f} %"
    return f"{pct('server_busy_frac')} · {pct('client_busy_frac')}"


def detail_table(summaries: list, phase: str, h: str, title: str) -> list:
    rows = [s for s in summaries if s.phase.startswith(phase) and not s.skipped]
    if not rows:
        return []
    lines = [f"{h}## {title}", "",
             "| phase | cell | backend | workers | runs | msgs/s median [min–max] | server ns/msg "
             "(process) | CPUs busy server · client | latency p50 / p99 / p99.9 µs | "
             "server B/conn | client ns/msg "
             "| IPIs/msg server · client | flagged / suspect | failed |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in rows:
        st = s.stats.get("msgs_per_s")
        rng = f"{k(st['median'])} [{k(st['min'])}–{k(st['max'])}]" if st else "-"
        lines.append(
            f"| {s.phase} | {s.cell.name} | {s.backend} | {s.workers} | {s.runs} | {rng} | "
            f"{n(s.median('server_total_ns_per_msg'))} ({n(s.median('server_cpu_ns_per_msg'))}) | "
            f"{_busy(s)} | "
            f"{n(s.median('p50_us'))} / "
            f"{n(s.median('p99_us'))} / {n(s.median('p999_us'))} | "
            f"{n(s.median('mem_per_conn_b'))} | {n(s.median('loadgen_cpu_ns_per_msg'))} | "
            f"{_ipis(s.median('server_ipis_per_msg'))} · {_ipis(s.median('client_ipis_per_msg'))} | "
            f"{s.flagged} / {s.suspect} | {s.failed} |")
    return lines + [""]


def _ipis(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def targets_table(targets: list, h: str) -> list:
    if not targets:
        return []
    lines = [f"{h}## Targets", "",
             "| target | measured (medians) | required | met |",
             "|---|---|---|---|"]
    for t in targets:
        unjudged = "not judged" if t.value is not None else "not measured"
        met = {True: "**met**", False: "**not met**", None: unjudged}[t.met]
        note = f" ({t.note})" if t.note else ""
        lines.append(f"| {t.id}. {t.goal} | {t.measured} | {t.required} | {met}{note} |")
    lines.append("")
    cmds = [(t.id, role, c) for t in targets for role, c in t.commands]
    if cmds:
        lines += ["Commands (first repetition; ports are picked at random each run):", "", "```"]
        for tid, role, c in cmds:
            lines += [f"# target {tid}, {role}", c]
        lines += ["```", ""]
    return lines


def commands_section(runs: list, h: str) -> list:
    seen, out = set(), []
    for r in runs:
        if r.phase != "matrix" or not r.commands or r.backend in seen:
            continue
        seen.add(r.backend)
        out += [f"# {r.backend}, {r.cell.name}", r.commands.get("server", ""),
                r.commands.get("client", "")]
    if not out:
        return []
    return [f"{h}## Commands", "",
            "One cell per backend, as run (every run's commands are in results.json):", "",
            "```", *out, "```", ""]


def failures(runs: list, h: str) -> list:
    bad = [r for r in runs if r.status == "failed"]
    flagged = [r for r in runs if r.status == "ok" and r.suspect]
    mild = sum(1 for r in runs if r.status == "ok" and r.flags and not r.suspect)
    lines = []
    if bad:
        lines += [f"{h}## Failed runs", ""]
        lines += [f"- {r.file_stem}: {r.reason}" for r in bad]
        lines.append("")
    if flagged or mild:
        lines += [f"{h}## Suspect runs", "",
                  "Backlog drops (netdev_max_backlog: loopback, or RPS off a veth), RTOs or "
                  "accept-queue overflows during the run (system-wide "
                  "counters: a neighbour's traffic counts too). They stay in the medians, marked †."
                  f" {mild} other run(s) saw only retransmits, mostly tail loss probes "
                  "(in results.json).", ""]
        lines += [f"- {r.file_stem}: {'; '.join(r.flags)}" for r in flagged]
        lines.append("")
    return lines


def sweep_tables(sweeps: list, charts: dict, meta: dict, h: str) -> list:
    """Per swept cell: each backend's knee, then the points."""
    lines = []
    for sw in sweeps:
        conns, size, bound = sw["conns"], sw["size"], sw["bound_us"]
        lines += [f"{h}## Latency against load: {conns:,} connections × {size_label(size)}, "
                  "open loop", "",
                  f"Knee: the highest achieved rate at which p99 stayed under {bound:g} µs, "
                  "with every lower rate of the grid under it too (`--p99-bound-us`). "
                  "Closed-loop maximum: the backend's msgs/s at the same cell in the closed loop.",
                  "", "| backend | knee | closed-loop maximum |", "|---|---|---:|"]
        for b in sw["backends"]:
            knee = sw["knees"].get(b)
            lines.append(f"| {b} | {knee.describe() if knee else 'not measured'} | "
                         f"{n(sw['maxima'].get(b))} |")
        lines += ["", "Achieved msgs/s · latency p50 / p99 / p99.9 µs (medians; "
                  "*saturated*: every run ended with messages never echoed):", "",
                  "| asked msgs/s | " + " | ".join(sw["backends"]) + " |",
                  "|---:|" + "---:|" * len(sw["backends"])]
        for rate in sw["grid"]:
            cells = []
            for b in sw["backends"]:
                p = next((p for p in sw["points"] if p.backend == b and p.asked == rate), None)
                if p is None:
                    cells.append("-")
                elif p.saturated:
                    cells.append("*saturated*")
                else:
                    lat = " / ".join(n(p.latency[key]["median"]) if key in p.latency else "-"
                                     for key in ("p50_us", "p99_us", "p999_us"))
                    cells.append(f"{k(p.achieved['median'])} · {lat}")
            lines.append(f"| {rate:,.0f} | " + " | ".join(cells) + " |")
        lines.append("")
        name = charts.get(("sweep", conns, size))
        if name:
            lines += [f"![latency percentiles against achieved rate, {conns:,} connections × "
                      f"{size_label(size)}, {meta['options'].get('topology', 'loopback')}]"
                      f"({name})", ""]
    return lines


def markdown(meta: dict, runs: list, summaries: list, targets: list, charts: dict,
             sweeps: list = (), level: int = 1) -> str:
    """The report; `level` is the heading level of its title (1 in results.md,
    deeper inside docs/benchmarks.md)."""
    h = "#" * (level - 1)
    lines = [f"{h}# uring-echo benchmark results", ""] + header(meta) + [""]
    if meta["options"].get("matrix"):
        lines += matrix_tables(meta, summaries, charts, h)
        lines += churn_tables(meta, summaries, charts, h)
    lines += sweep_tables(sweeps, charts, meta, h)
    lines += targets_table(targets, h)
    lines += detail_table(summaries, "matrix", h, "All medians")
    lines += detail_table(summaries, "sweep", h, "Sweep runs: medians")
    lines += detail_table(summaries, "t", h, "Target runs: medians")
    lines += commands_section(runs, h)
    lines += failures(runs, h)
    return "\n".join(lines).rstrip() + "\n"


def update_doc(doc: Path, section: str, topology: str) -> None:
    """Replaces what lies between `topology`'s markers in `doc` with `section`."""
    begin, end = markers(topology)
    text = doc.read_text()
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{doc}: no {begin} ... {end} section to update")
    doc.write_text(pattern.sub(lambda _: f"{begin}\n{section}\n{end}", text, count=1))
