//! A port another process holds is refused, on every backend, for TCP and
//! (with --udp) UDP, even when that process uses SO_REUSEPORT as the server's
//! own workers do: the second server exits 1 with one line naming the address
//! and port, and the first keeps serving as if nothing happened.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::process::ExitStatus;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use common::*;

const BACKENDS: [&str; 3] = ["uring", "epoll", "tokio-uring"];

#[test]
fn a_second_server_on_a_taken_port_refuses_and_the_first_keeps_serving() {
    let _serial = one_at_a_time();
    for backend in BACKENDS {
        let first = Server::start(backend, &[]);
        let port = first.addr.port().to_string();
        for second in BACKENDS {
            let (status, stderr) = run_server_expecting_exit(&[
                "--addr",
                "127.0.0.1",
                "--port",
                &port,
                "--backend",
                second,
            ]);
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
    let _serial = one_at_a_time();
    // A UDP socket with SO_REUSEADDR and SO_REUSEPORT, as another server's
    // would have, on a port whose TCP side is free.
    let (_holder, port) = udp_port_with_free_tcp_side();
    for backend in ["uring", "epoll"] {
        let (status, stderr) = run_server_expecting_exit(&[
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
    let _serial = one_at_a_time();
    let first = Server::start("uring", &["--udp"]);
    let port = first.addr.port().to_string();
    for backend in ["uring", "epoll"] {
        let (status, stderr) = run_server_expecting_exit(&[
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

/// A bound UDP socket with SO_REUSEADDR and SO_REUSEPORT, and its port, on a
/// port whose TCP side the server can bind. UDP and TCP ports are handed out
/// independently, and earlier tests' client connections in TIME_WAIT (bound
/// without SO_REUSEADDR) keep their TCP port numbers from any listener: a
/// port like that would make the server refuse on TCP, not UDP.
fn udp_port_with_free_tcp_side() -> (socket2::Socket, u16) {
    use socket2::{Domain, Socket, Type};
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    for _ in 0..100 {
        let holder = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        holder.set_reuse_address(true).unwrap();
        holder.set_reuse_port(true).unwrap();
        holder.bind(&any.into()).unwrap();
        let at = holder.local_addr().unwrap();
        let tcp = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        tcp.set_reuse_address(true).unwrap();
        if tcp.bind(&at).is_ok() {
            let port = at.as_socket().unwrap().port();
            return (holder, port);
        }
    }
    panic!("no UDP port with a free TCP side in 100 tries");
}

/// The tests of this file run one at a time: their TCP clients take ephemeral
/// ports, and one of them can be the very port number the UDP test's holder
/// was given, which makes the server refuse on TCP instead of UDP.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
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

/// A port no process listens on, held only by a client connection's socket in
/// TIME_WAIT (a client that used it as its local port and closed first), is
/// refused too, since no listener can bind beside it; the message says so
/// instead of blaming another server.
#[test]
fn a_port_held_only_by_time_wait_is_refused_with_that_reason() {
    use socket2::{Domain, Socket, Type};
    let _serial = one_at_a_time();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // Bound without SO_REUSEADDR, as a client's local port usually is.
    let client = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    client.bind(&any.into()).unwrap();
    let port = client.local_addr().unwrap().as_socket().unwrap().port();
    client
        .connect(&listener.local_addr().unwrap().into())
        .unwrap();
    let (mut accepted, _) = listener.accept().unwrap();
    // The client closes first, so its side ends in TIME_WAIT.
    drop(client);
    let mut rest = Vec::new();
    accepted.read_to_end(&mut rest).expect("the client's FIN");
    drop(accepted);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !time_wait_on(port) {
        assert!(
            std::time::Instant::now() < deadline,
            "no TIME_WAIT socket on port {port} within 10 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let port_arg = port.to_string();
    let (status, stderr) =
        run_server_expecting_exit(&["--port", &port_arg, "--addr", "127.0.0.1", "--workers", "1"]);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(&format!("127.0.0.1:{port}")), "{stderr}");
    assert!(
        stderr.contains("no process listens") && stderr.contains("TIME_WAIT"),
        "{stderr}"
    );
    assert!(stderr.contains("ip_local_port_range"), "{stderr}");
    assert!(!stderr.contains("already listens"), "{stderr}");
}

/// Whether this namespace has a TCP socket in TIME_WAIT (state 06) on local `port`.
fn time_wait_on(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    table.lines().skip(1).any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        cols.len() > 3 && cols[1].ends_with(&format!(":{port:04X}")) && cols[3] == "06"
    })
}
