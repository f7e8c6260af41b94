//! UDP echo (RFC 862) on the worker's ring: one multishot `recvmsg` from a
//! buffer ring of its own, and each datagram sent back with `sendmsg` to its
//! source, from the very buffer it arrived in.
//!
//! A reply needs a `msghdr` and an `iovec` that live until its send completes.
//! Every reply holds exactly one buffer, so the buffer id indexes a fixed table
//! of them: no allocation per datagram. The source address is not copied
//! either: the kernel wrote it into the buffer, in front of the payload, and the
//! reply's `msg_name` points there.
//!
//! Datagrams larger than `--udp-max-datagram` arrive truncated (MSG_TRUNC);
//! they are counted and dropped, never echoed cut short. The default leaves room
//! for the largest datagram UDP can carry, so nothing is truncated unless asked.
//! This module decides nothing about when to arm or stop; the worker does.

#![forbid(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;

use io_uring::types::RecvMsgOut;
use socket2::Socket;

use super::op_kind::OpKind;
use crate::echo_queue::BufId;
use crate::ring::user_data::UserData;
use crate::ring::{BufGroup, MsgId, Part, Ring, SendMode, Sock};

/// The UDP buffer group (TCP receives use group 0).
pub const UDP_BGID: u16 = 1;
/// Buffers in the UDP ring: datagrams received and not yet sent back. Each is
/// `--udp-max-datagram` plus headers, but only the pages a datagram touches are
/// ever backed by memory.
pub const UDP_BUF_COUNT: u32 = 256;
/// What the kernel writes in front of each payload: the recvmsg header and the
/// source address (a `sockaddr_storage`, for IPv4 and IPv6 alike).
const HEADER_BYTES: u32 = RECVMSG_OUT_BYTES + std::mem::size_of::<libc::sockaddr_storage>() as u32;
/// `struct io_uring_recvmsg_out`: four u32 (name, control and payload lengths, flags).
const RECVMSG_OUT_BYTES: u32 = 16;

/// What became of a received datagram.
pub enum Received {
    /// A reply of `len` payload bytes was submitted (its buffer stays held
    /// until the send completes: `on_sent`).
    Reply { len: u32 },
    /// Larger than a buffer: counted and dropped, buffer already recycled.
    Truncated,
    /// The receive failed (`errno`), buffer (if any) recycled.
    Failed(i32),
}

/// Where the multishot receive stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RecvState {
    Armed,
    /// Ended (cancelled, an error): re-armed unless the worker drains.
    Idle,
    /// Ended with ENOBUFS: re-armed once a reply gives a buffer back.
    Starved,
}

/// The UDP side of a worker: ids of what it uses in the ring's memory.
pub struct UdpEcho {
    recv: RecvState,
    bufs: BufGroup,
    /// One message per buffer id: a reply holds exactly one buffer, so no
    /// allocation per datagram.
    replies: Box<[MsgId]>,
    /// Template for the multishot recvmsg: only the name and control lengths
    /// are read by the kernel.
    recv_template: MsgId,
    socket: Socket,
}

impl UdpEcho {
    pub fn new(ring: &mut Ring, socket: Socket, max_datagram: u32) -> io::Result<UdpEcho> {
        let bufs = ring.register_buffers(UDP_BGID, UDP_BUF_COUNT, HEADER_BYTES + max_datagram)?;
        let replies = (0..UDP_BUF_COUNT).map(|_| ring.take_msg(1, 0)).collect();
        let recv_template = ring.take_msg(0, 0);
        ring.set_msg_name_len(
            recv_template,
            std::mem::size_of::<libc::sockaddr_storage>() as u32,
        );
        Ok(UdpEcho {
            recv: RecvState::Idle,
            bufs,
            replies,
            recv_template,
            socket,
        })
    }

    /// (Re-)arms the multishot receive.
    pub fn arm_recv(&mut self, ring: &mut Ring) {
        let sock = Sock::Fd(self.socket.as_raw_fd());
        let ud = UserData::worker_op(OpKind::UdpRecv);
        ring.recvmsg_multi(sock, self.recv_template, self.bufs, ud);
        self.recv = RecvState::Armed;
    }

    pub fn is_armed(&self) -> bool {
        self.recv == RecvState::Armed
    }

    /// The receive ended and waits for nothing: re-arm it.
    pub fn is_idle(&self) -> bool {
        self.recv == RecvState::Idle
    }

    /// The receive ran out of buffers: re-arm it once one comes back.
    pub fn is_starved(&self) -> bool {
        self.recv == RecvState::Starved
    }

    /// Turns a receive completion into the reply it sends, if any; `more`
    /// says whether the receive stays armed.
    pub fn on_recv(
        &mut self,
        ring: &mut Ring,
        res: i32,
        buf: Option<BufId>,
        more: bool,
    ) -> Received {
        if !more && self.recv == RecvState::Armed {
            self.recv = if res == -libc::ENOBUFS {
                RecvState::Starved
            } else {
                RecvState::Idle
            };
        }
        if let Some(buf) = buf {
            // Tell the ring the buffer's slot was consumed, so it may be reused.
            ring.buffers_mut(self.bufs)
                .consume(buf, res.max(0) as u32, |_, _| {});
        }
        if res < 0 {
            if let Some(buf) = buf {
                ring.buffers_mut(self.bufs).recycle(buf);
            }
            return Received::Failed(-res);
        }
        let buf = buf.expect("a recvmsg from the buffer ring names its buffer");
        let bytes = ring.buffers(self.bufs).bytes(buf, res as u32);
        let base = bytes.as_ptr() as usize;
        let Ok(out) = RecvMsgOut::parse(bytes, ring.msg_header(self.recv_template)) else {
            ring.buffers_mut(self.bufs).recycle(buf);
            return Received::Failed(libc::EINVAL);
        };
        if out.is_payload_truncated() || out.is_name_data_truncated() {
            ring.buffers_mut(self.bufs).recycle(buf);
            return Received::Truncated;
        }
        // The source address and the payload, as places in the buffer: the
        // reply is sent from the very buffer the datagram arrived in.
        let at = |s: &[u8]| Part::Buffer {
            group: self.bufs,
            buf,
            offset: (s.as_ptr() as usize - base) as u32,
            len: s.len() as u32,
        };
        let (name, payload) = (at(out.name_data()), at(out.payload_data()));
        let len = out.payload_data().len() as u32;
        let reply = self.replies[buf.0 as usize];
        ring.fill_msg(reply, Some(name), [payload]);
        let ud = UserData::new(OpKind::UdpSend, u32::from(buf.0), 0);
        ring.sendmsg(Sock::Fd(self.socket.as_raw_fd()), reply, SendMode::Copy, ud);
        Received::Reply { len }
    }

    /// The reply using buffer `key` was sent (or failed): give the buffer back.
    pub fn on_sent(&mut self, ring: &mut Ring, key: usize) {
        ring.buffers_mut(self.bufs).recycle(BufId(key as u16));
    }

    /// Makes recycled buffers visible to the kernel; once per batch.
    pub fn publish(&mut self, ring: &mut Ring) {
        ring.buffers_mut(self.bufs).publish();
    }
}
