//! The `--udp` load phase of an engine thread: datagrams created on the
//! `--rate` [`Schedule`], round-robin over the thread's flows, each sent from
//! its flow's connected UDP socket (one send in flight per flow; a later one
//! waits, and its wait counts in its latency, which runs from its intended
//! send time); echoes checked ([`datagram::check`]) and matched to their
//! datagram by sequence number ([`Flow`](crate::loadgen::flow::Flow));
//! datagrams not echoed within `--udp-timeout` of their send counted lost.
//! After the stop, a drain until every datagram is echoed or lost, so at most
//! `--udp-timeout` (plus one expiry period).
//!
//! Unlike a TCP connection, a flow is never lost: an error (ECONNREFUSED when
//! an ICMP port unreachable came back) is counted by kind and the flow goes on.
#![forbid(unsafe_code)]

use super::Engine;
use crate::loadgen::config::{Load, Stop};
use crate::loadgen::conn::State;
use crate::loadgen::connect::errno_kind;
use crate::loadgen::datagram::{self, Header, Mismatch};
use crate::loadgen::error::Error;
use crate::loadgen::flow::{Datagram, Echo};
use crate::loadgen::pacing::{Nanos, Schedule};
use crate::loadgen::ring::{Completion, OpKind, Tag};
use crate::loadgen::stats::record_ns;

/// How often datagrams are checked against the timeout: how late, at most,
/// a loss is noticed.
const EXPIRE_EVERY: Nanos = 10_000_000;
/// After the last send, beyond `--udp-timeout`, how long the drain may take
/// before what is still outstanding (a send that never completed) is given
/// up as unfinished.
const DRAIN_SLACK: Nanos = 1_000_000_000;

impl Engine<'_> {
    pub(super) fn load_udp(&mut self) -> Result<(), Error> {
        let config = self.config();
        let udp = config.udp.expect("a --udp run");
        let timeout = udp.timeout.as_nanos() as Nanos;
        let Load::Open { rate, .. } = config.load else {
            unreachable!("--udp needs --rate (checked by the CLI)");
        };
        let start = *self.shared.load_start.get_or_init(|| self.shared.now());
        self.measure_start = start + config.warmup.as_nanos() as Nanos;
        let mut stop_at = match config.stop {
            Stop::After(d) => self.measure_start + d.as_nanos() as Nanos,
            Stop::Messages(_) => Nanos::MAX,
        };
        // Flows are never lost, so the set is fixed for the run.
        let live: Vec<u32> = (0..self.plan.count)
            .filter(|&k| self.conns[k as usize].state == State::Established)
            .collect();
        self.creating = !live.is_empty();
        let total = self
            .shared
            .established
            .load(std::sync::atomic::Ordering::Relaxed);
        let share = rate * live.len() as f64 / total.max(1) as f64;
        let slack = self.pacing_slack();
        let mut schedule =
            (share > 0.0).then(|| Schedule::new(start, share, self.phase()).with_slack(slack));
        let mut rr = 0usize;
        let mut next_expiry = 0;
        let mut drain_deadline = Nanos::MAX;
        loop {
            let now = self.shared.now();
            if let Some(s) = schedule.as_mut() {
                while let Some(due) = self.take_due(s, now, stop_at) {
                    if self.create_datagram(live[rr], due, now) {
                        self.record_lag(due, now);
                    }
                    rr = (rr + 1) % live.len();
                }
            }
            self.check_stop(now, &mut stop_at);
            if now >= next_expiry {
                self.expire_datagrams(now, timeout);
                next_expiry = now + EXPIRE_EVERY;
            }
            if self.outstanding == 0 && !self.creating {
                break;
            }
            if !self.creating && drain_deadline == Nanos::MAX {
                drain_deadline = now + timeout + DRAIN_SLACK;
            }
            if now >= drain_deadline {
                self.result.counters.unfinished += self.outstanding;
                break;
            }
            self.flush_progress(now);
            let wake = self
                .next_flush
                .min(next_expiry)
                .min(stop_at)
                .min(drain_deadline);
            self.turn_until(wake, schedule.as_ref())?;
        }
        self.finish_load(stop_at, self.result.udp.received > 0);
        Ok(())
    }

    /// Creates a datagram on flow `key` meant to be sent at `intended`, unless
    /// `--messages` is used up; true if it did.
    fn create_datagram(&mut self, key: u32, intended: Nanos, now: Nanos) -> bool {
        if intended >= self.measure_start && !self.take_ticket() {
            self.creating = false;
            return false;
        }
        let size = self.config().size;
        let flow = &mut self.flows[key as usize];
        let len = flow.next_size(size.min, size.max);
        flow.push(Datagram { intended, len });
        self.outstanding += 1;
        self.kick_datagram(key, now);
        true
    }

    /// Submits flow `key`'s next datagram if one waits and none is in flight.
    fn kick_datagram(&mut self, key: u32, now: Nanos) {
        let flow = &mut self.flows[key as usize];
        if let Some((seq, d)) = flow.take_send(now) {
            let header = Header {
                flow: flow.id,
                len: d.len,
                seq,
            };
            let queued = self
                .ring
                .send_datagram(key, &header, Tag::new(OpKind::Datagram, key, 0));
            debug_assert!(queued, "one send per flow: Flow::send_in_flight");
        }
    }

    pub(super) fn handle_datagram_sent(&mut self, key: u32, res: i32, now: Nanos) {
        if res < 0 {
            self.result.error(errno_kind(-res));
        }
        let (datagram, lost) = self.flows[key as usize].on_sent(res >= 0);
        if let Some(d) = datagram {
            if lost {
                self.outstanding -= 1;
            }
            if d.intended >= self.measure_start {
                let c = &mut self.result.counters;
                c.msgs_sent += 1;
                c.bytes_sent += u64::from(d.len);
                self.result.udp.sent += 1;
                self.result.udp.lost += u64::from(lost);
            }
        }
        self.kick_datagram(key, now);
    }

    pub(super) fn handle_datagram(&mut self, key: u32, c: &Completion, now: Nanos) {
        let conn = &mut self.conns[key as usize];
        if !c.more() {
            conn.recv_armed = false;
        }
        if let Some(buf) = c.buffer() {
            if c.result >= 0 {
                let pattern = self.shared.config.verify.then_some(&*self.shared.pattern);
                let bytes = self.ring.received(buf, c.result as u32);
                let checked = datagram::check(bytes, self.flows[key as usize].id, pattern);
                self.ring.recycle(buf);
                self.on_checked(key, checked, now);
            } else {
                self.ring.recycle(buf);
            }
        }
        if c.result < 0 && !matches!(-c.result, libc::ENOBUFS | libc::ECANCELED) {
            // ECONNREFUSED: an ICMP port unreachable answered an earlier send.
            self.result.error(errno_kind(-c.result));
        }
        let conn = &self.conns[key as usize];
        if conn.state == State::Established && !conn.recv_armed {
            self.rearm.push((key, conn.generation));
        }
    }

    fn on_checked(&mut self, key: u32, checked: Result<Header, Mismatch>, now: Nanos) {
        let seq = match checked {
            Ok(h) => h.seq,
            // The header is intact: the datagram came back, wrong.
            Err(Mismatch::Payload(h) | Mismatch::Length(h)) => {
                self.result.counters.mismatches += 1;
                h.seq
            }
            Err(Mismatch::Short | Mismatch::OtherFlow) => {
                self.result.counters.mismatches += 1;
                self.result.error("foreign_datagram");
                return;
            }
        };
        let measured = |d: &Datagram| d.intended >= self.measure_start;
        match self.flows[key as usize].on_echo(seq) {
            Echo::First {
                datagram: d,
                reordered,
            } => {
                self.outstanding -= 1;
                self.result.msgs_all += 1;
                let latency = now.saturating_sub(d.intended);
                record_ns(&mut self.interval, latency);
                if measured(&d) {
                    let r = &mut self.result;
                    r.counters.msgs_received += 1;
                    r.counters.bytes_received += u64::from(d.len);
                    r.udp.received += 1;
                    r.udp.reordered += u64::from(reordered);
                    record_ns(&mut r.latency, latency);
                    r.measure_end = now;
                }
            }
            Echo::Duplicate(d) => {
                if measured(&d) {
                    self.result.udp.duplicated += 1;
                }
            }
            Echo::Late => self.result.udp.late += 1,
            Echo::Unsent => {
                self.result.counters.mismatches += 1;
                self.result.error("foreign_datagram");
            }
        }
    }

    /// Counts as lost what waited longer than `timeout` for its echo.
    fn expire_datagrams(&mut self, now: Nanos, timeout: Nanos) {
        let Engine {
            flows,
            result,
            outstanding,
            measure_start,
            ..
        } = self;
        for flow in flows.iter_mut() {
            flow.expire(now, timeout, |d| {
                *outstanding -= 1;
                if d.intended >= *measure_start {
                    result.udp.lost += 1;
                }
            });
        }
    }
}
