"""Unit tests of the netns topology's plan and of the choice of leftovers to
remove: python3 -m unittest discover -s scripts/benchkit"""

import ipaddress
import sys
import unittest
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchkit import topology  # noqa: E402


class Plan(unittest.TestCase):
    def test_one_load_host_gets_its_own_namespace_veth_and_addresses(self):
        p = topology.plan(4242, 1, [0], [1])
        self.assertEqual(p.namespaces, ["ue-4242-srv", "ue-4242-c0"])
        (h,) = p.hosts
        self.assertEqual((h.server_addr, h.client_addrs[0]), ("198.18.0.1", "198.18.0.2"))
        self.assertEqual((p.server_rps_mask, h.rps_mask, h.cpus), ("1", "2", "1"))

    def test_every_address_is_in_the_benchmarking_range(self):
        p = topology.plan(1, 200, [0, 1], [2, 3])
        net = ipaddress.ip_network("198.18.0.0/15")
        addrs = [a for h in p.hosts for a in (h.server_addr, *h.client_addrs)]
        self.assertEqual(len(addrs), len(set(addrs)))
        self.assertTrue(all(ipaddress.ip_address(a) in net for a in addrs))
        for cmd in p.setup_commands():
            for word in cmd:
                if "/" in word and word[0].isdigit():
                    self.assertIn(ipaddress.ip_interface(word).ip, net, cmd)

    def test_both_veth_ends_are_created_inside_namespaces(self):
        p = topology.plan(7, 2, [0], [1])
        links = [c for c in p.setup_commands() if c[:3] == ["ip", "link", "add"]]
        self.assertEqual(links[1], ["ip", "link", "add", "vs1", "netns", "ue-7-srv", "type", "veth",
                                    "peer", "name", "vc1", "netns", "ue-7-c1"])
        # Every other command names the namespace it acts in.
        for c in p.setup_commands():
            if c not in links and c[:3] != ["ip", "netns", "add"]:
                self.assertTrue(c[:2] == ["ip", "-n"] or c[:3] == ["ip", "netns", "exec"], c)

    def test_namespaces_are_made_before_their_links_and_lo_comes_up_in_each(self):
        p = topology.plan(7, 2, [0], [1])
        cmds = p.setup_commands()
        first_link = next(i for i, c in enumerate(cmds) if c[:3] == ["ip", "link", "add"])
        self.assertTrue(all(c[:3] == ["ip", "netns", "add"] or "lo" in c
                            for c in cmds[:first_link]))
        lo_up = {c[2] for c in cmds if c[-3:] == ["set", "lo", "up"]}
        self.assertEqual(lo_up, set(p.namespaces))

    def test_rps_masks_are_written_inside_each_side_namespace(self):
        p = topology.plan(7, 1, [0, 1, 2, 3], [5])
        rps = [c for c in p.setup_commands() if "rps_cpus" in c[-1]]
        self.assertEqual(rps, [
            ["ip", "netns", "exec", "ue-7-srv", "sh", "-c",
             "echo f > /sys/class/net/vs0/queues/rx-0/rps_cpus"],
            ["ip", "netns", "exec", "ue-7-c0", "sh", "-c",
             "echo 20 > /sys/class/net/vc0/queues/rx-0/rps_cpus"]])

    def test_cpu_masks_follow_the_kernel_bitmap_format(self):
        self.assertEqual(topology.cpu_mask([0]), "1")
        self.assertEqual(topology.cpu_mask([0, 1, 2, 3]), "f")
        self.assertEqual(topology.cpu_mask([4, 9]), "210")
        self.assertEqual(topology.cpu_mask([0, 32]), "1,00000001")
        self.assertEqual(topology.cpu_mask([63]), "80000000,00000000")
        with self.assertRaises(ValueError):
            topology.cpu_mask([])

    def test_client_cpus_are_shared_out_between_load_hosts_when_there_are_enough(self):
        self.assertEqual(topology.split_cpus([2, 3, 4, 5, 6], 2), [[2, 3, 4], [5, 6]])
        self.assertEqual(topology.split_cpus([1], 3), [[1], [1], [1]])
        p = topology.plan(1, 2, [0], [2, 3, 4, 5])
        self.assertEqual([(h.cpus, h.rps_mask) for h in p.hosts], [("2-3", "c"), ("4-5", "30")])

    def test_many_connections_spread_over_source_addresses(self):
        (h,) = topology.plan(1, 1, [0], [1]).hosts
        self.assertEqual(h.source_addrs(12_500), [])
        self.assertEqual(h.source_addrs(30_000), ["198.18.0.2", "198.18.0.3", "198.18.0.4"])
        # Check S1's 100,000 take all eight.
        self.assertEqual(len(h.source_addrs(100_000)), 8)
        with self.assertRaises(ValueError):
            h.source_addrs(1_000_000)

    def test_load_hosts_out_of_range_are_refused_naming_the_flag(self):
        for n in (0, 257):
            with self.assertRaisesRegex(ValueError, "--load-hosts"):
                topology.plan(1, n, [0], [1])


class Leftovers(unittest.TestCase):
    def test_only_our_prefix_with_a_dead_pid_is_a_leftover(self):
        names = ["ue-100-srv", "ue-100-c0", "ue-200-srv", "ue-300-7-c1", "other-100-srv",
                 "ue-x-srv", "ue-", "myue-100-srv"]
        alive = {200}.__contains__
        self.assertEqual(topology.leftovers(names, alive), ["ue-100-srv", "ue-100-c0", "ue-300-7-c1"])

    def test_this_process_is_alive_and_an_unused_pid_is_not(self):
        import os
        self.assertTrue(topology.pid_alive(os.getpid()))
        with open("/proc/sys/kernel/pid_max") as f:
            pid_max = int(f.read())
        self.assertFalse(topology.pid_alive(pid_max + 1 if pid_max < 2**22 else 2**22 + 1))


if __name__ == "__main__":
    unittest.main()
