//! `loadgen --messages-per-conn` (connection churn) against the real server,
//! on both backends: every connection opened is used for exactly N verified
//! echoes and closed, the server accepts and closes exactly as many, its open
//! count returns to 0 and its slots are reused (the slab does not grow with
//! the number of connections); the client, which closes first, holds the
//! TIME_WAIT, and `--linger0` leaves none.
//!
//! Ports: each run spreads over 16 loopback source addresses (127.0.0.1-16),
//! so the 2,000 connections of a run take ~125 ephemeral ports per address,
//! far from the ~28,000 each has, even with all of them in TIME_WAIT.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::loadgen::*;
use common::{Server, many_sockets_guard};
use serde_json::Value;

/// Connections per run: the bounded count the port budget above assumes.
const CONNS_PER_RUN: u64 = 2000;
/// Connections open at once.
const OPEN_AT_ONCE: &str = "200";

/// Runs a churn load of `n` messages per connection over `CONNS_PER_RUN`
/// connections and checks what loadgen itself reports.
fn churn(server: &Server, n: u64, extra: &[&str]) -> Value {
    let messages = (CONNS_PER_RUN * n).to_string();
    let per_conn = n.to_string();
    let mut args = vec![
        "--conns",
        OPEN_AT_ONCE,
        "--messages-per-conn",
        &per_conn,
        "--messages",
        &messages,
    ];
    args.extend(extra);
    let (out, r) = run_json(&server.addr.to_string(), &args);
    assert!(out.status.success(), "N={n}: {}", stderr(&out));
    assert_eq!(u(&r, "connections.completed"), CONNS_PER_RUN, "{r}");
    assert_eq!(u(&r, "messages.received"), CONNS_PER_RUN * n, "{r}");
    assert_eq!(
        u(&r, "messages.received") / n,
        u(&r, "connections.completed")
    );
    assert_eq!(u(&r, "connections.established"), CONNS_PER_RUN, "{r}");
    assert_eq!(u(&r, "connections.failed"), 0, "{r}");
    assert_eq!(u(&r, "connections.lost"), 0, "{r}");
    assert_eq!(pointer(&r, "errors"), &serde_json::json!({}));
    assert_eq!(u(&r, "verify.mismatches"), 0);
    assert!(pointer(&r, "verify.enabled").as_bool().unwrap());
    assert_eq!(u(&r, "messages.unfinished"), 0);
    assert_eq!(u(&r, "transaction_us.count"), CONNS_PER_RUN);
    assert_eq!(u(&r, "connect_us.count"), CONNS_PER_RUN);
    // A transaction holds the connect and all N echoes.
    assert!(
        u(&r, "transaction_us.p50") >= u(&r, "connect_us.p50"),
        "{r}"
    );
    let per_s = f(&r, "throughput.conns_per_s");
    let expected = CONNS_PER_RUN as f64 / f(&r, "duration_s");
    assert!((per_s - expected).abs() < 1e-6 * expected, "{r}");
    assert_eq!(
        pointer(&r, "config.messages_per_conn"),
        &serde_json::json!(n)
    );
    assert_eq!(
        pointer(&r, "config.source_addrs").as_array().unwrap().len(),
        16,
        "churn spreads its TIME_WAIT ports"
    );
    r
}

/// Waits until the server has closed every connection it accepted, and
/// accepted `expected`; returns that stats line.
fn settled(server: &Server, expected: u64) -> HashMap<String, u64> {
    server.wait_for_fresh_stats(Duration::from_secs(20), |s| {
        s["accepted"] == expected && s["closed"] == expected && s["open"] == 0
    })
}

/// TIME_WAIT sockets on the IPv4 loopback whose local port (server side) or
/// remote port (client side) is `port`, from /proc/net/tcp.
fn time_wait(port: u16) -> (usize, usize) {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let port_of = |addr: &str| u16::from_str_radix(addr.rsplit(':').next().unwrap(), 16).unwrap();
    let (mut server_side, mut client_side) = (0, 0);
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.len() < 4 || fields[3] != "06" {
            continue;
        }
        server_side += usize::from(port_of(fields[1]) == port);
        client_side += usize::from(port_of(fields[2]) == port);
    }
    (server_side, client_side)
}

/// TIME_WAIT sockets the kernel did not keep because its table was full
/// (`net.ipv4.tcp_max_tw_buckets`, shared by everything on the machine).
fn time_wait_overflows() -> u64 {
    let netstat = std::fs::read_to_string("/proc/net/netstat").expect("read /proc/net/netstat");
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(k, _)| *k == "TCPTimeWaitOverflow")
        .map_or(0, |(_, v)| v.parse().unwrap())
}

for_each_backend! {
    fn every_churned_connection_carries_exactly_n_verified_echoes_and_is_closed(backend) {
        let _guard = many_sockets_guard();
        let server = Server::start(backend, &["--stats", "0.1"]);
        let mut accepted = 0;
        let mut stats = HashMap::new();
        for n in [1, 10] {
            let overflows = time_wait_overflows();
            let (_, client_before) = time_wait(server.addr.port());
            churn(&server, n, &[]);
            // The connect probe, then every connection of the run.
            accepted += 1 + CONNS_PER_RUN;
            stats = settled(&server, accepted);
            assert_eq!(stats["errors"], 0, "N={n}: {stats:?}");
            assert_eq!(stats["direct_fds"], 0, "N={n}: {stats:?}");
            let (server_side, client_side) = time_wait(server.addr.port());
            assert_eq!(server_side, 0, "the server never closes first");
            assert!(
                client_side > client_before || time_wait_overflows() > overflows,
                "loadgen closes first and holds the TIME_WAIT"
            );
        }
        // 4,002 connections, 200 at a time on loadgen's side (a few more on
        // the server's, whose closes trail): without slot reuse the slab
        // would hold one slot per connection.
        assert!(stats["slab_slots"] < accepted / 2, "{stats:?}");
        let stopped = server.stop();
        let s = &stopped.summary;
        assert!(stopped.status.success(), "{stopped:?}");
        assert_eq!((s["open"], s["accepted"], s["closed"]), (0, accepted, accepted), "{stopped:?}");
    }

    fn an_open_loop_churn_paces_new_connections_and_counts_from_their_due_time(backend) {
        let _guard = many_sockets_guard();
        let server = Server::start(backend, &["--stats", "0.1"]);
        // 2,000 connections due at 4,000/s: half a second, whatever the server does.
        let r = churn(&server, 2, &["--rate", "4000"]);
        assert!(f(&r, "duration_s") >= 0.45, "{r}");
        assert_eq!(f(&r, "rate.asked"), 4000.0);
        assert_eq!(f(&r, "rate.achieved"), f(&r, "throughput.conns_per_s"));
        assert_eq!(pointer(&r, "config.mode"), "open");
        settled(&server, 1 + CONNS_PER_RUN);
    }

    fn linger0_resets_instead_of_leaving_time_wait(backend) {
        let _guard = many_sockets_guard();
        let server = Server::start(backend, &["--stats", "0.1"]);
        let (_, client_before) = time_wait(server.addr.port());
        let r = churn(&server, 1, &["--linger0"]);
        assert_eq!(pointer(&r, "config.linger0"), true);
        let stats = settled(&server, 1 + CONNS_PER_RUN);
        let (server_side, client_side) = time_wait(server.addr.port());
        assert_eq!(server_side, 0);
        // At most one new one on the client side: the connect probe's, which
        // closes normally. (Older ones may be of an earlier server on this port.)
        assert!(client_side <= client_before + 1, "{client_before} -> {client_side}");
        // Every connection ended in a reset, which the server counts as an
        // error (the probe closed normally).
        assert_eq!(stats["errors"], CONNS_PER_RUN, "{stats:?}");
    }
}

#[test]
fn messages_not_a_multiple_of_messages_per_conn_are_refused_naming_both_flags() {
    let out = loadgen(&["--messages-per-conn", "3", "--messages", "10"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(
        e.contains("--messages 10") && e.contains("--messages-per-conn 3"),
        "{e}"
    );
}
