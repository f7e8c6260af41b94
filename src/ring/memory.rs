//! The memory io_uring operations point into, owned in one place: provided
//! buffer rings, `msghdr`s with their iovecs, read-only byte sources (the load
//! generator's pattern), socket addresses, timeouts and the eventfd read slot.
//!
//! Everything here is reached through an id or a handle, never a raw pointer,
//! and is freed only when the [`Ring`](super::Ring) that owns it has
//! reaped every operation's final completion (its teardown), so a pointer the
//! kernel holds can never dangle. Nothing here is ever moved once allocated:
//! each item is boxed, and the vectors hold only the boxes.
//!
//! This module hands pointers to `ring.rs` only; it submits nothing and decides
//! nothing about when memory is reused (the event loops do, with ids).

use std::sync::Arc;
use std::time::Duration;

use io_uring::types::Timespec;
use socket2::SockAddr;

use super::buf_ring::BufRing;
use crate::echo_queue::BufId;

/// A registered provided-buffer ring: its index among the ring's groups and the
/// buffer group id (bgid) receives name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufGroup {
    pub(super) index: u8,
    pub(super) bgid: u16,
}

impl BufGroup {
    pub fn bgid(self) -> u16 {
        self.bgid
    }
}

/// A `msghdr` slot for a `sendmsg`/`recvmsg`. Non-zero (index + 1), so that
/// an `Option` of it costs nothing: a connection holds one while it sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsgId(std::num::NonZeroU32);

impl MsgId {
    fn new(index: usize) -> MsgId {
        MsgId(std::num::NonZeroU32::new(index as u32 + 1).expect("index + 1 > 0"))
    }

    fn index(self) -> usize {
        self.0.get() as usize - 1
    }
}

/// Read-only bytes a send may point into (registered once, never written).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceId(u32);

/// A socket address a connect names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddressId(u32);

/// A timeout's duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerId(u32);

/// Bytes a message points at, by id: checked against the memory they name
/// when the message is filled, so no iovec can point outside memory we own.
#[derive(Clone, Copy, Debug)]
pub enum Part {
    /// `len` bytes at `offset` in buffer `buf` of `group`.
    Buffer {
        group: BufGroup,
        buf: BufId,
        offset: u32,
        len: u32,
    },
    /// `len` bytes at `start` in a registered byte source.
    Source {
        source: SourceId,
        start: usize,
        len: usize,
    },
    /// The first `len` bytes of the message's own inline bytes.
    Inline { len: usize },
}

/// Read-only bytes that outlive every send from them.
pub type ByteSource = Arc<dyn AsRef<[u8]> + Send + Sync>;

/// One message: the header the kernel reads, the iovecs it points to, and a
/// few inline bytes (a datagram's header) that a part may name.
struct Msg {
    hdr: libc::msghdr,
    iov: Box<[libc::iovec]>,
    inline: Box<[u8]>,
}

/// Messages are pooled by shape (iovec count, inline bytes).
type Shape = (usize, usize);

// Boxed on purpose: the kernel holds the address of an item while its
// operation is in flight, and a vector may grow (and move its items) meanwhile.
#[allow(clippy::vec_box)]
#[derive(Default)]
pub(super) struct OpMemory {
    pub(super) groups: Vec<BufRing>,
    msgs: Vec<Box<Msg>>,
    free_msgs: Vec<(Shape, Vec<MsgId>)>,
    sources: Vec<ByteSource>,
    addresses: Vec<Box<SockAddr>>,
    timers: Vec<Box<Timespec>>,
    /// Where eventfd reads land; 8 bytes, the only size an eventfd reads.
    pub(super) read_slot: Box<u64>,
}

impl OpMemory {
    /// A pointer to `len` bytes at `offset` of buffer `buf`, checked to lie in the group.
    pub(super) fn buffer_ptr(
        &self,
        group: BufGroup,
        buf: BufId,
        offset: u32,
        len: u32,
    ) -> *const u8 {
        buffer_ptr(&self.groups, group, buf, offset, len)
    }

    /// A pointer to `len` bytes at `start` of `source`, checked to lie in it.
    pub(super) fn source_ptr(&self, source: SourceId, start: usize, len: usize) -> *const u8 {
        let bytes = (*self.sources[source.0 as usize]).as_ref();
        bytes[start..start + len].as_ptr()
    }

    pub(super) fn add_source(&mut self, source: ByteSource) -> SourceId {
        self.sources.push(source);
        SourceId(self.sources.len() as u32 - 1)
    }

    pub(super) fn add_address(&mut self, addr: SockAddr) -> AddressId {
        self.addresses.push(Box::new(addr));
        AddressId(self.addresses.len() as u32 - 1)
    }

    pub(super) fn address(&self, id: AddressId) -> &SockAddr {
        &self.addresses[id.0 as usize]
    }

    pub(super) fn add_timer(&mut self, after: Duration) -> TimerId {
        self.timers.push(Box::new(Timespec::from(after)));
        TimerId(self.timers.len() as u32 - 1)
    }

    pub(super) fn timer(&self, id: TimerId) -> &Timespec {
        &self.timers[id.0 as usize]
    }

    /// A message with room for `iovecs` parts and `inline` bytes: a free one
    /// of that shape, or a new one.
    pub(super) fn take_msg(&mut self, iovecs: usize, inline: usize) -> MsgId {
        let shape = (iovecs, inline);
        if let Some((_, free)) = self.free_msgs.iter_mut().find(|(s, _)| *s == shape)
            && let Some(id) = free.pop()
        {
            return id;
        }
        let blank = libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        };
        self.msgs.push(Box::new(Msg {
            hdr: crate::sys::zeroed_msghdr(),
            iov: vec![blank; iovecs].into_boxed_slice(),
            inline: vec![0; inline].into_boxed_slice(),
        }));
        MsgId::new(self.msgs.len() - 1)
    }

    /// Returns a message to the pool. Its memory stays allocated: an id given
    /// back too early can at worst send the wrong bytes, never free memory.
    pub(super) fn give_back_msg(&mut self, id: MsgId) {
        let m = &self.msgs[id.index()];
        let shape = (m.iov.len(), m.inline.len());
        match self.free_msgs.iter_mut().find(|(s, _)| *s == shape) {
            Some((_, free)) => free.push(id),
            None => self.free_msgs.push((shape, vec![id])),
        }
    }

    pub(super) fn msg_header(&self, id: MsgId) -> &libc::msghdr {
        &self.msgs[id.index()].hdr
    }

    pub(super) fn msg_inline_mut(&mut self, id: MsgId) -> &mut [u8] {
        &mut self.msgs[id.index()].inline
    }

    pub(super) fn set_msg_name_len(&mut self, id: MsgId, len: u32) {
        self.msgs[id.index()].hdr.msg_namelen = len as libc::socklen_t;
    }

    /// Points message `id` at `name` (the destination address, for an
    /// unconnected socket) and `parts`; returns how many parts it took (at
    /// most its iovec count). Every pointer is checked to lie in memory owned here.
    pub(super) fn fill_msg(
        &mut self,
        id: MsgId,
        name: Option<Part>,
        parts: impl IntoIterator<Item = Part>,
    ) -> usize {
        // Disjoint borrows: what parts point into, and the message written.
        let Self {
            groups,
            sources,
            msgs,
            ..
        } = self;
        let m = &mut *msgs[id.index()];
        let inline = &m.inline;
        let resolve = |part: Part| -> (*const u8, usize) {
            match part {
                Part::Buffer {
                    group,
                    buf,
                    offset,
                    len,
                } => (buffer_ptr(groups, group, buf, offset, len), len as usize),
                Part::Source { source, start, len } => {
                    let bytes = (*sources[source.0 as usize]).as_ref();
                    (bytes[start..start + len].as_ptr(), len)
                }
                Part::Inline { len } => (inline[..len].as_ptr(), len),
            }
        };
        let name = name.map(resolve);
        let mut n = 0;
        for (slot, part) in m.iov.iter_mut().zip(parts) {
            let (ptr, len) = resolve(part);
            *slot = libc::iovec {
                iov_base: ptr as *mut libc::c_void,
                iov_len: len,
            };
            n += 1;
        }
        (m.hdr.msg_name, m.hdr.msg_namelen) = match name {
            Some((ptr, len)) => (ptr as *mut libc::c_void, len as libc::socklen_t),
            None => (std::ptr::null_mut(), 0),
        };
        m.hdr.msg_iov = m.iov.as_mut_ptr();
        m.hdr.msg_iovlen = n as _;
        n
    }
}

/// A pointer to `len` bytes at `offset` of buffer `buf`, checked to lie in the group.
fn buffer_ptr(groups: &[BufRing], group: BufGroup, buf: BufId, offset: u32, len: u32) -> *const u8 {
    let ring = &groups[group.index as usize];
    assert!(
        u32::from(buf.0) < ring.count()
            && u64::from(offset) + u64::from(len) <= u64::from(ring.buf_size()),
        "buffer {buf:?} bytes {offset}+{len} outside group {}",
        group.bgid
    );
    ring.ptr(buf, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_given_back_is_reused_only_for_its_own_shape() {
        let mut m = OpMemory::default();
        let a = m.take_msg(16, 0);
        m.give_back_msg(a);
        let b = m.take_msg(2, 16);
        assert_ne!(a, b, "a different shape gets a new message");
        assert_eq!(m.take_msg(16, 0), a);
    }

    #[test]
    fn a_message_points_only_at_what_its_parts_name() {
        let mut m = OpMemory::default();
        let source = m.add_source(Arc::new(vec![7u8; 100]));
        let id = m.take_msg(2, 4);
        m.msg_inline_mut(id).copy_from_slice(b"head");
        let n = m.fill_msg(
            id,
            None,
            [
                Part::Inline { len: 4 },
                Part::Source {
                    source,
                    start: 90,
                    len: 10,
                },
                Part::Inline { len: 1 },
            ],
        );
        assert_eq!(n, 2, "the third part does not fit two iovecs");
        let hdr = m.msg_header(id);
        assert_eq!(hdr.msg_iovlen, 2);
        assert!(hdr.msg_name.is_null());
        let expected = m.source_ptr(source, 90, 10);
        let m = &m.msgs[id.index()];
        assert_eq!(
            (m.iov[0].iov_base as *const u8, m.iov[0].iov_len),
            (m.inline.as_ptr(), 4)
        );
        assert_eq!(
            (m.iov[1].iov_base as *const u8, m.iov[1].iov_len),
            (expected, 10)
        );
    }

    #[test]
    #[should_panic]
    fn a_part_past_its_source_is_refused() {
        let mut m = OpMemory::default();
        let source = m.add_source(Arc::new(vec![0u8; 8]));
        let id = m.take_msg(1, 0);
        m.fill_msg(
            id,
            None,
            [Part::Source {
                source,
                start: 4,
                len: 5,
            }],
        );
    }
}
