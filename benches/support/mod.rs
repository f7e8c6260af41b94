//! What the echo benches share: starting each server under test as its own
//! process pinned to one CPU, and pinning the client to another.

pub mod pingpong;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

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

    fn command(self) -> Option<Command> {
        let server = PathBuf::from(env!("CARGO_BIN_EXE_uring-echo"));
        let (program, args): (PathBuf, Vec<&str>) = match self {
            Target::Uring | Target::Epoll | Target::TokioUring => (
                server.clone(),
                vec![
                    "--port",
                    "0",
                    "--addr",
                    "127.0.0.1",
                    "--workers",
                    "1",
                    "--backend",
                    self.name(),
                ],
            ),
            // The peers are examples of this crate, built beside the server binary.
            Target::Tokio => (server.parent()?.join("examples/tokio_echo"), vec!["0", "1"]),
            Target::Monoio => (
                server.parent()?.join("examples/monoio_echo"),
                vec!["0", "1"],
            ),
        };
        if !program.exists() {
            return None;
        }
        // Pin the server to CPU 0 when there is a CPU 1 for the client.
        let mut cmd = if cpus() >= 2 && which("taskset") {
            let mut c = Command::new("taskset");
            c.arg("-c").arg("0").arg(program);
            c
        } else {
            Command::new(program)
        };
        cmd.args(args);
        Some(cmd)
    }
}

/// A running server process, killed on drop.
pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
}

impl ServerProcess {
    /// Starts `target`, or `None` if its binary is not built (the peers need
    /// `cargo build --release --examples`; `scripts/bench.py` does that).
    pub fn start(target: Target) -> Option<ServerProcess> {
        let mut cmd = target.command()?;
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
        let addr = line
            .split_whitespace()
            .skip_while(|w| *w != "on")
            .nth(1)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in: {line}"));
        Some(ServerProcess { child, addr })
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
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
