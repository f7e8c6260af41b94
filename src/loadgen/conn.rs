//! One client connection's state: where it is in its life, and the messages it
//! has in flight, as stream offsets into its pattern (see [`super::pattern`]).
//!
//! Send side: messages are *created* (due), then *released* to the wire, at most
//! `pipeline` at a time; released bytes go out in sends of pattern slices, one
//! send in flight, a short send simply leaving more to send. Receive side:
//! received bytes are matched against the pattern at the expected offset and cut
//! into messages in order; a message is complete when its last byte is back.
//! This module does no I/O and knows nothing of the ring: the engine does.
#![forbid(unsafe_code)]

use std::collections::VecDeque;

use super::config::SizeDraw;
use super::pacing::Nanos;
use super::pattern::Pattern;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Not yet tried.
    Idle,
    Connecting,
    Established,
    /// Connect failed (counted as failed, never established).
    Failed,
    /// Was established, then an error or the server's close ended it.
    Lost,
    /// Established by the kernel, sent, and had not a byte back when the load
    /// stopped: the server never accepted it. Late echoes are ignored.
    Unanswered,
    /// `--messages-per-conn`: all its messages echoed, closed by loadgen; the
    /// slot is free again once the close completes.
    Closing,
}

/// A message created and not yet fully echoed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msg {
    /// When it was meant to be sent; its latency is measured from here.
    pub intended: Nanos,
    /// Stream offset one past its last byte.
    pub end: u64,
    pub len: u32,
    /// Some byte of its echo differed from what was sent.
    pub corrupt: bool,
}

/// Why received bytes could not be matched to what was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvError {
    /// More bytes came back than were sent: duplication, or another stream's data.
    Unexpected,
}

#[derive(Debug)]
pub struct Conn {
    pub state: State,
    /// Which of the connections that used this slot this is (`--messages-per-conn`
    /// reuses slots; otherwise 0). Carried in every operation's tag.
    pub generation: u32,
    /// Offset of this connection's stream in the pattern.
    pub seed: u32,
    /// Message sizes, per connection.
    sizes: SizeDraw,
    /// When the connect was submitted.
    pub connect_started: Nanos,
    /// Created and not fully echoed, oldest first.
    queue: VecDeque<Msg>,
    /// Messages at the front of `queue` whose bytes are released to the sender.
    /// Invariant: <= queue.len() and <= pipeline.
    released: usize,
    /// Index in `queue` of the first message not yet fully sent.
    /// Invariant: <= released.
    unsent_msg: usize,
    /// Stream offset of the next byte to hand to a send.
    send_off: u64,
    /// Stream offset one past the last released byte.
    released_end: u64,
    /// Length of the send in flight, 0 when none (one send per connection).
    pub send_in_flight: u32,
    /// Stream offset of the next byte expected back.
    recv_off: u64,
    /// A multishot receive is armed.
    pub recv_armed: bool,
}

/// A message whose last byte was sent or echoed, handed to the caller's counters.
pub trait Sink {
    fn sent(&mut self, msg: &Msg);
    fn echoed(&mut self, msg: &Msg);
}

impl Conn {
    pub fn new(seed: u32) -> Conn {
        Conn {
            state: State::Idle,
            generation: 0,
            seed,
            sizes: SizeDraw::new(seed),
            connect_started: 0,
            queue: VecDeque::new(),
            released: 0,
            unsent_msg: 0,
            send_off: 0,
            released_end: 0,
            send_in_flight: 0,
            recv_off: 0,
            recv_armed: false,
        }
    }

    /// Messages created and not yet echoed.
    pub fn outstanding(&self) -> usize {
        self.queue.len()
    }

    /// Picks a size in `min..=max`.
    pub fn next_size(&mut self, min: u32, max: u32) -> u32 {
        self.sizes.next(min, max)
    }

    /// Creates a message meant to be sent at `intended`, and releases it to the
    /// sender if fewer than `pipeline` are on the wire.
    pub fn push(&mut self, intended: Nanos, len: u32, pipeline: u32) {
        let end = self.queue.back().map_or(self.recv_off, |m| m.end) + u64::from(len);
        self.queue.push_back(Msg {
            intended,
            end,
            len,
            corrupt: false,
        });
        self.release(pipeline);
    }

    fn release(&mut self, pipeline: u32) {
        while self.released < self.queue.len() && self.released < pipeline as usize {
            self.released_end = self.queue[self.released].end;
            self.released += 1;
        }
    }

    /// The next send to submit, as (stream offset, length), if none is in flight
    /// and released bytes wait. Sends are capped at `max_len` (the pattern's tail).
    pub fn next_send(&self, max_len: usize) -> Option<(u64, u32)> {
        if self.send_in_flight > 0 || self.send_off >= self.released_end {
            return None;
        }
        let len = (self.released_end - self.send_off).min(max_len as u64) as u32;
        Some((self.send_off, len))
    }

    /// A send of `n` bytes completed (`n` may be short of what was asked).
    pub fn on_sent(&mut self, n: u32, sink: &mut impl Sink) {
        self.send_in_flight = 0;
        self.send_off += u64::from(n);
        while self.unsent_msg < self.released && self.queue[self.unsent_msg].end <= self.send_off {
            sink.sent(&self.queue[self.unsent_msg]);
            self.unsent_msg += 1;
        }
    }

    /// Bytes came back: checks them (when `verify`) and completes messages.
    pub fn on_recv(
        &mut self,
        mut bytes: &[u8],
        pattern: Option<&Pattern>,
        pipeline: u32,
        sink: &mut impl Sink,
    ) -> Result<(), RecvError> {
        // The echo of a send can arrive before that send's own completion is
        // seen, so the bytes in flight count as sent here.
        let sent_end = self.send_off + u64::from(self.send_in_flight);
        if self.recv_off + bytes.len() as u64 > sent_end {
            return Err(RecvError::Unexpected);
        }
        while !bytes.is_empty() {
            let front = self.queue.front_mut().ok_or(RecvError::Unexpected)?;
            let take = (front.end - self.recv_off).min(bytes.len() as u64) as usize;
            if let Some(p) = pattern
                && !p.matches(self.seed, self.recv_off, &bytes[..take])
            {
                front.corrupt = true;
            }
            self.recv_off += take as u64;
            bytes = &bytes[take..];
            if self.recv_off == front.end {
                let msg = self.queue.pop_front().expect("front exists");
                if self.unsent_msg == 0 {
                    // Echoed before its send completion was seen: it was sent.
                    sink.sent(&msg);
                } else {
                    self.unsent_msg -= 1;
                }
                self.released -= 1;
                sink.echoed(&msg);
                self.release(pipeline);
            }
        }
        Ok(())
    }

    /// Some byte was handed to a send.
    pub fn has_sent(&self) -> bool {
        self.send_off > 0 || self.send_in_flight > 0
    }

    /// Some byte of the echo came back.
    pub fn answered(&self) -> bool {
        self.recv_off > 0
    }

    /// Forgets every outstanding message (the connection is gone); returns how many.
    pub fn abandon(&mut self) -> usize {
        let n = self.queue.len();
        self.queue.clear();
        self.released = 0;
        self.unsent_msg = 0;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Seen {
        sent: Vec<u32>,
        echoed: Vec<(u32, bool)>,
    }

    impl Sink for Seen {
        fn sent(&mut self, msg: &Msg) {
            self.sent.push(msg.len);
        }
        fn echoed(&mut self, msg: &Msg) {
            self.echoed.push((msg.len, msg.corrupt));
        }
    }

    fn echo(p: &Pattern, c: &Conn, off: u64, len: usize) -> Vec<u8> {
        p.slice(c.seed, off, len).to_vec()
    }

    #[test]
    fn one_message_round_trips_through_a_short_send() {
        let p = Pattern::new(4096);
        let mut c = Conn::new(42);
        let mut seen = Seen::default();
        c.push(0, 100, 1);
        assert_eq!(c.next_send(4096), Some((0, 100)));
        c.send_in_flight = 100;
        c.on_sent(60, &mut seen);
        assert!(seen.sent.is_empty());
        assert_eq!(c.next_send(4096), Some((60, 40)));
        c.send_in_flight = 40;
        c.on_sent(40, &mut seen);
        assert_eq!(seen.sent, vec![100]);
        let bytes = echo(&p, &c, 0, 100);
        c.on_recv(&bytes[..30], Some(&p), 1, &mut seen).unwrap();
        c.on_recv(&bytes[30..], Some(&p), 1, &mut seen).unwrap();
        assert_eq!(seen.echoed, vec![(100, false)]);
        assert_eq!(c.outstanding(), 0);
    }

    #[test]
    fn the_pipeline_caps_what_is_released() {
        let mut c = Conn::new(1);
        for _ in 0..5 {
            c.push(0, 10, 2);
        }
        assert_eq!(c.next_send(4096), Some((0, 20)));
    }

    #[test]
    fn an_echo_seen_before_its_send_completion_counts_the_message_sent_once() {
        let p = Pattern::new(4096);
        let mut c = Conn::new(3);
        let mut seen = Seen::default();
        c.push(0, 50, 1);
        c.send_in_flight = 50;
        c.on_recv(&echo(&p, &c, 0, 50), Some(&p), 1, &mut seen)
            .unwrap();
        c.on_sent(50, &mut seen);
        assert_eq!(seen.sent, vec![50]);
        assert_eq!(seen.echoed, vec![(50, false)]);
    }

    #[test]
    fn a_corrupted_echo_marks_only_its_message() {
        let p = Pattern::new(4096);
        let mut c = Conn::new(8);
        let mut seen = Seen::default();
        c.push(0, 10, 4);
        c.push(0, 10, 4);
        c.send_in_flight = 20;
        let mut bytes = echo(&p, &c, 0, 20);
        bytes[15] ^= 0x80;
        c.on_recv(&bytes, Some(&p), 4, &mut seen).unwrap();
        assert_eq!(seen.echoed, vec![(10, false), (10, true)]);
    }

    #[test]
    fn more_bytes_than_were_sent_is_an_error() {
        let p = Pattern::new(4096);
        let mut c = Conn::new(8);
        let mut seen = Seen::default();
        c.push(0, 10, 1);
        c.send_in_flight = 10;
        let bytes = echo(&p, &c, 0, 11);
        assert_eq!(
            c.on_recv(&bytes, Some(&p), 1, &mut seen),
            Err(RecvError::Unexpected)
        );
    }

    #[test]
    fn sizes_stay_within_the_range() {
        let mut c = Conn::new(77);
        for _ in 0..1000 {
            let s = c.next_size(64, 1024);
            assert!((64..=1024).contains(&s));
        }
        assert_eq!(c.next_size(5, 5), 5);
    }
}
