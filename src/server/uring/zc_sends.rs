//! Zero-copy sends in flight (`--send-zc`), and which receive buffers they
//! keep from the pool.
//!
//! A zero-copy send completes twice: first its result, then, once the kernel
//! no longer reads the pages (for TCP: once the data is acknowledged, a round
//! trip later), its notification. The connection moves on at the first: its
//! next send may go at once. The buffers stay pinned until the second: a
//! buffer the connection is done with (sent in full) goes back to the pool
//! only when no zero-copy send that covered any part of it is still waiting
//! for its notification. Several sends can cover one buffer (a short send
//! leaves the rest of it for the next), so each buffer counts its pins.
//!
//! Pure bookkeeping: the worker submits, and recycles what this says is free.
#![forbid(unsafe_code)]

use slab::Slab;

use crate::echo_queue::BufId;
use crate::server::uring::conn::MAX_SEND_IOVECS;

/// Zero-copy sends one connection may have waiting for their notifications;
/// past it the connection's sends are copied, so that one fast sender cannot
/// pin the worker's whole pool (each send covers up to `MAX_SEND_IOVECS`
/// buffers).
pub const MAX_ZC_PER_CONN: u8 = 4;

// A connection's pinned buffers (`Conn::zc_held`) are counted in a u8.
const _: () = assert!(MAX_ZC_PER_CONN as usize * MAX_SEND_IOVECS <= u8::MAX as usize);

/// One zero-copy send: whose it is and which buffers it covers.
#[derive(Clone, Copy, Debug)]
pub struct ZcSend {
    /// The connection's slab key and generation (its slot may be reused
    /// before the notification comes: the generation tells).
    pub conn: usize,
    pub generation: u32,
    bufs: [BufId; MAX_SEND_IOVECS],
    count: u8,
    /// Its result (the first completion) came and said it sent bytes: a
    /// refused or failed send notifies too.
    pub sent: bool,
}

impl ZcSend {
    /// The buffers it covers.
    pub fn bufs(&self) -> &[BufId] {
        &self.bufs[..usize::from(self.count)]
    }
}

/// Every zero-copy send of a worker waiting for a completion, and the pins
/// of its buffers.
#[derive(Debug)]
pub struct ZcSends {
    sends: Slab<ZcSend>,
    /// Per buffer of the pool: zero-copy sends covering it that have not
    /// notified.
    pins: Vec<u8>,
    /// Per buffer: its connection is done with it, and it waits only for its
    /// pins to go.
    released: Vec<bool>,
}

impl ZcSends {
    /// For a pool of `buffers` buffers.
    pub fn new(buffers: u32) -> ZcSends {
        ZcSends {
            sends: Slab::new(),
            pins: vec![0; buffers as usize],
            released: vec![false; buffers as usize],
        }
    }

    /// Records a zero-copy send of connection `conn` over `bufs` (at most
    /// `MAX_SEND_IOVECS`), pinning each; returns its id for the `user_data`.
    pub fn start(&mut self, conn: usize, generation: u32, bufs: &[BufId]) -> u32 {
        let mut send = ZcSend {
            conn,
            generation,
            bufs: [BufId(0); MAX_SEND_IOVECS],
            count: bufs.len() as u8,
            sent: false,
        };
        send.bufs[..bufs.len()].copy_from_slice(bufs);
        for b in bufs {
            self.pins[usize::from(b.0)] += 1;
        }
        self.sends.insert(send) as u32
    }

    /// Zero-copy sends waiting for a completion.
    pub fn waiting(&self) -> usize {
        self.sends.len()
    }

    /// The send `id`, while it waits for a completion.
    pub fn get(&self, id: u32) -> Option<&ZcSend> {
        self.sends.get(id as usize)
    }

    /// Its result (the first completion) came; `sent`: it sent bytes.
    pub fn result(&mut self, id: u32, sent: bool) {
        if let Some(s) = self.sends.get_mut(id as usize) {
            s.sent = sent;
        }
    }

    /// The connection is done with `buf`: true when it goes back to the pool
    /// now, false when a zero-copy send still pins it (then `finish` of the
    /// last one hands it back).
    pub fn release(&mut self, buf: BufId) -> bool {
        let i = usize::from(buf.0);
        if self.pins[i] == 0 {
            return true;
        }
        self.released[i] = true;
        false
    }

    /// Send `id` is over (its notification came, or it ended without one):
    /// its pins go, and `free` gets each buffer that is now back in the pool's
    /// hands. Returns the send.
    pub fn finish(&mut self, id: u32, mut free: impl FnMut(BufId)) -> Option<ZcSend> {
        let send = self.sends.try_remove(id as usize)?;
        for &b in send.bufs() {
            let i = usize::from(b.0);
            self.pins[i] -= 1;
            if self.pins[i] == 0 && std::mem::take(&mut self.released[i]) {
                free(b);
            }
        }
        Some(send)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn freed(z: &mut ZcSends, id: u32) -> Vec<u16> {
        let mut out = Vec::new();
        z.finish(id, |b| out.push(b.0)).expect("in flight");
        out
    }

    #[test]
    fn a_buffer_nothing_pins_goes_back_at_once() {
        let mut z = ZcSends::new(8);
        assert!(z.release(BufId(3)));
    }

    #[test]
    fn a_sent_buffer_goes_back_at_its_sends_notification_not_before() {
        let mut z = ZcSends::new(8);
        let id = z.start(0, 1, &[BufId(1), BufId(2)]);
        assert!(!z.release(BufId(1)), "pinned until the notification");
        assert!(!z.release(BufId(2)));
        assert_eq!(freed(&mut z, id), [1, 2]);
        assert!(z.get(id).is_none());
    }

    #[test]
    fn a_notification_before_the_connection_is_done_frees_nothing() {
        // A short send: buffer 5 is still queued for the rest of its bytes.
        let mut z = ZcSends::new(8);
        let id = z.start(0, 1, &[BufId(5)]);
        assert!(freed(&mut z, id).is_empty());
        assert!(z.release(BufId(5)), "no pin left: straight back");
    }

    #[test]
    fn a_buffer_two_sends_cover_waits_for_both_in_either_order() {
        for first_notified_is_a in [true, false] {
            let mut z = ZcSends::new(8);
            // Send a covered the head of buffer 4, send b its rest.
            let a = z.start(0, 1, &[BufId(4)]);
            let b = z.start(0, 1, &[BufId(4), BufId(6)]);
            assert!(!z.release(BufId(4)));
            assert!(!z.release(BufId(6)));
            let (one, two) = if first_notified_is_a { (a, b) } else { (b, a) };
            let early = freed(&mut z, one);
            assert!(!early.contains(&4), "4 is still pinned by the other send");
            let late = freed(&mut z, two);
            assert!(late.contains(&4));
            let mut all: Vec<u16> = early.into_iter().chain(late).collect();
            all.sort_unstable();
            assert_eq!(all, [4, 6], "each buffer back exactly once");
        }
    }

    #[test]
    fn a_send_records_whose_it_is_and_whether_it_sent() {
        let mut z = ZcSends::new(4);
        let id = z.start(7, 42, &[BufId(0)]);
        let s = *z.get(id).unwrap();
        assert_eq!((s.conn, s.generation, s.sent), (7, 42, false));
        assert_eq!(s.bufs(), [BufId(0)]);
        z.result(id, true);
        assert!(z.get(id).unwrap().sent);
        assert_eq!(z.waiting(), 1);
        assert!(z.finish(99, |_| {}).is_none(), "an unknown id");
    }
}
