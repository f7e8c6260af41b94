//! When a worker's wait asks for a batch of completions (`--wait-batch`,
//! `--min-wait`) and when it returns at the first: plain logic, no ring.
//!
//! A batch pays only where the worker is saturated: the echoes of a whole burst
//! then leave in one turn, and the peer's CPU takes one wake-up for many. Below
//! saturation it pays nothing and costs up to `--min-wait` of latency per
//! message. So:
//! - a turn that handled fewer than [`LOADED_TURN`] receives is not load: the
//!   next wait returns at the first completion;
//! - a batch wait that brought less than half its batch before `--min-wait`
//!   ran out shows the load does not fill batches: waits return at the first
//!   completion for [`BACKOFF`], however large the turns (waiting itself makes
//!   turns large, so turn size alone would keep batching on at any load);
//! - and only while [`BatchTrial`] finds that batching pays on this host, under
//!   this load, at all.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use super::batch_trial::{BatchTrial, Turn};

/// A turn that handled at least this many receives counts as load.
pub const LOADED_TURN: u32 = 8;

/// How long waits stay unbatched after a batch came back under half full:
/// long beside `--min-wait`, so that a server below saturation spends well
/// under 1% of its time in a batch wait that does not fill.
pub const BACKOFF: Duration = Duration::from_millis(50);

/// The decision state of one worker.
#[derive(Clone, Copy, Debug)]
pub struct WaitPolicy {
    /// Completions a batch wait asks for; 1 never batches.
    batch: u32,
    /// Receives the last turn handled.
    last_turn_receives: u32,
    /// The last wait asked for a batch.
    batched: bool,
    /// No batch waits before this instant.
    backoff_until: Option<Instant>,
    /// Whether batching pays at all (None when `batch` is 1: nothing to try).
    trial: Option<BatchTrial>,
}

impl WaitPolicy {
    pub fn new(batch: u32, now: Instant) -> WaitPolicy {
        WaitPolicy {
            batch,
            last_turn_receives: 0,
            batched: false,
            backoff_until: None,
            trial: (batch > 1).then(|| BatchTrial::new(now)),
        }
    }

    /// The trial's verdicts so far, and how many kept batching.
    #[cfg(test)]
    fn verdicts(&self) -> (u64, u64) {
        self.trial.map_or((0, 0), |t| (t.verdicts, t.kept))
    }

    /// The completions the next wait asks for: `Some(batch)`, or `None` to
    /// return at the first. `now` is read only during a back-off.
    pub fn next_wait(&mut self, now: impl FnOnce() -> Instant) -> Option<u32> {
        if self.backoff_until.is_some_and(|until| now() < until) {
            self.batched = false;
            return None;
        }
        self.backoff_until = None;
        self.batched =
            self.trial.is_some_and(|t| t.batching()) && self.last_turn_receives >= LOADED_TURN;
        self.batched.then_some(self.batch)
    }

    /// Records what the turn after a wait (or a `--busy-poll` spin, which
    /// asks for no batch) handled: every completion it reaped, and of those
    /// the receives that brought data, and the bytes they brought
    /// (`turn.batched` is this policy's to fill in). Returns the trial's
    /// verdicts so far, and how many kept batching, when this turn brought
    /// one. `now` is read once a turn when batching is configured (the trial
    /// times its steps with it; a vDSO read, no syscall, where the clock
    /// source is the TSC), never otherwise.
    pub fn after_turn(
        &mut self,
        completions: usize,
        mut turn: Turn,
        now: impl FnOnce() -> Instant,
    ) -> Option<(u64, u64)> {
        self.last_turn_receives = turn.receives;
        let trial = self.trial.as_mut()?;
        let now = now();
        // Judged once: a turn without a wait before it (a spin) is no batch's.
        turn.batched = std::mem::take(&mut self.batched);
        if turn.batched && completions * 2 < self.batch as usize {
            self.backoff_until = Some(now + BACKOFF);
        }
        trial
            .record(turn, now)
            .then_some((trial.verdicts, trial.kept))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::uring::batch_trial::{STEP, STEPS};

    /// A policy of 128 whose trial found that batching pays, and the instant
    /// its verdict was reached: it holds for `FIRST_HOLD` from there, so the
    /// tests of the back-off run inside that hold. Its last turn was light.
    fn batching_policy() -> (WaitPolicy, Instant) {
        let mut now = Instant::now();
        let mut p = WaitPolicy::new(128, now);
        while p.verdicts().0 == 0 {
            now += Duration::from_millis(1);
            let receives = if p.next_wait(|| now).is_some() {
                120
            } else {
                100
            };
            p.after_turn(receives as usize, rx(receives), || now);
        }
        assert_eq!(p.verdicts(), (1, 1));
        p.after_turn(0, rx(0), || now);
        (p, now)
    }

    /// A turn of `receives` receives of 64 bytes.
    fn rx(receives: u32) -> Turn {
        Turn {
            receives,
            bytes: 64 * u64::from(receives),
            batched: false,
        }
    }

    #[test]
    fn a_light_turn_does_not_batch_the_next_wait() {
        let (mut p, t) = batching_policy();
        assert_eq!(p.next_wait(|| t), None, "the last turn was light");
        p.after_turn(7, rx(LOADED_TURN - 1), || t);
        assert_eq!(p.next_wait(|| t), None);
        p.after_turn(20, rx(LOADED_TURN), || t);
        assert_eq!(p.next_wait(|| t), Some(128));
    }

    #[test]
    fn batches_that_fill_keep_batching() {
        let (mut p, t) = batching_policy();
        p.after_turn(200, rx(100), || t);
        for _ in 0..10 {
            assert_eq!(p.next_wait(|| t), Some(128));
            p.after_turn(64, rx(32), || t);
        }
    }

    #[test]
    fn a_batch_under_half_full_stops_batching_for_the_backoff() {
        let (mut p, t) = batching_policy();
        p.after_turn(200, rx(100), || t);
        assert_eq!(p.next_wait(|| t), Some(128));
        // min-wait ran out with 63 of 128: below saturation.
        p.after_turn(63, rx(30), || t);
        // Turns stay large (they handled what accumulated), and still no batch.
        let later = t + BACKOFF / 2;
        assert_eq!(p.next_wait(|| later), None);
        p.after_turn(40, rx(20), || later);
        assert_eq!(p.next_wait(|| later), None);
        // An unbatched wait that brings little does not extend the back-off.
        p.after_turn(1, rx(1), || later);
        let after = t + BACKOFF;
        p.after_turn(40, rx(20), || after);
        assert_eq!(
            p.next_wait(|| after),
            Some(128),
            "tried again after the back-off"
        );
    }

    #[test]
    fn a_turn_without_a_batch_wait_before_it_does_not_back_off() {
        let (mut p, t) = batching_policy();
        p.after_turn(200, rx(100), || t);
        assert_eq!(p.next_wait(|| t), Some(128));
        p.after_turn(128, rx(64), || t);
        // A busy-poll spin found a few completions; no wait asked for a batch.
        p.after_turn(3, rx(2), || t);
        p.after_turn(200, rx(100), || t);
        assert_eq!(p.next_wait(|| t), Some(128));
    }

    #[test]
    fn a_batch_of_one_never_batches() {
        let t = Instant::now();
        let mut p = WaitPolicy::new(1, t);
        p.after_turn(1000, rx(500), || t);
        assert_eq!(p.next_wait(|| t), None);
    }

    #[test]
    fn no_batch_is_asked_for_while_the_trial_finds_it_does_not_pay() {
        let t = Instant::now();
        let mut p = WaitPolicy::new(128, t);
        // A load that moves 20 % less while batching: the trial's steps
        // alternate, then its verdict holds.
        let mut now = t;
        while p.verdicts().0 == 0 {
            now += Duration::from_millis(1);
            let receives = if p.next_wait(|| now).is_some() {
                80
            } else {
                100
            };
            p.after_turn(2 * receives as usize, rx(receives), || now);
        }
        assert_eq!(p.verdicts(), (1, 0));
        assert!(now - t >= STEP * STEPS.len() as u32);
        for _ in 0..10 {
            now += Duration::from_millis(1);
            assert_eq!(
                p.next_wait(|| now),
                None,
                "a loaded turn, and still no batch"
            );
            p.after_turn(200, rx(100), || now);
        }
    }
}
