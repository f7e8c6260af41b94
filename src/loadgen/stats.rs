//! What the engine threads count: each thread's own result (returned when it
//! ends, merged by [`super::run`]), and the few shared values the once-a-second
//! progress line reads while the run goes on. No I/O, no formatting.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use hdrhistogram::Histogram;

use super::pacing::Nanos;

/// Latencies are recorded in microseconds, from 1 µs to an hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// Records `ns` nanoseconds as microseconds (at least 1, so sub-µs echoes count).
pub fn record_ns(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record((ns / 1000).max(1));
}

/// Implements `+=` for a struct of counters: the one way counters are summed
/// (threads into a run, runs into a merge). Every field must be listed: the
/// destructuring fails to compile when one is missing.
macro_rules! add_assign_fields {
    ($t:ty { $($f:ident),* $(,)? }) => {
        impl std::ops::AddAssign<&$t> for $t {
            fn add_assign(&mut self, other: &$t) {
                let Self { $($f),* } = other;
                $(self.$f += *$f;)*
            }
        }
    };
}
pub(crate) use add_assign_fields;

add_assign_fields!(Counters {
    msgs_sent,
    msgs_received,
    bytes_sent,
    bytes_received,
    mismatches,
    unfinished,
    abandoned,
});
add_assign_fields!(UdpCounts {
    sent,
    received,
    lost,
    duplicated,
    reordered,
    late,
});

/// Counters of the measured part of the run (after the warm-up).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub msgs_sent: u64,
    pub msgs_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Messages whose echo differed from what was sent (or came back unasked).
    pub mismatches: u64,
    /// Messages still unanswered on held connections when the drain timeout ended the run.
    pub unfinished: u64,
    /// Messages outstanding on connections that were lost (counted there).
    pub abandoned: u64,
}

/// `--udp` datagrams of the measured part, by what became of them. At the
/// end, `sent == received + lost`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UdpCounts {
    /// Sends completed, failed ones included (those are lost too).
    pub sent: u64,
    /// Echoed (the first echo of each).
    pub received: u64,
    /// Not echoed within `--udp-timeout` of its send, or its send failed.
    pub lost: u64,
    /// Further echoes of a datagram already echoed.
    pub duplicated: u64,
    /// First echoes arriving after a later datagram of the same flow's.
    pub reordered: u64,
    /// Echoes of datagrams already counted lost (warm-up included).
    pub late: u64,
}

/// One thread's result.
#[derive(Debug)]
pub struct ThreadResult {
    pub requested: u64,
    pub established: u64,
    pub failed: u64,
    /// Established, then lost to an error or the server's close.
    pub lost: u64,
    /// Of `lost`: lost before the server echoed a byte.
    pub lost_unanswered: u64,
    /// Established and open at the end, sent something, never got a byte
    /// back: the server never accepted them (they sat in its accept queue).
    pub unanswered: u64,
    /// Failures by kind (errno name or a word), connects and established connections alike.
    pub errors: BTreeMap<String, u64>,
    pub counters: Counters,
    pub udp: UdpCounts,
    /// Echoed messages in the whole load phase, warm-up included: the divisor of CPU per message.
    pub msgs_all: u64,
    pub latency: Histogram<u64>,
    pub connect: Histogram<u64>,
    /// `--messages-per-conn`: measured connections that echoed all their
    /// messages and were closed by loadgen.
    pub completed: u64,
    /// Their times from (intended) connect start to last echo.
    pub transaction: Histogram<u64>,
    /// Open loop: how late, in µs, each measured message (or connection) was
    /// taken from the schedule after its due time; 0 for under a microsecond.
    pub schedule_lag: Histogram<u64>,
    /// When this thread's measured part ended.
    pub measure_end: Nanos,
}

impl ThreadResult {
    pub fn new(requested: u64) -> ThreadResult {
        ThreadResult {
            requested,
            established: 0,
            failed: 0,
            lost: 0,
            lost_unanswered: 0,
            unanswered: 0,
            errors: BTreeMap::new(),
            counters: Counters::default(),
            udp: UdpCounts::default(),
            msgs_all: 0,
            latency: new_histogram(),
            connect: new_histogram(),
            completed: 0,
            transaction: new_histogram(),
            schedule_lag: new_histogram(),
            measure_end: 0,
        }
    }

    pub fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_string()).or_default() += 1;
    }
}

/// What one thread shares with the progress printer while it runs.
pub struct Progress {
    /// Connections established and not lost.
    pub conns_up: AtomicU64,
    pub conns_failed: AtomicU64,
    /// `--messages-per-conn`: connections completed so far (warm-up included).
    pub conns_done: AtomicU64,
    /// Echoes received so far (warm-up included).
    pub msgs: AtomicU64,
    /// Latencies since the printer last took them.
    pub interval: Mutex<Histogram<u64>>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress {
            conns_up: AtomicU64::new(0),
            conns_failed: AtomicU64::new(0),
            conns_done: AtomicU64::new(0),
            msgs: AtomicU64::new(0),
            interval: Mutex::new(new_histogram()),
        }
    }
}

impl Progress {
    /// Hands a thread's recent latencies to the printer and clears them.
    pub fn flush(&self, local: &mut Histogram<u64>, msgs: u64) {
        self.msgs.store(msgs, Relaxed);
        if local.is_empty() {
            return;
        }
        if let Ok(mut h) = self.interval.lock() {
            let _ = h.add(&*local);
        }
        local.reset();
    }
}
