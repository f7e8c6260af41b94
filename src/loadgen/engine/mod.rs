//! One engine thread: its ring, its share of the connections, and its loop.
//! Two phases. The ramp opens the connections on a schedule (`--connect-rate`),
//! each socket created and bound by [`super::connect`], installed as a direct
//! descriptor and connected by the ring, with a deadline (`--connect-timeout`).
//! Then all threads meet at a barrier, wait for `--start-at` if it was given,
//! and the load phase runs: closed loop
//! (a message per echo, `pipeline` in flight) or open loop (messages due on a
//! [`Schedule`], handed round-robin to the live connections), until the stop
//! condition, then a drain of what is still in flight.
//!
//! Every loop turn: create what is due → wait for completions or the next
//! deadline → handle each completion → give the receive buffers back once.
//! Message bookkeeping is [`Conn`]'s; the submissions are [`Ring`]'s.
//!
//! - this file: what threads share, the engine's state, the loop turn and
//!   completion dispatch, progress flushes.
//! - `ramp.rs`: the connect phase.
//! - `load.rs`: the load phase: creating messages, handling receives and sends.
//! - `churn.rs`: the `--messages-per-conn` load phase: connections opened,
//!   used for N messages, closed and replaced, their slots reused.
//! - `udp.rs`: the `--udp` load phase: datagrams on the schedule, their echoes,
//!   loss expiry.
#![forbid(unsafe_code)]

mod churn;
mod load;
mod ramp;
mod udp;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::config::{Config, Stop};
use super::conn::{Conn, Msg, Sink, State};
use super::flow::Flow;
use super::pacing::{Nanos, Schedule};
use super::pattern::Pattern;
use super::ring::{Completion, OpKind, RecvBufs, Ring, Tag};
use super::stats::{Progress, ThreadResult, new_histogram, record_ns};
use crate::loadgen::error::Error;

/// How often a thread hands its counters to the progress printer; also the
/// longest the loop sleeps, so a quiet thread still notices its deadlines.
const FLUSH_EVERY: Nanos = 100_000_000;
/// Tickets (for `--messages`) a thread claims from the shared pool at a time.
const TICKET_BATCH: u64 = 64;

/// What every thread reads, set up by [`super::run`].
pub struct Shared<'a> {
    pub config: &'a Config,
    pub epoch: Instant,
    pub target: SocketAddr,
    pub sources: Vec<IpAddr>,
    pub pattern: Arc<Pattern>,
    pub threads: usize,
    /// The ramp ends here for every thread before the load starts together.
    pub barrier: Barrier,
    /// Connections established by all threads, complete once past the barrier.
    pub established: AtomicU64,
    /// The wall clock at `epoch`, seconds since the UNIX epoch.
    pub epoch_unix: f64,
    /// `--start-at` on this run's clock: the load phase waits for it.
    pub start_at: Option<StartAt>,
    /// When the last thread finished its ramp (set at the barrier).
    pub ramp_end: OnceLock<Nanos>,
    pub load_start: OnceLock<Nanos>,
    /// CPU time (user, sys) when the load started.
    pub cpu_at_load_start: OnceLock<(f64, f64)>,
    /// Messages left to create, with `--messages`.
    pub tickets: Option<AtomicU64>,
    pub progress: Vec<Progress>,
    /// Set by SIGINT/SIGTERM: stop early, drain, and report what was measured.
    pub interrupt: Arc<AtomicBool>,
}

/// `--start-at`: the requested wall-clock instant, and the same instant on
/// the run's monotonic clock (which a wall-clock step cannot move).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StartAt {
    pub unix: f64,
    /// Nanoseconds since [`Shared::epoch`]; 0 when the instant had already
    /// passed when the run began.
    pub at: Nanos,
}

impl StartAt {
    /// Places `unix` on the clock whose zero is wall-clock `epoch_unix`.
    pub fn new(unix: f64, epoch_unix: f64) -> StartAt {
        StartAt {
            unix,
            at: ((unix - epoch_unix).max(0.0) * 1e9) as Nanos,
        }
    }
}

impl Shared<'_> {
    pub fn interrupted(&self) -> bool {
        self.interrupt.load(Relaxed)
    }

    pub fn now(&self) -> Nanos {
        self.epoch.elapsed().as_nanos() as Nanos
    }

    /// The ramp ended after `--start-at`: the load began late.
    pub fn started_late(&self) -> bool {
        match (self.start_at, self.ramp_end.get()) {
            (Some(s), Some(&end)) => end > s.at,
            _ => false,
        }
    }

    /// With `--start-at`, sleeps until its instant (in slices, so Ctrl-C is
    /// still heard); returns at once without it, or once it has passed.
    fn wait_for_start(&self) {
        let Some(start) = self.start_at else { return };
        loop {
            let now = self.now();
            if now >= start.at || self.interrupted() {
                return;
            }
            std::thread::sleep(Duration::from_nanos((start.at - now).min(FLUSH_EVERY)));
        }
    }
}

/// A thread's share: connections `first .. first + count` of the run.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub id: usize,
    pub first: u64,
    pub count: u32,
}

/// Runs one engine thread to the end. Always reaches both barriers, even
/// when its own setup fails, so the other threads are never left waiting.
pub fn run_thread(plan: Plan, shared: &Shared<'_>) -> Result<ThreadResult, Error> {
    let mut engine = match Engine::new(plan, shared) {
        Ok(e) => e,
        Err(e) => {
            shared.barrier.wait();
            shared.barrier.wait();
            return Err(e);
        }
    };
    // A churn run opens its connections in the load phase itself.
    let ramp = if shared.config.churn.is_some() {
        Ok(())
    } else {
        engine.ramp()
    };
    shared
        .established
        .fetch_add(engine.result.established - engine.result.lost, Relaxed);
    let leader = shared.barrier.wait().is_leader();
    if leader {
        let _ = shared.ramp_end.set(shared.now());
        if let Some(start) = shared.start_at.filter(|_| shared.started_late()) {
            let late = (shared.now() - start.at) as f64 / 1e9;
            eprintln!(
                "loadgen: warning: the connections were made {late:.3} s after --start-at {}; \
                 the load starts now, late (start.late in the JSON); give the ramp more time",
                start.unix
            );
        }
    }
    shared.wait_for_start();
    if leader {
        let _ = shared.cpu_at_load_start.set(crate::sys::cpu_time());
    }
    let loaded = ramp.and_then(|()| {
        if shared.config.udp.is_some() {
            engine.load_udp()
        } else if shared.config.churn.is_some() {
            engine.load_churn()
        } else {
            engine.load()
        }
    });
    // Connections close when the engine drops, and all threads close theirs
    // together: one that finished its drain first would otherwise free
    // server slots for connections another thread still waits on, and those
    // would look answered when the server never took them during the run.
    shared.barrier.wait();
    engine.cancel_receives();
    loaded?;
    Ok(engine.result)
}

/// How long `cancel_receives` waits for the receives it cancelled.
const CANCEL_RECEIVES_WAIT: Duration = Duration::from_secs(2);

/// Counts what [`Conn`] reports as sent or echoed.
struct Tally<'r> {
    result: &'r mut ThreadResult,
    interval: &'r mut Histogram<u64>,
    measure_start: Nanos,
    now: Nanos,
    echoed: u64,
}

impl Sink for Tally<'_> {
    fn sent(&mut self, msg: &Msg) {
        if msg.intended >= self.measure_start {
            let c = &mut self.result.counters;
            c.msgs_sent += 1;
            c.bytes_sent += u64::from(msg.len);
        }
    }

    fn echoed(&mut self, msg: &Msg) {
        self.echoed += 1;
        self.result.msgs_all += 1;
        let latency = self.now.saturating_sub(msg.intended);
        record_ns(self.interval, latency);
        // A corrupted echo fails the run even during the warm-up.
        if msg.corrupt {
            self.result.counters.mismatches += 1;
        }
        if msg.intended >= self.measure_start {
            let c = &mut self.result.counters;
            c.msgs_received += 1;
            c.bytes_received += u64::from(msg.len);
            record_ns(&mut self.result.latency, latency);
            self.result.measure_end = self.now;
        }
    }
}

struct Engine<'a> {
    ring: Ring,
    shared: &'a Shared<'a>,
    plan: Plan,
    conns: Vec<Conn>,
    /// `--udp` only (else empty): each connection's datagram bookkeeping.
    flows: Vec<Flow>,
    result: ThreadResult,
    /// Latencies since the last flush to the progress printer.
    interval: Histogram<u64>,
    cqes: Vec<Completion>,
    /// Connections (slot, generation) whose receive ended and must be
    /// re-armed after the buffers are given back (re-arming before would
    /// only earn another ENOBUFS).
    rearm: Vec<(u32, u32)>,
    /// Connects in flight as (slot, generation, deadline), oldest first (one
    /// timeout for all).
    connecting: VecDeque<(u32, u32, Nanos)>,
    /// `--messages-per-conn` only: the slots' lifecycles.
    churn: Option<churn::Slots>,
    /// Connections whose connect has finished, either way.
    settled: u32,
    /// Messages created and not yet echoed, all connections.
    outstanding: u64,
    /// `--messages` tickets claimed and not yet used.
    tickets: u64,
    /// The load phase still creates messages.
    creating: bool,
    measure_start: Nanos,
    next_flush: Nanos,
}

impl<'a> Engine<'a> {
    fn new(plan: Plan, shared: &'a Shared<'a>) -> Result<Engine<'a>, Error> {
        let udp = shared.config.udp.is_some();
        let bufs = if udp {
            RecvBufs::datagrams(shared.config.size.max)
        } else {
            RecvBufs::STREAM
        };
        let ring = Ring::new(plan.count, shared.target, shared.pattern.clone(), bufs, udp)
            .map_err(|e| e.context(format_args!("thread {}", plan.id)))?;
        let conns = (0..u64::from(plan.count))
            .map(|i| Conn::new(Pattern::seed_for(plan.first + i)))
            .collect();
        let flows = if udp {
            (0..u64::from(plan.count))
                .map(|i| Flow::new((plan.first + i) as u32))
                .collect()
        } else {
            Vec::new()
        };
        Ok(Engine {
            ring,
            shared,
            plan,
            conns,
            flows,
            result: ThreadResult::new(u64::from(plan.count)),
            interval: new_histogram(),
            cqes: Vec::with_capacity(4096),
            rearm: Vec::new(),
            connecting: VecDeque::new(),
            churn: shared.config.churn.map(|_| churn::Slots::new(plan.count)),
            settled: 0,
            outstanding: 0,
            tickets: 0,
            creating: false,
            measure_start: u64::MAX,
            next_flush: 0,
        })
    }

    fn config(&self) -> &'a Config {
        self.shared.config
    }

    /// The tag of a `kind` operation on the connection now in slot `key`.
    fn tag(&self, kind: OpKind, key: u32) -> Tag {
        Tag::new(kind, key, self.conns[key as usize].generation)
    }

    /// Where the measured part starts for the messages of connection `key`:
    /// the run's, or with churn its connection's (all or none of a
    /// connection's messages are measured).
    fn measure_start_for(&self, key: u32) -> Nanos {
        match &self.churn {
            Some(slots) if slots.measured(key) => 0,
            Some(_) => Nanos::MAX,
            None => self.measure_start,
        }
    }

    /// `--pacing-slack`, for the open-loop schedules.
    fn pacing_slack(&self) -> Nanos {
        self.config().pacing_slack.as_nanos() as Nanos
    }

    /// Where this thread's schedules sit within an interval, so threads interleave.
    fn phase(&self) -> f64 {
        self.plan.id as f64 / self.shared.threads as f64
    }

    // ---- the loop turn ----------------------------------------------------

    /// Cancels every armed receive by its own tag, and reaps until they have
    /// ended (or `CANCEL_RECEIVES_WAIT` passed), before the ring's teardown.
    /// The teardown cancels whatever is left with one cancel-everything
    /// request, for which the kernel finds each poll-armed receive by a scan
    /// of its whole table from the start: quadratic in the receives armed
    /// (10,000 connections took 5 s, 15,000 did not finish in the teardown's
    /// 5 s). A cancel by tag is a hash lookup. Nothing is counted any more:
    /// the load phase is over.
    fn cancel_receives(&mut self) {
        let mut armed = 0usize;
        for key in 0..self.conns.len() as u32 {
            if self.conns[key as usize].recv_armed {
                self.ring.cancel(self.tag(OpKind::Recv, key));
                armed += 1;
            }
        }
        let deadline = self.shared.now() + CANCEL_RECEIVES_WAIT.as_nanos() as Nanos;
        let mut cqes = std::mem::take(&mut self.cqes);
        while armed > 0 {
            let now = self.shared.now();
            if now >= deadline {
                break;
            }
            let timeout = Duration::from_nanos((deadline - now).min(FLUSH_EVERY));
            if self.ring.wait(timeout).is_err() {
                break;
            }
            self.ring.completions(&mut cqes);
            for c in &cqes {
                let key = c.user_data.key() as usize;
                let current = self
                    .conns
                    .get(key)
                    .is_some_and(|conn| conn.generation == c.user_data.generation());
                if c.user_data.kind() == Some(OpKind::Recv) && !c.more() && current {
                    let conn = &mut self.conns[key];
                    if std::mem::take(&mut conn.recv_armed) {
                        armed -= 1;
                    }
                }
            }
        }
        self.cqes = cqes;
    }

    /// Waits until a completion arrives or `wake` passes, then handles every completion.
    fn turn(&mut self, wake: Nanos) -> Result<(), Error> {
        let now = self.shared.now();
        let timeout = Duration::from_nanos(wake.saturating_sub(now).min(FLUSH_EVERY));
        self.ring
            .wait(timeout)
            .map_err(|e| Error::Run(format!("thread {}: io_uring wait: {e}", self.plan.id)))?;
        self.ring.completions(&mut self.cqes);
        let now = self.shared.now();
        let cqes = std::mem::take(&mut self.cqes);
        let udp = !self.flows.is_empty();
        for c in &cqes {
            let key = c.user_data.key();
            let stale = (key as usize) < self.conns.len()
                && c.user_data.generation() != self.conns[key as usize].generation;
            if stale {
                // A completion of the slot's previous connection (the receive
                // its close cancelled): only its buffer matters.
                if let Some(buf) = c.buffer() {
                    self.ring.recycle(buf);
                }
                continue;
            }
            match c.user_data.kind() {
                Some(OpKind::Connect) => self.handle_connect(key, c.result, now),
                Some(OpKind::Recv) if udp => self.handle_datagram(key, c, now),
                Some(OpKind::Recv) => self.handle_recv(key, c, now),
                Some(OpKind::Datagram) => self.handle_datagram_sent(key, c.result, now),
                Some(OpKind::Send) => self.handle_send(key, c.result, now),
                Some(OpKind::Close) => self.handle_close(key),
                Some(OpKind::Cancel) | None => {}
            }
        }
        self.cqes = cqes;
        self.ring.publish();
        for (key, generation) in std::mem::take(&mut self.rearm) {
            let conn = &mut self.conns[key as usize];
            if conn.generation == generation && conn.state == State::Established && !conn.recv_armed
            {
                conn.recv_armed = true;
                self.ring.recv(key, Tag::new(OpKind::Recv, key, generation));
            }
        }
        Ok(())
    }

    /// The TCP load phase begins: the shared start (the first thread to get
    /// here sets it), where measuring starts, and `stop_at` (the end of
    /// `--duration`, or never with `--messages`).
    fn begin_load(&mut self) -> (Nanos, Nanos) {
        let config = self.config();
        let start = *self.shared.load_start.get_or_init(|| self.shared.now());
        self.measure_start = start + config.warmup.as_nanos() as Nanos;
        let stop_at = match config.stop {
            Stop::After(d) => self.measure_start + d.as_nanos() as Nanos,
            Stop::Messages(_) => Nanos::MAX,
        };
        (start, stop_at)
    }

    /// The start of a load-phase turn: on Ctrl-C the measured part ends now
    /// (then the drain, then the report); once `stop_at` has passed, no more
    /// messages are created.
    fn check_stop(&mut self, now: Nanos, stop_at: &mut Nanos) {
        if self.shared.interrupted() && *stop_at > now {
            *stop_at = now;
        }
        if now >= *stop_at {
            self.creating = false;
        }
    }

    /// The due time of the next open-loop message, if one is due at `now` and
    /// messages are still being created; one due at `stop_at` or later ends
    /// the creating. Taken before [`Self::check_stop`] in a turn, so that a
    /// wake-up at `stop_at` still takes what fell due just before it.
    fn take_due(&mut self, schedule: &mut Schedule, now: Nanos, stop_at: Nanos) -> Option<Nanos> {
        if !self.creating {
            return None;
        }
        let due = schedule.take_due(now)?;
        if due >= stop_at {
            self.creating = false;
            return None;
        }
        Some(due)
    }

    /// Records loadgen's own lateness for a measured message (or connection)
    /// due at `due`, taken from the schedule at `taken` and then created: the
    /// pacing slack, plus however long loadgen was busy.
    fn record_lag(&mut self, due: Nanos, taken: Nanos) {
        if due >= self.measure_start {
            self.result
                .schedule_lag
                .saturating_record(taken.saturating_sub(due) / 1000);
        }
    }

    /// The TCP drain: once messages are no longer created, outstanding echoes
    /// have `--drain-timeout` to arrive; true (those left counted unfinished)
    /// once it has passed.
    fn drain_over(&mut self, now: Nanos, drain_deadline: &mut Nanos) -> bool {
        if !self.creating && *drain_deadline == Nanos::MAX {
            *drain_deadline = now + self.config().drain_timeout.as_nanos() as Nanos;
        }
        if now < *drain_deadline {
            return false;
        }
        self.set_apart_unanswered();
        self.result.counters.unfinished += self.outstanding;
        true
    }

    /// A load-phase turn: waits until `wake` or, while messages are being
    /// created, the next scheduled one, whichever is first.
    fn turn_until(&mut self, wake: Nanos, schedule: Option<&Schedule>) -> Result<(), Error> {
        let wake = match schedule {
            Some(s) if self.creating => wake.min(s.wake_at()),
            _ => wake,
        };
        self.turn(wake)
    }

    /// After the drain: where the measured part ended (`stop_at` with
    /// `--duration`; with `--messages`, the last measured echo, or now when
    /// interrupted or nothing was echoed), and the last progress flush.
    fn finish_load(&mut self, stop_at: Nanos, echoed_any: bool) {
        let now = self.shared.now();
        self.result.measure_end = match self.config().stop {
            Stop::After(_) => stop_at.min(now),
            Stop::Messages(_) if self.shared.interrupted() => now,
            Stop::Messages(_) if echoed_any => self.result.measure_end,
            Stop::Messages(_) => now,
        };
        self.flush_progress(0);
    }

    /// Publishes this thread's progress every [`FLUSH_EVERY`]; `now == 0` forces it.
    fn flush_progress(&mut self, now: Nanos) {
        if now != 0 && now < self.next_flush {
            return;
        }
        self.next_flush = self.shared.now() + FLUSH_EVERY;
        let p = &self.shared.progress[self.plan.id];
        let up = match &self.churn {
            Some(slots) => {
                p.conns_done.store(slots.done, Relaxed);
                u64::from(slots.active)
            }
            None => self.result.established - self.result.lost,
        };
        p.conns_up.store(up, Relaxed);
        p.conns_failed.store(self.result.failed, Relaxed);
        p.flush(&mut self.interval, self.result.msgs_all);
    }
}
