//! The server echoes, on both backends: byte-exact under concurrency and
//! pipelining, half-close, thousands of connections, an exhausted buffer pool,
//! connection limits, graceful stop.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::Duration;

use common::*;

for_each_backend! {
    fn echoes_random_payloads_byte_exact_on_1000_connections(backend) {
        let _guard = many_sockets_guard();
        let server = Server::start(backend, &[]);
        let clients = echo_random_payloads(&server, 1000);
        let total: u64 = clients.iter().map(|c| c.payload.len() as u64).sum();
        drop(clients);
        let stopped = server.stop();
        assert!(stopped.status.success(), "{stopped:?}");
        assert_eq!(stopped.summary["bytes_out"], total);
        assert_eq!(stopped.summary["accepted"], 1000);
        assert_eq!(stopped.summary["errors"], 0);
    }

    fn echoes_what_is_pending_after_a_half_close_then_closes(backend) {
        let server = Server::start(backend, &[]);
        let mut s = server.connect();
        let data = payload(42, 300_000);
        // Write everything, then FIN, before reading a byte: the server must
        // echo all of it and then close its side.
        let writer = {
            let mut s = s.try_clone().unwrap();
            let data = data.clone();
            std::thread::spawn(move || {
                s.write_all(&data).unwrap();
                s.shutdown(Shutdown::Write).unwrap();
            })
        };
        let mut echoed = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.read_to_end(&mut echoed).unwrap();
        writer.join().unwrap();
        assert_eq!(echoed.len(), data.len());
        assert!(echoed == data, "echo differs from what was sent");
        let stopped = server.stop();
        assert_eq!(stopped.summary["closed"], 1, "{stopped:?}");
    }

    fn holds_10000_connections_each_echoing(backend) {
        let _guard = many_sockets_guard();
        let server = Server::start(backend, &["--stats", "0.2"]);
        let streams = connect_many(server.addr, 10_000);
        let mut clients: Vec<EchoClient> = streams
            .into_iter()
            .enumerate()
            .map(|(i, s)| EchoClient::new(s, payload(i as u64, 64), 64, false))
            .collect();
        drive(&mut clients, Duration::from_secs(60));
        assert_all_echoed(&clients);
        // All 10,000 are open at once on the server, not served one after another.
        let stats = server.wait_for_stats(Duration::from_secs(20), |s| s.get("open") == Some(&10_000));
        assert_eq!(stats["errors"], 0);
        // And they keep echoing: a second round on every connection.
        for (i, c) in clients.iter_mut().enumerate() {
            c.payload.extend(payload(1_000_000 + i as u64, 100));
        }
        drive(&mut clients, Duration::from_secs(60));
        assert_all_echoed(&clients);
        drop(clients);
        let stopped = server.stop();
        assert_eq!(stopped.summary["accepted"], 10_000, "{stopped:?}");
        assert_eq!(stopped.summary["closed"], 10_000, "{stopped:?}");
    }

    fn stays_byte_exact_when_a_tiny_buffer_pool_runs_dry(backend) {
        let _guard = many_sockets_guard();
        // 16 buffers of 512 bytes per worker for 300 busy connections whose
        // small receive buffers make the server's sends short, so connections
        // hold buffers: receives find the pool empty (ENOBUFS on io_uring) and
        // must resume when sends give buffers back, losing no byte.
        let server = Server::start(
            backend,
            &["--buf-count", "16", "--buf-size", "512", "--conn-buffers", "2"],
        );
        let mut clients: Vec<EchoClient> = connect_many(server.addr, 300)
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                set_recv_buffer(&s, 4096);
                EchoClient::new(s, payload(7 + i as u64, 50_000), 8192, true)
            })
            .collect();
        drive(&mut clients, Duration::from_secs(120));
        assert_all_echoed(&clients);
        drop(clients);
        let stopped = server.stop();
        if backend == "uring" {
            // io_uring receives pick buffers before the data is sent back, so 300
            // busy connections must drain a 16-buffer ring. (epoll holds a buffer
            // only across a short send, which loopback's large socket buffers
            // rarely produce here; the slow-reader tests exhaust its pool.)
            assert!(stopped.summary["buffer_starved"] > 0, "the pool never ran dry: {stopped:?}");
        }
        assert_eq!(stopped.summary["errors"], 0, "{stopped:?}");
        assert_eq!(stopped.summary["bytes_out"], 300 * 50_000);
    }

    fn closes_connections_past_max_conns_and_keeps_the_others(backend) {
        let server = Server::start(backend, &["--max-conns", "5", "--workers", "1"]);
        let mut kept: Vec<_> = (0..5).map(|_| server.connect()).collect();
        // Prove the five are established on the server before the sixth arrives.
        for (i, s) in kept.iter_mut().enumerate() {
            let msg = payload(i as u64, 100);
            s.write_all(&msg).unwrap();
            let mut back = vec![0; 100];
            s.read_exact(&mut back).unwrap();
            assert_eq!(back, msg);
        }
        let mut extra = server.connect();
        extra.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = extra.write_all(b"hello");
        let mut buf = [0u8; 16];
        match extra.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("connection past --max-conns was served: {other:?}"),
        }
        for (i, s) in kept.iter_mut().enumerate() {
            let msg = payload(100 + i as u64, 5000);
            s.write_all(&msg).unwrap();
            let mut back = vec![0; 5000];
            s.read_exact(&mut back).unwrap();
            assert_eq!(back, msg);
        }
        drop(kept);
        let stopped = server.stop();
        assert_eq!(stopped.summary["rejected"], 1, "{stopped:?}");
        assert_eq!(stopped.summary["accepted"], 5, "{stopped:?}");
    }

    fn busy_polling_echoes_byte_exact_then_sleeps_when_idle(backend) {
        let server = Server::start(backend, &["--busy-poll", "1000"]);
        let clients = echo_random_payloads(&server, 200);
        // The connections stay open and quiet: the worker must stop spinning
        // after its 1 ms and sleep, not keep a core busy.
        assert_idle_cpu_is_low(&server, "idle with 200 open connections");
        let total: u64 = clients.iter().map(|c| c.payload.len() as u64).sum();
        drop(clients);
        let stopped = server.stop();
        assert!(stopped.status.success(), "{stopped:?}");
        assert_eq!(stopped.summary["bytes_out"], total);
    }

    fn sigterm_drains_open_connections_and_exits_zero(backend) {
        let server = Server::start(backend, &["--drain-timeout", "10"]);
        let mut conns: Vec<_> = (0..50).map(|_| server.connect()).collect();
        for (i, s) in conns.iter_mut().enumerate() {
            let msg = payload(i as u64, 1000);
            s.write_all(&msg).unwrap();
            let mut back = vec![0; 1000];
            s.read_exact(&mut back).unwrap();
            assert_eq!(back, msg);
        }
        // Readers that run until EOF: the server must end every connection with a FIN.
        let readers = read_to_eof_in_background(conns);
        let stopped = server.stop();
        assert!(stopped.status.success(), "{stopped:?}");
        assert_each_ended_cleanly_with_nothing_more(readers);
        assert_eq!(stopped.summary["closed"], 50, "{stopped:?}");
        assert_eq!(stopped.summary["open"], 0, "{stopped:?}");
    }
}

#[test]
fn tokio_uring_backend_echoes_byte_exact_and_drains_on_sigterm() {
    let _guard = many_sockets_guard();
    let server = Server::start("tokio-uring", &[]);
    let mut clients: Vec<EchoClient> = connect_many(server.addr, 200)
        .into_iter()
        .enumerate()
        .map(|(i, s)| EchoClient::new(s, payload(i as u64, 1 + (i * 997) % 30_000), 8192, false))
        .collect();
    drive(&mut clients, Duration::from_secs(60));
    assert_all_echoed(&clients);
    // Stop with every connection still open: each must end with a clean EOF.
    let readers = read_to_eof_in_background(clients.into_iter().map(|c| c.stream).collect());
    let stopped = server.stop();
    assert!(stopped.status.success(), "{stopped:?}");
    assert_each_ended_cleanly_with_nothing_more(readers);
    assert_eq!(stopped.summary["accepted"], 200, "{stopped:?}");
    assert_eq!(stopped.summary["closed"], 200, "{stopped:?}");
}

#[test]
fn uring_stays_byte_exact_when_its_completion_queue_overflows() {
    let _guard = many_sockets_guard();
    // A 16-entry CQ for 500 busy connections: completions overflow into the
    // kernel's backlog, multishot receives end and must be re-armed.
    let server = Server::start(
        "uring",
        &["--sq-entries", "8", "--cq-entries", "16", "--workers", "1"],
    );
    let mut clients: Vec<EchoClient> = connect_many(server.addr, 500)
        .into_iter()
        .enumerate()
        .map(|(i, s)| EchoClient::new(s, payload(i as u64, 20_000), 4096, true))
        .collect();
    drive(&mut clients, Duration::from_secs(60));
    assert_all_echoed(&clients);
    drop(clients);
    let stopped = server.stop();
    assert!(
        stopped.summary["cq_overflowed"] > 0,
        "the CQ never overflowed: {stopped:?}"
    );
    assert_eq!(stopped.summary["errors"], 0, "{stopped:?}");
    assert_eq!(stopped.summary["bytes_out"], 500 * 20_000);
}

#[test]
fn bad_flags_exit_2_and_name_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["--port", "70000"], "--port"),
        (&["--port", "http"], "--port"),
        (&["--workers", "0"], "--workers"),
        (&["--buf-count", "1000"], "--buf-count"),
        (&["--buf-count", "65536"], "--buf-count"),
        (&["--buf-size", "0"], "--buf-size"),
        (&["--backend", "kqueue"], "--backend"),
        (&["--max-conns", "0"], "--max-conns"),
        (&["--stats", "0"], "--stats"),
        (&["--drain-timeout", "forever"], "--drain-timeout"),
        (&["--addr", "not-an-ip"], "--addr"),
        (
            &["--buf-count", "16", "--conn-buffers", "64"],
            "--conn-buffers",
        ),
    ];
    for (args, flag) in cases {
        let (status, stderr) = run_server_expecting_exit(args);
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(flag),
            "{args:?} did not name {flag}: {stderr}"
        );
    }
}

#[test]
fn a_port_in_use_is_one_clear_error() {
    // A listener without SO_REUSEPORT makes the port unavailable to the server.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    for backend in ["uring", "epoll"] {
        let (status, stderr) = run_server_expecting_exit(&[
            "--addr",
            "127.0.0.1",
            "--port",
            &port,
            "--backend",
            backend,
        ]);
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("bind 127.0.0.1:") && stderr.contains("in use"),
            "{stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}

type Reader = std::thread::JoinHandle<std::io::Result<usize>>;

/// A thread per connection reading until EOF (blocking, 20 s at most); each
/// returns how many bytes came before the EOF.
/// Connects `conns` clients, each sending a payload of its own size (1 byte to
/// ~40 KiB) in 10 KiB writes, larger than one 4 KiB receive buffer, several in
/// flight at once; returns them once every byte came back as sent. The
/// connections stay open.
fn echo_random_payloads(server: &Server, conns: usize) -> Vec<EchoClient> {
    let mut clients: Vec<EchoClient> = connect_many(server.addr, conns)
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let len = 1 + (i * 7919) % 40_000;
            EchoClient::new(s, payload(i as u64, len), 10 * 1024, false)
        })
        .collect();
    drive(&mut clients, Duration::from_secs(60));
    assert_all_echoed(&clients);
    clients
}

fn read_to_eof_in_background(streams: Vec<std::net::TcpStream>) -> Vec<Reader> {
    streams
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                s.set_nonblocking(false)?;
                s.set_read_timeout(Some(Duration::from_secs(20)))?;
                let mut rest = Vec::new();
                s.read_to_end(&mut rest).map(|_| rest.len())
            })
        })
        .collect()
}

fn assert_each_ended_cleanly_with_nothing_more(readers: Vec<Reader>) {
    for r in readers {
        assert_eq!(r.join().unwrap().expect("clean EOF, not a reset"), 0);
    }
}
