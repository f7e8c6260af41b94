//! What `--udp` adds to the ring: each slot's `sendmsg` state (a datagram is a
//! header and a pattern slice, sent from memory that must outlive the send)
//! and receive buffers sized for whole datagrams. The only unsafe code here is
//! the submission, under the same invariants as the rest of the ring.

use io_uring::{opcode, types};

use super::{RecvBufs, Ring, Tag};
use crate::loadgen::datagram::{HEADER_BYTES, Header};

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

/// What a datagram send points to: its header, the two pieces and the message.
/// One per direct-descriptor slot, in a boxed slice never resized, so never moved.
pub(super) struct DatagramSend {
    header: [u8; HEADER_BYTES as usize],
    iov: [libc::iovec; 2],
    msg: libc::msghdr,
    /// A send using this entry is in flight: the entry must not be rewritten.
    busy: bool,
}

impl DatagramSend {
    pub(super) fn new() -> DatagramSend {
        DatagramSend {
            header: [0; HEADER_BYTES as usize],
            iov: [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; 2],
            // SAFETY: msghdr is a plain C struct for which all-zero is valid.
            msg: unsafe { std::mem::zeroed() },
            busy: false,
        }
    }
}

impl Ring {
    /// Sends one datagram from `slot` (a connected UDP socket): `header`, then
    /// `payload`, a slice of the pattern. One at a time per slot: returns false,
    /// submitting nothing, while the slot's previous one is in flight.
    pub fn send_datagram(&mut self, slot: u32, header: &Header, tag: Tag) -> bool {
        let payload = header.payload(&self.pattern);
        let d = &mut self.datagrams[slot as usize];
        if d.busy {
            return false;
        }
        d.busy = true;
        d.header = header.encode();
        d.iov = [
            libc::iovec {
                iov_base: d.header.as_mut_ptr().cast(),
                iov_len: d.header.len(),
            },
            libc::iovec {
                iov_base: payload.as_ptr() as *mut libc::c_void,
                iov_len: payload.len(),
            },
        ];
        d.msg.msg_iov = d.iov.as_mut_ptr();
        d.msg.msg_iovlen = 2;
        let entry = opcode::SendMsg::new(types::Fixed(slot), &d.msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(tag.0);
        // SAFETY: `msg`, `iov` and `header` live in `datagrams`, a boxed slice
        // never resized and dropped after the ring (field order), and are not
        // rewritten until this send completes (`busy`, cleared by
        // `completions`); the payload lies in the pattern, immutable and kept
        // alive by this `Arc` until after the ring is dropped.
        unsafe { self.push(entry) };
        true
    }

    /// The datagram send from `slot` completed: its entry may be reused.
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
