//! `loadgen merge` on inputs a user really has: errors name the file, a file
//! that is not a result says so, `-` reads standard input, and inputs that
//! measured different loads merge with a warning naming them.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::loadgen::*;
use common::{Server, many_sockets_guard};
use serde_json::Value;

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("loadgen-merge-{}-{name}", std::process::id()))
}

/// Two real results: 5 connections closed loop, and 10 connections with
/// messages of another size.
fn two_results() -> (Value, Value) {
    let _guard = many_sockets_guard();
    let server = Server::start("uring", &[]);
    let target = server.addr.to_string();
    let (out, a) = run_json(&target, &["--conns", "5", "--messages", "500"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (out, b) = run_json(
        &target,
        &["--conns", "10", "--messages", "500", "--size", "16..1024"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    (a, b)
}

#[test]
fn merge_reads_standard_input_names_files_and_warns_about_different_loads() {
    let (a, b) = two_results();
    let path = temp_path("a.json");
    std::fs::write(&path, a.to_string()).unwrap();
    let mut child = Command::new(LOADGEN)
        .args(["merge", path.to_str().unwrap(), "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    std::fs::remove_file(&path).unwrap();
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(u(&m, "hosts"), 2);
    assert_eq!(u(&m, "messages.received"), 1000);
    assert_eq!(u(&m, "connections.requested"), 15);
    // One warning line, naming both inputs and what differs.
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains("standard input differs from")
            && warnings[0].contains(path.to_str().unwrap())
            && warnings[0].contains("message size 16..=1024 bytes, not 64..=64 bytes"),
        "{err}"
    );
}

#[test]
fn a_file_that_is_not_a_result_is_named_and_said_so() {
    let path = temp_path("not-a-result.json");
    std::fs::write(&path, r#"{"hello": "world"}"#).unwrap();
    let out = loadgen(&["merge", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "{} is not a loadgen JSON result: ",
            path.display()
        )),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    let missing = temp_path("missing.json");
    let out = loadgen(&["merge", missing.to_str().unwrap()]);
    assert!(
        stderr(&out).contains(&missing.display().to_string()),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_error_inside_a_result_names_its_file() {
    let (a, _) = two_results();
    let mut future = a.clone();
    future["schema"] = Value::from(99);
    let (p1, p2) = (temp_path("ok.json"), temp_path("future.json"));
    std::fs::write(&p1, a.to_string()).unwrap();
    std::fs::write(&p2, future.to_string()).unwrap();
    let out = loadgen(&["merge", p1.to_str().unwrap(), p2.to_str().unwrap()]);
    std::fs::remove_file(&p1).unwrap();
    std::fs::remove_file(&p2).unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("{}: schema 99", p2.display())),
        "{err}"
    );
    assert!(!err.contains("input 2"), "{err}");
}
