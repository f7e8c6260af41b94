"""Unit tests of what measures the levers (issue 13): server variants
(--variant), the cross-CPU interrupt counts, the targets table, and
profile.py's split of the server's samples into the event interface's part
and the floor: python3 -m unittest discover -s scripts/benchkit"""

import sys
import unittest
from pathlib import Path
from unittest import mock

sys.dont_write_bytecode = True
SCRIPTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(SCRIPTS))

from benchkit import host, model, options, procs, report, scripts_module, targets  # noqa: E402
from benchkit.model import BACKENDS, Run, summarise  # noqa: E402


class Variants(unittest.TestCase):
    def tearDown(self):
        for name in [n for n, b in BACKENDS.items() if b.base]:
            del BACKENDS[name]

    def test_a_variant_runs_its_base_backend_with_its_flags(self):
        args = options.parse_args(["--variant", "u-b32=uring --wait-batch 32 --min-wait 50",
                                   "--conns", "100", "--sizes", "64", "--modes", "closed"], "doc")
        self.assertEqual(args.backends[-1], "u-b32", "appended to the default backends")
        env = mock.Mock(bin_dir=Path("/bin"), listen_addr="0.0.0.0",
                        server_pinned=lambda argv: argv)
        argv = [str(a) for a in procs.server_argv(env, "u-b32", 1)]
        self.assertEqual(argv[argv.index("--backend") + 1:],
                         ["uring", "--wait-batch", "32", "--min-wait", "50"])
        self.assertFalse(BACKENDS["u-b32"].fd_per_conn, "a uring variant holds direct descriptors")

    def test_a_variant_may_run_another_binary(self):
        model.add_variant("before=uring@/bin/true --wait-batch 1")
        env = mock.Mock(bin_dir=Path("/repo/target/release"), listen_addr="0.0.0.0",
                        server_pinned=lambda argv: argv)
        argv = [str(a) for a in procs.server_argv(env, "before", 1)]
        self.assertEqual(argv[0], "/bin/true")
        self.assertEqual(argv[argv.index("--backend") + 1:], ["uring", "--wait-batch", "1"])

    def test_bad_variants_say_what_is_wrong(self):
        for spec, says in (("nameonly", "NAME=BACKEND"), ("x=monoio --flag", "uring-echo's"),
                           ("y=uring@/nonexistent/uring-echo", "not an executable"),
                           ("uring=uring --wait-batch 2", "taken"), ("Bad!=uring", "letters")):
            with self.assertRaises(ValueError) as e:
                model.add_variant(spec)
            self.assertIn(says, str(e.exception), spec)

    def test_an_unknown_backend_names_the_choices(self):
        with self.assertRaises(SystemExit), mock.patch("sys.stderr"):
            options.parse_args(["--backends", "uring,kqueue"], "doc")


class Interrupts(unittest.TestCase):
    def test_the_function_call_row_is_summed_over_the_cpus_asked(self):
        text = ("           CPU0       CPU1       CPU2\n"
                " RES:       10         20         30   Rescheduling interrupts\n"
                " CAL:      100        200        400   Function call interrupts\n")
        with mock.patch.object(host, "_read", return_value=text):
            self.assertEqual(host.ipis([0]), 100)
            self.assertEqual(host.ipis([1, 2]), 600)
            self.assertIsNone(host.ipis([7]))


class BusyTime(unittest.TestCase):
    STAT = ("cpu  900 0 900 9000 0 90 900 0 0 0\n"
            # user nice system idle iowait irq softirq steal guest guest_nice
            "cpu0 300 10 200 1000 50 20 400 70 0 0\n"
            "cpu1 100 0 100 2000 0 0 30 0 0 0\n")

    def test_busy_time_counts_work_and_interrupts_but_not_idle_iowait_or_steal(self):
        with mock.patch.object(host, "_read", return_value=self.STAT):
            self.assertAlmostEqual(host.busy_seconds([0]), (300 + 10 + 200 + 20 + 400) / host.CLK_TCK)
            self.assertAlmostEqual(host.busy_seconds([0, 1]), (930 + 230) / host.CLK_TCK)
            self.assertIsNone(host.busy_seconds([5]))

    def test_server_cpu_is_its_cpus_busy_time_so_softirq_in_process_time_counts_once(self):
        # Tick accounting charged the process 0.9 s, softirq ticks while it
        # ran included; its CPU was busy 1.0 s in all over a 1.25 s window.
        # Adding the CPU's 0.6 s of softirq to the process's 0.9 s would
        # claim 1.5 s of one CPU in 1.25 s.
        seen = {"busy_before": (10.0, 20.0), "busy_after": (11.0, 21.25),
                "wall_before": 100.0, "wall_after": 101.25, "cpu_counts": (1, 1)}
        m = {"server_cpu_ns_per_msg": 0.9e9 / 1000}
        procs.cpu_metrics(m, seen, 1000)
        self.assertAlmostEqual(m["server_total_ns_per_msg"], 1.0e6)
        self.assertAlmostEqual(m["server_other_ns_per_msg"], 0.1e6)
        self.assertEqual(m["server_busy_frac"], 0.8)
        self.assertEqual(m["client_busy_frac"], 1.0)

    def test_unreadable_counters_leave_the_metrics_out(self):
        seen = {"busy_before": (None, None), "busy_after": (None, None),
                "wall_before": 0.0, "wall_after": 1.0, "cpu_counts": (1, 1)}
        m = {}
        procs.cpu_metrics(m, seen, 1000)
        self.assertEqual(m, {})


class Targets(unittest.TestCase):
    def run_of(self, phase, cell, backend, rep, **metrics):
        r = Run(phase, cell, backend, rep, 1)
        r.status = "ok"
        r.metrics = metrics
        return r

    def test_the_push_targets_are_judged_from_the_medians(self):
        runs = []
        for rep in range(5):
            for phase, cell, rates in (
                    ("t1", targets.T1, {"uring": 160, "epoll": 100, "tokio": 90, "monoio": 120}),
                    ("t2", targets.T2, {"uring": 150, "epoll": 100, "monoio": 100}),
                    ("t3", targets.T3, {"uring": 120, "epoll": 100, "monoio": 110}),
                    ("t5", targets.T5, {"uring": 110, "epoll": 100})):
                for b, v in rates.items():
                    runs.append(self.run_of(phase, cell, b, rep, msgs_per_s=v * 1000.0,
                                            server_total_ns_per_msg=6000.0 if b == "uring" else 10_000.0))
        out = {t.id: t for t in targets.evaluate(runs, summarise(runs), None, 5, loopback=False)}
        self.assertTrue(out["T1a"].met)  # 1.6
        self.assertFalse(out["T1b"].met)  # 160 / 120 = 1.33
        self.assertTrue(out["T2a"].met and out["T2b"].met)
        self.assertFalse(out["T3a"].met)  # 1.2 < 1.3
        self.assertTrue(out["T4a"].met)  # 0.6
        self.assertTrue(out["T5"].met)
        self.assertIsNone(out["T6"].met, "no rate cell: not measured")
        self.assertIsNone(out["T7"].met, "a loopback target, on netns")
        self.assertEqual(out["T1a"].note, "")

    def test_t6_is_not_judged_when_loadgen_was_the_limit(self):
        cell = targets.Cell(1000, 64, 1, rate=50_000)

        def t6(client_busy):
            runs = [self.run_of("t6", cell, b, rep, p99_us=p99, client_busy_frac=client_busy)
                    for rep in range(5) for b, p99 in (("uring", 500.0), ("epoll", 1000.0))]
            out = {t.id: t for t in targets.evaluate(runs, summarise(runs), cell, 5)}
            return out["T6"]

        spare = t6(0.6)
        self.assertTrue(spare.met)  # 0.5x, with loadgen's CPU to spare
        self.assertEqual(spare.note, "")
        saturated = t6(0.98)
        self.assertIsNone(saturated.met)
        self.assertAlmostEqual(saturated.value, 0.5)
        self.assertIn("loadgen's CPU was 98% busy", saturated.note)
        table = "\n".join(report.targets_table([saturated], ""))
        self.assertIn("| not judged (loadgen's CPU was 98% busy", table)
        unknown = t6(None)
        self.assertTrue(unknown.met)
        self.assertIn("loadgen's CPU was not measured", unknown.note)

    def test_t6_is_not_judged_when_loadgen_was_late_by_a_share_of_the_p99(self):
        cell = targets.Cell(1000, 64, 1, rate=50_000)

        def t6(lag_uring, lag_epoll):
            runs = [self.run_of("t6", cell, b, rep, p99_us=p99, client_busy_frac=0.4,
                                lag_p99_us=lag)
                    for rep in range(5)
                    for b, p99, lag in (("uring", 400.0, lag_uring), ("epoll", 1000.0, lag_epoll))]
            return {t.id: t for t in targets.evaluate(runs, summarise(runs), cell, 5)}["T6"]

        small = t6(60.0, 90.0)  # at most 25 % of uring's 400 us
        self.assertTrue(small.met)
        self.assertIn("schedule lag p99 90 us", small.note)
        late = t6(60.0, 101.0)  # the larger lag decides, against the lower p99
        self.assertIsNone(late.met)
        self.assertAlmostEqual(late.value, 0.4)
        self.assertIn("loadgen's own lateness (schedule lag p99 101 us)", late.note)


class Floor(unittest.TestCase):
    def test_samples_are_split_by_the_function_they_ran_in(self):
        profile = scripts_module.load("profile")
        script = "\n\n".join([
            "worker-0  42\n\tffffffff81b60e22 io_send+0x12\n\tffffffff81b45bb2 io_submit_sqes",
            "worker-0  42\n\t000055d0c0ffee00 uring_echo::worker::reap\n\t00007f00 main",
            "worker-0  42\n\tffffffff8200df9d tcp_sendmsg_locked+0x4\n\tffffffff81b60e22 io_send",
            "worker-0  42\n\tffffffff8200df9d tcp_sendmsg_locked\n\tffffffff81b60e22 io_send",
            "other  7\n\tffffffff81b60e22 io_send",
        ])
        parsed = profile.samples(script)
        self.assertEqual(parsed[1][2][0], profile.USER_MARK + "uring_echo::worker::reap")
        rows, rest = profile.floor(parsed, {42})
        shares = dict(rows)
        self.assertAlmostEqual(shares["io_uring (`io_*` functions)"], 25.0)
        self.assertAlmostEqual(shares["the process's own code (event loop, runtime)"], 25.0)
        self.assertAlmostEqual(rest, 50.0, msg="the two tcp_sendmsg samples; pid 7 is not ours")


if __name__ == "__main__":
    unittest.main()
