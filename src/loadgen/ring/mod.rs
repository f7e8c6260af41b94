//! The load generator's ring: one per engine thread, its table of direct
//! descriptors (client sockets live there, not in the process's fd table), its
//! provided buffer ring for multishot receives, and the operations the engine
//! submits: connect, receive, send of a pattern slice, send of a `--udp`
//! datagram (header + pattern slice), close, cancel.
//!
//! - this file: the ring, its setup and feature check, the operations TCP uses.
//! - `datagram.rs`: what `--udp` adds: per-slot `sendmsg` state, datagram-sized
//!   receive buffers.
//!
//! The engine decides what to submit and when; the submission itself, and the
//! memory operations point into (the target address, the pattern, the receive
//! buffers, the datagram messages), belong to the shared layer
//! [`crate::ring`], whose safety contract covers them.
#![forbid(unsafe_code)]

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use io_uring::IoUring;
use socket2::{SockAddr, Socket};

use super::error::Error;
use super::pattern::Pattern;
use crate::echo_queue::BufId;
pub use crate::ring::Completion;
use crate::ring::setup::build_ring;
pub use crate::ring::user_data::GENERATION_MASK;
use crate::ring::user_data::{UserData, kind_table};
use crate::ring::{self as layer, AddressId, BufGroup, RecvLimits, Sock, SourceId};

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

kind_table! {
    /// What an operation was: the kind byte of the shared `user_data` codec
    /// ([`UserData`], layout drawn in `uring::user_data`), whose key is the
    /// connection slot and whose generation tells a reused slot's connections
    /// apart (with `--messages-per-conn`; without churn it stays 0).
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
}

/// The engine's name for a `user_data`: kind, connection slot, generation.
pub type Tag = UserData;

pub struct Ring {
    /// The shared layer: the ring and everything its operations point into.
    ring: layer::Ring,
    bufs: BufGroup,
    /// Empty unless the ring sends datagrams; then one entry per slot.
    datagrams: Box<[DatagramSend]>,
    /// The address every connect names.
    target: AddressId,
    /// The pattern, registered as the bytes every send points into.
    pattern_bytes: SourceId,
    pattern: Arc<Pattern>,
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
    ) -> Result<Ring, Error> {
        let (ring, _flags) =
            build_ring(SQ_ENTRIES, CQ_ENTRIES).map_err(|e| Error::Setup(e.to_string()))?;
        check_features(&ring)?;
        ring.submitter()
            .register_files_sparse(slots)
            .map_err(|e| {
                Error::Setup(format!("registering {slots} direct descriptors: {e} (the kernel caps a ring's table at the open-files limit)"))
            })?;
        let mut ring = layer::Ring::new(ring);
        let bufs = ring
            .register_buffers(BGID, recv_bufs.count, recv_bufs.bytes)
            .map_err(|e| Error::Setup(format!("registering the receive buffer ring: {e}")))?;
        let datagrams = if datagrams { slots } else { 0 };
        let datagrams = (0..datagrams)
            .map(|_| DatagramSend::new(&mut ring))
            .collect();
        let target = ring.add_address(SockAddr::from(target));
        let pattern_bytes = ring.add_source(pattern.clone());
        Ok(Ring {
            ring,
            bufs,
            datagrams,
            target,
            pattern_bytes,
            pattern,
        })
    }

    /// Puts `socket` in direct-descriptor slot `slot` and closes its normal fd,
    /// so the process's fd table stays nearly empty however many connections run.
    pub fn install(&self, slot: u32, socket: Socket) -> io::Result<()> {
        self.ring
            .io_uring()
            .submitter()
            .register_files_update(slot, &[socket.as_raw_fd()])?;
        drop(socket);
        Ok(())
    }

    pub fn connect(&mut self, slot: u32, tag: Tag) {
        self.ring.connect(Sock::Fixed(slot), self.target, tag);
    }

    pub fn recv(&mut self, slot: u32, tag: Tag) {
        let limits = RecvLimits::default();
        self.ring
            .recv_multi(Sock::Fixed(slot), self.bufs, limits, tag);
    }

    /// Sends `len` bytes of connection `seed`'s pattern from stream offset `offset`.
    pub fn send(&mut self, slot: u32, seed: u32, offset: u64, len: u32, tag: Tag) {
        let start = self.pattern.range(seed, offset, len as usize).start;
        let source = self.pattern_bytes;
        self.ring
            .send_source(Sock::Fixed(slot), source, start, len, tag);
    }

    /// Closes the socket in `slot`; `tag` (kind Close) names its connection.
    /// The socket itself goes only once no operation on it is left in the
    /// kernel: a multishot receive still armed keeps it open (cancel it).
    pub fn close(&mut self, slot: u32, tag: Tag) {
        self.ring.close(Sock::Fixed(slot), tag);
    }

    /// Cancels the operation tagged `target` (it then completes with ECANCELED).
    pub fn cancel(&mut self, target: Tag) {
        let ud = Tag::new(OpKind::Cancel, target.key(), 0);
        self.ring.cancel(target, ud);
    }

    /// Submits what is queued and waits up to `timeout` for a completion.
    pub fn wait(&mut self, timeout: Duration) -> io::Result<()> {
        self.ring.submit_and_wait(1, Some(timeout))
    }

    /// Moves every available completion into `out`.
    pub fn completions(&mut self, out: &mut Vec<Completion>) {
        self.ring.completions(out);
        for c in out.iter() {
            if c.user_data.kind() == Some(OpKind::Datagram) {
                self.datagram_sent(c.user_data.key());
            }
        }
    }

    /// The bytes a receive put in buffer `buf`; valid until it is recycled.
    pub fn received(&self, buf: BufId, len: u32) -> &[u8] {
        self.ring.buffers(self.bufs).bytes(buf, len)
    }

    pub fn recycle(&mut self, buf: BufId) {
        self.ring.buffers_mut(self.bufs).recycle(buf);
    }

    /// Makes recycled buffers visible to the kernel; once per batch.
    pub fn publish(&mut self) {
        self.ring.buffers_mut(self.bufs).publish();
    }
}

/// Checks the operations and features the engine uses, naming what is missing.
fn check_features(ring: &IoUring) -> Result<(), Error> {
    use crate::ring::setup::{self, SetupError};
    setup::check_features(ring, &setup::LOADGEN_OPS, true).map_err(|e| match e {
        SetupError::UnsupportedKernel {
            feature,
            needs,
            running,
        } => Error::Setup(format!(
            "this kernel ({running}) lacks io_uring {feature} (Linux {needs}+)"
        )),
        other => Error::Setup(other.to_string()),
    })
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
                let t = Tag::from_raw(Tag::new(kind, conn, 0).raw());
                assert_eq!(t.kind(), Some(kind));
                assert_eq!(t.key(), conn);
                assert_eq!(t.generation(), 0);
                for generation in [1, 77, GENERATION_MASK] {
                    let g = Tag::from_raw(t.with_generation(generation).raw());
                    assert_eq!(
                        (g.kind(), g.key(), g.generation()),
                        (Some(kind), conn, generation)
                    );
                }
            }
        }
        assert_eq!(Tag::from_raw(0).kind::<OpKind>(), None);
        // A generation past 24 bits wraps instead of spilling into the kind.
        let t = Tag::new(OpKind::Close, 5, 0).with_generation(GENERATION_MASK + 2);
        assert_eq!((t.kind(), t.generation()), (Some(OpKind::Close), 1));
    }
}
