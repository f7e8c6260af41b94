//! Every flag of `uring-echo --help`, given every kind of bad value (out of
//! range, zero, negative, non-numeric, empty, missing, repeated, conflicting):
//! exit 2 and an error naming the flag. Addresses the server cannot bind give
//! one clear line and exit 1. (tests/echo.rs covers a port in use.)

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::*;

/// (arguments, the flag the error must name). Negative numbers appear both as
/// `--flag=-1` and as a separate word. Every flag has cases here;
/// `every_flag_in_help_is_covered` keeps it that way.
const BAD: &[(&[&str], &str)] = &[
    (&["--port", "70000"], "--port"),
    (&["--port", "65536"], "--port"),
    (&["--port=-1"], "--port"),
    (&["--port", "http"], "--port"),
    (&["--port", "1.5"], "--port"),
    (&["--port", ""], "--port"),
    (&["-p", "99999"], "--port"),
    (&["--addr", "not-an-ip"], "--addr"),
    (&["--addr", "256.0.0.1"], "--addr"),
    (&["--addr", "1.2.3"], "--addr"),
    (&["--addr", "0"], "--addr"),
    (&["--addr", ""], "--addr"),
    (&["-a", "no-such-host.invalid"], "--addr"),
    (&["--workers", "0"], "--workers"),
    (&["--workers", "1025"], "--workers"),
    (&["--workers=-1"], "--workers"),
    (&["--workers", "two"], "--workers"),
    (&["--workers", ""], "--workers"),
    (&["-w", "0"], "--workers"),
    (&["--backend", "kqueue"], "--backend"),
    (&["--backend", ""], "--backend"),
    (&["--backend", "0"], "--backend"),
    (&["-b", "io_uring"], "--backend"),
    (&["--buf-size", "0"], "--buf-size"),
    (&["--buf-size", "63"], "--buf-size"),
    (&["--buf-size", "1048577"], "--buf-size"),
    (&["--buf-size=-4096"], "--buf-size"),
    (&["--buf-size", "4k"], "--buf-size"),
    (&["--buf-size", ""], "--buf-size"),
    (&["--buf-count", "0"], "--buf-count"),
    (&["--buf-count", "1000"], "--buf-count"),
    (&["--buf-count", "3"], "--buf-count"),
    (&["--buf-count", "65536"], "--buf-count"),
    (&["--buf-count=-8"], "--buf-count"),
    (&["--buf-count", "many"], "--buf-count"),
    (&["--buf-count", ""], "--buf-count"),
    (&["--conn-buffers", "0"], "--conn-buffers"),
    (&["--conn-buffers", "32769"], "--conn-buffers"),
    (&["--conn-buffers=-1"], "--conn-buffers"),
    (&["--conn-buffers", "eight"], "--conn-buffers"),
    (&["--conn-buffers", ""], "--conn-buffers"),
    // Conflicting: one connection could hold more than the whole pool.
    (
        &["--buf-count", "16", "--conn-buffers", "17"],
        "--conn-buffers",
    ),
    (
        &["--conn-buffers", "4096", "--buf-count", "1024"],
        "--buf-count",
    ),
    (&["--max-conns", "0"], "--max-conns"),
    (&["--max-conns", "100000001"], "--max-conns"),
    (&["--max-conns=-1"], "--max-conns"),
    (&["--max-conns", "lots"], "--max-conns"),
    (&["--max-conns", ""], "--max-conns"),
    (&["--backlog", "0"], "--backlog"),
    (&["--backlog", "1000001"], "--backlog"),
    (&["--backlog=-1"], "--backlog"),
    (&["--backlog", "deep"], "--backlog"),
    (&["--backlog", ""], "--backlog"),
    (&["--drain-timeout=-1"], "--drain-timeout"),
    (&["--drain-timeout", "3601"], "--drain-timeout"),
    (&["--drain-timeout", "nan"], "--drain-timeout"),
    (&["--drain-timeout", "inf"], "--drain-timeout"),
    (&["--drain-timeout", "forever"], "--drain-timeout"),
    (&["--drain-timeout", "5s"], "--drain-timeout"),
    (&["--drain-timeout", ""], "--drain-timeout"),
    (&["--busy-poll", "1000001"], "--busy-poll"),
    (&["--busy-poll=-1"], "--busy-poll"),
    (&["--busy-poll", "1.5"], "--busy-poll"),
    (&["--busy-poll", "50us"], "--busy-poll"),
    (&["--busy-poll", ""], "--busy-poll"),
    (
        &["--busy-poll", "50", "--backend", "tokio-uring"],
        "--busy-poll",
    ),
    (&["--wait-batch", "0"], "--wait-batch"),
    (&["--wait-batch", "4097"], "--wait-batch"),
    (&["--wait-batch", "many"], "--wait-batch"),
    (&["--min-wait", "0"], "--min-wait"),
    (&["--min-wait", "1000001"], "--min-wait"),
    (&["--min-wait", "50us"], "--min-wait"),
    // Conflicting: a bound on a batch that is not asked for; io_uring waits on epoll.
    (&["--wait-batch", "1", "--min-wait", "50"], "--min-wait"),
    (
        &["--backend", "epoll", "--wait-batch", "32"],
        "--wait-batch",
    ),
    (&["--send-zc", "0"], "--send-zc"),
    (&["--send-zc", "16777217"], "--send-zc"),
    (&["--send-zc", "16k"], "--send-zc"),
    (&["--backend", "epoll", "--send-zc", "16384"], "--send-zc"),
    (&["--stats", "0"], "--stats"),
    (&["--stats", "0.001"], "--stats"),
    (&["--stats", "86401"], "--stats"),
    (&["--stats=-1"], "--stats"),
    (&["--stats", "nan"], "--stats"),
    (&["--stats", "often"], "--stats"),
    (&["--stats", ""], "--stats"),
    (&["--quiet=yes"], "--quiet"),
    (&["--stats-per-worker=yes"], "--stats-per-worker"),
    (&["--cpus", ""], "--cpus"),
    (&["--cpus", "a"], "--cpus"),
    (&["--cpus", "3-1"], "--cpus"),
    (&["--cpus", "0-"], "--cpus"),
    (&["--cpus", "0,0"], "--cpus"),
    (&["--cpus", "1024"], "--cpus"),
    (&["--cpus=-1"], "--cpus"),
    // Conflicting: workers that do not fill the listed CPUs evenly.
    (&["--cpus", "0,1", "--workers", "3"], "--workers"),
    (&["--cpus", "0,1", "--workers", "1"], "--cpus"),
    (&["--udp=yes"], "--udp"),
    (&["--no-recv-bundle=1"], "--no-recv-bundle"),
    (&["--sq-entries", "0"], "--sq-entries"),
    (&["--sq-entries", "100"], "--sq-entries"),
    (&["--sq-entries", "65536"], "--sq-entries"),
    (&["--sq-entries", "-8"], "--sq-entries"),
    (&["--sq-entries", ""], "--sq-entries"),
    (&["--cq-entries", "8"], "--cq-entries"),
    (&["--cq-entries", "1000"], "--cq-entries"),
    (&["--cq-entries", "131072"], "--cq-entries"),
    (&["--cq-entries", "big"], "--cq-entries"),
    (
        &["--sq-entries", "4096", "--cq-entries", "1024"],
        "--sq-entries",
    ),
    (&["--udp-max-datagram", "0"], "--udp-max-datagram"),
    (&["--udp-max-datagram", "65528"], "--udp-max-datagram"),
    (&["--udp-max-datagram", "-1"], "--udp-max-datagram"),
    (&["--udp-max-datagram", "jumbo"], "--udp-max-datagram"),
    (&["--udp", "--backend", "tokio-uring"], "--udp"),
    // Negative numbers as a separate word name the flag too.
    (&["--port", "-1"], "--port"),
    (&["--workers", "-2"], "--workers"),
    // Unknown and repeated flags.
    (&["--frobnicate"], "--frobnicate"),
    (&["--port", "1", "--port", "2"], "--port"),
    (&["--backend", "epoll", "-b", "uring"], "--backend"),
];

/// Flags that take no value.
const SWITCHES: &[&str] = &["--quiet", "--udp", "--no-recv-bundle", "--stats-per-worker"];

/// The long flags `--help` lists, without --help and --version.
fn flags_in_help() -> BTreeSet<String> {
    let out = Command::new(SERVER_BIN)
        .arg("--help")
        .output()
        .expect("run --help");
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    help.lines()
        .filter(|l| l.trim_start().starts_with('-'))
        .filter_map(|l| {
            l.split([' ', ','])
                .find(|w| w.starts_with("--"))
                .map(str::to_string)
        })
        .filter(|f| f != "--help" && f != "--version")
        .collect()
}

#[test]
fn every_flag_in_help_is_covered() {
    let flags = flags_in_help();
    assert!(
        flags.len() >= 12,
        "too few flags parsed from --help: {flags:?}"
    );
    for flag in &flags {
        assert!(
            BAD.iter().any(|(_, named)| named == flag),
            "{flag} is in --help but has no bad-value case"
        );
        // A flag that takes a value, given none.
        if !SWITCHES.contains(&flag.as_str()) {
            let (status, stderr) = run_server_expecting_exit(&[flag]);
            assert_eq!(status.code(), Some(2), "{flag} without a value: {stderr}");
            assert!(
                stderr.contains(flag.as_str()),
                "{flag} without a value: {stderr}"
            );
        }
    }
}

#[test]
fn every_bad_value_exits_2_naming_the_flag() {
    for (args, flag) in BAD {
        let (status, stderr) = run_server_expecting_exit(args);
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(flag),
            "{args:?} did not name {flag}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn an_address_not_on_this_host_is_one_clear_error() {
    // 192.0.2.1 is TEST-NET-1 (RFC 5737): never a local address. Nothing is sent
    // to it; bind(2) fails with EADDRNOTAVAIL.
    for backend in ["uring", "epoll"] {
        let (status, stderr) = run_server_expecting_exit(&[
            "--addr",
            "192.0.2.1",
            "--port",
            "0",
            "--backend",
            backend,
        ]);
        assert_eq!(status.code(), Some(1), "{backend}: {stderr}");
        assert!(stderr.contains("bind 192.0.2.1:"), "{backend}: {stderr}");
        assert!(
            stderr.contains("--addr"),
            "{backend}: no hint naming the flag: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{backend}: {stderr}");
    }
}
