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
//!   turns large, so turn size alone would keep batching on at any load).
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

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
}

impl WaitPolicy {
    pub fn new(batch: u32) -> WaitPolicy {
        WaitPolicy {
            batch,
            last_turn_receives: 0,
            batched: false,
            backoff_until: None,
        }
    }

    /// The completions the next wait asks for: `Some(batch)`, or `None` to
    /// return at the first. `now` is read only during a back-off: no clock
    /// read per turn otherwise.
    pub fn next_wait(&mut self, now: impl FnOnce() -> Instant) -> Option<u32> {
        if self.backoff_until.is_some_and(|until| now() < until) {
            self.batched = false;
            return None;
        }
        self.backoff_until = None;
        self.batched = self.batch > 1 && self.last_turn_receives >= LOADED_TURN;
        self.batched.then_some(self.batch)
    }

    /// Records what the turn after a wait (or a `--busy-poll` spin, which
    /// asks for no batch) handled: every completion it reaped, and of those
    /// the receives that brought data.
    /// `now` is read only when a batch came back under half full.
    pub fn after_turn(&mut self, completions: usize, receives: u32, now: impl FnOnce() -> Instant) {
        self.last_turn_receives = receives;
        // Judged once: a turn without a wait before it (a spin) is no batch's.
        if std::mem::take(&mut self.batched) && completions * 2 < self.batch as usize {
            self.backoff_until = Some(now() + BACKOFF);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_light_turn_does_not_batch_the_next_wait() {
        let mut p = WaitPolicy::new(128);
        let t = Instant::now();
        assert_eq!(p.next_wait(|| t), None, "nothing handled yet");
        p.after_turn(7, LOADED_TURN - 1, || t);
        assert_eq!(p.next_wait(|| t), None);
        p.after_turn(20, LOADED_TURN, || t);
        assert_eq!(p.next_wait(|| t), Some(128));
    }

    #[test]
    fn batches_that_fill_keep_batching() {
        let mut p = WaitPolicy::new(128);
        let t = Instant::now();
        p.after_turn(200, 100, || t);
        for _ in 0..10 {
            assert_eq!(p.next_wait(|| t), Some(128));
            p.after_turn(64, 32, || t);
        }
    }

    #[test]
    fn a_batch_under_half_full_stops_batching_for_the_backoff() {
        let mut p = WaitPolicy::new(128);
        let t = Instant::now();
        p.after_turn(200, 100, || t);
        assert_eq!(p.next_wait(|| t), Some(128));
        // min-wait ran out with 63 of 128: below saturation.
        p.after_turn(63, 30, || t);
        // Turns stay large (they handled what accumulated), and still no batch.
        let later = t + BACKOFF / 2;
        assert_eq!(p.next_wait(|| later), None);
        p.after_turn(40, 20, || later);
        assert_eq!(p.next_wait(|| later), None);
        // An unbatched wait that brings little does not extend the back-off.
        p.after_turn(1, 1, || later);
        let after = t + BACKOFF;
        p.after_turn(40, 20, || after);
        assert_eq!(
            p.next_wait(|| after),
            Some(128),
            "tried again after the back-off"
        );
    }

    #[test]
    fn a_turn_without_a_batch_wait_before_it_does_not_back_off() {
        let mut p = WaitPolicy::new(128);
        let t = Instant::now();
        p.after_turn(200, 100, || t);
        assert_eq!(p.next_wait(|| t), Some(128));
        p.after_turn(128, 64, || t);
        // A busy-poll spin found a few completions; no wait asked for a batch.
        p.after_turn(3, 2, || t);
        p.after_turn(200, 100, || t);
        assert_eq!(p.next_wait(|| t), Some(128));
    }

    #[test]
    fn a_batch_of_one_never_batches() {
        let mut p = WaitPolicy::new(1);
        let t = Instant::now();
        p.after_turn(1000, 500, || t);
        assert_eq!(p.next_wait(|| t), None);
    }
}
