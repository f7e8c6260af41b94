//! What `--udp` adds to the ring: each slot's `sendmsg` state (a datagram is a
//! header and a pattern slice, sent from memory that must outlive the send)
//! and receive buffers sized for whole datagrams.
#![forbid(unsafe_code)]

use super::{RecvBufs, Ring, Tag};
use crate::loadgen::datagram::{HEADER_BYTES, Header};
use crate::ring::{self as layer, MsgId, Part, SendMode, Sock};

/// With `--udp` every datagram needs a whole buffer; buffers per ring are cut
/// so their memory stays under this (only touched pages are backed anyway).
const UDP_RECV_MEMORY_BYTES: u64 = 64 << 20;

impl RecvBufs {
    /// For datagrams of up to `max_datagram` bytes: one byte more, so that an
    /// echo longer than anything sent arrives longer (not cut to fit) and is caught.
    pub fn datagrams(max_datagram: u32) -> RecvBufs {
        let bytes = max_datagram + 1;
        let fit = (UDP_RECV_MEMORY_BYTES / u64::from(bytes)).clamp(64, 4096) as u32;
        RecvBufs {
            count: 1 << fit.ilog2(),
            bytes,
        }
    }
}

/// A slot's datagram message in the layer's memory: its header bytes inline,
/// then the payload, a slice of the pattern.
pub(super) struct DatagramSend {
    msg: MsgId,
    /// A send using this message is in flight: it must not be rewritten.
    busy: bool,
}

impl DatagramSend {
    pub(super) fn new(ring: &mut layer::Ring) -> DatagramSend {
        DatagramSend {
            msg: ring.take_msg(2, HEADER_BYTES as usize),
            busy: false,
        }
    }
}

impl Ring {
    /// Sends one datagram from `slot` (a connected UDP socket): `header`, then
    /// `payload`, a slice of the pattern. One at a time per slot: returns false,
    /// submitting nothing, while the slot's previous one is in flight.
    pub fn send_datagram(&mut self, slot: u32, header: &Header, tag: Tag) -> bool {
        let payload = header.payload_range(&self.pattern);
        let d = &mut self.datagrams[slot as usize];
        if d.busy {
            return false;
        }
        d.busy = true;
        let msg = d.msg;
        self.ring
            .msg_inline_mut(msg)
            .copy_from_slice(&header.encode());
        let parts = [
            Part::Inline {
                len: HEADER_BYTES as usize,
            },
            Part::Source {
                source: self.pattern_bytes,
                start: payload.start,
                len: payload.len(),
            },
        ];
        self.ring.fill_msg(msg, None, parts);
        self.ring
            .sendmsg(Sock::Fixed(slot), msg, SendMode::Copy, tag);
        true
    }

    /// The datagram send from `slot` completed: its message may be reused.
    pub(super) fn datagram_sent(&mut self, slot: u32) {
        if let Some(d) = self.datagrams.get_mut(slot as usize) {
            d.busy = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagram_buffers_hold_the_largest_datagram_plus_one_in_bounded_memory() {
        let b = RecvBufs::datagrams(65_527);
        assert_eq!(b.bytes, 65_528);
        assert!(b.count.is_power_of_two());
        assert!(u64::from(b.count) * u64::from(b.bytes) <= UDP_RECV_MEMORY_BYTES);
        assert_eq!(RecvBufs::datagrams(64).count, 4096);
    }
}
