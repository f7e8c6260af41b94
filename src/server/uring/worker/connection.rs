//! One connection's operations, completions and transitions: arming its
//! multishot receive, sending what it has queued, handling what completes,
//! and closing it; [`super::super::conn::next_step`] decides each next step.
#![forbid(unsafe_code)]

use std::sync::atomic::Ordering;

use super::{Accept, Worker};
use crate::echo_queue::{BufId, Chunk};
use crate::ring::user_data::{GENERATION_MASK, UserData};
use crate::ring::{Part, RecvLimits, SendMode, Sock};
use crate::server::capacity;
use crate::server::stats::WorkerStats;
use crate::server::uring::conn::{Conn, Flags, MAX_SEND_IOVECS, SendVec, Step, next_step};
use crate::server::uring::op_kind::OpKind;
use crate::server::uring::zc_sends::MAX_ZC_PER_CONN;

impl Worker<'_> {
    pub(super) fn arm_recv(&mut self, key: usize) {
        let conn = &self.conns[key];
        let buf_size = self.ring.buffers(self.bufs).buf_size();
        let budget = self.shared.config.conn_buffers;
        // What is left of the connection's budget, in bytes.
        let room = budget.saturating_sub(conn.held()).max(1) * buf_size;
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

    pub(super) fn cancel_recv(&mut self, key: usize) {
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
    /// buffer, one sendmsg over up to MAX_SEND_IOVECS buffers for several;
    /// zero-copy when `--send-zc` is given, the send carries that much, and
    /// the connection has fewer than `MAX_ZC_PER_CONN` waiting for their
    /// notifications.
    pub(super) fn send_next(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if conn.flags.has(Flags::SEND_IN_FLIGHT) || conn.flags.has(Flags::CLOSING) {
            return;
        }
        let sock = Sock::Fixed(conn.fixed);
        let group = self.bufs;
        let several = conn.queue.held() > 1;
        // Zero-copy: the buffers this send covers, and whether it carries enough.
        let mut covered = [BufId(0); MAX_SEND_IOVECS];
        let mut n = 0;
        if let Some(zc_from) = self.send_zc.filter(|_| conn.zc_pending < MAX_ZC_PER_CONN) {
            let mut bytes = 0;
            for u in conn.queue.unsent(MAX_SEND_IOVECS) {
                covered[n] = u.buf;
                n += 1;
                bytes += u.len;
            }
            if bytes < zc_from {
                n = 0;
            }
        }
        let mode = if n > 0 {
            SendMode::ZeroCopy
        } else {
            SendMode::Copy
        };
        let ud = match mode {
            SendMode::ZeroCopy => {
                let id = self.zc.start(key, conn.generation, &covered[..n]);
                conn.zc_send = id;
                conn.flags.set(Flags::SEND_ZC);
                conn.zc_pending += 1;
                UserData::new(OpKind::SendZc, id, 0)
            }
            SendMode::Copy => UserData::new(OpKind::Send, key as u32, conn.generation),
        };
        // The buffers stay queued, not recycled, until this send's result
        // comes (`recycle_queue` keeps `buffers_in_flight`); a zero-copy
        // send's then stay pinned in `zc` until its notification.
        if several {
            let msg = self.ring.take_msg(MAX_SEND_IOVECS, 0);
            let parts = conn.queue.unsent(MAX_SEND_IOVECS).map(|u| Part::Buffer {
                group,
                buf: u.buf,
                offset: u.offset,
                len: u.len,
            });
            let buffers = self.ring.fill_msg(msg, None, parts) as u16;
            conn.send_vec = Some(SendVec { msg, buffers });
            self.ring.sendmsg(sock, msg, mode, ud);
        } else {
            let Some(u) = conn.queue.next_unsent() else {
                return;
            };
            self.ring.send_buffer(sock, group, u, mode, ud);
        }
        self.conns[key].flags.set(Flags::SEND_IN_FLIGHT);
    }

    /// A connection arrived as direct descriptor `fixed`: keep it or refuse it.
    pub(super) fn admit(&mut self, fixed: u32) {
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

    pub(super) fn handle_recv(&mut self, key: usize, res: i32, first: Option<BufId>, more: bool) {
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
                if conn.held() >= budget && !conn.flags.has(Flags::PAUSED) {
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
    pub(super) fn take_received(&mut self, key: usize, first: BufId, len: u32) {
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

    pub(super) fn handle_send(&mut self, key: usize, res: i32) {
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
        let (zc, zc_held) = (&mut self.zc, &mut conn.zc_held);
        conn.queue.advance_by(res as u32, |buf| {
            if zc.release(buf) {
                bufs.recycle(buf);
                *free_bufs += 1;
            } else {
                *zc_held += 1;
            }
        });
        if self.conns[key].flags.has(Flags::CLOSING) {
            self.recycle_queue(key);
            return;
        }
        self.send_next(key);
        self.advance(key);
    }

    pub(super) fn handle_shutdown(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        conn.flags.clear(Flags::SHUTDOWN_IN_FLIGHT);
        conn.flags.set(Flags::WRITE_SHUT);
        self.advance(key);
    }

    pub(super) fn handle_close(&mut self, key: usize) {
        self.conns[key].flags.set(Flags::CLOSED);
        WorkerStats::sub(&self.shared.stats.direct_fds, 1);
    }

    /// Takes a connection's next step after any completion, as decided by
    /// [`next_step`], where the rules live.
    pub(super) fn advance(&mut self, key: usize) {
        let resume_at = self.shared.config.conn_buffers_resume();
        let conn = &mut self.conns[key];
        let next = next_step(conn.flags, conn.held(), resume_at);
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

    pub(super) fn shutdown_write(&mut self, key: usize) {
        let (sock, ud) = (
            Sock::Fixed(self.conns[key].fixed),
            self.conn_op(OpKind::Shutdown, key),
        );
        self.ring.shutdown(sock, libc::SHUT_WR, ud);
        self.conns[key].flags.set(Flags::SHUTDOWN_IN_FLIGHT);
    }

    /// Starts closing: stop receiving, drop what is queued (except a buffer a
    /// send still uses), close the descriptor. The slot is freed by `try_free`.
    pub(super) fn begin_close(&mut self, key: usize) {
        if self.conns[key].flags.has(Flags::CLOSING) {
            return;
        }
        self.conns[key].flags.set(Flags::CLOSING);
        self.cancel_recv(key);
        if self.conns[key].flags.has(Flags::SEND_IN_FLIGHT) {
            // A send to a client that stopped reading would wait forever and
            // keep the slot (and a drain) from finishing.
            let conn = &self.conns[key];
            let target = if conn.flags.has(Flags::SEND_ZC) {
                UserData::new(OpKind::SendZc, conn.zc_send, 0)
            } else {
                self.conn_op(OpKind::Send, key)
            };
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
    pub(super) fn recycle_queue(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let keep = conn.buffers_in_flight();
        let (bufs, free_bufs) = (self.ring.buffers_mut(self.bufs), &mut self.free_bufs);
        for buf in conn.queue.drain(keep) {
            if self.zc.release(buf) {
                bufs.recycle(buf);
                *free_bufs += 1;
            } else {
                conn.zc_held += 1;
            }
        }
    }

    pub(super) fn try_free(&mut self, key: usize) {
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

    pub(super) fn give_back(&mut self, buf: BufId) {
        self.ring.buffers_mut(self.bufs).recycle(buf);
        self.free_bufs += 1;
    }

    /// Re-arms receives that ran out of buffers, oldest first, as many as there
    /// are free buffers: arming all of them would only earn most another ENOBUFS.
    pub(super) fn rearm_starved(&mut self) {
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
}
