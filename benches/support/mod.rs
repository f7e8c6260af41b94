//! What the echo benches share: starting each server under test as its own
//! process pinned to one CPU, in the topology under test ([`topology`]), and
//! pinning the client to another.

pub mod pingpong;
pub mod topology;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::OnceLock;

use topology::BenchTopology;

/// A server under test.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    Uring,
    Epoll,
    TokioUring,
    Tokio,
    Monoio,
}

impl Target {
    pub const ALL: [Target; 5] = [
        Target::Uring,
        Target::Epoll,
        Target::TokioUring,
        Target::Tokio,
        Target::Monoio,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Target::Uring => "uring",
            Target::Epoll => "epoll",
            Target::TokioUring => "tokio-uring",
            Target::Tokio => "tokio",
            Target::Monoio => "monoio",
        }
    }

    /// The server's program and arguments, listening on `ip`, port 0, one
    /// worker; `None` if the program is not built.
    fn program(self, ip: IpAddr) -> Option<(PathBuf, Vec<String>)> {
        let server = PathBuf::from(env!("CARGO_BIN_EXE_uring-echo"));
        let ip = ip.to_string();
        let (program, args): (PathBuf, Vec<&str>) = match self {
            Target::Uring | Target::Epoll | Target::TokioUring => (
                server.clone(),
                vec![
                    "--port",
                    "0",
                    "--addr",
                    &ip,
                    "--workers",
                    "1",
                    "--backend",
                    self.name(),
                ],
            ),
            // The peers are examples of this crate, built beside the server binary.
            Target::Tokio => (
                server.parent()?.join("examples/tokio_echo"),
                vec!["0", "1", &ip],
            ),
            Target::Monoio => (
                server.parent()?.join("examples/monoio_echo"),
                vec!["0", "1", &ip],
            ),
        };
        if !program.exists() {
            return None;
        }
        Some((program, args.into_iter().map(String::from).collect()))
    }
}

/// A running server process, killed on drop.
pub struct ServerProcess {
    child: Child,
    /// Where the client reaches it.
    pub addr: SocketAddr,
}

impl ServerProcess {
    /// Starts `target` in `topology` (pinned to the server's CPU), or `None`
    /// if its binary is not built (the peers need `cargo build --release
    /// --examples`; `scripts/bench.py` does that).
    pub fn start(target: Target, topology: &BenchTopology) -> Option<ServerProcess> {
        let (program, args) = target.program(topology.listen_ip())?;
        let mut cmd = topology.server_command(&program, &args);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read the server's start-up line");
        let listening: SocketAddr = line
            .split_whitespace()
            .skip_while(|w| *w != "on")
            .nth(1)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "{}: no address in its start-up line: {line:?}",
                    target.name()
                )
            });
        Some(ServerProcess {
            child,
            addr: topology.server_addr(listening.port()),
        })
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPUs this process may run on, as at its first call: `pin_current_thread`
/// asks before it pins, after which the thread's own affinity would say 1
/// (and the servers, spawned by that thread, would be left unpinned).
pub fn cpus() -> usize {
    static CPUS: OnceLock<usize> = OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Pins the calling thread to `cpu` (the client runs on the CPU the server does not).
pub fn pin_current_thread(cpu: usize) {
    if cpus() < 2 {
        return;
    }
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write only inside it, and
    // sched_setaffinity(0, ...) reads a live, correctly sized set for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
