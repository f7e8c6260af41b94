//! Chaos clients, property-based, on both backends: many clients run random
//! sequences of writes of random sizes, partial reads and short pauses, then
//! half-close or reset. Every connection that was not reset gets back exactly
//! what it sent; a reset one got an in-order prefix; the server leaks no
//! connection.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use common::*;

#[derive(Clone, Debug)]
enum Step {
    /// Write this many bytes (reading meanwhile, so a full window cannot deadlock).
    Write(usize),
    /// Read at most this many bytes of what has come back.
    Read(usize),
    /// Do nothing for this many milliseconds (a client's think time).
    Pause(u64),
}

#[derive(Clone, Debug)]
enum End {
    /// Shut down writing, read the rest of the echo and the server's FIN.
    HalfClose,
    /// SO_LINGER 0 and close: a reset, whatever is in flight.
    Reset,
}

#[derive(Clone, Debug)]
struct Script {
    steps: Vec<Step>,
    end: End,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => prop_oneof![1usize..64, 64usize..4096, 4096usize..100_000].prop_map(Step::Write),
        3 => (1usize..70_000).prop_map(Step::Read),
        1 => (0u64..15).prop_map(Step::Pause),
    ]
}

fn script() -> impl Strategy<Value = Script> {
    (
        prop::collection::vec(step(), 1..12),
        prop_oneof![4 => Just(End::HalfClose), 1 => Just(End::Reset)],
    )
        .prop_map(|(steps, end)| Script { steps, end })
}

/// How long any one wait in a client may take before the case fails.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

struct Client {
    stream: TcpStream,
    sent: Vec<u8>,
    received: Vec<u8>,
    eof: bool,
}

impl Client {
    /// Waits (bounded) for `events`, then reads what is there, at most `max` bytes.
    fn poll_and_read(&mut self, events: i16, wait_ms: i32, max: usize) -> Result<i16, String> {
        let mut pfd = libc::pollfd {
            fd: self.stream.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: one live pollfd, length 1.
        let n = unsafe { libc::poll(&mut pfd, 1, wait_ms) };
        if n < 0 {
            return Err(format!("poll: {}", std::io::Error::last_os_error()));
        }
        if pfd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 && !self.eof {
            let mut buf = vec![0u8; max.clamp(1, 65536)];
            match self.stream.read(&mut buf) {
                Ok(0) => self.eof = true,
                Ok(n) => self.received.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(format!("read: {e}")),
            }
            if self.received.len() > self.sent.len() {
                return Err("more echoed than sent".into());
            }
        }
        Ok(pfd.revents)
    }

    fn run(&mut self, seed: u64, script: &Script) -> Result<(), String> {
        for (k, step) in script.steps.iter().enumerate() {
            match *step {
                Step::Write(n) => {
                    let data = payload(seed * 1000 + k as u64, n);
                    let mut written = 0;
                    let deadline = Instant::now() + STEP_TIMEOUT;
                    while written < n {
                        if Instant::now() > deadline {
                            return Err(format!("write of {n} stuck at {written}"));
                        }
                        let revents =
                            self.poll_and_read(libc::POLLIN | libc::POLLOUT, 100, 65536)?;
                        if revents & libc::POLLOUT != 0 {
                            match self.stream.write(&data[written..]) {
                                Ok(w) => {
                                    self.sent.extend_from_slice(&data[written..written + w]);
                                    written += w;
                                }
                                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                                Err(e) => return Err(format!("write: {e}")),
                            }
                        }
                    }
                }
                Step::Read(max) => {
                    if self.received.len() < self.sent.len() {
                        self.poll_and_read(libc::POLLIN, 20, max)?;
                    }
                }
                Step::Pause(ms) => std::thread::sleep(Duration::from_millis(ms)),
            }
        }
        match script.end {
            End::HalfClose => {
                self.stream
                    .shutdown(Shutdown::Write)
                    .map_err(|e| format!("shutdown: {e}"))?;
                let deadline = Instant::now() + STEP_TIMEOUT;
                while !self.eof {
                    if Instant::now() > deadline {
                        return Err(format!(
                            "no EOF: {} of {} bytes echoed",
                            self.received.len(),
                            self.sent.len()
                        ));
                    }
                    self.poll_and_read(libc::POLLIN, 100, 65536)?;
                }
                if self.received != self.sent {
                    return Err(format!(
                        "echo differs: {} bytes back for {} sent",
                        self.received.len(),
                        self.sent.len()
                    ));
                }
            }
            End::Reset => {
                set_linger_zero(&self.stream);
                if self.sent[..self.received.len()] != self.received[..] {
                    return Err("echo before the reset is not a prefix of what was sent".into());
                }
            }
        }
        Ok(())
    }
}

fn run_clients(addr: SocketAddr, scripts: &[Script]) -> Result<(), TestCaseError> {
    let results: Vec<Result<(), String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = scripts
            .iter()
            .enumerate()
            .map(|(i, script)| {
                scope.spawn(move || {
                    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                        .map_err(|e| format!("connect: {e}"))?;
                    stream.set_nonblocking(true).unwrap();
                    let mut c = Client {
                        stream,
                        sent: Vec::new(),
                        received: Vec::new(),
                        eof: false,
                    };
                    c.run(i as u64 + 1, script)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, r) in results.into_iter().enumerate() {
        if let Err(e) = r {
            return Err(TestCaseError::fail(format!(
                "client {i} ({:?}): {e}",
                scripts[i]
            )));
        }
    }
    Ok(())
}

for_each_backend! {
    fn chaos_clients_get_back_exactly_what_they_sent_unless_reset(backend) {
        // A small pool, so random bursts also run it dry and trip back-pressure.
        let server = Server::start(
            backend,
            &["--buf-count", "256", "--buf-size", "1024", "--conn-buffers", "4", "--stats", "0.1"],
        );
        let mut runner = TestRunner::new(Config {
            cases: 8,
            max_shrink_iters: 64,
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&prop::collection::vec(script(), 4..24), |scripts| {
            run_clients(server.addr, &scripts)?;
            // Every connection of the case is closed and freed before the next.
            server.wait_for_fresh_stats(Duration::from_secs(20), |s| s["open"] == 0);
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        let stopped = server.stop();
        assert!(stopped.status.success(), "{stopped:?}");
        let s = &stopped.summary;
        assert_eq!(s["open"], 0, "{stopped:?}");
        assert_eq!(s["accepted"], s["closed"], "{stopped:?}");
        assert!(s["bytes_out"] <= s["bytes_in"], "{stopped:?}");
    }
}
