//! A port another process holds is refused, on every backend, for TCP and
//! (with --udp) UDP, even when that process uses SO_REUSEPORT as the server's
//! own workers do: the second server exits 1 with one line naming the address
//! and port, and the first keeps serving as if nothing happened.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::*;

const BACKENDS: [&str; 3] = ["uring", "epoll", "tokio-uring"];

#[test]
fn a_second_server_on_a_taken_port_refuses_and_the_first_keeps_serving() {
    for backend in BACKENDS {
        let first = Server::start(backend, &[]);
        let port = first.addr.port().to_string();
        for second in BACKENDS {
            let (status, stderr) =
                run_bounded(&["--addr", "127.0.0.1", "--port", &port, "--backend", second]);
            assert_refused(status, &stderr, &format!("127.0.0.1:{port} (TCP)"), "TCP");
        }
        let mut client = first.connect();
        client.write_all(b"still mine").unwrap();
        let mut back = [0u8; 10];
        client.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"still mine", "{backend}");
        drop(client);
        let stopped = first.stop();
        assert!(stopped.status.success(), "{stopped:?}");
        // Every connection reached the first server: the second never listened.
        assert_eq!(stopped.summary["accepted"], 1, "{backend}: {stopped:?}");
    }
}

#[test]
fn a_udp_port_held_with_so_reuseport_is_refused_with_udp() {
    // A UDP socket with SO_REUSEADDR and SO_REUSEPORT, as another server's
    // would have, on a port whose TCP side is free.
    let holder = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    holder.set_reuse_address(true).unwrap();
    holder.set_reuse_port(true).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    holder.bind(&any.into()).unwrap();
    let port = holder.local_addr().unwrap().as_socket().unwrap().port();
    for backend in ["uring", "epoll"] {
        let (status, stderr) = run_bounded(&[
            "--addr",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--backend",
            backend,
            "--udp",
        ]);
        assert_refused(status, &stderr, &format!("127.0.0.1:{port} (UDP)"), "UDP");
    }
}

#[test]
fn the_first_server_keeps_its_udp_port_and_echoes_datagrams() {
    let first = Server::start("uring", &["--udp"]);
    let port = first.addr.port().to_string();
    for backend in ["uring", "epoll"] {
        let (status, stderr) = run_bounded(&[
            "--addr",
            "127.0.0.1",
            "--port",
            &port,
            "--backend",
            backend,
            "--udp",
        ]);
        assert_refused(status, &stderr, &format!("127.0.0.1:{port}"), "TCP");
    }
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client.send_to(b"datagram", first.addr).unwrap();
    let mut back = [0u8; 16];
    let n = client.recv(&mut back).unwrap();
    assert_eq!(&back[..n], b"datagram");
    let stopped = first.stop();
    assert_eq!(stopped.summary["udp_in"], 1, "{stopped:?}");
}

fn assert_refused(status: ExitStatus, stderr: &str, names: &str, protocol: &str) {
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(names), "names {names}: {stderr}");
    assert!(
        stderr.contains(&format!(
            "another process already listens on {protocol} port"
        )),
        "{stderr}"
    );
}

/// Runs the server expecting it to exit by itself within 20 s; one that starts
/// serving instead (the bug) is killed and reported.
fn run_bounded(args: &[&str]) -> (ExitStatus, String) {
    let mut child = Command::new(SERVER_BIN)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn uring-echo");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "uring-echo {args:?} kept running on a taken port: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
