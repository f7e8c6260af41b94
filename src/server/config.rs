//! The validated configuration both backends run from. Parsing and range checks
//! live in the CLI (`cli::server`); this module only holds the result and the
//! derived numbers every backend needs, so the backends cannot disagree on them.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Which event loop serves the connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// io_uring: multishot accept and receive, a provided buffer ring, direct descriptors.
    Uring,
    /// epoll: the baseline, edge-triggered, the same buffer budget and back-pressure.
    Epoll,
    /// tokio-uring: a task per connection on an io_uring runtime.
    TokioUring,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Uring => "uring",
            Backend::Epoll => "epoll",
            Backend::TokioUring => "tokio-uring",
        }
    }
}

/// Everything a worker needs to know; identical for every worker.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address to listen on (0.0.0.0, ::, 127.0.0.1 ...).
    pub addr: IpAddr,
    /// Port to listen on; 0 picks a free port, shared by every worker's listener.
    pub port: u16,
    /// Worker threads, each with its own listener and event loop.
    pub workers: usize,
    /// `--cpus`: worker *i* is pinned to the *i*-th CPU (round-robin when
    /// `workers` is a multiple of the list's length), and with one worker per
    /// CPU each connection is steered to the worker on the CPU that received it.
    /// Invariant: `workers` is a multiple of its length.
    pub cpus: Option<crate::cpus::CpuList>,
    pub backend: Backend,
    /// Size of one receive buffer. Invariant: 1..=MAX_BUF_SIZE_BYTES.
    pub buf_size_bytes: u32,
    /// Receive buffers per worker. Invariant: a power of two, <= MAX_BUF_COUNT.
    pub buf_count: u32,
    /// Buffers one connection may hold (received, not yet echoed) before the
    /// server stops receiving from it. Invariant: 1..=buf_count.
    pub conn_buffers: u32,
    /// Connections open at once, all workers together; more are closed at accept.
    pub max_conns: usize,
    /// listen(2) backlog (the kernel caps it at net.core.somaxconn).
    pub backlog: u32,
    /// How long a graceful stop waits for connections to drain before closing them.
    pub drain_timeout: Duration,
    /// io_uring: receive with bundles where the kernel has them (6.10+), so one
    /// completion can carry several buffers.
    pub recv_bundle: bool,
    /// Serve UDP echo on the same port too (off by default: UDP echo can be
    /// abused for reflection on the open internet).
    pub udp: bool,
    /// Largest UDP datagram echoed; larger ones are counted and dropped.
    /// Invariant: 1..=MAX_UDP_DATAGRAM.
    pub udp_max_datagram: u32,
    /// io_uring submission queue entries per ring; bursts beyond wait in the
    /// worker's backlog. Invariant: a power of two, <= cq_entries.
    pub sq_entries: u32,
    /// io_uring completion queue entries per ring. Multishot operations post
    /// many completions per submission, hence far more than `sq_entries`.
    /// Invariant: a power of two, <= MAX_CQ_ENTRIES.
    pub cq_entries: u32,
    /// How long a worker with nothing to do spins, checking for events, before
    /// it sleeps in the kernel. Zero (the default) never spins. Spinning saves
    /// the wake-up (a scheduler round trip, in a VM an IPI and a halt exit) at
    /// the price of a core kept busy while traffic trickles.
    pub busy_poll: Duration,
    /// io_uring `--send-zc`: a send that carries at least this many bytes goes
    /// zero-copy (SEND_ZC / SENDMSG_ZC); None (the default) copies every send.
    pub send_zc: Option<u32>,
    /// io_uring: how a worker waits under load (`--wait-batch`, `--min-wait`).
    pub wait: WaitBatch,
    /// `--wait-batch` or `--min-wait` was given: a kernel without min-wait is
    /// then an error, not a fallback to `WaitBatch::OFF`.
    pub wait_explicit: bool,
    /// Print a stats line at this interval.
    pub stats_interval: Option<Duration>,
    /// Break the stats lines and the summary down by worker.
    pub stats_per_worker: bool,
    /// Print nothing but errors.
    pub quiet: bool,
}

/// How an io_uring worker waits under load: for `batch` completions, or
/// `min_wait` after the first (`IORING_ENTER_EXT_ARG`'s `min_wait_usec`, Linux
/// 6.12+), so that a burst is handled in one turn. Invariant: `batch` 1 (off),
/// or above 1 with a non-zero `min_wait`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitBatch {
    pub batch: u32,
    pub min_wait: Duration,
}

impl WaitBatch {
    pub const OFF: WaitBatch = WaitBatch {
        batch: 1,
        min_wait: Duration::ZERO,
    };
}

/// Measured on two hosts (docs/benchmarks.md, "What each lever bought"):
/// 100 connections x 64 B closed loop, 1.19x the messages/s for 0.67x the
/// server CPU per message; latency below saturation unchanged (a wait asks
/// for a batch only while batches fill: `server::uring::wait_policy`).
impl Default for WaitBatch {
    fn default() -> Self {
        WaitBatch {
            batch: 128,
            min_wait: Duration::from_micros(200),
        }
    }
}

impl std::fmt::Display for WaitBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.batch > 1 {
            write!(f, "{}/{}us", self.batch, self.min_wait.as_micros())
        } else {
            write!(f, "off")
        }
    }
}

/// The largest UDP payload: 65,535 minus the UDP header (IPv6; IPv4's is 20 bytes less).
pub const MAX_UDP_DATAGRAM: u32 = 65_527;

/// The kernel's limit on a ring's completion queue (IORING_MAX_CQ_ENTRIES).
pub const MAX_CQ_ENTRIES: u32 = 65536;

/// The kernel's limit on a provided buffer ring's entries.
pub const MAX_BUF_COUNT: u32 = 32768;
/// One buffer's upper bound: large enough for any TCP segment burst, small enough
/// that a pool of MAX_BUF_COUNT stays addressable.
pub const MAX_BUF_SIZE_BYTES: u32 = 1 << 20;

impl Default for Config {
    fn default() -> Self {
        Config {
            addr: IpAddr::from([0, 0, 0, 0]),
            port: 9999,
            workers: crate::sys::available_cpus(),
            cpus: None,
            backend: Backend::Uring,
            buf_size_bytes: 4096,
            buf_count: 4096,
            conn_buffers: 32,
            max_conns: 1_000_000,
            backlog: 4096,
            drain_timeout: Duration::from_secs(5),
            recv_bundle: true,
            send_zc: None,
            sq_entries: 4096,
            cq_entries: MAX_CQ_ENTRIES,
            udp: false,
            udp_max_datagram: MAX_UDP_DATAGRAM,
            busy_poll: Duration::ZERO,
            wait: WaitBatch::default(),
            wait_explicit: false,
            stats_interval: None,
            stats_per_worker: false,
            quiet: false,
        }
    }
}

impl Config {
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::new(self.addr, self.port)
    }

    /// Bytes of receive buffers one worker owns.
    pub fn pool_bytes_per_worker(&self) -> u64 {
        u64::from(self.buf_size_bytes) * u64::from(self.buf_count)
    }

    /// Once a paused connection's held buffers drop to this, receiving resumes:
    /// half the budget, so a connection at its limit does not flap on every send.
    pub fn conn_buffers_resume(&self) -> u32 {
        self.conn_buffers / 2
    }
}
