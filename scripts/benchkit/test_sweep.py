"""Unit tests of the sweep's rate grid and knee:
python3 -m unittest discover -s scripts/benchkit"""

import math
import sys
import unittest
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchkit import sweep  # noqa: E402
from benchkit.model import Cell, Run, saturated, summarise  # noqa: E402


def point(backend, asked, achieved, p99, saturated=False):
    st = lambda v: {"median": v, "min": v, "max": v}  # noqa: E731
    if saturated:
        return sweep.Point(backend, asked, None, {}, 0, saturated=True)
    return sweep.Point(backend, asked, st(achieved), {"p50_us": st(p99 / 4), "p99_us": st(p99)}, 1)


class Grid(unittest.TestCase):
    def test_grid_spans_a_tenth_of_the_slowest_to_past_the_fastest_log_spaced(self):
        grid = sweep.rate_grid({"uring": 120_000, "epoll": 80_000, "tokio": 60_000}, 10)
        self.assertEqual(len(grid), 10)
        self.assertEqual(grid[0], 6_000)
        self.assertEqual(grid[-1], 144_000)
        ratios = [b / a for a, b in zip(grid, grid[1:])]
        self.assertTrue(all(abs(r - ratios[0]) / ratios[0] < 0.01 for r in ratios), ratios)
        self.assertAlmostEqual(math.prod(ratios), 24.0, places=6)

    def test_grid_rates_have_three_significant_digits_and_ascend(self):
        grid = sweep.rate_grid({"uring": 123_456}, 7)
        self.assertEqual(grid, sorted(set(grid)))
        for r in grid:
            self.assertEqual(r, float(f"{r:.3g}"))

    def test_a_grid_needs_a_maximum_and_two_steps(self):
        with self.assertRaises(ValueError):
            sweep.rate_grid({"uring": None}, 10)
        with self.assertRaisesRegex(ValueError, "--sweep-steps"):
            sweep.rate_grid({"uring": 1e5}, 1)


class KneeOf(unittest.TestCase):
    def test_the_knee_is_the_last_rate_before_p99_crosses_the_bound(self):
        pts = [point("uring", r, r * 0.99, p99) for r, p99 in
               ((1e4, 80), (2e4, 90), (4e4, 300), (8e4, 5_000), (1.6e5, 90_000))]
        k = sweep.knee(pts, 1000)
        self.assertEqual((k.rate, k.p99_at_knee_us, k.next_rate, k.next_p99_us),
                         (4e4 * 0.99, 300, 8e4 * 0.99, 5_000))
        self.assertFalse(k.beyond_grid)
        self.assertIn("39,600 msgs/s", k.describe())

    def test_a_good_point_after_a_bad_one_does_not_move_the_knee(self):
        pts = [point("epoll", 1e4, 1e4, 100), point("epoll", 2e4, 2e4, 2_000),
               point("epoll", 4e4, 4e4, 500)]
        self.assertEqual(sweep.knee(pts, 1000).rate, 1e4)

    def test_a_saturated_rate_is_over_any_bound(self):
        pts = [point("tokio", 1e4, 1e4, 100), point("tokio", 2e4, None, None, saturated=True)]
        k = sweep.knee(pts, 1e9)
        self.assertEqual((k.rate, k.next_rate, k.next_p99_us), (1e4, 2e4, None))
        self.assertIn("saturated at 20,000", k.describe())

    def test_no_knee_below_the_grid_and_a_lower_bound_beyond_it(self):
        low = sweep.knee([point("uring", 1e4, 1e4, 5_000)], 1000)
        self.assertIsNone(low.rate)
        self.assertIn("already at the lowest rate", low.describe())
        high = sweep.knee([point("uring", 1e4, 1e4, 100), point("uring", 2e4, 2e4, 200)], 1000)
        self.assertEqual((high.rate, high.beyond_grid), (2e4, True))
        self.assertTrue(high.describe().startswith("≥ 20,000"))
        self.assertIsNone(sweep.knee([], 1000))

    def test_points_come_from_the_sweep_runs_medians(self):
        runs = []
        for rep, (ach, p99) in enumerate(((990.0, 100), (1000.0, 300), (1010.0, 200))):
            r = Run("sweep", Cell(1000, 64, 1, rate=1000.0), "uring", rep, 1)
            r.metrics.update(msgs_per_s=ach, rate_achieved=ach, p50_us=50, p99_us=p99,
                             p999_us=p99 * 2)
            runs.append(r)
        failed = Run("sweep", Cell(1000, 64, 1, rate=2000.0), "uring", 0, 1, status="failed")
        failed.metrics.update(mismatches=0, errors=0, lost=0, unfinished=3701)
        self.assertTrue(saturated(failed))
        failed.status = "saturated"
        (p, sat) = sweep.points(summarise(runs + [failed]), "sweep", 1000, 64, ["uring"],
                                [1000.0, 2000.0])
        self.assertEqual(p.achieved, {"median": 1000.0, "min": 990.0, "max": 1010.0})
        self.assertEqual(p.latency["p99_us"]["median"], 200)
        self.assertTrue(sat.saturated)


class Saturation(unittest.TestCase):
    def test_only_queued_messages_at_the_end_of_an_open_loop_run_mean_saturated(self):
        def run(rate=1e4, **m):
            r = Run("sweep", Cell(1000, 64, 1, rate=rate), "uring", 0, 1, status="failed")
            r.metrics.update(dict(mismatches=0, errors=0, lost=0, unfinished=10), **m)
            return r
        self.assertTrue(saturated(run()))
        self.assertFalse(saturated(run(mismatches=1)))
        self.assertFalse(saturated(run(errors=2)))
        self.assertFalse(saturated(run(lost=1)))
        self.assertFalse(saturated(run(unfinished=0)))
        self.assertFalse(saturated(run(rate=None)))


if __name__ == "__main__":
    unittest.main()
