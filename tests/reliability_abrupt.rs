//! Clients that go away abruptly, on both backends, while others stream:
//! resets mid-echo (SO_LINGER 0, then close), processes killed with data in
//! flight, half-closes, connect-and-close storms. No panic, no leaked
//! connection (the server's open count returns to 0), and every well-behaved
//! connection's echo stays byte-exact.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::stream::{StreamClient, pump};
use common::*;

const STEADY: usize = 300;
const RESETS_AFTER_ECHO: usize = 100;
const RESETS_UNREAD: usize = 100;
const KILLED: usize = 10;
const HALF_CLOSES: usize = 100;
const STORM: usize = 1000;

for_each_backend! {
    fn abrupt_clients_leak_no_connection_and_do_not_disturb_the_others(backend) {
        let _guard = many_sockets_guard();
        let server = Server::start(backend, &["--stats", "0.1"]);
        let addr = server.addr;
        let mut steady: Vec<StreamClient> = connect_many(addr, STEADY)
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let mut c = StreamClient::new(s, 700 + i as u64);
                c.send_limit = 512 * 1024;
                c.window = 64 * 1024;
                c.half_close_at_limit = true;
                c
            })
            .collect();
        assert!(pump(&mut steady, Duration::from_secs(30), |cs| cs.iter().all(|c| c.received > 0)));

        let chaos = std::thread::spawn(move || abrupt_clients(addr));
        let mut chaos = Some(chaos);
        // The steady clients stream for as long as the abrupt ones come and go.
        let streamed = pump(&mut steady, Duration::from_secs(180), |cs| {
            if chaos.as_ref().is_some_and(|t| t.is_finished()) {
                chaos.take().unwrap().join().unwrap();
            }
            chaos.is_none() && cs.iter().all(|c| c.finished())
        });
        if !streamed {
            let unfinished = steady.iter().filter(|c| !c.finished()).count();
            let stats = server.fresh_stats(Duration::from_secs(5));
            panic!(
                "{unfinished} steady connections unfinished, abrupt clients finished: {}; {stats:?}",
                chaos.is_none()
            );
        }
        for (i, c) in steady.iter().enumerate() {
            assert_eq!(c.failed, None, "steady connection {i}");
            assert!(c.eof, "steady connection {i}");
            c.assert_exact_prefix(i);
            assert_eq!(c.received, c.sent, "steady connection {i}");
        }
        drop(steady);

        // Every connection the server accepted was closed and freed.
        let stats = server.wait_for_fresh_stats(Duration::from_secs(30), |s| s["open"] == 0);
        let opened = (STEADY + RESETS_AFTER_ECHO + RESETS_UNREAD + KILLED + 2 * HALF_CLOSES) as u64;
        assert!(stats["accepted"] >= opened, "{stats:?}");
        // Each reset after an echo is an error on a connection the server had.
        assert!(stats["errors"] >= RESETS_AFTER_ECHO as u64, "{stats:?}");
        let stopped = server.stop();
        assert!(stopped.status.success(), "{stopped:?}");
        let s = &stopped.summary;
        assert_eq!(s["open"], 0, "{stopped:?}");
        assert_eq!(s["accepted"], s["closed"], "{stopped:?}");
        assert!(!stopped.stderr.contains("panicked"), "{}", stopped.stderr);
    }
}

/// Runs every kind of abrupt client against `addr`, checking what each may check.
fn abrupt_clients(addr: SocketAddr) {
    // Processes killed with data in flight: `cat` writes zeros into the
    // connection and never reads the echo, until SIGKILL closes it with
    // unread data (a reset).
    let mut killed: Vec<KilledOnDrop> = (0..KILLED)
        .map(|_| {
            let script = format!(
                "exec 3<>/dev/tcp/{}/{} && exec cat /dev/zero >&3",
                addr.ip(),
                addr.port()
            );
            KilledOnDrop(
                Command::new("bash")
                    .args(["-c", &script])
                    .stdin(Stdio::null())
                    .spawn()
                    .expect("spawn bash"),
            )
        })
        .collect();

    for i in 0..RESETS_AFTER_ECHO {
        let mut s = connect(addr);
        let data = payload(i as u64, 32 * 1024);
        s.write_all(&data).unwrap();
        let mut back = vec![0u8; 1000];
        s.read_exact(&mut back).unwrap();
        assert_eq!(
            back,
            data[..1000],
            "reset client {i}: echo before the reset"
        );
        set_linger_zero(&s);
    }
    for i in 0..RESETS_UNREAD {
        let mut s = connect(addr);
        s.write_all(&payload(i as u64, 64 * 1024)).unwrap();
        set_linger_zero(&s);
    }
    for i in 0..HALF_CLOSES {
        // Write, FIN, read to the server's FIN: the whole echo, then EOF.
        let mut s = connect(addr);
        let data = payload(10_000 + i as u64, 10_000);
        s.write_all(&data).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        assert!(back == data, "half-closing client {i}: echo differs");
        // Write, FIN, and go away without reading the echo.
        let mut s = connect(addr);
        s.write_all(&data).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
    }
    for i in 0..STORM {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
            Ok(s) if i % 2 == 0 => set_linger_zero(&s),
            Ok(_) => {}
            // The backlog may overflow for a moment under a storm.
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
            Err(e) => panic!("storm connect {i}: {e}"),
        }
    }

    // Each killed client has had data echoed (its socket is open and cat is
    // writing) before it is killed.
    for k in &killed {
        let pid = k.0.id();
        wait_until(
            "cat to write into its connection",
            Duration::from_secs(20),
            || {
                std::fs::read_to_string(format!("/proc/{pid}/io"))
                    .ok()
                    .and_then(|io| {
                        io.lines().find_map(|l| {
                            l.strip_prefix("wchar: ").map(|v| v.trim().parse::<u64>())
                        })
                    })
                    .and_then(Result::ok)
                    .is_some_and(|w| w > 256 * 1024)
            },
        );
    }
    killed.clear();
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// A child process SIGKILLed when dropped.
struct KilledOnDrop(Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
