//! The load phase of an engine thread: messages created closed-loop (one per
//! echo) or open-loop (on a [`Schedule`], round-robin over live connections),
//! until the stop condition, then drained; and the receive and send
//! completions that move them along.
#![forbid(unsafe_code)]

use std::sync::atomic::Ordering::Relaxed;

use super::{Engine, TICKET_BATCH, Tally};
use crate::loadgen::config::Load;
use crate::loadgen::conn::{RecvError, State};
use crate::loadgen::connect::errno_kind;
use crate::loadgen::error::Error;
use crate::loadgen::pacing::{Nanos, Schedule};
use crate::loadgen::ring::{Completion, OpKind, Tag};

impl Engine<'_> {
    pub(super) fn load(&mut self) -> Result<(), Error> {
        let config = self.config();
        let (start, mut stop_at) = self.begin_load();
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
                    schedule = Some(
                        Schedule::new(start, share, self.phase()).with_slack(self.pacing_slack()),
                    );
                }
            }
        }
        let mut rr = 0usize;
        let mut drain_deadline = Nanos::MAX;
        loop {
            let now = self.shared.now();
            if let Some(s) = schedule.as_mut() {
                while let Some(due) = self.take_due(s, now, stop_at) {
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
                    if self.create(live[rr], due) {
                        self.record_lag(due, now);
                    }
                    rr += 1;
                }
            }
            self.check_stop(now, &mut stop_at);
            if self.outstanding == 0 && (!self.creating || schedule.is_none()) {
                break;
            }
            if self.drain_over(now, &mut drain_deadline) {
                break;
            }
            self.flush_progress(now);
            let wake = self.next_flush.min(drain_deadline).min(stop_at);
            self.turn_until(wake, schedule.as_ref())?;
        }
        self.finish_load(stop_at, self.result.counters.msgs_received > 0);
        Ok(())
    }

    /// Creates a message on `key` meant to be sent at `intended`, unless the
    /// run has stopped creating or `--messages` is used up; true if it did.
    fn create(&mut self, key: u32, intended: Nanos) -> bool {
        if !self.creating {
            return false;
        }
        if intended >= self.measure_start && !self.take_ticket() {
            self.creating = false;
            return false;
        }
        let (min, max) = (self.config().size.min, self.config().size.max);
        let pipeline = self.config().load.pipeline();
        let conn = &mut self.conns[key as usize];
        let len = conn.next_size(min, max);
        conn.push(intended, len, pipeline);
        self.outstanding += 1;
        self.kick_send(key);
        true
    }

    pub(super) fn take_ticket(&mut self) -> bool {
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
    pub(super) fn kick_send(&mut self, key: u32) {
        let max = self.shared.pattern.max_slice();
        let conn = &mut self.conns[key as usize];
        if let Some((offset, len)) = conn.next_send(max) {
            conn.send_in_flight = len;
            let seed = conn.seed;
            let tag = Tag::new(OpKind::Send, key, conn.generation);
            self.ring.send(key, seed, offset, len, tag);
        }
    }

    /// At the end of the drain: established connections that sent and never
    /// got a byte back were never accepted by the server (the kernel completed
    /// the handshake and queued them). They are not held, and their messages
    /// are abandoned, not unfinished: the report says what happened to them.
    /// No thread closes its connections before every thread is past this
    /// point (`run_thread`), or the server could take these late.
    pub(super) fn set_apart_unanswered(&mut self) {
        for conn in &mut self.conns {
            if conn.state == State::Established && conn.has_sent() && !conn.answered() {
                conn.state = State::Unanswered;
                let abandoned = conn.abandon() as u64;
                self.outstanding -= abandoned;
                self.result.counters.abandoned += abandoned;
                self.result.unanswered += 1;
            }
        }
    }

    /// An established connection ended: counted, its messages abandoned, closed.
    pub(super) fn lose(&mut self, key: u32, kind: &str) {
        let conn = &mut self.conns[key as usize];
        if conn.state != State::Established {
            return;
        }
        if !conn.answered() {
            self.result.lost_unanswered += 1;
        }
        conn.state = State::Lost;
        let abandoned = conn.abandon() as u64;
        self.outstanding -= abandoned;
        self.result.counters.abandoned += abandoned;
        self.result.lost += 1;
        self.result.error(kind);
        self.close_conn(key);
    }

    /// Closes connection `key`: its receive cancelled first if still armed,
    /// since an operation in flight keeps the socket open however the slot is
    /// closed (and with churn the slot is free only after the close).
    pub(super) fn close_conn(&mut self, key: u32) {
        if self.conns[key as usize].recv_armed {
            self.ring.cancel(self.tag(OpKind::Recv, key));
        }
        self.ring.close(key, self.tag(OpKind::Close, key));
    }

    pub(super) fn handle_recv(&mut self, key: u32, c: &Completion, now: Nanos) {
        let measure_start = self.measure_start_for(key);
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
                    measure_start,
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
        if self.churn.is_some() {
            if self.churn_echoed(key, echoed, now) {
                return; // all its messages are back: closing
            }
        } else if matches!(self.config().load, Load::Closed { .. }) {
            for _ in 0..echoed {
                self.create(key, now);
            }
        }
        self.kick_send(key);
        let conn = &self.conns[key as usize];
        if !conn.recv_armed {
            self.rearm.push((key, conn.generation));
        }
    }

    pub(super) fn handle_send(&mut self, key: u32, res: i32, now: Nanos) {
        let conn = &mut self.conns[key as usize];
        if conn.state != State::Established {
            conn.send_in_flight = 0;
            return;
        }
        if res < 0 {
            conn.send_in_flight = 0;
            return self.lose(key, errno_kind(-res));
        }
        let measure_start = self.measure_start_for(key);
        let conn = &mut self.conns[key as usize];
        let mut tally = Tally {
            result: &mut self.result,
            interval: &mut self.interval,
            measure_start,
            now,
            echoed: 0,
        };
        conn.on_sent(res as u32, &mut tally);
        self.kick_send(key);
    }
}
