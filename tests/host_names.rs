//! A host name works wherever an address is typed: the server's `--addr` and
//! loadgen's `--target` resolve it once at start and say what it resolved to.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::loadgen::*;
use common::*;

#[test]
fn a_server_given_a_host_name_listens_on_what_it_resolved_to_and_says_so() {
    let server = Server::start_with_args(&["--addr", "localhost", "--port", "0", "--workers", "1"]);
    // /etc/hosts maps localhost to 127.0.0.1 (and maybe ::1): IPv4 is taken first.
    assert_eq!(
        server.addr.ip().to_string(),
        "127.0.0.1",
        "{}",
        server.start_line
    );
    let said = server.wait_for_stderr(Duration::from_secs(5), |l| l.contains("resolved to"));
    assert_eq!(
        said.last().unwrap(),
        "uring-echo: --addr localhost resolved to 127.0.0.1",
        "{said:?}"
    );
    let mut client = server.connect();
    client.write_all(b"by name").unwrap();
    let mut back = [0u8; 7];
    client.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"by name");
}

#[test]
fn loadgen_takes_a_host_name_as_target_and_says_what_it_resolved_to() {
    let server = Server::start("uring", &[]);
    let port = server.addr.port();
    let target = format!("localhost:{port}");
    let out = loadgen(&[
        "--target",
        &target,
        "--conns",
        "4",
        "--duration",
        "0.2",
        "--json",
        "-",
    ]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("--target {target} resolved to 127.0.0.1:{port}")),
        "{err}"
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pointer(&r, "config.target"), &format!("127.0.0.1:{port}"));
    assert_eq!(u(&r, "connections.established"), 4, "{r}");
    assert_eq!(u(&r, "verify.mismatches"), 0, "{r}");
}
