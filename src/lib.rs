//! uring-echo: an RFC 862 TCP echo server on io_uring, with an epoll baseline.
//!
//! Layout (one idea per module):
//! - [`config`]: the validated configuration both backends run from.
//! - [`server`]: binds the listeners, starts one worker per thread, joins them.
//! - [`capacity`]: how many connections the server holds and which limit says so;
//!   the notices when a descriptor table fills and has room again.
//! - [`uring`]: the io_uring backend (ring setup and probe, buffer ring, user_data, event loop).
//! - [`epoll`]: the epoll backend, the same design on readiness notifications.
//! - [`tokio_uring_rt`]: a tokio-uring runtime backend, a task per connection.
//! - [`echo_queue`]: the per-connection queue of received-but-not-yet-echoed buffers and
//!   the back-pressure rules both backends share.
//! - [`loadgen`]: the load generator behind the `loadgen` binary.
//! - [`stats`]: per-worker counters and their periodic/summary reports.
//! - [`cpus`]: CPU lists (`--cpus 0-3,8`): parsing, printing, worker *i*'s CPU.
//! - [`steering`]: the reuseport BPF program that hands a connection to the worker
//!   pinned to the CPU that received it.
//! - [`net`]: the server's socket setup (SO_REUSEPORT listeners); client sockets are
//!   `loadgen::connect`'s.
//! - [`shutdown`]: SIGINT/SIGTERM handling and waking the workers.
//! - [`sys`]: the `syscall!` wrapper every raw libc call goes through (and thread pinning).

#[cfg(not(target_os = "linux"))]
compile_error!("uring-echo is Linux-only: it is built on io_uring (Linux 6.0+) and epoll");

#[macro_use]
pub mod sys;

pub mod capacity;
pub mod cli;
pub mod config;
pub mod cpus;
pub mod echo_queue;
pub mod epoll;
pub mod loadgen;
pub mod net;
pub mod server;
pub mod shutdown;
pub mod stats;
pub mod steering;
pub mod tokio_uring_rt;
pub mod uring;
