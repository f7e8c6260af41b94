//! The epoll backend: the baseline the benchmarks compare io_uring against, built
//! to be fair rather than easy to beat: thread per core with SO_REUSEPORT,
//! edge-triggered sockets registered once, reads straight into a pooled buffer
//! echoed with no copy, the same buffer budget and back-pressure as io_uring.
//!
//! - [`poller`]: the epoll instance.
//! - [`buf_pool`]: the receive buffers.
//! - [`udp`]: UDP echo on the same port.
//! - [`worker`]: the event loop.
//!
//! Unlike io_uring's direct descriptors, every connection here is a file
//! descriptor, so this backend holds at most RLIMIT_NOFILE connections per process.

pub mod buf_pool;
pub mod poller;
pub mod udp;
pub mod worker;
