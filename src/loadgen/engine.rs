//! One engine thread: its ring, its share of the connections, and its loop.
//! Two phases. The ramp opens the connections on a schedule (`--connect-rate`),
//! each socket created and bound by [`super::connect`], installed as a direct
//! descriptor and connected by the ring, with a deadline (`--connect-timeout`).
//! Then all threads meet at a barrier and the load phase runs: closed loop
//! (a message per echo, `pipeline` in flight) or open loop (messages due on a
//! [`Schedule`], handed round-robin to the live connections), until the stop
//! condition, then a drain of what is still in flight.
//!
//! Every loop turn: create what is due → wait for completions or the next
//! deadline → handle each completion → give the receive buffers back once.
//! Message bookkeeping is [`Conn`]'s; the submissions are [`Ring`]'s.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::config::{Config, Load, Stop};
use super::conn::{Conn, Msg, RecvError, Sink, State};
use super::connect::{errno_kind, open_socket};
use super::pacing::{Nanos, Schedule};
use super::pattern::Pattern;
use super::ring::{Completion, OpKind, Ring, Tag};
use super::stats::{Progress, ThreadResult, new_histogram, record_ns};

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
    pub load_start: OnceLock<Nanos>,
    /// CPU time (user, sys) when the load started.
    pub cpu_at_load_start: OnceLock<(f64, f64)>,
    /// Messages left to create, with `--messages`.
    pub tickets: Option<AtomicU64>,
    pub progress: Vec<Progress>,
}

impl Shared<'_> {
    pub fn now(&self) -> Nanos {
        self.epoch.elapsed().as_nanos() as Nanos
    }
}

/// A thread's share: connections `first .. first + count` of the run.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub id: usize,
    pub first: u64,
    pub count: u32,
}

/// Runs one engine thread to the end. Always reaches the barrier, even when
/// its own setup fails, so the other threads are never left waiting.
pub fn run_thread(plan: Plan, shared: &Shared<'_>) -> Result<ThreadResult, String> {
    let mut engine = match Engine::new(plan, shared) {
        Ok(e) => e,
        Err(e) => {
            shared.barrier.wait();
            return Err(e);
        }
    };
    let ramp = engine.ramp();
    shared
        .established
        .fetch_add(engine.result.established - engine.result.lost, Relaxed);
    if shared.barrier.wait().is_leader() {
        let _ = shared.cpu_at_load_start.set(crate::sys::cpu_time());
    }
    ramp?;
    engine.load()?;
    Ok(engine.result)
}

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
    result: ThreadResult,
    /// Latencies since the last flush to the progress printer.
    interval: Histogram<u64>,
    cqes: Vec<Completion>,
    /// Connections whose receive ended and must be re-armed after the buffers
    /// are given back (re-arming before would only earn another ENOBUFS).
    rearm: Vec<u32>,
    /// Connects in flight with their deadlines, oldest first (one timeout for all).
    connecting: VecDeque<(u32, Nanos)>,
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
    fn new(plan: Plan, shared: &'a Shared<'a>) -> Result<Engine<'a>, String> {
        let ring = Ring::new(plan.count, shared.target, shared.pattern.clone())
            .map_err(|e| format!("thread {}: {e}", plan.id))?;
        let conns = (0..u64::from(plan.count))
            .map(|i| Conn::new(Pattern::seed_for(plan.first + i)))
            .collect();
        Ok(Engine {
            ring,
            shared,
            plan,
            conns,
            result: ThreadResult::new(u64::from(plan.count)),
            interval: new_histogram(),
            cqes: Vec::with_capacity(4096),
            rearm: Vec::new(),
            connecting: VecDeque::new(),
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

    /// Where this thread's schedules sit within an interval, so threads interleave.
    fn phase(&self) -> f64 {
        self.plan.id as f64 / self.shared.threads as f64
    }

    // ---- ramp -------------------------------------------------------------

    fn ramp(&mut self) -> Result<(), String> {
        let config = self.config();
        let n = self.plan.count;
        let rate = f64::from(config.connect_rate) * f64::from(n) / f64::from(config.conns);
        let mut schedule = Schedule::new(self.shared.now(), rate.max(1e-3), self.phase());
        let timeout = config.connect_timeout.as_nanos() as Nanos;
        let mut next = 0u32;
        while self.settled < n {
            let now = self.shared.now();
            while next < n && schedule.take_due(now).is_some() {
                self.start_connect(next, now, now + timeout);
                next += 1;
            }
            while let Some(&(key, deadline)) = self.connecting.front() {
                if deadline > now {
                    break;
                }
                self.connecting.pop_front();
                if self.conns[key as usize].state == State::Connecting {
                    // Completes with ECANCELED, counted as a timeout.
                    self.ring.cancel(Tag::new(OpKind::Connect, key));
                }
            }
            self.flush_progress(now);
            let mut wake = self.next_flush;
            if next < n {
                wake = wake.min(schedule.next_due());
            }
            if let Some(&(_, deadline)) = self.connecting.front() {
                wake = wake.min(deadline);
            }
            self.turn(wake)?;
        }
        self.flush_progress(0);
        Ok(())
    }

    fn start_connect(&mut self, key: u32, now: Nanos, deadline: Nanos) {
        let global = self.plan.first + u64::from(key);
        let sources = &self.shared.sources;
        let source =
            (!sources.is_empty()).then(|| sources[(global % sources.len() as u64) as usize]);
        let installed = open_socket(self.shared.target, source)
            .and_then(|socket| self.ring.install(key, socket));
        if let Err(e) = installed {
            self.fail(
                key,
                e.raw_os_error().map_or("other_errno", errno_kind),
                false,
            );
            return;
        }
        let conn = &mut self.conns[key as usize];
        conn.state = State::Connecting;
        conn.connect_started = now;
        self.ring.connect(key, Tag::new(OpKind::Connect, key));
        self.connecting.push_back((key, deadline));
    }

    fn fail(&mut self, key: u32, kind: &str, installed: bool) {
        self.conns[key as usize].state = State::Failed;
        self.settled += 1;
        self.result.failed += 1;
        self.result.error(kind);
        if installed {
            self.ring.close(key);
        }
    }

    fn handle_connect(&mut self, key: u32, res: i32, now: Nanos) {
        let conn = &mut self.conns[key as usize];
        if conn.state != State::Connecting {
            return;
        }
        if res < 0 {
            let kind = if -res == libc::ECANCELED {
                "connect_timeout"
            } else {
                errno_kind(-res)
            };
            self.fail(key, kind, true);
            return;
        }
        conn.state = State::Established;
        conn.recv_armed = true;
        record_ns(&mut self.result.connect, now - conn.connect_started);
        self.settled += 1;
        self.result.established += 1;
        self.ring.recv(key, Tag::new(OpKind::Recv, key));
    }

    // ---- load -------------------------------------------------------------

    fn load(&mut self) -> Result<(), String> {
        let config = self.config();
        let start = *self.shared.load_start.get_or_init(|| self.shared.now());
        self.measure_start = start + config.warmup.as_nanos() as Nanos;
        let stop_at = match config.stop {
            Stop::After(d) => self.measure_start + d.as_nanos() as Nanos,
            Stop::Messages(_) => Nanos::MAX,
        };
        let mut live: Vec<u32> = (0..self.plan.count)
            .filter(|&k| self.conns[k as usize].state == State::Established)
            .collect();
        self.creating = !live.is_empty();
        let mut schedule = None;
        match config.load {
            Load::Closed { pipeline } => {
                for &key in &live {
                    for _ in 0..pipeline {
                        self.create(key, start);
                    }
                }
            }
            Load::Open { rate, .. } => {
                let total = self.shared.established.load(Relaxed).max(1);
                let share = rate * live.len() as f64 / total as f64;
                if share > 0.0 {
                    schedule = Some(Schedule::new(start, share, self.phase()));
                }
            }
        }
        let mut rr = 0usize;
        let mut drain_deadline = Nanos::MAX;
        loop {
            let now = self.shared.now();
            if now >= stop_at {
                self.creating = false;
            }
            if let Some(s) = schedule.as_mut() {
                while self.creating {
                    let Some(due) = s.take_due(now) else { break };
                    if due >= stop_at {
                        self.creating = false;
                        break;
                    }
                    // The next live connection, dropping dead ones as they turn up.
                    while rr < live.len()
                        && self.conns[live[rr] as usize].state != State::Established
                    {
                        live.swap_remove(rr);
                    }
                    if rr >= live.len() {
                        rr = 0;
                        live.retain(|&k| self.conns[k as usize].state == State::Established);
                        if live.is_empty() {
                            self.creating = false;
                            break;
                        }
                    }
                    self.create(live[rr], due);
                    rr += 1;
                }
            }
            if self.outstanding == 0 && (!self.creating || schedule.is_none()) {
                break;
            }
            if !self.creating && drain_deadline == Nanos::MAX {
                drain_deadline =
                    now.max(stop_at.min(now)) + config.drain_timeout.as_nanos() as Nanos;
            }
            if now >= drain_deadline {
                self.result.counters.unfinished += self.outstanding;
                break;
            }
            self.flush_progress(now);
            let mut wake = self.next_flush.min(drain_deadline).min(stop_at);
            if let (Some(s), true) = (schedule.as_ref(), self.creating) {
                wake = wake.min(s.next_due());
            }
            self.turn(wake)?;
        }
        let now = self.shared.now();
        self.result.measure_end = match config.stop {
            Stop::After(_) => stop_at.min(now),
            Stop::Messages(_) if self.result.counters.msgs_received > 0 => self.result.measure_end,
            Stop::Messages(_) => now,
        };
        self.flush_progress(0);
        Ok(())
    }

    /// Creates a message on `key` meant to be sent at `intended`, unless the
    /// run has stopped creating or `--messages` is used up.
    fn create(&mut self, key: u32, intended: Nanos) {
        if !self.creating {
            return;
        }
        if intended >= self.measure_start && !self.take_ticket() {
            self.creating = false;
            return;
        }
        let (min, max) = (self.config().size.min, self.config().size.max);
        let pipeline = self.config().load.pipeline();
        let conn = &mut self.conns[key as usize];
        let len = conn.next_size(min, max);
        conn.push(intended, len, pipeline);
        self.outstanding += 1;
        self.kick_send(key);
    }

    fn take_ticket(&mut self) -> bool {
        let Some(pool) = &self.shared.tickets else {
            return true;
        };
        if self.tickets == 0 {
            let claimed = pool.fetch_update(Relaxed, Relaxed, |left| {
                (left > 0).then(|| left - left.min(TICKET_BATCH))
            });
            self.tickets = claimed.map_or(0, |left| left.min(TICKET_BATCH));
        }
        if self.tickets == 0 {
            return false;
        }
        self.tickets -= 1;
        true
    }

    /// Submits the next send of `key` if one is due and none is in flight.
    fn kick_send(&mut self, key: u32) {
        let max = self.shared.pattern.max_slice();
        let conn = &mut self.conns[key as usize];
        if let Some((offset, len)) = conn.next_send(max) {
            conn.send_in_flight = len;
            let seed = conn.seed;
            self.ring
                .send(key, seed, offset, len, Tag::new(OpKind::Send, key));
        }
    }

    /// An established connection ended: counted, its messages abandoned, closed.
    fn lose(&mut self, key: u32, kind: &str) {
        let conn = &mut self.conns[key as usize];
        if conn.state != State::Established {
            return;
        }
        conn.state = State::Lost;
        let abandoned = conn.abandon() as u64;
        self.outstanding -= abandoned;
        self.result.counters.abandoned += abandoned;
        self.result.lost += 1;
        self.result.error(kind);
        self.ring.close(key);
    }

    // ---- the loop turn ----------------------------------------------------

    /// Waits until a completion arrives or `wake` passes, then handles every completion.
    fn turn(&mut self, wake: Nanos) -> Result<(), String> {
        let now = self.shared.now();
        let timeout = Duration::from_nanos(wake.saturating_sub(now).min(FLUSH_EVERY));
        self.ring
            .wait(timeout)
            .map_err(|e| format!("thread {}: io_uring wait: {e}", self.plan.id))?;
        self.ring.completions(&mut self.cqes);
        let now = self.shared.now();
        let cqes = std::mem::take(&mut self.cqes);
        for c in &cqes {
            let key = c.tag.conn();
            match c.tag.kind() {
                Some(OpKind::Connect) => self.handle_connect(key, c.result, now),
                Some(OpKind::Recv) => self.handle_recv(key, c, now),
                Some(OpKind::Send) => self.handle_send(key, c.result, now),
                Some(OpKind::Close | OpKind::Cancel) | None => {}
            }
        }
        self.cqes = cqes;
        self.ring.publish();
        for key in std::mem::take(&mut self.rearm) {
            let conn = &mut self.conns[key as usize];
            if conn.state == State::Established && !conn.recv_armed {
                conn.recv_armed = true;
                self.ring.recv(key, Tag::new(OpKind::Recv, key));
            }
        }
        Ok(())
    }

    fn handle_recv(&mut self, key: u32, c: &Completion, now: Nanos) {
        let Engine {
            ring,
            conns,
            result,
            interval,
            shared,
            ..
        } = self;
        let conn = &mut conns[key as usize];
        if !c.more() {
            conn.recv_armed = false;
        }
        let res = c.result;
        let mut echoed = 0;
        let mut outcome = Ok(());
        if let Some(buf) = c.buffer() {
            if res > 0 && conn.state == State::Established {
                let pattern = shared.config.verify.then_some(&*shared.pattern);
                let mut tally = Tally {
                    result,
                    interval,
                    measure_start: self.measure_start,
                    now,
                    echoed: 0,
                };
                let bytes = ring.received(buf, res as u32);
                outcome = conn.on_recv(bytes, pattern, shared.config.load.pipeline(), &mut tally);
                echoed = tally.echoed;
            }
            ring.recycle(buf);
        }
        if conn.state != State::Established {
            return;
        }
        self.outstanding -= echoed;
        if outcome == Err(RecvError::Unexpected) {
            self.result.counters.mismatches += 1;
            self.lose(key, "unexpected_bytes");
            return;
        }
        match res {
            0 => return self.lose(key, "closed_by_server"),
            r if r < 0 && !matches!(-r, libc::ENOBUFS | libc::ECANCELED) => {
                return self.lose(key, errno_kind(-r));
            }
            _ => {}
        }
        if matches!(self.config().load, Load::Closed { .. }) {
            for _ in 0..echoed {
                self.create(key, now);
            }
        }
        self.kick_send(key);
        if !self.conns[key as usize].recv_armed {
            self.rearm.push(key);
        }
    }

    fn handle_send(&mut self, key: u32, res: i32, now: Nanos) {
        let conn = &mut self.conns[key as usize];
        if conn.state != State::Established {
            conn.send_in_flight = 0;
            return;
        }
        if res < 0 {
            conn.send_in_flight = 0;
            return self.lose(key, errno_kind(-res));
        }
        let mut tally = Tally {
            result: &mut self.result,
            interval: &mut self.interval,
            measure_start: self.measure_start,
            now,
            echoed: 0,
        };
        conn.on_sent(res as u32, &mut tally);
        self.kick_send(key);
    }

    /// Publishes this thread's progress every [`FLUSH_EVERY`]; `now == 0` forces it.
    fn flush_progress(&mut self, now: Nanos) {
        if now != 0 && now < self.next_flush {
            return;
        }
        self.next_flush = self.shared.now() + FLUSH_EVERY;
        let p = &self.shared.progress[self.plan.id];
        p.conns_up
            .store(self.result.established - self.result.lost, Relaxed);
        p.conns_failed.store(self.result.failed, Relaxed);
        p.flush(&mut self.interval, self.result.msgs_all);
    }
}
