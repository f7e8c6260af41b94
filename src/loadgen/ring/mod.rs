//! The load generator's io_uring plumbing, and the only unsafe code in
//! `loadgen`: one ring per engine thread, its table of direct descriptors
//! (client sockets live there, not in the process's fd table), its provided
//! buffer ring for multishot receives, and the operations the engine submits:
//! connect, receive, send of a pattern slice, send of a `--udp` datagram
//! (header + pattern slice), close, cancel.
//!
//! - this file: the ring, its setup and feature check, the operations TCP uses.
//! - `datagram.rs`: what `--udp` adds: per-slot `sendmsg` state, datagram-sized
//!   receive buffers.
//!
//! The engine decides what to submit and when; this module only makes every
//! submission sound: the memory an operation points into (the target address,
//! the pattern, the receive buffers) is owned here and outlives the ring.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use io_uring::{IoUring, Probe, opcode, squeue, types};
use socket2::{SockAddr, Socket};

use super::pattern::Pattern;
use crate::echo_queue::BufId;
use crate::uring::buf_ring::BufRing;
use crate::uring::setup::build_ring;

mod datagram;
use datagram::DatagramSend;

/// Submission queue entries: a burst beyond it waits in the backlog.
const SQ_ENTRIES: u32 = 4096;
/// Completion queue entries: the kernel's maximum (clamped). Each connection
/// has at most a receive and a send completing at once.
const CQ_ENTRIES: u32 = 65536;
/// The buffer group every receive names.
const BGID: u16 = 0;
/// Receive buffers per ring. Each is given back as soon as its bytes are
/// checked, so the pool only has to cover one batch of completions; a receive
/// that finds it empty ends with ENOBUFS and is re-armed (back-pressure).
pub const RECV_BUF_COUNT: u32 = 4096;
pub const RECV_BUF_BYTES: u32 = 4096;

/// The receive buffers of a ring: how many, how large.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecvBufs {
    /// Invariant: a power of two, <= 32768.
    pub count: u32,
    pub bytes: u32,
}

impl RecvBufs {
    /// For TCP streams: small buffers, a receive may fill several.
    pub const STREAM: RecvBufs = RecvBufs {
        count: RECV_BUF_COUNT,
        bytes: RECV_BUF_BYTES,
    };
}

/// What an operation was.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Connect = 1,
    /// Multishot receive from the buffer ring.
    Recv = 2,
    Send = 3,
    Close = 4,
    Cancel = 5,
    /// A `--udp` datagram's send (header and payload).
    Datagram = 6,
}

/// The `user_data` of every operation:
/// `kind << 56 | generation << 32 | connection slot`.
///
/// With `--messages-per-conn` a slot is reused by one connection after
/// another, and a completion of the previous one (the receive its close
/// cancelled) can arrive after the next one started: the 24-bit generation,
/// bumped at each reuse, tells them apart. Without churn it stays 0.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag(u64);

/// Generations wrap at 24 bits.
pub const GENERATION_MASK: u32 = (1 << 24) - 1;

impl Tag {
    /// Generation 0: a slot's first connection.
    pub fn new(kind: OpKind, conn: u32) -> Tag {
        Tag((u64::from(kind as u8) << 56) | u64::from(conn))
    }

    /// The same operation on the slot's connection of `generation`.
    pub fn with_generation(self, generation: u32) -> Tag {
        let cleared = self.0 & !(u64::from(GENERATION_MASK) << 32);
        Tag(cleared | (u64::from(generation & GENERATION_MASK) << 32))
    }

    pub fn generation(self) -> u32 {
        (self.0 >> 32) as u32 & GENERATION_MASK
    }

    pub fn from_raw(raw: u64) -> Tag {
        Tag(raw)
    }

    pub fn kind(self) -> Option<OpKind> {
        Some(match (self.0 >> 56) as u8 {
            1 => OpKind::Connect,
            2 => OpKind::Recv,
            3 => OpKind::Send,
            4 => OpKind::Close,
            5 => OpKind::Cancel,
            6 => OpKind::Datagram,
            _ => return None,
        })
    }

    pub fn conn(self) -> u32 {
        self.0 as u32
    }
}

/// One completion, copied out of the queue.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    pub tag: Tag,
    pub result: i32,
    pub flags: u32,
}

impl Completion {
    /// The operation posts more completions (a multishot receive still armed).
    pub fn more(&self) -> bool {
        io_uring::cqueue::more(self.flags)
    }

    /// The receive buffer this completion filled.
    pub fn buffer(&self) -> Option<u16> {
        io_uring::cqueue::buffer_select(self.flags)
    }
}

pub struct Ring {
    // Field order is a safety invariant: `ring` is dropped (closed, which ends
    // every operation) first, and only then the memory operations point into:
    // `bufs`, `datagrams`, `target`, `pattern`.
    ring: IoUring,
    bufs: BufRing,
    /// Empty unless the ring sends datagrams; then one entry per slot.
    datagrams: Box<[DatagramSend]>,
    /// The address every connect names. Boxed: its address must not move.
    target: Box<SockAddr>,
    pattern: Arc<Pattern>,
    /// Entries that did not fit the submission queue, pushed before the next wait.
    backlog: Vec<squeue::Entry>,
}

impl Ring {
    /// A ring with `slots` direct descriptors and the receive buffers; with
    /// `datagrams`, ready to send a datagram from each slot.
    pub fn new(
        slots: u32,
        target: SocketAddr,
        pattern: Arc<Pattern>,
        recv_bufs: RecvBufs,
        datagrams: bool,
    ) -> Result<Ring, String> {
        let (ring, _flags) = build_ring(SQ_ENTRIES, CQ_ENTRIES).map_err(|e| e.to_string())?;
        check_features(&ring)?;
        ring.submitter()
            .register_files_sparse(slots)
            .map_err(|e| {
                format!("registering {slots} direct descriptors: {e} (the kernel caps a ring's table at the open-files limit)")
            })?;
        let bufs = BufRing::register(&ring, BGID, recv_bufs.count, recv_bufs.bytes)
            .map_err(|e| format!("registering the receive buffer ring: {e}"))?;
        let datagrams = if datagrams { slots } else { 0 };
        Ok(Ring {
            ring,
            bufs,
            datagrams: (0..datagrams).map(|_| DatagramSend::new()).collect(),
            target: Box::new(target.into()),
            pattern,
            backlog: Vec::new(),
        })
    }

    /// Puts `socket` in direct-descriptor slot `slot` and closes its normal fd,
    /// so the process's fd table stays nearly empty however many connections run.
    pub fn install(&self, slot: u32, socket: Socket) -> io::Result<()> {
        self.ring
            .submitter()
            .register_files_update(slot, &[socket.as_raw_fd()])?;
        drop(socket);
        Ok(())
    }

    /// Queues an operation; what does not fit the SQ waits in `backlog`.
    ///
    /// # Safety
    /// Every pointer in `entry` must stay valid until the ring is dropped.
    unsafe fn push(&mut self, entry: squeue::Entry) {
        if !self.backlog.is_empty() {
            self.backlog.push(entry);
            return;
        }
        // SAFETY: the caller guarantees the entry's pointers outlive the ring.
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            self.backlog.push(entry);
        }
    }

    pub fn connect(&mut self, slot: u32, tag: Tag) {
        let entry = opcode::Connect::new(
            types::Fixed(slot),
            self.target.as_ptr().cast::<libc::sockaddr>(),
            self.target.len(),
        )
        .build()
        .user_data(tag.0);
        // SAFETY: `target` is boxed (its address never moves) and is dropped
        // after the ring (field order).
        unsafe { self.push(entry) };
    }

    pub fn recv(&mut self, slot: u32, tag: Tag) {
        let entry = opcode::RecvMulti::new(types::Fixed(slot), BGID)
            .build()
            .user_data(tag.0);
        // SAFETY: no pointers: the kernel picks buffers from `bufs`, which is
        // dropped after the ring (field order).
        unsafe { self.push(entry) };
    }

    /// Sends `len` bytes of connection `seed`'s pattern from stream offset `offset`.
    pub fn send(&mut self, slot: u32, seed: u32, offset: u64, len: u32, tag: Tag) {
        let ptr = self.pattern.slice(seed, offset, len as usize).as_ptr();
        let entry = opcode::Send::new(types::Fixed(slot), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(tag.0);
        // SAFETY: `ptr..ptr+len` lies in the pattern (`slice` checked the length),
        // which is never written after it is built and which this `Arc` keeps
        // alive until after the ring is dropped (field order).
        unsafe { self.push(entry) };
    }

    /// Closes the socket in `slot`; `tag` (kind Close) names its connection.
    /// The socket itself goes only once no operation on it is left in the
    /// kernel: a multishot receive still armed keeps it open (cancel it).
    pub fn close(&mut self, slot: u32, tag: Tag) {
        let entry = opcode::Close::new(types::Fixed(slot))
            .build()
            .user_data(tag.0);
        // SAFETY: no pointers.
        unsafe { self.push(entry) };
    }

    /// Cancels the operation tagged `target` (it then completes with ECANCELED).
    pub fn cancel(&mut self, target: Tag) {
        let entry = opcode::AsyncCancel::new(target.0)
            .build()
            .user_data(Tag::new(OpKind::Cancel, target.conn()).0);
        // SAFETY: no pointers.
        unsafe { self.push(entry) };
    }

    fn flush_backlog(&mut self) -> io::Result<()> {
        while !self.backlog.is_empty() {
            let mut sq = self.ring.submission();
            let room = sq.capacity() - sq.len();
            if room == 0 {
                drop(sq);
                self.ring.submit()?;
                continue;
            }
            let n = room.min(self.backlog.len());
            for entry in self.backlog.drain(..n) {
                // SAFETY: the pointers were vouched for when `push` queued the entry.
                unsafe { sq.push(&entry) }.expect("room was checked");
            }
        }
        Ok(())
    }

    /// Submits what is queued and waits up to `timeout` for a completion.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        self.flush_backlog()?;
        let ts = types::Timespec::from(timeout);
        let args = types::SubmitArgs::new().timespec(&ts);
        match self.ring.submitter().submit_with_args(1, &args) {
            Ok(_) => Ok(()),
            // ETIME: the timeout; EINTR: a signal; EBUSY/EAGAIN: reap first.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Moves every available completion into `out`.
    pub fn completions(&mut self, out: &mut Vec<Completion>) {
        out.clear();
        out.extend(self.ring.completion().map(|c| Completion {
            tag: Tag(c.user_data()),
            result: c.result(),
            flags: c.flags(),
        }));
        for c in out.iter() {
            if c.tag.kind() == Some(OpKind::Datagram) {
                self.datagram_sent(c.tag.conn());
            }
        }
    }

    /// The bytes a receive put in buffer `buf`; valid until it is recycled.
    pub fn received(&self, buf: u16, len: u32) -> &[u8] {
        self.bufs.bytes(BufId(buf), len)
    }

    pub fn recycle(&mut self, buf: u16) {
        self.bufs.recycle(BufId(buf));
    }

    /// Makes recycled buffers visible to the kernel; once per batch.
    pub fn publish(&mut self) {
        self.bufs.publish();
    }
}

/// Checks the operations and features the engine uses, naming what is missing.
fn check_features(ring: &IoUring) -> Result<(), String> {
    if !ring.params().is_feature_ext_arg() {
        return Err("this kernel lacks io_uring EXT_ARG waits (Linux 5.11+)".into());
    }
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("probing io_uring opcodes: {e} (needs Linux 5.6+)"))?;
    let needed = [
        (opcode::Connect::CODE, "connect", "5.5"),
        (opcode::RecvMulti::CODE, "recv", "5.6"),
        (opcode::Send::CODE, "send", "5.6"),
        (opcode::SendMsg::CODE, "sendmsg", "5.3"),
        (opcode::Close::CODE, "close", "5.6"),
        (opcode::AsyncCancel::CODE, "async cancel", "5.5"),
    ];
    for (code, name, needs) in needed {
        if !probe.is_supported(code) {
            return Err(format!(
                "this kernel lacks the io_uring {name} operation (Linux {needs}+)"
            ));
        }
    }
    // Multishot receive and sparse direct-descriptor tables cannot be probed.
    if crate::uring::setup::kernel_version().is_some_and(|v| v < (6, 0)) {
        return Err("loadgen needs io_uring multishot receive (Linux 6.0+)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_round_trips_its_kind_and_connection() {
        for kind in [
            OpKind::Connect,
            OpKind::Recv,
            OpKind::Send,
            OpKind::Cancel,
            OpKind::Datagram,
        ] {
            for conn in [0, 1, 49_999, u32::MAX] {
                let t = Tag::from_raw(Tag::new(kind, conn).0);
                assert_eq!(t.kind(), Some(kind));
                assert_eq!(t.conn(), conn);
                assert_eq!(t.generation(), 0);
                for generation in [1, 77, GENERATION_MASK] {
                    let g = Tag::from_raw(t.with_generation(generation).0);
                    assert_eq!(
                        (g.kind(), g.conn(), g.generation()),
                        (Some(kind), conn, generation)
                    );
                }
            }
        }
        assert_eq!(Tag::from_raw(0).kind(), None);
        // A generation past 24 bits wraps instead of spilling into the kind.
        let t = Tag::new(OpKind::Close, 5).with_generation(GENERATION_MASK + 2);
        assert_eq!((t.kind(), t.generation()), (Some(OpKind::Close), 1));
    }
}
