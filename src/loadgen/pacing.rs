//! Schedules at a fixed rate: the open-loop message schedule (when each message
//! is *meant* to be sent, which is what its latency is measured from, so that a
//! slow server cannot hide its stalls by slowing the sender: coordinated
//! omission corrected, as wrk2 does) and the connection ramp.
//!
//! A thread's events are evenly spaced: event `n` is due at
//! `start + (n + phase) / rate`. Which connection an event goes to is the
//! caller's business. This module does no I/O and reads no clock.
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
            next: 0,
        }
    }

    /// When event `n` is due.
    pub fn due_at(&self, n: u64) -> Nanos {
        self.start + ((n as f64 + self.phase) * self.interval_ns) as Nanos
    }

    /// When the next event not yet taken is due.
    pub fn next_due(&self) -> Nanos {
        self.due_at(self.next)
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
    fn nothing_is_due_before_its_time() {
        let mut s = Schedule::new(SECOND, 10.0, 0.0);
        assert_eq!(s.take_due(SECOND - 1), None);
        assert_eq!(s.take_due(SECOND), Some(SECOND));
        assert_eq!(s.taken(), 1);
    }
}
