//! Helpers shared by the integration tests: start the real `uring-echo` binary on
//! port 0, stop it with a signal and read its summary, drive many non-blocking
//! client sockets at once, and make deterministic payloads.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

pub const SERVER_BIN: &str = env!("CARGO_BIN_EXE_uring-echo");

/// Generates one `#[test]` per backend from one body: `mod uring { fn name }`
/// and `mod epoll { fn name }`, the body receiving the backend's name.
#[macro_export]
macro_rules! for_each_backend {
    ($( $(#[$meta:meta])* fn $name:ident($backend:ident) $body:block )*) => {
        mod uring {
            #[allow(unused_imports)]
            use super::*;
            $( $(#[$meta])* #[test] fn $name() { let $backend = "uring"; $body } )*
        }
        mod epoll {
            #[allow(unused_imports)]
            use super::*;
            $( $(#[$meta])* #[test] fn $name() { let $backend = "epoll"; $body } )*
        }
    };
}

/// Tests that open thousands of sockets hold this while they run: `cargo test`
/// runs a binary's tests as threads of one process, which share one open-files
/// limit (20,000 on CI). Under nextest each test is its own process anyway.
pub fn many_sockets_guard() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running `uring-echo` child process.
pub struct Server {
    /// Taken by `signal_and_wait`; `Drop` kills whatever is left.
    child: Option<Child>,
    pub addr: SocketAddr,
    /// The start-up line (address, effective configuration, capacity).
    pub start_line: String,
    /// Lines the server printed after its start-up line.
    lines: Receiver<String>,
    stderr: Receiver<String>,
}

/// How a server run ended.
#[derive(Debug)]
pub struct Stopped {
    pub status: ExitStatus,
    /// `key=value` pairs of the summary line.
    pub summary: HashMap<String, u64>,
    pub stdout: Vec<String>,
    pub stderr: String,
}

impl Server {
    /// Starts the server on 127.0.0.1, port 0, with 2 workers unless `extra` says otherwise.
    pub fn start(backend: &str, extra: &[&str]) -> Server {
        Server::start_configured(backend, extra, |_| {})
    }

    /// Starts the server with exactly these arguments.
    pub fn start_with_args(args: &[&str]) -> Server {
        let mut cmd = Command::new(SERVER_BIN);
        cmd.args(args);
        Server::spawn(cmd)
    }

    /// Spawns `cmd` and waits for its start-up line, which names the address.
    fn spawn(mut cmd: Command) -> Server {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn uring-echo");
        let lines = lines_of(child.stdout.take().unwrap());
        let stderr = lines_of(child.stderr.take().unwrap());
        let first = lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                let _ = child.wait();
                let err: Vec<String> = stderr.try_iter().collect();
                panic!("uring-echo printed no start-up line; stderr: {err:?}")
            });
        let addr = first
            .split_whitespace()
            .skip_while(|w| *w != "on")
            .nth(1)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in start-up line: {first}"));
        Server {
            child: Some(child),
            addr,
            start_line: first,
            lines,
            stderr,
        }
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect to uring-echo");
        s.set_nodelay(true).unwrap();
        s
    }

    /// Waits (up to `timeout`) for a `--stats` line whose counters satisfy `pred`.
    pub fn wait_for_stats(
        &self,
        timeout: Duration,
        pred: impl Fn(&HashMap<String, u64>) -> bool,
    ) -> HashMap<String, u64> {
        let deadline = Instant::now() + timeout;
        let mut last = HashMap::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with("uring-echo: stats ") => {
                    last = parse_counters(&line);
                    if pred(&last) {
                        return last;
                    }
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        panic!("stats never matched within {timeout:?}; last: {last:?}");
    }

    /// Waits (up to `timeout`) for a line on stderr that satisfies `pred`;
    /// returns every stderr line read, the matching one last.
    pub fn wait_for_stderr(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    let done = pred(&line);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(_) => break,
            }
        }
        panic!("no such line on stderr within {timeout:?}; read: {seen:?}");
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Sends SIGTERM and waits for the exit (graceful stop).
    pub fn stop(self) -> Stopped {
        self.signal_and_wait(libc::SIGTERM, Duration::from_secs(30))
    }

    pub fn signal_and_wait(mut self, signal: i32, timeout: Duration) -> Stopped {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe { libc::kill(child.id() as i32, signal) };
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let status = match rx.recv_timeout(timeout) {
            Ok(s) => s.expect("wait for uring-echo"),
            Err(_) => panic!("uring-echo did not exit within {timeout:?} of signal {signal}"),
        };
        let stdout: Vec<String> = self.lines.iter().collect();
        let stderr: Vec<String> = self.stderr.iter().collect();
        let summary = stdout
            .iter()
            .find(|l| l.contains("stopped after"))
            .map(|l| parse_counters(l))
            .unwrap_or_default();
        Stopped {
            status,
            summary,
            stdout,
            stderr: stderr.join("\n"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn lines_of(r: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// `key=value` words of a line, numbers only.
pub fn parse_counters(line: &str) -> HashMap<String, u64> {
    line.split_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter_map(|(k, v)| v.parse().ok().map(|v| (k.to_string(), v)))
        .collect()
}

/// Runs the server binary with `args`, expecting it to exit by itself (a flag
/// error, a taken port) within 20 s; one that starts serving instead (the
/// bug) is killed and reported rather than left to hang the test.
pub fn run_server_expecting_exit(args: &[&str]) -> (ExitStatus, String) {
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
                "uring-echo {args:?} kept running instead of exiting: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Deterministic pseudo-random bytes (xorshift64*), different per seed.
pub fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// One client connection driven by [`drive`]: sends `payload` in writes of at
/// most `write_size` bytes, optionally half-closes, and collects the echo.
pub struct EchoClient {
    pub stream: TcpStream,
    pub payload: Vec<u8>,
    pub sent: usize,
    pub received: Vec<u8>,
    pub write_size: usize,
    /// Shut down writing once everything is sent (the server then closes after echoing).
    pub half_close: bool,
    pub eof: bool,
}

impl EchoClient {
    pub fn new(stream: TcpStream, payload: Vec<u8>, write_size: usize, half_close: bool) -> Self {
        stream.set_nonblocking(true).unwrap();
        EchoClient {
            stream,
            received: Vec::with_capacity(payload.len()),
            payload,
            sent: 0,
            write_size,
            half_close,
            eof: false,
        }
    }

    fn done(&self) -> bool {
        if self.half_close {
            self.eof
        } else {
            self.received.len() >= self.payload.len()
        }
    }
}

/// Drives every client with poll(2) until each has its whole echo back (and its
/// EOF, for half-closing clients), or panics at `timeout`. Writing and reading
/// interleave, so payloads far larger than socket buffers cannot deadlock.
pub fn drive(clients: &mut [EchoClient], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 64 * 1024];
    let mut pfds: Vec<libc::pollfd> = Vec::with_capacity(clients.len());
    let mut index: Vec<usize> = Vec::with_capacity(clients.len());
    loop {
        pfds.clear();
        index.clear();
        for (i, c) in clients.iter().enumerate() {
            if c.done() {
                continue;
            }
            let mut events = libc::POLLIN;
            if c.sent < c.payload.len() {
                events |= libc::POLLOUT;
            }
            pfds.push(libc::pollfd {
                fd: c.stream.as_raw_fd(),
                events,
                revents: 0,
            });
            index.push(i);
        }
        if pfds.is_empty() {
            return;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let stuck = index.len();
            let c = &clients[index[0]];
            panic!(
                "{stuck} connections unfinished at the deadline; first: sent {}/{} received {}",
                c.sent,
                c.payload.len(),
                c.received.len()
            );
        }
        // SAFETY: `pfds` is a live, correctly sized array of pollfd for the call.
        let n = unsafe {
            libc::poll(
                pfds.as_mut_ptr(),
                pfds.len() as libc::nfds_t,
                left.as_millis().min(1000) as i32 + 1,
            )
        };
        assert!(n >= 0, "poll: {}", std::io::Error::last_os_error());
        for (p, &i) in pfds.iter().zip(&index) {
            if p.revents == 0 {
                continue;
            }
            let c = &mut clients[i];
            if p.revents & libc::POLLOUT != 0 && c.sent < c.payload.len() {
                let end = (c.sent + c.write_size).min(c.payload.len());
                match c.stream.write(&c.payload[c.sent..end]) {
                    Ok(n) => c.sent += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("write: {e}"),
                }
                if c.sent == c.payload.len() && c.half_close {
                    c.stream.shutdown(Shutdown::Write).unwrap();
                }
            }
            if p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                loop {
                    match c.stream.read(&mut buf) {
                        Ok(0) => {
                            c.eof = true;
                            break;
                        }
                        Ok(n) => c.received.extend_from_slice(&buf[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => panic!("read: {e}"),
                    }
                }
                assert!(
                    c.received.len() <= c.payload.len(),
                    "server echoed more bytes than were sent"
                );
                if c.eof && !c.half_close {
                    panic!(
                        "server closed a connection early: {} of {} bytes echoed",
                        c.received.len(),
                        c.payload.len()
                    );
                }
            }
        }
    }
}

/// Asserts every client got exactly its payload back, naming the first difference.
pub fn assert_all_echoed(clients: &[EchoClient]) {
    for (i, c) in clients.iter().enumerate() {
        if c.received != c.payload {
            let at = c
                .received
                .iter()
                .zip(&c.payload)
                .position(|(a, b)| a != b)
                .unwrap_or(c.received.len().min(c.payload.len()));
            panic!(
                "connection {i}: echo differs at byte {at} (received {} of {} bytes)",
                c.received.len(),
                c.payload.len()
            );
        }
    }
}

/// Opens `n` connections, retrying while the accept backlog is momentarily full.
pub fn connect_many(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
                .expect("connect to uring-echo");
            s.set_nodelay(true).unwrap();
            s
        })
        .collect()
}

/// Shrinks a socket's receive buffer (SO_RCVBUF), so the peer's sends to it are short.
pub fn set_recv_buffer(stream: &TcpStream, bytes: i32) {
    // SAFETY: a valid socket fd and a pointer to a live i32 of the length passed.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt SO_RCVBUF: {}",
        std::io::Error::last_os_error()
    );
}

// ---- reliability helpers -------------------------------------------------

pub mod loadgen;
pub mod netns;
pub mod seccomp;
pub mod steering;
pub mod stream;

impl Server {
    /// Like [`Server::start`], with the child's RLIMIT_NOFILE (soft and hard)
    /// lowered to `limit`: the io_uring backend sizes each ring's
    /// direct-descriptor table by it, the epoll backend hits EMFILE at it.
    pub fn start_with_rlimit_nofile(backend: &str, extra: &[&str], limit: u64) -> Server {
        Server::start_configured(backend, extra, move |cmd| {
            use std::os::unix::process::CommandExt;
            // SAFETY: the closure runs in the forked child before exec and only
            // calls setrlimit(2), which is async-signal-safe; `lim` is a plain
            // value copied into the closure before the fork.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                })
            };
        })
    }

    /// Like [`Server::start`], letting `configure` adjust the command (limits,
    /// seccomp filters) before it is spawned.
    pub fn start_configured(
        backend: &str,
        extra: &[&str],
        configure: impl FnOnce(&mut Command),
    ) -> Server {
        let mut args = vec!["--port", "0", "--addr", "127.0.0.1", "--backend", backend];
        if !extra.contains(&"--workers") {
            args.extend(["--workers", "2"]);
        }
        args.extend(extra);
        let mut cmd = Command::new(SERVER_BIN);
        cmd.args(&args);
        configure(&mut cmd);
        Server::spawn(cmd)
    }

    /// Starts the server inside `topo`'s server namespace, listening on
    /// every address there (0.0.0.0, port 0), with 2 workers unless `extra`
    /// says otherwise. `addr` is then 0.0.0.0:PORT: load host `h` connects
    /// to [`Server::addr_for`]`(topo, h)`.
    pub fn start_in_namespace(topo: &netns::Topology, backend: &str, extra: &[&str]) -> Server {
        let mut cmd = topo.exec(topo.server_ns(), SERVER_BIN);
        cmd.args(["--port", "0", "--addr", "0.0.0.0", "--backend", backend]);
        if !extra.contains(&"--workers") {
            cmd.args(["--workers", "2"]);
        }
        cmd.args(extra);
        Server::spawn(cmd)
    }

    /// The address load host `host` of `topo` reaches this server at.
    pub fn addr_for(&self, topo: &netns::Topology, host: usize) -> SocketAddr {
        SocketAddr::new(topo.server_addr(host), self.addr.port())
    }

    /// The server's resident memory now, in KiB (VmRSS of /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        proc_rss_kib(self.pid())
    }

    /// CPU time (user + system) the server has used so far.
    pub fn cpu_time(&self) -> Duration {
        proc_cpu_time(self.pid())
    }

    /// The first `--stats` line printed after this call: counters as they are
    /// now, not a line queued earlier.
    pub fn fresh_stats(&self, timeout: Duration) -> HashMap<String, u64> {
        while self.lines.try_recv().is_ok() {}
        self.wait_for_stats(timeout, |_| true)
    }

    /// [`Server::wait_for_stats`] over lines printed from now on only: a line
    /// queued before this call (say `open=0` from before the clients
    /// connected) cannot satisfy `pred`.
    pub fn wait_for_fresh_stats(
        &self,
        timeout: Duration,
        pred: impl Fn(&HashMap<String, u64>) -> bool,
    ) -> HashMap<String, u64> {
        while self.lines.try_recv().is_ok() {}
        self.wait_for_stats(timeout, pred)
    }

    /// Descriptors the server process has open (entries of /proc/PID/fd).
    pub fn open_fds(&self) -> usize {
        self.open_fds_below(u64::MAX)
    }

    /// Descriptors the server has open with numbers below `limit`: those that
    /// take room under an RLIMIT_NOFILE of `limit` (it caps numbers, so one
    /// inherited above it takes none).
    pub fn open_fds_below(&self, limit: u64) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("read /proc/PID/fd")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .filter(|&fd| fd < limit)
            .count()
    }
}

/// VmRSS of a process, in KiB.
pub fn proc_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// utime + stime of a process (fields 14 and 15 of /proc/PID/stat).
pub fn proc_cpu_time(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // The command name (field 2) may hold spaces; fields are counted after its ')'.
    let rest = &stat[stat.rfind(')').expect("comm in stat") + 2..];
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // `rest` starts at field 3 (state), so utime (14) and stime (15) are at 11 and 12.
    let ticks = fields[11] + fields[12];
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_millis(ticks * 1000 / hz)
}

/// Polls `cond` every few milliseconds until it holds or `timeout` passes;
/// panics naming `what` on timeout. For conditions with no event to wait on
/// (another process's state); each check is cheap and the loop is bounded.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(5));
    }
}

/// Sets SO_LINGER to 0 so that dropping the socket sends a reset, not a FIN.
pub fn set_linger_zero(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a pointer to a live `linger` of the length passed.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER: {}", std::io::Error::last_os_error());
}

/// Opens `n` connections whose send and receive buffers are set to `bytes`
/// before connecting, so that even the window of the handshake is small and
/// the kernel's buffer autotuning stays off.
pub fn connect_many_with_buffers(addr: SocketAddr, n: usize, bytes: usize) -> Vec<TcpStream> {
    use socket2::{Domain, Socket, Type};
    (0..n)
        .map(|_| {
            let s = Socket::new(Domain::for_address(addr), Type::STREAM, None).unwrap();
            s.set_recv_buffer_size(bytes).unwrap();
            s.set_send_buffer_size(bytes).unwrap();
            s.set_tcp_nodelay(true).unwrap();
            s.connect_timeout(&addr.into(), Duration::from_secs(10))
                .expect("connect to uring-echo");
            s.into()
        })
        .collect()
}

/// The server's CPU use over one second in which nothing happens must stay far
/// below a core (a paused accept, a spin that ended: not a loop that retries);
/// `what` says what it sits idle with.
pub fn assert_idle_cpu_is_low(server: &Server, what: &str) {
    let (cpu0, t0) = (server.cpu_time(), Instant::now());
    // A measurement window, not synchronisation: nothing is waited for.
    thread::sleep(Duration::from_secs(1));
    let (cpu, wall) = (server.cpu_time() - cpu0, t0.elapsed());
    assert!(
        cpu.as_secs_f64() < 0.2 * wall.as_secs_f64(),
        "server used {cpu:?} of CPU in {wall:?} while {what}"
    );
}
