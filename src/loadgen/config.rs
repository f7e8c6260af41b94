//! The validated configuration a load run starts from, built by `cli::loadgen`.
//! Values here are already range-checked; what needs I/O (resolving the target,
//! the open-files limit) is done by [`super::run`].
#![forbid(unsafe_code)]

use std::net::IpAddr;
use std::time::Duration;

/// How messages are generated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Load {
    /// Each connection sends, waits for the full echo, and sends again, with
    /// `pipeline` messages in flight.
    Closed { pipeline: u32 },
    /// Messages are due at `rate` per second in total, whatever the server does;
    /// latency counts from each message's due time. At most `pipeline` messages
    /// per connection are on the wire; later ones wait (and their wait counts).
    Open { rate: f64, pipeline: u32 },
}

impl Load {
    pub fn pipeline(&self) -> u32 {
        match *self {
            Load::Closed { pipeline } | Load::Open { pipeline, .. } => pipeline,
        }
    }

    pub fn rate(&self) -> Option<f64> {
        match *self {
            Load::Open { rate, .. } => Some(rate),
            Load::Closed { .. } => None,
        }
    }
}

/// Message sizes in bytes, drawn uniformly from `min..=max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeRange {
    /// Invariant: 1 <= min <= max <= [`MAX_MESSAGE_BYTES`].
    pub min: u32,
    pub max: u32,
}

/// Draws sizes uniformly from a range: xorshift64, seeded per connection or
/// flow, so each one's sequence of sizes is the same from run to run.
#[derive(Clone, Debug)]
pub struct SizeDraw(u64);

impl SizeDraw {
    pub fn new(seed: u32) -> SizeDraw {
        SizeDraw(u64::from(seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// A size in `min..=max`.
    pub fn next(&mut self, min: u32, max: u32) -> u32 {
        if min == max {
            return min;
        }
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        min + (self.0 % u64::from(max - min + 1)) as u32
    }
}

/// The largest message size accepted.
pub const MAX_MESSAGE_BYTES: u32 = 16 << 20;

/// When the measured part of a run ends.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stop {
    /// After this long (not counting the warm-up).
    After(Duration),
    /// Once this many messages (in total, after the warm-up) have been echoed.
    Messages(u64),
}

#[derive(Clone, Debug)]
pub struct Config {
    /// `HOST:PORT`, as given; resolved by `run`.
    pub target: String,
    /// Invariant: >= 1.
    pub conns: u32,
    /// `None`: one per CPU (one per `cpus` entry with `cpus`), raised to
    /// what `conns` needs.
    pub threads: Option<usize>,
    /// `--cpus`: thread *i* is pinned to the *i*-th CPU, round-robin when
    /// there are more threads than CPUs.
    pub cpus: Option<crate::cpus::CpuList>,
    /// Empty: picked automatically (spread over 127.0.0.x for a loopback target).
    pub source_addrs: Vec<IpAddr>,
    /// Connections opened per second, all threads together. Invariant: >= 1.
    pub connect_rate: u32,
    pub connect_timeout: Duration,
    pub load: Load,
    pub size: SizeRange,
    pub stop: Stop,
    pub warmup: Duration,
    pub verify: bool,
    pub allow_partial: bool,
    pub quiet: bool,
    /// After the measured part, how long outstanding echoes may take to arrive.
    pub drain_timeout: Duration,
    /// Open loop: how long after its due time a message may wait for the
    /// sender's wake-up, so that messages due close together leave together
    /// (see [`super::pacing`]).
    pub pacing_slack: Duration,
    /// `--start-at`: the wall-clock instant (seconds since the UNIX epoch) the
    /// load phase begins at, once the connections are made.
    pub start_at: Option<f64>,
    /// `--udp`: datagrams over connected UDP sockets ("flows", `conns` of
    /// them) instead of TCP streams. `load` is then always [`Load::Open`].
    pub udp: Option<Udp>,
    /// `--messages-per-conn`: connections are short-lived (see [`Churn`]).
    pub churn: Option<Churn>,
    /// `--linger0`: connections close with a reset (SO_LINGER 0) instead of a
    /// FIN, so no TIME_WAIT is left behind.
    pub linger0: bool,
}

/// Connection churn: each connection sends `messages_per_conn` messages (closed
/// loop, `pipeline` in flight), checks their echoes, closes, and its slot is
/// reused by a new connection. In the closed loop `conns` connections are
/// open at once, each replaced as soon as its close completes; with a rate,
/// new connections are due on that schedule (connections per second) and
/// take the first free slot of the `conns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Churn {
    /// Invariant: >= 1.
    pub messages_per_conn: u32,
}

/// The UDP-only settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Udp {
    /// A datagram not echoed this long after its send counts as lost.
    pub timeout: Duration,
    /// The run fails when more than this fraction of datagrams is lost. Invariant: 0..=1.
    pub max_loss: f64,
}
