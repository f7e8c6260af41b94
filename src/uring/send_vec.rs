//! The `msghdr` and iovecs of a send that carries several queued buffers at
//! once (one `sendmsg` instead of a send per buffer). They must stay at one
//! address until the send completes, so each lives in a `Box` held by the
//! connection while its send is in flight, then returns to the worker's pool:
//! no allocation per send once the pool is warm, and nothing held by an idle
//! connection.

use crate::echo_queue::Unsent;

use super::buf_ring::BufRing;

/// The most buffers one send carries.
pub const MAX_SEND_IOVECS: usize = 16;

pub struct SendVec {
    pub msg: libc::msghdr,
    iov: [libc::iovec; MAX_SEND_IOVECS],
}

impl SendVec {
    fn new() -> Box<SendVec> {
        // SAFETY: msghdr and iovec are plain C structs; all-zero is a valid
        // (empty) value of both.
        Box::new(unsafe { std::mem::zeroed() })
    }

    /// Points the iovecs at `chunks` (at most MAX_SEND_IOVECS) in `bufs`;
    /// returns how many it took.
    pub fn fill(&mut self, bufs: &BufRing, chunks: impl Iterator<Item = Unsent>) -> usize {
        let mut n = 0;
        for (slot, u) in self.iov.iter_mut().zip(chunks) {
            *slot = libc::iovec {
                iov_base: bufs.ptr(u.buf, u.offset) as *mut libc::c_void,
                iov_len: u.len as usize,
            };
            n += 1;
        }
        self.msg.msg_iov = self.iov.as_mut_ptr();
        self.msg.msg_iovlen = n as _;
        n
    }

    /// Buffers this send reads from.
    pub fn buffers(&self) -> usize {
        self.msg.msg_iovlen
    }
}

/// Free `SendVec`s of one worker.
#[derive(Default)]
pub struct SendVecPool {
    // Boxed on purpose: a `SendVec` moves between this pool and a connection,
    // and the kernel must find it at the same address while its send is in flight.
    #[allow(clippy::vec_box)]
    free: Vec<Box<SendVec>>,
}

impl SendVecPool {
    pub fn take(&mut self) -> Box<SendVec> {
        self.free.pop().unwrap_or_else(SendVec::new)
    }

    pub fn give_back(&mut self, v: Box<SendVec>) {
        self.free.push(v);
    }
}
