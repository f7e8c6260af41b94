//! The worker's own operations, beside its connections': the multishot
//! accept and what a full descriptor table does to it, the eventfd that
//! wakes the worker for a stop, the tick, the graceful drain, and UDP echo.
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;
use std::time::Instant;

use super::{Accept, TICK, WakeAction, Worker, wake_action};
use crate::echo_queue::BufId;
use crate::ring::user_data::UserData;
use crate::server::capacity;
use crate::server::stats::WorkerStats;
use crate::server::uring::conn::Flags;
use crate::server::uring::op_kind::OpKind;
use crate::server::uring::udp::{Received, UdpEcho};

impl Worker<'_> {
    pub(super) fn arm_accept(&mut self) {
        let ud = UserData::worker_op(OpKind::Accept);
        self.ring.accept_multi(self.listener.as_raw_fd(), true, ud);
        self.accept = Accept::Armed;
    }

    pub(super) fn arm_wake(&mut self) {
        let fd = self
            .shared
            .shutdown
            .waker(self.shared.worker_id)
            .as_raw_fd();
        self.ring
            .read_eventfd(fd, UserData::worker_op(OpKind::Wake));
    }

    pub(super) fn arm_tick(&mut self) {
        if self.tick_armed {
            return;
        }
        self.ring
            .timeout(self.tick, UserData::worker_op(OpKind::Tick));
        self.tick_armed = true;
    }

    pub(super) fn handle_accept(&mut self, res: i32, more: bool) {
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

    /// The eventfd read completed. Its result is checked: a kernel that
    /// answers a read of an empty non-blocking eventfd with EAGAIN instead of
    /// waiting (liburing issue #143) would make re-arming at once a spin, so
    /// anything but a value read (or the cancel of a stop) re-arms at the next
    /// tick instead.
    pub(super) fn handle_wake(&mut self, res: i32) {
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

    pub(super) fn handle_tick(&mut self) {
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

    pub(super) fn arm_udp(&mut self) {
        let Some(udp) = &mut self.udp else {
            return;
        };
        if udp.is_armed() || self.drain_deadline.is_some() {
            return;
        }
        udp.arm_recv(&mut self.ring);
    }

    pub(super) fn handle_udp_recv(&mut self, res: i32, buf: Option<BufId>, more: bool) {
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

    pub(super) fn handle_udp_sent(&mut self, buf: usize, res: i32) {
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

    /// The table had no free slot for an accepted connection: said and counted
    /// once until it has room again (`try_free`).
    pub(super) fn note_table_full(&mut self) {
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

    /// Graceful stop: no more accepts; every connection echoes what it has,
    /// sends FIN, and is closed after the peer's FIN or at the drain deadline.
    pub(super) fn begin_drain(&mut self) {
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
