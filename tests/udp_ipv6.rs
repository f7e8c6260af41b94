//! UDP echo (RFC 862) and IPv6, on both backends: datagrams byte-exact up to the
//! largest UDP can carry, many clients at once, boundaries preserved, oversized
//! datagrams counted and dropped, and TCP and UDP over IPv6 and dual stack.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use common::*;

fn udp_client(bind: &str) -> UdpSocket {
    let s = UdpSocket::bind(bind).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn udp_round_trip(client: &UdpSocket, to: SocketAddr, data: &[u8]) -> Vec<u8> {
    client.send_to(data, to).unwrap();
    let mut buf = vec![0u8; 70_000];
    let (n, from) = client.recv_from(&mut buf).expect("echo datagram");
    assert_eq!(from, to, "the echo must come from the server's address");
    buf.truncate(n);
    buf
}

fn tcp_round_trip(to: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(to).unwrap();
    s.write_all(data).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    back
}

for_each_backend! {
    fn udp_echoes_datagrams_byte_exact_up_to_the_largest_size(backend) {
        let server = Server::start(backend, &["--udp"]);
        let client = udp_client("127.0.0.1:0");
        // 65,507 bytes is the largest UDP payload over IPv4.
        let sizes = [0usize, 1, 2, 63, 64, 1400, 1500, 4096, 9000, 32768, 65_000, 65_507];
        for (i, &len) in sizes.iter().enumerate() {
            let data = payload(i as u64, len);
            assert_eq!(udp_round_trip(&client, server.addr, &data), data, "datagram of {len} bytes");
        }
        let stopped = server.stop();
        assert_eq!(stopped.summary["udp_in"], sizes.len() as u64, "{stopped:?}");
        assert_eq!(stopped.summary["udp_out"], sizes.len() as u64, "{stopped:?}");
        assert_eq!(stopped.summary["udp_truncated"], 0);
    }

    fn udp_serves_many_clients_at_once_keeping_datagram_boundaries(backend) {
        let server = Server::start(backend, &["--udp"]);
        let addr = server.addr;
        let clients: Vec<_> = (0..32)
            .map(|c| {
                std::thread::spawn(move || {
                    let client = udp_client("127.0.0.1:0");
                    for i in 0..50u64 {
                        // Each datagram must come back whole and alone: sizes vary.
                        let data = payload(c * 1000 + i, 1 + ((c * 131 + i * 17) % 3000) as usize);
                        assert_eq!(udp_round_trip(&client, addr, &data), data);
                    }
                })
            })
            .collect();
        for c in clients {
            c.join().unwrap();
        }
        let stopped = server.stop();
        assert_eq!(stopped.summary["udp_out"], 32 * 50, "{stopped:?}");
        assert_eq!(stopped.summary["udp_dropped"], 0, "{stopped:?}");
    }

    fn udp_datagrams_over_the_limit_are_counted_and_dropped_not_cut(backend) {
        let server = Server::start(backend, &["--udp", "--udp-max-datagram", "100", "--workers", "1"]);
        let client = udp_client("127.0.0.1:0");
        client.send_to(&payload(1, 101), server.addr).unwrap();
        // Datagrams from one source reach one worker in order: once the small
        // one is echoed, the large one was handled before it.
        let small = payload(2, 100);
        assert_eq!(udp_round_trip(&client, server.addr, &small), small);
        let stopped = server.stop();
        assert_eq!(stopped.summary["udp_truncated"], 1, "{stopped:?}");
        assert_eq!(stopped.summary["udp_out"], 1, "{stopped:?}");
    }

    fn ipv6_loopback_serves_tcp_and_udp(backend) {
        let server = Server::start_with_args(&["--port", "0", "--addr", "::1", "--workers", "2", "--backend", backend, "--udp"]);
        assert!(server.addr.is_ipv6(), "{}", server.addr);
        let data = payload(6, 100_000);
        assert_eq!(tcp_round_trip(server.addr, &data), data);
        let client = udp_client("[::1]:0");
        // 65,527 bytes: the largest UDP payload over IPv6 without jumbograms.
        for len in [1usize, 1280, 65_527] {
            let data = payload(len as u64, len);
            assert_eq!(udp_round_trip(&client, server.addr, &data), data, "{len} bytes over IPv6");
        }
        let stopped = server.stop();
        assert_eq!(stopped.summary["udp_out"], 3, "{stopped:?}");
    }

    fn dual_stack_serves_ipv4_and_ipv6_clients(backend) {
        let server = Server::start_with_args(&["--port", "0", "--addr", "::", "--workers", "2", "--backend", backend, "--udp"]);
        let port = server.addr.port();
        for host in ["127.0.0.1", "[::1]"] {
            let to: SocketAddr = format!("{host}:{port}").parse().unwrap();
            let data = payload(port as u64, 20_000);
            assert_eq!(tcp_round_trip(to, &data), data, "TCP via {host}");
            let client = udp_client(&format!("{host}:0"));
            let back = udp_round_trip(&client, to, &data);
            assert_eq!(back, data, "UDP via {host}");
        }
        let stopped = server.stop();
        assert_eq!(stopped.summary["accepted"], 2, "{stopped:?}");
        assert_eq!(stopped.summary["udp_out"], 2, "{stopped:?}");
    }
}

#[test]
fn udp_is_off_unless_asked_for() {
    let server = Server::start("uring", &[]);
    let client = udp_client("127.0.0.1:0");
    client
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    client.send_to(b"ping", server.addr).unwrap();
    let mut buf = [0u8; 16];
    // Nothing listens on UDP: the kernel answers with ICMP port unreachable,
    // which a later receive reports (or nothing arrives at all).
    assert!(
        client.recv_from(&mut buf).is_err(),
        "UDP answered without --udp"
    );
    let stopped = server.stop();
    assert_eq!(stopped.summary["udp_in"], 0);
}

#[test]
fn bad_udp_combinations_exit_2_naming_the_flag() {
    for (args, flag) in [
        (&["--udp", "--backend", "tokio-uring"][..], "--udp"),
        (&["--udp-max-datagram", "0"][..], "--udp-max-datagram"),
        (&["--udp-max-datagram", "70000"][..], "--udp-max-datagram"),
    ] {
        let (status, stderr) = run_server_expecting_exit(args);
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}
