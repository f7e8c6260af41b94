//! How a loadgen run ends besides running to its end: SIGINT and SIGTERM stop
//! it early with a report that says so and an exit status of 128 + the
//! signal; a `--json` path that cannot be written fails before the run.

mod common;

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::loadgen::*;
use common::{Server, many_sockets_guard};
use serde_json::Value;

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("loadgen-exit-{}-{name}", std::process::id()))
}

#[test]
fn an_interrupted_run_still_reports_what_it_measured() {
    let _guard = many_sockets_guard();
    let server = Server::start("uring", &[]);
    let mut child = Command::new(LOADGEN)
        .args(["--target", &server.addr.to_string(), "--conns", "10"])
        .args(["--duration", "60", "--json", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first progress line: the load is running.
    let mut err = child.stderr.take().unwrap();
    read_until(&mut err, "msgs/s");
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    // 128 + SIGINT, as a shell reports a process the signal ended.
    assert_eq!(out.status.code(), Some(130), "stderr: {rest}");
    assert!(
        rest.contains("interrupted by SIGINT: exit status 130"),
        "{rest}"
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pointer(&r, "interrupted"), "SIGINT", "{r}");
    assert!(
        f(&r, "duration_s") < 30.0 && u(&r, "messages.received") > 0,
        "{r}"
    );
    assert_eq!(u(&r, "messages.unfinished"), 0);
}

#[test]
fn sigint_while_connecting_ends_the_run_at_once_with_130() {
    // A listener that never accepts, with the smallest queue: loadgen's probe
    // takes the one place in it, the kernel drops every later SYN, and each
    // connect would hang until --connect-timeout (60 s here).
    let listener =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    listener.bind(&any.into()).unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let mut child = Command::new(LOADGEN)
        .args(["--target", &addr.to_string(), "--conns", "10"])
        .args(["--connect-timeout", "60", "--json", "-"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first progress line of the connect phase: connects are in flight.
    let mut err = child.stderr.take().unwrap();
    read_until(&mut err, "conns 0 up");
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let signalled = Instant::now();
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    // Far short of the 60 s connect timeout: the connects were cancelled.
    assert!(signalled.elapsed() < Duration::from_secs(30), "{rest}");
    assert_eq!(out.status.code(), Some(130), "stderr: {rest}");
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pointer(&r, "interrupted"), "SIGINT", "{r}");
    assert_eq!(u(&r, "connections.established"), 0, "{r}");
    assert_eq!(u(&r, "errors.interrupted"), 10, "{r}");
}

#[test]
fn sigterm_ends_a_run_with_143_and_says_so_in_the_json() {
    let _guard = many_sockets_guard();
    let server = Server::start("uring", &[]);
    let path = temp_path("sigterm.json");
    let mut child = Command::new(LOADGEN)
        .args(["--target", &server.addr.to_string(), "--conns", "5"])
        .args(["--duration", "60", "--json", path.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    read_until(&mut err, "msgs/s");
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(143), "{rest}");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(pointer(&r, "interrupted"), "SIGTERM", "{r}");
    assert!(u(&r, "messages.received") > 0, "{r}");
}

#[test]
fn a_run_that_goes_to_its_end_says_it_was_not_interrupted() {
    let server = Server::start("uring", &[]);
    let (out, r) = run_json(
        &server.addr.to_string(),
        &["--conns", "2", "--messages", "100"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(pointer(&r, "interrupted").is_null(), "{r}");
}

#[test]
fn an_unwritable_json_path_fails_before_the_run() {
    let server = Server::start("uring", &[]);
    let started = Instant::now();
    let bad = "/nonexistent-dir/result.json";
    let out = loadgen(&[
        "--target",
        &server.addr.to_string(),
        "--duration",
        "30",
        "--quiet",
        "--json",
        bad,
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("--json {bad}")) && err.contains("No such file"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10), "it ran first");
    // Not a single connection was made: the run never started.
    let stopped = server.stop();
    assert_eq!(stopped.summary["accepted"], 0, "{stopped:?}");
}
