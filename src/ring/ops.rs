//! The ring's operations, one typed method each: what the entry points at,
//! and why that holds (the module contract of `ring`). Every one ends in
//! [`Ring::push`](super::Ring), the one place an entry enters the queue.

use std::os::fd::RawFd;

use io_uring::{opcode, types};

use super::setup::{SQE_LEN_OFFSET, SQE_OPTLEN_OFFSET, with_sqe_u32};
use super::user_data::UserData;
use super::{AddressId, BufGroup, MsgId, RecvLimits, Ring, SendMode, Sock, SourceId, TimerId};
use crate::echo_queue::Unsent;

/// `IORING_SEND_ZC_REPORT_USAGE` (6.2), in a zero-copy send's `ioprio`: its
/// notification says whether the kernel copied after all. Not exported by the
/// io-uring crate.
const SEND_ZC_REPORT_USAGE: u16 = 1 << 3;

impl Ring {
    /// Multishot accept on `listener`; with `direct`, into a free slot of the
    /// direct-descriptor table (5.19+).
    pub fn accept_multi(&mut self, listener: RawFd, direct: bool, ud: UserData) {
        let entry = opcode::AcceptMulti::new(types::Fd(listener))
            .allocate_file_index(direct)
            .build()
            .user_data(ud.raw());
        // SAFETY: no pointers (the peer address is not asked for).
        unsafe { self.push(entry) };
    }

    /// Multishot receive into buffers of `group` (6.0+).
    pub fn recv_multi(&mut self, sock: Sock, group: BufGroup, limits: RecvLimits, ud: UserData) {
        let mut entry = match limits.bundle_bytes {
            Some(bytes) => {
                let e = on_sock!(sock, |t| opcode::RecvMultiBundle::new(t, group.bgid)
                    .build());
                with_sqe_u32(e, SQE_LEN_OFFSET, bytes)
            }
            None => on_sock!(sock, |t| opcode::RecvMulti::new(t, group.bgid).build()),
        };
        if let Some(total) = limits.total_bytes {
            entry = with_sqe_u32(entry, SQE_OPTLEN_OFFSET, total);
        }
        // SAFETY: no pointers: the kernel picks buffers of `group`, which lives
        // in `self.memory`.
        unsafe { self.push(entry.user_data(ud.raw())) };
    }

    /// Multishot `recvmsg` into buffers of `group`; `msg` gives the room for
    /// the source address (`set_msg_name_len`).
    pub fn recvmsg_multi(&mut self, sock: Sock, msg: MsgId, group: BufGroup, ud: UserData) {
        let hdr: *const libc::msghdr = self.memory.msg_header(msg);
        let entry = on_sock!(sock, |t| opcode::RecvMsgMulti::new(t, hdr, group.bgid)
            .build());
        // SAFETY: `hdr` is a boxed message in `self.memory`.
        unsafe { self.push(entry.user_data(ud.raw())) };
    }

    /// Sends the `part` of a buffer of `group`: copying (`IORING_OP_SEND`),
    /// or zero-copy (`IORING_OP_SEND_ZC`, 6.0), which pins the buffer's pages
    /// and sends from them. A zero-copy send completes twice: the result
    /// (with F_MORE), then a notification (F_NOTIF) once the kernel no longer
    /// reads the pages; with `IORING_SEND_ZC_REPORT_USAGE` (6.2) the
    /// notification also says when the kernel copied after all (loopback,
    /// veth: [`Completion::zc_copied`]).
    ///
    /// [`Completion::zc_copied`]: super::Completion::zc_copied
    pub fn send_buffer(
        &mut self,
        sock: Sock,
        group: BufGroup,
        part: Unsent,
        mode: SendMode,
        ud: UserData,
    ) {
        let len = part.len;
        let ptr = self.memory.buffer_ptr(group, part.buf, part.offset, len);
        let entry = match mode {
            SendMode::Copy => on_sock!(sock, |t| opcode::Send::new(t, ptr, len)
                .flags(libc::MSG_NOSIGNAL)
                .build()),
            SendMode::ZeroCopy => on_sock!(sock, |t| opcode::SendZc::new(t, ptr, len)
                .flags(libc::MSG_NOSIGNAL)
                .zc_flags(SEND_ZC_REPORT_USAGE)
                .build()),
        };
        // SAFETY: `ptr..ptr+len` lies in the group's memory (checked by
        // `buffer_ptr`), which lives as long as the ring; the caller keeps the
        // buffer out of the kernel's pool until the send completes (for a
        // zero-copy one, until its notification).
        unsafe { self.push(entry.user_data(ud.raw())) };
    }

    /// Sends `len` bytes at `start` of a registered byte source.
    pub fn send_source(
        &mut self,
        sock: Sock,
        source: SourceId,
        start: usize,
        len: u32,
        ud: UserData,
    ) {
        let ptr = self.memory.source_ptr(source, start, len as usize);
        let entry = on_sock!(sock, |t| opcode::Send::new(t, ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build());
        // SAFETY: `ptr..ptr+len` lies in the source (checked by `source_ptr`),
        // which `self.memory` keeps alive and which is never written.
        unsafe { self.push(entry.user_data(ud.raw())) };
    }

    /// `sendmsg` of message `msg`, as last filled: copying, or zero-copy
    /// (`IORING_OP_SENDMSG_ZC`, 6.1), which completes twice, as
    /// [`Ring::send_buffer`]'s does.
    pub fn sendmsg(&mut self, sock: Sock, msg: MsgId, mode: SendMode, ud: UserData) {
        let hdr: *const libc::msghdr = self.memory.msg_header(msg);
        let entry = match mode {
            SendMode::Copy => on_sock!(sock, |t| opcode::SendMsg::new(t, hdr)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build()),
            SendMode::ZeroCopy => on_sock!(sock, |t| opcode::SendMsgZc::new(t, hdr)
                .flags(libc::MSG_NOSIGNAL as u32)
                .ioprio(SEND_ZC_REPORT_USAGE)
                .build()),
        };
        // SAFETY: `hdr` is a boxed message in `self.memory`; `fill_msg` pointed
        // its iovecs and name only into `self.memory`. The caller keeps the
        // message until the send's result (the kernel has read the header and
        // iovecs by then) and the buffers until the send completes (for a
        // zero-copy one, until its notification).
        unsafe { self.push(entry.user_data(ud.raw())) };
    }

    /// Connects `sock` to a registered address.
    pub fn connect(&mut self, sock: Sock, addr: AddressId, ud: UserData) {
        let addr = self.memory.address(addr);
        let (ptr, len) = (addr.as_ptr().cast::<libc::sockaddr>(), addr.len());
        let entry = on_sock!(sock, |t| opcode::Connect::new(t, ptr, len).build());
        // SAFETY: the address is boxed in `self.memory`.
        unsafe { self.push(entry.user_data(ud.raw())) };
    }

    /// Reads 8 bytes from an eventfd into the read slot (`read_value`).
    pub fn read_eventfd(&mut self, fd: RawFd, ud: UserData) {
        let slot: *mut u64 = &mut *self.memory.read_slot;
        let entry = opcode::Read::new(types::Fd(fd), slot.cast(), 8).build();
        // SAFETY: the read slot is a boxed u64 in `self.memory`, 8 bytes long.
        unsafe { self.push(entry.user_data(ud.raw())) };
    }

    /// A timeout of a registered duration.
    pub fn timeout(&mut self, timer: TimerId, ud: UserData) {
        let ts: *const types::Timespec = self.memory.timer(timer);
        let entry = opcode::Timeout::new(ts).build();
        // SAFETY: the timespec is boxed in `self.memory`.
        unsafe { self.push(entry.user_data(ud.raw())) };
    }

    /// Cancels the operation tagged `target`; it then completes with ECANCELED.
    pub fn cancel(&mut self, target: UserData, ud: UserData) {
        let entry = opcode::AsyncCancel::new(target.raw()).build();
        // SAFETY: no pointers.
        unsafe { self.push(entry.user_data(ud.raw())) };
    }

    /// Closes `sock`. Operations still in flight on it hold their own
    /// reference to the socket, so this does not pull it from under them.
    pub fn close(&mut self, sock: Sock, ud: UserData) {
        let entry = on_sock!(sock, |t| opcode::Close::new(t).build());
        // SAFETY: no pointers.
        unsafe { self.push(entry.user_data(ud.raw())) };
    }

    /// `shutdown(2)` of `sock` with `how` (`libc::SHUT_WR`...).
    pub fn shutdown(&mut self, sock: Sock, how: i32, ud: UserData) {
        let entry = on_sock!(sock, |t| opcode::Shutdown::new(t, how).build());
        // SAFETY: no pointers.
        unsafe { self.push(entry.user_data(ud.raw())) };
    }
}
