//! `--cpus`: each worker thread pinned to its listed CPU (read back from
//! /proc), and each connection served by the worker on the CPU that received
//! it. Over loopback the CPU that receives a SYN is the sending thread's own
//! (the kernel processes a loopback packet in the sender's softirq), so a
//! client pinned with `taskset` picks the receiving CPU. The two-host netns
//! test, where RPS on each server-side veth picks it as a NIC would, is in
//! tests/steering_netns.rs.

mod common;

use std::collections::HashMap;
use std::process::{Command, Output, Stdio};

use common::loadgen::{LOADGEN, stderr, u};
use common::steering::*;
use common::*;

const BACKENDS: [&str; 3] = ["uring", "epoll", "tokio-uring"];

/// A closed-loop load of `conns` connections run entirely on `cpu`
/// (`taskset`, so loadgen's probe connection too).
fn load_from_cpu(cpu: usize, target: &str, conns: u32, extra: &[&str]) -> Output {
    let conns = conns.to_string();
    let out = Command::new("taskset")
        .args(["-c", &cpu.to_string(), LOADGEN, "--target", target])
        .args([
            "--conns",
            &conns,
            "--messages",
            "2000",
            "--quiet",
            "--json",
            "-",
        ])
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .expect("run taskset (util-linux) with loadgen");
    assert!(
        out.status.success(),
        "loadgen on CPU {cpu}: {}",
        stderr(&out)
    );
    out
}

#[test]
fn each_worker_thread_is_pinned_to_its_cpu_in_the_listed_order() {
    if !on_two_cpus() {
        return;
    }
    for backend in BACKENDS {
        let server = Server::start(backend, &["--cpus", "1,0", "--workers", "2"]);
        assert!(
            server.start_line.contains(" cpus=1,0 "),
            "{}",
            server.start_line
        );
        assert_steered(&server.start_line);
        let affinity = thread_affinity(server.pid(), "worker-");
        assert_eq!(affinity.len(), 2, "{backend}: {affinity:?}");
        assert_eq!(affinity[&0], [1], "{backend}: worker 0");
        assert_eq!(affinity[&1], [0], "{backend}: worker 1");
        assert!(server.stop().status.success());
    }
}

#[test]
fn without_cpus_no_worker_is_pinned_and_the_start_line_says_hash() {
    let server = Server::start("uring", &["--workers", "2"]);
    assert!(
        server.start_line.contains(" cpus=unpinned ")
            && server.start_line.contains(" steering=hash (no --cpus)"),
        "{}",
        server.start_line
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let process = cpus_allowed(&status);
    for (id, cpus) in thread_affinity(server.pid(), "worker-") {
        assert_eq!(cpus, process, "worker {id}");
    }
}

#[test]
fn every_connection_is_served_by_the_worker_on_the_cpu_that_received_it() {
    if !on_two_cpus() {
        return;
    }
    for backend in BACKENDS {
        let server = Server::start(backend, &["--cpus", "0,1", "--stats-per-worker"]);
        let target = server.addr.to_string();
        // 30 from CPU 1, then 20 from CPU 0; each run adds loadgen's probe.
        let from_1 = load_from_cpu(1, &target, 30, &[]);
        let from_0 = load_from_cpu(0, &target, 20, &[]);
        let stopped = server.stop();
        let workers = per_worker(&stopped);
        assert_eq!(workers.len(), 2, "{backend}: {stopped:?}");
        assert_eq!(workers[0]["cpu"], 0);
        assert_eq!(workers[1]["cpu"], 1);
        assert_eq!(workers[1]["accepted"], 31, "{backend}: {stopped:?}");
        assert_eq!(workers[0]["accepted"], 21, "{backend}: {stopped:?}");
        // The messages went where the connections went: each worker echoed
        // exactly what the clients on its CPU sent.
        let sent = |out: &Output| {
            let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            u(&r, "bytes.sent")
        };
        assert_eq!(
            workers[1]["bytes_in"],
            sent(&from_1),
            "{backend}: {stopped:?}"
        );
        assert_eq!(
            workers[0]["bytes_in"],
            sent(&from_0),
            "{backend}: {stopped:?}"
        );
        assert_eq!(workers[0]["bytes_out"], workers[0]["bytes_in"]);
    }
}

#[test]
fn without_cpus_connections_from_one_cpu_are_spread_over_both_workers_by_hash() {
    if !on_two_cpus() {
        return;
    }
    let server = Server::start("uring", &["--workers", "2", "--stats-per-worker"]);
    load_from_cpu(1, &server.addr.to_string(), 200, &[]);
    let stopped = server.stop();
    let workers = per_worker(&stopped);
    let accepted: Vec<u64> = workers.iter().map(|w| w["accepted"]).collect();
    assert_eq!(accepted.iter().sum::<u64>(), 201, "{stopped:?}");
    // Steered, all 201 would be on one worker; a hash of 201 4-tuples leaves
    // a worker empty with probability 2^-200.
    assert!(accepted.iter().all(|&n| n > 0), "{accepted:?}");
    assert!(
        workers.iter().all(|w| !w.contains_key("cpu")),
        "{stopped:?}"
    );
}

#[test]
fn udp_datagrams_are_served_by_the_worker_on_the_cpu_that_received_them() {
    if !on_two_cpus() {
        return;
    }
    for backend in ["uring", "epoll"] {
        let server = Server::start(backend, &["--cpus", "0,1", "--udp", "--stats-per-worker"]);
        assert_steered(&server.start_line);
        assert!(
            !server.start_line.contains("udp_steering"),
            "{}",
            server.start_line
        );
        let udp = ["--udp", "--rate", "2000", "--size", "64"];
        let out = load_from_cpu(1, &server.addr.to_string(), 8, &udp);
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let stopped = server.stop();
        let workers = per_worker(&stopped);
        assert_eq!(workers[0]["udp_in"], 0, "{backend}: {stopped:?}");
        assert!(
            workers[1]["udp_in"] >= u(&r, "messages.received"),
            "{backend}: {stopped:?} {r}"
        );
    }
}

#[test]
fn workers_sharing_cpus_are_pinned_round_robin_and_hashed_and_the_start_line_says_why() {
    if !on_two_cpus() {
        return;
    }
    let server = Server::start("epoll", &["--cpus", "0,1", "--workers", "4"]);
    assert!(
        server
            .start_line
            .contains(" steering=hash (--workers 4 is not one per CPU of --cpus 0-1"),
        "{}",
        server.start_line
    );
    let affinity = thread_affinity(server.pid(), "worker-");
    let placed: Vec<_> = (0..4).map(|w| affinity[&w].clone()).collect();
    assert_eq!(placed, [[0], [1], [0], [1]]);
}

#[test]
fn a_cpu_the_process_may_not_use_is_refused_naming_cpus() {
    // Under `taskset -c 0`, CPU 1 is outside the allowed set whatever the machine.
    let server = Command::new("taskset")
        .args(["-c", "0", SERVER_BIN, "--port", "0", "--cpus", "0,1"])
        .stdin(Stdio::null())
        .output()
        .expect("run taskset");
    let err = String::from_utf8_lossy(&server.stderr);
    assert_eq!(server.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--cpus 0-1: CPU 1 is not in this process's allowed set (0;"),
        "{err}"
    );
    let loadgen = Command::new("taskset")
        .args(["-c", "0", LOADGEN, "--cpus", "1", "--conns", "1"])
        .stdin(Stdio::null())
        .output()
        .expect("run taskset");
    let err = stderr(&loadgen);
    assert!(!loadgen.status.success(), "{err}");
    assert!(err.contains("--cpus 1: CPU 1 is not in"), "{err}");
}

#[test]
fn loadgen_pins_its_threads_round_robin_over_its_cpus() {
    if !on_two_cpus() {
        return;
    }
    let server = Server::start("epoll", &["--workers", "1"]);
    let mut child = Command::new(LOADGEN)
        .args(["--target", &server.addr.to_string(), "--cpus", "1,0"])
        .args([
            "--threads",
            "3",
            "--conns",
            "3",
            "--duration",
            "30",
            "--quiet",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The threads pin themselves as they start: wait for all three.
    let pid = child.id() as i32;
    let mut threads = HashMap::new();
    wait_until(
        "loadgen's threads pinned",
        std::time::Duration::from_secs(10),
        || {
            threads = thread_affinity(pid, "loadgen-");
            threads.len() == 3 && threads.values().all(|c| c.len() == 1)
        },
    );
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(threads[&0], [1]);
    assert_eq!(threads[&1], [0]);
    assert_eq!(threads[&2], [1]);
}
