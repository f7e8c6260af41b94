"""Unit tests of the churn cells (loadgen --messages-per-conn): their plan,
loadgen's flags, the per-connection figures, the table, the chart, the
reload and the smoke check: python3 -m unittest discover -s scripts/benchkit"""

import importlib.util
import json
import sys
import tempfile
import unittest
from pathlib import Path
from unittest import mock

sys.dont_write_bytecode = True
SCRIPTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(SCRIPTS))

from benchkit import (chart, check_smoke, clients, options, procs, reload, report,  # noqa: E402
                      scripts_module, topology)
from benchkit.env import Env  # noqa: E402
from benchkit.model import Cell, Run, churn_ratio, per_conn_metrics, summarise  # noqa: E402
from benchkit.plan import plan_matrix  # noqa: E402

N1 = Cell(100, 64, 1, per_conn=1)
N10 = Cell(100, 64, 1, per_conn=10)


def parse(*argv):
    return options.parse_args(list(argv), "doc\n\nmore")


def churn_runs(rates: dict, cell: Cell = N1) -> list:
    """Three runs per backend of `cell` at rates[backend] conns/s (x 0.9, 1, 1.2)."""
    runs = []
    for b, rate in rates.items():
        for rep, f in enumerate((0.9, 1.0, 1.2)):
            r = Run("matrix", cell, b, rep, 1)
            r.metrics.update(conns_per_s=rate * f, msgs_per_s=rate * f * cell.per_conn,
                             server_cpu_ns_per_conn=20_000.0, server_other_ns_per_conn=5_000.0,
                             server_total_ns_per_conn=25_000.0, server_busy_frac=0.8,
                             client_busy_frac=1.0,
                             txn_p50_us=100, txn_p99_us=400, txn_p999_us=900,
                             connect_p99_us=300, loadgen_cpu_ns_per_conn=30_000.0)
            runs.append(r)
    return runs


def loadgen_json(per_conn: int) -> dict:
    """A loadgen --json result of a clean churn run, as much as procs reads."""
    return {
        "throughput": {"msgs_per_s": 5000.0 * per_conn, "conns_per_s": 5000.0},
        "latency_us": {"p50": 40, "p99": 90, "p999": 200},
        "transaction_us": {"p50": 150, "p99": 700, "p999": 1500},
        "connect_us": {"p50": 60, "p99": 300},
        "errors": {}, "verify": {"mismatches": 0},
        "connections": {"established": 30_000, "lost": 0, "completed": 25_000},
        "messages": {"unfinished": 0},
        "cpu": {"ns_per_msg": 3000.0, "msgs": 30_000 * per_conn},
        "config": {"threads": 1, "messages_per_conn": per_conn},
    }


class Plan(unittest.TestCase):
    def test_churn_cells_follow_the_grid_with_each_n_and_are_named_by_it(self):
        args = parse("--modes", "closed,churn", "--conns", "1000", "--sizes", "64",
                     "--churn", "1,10", "--churn-cells", "100x64,1000x1024",
                     "--backends", "uring,epoll", "--reps", "2")
        plan = plan_matrix(args, 20_000, None)
        first_rep = [r.cell for r in plan if r.rep == 0][::2]
        self.assertEqual(first_rep, [Cell(1000, 64, 1), N1, N10, Cell(1000, 1024, 1, per_conn=1),
                                     Cell(1000, 1024, 1, per_conn=10)])
        self.assertEqual(len(plan), 2 * 5 * 2)
        self.assertEqual((N1.name, N1.mode, N10.name), ("c100-s64-p1-n1", "churn",
                                                         "c100-s64-p1-n10"))
        # Every backend runs first in some repetition of a churn cell.
        firsts = {next(r.backend for r in plan if r.rep == rep and r.cell == N1) for rep in (0, 1)}
        self.assertEqual(firsts, {"uring", "epoll"})

    def test_modes_churn_alone_plans_only_churn_cells(self):
        plan = plan_matrix(parse("--modes", "churn", "--reps", "1"), 20_000, None)
        self.assertEqual({r.cell for r in plan}, {N1, N10})
        self.assertEqual(len(plan), 2 * 5)

    def test_defaults_quick_and_a_churn_flag_without_churn_mode(self):
        full, quick = parse(), parse("--quick")
        self.assertEqual((full.churn, full.churn_cells), ([1, 10], [(100, 64)]))
        self.assertIn("churn", full.modes)
        self.assertEqual((quick.churn, quick.modes), ([1], ["closed", "churn"]))
        with mock.patch("sys.stderr"), self.assertRaises(SystemExit):
            parse("--modes", "closed", "--churn", "1")
        with mock.patch("sys.stderr"), self.assertRaises(SystemExit):
            parse("--churn", "0")


class Loadgen(unittest.TestCase):
    def env(self, hosts: int) -> Env:
        net = topology.plan(42, hosts, [0], [1]) if hosts else None
        return Env(repo=Path("."), bin_dir=Path("target/release"), runs_dir=Path("runs"),
                   server_cpus="0", client_cpus="1", loadgen_threads=None, duration=2.0,
                   warmup=0.5, nofile=20_000, log=print, net=net)

    def test_churn_asks_messages_per_conn_and_spreads_over_every_source_address(self):
        (argv,) = clients.plan(self.env(1), "loadgen", "9", N10, 2.0, "s").argvs
        argv = [str(a) for a in argv]
        self.assertEqual(argv[argv.index("--messages-per-conn") + 1], "10")
        addrs = argv[argv.index("--source-addrs") + 1].split(",")
        self.assertEqual(len(addrs), topology.CLIENT_ADDRS_PER_HOST)
        self.assertEqual(addrs[0], "198.18.0.2")
        # Long-lived cells keep today's flags: no churn, no spreading below 20,000.
        (plain,) = clients.plan(self.env(1), "loadgen", "9", Cell(100, 64, 1), 2.0, "s").argvs
        self.assertNotIn("--messages-per-conn", plain)
        self.assertNotIn("--source-addrs", plain)
        # Loopback: loadgen spreads over 127.0.0.1-16 itself.
        (lo,) = clients.plan(self.env(0), "loadgen", "9", N1, 2.0, "s").argvs
        self.assertNotIn("--source-addrs", lo)
        self.assertIn("--messages-per-conn", lo)

    def test_tw_reuse_is_set_inside_every_load_host_namespace_only(self):
        p = topology.plan(7, 2, [0], [1])
        reuse = [c for c in p.setup_commands() if "tcp_tw_reuse" in c[-1]]
        self.assertEqual([c[3] for c in reuse], ["ue-7-c0", "ue-7-c1"])
        self.assertTrue(all(c[:3] == ["ip", "netns", "exec"] for c in reuse))


class Figures(unittest.TestCase):
    def test_per_connection_costs_are_per_message_costs_times_n(self):
        got = per_conn_metrics({"server_cpu_ns_per_msg": 2000.0, "server_other_ns_per_msg": 500.0,
                                "server_total_ns_per_msg": 2500.0,
                                "loadgen_cpu_ns_per_msg": 3000.0}, 10)
        self.assertEqual(got, {"server_cpu_ns_per_conn": 20_000.0,
                               "server_other_ns_per_conn": 5_000.0,
                               "server_total_ns_per_conn": 25_000.0,
                               "loadgen_cpu_ns_per_conn": 30_000.0})

    def test_loadgen_churn_json_becomes_the_run_metrics(self):
        run = Run("matrix", N10, "uring", 0, 1)
        msgs = procs._client_metrics(run, "loadgen", json.dumps(loadgen_json(10)))
        self.assertEqual(msgs, 300_000)
        m = run.metrics
        self.assertEqual((m["conns_per_s"], m["completed"]), (5000.0, 25_000))
        self.assertEqual((m["txn_p50_us"], m["txn_p99_us"], m["txn_p999_us"]), (150, 700, 1500))
        self.assertEqual((m["connect_p50_us"], m["connect_p99_us"]), (60, 300))

    def test_ratio_is_of_medians_and_none_where_a_backend_is_missing(self):
        s = summarise(churn_runs({"uring": 15_000.0, "epoll": 10_000.0}))
        self.assertAlmostEqual(churn_ratio(s, "matrix", N1, "uring", "epoll"), 1.5)
        self.assertIsNone(churn_ratio(s, "matrix", N1, "uring", "tokio"))
        self.assertIsNone(churn_ratio(s, "matrix", N10, "uring", "epoll"))


def meta(backends: list) -> dict:
    return {"machine": {"cpu_model": "cpu", "cores": 2, "memory_gib": 1, "kernel": "6",
                        "nofile": {"hard": 1}, "sysctl": {}},
            "git": {"commit": "abc", "dirty": False, "branch": "b"}, "date": "d",
            "options": {"server_cpus": "0", "client_cpus": "1", "workers": 1,
                        "loadgen_threads": None, "warmup": 1, "duration": 2, "reps": 3,
                        "matrix": True, "backends": backends, "conns": [], "sizes": [],
                        "modes": ["churn"], "churn": [1, 10], "churn_cells": [[100, 64]]},
            "topology": {"kind": "loopback", "why": "asked for"}}


class Outputs(unittest.TestCase):
    def test_churn_table_shows_conns_per_second_and_uring_over_each_backend(self):
        runs = churn_runs({"uring": 15_000.0, "epoll": 10_000.0, "tokio": 12_000.0})
        runs += churn_runs({"uring": 3_000.0, "epoll": 2_500.0, "tokio": 2_400.0}, N10)
        md = report.markdown(meta(["uring", "epoll", "tokio"]), runs, summarise(runs), [],
                             {("churn", 100, 64): "churn-100-64.png"})
        self.assertIn("## Connection churn: 100 connections open at once × 64 B", md)
        self.assertIn("| 1 | uring | 15.0k [13.5k–18.0k] | 1.00× | 25,000 (20,000) | "
                      "80 % · 100 % | 100 / 400 / 900 | 300 | 30,000 | 3 |", md)
        self.assertIn("| 1 | epoll | 10.0k [9.0k–12.0k] | 1.50× |", md)
        self.assertIn("| 1 | tokio | 12.0k [10.8k–14.4k] | 1.25× |", md)
        self.assertIn("| 10 | tokio | 2.4k [2.2k–2.9k] | 1.25× |", md)
        self.assertIn("(churn-100-64.png)", md)
        # No churn tables when churn was not measured.
        m = meta(["uring"])
        m["options"]["modes"] = ["closed"]
        self.assertNotIn("Connection churn", report.markdown(m, [], [], [], {}))

    def test_churn_chart_is_a_png_or_skipped_without_matplotlib(self):
        if chart.unavailable():
            self.skipTest(chart.unavailable())
        runs = churn_runs({"uring": 15_000.0, "epoll": 10_000.0})
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "churn.png"
            self.assertTrue(chart.churn(path, summarise(runs), 100, 64, [1, 10],
                                        ["uring", "epoll"], "caption"))
            self.assertEqual(path.read_bytes()[:8], b"\x89PNG\r\n\x1a\n")
            self.assertFalse(chart.churn(Path(d) / "none.png", [], 100, 64, [1], ["uring"], "x"))

    def test_a_reloaded_churn_run_keeps_its_messages_per_connection(self):
        (run,) = churn_runs({"uring": 1.0}, N10)[:1]
        back = reload.run_from_json(json.loads(json.dumps(run.to_json())))
        self.assertEqual(back.cell, N10)
        self.assertEqual(back.metrics["conns_per_s"], run.metrics["conns_per_s"])

    def test_churn_alone_updates_its_own_doc_section(self):
        bench = scripts_module.load("bench")
        self.assertEqual(bench.doc_key_suffix(parse("--modes", "churn")), "-churn")
        self.assertEqual(bench.doc_key_suffix(parse("--modes", "closed,churn")), "")
        self.assertEqual(bench.doc_key_suffix(parse("--modes", "churn", "--targets")), "")
        self.assertEqual(bench.doc_key_suffix(parse("--only-sweep")), "-sweep")

    def test_smoke_check_names_a_churn_cell_without_conns_per_second(self):
        runs = churn_runs({"uring": 15_000.0, "epoll": 10_000.0})
        res = {"options": meta(["uring", "epoll"])["options"],
               "medians": [s.to_json() for s in summarise(runs)]}
        with tempfile.TemporaryDirectory() as d, \
                mock.patch.object(importlib.util, "find_spec", lambda _name: None):
            bad = check_smoke.churn_problems(Path(d), res)
        self.assertEqual(bad, [
            f"no connections per second for {b} at churn 100 conns x 64 B x 10 message(s) "
            "per connection" for b in ("uring", "epoll")])


if __name__ == "__main__":
    unittest.main()
