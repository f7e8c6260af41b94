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

use std::io;
use std::os::fd::AsRawFd;

use io_uring::types::RecvMsgOut;
use io_uring::{IoUring, cqueue, opcode, squeue, types};
use socket2::Socket;

use super::buf_ring::BufRing;
use super::user_data::{OpKind, UserData};
use crate::echo_queue::BufId;

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

/// One reply's kernel-visible state.
struct Reply {
    msg: libc::msghdr,
    iov: libc::iovec,
}

/// What became of a received datagram.
pub enum Received {
    /// Send this reply of `len` payload bytes (its buffer stays held until the
    /// send completes). Pushing it is sound for as long as this `UdpEcho`
    /// lives: it points into `replies` and `bufs`, neither of which moves.
    Reply { entry: squeue::Entry, len: u32 },
    /// Larger than a buffer: counted and dropped, buffer already recycled.
    Truncated,
    /// The receive failed (`errno`), buffer (if any) recycled.
    Failed(i32),
}

pub struct UdpEcho {
    // Field order: `bufs` and `replies` are pointed into by operations in
    // flight; the worker keeps the ring in a field declared before this one.
    bufs: BufRing,
    /// Indexed by buffer id; never resized, so its addresses are stable.
    replies: Box<[Reply]>,
    /// Template for the multishot recvmsg: only the name and control lengths
    /// are read by the kernel. Boxed so its address is stable.
    recv_template: Box<libc::msghdr>,
    socket: Socket,
}

impl UdpEcho {
    pub fn new(ring: &IoUring, socket: Socket, max_datagram: u32) -> io::Result<UdpEcho> {
        let bufs = BufRing::register(ring, UDP_BGID, UDP_BUF_COUNT, HEADER_BYTES + max_datagram)?;
        // SAFETY: msghdr and iovec are plain C structs for which all-zero is valid.
        let blank = || unsafe { std::mem::zeroed::<Reply>() };
        let replies = (0..UDP_BUF_COUNT).map(|_| blank()).collect();
        // SAFETY: as above.
        let mut recv_template: Box<libc::msghdr> = Box::new(unsafe { std::mem::zeroed() });
        recv_template.msg_namelen =
            std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        Ok(UdpEcho {
            bufs,
            replies,
            recv_template,
            socket,
        })
    }

    /// The multishot receive to (re-)arm.
    pub fn recv_entry(&self) -> squeue::Entry {
        opcode::RecvMsgMulti::new(
            types::Fd(self.socket.as_raw_fd()),
            &*self.recv_template,
            UDP_BGID,
        )
        .build()
        .user_data(UserData::worker_op(OpKind::UdpRecv).raw())
    }

    /// Turns a receive completion into the reply to send, if any.
    pub fn on_recv(&mut self, res: i32, flags: u32) -> Received {
        let buf = cqueue::buffer_select(flags).map(BufId);
        if let Some(buf) = buf {
            // Tell the ring the buffer's slot was consumed, so it may be reused.
            self.bufs.consume(buf, res.max(0) as u32, |_, _| {});
        }
        if res < 0 {
            if let Some(buf) = buf {
                self.bufs.recycle(buf);
            }
            return Received::Failed(-res);
        }
        let buf = buf.expect("a recvmsg from the buffer ring names its buffer");
        let bytes = self.bufs.bytes(buf, res as u32);
        let Ok(out) = RecvMsgOut::parse(bytes, &self.recv_template) else {
            self.bufs.recycle(buf);
            return Received::Failed(libc::EINVAL);
        };
        if out.is_payload_truncated() || out.is_name_data_truncated() {
            self.bufs.recycle(buf);
            return Received::Truncated;
        }
        let payload = out.payload_data();
        let name = out.name_data();
        let reply = &mut self.replies[buf.0 as usize];
        reply.iov = libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        };
        reply.msg.msg_name = name.as_ptr() as *mut libc::c_void;
        reply.msg.msg_namelen = name.len() as libc::socklen_t;
        reply.msg.msg_iov = &mut reply.iov;
        reply.msg.msg_iovlen = 1;
        let entry = opcode::SendMsg::new(types::Fd(self.socket.as_raw_fd()), &reply.msg)
            .flags(libc::MSG_NOSIGNAL as u32)
            .build()
            .user_data(UserData::new(OpKind::UdpSend, u32::from(buf.0), 0).raw());
        Received::Reply {
            entry,
            len: payload.len() as u32,
        }
    }

    /// The reply using buffer `key` was sent (or failed): give the buffer back.
    pub fn on_sent(&mut self, key: usize) {
        self.bufs.recycle(BufId(key as u16));
    }

    /// Makes recycled buffers visible to the kernel; once per batch.
    pub fn publish(&mut self) {
        self.bufs.publish();
    }
}
