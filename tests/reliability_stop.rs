//! Graceful stop under load, on both backends: SIGTERM while thousands of
//! connections are mid-stream. The server stops accepting, ends every
//! connection with a clean EOF after an in-order prefix of what was sent, and
//! exits 0 within its drain timeout.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use common::stream::{StreamClient, pump};
use common::*;

const CONNS: usize = 2000;
const DRAIN_TIMEOUT_S: u64 = 10;

for_each_backend! {
    fn sigterm_mid_stream_ends_every_connection_with_a_clean_eof_after_an_in_order_prefix(backend) {
        let _guard = many_sockets_guard();
        let drain = DRAIN_TIMEOUT_S.to_string();
        let server = Server::start(backend, &["--drain-timeout", &drain]);
        let addr = server.addr;
        let mut clients: Vec<StreamClient> = connect_many(addr, CONNS)
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let mut c = StreamClient::new(s, 5000 + i as u64);
                c.window = 32 * 1024;
                c
            })
            .collect();
        // Mid-stream: every connection has had some echo back and keeps sending.
        let streaming = pump(&mut clients, Duration::from_secs(60), |cs| {
            cs.iter().all(|c| c.received >= 8 * 1024)
        });
        assert!(streaming, "not every connection got its first 8 KiB echoed");

        let sent_before_stop: u64 = clients.iter().map(|c| c.sent).sum();
        let signalled = Instant::now();
        // The stop waits for the exit in its own thread while this one keeps
        // driving the clients (the drain needs them to read and to send FIN).
        let stopper = std::thread::spawn(move || {
            let stopped = server.stop();
            (stopped, signalled.elapsed())
        });

        // Once the drain shows (a first EOF), the server must no longer accept: a
        // new connection waits unserved in the backlog, or is refused or closed.
        let draining = pump(&mut clients, Duration::from_secs(DRAIN_TIMEOUT_S), |cs| {
            cs.iter().any(|c| c.eof)
        });
        assert!(draining, "no connection ended within the drain timeout of SIGTERM");
        let late = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok();
        let late_reader = late.map(|mut late| {
            std::thread::spawn(move || {
                late.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let _ = late.write_all(b"late");
                let mut buf = [0u8; 4];
                late.read(&mut buf)
            })
        });

        // Every connection must end, and end cleanly: the server's FIN, never a reset.
        let ended = pump(&mut clients, Duration::from_secs(DRAIN_TIMEOUT_S + 20), |cs| {
            cs.iter().all(StreamClient::finished)
        });
        let unfinished = clients.iter().filter(|c| !c.finished()).count();
        assert!(ended, "{unfinished} connections never ended after SIGTERM");

        let (stopped, elapsed) = stopper.join().unwrap();
        if let Some(reader) = late_reader {
            let answer = reader.join().unwrap();
            assert!(
                !matches!(answer, Ok(n) if n > 0),
                "a connection made during the drain was served: {answer:?}"
            );
        }
        assert!(stopped.status.success(), "{stopped:?}");
        assert!(
            elapsed < Duration::from_secs(DRAIN_TIMEOUT_S),
            "exit took {elapsed:?}, past the drain timeout"
        );
        for (i, c) in clients.iter().enumerate() {
            assert_eq!(c.failed, None::<ErrorKind>, "connection {i} was reset, not closed");
            assert!(c.eof, "connection {i}: no EOF");
            c.assert_exact_prefix(i);
        }
        let received: u64 = clients.iter().map(|c| c.received).sum();
        assert!(received > 0 && sent_before_stop > 0);
        let s = &stopped.summary;
        assert_eq!(s["accepted"], CONNS as u64, "{stopped:?}");
        assert_eq!(s["closed"], CONNS as u64, "{stopped:?}");
        assert_eq!(s["open"], 0, "{stopped:?}");
        assert_eq!(s["errors"], 0, "{stopped:?}");
        // What the clients got is exactly what the server says it sent.
        assert_eq!(s["bytes_out"], received, "{stopped:?}");
    }
}
