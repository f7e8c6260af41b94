"""Tests of scripts/bench.py's own path from arguments to outputs, with the
processes replaced by a stand-in (the CI smoke run runs them for real):
python3 -m unittest discover -s scripts/benchkit"""

import contextlib
import json
import os
import sys
import tempfile
import unittest
from pathlib import Path
from unittest import mock

sys.dont_write_bytecode = True
SCRIPTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(SCRIPTS))

from benchkit import options, procs, scripts_module, topology  # noqa: E402


def load_bench():
    return scripts_module.load("bench")


def fake_execute(env, run, **_kw):
    """Fills a run as procs.execute would after a clean loadgen run (an
    epoll run at 10,000 connections fails)."""
    run.commands.update(server=f"server {run.backend}", client="loadgen")
    if env.dry_run:
        run.status, run.reason = "skipped", "dry run"
        return run
    if run.backend == "epoll" and run.cell.conns == 10_000:
        run.status, run.reason = "failed", "client exit 1: loadgen: FAILED: 3 mismatches"
        return run
    rate = {"uring": 120_000.0, "epoll": 80_000.0}.get(run.backend, 90_000.0)
    run.metrics.update(msgs_per_s=rate * (1 + run.rep / 10), server_cpu_ns_per_msg=1e9 / rate,
                       p50_us=50, p99_us=400, p999_us=900)
    return run


@contextlib.contextmanager
def stubbed_bench():
    """bench.py with the build and the processes stubbed, and a scratch --out."""
    bench = load_bench()
    with tempfile.TemporaryDirectory() as d, \
            mock.patch.object(procs, "execute", fake_execute), \
            mock.patch.object(bench, "build", lambda *_: None):
        yield bench, d


class Script(unittest.TestCase):
    def test_a_quick_run_goes_from_arguments_to_results_json(self):
        with stubbed_bench() as (bench, d):
            rc = bench.main(["--quick", "--no-build", "--topology", "loopback", "--out", d])
            self.assertEqual(rc, 0)
            res = json.loads((Path(d) / "results.json").read_text())
            cells = {(m["cell"]["conns"], m["backend"]) for m in res["medians"]}
            self.assertEqual(cells, {(c, b) for c in (100, 1000) for b in ("uring", "epoll")})
            self.assertIn("| 1,000 | 120.0k", (Path(d) / "results.md").read_text())

    def test_from_results_writes_the_same_tables_again_and_knees_for_a_new_bound(self):
        with stubbed_bench() as (bench, d):
            argv = ["--quick", "--no-build", "--topology", "loopback", "--sweep", "--sweep-steps",
                    "3", "--sweep-cells", "1000x64", "--out", d]
            self.assertEqual(bench.main(argv), 0)
            first = (Path(d) / "results.md").read_text()
            self.assertIn("Knee: the highest achieved rate at which p99 stayed under 1000 µs", first)
            (Path(d) / "results.md").unlink()
            self.assertEqual(bench.main(["--from-results", d]), 0)
            self.assertEqual((Path(d) / "results.md").read_text(), first)
            self.assertEqual(bench.main(["--from-results", d, "--p99-bound-us", "300"]), 0)
            again = json.loads((Path(d) / "results.json").read_text())
            self.assertEqual({k["bound_us"] for k in again["sweeps"][0]["knees"].values()}, {300.0})

    def test_a_failed_run_exits_1_with_the_results_written(self):
        with stubbed_bench() as (bench, d):
            argv = ["--quick", "--no-build", "--topology", "loopback", "--conns", "100,10000",
                    "--out", d]
            self.assertEqual(bench.main(argv), 1)
            md = (Path(d) / "results.md").read_text()
            self.assertIn("## Failed runs", md)
            self.assertIn("3 mismatches", md)
            self.assertIn("run(s) failed", (Path(d) / "bench.log").read_text())

    def test_the_target_directory_is_asked_of_cargo(self):
        bench = load_bench()
        with tempfile.TemporaryDirectory() as d, \
                mock.patch.dict(os.environ, {"CARGO_TARGET_DIR": d}):
            self.assertEqual(bench.target_dir(), Path(d))


class TopologyChoice(unittest.TestCase):
    def args(self, *argv):
        return options.parse_args(["--quick", *argv], "doc")

    def test_without_a_flag_netns_is_chosen_where_it_can_be_made(self):
        bench = load_bench()
        with mock.patch.object(topology, "unavailable_reason", lambda: None):
            plan, why = bench.choose_topology(self.args())
        self.assertEqual(plan.namespaces, [f"ue-{os.getpid()}-srv", f"ue-{os.getpid()}-c0"])
        self.assertIsNone(why)

    def test_without_root_it_falls_back_to_loopback_saying_why(self):
        bench = load_bench()
        with mock.patch.object(topology, "unavailable_reason", lambda: "needs root"):
            self.assertEqual(bench.choose_topology(self.args()), (None, "needs root"))
            with self.assertRaises(SystemExit) as e:
                bench.choose_topology(self.args("--topology", "netns"))
            self.assertEqual(e.exception.code, 2)
            with self.assertRaises(SystemExit):
                bench.choose_topology(self.args("--load-hosts", "2"))

    def test_several_load_hosts_on_loopback_are_refused(self):
        with self.assertRaises(SystemExit), mock.patch("sys.stderr"):
            self.args("--topology", "loopback", "--load-hosts", "2")


if __name__ == "__main__":
    unittest.main()
