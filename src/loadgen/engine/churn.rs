//! The `--messages-per-conn N` load phase: connection churn. A connection is
//! opened (socket, direct-descriptor slot, connect through the ring), sends
//! its N messages (`--pipeline` in flight, each created when an echo makes
//! room), checks every echo, and is closed by loadgen, which so holds the
//! TIME_WAIT (or resets with `--linger0`). Its slot is free again once the
//! close completes, and is reused by the next connection with the next
//! generation, so a late completion of the old one is recognised and dropped.
//!
//! Closed loop: the `--conns` slots are first opened on the `--connect-rate`
//! schedule, then each is reopened as soon as its close completes. Open loop
//! (`--rate`): connections are due on a schedule of that many per second and
//! take the first free slot; one that finds none waits for a slot, and its
//! transaction latency still counts from its due time (coordinated omission
//! corrected).
//!
//! A connection is measured when it was due at or after the end of the
//! warm-up; with `--messages M` it takes one of M / N tickets. This file does
//! the lifecycle; the message bookkeeping is [`Conn`](crate::loadgen::conn::Conn)'s.
#![forbid(unsafe_code)]

use std::collections::VecDeque;

use super::Engine;
use crate::loadgen::conn::{Conn, State};
use crate::loadgen::error::Error;
use crate::loadgen::pacing::{Nanos, Schedule};
use crate::loadgen::pattern::Pattern;
use crate::loadgen::ring::GENERATION_MASK;
use crate::loadgen::stats::record_ns;

/// The current connection of one slot, as churn sees it.
#[derive(Clone, Copy, Debug, Default)]
struct Life {
    /// When it was due: its transaction latency counts from here.
    start: Nanos,
    measured: bool,
    /// Messages created on it so far (at most N).
    created: u32,
}

/// One thread's slots: which are free, which are in use, and for what.
pub(super) struct Slots {
    lives: Vec<Life>,
    /// Slots whose last connection's close completed, ready for the next.
    free: Vec<u32>,
    /// Slots never used yet: `fresh .. count`.
    fresh: u32,
    count: u32,
    /// Connections opened and not yet back in `free`.
    pub active: u32,
    /// Connections completed in the whole run (warm-up included), for progress.
    pub done: u64,
}

impl Slots {
    pub fn new(count: u32) -> Slots {
        Slots {
            lives: vec![Life::default(); count as usize],
            free: Vec::new(),
            fresh: 0,
            count,
            active: 0,
            done: 0,
        }
    }

    pub fn measured(&self, key: u32) -> bool {
        self.lives[key as usize].measured
    }

    /// The slot's connection is gone (closed, or never got a socket).
    pub fn release(&mut self, key: u32) {
        self.active -= 1;
        self.free.push(key);
    }

    /// A slot for a new connection: a free one, else one never used.
    fn take(&mut self) -> Option<u32> {
        if let Some(key) = self.free.pop() {
            return Some(key);
        }
        self.take_fresh()
    }

    fn take_fresh(&mut self) -> Option<u32> {
        (self.fresh < self.count).then(|| {
            self.fresh += 1;
            self.fresh - 1
        })
    }
}

impl Engine<'_> {
    pub(super) fn load_churn(&mut self) -> Result<(), Error> {
        let config = self.config();
        let (start, mut stop_at) = self.begin_load();
        let share = f64::from(self.plan.count) / f64::from(config.conns);
        let open_loop = config.load.rate();
        // Open loop: connections due at --rate; closed loop: the first
        // opening of each slot at --connect-rate.
        let rate = open_loop.unwrap_or(f64::from(config.connect_rate)) * share;
        let slack = if open_loop.is_some() {
            self.pacing_slack()
        } else {
            0
        };
        let mut schedule = Schedule::new(start, rate.max(1e-3), self.phase()).with_slack(slack);
        // Open loop: connections due and still waiting for a free slot, with
        // when each was taken from the schedule.
        let mut waiting: VecDeque<(Nanos, Nanos)> = VecDeque::new();
        self.creating = self.plan.count > 0;
        let mut drain_deadline = Nanos::MAX;
        loop {
            let now = self.shared.now();
            if open_loop.is_some() {
                while let Some(due) = self.take_due(&mut schedule, now, stop_at) {
                    waiting.push_back((due, now));
                }
            }
            self.check_stop(now, &mut stop_at);
            self.expire_connects(now);
            if open_loop.is_some() {
                while let Some(&(due, taken)) = waiting.front() {
                    let Some(key) = self.slots().take() else {
                        break;
                    };
                    waiting.pop_front();
                    if self.open_churn_conn(key, due, now) {
                        // Loadgen's lateness, not the wait for a slot (the server's).
                        self.record_lag(due, taken);
                    } else {
                        waiting.clear();
                    }
                }
            } else if self.creating {
                // Replacements at once; one whose socket could not even be
                // made is retried next turn, not in a loop here.
                for key in std::mem::take(&mut self.slots().free) {
                    if !self.creating || !self.open_churn_conn(key, now, now) {
                        self.slots().free.push(key);
                    }
                }
                while self.creating && self.slots().fresh < self.plan.count {
                    let Some(due) = schedule.take_due(now) else {
                        break;
                    };
                    let key = self.slots().take_fresh().expect("checked");
                    if !self.open_churn_conn(key, due, now) {
                        self.slots().free.push(key);
                    }
                }
            }
            if self.slots().active == 0 && !self.creating && waiting.is_empty() {
                break;
            }
            if self.drain_over(now, &mut drain_deadline) {
                break;
            }
            self.flush_progress(now);
            let mut wake = self
                .next_flush
                .min(drain_deadline)
                .min(stop_at)
                .min(self.next_connect_deadline());
            let scheduled = match open_loop {
                Some(_) => true,
                None => self.slots().fresh < self.plan.count,
            };
            if self.creating && scheduled {
                wake = wake.min(schedule.wake_at());
            }
            self.turn(wake)?;
        }
        self.finish_load(stop_at, self.result.counters.msgs_received > 0);
        Ok(())
    }

    fn slots(&mut self) -> &mut Slots {
        self.churn.as_mut().expect("a churn run")
    }

    /// Opens a new connection in free slot `key`, due at `due`; false (and no
    /// more connections are created) when `--messages` is used up.
    fn open_churn_conn(&mut self, key: u32, due: Nanos, now: Nanos) -> bool {
        let measured = due >= self.measure_start;
        if measured && !self.take_ticket() {
            self.creating = false;
            return false;
        }
        let old = self.conns[key as usize].generation;
        let generation = (old + 1) & GENERATION_MASK;
        let global = self.plan.first + u64::from(key);
        let mut conn = Conn::new(Pattern::seed_for(global ^ (u64::from(generation) << 40)));
        conn.generation = generation;
        self.conns[key as usize] = conn;
        let slots = self.slots();
        slots.lives[key as usize] = Life {
            start: due,
            measured,
            created: 0,
        };
        slots.active += 1;
        // Successive connections of a slot take successive source addresses,
        // so the TIME_WAIT ports they leave are spread over all of them.
        let spread = global.wrapping_add(u64::from(generation));
        let timeout = self.config().connect_timeout.as_nanos() as Nanos;
        self.start_connect_from(key, spread, now, now + timeout);
        true
    }

    /// Connection `key` is established: its first messages go out.
    pub(super) fn churn_connected(&mut self, key: u32, now: Nanos) {
        let per_conn = self.per_conn();
        let first = self.config().load.pipeline().min(per_conn);
        for _ in 0..first {
            self.create_in_conn(key, now);
        }
    }

    /// `echoed` messages of `key` came back: more are created up to N, and
    /// once all N are back it is closed. True when it was.
    pub(super) fn churn_echoed(&mut self, key: u32, echoed: u64, now: Nanos) -> bool {
        let per_conn = self.per_conn();
        for _ in 0..echoed {
            if self.slots().lives[key as usize].created < per_conn {
                self.create_in_conn(key, now);
            }
        }
        let life = self.slots().lives[key as usize];
        if life.created < per_conn || self.conns[key as usize].outstanding() > 0 {
            return false;
        }
        self.conns[key as usize].state = State::Closing;
        let slots = self.slots();
        slots.done += 1;
        if life.measured {
            self.result.completed += 1;
            record_ns(&mut self.result.transaction, now.saturating_sub(life.start));
        }
        self.close_conn(key);
        true
    }

    /// A close completed: with churn, the slot is free for the next connection.
    pub(super) fn handle_close(&mut self, key: u32) {
        let Some(slots) = &mut self.churn else {
            return;
        };
        let conn = &mut self.conns[key as usize];
        if matches!(conn.state, State::Closing | State::Lost | State::Failed) {
            conn.state = State::Idle;
            slots.release(key);
        }
    }

    fn per_conn(&self) -> u32 {
        self.config().churn.map_or(1, |c| c.messages_per_conn)
    }

    /// Creates a message on `key` (intended now) and sends it if it may go.
    fn create_in_conn(&mut self, key: u32, now: Nanos) {
        self.slots().lives[key as usize].created += 1;
        let (min, max) = (self.config().size.min, self.config().size.max);
        let pipeline = self.config().load.pipeline();
        let conn = &mut self.conns[key as usize];
        let len = conn.next_size(min, max);
        conn.push(now, len, pipeline);
        self.outstanding += 1;
        self.kick_send(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_slots_are_reused_before_fresh_ones() {
        let mut s = Slots::new(3);
        assert_eq!(s.take(), Some(0));
        assert_eq!(s.take(), Some(1));
        s.active = 2;
        s.release(0);
        assert_eq!(s.active, 1);
        assert_eq!(s.take(), Some(0), "the released slot first");
        assert_eq!(s.take(), Some(2));
        assert_eq!(s.take(), None, "all three in use");
    }
}
