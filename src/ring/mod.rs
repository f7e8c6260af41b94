//! The one submission layer over io_uring, used by the server's worker, the
//! load generator's engine and `examples/minimal_echo.rs`: it owns the ring,
//! the backlog of entries that did not fit the submission queue, the count of
//! operations in flight, and (in [`memory`]) all the memory operations point
//! into. Its methods are typed and safe; the event loops above it say
//! `#![forbid(unsafe_code)]`.
//!
//! # The one safety contract
//! Memory an operation points into stays allocated, unmoved, until that
//! operation's final completion (the one without `IORING_CQE_F_MORE`) has been
//! reaped. This module keeps it so:
//! - every pointer put in an entry points into `OpMemory` (`memory`), which this
//!   module owns, reaches only through bounds-checked ids, and never shrinks;
//! - [`Ring::teardown`] (run on every exit path: explicitly by the loops, and by
//!   `Drop` whatever happened, an error from `io_uring_enter` included) asks the
//!   kernel to cancel everything and reaps until nothing is in flight; only then
//!   may the memory go. Should the kernel not finish in time, the memory is
//!   leaked instead of freed.
//! - Field order is the backstop: `ring` is declared first, so it is closed
//!   before the memory is dropped.
//!
//! What stays the caller's job, because it is about bytes, not memory: not to
//! recycle a buffer or refill a message while a send still reads it.
//!
//! This module decides nothing about what to submit or when; the loops do.

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use socket2::SockAddr;

pub mod buf_ring;
pub mod memory;
pub mod setup;
pub mod user_data;

use crate::echo_queue::BufId;
use buf_ring::BufRing;
use memory::OpMemory;
pub use memory::{AddressId, BufGroup, ByteSource, MsgId, Part, SourceId, TimerId};
use user_data::UserData;

/// A socket an operation names: a slot of the ring's direct-descriptor table,
/// or an ordinary descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sock {
    Fixed(u32),
    Fd(RawFd),
}

/// Builds `$body` with `$t` bound to the io-uring crate's type for `$sock`.
macro_rules! on_sock {
    ($sock:expr, |$t:ident| $body:expr) => {
        match $sock {
            Sock::Fixed(i) => {
                let $t = types::Fixed(i);
                $body
            }
            Sock::Fd(fd) => {
                let $t = types::Fd(fd);
                $body
            }
        }
    };
}

/// The typed operations, one method each, built on `push`.
mod ops;

/// How much a multishot receive may take.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecvLimits {
    /// Receive bundles (6.10+): one completion for several buffers, capped at
    /// this many bytes.
    pub bundle_bytes: Option<u32>,
    /// The receive ends itself once it has taken this many bytes in total
    /// (6.17+; older kernels refuse it with EINVAL). The kernel checks it after
    /// each receive, so it is exact for a multiple of the buffer size and may
    /// be passed by less than one buffer otherwise.
    pub total_bytes: Option<u32>,
}

/// How a send hands its bytes to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendMode {
    /// Copied into the socket's buffers: the buffer is free at the completion.
    Copy,
    /// Zero-copy (6.0 / 6.1): the kernel pins the pages and reads them until a
    /// second completion, the notification, says it is done.
    ZeroCopy,
}

/// `IORING_NOTIF_USAGE_ZC_COPIED`: the bit of a zero-copy notification's
/// result that says the data was copied (asked for with REPORT_USAGE, 6.2).
const NOTIF_USAGE_ZC_COPIED: u32 = 1 << 31;

/// One completion, copied out of the queue.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    pub user_data: UserData,
    pub result: i32,
    pub flags: u32,
}

impl Completion {
    /// The operation posts more completions (a multishot one still armed).
    pub fn more(&self) -> bool {
        cqueue::more(self.flags)
    }

    /// A zero-copy send's notification: the kernel no longer reads the
    /// pages the send pointed at.
    pub fn notif(&self) -> bool {
        cqueue::notif(self.flags)
    }

    /// On a zero-copy send's notification: the kernel copied the data after
    /// all (loopback and veth always do; a NIC without scatter-gather or
    /// checksum offload does too), so the pinning bought nothing.
    pub fn zc_copied(&self) -> bool {
        self.notif() && (self.result as u32) & NOTIF_USAGE_ZC_COPIED != 0
    }

    /// The provided buffer this completion filled (the first, for a bundle).
    pub fn buffer(&self) -> Option<BufId> {
        cqueue::buffer_select(self.flags).map(BufId)
    }
}

/// How long teardown waits for the kernel to finish what it cancelled before
/// it gives up and leaks the memory instead.
const TEARDOWN_WAIT: Duration = Duration::from_secs(5);

pub struct Ring {
    // Field order is the backstop (see the module doc): `ring` first.
    ring: IoUring,
    memory: OpMemory,
    /// Entries that did not fit the submission queue; pushed before the next enter.
    backlog: Vec<squeue::Entry>,
    /// Invariant: operations pushed (backlog included) whose final completion
    /// has not been reaped.
    in_flight: usize,
    /// A teardown already waited its `TEARDOWN_WAIT` for what was left: the
    /// next (from `Drop`) does not wait again.
    gave_up: bool,
    /// Test hook: the next enter fails with this errno.
    #[cfg(test)]
    fail_next_enter: Option<i32>,
}

impl Ring {
    pub fn new(ring: IoUring) -> Ring {
        Ring {
            ring,
            memory: OpMemory::default(),
            backlog: Vec::new(),
            in_flight: 0,
            gave_up: false,
            #[cfg(test)]
            fail_next_enter: None,
        }
    }

    /// The ring itself, for registrations and parameters. Shared access only:
    /// what needs `&mut` (pushing, reaping) goes through this layer, which
    /// keeps the in-flight count.
    pub fn io_uring(&self) -> &IoUring {
        &self.ring
    }

    /// Operations whose final completion has not been reaped.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    // ---- memory ---------------------------------------------------------

    /// Registers `count` buffers of `bytes` as buffer group `bgid` (5.19+).
    pub fn register_buffers(&mut self, bgid: u16, count: u32, bytes: u32) -> io::Result<BufGroup> {
        let bufs = BufRing::register(&self.ring, bgid, count, bytes)?;
        self.memory.groups.push(bufs);
        Ok(BufGroup {
            index: (self.memory.groups.len() - 1) as u8,
            bgid,
        })
    }

    pub fn buffers(&self, group: BufGroup) -> &BufRing {
        &self.memory.groups[group.index as usize]
    }

    pub fn buffers_mut(&mut self, group: BufGroup) -> &mut BufRing {
        &mut self.memory.groups[group.index as usize]
    }

    pub fn add_source(&mut self, source: ByteSource) -> SourceId {
        self.memory.add_source(source)
    }

    pub fn add_address(&mut self, addr: SockAddr) -> AddressId {
        self.memory.add_address(addr)
    }

    pub fn add_timer(&mut self, after: Duration) -> TimerId {
        self.memory.add_timer(after)
    }

    /// A message with room for `iovecs` parts and `inline` bytes.
    pub fn take_msg(&mut self, iovecs: usize, inline: usize) -> MsgId {
        self.memory.take_msg(iovecs, inline)
    }

    /// Returns a message whose send has completed to the pool.
    pub fn give_back_msg(&mut self, id: MsgId) {
        self.memory.give_back_msg(id)
    }

    /// Points message `id` at `name` and `parts`; returns the parts it took.
    pub fn fill_msg(
        &mut self,
        id: MsgId,
        name: Option<Part>,
        parts: impl IntoIterator<Item = Part>,
    ) -> usize {
        self.memory.fill_msg(id, name, parts)
    }

    pub fn msg_inline_mut(&mut self, id: MsgId) -> &mut [u8] {
        self.memory.msg_inline_mut(id)
    }

    pub fn msg_header(&self, id: MsgId) -> &libc::msghdr {
        self.memory.msg_header(id)
    }

    /// Sets the room a multishot `recvmsg` leaves for the source address.
    pub fn set_msg_name_len(&mut self, id: MsgId, len: u32) {
        self.memory.set_msg_name_len(id, len)
    }

    /// The 8 bytes the last eventfd read put in the read slot.
    pub fn read_value(&self) -> u64 {
        *self.memory.read_slot
    }

    // ---- operations (the typed ones are in `ops`) ----------------------

    /// Queues an entry. Never blocks, never drops: what does not fit the
    /// submission queue waits in `backlog` until the next enter.
    ///
    /// # Safety
    /// Every pointer in `entry` points into `self.memory` (or nowhere), which
    /// outlives the operation (the module's contract).
    unsafe fn push(&mut self, entry: squeue::Entry) {
        self.in_flight += 1;
        if !self.backlog.is_empty() {
            self.backlog.push(entry);
            return;
        }
        // SAFETY: the caller guarantees the pointers point into `self.memory`.
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            self.backlog.push(entry);
        }
    }

    // ---- entering and reaping -------------------------------------------

    /// Moves backlog entries into the submission queue, submitting when it is full.
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

    /// Submits what is queued and waits for `want` completions, or `timeout`.
    /// Interruptions (EINTR, a timeout, EBUSY/EAGAIN: reap first) are not errors.
    pub fn submit_and_wait(&mut self, want: usize, timeout: Option<Duration>) -> io::Result<()> {
        #[cfg(test)]
        if let Some(errno) = self.fail_next_enter.take() {
            return Err(io::Error::from_raw_os_error(errno));
        }
        let result = self.flush_backlog().and_then(|()| match timeout {
            None => self.ring.submit_and_wait(want),
            Some(t) => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(want, &args)
            }
        });
        interrupted_is_ok(result)
    }

    /// Submits what is queued and waits for `want` completions, but no longer
    /// than `min_wait` once at least one has arrived (IORING_ENTER_EXT_ARG
    /// with `min_wait_usec`, 6.12+; check
    /// `params().is_feature_min_timeout()` first). With nothing completed
    /// by then it waits on for the first completion, however long.
    pub fn submit_and_wait_batch(&mut self, want: usize, min_wait: Duration) -> io::Result<()> {
        let usec = u32::try_from(min_wait.as_micros()).unwrap_or(u32::MAX);
        let args = types::SubmitArgs::new().min_wait_usec(usec);
        let result = self
            .flush_backlog()
            .and_then(|()| self.ring.submitter().submit_with_args(want, &args));
        interrupted_is_ok(result)
    }

    /// Whether a completion is waiting (no syscall: the CQ tail is shared memory).
    pub fn completion_ready(&mut self) -> bool {
        !self.ring.completion().is_empty()
    }

    /// Whether completion work waits for an enter to run it (IORING_SQ_TASKRUN).
    pub fn taskrun(&mut self) -> bool {
        self.ring.submission().taskrun()
    }

    /// Whether the completion queue overflowed (the kernel held completions back).
    pub fn cq_overflowed(&mut self) -> bool {
        self.ring.submission().cq_overflow()
    }

    /// Moves every available completion into `out`, counting final ones.
    pub fn completions(&mut self, out: &mut Vec<Completion>) {
        out.clear();
        out.extend(self.ring.completion().map(|c| Completion {
            user_data: UserData::from_raw(c.user_data()),
            result: c.result(),
            flags: c.flags(),
        }));
        let finals = out.iter().filter(|c| !c.more()).count();
        self.in_flight -= finals;
    }

    // ---- teardown -------------------------------------------------------

    /// Cancels everything in flight and reaps until nothing is: after it, no
    /// operation points into the memory. Idempotent; run by `Drop` too.
    /// Its one cancel-everything request costs the kernel a scan of its poll
    /// table per request it finds, quadratic in what is armed: a caller with
    /// thousands of armed receives cancels them by tag first (the server's
    /// close path, loadgen's `cancel_receives`), and leaves this the rest.
    /// Returns the operations still in flight: 0 unless the kernel did not
    /// finish within `TEARDOWN_WAIT` or entering failed for good.
    pub fn teardown(&mut self) -> usize {
        // Entries never handed to the kernel are not in flight.
        self.in_flight -= self.backlog.len();
        self.backlog.clear();
        if self.gave_up {
            return self.in_flight;
        }
        let deadline = Instant::now() + TEARDOWN_WAIT;
        // Whether the last cancel-everything has completed (a new one is due).
        let mut cancel_done = true;
        let mut out = Vec::new();
        while self.in_flight > 0 && Instant::now() < deadline {
            if cancel_done {
                // ANY (5.19): every request of this ring, timeouts included.
                let entry = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                    .build()
                    .user_data(UserData::TEARDOWN.raw());
                // SAFETY: no pointers.
                unsafe { self.push(entry) };
            }
            let wait = Some(Duration::from_millis(100));
            #[cfg(test)]
            {
                self.fail_next_enter = None;
            }
            if self.submit_and_wait(1, wait).is_err() {
                break;
            }
            self.completions(&mut out);
            cancel_done = out.iter().any(|c| c.user_data == UserData::TEARDOWN);
        }
        if self.in_flight > 0 {
            self.gave_up = true;
            eprintln!(
                "io_uring teardown: {} operations still in flight after cancelling; \
                 their memory is leaked rather than freed under them",
                self.in_flight
            );
        }
        self.in_flight
    }

    /// Test hook: the next enter fails with `errno` before reaching the kernel.
    #[cfg(test)]
    pub(crate) fn fail_next_enter(&mut self, errno: i32) {
        self.fail_next_enter = Some(errno);
    }
}

/// An enter that was cut short (EINTR, a timeout, EBUSY/EAGAIN: reap first)
/// is not an error: the loop reaps and enters again.
fn interrupted_is_ok(result: io::Result<usize>) -> io::Result<()> {
    match result {
        Ok(_) => Ok(()),
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

impl Drop for Ring {
    fn drop(&mut self) {
        if self.teardown() > 0 {
            std::mem::forget(std::mem::take(&mut self.memory));
        }
    }
}

#[cfg(test)]
mod tests;
