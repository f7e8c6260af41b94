//! The two-hosts-on-one-machine testbed (`common::netns`): the real server in
//! one network namespace, the real `loadgen` in another, joined by a veth
//! pair with RPS per side; byte-exact echo across it on both backends; every
//! namespace gone afterwards; leftovers of killed runs removed. Tests that
//! need namespaces skip with a printed reason where they cannot be made.

mod common;

use std::net::SocketAddr;
use std::process::{Output, Stdio};

use common::Server;
use common::loadgen::{LOADGEN, pointer, stderr, u};
use common::netns::{self, Topology, TopologySpec};
use serde_json::Value;

/// Builds `spec`, or prints why not and returns `None` (the test skips).
fn topology_or_skip(spec: &TopologySpec) -> Option<Topology> {
    match Topology::create(spec) {
        Ok(t) => Some(t),
        Err(reason) => {
            eprintln!("skipping: {reason}");
            None
        }
    }
}

/// Runs loadgen from load host `host` against `server` for a short closed
/// loop and returns its output and JSON result.
fn load_from(topo: &Topology, host: usize, port: u16, conns: &str) -> (Output, Value) {
    let target = SocketAddr::new(topo.server_addr(host), port).to_string();
    let out = topo
        .exec(topo.client_ns(host), LOADGEN)
        .args(["--target", &target, "--conns", conns, "--size", "1..3000"])
        .args([
            "--pipeline",
            "2",
            "--duration",
            "0.5",
            "--quiet",
            "--json",
            "-",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("run loadgen in the client namespace");
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "loadgen printed no JSON ({e}); status {:?}; stderr: {}",
            out.status,
            stderr(&out)
        )
    });
    (out, json)
}

/// Asserts a loadgen run held every connection and got every byte back as sent.
fn assert_clean_run(out: &Output, r: &Value, conns: u64) {
    assert!(out.status.success(), "loadgen failed: {}", stderr(out));
    assert_eq!(u(r, "connections.established"), conns, "{r}");
    assert_eq!(u(r, "connections.lost"), 0, "{r}");
    assert_eq!(pointer(r, "verify.enabled"), &Value::Bool(true));
    assert_eq!(u(r, "verify.mismatches"), 0, "{r}");
    assert_eq!(u(r, "messages.unfinished"), 0, "{r}");
    assert!(u(r, "messages.received") > 0, "{r}");
    assert_eq!(u(r, "bytes.received"), u(r, "bytes.sent"), "{r}");
}

/// Asserts none of `names` exists any more.
fn assert_gone(names: &[String]) {
    let now = netns::list_namespaces();
    let left: Vec<&String> = names.iter().filter(|n| now.contains(n)).collect();
    assert!(left.is_empty(), "namespaces left behind: {left:?}");
}

for_each_backend! {
    fn echo_across_two_namespaces_is_byte_exact_and_the_namespaces_are_removed_after(backend) {
        let Some(topo) = topology_or_skip(&TopologySpec::pair("0", "1")) else { return };
        let names = topo.namespaces();
        assert_eq!(names.len(), 2);
        assert!(netns::list_namespaces().contains(&names[0]), "{names:?}");
        // RPS as asked: the server's receive processing on CPU 0, the client's on CPU 1.
        let server_rps = topo.rps_cpus(topo.server_ns(), &topo.server_dev(0)).unwrap();
        let client_rps = topo.rps_cpus(topo.client_ns(0), &topo.client_dev(0)).unwrap();
        assert_eq!(server_rps.trim_start_matches(['0', ',']), "1", "{server_rps}");
        assert_eq!(client_rps.trim_start_matches(['0', ',']), "2", "{client_rps}");

        let server = Server::start_in_namespace(&topo, backend, &[]);
        let veth_tx_before = topo.dev_counter(topo.client_ns(0), &topo.client_dev(0), "tx_bytes").unwrap();
        let (out, r) = load_from(&topo, 0, server.addr.port(), "40");
        assert_clean_run(&out, &r, 40);
        // The load crossed the veth: the client's end sent at least the payload.
        let veth_tx = topo.dev_counter(topo.client_ns(0), &topo.client_dev(0), "tx_bytes").unwrap()
            - veth_tx_before;
        assert!(veth_tx >= u(&r, "bytes.sent"), "veth sent {veth_tx} bytes: {r}");

        let stopped = server.stop();
        assert!(stopped.status.success(), "{stopped:?}");
        assert_eq!(stopped.summary["bytes_in"], stopped.summary["bytes_out"], "{stopped:?}");
        assert!(stopped.summary["bytes_out"] >= u(&r, "bytes.received"), "{stopped:?} {r}");
        assert_eq!(stopped.summary["errors"], 0, "{stopped:?}");

        drop(topo);
        assert_gone(&names);
    }
}

#[test]
fn two_load_hosts_each_steered_to_their_own_cpus_echo_at_once() {
    let spec = TopologySpec {
        load_hosts: 2,
        server_rps_cpus: vec!["0".into(), "1".into()],
        client_rps_cpus: vec!["1".into(), "0-1".into()],
    };
    let Some(topo) = topology_or_skip(&spec) else {
        return;
    };
    let names = topo.namespaces();
    let masks: Vec<String> = (0..2)
        .flat_map(|h| {
            [
                topo.rps_cpus(topo.server_ns(), &topo.server_dev(h)),
                topo.rps_cpus(topo.client_ns(h), &topo.client_dev(h)),
            ]
        })
        .map(|m| m.unwrap().trim_start_matches(['0', ',']).to_string())
        .collect();
    assert_eq!(masks, ["1", "2", "2", "3"]);
    assert_ne!(topo.client_addr(0), topo.client_addr(1));
    assert_ne!(topo.server_addr(0), topo.server_addr(1));

    let server = Server::start_in_namespace(&topo, "uring", &[]);
    let port = server.addr.port();
    let runs: Vec<(Output, Value)> = std::thread::scope(|s| {
        let topo = &topo;
        let hosts: Vec<_> = (0..2)
            .map(|h| s.spawn(move || load_from(topo, h, port, "20")))
            .collect();
        hosts.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (out, r) in &runs {
        assert_clean_run(out, r, 20);
    }
    // Each host's traffic came in on its own server-side veth.
    for (h, (_, r)) in runs.iter().enumerate() {
        let rx = topo
            .dev_counter(topo.server_ns(), &topo.server_dev(h), "rx_bytes")
            .unwrap();
        assert!(
            rx >= u(r, "bytes.sent"),
            "host {h}: vs{h} got {rx} bytes: {r}"
        );
    }
    let stopped = server.stop();
    let sent: u64 = runs.iter().map(|(_, r)| u(r, "bytes.sent")).sum();
    assert!(stopped.summary["bytes_in"] >= sent, "{stopped:?}");
    assert_eq!(
        stopped.summary["accepted"],
        2 * 21,
        "20 each plus each host's probe"
    );

    drop(topo);
    assert_gone(&names);
}

#[test]
fn a_dead_runs_namespaces_are_removed_and_a_live_runs_are_kept() {
    // A PID above pid_max never runs; our own PID certainly does.
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .map(|s| s.trim().parse().unwrap())
        .unwrap_or(4_194_304);
    let dead = format!("ue-{}-0-srv", pid_max + 1);
    let live = format!("ue-{}-leftover-test", std::process::id());
    struct Remove(Vec<String>);
    impl Drop for Remove {
        fn drop(&mut self) {
            for ns in &self.0 {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "delete", ns])
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
    let _cleanup = Remove(vec![dead.clone(), live.clone()]);
    for ns in [&dead, &live] {
        let made = std::process::Command::new("ip")
            .args(["netns", "add", ns])
            .stderr(Stdio::null())
            .status();
        if !matches!(made, Ok(s) if s.success()) {
            eprintln!("skipping: `ip netns add` failed ({made:?}): network namespaces need root");
            return;
        }
    }
    netns::remove_leftovers();
    let now = netns::list_namespaces();
    assert!(!now.contains(&dead), "{dead} survived: {now:?}");
    assert!(now.contains(&live), "{live} was removed: {now:?}");
}

#[test]
fn cpu_lists_become_the_kernels_hex_masks() {
    assert_eq!(netns::rps_mask("0").unwrap(), "1");
    assert_eq!(netns::rps_mask("1").unwrap(), "2");
    assert_eq!(netns::rps_mask("0-3").unwrap(), "f");
    assert_eq!(netns::rps_mask("0,2,4-5").unwrap(), "35");
    assert_eq!(netns::rps_mask("32").unwrap(), "1,00000000");
    assert_eq!(netns::rps_mask("31,33").unwrap(), "2,80000000");
    assert!(netns::rps_mask("3-1").unwrap_err().contains("backwards"));
    assert!(netns::rps_mask("x").unwrap_err().contains("not a CPU"));
    assert!(netns::rps_mask("").unwrap_err().contains("not a CPU"));
}

#[test]
fn only_names_of_our_scheme_yield_an_owner_pid() {
    assert_eq!(netns::owner_pid("ue-1234-0-srv"), Some(1234));
    assert_eq!(netns::owner_pid("ue-1234-srv"), Some(1234));
    assert_eq!(netns::owner_pid("ue-abc-0-srv"), None);
    assert_eq!(netns::owner_pid("ue-0-0-srv"), None);
    assert_eq!(netns::owner_pid("ue-1234"), None);
    assert_eq!(netns::owner_pid("other-1234-0"), None);
}

#[test]
fn a_bad_spec_is_refused_before_anything_is_made() {
    let none = TopologySpec {
        load_hosts: 0,
        ..TopologySpec::default()
    };
    assert!(Topology::create(&none).unwrap_err().contains("load_hosts"));
    let short = TopologySpec {
        load_hosts: 2,
        server_rps_cpus: vec!["0".into()],
        client_rps_cpus: vec![],
    };
    let err = Topology::create(&short).unwrap_err();
    assert!(err.contains("server_rps_cpus has 1 entries for 2"), "{err}");
    let bad = TopologySpec::pair("0", "one");
    assert!(
        Topology::create(&bad)
            .unwrap_err()
            .contains("client_rps_cpus")
    );
}

#[test]
fn a_thread_that_enters_a_client_namespace_connects_from_its_address_and_returns() {
    let Some(topo) = topology_or_skip(&TopologySpec::pair("", "")) else {
        return;
    };
    let home = std::fs::metadata("/proc/thread-self/ns/net").unwrap();
    let server = Server::start_in_namespace(&topo, "epoll", &[]);
    let stream = {
        let _inside = topo.enter(topo.client_ns(0)).unwrap();
        let inside = std::fs::metadata("/proc/thread-self/ns/net").unwrap();
        assert_ne!(
            std::os::unix::fs::MetadataExt::ino(&inside),
            std::os::unix::fs::MetadataExt::ino(&home)
        );
        std::net::TcpStream::connect(server.addr_for(&topo, 0)).unwrap()
    };
    let back = std::fs::metadata("/proc/thread-self/ns/net").unwrap();
    assert_eq!(
        std::os::unix::fs::MetadataExt::ino(&back),
        std::os::unix::fs::MetadataExt::ino(&home),
        "the guard brought the thread back"
    );
    // The socket stays in the client namespace: it still echoes from there.
    assert_eq!(stream.local_addr().unwrap().ip(), topo.client_addr(0));
    let payload = common::payload(7, 100_000);
    let mut clients = vec![common::EchoClient::new(stream, payload, 4096, true)];
    common::drive(&mut clients, std::time::Duration::from_secs(20));
    common::assert_all_echoed(&clients);
}

/// Not a test on its own: the child process of the next one. It builds a
/// topology, names its namespaces on stdout, and waits on stdin.
#[test]
#[ignore = "the child of a_signal_deletes_the_namespaces_a_process_holds_before_it_exits"]
fn child_holding_a_topology_until_signalled() {
    if std::env::var_os("NETNS_TEST_CHILD").is_none() {
        return;
    }
    let topo = Topology::create(&TopologySpec::pair("", "")).expect("topology in the child");
    println!("NAMES {}", topo.namespaces().join(" "));
    let mut line = String::new();
    // Blocks until the parent's signal ends the process (or stdin closes).
    let _ = std::io::stdin().read_line(&mut line);
}

#[test]
fn a_signal_deletes_the_namespaces_a_process_holds_before_it_exits() {
    if Topology::create(&TopologySpec::pair("", "")).is_err() {
        eprintln!("skipping: network namespaces cannot be made here");
        return;
    }
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_holding_a_topology_until_signalled",
        ])
        .args(["--nocapture", "--test-threads", "1"])
        .env("NETNS_TEST_CHILD", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Held open until the child has exited: EOF on its stdin would end it
    // through its `Drop`, not through the signal.
    let _stdin = child.stdin.take();
    let mut names = Vec::new();
    for line in std::io::BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // The harness prints "test NAME ... " before it on the same line.
        if let Some((_, rest)) = line.split_once("NAMES ") {
            names = rest.split(' ').map(String::from).collect::<Vec<_>>();
            break;
        }
    }
    assert_eq!(names.len(), 2, "the child named its namespaces");
    let now = netns::list_namespaces();
    assert!(
        names.iter().all(|n| now.contains(n)),
        "{names:?} in {now:?}"
    );
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(128 + libc::SIGTERM), "{out:?}");
    assert!(
        stderr(&out).contains("deleted 2 namespaces"),
        "{}",
        stderr(&out)
    );
    assert_gone(&names);
}
