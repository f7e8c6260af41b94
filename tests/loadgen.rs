//! `loadgen` against the real `uring-echo` binary (and a deliberately broken
//! echo server): scale through direct descriptors, closed and open loop, the
//! JSON result, merging, verification, bad flags, an unreachable target.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{Server, many_sockets_guard};
use serde_json::Value;
use uring_echo::loadgen::histogram::decode_histogram;

use common::loadgen::*;

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("loadgen-test-{}-{name}", std::process::id()))
}

#[test]
fn fifteen_thousand_connections_echo_without_errors_or_mismatches() {
    let _guard = many_sockets_guard();
    let server = Server::start("uring", &["--workers", "2"]);
    let target = server.addr.to_string();
    let (out, r) = run_json(&target, &["--conns", "15000", "--duration", "1"]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(u(&r, "connections.requested"), 15_000);
    assert_eq!(u(&r, "connections.established"), 15_000);
    assert_eq!(u(&r, "connections.failed"), 0);
    assert_eq!(u(&r, "connections.lost"), 0);
    assert_eq!(pointer(&r, "errors"), &serde_json::json!({}));
    assert_eq!(u(&r, "verify.mismatches"), 0);
    assert!(u(&r, "messages.received") >= 15_000, "{r}");
    assert_eq!(u(&r, "messages.unfinished"), 0);
    assert_eq!(u(&r, "connect_us.count"), 15_000);
    // Its 15,000 armed receives are cancelled one by one before the rings'
    // teardown; the teardown's cancel-everything alone took longer than its
    // 5 s for that many, and said it leaked them.
    assert!(
        !stderr(&out).contains("io_uring teardown"),
        "stderr: {}",
        stderr(&out)
    );
    let stopped = server.stop();
    assert_eq!(
        stopped.summary.get("accepted"),
        Some(&15_001),
        "the probe and the load"
    );
}

#[test]
fn a_closed_loop_run_writes_every_documented_json_field() {
    let _guard = many_sockets_guard();
    let server = Server::start("uring", &[]);
    let path = temp_path("closed.json");
    let out = loadgen(&[
        "--target",
        &server.addr.to_string(),
        "--conns",
        "20",
        "--pipeline",
        "4",
        "--size",
        "16..2000",
        "--warmup",
        "0.2",
        "--duration",
        "0.5",
        "--json",
        path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("latency us: p50"), "{summary}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    std::fs::remove_file(&path).unwrap();
    for field in [
        "connections.requested",
        "connections.established",
        "connections.failed",
        "messages.sent",
        "messages.received",
        "bytes.sent",
        "bytes.received",
        "latency_us.p50",
        "latency_us.p90",
        "latency_us.p99",
        "latency_us.p999",
        "latency_us.max",
        "verify.mismatches",
        "config.conns",
    ] {
        u(&r, field);
    }
    for field in [
        "duration_s",
        "throughput.msgs_per_s",
        "throughput.mib_per_s",
        "cpu.user_s",
        "cpu.sys_s",
        "cpu.ns_per_msg",
    ] {
        f(&r, field);
    }
    assert!(pointer(&r, "errors").is_object());
    assert!(pointer(&r, "histograms.latency_us").is_string());
    assert_eq!(pointer(&r, "config.mode"), "closed");
    assert_eq!(u(&r, "config.pipeline"), 4);
    assert!(
        (f(&r, "duration_s") - 0.5).abs() < 0.05,
        "warm-up excluded: {r}"
    );
    let received = u(&r, "messages.received");
    assert!(received > 0 && u(&r, "messages.sent") >= received);
    let bytes = u(&r, "bytes.received");
    assert!(bytes >= received * 16 && bytes <= received * 2000);
    assert!(u(&r, "latency_us.p50") <= u(&r, "latency_us.p99"));
    assert!(u(&r, "latency_us.p99") <= u(&r, "latency_us.max"));
    assert!(f(&r, "cpu.ns_per_msg") > 0.0);
}

#[test]
fn an_open_loop_run_achieves_the_asked_rate_within_five_percent() {
    let _guard = many_sockets_guard();
    let server = Server::start("uring", &[]);
    let (out, r) = run_json(
        &server.addr.to_string(),
        &["--conns", "50", "--rate", "20000", "--duration", "2"],
    );
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(pointer(&r, "config.mode"), "open");
    let asked = f(&r, "rate.asked");
    let achieved = f(&r, "rate.achieved");
    assert_eq!(asked, 20_000.0);
    assert!(
        (achieved / asked - 1.0).abs() < 0.05,
        "asked {asked}/s, achieved {achieved}/s"
    );
    let received = u(&r, "messages.received") as f64;
    assert!(
        (received / 40_000.0 - 1.0).abs() < 0.05,
        "{received} of 40000"
    );
    // loadgen's own lateness is reported for every measured message, and it
    // is part of each one's latency, so no percentile of it can exceed the
    // latency's.
    assert_eq!(u(&r, "config.pacing_slack_us"), 20);
    assert_eq!(u(&r, "schedule_lag_us.count"), u(&r, "messages.sent"));
    for q in ["p50", "p99", "max"] {
        assert!(
            u(&r, &format!("schedule_lag_us.{q}")) <= u(&r, &format!("latency_us.{q}")),
            "{q}: lag {} latency {}",
            u(&r, &format!("schedule_lag_us.{q}")),
            u(&r, &format!("latency_us.{q}"))
        );
    }
}

#[test]
fn a_message_count_stops_after_exactly_that_many_echoes() {
    let _guard = many_sockets_guard();
    let server = Server::start("uring", &[]);
    let (out, r) = run_json(
        &server.addr.to_string(),
        &[
            "--conns",
            "10",
            "--threads",
            "2",
            "--messages",
            "5000",
            "--pipeline",
            "3",
        ],
    );
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(u(&r, "messages.sent"), 5000);
    assert_eq!(u(&r, "messages.received"), 5000);
    assert_eq!(u(&r, "latency_us.count"), 5000);
}

/// An echo server that flips one bit in every 1000th byte it echoes.
fn corrupting_echo_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut total = 0u64;
                loop {
                    let n = match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    for (i, b) in buf[..n].iter_mut().enumerate() {
                        if (total + i as u64) % 1000 == 999 {
                            *b ^= 0x01;
                        }
                    }
                    total += n as u64;
                    if stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn a_server_that_corrupts_echoes_is_caught_and_fails_the_run() {
    let _guard = many_sockets_guard();
    let addr = corrupting_echo_server();
    let (out, r) = run_json(
        &addr.to_string(),
        &["--conns", "4", "--duration", "0.5", "--size", "100"],
    );
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    assert!(u(&r, "verify.mismatches") > 0, "{r}");
    assert!(stderr(&out).contains("differed"), "{}", stderr(&out));
}

#[test]
fn merging_two_results_equals_the_histogram_of_both() {
    let _guard = many_sockets_guard();
    let server = Server::start("uring", &[]);
    let target = server.addr.to_string();
    let mut paths = Vec::new();
    let mut runs = Vec::new();
    for (i, conns) in ["5", "30"].iter().enumerate() {
        let (out, r) = run_json(&target, &["--conns", conns, "--messages", "3000"]);
        assert!(out.status.success(), "stderr: {}", stderr(&out));
        let path = temp_path(&format!("merge-{i}.json"));
        std::fs::write(&path, serde_json::to_string(&r).unwrap()).unwrap();
        paths.push(path);
        runs.push(r);
    }
    let out = loadgen(&[
        "merge",
        paths[0].to_str().unwrap(),
        paths[1].to_str().unwrap(),
    ]);
    for p in &paths {
        std::fs::remove_file(p).unwrap();
    }
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (a, b) = (&runs[0], &runs[1]);
    assert_eq!(u(&m, "hosts"), 2);
    assert_eq!(u(&m, "latency_us.count"), 6000);
    assert_eq!(u(&m, "messages.received"), 6000);
    assert_eq!(u(&m, "connections.requested"), 35);
    assert_eq!(
        u(&m, "latency_us.max"),
        u(a, "latency_us.max").max(u(b, "latency_us.max"))
    );
    let mut both = decode_histogram(pointer(a, "histograms.latency_us").as_str().unwrap()).unwrap();
    both.add(decode_histogram(pointer(b, "histograms.latency_us").as_str().unwrap()).unwrap())
        .unwrap();
    for (field, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
        assert_eq!(
            u(&m, &format!("latency_us.{field}")),
            both.value_at_quantile(q),
            "{field}"
        );
    }
    let (lo, hi) = (
        u(a, "latency_us.p50").min(u(b, "latency_us.p50")),
        u(a, "latency_us.p50").max(u(b, "latency_us.p50")),
    );
    assert!((lo..=hi).contains(&u(&m, "latency_us.p50")));
    let merged = decode_histogram(pointer(&m, "histograms.latency_us").as_str().unwrap()).unwrap();
    assert_eq!(merged, both);
}

#[test]
fn bad_flags_exit_2_naming_the_flag_and_range() {
    for (args, flag, range) in [
        (&["--conns", "0"][..], "--conns", "1..=10000000"),
        (&["--size", "10..5"][..], "--size", "empty"),
        (&["--target", "nohostport"][..], "--target", "HOST:PORT"),
        (&["--connect-rate", "0"][..], "--connect-rate", "1..="),
        (&["--rate=0.5"][..], "--rate", "1..=1e9"),
        (
            &["--rate", "1000000", "--conns", "1"][..],
            "--rate",
            "--pipeline",
        ),
        (&["--pacing-slack", "5"][..], "--pacing-slack", "--rate"),
        (
            &["--rate", "1000", "--pacing-slack", "1001"][..],
            "--pacing-slack",
            "0..=1000",
        ),
        (
            &["--duration", "1", "--messages", "10"][..],
            "--duration",
            "--messages",
        ),
    ] {
        let out = loadgen(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(flag) && err.contains(range), "{args:?}: {err}");
    }
}

#[test]
fn an_unreachable_server_is_a_quick_one_line_error() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let started = Instant::now();
    let out = loadgen(&["--target", &format!("127.0.0.1:{port}"), "--conns", "1000"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("--target") && err.contains("refused"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // And nothing on stdout: there is no result to report.
    assert!(out.stdout.is_empty());
}

/// A server that echoes on its first `keep` connections after the probe and
/// closes every later one as soon as it is accepted.
fn closing_echo_server(keep: usize) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for (i, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            if i > keep {
                continue; // dropped: closed
            }
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    if stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[test]
fn a_server_dropping_connections_is_reported_with_the_knob_to_turn() {
    let _guard = many_sockets_guard();
    let addr = closing_echo_server(5).to_string();
    let (out, r) = run_json(&addr, &["--conns", "20", "--duration", "0.3"]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    assert_eq!(
        u(&r, "connections.established") - u(&r, "connections.lost"),
        5,
        "{r}"
    );
    let err = stderr(&out);
    assert!(
        err.contains("held 5 of 20") && err.contains("--max-conns"),
        "{err}"
    );
    // --allow-partial accepts the same outcome.
    let addr = closing_echo_server(5).to_string();
    let (out, r) = run_json(
        &addr,
        &["--conns", "20", "--duration", "0.3", "--allow-partial"],
    );
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(u(&r, "connections.lost"), 15, "{r}");
    assert_eq!(u(&r, "messages.unfinished"), 0, "{r}");
}

#[test]
fn the_process_fd_table_stays_small_while_holding_thousands_of_connections() {
    let _guard = many_sockets_guard();
    let server = Server::start("uring", &[]);
    let mut child = Command::new(LOADGEN)
        .args([
            "--target",
            &server.addr.to_string(),
            "--conns",
            "3000",
            "--duration",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first progress line comes after a second, when the ramp (3000 at
    // 20,000/s) is long done.
    let mut err = child.stderr.take().unwrap();
    read_until(&mut err, "3000 up");
    let fds = std::fs::read_dir(format!("/proc/{}/fd", child.id()))
        .unwrap()
        .count();
    assert!(fds < 64, "{fds} open fds");
    let status = child.wait().unwrap();
    assert!(status.success());
}
