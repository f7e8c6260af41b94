//! The io_uring event loop of one worker thread: submit and wait → for each
//! completion, dispatch on its kind → publish recycled buffers once per batch.
//!
//! Operations a connection can have in flight: one multishot receive, at most one
//! send, a shutdown, a close. Every transition goes through the handlers below;
//! the slot is freed by `try_free` once nothing is left in the kernel.
//! This module does not set the ring up (`setup`), own memory the kernel
//! points into, or push entries (`ring`): it only decides.
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use slab::Slab;
use socket2::Socket;

use super::WaitBatch;
use super::conn::{Conn, Flags, MAX_SEND_IOVECS, SendVec, Step, next_step};
use super::op_kind::OpKind;
use super::udp::{Received, UdpEcho};
use super::wait_policy::WaitPolicy;
use crate::echo_queue::{BufId, Chunk};
use crate::ring::user_data::{GENERATION_MASK, UserData};
use crate::ring::{BufGroup, Completion, Part, RecvLimits, Ring, Sock, TimerId};
use crate::server::Shared;
use crate::server::capacity::{self, TableFull};
use crate::server::stats::WorkerStats;

/// How often a draining worker checks its drain deadline, and how long a
/// failed accept waits before it is retried.
const TICK: Duration = Duration::from_millis(50);

/// Where the multishot accept stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Accept {
    /// Armed in the kernel.
    Armed,
    /// Not armed: it ended (re-armed at once unless draining), or never started.
    Stopped,
    /// The descriptor table or the open-files limit is full: resumed by the
    /// next close instead of retried in a loop.
    PausedUntilClose,
    /// Failed for another reason: retried at the next tick (or the next close).
    RetryAtTick,
}

/// What to do after the eventfd read completed with `res` (no stop requested).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WakeAction {
    /// 8 bytes read: a spurious wake; wait again.
    Rearm,
    /// EAGAIN (the kernel did not wait) or another error: retry at the next
    /// tick, never in a loop.
    RearmAtTick,
    /// Cancelled: the ring is being torn down.
    Nothing,
}

fn wake_action(res: i32) -> WakeAction {
    match res {
        8 => WakeAction::Rearm,
        r if r == -libc::ECANCELED => WakeAction::Nothing,
        _ => WakeAction::RearmAtTick,
    }
}

pub struct Worker<'a> {
    /// The ring and all memory its operations point into; torn down (every
    /// operation cancelled and reaped) before that memory goes.
    ring: Ring,
    /// The receive buffers' group in `ring`.
    bufs: BufGroup,
    /// UDP echo on the same port, with `--udp`.
    udp: Option<UdpEcho>,
    tick: TimerId,
    listener: Socket,
    shared: Shared<'a>,
    conns: Slab<Conn>,
    next_generation: u32,
    /// Buffers the kernel may still pick; a hint for re-arming starved receives.
    free_bufs: u32,
    /// Connections whose receive ended with ENOBUFS, oldest first, as (key, generation).
    starved: std::collections::VecDeque<(usize, u32)>,
    accept: Accept,
    /// This ring's direct-descriptor table: its size, and whether it is full.
    table_slots: u32,
    table_full: TableFull,
    drain_deadline: Option<Instant>,
    tick_armed: bool,
    /// The eventfd read failed: re-armed at the next tick, not at once.
    wake_retry: bool,
    cqes: Vec<Completion>,
    /// Scratch list of buffers a receive filled but nothing will echo.
    discarded: Vec<BufId>,
    /// Receive bundles (6.10+): one completion for several buffers.
    recv_bundle: bool,
    /// Multishot receives carry a total byte limit (6.17+); switched off at the
    /// first EINVAL from an older kernel.
    recv_limit: bool,
    /// Whether the next wait asks for a batch (`--wait-batch`).
    wait_policy: WaitPolicy,
    /// How long a batch wait waits once the first completion is in (`--min-wait`).
    min_wait: Duration,
}

impl<'a> Worker<'a> {
    pub fn new(
        mut ring: Ring,
        bufs: BufGroup,
        udp: Option<UdpEcho>,
        listener: Socket,
        recv_bundle: bool,
        wait: WaitBatch,
        shared: Shared<'a>,
    ) -> Worker<'a> {
        let free_bufs = shared.config.buf_count;
        let table_slots =
            crate::server::uring::direct_table_slots(shared.config, crate::sys::open_files_limit());
        let tick = ring.add_timer(TICK);
        Worker {
            ring,
            bufs,
            udp,
            tick,
            listener,
            shared,
            conns: Slab::new(),
            next_generation: 1,
            free_bufs,
            starved: Default::default(),
            accept: Accept::Stopped,
            table_slots,
            table_full: TableFull::default(),
            drain_deadline: None,
            tick_armed: false,
            wake_retry: false,
            cqes: Vec::with_capacity(1024),
            discarded: Vec::new(),
            recv_bundle,
            recv_limit: true,
            wait_policy: WaitPolicy::new(wait.batch),
            min_wait: wait.min_wait,
        }
    }

    /// Runs until a graceful stop has drained every connection. On every way
    /// out, an error included, what is still in flight is cancelled and reaped
    /// before the memory it points into can go.
    pub fn run(mut self) -> io::Result<()> {
        let result = self.event_loop();
        let left = self.ring.teardown();
        debug_assert_eq!(left, 0, "operations outlived teardown");
        result
    }

    fn event_loop(&mut self) -> io::Result<()> {
        self.arm_accept();
        self.arm_wake();
        self.arm_udp();
        while !(self.drain_deadline.is_some()
            && self.conns.is_empty()
            && self.ring.in_flight() == 0)
        {
            if !self.spin_for_completions()? {
                self.wait_for_completions()?;
            }
            self.reap();
            self.ring.buffers_mut(self.bufs).publish();
            if let Some(udp) = &mut self.udp {
                udp.publish(&mut self.ring);
            }
            self.rearm_starved();
        }
        Ok(())
    }

    /// Submits what is queued and waits for `want` completions.
    fn enter(&mut self, want: usize) -> io::Result<()> {
        self.ring.submit_and_wait(want, None)
    }

    /// Submits what is queued and sleeps until completions arrive: the first,
    /// or, while the worker is saturated (`WaitPolicy`), `--wait-batch` of
    /// them or as many as came within `--min-wait` of the first (6.12+).
    /// With DEFER_TASKRUN the kernel does not even wake us before that, so a
    /// burst's echoes leave in one turn, back to back, and the receiving
    /// host's CPU takes one wake-up (a cross-CPU interrupt, in a VM an exit)
    /// for many of them instead of one each.
    fn wait_for_completions(&mut self) -> io::Result<()> {
        match self.wait_policy.next_wait(Instant::now()) {
            Some(batch) => self
                .ring
                .submit_and_wait_batch(batch as usize, self.min_wait),
            None => self.enter(1),
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
            if self.ring.completion_ready() {
                return Ok(true);
            }
            if self.ring.taskrun() {
                // Task work need not post a completion (a poll that re-arms):
                // the deadline is checked on every turn all the same.
                self.enter(0)?;
                if self.ring.completion_ready() {
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
        if self.ring.cq_overflowed() {
            WorkerStats::add(&self.shared.stats.cq_overflowed, 1);
        }
        let mut cqes = std::mem::take(&mut self.cqes);
        self.ring.completions(&mut cqes);
        let mut receives = 0;
        for c in &cqes {
            receives += u32::from(c.user_data.kind() == Some(OpKind::Recv) && c.result > 0);
            self.handle_cqe(c);
        }
        self.wait_policy
            .after_turn(cqes.len(), receives, Instant::now());
        self.cqes = cqes;
    }

    fn handle_cqe(&mut self, c: &Completion) {
        let (ud, res, more) = (c.user_data, c.result, c.more());
        match ud.kind() {
            Some(OpKind::Accept) => self.handle_accept(res, more),
            Some(OpKind::Wake) => self.handle_wake(res),
            Some(OpKind::Tick) => self.handle_tick(),
            Some(OpKind::UdpRecv) => self.handle_udp_recv(res, c.buffer(), more),
            Some(OpKind::UdpSend) => self.handle_udp_sent(ud.key() as usize, res),
            Some(OpKind::CloseRejected) => WorkerStats::sub(&self.shared.stats.direct_fds, 1),
            Some(OpKind::Cancel) => {}
            Some(kind) => {
                let key = ud.key() as usize;
                match self.conns.get(key) {
                    Some(conn) if conn.owns(ud) => {}
                    _ => {
                        debug_assert!(false, "completion for a freed connection: {ud:?}");
                        if let Some(first) = c.buffer() {
                            let bufs = self.ring.buffers_mut(self.bufs);
                            let mut freed = Vec::new();
                            bufs.consume(first, res.max(0) as u32, |buf, _| freed.push(buf));
                            freed.into_iter().for_each(|buf| bufs.recycle(buf));
                        }
                        return;
                    }
                }
                match kind {
                    OpKind::Recv => self.handle_recv(key, res, c.buffer(), more),
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

    fn arm_accept(&mut self) {
        let ud = UserData::worker_op(OpKind::Accept);
        self.ring.accept_multi(self.listener.as_raw_fd(), true, ud);
        self.accept = Accept::Armed;
    }

    fn arm_wake(&mut self) {
        let fd = self
            .shared
            .shutdown
            .waker(self.shared.worker_id)
            .as_raw_fd();
        self.ring
            .read_eventfd(fd, UserData::worker_op(OpKind::Wake));
    }

    fn arm_tick(&mut self) {
        if self.tick_armed {
            return;
        }
        self.ring
            .timeout(self.tick, UserData::worker_op(OpKind::Tick));
        self.tick_armed = true;
    }

    fn conn_op(&self, kind: OpKind, key: usize) -> UserData {
        UserData::new(kind, key as u32, self.conns[key].generation)
    }

    fn arm_recv(&mut self, key: usize) {
        let conn = &self.conns[key];
        let buf_size = self.ring.buffers(self.bufs).buf_size();
        let budget = self.shared.config.conn_buffers;
        // What is left of the connection's budget, in bytes.
        let room = budget.saturating_sub(conn.queue.held()).max(1) * buf_size;
        let limits = RecvLimits {
            // A bundle may take many buffers in one completion: cap it at
            // what is left of the budget, or one client could take the pool.
            bundle_bytes: self.recv_bundle.then_some(room),
            // The receive ends itself once it has taken what is left of the
            // budget: a client that sends without reading cannot pull more
            // into our buffers while a cancel is on its way.
            total_bytes: self.recv_limit.then_some(room),
        };
        let (sock, ud) = (Sock::Fixed(conn.fixed), self.conn_op(OpKind::Recv, key));
        self.ring.recv_multi(sock, self.bufs, limits, ud);
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
        self.ring
            .cancel(target, UserData::worker_op(OpKind::Cancel));
    }

    /// Sends what is queued, if no send is in flight: a plain send for one
    /// buffer, one sendmsg over up to MAX_SEND_IOVECS buffers for several.
    fn send_next(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if conn.flags.has(Flags::SEND_IN_FLIGHT) || conn.flags.has(Flags::CLOSING) {
            return;
        }
        let sock = Sock::Fixed(conn.fixed);
        let ud = UserData::new(OpKind::Send, key as u32, conn.generation);
        let group = self.bufs;
        // The buffers stay queued, not recycled, until this send completes:
        // `recycle_queue` keeps `buffers_in_flight`.
        if conn.queue.held() > 1 {
            let msg = self.ring.take_msg(MAX_SEND_IOVECS, 0);
            let parts = conn.queue.unsent(MAX_SEND_IOVECS).map(|u| Part::Buffer {
                group,
                buf: u.buf,
                offset: u.offset,
                len: u.len,
            });
            let buffers = self.ring.fill_msg(msg, None, parts) as u16;
            conn.send_vec = Some(SendVec { msg, buffers });
            self.ring.sendmsg(sock, msg, ud);
        } else {
            let Some(u) = conn.queue.next_unsent() else {
                return;
            };
            self.ring
                .send_buffer(sock, group, u.buf, u.offset, u.len, ud);
        }
        self.conns[key].flags.set(Flags::SEND_IN_FLIGHT);
    }

    // ---- completions ------------------------------------------------------

    fn handle_accept(&mut self, res: i32, more: bool) {
        if !more && self.accept == Accept::Armed {
            self.accept = Accept::Stopped;
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
                    self.accept = Accept::PausedUntilClose;
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
                    self.accept = Accept::RetryAtTick;
                    self.arm_tick();
                }
            }
        }
        if self.accept == Accept::Stopped && self.drain_deadline.is_none() {
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
            let ud = UserData::worker_op(OpKind::CloseRejected);
            self.ring.close(Sock::Fixed(fixed), ud);
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

    fn handle_recv(&mut self, key: usize, res: i32, first: Option<BufId>, more: bool) {
        let conn = &mut self.conns[key];
        if !more {
            conn.flags.clear(Flags::RECV_ARMED);
            conn.flags.clear(Flags::RECV_CANCELLING);
        }
        if let Some(first) = first {
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
        let taken = self
            .ring
            .buffers_mut(self.bufs)
            .consume(first, len, |buf, n| {
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
            self.ring.give_back_msg(v.msg);
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
        let (bufs, free_bufs) = (self.ring.buffers_mut(self.bufs), &mut self.free_bufs);
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

    /// The eventfd read completed. Its result is checked: a kernel that
    /// answers a read of an empty non-blocking eventfd with EAGAIN instead of
    /// waiting (liburing issue #143) would make re-arming at once a spin, so
    /// anything but a value read (or the cancel of a stop) re-arms at the next
    /// tick instead.
    fn handle_wake(&mut self, res: i32) {
        if self.shared.shutdown.is_requested() {
            self.begin_drain();
            return;
        }
        match wake_action(res) {
            WakeAction::Rearm => self.arm_wake(),
            WakeAction::RearmAtTick => {
                self.wake_retry = true;
                self.arm_tick();
            }
            WakeAction::Nothing => {}
        }
    }

    fn handle_tick(&mut self) {
        self.tick_armed = false;
        if std::mem::take(&mut self.wake_retry) {
            self.arm_wake();
        }
        if self.accept == Accept::RetryAtTick && self.drain_deadline.is_none() {
            self.arm_accept();
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
        let Some(udp) = &mut self.udp else {
            return;
        };
        if udp.is_armed() || self.drain_deadline.is_some() {
            return;
        }
        udp.arm_recv(&mut self.ring);
    }

    fn handle_udp_recv(&mut self, res: i32, buf: Option<BufId>, more: bool) {
        let udp = self
            .udp
            .as_mut()
            .expect("UDP completions only come with --udp");
        let stats = self.shared.stats;
        let received = udp.on_recv(&mut self.ring, res, buf, more);
        let idle = udp.is_idle();
        match received {
            Received::Reply { len } => {
                WorkerStats::add(&stats.udp_in, 1);
                WorkerStats::add(&stats.bytes_in, u64::from(len));
            }
            Received::Truncated => WorkerStats::add(&stats.udp_truncated, 1),
            Received::Failed(libc::ENOBUFS) => WorkerStats::add(&stats.buffer_starved, 1),
            Received::Failed(libc::ECANCELED) => {}
            Received::Failed(_) => WorkerStats::add(&stats.udp_dropped, 1),
        }
        if idle {
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
            .on_sent(&mut self.ring, buf);
        // A receive that ran dry is re-armed once a reply gave a buffer back
        // (submitted at the next enter, after the buffer is published).
        if self.udp.as_ref().is_some_and(UdpEcho::is_starved) {
            self.arm_udp();
        }
    }

    // ---- transitions ------------------------------------------------------

    /// Takes a connection's next step after any completion, as decided by
    /// [`next_step`], where the rules live.
    fn advance(&mut self, key: usize) {
        let resume_at = self.shared.config.conn_buffers_resume();
        let conn = &mut self.conns[key];
        let next = next_step(conn.flags, conn.queue.held(), resume_at);
        if next.resume {
            conn.flags.clear(Flags::PAUSED);
        }
        match next.step {
            Step::Wait => {}
            Step::ArmRecv => self.arm_recv(key),
            Step::ShutdownWrite => self.shutdown_write(key),
            Step::Close => self.begin_close(key),
        }
    }

    fn shutdown_write(&mut self, key: usize) {
        let (sock, ud) = (
            Sock::Fixed(self.conns[key].fixed),
            self.conn_op(OpKind::Shutdown, key),
        );
        self.ring.shutdown(sock, libc::SHUT_WR, ud);
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
            self.ring
                .cancel(target, UserData::worker_op(OpKind::Cancel));
        }
        self.recycle_queue(key);
        let (sock, ud) = (
            Sock::Fixed(self.conns[key].fixed),
            self.conn_op(OpKind::Close, key),
        );
        self.ring.close(sock, ud);
    }

    /// Gives back every queued buffer except those a send in flight still uses.
    fn recycle_queue(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let keep = conn.buffers_in_flight();
        let (bufs, free_bufs) = (self.ring.buffers_mut(self.bufs), &mut self.free_bufs);
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
        // Either pause ends at a close (a retry need not wait for its tick).
        let paused = matches!(self.accept, Accept::PausedUntilClose | Accept::RetryAtTick);
        if paused && self.drain_deadline.is_none() {
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
        self.ring.buffers_mut(self.bufs).recycle(buf);
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
        let cancel = UserData::worker_op(OpKind::Cancel);
        if self.udp.as_ref().is_some_and(UdpEcho::is_armed) {
            self.ring
                .cancel(UserData::worker_op(OpKind::UdpRecv), cancel);
        }
        if self.accept == Accept::Armed {
            self.ring
                .cancel(UserData::worker_op(OpKind::Accept), cancel);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_eventfd_read_that_did_not_wait_is_retried_at_the_tick_not_at_once() {
        assert_eq!(wake_action(8), WakeAction::Rearm);
        assert_eq!(wake_action(-libc::EAGAIN), WakeAction::RearmAtTick);
        assert_eq!(wake_action(-libc::EBADF), WakeAction::RearmAtTick);
        assert_eq!(wake_action(0), WakeAction::RearmAtTick, "a short read");
        assert_eq!(wake_action(-libc::ECANCELED), WakeAction::Nothing);
    }
}
