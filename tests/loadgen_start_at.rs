//! `loadgen --start-at`: load hosts given one wall-clock instant begin their
//! load at it, whatever their ramps took, and the JSON records the requested
//! and the actual start; a ramp that ends after the instant is said out loud.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use common::Server;
use common::loadgen::*;
use serde_json::Value;

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("loadgen-start-{}-{name}", std::process::id()))
}

fn spawn_loadgen(args: &[&str]) -> Child {
    Command::new(LOADGEN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn loadgen")
}

fn read_json(path: &PathBuf) -> Value {
    let text = std::fs::read_to_string(path).expect("loadgen wrote its --json file");
    std::fs::remove_file(path).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The margin the instant is set ahead by: more than both ramps take, also
/// on a loaded machine; the tolerance is what a sleep may overshoot there.
const AHEAD_S: f64 = 2.5;
const TOLERANCE_S: f64 = 0.2;

#[test]
fn two_load_hosts_given_one_instant_start_their_load_together_however_long_their_ramps() {
    let server = Server::start("uring", &[]);
    let target = server.addr.to_string();
    let at = unix_now() + AHEAD_S;
    let at_arg = format!("{at:.6}");
    let paths = [temp_path("slow.json"), temp_path("fast.json")];
    // One ramp takes ~1 s (50 connections at 50/s), the other a few ms.
    let ramps = [
        ["--conns", "50", "--connect-rate", "50"],
        ["--conns", "10", "--connect-rate", "20000"],
    ];
    let children: Vec<Child> = ramps
        .iter()
        .zip(&paths)
        .map(|(ramp, path)| {
            let mut args = vec!["--target", &target, "--duration", "0.3", "--quiet"];
            args.extend(ramp);
            args.extend(["--start-at", &at_arg, "--json", path.to_str().unwrap()]);
            spawn_loadgen(&args)
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "stderr: {}", stderr(&out));
        assert!(
            !stderr(&out).contains("warning"),
            "no host was late: {}",
            stderr(&out)
        );
    }
    let merged = loadgen(&[
        "merge",
        paths[0].to_str().unwrap(),
        paths[1].to_str().unwrap(),
    ]);
    assert!(merged.status.success(), "{}", stderr(&merged));
    let results: Vec<Value> = paths.iter().map(read_json).collect();
    for r in &results {
        assert_eq!(
            f(r, "start.requested"),
            at_arg.parse::<f64>().unwrap(),
            "{r}"
        );
        assert_eq!(pointer(r, "start.late"), &Value::Bool(false), "{r}");
        let actual = f(r, "start.actual");
        assert!(
            actual >= at - 0.001 && actual < at + TOLERANCE_S,
            "load began at {actual}, asked {at}"
        );
        assert_eq!(u(r, "verify.mismatches"), 0);
        assert!(u(r, "messages.received") > 0, "{r}");
    }
    let m: Value = serde_json::from_slice(&merged.stdout).unwrap();
    assert_eq!(u(&m, "hosts"), 2);
    let spread = f(&m, "start.spread_s");
    let actuals: Vec<f64> = results.iter().map(|r| f(r, "start.actual")).collect();
    assert!(
        (spread - (actuals[0] - actuals[1]).abs()).abs() < 1e-6,
        "{spread} {actuals:?}"
    );
    assert!(spread < TOLERANCE_S, "hosts started {spread} s apart");
}

#[test]
fn an_instant_the_ramp_missed_starts_the_load_at_once_with_a_warning_and_late_recorded() {
    let server = Server::start("uring", &[]);
    let at = unix_now() - 1.0;
    let at_arg = format!("{at:.3}");
    let (out, r) = run_json(
        &server.addr.to_string(),
        &["--conns", "4", "--duration", "0.2", "--start-at", &at_arg],
    );
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("warning: the connections were made") && err.contains("after --start-at"),
        "{err}"
    );
    assert_eq!(pointer(&r, "start.late"), &Value::Bool(true), "{r}");
    assert_eq!(f(&r, "start.requested"), at_arg.parse::<f64>().unwrap());
    let actual = f(&r, "start.actual");
    assert!(actual >= at + 1.0 - 0.001, "began at {actual}, asked {at}");
    assert!(u(&r, "messages.received") > 0, "{r}");
}

#[test]
fn without_start_at_the_json_still_says_when_the_load_began() {
    let server = Server::start("uring", &[]);
    let before = unix_now();
    let (out, r) = run_json(
        &server.addr.to_string(),
        &["--conns", "2", "--duration", "0.1"],
    );
    let after = unix_now();
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(pointer(&r, "start.requested"), &Value::Null);
    assert_eq!(pointer(&r, "start.late"), &Value::Bool(false));
    assert_eq!(f(&r, "start.spread_s"), 0.0);
    let actual = f(&r, "start.actual");
    assert!(
        before < actual && actual < after,
        "{before} < {actual} < {after}"
    );
}

#[test]
fn a_start_instant_far_from_now_is_refused_naming_the_flag() {
    let far = format!("{:.0}", unix_now() * 1000.0);
    let out = loadgen(&["--start-at", &far]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("--start-at") && err.contains("within a day"),
        "{err}"
    );
}
