//! Steering as on a real host: the server in one network namespace, two load
//! hosts in two others, each joined to it by its own veth pair whose receive
//! processing RPS puts on CPU 0 (host 0) or CPU 1 (host 1), as a NIC's queues
//! would. With `--cpus 0,1` every connection from host 0 must be served by
//! worker 0 and every one from host 1 by worker 1; without it the kernel's
//! hash spreads them. Skips, saying why, where namespaces cannot be made or
//! CPUs 0 and 1 are not both usable.

mod common;

use std::net::SocketAddr;
use std::process::{Output, Stdio};

use common::loadgen::{LOADGEN, stderr, u};
use common::netns::{Topology, TopologySpec};
use common::steering::{assert_steered, per_worker, thread_affinity, two_cpus};
use common::*;
use serde_json::Value;

/// Two load hosts; host h's packets reach the server on CPU h.
fn two_hosts_on_two_cpus() -> Option<Topology> {
    let spec = TopologySpec {
        load_hosts: 2,
        server_rps_cpus: vec!["0".into(), "1".into()],
        client_rps_cpus: vec![],
    };
    match two_cpus().and_then(|()| Topology::create(&spec)) {
        Ok(topo) => Some(topo),
        Err(reason) => {
            eprintln!("skipping: {reason}");
            None
        }
    }
}

/// A closed-loop load of `conns` connections from load host `host`.
fn load(topo: &Topology, host: usize, port: u16, conns: u32) -> Value {
    let target = SocketAddr::new(topo.server_addr(host), port).to_string();
    let out: Output = topo
        .exec(topo.client_ns(host), LOADGEN)
        .args(["--target", &target, "--conns", &conns.to_string()])
        .args([
            "--messages",
            "3000",
            "--size",
            "64",
            "--quiet",
            "--json",
            "-",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run loadgen in a load host's namespace");
    assert!(out.status.success(), "host {host}: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("loadgen's JSON")
}

for_each_backend! {
    fn with_cpus_every_connection_is_served_by_the_worker_on_its_hosts_rps_cpu(backend) {
        let Some(topo) = two_hosts_on_two_cpus() else { return };
        let server = Server::start_in_namespace(&topo, backend, &["--cpus", "0,1", "--stats-per-worker"]);
        assert_steered(&server.start_line);
        let affinity = thread_affinity(server.pid(), "worker-");
        assert_eq!((affinity[&0].as_slice(), affinity[&1].as_slice()), (&[0][..], &[1][..]));
        // Both hosts at once, with different counts, so a swap would show.
        let port = server.addr.port();
        let (from_0, from_1) = std::thread::scope(|s| {
            let host_0 = s.spawn(|| load(&topo, 0, port, 30));
            let host_1 = s.spawn(|| load(&topo, 1, port, 50));
            (host_0.join().unwrap(), host_1.join().unwrap())
        });
        let stopped = server.stop();
        let workers = per_worker(&stopped);
        // Each loadgen run also opens one probe connection.
        assert_eq!(workers[0]["accepted"], 31, "{stopped:?}");
        assert_eq!(workers[1]["accepted"], 51, "{stopped:?}");
        assert_eq!(workers[0]["bytes_in"], u(&from_0, "bytes.sent"), "{stopped:?}");
        assert_eq!(workers[1]["bytes_in"], u(&from_1, "bytes.sent"), "{stopped:?}");
        assert_eq!(stopped.summary["bytes_out"], stopped.summary["bytes_in"], "{stopped:?}");
    }

    fn without_cpus_connections_received_on_one_cpu_are_spread_by_hash(backend) {
        let Some(topo) = two_hosts_on_two_cpus() else { return };
        let server = Server::start_in_namespace(&topo, backend, &["--stats-per-worker"]);
        assert!(server.start_line.contains(" steering=hash (no --cpus)"), "{}", server.start_line);
        // Every SYN from host 0 is processed on CPU 0: steered, all 101 would
        // reach one worker; hashed, one worker gets none with probability 2^-100.
        load(&topo, 0, server.addr.port(), 100);
        let stopped = server.stop();
        let accepted: Vec<u64> = per_worker(&stopped).iter().map(|w| w["accepted"]).collect();
        assert_eq!(accepted.iter().sum::<u64>(), 101, "{stopped:?}");
        assert!(accepted.iter().all(|&n| n > 0), "{accepted:?}");
    }
}
