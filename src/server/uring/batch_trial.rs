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
//!   1.19x the messages of not batching;
//! - on a Xeon VM, where it is not, it did 0.86x: the worker held back echoes
//!   the peer had nothing else to answer in the meantime, and both CPUs idled
//!   almost half the time.
//!
//! So the worker compares the two. A *trial* runs [`STEPS`] steps of at least
//! [`STEP`] each, batching allowed in some and not in others (on, off, off,
//! on: a load that drifts during the trial favours neither), and sums the
//! bytes received in each. Batching stays allowed when it moved more than
//! [`MARGIN`] more bytes a second than not batching; otherwise it is left
//! off, which has the lower latency. The verdict holds for [`FIRST_HOLD`],
//! doubled each time the next trial agrees, up to [`LONGEST_HOLD`]: a verdict
//! reached while the load was still changing (the first, as a run starts) is
//! soon tried again, and a steady one costs a trial every few seconds.
//!
//! A trial is *undecided*, and leaves batching off, when:
//! - either side saw fewer than [`MIN_RECEIVES`] receives (a light load);
//! - fewer than half of the turns of its batching steps followed a wait that
//!   asked for a batch (the back-off found batches that do not fill, or a
//!   `--busy-poll` spin found completions before any wait): both sides then
//!   ran alike.
//!
//! Either way batching has nothing to buy: batches do not fill where the
//! worker is not saturated, and a fixed-rate load is served at its rate
//! whatever the worker does. It still costs latency, since the few waits
//! that do ask for a batch sit out `--min-wait`. On the Xeon VM at 143k msgs/s
//! (open loop, 1,000 connections, loopback), leaving batching on after
//! undecided trials, as an earlier version did, made uring's p99 568-579 µs
//! against epoll's 158-203 µs; off, it was 176-240 µs. Undecided trials
//! whose batching steps did not batch lengthen the hold as verdicts do, so
//! that a steady fixed-rate load is not tried every second; a light trial
//! does not, so that load arriving after it (saturation after a connection
//! ramp) is tried within [`FIRST_HOLD`].
//!
//! A gap of more than [`STEP`] between two turns (an idle worker takes none)
//! starts the trial afresh: a step is a stretch of load, not of idleness.
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

/// Bytes, receives, turns and time counted for one side of a trial.
#[derive(Clone, Copy, Debug, Default)]
struct Side {
    bytes: u64,
    receives: u64,
    turns: u64,
    /// Turns that followed a wait that asked for a batch.
    batched_turns: u64,
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
    /// When the last turn ended.
    last_turn: Instant,
    /// Whether batching is allowed now.
    batching: bool,
    /// The last trial's outcome, `Some(batching)` for a verdict and `None`
    /// when undecided; how long it now holds; trials ended so far.
    outcome: Option<bool>,
    hold: Duration,
    trials_ended: u64,
    /// Trials with a verdict so far, and how many of them kept batching.
    pub verdicts: u64,
    pub kept: u64,
}

/// What one turn of the loop did, as the trial counts it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Turn {
    /// Receives that brought data (TCP and UDP), and the bytes they brought.
    pub receives: u32,
    pub bytes: u64,
    /// The wait before this turn asked for a batch.
    pub batched: bool,
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
            last_turn: now,
            batching: STEPS[0],
            outcome: None,
            hold: FIRST_HOLD,
            trials_ended: 0,
            verdicts: 0,
            kept: 0,
        }
    }

    /// Whether a wait may ask for a batch now.
    pub fn batching(&self) -> bool {
        self.batching
    }

    /// Counts a turn that ended at `now`, and moves the trial on. True when
    /// this turn brought a verdict.
    pub fn record(&mut self, turn: Turn, now: Instant) -> bool {
        let gap = now.saturating_duration_since(self.last_turn);
        self.last_turn = now;
        match self.phase {
            Phase::Holding { until } => {
                if now >= until {
                    self.start_trial(now);
                }
                false
            }
            Phase::Trying { .. } if gap > STEP => {
                self.start_trial(now);
                false
            }
            Phase::Trying { step, since } => {
                let side = &mut self.sides[usize::from(STEPS[step])];
                side.bytes += turn.bytes;
                side.receives += u64::from(turn.receives);
                side.turns += 1;
                side.batched_turns += u64::from(turn.batched);
                let spent = now.saturating_duration_since(since);
                if spent < STEP {
                    return false;
                }
                side.time += spent;
                if step + 1 < STEPS.len() {
                    self.phase = Phase::Trying {
                        step: step + 1,
                        since: now,
                    };
                    self.batching = STEPS[step + 1];
                    false
                } else {
                    self.conclude(now)
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

    /// Ends a trial: a verdict (true), or none and batching off (false).
    /// The outcome holds for `FIRST_HOLD`, doubled while trials agree.
    fn conclude(&mut self, now: Instant) -> bool {
        let [off, on] = self.sides;
        let light = off.receives < MIN_RECEIVES || on.receives < MIN_RECEIVES;
        let ran_alike = on.batched_turns * 2 < on.turns;
        let decided = !light && !ran_alike;
        let batching = decided && on.bytes_per_s() > off.bytes_per_s() * (1.0 + MARGIN);
        let outcome = decided.then_some(batching);
        // A light trial never lengthens the hold: load that arrives after it
        // (a connection ramp, then saturation) is tried within FIRST_HOLD.
        let agrees = self.trials_ended > 0 && outcome == self.outcome && !light;
        self.hold = if agrees {
            (self.hold * 2).min(LONGEST_HOLD)
        } else {
            FIRST_HOLD
        };
        self.outcome = outcome;
        self.trials_ended += 1;
        self.batching = batching;
        self.phase = Phase::Holding {
            until: now + self.hold,
        };
        if decided {
            self.verdicts += 1;
            self.kept += u64::from(batching);
        }
        decided
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// A turn of `bytes` (one receive per 64 bytes), after a batch wait when
    /// batching is allowed.
    fn turn(p: &BatchTrial, bytes: u64) -> Turn {
        Turn {
            receives: (bytes / 64) as u32,
            bytes,
            batched: p.batching(),
        }
    }

    /// Runs turns a millisecond apart from `t`, receiving `on_rate` or
    /// `off_rate` bytes a turn, until the trial ends (a verdict or none);
    /// returns when.
    fn run_trial(p: &mut BatchTrial, t: Instant, on_rate: u64, off_rate: u64) -> Instant {
        run_trial_batching(p, t, on_rate, off_rate, true)
    }

    /// [`run_trial`], where the waits of the batching steps batch only if
    /// `batches` (false: the back-off kept them from it).
    fn run_trial_batching(
        p: &mut BatchTrial,
        t: Instant,
        on_rate: u64,
        off_rate: u64,
        batches: bool,
    ) -> Instant {
        let mut now = t;
        for _ in 0..10_000 {
            now += MS;
            let bytes = if p.batching() { on_rate } else { off_rate };
            let mut x = turn(p, bytes);
            x.batched &= batches;
            p.record(x, now);
            if matches!(p.phase, Phase::Holding { .. }) {
                return now;
            }
        }
        panic!("no end to the trial in 10 s");
    }

    /// Runs `trials` trials from `t` (bytes a turn as in [`run_trial`]),
    /// each followed by a turn a millisecond through its hold; returns the
    /// holds in milliseconds, and when the last one ended.
    fn holds_of_trials(
        p: &mut BatchTrial,
        t: Instant,
        trials: usize,
        (on_rate, off_rate): (u64, u64),
        batches: bool,
    ) -> (Vec<u128>, Instant) {
        let mut now = t;
        let mut holds = Vec::new();
        for _ in 0..trials {
            now = run_trial_batching(p, now, on_rate, off_rate, batches);
            holds.push(p.hold.as_millis());
            let until = now + p.hold;
            while now < until {
                now += MS;
                p.record(turn(p, off_rate), now);
            }
        }
        (holds, now)
    }

    fn step(p: &BatchTrial) -> Option<usize> {
        match p.phase {
            Phase::Trying { step, .. } => Some(step),
            Phase::Holding { .. } => None,
        }
    }

    #[test]
    fn batching_is_kept_where_it_moves_more_bytes() {
        let t = Instant::now();
        let mut p = BatchTrial::new(t);
        let end = run_trial(&mut p, t, 64 * 120, 64 * 100);
        assert!(p.batching());
        assert_eq!((p.verdicts, p.kept), (1, 1));
        // The trial took its four steps and no more.
        assert!(end - t >= STEP * 4 && end - t < STEP * 4 + 10 * MS);
    }

    #[test]
    fn batching_is_dropped_where_it_moves_fewer_bytes_or_no_more() {
        let t = Instant::now();
        let mut p = BatchTrial::new(t);
        run_trial(&mut p, t, 64 * 89, 64 * 100);
        assert!(!p.batching(), "0.89x");
        assert_eq!((p.verdicts, p.kept), (1, 0));
        let mut p = BatchTrial::new(t);
        run_trial(&mut p, t, 64 * 102, 64 * 100);
        assert!(
            !p.batching(),
            "2 % is inside the margin: the lower latency wins"
        );
    }

    #[test]
    fn the_steps_go_on_off_off_on_and_the_sides_restart_with_each_trial() {
        let t = Instant::now();
        let mut p = BatchTrial::new(t);
        let mut now = t;
        let mut seen = Vec::new();
        while step(&p).is_some() {
            if seen.last() != Some(&(step(&p), p.batching())) {
                seen.push((step(&p), p.batching()));
            }
            now += MS;
            p.record(turn(&p, 6400), now);
        }
        let expected: Vec<_> = STEPS
            .iter()
            .enumerate()
            .map(|(i, &b)| (Some(i), b))
            .collect();
        assert_eq!(seen, expected);
        // A turn during the hold, however large, counts for no trial.
        p.record(turn(&p, 1 << 40), now + MS);
        p.record(turn(&p, 0), now + p.hold);
        assert_eq!(step(&p), Some(0));
        assert_eq!(p.sides[0].bytes + p.sides[1].bytes, 0);
    }

    #[test]
    fn a_verdict_holds_then_a_new_trial_can_reverse_it() {
        let t = Instant::now();
        let mut p = BatchTrial::new(t);
        let end = run_trial(&mut p, t, 64 * 120, 64 * 100);
        assert!(p.batching());
        p.record(turn(&p, 64), end + FIRST_HOLD / 2);
        assert!(p.batching());
        assert_eq!(step(&p), None, "still holding");
        // The first turn after the hold starts a trial, batching on.
        let next = end + FIRST_HOLD;
        p.record(turn(&p, 64), next);
        assert_eq!(step(&p), Some(0));
        run_trial(&mut p, next, 64 * 80, 64 * 100);
        assert!(!p.batching());
        assert_eq!((p.verdicts, p.kept), (2, 1));
    }

    #[test]
    fn a_verdict_that_trials_confirm_holds_longer_and_a_reversal_starts_over() {
        let t = Instant::now();
        let mut p = BatchTrial::new(t);
        let (holds, now) = holds_of_trials(&mut p, t, 6, (64 * 120, 64 * 100), true);
        assert_eq!(holds, [1000, 2000, 4000, 8000, 8000, 8000]);
        run_trial(&mut p, now, 64 * 80, 64 * 100);
        assert!(!p.batching());
        assert_eq!(p.hold, FIRST_HOLD);
    }

    #[test]
    fn a_light_load_brings_no_verdict_and_leaves_batching_off() {
        let t = Instant::now();
        let mut p = BatchTrial::new(t);
        // A receive a millisecond: 100 a step, too few.
        let end = run_trial(&mut p, t, 64, 64);
        assert_eq!(p.verdicts, 0);
        assert!(!p.batching(), "undecided: batching off");
        assert_eq!(step(&p), None);
        p.record(turn(&p, 64), end + FIRST_HOLD);
        assert_eq!(step(&p), Some(0), "tried again after FIRST_HOLD");
        // After two verdicts for batching (a 2 s hold), a light trial turns
        // it off and starts the hold over.
        let mut p = BatchTrial::new(t);
        let (holds, now) = holds_of_trials(&mut p, t, 2, (64 * 120, 64 * 100), true);
        assert_eq!(holds, [1000, 2000]);
        assert!(p.batching());
        run_trial(&mut p, now, 64, 64);
        assert!(!p.batching());
        assert_eq!((p.verdicts, p.kept), (2, 2));
        assert_eq!(
            p.hold, FIRST_HOLD,
            "a change of outcome starts the hold over"
        );
        // Light trials never lengthen it: a load that comes after them is
        // tried within FIRST_HOLD.
        let (holds, _) = holds_of_trials(&mut p, now, 3, (64, 64), true);
        assert_eq!(holds, [1000, 1000, 1000]);
    }

    #[test]
    fn trials_whose_batching_steps_did_not_batch_hold_longer_and_a_verdict_starts_over() {
        // A fixed-rate load: plenty of receives, batches that never fill.
        let t = Instant::now();
        let mut p = BatchTrial::new(t);
        let (holds, now) = holds_of_trials(&mut p, t, 5, (64 * 100, 64 * 100), false);
        assert_eq!(holds, [1000, 2000, 4000, 8000, 8000]);
        assert_eq!(p.verdicts, 0);
        run_trial(&mut p, now, 64 * 120, 64 * 100);
        assert!(p.batching());
        assert_eq!(p.hold, FIRST_HOLD);
    }

    #[test]
    fn batching_steps_whose_waits_did_not_batch_bring_no_verdict() {
        // The back-off (or a busy-poll spin) kept the "on" steps' waits from
        // batching: both sides ran alike, whatever their bytes say.
        let t = Instant::now();
        let mut p = BatchTrial::new(t);
        let mut now = t;
        while step(&p).is_some() {
            now += MS;
            let bytes = if p.batching() { 64 * 120 } else { 64 * 100 };
            let mut x = turn(&p, bytes);
            x.batched = false;
            p.record(x, now);
        }
        assert_eq!(p.verdicts, 0);
        assert!(!p.batching(), "undecided: batching off");
    }

    #[test]
    fn an_idle_gap_starts_the_trial_afresh() {
        let t = Instant::now();
        let mut p = BatchTrial::new(t);
        p.record(turn(&p, 64 * 100), t + MS);
        assert_eq!(p.sides[1].bytes, 6400);
        // 2 s without a turn, then load: the first step is not charged the gap.
        let later = t + Duration::from_secs(2);
        p.record(turn(&p, 64 * 100), later);
        assert_eq!(step(&p), Some(0));
        assert_eq!(p.sides[1].bytes, 0, "what came before the gap is gone");
        let end = run_trial(&mut p, later, 64 * 120, 64 * 100);
        assert!(p.batching());
        assert!(end - later < STEP * 4 + 10 * MS);
    }

    #[test]
    fn a_step_lasts_until_the_first_turn_after_its_time() {
        let t = Instant::now();
        let mut p = BatchTrial::new(t);
        let mut now = t;
        while now + MS < t + STEP {
            now += MS;
            p.record(turn(&p, 64), now);
        }
        assert_eq!(step(&p), Some(0), "still the first step");
        now += 2 * MS;
        p.record(turn(&p, 64), now);
        assert_eq!(step(&p), Some(1));
        assert!(!p.batching(), "the second step");
        assert_eq!(p.sides[1].time, now - t);
    }
}
