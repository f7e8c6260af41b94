"""Unit tests of benchkit's pure logic: python3 -m unittest discover -s scripts/benchkit"""

import sys
import tempfile
import unittest
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchkit import chart, host, report  # noqa: E402
from benchkit.model import (  # noqa: E402
    BACKENDS, Cell, Run, rotated, server_workers, skip_reason, summarise)


class Model(unittest.TestCase):
    def test_rotation_puts_every_backend_first_once_per_cycle(self):
        names = list(BACKENDS)
        firsts = {rotated(names, i)[0] for i in range(len(names))}
        self.assertEqual(firsts, set(names))
        self.assertEqual(sorted(rotated(names, 7)), sorted(names))

    def test_uring_gets_a_ring_per_nofile_of_connections(self):
        uring = BACKENDS["uring"]
        self.assertEqual(server_workers(uring, 10_000, 1, 20_000), 1)
        self.assertEqual(server_workers(uring, 50_000, 1, 20_000), 3)
        self.assertEqual(server_workers(uring, 100_000, 1, 20_000), 6)
        self.assertEqual(server_workers(uring, 50_000, 8, 20_000), 8)
        self.assertEqual(server_workers(BACKENDS["epoll"], 50_000, 1, 20_000), 1)

    def test_fd_backends_skip_what_the_open_files_limit_cannot_hold(self):
        self.assertIsNone(skip_reason(BACKENDS["epoll"], Cell(10_000, 64, 1), 20_000))
        why = skip_reason(BACKENDS["tokio"], Cell(50_000, 64, 1), 20_000)
        self.assertIn("RLIMIT_NOFILE", why)
        self.assertIsNone(skip_reason(BACKENDS["uring"], Cell(50_000, 64, 1), 20_000))

    def test_cells_beyond_half_the_tcp_memory_limit_are_skipped_for_every_backend(self):
        tcp_mem = 575_802 * 4096  # this development machine's: 2.2 GiB
        for name in BACKENDS:
            b = BACKENDS[name]
            why = skip_reason(b, Cell(10_000, 16_384, 16), 1 << 20, tcp_mem)
            self.assertIn("tcp_mem", why)
            self.assertIn("2.4 GiB", why)
            self.assertIsNone(skip_reason(b, Cell(1_000, 16_384, 16), 1 << 20, tcp_mem))
            self.assertIsNone(skip_reason(b, Cell(50_000, 1_024, 16), 1 << 20, tcp_mem))
        # An open-loop cell keeps only what its rate puts in flight.
        self.assertIsNone(skip_reason(BACKENDS["uring"], Cell(10_000, 16_384, 16, rate=1e4),
                                      1 << 20, tcp_mem))
        # Unknown limit: nothing is skipped for it.
        self.assertIsNone(skip_reason(BACKENDS["uring"], Cell(10_000, 16_384, 16), 1 << 20))

    def test_cell_names_are_stable(self):
        self.assertEqual(Cell(1000, 64, 1).name, "c1000-s64-p1")
        self.assertEqual(Cell(1000, 64, 16).mode, "pipelined")
        self.assertEqual(Cell(1000, 64, 1, rate=5e3).name, "c1000-s64-p1-r5000")

    def test_medians_leave_failed_runs_out_and_count_flags(self):
        cell = Cell(100, 64, 1)
        runs = []
        for rep, (rate, status, flags) in enumerate(
                [(100.0, "ok", []), (300.0, "ok", ["RTO timeouts: 1"]), (200.0, "ok", ["x"]),
                 (1.0, "failed", [])]):
            r = Run("matrix", cell, "uring", rep, 1, status=status, flags=flags,
                    suspect=bool(flags) and rate == 300.0)
            r.metrics["msgs_per_s"] = rate
            runs.append(r)
        (s,) = summarise(runs)
        self.assertEqual(s.stats["msgs_per_s"], {"median": 200.0, "min": 100.0, "max": 300.0})
        self.assertEqual((s.runs, s.failed, s.flagged, s.suspect), (3, 1, 2, 1))


class Host(unittest.TestCase):
    def test_noise_flags_name_loss_probes(self):
        flags = host.noise_flags({"softnet_dropped": 0, "RetransSegs": 5, "TCPLossProbes": 4})
        self.assertEqual(flags, ["TCP retransmits: 5 (4 tail loss probes)"])
        self.assertEqual(host.noise_flags({"RetransSegs": 0}), [])
        self.assertFalse(host.is_severe({"RetransSegs": 5, "TCPLossProbes": 5}))
        self.assertTrue(host.is_severe({"TCPTimeouts": 1}))

    def test_cpu_seconds_reads_this_process(self):
        import os
        self.assertIsNotNone(host.cpu_seconds(os.getpid()))


class Report(unittest.TestCase):
    def test_update_doc_replaces_only_between_the_markers(self):
        with tempfile.TemporaryDirectory() as d:
            doc = Path(d) / "b.md"
            begin, end = report.markers("netns")
            lb, le = report.markers("loopback")
            doc.write_text(f"intro\n{begin}\nold\n{end}\n{lb}\nkept\n{le}\noutro\n")
            report.update_doc(doc, "new $1 \\1", "netns")
            self.assertEqual(doc.read_text(),
                             f"intro\n{begin}\nnew $1 \\1\n{end}\n{lb}\nkept\n{le}\noutro\n")

    def test_matrix_chart_is_a_png_with_whiskers_or_skipped_without_matplotlib(self):
        if chart.unavailable():
            self.skipTest(chart.unavailable())
        cells = [Cell(c, 64, 1) for c in (100, 1000)]
        runs = []
        for b in ("uring", "epoll"):
            for c in cells:
                for rep, rate in enumerate((900.0, 1000.0, 1300.0)):
                    r = Run("matrix", c, b, rep, 1)
                    r.metrics.update(msgs_per_s=rate, server_cpu_ns_per_msg=500.0)
                    runs.append(r)
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "c.png"
            self.assertTrue(chart.matrix(path, summarise(runs), 64, 1, ["uring", "epoll"],
                                         [100, 1000], "caption"))
            self.assertEqual(path.read_bytes()[:8], b"\x89PNG\r\n\x1a\n")
            self.assertFalse(chart.matrix(Path(d) / "none.png", [], 64, 1, ["uring"], [100], "x"))
        self.assertEqual(chart.size_label(16384), "16 KiB")

    def test_markdown_names_the_topology(self):
        meta = {"machine": {"cpu_model": "cpu", "cores": 2, "memory_gib": 1, "kernel": "6",
                            "nofile": {"hard": 1}, "sysctl": {}},
                "git": {"commit": "abc", "dirty": False, "branch": "b"}, "date": "d",
                "options": {"server_cpus": "0", "client_cpus": "1", "workers": 1,
                            "loadgen_threads": None, "warmup": 1, "duration": 2, "reps": 1,
                            "matrix": False},
                "topology": {"kind": "loopback", "why": "asked for"}}
        self.assertIn("**loopback**", report.markdown(meta, [], [], [], {}))

if __name__ == "__main__":
    unittest.main()
