//! uring-echo: an RFC 862 TCP echo server on io_uring, with an epoll baseline.
//!
//! Layout, one folder per part:
//! - [`ring`]: the io_uring layer the server, the load generator and
//!   `examples/minimal_echo.rs` share: typed operations, the memory they point
//!   into, teardown, ring setup and feature probe, the buffer ring, the
//!   `user_data` codec. Its module doc states the one safety contract.
//! - [`server`]: binds the listeners, starts one worker per thread with one
//!   [`server::Shared`] context, joins them; its backends side by side
//!   (io_uring, epoll, tokio-uring) behind one `Config` and one `Stats`.
//! - [`loadgen`]: the load generator behind the `loadgen` binary.
//! - [`cli`]: the flags of both binaries.
//! - [`echo_queue`]: the per-connection queue of received-but-not-yet-echoed buffers and
//!   the back-pressure rules both backends share.
//! - [`cpus`]: CPU lists (`--cpus 0-3,8`): parsing, printing, worker *i*'s CPU.
//! - [`sys`]: the `syscall!` wrapper every raw libc call goes through (and thread pinning).

#[cfg(not(target_os = "linux"))]
compile_error!("uring-echo is Linux-only: it is built on io_uring (Linux 6.0+) and epoll");

#[macro_use]
pub mod sys;

pub mod cli;
pub mod cpus;
pub mod echo_queue;
pub mod loadgen;
pub mod ring;
pub mod server;
