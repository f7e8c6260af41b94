//! Per-worker counters, written by exactly one worker with relaxed atomics and
//! read by the stats printer and the final summary. No locks, no shared cache
//! lines on the hot path: each worker's block is padded to its own cache line.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One worker's counters. Only that worker writes them.
#[derive(Default, Debug)]
#[repr(align(128))]
pub struct WorkerStats {
    pub accepted: AtomicU64,
    pub closed: AtomicU64,
    /// Closed at accept because `--max-conns` (or the descriptor table) was full.
    pub rejected: AtomicU64,
    /// Connections closed because of an error (reset, broken pipe ...).
    pub errors: AtomicU64,
    /// Times a descriptor table filled (a ring's direct descriptors, or the
    /// process's open files): new connections waited in the accept queue.
    pub table_full: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Times a receive found no free buffer (io_uring ENOBUFS, or the epoll pool empty).
    pub buffer_starved: AtomicU64,
    /// Times a connection hit its buffer budget and its receives were paused.
    pub backpressured: AtomicU64,
    /// Batches after which the kernel held completions that did not fit the
    /// CQ (IORING_SQ_CQ_OVERFLOW): nothing is lost, but --cq-entries is too small.
    pub cq_overflowed: AtomicU64,
    /// UDP datagrams received and echoed.
    pub udp_in: AtomicU64,
    pub udp_out: AtomicU64,
    /// UDP datagrams larger than --udp-max-datagram: dropped, never echoed cut short.
    pub udp_truncated: AtomicU64,
    /// UDP datagrams whose reply could not be sent (socket buffer full, error).
    pub udp_dropped: AtomicU64,
    /// io_uring `--send-zc`: sends that went zero-copy, and of those, the ones
    /// whose notification said the kernel copied after all (always on
    /// loopback and veth; on a NIC host a non-zero share means the pinning
    /// bought nothing for them).
    pub zc_sends: AtomicU64,
    pub zc_copied: AtomicU64,
    /// io_uring `--wait-batch`: trials of batching against not batching that
    /// came to a verdict, and those that kept batching (`batch_trial`).
    pub batch_trials: AtomicU64,
    pub batch_kept: AtomicU64,
    /// Gauge: connection slots the worker's slab has allocated (its capacity,
    /// which never shrinks): it grows only with the peak of open connections,
    /// so growth under steady churn means slots are not freed.
    pub slab_slots: AtomicU64,
    /// Gauge, io_uring only: direct descriptors accepted into the ring's table
    /// and not yet closed (rejected ones included until their close completes).
    pub direct_fds: AtomicU64,
}

impl WorkerStats {
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        // A single writer: load+store is cheaper than a locked add and still exact.
        counter.store(counter.load(Relaxed) + n, Relaxed);
    }

    /// Sets a gauge (same single writer).
    #[inline]
    pub fn set(gauge: &AtomicU64, v: u64) {
        gauge.store(v, Relaxed);
    }

    #[inline]
    pub fn sub(gauge: &AtomicU64, n: u64) {
        gauge.store(gauge.load(Relaxed).saturating_sub(n), Relaxed);
    }
}

/// All workers' counters; cloned (as an `Arc`) into each worker and the printer.
#[derive(Debug)]
pub struct Stats {
    workers: Vec<WorkerStats>,
}

impl Stats {
    pub fn new(workers: usize) -> Arc<Stats> {
        Arc::new(Stats {
            workers: (0..workers).map(|_| WorkerStats::default()).collect(),
        })
    }

    pub fn worker(&self, id: usize) -> &WorkerStats {
        &self.workers[id]
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut sum = Snapshot::default();
        for w in &self.workers {
            sum.add(&w.snapshot());
        }
        sum
    }

    /// Each worker's counters, in worker order.
    pub fn per_worker(&self) -> Vec<Snapshot> {
        self.workers.iter().map(WorkerStats::snapshot).collect()
    }
}

impl WorkerStats {
    /// This worker's counters now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            accepted: self.accepted.load(Relaxed),
            closed: self.closed.load(Relaxed),
            rejected: self.rejected.load(Relaxed),
            errors: self.errors.load(Relaxed),
            table_full: self.table_full.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            buffer_starved: self.buffer_starved.load(Relaxed),
            backpressured: self.backpressured.load(Relaxed),
            cq_overflowed: self.cq_overflowed.load(Relaxed),
            udp_in: self.udp_in.load(Relaxed),
            udp_out: self.udp_out.load(Relaxed),
            udp_truncated: self.udp_truncated.load(Relaxed),
            udp_dropped: self.udp_dropped.load(Relaxed),
            zc_sends: self.zc_sends.load(Relaxed),
            zc_copied: self.zc_copied.load(Relaxed),
            batch_trials: self.batch_trials.load(Relaxed),
            batch_kept: self.batch_kept.load(Relaxed),
            slab_slots: self.slab_slots.load(Relaxed),
            direct_fds: self.direct_fds.load(Relaxed),
        }
    }
}

/// A point-in-time sum over workers.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub accepted: u64,
    pub closed: u64,
    pub rejected: u64,
    pub errors: u64,
    pub table_full: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub buffer_starved: u64,
    pub backpressured: u64,
    pub cq_overflowed: u64,
    pub udp_in: u64,
    pub udp_out: u64,
    pub udp_truncated: u64,
    pub udp_dropped: u64,
    pub zc_sends: u64,
    pub zc_copied: u64,
    pub batch_trials: u64,
    pub batch_kept: u64,
    pub slab_slots: u64,
    pub direct_fds: u64,
}

impl Snapshot {
    /// Adds another worker's counters to these.
    pub fn add(&mut self, o: &Snapshot) {
        self.accepted += o.accepted;
        self.closed += o.closed;
        self.rejected += o.rejected;
        self.errors += o.errors;
        self.table_full += o.table_full;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.buffer_starved += o.buffer_starved;
        self.backpressured += o.backpressured;
        self.cq_overflowed += o.cq_overflowed;
        self.udp_in += o.udp_in;
        self.udp_out += o.udp_out;
        self.udp_truncated += o.udp_truncated;
        self.udp_dropped += o.udp_dropped;
        self.zc_sends += o.zc_sends;
        self.zc_copied += o.zc_copied;
        self.batch_trials += o.batch_trials;
        self.batch_kept += o.batch_kept;
        self.slab_slots += o.slab_slots;
        self.direct_fds += o.direct_fds;
    }

    /// Connections open now. Counters are read one by one, so a connection accepted
    /// and closed between two reads may be missed; never negative.
    pub fn open(&self) -> u64 {
        self.accepted.saturating_sub(self.closed)
    }
}

/// `key=value` pairs, one line, so tests and scripts can parse it.
impl fmt::Display for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "open={} accepted={} closed={} rejected={} errors={} table_full={} bytes_in={} bytes_out={} buffer_starved={} backpressured={} \
             cq_overflowed={} udp_in={} udp_out={} udp_truncated={} udp_dropped={} zc_sends={} zc_copied={} \
             batch_trials={} batch_kept={} slab_slots={} direct_fds={}",
            self.open(),
            self.accepted,
            self.closed,
            self.rejected,
            self.errors,
            self.table_full,
            self.bytes_in,
            self.bytes_out,
            self.buffer_starved,
            self.backpressured,
            self.cq_overflowed,
            self.udp_in,
            self.udp_out,
            self.udp_truncated,
            self.udp_dropped,
            self.zc_sends,
            self.zc_copied,
            self.batch_trials,
            self.batch_kept,
            self.slab_slots,
            self.direct_fds
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_sums_every_worker() {
        let stats = Stats::new(3);
        WorkerStats::add(&stats.worker(0).accepted, 2);
        WorkerStats::add(&stats.worker(2).accepted, 5);
        WorkerStats::add(&stats.worker(1).closed, 3);
        let s = stats.snapshot();
        assert_eq!(s.accepted, 7);
        assert_eq!(s.open(), 4);
        assert!(s.to_string().starts_with("open=4 accepted=7 closed=3"));
        let each: Vec<u64> = stats.per_worker().iter().map(|w| w.accepted).collect();
        assert_eq!(each, [2, 0, 5]);
    }

    #[test]
    fn gauges_are_summed_and_printed() {
        let stats = Stats::new(2);
        WorkerStats::set(&stats.worker(0).slab_slots, 16);
        WorkerStats::set(&stats.worker(1).slab_slots, 8);
        WorkerStats::add(&stats.worker(1).direct_fds, 3);
        WorkerStats::sub(&stats.worker(1).direct_fds, 1);
        let s = stats.snapshot();
        assert_eq!((s.slab_slots, s.direct_fds), (24, 2));
        assert!(s.to_string().ends_with("slab_slots=24 direct_fds=2"), "{s}");
    }
}
