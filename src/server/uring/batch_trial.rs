//! Whether the batch wait pays on this host, under this load: found by
//! trying it. Plain logic, no ring and no clock of its own.
//!
//! A batch wait ([`super::wait_policy`]) trades latency for fewer wake-ups:
//! the echoes of a burst leave together, and the peer's CPU takes one
//! cross-CPU interrupt for many. What that buys depends on what an interrupt
//! costs, and no flag of the kernel says so. Measured on two hosts, 100
//! connections x 64 B closed loop on netns (docs/benchmarks.md, "A second
//! host"):
//! - on an EPYC VM, where raising an interrupt is a VM exit, batching did
//!   1.19x the messages without it;
//! - on a Xeon VM, where it is not, it did 0.89x: the worker held back echoes
//!   the peer had nothing else to answer in the meantime, and both CPUs idled
//!   a quarter of the time.
//!
//! So the worker compares the two. A *trial* runs [`STEPS`] steps of at least
//! [`STEP`] each, batching allowed in some and not in others (on, off, off,
//! on: a load that drifts during the trial favours neither), and sums the
//! bytes received in each. Batching stays allowed when it moved at least
//! [`MARGIN`] more bytes a second than not batching; otherwise it is left off,
//! which has the lower latency. The verdict holds for [`FIRST_HOLD`], doubled
//! each time the next trial agrees, up to [`LONGEST_HOLD`]: a verdict reached
//! while the load was still changing (the first, as a run starts) is soon
//! tried again, and a steady one costs a trial every few seconds. A trial that
//! saw fewer than [`MIN_RECEIVES`] receives on either side says nothing (an
//! idle or nearly idle server) and is run again at once; an idle worker
//! takes no turns, so that costs nothing.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

/// Whether batching is allowed in each step of a trial.
pub const STEPS: [bool; 4] = [true, false, false, true];

/// The shortest step. A step ends at the first turn after it.
pub const STEP: Duration = Duration::from_millis(50);

/// How long a verdict holds before the next trial, at first and at most.
pub const FIRST_HOLD: Duration = Duration::from_secs(1);
pub const LONGEST_HOLD: Duration = Duration::from_secs(8);

/// How much faster batching must be to be kept (ties go to the lower latency).
pub const MARGIN: f64 = 0.03;

/// Receives each side of a trial needs for its verdict to count.
pub const MIN_RECEIVES: u64 = 1_000;

#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Step `step` of a trial, which began at `since`.
    Trying { step: usize, since: Instant },
    /// The verdict holds until `until`.
    Holding { until: Instant },
}

/// Bytes, receives and time counted for one side of a trial.
#[derive(Clone, Copy, Debug, Default)]
struct Side {
    bytes: u64,
    receives: u64,
    time: Duration,
}

impl Side {
    fn bytes_per_s(&self) -> f64 {
        self.bytes as f64 / self.time.as_secs_f64().max(1e-9)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct BatchTrial {
    phase: Phase,
    /// This trial's sides: `[without batching, with]`.
    sides: [Side; 2],
    /// Whether batching is allowed now.
    batching: bool,
    /// The last verdict, and how long it now holds.
    verdict: Option<bool>,
    hold: Duration,
    /// Trials with a verdict so far, and how many of them kept batching.
    pub verdicts: u64,
    pub kept: u64,
}

/// What one turn of the loop did, as the trial counts it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Turn {
    pub receives: u32,
    pub bytes: u64,
}

impl BatchTrial {
    /// Starts with a trial at `now`.
    pub fn new(now: Instant) -> BatchTrial {
        BatchTrial {
            phase: Phase::Trying {
                step: 0,
                since: now,
            },
            sides: [Side::default(); 2],
            batching: STEPS[0],
            verdict: None,
            hold: FIRST_HOLD,
            verdicts: 0,
            kept: 0,
        }
    }

    /// Whether a wait may ask for a batch now.
    pub fn batching(&self) -> bool {
        self.batching
    }

    /// Counts a turn that ended at `now`, and moves the trial on.
    pub fn record(&mut self, turn: Turn, now: Instant) {
        match self.phase {
            Phase::Holding { until } => {
                if now >= until {
                    self.start_trial(now);
                }
            }
            Phase::Trying { step, since } => {
                let side = &mut self.sides[usize::from(STEPS[step])];
                side.bytes += turn.bytes;
                side.receives += u64::from(turn.receives);
                let spent = now.saturating_duration_since(since);
                if spent < STEP {
                    return;
                }
                side.time += spent;
                if step + 1 < STEPS.len() {
                    self.phase = Phase::Trying {
                        step: step + 1,
                        since: now,
                    };
                    self.batching = STEPS[step + 1];
                } else {
                    self.conclude(now);
                }
            }
        }
    }

    fn start_trial(&mut self, now: Instant) {
        self.sides = [Side::default(); 2];
        self.phase = Phase::Trying {
            step: 0,
            since: now,
        };
        self.batching = STEPS[0];
    }

    fn conclude(&mut self, now: Instant) {
        let [off, on] = self.sides;
        if off.receives < MIN_RECEIVES || on.receives < MIN_RECEIVES {
            self.start_trial(now);
            return;
        }
        let batching = on.bytes_per_s() > off.bytes_per_s() * (1.0 + MARGIN);
        self.hold = match self.verdict {
            Some(last) if last == batching => (self.hold * 2).min(LONGEST_HOLD),
            _ => FIRST_HOLD,
        };
        self.verdict = Some(batching);
        self.batching = batching;
        self.verdicts += 1;
        self.kept += u64::from(batching);
        self.phase = Phase::Holding {
            until: now + self.hold,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs one trial from `t`, a turn every millisecond, receiving
    /// `on_rate` or `off_rate` bytes per turn (one receive per 64 bytes);
    /// returns the time it ended.
    fn run_trial(p: &mut BatchTrial, t: Instant, on_rate: u64, off_rate: u64) -> Instant {
        let mut now = t;
        let verdicts = p.verdicts;
        for _ in 0..10_000 {
            now += Duration::from_millis(1);
            let bytes = if p.batching() { on_rate } else { off_rate };
            p.record(
                Turn {
                    receives: (bytes / 64) as u32,
                    bytes,
                },
                now,
            );
            if p.verdicts > verdicts || matches!(p.phase, Phase::Holding { .. }) {
                return now;
            }
        }
        panic!("no verdict in 10 s");
    }

    #[test]
    fn batching_is_kept_where_it_moves_more_bytes() {
        let t = Instant::now();
        let mut p = BatchTrial::new(t);
        let end = run_trial(&mut p, t, 64 * 120, 64 * 100);
        assert!(p.batching());
        assert_eq!((p.verdicts, p.kept), (1, 1));
        // The trial took its four steps and no more.
        assert!(end - t >= STEP * 4 && end - t < STEP * 4 + Duration::from_millis(10));
    }

    #[test]
    fn batching_is_dropped_where_it_moves_fewer_bytes_or_no_more() {
        let t = Instant::now();
        let mut p = BatchTrial::new(t);
        run_trial(&mut p, t, 64 * 89, 64 * 100);
        assert!(!p.batching(), "0.89x");
        let mut p = BatchTrial::new(t);
        run_trial(&mut p, t, 64 * 102, 64 * 100);
        assert!(
            !p.batching(),
            "2 % is inside the margin: the lower latency wins"
        );
    }

    #[test]
    fn a_verdict_holds_then_a_new_trial_can_reverse_it() {
        let t = Instant::now();
        let mut p = BatchTrial::new(t);
        let end = run_trial(&mut p, t, 64 * 120, 64 * 100);
        assert!(p.batching());
        // Turns during the hold change nothing, whatever they bring.
        p.record(Turn::default(), end + FIRST_HOLD / 2);
        assert!(p.batching());
        assert!(matches!(p.phase, Phase::Holding { .. }));
        // The first turn after the hold starts a trial, batching on.
        let next = end + FIRST_HOLD;
        p.record(Turn::default(), next);
        assert!(matches!(p.phase, Phase::Trying { step: 0, .. }));
        run_trial(&mut p, next, 64 * 80, 64 * 100);
        assert!(!p.batching());
        assert_eq!((p.verdicts, p.kept), (2, 1));
    }

    #[test]
    fn an_idle_trial_has_no_verdict_and_runs_again() {
        let t = Instant::now();
        let mut p = BatchTrial::new(t);
        let mut now = t;
        // A turn a step: receives too few for a verdict.
        for _ in 0..STEPS.len() {
            now += STEP;
            p.record(
                Turn {
                    receives: 10,
                    bytes: 640,
                },
                now,
            );
        }
        assert_eq!(p.verdicts, 0);
        assert!(matches!(p.phase, Phase::Trying { step: 0, .. }));
        assert!(p.batching(), "a new trial starts with its first step");
    }

    #[test]
    fn a_step_lasts_until_the_first_turn_after_its_time() {
        let t = Instant::now();
        let mut p = BatchTrial::new(t);
        assert!(p.batching());
        p.record(
            Turn {
                receives: 1,
                bytes: 64,
            },
            t + STEP - Duration::from_nanos(1),
        );
        assert!(p.batching(), "still the first step");
        // A long sleep: the step ends at the turn after it, and its time counts in full.
        p.record(
            Turn {
                receives: 1,
                bytes: 64,
            },
            t + STEP * 3,
        );
        assert!(!p.batching(), "the second step");
        assert_eq!(p.sides[1].time, STEP * 3);
    }

    #[test]
    fn a_verdict_that_trials_confirm_holds_longer_and_a_reversal_starts_over() {
        let t = Instant::now();
        let mut p = BatchTrial::new(t);
        let mut now = t;
        let mut holds = Vec::new();
        for _ in 0..6 {
            now = run_trial(&mut p, now, 64 * 120, 64 * 100);
            holds.push(p.hold);
            now += p.hold;
            p.record(Turn::default(), now);
        }
        let ms = |d: Duration| d.as_millis();
        assert_eq!(
            holds.into_iter().map(ms).collect::<Vec<_>>(),
            [1000, 2000, 4000, 8000, 8000, 8000]
        );
        run_trial(&mut p, now, 64 * 80, 64 * 100);
        assert!(!p.batching());
        assert_eq!(p.hold, FIRST_HOLD);
    }
}
