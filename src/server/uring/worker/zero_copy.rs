//! A zero-copy send's two completions (`--send-zc`): its result, which the
//! connection takes as any send's, and its notification, which gives the
//! buffers the send pinned back to the pool (`zc_sends` keeps the pins); and
//! the fallback when the kernel refuses one for lack of locked memory.
#![forbid(unsafe_code)]

use super::Worker;
use crate::ring::Completion;
use crate::server::stats::WorkerStats;
use crate::server::uring::conn::Flags;

impl Worker<'_> {
    /// A zero-copy send's completion. The first is its result: the
    /// connection takes it as any send's and may send again at once. The
    /// second, the notification, says the kernel has let go of the pages:
    /// only then do the buffers it covered go back to the pool.
    pub(super) fn handle_zc_cqe(&mut self, id: u32, c: &Completion) {
        let Some(&send) = self.zc.get(id) else {
            debug_assert!(false, "completion of an unknown zero-copy send {id}");
            return;
        };
        if c.notif() {
            if send.sent {
                WorkerStats::add(&self.shared.stats.zc_sends, 1);
                if c.zc_copied() {
                    WorkerStats::add(&self.shared.stats.zc_copied, 1);
                }
            }
            return self.finish_zc(id);
        }
        self.zc.result(id, c.result > 0);
        let key = send.conn;
        let owner = self
            .conns
            .get_mut(key)
            .filter(|conn| conn.generation == send.generation);
        debug_assert!(owner.is_some(), "a send in flight keeps its connection");
        let owned = owner.is_some();
        if let Some(conn) = owner {
            conn.flags.clear(Flags::SEND_ZC);
            if c.result == -libc::ENOMEM {
                self.zc_refused(key);
            } else {
                self.handle_send(key, c.result);
            }
        }
        if !c.more() {
            // No notification follows (a kernel that posts none on failure).
            self.finish_zc(id);
        }
        if owned {
            self.try_free(key);
        }
    }

    /// Zero-copy send `id` is over: the buffers nothing else pins go back.
    pub(super) fn finish_zc(&mut self, id: u32) {
        let (bufs, free_bufs) = (self.ring.buffers_mut(self.bufs), &mut self.free_bufs);
        let mut freed = 0;
        let Some(send) = self.zc.finish(id, |buf| {
            bufs.recycle(buf);
            *free_bufs += 1;
            freed += 1;
        }) else {
            return;
        };
        if let Some(conn) = self.conns.get_mut(send.conn)
            && conn.generation == send.generation
        {
            conn.zc_pending -= 1;
            // The buffers it freed were held on this connection's account.
            conn.zc_held -= freed;
            // A connection paused over its budget may resume now.
            self.advance(send.conn);
        }
    }

    /// The kernel refused a zero-copy send with ENOMEM: for a user without
    /// CAP_IPC_LOCK it charges the pages of every zero-copy send in flight to
    /// RLIMIT_MEMLOCK, and the limit was reached. Nothing was sent; the
    /// connection keeps its data, this worker copies from now on, and says so.
    /// The refused send's notification still comes, and unpins its buffers.
    pub(super) fn zc_refused(&mut self, key: usize) {
        if self.send_zc.take().is_some() {
            eprintln!(
                "worker {}: --send-zc: a zero-copy send was refused for lack of locked memory \
                 (RLIMIT_MEMLOCK, which zero-copy sends in flight are charged to without \
                 CAP_IPC_LOCK); this worker copies its sends from now on. Raise `ulimit -l` \
                 (docs/kernel-tuning.md, Locked memory) to keep them zero-copy",
                self.shared.worker_id
            );
        }
        let conn = &mut self.conns[key];
        conn.flags.clear(Flags::SEND_IN_FLIGHT);
        if let Some(v) = conn.send_vec.take() {
            self.ring.give_back_msg(v.msg);
        }
        if self.conns[key].flags.has(Flags::CLOSING) {
            self.recycle_queue(key);
            return;
        }
        self.send_next(key);
        self.advance(key);
    }
}
