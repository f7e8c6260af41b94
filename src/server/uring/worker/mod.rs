//! The io_uring event loop of one worker thread: submit and wait → for each
//! completion, dispatch on its kind → publish recycled buffers once per batch.
//!
//! Operations a connection can have in flight: one multishot receive, at most one
//! send, a shutdown, a close. Every transition goes through the handlers of
//! [`connection`]; the slot is freed by `try_free` once nothing is left in the
//! kernel. A zero-copy send's completions are [`zero_copy`]'s (its
//! notification may come after the connection is gone). The worker's own
//! operations (accept, wake-up, tick, drain, UDP) are in [`control`]; this
//! file holds the loop, the wait and the dispatch.
//! This module does not set the ring up (`setup`), own memory the kernel
//! points into, or push entries (`ring`): it only decides.
#![forbid(unsafe_code)]

mod connection;
mod control;
mod zero_copy;

use std::io;
use std::time::{Duration, Instant};

use slab::Slab;
use socket2::Socket;

use super::batch_trial::Turn;
use super::conn::Conn;
use super::op_kind::OpKind;
use super::udp::UdpEcho;
use super::wait_policy::WaitPolicy;
use super::zc_sends::ZcSends;
use crate::echo_queue::BufId;
use crate::ring::user_data::UserData;
use crate::ring::{BufGroup, Completion, Ring, TimerId};
use crate::server::Shared;
use crate::server::capacity::TableFull;
use crate::server::config::WaitBatch;
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
    /// `--send-zc`: sends of at least this many bytes go zero-copy; None once
    /// the kernel refused one for lack of locked memory (see `handle_send_cqe`).
    send_zc: Option<u32>,
    /// Zero-copy sends waiting for a completion, and the buffers they pin.
    zc: ZcSends,
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
            send_zc: shared.config.send_zc,
            zc: ZcSends::new(shared.config.buf_count),
            wait_policy: WaitPolicy::new(wait.batch, Instant::now()),
            min_wait: wait.min_wait,
        }
    }

    /// Runs until a graceful stop has drained every connection. On every way
    /// out, an error included, what is still in flight is cancelled and reaped
    /// before the memory it points into can go.
    pub fn run(mut self) -> io::Result<()> {
        let result = self.event_loop();
        let left = self.ring.teardown();
        debug_assert!(left <= self.zc.waiting(), "operations outlived teardown");
        result
    }

    fn event_loop(&mut self) -> io::Result<()> {
        self.arm_accept();
        self.arm_wake();
        self.arm_udp();
        // Zero-copy sends whose connections are gone may still wait for their
        // notifications: TCP posts one when the data is acknowledged, which a
        // client that stopped reading delays until the kernel gives up on
        // it, minutes later. The kernel holds the pages it sends from, not
        // this memory, so the loop does not wait for them; the teardown
        // gives them its few seconds.
        while !(self.drain_deadline.is_some()
            && self.conns.is_empty()
            && self.ring.in_flight() == self.zc.waiting())
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
        match self.wait_policy.next_wait(Instant::now) {
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
        let mut turn = Turn::default();
        for c in &cqes {
            let receive = matches!(c.user_data.kind(), Some(OpKind::Recv | OpKind::UdpRecv));
            if receive && c.result > 0 {
                turn.receives += 1;
                turn.bytes += c.result as u64;
            }
            self.handle_cqe(c);
        }
        if let Some((trials, kept)) = self.wait_policy.after_turn(cqes.len(), turn, Instant::now) {
            let stats = &self.shared.stats;
            WorkerStats::set(&stats.batch_trials, trials);
            WorkerStats::set(&stats.batch_kept, kept);
        }
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
            Some(OpKind::SendZc) => self.handle_zc_cqe(ud.key(), c),
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

    fn conn_op(&self, kind: OpKind, key: usize) -> UserData {
        UserData::new(kind, key as u32, self.conns[key].generation)
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
