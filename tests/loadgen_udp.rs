//! `loadgen --udp` against the real `uring-echo --udp` on both backends, over
//! IPv4 and IPv6, and against deliberately misbehaving UDP echo helpers (one
//! dropping every tenth datagram, one duplicating and reordering): loss,
//! duplicates and reordering are counted, loss fails the run unless
//! `--max-loss` allows it, and bad flag combinations exit 2.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::thread;
use std::time::Duration;

use common::*;
use serde_json::Value;

use common::loadgen::*;

/// Every test that runs a load holds `many_sockets_guard`: one load at a time,
/// since on a two-core machine two at once can starve a server long enough
/// for its socket buffer to overflow, and the kernel to drop datagrams.
///
/// Every datagram sent came back, exactly once, byte-exact.
fn assert_lossless(r: &Value) {
    let sent = u(r, "udp.datagrams.sent");
    assert!(sent > 0, "{r}");
    assert_eq!(u(r, "udp.datagrams.received"), sent, "{r}");
    assert_eq!(u(r, "udp.datagrams.lost"), 0, "{r}");
    assert_eq!(u(r, "udp.datagrams.duplicated"), 0, "{r}");
    assert_eq!(f(r, "udp.loss_ratio"), 0.0, "{r}");
    assert_eq!(u(r, "verify.mismatches"), 0, "{r}");
    assert_eq!(u(r, "messages.sent"), sent, "{r}");
    assert_eq!(u(r, "messages.received"), sent, "{r}");
    assert_eq!(u(r, "latency_us.count"), sent, "{r}");
    assert_eq!(pointer(r, "config.protocol"), "udp");
}

for_each_backend! {
    fn udp_at_a_moderate_rate_loses_nothing_and_verifies_every_datagram(backend) {
        let _guard = many_sockets_guard();
        let server = Server::start(backend, &["--udp"]);
        let (out, r) = run_json(
            &server.addr.to_string(),
            &["--udp", "--conns", "50", "--rate", "5000", "--duration", "2", "--size", "16..512"],
        );
        if !out.status.success() {
            let stopped = server.stop();
            panic!("stderr: {}; server: {:?}", stderr(&out), stopped.summary);
        }
        assert_lossless(&r);
        let sent = u(&r, "udp.datagrams.sent") as f64;
        assert!((sent / 10_000.0 - 1.0).abs() < 0.01, "{sent} of 10000 datagrams");
        assert_eq!(u(&r, "connections.established"), 50, "{r}");
        assert!(u(&r, "bytes.received") >= u(&r, "messages.received") * 16, "{r}");
        assert!(f(&r, "rate.asked") == 5000.0 && pointer(&r, "rate.achieved").is_number());
        for field in ["p50", "p99", "max"] {
            u(&r, &format!("latency_us.{field}"));
        }
        let stopped = server.stop();
        // The load and the probe, all echoed.
        assert_eq!(stopped.summary["udp_out"], sent as u64 + 1, "{stopped:?}");
    }

    fn tcp_and_udp_runs_reach_a_server_on_the_ipv6_loopback(backend) {
        let _guard = many_sockets_guard();
        let server = Server::start_with_args(&[
            "--port", "0", "--addr", "::1", "--workers", "2", "--backend", backend, "--udp",
        ]);
        let target = server.addr.to_string();
        assert!(target.starts_with("[::1]:"), "{target}");
        let (out, r) = run_json(&target, &["--conns", "10", "--messages", "2000"]);
        assert!(out.status.success(), "TCP over IPv6: {}", stderr(&out));
        assert_eq!(u(&r, "messages.received"), 2000);
        assert_eq!(pointer(&r, "config.target"), target.as_str());
        assert!(pointer(&r, "udp").is_null(), "{r}");
        let (out, r) = run_json(
            &target,
            &["--udp", "--conns", "10", "--rate", "1000", "--duration", "0.5", "--size", "16..1400",
              "--source-addrs", "::1"],
        );
        assert!(out.status.success(), "UDP over IPv6: {}", stderr(&out));
        assert_lossless(&r);
        assert_eq!(pointer(&r, "config.source_addrs"), &serde_json::json!(["::1"]));
        // The largest IPv6 datagram goes through and back intact. A socket
        // buffer holds only three of them, so a busy machine may drop some.
        let (out, r) = run_json(
            &target,
            &["--udp", "--conns", "2", "--rate", "100", "--duration", "0.3", "--size", "65527",
              "--max-loss", "0.5"],
        );
        assert!(out.status.success(), "65,527-byte datagrams: {}", stderr(&out));
        assert!(u(&r, "udp.datagrams.received") > 0, "{r}");
        assert_eq!(u(&r, "verify.mismatches"), 0, "{r}");
    }
}

/// A UDP echo helper on 127.0.0.1 that passes each datagram it receives
/// (counting from 0, the probe included) to `act`, which returns what to send
/// back to its source, in order. `flush` is called after 50 ms of silence.
fn udp_helper(
    mut act: impl FnMut(u64, Vec<u8>) -> Vec<Vec<u8>> + Send + 'static,
    mut flush: impl FnMut() -> Vec<Vec<u8>> + Send + 'static,
) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let addr = socket.local_addr().unwrap();
    thread::spawn(move || {
        let mut buf = vec![0u8; 65_536];
        let mut n = 0u64;
        let mut last_source = None;
        loop {
            let (out, to) = match socket.recv_from(&mut buf) {
                Ok((len, from)) => {
                    n += 1;
                    last_source = Some(from);
                    (act(n - 1, buf[..len].to_vec()), from)
                }
                Err(_) => match last_source {
                    Some(to) => (flush(), to),
                    None => continue,
                },
            };
            for d in out {
                let _ = socket.send_to(&d, to);
            }
        }
    });
    addr
}

#[test]
fn a_server_dropping_every_tenth_datagram_is_ten_percent_loss_and_fails_the_run() {
    let _guard = many_sockets_guard();
    let drop_tenth = || udp_helper(|i, d| if i % 10 == 9 { vec![] } else { vec![d] }, Vec::new);
    let args = [
        "--udp",
        "--conns",
        "10",
        "--rate",
        "2000",
        "--duration",
        "1",
        "--udp-timeout",
        "0.3",
    ];
    let (out, r) = run_json(&drop_tenth().to_string(), &args);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    let ratio = f(&r, "udp.loss_ratio");
    assert!((0.09..=0.11).contains(&ratio), "loss ratio {ratio}: {r}");
    let (sent, received, lost) = (
        u(&r, "udp.datagrams.sent"),
        u(&r, "udp.datagrams.received"),
        u(&r, "udp.datagrams.lost"),
    );
    assert_eq!(received + lost, sent, "{r}");
    assert_eq!(u(&r, "verify.mismatches"), 0, "{r}");
    let err = stderr(&out);
    assert!(
        err.contains("datagrams lost") && err.contains("--max-loss"),
        "{err}"
    );
    // A threshold above the loss accepts the same run.
    let (out, r) = run_json(
        &drop_tenth().to_string(),
        &[&args[..], &["--max-loss", "0.2"]].concat(),
    );
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert!(u(&r, "udp.datagrams.lost") > 0, "{r}");
}

#[test]
fn duplicated_and_reordered_echoes_are_counted_without_failing_the_run() {
    let _guard = many_sockets_guard();
    // One flow, so "the next datagram" is the same flow's: every tenth
    // datagram (from the 4th) is echoed twice, and every tenth (from the 6th)
    // is held back and echoed after the one that follows it.
    let mut held: Option<Vec<u8>> = None;
    let held_flush = std::sync::Arc::new(std::sync::Mutex::new(None::<Vec<u8>>));
    let (a, b) = (held_flush.clone(), held_flush);
    let addr = udp_helper(
        move |i, d| {
            let mut out = Vec::new();
            match i % 10 {
                3 => out.extend([d.clone(), d]),
                5 => held = Some(d),
                _ => {
                    out.push(d);
                    out.extend(held.take());
                }
            }
            *a.lock().unwrap() = held.clone();
            out
        },
        move || b.lock().unwrap().take().into_iter().collect(),
    );
    let (out, r) = run_json(
        &addr.to_string(),
        &[
            "--udp",
            "--conns",
            "1",
            "--rate",
            "1000",
            "--duration",
            "0.5",
        ],
    );
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let sent = u(&r, "udp.datagrams.sent");
    assert!(sent >= 495, "{r}");
    assert_eq!(u(&r, "udp.datagrams.received"), sent, "{r}");
    assert_eq!(u(&r, "udp.datagrams.lost"), 0, "{r}");
    // The probe is datagram 0 of the helper's count, so the load's datagram k
    // is its k + 1: about one in ten of each.
    let tenth = sent / 10;
    for field in ["duplicated", "reordered"] {
        let n = u(&r, &format!("udp.datagrams.{field}"));
        assert!(
            n.abs_diff(tenth) <= 2,
            "{field} {n}, expected about {tenth}: {r}"
        );
    }
    assert_eq!(u(&r, "verify.mismatches"), 0, "{r}");
}

#[test]
fn a_datagram_count_stops_after_exactly_that_many() {
    let _guard = many_sockets_guard();
    let server = Server::start("uring", &["--udp"]);
    let (out, r) = run_json(
        &server.addr.to_string(),
        &[
            "--udp",
            "--conns",
            "10",
            "--threads",
            "2",
            "--rate",
            "4000",
            "--messages",
            "3000",
            "--warmup",
            "0.1",
            "--max-loss",
            "1",
        ],
    );
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(u(&r, "udp.datagrams.sent"), 3000, "{r}");
    let (received, lost) = (u(&r, "udp.datagrams.received"), u(&r, "udp.datagrams.lost"));
    assert_eq!(received + lost, 3000, "{r}");
    assert_eq!(u(&r, "messages.received"), received, "{r}");
    assert_eq!(u(&r, "verify.mismatches"), 0, "{r}");
    assert_eq!(u(&r, "config.messages"), 3000);
    // The warm-up's datagrams were echoed too, counted only in cpu.msgs.
    assert!(u(&r, "cpu.msgs") > 3000, "{r}");
}

#[test]
fn a_target_without_udp_is_a_quick_one_line_error() {
    let server = Server::start("uring", &[]);
    let out = loadgen(&[
        "--udp",
        "--target",
        &server.addr.to_string(),
        "--rate",
        "100",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("--udp") && err.contains("--target"), "{err}");
}

#[test]
fn bad_udp_combinations_exit_2_naming_the_flags() {
    for (args, words) in [
        (&["--udp"][..], &["--udp", "--rate"][..]),
        (
            &["--udp", "--rate", "100", "--pipeline", "4"][..],
            &["--udp", "--pipeline"][..],
        ),
        (
            &["--udp", "--rate", "100", "--size", "8"][..],
            &["--size", "16-byte header"][..],
        ),
        (
            &["--udp", "--rate", "100", "--size", "16..65508"][..],
            &["--size", "65507", "IPv4"][..],
        ),
        (
            &[
                "--udp",
                "--rate",
                "100",
                "--target",
                "[::1]:9999",
                "--size",
                "65528",
            ][..],
            &["--size", "65527", "IPv6"][..],
        ),
        (&["--max-loss", "0.1"][..], &["--max-loss", "--udp"][..]),
        (&["--udp-timeout", "1"][..], &["--udp-timeout", "--udp"][..]),
        (
            &["--udp", "--rate", "100", "--max-loss", "1.5"][..],
            &["--max-loss", "0..=1"][..],
        ),
    ] {
        let out = loadgen(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        for w in words {
            assert!(err.contains(w), "{args:?}: no {w} in {err}");
        }
    }
}
