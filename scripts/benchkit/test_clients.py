"""Unit tests of how a run's load is shared between load hosts:
python3 -m unittest discover -s scripts/benchkit"""

import sys
import unittest
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchkit import clients, topology  # noqa: E402
from benchkit.env import Env, share  # noqa: E402
from benchkit.model import Cell  # noqa: E402


def env(hosts):
    net = topology.plan(42, hosts, [0], [1, 2]) if hosts else None
    return Env(repo=Path("."), bin_dir=Path("target/release"), runs_dir=Path("runs"),
               server_cpus="0", client_cpus="1-2", loadgen_threads=None, duration=2.0,
               warmup=0.5, nofile=20_000, log=print, net=net)


def flag(argv, name):
    return argv[argv.index(name) + 1] if name in argv else None


class Sharing(unittest.TestCase):
    def test_shares_add_up_and_differ_by_at_most_one(self):
        for total, parts in ((1001, 2), (10, 3), (5, 5), (100_000, 7)):
            got = [share(total, parts, i) for i in range(parts)]
            self.assertEqual(sum(got), total)
            self.assertLessEqual(max(got) - min(got), 1)
        self.assertEqual(share(1000.0, 4, 3), 250.0)

    def test_several_hosts_split_the_load_start_together_and_keep_their_own_json(self):
        e = env(2)
        c = clients.plan(e, "loadgen", "9999", Cell(1001, 64, 1, rate=3000.0), 2.0, "stem",
                         start_at=1_800_000_000.25)
        self.assertTrue(c.merged)
        self.assertGreater(c.start_delay, 1.0)
        a0, a1 = c.argvs
        self.assertEqual(a0[:5], ["ip", "netns", "exec", "ue-42-c0", "taskset"])
        self.assertEqual(a1[3], "ue-42-c1")
        self.assertEqual((flag(a0, "--target"), flag(a1, "--target")),
                         ("198.18.0.1:9999", "198.18.1.1:9999"))
        self.assertEqual((flag(a0, "--conns"), flag(a1, "--conns")), ("501", "500"))
        self.assertEqual((flag(a0, "--rate"), flag(a1, "--rate")), ("1500", "1500"))
        self.assertEqual({flag(a0, "--start-at"), flag(a1, "--start-at")}, {"1800000000.250"})
        self.assertEqual([flag(a, "--json") for a in c.argvs],
                         [str(Path("runs/stem.host0.json")), str(Path("runs/stem.host1.json"))])
        self.assertEqual((flag(a0, "-c"), flag(a1, "-c")), ("1", "2"))  # a client CPU each

    def test_one_host_prints_its_json_and_needs_no_start_instant(self):
        for e, target in ((env(1), "198.18.0.1:9"), (env(0), "127.0.0.1:9")):
            (argv,) = clients.plan(e, "loadgen", "9", Cell(100, 64, 16), 2.0, "s").argvs
            self.assertEqual(flag(argv, "--json"), "-")
            self.assertIsNone(flag(argv, "--start-at"))
            self.assertEqual(flag(argv, "--target"), target)

    def test_a_host_with_many_connections_spreads_them_over_its_addresses(self):
        (argv,) = clients.plan(env(1), "loadgen", "9", Cell(30_000, 64, 1), 2.0, "s").argvs
        self.assertEqual(flag(argv, "--source-addrs"), "198.18.0.2,198.18.0.3,198.18.0.4")


if __name__ == "__main__":
    unittest.main()
