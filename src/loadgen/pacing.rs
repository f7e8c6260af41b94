//! Schedules at a fixed rate: the open-loop message schedule (when each message
//! is *meant* to be sent, which is what its latency is measured from, so that a
//! slow server cannot hide its stalls by slowing the sender: coordinated
//! omission corrected, as wrk2 does) and the connection ramp.
//!
//! A thread's events are evenly spaced: event `n` is due at
//! `start + (n + phase) / rate`. Which connection an event goes to is the
//! caller's business. This module does no I/O and reads no clock.
//!
//! The schedule also says when to wake for the next event: its due time plus
//! a *slack*. A sender that wakes at each due time pays a timer and a wake-up
//! per message, and each lone send interrupts the receiver's idle CPU; at
//! 135k msgs/s on a 2-vCPU VM that made loadgen spend 7.4 µs per message
//! against 2.0 µs in the closed loop, and its own lateness set the p99. With
//! a slack the events due within it leave together, from one wake-up (or
//! earlier, with any completion that wakes the sender first). Their latency
//! still counts from each one's own due time, so the slack is never hidden:
//! it shows in the latency, at most by its own length.
#![forbid(unsafe_code)]

/// Nanoseconds since the run's epoch; every timestamp in the load generator.
pub type Nanos = u64;

/// An endless sequence of evenly spaced due times.
#[derive(Clone, Debug)]
pub struct Schedule {
    start: Nanos,
    /// Invariant: > 0 and finite.
    interval_ns: f64,
    /// Fraction of an interval by which this schedule is shifted, in [0, 1), so
    /// several threads' schedules interleave instead of firing together.
    phase: f64,
    /// How long after an event's due time the sender may wake for it.
    slack: Nanos,
    next: u64,
}

impl Schedule {
    /// `rate_per_s` events per second from `start`, shifted by `phase` of an interval.
    pub fn new(start: Nanos, rate_per_s: f64, phase: f64) -> Schedule {
        assert!(
            rate_per_s > 0.0 && rate_per_s.is_finite(),
            "checked by the CLI"
        );
        Schedule {
            start,
            interval_ns: 1e9 / rate_per_s,
            phase: phase.clamp(0.0, 0.999_999),
            slack: 0,
            next: 0,
        }
    }

    /// The same schedule, woken for up to `slack` after each due time.
    pub fn with_slack(self, slack: Nanos) -> Schedule {
        Schedule { slack, ..self }
    }

    /// When event `n` is due.
    pub fn due_at(&self, n: u64) -> Nanos {
        self.start + ((n as f64 + self.phase) * self.interval_ns) as Nanos
    }

    /// When the next event not yet taken is due.
    pub fn next_due(&self) -> Nanos {
        self.due_at(self.next)
    }

    /// When to wake for the next event: its due time plus the slack.
    pub fn wake_at(&self) -> Nanos {
        self.next_due().saturating_add(self.slack)
    }

    /// Events taken so far.
    #[cfg(test)]
    pub fn taken(&self) -> u64 {
        self.next
    }

    /// Takes the next event if it is due at `now`, returning its due time.
    /// Called in a loop, it returns every event that fell due while the caller
    /// was busy: a late sender catches up instead of silently skipping.
    pub fn take_due(&mut self, now: Nanos) -> Option<Nanos> {
        let due = self.next_due();
        if due > now {
            return None;
        }
        self.next += 1;
        Some(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Nanos = 1_000_000_000;

    #[test]
    fn one_second_at_a_rate_holds_that_many_events() {
        let mut s = Schedule::new(0, 20_000.0, 0.0);
        let mut n = 0;
        while s.take_due(SECOND - 1).is_some() {
            n += 1;
        }
        assert_eq!(n, 20_000);
    }

    #[test]
    fn events_are_evenly_spaced_from_the_start() {
        let s = Schedule::new(5 * SECOND, 1000.0, 0.0);
        assert_eq!(s.due_at(0), 5 * SECOND);
        assert_eq!(s.due_at(1), 5 * SECOND + 1_000_000);
        assert_eq!(s.due_at(1000), 6 * SECOND);
    }

    #[test]
    fn a_late_caller_gets_the_missed_events_with_their_intended_times() {
        let mut s = Schedule::new(0, 100.0, 0.0);
        // Busy for 50 ms: five events are overdue, each keeps its own due time.
        let due: Vec<Nanos> = std::iter::from_fn(|| s.take_due(45_000_000)).collect();
        assert_eq!(due, vec![0, 10_000_000, 20_000_000, 30_000_000, 40_000_000]);
        assert_eq!(s.next_due(), 50_000_000);
    }

    #[test]
    fn phases_interleave_two_schedules() {
        let a = Schedule::new(0, 1000.0, 0.0);
        let b = Schedule::new(0, 1000.0, 0.5);
        assert_eq!(b.due_at(0), 500_000);
        assert!(a.due_at(0) < b.due_at(0) && b.due_at(0) < a.due_at(1));
    }

    #[test]
    fn a_wake_after_the_slack_takes_every_event_due_within_it() {
        // 100k events a second (10 µs apart), woken 25 µs after the first is due.
        let mut s = Schedule::new(0, 100_000.0, 0.0).with_slack(25_000);
        let wake = s.wake_at();
        assert_eq!(wake, 25_000);
        let batch: Vec<Nanos> = std::iter::from_fn(|| s.take_due(wake)).collect();
        assert_eq!(batch, vec![0, 10_000, 20_000]);
        assert_eq!(s.wake_at(), 30_000 + 25_000);
    }

    #[test]
    fn without_slack_the_wake_is_the_due_time() {
        let s = Schedule::new(7, 1000.0, 0.0);
        assert_eq!(s.wake_at(), s.next_due());
    }

    #[test]
    fn nothing_is_due_before_its_time() {
        let mut s = Schedule::new(SECOND, 10.0, 0.0);
        assert_eq!(s.take_due(SECOND - 1), None);
        assert_eq!(s.take_due(SECOND), Some(SECOND));
        assert_eq!(s.taken(), 1);
    }
}
