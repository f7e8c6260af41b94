//! Connection limits, on both backends: past `--max-conns` under load, extra
//! connections are closed at once and counted while the others stream on; at
//! the direct-descriptor table's or the open-files limit, accepting pauses
//! without a busy loop and resumes when connections close.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::stream::{StreamClient, pump};
use common::*;

const MAX_CONNS: usize = 300;
const EXTRA_CONNS: usize = 200;
/// RLIMIT_NOFILE the server runs under in the descriptor-limit test.
const NOFILE_LIMIT: u64 = 256;
const WAITING: usize = 40;
const CLOSED_TO_MAKE_ROOM: usize = 10;

for_each_backend! {
    fn connections_past_max_conns_are_closed_at_once_and_counted_under_load(backend) {
        let _guard = many_sockets_guard();
        let max = MAX_CONNS.to_string();
        let server = Server::start(backend, &["--max-conns", &max, "--stats", "0.1"]);
        let addr = server.addr;
        let mut busy: Vec<StreamClient> = connect_many(addr, MAX_CONNS)
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let mut c = StreamClient::new(s, 300 + i as u64);
                c.send_limit = 1 << 20;
                c.window = 32 * 1024;
                c.half_close_at_limit = true;
                c
            })
            .collect();
        // All of them are being served before the extra ones arrive.
        assert!(pump(&mut busy, Duration::from_secs(30), |cs| cs.iter().all(|c| c.received > 0)));
        server.wait_for_stats(Duration::from_secs(10), |s| s["open"] == MAX_CONNS as u64);

        // The extra connections arrive while the busy ones stream.
        let extras = std::thread::spawn(move || {
            (0..EXTRA_CONNS)
                .map(|i| {
                    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let _ = s.write_all(&payload(i as u64, 100));
                    let mut buf = [0u8; 100];
                    match s.read(&mut buf) {
                        Ok(0) => Ok(()),
                        Err(e) if e.kind() == ErrorKind::ConnectionReset => Ok(()),
                        other => Err(format!("extra connection {i} was not closed at once: {other:?}")),
                    }
                })
                .collect::<Vec<_>>()
        });
        let streamed = pump(&mut busy, Duration::from_secs(120), |cs| cs.iter().all(|c| c.finished()));
        for r in extras.join().unwrap() {
            r.unwrap();
        }
        assert!(streamed, "the busy connections did not finish");
        for (i, c) in busy.iter().enumerate() {
            assert_eq!(c.failed, None, "busy connection {i}");
            assert!(c.eof, "busy connection {i}");
            c.assert_exact_prefix(i);
            assert_eq!(c.received, c.sent, "busy connection {i}");
        }
        drop(busy);
        server.wait_for_fresh_stats(Duration::from_secs(20), |s| s["open"] == 0);

        // With room again, a new connection is served.
        let mut again = server.connect();
        again.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        again.write_all(b"room again").unwrap();
        let mut back = [0u8; 10];
        again.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"room again");
        drop(again);

        let stopped = server.stop();
        let s = &stopped.summary;
        assert!(stopped.status.success(), "{stopped:?}");
        assert_eq!(s["rejected"], EXTRA_CONNS as u64, "{stopped:?}");
        assert_eq!(s["accepted"], MAX_CONNS as u64 + 1, "{stopped:?}");
        assert_eq!(s["errors"], 0, "{stopped:?}");
    }

    fn accepting_pauses_without_spinning_at_the_descriptor_limit_and_resumes_after_a_close(backend) {
        let _guard = many_sockets_guard();
        let server = Server::start_with_rlimit_nofile(
            backend,
            &["--workers", "1", "--stats", "0.1"],
            NOFILE_LIMIT,
        );
        // io_uring: the ring's direct-descriptor table has RLIMIT_NOFILE slots,
        // whatever the process has open. epoll: every connection is a descriptor
        // of the process, next to those it has open at start.
        let capacity = if backend == "uring" {
            NOFILE_LIMIT as usize
        } else {
            NOFILE_LIMIT as usize - server.open_fds_below(NOFILE_LIMIT)
        };
        // The start line says so, and why.
        let stated = parse_counters(&server.start_line)["capacity"];
        assert_eq!(stated, capacity as u64, "{}", server.start_line);
        let source = if backend == "uring" {
            format!("(1 workers x {NOFILE_LIMIT} direct descriptors, RLIMIT_NOFILE)")
        } else {
            format!("(RLIMIT_NOFILE {NOFILE_LIMIT} - ")
        };
        assert!(server.start_line.contains(&source), "{}", server.start_line);
        // One listener: accepted in the order they connected.
        let mut clients = connect_many(server.addr, capacity + WAITING);
        for (i, c) in clients.iter_mut().enumerate() {
            c.write_all(&payload(i as u64, 16)).unwrap();
        }
        let full = server.wait_for_stats(Duration::from_secs(30), |s| {
            s["accepted"] == capacity as u64 && (backend == "epoll" || s["rejected"] > 0)
        });
        for (i, c) in clients[..capacity].iter_mut().enumerate() {
            assert_eq!(echo_of(c, 16), Some(payload(i as u64, 16)), "accepted connection {i}");
        }
        // Said once, naming the limit and the remedy.
        let mut stderr = server.wait_for_stderr(Duration::from_secs(10), is_full_notice);
        let notice = stderr.last().unwrap().clone();
        assert!(notice.contains(&format!("{capacity} connections")), "{notice}");
        assert!(notice.contains("RLIMIT_NOFILE") && notice.contains("ulimit -n"), "{notice}");
        if backend == "uring" {
            assert!(notice.contains("--workers"), "{notice}");
        }

        // Connections wait in the backlog; the server must not spin on them.
        assert_idle_cpu_is_low(&server, "idle at its descriptor limit");

        // Closing some makes room: as many waiting connections are accepted and served.
        drop(clients.drain(..CLOSED_TO_MAKE_ROOM));
        let resumed = server.wait_for_stats(Duration::from_secs(30), |s| {
            s["accepted"] == (capacity + CLOSED_TO_MAKE_ROOM) as u64
        });
        let waiting = &mut clients[capacity - CLOSED_TO_MAKE_ROOM..];
        let served = served_among(waiting, capacity, Duration::from_secs(20));
        assert_eq!(
            served, CLOSED_TO_MAKE_ROOM,
            "waiting connections served after {CLOSED_TO_MAKE_ROOM} closed; {full:?} then {resumed:?}"
        );
        // Full again: still no busy loop, and the old connections still echo.
        assert_idle_cpu_is_low(&server, "idle at its descriptor limit");
        for c in clients.iter_mut().take(5) {
            let msg = payload(99, 300);
            c.write_all(&msg).unwrap();
            assert_eq!(echo_of(c, 300), Some(msg));
        }
        let before_close = server.fresh_stats(Duration::from_secs(10));
        assert_eq!(before_close["accepted"], (capacity + CLOSED_TO_MAKE_ROOM) as u64, "{before_close:?}");
        assert_eq!(before_close["errors"], 0, "{before_close:?}");
        // Full again after a few closes is the same episode: not said or counted again.
        assert_eq!(before_close["table_full"], 1, "{before_close:?}");
        // Closing them all also lets the server accept (and then lose to a reset)
        // the connections that were still waiting. Those accepts race the
        // closes, so the table may fill once more on the way down: a second
        // episode, which must be said, counted and ended like the first.
        drop(clients);
        stderr.extend(server.wait_for_stderr(Duration::from_secs(20), |l| l.contains("has room again")));
        server.wait_for_fresh_stats(Duration::from_secs(20), |s| s["open"] == 0);
        let stopped = server.stop();
        assert!(stopped.status.success(), "{stopped:?}");
        let episodes = stopped.summary["table_full"];
        assert!((1..=2).contains(&episodes), "{stopped:?}");
        stderr.extend(stopped.stderr.lines().map(String::from));
        let count = |pred: fn(&str) -> bool| stderr.iter().filter(|l| pred(l)).count() as u64;
        assert_eq!(count(is_full_notice), episodes, "one notice per episode: {stderr:?}");
        assert_eq!(count(|l| l.contains("has room again")), episodes, "{stderr:?}");
    }
}

/// Reads `len` bytes with a deadline; `None` if the connection ended first.
fn is_full_notice(line: &str) -> bool {
    line.contains("descriptor table full") || line.contains("open-files limit reached")
}

fn echo_of(s: &mut TcpStream, len: usize) -> Option<Vec<u8>> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = vec![0u8; len];
    s.read_exact(&mut buf).ok().map(|_| buf)
}

/// Of the connections `first_index..` in `clients`, how many get their
/// 16-byte payload echoed before `timeout` (the others stay waiting, or were
/// closed by the server).
fn served_among(clients: &mut [TcpStream], first_index: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    let mut got: Vec<Vec<u8>> = vec![Vec::new(); clients.len()];
    let mut ended = vec![false; clients.len()];
    for c in clients.iter() {
        c.set_nonblocking(true).unwrap();
    }
    let served = |got: &[Vec<u8>]| got.iter().filter(|g| g.len() == 16).count();
    while served(&got) < CLOSED_TO_MAKE_ROOM && Instant::now() < deadline {
        let mut pfds: Vec<libc::pollfd> = clients
            .iter()
            .map(|c| libc::pollfd {
                fd: c.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: `pfds` is a live, correctly sized array of pollfd for the call.
        unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 100) };
        for (i, c) in clients.iter_mut().enumerate() {
            if ended[i] || pfds[i].revents == 0 {
                continue;
            }
            let mut buf = [0u8; 64];
            match c.read(&mut buf) {
                Ok(0) => ended[i] = true,
                Ok(n) => got[i].extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => ended[i] = true,
            }
        }
    }
    for (i, g) in got.iter().enumerate() {
        if !g.is_empty() {
            assert_eq!(
                *g,
                payload((first_index + i) as u64, 16),
                "waiting connection {i}"
            );
        }
    }
    for c in clients.iter() {
        c.set_nonblocking(false).unwrap();
    }
    served(&got)
}
