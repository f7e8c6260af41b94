//! One `--udp` flow's bookkeeping: the datagrams it created, sent and got back,
//! by sequence number, and what each echo means: the first echo of a datagram
//! (in order or reordered), a duplicate, or a late echo of one already counted
//! lost.
//!
//! Datagrams are numbered 0, 1, 2, ... per flow and sent in that order, one
//! send in flight at a time. A window holds every datagram from the oldest one
//! still tracked to the newest created. A datagram not echoed `timeout` after
//! its send was submitted is lost ([`Flow::expire`]); settled datagrams (echoed
//! or lost) leave the window once that long has passed, so duplicates are
//! recognised for a timeout's worth of time, and an echo of an older one is
//! *late*. Reordering: an echo whose sequence number is below the highest one
//! already echoed on the flow. This module does no I/O and reads no clock.
#![forbid(unsafe_code)]

use std::collections::VecDeque;

use super::config::SizeDraw;
use super::pacing::Nanos;

/// A datagram created on a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// When it was meant to be sent; its latency is measured from here.
    pub intended: Nanos,
    /// Whole datagram, header included.
    pub len: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    /// Created, waiting for the send before it to complete.
    Queued,
    /// Its send was submitted at this time; no echo yet.
    Out(Nanos),
    /// Echoed (first time) or lost; `at` is when its send was submitted.
    Echoed {
        at: Nanos,
    },
    Lost {
        at: Nanos,
    },
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    datagram: Datagram,
    status: Status,
}

/// What an echo turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Echo {
    /// The first echo of this datagram; `reordered` when a later one of the
    /// flow was echoed before it.
    First { datagram: Datagram, reordered: bool },
    /// This datagram was echoed already.
    Duplicate(Datagram),
    /// An echo of a datagram already counted lost, or too old to tell.
    Late,
    /// A sequence number this flow never sent.
    Unsent,
}

#[derive(Debug)]
pub struct Flow {
    /// The flow's global index, written in every header it sends.
    pub id: u32,
    sizes: SizeDraw,
    /// Sequence number of `window[0]`.
    base: u64,
    window: VecDeque<Slot>,
    /// Sequence number of the next datagram to send. Invariant:
    /// base <= next_send <= base + window.len().
    next_send: u64,
    /// The datagram `next_send - 1`'s send has not completed.
    pub send_in_flight: bool,
    /// Highest sequence number echoed so far.
    highest: Option<u64>,
}

impl Flow {
    pub fn new(id: u32) -> Flow {
        Flow {
            id,
            sizes: SizeDraw::new(id),
            base: 0,
            window: VecDeque::new(),
            next_send: 0,
            send_in_flight: false,
            highest: None,
        }
    }

    /// Picks a size in `min..=max`.
    pub fn next_size(&mut self, min: u32, max: u32) -> u32 {
        self.sizes.next(min, max)
    }

    /// Creates a datagram; returns its sequence number.
    pub fn push(&mut self, datagram: Datagram) -> u64 {
        self.window.push_back(Slot {
            datagram,
            status: Status::Queued,
        });
        self.base + self.window.len() as u64 - 1
    }

    fn slot(&mut self, seq: u64) -> Option<&mut Slot> {
        let i = seq.checked_sub(self.base)?;
        self.window.get_mut(usize::try_from(i).ok()?)
    }

    /// The next datagram to send, as (sequence number, datagram), if none is in
    /// flight and one is queued; marks it submitted at `now`.
    pub fn take_send(&mut self, now: Nanos) -> Option<(u64, Datagram)> {
        if self.send_in_flight {
            return None;
        }
        let seq = self.next_send;
        let slot = self.slot(seq)?;
        debug_assert_eq!(slot.status, Status::Queued);
        slot.status = Status::Out(now);
        let datagram = slot.datagram;
        self.next_send += 1;
        self.send_in_flight = true;
        Some((seq, datagram))
    }

    /// The send in flight completed; `ok` false when it failed (the datagram
    /// then counts as lost, and is returned as the second value).
    pub fn on_sent(&mut self, ok: bool) -> (Option<Datagram>, bool) {
        if !self.send_in_flight {
            return (None, false);
        }
        self.send_in_flight = false;
        let seq = self.next_send - 1;
        let Some(slot) = self.slot(seq) else {
            return (None, false);
        };
        let datagram = slot.datagram;
        if ok {
            return (Some(datagram), false);
        }
        match slot.status {
            Status::Out(at) => {
                slot.status = Status::Lost { at };
                (Some(datagram), true)
            }
            // Echoed although the send reported an error: trust the echo.
            _ => (Some(datagram), false),
        }
    }

    /// An echo of datagram `seq` arrived.
    pub fn on_echo(&mut self, seq: u64) -> Echo {
        if seq >= self.next_send {
            return Echo::Unsent;
        }
        let highest = self.highest;
        let Some(slot) = self.slot(seq) else {
            return Echo::Late;
        };
        match slot.status {
            Status::Out(at) => {
                slot.status = Status::Echoed { at };
                let datagram = slot.datagram;
                self.highest = Some(highest.map_or(seq, |h| h.max(seq)));
                Echo::First {
                    datagram,
                    reordered: highest.is_some_and(|h| seq < h),
                }
            }
            Status::Echoed { .. } => Echo::Duplicate(slot.datagram),
            Status::Lost { .. } => Echo::Late,
            Status::Queued => Echo::Unsent,
        }
    }

    /// Counts as lost (through `lost`) every datagram sent more than `timeout`
    /// before `now` and not echoed, and forgets settled ones that old.
    pub fn expire(&mut self, now: Nanos, timeout: Nanos, mut lost: impl FnMut(&Datagram)) {
        let in_flight = self.next_send - u64::from(self.send_in_flight);
        while self.base < in_flight {
            let Some(front) = self.window.front_mut() else {
                break;
            };
            let at = match front.status {
                Status::Out(at) | Status::Echoed { at } | Status::Lost { at } => at,
                Status::Queued => break,
            };
            if at.saturating_add(timeout) > now {
                break;
            }
            if let Status::Out(at) = front.status {
                front.status = Status::Lost { at };
                lost(&front.datagram);
            }
            self.window.pop_front();
            self.base += 1;
        }
    }

    /// Datagrams created and not yet settled (echoed or lost).
    #[cfg(test)]
    pub fn outstanding(&self) -> usize {
        self.window
            .iter()
            .filter(|s| matches!(s.status, Status::Queued | Status::Out(_)))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Nanos = 1_000_000;

    fn d(intended: Nanos) -> Datagram {
        Datagram { intended, len: 64 }
    }

    /// Creates and sends `n` datagrams at 1 ms apart, each send completing.
    fn sent(f: &mut Flow, n: u64) {
        for i in 0..n {
            f.push(d(i * MS));
            assert!(f.take_send(i * MS).is_some());
            assert_eq!(f.on_sent(true), (Some(d(i * MS)), false));
        }
    }

    fn first(intended: Nanos, reordered: bool) -> Echo {
        Echo::First {
            datagram: d(intended),
            reordered,
        }
    }

    #[test]
    fn echoes_in_order_are_first_and_not_reordered() {
        let mut f = Flow::new(1);
        sent(&mut f, 3);
        for i in 0..3 {
            assert_eq!(f.on_echo(i), first(i * MS, false));
        }
        assert_eq!(f.outstanding(), 0);
    }

    #[test]
    fn an_echo_below_the_highest_seen_is_reordered() {
        let mut f = Flow::new(1);
        sent(&mut f, 3);
        assert_eq!(f.on_echo(2), first(2 * MS, false));
        assert_eq!(f.on_echo(0), first(0, true));
        assert_eq!(f.on_echo(1), first(MS, true));
    }

    #[test]
    fn a_second_echo_is_a_duplicate_counted_once() {
        let mut f = Flow::new(1);
        sent(&mut f, 2);
        assert_eq!(f.on_echo(0), first(0, false));
        assert_eq!(f.on_echo(0), Echo::Duplicate(d(0)));
        assert_eq!(f.on_echo(1), first(MS, false));
    }

    #[test]
    fn an_unechoed_datagram_is_lost_after_the_timeout_and_a_late_echo_is_late() {
        let mut f = Flow::new(1);
        sent(&mut f, 3);
        assert_eq!(f.on_echo(1), first(MS, false));
        let mut lost = Vec::new();
        // At 1000.5 ms only datagram 0 (sent at 0) is past a 1 s timeout.
        f.expire(1000 * MS + MS / 2, 1000 * MS, |d| lost.push(d.intended));
        assert_eq!(lost, vec![0]);
        assert_eq!(f.on_echo(0), Echo::Late);
        f.expire(5000 * MS, 1000 * MS, |d| lost.push(d.intended));
        assert_eq!(lost, vec![0, 2 * MS]);
        assert_eq!(f.outstanding(), 0);
        // Datagram 1 was echoed, then forgotten: a duplicate now is late.
        assert_eq!(f.on_echo(1), Echo::Late);
    }

    #[test]
    fn an_echo_before_its_send_completion_counts_once() {
        let mut f = Flow::new(1);
        f.push(d(0));
        assert_eq!(f.take_send(0), Some((0, d(0))));
        assert_eq!(f.on_echo(0), first(0, false));
        assert_eq!(f.on_sent(true), (Some(d(0)), false));
        assert_eq!(f.outstanding(), 0);
    }

    #[test]
    fn one_send_in_flight_and_a_failed_send_is_lost() {
        let mut f = Flow::new(1);
        f.push(d(0));
        f.push(d(MS));
        assert!(f.take_send(0).is_some());
        assert_eq!(f.take_send(0), None, "one send at a time");
        assert_eq!(f.on_sent(false), (Some(d(0)), true));
        assert_eq!(f.take_send(MS), Some((1, d(MS))));
        assert_eq!(f.outstanding(), 1);
    }

    #[test]
    fn a_sequence_number_never_sent_is_unsent() {
        let mut f = Flow::new(1);
        f.push(d(0));
        assert_eq!(f.on_echo(0), Echo::Unsent, "queued, not sent");
        sent(&mut Flow::new(2), 1);
        assert_eq!(f.on_echo(99), Echo::Unsent);
    }

    #[test]
    fn the_send_in_flight_is_never_expired() {
        let mut f = Flow::new(1);
        f.push(d(0));
        f.take_send(0);
        let mut lost = 0;
        f.expire(10_000 * MS, MS, |_| lost += 1);
        assert_eq!(lost, 0);
        assert_eq!(f.on_sent(true), (Some(d(0)), false));
        f.expire(10_000 * MS, MS, |_| lost += 1);
        assert_eq!(lost, 1);
    }
}
