//! The io_uring event loop of one worker thread: submit and wait → for each
//! completion, dispatch on its kind → publish recycled buffers once per batch.
//!
//! Operations a connection can have in flight: one multishot receive, at most one
//! send, a shutdown, a close. Every transition goes through the handlers below;
//! the slot is freed by `try_free` once nothing is left in the kernel.
//! This module does not set the ring up (`setup`) or own buffer memory (`buf_ring`).

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use slab::Slab;
use socket2::Socket;

use super::buf_ring::BufRing;
use super::conn::{Conn, Flags};
use super::send_vec::{MAX_SEND_IOVECS, SendVecPool};
use super::setup::{SQE_LEN_OFFSET, SQE_OPTLEN_OFFSET, with_sqe_u32};
use super::udp::{Received, UdpEcho};
use super::user_data::{GENERATION_MASK, OpKind, UserData};
use crate::capacity::{self, TableFull};
use crate::config::Config;
use crate::echo_queue::{BufId, Chunk};
use crate::shutdown::Shutdown;
use crate::stats::WorkerStats;

/// How often a draining worker checks its drain deadline, and how long a
/// failed accept waits before it is retried.
const TICK: Duration = Duration::from_millis(50);

/// Everything a worker shares with the others, by reference.
pub struct Shared<'a> {
    pub config: &'a Config,
    pub stats: &'a WorkerStats,
    pub shutdown: &'a Shutdown,
    /// Connections open in all workers, for `--max-conns`.
    pub open_conns: &'a AtomicUsize,
    pub worker_id: usize,
}

pub struct Worker<'a> {
    // Field order is a safety invariant: `ring` is dropped (closed) first, and
    // only then the memory its operations point into (`bufs`, `wake_buf`,
    // `tick`, `listener`).
    ring: IoUring,
    bufs: BufRing,
    /// UDP echo on the same port, with `--udp`.
    udp: Option<UdpEcho>,
    /// The eventfd Wake reads land here.
    wake_buf: Box<u64>,
    tick: Box<types::Timespec>,
    listener: Socket,
    shared: Shared<'a>,
    conns: Slab<Conn>,
    next_generation: u32,
    /// Buffers the kernel may still pick; a hint for re-arming starved receives.
    free_bufs: u32,
    /// Connections whose receive ended with ENOBUFS, oldest first, as (key, generation).
    starved: std::collections::VecDeque<(usize, u32)>,
    /// SQEs that did not fit the submission queue; pushed before the next submit.
    backlog: Vec<squeue::Entry>,
    /// Operations submitted whose final completion has not arrived.
    in_flight: usize,
    accept_armed: bool,
    /// Accepting stopped because the descriptor table or the open-files limit was
    /// full; resumed by the next close instead of retried in a loop.
    accept_paused: bool,
    /// Accepting failed for another reason: retried at the next tick.
    accept_retry: bool,
    /// This ring's direct-descriptor table: its size, and whether it is full.
    table_slots: u32,
    table_full: TableFull,
    drain_deadline: Option<Instant>,
    tick_armed: bool,
    udp_armed: bool,
    /// The UDP receive ended with ENOBUFS: re-armed after a reply gives a buffer back.
    udp_starved: bool,
    /// A UDP buffer was given back since the receive ran dry.
    udp_freed: bool,
    cqes: Vec<(u64, i32, u32)>,
    send_vecs: SendVecPool,
    /// Scratch list of buffers a receive filled but nothing will echo.
    discarded: Vec<BufId>,
    /// Receive bundles (6.10+): one completion for several buffers.
    recv_bundle: bool,
    /// Multishot receives carry a total byte limit (6.17+); switched off at the
    /// first EINVAL from an older kernel.
    recv_limit: bool,
}

impl<'a> Worker<'a> {
    pub fn new(
        ring: IoUring,
        bufs: BufRing,
        udp: Option<UdpEcho>,
        listener: Socket,
        recv_bundle: bool,
        shared: Shared<'a>,
    ) -> Worker<'a> {
        let free_bufs = shared.config.buf_count;
        let table_slots =
            crate::uring::direct_table_slots(shared.config, crate::sys::open_files_limit());
        Worker {
            ring,
            bufs,
            udp,
            wake_buf: Box::new(0),
            tick: Box::new(types::Timespec::from(TICK)),
            listener,
            shared,
            conns: Slab::new(),
            next_generation: 1,
            free_bufs,
            starved: Default::default(),
            backlog: Vec::new(),
            in_flight: 0,
            accept_armed: false,
            accept_paused: false,
            accept_retry: false,
            table_slots,
            table_full: TableFull::default(),
            drain_deadline: None,
            tick_armed: false,
            udp_armed: false,
            udp_starved: false,
            udp_freed: false,
            cqes: Vec::with_capacity(1024),
            send_vecs: SendVecPool::default(),
            discarded: Vec::new(),
            recv_bundle,
            recv_limit: true,
        }
    }

    /// Runs until a graceful stop has drained every connection.
    pub fn run(mut self) -> io::Result<()> {
        self.arm_accept();
        self.arm_wake();
        self.arm_udp();
        while !(self.drain_deadline.is_some() && self.conns.is_empty() && self.in_flight == 0) {
            self.flush_backlog();
            if !self.spin_for_completions()? {
                self.enter(1)?;
            }
            self.reap();
            self.bufs.publish();
            if let Some(udp) = &mut self.udp {
                udp.publish();
            }
            // A UDP receive that ran dry is re-armed once a reply has given a
            // buffer back and it is published (not before: it would only run
            // dry again).
            if self.udp_starved && self.udp_freed {
                self.arm_udp();
            }
            self.rearm_starved();
        }
        Ok(())
    }

    /// Submits what is queued and waits for `want` completions.
    fn enter(&mut self, want: usize) -> io::Result<()> {
        match self.ring.submit_and_wait(want) {
            Ok(_) => Ok(()),
            // EINTR: a signal; EBUSY/EAGAIN: completions must be reaped first.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// `--busy-poll`: submits, then spins until a completion is ready or the
    /// spin time is up; true when completions are ready. Checking needs no
    /// syscall: the CQ tail and the kernel's IORING_SQ_TASKRUN flag (completion
    /// work waiting to run, which only an enter with GETEVENTS runs, and the
    /// crate's submit adds GETEVENTS when the flag is up) are in shared memory.
    fn spin_for_completions(&mut self) -> io::Result<bool> {
        let spin = self.shared.config.busy_poll;
        if spin.is_zero() {
            return Ok(false);
        }
        self.enter(0)?;
        let deadline = Instant::now() + spin;
        loop {
            if !self.ring.completion().is_empty() {
                return Ok(true);
            }
            if self.ring.submission().taskrun() {
                // Task work need not post a completion (a poll that re-arms):
                // the deadline is checked on every turn all the same.
                self.enter(0)?;
                if !self.ring.completion().is_empty() {
                    return Ok(true);
                }
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            std::hint::spin_loop();
        }
    }

    fn reap(&mut self) {
        if self.ring.submission().cq_overflow() {
            WorkerStats::add(&self.shared.stats.cq_overflowed, 1);
        }
        self.cqes.clear();
        self.cqes.extend(
            self.ring
                .completion()
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        for i in 0..self.cqes.len() {
            let (ud, res, flags) = self.cqes[i];
            self.handle_cqe(UserData::from_raw(ud), res, flags);
        }
    }

    fn handle_cqe(&mut self, ud: UserData, res: i32, flags: u32) {
        let more = cqueue::more(flags);
        if !more {
            self.in_flight -= 1;
        }
        match ud.kind() {
            Some(OpKind::Accept) => self.handle_accept(res, more),
            Some(OpKind::Wake) => self.handle_wake(),
            Some(OpKind::Tick) => self.handle_tick(),
            Some(OpKind::UdpRecv) => self.handle_udp_recv(res, flags, more),
            Some(OpKind::UdpSend) => self.handle_udp_sent(ud.key(), res),
            Some(OpKind::CloseRejected) => WorkerStats::sub(&self.shared.stats.direct_fds, 1),
            Some(OpKind::Cancel) => {}
            Some(kind) => {
                let key = ud.key();
                match self.conns.get(key) {
                    Some(c) if c.owns(ud) => {}
                    _ => {
                        debug_assert!(false, "completion for a freed connection: {ud:?}");
                        if let Some(first) = cqueue::buffer_select(flags).map(BufId) {
                            let bufs = &mut self.bufs;
                            let mut freed = Vec::new();
                            bufs.consume(first, res.max(0) as u32, |buf, _| freed.push(buf));
                            freed.into_iter().for_each(|buf| bufs.recycle(buf));
                        }
                        return;
                    }
                }
                match kind {
                    OpKind::Recv => self.handle_recv(key, res, flags, more),
                    OpKind::Send => self.handle_send(key, res),
                    OpKind::Shutdown => self.handle_shutdown(key),
                    OpKind::Close => self.handle_close(key),
                    _ => unreachable!("worker ops handled above"),
                }
                self.try_free(key);
            }
            None => debug_assert!(false, "unknown user_data {ud:?}"),
        }
    }

    // ---- submission -------------------------------------------------------

    /// Queues an operation. Never blocks and never drops: what does not fit the
    /// SQ waits in `backlog` until the next submit.
    ///
    /// # Safety
    /// Every pointer in `entry` must stay valid until its final completion.
    unsafe fn push(&mut self, entry: squeue::Entry) {
        self.in_flight += 1;
        if !self.backlog.is_empty() {
            self.backlog.push(entry);
            return;
        }
        // SAFETY: the caller guarantees the entry's pointers outlive the operation.
        if unsafe { self.ring.submission().push(&entry) }.is_err() {
            self.backlog.push(entry);
        }
    }

    fn flush_backlog(&mut self) {
        while !self.backlog.is_empty() {
            let mut sq = self.ring.submission();
            let room = sq.capacity() - sq.len();
            if room == 0 {
                drop(sq);
                if self.ring.submit().is_err() {
                    return;
                }
                continue;
            }
            let n = room.min(self.backlog.len());
            for entry in self.backlog.drain(..n) {
                // SAFETY: the pointers were vouched for when the entry was queued by `push`.
                unsafe { sq.push(&entry) }.expect("room was checked");
            }
        }
    }

    fn arm_accept(&mut self) {
        let entry = opcode::AcceptMulti::new(types::Fd(self.listener.as_raw_fd()))
            .allocate_file_index(true)
            .build()
            .user_data(UserData::worker_op(OpKind::Accept).raw());
        // SAFETY: no pointers; the listener outlives the ring (field order).
        unsafe { self.push(entry) };
        self.accept_armed = true;
        self.accept_paused = false;
    }

    fn arm_wake(&mut self) {
        let fd = self
            .shared
            .shutdown
            .waker(self.shared.worker_id)
            .as_raw_fd();
        let buf: *mut u64 = &mut *self.wake_buf;
        let entry = opcode::Read::new(types::Fd(fd), buf.cast(), 8)
            .build()
            .user_data(UserData::worker_op(OpKind::Wake).raw());
        // SAFETY: `wake_buf` is boxed (never moves) and outlives the ring (field order).
        unsafe { self.push(entry) };
    }

    fn arm_tick(&mut self) {
        if self.tick_armed {
            return;
        }
        let entry = opcode::Timeout::new(&*self.tick)
            .build()
            .user_data(UserData::worker_op(OpKind::Tick).raw());
        // SAFETY: `tick` is boxed and outlives the ring (field order).
        unsafe { self.push(entry) };
        self.tick_armed = true;
    }

    fn conn_op(&self, kind: OpKind, key: usize) -> u64 {
        UserData::new(kind, key as u32, self.conns[key].generation).raw()
    }

    fn arm_recv(&mut self, key: usize) {
        let conn = &self.conns[key];
        let fd = types::Fixed(conn.fixed);
        let buf_size = self.bufs.buf_size();
        let budget = self.shared.config.conn_buffers;
        // What is left of the connection's budget, in bytes.
        let room = budget.saturating_sub(conn.queue.held()).max(1) * buf_size;
        let mut entry = if self.recv_bundle {
            // A bundle may take many buffers in one completion: cap it at
            // what is left of the budget, or one client could take the pool.
            let bundle = opcode::RecvMultiBundle::new(fd, self.bufs.bgid()).build();
            with_sqe_u32(bundle, SQE_LEN_OFFSET, room)
        } else {
            opcode::RecvMulti::new(fd, self.bufs.bgid()).build()
        };
        if self.recv_limit {
            // The receive ends itself once it has taken what is left of the
            // budget: a client that sends without reading cannot pull more
            // into our buffers while a cancel is on its way.
            entry = with_sqe_u32(entry, SQE_OPTLEN_OFFSET, room);
        }
        let entry = entry.user_data(self.conn_op(OpKind::Recv, key));
        // SAFETY: no pointers: the kernel picks buffers from the ring, which
        // outlives the ring's operations (field order).
        unsafe { self.push(entry) };
        let flags = &mut self.conns[key].flags;
        flags.set(Flags::RECV_ARMED);
        if self.recv_limit {
            flags.set(Flags::RECV_LIMITED);
        } else {
            flags.clear(Flags::RECV_LIMITED);
        }
    }

    fn cancel_recv(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if !conn.flags.has(Flags::RECV_ARMED) || conn.flags.has(Flags::RECV_CANCELLING) {
            return;
        }
        conn.flags.set(Flags::RECV_CANCELLING);
        let target = self.conn_op(OpKind::Recv, key);
        let entry = opcode::AsyncCancel::new(target)
            .build()
            .user_data(UserData::worker_op(OpKind::Cancel).raw());
        // SAFETY: no pointers.
        unsafe { self.push(entry) };
    }

    /// Sends what is queued, if no send is in flight: a plain send for one
    /// buffer, one sendmsg over up to MAX_SEND_IOVECS buffers for several.
    fn send_next(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if conn.flags.has(Flags::SEND_IN_FLIGHT) || conn.flags.has(Flags::CLOSING) {
            return;
        }
        let fd = types::Fixed(conn.fixed);
        let user_data = UserData::new(OpKind::Send, key as u32, conn.generation).raw();
        let entry = if conn.queue.held() > 1 {
            let mut v = self.send_vecs.take();
            v.fill(&self.bufs, conn.queue.unsent(MAX_SEND_IOVECS));
            let entry = opcode::SendMsg::new(fd, &v.msg)
                .flags(libc::MSG_NOSIGNAL as u32)
                .build();
            conn.send_vec = Some(v);
            entry
        } else {
            let Some(unsent) = conn.queue.next_unsent() else {
                return;
            };
            let ptr = self.bufs.ptr(unsent.buf, unsent.offset);
            opcode::Send::new(fd, ptr, unsent.len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
        };
        // SAFETY: the entry points into `bufs` (which outlives the ring: field
        // order) and, for a sendmsg, into the boxed `SendVec` the connection
        // holds until this send completes. The buffers stay queued, not
        // recycled, until then: `recycle_queue` keeps `buffers_in_flight`.
        unsafe { self.push(entry.user_data(user_data)) };
        self.conns[key].flags.set(Flags::SEND_IN_FLIGHT);
    }

    // ---- completions ------------------------------------------------------

    fn handle_accept(&mut self, res: i32, more: bool) {
        if !more {
            self.accept_armed = false;
        }
        if res >= 0 {
            WorkerStats::add(&self.shared.stats.direct_fds, 1);
            self.admit(res as u32);
        } else {
            match -res {
                libc::ECANCELED => {}
                // This ring's descriptor table is full: the kernel has already
                // dropped this connection. Retrying now would spin (and drop
                // more), so accepting waits for one of ours to close.
                libc::ENFILE | libc::EMFILE => {
                    WorkerStats::add(&self.shared.stats.rejected, 1);
                    self.accept_paused = true;
                    self.note_table_full();
                }
                // The client gave up before we accepted it: harmless.
                libc::ECONNABORTED | libc::EPERM | libc::EPROTO => {}
                // Out of memory, or an error we do not expect: a close of ours
                // may never come (this worker may hold none), so retry on the
                // next tick instead.
                errno => {
                    if !matches!(errno, libc::ENOMEM | libc::ENOBUFS) {
                        eprintln!(
                            "uring-echo: worker {}: accept failed: {}; retrying in {} ms",
                            self.shared.worker_id,
                            io::Error::from_raw_os_error(errno),
                            TICK.as_millis()
                        );
                    }
                    self.accept_paused = true;
                    self.accept_retry = true;
                    self.arm_tick();
                }
            }
        }
        if !self.accept_armed && !self.accept_paused && self.drain_deadline.is_none() {
            self.arm_accept();
        }
    }

    /// A connection arrived as direct descriptor `fixed`: keep it or refuse it.
    fn admit(&mut self, fixed: u32) {
        let max = self.shared.config.max_conns;
        let over_limit = self.shared.open_conns.fetch_add(1, Ordering::Relaxed) >= max;
        if over_limit || self.drain_deadline.is_some() {
            self.shared.open_conns.fetch_sub(1, Ordering::Relaxed);
            WorkerStats::add(&self.shared.stats.rejected, 1);
            let entry = opcode::Close::new(types::Fixed(fixed))
                .build()
                .user_data(UserData::worker_op(OpKind::CloseRejected).raw());
            // SAFETY: no pointers.
            unsafe { self.push(entry) };
            return;
        }
        WorkerStats::add(&self.shared.stats.accepted, 1);
        let generation = self.next_generation;
        self.next_generation = (self.next_generation + 1) & GENERATION_MASK;
        let key = self.conns.insert(Conn::new(fixed, generation));
        debug_assert!(key <= u32::MAX as usize);
        WorkerStats::set(&self.shared.stats.slab_slots, self.conns.capacity() as u64);
        self.arm_recv(key);
    }

    fn handle_recv(&mut self, key: usize, res: i32, flags: u32, more: bool) {
        let conn = &mut self.conns[key];
        if !more {
            conn.flags.clear(Flags::RECV_ARMED);
            conn.flags.clear(Flags::RECV_CANCELLING);
        }
        if let Some(first) = cqueue::buffer_select(flags).map(BufId) {
            self.take_received(key, first, res.max(0) as u32);
        }
        match res {
            0 => self.conns[key].flags.set(Flags::PEER_EOF),
            len if len > 0 => {
                WorkerStats::add(&self.shared.stats.bytes_in, len as u64);
                self.send_next(key);
                let budget = self.shared.config.conn_buffers;
                let conn = &mut self.conns[key];
                if conn.queue.is_over_budget(budget) && !conn.flags.has(Flags::PAUSED) {
                    conn.flags.set(Flags::PAUSED);
                    WorkerStats::add(&self.shared.stats.backpressured, 1);
                    self.cancel_recv(key);
                }
            }
            err => match -err {
                libc::ENOBUFS => {
                    WorkerStats::add(&self.shared.stats.buffer_starved, 1);
                    let conn = &mut self.conns[key];
                    if !conn.flags.has(Flags::STARVED) {
                        conn.flags.set(Flags::STARVED);
                        self.starved.push_back((key, conn.generation));
                    }
                }
                libc::ECANCELED => {}
                // A kernel before 6.17 refuses a multishot receive's total
                // limit (the field was checked as zero): do without it, and
                // keep the connection. Every receive armed with the limit
                // before the first refusal arrived is refused too.
                libc::EINVAL if self.conns[key].flags.has(Flags::RECV_LIMITED) => {
                    self.recv_limit = false;
                }
                _ => {
                    WorkerStats::add(&self.shared.stats.errors, 1);
                    self.begin_close(key);
                }
            },
        }
        self.advance(key);
    }

    /// Queues the buffers a receive filled (one, or several for a bundle), or
    /// gives them straight back when nothing more is to be echoed.
    fn take_received(&mut self, key: usize, first: BufId, len: u32) {
        let conn = &mut self.conns[key];
        let discard =
            len == 0 || conn.flags.has(Flags::WRITE_SHUT) || conn.flags.has(Flags::CLOSING);
        let mut discarded = std::mem::take(&mut self.discarded);
        let taken = self.bufs.consume(first, len, |buf, n| {
            if discard {
                discarded.push(buf);
            } else {
                conn.queue.push(Chunk { buf, len: n });
            }
        });
        self.free_bufs -= taken;
        for buf in discarded.drain(..) {
            self.give_back(buf);
        }
        self.discarded = discarded;
    }

    fn handle_send(&mut self, key: usize, res: i32) {
        let conn = &mut self.conns[key];
        conn.flags.clear(Flags::SEND_IN_FLIGHT);
        if let Some(v) = conn.send_vec.take() {
            self.send_vecs.give_back(v);
        }
        if res < 0 {
            self.recycle_queue(key);
            if !self.conns[key].flags.has(Flags::CLOSING) {
                WorkerStats::add(&self.shared.stats.errors, 1);
                self.begin_close(key);
            }
            return;
        }
        WorkerStats::add(&self.shared.stats.bytes_out, res as u64);
        let conn = &mut self.conns[key];
        let (bufs, free_bufs) = (&mut self.bufs, &mut self.free_bufs);
        conn.queue.advance_by(res as u32, |buf| {
            bufs.recycle(buf);
            *free_bufs += 1;
        });
        if self.conns[key].flags.has(Flags::CLOSING) {
            self.recycle_queue(key);
            return;
        }
        self.send_next(key);
        self.advance(key);
    }

    fn handle_shutdown(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        conn.flags.clear(Flags::SHUTDOWN_IN_FLIGHT);
        conn.flags.set(Flags::WRITE_SHUT);
        self.advance(key);
    }

    fn handle_close(&mut self, key: usize) {
        self.conns[key].flags.set(Flags::CLOSED);
        WorkerStats::sub(&self.shared.stats.direct_fds, 1);
    }

    fn handle_wake(&mut self) {
        if self.shared.shutdown.is_requested() {
            self.begin_drain();
        } else {
            self.arm_wake();
        }
    }

    fn handle_tick(&mut self) {
        self.tick_armed = false;
        if self.accept_retry && self.drain_deadline.is_none() {
            self.accept_retry = false;
            if !self.accept_armed {
                self.arm_accept();
            }
        }
        let expired = self.drain_deadline.is_some_and(|d| Instant::now() >= d);
        if expired {
            // Whatever has not drained by now is closed as it stands.
            let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
            for key in keys {
                self.begin_close(key);
                self.try_free(key);
            }
        }
        if self.drain_deadline.is_some() && !self.conns.is_empty() {
            self.arm_tick();
        }
    }

    fn arm_udp(&mut self) {
        let Some(udp) = &self.udp else {
            return;
        };
        if self.udp_armed || self.drain_deadline.is_some() {
            return;
        }
        let entry = udp.recv_entry();
        // SAFETY: the entry points at the UDP receive template, boxed inside
        // `udp`, which outlives the ring's operations (field order).
        unsafe { self.push(entry) };
        self.udp_armed = true;
        self.udp_starved = false;
    }

    fn handle_udp_recv(&mut self, res: i32, flags: u32, more: bool) {
        if !more {
            self.udp_armed = false;
        }
        let udp = self
            .udp
            .as_mut()
            .expect("UDP completions only come with --udp");
        let stats = self.shared.stats;
        match udp.on_recv(res, flags) {
            Received::Reply { entry, len } => {
                WorkerStats::add(&stats.udp_in, 1);
                WorkerStats::add(&stats.bytes_in, u64::from(len));
                // SAFETY: the reply points into `udp`'s buffer ring and reply
                // table, which outlive the ring's operations (field order); the
                // buffer is recycled only by `handle_udp_sent`.
                unsafe { self.push(entry) };
            }
            Received::Truncated => WorkerStats::add(&stats.udp_truncated, 1),
            Received::Failed(libc::ENOBUFS) => {
                WorkerStats::add(&stats.buffer_starved, 1);
                self.udp_starved = true;
                self.udp_freed = false;
            }
            Received::Failed(libc::ECANCELED) => {}
            Received::Failed(_) => WorkerStats::add(&stats.udp_dropped, 1),
        }
        if !self.udp_armed && !self.udp_starved {
            self.arm_udp();
        }
    }

    fn handle_udp_sent(&mut self, buf: usize, res: i32) {
        let stats = self.shared.stats;
        if res < 0 {
            WorkerStats::add(&stats.udp_dropped, 1);
        } else {
            WorkerStats::add(&stats.udp_out, 1);
            WorkerStats::add(&stats.bytes_out, res as u64);
        }
        self.udp
            .as_mut()
            .expect("UDP completions only come with --udp")
            .on_sent(buf);
        if self.udp_starved {
            self.arm_udp();
        }
    }

    // ---- transitions ------------------------------------------------------

    /// Decides a connection's next step after any completion: resume receiving,
    /// shut down writes, or close. The one place these rules live.
    fn advance(&mut self, key: usize) {
        let resume_at = self.shared.config.conn_buffers_resume();
        let conn = &mut self.conns[key];
        let f = conn.flags;
        if f.has(Flags::CLOSING) {
            return;
        }
        let idle = conn.queue.is_empty() && !f.has(Flags::SEND_IN_FLIGHT);
        if f.has(Flags::PEER_EOF) {
            if idle && !f.has(Flags::RECV_ARMED) {
                self.begin_close(key);
            }
            return;
        }
        if f.has(Flags::DRAINING) {
            if f.has(Flags::WRITE_SHUT) {
                // Lingering: read (and discard) until the peer's FIN, so that
                // closing does not turn unread bytes into a reset.
                if !f.has(Flags::RECV_ARMED) && !f.has(Flags::STARVED) {
                    self.arm_recv(key);
                }
            } else if idle && !f.has(Flags::RECV_ARMED) && !f.has(Flags::SHUTDOWN_IN_FLIGHT) {
                self.shutdown_write(key);
            }
            return;
        }
        if f.has(Flags::PAUSED) && conn.queue.held() <= resume_at {
            conn.flags.clear(Flags::PAUSED);
        }
        let f = conn.flags;
        if !f.has(Flags::RECV_ARMED) && !f.has(Flags::PAUSED) && !f.has(Flags::STARVED) {
            self.arm_recv(key);
        }
    }

    fn shutdown_write(&mut self, key: usize) {
        let entry = opcode::Shutdown::new(types::Fixed(self.conns[key].fixed), libc::SHUT_WR)
            .build()
            .user_data(self.conn_op(OpKind::Shutdown, key));
        // SAFETY: no pointers.
        unsafe { self.push(entry) };
        self.conns[key].flags.set(Flags::SHUTDOWN_IN_FLIGHT);
    }

    /// Starts closing: stop receiving, drop what is queued (except a buffer a
    /// send still uses), close the descriptor. The slot is freed by `try_free`.
    fn begin_close(&mut self, key: usize) {
        if self.conns[key].flags.has(Flags::CLOSING) {
            return;
        }
        self.conns[key].flags.set(Flags::CLOSING);
        self.cancel_recv(key);
        if self.conns[key].flags.has(Flags::SEND_IN_FLIGHT) {
            // A send to a client that stopped reading would wait forever and
            // keep the slot (and a drain) from finishing.
            let target = self.conn_op(OpKind::Send, key);
            let entry = opcode::AsyncCancel::new(target)
                .build()
                .user_data(UserData::worker_op(OpKind::Cancel).raw());
            // SAFETY: no pointers.
            unsafe { self.push(entry) };
        }
        self.recycle_queue(key);
        let entry = opcode::Close::new(types::Fixed(self.conns[key].fixed))
            .build()
            .user_data(self.conn_op(OpKind::Close, key));
        // SAFETY: no pointers. Operations still in flight hold their own
        // reference to the socket, so closing the slot does not pull it from under them.
        unsafe { self.push(entry) };
    }

    /// Gives back every queued buffer except those a send in flight still uses.
    fn recycle_queue(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let keep = conn.buffers_in_flight();
        let (bufs, free_bufs) = (&mut self.bufs, &mut self.free_bufs);
        for buf in conn.queue.drain(keep) {
            bufs.recycle(buf);
            *free_bufs += 1;
        }
    }

    fn try_free(&mut self, key: usize) {
        if !self.conns.get(key).is_some_and(Conn::is_finished) {
            return;
        }
        let conn = self.conns.remove(key);
        debug_assert!(conn.queue.is_empty());
        WorkerStats::add(&self.shared.stats.closed, 1);
        self.shared.open_conns.fetch_sub(1, Ordering::Relaxed);
        if self.drain_deadline.is_none()
            && let Some(full_at) = self.table_full.room_again(self.conns.len())
        {
            let table = format!("worker {}: descriptor table", self.shared.worker_id);
            let notice = capacity::room_again_notice(&table, self.conns.len(), full_at);
            eprintln!("{notice}");
        }
        if self.accept_paused && self.drain_deadline.is_none() {
            self.arm_accept();
        }
    }

    /// The table had no free slot for an accepted connection: said and counted
    /// once until it has room again (`try_free`).
    fn note_table_full(&mut self) {
        if self.table_full.filled(self.conns.len()) {
            WorkerStats::add(&self.shared.stats.table_full, 1);
            eprintln!(
                "{}",
                capacity::ring_table_full_notice(
                    self.shared.worker_id,
                    self.conns.len(),
                    self.table_slots
                )
            );
        }
    }

    fn give_back(&mut self, buf: BufId) {
        self.bufs.recycle(buf);
        self.free_bufs += 1;
    }

    /// Re-arms receives that ran out of buffers, oldest first, as many as there
    /// are free buffers: arming all of them would only earn most another ENOBUFS.
    fn rearm_starved(&mut self) {
        let mut budget = self.free_bufs;
        while budget > 0 {
            let Some((key, generation)) = self.starved.pop_front() else {
                return;
            };
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.generation != generation {
                continue;
            }
            conn.flags.clear(Flags::STARVED);
            self.advance(key);
            budget -= 1;
        }
    }

    /// Graceful stop: no more accepts; every connection echoes what it has,
    /// sends FIN, and is closed after the peer's FIN or at the drain deadline.
    fn begin_drain(&mut self) {
        self.drain_deadline = Some(Instant::now() + self.shared.config.drain_timeout);
        if self.udp_armed {
            let entry = opcode::AsyncCancel::new(UserData::worker_op(OpKind::UdpRecv).raw())
                .build()
                .user_data(UserData::worker_op(OpKind::Cancel).raw());
            // SAFETY: no pointers.
            unsafe { self.push(entry) };
        }
        if self.accept_armed {
            let entry = opcode::AsyncCancel::new(UserData::worker_op(OpKind::Accept).raw())
                .build()
                .user_data(UserData::worker_op(OpKind::Cancel).raw());
            // SAFETY: no pointers.
            unsafe { self.push(entry) };
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.conns[key].flags.set(Flags::DRAINING);
            self.cancel_recv(key);
            self.advance(key);
        }
        if self.drain_deadline.is_some() && !self.conns.is_empty() {
            self.arm_tick();
        }
    }
}
