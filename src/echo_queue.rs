//! What one connection has received and not yet echoed, in order, and the
//! back-pressure rule both backends apply to it.
//!
//! The queue holds buffer ids, not bytes: the bytes stay in the worker's buffer
//! pool (the io_uring buffer ring, or the epoll backend's pool), so echoing costs
//! no copy. Only the front chunk is ever being sent (one send in flight per
//! socket), and a short send leaves `sent` pointing at where the next one starts.
#![forbid(unsafe_code)]

use std::collections::VecDeque;

/// Index of a buffer in a worker's pool. Invariant: < the pool's buffer count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufId(pub u16);

/// `len` bytes received into buffer `buf`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub buf: BufId,
    pub len: u32,
}

/// The unsent part of the front chunk: send `len` bytes from `offset` of `buf`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unsent {
    pub buf: BufId,
    pub offset: u32,
    pub len: u32,
}

#[derive(Debug, Default)]
pub struct EchoQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the front chunk already sent. Invariant: < front.len, 0 when empty.
    sent: u32,
}

impl EchoQueue {
    pub fn push(&mut self, chunk: Chunk) {
        debug_assert!(chunk.len > 0, "an empty receive is EOF, never queued");
        self.chunks.push_back(chunk);
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Buffers this connection holds from the pool.
    pub fn held(&self) -> u32 {
        self.chunks.len() as u32
    }

    /// What the next send should carry, if anything.
    pub fn next_unsent(&self) -> Option<Unsent> {
        self.chunks.front().map(|c| Unsent {
            buf: c.buf,
            offset: self.sent,
            len: c.len - self.sent,
        })
    }

    /// The unsent bytes in order, at most `max` chunks: the front chunk from
    /// where the last send stopped, the others whole. For one send of several
    /// buffers (sendmsg with an iovec each).
    pub fn unsent(&self, max: usize) -> impl Iterator<Item = Unsent> + '_ {
        self.chunks.iter().take(max).enumerate().map(|(i, c)| {
            let offset = if i == 0 { self.sent } else { 0 };
            Unsent {
                buf: c.buf,
                offset,
                len: c.len - offset,
            }
        })
    }

    /// Records that `n` bytes went out, possibly spanning several chunks; each
    /// chunk sent in full has its buffer handed to `freed`.
    pub fn advance_by(&mut self, mut n: u32, mut freed: impl FnMut(BufId)) {
        while n > 0 {
            let front = self.chunks.front().expect("sent more than was queued");
            let step = n.min(front.len - self.sent);
            n -= step;
            if let Some(buf) = self.advance(step) {
                freed(buf);
            }
        }
    }

    /// Records that `n` bytes of the front chunk went out. Returns the buffer
    /// once all of it has, so the caller can give it back to the pool.
    pub fn advance(&mut self, n: u32) -> Option<BufId> {
        let front = self.chunks.front().expect("advance on an empty queue");
        debug_assert!(n <= front.len - self.sent, "sent more than was queued");
        self.sent += n;
        if self.sent == front.len {
            self.sent = 0;
            self.chunks.pop_front().map(|c| c.buf)
        } else {
            None
        }
    }

    /// Empties the queue (the connection is closing), yielding every buffer
    /// but the first `keep`: those a send still in flight reads from, which
    /// must not go back to the pool before the kernel is done with them.
    pub fn drain(&mut self, keep: usize) -> impl Iterator<Item = BufId> + '_ {
        let keep = keep.min(self.chunks.len());
        self.chunks.drain(keep..).map(|c| c.buf)
    }

    /// Over budget: stop receiving from this connection until its sends drain.
    pub fn is_over_budget(&self, conn_buffers: u32) -> bool {
        self.held() >= conn_buffers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(id: u16, len: u32) -> Chunk {
        Chunk {
            buf: BufId(id),
            len,
        }
    }

    #[test]
    fn short_sends_continue_where_they_stopped() {
        let mut q = EchoQueue::default();
        q.push(chunk(3, 100));
        q.push(chunk(7, 50));
        assert_eq!(q.advance(40), None);
        assert_eq!(
            q.next_unsent(),
            Some(Unsent {
                buf: BufId(3),
                offset: 40,
                len: 60
            })
        );
        assert_eq!(q.advance(60), Some(BufId(3)));
        assert_eq!(
            q.next_unsent(),
            Some(Unsent {
                buf: BufId(7),
                offset: 0,
                len: 50
            })
        );
        assert_eq!(q.held(), 1);
    }

    #[test]
    fn drain_keeps_the_buffer_a_send_still_uses() {
        let mut q = EchoQueue::default();
        for id in 0..4 {
            q.push(chunk(id, 10));
        }
        let freed: Vec<_> = q.drain(1).collect();
        assert_eq!(freed, vec![BufId(1), BufId(2), BufId(3)]);
        assert_eq!(q.held(), 1);
        assert_eq!(q.advance(10), Some(BufId(0)));
        assert!(q.is_empty());
    }

    #[test]
    fn a_send_spanning_several_chunks_frees_each_one_it_completes() {
        let mut q = EchoQueue::default();
        q.push(chunk(1, 10));
        q.push(chunk(2, 20));
        q.push(chunk(3, 30));
        q.advance(4);
        let unsent: Vec<_> = q.unsent(8).map(|u| (u.buf.0, u.offset, u.len)).collect();
        assert_eq!(unsent, vec![(1, 4, 6), (2, 0, 20), (3, 0, 30)]);
        let mut freed = Vec::new();
        q.advance_by(6 + 20 + 5, |b| freed.push(b.0));
        assert_eq!(freed, vec![1, 2]);
        assert_eq!(
            q.next_unsent(),
            Some(Unsent {
                buf: BufId(3),
                offset: 5,
                len: 25
            })
        );
    }

    #[test]
    fn budget_counts_buffers_held() {
        let mut q = EchoQueue::default();
        q.push(chunk(0, 1));
        assert!(!q.is_over_budget(2));
        q.push(chunk(1, 1));
        assert!(q.is_over_budget(2));
    }
}
