//! loadgen says what happened when it holds fewer connections than asked, and
//! tells apart a server that stopped accepting at its connection limit (real
//! uring-echo under a small open-files limit, both backends) from a server
//! that closes every connection at once.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::thread;

use common::loadgen::*;
use common::*;

/// RLIMIT_NOFILE of the server: its table fills after a few dozen connections.
const NOFILE_LIMIT: u64 = 64;
const CONNS: usize = 150;

for_each_backend! {
    fn a_server_at_its_connection_limit_is_said_to_have_stopped_accepting(backend) {
        let _guard = many_sockets_guard();
        let server = Server::start_with_rlimit_nofile(
            backend,
            &["--workers", "1", "--backlog", "32"],
            NOFILE_LIMIT,
        );
        let capacity = parse_counters(&server.start_line)["capacity"];
        let (out, r) = run_json(
            &server.addr.to_string(),
            &[
                // Slow enough that accepting keeps up until the limit: what
                // times out is what the full queue turned away, nothing else.
                "--conns", &CONNS.to_string(), "--connect-rate", "1000", "--connect-timeout", "1",
                "--duration", "1", "--drain-timeout", "1",
            ],
        );
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        let (established, lost, unanswered) = (
            u(&r, "connections.established"),
            u(&r, "connections.lost"),
            u(&r, "connections.unanswered"),
        );
        // Those the server took are the ones held; those the kernel queued for
        // it are established but never answered, and not counted as held.
        let context = format!("{}\n{err}\n{}", server.start_line, r["connections"]);
        assert_eq!(established - lost - unanswered, capacity, "{context}");
        assert!(unanswered > 0, "{context}");
        assert_eq!(u(&r, "messages.unfinished"), 0, "{r}");
        assert!(
            err.contains(&format!("held {capacity} of {CONNS}"))
                && err.contains(&format!("stopped accepting at {capacity} connections"))
                && err.contains(&format!("{unanswered} more were established"))
                && err.contains("never answered"),
            "{err}"
        );
        assert!(!err.contains("too slowly"), "{err}");
        drop(server);
    }
}

/// A listener that closes every connection as soon as it accepts it, as a
/// server on its way down would; stops after `count` connections.
fn closing_listener(count: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().take(count) {
            drop(stream);
        }
    });
    addr
}

#[test]
fn a_server_that_closes_every_connection_gets_its_own_diagnosis() {
    // 20 connections, and the probe loadgen makes before them.
    let addr = closing_listener(21).to_string();
    let (out, r) = run_json(&addr, &["--conns", "20", "--duration", "0.3"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(u(&r, "connections.established"), 20, "{r}");
    assert_eq!(u(&r, "connections.lost_unanswered"), 20, "{r}");
    assert_eq!(u(&r, "connections.unanswered"), 0, "{r}");
    assert!(
        err.contains("held 0 of 20")
            && err.contains("closed every connection as soon as it was made"),
        "{err}"
    );
    assert!(!err.contains("--max-conns"), "{err}");
}
